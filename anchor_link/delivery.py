"""Messages that outlive a link: per-peer sequence numbers, redelivery, duplicate suppression.

Theory of operation
-------------------
A link's :class:`~anchor_link.reliable.ReliableChannel` delivers every message exactly once and
in order while the link lives; a link can break (a NAT forgets its mapping, the peer's
consent checks go unanswered) with messages accepted by ``send`` not yet acknowledged. The
endpoint (:class:`~anchor_link.aio.endpoint.LinkEndpoint`) keeps, for every peer, an
:class:`Outbox` and an :class:`Inbox` of this module, which give each message an identity that
survives the link (sans-I/O: nothing here reads a clock or a socket).

- Every message carries a 4-byte header: its sequence number in the sender's outbox for that
  peer (1, 2, 3, ...; 32 bits on the wire, wrapping, unwrapped by the receiver next to the
  highest number it delivered: at most a send window of messages is ever outstanding, far
  fewer than 2^31).
- :class:`Outbox` (sender): a message accepted by ``send`` stays in ``pending`` until the
  channel reports it acknowledged (its last frame passed the peer's cumulative point: the peer
  delivered it). When the link breaks, every pending message is carried to the next link to
  the same peer, before any newer message, in the order they were accepted; only when no link
  to the peer can be formed before a deadline does the endpoint give them up (:meth:`Outbox.fail`,
  reported as :class:`MessagesUndelivered` with :class:`UndeliveredMessages`, naming exactly
  those messages).
- :class:`Inbox` (receiver): the highest sequence number delivered from the peer's outbox.
  A message at or below it is a duplicate, one the peer sent again because the link broke
  before its acknowledgement arrived, and is dropped; so every message reaches the
  application exactly once, in order, across any number of links.
- Each outbox has a random ``session`` (8 bytes, hex), sent in the link's description (inside
  the Noise handshake, so authenticated). A new session (the peer's endpoint restarted, or
  its outbox for us emptied and was dropped) resets the inbox: numbering starts again at 1.
  An endpoint drops an outbox once nothing is pending and no link to that peer exists, so
  what it keeps per peer is bounded by the peers it is talking to.

Exactly once holds between two endpoint objects that live on: a receiver that restarts forgets
what it delivered, and a message whose acknowledgement was lost with the link is then
delivered again (no protocol can tell "delivered, acknowledgement lost" from "lost" without
the receiver's memory).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from anchor_link.state import LinkError, LinkEvent

__all__ = [
    "MESSAGE_HEADER",
    "Inbox",
    "MessagesUndelivered",
    "Outbox",
    "UndeliveredMessages",
]

MESSAGE_HEADER = 4
"""Bytes before every message on a link: its 32-bit sequence number (module docstring)."""
_MOD = 1 << 32
_HALF = 1 << 31


class UndeliveredMessages(LinkError):
    """Messages accepted by ``send`` that the peer did not acknowledge, given up because no
    link to it could be formed within the endpoint's ``delivery_timeout``. ``messages`` are
    exactly those, in the order they were sent; ``sequence_numbers`` their numbers in the
    outbox for ``peer``."""

    def __init__(
        self, peer: str, reason: str, messages: tuple[bytes, ...], sequence_numbers: tuple[int, ...]
    ) -> None:
        super().__init__(
            f"{len(messages)} message(s) to {peer!r} undelivered "
            f"(numbers {_ranges(sequence_numbers)}): {reason}"
        )
        self.peer = peer
        self.reason = reason
        self.messages = messages
        self.sequence_numbers = sequence_numbers


@dataclass(frozen=True, slots=True)
class MessagesUndelivered(LinkEvent):
    """The endpoint gave up messages to ``peer`` (:class:`UndeliveredMessages`)."""

    reason: str
    """Why: the last attempt's failure, after the deadline."""
    messages: tuple[bytes, ...]
    """Exactly the messages not delivered, in the order they were sent."""
    sequence_numbers: tuple[int, ...]
    """Their numbers in the outbox (1 is the first message sent to the peer)."""

    @property
    def error(self) -> UndeliveredMessages:
        """The typed error for these messages."""
        return UndeliveredMessages(self.peer, self.reason, self.messages, self.sequence_numbers)


def _ranges(numbers: tuple[int, ...]) -> str:
    if not numbers:
        return "none"
    first, last = numbers[0], numbers[-1]
    return str(first) if first == last else f"{first}-{last}"


class Outbox:
    """Messages to one peer: numbered, kept until acknowledged, carried across links."""

    __slots__ = ("_next", "_pending", "_queued", "link", "session")

    def __init__(self, session: str) -> None:
        self.session = session
        """Random, hex: tells the peer's :class:`Inbox` which numbering this is."""
        self.link: object | None = None
        """The link messages are queued on (:meth:`attach`), None between links."""
        self._next = 1
        self._pending: deque[tuple[int, bytes]] = deque()
        self._queued = 0  # pending messages queued on the current link (the oldest ones)

    @property
    def pending(self) -> int:
        """Messages accepted and not acknowledged."""
        return len(self._pending)

    @property
    def unsent(self) -> int:
        """Pending messages not queued on the current link yet (carried from a broken one)."""
        return len(self._pending) - self._queued

    def accept(self, data: bytes) -> bytes:
        """Number a new message, keep it, and return it framed for the current link (call
        only when nothing is :attr:`unsent`, so that order holds)."""
        if self.unsent:
            raise ValueError("carried messages go first")
        seq = self._next
        self._next += 1
        self._pending.append((seq, data))
        self._queued += 1
        return _frame(seq, data)

    def next_unsent(self) -> bytes:
        """The oldest carried message, framed (its number unchanged); :meth:`mark_queued`
        once the channel took it."""
        seq, data = self._pending[self._queued]
        return _frame(seq, data)

    def mark_queued(self) -> None:
        """The message :meth:`next_unsent` returned is queued on the current link."""
        self._queued += 1

    def acknowledged(self, count: int) -> None:
        """The current link's channel reports ``count`` more of its messages acknowledged:
        the oldest ones (a channel acknowledges in order)."""
        for _ in range(count):
            self._pending.popleft()
        self._queued -= count

    def attach(self, link: object) -> None:
        """``link`` opened: from now on messages go on it, every pending one first (even if
        another link still lives: what it acknowledges late is sent again, and dropped as a
        duplicate by the peer)."""
        self.link = link
        self._queued = 0

    def detach(self, link: object) -> None:
        """``link`` is gone: if it was the current one, every pending message waits for the
        next."""
        if self.link is link:
            self.link = None
            self._queued = 0

    def fail(self) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
        """Give up every pending message: (messages, their numbers), oldest first."""
        pending = tuple(self._pending)
        self._pending.clear()
        self._queued = 0
        return tuple(d for _, d in pending), tuple(s for s, _ in pending)


def _frame(seq: int, data: bytes) -> bytes:
    return (seq % _MOD).to_bytes(MESSAGE_HEADER, "big") + data


class Inbox:
    """What one peer's outbox has delivered here: its session and highest number."""

    __slots__ = ("duplicates", "highest", "session")

    def __init__(self) -> None:
        self.session: str | None = None
        """The peer outbox's session these numbers belong to."""
        self.highest = 0
        """The highest sequence number delivered from it."""
        self.duplicates = 0
        """Messages dropped because they were delivered before."""

    def begin(self, session: str) -> None:
        """A link opened with the peer, whose outbox has ``session``: a new one starts the
        numbering again."""
        if session != self.session:
            self.session = session
            self.highest = 0

    def accept(self, framed: bytes) -> bytes | None:
        """The message without its header, or None for a duplicate (or a frame too short to
        carry a header, which a peer of this version never sends)."""
        if len(framed) < MESSAGE_HEADER:
            self.duplicates += 1
            return None
        wire = int.from_bytes(framed[:MESSAGE_HEADER], "big")
        ahead = (wire - self.highest) % _MOD
        if ahead == 0 or ahead >= _HALF:
            self.duplicates += 1
            return None
        self.highest += ahead
        return framed[MESSAGE_HEADER:]
