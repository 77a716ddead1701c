"""The aioice-compatible layer (anchor_ice.compat), over loopback, without aioice or aiortc.

What this proves (real UDP sockets on 127.0.0.1; aioice's own behaviour is compared in
conformance/test_compat_aioice.py, aiortc in conformance/test_compat_aiortc.py):

- ``install_aioice()`` makes ``import aioice``, ``aioice.ice`` and ``aioice.candidate``
  resolve to the layer, with the policy and Anchor options it was given as the defaults of
  every ``Connection``; ``uninstall_aioice()`` puts back what was there; bad options are
  refused.
- Two layer Connections, both created controlled as aiortc creates them and one then set
  controlling, connect on a host pair and carry data both ways; Anchor's pair is visible.
- ``get_event()`` is aioice's: ConnectionClosed on close() (None afterwards), and when
  consent is lost (RFC 7675) the connection closes itself (sockets closed) and says so.
- ``remote_is_lite``: the full side takes the controlling role and connects to an
  ICE-lite Anchor peer.
- TURN over TCP/TLS and a role change after connect() are typed errors; candidate junk is
  a ValueError, as in aioice.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest

import anchor_ice.aio.compat as compat_module
from anchor_ice.aio.connection import Connection as AnchorConnection
from anchor_ice.candidate import CandidateError, CandidateType
from anchor_ice.compat import (
    ANCHOR_OPTIONS,
    Candidate,
    Connection,
    ConnectionClosed,
    TransportPolicy,
    UnsupportedOption,
    install_aioice,
    uninstall_aioice,
)
from anchor_ice.nominator import GatewayNominator, RelayOnly, StandardNominator
from anchor_stun.errors import LocalProtocolError

LOOPBACK = "127.0.0.1"
FAST_CONSENT = {"consent_interval": 0.1, "consent_timeout": 0.6}
T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture
def installed() -> Iterator[None]:
    before = {name: sys.modules.get(name) for name in ("aioice", "aioice.ice")}
    try:
        yield
    finally:
        uninstall_aioice()
        for name, module in before.items():
            assert sys.modules.get(name) is module


async def exchange(a: Connection, b: Connection) -> None:
    """Signalling as aiortc does it: SDP text of each side's candidates to the other."""
    for src, dst in ((a, b), (b, a)):
        dst.remote_username = src.local_username
        dst.remote_password = src.local_password
        for candidate in src.local_candidates:
            await dst.add_remote_candidate(Candidate.from_sdp(candidate.to_sdp()))
        await dst.add_remote_candidate(None)


async def connected_pair(**options: Any) -> tuple[Connection, Connection]:
    a = Connection(ice_controlling=False, host_ips=[LOOPBACK], **options)
    b = Connection(ice_controlling=False, host_ips=[LOOPBACK], **options)
    a.ice_controlling = True  # aiortc sets the offerer's role after creating it
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    await exchange(a, b)
    await asyncio.gather(a.connect(), b.connect())
    return a, b


# --------------------------------------------------------------------------- install


def test_install_aioice_makes_import_aioice_resolve_to_the_layer(installed: None) -> None:
    module = install_aioice(policy="gateway", host_ips=[LOOPBACK])
    import aioice
    import aioice.candidate
    import aioice.ice
    from aioice import Candidate as C
    from aioice import Connection as Conn
    from aioice import ConnectionClosed as Closed
    from aioice import TransportPolicy as Policy

    assert aioice is module
    assert (C, Closed, Policy) == (Candidate, ConnectionClosed, TransportPolicy)
    assert issubclass(Conn, Connection) and aioice.ice.Connection is Conn
    assert aioice.candidate.Candidate is Candidate
    conn = Conn(ice_controlling=True)
    assert isinstance(conn.anchor, AnchorConnection)
    assert isinstance(conn.anchor.agent.nominator, GatewayNominator)
    # the application's relay policy still wins over the installed default
    relay = Conn(ice_controlling=True, transport_policy=Policy.RELAY,
                 turn_server="127.0.0.1:3478", turn_username="u", turn_password="p")
    assert isinstance(relay.anchor.agent.nominator, RelayOnly)
    # without a TURN server the relay policy has nothing to offer: refused at once
    with pytest.raises(LocalProtocolError, match=r"relay.*TURN server"):
        Conn(ice_controlling=True, transport_policy=Policy.RELAY)
    # a second call replaces the defaults
    install_aioice(policy="standard")
    import aioice as again

    assert isinstance(again.Connection(True).anchor.agent.nominator, StandardNominator)


def test_uninstall_puts_back_what_was_there(installed: None) -> None:
    sentinel = object()
    before = sys.modules.get("aioice")
    sys.modules["aioice"] = sentinel  # type: ignore[assignment]
    try:
        install_aioice()
        install_aioice(policy="relay")
        assert sys.modules["aioice"] is not sentinel
        assert uninstall_aioice()
        assert sys.modules["aioice"] is sentinel
        assert not uninstall_aioice()
    finally:
        if before is None:
            sys.modules.pop("aioice", None)
        else:
            sys.modules["aioice"] = before


def test_install_refuses_unknown_options_and_policies(installed: None) -> None:
    assert {"policy", "nominator", "host_ips", "include_loopback"} <= ANCHOR_OPTIONS
    with pytest.raises(LocalProtocolError, match="turn_ssl"):
        install_aioice(turn_ssl=True)
    with pytest.raises(LocalProtocolError, match="policy"):
        install_aioice(policy="anything")


def test_turn_transport_and_ssl_reach_anchors_turn_configuration() -> None:
    """aioice's ``turn_transport``/``turn_ssl`` select TURN over TCP and TLS (the relay
    itself is tested over real TCP and TLS servers in tests/loopback/test_ice_net.py)."""
    for kwargs, transport in (({}, "udp"), ({"turn_transport": "tcp"}, "tcp"),
                              ({"turn_transport": "tcp", "turn_ssl": True}, "tls")):  # fmt: skip
        conn = Connection(True, turn_server=(LOOPBACK, 3478), turn_username="u",
                          turn_password="p", **kwargs)  # fmt: skip
        assert [c.transport for c in conn.anchor.turn_servers] == [transport]
    with pytest.raises(LocalProtocolError, match="turn_ssl"):
        Connection(True, turn_server=(LOOPBACK, 3478), turn_username="u", turn_password="p",
                   turn_ssl=True)  # fmt: skip
    assert issubclass(UnsupportedOption, NotImplementedError)


# --------------------------------------------------------------------------- connecting


def test_two_layer_connections_connect_and_carry_data_both_ways() -> None:
    async def main() -> None:
        a, b = await connected_pair()
        assert a.ice_controlling and not b.ice_controlling
        await a.send(b"ping")
        assert await b.recv() == b"ping"
        await b.sendto(b"pong", 1)
        assert await a.recvfrom() == (b"pong", 1)
        pair = a.selected_pair
        assert pair is not None and pair is not None
        assert pair.local.type is CandidateType.HOST and pair.remote.address[0] == LOOPBACK
        assert [c.host for c in a.local_candidates] == [LOOPBACK]
        assert {c.host for c in a.remote_candidates} == {LOOPBACK}
        default = a.get_default_candidate(1)
        assert default is not None and default.type == "host"
        with pytest.raises(LocalProtocolError, match="before start"):
            a.ice_controlling = False
        assert a.ice_controlling
        waiter = asyncio.ensure_future(a.get_event())
        await asyncio.sleep(0)
        await a.close()
        assert isinstance(await waiter, ConnectionClosed)
        assert await a.get_event() is None
        assert a.local_candidates == []
        with pytest.raises(ConnectionError):
            await a.recv()
        await b.close()

    run(main())


def test_consent_lost_closes_the_connection_and_get_event_says_so() -> None:
    """RFC 7675 §5.1: the peer disappears (its sockets close, nothing is said); consent
    expires and the connection closes itself, as aioice's does."""

    async def main() -> None:
        a, b = await connected_pair(agent_options=FAST_CONSENT)
        event = asyncio.ensure_future(a.get_event())
        await b.anchor.close()  # b vanishes: its sockets close without a word
        assert isinstance(await asyncio.wait_for(event, 10), ConnectionClosed)
        assert a.anchor.closed and a.anchor.open_sockets() == 0
        assert a.anchor.failure_reason is not None and "consent" in a.anchor.failure_reason
        with pytest.raises(ConnectionError):
            await a.recv()
        with pytest.raises(ConnectionError):
            await a.send(b"late")
        assert await a.get_event() is None
        await a.close()
        await b.close()

    run(main())


def test_remote_is_lite_takes_the_controlling_role_and_connects() -> None:
    async def main() -> None:
        full = Connection(ice_controlling=False, host_ips=[LOOPBACK])
        lite = AnchorConnection(False, host_ips=[LOOPBACK], agent_options={"lite": True})
        await asyncio.gather(full.gather_candidates(), lite.gather_candidates())
        full.remote_is_lite = True
        full.remote_username, full.remote_password = lite.local_username, lite.local_password
        lite.remote_username, lite.remote_password = full.local_username, full.local_password
        for theirs in lite.local_candidates:
            await full.add_remote_candidate(Candidate.from_anchor(theirs))
        await full.add_remote_candidate(None)
        for ours in full.local_candidates:
            await lite.add_remote_candidate(ours.to_anchor())
        await lite.add_remote_candidate(None)
        await asyncio.gather(full.connect(), lite.connect())
        assert full.ice_controlling
        await full.send(b"to lite")
        assert await lite.recv() == b"to lite"
        await full.close()
        await lite.close()

    run(main())


def test_a_candidate_after_end_of_candidates_is_a_value_error_and_after_close_ignored() -> None:
    async def main() -> None:
        conn = Connection(True, host_ips=[LOOPBACK])
        line = "1 1 udp 2130706431 127.0.0.1 9 typ host"
        await conn.add_remote_candidate(Candidate.from_sdp(line))
        await conn.add_remote_candidate(None)
        with pytest.raises(ValueError, match="end-of-candidates"):
            await conn.add_remote_candidate(Candidate.from_sdp(line))
        other = Connection(True, host_ips=[LOOPBACK])
        await other.close()
        await other.add_remote_candidate(Candidate.from_sdp(line))  # ignored, as aioice
        assert other.remote_candidates == []
        with pytest.raises(ConnectionError, match="not connected"):
            await conn.recv()
        await conn.close()

    run(main())


def test_loopback_is_gathered_when_the_machine_has_no_other_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aioice gathers nothing there (and aiortc never connects); the layer uses loopback."""
    monkeypatch.setattr(compat_module, "host_addresses", lambda **kwargs: [])

    async def main() -> None:
        conn = Connection(True, use_ipv6=False)
        await conn.gather_candidates()
        assert [c.host for c in conn.local_candidates] == [LOOPBACK]
        await conn.close()

    run(main())


def test_a_policy_with_nothing_to_offer_fails_gathering_with_the_way_out() -> None:
    """aiortc starts ICE only when gathering gave it candidates: under the gateway policy
    with host candidates only (no STUN, no TURN) it would wait for ever without a word. The
    layer's gathering fails instead, saying why and what to change (issue 23 item 4); the
    standard policy on the same addresses gathers as before."""

    async def main() -> None:
        conn = Connection(True, policy="gateway", host_ips=[LOOPBACK])
        try:
            with pytest.raises(ConnectionError) as info:
                await conn.gather_candidates()
        finally:
            await conn.close()
        message = str(info.value)
        assert "no candidate to offer under the gateway policy" in message, message
        assert "add a TURN server" in message and "policy='standard'" in message, message
        standard = Connection(True, policy="standard", host_ips=[LOOPBACK])
        await standard.gather_candidates()
        assert [c.type for c in standard.local_candidates] == ["host"]
        await standard.close()

    run(main())


# --------------------------------------------------------------------------- candidates


def test_candidate_junk_is_a_value_error_and_a_candidate_error() -> None:
    for line in ("", "1 1 udp", "1 1 udp x 1.2.3.4 9 typ host", "1 1 udp 1 1.2.3.4 9 typ nope",
                 "1 1 udp 1 1.2.3.4 99999 typ host", "1 1 udp 1 1.2.3.4 9 nottyp host"):
        with pytest.raises(ValueError) as info:
            Candidate.from_sdp(line)
        assert isinstance(info.value, CandidateError)


def test_candidate_conversions_keep_every_field() -> None:
    line = "842163049 1 udp 1677729535 203.0.113.4 61665 typ srflx raddr 10.0.0.2 rport 5 generation 0"
    candidate = Candidate.from_sdp(line)
    anchor = candidate.to_anchor()
    assert (anchor.ip, anchor.port, anchor.type) == ("203.0.113.4", 61665, CandidateType.SRFLX)
    assert (anchor.related_ip, anchor.related_port) == ("10.0.0.2", 5)
    assert Candidate.from_anchor(anchor).to_sdp() == line
    assert candidate.to_sdp() == line
    assert repr(candidate) == f"Candidate({line})"
    odd = Candidate("1", 1, "udp", 1, "1.2.3.4", 9, "weird")
    with pytest.raises(ValueError):
        odd.to_anchor()
