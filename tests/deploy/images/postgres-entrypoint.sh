#!/bin/sh
# First start: a cluster with POSTGRES_USER (password POSTGRES_PASSWORD) and POSTGRES_DB, reachable over
# the network with a password, as the official image sets it up. Later starts reuse the data directory.
set -eu
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
  initdb --username="$user" --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # The set-up server listens on a private socket only, so no health check or client sees it.
  mkdir -p /tmp/pg-init
  postgres -c listen_addresses='' -c unix_socket_directories=/tmp/pg-init &
  until pg_isready -q -h /tmp/pg-init -U "$user" -d postgres; do sleep 0.2; done
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
    psql -q -h /tmp/pg-init -U "$user" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  kill -INT "$!"
  wait "$!" || true
fi
if [ "$1" = postgres ]; then
  shift
  exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"
