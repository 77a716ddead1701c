"""Candidate pairs and the checklist of one data stream (RFC 8445 §6.1.2, §6.1.4, §7.2.5.3).

Theory of operation
-------------------
A :class:`CandidatePair` joins a local candidate and a remote candidate of the same
component. It carries its ``base`` (the local address its checks and data leave from: the
host socket of a host or server-reflexive candidate, the relayed address of a relayed one),
its priority for the agent's current role (RFC 8445 §6.1.2.3), its state, and the flags of
RFC 8445 Figure 5: ``valid`` and ``nominated``. It also keeps what a nominator may want to
know: round-trip times of its checks and when it was last checked.

The :class:`Checklist` holds the pairs of one data stream (Anchor runs one stream with one
or more components), in the order of RFC 8445 §6.1.2:

1. *Forming* (§6.1.2.2): every local candidate is paired with every remote candidate of the
   same component, transport (UDP) and IP address family; IPv6 link-local addresses pair only
   with link-local ones; mDNS names and other transports are not paired.
2. *Priority and order* (§6.1.2.3): ``2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)`` with G the
   controlling agent's candidate priority; pairs are kept sorted by decreasing priority, ties
   broken by the lowest component id (§6.1.4.2 step 3).
3. *Pruning* (§6.1.2.4): a reflexive local candidate is replaced by its base (checks can only
   leave from a base), and a pair redundant with a higher-priority one (same base, same remote
   candidate) is dropped.
4. *Limit* (§6.1.2.5): at most ``max_pairs`` (default 100) pairs; the lowest-priority pairs
   not yet checked (Frozen, Waiting) or already Failed are discarded first. A pair that would
   only be kept by dropping a pair under check is not added.
5. *Initial states* (§6.1.2.6): all Frozen, then for each foundation the first pair (lowest
   component, then highest priority) Waiting.

Scheduling (§6.1.4.2): :meth:`Checklist.next_check` returns the pair to check when timer Ta
fires: the head of the triggered-check queue (§6.1.4.1) first; otherwise, when nothing is
Waiting, one Frozen pair per foundation with nothing Waiting or In-Progress is unfrozen; then
the highest-priority Waiting pair. The caller sets the pair In-Progress and sends the check.

The valid list (§7.2.5.3.2) is kept beside the checklist, sorted the same way: a valid pair
may be a checklist pair or a pair that is in no checklist (its local candidate is the
reflexive address the check revealed); ``pair.source`` then names the checklist pair whose
check produced it, the pair a nomination repeats (§8.1.1).

Pair states (Figure 6)::

    FROZEN --unfreeze--> WAITING --check sent--> IN_PROGRESS --success--> SUCCEEDED
                            ^                         |--failure--> FAILED
                            +-- triggered check (§7.3.1.4), role conflict (§7.2.5.1) --+

The checklist never sends anything and never reads a clock; :mod:`anchor_ice.agent` drives it.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from anchor_ice.candidate import Candidate, CandidateType, pair_priority
from anchor_ice.events import PairInfo
from anchor_stun.address import count
from anchor_stun.events import Address

__all__ = [
    "MAX_PAIRS",
    "CandidatePair",
    "Checklist",
    "PairState",
    "can_pair",
]

MAX_PAIRS = 100  # RFC 8445 §6.1.2.5: default limit of candidate pairs in the checklist set


class PairState(Enum):
    """Candidate pair states (RFC 8445 §6.1.2.6, Figure 6)."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_PENDING = frozenset((PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS))


@dataclass(eq=False, slots=True)
class CandidatePair:
    """A local and a remote candidate of one component (RFC 8445 §6.1.2, Figure 5).

    Nominators read these objects; only the agent changes them.
    """

    local: Candidate
    """The local candidate (in the checklist: a host or relayed candidate, RFC 8445 §6.1.2.4;
    in the valid list: the candidate whose address equals the check's mapped address)."""
    remote: Candidate
    """The remote candidate."""
    base: Address
    """Local address the pair's checks and data leave from (RFC 8445 §7.2.4, §12.1)."""
    priority: int = 0
    """Pair priority for the agent's current role (RFC 8445 §6.1.2.3)."""
    state: PairState = PairState.FROZEN
    """Check state (RFC 8445 §6.1.2.6)."""
    nominated: bool = False
    """Nominated flag (RFC 8445 §7.2.5.3.4, §7.3.1.5)."""
    valid: bool = False
    """True while the pair is in the valid list (RFC 8445 §7.2.5.3.2)."""
    rtts: list[float] = field(default_factory=list)
    """Round-trip times of checks answered without retransmission (Karn), oldest first."""
    last_check: float | None = None
    """When the last check on this pair was sent."""
    last_success: float | None = None
    """When a check on (or producing) this pair last succeeded."""
    source: CandidatePair | None = None
    """For a valid pair: the checklist pair whose check produced it (RFC 8445 §7.2.5.3.2)."""
    use_candidate: bool = False
    """Agent bookkeeping: the next check on this pair carries USE-CANDIDATE (RFC 8445 §8.1.1)."""
    nominate_on_success: bool = False
    """Agent bookkeeping: controlled side, a USE-CANDIDATE request arrived before the pair
    succeeded; nominate its valid pair once the triggered check does (RFC 8445 §7.3.1.5)."""
    refused: bool = False
    """The peer (or the local nominator) rejected nominating this pair: never nominate it."""
    transaction_id: bytes | None = None
    """Agent bookkeeping: transaction id of the check in progress, if any."""
    last_sent: float | None = None
    """Agent bookkeeping: when anything (check, data, keepalive) was last sent on the pair."""

    @property
    def component(self) -> int:
        """Component id of both candidates."""
        return self.local.component

    @property
    def foundation(self) -> tuple[str, str]:
        """Pair foundation: the local and remote candidate foundations (RFC 8445 §6.1.2.6)."""
        return (self.local.foundation, self.remote.foundation)

    @property
    def rtt(self) -> float | None:
        """The latest unambiguous round-trip time, or None before any."""
        return self.rtts[-1] if self.rtts else None

    @property
    def key(self) -> tuple[int, Address, Address]:
        """(component, base, remote address): pairs with equal keys are redundant (§6.1.2.4)."""
        return (self.local.component, self.base, self.remote.address)

    def compute_priority(self, controlling: bool) -> int:
        """Set and return :attr:`priority` for the given role (RFC 8445 §6.1.2.3)."""
        if controlling:
            self.priority = pair_priority(self.local.priority, self.remote.priority)
        else:
            self.priority = pair_priority(self.remote.priority, self.local.priority)
        return self.priority

    def info(self) -> PairInfo:
        """An immutable snapshot for events."""
        return PairInfo(
            self.local.component, self.local, self.remote, self.base, self.priority, self.rtt
        )

    def __repr__(self) -> str:
        return (
            f"CandidatePair({self.local.type}:{self.local.ip}:{self.local.port} -> "
            f"{self.remote.type}:{self.remote.ip}:{self.remote.port} c{self.component} "
            f"{self.state.value}{' valid' if self.valid else ''}"
            f"{' nominated' if self.nominated else ''} prio={self.priority})"
        )


def _is_link_local(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return address.version == 6 and address.is_link_local


def can_pair(local: Candidate, remote: Candidate) -> bool:
    """Whether two candidates may form a pair (RFC 8445 §6.1.2.2): same component, UDP on
    both sides, same IP family, and IPv6 link-local only with link-local."""
    if local.component != remote.component:
        return False
    if local.transport.lower() != "udp" or remote.transport.lower() != "udp":
        return False
    family = local.family
    if family == 0 or family != remote.family:
        return False
    if family == 6 and _is_link_local(local.ip) != _is_link_local(remote.ip):
        return False
    return True


def _order(pair: CandidatePair) -> tuple[int, int]:
    return (-pair.priority, pair.local.component)


class Checklist:
    """The checklist, valid list and triggered-check queue of one data stream (RFC 8445
    §6.1.2, §6.1.4.1, §7.2.5.3.2)."""

    def __init__(self, *, controlling: bool, max_pairs: int = MAX_PAIRS) -> None:
        count(max_pairs, "max_pairs")
        self.controlling = controlling
        """Role the priorities are computed for."""
        self.max_pairs = max_pairs
        """Limit of pairs in the checklist (RFC 8445 §6.1.2.5)."""
        self.pairs: list[CandidatePair] = []
        """The checklist, by decreasing priority (RFC 8445 §6.1.2.3)."""
        self.valid: list[CandidatePair] = []
        """The valid list, by decreasing priority (RFC 8445 §7.2.5.3.2)."""
        self.triggered: deque[CandidatePair] = deque()
        """The triggered-check queue, FIFO (RFC 8445 §6.1.4.1)."""
        self.discarded = 0
        """Pairs not added or dropped because of the limit (RFC 8445 §6.1.2.5)."""

    # ------------------------------------------------------------------ forming

    def set_role(self, controlling: bool) -> None:
        """Recompute every priority for a new role and re-sort (RFC 8445 §7.3.1.1 NOTE)."""
        self.controlling = controlling
        for pair in self.pairs:
            pair.compute_priority(controlling)
        for pair in self.valid:
            pair.compute_priority(controlling)
        self.pairs.sort(key=_order)
        self.valid.sort(key=_order)

    def form(
        self, locals_: Sequence[tuple[Candidate, Address]], remotes: Iterable[Candidate]
    ) -> list[CandidatePair]:
        """Pair local candidates (with their bases) with remote candidates (RFC 8445
        §6.1.2.2-§6.1.2.5). Returns the pairs that were added (new, Frozen)."""
        before = {id(p) for p in self.pairs}
        added: list[CandidatePair] = []
        remotes = list(remotes)
        for local, base in self.checking_locals(locals_):
            for remote in remotes:
                if not can_pair(local, remote):
                    continue
                pair = self.add(local, remote, base)
                if pair is not None and id(pair) not in before and pair not in added:
                    added.append(pair)
        return [p for p in added if p in self.pairs]

    @staticmethod
    def checking_locals(
        locals_: Sequence[tuple[Candidate, Address]],
    ) -> list[tuple[Candidate, Address]]:
        """The local candidates checks leave from (RFC 8445 §6.1.2.4): reflexive candidates
        replaced by the host candidate at their base when there is one; peer-reflexive
        candidates are never paired (RFC 8445 §7.2.5.3.1); duplicates removed."""
        hosts = {
            (c.component, c.address): c for c, _ in locals_ if c.type is CandidateType.HOST
        }
        out: list[tuple[Candidate, Address]] = []
        seen: set[tuple[int, Address]] = set()
        for candidate, base in locals_:
            if candidate.type is CandidateType.PRFLX:
                continue
            if candidate.type is CandidateType.SRFLX:
                candidate = hosts.get((candidate.component, base), candidate)
            key = (candidate.component, base)
            if key in seen:
                continue
            seen.add(key)
            out.append((candidate, base))
        return out

    def add(
        self, local: Candidate, remote: Candidate, base: Address
    ) -> CandidatePair | None:
        """Add the pair (local, remote) sent from ``base``, pruning (RFC 8445 §6.1.2.4) and
        enforcing the limit (§6.1.2.5). Returns the pair now in the checklist for that base
        and remote (possibly one that was there already), or None when the limit kept it out.
        """
        key = (local.component, base, remote.address)
        for existing in self.pairs:
            if existing.key == key:
                candidate = CandidatePair(local, remote, base)
                if (
                    candidate.compute_priority(self.controlling) > existing.priority
                    and existing.state in (PairState.FROZEN, PairState.WAITING)
                ):
                    existing.local = local
                    existing.remote = remote
                    existing.compute_priority(self.controlling)
                    self.pairs.sort(key=_order)
                return existing
        pair = CandidatePair(local, remote, base)
        pair.compute_priority(self.controlling)
        self.pairs.append(pair)
        self.pairs.sort(key=_order)
        if len(self.pairs) > self.max_pairs:
            victim = self._limit_victim()
            if victim is None:
                victim = pair
            self.remove(victim)
            self.discarded += 1
            if victim is pair:
                return None
        return pair

    def _limit_victim(self) -> CandidatePair | None:
        for pair in reversed(self.pairs):
            if pair.state in (PairState.FROZEN, PairState.WAITING, PairState.FAILED):
                return pair
        return None

    def insert(self, pair: CandidatePair) -> None:
        """Put an existing pair (back) into the checklist, in priority order, outside the
        limit: a nomination must be able to repeat its check (RFC 8445 §8.1.1)."""
        if pair not in self.pairs:
            pair.compute_priority(self.controlling)
            self.pairs.append(pair)
            self.pairs.sort(key=_order)

    def remove(self, pair: CandidatePair) -> None:
        """Drop a pair from the checklist and the triggered-check queue (not the valid list)."""
        if pair in self.pairs:
            self.pairs.remove(pair)
        if pair in self.triggered:
            self.triggered.remove(pair)

    def find(self, component: int, base: Address, remote: Address) -> CandidatePair | None:
        """The checklist pair sent from ``base`` to ``remote`` for ``component``, if any."""
        key = (component, base, remote)
        for pair in self.pairs:
            if pair.key == key:
                return pair
        return None

    def replace_remote(self, old: Candidate, new: Candidate) -> None:
        """A signalled candidate replaces a peer-reflexive one with the same address
        (RFC 8445 §7.3.1.3: the exchange then tells its real type and foundation)."""
        for pair in (*self.pairs, *self.valid):
            if pair.remote == old:
                pair.remote = new
                pair.compute_priority(self.controlling)
        self.pairs.sort(key=_order)
        self.valid.sort(key=_order)

    # ------------------------------------------------------------------ states

    def initial_states(self) -> None:
        """RFC 8445 §6.1.2.6: for each foundation, unfreeze the first Frozen pair (lowest
        component, then highest priority) unless one of that foundation is already Waiting,
        In-Progress or Succeeded."""
        active = {
            p.foundation for p in self.pairs if p.state is not PairState.FROZEN
            and p.state is not PairState.FAILED
        }
        for pair in sorted(self.pairs, key=lambda p: (p.local.component, -p.priority)):
            if pair.state is PairState.FROZEN and pair.foundation not in active:
                pair.state = PairState.WAITING
                active.add(pair.foundation)

    def state_for_new_pair(self, pair: CandidatePair) -> PairState:
        """State of a pair added while checks run (trickle, RFC 8838 in spirit): Waiting
        when its foundation has nothing Waiting or In-Progress, or already succeeded."""
        same = [p for p in self.pairs if p is not pair and p.foundation == pair.foundation]
        if any(p.state is PairState.SUCCEEDED for p in same):
            return PairState.WAITING
        if any(p.state in (PairState.WAITING, PairState.IN_PROGRESS) for p in same):
            return PairState.FROZEN
        return PairState.WAITING

    def unfreeze_foundation(self, foundation: tuple[str, str]) -> None:
        """Set every Frozen pair with this foundation to Waiting (RFC 8445 §7.2.5.3.3)."""
        for pair in self.pairs:
            if pair.state is PairState.FROZEN and pair.foundation == foundation:
                pair.state = PairState.WAITING

    def enqueue_triggered(self, pair: CandidatePair) -> None:
        """Put a pair in the triggered-check queue (once) and set it Waiting (§7.3.1.4)."""
        pair.state = PairState.WAITING
        if pair not in self.triggered:
            self.triggered.append(pair)

    def next_check(self) -> CandidatePair | None:
        """The pair to check when Ta fires (RFC 8445 §6.1.4.2 steps 1-3), or None."""
        while self.triggered:
            pair = self.triggered.popleft()
            if pair in self.pairs:
                return pair
        waiting = [p for p in self.pairs if p.state is PairState.WAITING]
        if not waiting:
            busy = {
                p.foundation
                for p in self.pairs
                if p.state in (PairState.WAITING, PairState.IN_PROGRESS)
            }
            for pair in self.pairs:
                if pair.state is PairState.FROZEN and pair.foundation not in busy:
                    pair.state = PairState.WAITING
                    busy.add(pair.foundation)
                    waiting.append(pair)
        if not waiting:
            return None
        return min(waiting, key=_order)

    def has_work(self) -> bool:
        """True when :meth:`next_check` would return a pair (a Frozen pair counts only when
        its foundation has nothing Waiting or In-Progress: else it waits for that check)."""
        if any(p in self.pairs for p in self.triggered):
            return True
        if any(p.state is PairState.WAITING for p in self.pairs):
            return True
        busy = {p.foundation for p in self.pairs if p.state is PairState.IN_PROGRESS}
        return any(
            p.state is PairState.FROZEN and p.foundation not in busy for p in self.pairs
        )

    def pending(self, component: int) -> list[CandidatePair]:
        """Pairs of ``component`` that may still succeed: Frozen, Waiting or In-Progress."""
        return [p for p in self.pairs if p.local.component == component and p.state in _PENDING]

    # ------------------------------------------------------------------ valid list

    def add_valid(self, pair: CandidatePair) -> None:
        """Put a pair in the valid list (RFC 8445 §7.2.5.3.2), nominated flag unchanged."""
        pair.valid = True
        if pair not in self.valid:
            self.valid.append(pair)
            self.valid.sort(key=_order)

    def remove_valid(self, pair: CandidatePair) -> None:
        """Take a pair out of the valid list (RFC 8445 §7.2.5.3.4 failed nomination)."""
        pair.valid = False
        if pair in self.valid:
            self.valid.remove(pair)

    def find_valid(
        self, component: int, local: Address, remote: Address, base: Address
    ) -> CandidatePair | None:
        """The valid pair with these addresses, if any."""
        for pair in self.valid:
            if (
                pair.local.component == component
                and pair.local.address == local
                and pair.remote.address == remote
                and pair.base == base
            ):
                return pair
        return None

    def valid_for(self, component: int) -> list[CandidatePair]:
        """Valid pairs of ``component``, best first."""
        return [p for p in self.valid if p.local.component == component]

    def stop_component(self, component: int) -> list[CandidatePair]:
        """RFC 8445 §8.1.2: once a pair of ``component`` is nominated, remove the
        component's other pairs from the checklist and the triggered-check queue. Succeeded
        pairs stay (the valid list refers to them). Returns the In-Progress pairs removed,
        whose transactions the caller cancels."""
        cancelled: list[CandidatePair] = []
        for pair in list(self.pairs):
            if pair.local.component != component or pair.state is PairState.SUCCEEDED:
                continue
            if pair.state is PairState.IN_PROGRESS:
                cancelled.append(pair)
            self.remove(pair)
        self.triggered = deque(p for p in self.triggered if p.local.component != component)
        return cancelled

    def clear(self) -> None:
        """Forget every pair (ICE restart, RFC 8445 §9)."""
        self.pairs.clear()
        self.valid.clear()
        self.triggered.clear()
