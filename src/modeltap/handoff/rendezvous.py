"""How the serving processes of one server and their monitor find each other.

A run directory private to the user (mode 0700, owned by them: `MODELTAP_RUN_DIR`, default
`$TMPDIR/modeltap-<uid>`) holds, per server key, the monitor's ingest socket, its views socket,
a lock file the live monitor holds, and the configuration it is started with (mode 0600: it may
carry OTLP credentials). The key names the server: the supervisor's pid for uvicorn and gunicorn
worker children, else the process's own pid, or an explicit `monitor_id`; a digest of the
configuration is appended, so two differently configured apps in one process never share a
monitor. Nothing in the directory is trusted blindly: a socket is live only if it accepts a
connection, its peer must run as the same user (`peer_is_us`), and the lock, not a pid file,
says whether a monitor runs. The directory's ancestors are checked too (`check_run_directory`,
as OpenSSH's StrictModes does): whoever may rename an entry of one of them could put a directory
of their own in its place, and receive the captured payloads.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import os
import pwd
import re
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modeltap.errors import ModelTapError

# AF_UNIX paths are limited to 108 bytes on Linux (107 usable).
MAX_SOCKET_PATH = 107
SUPERVISORS = ("uvicorn", "gunicorn")
_TITLES = tuple(f"{name}: " for name in SUPERVISORS)
_PROGRAM = re.compile(r"(?:uvicorn|gunicorn)\d*")  # Debian's gunicorn3 too


class RendezvousError(ModelTapError):
    """The run directory cannot be used safely (then the tap runs inline)."""


def run_directory(environ: Any = None) -> Path:
    """The private run directory, created if needed; refuses one that others could write, or
    that sits where others could swap it (`check_run_directory`)."""
    env = os.environ if environ is None else environ
    configured = env.get("MODELTAP_RUN_DIR", "").strip()
    try:
        # No writable temporary directory at all (a read-only root file system): an OSError from
        # `gettempdir` too, which must mean inline mode, never an error on the request path.
        path = Path(configured) if configured else Path(tempfile.gettempdir()) / f"modeltap-{os.getuid()}"
        path.mkdir(mode=0o700, parents=bool(configured), exist_ok=True)
    except OSError as exc:
        where = configured or "a temporary directory"
        raise RendezvousError(f"cannot use the run directory {where}: {exc.strerror or exc}") from None
    check_run_directory(path)
    return path


def check_run_directory(path: Path) -> None:
    """Raise `RendezvousError` unless `path` is a directory of this user's, mode 0700, whose
    every ancestor (as written and as resolved) belongs to root or this user and is not writable
    by others, unless its sticky bit keeps them from renaming what is not theirs (`/tmp`). The
    monitor repeats the check on the directory it is handed."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise RendezvousError(f"cannot use the run directory {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RendezvousError(f"the run directory {path} is not a directory")
    if info.st_uid != os.getuid():
        raise RendezvousError(f"the run directory {path} belongs to another user")
    if info.st_mode & 0o077:
        raise RendezvousError(
            f"the run directory {path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            "it must be 0700"
        )
    absolute = Path(os.path.abspath(path))
    mounts = _mount_points()
    for ancestor in dict.fromkeys((*absolute.parents, *absolute.resolve().parents)):
        _check_ancestor(path, ancestor, mounts)


def _mount_points() -> frozenset[str]:
    """Where file systems are mounted (`/proc/self/mountinfo`; none known elsewhere)."""
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    points = set()
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:  # octal escapes for blanks and backslashes, as the kernel writes them
            points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return frozenset(points)


def _private_group(gid: int) -> bool:
    """Whether `gid` is this user's own group: named as the user, with no other member (Debian's
    reading of StrictModes). A shared primary group (`users`, `staff`) is not."""
    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False
    return group.gr_name == user and set(group.gr_mem) <= {user}


def _check_ancestor(path: Path, ancestor: Path, mounts: frozenset[str]) -> None:
    try:
        info = ancestor.stat()
    except OSError as exc:
        raise RendezvousError(
            f"cannot check {ancestor}, above the run directory: {exc.strerror or exc}"
        ) from None
    if info.st_uid not in (0, os.getuid()):
        raise RendezvousError(
            f"{ancestor}, above the run directory {path}, belongs to another user, who could put "
            "a directory of theirs in its place; set MODELTAP_RUN_DIR to a directory of your own"
        )
    # Writable by others without the sticky bit: they may rename our directory away. The group
    # write bit is allowed for the user's own private group only.
    shared = info.st_mode & 0o002 or (info.st_mode & 0o020 and not _private_group(info.st_gid))
    if not shared or info.st_mode & stat.S_ISVTX:
        return
    if info.st_uid == 0 and str(ancestor) in mounts:
        # The root of a mounted volume (a Kubernetes emptyDir, a Docker volume: 0777, no sticky
        # bit): who may write to it is the mount's business, in a container its own processes.
        return
    raise RendezvousError(
        f"{ancestor}, above the run directory {path}, is writable by other users (mode "
        f"{stat.S_IMODE(info.st_mode):o}, no sticky bit), who could put a directory of theirs in its "
        "place: set its sticky bit (chmod +t, as /tmp has), or MODELTAP_RUN_DIR to a directory "
        "none but you can write to"
    )


_PEER_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_is_us(sock: socket.socket) -> bool:
    """Whether the process at the other end of a Unix socket runs as this user (Linux's
    `SO_PEERCRED`; where the option does not exist, the run directory's checks alone)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True
    try:
        _pid, uid, _gid = _PEER_CREDENTIALS.unpack(
            sock.getsockopt(socket.SOL_SOCKET, option, _PEER_CREDENTIALS.size)
        )
    except OSError:
        return False
    return bool(uid == os.getuid())


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def server_pid() -> int:
    """The supervisor's pid when this process is a uvicorn or gunicorn worker, else our own."""
    parent = os.getppid()
    words = _command_line(parent)[:3]
    # The program's own name (`uvicorn`, `python -m gunicorn`), or gunicorn's process title
    # (`gunicorn: master [app]`); not a word that only starts so, such as a shell's
    # `sh -c "uvicorn app:app; ..."`, which is no server of workers.
    if any(_PROGRAM.fullmatch(Path(word).name) or word.startswith(_TITLES) for word in words):
        return parent
    if _started_by_uvicorn_supervisor(parent):
        return parent
    return os.getpid()


def _started_by_uvicorn_supervisor(parent: int) -> bool:
    """Whether uvicorn's own supervisor started this process as a worker, whatever its command
    line says: `uvicorn.run(app, workers=N)` in a script, `fastapi run --workers N`. Its workers
    are multiprocessing children whose target is uvicorn's subprocess entry point (a plain
    multiprocessing child is no server's worker: it keeps its own pid)."""
    multiprocessing = sys.modules.get("multiprocessing")  # imported in every such worker
    if multiprocessing is None:
        return False
    mp_parent = multiprocessing.parent_process()
    if mp_parent is None or mp_parent.pid != parent:
        return False
    target = getattr(multiprocessing.current_process(), "_target", None)
    return str(getattr(target, "__module__", "")).startswith("uvicorn.")


def config_digest(document: Any) -> str:
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]


@dataclass(frozen=True)
class Rendezvous:
    """The files of one server's monitor.

    Example::

        place = Rendezvous.for_server(run_directory(), monitor_id=None, config=document)
        place.ingest_socket, place.views_socket, place.lock_file
    """

    directory: Path
    key: str

    @classmethod
    def for_server(cls, directory: Path, monitor_id: str | None, config: Any) -> Rendezvous:
        key = f"{monitor_id or server_pid()}-{config_digest(config)}"
        place = cls(directory, key)
        if len(str(place.views_socket).encode()) > MAX_SOCKET_PATH:
            raise RendezvousError(
                f"the run directory path is too long for a Unix socket ({place.views_socket}); "
                "set MODELTAP_RUN_DIR to a shorter one"
            )
        return place

    @property
    def ingest_socket(self) -> Path:
        return self.directory / f"{self.key}.sock"

    @property
    def views_socket(self) -> Path:
        return self.directory / f"{self.key}.views"

    @property
    def lock_file(self) -> Path:
        return self.directory / f"{self.key}.lock"

    @property
    def config_file(self) -> Path:
        return self.directory / f"{self.key}.json"

    def write_config(self, document: Any) -> None:
        """Atomically, readable by the user only (it may hold OTLP credentials)."""
        data = orjson.dumps(document)
        fd, temporary = tempfile.mkstemp(prefix=f".{self.key}.", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, self.config_file)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
            raise

    def monitor_alive(self) -> bool:
        """Whether a monitor holds this server's lock (running, or starting up)."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def read_config(self) -> Any:
        return orjson.loads(self.config_file.read_bytes())

    def spawn_monitor(self, document: Any, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        """Start `python -m modeltap.monitor` for this server (a second one started by another
        worker at the same moment finds the lock held and exits at once). `pass_fds`: listening
        sockets the monitor serves (the sidecar's admin port)."""
        self.write_config(document)
        environment = dict(os.environ)
        # Our own interpreter and module, arguments from a private directory: no untrusted input.
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "modeltap.monitor", "--run-dir", str(self.directory), "--key", self.key],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # its logs go to stderr; our stdout may be a pipe someone reads to EOF
            env=environment,
            close_fds=True,
            pass_fds=pass_fds,
        )
