"""Nomination policies: which valid pair becomes the selected pair, and when (RFC 8445 §8.1.1).

Theory of operation
-------------------
RFC 8445 §8.1.1 leaves two things to the controlling agent: when to stop waiting for more
checks (the "stopping criterion") and which valid pair to nominate (the "evaluation
criterion"); it only requires that exactly one pair per component is nominated, with a
repeated check carrying USE-CANDIDATE. Anchor puts both decisions behind the
:class:`Nominator` protocol; the agent does everything else (checks, the repeat with
USE-CANDIDATE, the controlled side's bookkeeping, consent).

The agent calls the nominator with a :class:`NominationView` of one component:

* :meth:`Nominator.choose` whenever something changed (a check succeeded or failed, a timer
  fired), for every component that has no nominated pair and no nomination under way, on the
  controlling side only. Return a pair from ``view.valid_pairs`` to nominate it now, or None
  to wait. Under renomination (``view.selected`` set) it is asked again while some pending
  pair outranks the selected one; once none does, treat the answer as final (the
  component's checks stop, §8.1.2, and it may not be asked again): return a better valid
  pair then. The shipped policies do, since their settle rule waits only for pending pairs.
* :meth:`Nominator.next_timer` after that, to learn when to call :meth:`choose` again even if
  nothing happens (a settle time, a grace period). None means "only on events".
* :meth:`Nominator.accept` on the controlled side, when the peer nominates a valid pair
  (RFC 8445 §7.3.1.5 lets the controlled agent refuse a nomination, answering 400). When the
  peer nominates a pair before this side's own check on it succeeded, the valid pair (whose
  local candidate is the address the peer really sees) is not known yet: the nominator is
  asked about the pair as it stands (local base, remote). If it accepts, so does the agent,
  and the valid pair is nominated once the triggered check succeeds (and judged again then).
  If it refuses, the agent defers: it sends no answer, runs the triggered check, and judges
  the peer's retransmission of the same request against the real valid pair. A host base
  behind a NAT is therefore never refused for what it only looks like.
* :meth:`Nominator.advertise` for each local candidate the application asks for with
  ``IceAgent.local_candidates()``: the candidates the peer will be told about. The agent
  only runs checks from candidates it advertises and from the bases they are sent from.

Nominators should be stateless (every call gets everything it needs), so one instance may
serve several agents. The pairs in the view are the agent's live
:class:`~anchor_ice.checklist.CandidatePair` objects: read them, never change them.

Host pairs and peer-reflexive candidates
----------------------------------------
docs/design.md defines a *host pair* as a valid pair in which either candidate is of type host.
Peer-reflexive candidates blur the types: a prflx candidate is an address that showed up in
a check without being signalled, and it can be a host address in disguise. Anchor decides
with :func:`effective_type`, used by :class:`GatewayNominator` and :class:`RelayOnly`:

1. A host candidate is host. A relayed candidate is relay, whatever its related address.
2. A server- or peer-reflexive candidate whose IP equals its own related address (its base)
   is host: no NAT translated it (this is what loopback and public hosts look like).
3. A peer-reflexive candidate whose IP equals the IP of a host candidate of the same side, or
   the related address (the base) of a server-reflexive candidate of the same side, is host:
   the packet left that host interface untranslated. For the remote side these are the
   candidates the peer signalled; a gateway-mode peer hides its hosts, so rule 3 can only see
   them through the related addresses of its srflx candidates.
4. Otherwise the type stands.

When the peer hides everything (only relays signalled), a check it sends from its host
socket to our relay shows up here as a prflx that none of the rules can unmask. The peer
knows better: its own valid pair has a host local candidate, so its nominator refuses the
nomination (``accept`` returns False, the agent answers 400) and this side marks the pair
refused and nominates another. Both Anchor peers in gateway mode therefore never settle on a
host address even on loopback, where the only non-host pair is relay to relay.

Address equality uses the IP only (not the port) for rules 2 and 3: a NAT always rewrites the
IP, a port-only rewrite is a host firewall, and the address is still a host address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from anchor_ice.candidate import Candidate, CandidateType
from anchor_ice.checklist import CandidatePair
from anchor_stun.address import seconds

__all__ = [
    "GatewayNominator",
    "NominationView",
    "Nominator",
    "RelayOnly",
    "StandardNominator",
    "effective_type",
    "gateway_pair_possible",
    "is_gateway_pair",
    "is_host_pair",
    "is_relay_pair",
]


@dataclass(frozen=True, slots=True)
class NominationView:
    """What a nominator sees of one component (RFC 8445 §8.1.1)."""

    component: int
    """The component the decision is about."""
    valid_pairs: tuple[CandidatePair, ...]
    """Valid pairs of the component not refused by the peer, by decreasing priority; each
    has ``local.type``, ``remote.type``, ``priority``, ``rtts``/``rtt`` and ``last_success``."""
    pending_pairs: tuple[CandidatePair, ...]
    """Checklist pairs of the component that may still succeed (Frozen, Waiting,
    In-Progress), by decreasing priority."""
    local_candidates: tuple[Candidate, ...]
    """Every local candidate of the component, peer-reflexive ones included."""
    remote_candidates: tuple[Candidate, ...]
    """Every remote candidate of the component, signalled or learned."""
    started_at: float
    """When connectivity checks started (``IceAgent.start`` or the last restart)."""
    first_valid_at: float | None
    """When the component's first valid pair appeared, None before."""
    remote_complete: bool
    """True once the peer signalled end-of-candidates (RFC 8838)."""
    controlling: bool
    """The agent's role when the view was made."""
    local_complete: bool = False
    """True once local gathering is complete: no local candidate will be added any more but
    peer-reflexive ones learned from checks (``IceAgent.end_of_local_candidates``)."""
    selected: CandidatePair | None = None
    """The component's selected pair, when :meth:`Nominator.choose` is asked again under
    renomination (``IceAgent.renomination``): a choice of higher priority is nominated
    next, anything else is ignored."""
    renomination: bool = False
    """True when both agents agreed on renomination: a first choice need not be the last,
    so a policy may settle early and improve later."""

    def settled(self, pair: CandidatePair) -> bool:
        """True when no pending pair has a higher priority than ``pair``: no better pair can
        still come out of the checks already formed."""
        return not any(p.priority > pair.priority for p in self.pending_pairs)


@runtime_checkable
class Nominator(Protocol):
    """A nomination policy (RFC 8445 §8.1.1 stopping and evaluation criteria)."""

    def advertise(self, candidate: Candidate) -> bool:
        """Whether this local candidate is signalled to the peer (and checked from)."""
        ...

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        """The valid pair to nominate now for ``view.component``, or None to keep waiting.
        Called on the controlling side only."""
        ...

    def accept(self, pair: CandidatePair, view: NominationView) -> bool:
        """Controlled side: whether to accept the peer's nomination of this valid pair
        (False answers 400, RFC 8445 §7.3.1.5)."""
        ...

    def next_timer(self, view: NominationView) -> float | None:
        """Absolute time at which :meth:`choose` should run again without any event."""
        ...


# --------------------------------------------------------------------------- classification


def _same_side_hosts(candidate: Candidate, side: Sequence[Candidate]) -> set[str]:
    ips = set()
    for other in side:
        if other.component != candidate.component:
            continue
        if other.type is CandidateType.HOST:
            ips.add(other.ip)
        elif other.type is CandidateType.SRFLX and other.related_ip:
            ips.add(other.related_ip)
    return ips


def effective_type(candidate: Candidate, side: Sequence[Candidate] = ()) -> CandidateType:
    """The type a candidate really has for the host-pair rule (see the module docstring):
    reflexive candidates that are untranslated host addresses count as host. ``side`` holds
    the other candidates of the same agent (the local ones for a local candidate, the
    signalled remote ones for a remote candidate)."""
    kind = candidate.type
    if kind in (CandidateType.HOST, CandidateType.RELAY):
        return kind
    if candidate.related_ip is not None and candidate.related_ip == candidate.ip:
        return CandidateType.HOST
    if kind is CandidateType.PRFLX and candidate.ip in _same_side_hosts(candidate, side):
        return CandidateType.HOST
    return kind


def _types(pair: CandidatePair, view: NominationView) -> tuple[CandidateType, CandidateType]:
    return (
        effective_type(pair.local, view.local_candidates),
        effective_type(pair.remote, view.remote_candidates),
    )


def is_host_pair(pair: CandidatePair, view: NominationView) -> bool:
    """True when either candidate is (effectively) host: docs/design.md's host pair."""
    return CandidateType.HOST in _types(pair, view)


def is_gateway_pair(pair: CandidatePair, view: NominationView) -> bool:
    """True when both candidates are (effectively) server- or peer-reflexive."""
    local, remote = _types(pair, view)
    reflexive = (CandidateType.SRFLX, CandidateType.PRFLX)
    return local in reflexive and remote in reflexive


def is_relay_pair(pair: CandidatePair, view: NominationView) -> bool:
    """True when a candidate is relayed and none is (effectively) host."""
    types = _types(pair, view)
    return CandidateType.RELAY in types and CandidateType.HOST not in types


def gateway_pair_possible(view: NominationView) -> bool:
    """False when no gateway pair can ever become valid for the component, whatever the
    checks still do, for an agent that advertises no host candidate (as
    :class:`GatewayNominator`): local gathering is complete and no local candidate is
    server- or peer-reflexive. A gateway pair needs a reflexive local candidate. Gathering found all
    the server-reflexive ones there will be, and a peer-reflexive one is only learned from
    the answer to a check sent from a host socket (RFC 8445 §7.2.5.3.1). Without a
    server-reflexive candidate no check leaves from a host socket: hidden host candidates
    (:class:`GatewayNominator` does not advertise them) are checked from only as the base of
    a server-reflexive candidate, and the peer, which never learns their addresses, cannot
    reach them to trigger one; a check from a relayed candidate reaches the peer from the
    relayed address, which its answer maps to that same candidate. The remote side cannot
    settle the question early: a peer's checks can reveal peer-reflexive addresses until the
    end (a browser hiding its host candidates behind mDNS names, say)."""
    if not view.local_complete:
        return True
    reflexive = (CandidateType.SRFLX, CandidateType.PRFLX)
    return any(c.type in reflexive for c in view.local_candidates)


def _settled_best(
    pairs: Sequence[CandidatePair], view: NominationView, now: float, settle: float
) -> CandidatePair | None:
    """The best of ``pairs`` (sorted best first) once no better pair can still succeed, or
    once ``settle`` seconds passed since the first valid pair."""
    if not pairs:
        return None
    best = pairs[0]
    if view.settled(best):
        return best
    if view.first_valid_at is not None and now >= view.first_valid_at + settle:
        return best
    return None


# --------------------------------------------------------------------------- policies


class StandardNominator:
    """Regular nomination of RFC 8445 §8.1.1: the highest-priority valid pair.

    Stopping criterion: nominate the best valid pair as soon as no pending pair of the
    component has a higher priority (nothing better can still succeed), or ``settle`` seconds
    after the component's first valid pair, whichever comes first. Every candidate is
    advertised and every nomination from a peer is accepted.
    """

    def __init__(self, settle: float = 1.0) -> None:
        self.settle = seconds(settle, "settle", zero=True)
        """Seconds to wait for better pairs after the first valid pair."""

    def advertise(self, candidate: Candidate) -> bool:
        """Every candidate is signalled."""
        return True

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        """The highest-priority valid pair, once settled."""
        return _settled_best(view.valid_pairs, view, now, self.settle)

    def accept(self, pair: CandidatePair, view: NominationView) -> bool:
        """Any pair the peer nominates."""
        return True

    def next_timer(self, view: NominationView) -> float | None:
        """The end of the settle time, while valid pairs wait for it."""
        if view.valid_pairs and view.first_valid_at is not None:
            return view.first_valid_at + self.settle
        return None


class GatewayNominator:
    """Anchor's link policy (docs/design.md, "Definitions"): the endpoint is the NAT gateway or a relay, never
    a host address.

    * Never nominates or accepts a host pair (either candidate effectively host, see
      :func:`effective_type`).
    * Prefers gateway pairs (server- or peer-reflexive on both sides): the best one, with
      the same settle rule as :class:`StandardNominator`.
    * Falls back to the best relay pair once ``grace`` seconds passed since checks started
      and no gateway pair is valid, or as soon as no gateway pair can ever become valid
      (:func:`gateway_pair_possible`: local gathering complete without a reflexive
      candidate, e.g. only relayed candidates, or a STUN server that sees no NAT), with the
      settle rule among relay pairs then (pending pairs to a host candidate, which can never
      give an acceptable pair, are not waited for).
    * Under renomination (``view.renomination``, both peers Anchor links), nothing waits
      more than ``provisional`` seconds after the component's first valid pair: the best
      valid gateway pair is nominated then, even while better pairs are still pending
      (instead of after ``settle``), or, when no gateway pair is valid by then, the best
      relay pair (instead of after ``grace``). The link carries data at once, and moves to
      the best gateway pair (same settle rule) when a better one validates (the agent
      renominates, :mod:`anchor_ice.agent`). A host pair is never nominated, first or
      later.
    * Advertises everything but host candidates, like browsers' mDNS privacy mode.
    """

    def __init__(
        self, grace: float = 2.0, settle: float = 1.0, provisional: float = 0.05
    ) -> None:
        self.grace = seconds(grace, "grace", zero=True)
        """Seconds after checks start before a relay pair may be nominated."""
        self.settle = seconds(settle, "settle", zero=True)
        """Seconds to wait for better gateway pairs after the first valid pair."""
        self.provisional = seconds(provisional, "provisional", zero=True)
        """Under renomination: seconds after the first valid pair before the best relay pair
        is nominated while no gateway pair is valid (a gateway pair can replace it later)."""

    def advertise(self, candidate: Candidate) -> bool:
        """srflx, prflx and relay candidates; never host candidates."""
        return candidate.type is not CandidateType.HOST

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        """The best gateway pair once settled, else the best relay pair after ``grace`` or
        once settled when no gateway pair can come."""
        gateway = [p for p in view.valid_pairs if is_gateway_pair(p, view)]
        if gateway:
            if self._provisional_due(view, now):
                return gateway[0]  # the best valid one; a better one may replace it later
            return _settled_best(gateway, view, now, self.settle)
        relay = [p for p in view.valid_pairs if is_relay_pair(p, view)]
        if not relay:
            return None
        best = relay[0]
        if now >= view.started_at + self.grace:
            return best
        if view.renomination and view.first_valid_at is not None and (
            now >= view.first_valid_at + self.provisional
        ):
            return best
        if gateway_pair_possible(view):
            return None
        if not any(
            p.priority > best.priority and not is_host_pair(p, view) for p in view.pending_pairs
        ):
            return best
        if view.first_valid_at is not None and now >= view.first_valid_at + self.settle:
            return best
        return None

    def _provisional_due(self, view: NominationView, now: float) -> bool:
        """Under renomination, nothing selected yet: ``provisional`` seconds have passed
        since the first valid pair (class docstring)."""
        return (
            view.renomination
            and view.selected is None
            and view.first_valid_at is not None
            and now >= view.first_valid_at + self.provisional
        )

    def accept(self, pair: CandidatePair, view: NominationView) -> bool:
        """Anything but a host pair."""
        return not is_host_pair(pair, view)

    def next_timer(self, view: NominationView) -> float | None:
        """The end of the grace period, or of the settle time (of a gateway pair, or of a
        relay pair when no gateway pair can come); under renomination, before a selection,
        the end of the ``provisional`` time if that comes first."""
        settle_end = None if view.first_valid_at is None else view.first_valid_at + self.settle
        provisional_end = None
        if view.renomination and view.first_valid_at is not None and view.selected is None:
            provisional_end = view.first_valid_at + self.provisional
        if any(is_gateway_pair(p, view) for p in view.valid_pairs):
            if provisional_end is not None and settle_end is not None:
                return min(settle_end, provisional_end)
            return settle_end
        grace_end = view.started_at + self.grace
        if provisional_end is not None:
            grace_end = min(grace_end, provisional_end)
        if settle_end is not None and not gateway_pair_possible(view):
            return min(grace_end, settle_end)
        return grace_end


class RelayOnly:
    """Only pairs whose local candidate is relayed (like WebRTC's ``iceTransportPolicy:
    "relay"``): the local address never reaches the peer. Advertises relay candidates only,
    and picks the best valid relay pair with the settle rule of :class:`StandardNominator`.
    """

    def __init__(self, settle: float = 1.0) -> None:
        self.settle = seconds(settle, "settle", zero=True)
        """Seconds to wait for better relay pairs after the first valid pair."""

    def advertise(self, candidate: Candidate) -> bool:
        """Relay candidates only."""
        return candidate.type is CandidateType.RELAY

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        """The best valid pair with a relayed local candidate, once settled."""
        pairs = [p for p in view.valid_pairs if p.local.type is CandidateType.RELAY]
        return _settled_best(pairs, view, now, self.settle)

    def accept(self, pair: CandidatePair, view: NominationView) -> bool:
        """Pairs whose local candidate is relayed."""
        return pair.local.type is CandidateType.RELAY

    def next_timer(self, view: NominationView) -> float | None:
        """The end of the settle time, while relay pairs wait for it."""
        if view.first_valid_at is not None and any(
            p.local.type is CandidateType.RELAY for p in view.valid_pairs
        ):
            return view.first_valid_at + self.settle
        return None
