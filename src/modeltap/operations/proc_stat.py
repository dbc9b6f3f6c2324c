"""A process's `/proc/<pid>/stat` fields (Linux), read the one safe way: the command name, in
parentheses, may itself hold spaces and parentheses, so the fields are those after its last `)`.
`fields[0]` is the state (field 3 of proc(5)), `fields[1]` the parent's pid, `fields[19]` the
start time in clock ticks since boot (field 22)."""

from __future__ import annotations


def stat_fields(pid: int | str = "self") -> list[str] | None:
    """The fields after the command name, or None where /proc cannot tell (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
