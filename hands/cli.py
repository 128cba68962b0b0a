"""`brainhands serve hand` and every `python -m hands.builtin.X`: one parser, one set of flags for every hand service.

Settings of a particular hand (the fs workspace, the sandbox's isolation and limits, the llm worker's
model) are not flags: the hand's factory reads them from its environment (BRAINHANDS_WORKSPACE,
BRAINHANDS_SANDBOX_*, ...), the same way on a laptop, in compose and in Kubernetes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


class CliError(Exception):
    """An error a person can fix: printed as one line, exit status 2 (or .exit_code)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def run_command(func, args, prog: str = "brainhands") -> int:
    """Run an entry point's command: a CliError is one line on stderr, Ctrl-C exit 130, no traceback."""
    try:
        return int(func(args) or 0)
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


DEFAULT_PORT = 50071
ENVIRONMENT_NOTE = (
    "A hand's own settings come from the environment: BRAINHANDS_WORKSPACE (fs), BRAINHANDS_WORKSPACES and the "
    "other BRAINHANDS_WORKSPACE_* settings (per-session workspaces of fs and sandbox), BRAINHANDS_SANDBOX_ISOLATION and "
    "the other BRAINHANDS_SANDBOX_* limits (sandbox), ANTHROPIC_API_KEY and BRAINHANDS_WORKER_MODEL (llm), "
    "BRAINHANDS_MEMORY (memory)."
)


def add_service_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every hand service takes (`serve hand`, `serve mcp`): where to listen, registration, limits."""
    p.add_argument("--port", type=int, default=None,
                   help=f"port to listen on; 0 picks a free one (default {DEFAULT_PORT}, or the hand module's DEFAULT_PORT)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--register", metavar="GATEWAY", help="register with this gateway and keep the lease alive")
    p.add_argument("--advertise", metavar="ADDR", help="address the gateway should dial (default host:port)")
    p.add_argument("--register-key", metavar="KEY", help="registrant key for --register (default: $BRAINHANDS_REGISTER_KEY)")
    p.add_argument("--register-tls-ca", metavar="PEM", help="dial --register over TLS, trusting this CA "
                   "(default: $BRAINHANDS_REGISTER_TLS_CA)")
    p.add_argument("--register-tls-cert", metavar="PEM", help="client certificate for an mTLS gateway front "
                   "(default: $BRAINHANDS_REGISTER_TLS_CERT)")
    p.add_argument("--register-tls-key", metavar="PEM", help="its private key (default: $BRAINHANDS_REGISTER_TLS_KEY)")
    p.add_argument("--max-concurrency", type=int, default=64, help="calls run at once; more wait their turn (default 64)")
    p.add_argument("--max-input-bytes", type=int, default=4 * 1024 * 1024, help="largest input a call may carry, in bytes (default 4194304: 4 MiB)")
    p.add_argument("--timeout", type=float, default=300.0, help="longest a call may run, in seconds (default 300)")
    p.add_argument(
        "--dedupe-ttl", type=float, default=3600.0, metavar="SECONDS",
        help="how long a non-idempotent call's result answers a repeat of its call id (0: off; default 3600)",
    )  # fmt: skip
    p.add_argument(
        "--dedupe-store", default=os.environ.get("BRAINHANDS_DEDUPE_STORE", "memory"), metavar="memory|redis://...",
        help="where those results live: this process, or a Redis shared by replicas (env BRAINHANDS_DEDUPE_STORE)",
    )  # fmt: skip
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics (brainhands_hand_*) here")
    p.add_argument("--otel", metavar="ENDPOINT", help="export traces over OTLP/gRPC (default $OTEL_EXPORTER_OTLP_ENDPOINT)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="MODULE[:FACTORY]",
                   help="a module (hands.builtin.fs) or a file (examples/word_count.py); FACTORY names a hand, "
                   "a list of hands or a function returning them (default: the module's HANDS, else its hands)")
    add_service_arguments(p)


def add_parser(serve_commands) -> argparse.ArgumentParser:
    p = serve_commands.add_parser(
        "hand",
        help="serve the hands of a Python module or file over gRPC",
        description="Serve the hands of a Python module or file over gRPC until SIGTERM. " + ENVIRONMENT_NOTE,
    )
    add_arguments(p)
    p.set_defaults(func=serve_hand)
    return p


def service_config(args: argparse.Namespace):
    """The HandServiceConfig the service flags describe."""
    from hands import HandServiceConfig

    _check_metrics_address(args)
    if args.dedupe_ttl < 0:
        raise CliError(f"--dedupe-ttl: expected seconds >= 0, got {args.dedupe_ttl:g}")
    if args.dedupe_store != "memory" and not args.dedupe_store.startswith(("redis://", "rediss://", "unix://")):
        raise CliError(f"--dedupe-store: expected 'memory' or a redis:// URL, got {args.dedupe_store!r}")
    try:
        return HandServiceConfig(
            max_input_bytes=args.max_input_bytes,
            max_concurrency=args.max_concurrency,
            default_timeout=args.timeout,
            gateway=os.environ.get("BRAINHANDS_GATEWAY") or None,  # where ctx.client() calls other hands
            dedupe_ttl=args.dedupe_ttl,
            dedupe_store=args.dedupe_store,
        )
    except ValueError as exc:  # a bad limit: one line naming the key
        raise CliError(str(exc)) from None


def registration_credentials(args: argparse.Namespace, environ=None):
    """The key and TLS files --register dials with, from flags or the environment; CliError for a bad set."""
    from hands.registration import RegistrationCredentials

    env = os.environ if environ is None else environ

    def pick(flag: str | None, var: str) -> str | None:
        return flag or env.get(var) or None

    try:
        return RegistrationCredentials.load(
            key=pick(getattr(args, "register_key", None), "BRAINHANDS_REGISTER_KEY"),
            ca=pick(getattr(args, "register_tls_ca", None), "BRAINHANDS_REGISTER_TLS_CA"),
            cert=pick(getattr(args, "register_tls_cert", None), "BRAINHANDS_REGISTER_TLS_CERT"),
            private_key=pick(getattr(args, "register_tls_key", None), "BRAINHANDS_REGISTER_TLS_KEY"),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _check_metrics_address(args: argparse.Namespace) -> None:
    """--metrics HOST:PORT, checked with the other flags so a typo is one line before anything starts."""
    if getattr(args, "metrics", None):
        from hands.metrics import split_metrics_address

        try:
            split_metrics_address(args.metrics)
        except ValueError as exc:
            raise CliError(str(exc)) from None


def serve_hand(args: argparse.Namespace) -> int:
    from hands import serve_async
    from hands._load import HandLoadError, load_hand_module
    from hands.logs import configure_logging

    config = service_config(args)  # a bad limit is refused before anything loads
    credentials = registration_credentials(args)
    configure_logging()  # before the module loads, so what a hand factory logs is formatted too
    try:
        module, found = load_hand_module(args.spec)
    except HandLoadError as exc:
        raise CliError(str(exc)) from None
    except (TypeError, ValueError, RuntimeError) as exc:  # a factory refusing its environment
        raise CliError(str(exc) if getattr(args, "named_by_prog", False) else f"{args.spec}: {exc}") from None
    port = args.port if args.port is not None else getattr(module, "DEFAULT_PORT", DEFAULT_PORT)
    try:
        asyncio.run(serve_async(found, port=port, host=args.host, config=config,
                                register=args.register, advertise=args.advertise, register_credentials=credentials,
                                metrics=args.metrics, otel=args.otel))
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0


def main(argv: list[str] | None = None, prog: str = "brainhands serve hand", *, module: str | None = None) -> int:
    """`brainhands serve hand ARGS` as a function; with module, `python -m MODULE ARGS` (the same flags)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [options]" if module else None,
        description="Serve the hands of a Python module over gRPC until SIGTERM. " + ENVIRONMENT_NOTE,
    )
    add_arguments(parser)
    if module is not None:
        argv = [module, *(sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(argv)
    args.named_by_prog = module is not None  # then errors need not repeat the module after the prog
    return run_command(serve_hand, args, prog=prog)


def module_main(module: str) -> int:
    """The whole of `python -m MODULE` for a hand module: `brainhands serve hand MODULE` with this process's flags."""
    return main(sys.argv[1:], prog=f"python -m {module}", module=module)
