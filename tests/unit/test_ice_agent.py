"""The sans-I/O ICE agent (RFC 8445, RFC 7675) on a fake clock and an in-memory network."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_ice.agent import IceAgent, IceRole, IceState
from anchor_ice.candidate import CandidateType, make_candidate
from anchor_ice.checklist import PairState
from anchor_ice.events import (
    ConsentLost,
    IceCompleted,
    IceConnected,
    IceFailed,
    LocalCandidateLearned,
    PairNominated,
    RemoteCandidateLearned,
    RestartCompleted,
    RoleChanged,
)
from anchor_ice.nominator import GatewayNominator, RelayOnly
from anchor_stun.attributes import (
    ErrorCodeAttribute,
    IceControlled,
    IceControlling,
    Priority,
    RawAttribute,
    UnknownAttributes,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from anchor_stun.errors import LocalProtocolError
from anchor_stun.integrity import short_term_key
from anchor_stun.message import Message, MessageClass, Method
from tests.unit.test_ice_harness import (
    Endpoint,
    Nat,
    Network,
    decode,
    exchange,
    host,
    loopback_pair,
    relay,
    run,
    seeded,
    transfer,
)

A_HOST = ("10.0.0.1", 5000)
B_HOST = ("10.0.0.2", 6000)


def state(agent: IceAgent) -> IceState:
    """The agent's state, read through a call (so that type checkers do not narrow it)."""
    return agent.state


def types(endpoint: Endpoint) -> list[str]:
    return [type(e).__name__ for e in endpoint.events]


def requests(net: Network, source: tuple[str, int] | None = None) -> list[Message]:
    out = []
    for packet in net.log:
        msg = decode(packet.data)
        if msg.msg_class is MessageClass.REQUEST and (source is None or packet.source == source):
            out.append(msg)
    return out


def connect(**kwargs: object) -> tuple[Endpoint, Endpoint, Network, float]:
    ea, eb, net = loopback_pair(**kwargs)
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    now = run(ea, eb, net, 0.0, 3.0)
    return ea, eb, net, now


# --------------------------------------------------------------------------- checks


def test_check_schedule_under_ta() -> None:
    agent = IceAgent(controlling=True, rng=seeded(1))
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    remotes = [
        make_candidate(CandidateType.HOST, (f"10.0.0.{9 - i}", 7000), local_preference=65535 - i)
        for i in range(3)
    ]
    for candidate in remotes:
        agent.add_remote_candidate(candidate)
    agent.set_remote_credentials("RUFRAG", "r" * 22)
    agent.start(0.0)
    sent: list[tuple[float, str]] = [(0.0, t.addr[0]) for t in agent.datagrams_to_send(0.0)]
    while len(sent) < 12:
        now = agent.next_timer()
        assert now is not None
        agent.handle_timer(now)
        sent += [(now, t.addr[0]) for t in agent.datagrams_to_send(now)]
    # One new check per Ta (50 ms, RFC 8445 §14.2) in priority order; retransmissions after
    # RTO = max(500 ms, Ta * N * (Waiting + In-Progress)) = max(0.5, 0.05 * 3 * 3) (§14.3),
    # doubling (RFC 8489 §6.2.1).
    expected = [
        (0.0, "10.0.0.9"), (0.05, "10.0.0.8"), (0.1, "10.0.0.7"),
        (0.5, "10.0.0.9"), (0.55, "10.0.0.8"), (0.6, "10.0.0.7"),
        (1.5, "10.0.0.9"), (1.55, "10.0.0.8"), (1.6, "10.0.0.7"),
        (3.5, "10.0.0.9"), (3.55, "10.0.0.8"), (3.6, "10.0.0.7"),
    ]
    assert [ip for _, ip in sent] == [ip for _, ip in expected]
    assert [t for t, _ in sent] == pytest.approx([t for t, _ in expected], abs=1e-9)


def test_rto_formula_scales_with_the_checklist() -> None:
    agent = IceAgent(controlling=True, rng=seeded(1))
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    for i in range(5):
        agent.add_remote_candidate(host(f"10.0.1.{i + 1}", 7000))
    agent.set_remote_credentials("RUFRAG", "r" * 22)
    agent.start(0.0)
    assert len(agent.datagrams_to_send(0.0)) == 1
    # RTO = 0.05 * 5 pairs * 5 waiting = 1.25 s for the first check
    times: list[float] = []
    now = 0.0
    while len(times) < 6:
        now = agent.next_timer() or 0.0
        agent.handle_timer(now)
        times += [now] * len(agent.datagrams_to_send(now))
    assert times == pytest.approx([0.05, 0.1, 0.15, 0.2, 1.25, 1.3], abs=1e-9)


def test_check_request_contents() -> None:
    agent = IceAgent(controlling=True, rng=seeded(1), local_ufrag="LFRG", local_pwd="L" * 22,
                     tie_breaker=0x1122334455667788)
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    agent.add_remote_candidate(host(*B_HOST))
    agent.set_remote_credentials("RFRG", "R" * 22)
    agent.start(0.0)
    (transmit,) = agent.datagrams_to_send(0.0)
    assert transmit.addr == B_HOST and transmit.local == A_HOST
    msg = decode(transmit.data)
    assert (msg.method, msg.msg_class) == (Method.BINDING, MessageClass.REQUEST)
    assert msg.get(Username) == Username("RFRG:LFRG")  # RFC 8445 §7.2.2
    assert msg.get(Priority) == Priority(1862270975)  # prflx type preference, §7.1.1
    assert msg.get(IceControlling) == IceControlling(0x1122334455667788)
    assert msg.get(UseCandidate) is None
    assert msg.verify_integrity(short_term_key("R" * 22))
    assert msg.verify_fingerprint()


def test_generated_credentials_follow_rfc_8839() -> None:
    agent = IceAgent(controlling=True, rng=seeded(7))
    assert len(agent.local_ufrag) >= 4 and len(agent.local_pwd) >= 22
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
    assert set(agent.local_ufrag + agent.local_pwd) <= allowed
    assert IceAgent(controlling=True, rng=seeded(7)).local_pwd == agent.local_pwd
    with pytest.raises(LocalProtocolError):
        IceAgent(controlling=True, local_ufrag="abc")
    with pytest.raises(LocalProtocolError):
        IceAgent(controlling=True, lite=True)


# --------------------------------------------------------------------------- connecting


def test_connect_on_loopback_states_events_and_data() -> None:
    ea, eb, net = loopback_pair()
    assert ea.agent.state is IceState.NEW
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    assert state(ea.agent) is IceState.CHECKING
    now = run(ea, eb, net, 0.0, 3.0)
    assert types(ea) == ["PairNominated", "IceConnected", "IceCompleted"]
    assert types(eb) == ["PairNominated", "IceConnected", "IceCompleted"]
    assert ea.agent.state is eb.agent.state is IceState.COMPLETED
    assert ea.agent.role is IceRole.CONTROLLING and eb.agent.role is IceRole.CONTROLLED
    connected = ea.events[1]
    assert isinstance(connected, IceConnected)
    (info,) = connected.pairs
    assert (info.local_address, info.remote_address) == (A_HOST, B_HOST)
    assert info.local_type is info.remote_type is CandidateType.HOST
    # data both ways
    for sender, receiver, payload in ((ea, eb, b"ping"), (eb, ea, b"pong")):
        transmit = sender.agent.send(payload, now)
        assert transmit is not None
        net.send(sender, transmit, now)
        transfer(ea, eb, now, net)
        assert receiver.received == [payload]


def test_regular_nomination_sends_use_candidate_once_from_the_controlling_side() -> None:
    ea, eb, net, _ = connect()
    from_a = [m for m in requests(net, A_HOST) if m.get(UseCandidate) is not None]
    from_b = [m for m in requests(net, B_HOST) if m.get(UseCandidate) is not None]
    assert len(from_a) == 1 and from_b == []
    assert ea.agent.selected_pair is not None and ea.agent.selected_pair.nominated
    assert eb.agent.selected_pair is not None and eb.agent.selected_pair.nominated


def test_controlled_agent_answers_before_it_knows_anything() -> None:
    ea, eb, net = loopback_pair()
    ea.agent.set_remote_credentials(eb.agent.local_ufrag, eb.agent.local_pwd)
    ea.agent.add_remote_candidate(host(*B_HOST))
    ea.agent.start(0.0)
    transfer(ea, eb, 0.0, net)  # check to B, which has no remote credentials nor candidates
    transfer(ea, eb, 0.0, net)  # B's answer
    assert ea.agent.pairs[0].valid
    assert eb.drain_events() == []
    # B learns A's credentials later: the remembered request queues a triggered check
    eb.agent.set_remote_credentials(ea.agent.local_ufrag, ea.agent.local_pwd)
    assert [type(e) for e in eb.drain_events()] == [RemoteCandidateLearned]
    eb.agent.start(1.0)
    out = eb.agent.datagrams_to_send(1.0)
    assert [t.addr for t in out] == [A_HOST]
    assert decode(out[0].data).get(IceControlled) is not None


# --------------------------------------------------------------------------- NAT, prflx


def test_peer_reflexive_learning_on_both_sides_through_a_nat() -> None:
    a = IceAgent(controlling=True, rng=seeded(1))
    b = IceAgent(controlling=False, rng=seeded(2))
    net = Network()
    nat = Nat("203.0.113.1", filtering="address-dependent")
    ea = net.add(a, A_HOST, nat=nat)
    eb = net.add(b, ("198.51.100.2", 6000))
    a.add_local_candidate(host(*A_HOST), A_HOST)  # A knows no srflx: only a private host
    b.add_local_candidate(host("198.51.100.2", 6000), ("198.51.100.2", 6000))
    exchange(ea, eb)
    a.start(0.0)
    b.start(0.0)
    now = run(ea, eb, net, 0.0, 5.0)
    learned_a = [e for e in ea.events if isinstance(e, LocalCandidateLearned)]
    learned_b = [e for e in eb.events if isinstance(e, RemoteCandidateLearned)]
    assert [e.candidate.address for e in learned_a] == [("203.0.113.1", 40000)]
    assert learned_a[0].candidate.type is CandidateType.PRFLX
    assert (learned_a[0].candidate.related_ip, learned_a[0].candidate.related_port) == A_HOST
    assert learned_a[0].candidate.priority == 1862270975  # the PRIORITY A sent, §7.2.5.3.1
    assert [e.candidate.address for e in learned_b] == [("203.0.113.1", 40000)]
    assert learned_b[0].candidate.priority == 1862270975  # §7.3.1.3
    assert a.state is b.state is IceState.COMPLETED
    sa, sb = a.selected_pair, b.selected_pair
    assert sa is not None and sb is not None
    assert (sa.local.type, sa.remote.type, sa.base) == (CandidateType.PRFLX, CandidateType.HOST,
                                                        A_HOST)
    assert (sb.local.type, sb.remote.type) == (CandidateType.HOST, CandidateType.PRFLX)
    transmit = b.send(b"through the NAT", now)
    assert transmit is not None and transmit.addr == ("203.0.113.1", 40000)
    net.send(eb, transmit, now)
    transfer(ea, eb, now, net)
    assert ea.received == [b"through the NAT"]


def test_lossy_reordering_duplicating_network_still_connects() -> None:
    counter = itertools.count()
    ea, eb, _ = loopback_pair(check_rto=0.5)
    net = Network(
        drop=lambda packet: next(counter) % 3 == 1,
        duplicate=lambda packet: True,
        reorder=True,
        latency=0.02,
    )
    net.endpoints = []
    ea = net.add(ea.agent, A_HOST)
    eb = net.add(eb.agent, B_HOST)
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 20.0)
    assert ea.agent.state is IceState.COMPLETED and eb.agent.state is IceState.COMPLETED
    assert ea.agent.selected_pair is not None and ea.agent.selected_pair.rtt == pytest.approx(0.04)


def test_asymmetric_response_fails_the_pair() -> None:
    ea, eb, _ = loopback_pair()
    exchange(ea, eb)
    ea.agent.start(0.0)
    (check,) = ea.agent.datagrams_to_send(0.0)
    eb.agent.receive_datagram(check.data, A_HOST, B_HOST, 0.0)
    (answer,) = eb.agent.datagrams_to_send(0.0)
    assert ea.agent.receive_datagram(answer.data, ("10.0.0.99", 6000), A_HOST, 0.0)
    assert ea.agent.pairs[0].state is PairState.FAILED  # RFC 8445 §7.2.5.2.1
    assert ea.agent.valid_pairs == []


# --------------------------------------------------------------------------- role conflict


@pytest.mark.parametrize("controlling", [True, False])
def test_role_conflict_larger_tie_breaker_controls(controlling: bool) -> None:
    a = IceAgent(controlling=controlling, rng=seeded(1), tie_breaker=10)
    b = IceAgent(controlling=controlling, rng=seeded(2), tie_breaker=20)
    net = Network()
    ea, eb = net.add(a, A_HOST), net.add(b, B_HOST)
    a.add_local_candidate(host(*A_HOST), A_HOST)
    b.add_local_candidate(host(*B_HOST), B_HOST)
    exchange(ea, eb)
    a.start(0.0)
    b.start(0.0)
    run(ea, eb, net, 0.0, 5.0)
    assert a.role is IceRole.CONTROLLED and b.role is IceRole.CONTROLLING  # RFC 8445 §7.3.1.1
    switched = ea if controlling else eb
    assert [e for e in switched.events if isinstance(e, RoleChanged)] == [
        RoleChanged(controlling=not controlling)
    ]
    errors = [decode(p.data).error for p in net.log if decode(p.data).error is not None]
    assert ErrorCodeAttribute(487, "Role Conflict") in errors
    assert a.state is b.state is IceState.COMPLETED
    assert a.selected_pair is not None and b.selected_pair is not None


def test_role_chosen_before_start_is_the_role_checks_run_with() -> None:
    """RFC 8445 §6.1.1: the role comes from the signalling, which an offer/answer user (aiortc
    through anchor_ice.compat) may learn after creating the agent."""
    ea, eb, net = loopback_pair()
    ea.agent.set_role(False)
    eb.agent.set_role(True)
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 3.0)
    assert ea.agent.role is IceRole.CONTROLLED and eb.agent.role is IceRole.CONTROLLING
    assert "RoleChanged" not in types(ea) + types(eb)  # a choice, not a conflict
    from_a = [m for m in requests(net, A_HOST) if m.get(UseCandidate) is not None]
    from_b = [m for m in requests(net, B_HOST) if m.get(UseCandidate) is not None]
    assert from_a == [] and len(from_b) == 1  # the controlling side nominates (§8.1.1)
    assert all(m.get(IceControlling) is not None for m in requests(net, B_HOST))
    with pytest.raises(LocalProtocolError, match="before start"):
        ea.agent.set_role(True)
    assert ea.agent.role is IceRole.CONTROLLED  # unchanged


def test_a_lite_agent_cannot_be_set_controlling() -> None:
    agent = IceAgent(controlling=False, lite=True, rng=seeded(1))
    with pytest.raises(LocalProtocolError, match="lite"):
        agent.set_role(True)
    assert not agent.controlling


def test_role_conflict_response_switches_role_and_tie_breaker() -> None:
    a = IceAgent(controlling=True, rng=seeded(1), tie_breaker=10)
    b = IceAgent(controlling=True, rng=seeded(2), tie_breaker=20)
    net = Network()
    ea, eb = net.add(a, A_HOST), net.add(b, B_HOST)
    a.add_local_candidate(host(*A_HOST), A_HOST)
    b.add_local_candidate(host(*B_HOST), B_HOST)
    exchange(ea, eb)
    a.start(0.0)  # B does not send checks: A only learns of the conflict from a 487
    transfer(ea, eb, 0.0, net)
    transfer(ea, eb, 0.0, net)
    assert a.role is IceRole.CONTROLLED and a.tie_breaker != 10  # RFC 8445 §7.2.5.1
    assert [type(e) for e in ea.drain_events()] == [RoleChanged]
    (pair,) = a.pairs
    assert pair.state is PairState.WAITING and pair in a.checklist.triggered
    # the repeated check claims the new role
    (retry,) = a.datagrams_to_send(0.05)
    assert decode(retry.data).get(IceControlled) == IceControlled(a.tie_breaker)


# --------------------------------------------------------------------------- nomination modes


def test_aggressive_nomination_from_the_peer_is_accepted() -> None:
    ea, eb, net = loopback_pair()
    ea.agent.aggressive = True
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.5)  # B's pair is not checked yet when A's USE-CANDIDATE arrives
    run(ea, eb, net, 0.0, 3.0)
    from_a = requests(net, A_HOST)
    assert from_a and all(m.get(UseCandidate) is not None for m in from_a)
    assert ea.agent.state is eb.agent.state is IceState.COMPLETED
    nominated = [e for e in eb.events if isinstance(e, PairNominated)]
    assert len(nominated) == 1 and nominated[0].selected
    assert eb.agent.selected_pair is not None and eb.agent.selected_pair.nominated


def test_ice_lite_agent_only_answers() -> None:
    a = IceAgent(controlling=True, rng=seeded(1))
    b = IceAgent(controlling=False, rng=seeded(2), lite=True)
    net = Network()
    ea, eb = net.add(a, A_HOST), net.add(b, B_HOST)
    a.add_local_candidate(host(*A_HOST), A_HOST)
    b.add_local_candidate(host(*B_HOST), B_HOST)
    exchange(ea, eb)
    a.start(0.0)
    b.start(0.0)
    now = run(ea, eb, net, 0.0, 20.0)
    assert requests(net, B_HOST) == []  # RFC 8445 §7.3.2: a lite agent sends no check
    assert a.state is IceState.COMPLETED and b.state is IceState.COMPLETED
    assert types(eb)[:3] == ["PairNominated", "IceConnected", "IceCompleted"]
    assert b.send(b"x", now) is not None

    def indications() -> list[float]:
        return [p.deliver_at for p in net.log if p.source == B_HOST
                and decode(p.data).msg_class is MessageClass.INDICATION]

    # answers to A's consent checks keep the pair busy: no keepalive needed
    assert indications() == []
    # once A goes quiet, the lite agent keeps the binding alive itself (RFC 8445 §11, Tr 15 s)
    a.close(now)
    b.send(b"last", now)
    run(ea, eb, net, now, now + 31.0)
    assert indications() == [now + 15.0, now + 30.0]


def test_end_of_candidates_without_candidates_still_learns_the_peer() -> None:
    # A browser's offer in a loopback-only namespace carries no candidate at all: the
    # controlled agent must wait for the peer's checks and learn it as peer-reflexive.
    a = IceAgent(controlling=True, rng=seeded(1))
    b = IceAgent(controlling=False, rng=seeded(2))
    net = Network()
    ea, eb = net.add(a, A_HOST), net.add(b, B_HOST)
    a.add_local_candidate(host(*A_HOST), A_HOST)
    b.add_local_candidate(host(*B_HOST), B_HOST)
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    for candidate in b.local_candidates():
        a.add_remote_candidate(candidate)
    a.add_remote_candidate(None)
    b.add_remote_candidate(None)  # end-of-candidates, and no candidate came
    a.start(0.0)
    b.start(0.0)
    assert b.state is not IceState.FAILED
    run(ea, eb, net, 0.0, 5.0)
    assert a.state is IceState.COMPLETED and b.state is IceState.COMPLETED
    assert b.selected_pair is not None
    assert b.selected_pair.remote.type is CandidateType.PRFLX


def test_two_components_connect_when_both_are_selected() -> None:
    a = IceAgent(controlling=True, rng=seeded(1), components=2)
    b = IceAgent(controlling=False, rng=seeded(2), components=2)
    net = Network()
    ea = net.add(a, A_HOST)
    eb = net.add(b, B_HOST)
    # second component on other ports: separate endpoints sharing the agents
    ea2 = net.add(a, ("10.0.0.1", 5001))
    eb2 = net.add(b, ("10.0.0.2", 6001))
    a.add_local_candidate(host(*A_HOST), A_HOST)
    a.add_local_candidate(host("10.0.0.1", 5001, component=2), ("10.0.0.1", 5001))
    b.add_local_candidate(host(*B_HOST), B_HOST)
    b.add_local_candidate(host("10.0.0.2", 6001, component=2), ("10.0.0.2", 6001))
    exchange(ea, eb)
    a.start(0.0)
    b.start(0.0)
    now = run(ea, eb, net, 0.0, 5.0)
    assert a.state is b.state is IceState.COMPLETED
    connected = [e for e in ea.events if isinstance(e, IceConnected)]
    assert [p.component for p in connected[0].pairs] == [1, 2]
    assert [p.base for p in connected[0].pairs] == [A_HOST, ("10.0.0.1", 5001)]
    transmit = a.send_on(2, b"rtcp", now)
    assert transmit is not None and transmit.addr == ("10.0.0.2", 6001)
    assert ea2.host == transmit.local and eb2.host == transmit.addr
    assert a.data_route(2, now) == (transmit.addr, transmit.local)  # what send_on uses
    assert a.data_route(1, now) == (B_HOST, A_HOST)
    assert a.data_route(3, now) is None  # no such component


# --------------------------------------------------------------------------- consent, keepalive


def test_consent_expires_exactly_30_s_after_the_peer_stops_answering() -> None:
    ea, eb, net, now = connect()
    consent_checks = [p.deliver_at for p in net.log if p.source == A_HOST
                      and decode(p.data).msg_class is MessageClass.REQUEST]
    run(ea, eb, net, now, 20.0)
    times = [p.deliver_at for p in net.log if p.source == A_HOST
             and decode(p.data).msg_class is MessageClass.REQUEST][len(consent_checks):]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and all(4.0 <= g <= 6.0 for g in gaps)  # RFC 7675 §5.1: 0.8-1.2 x 5 s
    stop = 20.0
    eb.agent.close(stop)  # the peer stops answering
    selected = ea.agent.selected_pair
    assert selected is not None and selected.last_success is not None
    last_ok = selected.last_success
    assert last_ok <= stop
    now = run(ea, eb, net, stop, last_ok + 29.999)
    assert ea.agent.state is IceState.COMPLETED
    assert ea.agent.send(b"still", last_ok + 29.999) is not None
    assert not [e for e in ea.events if isinstance(e, ConsentLost)]
    assert ea.agent.next_timer() == last_ok + 30.0
    now = run(ea, eb, net, now, last_ok + 30.0)
    lost = [e for e in ea.events if isinstance(e, ConsentLost)]
    assert lost == [ConsentLost(1)]
    assert now == last_ok + 30.0
    assert state(ea.agent) is IceState.FAILED
    assert isinstance(ea.events[-1], IceFailed) and "consent" in ea.events[-1].reason
    assert ea.agent.send(b"gone", now) is None  # RFC 7675: no more sending
    assert ea.agent.next_timer() is None


def test_send_checks_consent_expiry_itself() -> None:
    ea, eb, _, now = connect()
    eb.agent.close(now)
    selected = ea.agent.selected_pair
    assert selected is not None and selected.last_success is not None
    # no handle_timer call at all: send() itself notices the expiry
    assert ea.agent.send(b"x", selected.last_success + 30.0) is None
    assert ConsentLost(1) in [ea.agent.next_event() for _ in range(5)]


# --------------------------------------------------------------------------- restart


def test_ice_restart_keeps_data_flowing() -> None:
    ea, eb, net, now = connect()
    old_ufrag = ea.agent.local_ufrag
    ea.events.clear()
    eb.events.clear()
    ea.agent.restart(now)
    eb.agent.restart(now)
    assert ea.agent.local_ufrag != old_ufrag
    assert ea.agent.state is IceState.CHECKING
    # before the new credentials even arrive, data still flows on the previous pair
    transmit = ea.agent.send(b"during", now)
    assert transmit is not None
    net.send(ea, transmit, now)
    transfer(ea, eb, now, net)
    assert eb.received == [b"during"]
    # the old session's consent checks are still answered
    now = run(ea, eb, net, now, now + 7.0)
    assert ea.agent.state is IceState.CHECKING and ea.agent.selected_pair is not None
    exchange(ea, eb)
    now = run(ea, eb, net, now, now + 3.0)
    assert types(ea) == ["PairNominated", "RestartCompleted"]
    assert types(eb) == ["PairNominated", "RestartCompleted"]
    assert state(ea.agent) is IceState.COMPLETED
    transmit = ea.agent.send(b"after", now)
    assert transmit is not None
    net.send(ea, transmit, now)
    transfer(ea, eb, now, net)
    assert eb.received == [b"during", b"after"]
    restarted = ea.events[-1]
    assert isinstance(restarted, RestartCompleted) and len(restarted.pairs) == 1
    # new credentials only from now on
    with pytest.raises(LocalProtocolError):
        ea.agent.set_remote_credentials("other", "x" * 22)


# --------------------------------------------------------------------------- failure


def test_all_pairs_failed_after_end_of_candidates() -> None:
    agent = IceAgent(controlling=True, rng=seeded(1), check_rto=0.5, check_rc=2, check_rm=2)
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    agent.add_remote_candidate(host("10.9.9.9", 9))
    agent.add_remote_candidate(None)
    agent.set_remote_credentials("RFRG", "R" * 22)
    agent.start(0.0)
    now = 0.0
    while agent.state is IceState.CHECKING:
        agent.datagrams_to_send(now)
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    assert now == 1.5  # sends at 0 and 0.5, final wait 2 x 0.5
    assert agent.state is IceState.FAILED
    assert agent.next_event() == IceFailed(
        "all candidate pairs failed for component 1 (no response to any check (1 pair tried):"
        " the peer's candidates are not reachable from here (a TURN server gives a relayed"
        " candidate))"
    )


def _closed_port_agent() -> IceAgent:
    agent = IceAgent(controlling=True, rng=seeded(1), check_rto=0.5, check_rc=7, check_rm=16)
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    agent.add_remote_candidate(host("10.9.9.9", 9))
    agent.add_remote_candidate(None)
    agent.set_remote_credentials("RFRG", "R" * 22)
    agent.start(0.0)
    [check] = agent.datagrams_to_send(0.0)
    assert check.addr == ("10.9.9.9", 9) and check.local == A_HOST
    return agent


def test_a_hard_icmp_error_fails_the_check_at_once_and_names_the_address() -> None:
    """RFC 8445 §7.2.5.2.2 (issue 23 item 2): the socket reports the check's destination
    refused; the pair fails without its six retransmissions, and so does ICE (every pair
    failed, end-of-candidates known), naming the address."""
    agent = _closed_port_agent()
    # an error for another destination, or from another base, ends nothing
    assert agent.destination_unreachable(("10.9.9.8", 9), A_HOST, 0.001) == 0
    assert agent.destination_unreachable(("10.9.9.9", 9), ("10.0.0.1", 5001), 0.001) == 0
    assert agent.state is IceState.CHECKING
    ended = agent.destination_unreachable(
        ("10.9.9.9", 9), A_HOST, 0.001, reason="Connection refused"
    )
    assert ended == 1 and agent.unreachable_checks == 1
    assert [p.state for p in agent.pairs] == [PairState.FAILED]
    assert agent.state is IceState.FAILED
    assert agent.next_event() == IceFailed(
        "all candidate pairs failed for component 1 (the peer's candidates are unreachable:"
        " 10.9.9.9:9 (Connection refused) (a TURN server gives a relayed candidate))"
    )
    assert agent.datagrams_to_send(0.5) == [] and agent.next_timer() is None
    # once ended, more errors change nothing
    assert agent.destination_unreachable(("10.9.9.9", 9), A_HOST, 0.6) == 0


def test_a_soft_icmp_error_changes_no_state_but_is_named_in_the_reason() -> None:
    """RFC 8445 §7.2.5.2.2: a soft error (no route to host, which may pass) leaves the check
    to its retransmissions; when it times out the reason says what the network said."""
    agent = _closed_port_agent()
    assert agent.destination_unreachable(
        ("10.9.9.9", 9), A_HOST, 0.001, reason="No route to host", hard=False
    ) == 0
    assert agent.pairs[0].state is PairState.IN_PROGRESS
    sends, now = 1, 0.0
    while agent.state is IceState.CHECKING:
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
        sends += len(agent.datagrams_to_send(now))
    assert sends == 7  # Rc
    assert agent.failure_reason == (
        "all candidate pairs failed for component 1 (the peer's candidates are unreachable:"
        " 10.9.9.9:9 (No route to host) (a TURN server gives a relayed candidate))"
    )


def test_checking_timeout_without_end_of_candidates() -> None:
    agent = IceAgent(controlling=True, rng=seeded(1), check_rto=0.5, check_rc=2, check_rm=2,
                     checking_timeout=5.0)
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    agent.add_remote_candidate(host("10.9.9.9", 9))
    agent.set_remote_credentials("RFRG", "R" * 22)
    agent.start(1.0)
    now = 1.0
    while agent.state is IceState.CHECKING:
        agent.datagrams_to_send(now)
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    assert now == 6.0
    event = agent.next_event()
    assert isinstance(event, IceFailed)
    assert event.reason == (
        "checking timeout after 5.0 s (component 1: no valid pair: no response to any check"
        " (1 pair tried): the peer's candidates are not reachable from here (a TURN server"
        " gives a relayed candidate))"
    )


def _until_ended(a: Endpoint, b: Endpoint, net: Network, limit: float) -> float:
    now = 0.0
    while now < limit and IceState.FAILED not in (state(a.agent), state(b.agent)):
        now = run(a, b, net, now, now + 0.5) + 0.5
    return now


def test_a_wrong_remote_password_is_named_in_the_failure() -> None:
    """Issue 23 must-show 3 (core): every check of A gets B's unauthenticated 401; A's
    failure says the peer rejected its credentials."""
    ea, eb, net = loopback_pair(check_rto=0.1, check_rc=3, check_rm=2, checking_timeout=3.0)
    ea.agent.set_remote_credentials(eb.agent.local_ufrag, "W" * 22)  # not B's password
    eb.agent.set_remote_credentials(ea.agent.local_ufrag, ea.agent.local_pwd)
    for x, y in ((ea, eb), (eb, ea)):
        for candidate in x.agent.local_candidates():
            y.agent.add_remote_candidate(candidate)
        y.agent.add_remote_candidate(None)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    _until_ended(ea, eb, net, 10.0)
    assert ea.agent.state is IceState.FAILED
    assert ea.agent.failure_reason is not None
    assert "the peer rejected our credentials (401 to every check answered)" in (
        ea.agent.failure_reason
    )


def test_no_pair_the_policy_allows_names_the_way_out() -> None:
    """The relay policy with host candidates only: no pair can be formed, and the reason
    says why and how to get one."""
    ea, eb, net = loopback_pair(check_rto=0.1, checking_timeout=2.0, nominator_a=RelayOnly())
    exchange(ea, eb)  # A advertises nothing (no relayed candidate); B its host candidate
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    _until_ended(ea, eb, net, 10.0)
    assert ea.agent.failure_reason == (
        "checking timeout after 2.0 s (component 1: no valid pair: no candidate to offer"
        " under the relay policy: it offers none of the local candidates (host); add a TURN"
        " server that answers (check its address and credentials), or use policy='standard')"
    )


@pytest.mark.parametrize(("nominator", "way_out"), [
    (GatewayNominator(), "add a TURN server for a relayed candidate, a STUN server that"
     " answers for a server-reflexive one, or use policy='standard' to allow host pairs"),
    (RelayOnly(), "add a TURN server that answers (check its address and credentials), or"
     " use policy='standard'"),
])
def test_nothing_to_offer_once_gathering_is_complete_fails_at_the_start(
    nominator: GatewayNominator | RelayOnly, way_out: str
) -> None:
    """Issue 23 item 4: a policy that can offer none of the gathered candidates (host only)
    can never connect; once local gathering is complete the agent says so when checks
    start, with the way out, rather than at the checking timeout."""
    agent = IceAgent(controlling=True, rng=seeded(1), nominator=nominator)
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    assert agent.local_candidates() == []
    policy = "gateway" if isinstance(nominator, GatewayNominator) else "relay"
    expected = (
        f"no candidate to offer under the {policy} policy: it offers none of the local"
        f" candidates (host); {way_out}"
    )
    assert agent.nothing_to_offer() == expected
    agent.end_of_local_candidates()
    agent.set_remote_credentials("RFRG", "R" * 22)
    agent.start(0.0)
    assert agent.state is IceState.FAILED
    assert agent.next_event() == IceFailed(f"component 1: {expected}")
    # with a candidate the policy offers there is nothing to say
    agent = IceAgent(controlling=True, rng=seeded(1), nominator=nominator)
    agent.add_local_candidate(relay("198.51.100.1", 4000, ("203.0.113.1", 5000)), ("198.51.100.1", 4000))
    assert agent.nothing_to_offer() is None


# --------------------------------------------------------------------------- authentication


def _request(agent: IceAgent, *attributes: object, key: bytes | None,
             fingerprint: bool = True) -> bytes:
    msg = Message(Method.BINDING, MessageClass.REQUEST, b"T" * 12, list(attributes))  # type: ignore[arg-type]
    return msg.encode(key=key, fingerprint=fingerprint)


def _answer(agent: IceAgent, data: bytes) -> Message | None:
    assert agent.receive_datagram(data, ("10.0.0.2", 6000), A_HOST, 0.0)
    out = agent.datagrams_to_send(0.0)
    return decode(out[0].data) if out else None


def test_requests_are_authenticated() -> None:
    agent = IceAgent(controlling=False, rng=seeded(1), local_ufrag="LFRG", local_pwd="L" * 22)
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    good = short_term_key("L" * 22)
    base = [Username("LFRG:RFRG"), Priority(1), IceControlling(5)]
    ok = _answer(agent, _request(agent, *base, key=good))
    assert ok is not None and ok.msg_class is MessageClass.SUCCESS
    assert ok.get(XorMappedAddress) == XorMappedAddress("10.0.0.2", 6000)
    assert ok.verify_integrity(good) and ok.verify_fingerprint()
    wrong_pwd = _answer(agent, _request(agent, *base, key=short_term_key("W" * 22)))
    assert wrong_pwd is not None and wrong_pwd.error == ErrorCodeAttribute(401, "Unauthenticated")
    wrong_ufrag = _answer(agent, _request(agent, Username("XXXX:RFRG"), Priority(1), key=good))
    assert wrong_ufrag is not None and wrong_ufrag.error is not None
    assert wrong_ufrag.error.code == 401
    unsigned = _answer(agent, _request(agent, *base, key=None))
    assert unsigned is not None and unsigned.error is not None and unsigned.error.code == 400
    no_priority = _answer(agent, _request(agent, Username("LFRG:RFRG"), key=good))
    assert no_priority is not None and no_priority.error is not None
    assert no_priority.error.code == 400 and no_priority.verify_integrity(good)
    unknown = _answer(agent, _request(agent, *base, RawAttribute(0x7FF0, b"x"), key=good))
    assert unknown is not None and unknown.error is not None and unknown.error.code == 420
    assert unknown.get(UnknownAttributes) == UnknownAttributes((0x7FF0,))
    # a bad FINGERPRINT is not a STUN message for us: dropped without an answer
    data = bytearray(_request(agent, *base, key=good))
    data[-1] ^= 1
    assert _answer(agent, bytes(data)) is None
    assert agent.dropped == 1


def test_wrong_remote_password_never_connects() -> None:
    ea, eb, net = loopback_pair(checking_timeout=3.0)
    ea.agent.set_remote_credentials(eb.agent.local_ufrag, "w" * 22)  # wrong
    eb.agent.set_remote_credentials(ea.agent.local_ufrag, ea.agent.local_pwd)
    ea.agent.add_remote_candidate(host(*B_HOST))
    eb.agent.add_remote_candidate(host(*A_HOST))
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 5.0)
    codes = [decode(p.data).error.code for p in net.log  # type: ignore[union-attr]
             if p.source == B_HOST and decode(p.data).error is not None]
    assert codes and set(codes) == {401}
    assert ea.agent.state is IceState.FAILED and eb.agent.state is IceState.FAILED


# --------------------------------------------------------------------------- hostile input


def _sample_check() -> bytes:
    agent = IceAgent(controlling=True, rng=seeded(3), local_ufrag="RFRG", local_pwd="R" * 22)
    agent.add_local_candidate(host(*B_HOST), B_HOST)
    agent.add_remote_candidate(host(*A_HOST))
    agent.set_remote_credentials("LFRG", "L" * 22)
    agent.start(0.0)
    return agent.datagrams_to_send(0.0)[0].data


SAMPLE = _sample_check()


def _victim() -> IceAgent:
    agent = IceAgent(controlling=False, rng=seeded(1), local_ufrag="LFRG", local_pwd="L" * 22)
    agent.add_local_candidate(host(*A_HOST), A_HOST)
    agent.set_remote_credentials("RFRG", "R" * 22)
    agent.add_remote_candidate(host(*B_HOST))
    agent.start(0.0)
    return agent


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(SAMPLE)))
def test_mutated_checks_never_raise(flips: list[tuple[int, int]], cut: int) -> None:
    agent = _victim()
    data = bytearray(SAMPLE)
    for at, value in flips:
        data[at] = value
    for payload in (bytes(data), bytes(data[:cut])):
        result = agent.receive_datagram(payload, B_HOST, A_HOST, 0.0)
        assert isinstance(result, bool)
        agent.datagrams_to_send(0.0)
        agent.handle_timer(1.0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_after_a_stun_header_never_raise(body: bytes) -> None:
    agent = _victim()
    header = bytes([0x00, 0x01]) + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + b"x" * 12
    for payload in (header + body, body, header):
        assert isinstance(agent.receive_datagram(payload, B_HOST, A_HOST, 0.0), bool)
    agent.datagrams_to_send(0.0)


def test_response_classes_and_unknown_transactions() -> None:
    agent = _victim()
    assert agent.receive_datagram(b"application data", B_HOST, A_HOST, 0.0) is False
    stray = Message(Method.BINDING, MessageClass.SUCCESS, b"S" * 12,
                    [XorMappedAddress(*A_HOST)]).encode(fingerprint=True)
    assert agent.receive_datagram(stray, B_HOST, A_HOST, 0.0) is True  # ours, unknown: dropped
    allocate = Message(Method.ALLOCATE, MessageClass.SUCCESS, b"S" * 12).encode()
    assert agent.receive_datagram(allocate, B_HOST, A_HOST, 0.0) is False  # not ICE
    assert agent.receive_datagram(SAMPLE, B_HOST, ("10.7.7.7", 1), 0.0) is True  # not our base
    out = agent.datagrams_to_send(0.0)  # its own first check, no answer to anything above
    assert [decode(t.data).msg_class for t in out] == [MessageClass.REQUEST]
    assert agent.dropped == 2


def test_closed_agent_is_silent() -> None:
    agent = _victim()
    agent.close(1.0)
    assert agent.state is IceState.CLOSED
    assert agent.receive_datagram(SAMPLE, B_HOST, A_HOST, 1.0) is True
    assert agent.datagrams_to_send(1.0) == [] and agent.next_timer() is None
    assert agent.send(b"x", 1.0) is None
    with pytest.raises(LocalProtocolError):
        agent.add_remote_candidate(host("10.0.0.3", 1))


def test_events_of_a_completed_run_are_all_there() -> None:
    ea, eb, _, _ = connect()
    kinds = {type(e) for e in ea.events + eb.events}
    assert kinds == {PairNominated, IceConnected, IceCompleted}


# --------------------------------------------------------------------------- trickle


def test_trickled_candidates_and_prflx_replaced_by_the_signalled_candidate() -> None:
    ea, eb, net = loopback_pair()
    ea.agent.set_remote_credentials(eb.agent.local_ufrag, eb.agent.local_pwd)
    eb.agent.set_remote_credentials(ea.agent.local_ufrag, ea.agent.local_pwd)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    assert ea.agent.datagrams_to_send(0.0) == [] and ea.agent.next_timer() == 39.5
    ea.agent.add_remote_candidate(host(*B_HOST))  # trickled at 1.0 (RFC 8838)
    assert ea.agent.next_timer() == 0.0  # Ta long passed: check at once
    transfer(ea, eb, 1.0, net)  # A's check reaches B, which has no candidate of A's yet
    learned = [e for e in eb.drain_events() if isinstance(e, RemoteCandidateLearned)]
    assert [e.candidate.type for e in learned] == [CandidateType.PRFLX]
    eb.agent.add_remote_candidate(host(*A_HOST))  # the signalled candidate arrives late
    (remote,) = eb.agent.remote_candidates
    assert remote.type is CandidateType.HOST  # RFC 8445 §7.3.1.3: it tells the real type
    assert all(p.remote.type is CandidateType.HOST for p in eb.agent.pairs)
    run(ea, eb, net, 1.0, 5.0)
    assert ea.agent.state is eb.agent.state is IceState.COMPLETED


def test_gateway_peer_defers_an_early_nomination_until_its_check_succeeded() -> None:
    from anchor_ice.nominator import GatewayNominator

    a = IceAgent(controlling=True, rng=seeded(1), aggressive=True)
    b = IceAgent(controlling=False, rng=seeded(2), nominator=GatewayNominator())
    net = Network()
    nat_a, nat_b = Nat("203.0.113.1"), Nat("198.51.100.1")
    mapped_a = nat_a.outbound(A_HOST, ("192.0.2.100", 3478))
    mapped_b = nat_b.outbound(B_HOST, ("192.0.2.100", 3478))
    ea = net.add(a, A_HOST, nat=nat_a)
    eb = net.add(b, B_HOST, nat=nat_b)
    from tests.unit.test_ice_harness import srflx

    a.add_local_candidate(host(*A_HOST), A_HOST)
    a.add_local_candidate(srflx(*mapped_a, A_HOST), A_HOST)
    b.add_local_candidate(host(*B_HOST), B_HOST)
    b.add_local_candidate(srflx(*mapped_b, B_HOST), B_HOST)
    exchange(ea, eb)
    a.start(0.0)  # B starts late: A's first USE-CANDIDATE finds B without a valid pair
    transfer(ea, eb, 0.0, net)
    assert eb.agent.datagrams_to_send(0.0) == []  # deferred: no answer, no refusal
    b.start(0.2)
    run(ea, eb, net, 0.2, 5.0)
    for endpoint in (ea, eb):
        pair = endpoint.agent.selected_pair
        assert endpoint.agent.state is IceState.COMPLETED and pair is not None
        assert {pair.local.type, pair.remote.type} <= {CandidateType.SRFLX, CandidateType.PRFLX}
    assert not [p for p in net.log if decode(p.data).error is not None]


def test_restart_before_connecting_starts_over() -> None:
    ea, eb, net = loopback_pair()
    ea.agent.set_remote_credentials(eb.agent.local_ufrag, eb.agent.local_pwd)
    ea.agent.add_remote_candidate(host(*B_HOST))
    ea.agent.start(0.0)
    ea.agent.datagrams_to_send(0.0)  # a check in flight, never answered
    ea.agent.restart(0.2)
    assert ea.agent.pairs == [] and ea.agent.selected_pair is None
    assert ea.agent.remote_ufrag is None and ea.agent.next_timer() == 0.2 + 39.5
    exchange(ea, eb)
    eb.agent.start(0.2)
    run(ea, eb, net, 0.2, 3.0)
    assert types(ea) == ["PairNominated", "RestartCompleted"]
    assert state(ea.agent) is IceState.COMPLETED
