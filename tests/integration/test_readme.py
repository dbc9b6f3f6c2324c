"""The README a newcomer follows, checked: every ```bash block runs, offline, on 127.0.0.1, and the
reference tables name what the code has.

How a block runs (`_BlockRunner`): all blocks, in README order, share one scratch directory (a
later block may use a file an earlier one wrote, as a reader would), with the repository's
`scripts/`, `examples/` and `pyproject.toml` linked in and the test's virtual environment first on
PATH. Per line:

- a server command (`uvicorn`, `modeltap sidecar`, the demo's model server) starts in the
  background; the block goes on once its ports accept connections; it is stopped (SIGTERM, and it
  must exit 0) at the end of the block;
- `export NAME=VALUE` sets the variable for the rest of the block;
- `. .venv/bin/activate` (the environment the demo makes) is the test's own environment, on
  PATH already;
- `pip install PKG` checks that PKG is importable instead: the test runs offline;
- demo runs (`scripts/demo.sh`, `modeltap demo`) get `--duration 3 --rate 200` appended, so they
  take seconds; they must print the summary and their clean-up line;
- `curl` must get a 2xx answer of the expected kind (the JSON of `/status`, the Prometheus text of
  `/metrics`, the predictions of `:predict`);
- anything else must exit 0.

`scripts/demo.sh` runs against a prepared virtual environment (`MODELTAP_VENV` holding wrappers
around this one and the install stamp): creating `.venv/` and installing needs the package index,
which the test cannot reach. A local OTLP sink on 127.0.0.1:4318 stands in for the Collector.
Blocks that cannot run here are marked `<!-- readme-test: skip (reason) -->` in the README.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import http.server
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modeltap.config import ModelTapConfig
from modeltap.demo.model_server import FEATURES, ChurnModel, build_app, training_data
from modeltap.export.status_json import status_document
from modeltap.middleware import ModelTapMiddleware
from modeltap.reference import numeric_profile_document
from tests.support.servers import serve

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SRC = REPO / "src" / "modeltap"
VENV_BIN = Path(sys.executable).parent
SKIP_MARKER = re.compile(r"^<!-- readme-test: skip \((?P<reason>[^()]*\S[^()]*)\) -->$")
DEMO_SHORT = ["--duration", "3", "--rate", "200"]
SERVER_COMMANDS: tuple[tuple[re.Pattern[str], dict[str, int]], ...] = (
    # (command pattern, {port flag: default port}): the ports the block waits for.
    (re.compile(r"^uvicorn\s"), {"--port": 8000}),
    (re.compile(r"^modeltap sidecar\b"), {"--port": 8000, "--admin-port": 9464}),
    (re.compile(r"^python -m modeltap\.demo\.model_server\b"), {"--port": 8080}),
)
DEMO_COMMAND = re.compile(r"^(scripts/demo\.sh|modeltap demo)\b")
OTLP_PORT = 4318


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    skip_reason: str | None


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks, with the skip marker on the line before the fence if there is one."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        previous = lines[start - 1].strip() if start > 0 else ""
        marker = SKIP_MARKER.match(previous)
        blocks.append(
            Block(fence.group(1), "\n".join(body), start + 1, marker.group("reason") if marker else None)
        )
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _commands(code: str) -> list[str]:
    """Lines with backslash continuations joined; comment-only and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as sock:  # nobody listening on loopback either
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _OtlpSink(http.server.ThreadingHTTPServer):
    """Accepts OTLP/HTTP exports (an empty protobuf answer is a full success) and counts them."""

    def __init__(self) -> None:
        self.posts: dict[str, int] = {}
        super().__init__(("127.0.0.1", OTLP_PORT), _OtlpHandler)


class _OtlpHandler(http.server.BaseHTTPRequestHandler):
    server: _OtlpSink

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.posts[self.path] = self.server.posts.get(self.path, 0) + 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _otlp_sink() -> Iterator[_OtlpSink | None]:
    if not _port_free(OTLP_PORT):
        yield None  # a Collector already runs here: the blocks still run, nothing is counted
        return
    sink = _OtlpSink()
    thread = threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
        thread.join(5)


def _fake_venv(root: Path) -> Path:
    """What scripts/_venv.sh expects of an installed .venv, around this environment."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "modeltap"):
        wrapper = venv / "bin" / name
        wrapper.write_text(f'#!/bin/sh\nexec "{VENV_BIN / name}" "$@"\n')
        wrapper.chmod(0o755)
    (venv / ".modeltap-installed").touch()
    return venv


def _scratch(root: Path) -> Path:
    scratch = root / "work"
    scratch.mkdir()
    for name in ("scripts", "examples", "pyproject.toml"):
        (scratch / name).symlink_to(REPO / name)
    return scratch


def _base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MODELTAP_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MODELTAP_VENV"] = str(_fake_venv(root))
    env["MODELTAP_HOST"] = "127.0.0.1"  # the sidecar's proxy port: loopback only in tests
    env["MODELTAP_DRAIN_DELAY_S"] = "0"  # the sidecar stops at once (its drain is tested elsewhere)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _flag_value(words: list[str], flag: str) -> str | None:
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def _curl(words: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a README curl line; returns the body. Real curl when installed, else the same request
    with urllib (curl -s [-H HEADER] [-d DATA] URL, which is all the README uses)."""
    url = next(
        w for i, w in enumerate(words) if i > 0 and not w.startswith("-") and words[i - 1] not in ("-d", "-H")
    )
    if shutil.which("curl", path=env["PATH"]):
        done = subprocess.run(
            ["curl", "--fail", "--show-error", "--max-time", "10", *words[1:]],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert done.returncode == 0, f"curl {url}: {done.stderr}"
        body = done.stdout
    else:
        data = _flag_value(words, "-d")
        target = url if url.startswith("http") else "http://" + url
        header = _flag_value(words, "-H")
        headers: dict[str, str] = {}
        if header:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        request = urllib.request.Request(
            target, data=data.encode() if data is not None else None, headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # raises on 4xx/5xx
            body = response.read().decode()
    path = url.split("?")[0]
    if path.endswith("/status"):
        assert {"level", "features", "requests"} <= set(orjson.loads(body)), body[:300]
    elif path.endswith("/metrics"):
        assert "# TYPE " in body, body[:300]
    elif path.endswith(":predict"):
        assert isinstance(orjson.loads(body)["predictions"], list), body[:300]
    elif path.endswith("/api/v1/query"):  # Prometheus: the query must find something
        answer = orjson.loads(body)
        assert answer["status"] == "success", body[:300]
        assert answer["data"]["result"], f"{url}: no series yet"
    return body


def _prometheus_query(words: list[str], env: dict[str, str], cwd: Path) -> str:
    """A README query of Prometheus, asked again for up to 30 s while it finds nothing: the series
    exist once the monitor process has started, exported, and Prometheus has scraped the Collector
    and evaluated its rules (a second each here, but the monitor's start takes seconds on a busy
    machine). A reader who queries too early does the same."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            return _curl(words, env, cwd)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class _BlockRunner:
    def __init__(self, scratch: Path, env: dict[str, str]) -> None:
        self.scratch = scratch
        self.base_env = env
        self.log = scratch.parent / "servers.log"

    def run(self, block: Block) -> None:
        env = dict(self.base_env)
        servers: list[tuple[subprocess.Popen[bytes], str]] = []
        try:
            for command in _commands(block.code):
                self._line(command, env, servers, block)
        except BaseException:
            for process, _ in servers:  # the first failure is the one to report
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
            raise
        for process, command in reversed(servers):  # the sidecar before its model
            self._stop(process, command, block)

    def _line(
        self,
        command: str,
        env: dict[str, str],
        servers: list[tuple[subprocess.Popen[bytes], str]],
        block: Block,
    ) -> None:
        where = f"README line {block.line}: {command}"
        words = shlex.split(command, comments=True)
        if words[0] == "export":
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value
            return
        if words[0] in (".", "source") and words[1:] == [".venv/bin/activate"]:
            # The environment the demo made: here the test's own, first on PATH already.
            made_at = (REPO / "scripts" / "_venv.sh").read_text()
            assert "$root/.venv" in made_at, f"{where}: the scripts make their environment elsewhere"
            return
        if words[:2] == ["pip", "install"]:
            for package in words[2:]:
                module = package.split("[")[0].replace("-", "_")
                check = subprocess.run(
                    [sys.executable, "-c", f"import {module}"], capture_output=True, check=False
                )
                assert check.returncode == 0, f"{where}: {package} is not installed (the test runs offline)"
            return
        if words[0] == "curl":
            if "/api/v1/query" in command:
                _prometheus_query(words, env, self.scratch)
            else:
                _curl(words, env, self.scratch)
            return
        for pattern, ports in SERVER_COMMANDS:
            if pattern.match(command):
                servers.append((self._start(command, words, ports, env, where), command))
                return
        if DEMO_COMMAND.match(command):
            done = self._shell(shlex.join(words + DEMO_SHORT), env, 90)
            assert done.returncode == 0, (
                f"{where}: exit {done.returncode}\n{done.stdout[-3000:]}{done.stderr}"
            )
            assert "\nsummary\n" in done.stdout, f"{where}: no summary\n{done.stdout[-3000:]}"
            assert "clean-up: the traffic, the sidecar and the model server stopped" in done.stdout, where
            return
        done = self._shell(command, env, 60)
        assert done.returncode == 0, (
            f"{where}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )

    def _shell(self, command: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            env=env,
            cwd=self.scratch,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def _start(
        self, command: str, words: list[str], ports: dict[str, int], env: dict[str, str], where: str
    ) -> subprocess.Popen[bytes]:
        wanted = [int(_flag_value(words, flag) or default) for flag, default in ports.items()]
        busy = [port for port in wanted if not _port_free(port)]
        if busy:
            pytest.skip(f"{where}: port(s) {busy} already in use on this machine")
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                ["bash", "-c", "exec " + command],
                env=env,
                cwd=self.scratch,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not all(_listening(port) for port in wanted):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"{where}: did not start serving\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return process

    def _stop(self, process: subprocess.Popen[bytes], command: str, block: Block) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            code = process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
            raise AssertionError(f"README line {block.line}: {command} did not stop on SIGTERM") from None
        # uvicorn re-raises the signal once it has shut down gracefully (exit status -SIGTERM).
        assert code in (0, -signal.SIGTERM), (
            f"README line {block.line}: {command} exited {code}\n{self.log.read_text()[-3000:]}"
        )


def test_the_first_two_commands_are_the_demo_and_the_tests() -> None:
    first, second = [b for b in BLOCKS if b.language == "bash"][:2]
    assert [shlex.split(c, comments=True) for c in _commands(first.code)] == [["scripts/demo.sh"]]
    assert [shlex.split(c, comments=True) for c in _commands(second.code)] == [["scripts/test.sh"]]
    assert first.skip_reason is None  # the demo runs in the test below
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert os.access(REPO / script, os.X_OK), script


def test_skip_markers_give_a_reason_and_sit_on_a_bash_block() -> None:
    text = README.read_text(encoding="utf-8")
    markers = [line for line in text.splitlines() if line.strip().startswith("<!-- readme-test")]
    assert all(SKIP_MARKER.match(line.strip()) for line in markers), markers
    skipped = [b for b in BLOCKS if b.skip_reason is not None]
    assert len(skipped) == len(markers)  # each marker is right above a fence
    assert all(b.language == "bash" for b in skipped)


def test_python_blocks_are_valid_python() -> None:
    for block in BLOCKS:
        if block.language == "python":
            ast.parse(block.code, filename=f"README.md:{block.line}")


@pytest.mark.timeout(180)
def test_every_bash_block_runs(tmp_path: Path) -> None:
    runnable = [b for b in BLOCKS if b.language == "bash" and b.skip_reason is None]
    assert runnable
    for port in {8000, 8080, 9464}:
        if not _port_free(port):
            pytest.skip(f"port {port}, which the README's commands use, is in use on this machine")
    runner = _BlockRunner(_scratch(tmp_path), _base_env(tmp_path))
    with _otlp_sink() as sink:
        for block in runnable:
            runner.run(block)
    if sink is not None and any(f"localhost:{OTLP_PORT}" in b.code for b in runnable):
        assert sink.posts.get("/v1/metrics", 0) >= 1, sink.posts  # the demo's --otlp-endpoint sent


# ---- the reference tables against the code ------------------------------------------------


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    end = text.find("\n#", start + 5)
    return text[start : end if end > 0 else len(text)]


def _table_rows(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_configuration_table_names_every_setting_and_only_real_variables() -> None:
    rows = _table_rows(_section("Configuration"))
    settings: set[str] = set()
    export_settings: set[str] = set()
    for row in rows:
        names = _ticked(row[0])
        # `export.a`, `b`, `c` in one row: all three are ExportConfig fields.
        (export_settings if names[0].startswith("export.") else settings).update(
            name.removeprefix("export.") for name in names
        )
    assert settings == {f.name for f in dataclasses.fields(ModelTapConfig)} - {"export"}
    assert export_settings <= {f.name for f in dataclasses.fields(type(ModelTapConfig().export))}
    config_source = (SRC / "config.py").read_text(encoding="utf-8")
    for row in rows:
        for name in _ticked(row[1]):
            variable = name.split("=")[0].split(" ")[0]
            if re.fullmatch(r"(MODELTAP|OTEL)_[A-Z_]+", variable):
                assert f'"{variable}"' in config_source, variable


def test_metric_and_span_attribute_names_exist_in_the_code() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    metric_rows = _table_rows(_section("Exported metrics"))
    for row in metric_rows:
        name = _ticked(row[0])[0]
        assert f'"{name}"' in source, name
    for row in _table_rows(_section("Span attributes")):
        for name in _ticked(row[0]):
            if "<name>" in name:
                name = name.split("<name>")[0]
            elif name.startswith("…"):
                continue
            # `modeltap.request.body` and `modeltap.response.body` come from one f-string.
            templated = re.sub(r"^modeltap\.(request|response)\.", "modeltap.{direction}.", name)
            assert name in source or templated in source, name


def test_status_fields_table_matches_a_real_document(tmp_path: Path) -> None:
    x, y = training_data()
    reference = tmp_path / "reference.json"
    reference.write_bytes(orjson.dumps(numeric_profile_document(FEATURES, x, model_name="churn")))
    app = ModelTapMiddleware(build_app(ChurnModel.train(x, y)), model_name="churn", reference=str(reference))
    try:
        with serve(app, "uvicorn-readme") as url, httpx.Client(base_url=url, timeout=10.0) as client:
            assert (
                client.post("/v1/models/churn:predict", json={"instances": [[12, 70, 1, 45, 5]]}).status_code
                == 200
            )
            assert app.tap.flush(5.0)
            document = client.get("/modeltap/status", params={"feature": "age"}).json()
    finally:
        app.tap.shutdown()
    assert set(document) == set(status_document(app.tap.latest_snapshot(), "churn")) | {"histogram"}
    rows: dict[str, str] = {}
    for row in _table_rows(_section("`/status` fields")):
        for name in _ticked(row[0]):
            rows[name] = row[1]
    assert set(rows) == set(document)
    # Objects list their keys; lists of objects list the keys of their items.
    nested = {"process", "model", "reference", "requests", "latency_s", "monitoring", "histogram"}
    for name in nested:
        assert set(document[name]) <= set(_ticked(rows[name])), name
    feature_keys = set(document["features"][0])
    assert feature_keys <= set(_ticked(rows["features"]))
    model_keys = set(document["models"][0])
    assert model_keys <= set(_ticked(rows["models"]))
    assert set(document["models"][0]["latency_s"]) <= set(_ticked(rows["models"]))


def test_the_collector_configuration_shown_is_the_one_the_tests_run() -> None:
    shown = [b.code for b in BLOCKS if b.language == "yaml" and "receivers:" in b.code]
    config = (REPO / "examples" / "backends" / "otelcol.yaml").read_text(encoding="utf-8")
    run = "\n".join(line for line in config.splitlines() if not line.startswith("#")).strip("\n")
    assert shown == [run]
