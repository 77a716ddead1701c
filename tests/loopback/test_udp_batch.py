"""Batched UDP I/O (anchor_stun.aio.udp) over real loopback sockets: segmented sends and
coalesced reads move exactly the datagrams separate calls would, in order."""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from anchor_stun.aio.udp import MAX_SEGMENTS, UdpBatchIO

LINUX = sys.platform.startswith("linux")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A sender connected to a receiver, both non-blocking UDP sockets on 127.0.0.1."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    a.connect(b.getsockname())
    yield a, b
    a.close()
    b.close()


def stream() -> list[bytes]:
    """Runs of equal sizes with shorter datagrams closing some, longer ones opening others,
    a run longer than one segmented send, lone datagrams and an empty one."""
    out = [bytes([i]) * 1200 for i in range(5)] + [b"short"]
    out += [bytes([i]) * 900 for i in range(MAX_SEGMENTS + 10)]
    out += [b"x" * 1300, b"", b"y" * 7, b"z" * 7, b"w" * 3]
    return out


def drain_plain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            return got


@pytest.mark.parametrize("segment", [True, False])
def test_sent_datagrams_arrive_unchanged_in_order(
    pair: tuple[socket.socket, socket.socket], segment: bool
) -> None:
    a, b = pair
    io = UdpBatchIO(a, segment=segment, coalesce=False)
    assert io.segmenting == (segment and LINUX)
    datagrams = stream()
    assert io.send(datagrams) == (len(datagrams), None)
    assert drain_plain(b) == datagrams  # a plain reader sees separate datagrams


def test_coalesced_reads_are_cut_apart(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sender = UdpBatchIO(a)
    receiver = UdpBatchIO(b)
    datagrams = stream()
    assert sender.send(datagrams, None, 0) == (len(datagrams), None)
    got: list[tuple[bytes, Any]] = []
    assert receiver.receive(got, 1000) is None
    assert [data for data, _ in got] == datagrams
    assert {addr for _, addr in got} == {a.getsockname()}
    if sender.segmenting and receiver.coalescing:
        # a segmented run comes back in one read: the first five datagrams and the short one
        got = []
        assert sender.send(datagrams[:6]) == (6, None)
        assert receiver.receive(got, 1) is None
        assert [data for data, _ in got] == datagrams[:6]


def test_send_from_an_offset_to_an_address(pair: tuple[socket.socket, socket.socket]) -> None:
    _, b = pair
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        c.bind(("127.0.0.1", 0))
        c.setblocking(False)
        datagrams = stream()
        assert UdpBatchIO(c).send(datagrams, b.getsockname(), 3) == (len(datagrams), None)
        assert drain_plain(b) == datagrams[3:]
    finally:
        c.close()


def test_refused_send_reports_its_error_and_position() -> None:
    """An ICMP port unreachable comes back as ECONNREFUSED on a later send of a connected
    socket: ``send`` says which datagram it refused, having sent those before."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()
    probe.close()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.setblocking(False)
        a.connect(closed_port)
        io = UdpBatchIO(a)
        assert io.send([b"first"]) == (1, None)  # the port unreachable comes back
        sent, error = io.send([b"a" * 100] * 3, None, 1)
        assert sent == 1
        assert error is not None and error.errno == errno.ECONNREFUSED
    finally:
        a.close()


@pytest.mark.skipif(not LINUX, reason="UDP_SEGMENT is Linux's")
def test_a_refused_segmented_send_falls_back_to_one_at_a_time(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A socket without UDP checksums (SO_NO_CHECK) cannot segment: the kernel refuses the
    segmented send with EINVAL, and the same datagrams go one at a time from then on."""
    a, b = pair
    io = UdpBatchIO(a, coalesce=False)
    if not io.segmenting:
        pytest.skip("this kernel does not offer UDP_SEGMENT")
    a.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK (<asm-generic/socket.h>)
    datagrams = stream()
    assert io.send(datagrams) == (len(datagrams), None)
    assert not io.segmenting
    assert drain_plain(b) == datagrams
