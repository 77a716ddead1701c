"""Pacing of checks (RFC 8445 §6.1.4.2, §14.2) and early relay nomination by the
GatewayNominator, on a fake clock: Ta is the higher of both agents' proposals (50 ms while
the peer proposed none), one new check per Ta with many pairs, the nominating repeat of a
lone pair exactly one Ta after its first check, and a relay pair nominated as soon as no
gateway pair can come instead of after the grace period."""

from __future__ import annotations

import itertools

import pytest

from anchor_ice.agent import PROPOSED_TA, TA, TA_MIN, IceAgent, IceState
from anchor_ice.candidate import CandidateType, make_candidate
from anchor_ice.checklist import PairState
from anchor_ice.nominator import GatewayNominator, NominationView, gateway_pair_possible
from anchor_stun.attributes import UseCandidate
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address
from anchor_stun.message import MessageClass
from tests.unit.test_ice_harness import (
    Endpoint,
    Network,
    Packet,
    decode,
    exchange,
    host,
    loopback_pair,
    run,
    seeded,
)
from tests.unit.test_ice_nominator import (
    L_HOST,
    L_RELAY,
    L_SRFLX,
    R_HOST,
    R_RELAY,
    R_SRFLX,
    REMOTES,
    loopback_with_relays,
    natted,
    valid_pair,
)

LATENCY = 0.0001  # one way, seconds


def new_requests(net: Network, source: Address) -> list[tuple[float, Packet]]:
    """(send time, packet) of each new Binding request from ``source``: the first send of
    every transaction, retransmissions left out."""
    seen: set[bytes] = set()
    out = []
    for packet in net.log:
        msg = decode(packet.data)
        if packet.source != source or msg.msg_class is not MessageClass.REQUEST:
            continue
        if msg.transaction_id in seen:
            continue
        seen.add(msg.transaction_id)
        out.append((round(packet.deliver_at - LATENCY, 9), packet))
    return out


def nominating(packet: Packet) -> bool:
    return decode(packet.data).get(UseCandidate) is not None


def signal_ta(a: Endpoint, b: Endpoint) -> None:
    """What a=ice-pacing carries, both ways (RFC 8839 §5.5)."""
    a.agent.set_remote_ta(b.agent.ta)
    b.agent.set_remote_ta(a.agent.ta)


# --------------------------------------------------------------------------- negotiation


def test_ta_is_the_higher_proposal_and_50_ms_for_a_peer_that_proposed_none() -> None:
    assert (TA, TA_MIN, PROPOSED_TA) == (0.05, 0.005, 0.005)
    agent = IceAgent(controlling=True, rng=seeded(0))
    assert agent.ta == PROPOSED_TA and agent.remote_ta is None
    assert agent.effective_ta == TA  # the peer proposed nothing: RFC 8445's default
    agent.set_remote_ta(0.005)
    assert agent.effective_ta == 0.005  # both at Anchor's proposal: the §14.2 floor
    agent.set_remote_ta(0.02)
    assert agent.effective_ta == 0.02  # "Both agents MUST use the higher value"
    agent.set_remote_ta(None)
    assert agent.effective_ta == TA
    slow = IceAgent(controlling=True, rng=seeded(0), ta=0.03)
    slow.set_remote_ta(0.005)
    assert slow.effective_ta == 0.03
    with pytest.raises(LocalProtocolError):
        agent.set_remote_ta(0.0)


# --------------------------------------------------------------------------- one pair


@pytest.mark.parametrize(("signalled", "ta"), [(True, 0.005), (False, 0.05)])
def test_lone_pair_nominates_exactly_one_ta_after_its_first_check(
    signalled: bool, ta: float
) -> None:
    ea, eb, net = loopback_pair()
    net.latency = LATENCY
    exchange(ea, eb)
    if signalled:
        signal_ta(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 3.0)
    sent = new_requests(net, ea.host)
    assert [(t, nominating(p)) for t, p in sent] == [(0.0, False), (ta, True)]
    # the controlled side's own check went at once: its checks are paced on their own
    assert [t for t, _ in new_requests(net, eb.host)] == [0.0]
    for endpoint in (ea, eb):
        assert endpoint.agent.state is IceState.COMPLETED
        connected = [e for e in endpoint.events if type(e).__name__ == "IceConnected"]
        assert connected
    # connected one round trip (and processing, none here) after the nominating check
    assert ea.agent.selected_pair is not None
    assert ea.agent.selected_pair.last_success == pytest.approx(ta + 2 * LATENCY)


def test_a_proposal_signalled_after_the_first_check_paces_the_next_one() -> None:
    ea, eb, net = loopback_pair()
    net.latency = LATENCY
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    (first,) = ea.agent.datagrams_to_send(0.0)  # the first check, at 50 ms pacing
    net.send(ea, first, 0.0)
    assert ea.agent.next_timer() == pytest.approx(0.5)  # its retransmission: nothing queued
    signal_ta(ea, eb)
    run(ea, eb, net, 0.0, 3.0)
    assert [(t, nominating(p)) for t, p in new_requests(net, ea.host)] == [
        (0.0, False),
        (0.005, True),
    ]


# --------------------------------------------------------------------------- many pairs


def many_pairs(count: int) -> tuple[Endpoint, Endpoint, Network]:
    """A's checklist has ``count`` pairs: B's host candidate, signalled last and with the
    lowest priority (so it is checked last), and ``count - 1`` more remote host candidates of
    B that never answer (every packet to them is lost)."""
    a = IceAgent(controlling=True, rng=seeded(1))
    b = IceAgent(controlling=False, rng=seeded(2))
    net = Network(latency=LATENCY, drop=lambda p: p.sent_to[0].startswith("10.9."))
    ea = net.add(a, ("10.0.0.1", 5000))
    eb = net.add(b, ("10.0.0.2", 6000))
    a.add_local_candidate(host("10.0.0.1", 5000), ("10.0.0.1", 5000))
    b_host = ("10.0.0.2", 6000)
    b.add_local_candidate(make_candidate(CandidateType.HOST, b_host, local_preference=1), b_host)
    exchange(ea, eb, end=False)
    for i in range(1, count):
        lost = (f"10.9.0.{i}", 7000)
        net.add(b, lost)  # a route, so that the packets are logged (then dropped)
        a.add_remote_candidate(make_candidate(CandidateType.HOST, lost))
    for agent in (a, b):
        agent.add_remote_candidate(None)
    return ea, eb, net


@pytest.mark.parametrize("signalled", [True, False])
def test_many_pairs_one_new_check_per_ta_nomination_included(signalled: bool) -> None:
    ea, eb, net = many_pairs(8)
    if signalled:
        signal_ta(ea, eb)
    ta = 0.005 if signalled else 0.05
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 5.0)
    sent = new_requests(net, ea.host)
    times = [t for t, _ in sent]
    # the eight pairs one per Ta, back to back; B's check reached A first, so the pair to B
    # went second, as a triggered check (RFC 8445 §6.1.4.2 step 1), not in an extra slot
    assert times[:8] == pytest.approx([i * ta for i in range(8)])
    assert [p.sent_to for _, p in sent[:2]] == [("10.9.0.1", 7000), eb.host]
    # then the nomination, after the settle time (the pairs that never answer rank higher),
    # the only other new check
    assert [nominating(p) for _, p in sent] == [False] * 8 + [True]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= ta - 1e-9 for g in gaps)  # never two new checks within one Ta
    assert times[8] == pytest.approx(ta + 2 * LATENCY + 1.0)  # StandardNominator's settle
    assert ea.agent.state is IceState.COMPLETED


def test_triggered_checks_join_the_same_pacing() -> None:
    # B starts first: its check reaches A before A's own checks, and the triggered check it
    # causes takes its turn in A's pacing (RFC 8445 §6.1.4.2 step 1), never an extra slot
    ea, eb, net = many_pairs(4)
    signal_ta(ea, eb)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 0.001)
    ea.agent.start(0.001)
    run(ea, eb, net, 0.001, 5.0)
    sent = new_requests(net, ea.host)
    times = [t for t, _ in sent]
    assert times[0] == pytest.approx(0.001)
    assert sent[0][1].sent_to == eb.host  # the triggered check went first
    assert times[:4] == pytest.approx([0.001, 0.006, 0.011, 0.016])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.005 - 1e-9 for g in gaps)
    assert ea.agent.state is IceState.COMPLETED


# --------------------------------------------------------------------------- gateway


def gateway_view(
    *, local_complete: bool, locals_: tuple = (L_HOST, L_RELAY), pending: tuple = ()
) -> NominationView:
    pairs = (valid_pair(L_RELAY, R_RELAY),)
    return NominationView(
        component=1,
        valid_pairs=pairs,
        pending_pairs=pending,
        local_candidates=locals_,
        remote_candidates=REMOTES,
        started_at=0.0,
        first_valid_at=0.1,
        remote_complete=True,
        controlling=True,
        local_complete=local_complete,
    )


def test_gateway_pair_possible() -> None:
    assert gateway_pair_possible(gateway_view(local_complete=False))
    assert not gateway_pair_possible(gateway_view(local_complete=True))
    with_srflx = gateway_view(local_complete=True, locals_=(L_HOST, L_SRFLX, L_RELAY))
    assert gateway_pair_possible(with_srflx)


def test_gateway_nominator_takes_a_relay_pair_once_no_gateway_pair_can_come() -> None:
    nominator = GatewayNominator(grace=2.0, settle=1.0)
    waiting = gateway_view(local_complete=False)
    assert nominator.choose(waiting, 0.1) is None
    assert nominator.next_timer(waiting) == 2.0
    done = gateway_view(local_complete=True)
    assert nominator.choose(done, 0.1) is done.valid_pairs[0]
    # a better relay pair still pending is waited for, until the settle time
    better = valid_pair(L_RELAY, R_SRFLX)
    better.state = PairState.IN_PROGRESS
    assert better.priority > done.valid_pairs[0].priority
    unsettled = gateway_view(local_complete=True, pending=(better,))
    assert nominator.choose(unsettled, 0.5) is None
    assert nominator.next_timer(unsettled) == pytest.approx(1.1)
    assert nominator.choose(unsettled, 1.1) is unsettled.valid_pairs[0]
    # ... but not a pending pair to a host candidate: it can never be nominated
    to_host = valid_pair(L_RELAY, R_HOST)
    to_host.state = PairState.IN_PROGRESS
    assert to_host.priority > done.valid_pairs[0].priority
    hosts = gateway_view(local_complete=True, pending=(to_host,))
    assert nominator.choose(hosts, 0.1) is hosts.valid_pairs[0]
    # a local srflx candidate: a gateway pair may still come, the grace period stands
    srflx = gateway_view(local_complete=True, locals_=(L_HOST, L_SRFLX, L_RELAY))
    assert nominator.choose(srflx, 1.99) is None
    assert nominator.choose(srflx, 2.0) is srflx.valid_pairs[0]


def use_candidate_times(net: Network, sources: tuple[str, ...]) -> list[float]:
    return [
        p.deliver_at
        for p in net.log
        if p.source[0] in sources
        and decode(p.data).msg_class is MessageClass.REQUEST
        and nominating(p)
    ]


@pytest.mark.parametrize("complete", [True, False])
def test_gateway_on_loopback_nominates_the_relay_pair_without_the_grace_period(
    complete: bool,
) -> None:
    ea, eb, net = loopback_with_relays(GatewayNominator(), GatewayNominator())
    exchange(ea, eb)
    if complete:
        for endpoint in (ea, eb):
            endpoint.agent.end_of_local_candidates()
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 6.0)
    pair = ea.agent.selected_pair
    assert pair is not None and ea.agent.state is IceState.COMPLETED
    assert pair.local.type is pair.remote.type is CandidateType.RELAY
    (nominated_at,) = use_candidate_times(net, ("127.0.0.1",))
    if complete:
        assert nominated_at == pytest.approx(0.05)  # one Ta after the only check
    else:
        assert nominated_at >= 2.0  # the grace period


def test_gateway_behind_nats_with_srflx_still_waits_the_grace_period() -> None:
    publics = ("203.0.113.1", "198.51.100.1")
    ea, eb, net = natted(
        GatewayNominator(),
        GatewayNominator(),
        drop=lambda p: p.source[0] in publics and p.sent_to[0] in publics,
    )
    exchange(ea, eb)
    for endpoint in (ea, eb):
        endpoint.agent.end_of_local_candidates()
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 5.0)
    pair = ea.agent.selected_pair
    assert pair is not None and CandidateType.RELAY in (pair.local.type, pair.remote.type)
    assert min(use_candidate_times(net, (*publics, "192.0.2.1"))) >= 2.0
