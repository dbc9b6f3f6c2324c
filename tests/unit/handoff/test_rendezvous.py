"""Rendezvous: a private run directory (refused when others could use it), the server key (the
uvicorn/gunicorn supervisor's pid, a config digest), socket path limits, the 0600 atomic config
file and the lock that says whether a monitor runs."""

from __future__ import annotations

import fcntl
import grp
import multiprocessing
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modeltap.handoff import rendezvous
from modeltap.handoff.rendezvous import (
    MAX_SOCKET_PATH,
    Rendezvous,
    RendezvousError,
    check_run_directory,
    peer_is_us,
    run_directory,
    server_pid,
)

SRC = str(Path(rendezvous.__file__).resolve().parents[2])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (Unix socket paths are limited)."""
    path = Path(tempfile.mkdtemp(prefix="mt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---- run_directory --------------------------------------------------------------------------------


def test_run_directory_is_created_private(tmp_path: Path) -> None:
    wanted = tmp_path / "a" / "run"
    got = run_directory({"MODELTAP_RUN_DIR": f"  {wanted}  "})
    assert got == wanted
    assert wanted.is_dir()
    assert mode_of(wanted) == 0o700
    assert run_directory({"MODELTAP_RUN_DIR": str(wanted)}) == wanted  # again: reused


def test_run_directory_defaults_to_a_per_user_directory_in_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    got = run_directory({"MODELTAP_RUN_DIR": "  "})
    assert got == tmp_path / f"modeltap-{os.getuid()}"
    assert mode_of(got) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701, 0o1777])
def test_run_directory_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    wanted = tmp_path / "run"
    wanted.mkdir()
    wanted.chmod(mode)
    with pytest.raises(RendezvousError, match="0700"):
        run_directory({"MODELTAP_RUN_DIR": str(wanted)})


def test_run_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    wanted = tmp_path / "run"
    wanted.write_text("")
    with pytest.raises(RendezvousError, match="run"):
        run_directory({"MODELTAP_RUN_DIR": str(wanted)})


def test_run_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """A link could be redirected by whoever owns it: the directory itself must be ours."""
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(target)
    with pytest.raises(RendezvousError, match="not a directory"):
        run_directory({"MODELTAP_RUN_DIR": str(link)})


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_run_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    wanted = tmp_path / "run"
    wanted.mkdir(mode=0o700)
    os.chown(wanted, 65534, 65534)
    with pytest.raises(RendezvousError, match="another user"):
        run_directory({"MODELTAP_RUN_DIR": str(wanted)})


def test_run_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RendezvousError, match="cannot use"):
        run_directory({"MODELTAP_RUN_DIR": str(blocker / "run")})


# ---- the run directory's ancestors ------------------------------------------------------------


@pytest.mark.parametrize(("mode", "refused"), [(0o777, True), (0o1777, False), (0o757, True), (0o755, False)])
def test_an_ancestor_others_may_write_is_refused_unless_sticky(
    tmp_path: Path, mode: int, refused: bool
) -> None:
    """Whoever may rename entries of an ancestor could swap the run directory for one of theirs
    (and receive the captured payloads): refused, unless the sticky bit stops them (`/tmp`)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    wanted = shared / "deeper" / "run"
    if refused:
        with pytest.raises(RendezvousError, match=r"shared, above the run directory .* writable by other"):
            run_directory({"MODELTAP_RUN_DIR": str(wanted)})
    else:
        assert run_directory({"MODELTAP_RUN_DIR": str(wanted)}) == wanted


def test_an_ancestor_writable_by_another_group_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    wanted = shared / "run"
    wanted.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(shared, 0, 65534)  # another group
        with pytest.raises(RendezvousError, match="writable by other users"):
            check_run_directory(wanted)
    os.chown(shared, os.getuid(), os.getgid())  # the user's own group: allowed
    check_run_directory(wanted)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_an_ancestor_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    wanted = theirs / "run"
    wanted.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(RendezvousError, match=r"theirs, above the run directory .* belongs to another"):
        check_run_directory(wanted)


def test_a_group_writable_ancestor_passes_only_for_the_users_own_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private group (named as the user, no other member) may write; a shared primary group
    (`users`, `staff`: other members could swap the directory) may not."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    os.chown(shared, os.getuid(), os.getgid())
    wanted = shared / "run"
    wanted.mkdir(mode=0o700)
    check_run_directory(wanted)  # the user's own group, no other member
    user = pwd.getpwuid(os.getuid()).pw_name
    group = SimpleNamespace(gr_name="users", gr_mem=[user, "bob"], gr_gid=os.getgid())
    monkeypatch.setattr(grp, "getgrgid", lambda gid: group)
    with pytest.raises(RendezvousError, match="writable by other users"):
        check_run_directory(wanted)


def test_a_world_writable_volume_root_is_the_mounts_business(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kubernetes emptyDir or a Docker volume is mounted 0777 without the sticky bit, owned by
    root; in a container only its own processes write there. Any other such directory is refused,
    with what would make it safe in the message."""
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    wanted = volume / "run"
    with pytest.raises(RendezvousError, match=r"set its sticky bit \(chmod \+t"):
        run_directory({"MODELTAP_RUN_DIR": str(wanted)})
    if os.getuid() != 0:
        return  # a volume root is root's: the exception needs it so
    monkeypatch.setattr(rendezvous, "_mount_points", lambda: frozenset({str(volume)}))
    assert run_directory({"MODELTAP_RUN_DIR": str(wanted)}) == wanted


def test_the_mount_points_include_the_root() -> None:
    points = rendezvous._mount_points()
    if Path("/proc/self/mountinfo").exists():
        assert "/" in points


def test_no_temporary_directory_means_no_monitor_never_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only root file system: `gettempdir` itself fails (FileNotFoundError). The tap
    runs inline on a RendezvousError; any other error reached every request of the app."""

    def nowhere() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(tempfile, "gettempdir", nowhere)
    with pytest.raises(RendezvousError, match="No usable temporary directory"):
        run_directory({})


def test_the_ancestors_a_link_leads_to_are_checked_too(tmp_path: Path) -> None:
    """A path through a symbolic link: the directories it resolves to are checked as well."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "real").mkdir()
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o700)
    (safe / "link").symlink_to(shared / "real")
    with pytest.raises(RendezvousError, match="writable by other users"):
        run_directory({"MODELTAP_RUN_DIR": str(safe / "link" / "run")})


def test_the_monitor_refuses_a_run_directory_the_tap_would_refuse(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    wanted = shared / "run"
    wanted.mkdir(mode=0o700)
    shared.chmod(0o777)
    done = subprocess.run(
        [sys.executable, "-m", "modeltap.monitor", "--run-dir", str(wanted), "--key", "k"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "writable by other users" in done.stderr
    assert not (wanted / "k.lock").exists()  # it stopped before taking anything there


def test_a_peer_is_us_only_when_it_runs_as_this_user(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert peer_is_us(ours)
        monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1)
        assert not peer_is_us(ours)


# ---- server_pid -----------------------------------------------------------------------------------

CHILD = (
    "import os, sys; sys.path.insert(0, sys.argv[1]); "
    "from modeltap.handoff.rendezvous import server_pid; "
    "print(server_pid(), os.getppid(), os.getpid())"
)
PARENT = f"""
import subprocess, sys
out = subprocess.run([sys.executable, "-c", {CHILD!r}, {SRC!r}], capture_output=True, text=True, check=True)
print(out.stdout.strip())
"""


def run_as(tmp_path: Path, name: str) -> tuple[int, int, int]:
    """Run a parent process whose command line names `name`, and report what its child's
    `server_pid()` says (with the child's parent pid and own pid)."""
    script = tmp_path / name
    script.write_text(PARENT)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=30
    )
    reported, parent, own = (int(word) for word in out.stdout.split())
    return reported, parent, own


@pytest.mark.parametrize("name", ["uvicorn", "gunicorn"])
def test_server_pid_is_the_supervisors_for_a_worker(tmp_path: Path, name: str) -> None:
    reported, parent, own = run_as(tmp_path, name)
    assert parent != own
    assert reported == parent


def test_server_pid_is_our_own_otherwise(tmp_path: Path) -> None:
    reported, parent, own = run_as(tmp_path, "runner.py")
    assert reported == own != parent


def test_server_pid_reads_the_parents_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = {
        ("/usr/bin/python3", "-m", "uvicorn", "app:app"): True,
        ("/srv/venv/bin/gunicorn", "-k", "uvicorn.workers.UvicornWorker"): True,
        ("gunicorn: master [app:app]",): True,  # setproctitle's form
        ("/usr/bin/python3", "/usr/bin/gunicorn3", "app:app"): True,  # Debian's older name
        ("/usr/bin/python3", "serve.py", "--uvicorn"): False,
        ("/bin/bash",): False,
        # A shell that started the server: no server of workers (its monitor waited for it).
        ("sh", "-c", "uvicorn app:app --port 8000; sleep 40"): False,
        ("/usr/bin/uvicorn-wrapper.sh",): False,
        (): False,  # the parent is gone or unreadable
    }
    for words, is_worker in lines.items():
        monkeypatch.setattr(rendezvous, "_command_line", lambda pid, w=words: list(w))
        assert server_pid() == (os.getppid() if is_worker else os.getpid()), words


def test_server_pid_is_the_parents_for_a_worker_of_uvicorns_own_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`uvicorn.run(app, workers=N)` in a script (or `fastapi run --workers N`): the parent's
    command line names no supervisor, but the worker is a multiprocessing child of it whose target
    is uvicorn's subprocess entry point."""
    from uvicorn._subprocess import subprocess_started

    monkeypatch.setattr(rendezvous, "_command_line", lambda pid: ["/usr/bin/python3", "serve.py"])
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: SimpleNamespace(pid=os.getppid()))
    worker = SimpleNamespace(_target=subprocess_started)
    monkeypatch.setattr(multiprocessing, "current_process", lambda: worker)
    assert server_pid() == os.getppid()


def report_server_pid(results: Any) -> None:
    results.put((server_pid(), os.getppid(), os.getpid()))


def test_server_pid_is_our_own_in_any_other_multiprocessing_child() -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=report_server_pid, args=(results,))
    child.start()
    reported, parent, own = results.get(timeout=30)
    child.join(30)
    assert parent == os.getpid()
    assert reported == own != parent


# ---- Rendezvous -----------------------------------------------------------------------------------


def test_keys_name_the_server_and_the_configuration(short_dir: Path) -> None:
    a = Rendezvous.for_server(short_dir, "srv", {"model": "a", "limits": [1, 2]})
    assert a.key.startswith("srv-")
    assert a == Rendezvous.for_server(short_dir, "srv", {"limits": [1, 2], "model": "a"})  # key order
    assert a.key != Rendezvous.for_server(short_dir, "srv", {"model": "b", "limits": [1, 2]}).key
    assert a.key != Rendezvous.for_server(short_dir, "other", {"model": "a", "limits": [1, 2]}).key
    default = Rendezvous.for_server(short_dir, None, {"model": "a", "limits": [1, 2]})
    assert default.key.startswith(f"{server_pid()}-")
    paths = {a.ingest_socket, a.views_socket, a.lock_file, a.config_file}
    assert len(paths) == 4
    assert all(path.parent == short_dir and path.name.startswith(a.key) for path in paths)


def test_socket_paths_at_the_limit_work_and_longer_ones_are_refused(short_dir: Path) -> None:
    probe = Rendezvous.for_server(short_dir, "srv", {})
    room = MAX_SOCKET_PATH - len(str(probe.views_socket).encode())
    at_limit = short_dir / ("d" * (room - 1))
    place = Rendezvous.for_server(at_limit, "srv", {})
    assert len(str(place.views_socket).encode()) == MAX_SOCKET_PATH
    at_limit.mkdir()
    for path in (place.ingest_socket, place.views_socket):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))
    with pytest.raises(RendezvousError, match=r"too long.*MODELTAP_RUN_DIR"):
        Rendezvous.for_server(short_dir / ("d" * room), "srv", {})


def test_write_config_is_private_atomic_and_readable_back(short_dir: Path) -> None:
    place = Rendezvous.for_server(short_dir, "srv", {})
    place.config_file.write_text("old")
    place.config_file.chmod(0o644)
    previous = os.umask(0)
    try:
        place.write_config({"config": {"export": {"headers": {"authorization": "Bearer s3cret"}}}})
    finally:
        os.umask(previous)
    assert mode_of(place.config_file) == 0o600
    assert place.read_config() == {"config": {"export": {"headers": {"authorization": "Bearer s3cret"}}}}
    assert sorted(os.listdir(short_dir)) == [place.config_file.name]  # no temporary left behind


def test_write_config_that_fails_leaves_the_old_file_and_no_temporary(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = Rendezvous.for_server(short_dir, "srv", {})
    place.write_config({"generation": 1})

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        place.write_config({"generation": 2})
    monkeypatch.undo()
    assert place.read_config() == {"generation": 1}
    assert sorted(os.listdir(short_dir)) == [place.config_file.name]


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_monitor_alive_follows_the_lock(short_dir: Path) -> None:
    place = Rendezvous.for_server(short_dir, "srv", {})
    assert place.monitor_alive() is False  # no lock file at all
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(place.lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        assert place.monitor_alive() is True
        assert place.monitor_alive() is True  # asking twice does not disturb the holder
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert place.lock_file.exists()  # the file stays; the lock went with the process
    assert place.monitor_alive() is False
    # The probe itself let go of the lock: a monitor starting now takes it.
    fd = os.open(place.lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
