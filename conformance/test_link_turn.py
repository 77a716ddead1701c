"""The ephemeral link through real TURN servers in other processes: coturn (``turnserver``)
and Anchor's own ``anchor serve``.

Two :class:`~anchor_link.aio.endpoint.LinkEndpoint` endpoints in this process, in-process signalling, the
gateway policy: the link forms on the first send, its selected pair is relay/relay (on loopback
every direct pair is a host pair, which the gateway policy never takes), several messages (60
and 64 KiB among them) arrive intact, and after the idle timeout the link dissolves. Then:

- this process holds exactly the socket file descriptors and asyncio tasks it held before the
  first send (``/proc/self/fd``, ``asyncio.all_tasks()``: ``tests.loopback.test_link.exchange_and_dissolve``);
- the server holds no allocation of the link. For ``anchor serve`` that is its own count, the
  ``anchor_turn_allocations`` gauge of ``--metrics`` (and ``allocations_deleted`` went up by
  two: released by Refresh LIFETIME 0, not expired). coturn exposes no count here (its CLI is
  off in these tests), so the count is of its relay sockets: UDP sockets bound on loopback in
  coturn's relay port range (``/proc/net/udp``), one per allocation, compared with the count
  before the test (the coturn fixture is shared by the session). coturn closes the relay
  socket of a deleted allocation on its one-second timer, so this count is read after at
  most 3 s (an allocation not released would keep its socket for its 600 s lifetime);
- the next send forms a new link, which dissolves the same way.

Each server is a separate process started by the test (coturn by the session fixture of
conftest.py, ``anchor serve`` per test) on free loopback ports, stopped by PID.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
from peers import Coturn, free_port

from anchor_ice.aio.gather import TurnServerConfig
from anchor_ice.candidate import CandidateType
from anchor_ice.nominator import GatewayNominator
from anchor_link.aio.endpoint import LinkEndpoint
from anchor_link.aio.signal import InProcessSignalling
from anchor_link.state import LinkFailed
from tests.helpers import anchor_serve
from tests.loopback.test_link import IDLE, exchange_and_dissolve, run

LOOPBACK = "127.0.0.1"

pytestmark = pytest.mark.timeout(120)


@dataclass
class Server:
    """A TURN server to link through, and how to count its allocations."""

    name: str
    turn: TurnServerConfig
    allocations: Callable[[], int | Awaitable[int]]
    """Allocations the server holds now (beyond those it held before the test)."""
    released: Callable[[], int] | None = None
    """Allocations it deleted on request so far (None: not observable)."""
    now: Callable[[], int] | None = None
    """The count without waiting (None: ``allocations`` is immediate)."""


async def _count(allocations: Callable[[], int | Awaitable[int]]) -> int:
    value = allocations()
    return await value if isinstance(value, Awaitable) else value


def _metric(url: str, name: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise AssertionError(f"no metric {name} at {url}")


def _udp_bound_in(low: int, high: int, ip: str = LOOPBACK) -> int:
    """UDP sockets bound on ``ip`` with a port in [low, high] (``/proc/net/udp``)."""
    hex_ip = "".join(f"{int(part):02X}" for part in reversed(ip.split(".")))
    count = 0
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            local = line.split()[1]
            addr, port = local.split(":")
            if addr == hex_ip and low <= int(port, 16) <= high:
                count += 1
    return count


@pytest.fixture
def anchor_turn() -> Iterator[Server]:
    """``anchor serve`` with TURN (alice:secret), loopback peers allowed, metrics on."""
    port, metrics = free_port("udp"), free_port("tcp")
    with anchor_serve(
        "--listen", f"{LOOPBACK}:{port}", "--user", "alice:secret", "--realm", "example.org",
        "--allow-loopback-peers", "--metrics", f"{LOOPBACK}:{metrics}",
    ):  # fmt: skip
        url = f"http://{LOOPBACK}:{metrics}/metrics"
        yield Server(
            "anchor-serve",
            TurnServerConfig((LOOPBACK, port), "alice", "secret"),
            lambda: _metric(url, "anchor_turn_allocations"),
            lambda: _metric(url, "anchor_turn_allocations_deleted_total"),
        )


@pytest.fixture(params=["coturn", "anchor-serve"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each TURN server in turn."""
    if request.param == "coturn":
        coturn: Coturn = request.getfixturevalue("coturn")
        before = _udp_bound_in(coturn.min_port, coturn.max_port, coturn.host)

        def now() -> int:
            return max(0, _udp_bound_in(coturn.min_port, coturn.max_port, coturn.host) - before)

        async def settled() -> int:
            # coturn answers the Refresh (LIFETIME 0) at once but closes the relay socket of
            # the deleted allocation on its 1-second timer: wait up to 3 s for that. An
            # allocation that was not released would hold its socket for its whole lifetime
            # (600 s by default).
            for _ in range(30):
                if now() == 0:
                    break
                await asyncio.sleep(0.1)
            return now()

        return Server("coturn", TurnServerConfig(coturn.udp, coturn.username, coturn.password),
                      settled, now=now)  # fmt: skip
    anchor: Server = request.getfixturevalue("anchor_turn")
    return anchor


def test_gateway_link_through_the_server_forms_dissolves_and_reforms(server: Server) -> None:
    async def main() -> None:
        hub = InProcessSignalling()
        options = {
            "stun": server.turn.address, "turn": [server.turn], "idle_timeout": IDLE,
            "host_ips": [LOOPBACK], "nominator": GatewayNominator(grace=0.3),
        }  # fmt: skip
        a, b = LinkEndpoint("a", hub, **options), LinkEndpoint("b", hub, **options)  # type: ignore[arg-type]
        await a.start()
        await b.start()
        released_before = server.released() if server.released else 0
        try:
            assert await _count(server.allocations) == 0
            for round_ in (1, 2):
                formed = await exchange_and_dissolve(a, b, server.allocations, round_)
                assert (formed.local_type, formed.remote_type) == (
                    CandidateType.RELAY, CandidateType.RELAY,
                )  # fmt: skip
            if server.released is not None:
                assert server.released() - released_before == 4  # Refresh LIFETIME 0, twice 2
        finally:
            await a.close()
            await b.close()
        assert not [e for e in a.history + b.history if isinstance(e, LinkFailed)]

    run(main(), timeout=90)


def test_positive_control_the_relay_count_sees_a_live_link(server: Server) -> None:
    """The allocation count used above is not blind: it sees the link's two allocations."""

    async def main() -> None:
        hub = InProcessSignalling()
        options = {"turn": [server.turn], "policy": "relay", "idle_timeout": 30.0,
                   "host_ips": [LOOPBACK]}  # fmt: skip
        a, b = LinkEndpoint("a", hub, **options), LinkEndpoint("b", hub, **options)  # type: ignore[arg-type]
        await b.start()
        try:
            await a.send("b", b"hold")
            assert await asyncio.wait_for(b.recv(), 10) == ("a", b"hold")
            assert await _count(server.now or server.allocations) == 2
        finally:
            await a.close()
            await b.close()
        assert await _count(server.allocations) == 0

    run(main(), timeout=60)
