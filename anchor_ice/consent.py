"""Consent freshness (RFC 7675) of an ICE agent's selected pairs, sans-I/O.

Theory of operation
-------------------
Once a component has a selected pair, a full agent keeps asking the peer whether it still
wants the traffic (RFC 7675 §5.1): a consent check (a Binding request like any check, which
the agent sends) every ``interval`` seconds randomized to 0.8-1.2 times that, and every
successful check on the pair, consent check or not, renews consent. ``timeout`` seconds after
the last success, consent is lost and sending must stop.

:class:`ConsentFreshness` is that bookkeeping and nothing else, one entry per component. The
agent drives it like aioquic's connection drives its loss recovery: :meth:`~ConsentFreshness.start`
when a pair is selected, :meth:`~ConsentFreshness.renew` on each success,
:meth:`~ConsentFreshness.poll` from its timer (which says which pairs need a consent check now
and whether consent was lost) and :meth:`~ConsentFreshness.sent` after each consent check,
:meth:`~ConsentFreshness.next_timer` for its own deadline.
Time is the ``now`` argument; the jitter comes from the ``rng`` the agent was given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from anchor_ice.checklist import CandidatePair

__all__ = ["ConsentFreshness"]


@dataclass(slots=True)
class _Entry:
    """Consent of one selected pair (RFC 7675 §5.1)."""

    pair: CandidatePair
    last_ok: float
    next_check: float
    lost: bool = False


class ConsentFreshness:
    """Consent freshness of the selected pairs, by component (RFC 7675 §5.1)."""

    __slots__ = ("_entries", "_rng", "interval", "timeout")

    def __init__(self, interval: float, timeout: float, rng: Callable[[int], bytes]) -> None:
        self.interval = interval
        """Base period of consent checks, seconds."""
        self.timeout = timeout
        """Consent expires this long after the last successful check, seconds."""
        self._rng = rng
        self._entries: dict[int, _Entry] = {}

    def _delay(self) -> float:
        """RFC 7675 §5.1: the interval randomized to 0.8-1.2 times the period."""
        fraction = int.from_bytes(self._rng(2), "big") / 0xFFFF
        return self.interval * (0.8 + 0.4 * fraction)

    def start(self, component: int, pair: CandidatePair, last_ok: float, now: float) -> None:
        """``pair`` is the selected pair of ``component`` from ``now``; its consent was last
        confirmed at ``last_ok``; the first consent check is due one randomized interval on."""
        self._entries[component] = _Entry(pair, last_ok, now + self._delay())

    def renew(self, pair: CandidatePair, now: float) -> None:
        """A check on ``pair`` succeeded at ``now``: consent renewed (unless already lost)."""
        for entry in self._entries.values():
            if entry.pair is pair and not entry.lost:
                entry.last_ok = now

    def poll(self, now: float, send_checks: bool = True) -> tuple[list[int], int | None]:
        """What is due at ``now``, by component: the components whose pair needs a consent
        check (none unless ``send_checks``; call :meth:`sent` once each check is sent), then
        the first component whose consent expired (marked lost; later components are left
        for the next call), or None."""
        due: list[int] = []
        for component, entry in sorted(self._entries.items()):
            if entry.lost:
                continue
            if now >= entry.last_ok + self.timeout:
                entry.lost = True
                return due, component
            if send_checks and now >= entry.next_check:
                due.append(component)
        return due, None

    def pair(self, component: int) -> CandidatePair:
        """The pair whose consent ``component`` tracks."""
        return self._entries[component].pair

    def sent(self, component: int, now: float) -> None:
        """A consent check left at ``now`` on ``component``: the next one is due a randomized
        interval on."""
        self._entries[component].next_check = now + self._delay()

    def next_timer(self) -> float | None:
        """The next expiry or consent check, or None."""
        times = [
            t
            for entry in self._entries.values()
            if not entry.lost
            for t in (entry.last_ok + self.timeout, entry.next_check)
        ]
        return min(times) if times else None

    def is_lost(self, component: int) -> bool:
        """True when consent on ``component`` was lost."""
        entry = self._entries.get(component)
        return entry is not None and entry.lost

    def lost(self) -> set[int]:
        """The components whose consent was lost."""
        return {c for c, entry in self._entries.items() if entry.lost}

    def keep(self, components: Iterable[int]) -> None:
        """Forget every component but ``components`` (an ICE restart keeps the previous
        selected pairs, and their consent, until the new ones are selected)."""
        kept = set(components)
        self._entries = {c: e for c, e in self._entries.items() if c in kept}

    def clear(self) -> None:
        """Forget everything (the agent closed)."""
        self._entries.clear()
