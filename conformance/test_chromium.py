"""Chromium (Debian's ``chromium``) as a real WebRTC peer of Anchor (issue 10).

Each test runs one scenario of ``chromium/scenarios.py`` inside a fresh loopback-only
network namespace (and PID namespace) made by ``unshare``; Chromium, the TURN servers and
Anchor's ICE agent all live there, and the scenario hands back what it saw as JSON (how:
``chromium/netns.py``). Every test then checks that the namespace was loopback-only and
that no process is left in it afterwards.

1. Two RTCPeerConnections in one page, ``iceTransportPolicy: 'relay'``, through
   ``anchor serve`` (and coturn as the control): a data channel carries messages both ways,
   getStats' selected pair is relay/relay on both sides, and the server saw the allocations,
   permissions and channels (``anchor serve --metrics``; coturn's ``-v`` log), which Chromium
   releases when its peer connections close.
   Ten such pairs, all kept open, through a default ``anchor serve`` (issue 18): every
   ChannelBind Chromium sends (at least 20, counted on the wire by a recording UDP relay,
   ``chromium/turn_tap.py``) gets a success response, none an error. (This Chromium binds
   0x4000 first on each allocation, within both ranges; RFC 5766's 0x5000-0x7FFF that
   libwebrtc may also draw from is what ``turnutils_uclient``'s test exercises.)
2. Chromium offers, Anchor's :class:`~anchor_ice.agent.IceAgent` answers (its own ufrag and
   a >= 22-character pwd, its host candidate, a well-formed ``a=fingerprint:sha-256``):
   Chromium's ``iceConnectionState`` reaches ``connected``; the agent learnt Chromium as a
   peer-reflexive candidate (the offer has none in the namespace), answered every check
   (aggressive USE-CANDIDATE and GOOG-NETWORK-INFO 0xC057 included) and accepted the pair.
   And the other way round: LinkEndpoint offers and, controlling, nominates; Chromium accepts.
   Told end-of-candidates with no candidate at all, the agent still waits for Chromium's
   checks and learns it as peer-reflexive.
3. With ``a=setup:passive`` Chromium sends DTLS ClientHellos on the selected 5-tuple: the
   agent declines them (``receive_datagram`` returns False) and they reach the application
   path, never taken for STUN or ChannelData (RFC 7983).
4. aiortc on Anchor (``anchor_ice.compat.install_aioice()``) against Chromium's data channel,
   each side offering in turn: the channel opens and Chromium echoes every message, in order.

Needs root (``unshare --net``), ``/usr/lib/chromium/chromium`` (``apt-get install chromium``)
and the ``websockets`` package; a missing one skips, or fails under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chromium.browser import CHROMIUM, chromium_binary
from chromium.netns import NamespaceRun, netns_inode, run_scenario, unshare_binary
from natlab.fixtures import report
from peers import require_peer

from anchor_ice.sdp import PWD_MIN
from tests.helpers import missing_peer as _missing

pytestmark = pytest.mark.timeout(150)

SCENARIO_TIMEOUT = 60.0
"""Seconds one scenario may take, Chromium start-up included (a run takes 2-3 s)."""

STUN_BINDING = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A
GOOG_NETWORK_INFO = 0xC057  # Chromium's, comprehension-optional (RFC 8489 §14)
DTLS_HANDSHAKE = 22  # RFC 6347 §4.1 ContentType handshake
DTLS_CLIENT_HELLO = 1  # RFC 6347 §4.2.2 HandshakeType client_hello
FINGERPRINT_LINE = re.compile(r"^a=fingerprint:sha-256 ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})\r?$", re.M)


def require_chromium() -> None:
    """Everything the Chromium tests need, or skip (fail under CI) saying what is missing."""
    if chromium_binary() is None:
        _missing(f"{CHROMIUM} not found: install the Debian package 'chromium' (as root)")
    try:
        import websockets  # noqa: F401
    except ImportError:
        _missing("the 'websockets' package is missing: pip install websockets")
    if unshare_binary() is None or shutil.which("ip") is None:
        _missing("unshare (util-linux) and ip (iproute2) are needed for the network namespace")
    if os.geteuid() != 0:
        _missing("Chromium runs only in a loopback-only network namespace: that needs root")


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Callable[..., NamespaceRun]]:
    """``scenario(name, **params)`` runs a scenario in its namespace and checks the
    namespace (loopback only, gone afterwards)."""
    require_chromium()

    def run(name: str, **params: Any) -> NamespaceRun:
        result = run_scenario(name, params, tmp_path / name, timeout=SCENARIO_TIMEOUT)
        namespace = result.result["namespace"]
        assert namespace["interfaces"] == ["lo"]
        assert result.netns != result.outer_netns == netns_inode()
        assert namespace["pid"] == 1, "the scenario is PID 1 of its own PID namespace"
        assert result.left_behind() == [], "processes left in the scenario's namespace"
        return result

    yield run


def _requests(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Chromium's STUN requests, as the agent's endpoint received them."""
    return [
        d for d in result["datagrams"]
        if d["direction"] == "in" and d["stun"] and d["stun"]["class"] == "request"
    ]  # fmt: skip


def _answers(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Anchor's STUN responses, by transaction id."""
    return {
        d["stun"]["transaction_id"]: d["stun"]
        for d in result["datagrams"]
        if d["direction"] == "out" and d["stun"] and d["stun"]["class"] in ("success", "error")
    }


def _own_checks(result: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str]]:
    """Anchor's checks and the transaction ids Chromium answered with success."""
    checks = [
        d["stun"] for d in result["datagrams"]
        if d["direction"] == "out" and d["stun"] and d["stun"]["class"] == "request"
    ]  # fmt: skip
    answered = {
        d["stun"]["transaction_id"] for d in result["datagrams"]
        if d["direction"] == "in" and d["stun"] and d["stun"]["class"] == "success"
    }  # fmt: skip
    return checks, answered


def _check_selected(pair: dict[str, Any] | None) -> None:
    """A getStats selected pair (``RTCTransportStats.selectedCandidatePairId``): nominated,
    and answered at least once. Its ``state`` reads "in-progress" while one of Chromium's
    keepalive checks on it is outstanding (seen on a loaded machine), "succeeded" otherwise."""
    assert pair is not None
    assert pair["nominated"] is True
    assert pair["state"] in ("succeeded", "in-progress"), pair
    assert pair["responsesReceived"] >= 1


def _pwd(sdp: str) -> str:
    found = re.search(r"^a=ice-pwd:(\S+)\r?$", sdp, re.M)
    assert found, sdp
    return found.group(1)


def _ufrag(sdp: str) -> str:
    found = re.search(r"^a=ice-ufrag:(\S+)\r?$", sdp, re.M)
    assert found, sdp
    return found.group(1)


def _check_agent_learnt_chromium(r: dict[str, Any]) -> None:
    """The agent learnt Chromium's address as peer-reflexive and selected that pair."""
    assert r["chromium_candidates"] == [], "Chromium offered candidates in the namespace"
    requests = _requests(r)
    assert requests, "Chromium sent no checks"
    sources = {tuple(d["peer"]) for d in requests}
    assert len(sources) == 1, sources
    (source,) = sources
    assert [tuple(c["address"]) for c in r["learned_prflx"]] == [source]
    assert r["agent_remote_candidates"] == r["learned_prflx"]
    selected = r["agent_selected"]
    assert selected is not None
    assert selected["remote"]["type"] == "prflx"
    assert tuple(selected["remote"]["address"]) == source
    assert selected["local"]["type"] == "host"
    assert selected["local"]["address"] == r["anchor_local"]
    nominated = [e for e in r["agent_events"] if e["event"] == "PairNominated"]
    assert nominated and nominated[-1]["selected"] is True
    assert nominated[-1]["pair"]["remote"] == selected["remote"]
    names = [e["event"] for e in r["agent_events"]]
    assert "IceConnected" in names and "IceFailed" not in names and "RoleChanged" not in names
    assert r["agent_state"] in ("connected", "completed")
    assert r["agent_dropped"] == 0


def _check_chromium_connected(r: dict[str, Any]) -> None:
    """Chromium's ICE is connected on a nominated pair whose remote is Anchor's host socket;
    DTLS is not (it cannot: nobody holds the fingerprint's certificate)."""
    assert r.get("chromium_ice") in ("connected", "completed"), r.get("chromium_ice_error")
    report = r["chromium_report"]
    assert report["ice"] in ("connected", "completed")
    assert report["connection"] != "connected", "DTLS cannot complete without a DTLS peer"
    pair = report["pair"]
    _check_selected(pair)
    assert [pair["remote"]["address"], pair["remote"]["port"]] == r["anchor_local"]
    assert pair["remote"]["type"] == "host"
    assert pair["responsesReceived"] >= 1 and pair["responsesSent"] >= 1


def _check_every_request_answered(r: dict[str, Any], ufrag: str) -> None:
    """Each check of Chromium got a success response (no 400/401/420/487)."""
    answers = _answers(r)
    for request in _requests(r):
        stun = request["stun"]
        assert stun["username"] == f"{r['anchor_ufrag']}:{ufrag}"
        answer = answers.get(stun["transaction_id"])
        assert answer is not None, f"check {stun['transaction_id']} unanswered"
        assert answer["class"] == "success", answer


# --------------------------------------------------------------------------- 1: TURN relay


@pytest.mark.parametrize("server", ["anchor", "coturn"])
def test_relay_only_peer_connections_through_turn(
    scenario: Callable[..., NamespaceRun], server: str
) -> None:
    if server == "coturn":
        require_peer("turnserver")
    run = scenario("relay", server=server, messages=5)
    r = run.result
    assert r["received_b"] == [f"a->b {i}" for i in range(5)]
    assert r["received_a"] == [f"b->a {i}" for i in range(5)]
    assert r["ice_a"] in ("connected", "completed") and r["ice_b"] in ("connected", "completed")
    for side in ("a", "b"):
        pair = r[f"pair_{side}"]
        _check_selected(pair)
        assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay")
        assert pair["local"]["relayProtocol"] == "udp"
        candidates = r[f"candidates_{side}"]
        assert candidates and all(" typ relay " in c for c in candidates)
    relayed_a = (r["pair_a"]["local"]["address"], r["pair_a"]["local"]["port"])
    relayed_b = (r["pair_b"]["local"]["address"], r["pair_b"]["local"]["port"])
    assert relayed_a != relayed_b
    assert (r["pair_b"]["remote"]["address"], r["pair_b"]["remote"]["port"]) == relayed_a
    assert (r["pair_a"]["remote"]["address"], r["pair_a"]["remote"]["port"]) == relayed_b
    assert r["open_ms"] < 10_000

    if server == "anchor":
        assert r["serve_exit"] == 0
        before, during, after = r["metrics_before"], r["metrics"], r["metrics_after_close"]
        assert before["anchor_turn_allocations"] == 0
        # While both peer connections were up: one allocation each, each with a
        # permission and a channel for the other's relayed address (Chromium sends
        # ChannelData), data relayed both ways, and only the 401 challenges as errors.
        assert during["anchor_turn_allocations"] == 2
        assert during["anchor_turn_allocations_created_total"] == 2
        assert during["anchor_turn_permissions"] == 2
        assert during["anchor_turn_channels"] == 2
        assert during["anchor_turn_auth_failures_total"] == 0
        assert during['anchor_turn_relayed_packets_total{direction="to_peer"}'] > 0
        assert during['anchor_turn_relayed_packets_total{direction="to_client"}'] > 0
        assert during['anchor_turn_relayed_bytes_total{direction="to_peer"}'] > 0
        # The 401 challenges (one per allocation, more if Chromium retransmitted an Allocate).
        assert during["anchor_turn_error_responses_total"] >= 2
        # pc.close() releases the allocations (Refresh with LIFETIME 0, RFC 8656 §7).
        assert after["anchor_turn_allocations"] == 0
        assert after["anchor_turn_allocations_deleted_total"] == 2
        assert after["anchor_turn_allocations_expired_total"] == 0
    else:
        # coturn's -v log: one successful request line each (a retransmission answered
        # again would add one, hence >=).
        counts = r["coturn_counts"]
        assert counts.get("ALLOCATE", 0) >= 2
        assert counts.get("CREATE_PERMISSION", 0) >= 2
        assert counts.get("CHANNEL_BIND", 0) >= 2
        assert counts.get("REFRESH", 0) >= 2  # the releases on pc.close()


CHANNEL_MIN, STRICT_MAX, CHANNEL_MAX = 0x4000, 0x4FFF, 0x7FFF  # RFC 8656 §12; RFC 5766 §11


def test_chromium_channel_binds_get_no_error_from_a_default_anchor_serve(
    scenario: Callable[..., NamespaceRun], request: pytest.FixtureRequest
) -> None:
    """Issue 18, must-show 2: libwebrtc's TURN port may use RFC 5766's 0x4000-0x7FFF; over
    at least 20 ChannelBinds (10 relay-only pairs, one per peer connection), counted on the
    wire between Chromium and a default ``anchor serve``, not one error response, and every
    request answered with success. The numbers seen are printed."""
    pairs = 10
    run = scenario("channels", pairs=pairs, messages=2)
    r = run.result
    assert r["serve_exit"] == 0
    for i, pair_run in enumerate(r["runs"]):
        assert pair_run["received_b"] == ["a->b 0", "a->b 1"], i
        assert pair_run["received_a"] == ["b->a 0", "b->a 1"], i
        for side in ("a", "b"):
            pair = pair_run[f"pair_{side}"]
            assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay")
    binds = r["channel_binds"]
    requests = {b["transaction_id"]: b for b in binds if b["class"] == "request"}
    answers = [b for b in binds if b["direction"] == "to_client"]
    errors = [b for b in answers if b["class"] == "error"]
    assert len(requests) >= 2 * pairs, r["tap_messages"]
    assert errors == [], errors
    answered = {b["transaction_id"] for b in answers if b["class"] == "success"}
    assert set(requests) <= answered, "a ChannelBind went unanswered"
    numbers = sorted({b["channel"] for b in requests.values()})
    assert all(CHANNEL_MIN <= n <= CHANNEL_MAX for n in numbers), numbers
    assert r["metrics"]["anchor_turn_channels"] == 2 * pairs
    above = [n for n in numbers if n > STRICT_MAX]
    report(
        request.config,
        f"\nchromium ChannelBind: {len(requests)} requests, {len(errors)} error responses; "
        f"channel numbers {', '.join(f'{n:#06x}' for n in numbers)} "
        f"({len(above)} above RFC 8656's 0x4FFF)",
    )


# --------------------------------------------------------------------------- 2: ICE


def test_chromium_offers_anchor_answers(scenario: Callable[..., NamespaceRun]) -> None:
    run = scenario("ice", anchor_role="controlled", setup="passive")
    r = run.result
    answer, offer = r["local_sdp"], r["remote_sdp"]
    # Anchor's answer: its own credentials, its candidate, a well-formed fingerprint.
    assert _ufrag(answer) == r["anchor_ufrag"] != _ufrag(offer)
    assert _pwd(answer) == r["anchor_pwd"] and len(r["anchor_pwd"]) >= max(PWD_MIN, 22)
    assert FINGERPRINT_LINE.search(answer), answer
    assert f" {r['anchor_local'][0]} {r['anchor_local'][1]} typ host" in answer
    assert "a=setup:actpass" in offer and "a=setup:passive" in answer

    _check_chromium_connected(r)
    assert r["agent_role"] == "controlled"
    _check_agent_learnt_chromium(r)
    _check_every_request_answered(r, _ufrag(offer))
    # Chromium's checks, controlling and aggressive: USE-CANDIDATE from the first one,
    # GOOG-NETWORK-INFO (comprehension-optional) in each; Anchor answered them all above.
    requests = [d["stun"] for d in _requests(r)]
    first = requests[0]["attributes"]
    for attribute in (USERNAME, PRIORITY, ICE_CONTROLLING, USE_CANDIDATE, GOOG_NETWORK_INFO):
        assert attribute in first, f"{attribute:#06x} not in Chromium's first check {first}"
    assert first[-2:] == [MESSAGE_INTEGRITY, FINGERPRINT]
    assert all(GOOG_NETWORK_INFO in q["attributes"] for q in requests)
    assert not any(ICE_CONTROLLED in q["attributes"] for q in requests)
    # Anchor's own (triggered) check to the learnt address succeeded, as controlled.
    checks, answered = _own_checks(r)
    assert checks and all(ICE_CONTROLLED in c["attributes"] for c in checks)
    assert any(c["transaction_id"] in answered for c in checks)
    assert r["chromium_connected_ms"] < 5000 and r["agent_connected_ms"] < 5000


def test_anchor_offers_and_nominates(scenario: Callable[..., NamespaceRun]) -> None:
    """Anchor as the controlling side: Chromium, answering, takes the controlled role and
    accepts Anchor's nomination (regular nomination, USE-CANDIDATE on a repeated check)."""
    run = scenario("ice", anchor_role="controlling")
    r = run.result
    offer, answer = r["local_sdp"], r["remote_sdp"]
    assert _pwd(offer) == r["anchor_pwd"] and len(r["anchor_pwd"]) >= 22
    assert FINGERPRINT_LINE.search(offer), offer
    assert "a=setup:actpass" in offer and "a=setup:active" in answer

    _check_chromium_connected(r)
    assert r["agent_role"] == "controlling"
    _check_agent_learnt_chromium(r)
    _check_every_request_answered(r, _ufrag(answer))
    requests = [d["stun"] for d in _requests(r)]
    assert all(ICE_CONTROLLED in q["attributes"] for q in requests)
    assert not any(USE_CANDIDATE in q["attributes"] for q in requests)
    assert all(GOOG_NETWORK_INFO in q["attributes"] for q in requests)
    checks, answered = _own_checks(r)
    assert all(ICE_CONTROLLING in c["attributes"] for c in checks)
    nominations = [c for c in checks if USE_CANDIDATE in c["attributes"]]
    assert nominations, "Anchor never nominated"
    assert any(c["transaction_id"] in answered for c in nominations)
    assert r["agent_connected_ms"] < 5000


def test_end_of_candidates_with_no_candidates(scenario: Callable[..., NamespaceRun]) -> None:
    """Chromium's offer in the namespace has no candidates; a trickle application that
    passes Chromium's end-of-candidates on must still connect through peer-reflexive
    learning (RFC 8445 §7.3.1.3: the peer's checks can still come)."""
    run = scenario("ice", anchor_role="controlled", end_of_candidates=True, timeout=3.0)
    r = run.result
    _check_chromium_connected(r)
    _check_agent_learnt_chromium(r)


# --------------------------------------------------------------------------- 3: DTLS demux


def test_dtls_client_hello_reaches_the_application_path(
    scenario: Callable[..., NamespaceRun],
) -> None:
    run = scenario("ice", anchor_role="controlled", setup="passive", wait_dtls=True)
    r = run.result
    assert r["dtls_seen"] is True, "no DTLS record reached the application path"
    _check_chromium_connected(r)
    _check_agent_learnt_chromium(r)
    selected_remote = r["agent_selected"]["remote"]["address"]
    app = r["app"]
    assert app
    for record in app:
        head = bytes.fromhex(record["head"])
        # RFC 7983: 20-63 is DTLS. A DTLSPlaintext header (RFC 6347 §4.1): handshake,
        # version 1.0 (0xFEFF) or 1.2 (0xFEFD), epoch 0; its fragment starts with a
        # ClientHello (Chromium splits its large ClientHello in two records).
        assert record["first_byte"] == head[0] == DTLS_HANDSHAKE
        assert head[1:3] in (b"\xfe\xff", b"\xfe\xfd") and head[3:5] == b"\x00\x00"
        assert head[13] == DTLS_CLIENT_HELLO
        assert record["handled"] is False
        assert record["is_stun"] is False and record["is_channel_data"] is False
        assert record["stun"] is None
        # On the selected pair's 5-tuple (the agent has one socket: its local address).
        assert record["peer"] == selected_remote
    # The demultiplexing the other way: every STUN datagram went to the agent, everything
    # else to the application, and the agent dropped nothing.
    for datagram in r["datagrams"]:
        if datagram["direction"] != "in":
            continue
        assert datagram["handled"] is datagram["is_stun"], datagram
        assert not datagram["is_channel_data"]
    ins = [d for d in r["datagrams"] if d["direction"] == "in" and not d["handled"]]
    assert ins == app
    assert r["agent_dropped"] == 0
    assert r["agent_state"] in ("connected", "completed")


# --------------------------------------------------------------------------- aiortc on Anchor


@pytest.mark.peer("aiortc")
@pytest.mark.parametrize("offerer", ["chromium", "aiortc"])
def test_aiortc_on_anchor_and_chromium_open_a_data_channel_and_echo(
    scenario: Callable[..., NamespaceRun], offerer: str
) -> None:
    """Issue 22: aiortc with ``install_aioice()`` (no option: in the loopback-only namespace
    the layer gathers on loopback) against Chromium's RTCDataChannel, each side offering in
    turn: the channel opens, every message comes back echoed, in order; the ICE under aiortc
    is the layer's, and Anchor's agent selected the pair (Chromium peer-reflexive: its SDP
    has no candidate in the namespace)."""
    result = scenario("aiortc", offerer=offerer, messages=20).result
    assert result["layer"] is True
    assert result["aiortc_role"] == ("controlling" if offerer == "aiortc" else "controlled")
    assert result["echoes"] == [f"echo:message {i}" for i in range(20)]
    selected = result["anchor_selected"]
    assert selected is not None
    # the namespace has 127.0.0.1 and ::1: the layer gathers on both, either pair may win
    assert selected["local"]["address"][0] in ("127.0.0.1", "::1")
    _check_selected(result["chromium_report"]["pair"])
