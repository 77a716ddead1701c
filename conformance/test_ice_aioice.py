"""Anchor's ICE connection against aioice's (aioice.Connection 0.13), over loopback.

What this proves:

- Anchor controlling / aioice controlled and the reverse connect: aioice accepts Anchor's
  checks (USERNAME, PRIORITY, ICE-CONTROLLING/CONTROLLED, USE-CANDIDATE, MESSAGE-INTEGRITY,
  FINGERPRINT) and Anchor's regular nomination; Anchor accepts aioice's nomination (aioice
  nominates with USE-CANDIDATE on its checks), and both select the same host pair.
- Data flows both ways on the selected pair, several datagrams each way, in order.
- With Anchor on the relay policy (only a relayed candidate, through Anchor's own TURN
  server), aioice's checks to Anchor's relayed candidate get through the relay (Anchor
  created the permission for aioice's address when it learned the candidate) and the pair
  selected on Anchor's side is relayed.

aioice leaves 127.0.0.1 out of its host addresses (``aioice.ice.get_host_addresses``); the
tests make it gather on loopback only by replacing that function, so that nothing goes
beyond 127.0.0.1. Candidates are exchanged as SDP text, the way two programs would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from anchor_ice.aio.connection import Connection
from anchor_ice.aio.gather import TurnServerConfig
from anchor_ice.candidate import CandidateType
from anchor_stun.server import StunServer
from anchor_turn.aio.server import TurnServerRunner, UdpRelayAllocator
from anchor_turn.auth import StaticUsers
from anchor_turn.server import TurnServer
from tests.helpers import free_port

aioice: Any
try:
    import aioice
    import aioice.ice
except ImportError:  # the peer mark below skips, or fails under CI
    aioice = None

pytestmark = [pytest.mark.peer("aioice"), pytest.mark.timeout(60)]

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def aioice_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice gathers on 127.0.0.1 only (it skips loopback on its own)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOOPBACK])


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def exchange(anchor: Connection, peer: Any) -> None:
    """Signalling between an Anchor Connection and an aioice Connection, as SDP text."""
    peer.remote_username = anchor.local_username
    peer.remote_password = anchor.local_password
    for candidate in anchor.local_candidates:
        await peer.add_remote_candidate(
            aioice.Candidate.from_sdp(candidate.to_sdp().removeprefix("candidate:"))
        )
    await peer.add_remote_candidate(None)
    anchor.remote_username = peer.local_username
    anchor.remote_password = peer.local_password
    for theirs in peer.local_candidates:
        assert theirs.host == LOOPBACK
        await anchor.add_remote_candidate(theirs.to_sdp())
    await anchor.add_remote_candidate(None)


async def data_both_ways(anchor: Connection, peer: Any) -> None:
    for i in range(5):
        await anchor.send(b"from anchor %d" % i)
    assert [await asyncio.wait_for(peer.recv(), 2) for _ in range(5)] == [
        b"from anchor %d" % i for i in range(5)
    ]
    for i in range(5):
        await peer.send(b"from aioice %d" % i)
    assert [await asyncio.wait_for(anchor.recv(), 2) for _ in range(5)] == [
        b"from aioice %d" % i for i in range(5)
    ]


@pytest.mark.parametrize("anchor_controlling", [True, False], ids=["anchor-controlling", "anchor-controlled"])
def test_anchor_and_aioice_connect_and_exchange_data(anchor_controlling: bool) -> None:
    async def main() -> float:
        anchor = Connection(anchor_controlling, host_ips=[LOOPBACK])
        peer = aioice.Connection(ice_controlling=not anchor_controlling, use_ipv6=False)
        try:
            await asyncio.gather(anchor.gather_candidates(), peer.gather_candidates())
            await exchange(anchor, peer)
            start = time.monotonic()
            await asyncio.wait_for(asyncio.gather(anchor.connect(), peer.connect()), 15)
            took = time.monotonic() - start
            pair = anchor.selected_pair
            assert pair is not None
            assert pair.local.type is CandidateType.HOST
            assert pair.remote.type is CandidateType.HOST
            theirs = peer._nominated[1]  # aioice keeps its selected pair there
            assert (theirs.local_candidate.host, theirs.local_candidate.port) == pair.remote.address
            assert (theirs.remote_candidate.host, theirs.remote_candidate.port) == pair.local.address
            await data_both_ways(anchor, peer)
        finally:
            await anchor.close()
            await peer.close()
        assert anchor.open_sockets() == 0
        return took

    took = run(main())
    assert took < 10


def test_aioice_reaches_anchor_through_its_relay() -> None:
    async def main() -> None:
        port = free_port("both")
        core = TurnServer(
            realm="example.org",
            auth=StaticUsers({"alice": "secret"}, realm="example.org"),
            relay=UdpRelayAllocator([LOOPBACK]),
            stun=StunServer(primary=(LOOPBACK, port)),
            allow_loopback_peers=True,
        )
        runner = TurnServerRunner(core)
        await runner.start()
        anchor = Connection(
            False,
            host_ips=[LOOPBACK],
            policy="relay",
            turn_servers=[TurnServerConfig((LOOPBACK, port), "alice", "secret")],
        )
        peer = aioice.Connection(ice_controlling=True, use_ipv6=False)
        try:
            await asyncio.gather(anchor.gather_candidates(), peer.gather_candidates())
            assert [c.type for c in anchor.local_candidates] == [CandidateType.RELAY]
            await exchange(anchor, peer)
            await asyncio.wait_for(asyncio.gather(anchor.connect(), peer.connect()), 15)
            pair = anchor.selected_pair
            assert pair is not None and pair.local.type is CandidateType.RELAY
            await data_both_ways(anchor, peer)
        finally:
            await anchor.close()
            await peer.close()
            assert core.stats.allocations == 0
            runner.close()
            await runner.wait_closed()

    run(main())
