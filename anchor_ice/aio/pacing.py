"""One pacer for the STUN transactions of every ICE agent of a process (RFC 8445 §14.2).

Theory of operation
-------------------
RFC 8445 §14.2: "regardless of the Ta value chosen for each agent, the combination of all
transactions from all agents (if a given implementation runs several concurrent agents) will
not be sent more often than once every 5 ms". Each :class:`~anchor_ice.agent.IceAgent` paces
its own checks at its Ta (5 ms at least); two agents of one process could still each send one
in the same 5 ms. A :class:`TransactionPacer` spaces them across agents: every
:class:`~anchor_ice.aio.connection.Connection` asks it for a slot before the first
transmission of a new STUN request (a connectivity check or a consent check; a
retransmission of a transaction already sent, a response or an indication is never held):
at once when the pacer is idle, else behind the requests of the other agents, 5 ms apart.

By default every connection of an event loop (a process runs one loop per thread; in practice
one) shares :func:`shared_pacer`'s pacer: the RFC's MUST. ``Connection(pacer=...)`` takes
another :class:`TransactionPacer` (a benchmark that models two hosts in one process gives each
host its own) or :data:`UNPACED` to opt out (labs that must not couple their agents' timing).

The pacer is a queue of sends with one timer: :meth:`TransactionPacer.submit` sends at once
when the previous send left at least 5 ms ago and nothing waits, else queues it; the timer
releases one send at a time, each 5 ms after the previous one actually left (so a timer that
fires late delays those behind it instead of letting two leave closer than 5 ms).

Gathering goes through it too (RFC 8445 §14.1 counts its transactions): a connection's
:class:`~anchor_ice.aio.gather.Gatherer` starts the transaction with each STUN server, and
each TURN server over UDP, in a slot of the connection's pacer, after the gatherer's own Ta.
(The later requests of an allocation, its authenticated retry, permissions and refreshes,
are the TURN client's and are not held.)
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable

__all__ = ["MIN_INTERVAL", "UNPACED", "TransactionPacer", "shared_pacer"]

MIN_INTERVAL = 0.005
"""Seconds between new STUN transactions of all agents together (RFC 8445 §14.2)."""


class TransactionPacer:
    """Sends new STUN transactions at least ``interval`` seconds apart, in the order they
    were submitted (module docstring)."""

    __slots__ = ("_next", "_queue", "_timer", "interval", "last_sent", "submitted")

    def __init__(self, interval: float = MIN_INTERVAL) -> None:
        if interval < 0:
            raise ValueError("interval must not be negative")
        self.interval = interval
        """Seconds between two sends (0: no pacing at all)."""
        self._next = float("-inf")
        self._queue: deque[Callable[[], None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.submitted = 0
        """Transactions submitted so far."""
        self.last_sent: float | None = None
        """The loop time the pacer let the latest transaction go at (its decision; the
        datagram leaves during the same callback)."""

    @property
    def waiting(self) -> int:
        """Sends held for their turn now."""
        return len(self._queue)

    def submit(self, send: Callable[[], None]) -> None:
        """Call ``send`` (which puts one new transaction on the wire) now if the previous
        send was at least ``interval`` ago and nothing waits, else when its turn comes: one
        ``interval`` after the send before it actually left (a late timer delays the rest
        rather than squeezing them together)."""
        self.submitted += 1
        if self.interval <= 0:
            send()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._queue and now >= self._next:
            self._next = now + self.interval
            self.last_sent = now
            send()
            return
        self._queue.append(send)
        if self._timer is None:
            self._timer = loop.call_at(self._next, self._release)

    def _release(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._next and self._queue:
            self._next = now + self.interval
            self.last_sent = now
            self._queue.popleft()()
        if self._queue:
            self._timer = loop.call_at(self._next, self._release)


UNPACED = TransactionPacer(0.0)
"""Opt out of aggregate pacing: every send at once (each agent's own Ta still holds)."""

_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TransactionPacer] = (
    weakref.WeakKeyDictionary()
)


def shared_pacer(loop: asyncio.AbstractEventLoop | None = None) -> TransactionPacer:
    """The pacer every connection of ``loop`` (default: the running loop) shares. The one
    piece of process-wide state of the ICE adapter, on purpose: §14.2's limit is per process,
    and it dies with its loop."""
    if loop is None:
        loop = asyncio.get_running_loop()
    pacer = _shared.get(loop)
    if pacer is None:
        pacer = _shared[loop] = TransactionPacer()
    return pacer
