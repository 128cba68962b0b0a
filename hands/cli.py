"""`brainhands serve hand` and every `python -m hands.builtin.X`: one parser, one set of flags for every hand service."""

from __future__ import annotations

import argparse
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="MODULE[:ATTR]", help="module (and attribute) holding the hands")
    p.add_argument("--port", type=int, default=50071)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--register", metavar="GATEWAY", help="register with this gateway and keep the lease alive")
    p.add_argument("--advertise", metavar="ADDR", help="address the gateway should dial (default host:port)")
    p.add_argument("--register-key", metavar="KEY", help="registrant key for --register (default: $BRAINHANDS_REGISTER_KEY)")
    p.add_argument("--register-tls-ca", metavar="PEM", help="dial --register over TLS, trusting this CA "
                   "(default: $BRAINHANDS_REGISTER_TLS_CA)")
    p.add_argument("--register-tls-cert", metavar="PEM", help="client certificate for an mTLS gateway front "
                   "(default: $BRAINHANDS_REGISTER_TLS_CERT)")
    p.add_argument("--register-tls-key", metavar="PEM", help="its private key (default: $BRAINHANDS_REGISTER_TLS_KEY)")
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--max-input-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--timeout", type=float, default=300.0, help="longest a call may run, in seconds")


def add_parser(serve_commands) -> argparse.ArgumentParser:
    p = serve_commands.add_parser("hand", help="serve the hands of a Python module over gRPC")
    add_arguments(p)
    p.set_defaults(func=serve_hand)
    return p


def serve_hand(args: argparse.Namespace) -> int:
    from hands import HandServiceConfig, load_hands, serve
    from hands.logs import configure_logging

    try:
        config = HandServiceConfig(
            max_input_bytes=args.max_input_bytes,
            max_concurrency=args.max_concurrency,
            default_timeout=args.timeout,
            gateway=os.environ.get("BRAINHANDS_GATEWAY") or None,
        )
    except ValueError as exc:  # a bad limit: one line naming the key
        raise CliError(str(exc)) from None
    try:
        credentials = registration_credentials(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    configure_logging()  # before the module loads, so what a hand factory logs is formatted too
    try:
        found = load_hands(args.spec)
    except SystemExit as exc:
        raise CliError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise CliError(f"{args.spec}: {exc}") from None
    try:
        serve(
            found, port=args.port, host=args.host, config=config, register=args.register, advertise=args.advertise,
            register_credentials=credentials,
        )  # fmt: skip
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0



def registration_credentials(args: argparse.Namespace, environ=None):
    """The key and TLS files --register dials with, from flags or the environment; ValueError for a bad set."""
    from hands.registration import RegistrationCredentials

    env = os.environ if environ is None else environ

    def pick(flag: str | None, var: str) -> str | None:
        return flag or env.get(var) or None

    return RegistrationCredentials.load(
        key=pick(getattr(args, "register_key", None), "BRAINHANDS_REGISTER_KEY"),
        ca=pick(getattr(args, "register_tls_ca", None), "BRAINHANDS_REGISTER_TLS_CA"),
        cert=pick(getattr(args, "register_tls_cert", None), "BRAINHANDS_REGISTER_TLS_CERT"),
        private_key=pick(getattr(args, "register_tls_key", None), "BRAINHANDS_REGISTER_TLS_KEY"),
    )


def main(argv: list[str] | None = None, prog: str = "brainhands serve hand") -> int:
    """`python -m hands.builtin.X ARGS` is main(["hands.builtin.X", *ARGS]): the same flags as `brainhands serve hand`."""
    parser = argparse.ArgumentParser(prog=prog, description="Serve the hands of a Python module over gRPC.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(serve_hand, args, prog=prog)
