"""TLS and mTLS for the gateway's front and for its backend channels, from the config's ``tls`` section.

tls:
  cert: /etc/brainhands/gateway.pem      # the front's certificate chain (PEM)
  key: /etc/brainhands/gateway.key       # and its private key
  client_ca: /etc/brainhands/callers.pem # optional: callers must present a certificate from this CA (mTLS)
  backends:
    ca: /etc/brainhands/hands-ca.pem     # dial backends over TLS, trusting this CA
    cert: /etc/brainhands/gw-client.pem  # optional: the gateway's client certificate (mTLS to backends)
    key: /etc/brainhands/gw-client.key
    server_name: hands.internal          # optional: the name backend certificates carry, if not the address
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc


class TlsConfigError(ValueError):
    """A bad ``tls`` section; the message names the key (the gateway config reports it as a ConfigError)."""


_FRONT_KEYS = {"cert", "key", "client_ca", "backends"}
_BACKEND_KEYS = {"ca", "cert", "key", "server_name"}


@dataclass(frozen=True)
class TlsConfig:
    """PEM bytes read once at start; None where a side is plaintext."""

    cert: bytes | None = None
    key: bytes | None = None
    client_ca: bytes | None = None
    backend_ca: bytes | None = None
    backend_cert: bytes | None = None
    backend_key: bytes | None = None
    backend_server_name: str | None = None

    def __repr__(self) -> str:  # never print a private key
        return (
            f"TlsConfig(front={'tls' if self.cert else 'plaintext'}, mtls={self.client_ca is not None}, "
            f"backends={'tls' if self.backend_ca else 'plaintext'})"
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for the front port, or None for plaintext."""
        if self.cert is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def backend_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials for channels to backends, or None for plaintext."""
        if self.backend_ca is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.backend_ca,
            private_key=self.backend_key,
            certificate_chain=self.backend_cert,
        )

    def backend_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A channel to a backend, over TLS when configured."""
        credentials = self.backend_credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        opts = list(options)
        if self.backend_server_name:
            opts.append(("grpc.ssl_target_name_override", self.backend_server_name))
        return grpc.aio.secure_channel(address, credentials, options=opts)


def parse_tls(raw: Mapping[str, Any] | None, base_dir: pathlib.Path | None = None) -> TlsConfig:
    """Read the files a ``tls`` section names; a missing or unreadable file is a ConfigError naming the key."""
    if not raw:
        return TlsConfig()
    if not isinstance(raw, Mapping):
        raise TlsConfigError("tls: must be a mapping with cert, key, client_ca, backends")
    _no_unknown(raw, _FRONT_KEYS, "tls")
    cert, key = _pem(raw.get("cert"), "tls.cert", base_dir), _pem(raw.get("key"), "tls.key", base_dir)
    if (cert is None) != (key is None):
        raise TlsConfigError(f"tls.{'key' if key is None else 'cert'}: cert and key go together; set both or neither")
    client_ca = _pem(raw.get("client_ca"), "tls.client_ca", base_dir)
    if client_ca is not None and cert is None:
        raise TlsConfigError("tls.client_ca: callers can present certificates only over TLS; set tls.cert and tls.key")
    backends = raw.get("backends") or {}
    if not isinstance(backends, Mapping):
        raise TlsConfigError("tls.backends: must be a mapping with ca, cert, key, server_name")
    _no_unknown(backends, _BACKEND_KEYS, "tls.backends")
    ca = _pem(backends.get("ca"), "tls.backends.ca", base_dir)
    bcert = _pem(backends.get("cert"), "tls.backends.cert", base_dir)
    bkey = _pem(backends.get("key"), "tls.backends.key", base_dir)
    if (bcert is None) != (bkey is None):
        raise TlsConfigError(
            f"tls.backends.{'key' if bkey is None else 'cert'}: cert and key go together; set both or neither"
        )
    if bcert is not None and ca is None:
        raise TlsConfigError("tls.backends.ca: a client certificate needs TLS to backends; set the CA that signs them")
    server_name = backends.get("server_name")
    if server_name is not None and (not isinstance(server_name, str) or not server_name):
        raise TlsConfigError("tls.backends.server_name: must be a host name")
    return TlsConfig(cert, key, client_ca, ca, bcert, bkey, server_name)


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TlsConfigError(f"{where}.{unknown[0]}: unknown key (expected {', '.join(sorted(known))})")


def _pem(value: Any, key: str, base_dir: pathlib.Path | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TlsConfigError(f"{key}: must be the path of a PEM file")
    path = pathlib.Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{key}: {path} is not a PEM file")
    return data
