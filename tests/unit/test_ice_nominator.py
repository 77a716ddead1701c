"""Nomination policies (RFC 8445 §8.1.1): the matrix of which valid pair each shipped
nominator picks, the host-pair rule with peer-reflexive candidates, and whole-agent scenarios
(NATs, relays, a policy refusing the peer's nomination, a user-written nominator)."""

from __future__ import annotations

import dataclasses

import pytest

from anchor_ice.agent import IceAgent, IceState
from anchor_ice.candidate import Candidate, CandidateType
from anchor_ice.checklist import CandidatePair, PairState
from anchor_ice.events import IceCompleted, PairNominated
from anchor_ice.nominator import (
    GatewayNominator,
    NominationView,
    Nominator,
    RelayOnly,
    StandardNominator,
    effective_type,
    is_gateway_pair,
    is_host_pair,
)
from anchor_stun.events import Address
from anchor_stun.message import MessageClass
from tests.unit.test_ice_harness import (
    Endpoint,
    Nat,
    Network,
    Packet,
    decode,
    exchange,
    host,
    relay,
    run,
    seeded,
    srflx,
)

A_HOST = ("10.0.0.1", 5000)
B_HOST = ("10.1.0.2", 6000)

L_HOST = host(*A_HOST)
L_SRFLX = srflx("203.0.113.1", 40000, A_HOST)
L_PRFLX = Candidate("9", 1, "udp", 1862270975, "203.0.113.1", 40001, CandidateType.PRFLX,
                    "10.0.0.1", 5000)
L_RELAY = relay("192.0.2.1", 50000, ("203.0.113.1", 40000))
R_HOST = host(*B_HOST)
R_SRFLX = srflx("198.51.100.2", 7000, B_HOST)
R_PRFLX = Candidate("prflx1", 1, "udp", 1862270975, "198.51.100.2", 7001, CandidateType.PRFLX)
R_RELAY = relay("192.0.2.2", 60000, ("198.51.100.2", 7000))

LOCALS = (L_HOST, L_SRFLX, L_PRFLX, L_RELAY)
REMOTES = (R_HOST, R_SRFLX, R_PRFLX, R_RELAY)

NAMES = {L_HOST: "host", L_SRFLX: "srflx", L_PRFLX: "prflx", L_RELAY: "relay",
         R_HOST: "host", R_SRFLX: "srflx", R_PRFLX: "prflx", R_RELAY: "relay"}


def valid_pair(local: Candidate, remote: Candidate, rtt: float | None = None) -> CandidatePair:
    base = local.address if local.type is CandidateType.RELAY else A_HOST
    pair = CandidatePair(local, remote, base, state=PairState.SUCCEEDED, valid=True)
    pair.compute_priority(True)
    if rtt is not None:
        pair.rtts.append(rtt)
    return pair


def view(pairs: list[CandidatePair], *, pending: tuple[CandidatePair, ...] = (),
         started_at: float = 0.0, first_valid_at: float | None = 0.0,
         remotes: tuple[Candidate, ...] = REMOTES) -> NominationView:
    return NominationView(
        component=1,
        valid_pairs=tuple(sorted(pairs, key=lambda p: -p.priority)),
        pending_pairs=pending,
        local_candidates=LOCALS,
        remote_candidates=remotes,
        started_at=started_at,
        first_valid_at=first_valid_at,
        remote_complete=True,
        controlling=True,
    )


def name(pair: CandidatePair | None) -> str | None:
    if pair is None:
        return None
    return f"{NAMES[pair.local]}-{NAMES[pair.remote]}"


ALL = ["host-host", "srflx-srflx", "prflx-srflx", "srflx-prflx", "relay-host",
       "relay-srflx", "relay-relay", "host-relay"]
NO_GATEWAY = ["host-host", "relay-host", "relay-srflx", "relay-relay", "host-relay"]
ONLY_HOST = ["host-host", "host-relay", "relay-host"]
BY_NAME = {f"{NAMES[lc]}-{NAMES[rc]}": (lc, rc) for lc in LOCALS for rc in REMOTES}


@pytest.mark.parametrize(
    ("policy", "available", "now", "expected"),
    [
        # RFC 8445 regular nomination: the highest priority valid pair, whatever it is
        (StandardNominator(), ALL, 0.0, "host-host"),
        (StandardNominator(), NO_GATEWAY[1:], 0.0, "host-relay"),  # G > D breaks the tie
        # gateway: never a host pair; the best srflx/prflx pair (prflx 110 > srflx 100)
        (GatewayNominator(), ALL, 0.0, "prflx-srflx"),
        (GatewayNominator(), ["srflx-srflx", "relay-relay"], 0.0, "srflx-srflx"),
        # no gateway pair: nothing before the grace period, the best relay pair after it
        (GatewayNominator(), NO_GATEWAY, 1.99, None),
        (GatewayNominator(), NO_GATEWAY, 2.0, "relay-srflx"),  # relay-host is a host pair
        (GatewayNominator(grace=5.0), NO_GATEWAY, 4.0, None),
        (GatewayNominator(), ONLY_HOST, 100.0, None),
        # relay only: the local candidate must be relayed, the remote may be anything
        (RelayOnly(), ALL, 0.0, "relay-host"),
        (RelayOnly(), ["host-host", "srflx-srflx"], 0.0, None),
    ],
)
def test_nominator_matrix(policy: Nominator, available: list[str], now: float,
                          expected: str | None) -> None:
    pairs = [valid_pair(*BY_NAME[n]) for n in available]
    assert name(policy.choose(view(pairs), now)) == expected


def test_prflx_that_is_really_a_host_address() -> None:
    # RFC 8445 §7.3.1.3 prflx learned from the peer's host interface, before (or without)
    # its host candidate being signalled
    sneaky = Candidate("prflx2", 1, "udp", 1862270975, "10.1.0.2", 6001, CandidateType.PRFLX)
    assert effective_type(sneaky, REMOTES) is CandidateType.HOST  # same IP as R_HOST
    hidden = (R_SRFLX, R_RELAY)  # a gateway-mode peer: hosts hidden, srflx raddr = its base
    assert effective_type(sneaky, hidden) is CandidateType.HOST
    assert effective_type(sneaky, (R_RELAY,)) is CandidateType.PRFLX  # nothing to tell
    assert effective_type(R_PRFLX, REMOTES) is CandidateType.PRFLX  # a NAT address
    # a reflexive candidate that equals its own base was not translated: a host address
    untranslated = srflx("127.0.0.1", 5000, ("127.0.0.1", 5000))
    assert effective_type(untranslated) is CandidateType.HOST
    loop_prflx = Candidate("7", 1, "udp", 1, "127.0.0.1", 5002, CandidateType.PRFLX,
                           "127.0.0.1", 5000)
    assert effective_type(loop_prflx) is CandidateType.HOST
    # a relayed address is the relay's, whatever its related address
    assert effective_type(relay("127.0.0.1", 50000, ("127.0.0.1", 5000))) is CandidateType.RELAY
    pair = valid_pair(L_SRFLX, sneaky)
    v = view([pair], remotes=(*REMOTES, sneaky))
    assert is_host_pair(pair, v)
    assert GatewayNominator().choose(v, 0.0) is None
    assert not GatewayNominator().accept(pair, v)


def test_settle_rule_and_timers() -> None:
    good = valid_pair(L_SRFLX, R_SRFLX)
    better = valid_pair(L_HOST, R_SRFLX)
    better.state = PairState.IN_PROGRESS
    v = view([good], pending=(better,), first_valid_at=3.0, started_at=2.5)
    standard = StandardNominator(settle=1.0)
    assert standard.choose(v, 3.5) is None  # a better pair may still succeed
    assert standard.next_timer(v) == 4.0
    assert standard.choose(v, 4.0) is good  # settle time over
    settled = view([good], pending=(valid_pair(L_RELAY, R_RELAY),), first_valid_at=3.0)
    assert standard.choose(settled, 3.0) is good  # nothing better pending
    gateway = GatewayNominator(grace=2.0)
    assert gateway.next_timer(view([valid_pair(L_RELAY, R_RELAY)], started_at=2.5)) == 4.5
    assert gateway.next_timer(v) == 4.0
    assert RelayOnly().next_timer(v) is None


def test_advertise_and_accept() -> None:
    assert [StandardNominator().advertise(c) for c in LOCALS] == [True] * 4
    assert [GatewayNominator().advertise(c) for c in LOCALS] == [False, True, True, True]
    assert [RelayOnly().advertise(c) for c in LOCALS] == [False, False, False, True]
    v = view([])
    assert StandardNominator().accept(valid_pair(L_HOST, R_HOST), v)
    assert not GatewayNominator().accept(valid_pair(L_RELAY, R_HOST), v)
    assert GatewayNominator().accept(valid_pair(L_RELAY, R_RELAY), v)
    assert not RelayOnly().accept(valid_pair(L_SRFLX, R_RELAY), v)
    for policy in (StandardNominator(), GatewayNominator(), RelayOnly()):
        assert isinstance(policy, Nominator)


# --------------------------------------------------------------------------- agents


def natted(nominator_a: Nominator, nominator_b: Nominator, **net_kwargs: object
           ) -> tuple[Endpoint, Endpoint, Network]:
    """A and B each behind its own NAT, each with host, srflx and relay candidates."""
    a = IceAgent(controlling=True, rng=seeded(1), nominator=nominator_a)
    b = IceAgent(controlling=False, rng=seeded(2), nominator=nominator_b)
    net = Network(**net_kwargs)  # type: ignore[arg-type]
    nat_a, nat_b = Nat("203.0.113.1"), Nat("198.51.100.1")
    mapped_a = nat_a.outbound(A_HOST, ("192.0.2.100", 3478))  # STUN gathering made these
    mapped_b = nat_b.outbound(B_HOST, ("192.0.2.100", 3478))
    ea = net.add(a, A_HOST, nat=nat_a, relay=("192.0.2.1", 50000))
    eb = net.add(b, B_HOST, nat=nat_b, relay=("192.0.2.2", 60000))
    for agent, base, mapped, relayed in ((a, A_HOST, mapped_a, ("192.0.2.1", 50000)),
                                         (b, B_HOST, mapped_b, ("192.0.2.2", 60000))):
        agent.add_local_candidate(host(*base), base)
        agent.add_local_candidate(srflx(*mapped, base), base)
        agent.add_local_candidate(relay(*relayed, mapped), relayed)
    return ea, eb, net


def test_gateway_nominator_behind_nats_selects_a_gateway_pair() -> None:
    ea, eb, net = natted(GatewayNominator(), GatewayNominator())
    assert [c.type.value for c in ea.agent.local_candidates()] == ["srflx", "relay"]
    assert len(ea.agent.local_candidates(advertised_only=False)) == 3
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 5.0)
    for endpoint in (ea, eb):
        pair = endpoint.agent.selected_pair
        assert endpoint.agent.state is IceState.COMPLETED and pair is not None
        assert {pair.local.type, pair.remote.type} <= {CandidateType.SRFLX, CandidateType.PRFLX}
    sa = ea.agent.selected_pair
    assert sa is not None
    assert (sa.local.address, sa.remote.address) == (("203.0.113.1", 40000),
                                                     ("198.51.100.1", 40000))
    assert sa.base == A_HOST  # sent from the host socket, seen as the gateway
    # no packet ever went to a private address: hosts were never advertised
    assert not [p for p in net.log if p.sent_to in (A_HOST, B_HOST)]


def test_gateway_nominator_falls_back_to_relay_after_grace() -> None:
    publics = ("203.0.113.1", "198.51.100.1")
    ea, eb, net = natted(
        GatewayNominator(), GatewayNominator(),
        drop=lambda p: p.source[0] in publics and p.sent_to[0] in publics,  # no direct path
    )
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    now = run(ea, eb, net, 0.0, 1.99)
    assert ea.agent.selected_pair is None and ea.agent.valid_pairs  # relay pairs wait
    now = run(ea, eb, net, now, 5.0)
    pair = ea.agent.selected_pair
    assert pair is not None and ea.agent.state is IceState.COMPLETED
    assert CandidateType.RELAY in (pair.local.type, pair.remote.type)
    assert CandidateType.HOST not in (pair.local.type, pair.remote.type)
    nominations = [p for p in net.log if p.source[0] in ("203.0.113.1", "192.0.2.1")
                   and decode(p.data).msg_class is MessageClass.REQUEST
                   and any(type(a).__name__ == "UseCandidate" for a in decode(p.data).attributes)]
    assert nominations and min(p.deliver_at for p in nominations) >= 2.0


def loopback_with_relays(nominator_a: Nominator, nominator_b: Nominator
                         ) -> tuple[Endpoint, Endpoint, Network]:
    """No NAT at all: every direct pair is a host pair; each agent also has a relay."""
    a = IceAgent(controlling=True, rng=seeded(1), nominator=nominator_a)
    b = IceAgent(controlling=False, rng=seeded(2), nominator=nominator_b)
    net = Network()
    ea = net.add(a, ("127.0.0.1", 5000), relay=("127.0.0.1", 50000))
    eb = net.add(b, ("127.0.0.1", 6000), relay=("127.0.0.1", 60000))
    for agent, port, relay_port in ((a, 5000, 50000), (b, 6000, 60000)):
        base = ("127.0.0.1", port)
        agent.add_local_candidate(host(*base), base)
        # a STUN server on loopback maps to the host address: redundant, dropped (§5.1.3)
        agent.add_local_candidate(srflx(*base, base), base)
        agent.add_local_candidate(relay("127.0.0.1", relay_port, base), ("127.0.0.1", relay_port))
    return ea, eb, net


@pytest.mark.parametrize(
    ("policy", "local_type", "remote_type"),
    [
        (GatewayNominator, CandidateType.RELAY, CandidateType.RELAY),
        (StandardNominator, CandidateType.HOST, CandidateType.HOST),
        (RelayOnly, CandidateType.RELAY, CandidateType.RELAY),
    ],
)
def test_loopback_outcome_per_policy(policy: type, local_type: CandidateType,
                                     remote_type: CandidateType) -> None:
    ea, eb, net = loopback_with_relays(policy(), policy())
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 6.0)
    for endpoint in (ea, eb):
        pair = endpoint.agent.selected_pair
        assert endpoint.agent.state is IceState.COMPLETED and pair is not None
        assert (pair.local.type, pair.remote.type) == (local_type, remote_type)


def test_gateway_controlled_side_refuses_a_host_pair_nomination() -> None:
    # A (standard, controlling) advertises its host; B (gateway, controlled) does not.
    ea, eb, net = loopback_with_relays(StandardNominator(), GatewayNominator())
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    run(ea, eb, net, 0.0, 6.0)
    errors = [decode(p.data).error for p in net.log if p.source == ("127.0.0.1", 60000)
              and decode(p.data).error is not None]
    assert [e.code for e in errors if e is not None] == [400]  # RFC 8445 §7.3.1.5
    # A nominated its best pair, host -> B's relay, first; refused, it moved to relay-relay
    nominations = [p.source for p in net.log
                   if decode(p.data).msg_class is MessageClass.REQUEST
                   and any(type(a).__name__ == "UseCandidate" for a in decode(p.data).attributes)]
    assert nominations == [("127.0.0.1", 5000), ("127.0.0.1", 50000)]
    for endpoint in (ea, eb):
        pair = endpoint.agent.selected_pair
        assert pair is not None and endpoint.agent.state is IceState.COMPLETED
        assert (pair.local.type, pair.remote.type) == (CandidateType.RELAY, CandidateType.RELAY)


class LowestRtt:
    """A user-written policy: the valid pair with the lowest round-trip time wins, once
    every pair that can still succeed has been tried."""

    def advertise(self, candidate: Candidate) -> bool:
        return True

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        if view.pending_pairs:
            return None
        timed = [p for p in view.valid_pairs if p.rtt is not None]
        return min(timed, key=lambda p: p.rtt or 0.0) if timed else None

    def accept(self, pair: CandidatePair, view: NominationView) -> bool:
        return True

    def next_timer(self, view: NominationView) -> float | None:
        return None


@pytest.mark.parametrize(("policy", "expected_base"), [
    (LowestRtt(), ("10.0.1.1", 5001)),
    (StandardNominator(), ("10.0.0.1", 5000)),
])
def test_user_written_nominator_plugs_in(policy: Nominator, expected_base: Address) -> None:
    assert isinstance(policy, Nominator)
    a = IceAgent(controlling=True, rng=seeded(1), nominator=policy)
    b = IceAgent(controlling=False, rng=seeded(2))
    slow, fast = ("10.0.0.1", 5000), ("10.0.1.1", 5001)

    def latency(source: Address, destination: Address) -> float:
        return 0.05 if slow in (source, destination) else 0.01

    net = Network(latency=latency)
    ea = net.add(a, slow)
    net.add(a, fast)
    eb = net.add(b, B_HOST)
    a.add_local_candidate(host(*slow), slow)  # higher local preference: StandardNominator's pick
    a.add_local_candidate(
        Candidate("2", 1, "udp", host(*fast).priority - 256, *fast, CandidateType.HOST), fast)
    b.add_local_candidate(host(*B_HOST), B_HOST)
    exchange(ea, eb)
    a.start(0.0)
    b.start(0.0)
    run(ea, eb, net, 0.0, 5.0)
    assert a.state is IceState.COMPLETED and b.state is IceState.COMPLETED
    pair = a.selected_pair
    assert pair is not None and pair.base == expected_base
    nominated = [e for e in ea.events if isinstance(e, PairNominated)]
    assert len(nominated) == 1 and nominated[0].pair.base == expected_base
    if isinstance(policy, LowestRtt):
        assert nominated[0].pair.rtt == pytest.approx(0.02)


def test_a_nominator_returning_a_foreign_pair_is_a_local_error() -> None:
    class Broken(StandardNominator):
        def choose(self, view: NominationView, now: float) -> CandidatePair | None:
            return valid_pair(L_HOST, R_HOST) if view.valid_pairs else None

    a = IceAgent(controlling=True, rng=seeded(1), nominator=Broken())
    b = IceAgent(controlling=False, rng=seeded(2))
    net = Network()
    ea, eb = net.add(a, A_HOST), net.add(b, B_HOST)
    a.add_local_candidate(host(*A_HOST), A_HOST)
    b.add_local_candidate(host(*B_HOST), B_HOST)
    exchange(ea, eb)
    a.start(0.0)
    b.start(0.0)
    from anchor_stun.errors import LocalProtocolError
    with pytest.raises(LocalProtocolError):
        run(ea, eb, net, 0.0, 1.0)


# --------------------------------------------------------------------------- renomination


def test_gateway_nominator_under_renomination_takes_a_relay_pair_at_once() -> None:
    relay_pair = valid_pair(L_RELAY, R_RELAY)
    gateway = GatewayNominator(provisional=0.25)
    quick = NominationView(
        component=1, valid_pairs=(relay_pair,), pending_pairs=(), local_candidates=LOCALS,
        remote_candidates=REMOTES, started_at=0.0, first_valid_at=0.25, remote_complete=True,
        controlling=True, renomination=True,
    )  # fmt: skip
    assert gateway.choose(quick, 0.49) is None
    assert gateway.next_timer(quick) == 0.5
    assert gateway.choose(quick, 0.5) is relay_pair
    # without renomination the 2 s grace stands
    assert gateway.choose(view([relay_pair], first_valid_at=0.25), 0.5) is None


def test_gateway_nominator_under_renomination_takes_a_valid_gateway_pair_at_once() -> None:
    """Issue 18 item 3: a gateway pair valid while a better one is still pending (the NAT
    lab's full cone hostA against a symmetric hostB waited the settle time so: first
    message after about 1 s) is nominated ``provisional`` seconds after the first valid
    pair, not after the 1 s settle time; once a pair is selected the settle rule decides
    again (renomination moves to a better one). Without renomination the settle time
    stands."""
    gateway_pair = valid_pair(L_SRFLX, R_SRFLX)
    better = CandidatePair(L_SRFLX, R_PRFLX, A_HOST)
    better.compute_priority(True)
    assert better.priority > gateway_pair.priority
    nominator = GatewayNominator(provisional=0.25)
    quick = dataclasses.replace(
        view([gateway_pair], pending=(better,), first_valid_at=0.25), renomination=True
    )
    assert nominator.choose(quick, 0.49) is None
    assert nominator.next_timer(quick) == 0.5
    assert nominator.choose(quick, 0.5) is gateway_pair
    chosen = dataclasses.replace(quick, selected=gateway_pair)
    assert nominator.choose(chosen, 0.5) is None  # selected: the settle rule again
    assert nominator.next_timer(chosen) == 1.25
    slow = view([gateway_pair], pending=(better,), first_valid_at=0.25)
    assert nominator.choose(slow, 0.5) is None  # without renomination: settle
    assert nominator.next_timer(slow) == 1.25
    assert nominator.choose(slow, 1.25) is gateway_pair


def _use_candidate_sources(net: Network) -> list[tuple[float, Address]]:
    return [
        (p.deliver_at, p.sent_to) for p in net.log
        if p.source[0] in ("203.0.113.1", "192.0.2.1")
        and decode(p.data).msg_class is MessageClass.REQUEST
        and any(type(a).__name__ == "UseCandidate" for a in decode(p.data).attributes)
    ]  # fmt: skip


@pytest.mark.parametrize("renomination", [True, False])
def test_renomination_relay_first_then_gateway_pair_once_the_direct_path_opens(
    renomination: bool,
) -> None:
    """The direct path opens at t=1 s: under renomination the agents select a relay pair at
    once and move to the gateway pair when its checks get through (both sides, never a host
    pair); without it (RFC 8445 regular nomination) nothing is selected before the 2 s grace
    and nothing moves."""
    publics = ("203.0.113.1", "198.51.100.1")
    clock = {"now": 0.0}
    ea, eb, net = natted(
        GatewayNominator(), GatewayNominator(),
        drop=lambda p: clock["now"] < 1.0 and p.source[0] in publics and p.sent_to[0] in publics,
    )  # fmt: skip
    ea.agent.renomination = eb.agent.renomination = renomination
    exchange(ea, eb)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    now = run(ea, eb, net, 0.0, 0.5)
    first = ea.agent.selected_pair
    if not renomination:
        assert first is None
    else:
        assert first is not None and CandidateType.RELAY in (first.local.type, first.remote.type)
        assert eb.agent.selected_pair is not None
    clock["now"] = 1.0
    now = run(ea, eb, net, now, 10.0)
    for endpoint in (ea, eb):
        pair = endpoint.agent.selected_pair
        assert pair is not None and endpoint.agent.state is IceState.COMPLETED
        assert CandidateType.HOST not in (pair.local.type, pair.remote.type)
        nominated = [e for e in endpoint.drain_events() if isinstance(e, PairNominated)]
        assert all(CandidateType.HOST not in (e.pair.local.type, e.pair.remote.type)
                   for e in nominated)  # fmt: skip
        if renomination:
            assert {pair.local.type, pair.remote.type} <= {CandidateType.SRFLX,
                                                           CandidateType.PRFLX}
            assert [e.selected for e in nominated] == [True, True]  # relay, then gateway
        else:
            assert len(nominated) == 1
    a, b = ea.agent.selected_pair, eb.agent.selected_pair
    assert a is not None and b is not None
    assert (a.local.address, a.remote.address) == (b.remote.address, b.local.address)
    assert len(_use_candidate_sources(net)) == (2 if renomination else 1)


GATEWAY_DELAY = 0.15  # one way, on the path between the NATs; the relay path has none


def _on_gateway_path(source: Address, destination: Address) -> bool:
    publics = ("203.0.113.1", "198.51.100.1")
    return source[0] in publics and destination[0] in publics


class _RecordingGateway(GatewayNominator):
    """GatewayNominator that notes what it was asked under renomination: (now, end of the
    settle time, a gateway pair was valid, the better pair chosen or None)."""

    def __init__(self) -> None:
        super().__init__()
        self.renominations: list[tuple[float, float, bool, CandidatePair | None]] = []

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        choice = super().choose(view, now)
        if view.selected is not None and view.first_valid_at is not None:
            gateway = any(is_gateway_pair(p, view) for p in view.valid_pairs)
            better = choice if choice and choice.priority > view.selected.priority else None
            self.renominations.append((now, view.first_valid_at + self.settle, gateway, better))
        return choice


@pytest.mark.parametrize("higher_pending", [False, True])
def test_renomination_gateway_pair_valid_soon_after_the_relay_pair(higher_pending: bool) -> None:
    """Under renomination the relay pair is selected at once (``provisional``) and the gateway
    pair (its path has 150 ms of latency each way) validates a quarter of a second later,
    well within the settle time of the first valid pair. The controlling agent moves to it:
    at once when nothing better is pending; when a better pair is still pending (a srflx
    candidate of the peer that nothing reaches, retransmitted for minutes) the nominator
    turns the move down as too early, and the agent asks it again at the end of the settle
    time, on its timer alone (no event comes then). Both sides end on the gateway pair, and
    COMPLETED once nothing is pending."""

    def latency(source: Address, destination: Address) -> float:
        return GATEWAY_DELAY if _on_gateway_path(source, destination) else 0.0

    nominator = _RecordingGateway()
    ea, eb, net = natted(nominator, GatewayNominator(), latency=latency)
    ea.agent.renomination = eb.agent.renomination = True
    exchange(ea, eb, end=False)
    if higher_pending:
        ea.agent.add_remote_candidate(Candidate(
            "unreach", 1, "udp", R_SRFLX.priority + 10, "198.51.100.9", 7009,
            CandidateType.SRFLX, *B_HOST,
        ))  # fmt: skip
    for endpoint in (ea, eb):
        endpoint.agent.add_remote_candidate(None)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    now = run(ea, eb, net, 0.0, 2 * GATEWAY_DELAY - 0.01)
    for endpoint in (ea, eb):
        first = endpoint.agent.selected_pair
        assert first is not None and CandidateType.RELAY in (first.local.type, first.remote.type)
    now = run(ea, eb, net, now, 200.0)  # the unreachable pair fails after ~142 s (§14.3 RTO)
    # the gateway pair was valid before the settle time ended, after the relay pair was selected
    early = [r for r in nominator.renominations if r[2] and r[0] < r[1]]
    assert early
    assert early[0][0] <= early[0][1] - nominator.settle / 2  # well within the settle time
    reflexive = {CandidateType.SRFLX, CandidateType.PRFLX}
    moves = [r for r in nominator.renominations
             if r[3] is not None and {r[3].local.type, r[3].remote.type} <= reflexive]  # fmt: skip
    assert len(moves) == 1
    if higher_pending:
        assert all(r[3] is None for r in early)  # too early to move
        assert moves[0][0] == moves[0][1]  # asked again at the end of the settle time
    else:
        assert moves[0] is early[0]  # moved as soon as the gateway pair was valid
    for endpoint in (ea, eb):
        pair = endpoint.agent.selected_pair
        assert pair is not None and endpoint.agent.state is IceState.COMPLETED
        assert {pair.local.type, pair.remote.type} <= reflexive
        nominated = [e for e in endpoint.drain_events() if isinstance(e, PairNominated)]
        assert all(e.selected for e in nominated)  # each one better than the last
        assert CandidateType.RELAY in (nominated[0].pair.local.type, nominated[0].pair.remote.type)
    a, b = ea.agent.selected_pair, eb.agent.selected_pair
    assert a is not None and b is not None
    assert (a.local.address, a.remote.address) == (b.remote.address, b.local.address)


def _is_request(packet: Packet) -> bool:
    return decode(packet.data).msg_class is MessageClass.REQUEST


@pytest.mark.parametrize("peer_completed", [False, True])
@pytest.mark.parametrize("renomination", [True, False])
def test_srflx_trickled_after_the_relay_pair_was_selected(
    renomination: bool, peer_completed: bool
) -> None:
    """Trickle ICE (RFC 8838) under renomination: the peer's srflx candidate reaches the
    controlling agent only after a relay pair was selected on both sides (and the
    controlling agent is COMPLETED), and the peer's own checks towards us are dropped until
    we check its new candidate, so no triggered check of ours (RFC 8445 §7.3.1.4) can find
    the gateway pair for us. The controlling agent pairs and checks the new candidate and
    renominates to the gateway pair; both sides end on it, also when the peer's own checks
    of that path had all failed and it was COMPLETED too (``peer_completed``: our check then
    triggers its check again). Without renomination (RFC 8445 §8.1.2, regular nomination)
    the completed component forms no pair for it and sends no check: the relay pair stays."""
    checked: list[Packet] = []

    def drop(packet: Packet) -> bool:
        if not _is_request(packet):
            return False
        if packet.source[0] == "198.51.100.1":
            return not checked  # the peer's checks from its srflx, until we checked it
        if packet.sent_to == r_srflx.address and packet.destination is eb:
            checked.append(packet)
        return False

    ea, eb, net = natted(GatewayNominator(), GatewayNominator(), drop=drop)
    ea.agent.renomination = eb.agent.renomination = renomination
    r_srflx = next(c for c in eb.agent.local_candidates() if c.type is CandidateType.SRFLX)
    ea.agent.set_remote_credentials(eb.agent.local_ufrag, eb.agent.local_pwd)
    eb.agent.set_remote_credentials(ea.agent.local_ufrag, ea.agent.local_pwd)
    for candidate in ea.agent.local_candidates():
        eb.agent.add_remote_candidate(candidate)
    eb.agent.add_remote_candidate(None)
    for candidate in eb.agent.local_candidates():
        if candidate is not r_srflx:
            ea.agent.add_remote_candidate(candidate)
    ea.agent.start(0.0)
    eb.agent.start(0.0)
    now = run(ea, eb, net, 0.0, 3.0)
    for endpoint in (ea, eb):
        first = endpoint.agent.selected_pair
        assert first is not None and CandidateType.RELAY in (first.local.type, first.remote.type)
    assert ea.agent.state is IceState.COMPLETED
    assert not checked
    if peer_completed:
        now = run(ea, eb, net, now, 300.0)  # the peer's checks of its srflx time out
        assert eb.agent.state is IceState.COMPLETED
    now = max(now, 300.0 if peer_completed else 3.0)
    ea.agent.add_remote_candidate(r_srflx)  # trickled late
    ea.agent.add_remote_candidate(None)
    now = run(ea, eb, net, now, now + 200.0)
    reflexive = {CandidateType.SRFLX, CandidateType.PRFLX}
    for endpoint in (ea, eb):
        pair = endpoint.agent.selected_pair
        assert pair is not None and endpoint.agent.state is IceState.COMPLETED
        events = endpoint.drain_events()
        nominated = [e for e in events if isinstance(e, PairNominated)]
        assert sum(isinstance(e, IceCompleted) for e in events) == 1  # said once
        if renomination:
            assert {pair.local.type, pair.remote.type} <= reflexive
            assert [e.selected for e in nominated] == [True, True]  # relay, then gateway
        else:
            assert CandidateType.RELAY in (pair.local.type, pair.remote.type)
            assert len(nominated) == 1
    if renomination:
        assert checked
        a, b = ea.agent.selected_pair, eb.agent.selected_pair
        assert a is not None and b is not None
        assert a.remote.address == r_srflx.address
        assert (a.local.address, a.remote.address) == (b.remote.address, b.local.address)
    else:
        assert not checked  # RFC 8445 §8.1.2: no check after completion
