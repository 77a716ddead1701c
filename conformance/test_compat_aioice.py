"""The aioice-compatible layer (anchor_ice.compat.aioice) against aioice 0.13 itself.

What this proves:

- ``Candidate.from_sdp`` / ``to_sdp`` behave as aioice's on the same lines (host, srflx,
  relay, prflx, IPv6, TCP, mDNS names, Chrome's extensions, upper-case transport): the same
  fields, the same text back; and on generated lines (hypothesis).
- An aioice Connection (real aioice) and a compat Connection connect on loopback, each
  role, and carry data both ways; candidates travel as SDP text, each side parsing with its
  own library.
- aioice's behaviour where aiortc relies on it, side by side: ``get_event()`` returns
  ConnectionClosed after close() and None afterwards, on aioice and on the layer; and when
  the aioice peer disappears, the layer's ``get_event()`` reports it (RFC 7675 consent
  lost, with Anchor's consent timers shortened for the test).

aioice leaves 127.0.0.1 out of its host addresses; the tests make it gather on loopback
only (as conformance/test_ice_aioice.py does), so nothing goes beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchor_ice.compat import aioice as layer

aioice: Any
try:
    import aioice
    import aioice.ice
except ImportError:  # the peer mark below skips, or fails under CI
    aioice = None

pytestmark = [pytest.mark.peer("aioice"), pytest.mark.timeout(60)]

LOOPBACK = "127.0.0.1"
FIELDS = ("foundation", "component", "transport", "priority", "host", "port", "type",
          "related_address", "related_port", "tcptype", "generation")  # fmt: skip
LINES = [
    "6815297761 1 udp 659136 1.2.3.4 31102 typ host generation 0",
    "1 1 UDP 2130706431 192.168.1.2 50000 typ host",
    "842163049 1 udp 1677729535 203.0.113.4 61665 typ srflx raddr 10.0.0.2 rport 50000 "
    "generation 0 ufrag Wfk1 network-id 1 network-cost 10",
    "3279397353 1 udp 41885695 198.51.100.7 3478 typ relay raddr 0.0.0.0 rport 0",
    "f1 2 udp 1862270975 10.0.0.9 40000 typ prflx raddr 10.0.0.9 rport 40000",
    "2 1 udp 2122262783 2001:db8::1 50001 typ host generation 0 network-id 2",
    "3 1 tcp 1518280447 192.168.1.2 9 typ host tcptype active generation 0",
    "4 1 udp 2113937151 4b0c1f3e-2d5a-4c41-9a1e-3a3c5b6e7d8f.local 54321 typ host generation 0",
]
T = TypeVar("T")


@pytest.fixture(autouse=True)
def aioice_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice gathers on 127.0.0.1 only (it skips loopback on its own)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOOPBACK])


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def fields(candidate: Any) -> tuple[Any, ...]:
    return tuple(getattr(candidate, name) for name in FIELDS)


# --------------------------------------------------------------------------- candidates


@pytest.mark.parametrize("line", LINES)
def test_candidate_sdp_round_trip_is_aioices(line: str) -> None:
    theirs = aioice.Candidate.from_sdp(line)
    ours = layer.Candidate.from_sdp(line)
    assert fields(ours) == fields(theirs)
    assert ours.to_sdp() == theirs.to_sdp()
    assert layer.Candidate.from_sdp(ours.to_sdp()).to_sdp() == theirs.to_sdp()
    assert repr(ours) == repr(theirs)


@given(
    foundation=st.text("abcdefXYZ0123456789+/", min_size=1, max_size=32),
    component=st.integers(1, 256),
    transport=st.sampled_from(["udp", "UDP", "tcp"]),
    priority=st.integers(1, 2**32 - 1),
    host=st.ip_addresses().map(str),
    port=st.integers(0, 65535),
    kind=st.sampled_from(["host", "srflx", "prflx", "relay"]),
    related=st.one_of(st.none(), st.tuples(st.ip_addresses().map(str), st.integers(0, 65535))),
    generation=st.one_of(st.none(), st.integers(0, 10)),
)
def test_generated_candidates_print_and_parse_as_aioices(
    foundation: str, component: int, transport: str, priority: int, host: str, port: int,
    kind: str, related: tuple[str, int] | None, generation: int | None,
) -> None:  # fmt: skip
    args = dict(foundation=foundation, component=component, transport=transport,
                priority=priority, host=host, port=port, type=kind,
                related_address=related[0] if related else None,
                related_port=related[1] if related else None, generation=generation)  # fmt: skip
    line = aioice.Candidate(**args).to_sdp()
    assert layer.Candidate(**args).to_sdp() == line
    assert fields(layer.Candidate.from_sdp(line)) == fields(aioice.Candidate.from_sdp(line))


# --------------------------------------------------------------------------- connections


async def exchange(ours: layer.Connection, theirs: Any) -> None:
    """Each side's credentials and candidates to the other, as SDP text."""
    theirs.remote_username, theirs.remote_password = ours.local_username, ours.local_password
    for candidate in ours.local_candidates:
        await theirs.add_remote_candidate(aioice.Candidate.from_sdp(candidate.to_sdp()))
    await theirs.add_remote_candidate(None)
    ours.remote_username, ours.remote_password = theirs.local_username, theirs.local_password
    for candidate in theirs.local_candidates:
        assert candidate.host == LOOPBACK
        await ours.add_remote_candidate(layer.Candidate.from_sdp(candidate.to_sdp()))
    await ours.add_remote_candidate(None)


async def connected(ours_controlling: bool, **options: Any) -> tuple[layer.Connection, Any]:
    ours = layer.Connection(ice_controlling=not ours_controlling, host_ips=[LOOPBACK], **options)
    ours.ice_controlling = ours_controlling  # set after construction, as aiortc does
    theirs = aioice.Connection(ice_controlling=not ours_controlling)
    await asyncio.gather(ours.gather_candidates(), theirs.gather_candidates())
    await exchange(ours, theirs)
    await asyncio.gather(ours.connect(), theirs.connect())
    return ours, theirs


@pytest.mark.parametrize("ours_controlling", [True, False], ids=["layer-controlling",
                                                                 "aioice-controlling"])
def test_aioice_and_the_layer_connect_and_carry_data(ours_controlling: bool) -> None:
    async def main() -> None:
        ours, theirs = await connected(ours_controlling)
        pair = ours.selected_pair
        assert pair is not None and pair.remote.address[0] == LOOPBACK
        for i in range(5):
            await ours.send(b"to aioice %d" % i)
            await theirs.send(b"to anchor %d" % i)
        assert [await theirs.recv() for _ in range(5)] == [b"to aioice %d" % i for i in range(5)]
        assert [await ours.recv() for _ in range(5)] == [b"to anchor %d" % i for i in range(5)]
        await ours.close()
        await theirs.close()

    run(main())


def test_get_event_after_close_is_aioices() -> None:
    async def main() -> list[tuple[str, str]]:
        seen = []
        for module, options in ((aioice, {}), (layer, {"host_ips": [LOOPBACK]})):
            conn = module.Connection(ice_controlling=True, **options)
            await conn.gather_candidates()
            waiter = asyncio.ensure_future(conn.get_event())
            await asyncio.sleep(0)
            await conn.close()
            event = await waiter
            seen.append((type(event).__name__, repr(await conn.get_event())))
        return seen

    aioices, ours = run(main())
    assert ours == aioices == ("ConnectionClosed", "None")


def test_get_event_reports_consent_lost_when_the_aioice_peer_disappears() -> None:
    """RFC 7675 §5.1: the aioice peer closes (nothing said on the wire); the layer's consent
    checks go unanswered, consent expires, the connection closes itself and get_event()
    returns ConnectionClosed, as aiortc's RTCIceTransport._monitor expects."""

    async def main() -> None:
        fast = {"consent_interval": 0.1, "consent_timeout": 0.6}
        ours, theirs = await connected(True, agent_options=fast)
        event = asyncio.ensure_future(ours.get_event())
        await theirs.close()
        assert isinstance(await asyncio.wait_for(event, 10), layer.ConnectionClosed)
        assert ours.anchor.closed and ours.anchor.open_sockets() == 0
        with pytest.raises(ConnectionError):
            await ours.recv()
        await ours.close()

    run(main())
