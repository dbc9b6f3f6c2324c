"""`modeltap rules` and `modeltap dashboard`: argument parsing and file writing."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from modeltap.config import ModelTapConfig
from modeltap.errors import ConfigError

# The rules and the dashboard are made with the statistics' thresholds (and SciPy with them):
# imported by the commands that make them, not by every `modeltap` command line that builds the
# parser (the sidecar's data plane is one).


def _duration(text: str) -> str:
    from modeltap.fleet.rules import check_duration

    try:
        return check_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_parsers(commands: Any) -> None:
    rules = commands.add_parser(
        "rules",
        help="write Prometheus rules computing fleet drift, latency and errors, with alerts",
        description="Write Prometheus recording and alerting rules that sum every replica's "
        "counts and compute PSI, Jensen-Shannon and the drift level per model, version and feature "
        "exactly as one modeltap process would, plus latency percentiles, the error ratio, drop "
        "and violation rates and the alerts ModelTapFeatureDrift, ModelTapLatencyHigh, "
        "ModelTapErrorRateHigh and ModelTapTelemetryDropping. Thresholds default to the "
        "MODELTAP_* settings of this environment (docs/backends.md).",
    )
    rules.add_argument("--reference", required=True, metavar="FILE", help="the reference profile (JSON)")
    rules.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write (default: stdout)")
    rules.add_argument("--model-name", default=None, metavar="NAME", help="only this model's series")
    rules.add_argument(
        "--window",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="drift and rate window, e.g. 15m (default: modeltap's local window, "
        "MODELTAP_WINDOW_SLOTS x MODELTAP_WINDOW_SLOT_S)",
    )
    rules.add_argument(
        "--cumulative",
        action="store_true",
        help="drift over everything since each replica started instead of over the window "
        "(exact: no extrapolation; rates and latency still use the window)",
    )
    rules.add_argument(
        "--for",
        dest="alert_for",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="how long a condition must hold before any alert fires (default: 10m for drift, "
        "latency and drops, 5m for errors)",
    )
    rules.add_argument("--latency-p99", type=_float, default=1.0, metavar="SECONDS", help="default 1.0")
    rules.add_argument("--error-ratio", type=_float, default=0.05, metavar="RATIO", help="default 0.05")
    rules.add_argument("--runbook-url", default=None, metavar="URL", help="base URL of the runbooks")
    rules.add_argument(
        "--le-format",
        choices=("scrape", "remote-write"),
        default="scrape",
        help="how bucket bounds are spelled where Prometheus gets the series: scrape (the "
        "Collector's Prometheus exporter or modeltap's /metrics; default) or remote-write (the "
        "Collector's remote-write exporter); they differ only for bounds below 1e-4 or from 1e6",
    )

    board = commands.add_parser(
        "dashboard",
        help="write a Grafana dashboard over the series `modeltap rules` records",
        description="Write a Grafana dashboard (JSON model) with model, version and feature "
        "variables: drift levels, PSI and Jensen-Shannon per feature, reference vs window shares, "
        "latency percentiles, request rate, error ratio, violations and drops.",
    )
    board.add_argument("--reference", required=True, metavar="FILE", help="the reference profile (JSON)")
    board.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write (default: stdout)")
    board.add_argument("--model-name", default=None, metavar="NAME", help="the model selected at first")


def _write(text: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(text)
        return
    target = Path(output)
    fd, temporary = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run_rules(args: argparse.Namespace) -> None:
    from modeltap.fleet.rules import RuleOptions, duration_text, rules_text
    from modeltap.reference.document import load_reference
    from modeltap.stats.scores import thresholds_of

    config = ModelTapConfig.from_env()
    profile = load_reference(args.reference)
    window = args.window or duration_text(config.window_slots * config.window_slot_s)
    every = args.alert_for
    try:
        options = RuleOptions(
            window=window,
            cumulative=args.cumulative,
            model_name=args.model_name,
            thresholds=thresholds_of(config),
            drift_for=every or "10m",
            latency_for=every or "10m",
            errors_for=every or "5m",
            dropping_for=every or "10m",
            latency_p99_s=args.latency_p99,
            error_ratio=args.error_ratio,
            le_format=args.le_format,
            **({"runbook": args.runbook_url.rstrip("/")} if args.runbook_url else {}),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _write(rules_text(profile, options, source=os.path.basename(args.reference)), args.output)
    if args.output != "-":
        print(f"wrote rules for reference {profile.id} to {args.output}", file=sys.stderr)


def run_dashboard(args: argparse.Namespace) -> None:
    from modeltap.fleet.dashboard import dashboard_text
    from modeltap.reference.document import load_reference

    profile = load_reference(args.reference)
    _write(dashboard_text(profile, args.model_name), args.output)
    if args.output != "-":
        print(f"wrote a dashboard for reference {profile.id} to {args.output}", file=sys.stderr)
