"""aioice's TURN client against `anchor serve` (issue 4, "must show" 3).

aioice (an independent implementation) allocates with ``aioice.turn.create_turn_endpoint``
over UDP, TCP and TLS, sends to a UDP echo peer on loopback (aioice binds a channel, which
installs the permission, then sends ChannelData; it never sends CreatePermission, see
docs/peers.md), receives every echo from the peer's address, and deletes its
allocation on close (Refresh with LIFETIME 0). The server's Prometheus metrics, scraped
over HTTP, must agree: allocations created and deleted, nothing left alive.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from peers import free_port, make_self_signed_cert, require_module

from tests.helpers import anchor_serve

pytestmark = pytest.mark.peer("aioice")

USER, PASSWORD = "alice", "secret"
REALM = "example.org"


@dataclass
class Served:
    """An `anchor serve` with TURN over UDP, TCP and TLS, and its metrics address."""

    port: int
    tls_port: int
    metrics_port: int
    cert: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`anchor serve` for this module, stopped by PID at the end."""
    require_module("aioice.turn")
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    port, tls_port, metrics = free_port("both"), free_port("tcp"), free_port("tcp")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--tcp", "--tls-cert", str(cert), "--tls-key", str(key),
        "--tls-listen", f"127.0.0.1:{tls_port}", "--realm", REALM,
        "--user", f"{USER}:{PASSWORD}", "--allow-loopback-peers", "--relay-ip", "127.0.0.1",
        "--metrics", f"127.0.0.1:{metrics}",
        expect=3,
    ) as lines:
        assert f"listening tls 127.0.0.1:{tls_port}" in lines
        yield Served(port, tls_port, metrics, cert)


def scrape(served: Served) -> dict[str, float]:
    """Unlabelled samples of the server's metrics."""
    url = f"http://127.0.0.1:{served.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.append(addr)
        assert self.transport is not None
        self.transport.sendto(data, addr)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_aioice_turn_client_echo_through_anchor_serve(served: Served, transport: str) -> None:
    turn = require_module("aioice.turn")
    before = scrape(served)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        echo_transport, echo = await loop.create_datagram_endpoint(
            _Echo, local_addr=("127.0.0.1", 0)
        )
        echo_addr = echo_transport.get_extra_info("sockname")[:2]
        context: ssl.SSLContext | None = None
        port = served.port
        if transport == "tls":
            context = ssl.create_default_context(cafile=str(served.cert))
            port = served.tls_port
        receiver: _Receiver | None = None
        try:
            relay, receiver = await asyncio.wait_for(
                turn.create_turn_endpoint(
                    _Receiver, ("127.0.0.1", port), USER, PASSWORD,
                    ssl=context, transport="udp" if transport == "udp" else "tcp",
                ),
                10,
            )
            relayed = relay.get_extra_info("sockname")
            mapped = relay.get_extra_info("related_address")
            assert relayed[0] == "127.0.0.1" and mapped[0] == "127.0.0.1"
            for i in range(10):
                payload = f"ping {i} over {transport}".encode() * (i + 1)
                relay.sendto(payload, echo_addr)
                data, source = await asyncio.wait_for(receiver.queue.get(), 5)
                assert data == payload and tuple(source) == tuple(echo_addr)
            assert set(echo.sources) == {tuple(relayed)}
            live = scrape(served)
            assert live["anchor_turn_allocations"] == before["anchor_turn_allocations"] + 1
            assert live["anchor_turn_channels"] >= 1
            relay.close()
            await asyncio.wait_for(receiver.closed, 10)
        finally:
            echo_transport.close()

    asyncio.run(main())
    after = scrape(served)
    assert after["anchor_turn_allocations"] == 0
    assert after["anchor_turn_channels"] == 0 and after["anchor_turn_permissions"] == 0
    created = "anchor_turn_allocations_created_total"
    deleted = "anchor_turn_allocations_deleted_total"
    assert after[created] == before[created] + 1
    assert after[deleted] == before[deleted] + 1
