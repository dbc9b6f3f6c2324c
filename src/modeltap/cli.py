"""The `modeltap` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modeltap._version import __version__
from modeltap.errors import ModelTapError


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0..65535, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modeltap",
        description="Drift, data-quality and latency monitoring for ML model endpoints, as OpenTelemetry.",
    )
    parser.add_argument("--version", action="version", version=f"modeltap {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a model server behind modeltap with in-distribution then drifted traffic",
        description="Train a small churn model, serve it behind modeltap on 127.0.0.1, send "
        "baseline then covariate-shifted traffic, show a live table and a summary. Needs no backend.",
    )
    demo.add_argument("--duration", type=_positive, default=30.0, help="seconds of traffic (default 30)")
    demo.add_argument("--rate", type=_positive, default=100.0, help="requests per second (default 100)")
    demo.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (default: any free port)")
    demo.add_argument("--otlp-endpoint", default=None, help="also export OTLP to this collector URL")
    demo.add_argument("--workdir", default=None, help="where to write the reference profile")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        from modeltap.demo.runner import DemoOptions, run_demo

        if args.command == "demo":
            run_demo(
                DemoOptions(
                    duration_s=args.duration,
                    rate_per_s=args.rate,
                    port=args.port,
                    otlp_endpoint=args.otlp_endpoint,
                    workdir=args.workdir,
                )
            )
            return 0
    except ModelTapError as exc:
        print(f"modeltap: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"modeltap: {exc}", file=sys.stderr)
        return 1
    return 2  # argparse rejects unknown commands before this point


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
