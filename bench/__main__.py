"""`python -m bench [--quick] [--only NAME ...]`: run the benchmarks and write bench/results/REPORT.md."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from bench import report

BENCHMARKS = ("gateway", "fanout", "brain", "quotas", "sessions", "tracing", "console", "workers", "workspaces")
#: What runs without --only: the tracing figure is asked for by name (it adds three processes and a baseline checkout),
#: and so is the console's (`--only console`: a brain, a hand and a console process holding 50 live pages), and
#: the gateway workers' (`--only workers`: two more gateways, and Redis), and the session workspaces'
#: (`--only workspaces`: what a session's first fs or sandbox call costs).
DEFAULT_RUN = ("gateway", "fanout", "brain", "quotas", "sessions")
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs and fewer sizes: a few minutes on 2 cores")
    parser.add_argument("--smoke", action="store_true", help="the smallest size of each benchmark, in seconds: "
                        "keeps bench/ working (tests/bench), says nothing about speed")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="where REPORT.md goes")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", DEFAULT_REDIS), help="Redis for the quota store")
    parser.add_argument("--database", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE),
                        help="PostgreSQL for the session store")
    parser.add_argument("--baseline", metavar="REV", help="also measure the gateway and hand of this git revision, "
                        "side by side (before/after figures for an optimization)")
    args = parser.parse_args(argv)
    redis_url = args.redis if reachable(args.redis, 6379) else None
    database_url = args.database if reachable(args.database, 5432) else None
    for what, url, have in (("Redis", args.redis, redis_url), ("PostgreSQL", args.database, database_url)):
        if not have:
            print(f"bench: {what} at {url} does not answer; its rows are left out", file=sys.stderr)
    chosen = args.only or DEFAULT_RUN
    started = time.time()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sections: list[report.Section] = []
    for name in chosen:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        sections.extend(run_one(name, mode, redis_url, database_url, args.baseline))
        print(f"bench: {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if args.only:
        sections = report.keep_others(Path(args.out), sections)
    order = {"gateway": 1, "fanout": 2, "brain": 3, "quotas": 4, "sessions": 5, "memory": 6, "brain-memory": 6.5, "console": 7,
             "workers": 8, "workspaces": 9}
    sections.sort(key=lambda s: order.get(s.key, 99))
    meta = {
        "command": "python -m bench" + (" --smoke" if args.smoke else " --quick" if args.quick else "") + (f" --only {' '.join(args.only)}" if args.only else "")
        + (f" --baseline {args.baseline}" if args.baseline else ""),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "elapsed_s": time.time() - started,
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": report.machine(),
    }
    path = report.write(Path(args.out), sections, meta)
    print(f"bench: wrote {path}", file=sys.stderr)
    return 0


def run_one(name: str, mode: str, redis_url: str | None, database_url: str | None,
            baseline: str | None = None) -> list[report.Section]:
    if name == "gateway":
        from bench import gateway_bench

        return gateway_bench.run(mode, redis_url, baseline)
    if name == "tracing":  # not in the default run: `python -m bench --only tracing [--baseline REV]`
        from bench import gateway_bench

        return [gateway_bench.tracing_cost(mode, baseline or "main")]
    if name == "fanout":
        from bench import fanout_bench

        return [fanout_bench.run(mode, baseline)]
    if name == "brain":
        from bench import brain_bench

        return brain_bench.run(mode)
    if name == "quotas":
        from bench import quota_bench

        return [quota_bench.run(mode, redis_url)]
    if name == "workers":
        from bench import workers_bench

        return [workers_bench.run(mode, redis_url)]
    if name == "workspaces":
        from bench import workspace_bench

        return [workspace_bench.section(mode)]
    if name == "console":
        from bench import console_bench

        return [console_bench.run(mode)]
    from bench import session_bench

    return [session_bench.run(mode, database_url)]


if __name__ == "__main__":
    sys.exit(main())
