"""ICE through a TURN relay: coturn (``turnserver``) and Anchor's own ``anchor serve``.

On loopback every direct pair is a host pair (docs/design.md "Definitions"), so:

- two :class:`~anchor_ice.aio.connection.Connection`\\ s with the gateway policy (GatewayNominator)
  advertise only their relayed candidates, check relay to relay through the server, and end
  on a relay pair; no host pair is ever nominated, data flows both ways through the relay;
- with the standard policy (StandardNominator) and the same servers, they end on the host
  pair (the highest-priority valid pair, RFC 8445 §8.1.1), relayed candidates notwithstanding;
- two ``anchor ice --policy gateway --turn ... --user ...`` processes wired through pipes
  connect on a relay pair and echo.

Each server is a separate process started by the test (coturn by the session fixture of
conftest.py, ``anchor serve`` per test), on free loopback ports, stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import TypeVar

import pytest
from peers import Coturn, free_port

from anchor_ice.aio.connection import Connection
from anchor_ice.aio.gather import TurnServerConfig
from anchor_ice.candidate import CandidateType
from anchor_ice.nominator import GatewayNominator, StandardNominator
from anchor_stun.aio.net import format_address
from tests.helpers import ANCHOR, anchor_serve
from tests.test_ice_net import connect, wire

LOOPBACK = "127.0.0.1"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def anchor_turn() -> Iterator[TurnServerConfig]:
    """``anchor serve`` with TURN on (alice:secret), loopback peers allowed."""
    port = free_port("udp")
    with anchor_serve(
        "--listen", f"{LOOPBACK}:{port}", "--user", "alice:secret", "--realm", "example.org",
        "--allow-loopback-peers",
    ):  # fmt: skip
        yield TurnServerConfig((LOOPBACK, port), "alice", "secret")


@pytest.fixture(params=["coturn", "anchor-serve"])
def turn(request: pytest.FixtureRequest) -> TurnServerConfig:
    """Each TURN server in turn."""
    if request.param == "coturn":
        server: Coturn = request.getfixturevalue("coturn")
        return TurnServerConfig(server.udp, server.username, server.password)
    config: TurnServerConfig = request.getfixturevalue("anchor_turn")
    return config


async def _pair(turn: TurnServerConfig, gateway: bool) -> tuple[Connection, Connection, float]:
    def make(controlling: bool) -> Connection:
        nominator = GatewayNominator(grace=0.3) if gateway else StandardNominator()
        return Connection(
            controlling, host_ips=[LOOPBACK], turn_servers=[turn], nominator=nominator
        )

    a, b = make(True), make(False)
    took = await connect(a, b)
    return a, b, took


async def _data(a: Connection, b: Connection) -> None:
    await a.send(b"through")
    assert await asyncio.wait_for(b.recv(), 3) == b"through"
    await b.send(b"and back")
    assert await asyncio.wait_for(a.recv(), 3) == b"and back"


def test_gateway_policy_ends_on_a_relay_pair(turn: TurnServerConfig) -> None:
    async def main() -> float:
        a, b, took = await _pair(turn, gateway=True)
        try:
            for conn in (a, b):
                assert {c.type for c in conn.local_candidates} == {CandidateType.RELAY}
                pair = conn.selected_pair
                assert pair is not None
                assert (pair.local.type, pair.remote.type) == (
                    CandidateType.RELAY, CandidateType.RELAY,
                )  # fmt: skip
                assert conn.nominated_pairs
                for nominated in conn.nominated_pairs:
                    assert CandidateType.HOST not in (nominated.local.type, nominated.remote.type)
            assert a.selected_pair is not None and b.selected_pair is not None
            assert a.selected_pair.local.address == b.selected_pair.remote.address
            await _data(a, b)
        finally:
            await a.close()
            await b.close()
        assert a.open_sockets() == 0 and b.open_sockets() == 0
        return took

    took = asyncio.run(asyncio.wait_for(main(), 60))
    assert took < 10


def test_standard_policy_ends_on_a_host_pair(turn: TurnServerConfig) -> None:
    async def main() -> None:
        a, b, _ = await _pair(turn, gateway=False)
        try:
            for conn in (a, b):
                types = {c.type for c in conn.local_candidates}
                assert CandidateType.RELAY in types and CandidateType.HOST in types
                pair = conn.selected_pair
                assert pair is not None
                assert (pair.local.type, pair.remote.type) == (
                    CandidateType.HOST, CandidateType.HOST,
                )  # fmt: skip
            await _data(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_anchor_ice_gateway_through_turn(turn: TurnServerConfig) -> None:
    common = ["ice", "--policy", "gateway", "--host-ip", LOOPBACK,
              "--turn", format_address(turn.address), "--user", f"{turn.username}:{turn.password}",
              "--json", "--timeout", "25"]  # fmt: skip
    start = time.monotonic()
    (code_a, out_a, err_a), (code_b, out_b, err_b), block_a, block_b = wire(
        [*ANCHOR, *common, "--controlling"], [*ANCHOR, *common, "--controlled"], timeout=40
    )
    assert code_a == 0, err_a
    assert code_b == 0, err_b
    for block in (block_a, block_b):
        candidates = [line for line in block if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay" in line for line in candidates)
    assert "RECV b'echo:ping'" in out_a.splitlines()
    assert "RECV b'ping'" in out_b.splitlines()
    for out in (out_a, out_b):
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["state"] == "connected"
        assert summary["selected_pair"]["local"]["type"] == "relay"
        assert summary["selected_pair"]["remote"]["type"] == "relay"
    assert time.monotonic() - start < 30
