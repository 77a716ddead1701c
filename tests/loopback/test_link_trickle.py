"""Trickle ICE in links (RFC 8838; issue 18 item 4), end to end on loopback.

Two :class:`~anchor_link.aio.endpoint.LinkEndpoint` endpoints under the gateway policy, each
with two TURN servers: Anchor's TURN server reached directly, and the same server behind a UDP
proxy that holds every answer until the test releases it (a TURN server that answers slowly).
What must hold:

- the offer goes out before gathering completes (its clear payload lists no candidate and no
  end-of-candidates: the loopback host candidates are hidden by the policy);
- the link forms and carries a message both ways while the slow server has not answered
  anyone yet: the checks ran before gathering completed, on both sides;
- once the slow server answers, each side's relayed candidate from it reaches the other
  through a sealed ``candidates`` message (both ways), and data still flows;
- a candidates message changed on the way (one bit), one the rendezvous forged (a box under a
  key of its own, carrying an address of its choice) and one it replayed are refused and
  counted (``trickle_refused``); neither the forged address nor the tampered candidate
  becomes a remote candidate, and the link carries on.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from anchor_ice.aio.gather import TurnServerConfig
from anchor_ice.candidate import Candidate, CandidateType
from anchor_ice.nominator import GatewayNominator
from anchor_link.aio.endpoint import LinkEndpoint
from anchor_link.state import LinkFormed, LinkState
from anchor_turn.aio.server import loopback_runner
from tests.helpers import free_port
from tests.loopback.test_link_auth import TappedHub

LOOPBACK = "127.0.0.1"
FORGED = "candidate:666 1 udp 2130706431 127.0.0.1 9 typ host"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(90)


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class HoldingProxy(asyncio.DatagramProtocol):
    """A UDP proxy in front of a TURN server that holds every answer until :meth:`release`:
    one upstream socket per client, requests forwarded at once."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0
        self.answered = 0
        self._held: list[tuple[bytes, tuple[str, int]]] = []
        self._holding = True
        self._clients: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        upstream = self._clients.get(addr)
        if upstream is None:
            asyncio.get_running_loop().create_task(self._open(addr, data))
        else:
            upstream.sendto(data)

    async def _open(self, client: tuple[str, int], first: bytes) -> None:
        proxy = self

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, _addr: tuple[str, int]) -> None:
                proxy._answer(data, client)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Upstream, remote_addr=self.upstream
        )
        self._clients[client] = transport
        transport.sendto(first)

    def _answer(self, data: bytes, client: tuple[str, int]) -> None:
        if self._holding:
            self._held.append((data, client))
            return
        assert self.transport is not None
        self.answered += 1
        self.transport.sendto(data, client)

    def release(self) -> None:
        self._holding = False
        held, self._held = self._held, []
        for data, client in held:
            self._answer(data, client)

    def close(self) -> None:
        for transport in self._clients.values():
            transport.close()
        if self.transport is not None:
            self.transport.close()


@asynccontextmanager
async def slow_and_fast_turn() -> AsyncIterator[tuple[list[TurnServerConfig], HoldingProxy]]:
    """Anchor's TURN server on loopback, reached directly (first, preferred) and through a
    :class:`HoldingProxy` (second)."""
    port = free_port("both")
    runner = loopback_runner(port, {"alice": "secret"}, "example.org", LOOPBACK)
    await runner.start()
    proxy = HoldingProxy((LOOPBACK, port))
    proxy.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: proxy, local_addr=(LOOPBACK, 0)
    )
    proxy_port = proxy.transport.get_extra_info("sockname")[1]
    try:
        yield [
            TurnServerConfig((LOOPBACK, port), "alice", "secret"),
            TurnServerConfig((LOOPBACK, proxy_port), "alice", "secret"),
        ], proxy
    finally:
        proxy.close()
        runner.close()
        await runner.wait_closed()


def endpoints(
    hub: TappedHub, turn: list[TurnServerConfig]
) -> tuple[LinkEndpoint, LinkEndpoint]:
    kwargs: dict[str, Any] = {
        "turn": turn, "host_ips": [LOOPBACK], "idle_timeout": 60.0,
        "nominator": GatewayNominator(grace=0.3),
        "connection_options": {"gather_timeout": 60.0},  # the slow server is never given up
    }  # fmt: skip
    return LinkEndpoint("a", hub, **kwargs), LinkEndpoint("b", hub, **kwargs)


def remote_relays(ep: LinkEndpoint, peer: str) -> list[Candidate]:
    """The relayed candidates ``ep``'s connection to ``peer`` knows of the peer."""
    link = ep._links[peer]  # the endpoint does not expose its connection
    assert link.conn is not None
    return [c for c in link.conn.remote_candidates if c.type is CandidateType.RELAY]


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def test_checks_start_before_gathering_completes_and_later_candidates_trickle_both_ways() -> None:
    async def main() -> None:
        hub = TappedHub()
        async with slow_and_fast_turn() as (turn, proxy):
            a, b = endpoints(hub, turn)
            async with a, b:
                await a.send("b", b"hello")
                assert await asyncio.wait_for(b.recv(), 20) == ("a", b"hello")
                await b.send("a", b"back")
                assert await asyncio.wait_for(a.recv(), 20) == ("b", b"back")
                formed = await a.wait_for(LinkFormed, "b", timeout=5)
                await b.wait_for(LinkFormed, "a", timeout=5)
                # Formed and carrying data while the slow server had answered nobody: both
                # sides' checks ran before their gathering completed.
                assert proxy.requests > 0 and proxy.answered == 0
                assert formed.local_type is CandidateType.RELAY
                offer = next(body for s, _p, body in hub.capture if body["type"] == "offer")
                described = json.loads(_unb64(offer["noise"])[32:])  # the offer is in clear
                assert described["candidates"] == [] and described["end"] is False
                assert len(remote_relays(a, "b")) == len(remote_relays(b, "a")) == 1

                proxy.release()
                await until(lambda: len(remote_relays(a, "b")) == 2)
                await until(lambda: len(remote_relays(b, "a")) == 2)
                senders = {s for s, _p, body in hub.capture if body["type"] == "candidates"}
                assert senders == {"a", "b"}  # trickled both ways, sealed
                assert proxy.answered > 0
                await a.send("b", b"still here")
                assert await asyncio.wait_for(b.recv(), 20) == ("a", b"still here")
                assert a.link_state("b") is LinkState.OPEN
                assert a.trickle_refused == b.trickle_refused == 0

    run(main())


def test_a_tampered_forged_or_replayed_trickled_candidate_is_refused() -> None:
    armed: list[bool] = []
    tampered: list[dict[str, Any]] = []

    def tamper(sender: str, _peer: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if armed and body.get("type") == "candidates" and sender == "a" and not tampered:
            box = bytearray(_unb64(body["box"]))
            box[len(box) // 2] ^= 0x01  # one bit changed on the way
            tampered.append(body)
            return {**body, "box": base64.b64encode(bytes(box)).decode()}
        return body

    async def main() -> None:
        hub = TappedHub(tamper)
        async with slow_and_fast_turn() as (turn, proxy):
            a, b = endpoints(hub, turn)
            async with a, b:
                await a.send("b", b"hello")
                assert await asyncio.wait_for(b.recv(), 20) == ("a", b"hello")
                armed.append(True)
                proxy.release()  # a's relayed candidate from the slow server trickles: tampered
                await until(lambda: b.trickle_refused == 1)
                # The rendezvous forges a candidates message of its own, an address of its
                # choice under a key of its own.
                evil = json.dumps({"candidates": [FORGED], "end": True}).encode()
                seq = 7
                nonce = bytes(4) + seq.to_bytes(8, "big")
                box = ChaCha20Poly1305(ChaCha20Poly1305.generate_key()).encrypt(nonce, evil, None)
                link_id = tampered[0]["link"]
                forged = {"type": "candidates", "v": tampered[0]["v"], "link": link_id,
                          "seq": seq, "box": base64.b64encode(box).decode()}  # fmt: skip
                hub.inject("a", "b", forged)
                await until(lambda: b.trickle_refused == 2)
                # b's own later candidate reaches a, then the rendezvous replays it.
                await until(lambda: len(remote_relays(a, "b")) == 2)
                from_b = [
                    body for s, _p, body in hub.capture if s == "b" and body["type"] == "candidates"
                ]
                hub.inject("b", "a", from_b[0])
                await until(lambda: a.trickle_refused == 1)
                await b.send("a", b"unharmed")
                assert await asyncio.wait_for(a.recv(), 20) == ("b", b"unharmed")
                link = b._links["a"]
                assert link.conn is not None
                assert all(c.port != 9 for c in link.conn.remote_candidates)  # never taken
                assert len(remote_relays(b, "a")) == 1  # the tampered one was not taken
                assert a.link_state("b") is LinkState.OPEN

    run(main())
