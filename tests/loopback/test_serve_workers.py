"""`anchor serve --workers 2` over loopback (issue 21): allocations from many client ports
spread over both workers (per-worker metrics at the one /metrics), all relay; a NONCE issued
by one worker process is accepted by another; workers killed with SIGKILL are restarted and
serve; SIGTERM exits 0 with no worker left and the metrics directory removed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from anchor_cli.serve import ServeError
from anchor_cli.serve_workers import split_ports
from anchor_stun.attributes import RequestedTransport
from anchor_stun.integrity import LongTermCredentials
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn import TurnConnection
from tests.helpers import anchor_serve, free_port, scrape

USER = ("alice", "wonderland")
CLIENTS = 20


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _supervisor(port: int) -> int:
    """The pid of the `anchor serve` whose workers hold ``port`` (the test's own child)."""
    for child in _children(os.getpid()):
        if f"127.0.0.1:{port}" in Path(f"/proc/{child}/cmdline").read_text().replace("\0", " "):
            return child
    raise AssertionError("no anchor serve child")


def _settle(metrics: int, predicate: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    deadline = time.monotonic() + 20
    while True:
        values = scrape(metrics)
        if predicate(values):
            return values
        assert time.monotonic() < deadline, values
        time.sleep(0.2)


async def _allocate_and_relay(
    port: int, count: int, transport_name: str = "udp", ca: Path | None = None
) -> None:
    """``count`` clients, each on its own UDP port (or TCP / TLS connection), allocate and
    relay one datagram each to a loopback echo peer and get it back."""
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    peer = transport.get_extra_info("sockname")[:2]
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    conns = [
        await TurnConnection.connect(
            ("127.0.0.1", port), *USER, transport_name,  # type: ignore[arg-type]
            ssl_context=context,
        )
        for _ in range(count)
    ]
    try:
        await asyncio.gather(*(c.allocate() for c in conns))
        await asyncio.gather(*(c.create_permission(peer[0]) for c in conns))
        for i, conn in enumerate(conns):
            conn.send(b"hello %d" % i, peer)
        for i, conn in enumerate(conns):
            data, source = await asyncio.wait_for(conn.recv(), 5)
            assert (data, source) == (b"hello %d" % i, peer)
    finally:
        for conn in conns:
            await conn.close()
        transport.close()


def _exchange(sock: socket.socket, data: bytes) -> Message:
    sock.send(data)
    return Message.decode(sock.recv(4096))


def test_workers_share_the_port_the_nonces_and_come_back() -> None:
    port, metrics = free_port(), free_port("tcp")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--user", ":".join(USER), "--allow-loopback-peers",
        "--workers", "2", "--metrics", f"127.0.0.1:{metrics}", "--min-port", "40000",
        "--max-port", "40999",
    ):  # fmt: skip
        supervisor = _supervisor(port)
        workers = _children(supervisor)
        assert len(workers) == 2
        env = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        (metrics_dir,) = [e.split(b"=", 1)[1].decode() for e in env
                          if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]  # fmt: skip
        assert Path(metrics_dir).is_dir()

        asyncio.run(_allocate_and_relay(port, CLIENTS))
        values = _settle(metrics, lambda m: m["anchor_turn_allocations_created_total"] == CLIENTS)
        per_worker = [values[f'anchor_worker_allocations_created_total{{worker="{i}"}}']
                      for i in (0, 1)]  # fmt: skip
        assert sum(per_worker) == CLIENTS and min(per_worker) > 0, per_worker
        assert values["anchor_workers"] == 2

        # A 401 challenge from whichever worker holds this client's 4-tuple...
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            creds = LongTermCredentials(*USER)
            request = Message(Method.ALLOCATE, MessageClass.REQUEST, b"a" * 12,
                              [RequestedTransport()])  # fmt: skip
            challenge = _exchange(sock, request.encode(fingerprint=True))
            assert challenge.error is not None and challenge.error.code == 401
            creds.challenge(challenge)
            # ...then every worker is killed: new processes, restarted by the supervisor.
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            values = _settle(
                metrics,
                lambda m: m["anchor_worker_restarts_total"] == 2 and m["anchor_workers"] == 2,
            )
            assert not set(_children(supervisor)) & set(workers)
            # The nonce the dead worker issued is good on the new one (one shared secret).
            request.transaction_id = b"b" * 12
            answer = _exchange(sock, creds.sign(request))
            assert answer.error is None, answer.error
            assert creds.verify_response(answer)

        asyncio.run(_allocate_and_relay(port, CLIENTS))  # the new workers serve everyone
        workers = _children(supervisor)
    assert all(not Path(f"/proc/{pid}").exists() for pid in [supervisor, *workers])
    assert not Path(metrics_dir).exists()


def test_workers_share_tcp_and_tls_listeners_and_one_killed_worker_is_replaced(
    tls_files: tuple[Path, Path],
) -> None:
    """SO_REUSEPORT on the stream listeners too: TCP and TLS clients spread over both
    workers and relay; one worker killed (its clients' connections die with it) is replaced,
    the other keeps serving, and new allocations over every transport succeed."""
    cert, key = tls_files
    port, tls_port, metrics = free_port("both"), free_port("both"), free_port("tcp")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--tcp", "--tls-cert", str(cert), "--tls-key",
        str(key), "--tls-listen", f"127.0.0.1:{tls_port}", "--user", ":".join(USER),
        "--allow-loopback-peers", "--workers", "2", "--metrics", f"127.0.0.1:{metrics}",
        "--min-port", "41000", "--max-port", "41999", expect=3,
    ):  # fmt: skip
        supervisor = _supervisor(port)
        workers = _children(supervisor)
        assert len(workers) == 2

        async def every_transport() -> None:
            await _allocate_and_relay(port, CLIENTS // 2, "tcp")
            await _allocate_and_relay(tls_port, CLIENTS // 2, "tls", cert)
            await _allocate_and_relay(port, CLIENTS // 2, "udp")

        asyncio.run(every_transport())
        total = CLIENTS // 2 * 3
        values = _settle(metrics, lambda m: m["anchor_turn_allocations_created_total"] == total)
        per_worker = [values[f'anchor_worker_allocations_created_total{{worker="{i}"}}']
                      for i in (0, 1)]  # fmt: skip
        assert sum(per_worker) == total and min(per_worker) > 0, per_worker

        os.kill(workers[0], signal.SIGKILL)
        _settle(metrics, lambda m: m["anchor_worker_restarts_total"] == 1 and m["anchor_workers"] == 2)
        survivors = _children(supervisor)
        assert workers[1] in survivors and workers[0] not in survivors
        asyncio.run(every_transport())  # the new worker and the old one serve everyone


def test_the_relay_port_range_is_cut_in_one_slice_per_worker() -> None:
    """No two workers can pick the same relayed port: consecutive slices of --min-port ..
    --max-port, the last one taking the rest; too few ports for the workers is a mistake."""
    assert split_ports(40000, 40999, 2) == [(40000, 40499), (40500, 40999)]
    assert split_ports(49152, 65535, 3) == [(49152, 54612), (54613, 60073), (60074, 65535)]
    slices = split_ports(1024, 1030, 3)
    assert slices == [(1024, 1025), (1026, 1027), (1028, 1030)]
    with pytest.raises(ServeError, match="too small for 4 workers"):
        split_ports(40000, 40006, 4)
