"""Hardening of ICE and the ephemeral link (issue 9, "ICE and link").

What this proves:

- Link churn (real sockets, loopback): ``CHURN_LINKS`` links (50 by default; set
  ``ANCHOR_CHURN_LINKS=1000`` for the issue's full figure) are formed and dissolved between
  :class:`~anchor_link.aio.endpoint.LinkEndpoint` endpoints through Anchor's TURN server running in this
  process, with the **relay** policy (so every link really allocates on the TURN server: two
  allocations per link, one per side) and a short idle timeout. Links are formed
  ``CHURN_PARALLEL`` at a time (one endpoint "hub" linking to that many peers) to keep the
  test quick. Afterwards this process has exactly the socket file descriptors and the
  asyncio tasks it had before the first link (the exact sets, as tests/loopback/test_link.py counts
  them), the server has no allocation left, and every allocation created was deleted by the
  client's Refresh LIFETIME 0 (none expired).
- ICE checks with a wrong password (or a wrong ufrag) get 401 and change nothing: agent
  state, role, tie-breaker, the pairs and their states, the valid list, the selected pair,
  the remote candidates (no peer-reflexive candidate is learned), no event (fake clock).
- Responses with bad MESSAGE-INTEGRITY (a forged success, a forged 487 role conflict) are
  ignored: the pair stays in progress, the role does not change, and the genuine response
  still completes the check afterwards.
- Consent (RFC 7675): a peer that stops answering loses consent exactly 30 s after the last
  successful check, even while an attacker answers every consent check with a response
  whose integrity is wrong (fake clock). At the link level (real time, short consent
  timeout passed through ``connection_options``), a link whose peer can no longer be
  reached reports :class:`LinkDissolved` with reason "transport lost: ...consent...", and
  leaves no socket or task.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from typing import Any

import pytest

from anchor_ice.agent import IceAgent, IceRole, IceState
from anchor_ice.events import ConsentLost, IceFailed
from anchor_link.aio.endpoint import LinkEndpoint
from anchor_link.aio.signal import InProcessSignalling
from anchor_link.state import LinkDissolved, LinkFailed, LinkFormed
from anchor_stun.attributes import (
    ErrorCodeAttribute,
    IceControlled,
    IceControlling,
    Priority,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from anchor_stun.integrity import short_term_key
from anchor_stun.message import Message, MessageClass, Method
from tests.loopback.test_link import LOOPBACK, other_tasks, socket_fds, turn_server
from tests.unit.test_ice_agent import A_HOST, B_HOST, connect
from tests.unit.test_ice_harness import decode, host, loopback_pair, run

CHURN_LINKS = int(os.environ.get("ANCHOR_CHURN_LINKS", "50"))
CHURN_PARALLEL = 10
CHURN_IDLE = 0.2

pytestmark = pytest.mark.timeout(max(120, CHURN_LINKS))


def _run(coro: Any, timeout: float) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# --------------------------------------------------------------------------- link churn


def test_link_churn_leaks_no_socket_task_or_allocation() -> None:
    rounds = -(-CHURN_LINKS // CHURN_PARALLEL)

    async def main() -> None:
        async with turn_server() as (core, turn):
            hub = InProcessSignalling()
            options: dict[str, Any] = {
                "stun": turn.address, "turn": [turn], "policy": "relay",
                "idle_timeout": CHURN_IDLE, "host_ips": [LOOPBACK],
            }  # fmt: skip
            a = LinkEndpoint("a", hub, **options)
            peers = [LinkEndpoint(f"p{i:02d}", hub, **options) for i in range(CHURN_PARALLEL)]
            for endpoint in (a, *peers):
                await endpoint.start()
            fds_before, tasks_before = socket_fds(), other_tasks()
            peak_fds = 0
            formed = 0
            try:
                for round_ in range(1, rounds + 1):
                    batch = peers[: min(CHURN_PARALLEL, CHURN_LINKS - formed)]
                    payload = f"round {round_}".encode()
                    await asyncio.gather(*(a.send(p.name, payload) for p in batch))
                    for p in batch:
                        assert await asyncio.wait_for(p.recv(), 10) == ("a", payload)
                    peak_fds = max(peak_fds, len(socket_fds() - fds_before))
                    assert core.allocation_count() == 2 * len(batch)  # relay: one per side
                    for p in batch:
                        await a.wait_for(LinkDissolved, p.name, count=round_, timeout=15)
                        await p.wait_for(LinkDissolved, "a", count=round_, timeout=15)
                    formed += len(batch)
                    assert a.active_peers() == []
                await asyncio.sleep(0)  # the driver tasks finish the step that reported
                assert formed == CHURN_LINKS == a.links_formed
                assert peak_fds > 0  # the links did open sockets
                # Nothing of any link is left: the exact sets of sockets and tasks.
                assert socket_fds() == fds_before
                assert other_tasks() == tasks_before
                assert core.allocation_count() == 0
                assert core.stats.allocations_created == 2 * CHURN_LINKS
                assert core.stats.allocations_deleted == 2 * CHURN_LINKS
                assert core.stats.allocations_expired == 0
                assert a.open_sockets() == 0 and a.relays() == 0
                for endpoint in (a, *peers):
                    assert not [e for e in endpoint.history if isinstance(e, LinkFailed)]
                    dissolved = [e for e in endpoint.history if isinstance(e, LinkDissolved)]
                    assert all(e.clean for e in dissolved)
                    assert {e.reason for e in dissolved} <= {"idle", "closed by peer"}
                assert sum(isinstance(e, LinkFormed) for e in a.history) == CHURN_LINKS
            finally:
                for endpoint in (a, *peers):
                    await endpoint.close()

    _run(main(), timeout=max(90.0, CHURN_LINKS * 0.5))


# --------------------------------------------------------------------------- ICE: checks


def _snapshot(agent: IceAgent) -> dict[str, Any]:
    """Everything a check or response could change in an agent."""
    selected = agent.selected_pair
    return {
        "state": agent.state,
        "role": agent.role,
        "tie_breaker": agent.tie_breaker,
        "remote_ufrag": agent.remote_ufrag,
        "pairs": [
            (
                p.key,
                p.state,
                p.nominated,
                p.valid,
                p.use_candidate,
                p.last_success,
                p.transaction_id,
            )
            for p in agent.pairs
        ],
        "valid": [p.key for p in agent.valid_pairs],
        "selected": selected.key if selected is not None else None,
        "remote_candidates": list(agent.remote_candidates),
        "next_timer": agent.next_timer(),
    }


def _events(agent: IceAgent) -> list[object]:
    out = []
    while (event := agent.next_event()) is not None:
        out.append(event)
    return out


def _check(ufrag: str, key: bytes, *attributes: object) -> bytes:
    msg = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12),
                  [Username(ufrag), *attributes])  # type: ignore[list-item]  # fmt: skip
    return msg.encode(key=key, fingerprint=True)


STRANGER = ("10.0.0.9", 7000)  # an address the agent has never seen (would be peer-reflexive)


@pytest.mark.parametrize("stage", ["checking", "completed"])
def test_checks_with_wrong_credentials_get_401_and_change_nothing(stage: str) -> None:
    if stage == "completed":
        ea, eb, _net, now = connect()
        assert ea.agent.state is IceState.COMPLETED
    else:
        ea, eb, _net = loopback_pair()
        ea.agent.set_remote_credentials(eb.agent.local_ufrag, eb.agent.local_pwd)
        ea.agent.add_remote_candidate(host(*B_HOST))
        ea.agent.start(0.0)
        now = 0.0
        ea.agent.datagrams_to_send(now)  # the first check is in flight
        assert ea.agent.state is IceState.CHECKING
    victim = ea.agent  # controlling; the checks come from "the controlled peer"
    _events(victim)
    ufrag = f"{victim.local_ufrag}:{eb.agent.local_ufrag}"
    wrong_key = short_term_key("w" * 22)
    right_key = short_term_key(victim.local_pwd)
    # A role-conflict bait (ICE-CONTROLLING with a huge tie-breaker) and USE-CANDIDATE: a
    # check that authenticated would switch the role or nominate; these must not.
    forged = [
        _check(ufrag, wrong_key, Priority(1), IceControlling(2**64 - 1), UseCandidate()),
        _check(ufrag, wrong_key, Priority(1), IceControlled(1), UseCandidate()),
        _check(f"XXXX:{eb.agent.local_ufrag}", right_key, Priority(1), IceControlled(1)),
    ]
    for source in (STRANGER, B_HOST):
        for data in forged:
            before = _snapshot(victim)
            assert victim.receive_datagram(data, source, A_HOST, now)
            (answer,) = victim.datagrams_to_send(now)
            reply = decode(answer.data)
            assert reply.msg_class is MessageClass.ERROR and reply.error is not None
            assert reply.error.code == 401
            assert answer.addr == source
            assert _snapshot(victim) == before
            assert _events(victim) == []
            assert victim.role is IceRole.CONTROLLING
            assert STRANGER not in [c.address for c in victim.remote_candidates]


def _genuine_response(ea_agent: IceAgent, eb_agent: IceAgent, now: float) -> tuple[bytes, Any]:
    """A's next check, answered by B; returns (B's genuine response bytes, A's Transmit)."""
    (check,) = [t for t in ea_agent.datagrams_to_send(now) if decode(t.data).msg_class
                is MessageClass.REQUEST]  # fmt: skip
    assert eb_agent.receive_datagram(check.data, A_HOST, B_HOST, now)
    txid = decode(check.data).transaction_id
    (response,) = [t for t in eb_agent.datagrams_to_send(now)
                   if decode(t.data).transaction_id == txid]  # fmt: skip
    return response.data, check


def _with_bad_integrity(data: bytes) -> bytes:
    """The same message with one bit of its MESSAGE-INTEGRITY flipped and a FINGERPRINT that
    still verifies (so that only the integrity is wrong)."""
    out = bytearray(data)
    # ... MESSAGE-INTEGRITY (4 + 20 bytes) | FINGERPRINT (4 + 4 bytes)
    out[-8 - 20] ^= 0x01
    crc = (zlib.crc32(bytes(out[:-8])) ^ 0x5354554E) & 0xFFFFFFFF
    out[-4:] = crc.to_bytes(4, "big")
    msg = Message.decode(bytes(out))
    assert msg.verify_fingerprint()
    return bytes(out)


def test_responses_with_bad_integrity_are_ignored() -> None:
    ea, eb, _net = loopback_pair()
    a, b = ea.agent, eb.agent
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    a.add_remote_candidate(host(*B_HOST))
    b.add_remote_candidate(host(*A_HOST))
    a.start(0.0)
    b.start(0.0)
    genuine, check = _genuine_response(a, b, 0.0)
    txid = decode(check.data).transaction_id
    _events(a)
    before = _snapshot(a)
    dropped = a.dropped
    # 1. The genuine success, with a broken integrity.
    assert a.receive_datagram(_with_bad_integrity(genuine), B_HOST, A_HOST, 0.01)
    # 2. A forged 487 (role conflict) for the same transaction, signed with a wrong key.
    conflict = Message(Method.BINDING, MessageClass.ERROR, txid, [])
    conflict.attributes.append(ErrorCodeAttribute(487, "Role Conflict"))
    assert a.receive_datagram(conflict.encode(key=short_term_key("w" * 22), fingerprint=True),
                              B_HOST, A_HOST, 0.01)  # fmt: skip
    # 3. The same 487 without any integrity.
    assert a.receive_datagram(conflict.encode(fingerprint=True), B_HOST, A_HOST, 0.01)
    assert a.dropped == dropped + 3
    after = _snapshot(a)
    del before["next_timer"], after["next_timer"]  # the clock moved
    assert after == before
    assert a.role is IceRole.CONTROLLING and a.valid_pairs == []
    assert _events(a) == []
    # The transaction was not consumed: the genuine response still completes the check.
    assert a.receive_datagram(genuine, B_HOST, A_HOST, 0.02)
    assert a.dropped == dropped + 3
    assert [p.key for p in a.valid_pairs]


# --------------------------------------------------------------------------- ICE: consent


def test_forged_consent_responses_do_not_keep_consent_alive() -> None:
    """The peer stops answering at t=20 s; from then on every consent check A sends is
    answered by an attacker with the peer's genuine answer format but a wrong key. Consent
    is still lost exactly 30 s after the last genuine success."""
    ea, eb, net, now = connect()
    now = run(ea, eb, net, now, 20.0)
    selected = ea.agent.selected_pair
    assert selected is not None and selected.last_success is not None
    last_ok = selected.last_success
    eb.agent.close(now)  # the peer stops answering
    wrong = short_term_key("w" * 22)
    forged = 0
    t = now
    while t < last_ok + 30.0:
        timer = ea.agent.next_timer()
        assert timer is not None
        t = timer
        if t >= last_ok + 30.0:
            break
        ea.agent.handle_timer(t)
        for transmit in ea.agent.datagrams_to_send(t):
            request = decode(transmit.data)
            if request.msg_class is not MessageClass.REQUEST:
                continue
            reply = Message(Method.BINDING, MessageClass.SUCCESS, request.transaction_id,
                            [XorMappedAddress(*A_HOST)])  # fmt: skip
            assert ea.agent.receive_datagram(reply.encode(key=wrong, fingerprint=True),
                                             transmit.addr, transmit.local, t)  # fmt: skip
            forged += 1
        assert not [e for e in _events(ea.agent) if isinstance(e, ConsentLost)]
    assert forged >= 4  # a consent check every ~5 s, each answered by the attacker
    assert selected.last_success == last_ok  # no forged answer renewed anything
    assert ea.agent.state is IceState.COMPLETED
    assert ea.agent.next_timer() == last_ok + 30.0
    ea.agent.handle_timer(last_ok + 29.999)
    assert ea.agent.state is IceState.COMPLETED
    ea.agent.handle_timer(last_ok + 30.0)
    events = _events(ea.agent)
    assert ConsentLost(1) in events
    assert ea.agent.state is IceState.FAILED
    failed = [e for e in events if isinstance(e, IceFailed)]
    assert failed and "consent" in failed[-1].reason


def test_a_link_whose_peer_stops_answering_reports_consent_lost() -> None:
    """Real time on loopback, relay policy: once the link is open, the TURN server (the only
    path between the two sides) goes away, so consent checks are no longer answered. With
    ``consent_timeout`` 1.5 s (passed to the ICE agent through ``connection_options``) and
    an idle timeout far away, the link dissolves with "transport lost: ... consent ...", not
    with "idle" (on one side at least: the other may have been told first by its ``bye``),
    and leaves no socket or task behind."""
    consent_timeout = 1.5
    options: dict[str, Any] = {
        "policy": "relay", "idle_timeout": 60.0, "host_ips": [LOOPBACK],
        "connection_options": {"agent_options": {"consent_interval": 0.3,
                                                 "consent_timeout": consent_timeout}},
    }  # fmt: skip

    async def main() -> None:
        hub = InProcessSignalling()
        fds_before = socket_fds()
        async with turn_server() as (_core, turn):
            a = LinkEndpoint("a", hub, turn=[turn], stun=turn.address, **options)
            b = LinkEndpoint("b", hub, turn=[turn], stun=turn.address, **options)
            await a.start()
            await b.start()
            tasks_before = other_tasks()
            await a.send("b", b"hello")
            assert await asyncio.wait_for(b.recv(), 10) == ("a", b"hello")
            await a.wait_for(LinkFormed, "b", timeout=5)
        # the TURN server is closed here: no consent answer can come back any more
        stopped = time.monotonic()
        dissolved = await a.wait_for(LinkDissolved, "b", timeout=consent_timeout + 10)
        other = await b.wait_for(LinkDissolved, "a", timeout=consent_timeout + 10)
        took = time.monotonic() - stopped
        for event in (dissolved, other):
            # Both lose consent at about the same time; the one whose ``bye`` arrives first
            # ends the other's link with "closed by peer: transport lost: ...".
            assert event.reason.startswith(("transport lost: ", "closed by peer: transport lost"))
            assert "consent" in event.reason
            assert not event.clean
        assert dissolved.reason.startswith("transport lost: ") or other.reason.startswith(
            "transport lost: "
        )
        assert took < consent_timeout + 5  # well before the 60 s idle timeout
        await asyncio.sleep(0)
        assert a.active_peers() == [] and b.active_peers() == []
        assert other_tasks() == tasks_before
        await a.close()
        await b.close()
        assert socket_fds() == fds_before

    _run(main(), timeout=60.0)
