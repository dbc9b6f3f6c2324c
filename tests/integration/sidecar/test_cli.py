"""`modeltap sidecar` as an operator meets it: the real console script in a subprocess.

`--help` documents every setting with its flag, its `MODELTAP_*` variable and the default that
applies; every start-up problem (RELIABILITY.md G5) exits non-zero with exactly one line on stderr that
says what to fix, and no traceback (a traceback in a pod log reads like a crash and hides the one line
that matters).

Each console-script run pays the interpreter's start-up, so the main cases (no upstream, bad URL,
unreadable reference, port in use, bad variable, bad config file, `--help`) run concurrently once per
module; the wider table of bad values runs through the same `main()` in this process.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modeltap.cli import main
from modeltap.sidecar.settings import FIELDS, SidecarSettings, env_name
from tests.support import sidecar_process
from tests.support.sidecar_process import modeltap_command

RUN_TIMEOUT_S = 60.0
UPSTREAM = ("--upstream", "http://127.0.0.1:9")
EPHEMERAL = ("--host", "127.0.0.1", "--port", "0", "--admin-port", "0")


def clean_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment without MODELTAP_* / OTEL_* (they would change the outcome)."""
    env = sidecar_process.clean_environ({})
    env["COLUMNS"] = "200"  # argparse wraps help to the terminal width
    env.update(extra)
    return env


@dataclass(frozen=True)
class Setup:
    """Where a case's files live and which ports are taken."""

    tmp: Path
    busy_port: int = 1


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    # Words the single stderr line must contain: what to fix, and the value that is wrong.
    says: tuple[str, ...] = ()


def write_files(tmp: Path) -> None:
    (tmp / "invalid.toml").write_text("[sidecar\nport = 1\n", encoding="utf-8")
    (tmp / "unknown.toml").write_text('[sidecar]\nupstream = "http://127.0.0.1:9"\nlisten_port = 1\n')
    (tmp / "wrong_type.toml").write_text(
        '[sidecar]\nupstream = "http://127.0.0.1:9"\n[monitoring]\nmin_samples = "x"\n'
    )
    (tmp / "reference.json").write_text('{"features": [', encoding="utf-8")


def console_cases(s: Setup) -> list[Case]:
    """The start-up errors every operator meets, run through the console script."""
    return [
        Case("no upstream", EPHEMERAL, says=("upstream is required", "--upstream", "MODELTAP_UPSTREAM")),
        Case(
            "https upstream",
            ("--upstream", "https://127.0.0.1:8443", *EPHEMERAL),
            says=("upstream", "https://127.0.0.1:8443"),
        ),
        Case(
            "missing reference",
            (*UPSTREAM, *EPHEMERAL, "--reference", str(s.tmp / "nope.json")),
            says=(str(s.tmp / "nope.json"), "cannot read"),
        ),
        Case(
            "proxy port in use",
            (*UPSTREAM, "--host", "127.0.0.1", "--port", str(s.busy_port), "--admin-port", "0"),
            says=(f"127.0.0.1:{s.busy_port}", "in use"),
        ),
        Case(
            "bad variable",
            (*UPSTREAM, *EPHEMERAL),
            {"MODELTAP_MAX_INFLIGHT": "lots"},
            ("MODELTAP_MAX_INFLIGHT", "lots"),
        ),
        Case(
            "invalid TOML",
            (*EPHEMERAL, "--config", str(s.tmp / "invalid.toml")),
            says=(str(s.tmp / "invalid.toml"), "not valid TOML"),
        ),
    ]


def in_process_cases(s: Setup) -> list[Case]:
    """More bad values, through the same `main()` without an interpreter start each."""
    return [
        Case(
            "upstream with a path", ("--upstream", "http://127.0.0.1:9/v1", *EPHEMERAL), says=("/v1", "path")
        ),
        Case(
            "upstream port out of range", ("--upstream", "http://127.0.0.1:99999", *EPHEMERAL), says=("port",)
        ),
        Case(
            "proxy and admin on one port",
            (*UPSTREAM, "--host", "127.0.0.1", "--port", "9464", "--admin-port", "9464"),
            says=("port and admin_port are both 9464", "--port", "--admin-port"),
        ),
        Case(
            "upstream with credentials",
            ("--upstream", "http://u:p@127.0.0.1:9", *EPHEMERAL),
            says=("credentials",),
        ),
        Case(
            "reference not JSON",
            (*UPSTREAM, *EPHEMERAL, "--reference", str(s.tmp / "reference.json")),
            says=(str(s.tmp / "reference.json"), "JSON"),
        ),
        Case(
            "reference is a directory", (*UPSTREAM, *EPHEMERAL, "--reference", str(s.tmp)), says=(str(s.tmp),)
        ),
        Case(
            "negative flag",
            (*UPSTREAM, *EPHEMERAL, "--drain-timeout-s", "-1"),
            says=("drain_timeout_s", "-1"),
        ),
        Case(
            "bad CIDR flag",
            (*UPSTREAM, *EPHEMERAL, "--trusted-proxies", "10.0.0.0/8,10.0.0.0/40"),
            says=("10.0.0.0/40",),
        ),
        Case(
            "variable out of range",
            (*UPSTREAM, *EPHEMERAL),
            {"MODELTAP_CONNECT_TIMEOUT_S": "-3"},
            ("MODELTAP_CONNECT_TIMEOUT_S", "-3"),
        ),
        Case(
            "bad upstream variable",
            EPHEMERAL,
            {"MODELTAP_UPSTREAM": "ftp://x"},
            ("MODELTAP_UPSTREAM", "ftp://x"),
        ),
        Case(
            "bad monitoring variable",
            (*UPSTREAM, *EPHEMERAL),
            {"MODELTAP_MIN_SAMPLES": "some"},
            ("MODELTAP_MIN_SAMPLES", "some"),
        ),
        Case(
            "bad OTEL variable",
            (*UPSTREAM, *EPHEMERAL),
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ),
        Case(
            "bad OTLP endpoint flag", (*UPSTREAM, *EPHEMERAL, "--otlp-endpoint", "ftp://c"), says=("ftp://c",)
        ),
        Case(
            "unknown config key",
            (*EPHEMERAL, "--config", str(s.tmp / "unknown.toml")),
            says=(str(s.tmp / "unknown.toml"), "listen_port"),
        ),
        Case(
            "wrong type in the config file",
            (*EPHEMERAL, "--config", str(s.tmp / "wrong_type.toml")),
            says=(str(s.tmp / "wrong_type.toml"), "min_samples"),
        ),
        Case(
            "config file from the variable",
            EPHEMERAL,
            {"MODELTAP_CONFIG": str(s.tmp / "invalid.toml")},
            (str(s.tmp / "invalid.toml"), "not valid TOML"),
        ),
        Case(
            "missing config file",
            (*EPHEMERAL, "--config", str(s.tmp / "none.toml")),
            says=(str(s.tmp / "none.toml"),),
        ),
    ]


def assert_one_clear_line(case: Case, returncode: int, stdout: str, stderr: str) -> None:
    assert returncode == 1, (returncode, stderr)
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    (line,) = lines
    assert line.startswith("modeltap: "), line
    for word in case.says:
        assert word in line, (word, line)
    assert stdout == ""  # nothing announced: it never served


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@dataclass(frozen=True)
class Outcome:
    case: Case
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """The console cases plus `--help`, run concurrently; the busy port stays taken throughout."""
    with listening_socket() as busy:
        setup = Setup(tmp_path_factory.mktemp("cli"), busy.getsockname()[1])
        write_files(setup.tmp)
        cases = [*console_cases(setup), Case("help", ("--help",))]
        running = [
            (
                case,
                subprocess.Popen(
                    [*modeltap_command(), "sidecar", *case.args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=clean_environ(case.env),
                    cwd=setup.tmp,
                ),
            )
            for case in cases
        ]
        results: dict[str, Outcome] = {}
        try:
            for case, process in running:
                stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
                results[case.id] = Outcome(case, process.returncode, stdout, stderr)
        finally:
            for _, process in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        yield results


# Ids do not depend on the paths and ports a case is filled in with.
CONSOLE_IDS = [case.id for case in console_cases(Setup(Path("/unused")))]
IN_PROCESS_IDS = [case.id for case in in_process_cases(Setup(Path("/unused")))]


@pytest.mark.parametrize("case_id", CONSOLE_IDS)
def test_console_script_start_up_errors_are_one_clear_line(
    outcomes: dict[str, Outcome], case_id: str
) -> None:
    outcome = outcomes[case_id]
    assert_one_clear_line(outcome.case, outcome.returncode, outcome.stdout, outcome.stderr)


@pytest.mark.usefixtures("clean_otel_env")
@pytest.mark.parametrize("case_id", IN_PROCESS_IDS)
def test_more_start_up_errors_are_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case_id: str
) -> None:
    write_files(tmp_path)
    (case,) = [c for c in in_process_cases(Setup(tmp_path)) if c.id == case_id]
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    returncode = main(["sidecar", *case.args])
    captured = capsys.readouterr()
    assert_one_clear_line(case, returncode, captured.out, captured.err)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """`run_sidecar` configures logging for its process; keep this process's as it was."""
    root, uvicorn_error = logging.getLogger(), logging.getLogger("uvicorn.error")
    handlers, root_level, uvicorn_level = list(root.handlers), root.level, uvicorn_error.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(root_level)
    uvicorn_error.setLevel(uvicorn_level)


@pytest.mark.usefixtures("clean_otel_env", "restored_logging")
def test_admin_port_in_use_is_one_clear_line_and_frees_the_proxy_port(
    unused_tcp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with listening_socket() as busy_admin:
        admin_port = busy_admin.getsockname()[1]
        case = Case(
            "admin port in use",
            (
                *UPSTREAM,
                "--host",
                "127.0.0.1",
                "--port",
                str(unused_tcp_port),
                "--admin-port",
                str(admin_port),
            ),
            says=(f"127.0.0.1:{admin_port}", "admin_port", "in use"),
        )
        returncode = main(["sidecar", *case.args])
    captured = capsys.readouterr()
    assert_one_clear_line(case, returncode, captured.out, captured.err)
    # The proxy port, bound first, was released again.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", unused_tcp_port))


def test_help_lists_every_setting_with_its_flag_and_variable(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["help"]
    assert outcome.returncode == 0
    assert outcome.stderr == ""
    text = outcome.stdout
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}([\s,=\]]|$)", text, re.MULTILINE), flag
        assert env_name(name) in text, env_name(name)
    for extra in ("--config", "MODELTAP_CONFIG", "--reference", "MODELTAP_REFERENCE", "--otlp-endpoint"):
        assert extra in text


def test_help_shows_the_defaults_that_apply(outcomes: dict[str, Outcome]) -> None:
    """The flags default to "not given" (so variables and the file can apply); the help shows the
    value that applies when nothing is given, never `None`."""
    text = outcomes["help"].stdout
    assert "None" not in text
    defaults = SidecarSettings(upstream="http://127.0.0.1:9")
    for name in ("port", "admin_port", "drain_timeout_s", "max_inflight", "log_level", "via"):
        shown = f"{env_name(name)}; default {getattr(defaults, name)})"
        assert shown in text, name
