"""The shipper's write loop (`Shipper._send`): whatever each `sendmsg` takes (all of it, part of a
buffer, a few buffers and part of the next, at most MAX_IOV buffers per call), the socket ends up
with exactly the buffers' bytes, in order, each once; a timeout while the monitor still holds its
lock is waited through, and one without a monitor raises."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.handoff import shipper
from modeltap.handoff.shipper import MAX_IOV, Shipper

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class ShortWritingSocket:
    """Takes at most the next allowance's bytes per `sendmsg` (the allowances cycle), as a stream
    socket under back-pressure does; raises TimeoutError where an allowance is None."""

    def __init__(self, allowances: list[int | None]) -> None:
        self.received = bytearray()
        self.calls: list[int] = []  # buffers handed to each sendmsg
        self._allowances = allowances
        self._turn = 0

    def sendmsg(self, buffers: list[Any]) -> int:
        assert len(buffers) <= MAX_IOV
        self.calls.append(len(buffers))
        allowance = self._allowances[self._turn % len(self._allowances)]
        self._turn += 1
        if allowance is None:
            raise TimeoutError("timed out")
        data = b"".join(bytes(buffer) for buffer in buffers)
        taken = data[: max(1, allowance)]
        self.received += taken
        return len(taken)


def send(buffers: list[bytes], sock: ShortWritingSocket, monitor_alive: bool = True, total: int = -1) -> None:
    place = SimpleNamespace(monitor_alive=lambda: monitor_alive)
    Shipper._send(SimpleNamespace(_sock=sock, _place=place), buffers, total)  # type: ignore[arg-type]


@FAST
@given(
    buffers=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30),
    allowances=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=5),
    known_total=st.booleans(),
)
def test_every_byte_arrives_once_in_order_whatever_each_sendmsg_takes(
    buffers: list[bytes], allowances: list[int | None], known_total: bool
) -> None:
    sock = ShortWritingSocket(allowances)
    send(buffers, sock, total=sum(map(len, buffers)) if known_total else -1)
    assert bytes(sock.received) == b"".join(buffers)


def test_a_batch_taken_whole_is_one_sendmsg() -> None:
    sock = ShortWritingSocket([1 << 30])
    buffers = [b"head", *(b"record %d" % i for i in range(300))]
    send(buffers, sock)
    assert sock.calls == [len(buffers)]
    assert bytes(sock.received) == b"".join(buffers)


def test_more_buffers_than_one_sendmsg_takes_go_in_several(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipper, "MAX_IOV", 7)
    sock = ShortWritingSocket([1 << 30])
    buffers = [b"%03d" % i for i in range(20)]
    send(buffers, sock)
    assert sock.calls == [7, 7, 6]
    assert bytes(sock.received) == b"".join(buffers)


def test_a_timeout_is_waited_through_while_the_monitor_lives() -> None:
    sock = ShortWritingSocket([5, None, 3, None])
    buffers = [b"0123456789", b"abcdefghij"]
    send(buffers, sock, monitor_alive=True)
    assert bytes(sock.received) == b"".join(buffers)


def test_a_timeout_without_a_monitor_raises() -> None:
    sock = ShortWritingSocket([5, None])
    with pytest.raises(TimeoutError):
        send([b"0123456789", b"abcdefghij"], sock, monitor_alive=False)
    assert bytes(sock.received) == b"01234"
