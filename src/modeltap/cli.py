"""The `modeltap` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

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


def _top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 50:
        raise argparse.ArgumentTypeError(f"must be within 1..50, got {text}")
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
        help="run a model server behind the modeltap sidecar with in-distribution then drifted traffic",
        description="Train a small churn model, serve it on 127.0.0.1 with the modeltap sidecar in front "
        "(reference profile from a labelled validation table), send six phases of traffic (baseline, "
        "covariate shift, recovery, concept drift, prior shift, a new model version that earns less) "
        "with malformed requests throughout, feed labels and business outcomes back after each phase, "
        "show a live table and the status page's address, then a summary of what was detected per "
        "phase. Needs no backend and no download.",
    )
    demo.add_argument("--duration", type=_positive, default=36.0, help="seconds of traffic (default 36)")
    demo.add_argument("--rate", type=_positive, default=100.0, help="requests per second (default 100)")
    demo.add_argument(
        "--port", type=_port, default=0, help="the sidecar's port on 127.0.0.1 (default: any free port)"
    )
    demo.add_argument(
        "--admin-port",
        type=_port,
        default=0,
        help="the sidecar's admin port (status page, /status, /metrics; default: any free port)",
    )
    demo.add_argument("--otlp-endpoint", default=None, help="also export OTLP to this collector URL")
    demo.add_argument(
        "--workdir",
        default=None,
        help="where to write and keep the validation table and the reference profile "
        "(default: a temporary directory, removed at the end)",
    )
    profile = commands.add_parser(
        "profile",
        help="build a reference profile (reference.json) from training data",
        description="Profile training data (CSV, or Parquet with pyarrow) into a reference profile: "
        "per column its kind, missing rate, percentile edges and counts, or its top categories.",
    )
    # Optional to argparse only: `--numeric a b train.csv` gives the file to the list before it
    # (`_data_after_a_column_list` takes it back).
    profile.add_argument(
        "data", metavar="DATA", nargs="?", help="a CSV file with a header row, or a .parquet file"
    )
    profile.add_argument("-o", "--output", required=True, help="where to write the profile (JSON)")
    profile.add_argument("--target", default=None, metavar="COL", help="the label column (role label)")
    profile.add_argument(
        "--prediction",
        action="append",
        default=[],
        metavar="COL",
        help="a model output column (role output); repeat for one column per class probability",
    )
    for flag, what in (
        ("--exclude", "columns to leave out"),
        ("--categorical", "columns to profile as categorical"),
        ("--numeric", "columns to profile as numeric (values that are not numbers count as missing)"),
    ):
        profile.add_argument(flag, nargs="+", action="extend", default=[], metavar="COL", help=what)
    profile.add_argument("--model-name", default=None, metavar="NAME", help="the model's name")
    profile.add_argument(
        "--score",
        default=None,
        metavar="COL",
        help="a binary classifier's probability of the positive class (with --target and "
        "--prediction): stores the calibration that estimates performance before labels arrive",
    )
    profile.add_argument(
        "--positive-class", default=None, metavar="VALUE", help="the class --score is the probability of"
    )
    profile.add_argument(
        "--top-k", type=_top_k, default=50, help="categories kept per categorical column (1..50, default 50)"
    )
    _add_sidecar_parser(commands)
    from modeltap.fleet.commands import add_parsers

    add_parsers(commands)
    upload = commands.add_parser(
        "feedback",
        help="upload labels (ground truth) from a CSV file to a running modeltap",
        description="Post the labels of a CSV file (header: request_id, optional row, label, "
        "optional model_name; or --key COLUMN and label) to a feedback endpoint: "
        "http://HOST:PORT/modeltap/feedback on a server with the middleware, "
        "http://HOST:ADMIN_PORT/feedback on the sidecar.",
    )
    upload.add_argument("labels", metavar="CSV", help="the labels")
    upload.add_argument("--url", required=True, help="the feedback endpoint")
    upload.add_argument("--key", default=None, metavar="COLUMN", help="join by this key column (label_key)")
    upload.add_argument(
        "--token", default=None, help="bearer token for non-loopback endpoints (MODELTAP_VIEWS_TOKEN)"
    )
    fire = commands.add_parser(
        "drill",
        help="fire drill: check that alerts fire, reach every receiver and resolve",
        description="Make a running monitor inject synthetic exchanges into a shadow of the model's "
        "state (never the real windows), check that each expected alert fires, that every configured "
        "receiver acknowledges the notification (marked drill: true), and that the alerts resolve. "
        "Prints what fired, where and how long it took; exit status 0 only if every path worked.",
    )
    fire.add_argument(
        "--admin",
        required=True,
        metavar="URL",
        help="the sidecar's admin port (http://127.0.0.1:9464) or a server's views prefix with the "
        "middleware (http://127.0.0.1:8080/modeltap)",
    )
    fire.add_argument(
        "--scenario",
        choices=("all", "covariate", "prediction", "latency", "errors"),
        default="all",
        help="what goes wrong (default all)",
    )
    fire.add_argument(
        "--timeout",
        type=_positive,
        default=120.0,
        metavar="S",
        help="seconds the drill may take (default 120)",
    )
    fire.add_argument(
        "--token", default=None, help="bearer token for non-loopback endpoints (MODELTAP_VIEWS_TOKEN)"
    )
    return parser


def _add_sidecar_parser(commands: Any) -> None:
    from modeltap.sidecar.settings import FIELDS, HELP, env_name

    sidecar = commands.add_parser(
        "sidecar",
        help="run a monitoring reverse proxy in front of a model server",
        description="Forward every request to --upstream, unchanged, and monitor the exchanges: "
        "drift against --reference, data quality, latency, errors; OpenTelemetry over OTLP "
        "(OTEL_EXPORTER_OTLP_ENDPOINT) and the admin port. Every option can also be set with the "
        "MODELTAP_* variable shown, or in a TOML file under [sidecar] (monitoring settings under "
        "[monitoring]); flags win over variables, variables over the file.",
    )
    sidecar.add_argument("--config", default=None, metavar="FILE", help="TOML config file (MODELTAP_CONFIG)")
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        # The real default is SidecarSettings' (the flag's own is None: "not given").
        default = ",".join(field.default) if isinstance(field.default, tuple) else field.default
        text = f"{HELP[name]} ({env_name(name)}" + (f"; default {default})" if default != "" else ")")
        if field.type == "bool":
            sidecar.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        converter: Any = {"int": int, "float": float}.get(str(field.type), str)
        if field.type == "tuple[str, ...]":
            converter = _comma_list
        sidecar.add_argument(
            flag, type=converter, default=None, metavar=name.upper().removesuffix("_S"), help=text
        )
    monitoring = sidecar.add_argument_group("monitoring (any other setting: MODELTAP_* / OTEL_* variables)")
    monitoring.add_argument(
        "--reference",
        default=None,
        metavar="FILE",
        help="reference profile from `modeltap profile` (MODELTAP_REFERENCE)",
    )
    monitoring.add_argument(
        "--model-name", default=None, metavar="NAME", help="model name (MODELTAP_MODEL_NAME)"
    )
    monitoring.add_argument(
        "--model-version", default=None, metavar="VERSION", help="model version (MODELTAP_MODEL_VERSION)"
    )
    monitoring.add_argument(
        "--expected-model-version",
        default=None,
        metavar="VERSION",
        help="the version that should be serving: WARNING while the answers carry another "
        "(MODELTAP_EXPECTED_MODEL_VERSION)",
    )
    monitoring.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="OTLP collector base URL, e.g. http://127.0.0.1:4318 (OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    for flag, destination, variable, what in (
        (
            "--alert-webhook",
            "alert_webhooks",
            "MODELTAP_ALERT_WEBHOOK",
            "a URL that receives alert notifications (JSON)",
        ),
        ("--alertmanager", "alertmanagers", "MODELTAP_ALERTMANAGER", "an Alertmanager base URL"),
        (
            "--alert-slack-webhook",
            "alert_slack_webhooks",
            "MODELTAP_ALERT_SLACK_WEBHOOK",
            "a Slack-style incoming webhook",
        ),
    ):
        monitoring.add_argument(
            flag,
            dest=destination,
            action="append",
            default=None,
            metavar="URL",
            help=f"{what}; repeatable ({variable})",
        )


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def run_sidecar_command(args: argparse.Namespace) -> None:
    import dataclasses

    from modeltap.sidecar.runner import run_sidecar
    from modeltap.sidecar.settings import FIELDS, resolve

    flags = {name: getattr(args, name) for name in FIELDS}
    monitoring_flags = {
        "reference": args.reference,
        "model_name": args.model_name,
        "model_version": args.model_version,
        "expected_model_version": args.expected_model_version,
        # Repeatable alert receivers: the flags replace the variable's list when given.
        **{
            name: tuple(getattr(args, name))
            for name in ("alert_webhooks", "alertmanagers", "alert_slack_webhooks")
            if getattr(args, name)
        },
    }
    settings, monitoring = resolve(flags, monitoring_flags, args.config)
    if args.otlp_endpoint:
        monitoring = monitoring.replace(
            export=dataclasses.replace(monitoring.export, endpoint=args.otlp_endpoint)
        )
    if monitoring.reference:
        from modeltap.reference.document import load_reference

        load_reference(monitoring.reference)  # an unreadable reference fails here, before binding
    run_sidecar(settings, monitoring)


def run_profile(args: argparse.Namespace, out: TextIO | None = None) -> None:
    """`modeltap profile`: build, write, and print one line per feature and the id.

    The builder's warnings (a small reference, values counted as missing) are printed as
    ``modeltap: warning: ...`` on stderr once the profile is written.
    """
    out = out or sys.stdout
    import warnings

    from modeltap.reference.builder import ProfileWarning
    from modeltap.reference.document import write_profile
    from modeltap.reference.tables import profile_table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProfileWarning)
        document = profile_table(
            args.data,
            target=args.target,
            prediction=args.prediction,
            exclude=args.exclude,
            categorical=args.categorical,
            numeric=args.numeric,
            model_name=args.model_name,
            top_k=args.top_k,
            score=args.score,
            positive_class=args.positive_class,
        )
    write_profile(document, args.output)
    for warning in caught:
        if issubclass(warning.category, ProfileWarning):
            print(f"modeltap: warning: {warning.message}", file=sys.stderr)
        else:  # not ours: given back to the warnings machinery as it came
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    width = min(32, max(len(f["name"]) for f in [*document["features"], *document["ignored"]]))
    for feature in document["features"]:
        print(
            f"{feature['name']:<{width}}  {feature['role']:<6}  {feature['kind']:<11}  "
            f"n={feature['n']:<9} missing={feature['missing_rate']:.2%}",
            file=out,
        )
    for ignored in document["ignored"]:
        print(f"{ignored['name']:<{width}}  ignored ({ignored['reason']})", file=out)
    print(f"{document['source']['rows']} rows; id {document['id']}; written to {args.output}", file=out)


_DATA_SUFFIXES = (".csv", ".parquet", ".pq")


def _data_after_a_column_list(args: argparse.Namespace) -> str | None:
    """The data file a column list took as one of its columns (`--numeric a b train.csv`: the
    lists take every value up to the next option), when exactly one list ends with a file name."""
    found = [
        columns
        for columns in (args.exclude, args.categorical, args.numeric)
        if columns and columns[-1].lower().endswith(_DATA_SUFFIXES)
    ]
    if len(found) != 1:
        return None
    data: str = found[0].pop()
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "profile" and args.data is None:
        args.data = _data_after_a_column_list(args)
        if args.data is None:
            print(
                "modeltap profile: error: the following arguments are required: DATA "
                "(see modeltap profile --help)",
                file=sys.stderr,
            )
            return 2
    try:
        if args.command == "profile":
            run_profile(args)
            return 0
        if args.command == "sidecar":
            run_sidecar_command(args)
            return 0
        if args.command == "feedback":
            from modeltap.client.feedback_upload import run_upload

            return run_upload(args)
        if args.command == "drill":
            from modeltap.client.drill import run_drill

            return run_drill(args)
        if args.command in ("rules", "dashboard"):
            from modeltap.fleet.commands import run_dashboard, run_rules

            (run_rules if args.command == "rules" else run_dashboard)(args)
            return 0
        if args.command == "demo":
            from modeltap.demo.runner import DemoOptions, run_demo

            result = run_demo(
                DemoOptions(
                    duration_s=args.duration,
                    rate_per_s=args.rate,
                    port=args.port,
                    admin_port=args.admin_port,
                    otlp_endpoint=args.otlp_endpoint,
                    workdir=args.workdir,
                )
            )
            return 130 if result.interrupted else 0
    except ModelTapError as exc:
        print(f"modeltap: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"modeltap: {exc}", file=sys.stderr)
        return 1
    return 2  # argparse rejects unknown commands before this point


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
