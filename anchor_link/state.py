"""The life of one ephemeral link, sans-I/O (docs/design.md "What Anchor is", "Idle").

Theory of operation
-------------------
A :class:`LinkMachine` is one link between this endpoint and one peer, from the moment it is
wanted (the first ``send`` to the peer, or the peer's offer arriving through the signalling)
to the moment nothing of it is left. It never touches a socket, a clock or asyncio: the
asyncio adapter (:class:`anchor_link.aio.endpoint.LinkEndpoint`) gathers, signals and runs ICE, and tells the
machine what happened; the machine owns the decisions and the deadlines:

- **Forming.** The adapter reports :meth:`LinkMachine.formed` with the selected pair and a
  :class:`~anchor_link.reliable.ReliableChannel` built on it, or :meth:`LinkMachine.fail`. The
  machine fails the link on its own when ``form_timeout`` passes first.
- **Open.** Messages go through the channel (``send``, ``receive_datagram``,
  ``datagrams_to_send``, the channel's timers). The channel's :class:`ReliableIdle` (no
  application datagram sent or received for ``idle_timeout``; ACKs, retransmissions and ICE
  consent checks do not count) starts the dissolution: the channel's FIN handshake.
- **Closing.** Ends when the channel reports :class:`ReliableClosed` (both FINs exchanged), or
  when ``close_timeout`` passes (the peer went away mid-handshake). The peer's FIN (it went
  idle first) makes this side close too.
- **Draining.** After the handshake the pair is kept for a short while: the last frame of a
  handshake is an ACK nobody acknowledges, and if it is lost the peer retransmits its FIN,
  which the closed channel still answers. Like QUIC's closing and draining states (RFC 9000
  §10.2: "at least three times the current PTO"), this lasts three times the channel's
  current RTO, and at least the initial RTO plus one RTO (a peer that never had an RTT
  sample, one that only received, retransmits after RTO_INITIAL, RFC 6298 §2.1); at most
  ``close_timeout``. Without it a lost last ACK leaves the peer waiting
  its whole ``close_timeout`` and dissolving "unclean"; and a TURN relay that is released
  (Refresh LIFETIME 0) right behind that ACK may drop it.
- **Dissolved / failed.** Final. The machine emits :class:`LinkDissolved` or
  :class:`LinkFailed`; the adapter then releases everything (TURN allocation with LIFETIME 0,
  sockets, tasks) and only then hands the event to the application.

The driver loop is aioquic's: feed input (``receive_datagram``, ``handle_timer`` at
``next_timer()``), send ``datagrams_to_send(now)`` on the selected pair, then drain
``next_event()``. Sending the datagrams before reading the events matters at the end: the
last ACK of the close handshake is sent before the adapter tears the pair down.

States (every change is in :data:`_TRANSITIONS`)::

    FORMING --formed()-------------------------------> OPEN
       |  fail(), close(), form_timeout ------------> FAILED
    OPEN --idle, close(), the peer's FIN-------------> CLOSING
       |  channel gave up, transport lost -----------> DISSOLVED
    CLOSING --handshake done-------------------------> DRAINING --drained--> DISSOLVED
       |  channel gave up, close_timeout,
       |  transport lost ----------------------------> DISSOLVED
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum

from anchor_ice.candidate import CandidateType
from anchor_ice.events import PairInfo
from anchor_link.reliable import (
    RTO_INITIAL,
    CloseReason,
    MessageReceived,
    ReliableChannel,
    ReliableClosed,
    ReliableIdle,
    ReliableState,
    SendWindowOpen,
)
from anchor_stun.address import seconds
from anchor_stun.errors import AnchorError, LocalProtocolError
from anchor_stun.events import Address, StunEvent

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_FORM_TIMEOUT",
    "DissolveReason",
    "LinkClosed",
    "LinkDissolved",
    "LinkError",
    "LinkEvent",
    "LinkFailed",
    "LinkFormationFailed",
    "LinkFormed",
    "LinkMachine",
    "LinkMessage",
    "LinkMoved",
    "LinkState",
    "LinkWritable",
    "PeerAuthenticationError",
    "PeerAuthenticationFailed",
]

DEFAULT_FORM_TIMEOUT = 30.0
"""Seconds from wanting a link to its channel being open before the link fails."""
DEFAULT_CLOSE_TIMEOUT = 5.0
"""Seconds the close handshake may take before the link dissolves without it."""


# --------------------------------------------------------------------------- errors


class LinkError(AnchorError):
    """Anything that went wrong with an ephemeral link."""


class LinkClosed(LinkError):
    """The endpoint (or the link) is closed: nothing can be sent on it."""


class LinkFormationFailed(LinkError):
    """A link could not be formed (``reason`` says why, in one line)."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"link to {peer!r} failed: {reason}")
        self.peer = peer
        self.reason = reason


class PeerAuthenticationError(LinkFormationFailed):
    """Raised by ``send``: the peer did not prove the identity it had to (a pinned or known
    key), or the handshake did not authenticate. Nothing was sent to it. The link's event is
    :class:`PeerAuthenticationFailed`."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class LinkEvent(StunEvent):
    """Base of the link events."""

    peer: str
    """The peer's name on the signalling."""


@dataclass(frozen=True, slots=True)
class LinkFormed(LinkEvent):
    """The link's channel is open on the selected pair: messages flow."""

    local_type: CandidateType
    """Type of the selected pair's local candidate (never host under the gateway policy)."""
    local_address: Address
    """(ip, port) of the local candidate."""
    remote_type: CandidateType
    """Type of the selected pair's remote candidate."""
    remote_address: Address
    """(ip, port) of the remote candidate."""
    formed_ms: float
    """Milliseconds from wanting the link (first send, or the offer's arrival) to the
    channel being open: gathering, signalling and ICE checks."""
    offerer: bool
    """True on the side that sent the offer (the ICE controlling agent)."""
    sealed: bool
    """True when frames are sealed (ChaCha20-Poly1305 under keys from the link's Noise
    handshake, :mod:`anchor_link.handshake`, :mod:`anchor_link.seal`)."""
    peer_identity: str | None = None
    """The public identity (``anchor1:...``) the peer proved in the handshake."""
    trust: str = "unverified"
    """How that identity was checked: a :class:`~anchor_link.trust.Trust` value
    (``pinned``, ``known``, ``new`` or ``unverified``)."""
    relay_transport: str | None = None
    """How the local relayed candidate's TURN server is reached: ``udp``, ``tcp`` or
    ``tls`` (RFC 8656 §3.1); None when the local candidate is not relayed."""


@dataclass(frozen=True, slots=True)
class LinkMoved(LinkEvent):
    """The open link's data moved to a better pair (ICE renomination,
    :mod:`anchor_ice.agent`): the channel goes on over it, every message still delivered once
    and in order (frames carry their own sequence numbers; what was in flight on the
    previous pair is still received)."""

    local_type: CandidateType
    """Type of the new pair's local candidate (never host under the gateway policy)."""
    local_address: Address
    """(ip, port) of the local candidate."""
    remote_type: CandidateType
    """Type of the new pair's remote candidate."""
    remote_address: Address
    """(ip, port) of the remote candidate."""
    moved_ms: float
    """Milliseconds from wanting the link (as :attr:`LinkFormed.formed_ms`) to the move."""
    relay_transport: str | None = None
    """As :attr:`LinkFormed.relay_transport`, for the new pair."""


@dataclass(frozen=True, slots=True)
class LinkMessage(LinkEvent):
    """A whole message from the peer, in order, exactly once."""

    data: bytes
    """The message as the peer sent it."""


@dataclass(frozen=True, slots=True)
class LinkWritable(LinkEvent):
    """The channel's send window has room again after a send found it full."""


class DissolveReason(StrEnum):
    """Why an open link dissolved (the ``reason`` of :class:`LinkDissolved`)."""

    IDLE = "idle"
    """No application datagram for ``idle_timeout`` on this side."""
    PEER = "closed by peer"
    """The peer closed the channel (it went idle, or closed its endpoint)."""
    CLOSED = "closed"
    """This endpoint was closed by the application."""
    UNREACHABLE = "peer unreachable"
    """The channel's retransmissions went unanswered."""
    TRANSPORT = "transport lost"
    """ICE consent was lost, or the pair could not carry data."""


@dataclass(frozen=True, slots=True)
class LinkDissolved(LinkEvent):
    """The link is gone: channel closed, and (once the adapter reports it) the TURN
    allocation released and every socket and task of the link closed."""

    reason: str
    """A :class:`DissolveReason` value, with details after a colon for a lost transport."""
    clean: bool
    """True when the close handshake completed (both FINs acknowledged)."""
    messages_sent: int
    """Messages this side sent on the link."""
    messages_received: int
    """Messages this side received on the link."""
    bytes_sent: int
    """Message bytes sent."""
    bytes_received: int
    """Message bytes received."""
    open_seconds: float
    """Seconds from formed to dissolved."""
    closing_seconds: float
    """Seconds from the start of the close (idle, close(), the peer's FIN) to dissolved: the
    close handshake and the draining (0 when the link was dropped at once)."""
    retransmissions: int = 0
    """DATA and FIN frames this side sent again, tail-loss probes included
    (:attr:`~anchor_link.reliable.ReliableStats.retransmissions`)."""
    dropped_window: int = 0
    """DATA frames this side dropped because they were beyond its receive window (a sender
    that follows the window updates never causes one: flow control)."""


@dataclass(frozen=True, slots=True)
class LinkFailed(LinkEvent):
    """The link never formed (gathering, signalling or ICE failed, or it timed out)."""

    reason: str
    """Why, in one line."""


@dataclass(frozen=True, slots=True)
class PeerAuthenticationFailed(LinkFailed):
    """The link failed because the peer did not authenticate: its handshake message did not
    verify (a description changed on the way, a replay), or it proved a key other than the one
    pinned or known for its name. No application byte was sent or accepted."""

    expected: str | None = None
    """The public identity the peer had to prove, when one was pinned or known."""
    presented: str | None = None
    """The public identity the peer proved, when its handshake got that far."""


# --------------------------------------------------------------------------- state


class LinkState(Enum):
    """Life cycle of a link (module docstring)."""

    FORMING = "forming"
    """Gathering, signalling, ICE checks; no channel yet."""
    OPEN = "open"
    """The channel carries messages."""
    CLOSING = "closing"
    """The channel's close handshake is under way; nothing more can be sent."""
    DRAINING = "draining"
    """The handshake is done; the pair stays a moment to re-acknowledge a retransmitted
    FIN (module docstring)."""
    DISSOLVED = "dissolved"
    """Final, after having been open."""
    FAILED = "failed"
    """Final, never formed."""


class _Input(Enum):
    FORMED = "formed"
    FAIL = "fail"
    CLOSE = "close"
    FORM_TIMEOUT = "form timeout"
    IDLE = "idle"
    PEER_FIN = "peer FIN"
    CHANNEL_CLOSED = "channel gave up"
    HANDSHAKE_DONE = "handshake done"
    DRAINED = "drained"
    CLOSE_TIMEOUT = "close timeout"
    TRANSPORT_LOST = "transport lost"


_S = LinkState
_TRANSITIONS: dict[tuple[LinkState, _Input], LinkState] = {
    (_S.FORMING, _Input.FORMED): _S.OPEN,
    (_S.FORMING, _Input.FAIL): _S.FAILED,
    (_S.FORMING, _Input.CLOSE): _S.FAILED,
    (_S.FORMING, _Input.FORM_TIMEOUT): _S.FAILED,
    (_S.FORMING, _Input.TRANSPORT_LOST): _S.FAILED,
    (_S.OPEN, _Input.IDLE): _S.CLOSING,
    (_S.OPEN, _Input.CLOSE): _S.CLOSING,
    (_S.OPEN, _Input.PEER_FIN): _S.CLOSING,
    (_S.OPEN, _Input.CHANNEL_CLOSED): _S.DISSOLVED,
    (_S.OPEN, _Input.TRANSPORT_LOST): _S.DISSOLVED,
    (_S.CLOSING, _Input.HANDSHAKE_DONE): _S.DRAINING,
    (_S.CLOSING, _Input.CHANNEL_CLOSED): _S.DISSOLVED,
    (_S.CLOSING, _Input.CLOSE_TIMEOUT): _S.DISSOLVED,
    (_S.CLOSING, _Input.TRANSPORT_LOST): _S.DISSOLVED,
    (_S.DRAINING, _Input.DRAINED): _S.DISSOLVED,
    (_S.DRAINING, _Input.TRANSPORT_LOST): _S.DISSOLVED,
}
"""Every state change: (state, input) -> next state. Other pairs change nothing."""

_FINAL = (LinkState.DISSOLVED, LinkState.FAILED)


class LinkMachine:
    """One ephemeral link to one peer, sans-I/O (module docstring).

    ``now`` is when the link was wanted. ``form_timeout`` bounds forming, ``close_timeout``
    the close handshake; the idle timeout is the channel's own (``ReliableChannel``'s
    ``idle_timeout``, passed when the adapter builds it).
    """

    def __init__(
        self,
        peer: str,
        *,
        offerer: bool,
        now: float,
        form_timeout: float = DEFAULT_FORM_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        if not isinstance(peer, str) or not peer:
            raise LocalProtocolError(f"peer must be the peer's name (a non-empty string), not {peer!r}")
        if isinstance(now, bool) or not isinstance(now, int | float):
            raise LocalProtocolError(f"now must be a time in seconds, not {now!r}")
        seconds(form_timeout, "form_timeout")
        seconds(close_timeout, "close_timeout")
        self.peer = peer
        """The peer's name."""
        self.offerer = offerer
        """True when this side sent the offer (ICE controlling)."""
        self.started_at = now
        """When the link was wanted."""
        self.formed_at: float | None = None
        """When the channel opened."""
        self._state = LinkState.FORMING
        self._form_deadline = now + form_timeout
        self._close_timeout = close_timeout
        self._close_deadline: float | None = None
        self._drain_deadline: float | None = None
        self._closing_at: float | None = None
        self._channel: ReliableChannel | None = None
        self._reason: str | None = None
        self._events: deque[LinkEvent] = deque()

    # ----------------------------------------------------------------- properties

    @property
    def state(self) -> LinkState:
        """The current :class:`LinkState`."""
        return self._state

    @property
    def final(self) -> bool:
        """True once dissolved or failed."""
        return self._state in _FINAL

    @property
    def channel(self) -> ReliableChannel | None:
        """The channel, once formed."""
        return self._channel

    # ----------------------------------------------------------------- forming

    def formed(
        self,
        pair: PairInfo,
        channel: ReliableChannel,
        now: float,
        *,
        sealed: bool,
        peer_identity: str | None = None,
        trust: str = "unverified",
        relay_transport: str | None = None,
    ) -> None:
        """ICE selected ``pair`` and ``channel`` runs on it: the link is open. Ignored
        unless forming (a link that timed out meanwhile stays failed). ``relay_transport``:
        see :attr:`LinkFormed.relay_transport`."""
        if self._state is not LinkState.FORMING:
            return
        self._channel = channel
        self.formed_at = now
        self._transition(_Input.FORMED)
        self._events.append(
            LinkFormed(
                self.peer,
                local_type=pair.local.type,
                local_address=pair.local.address,
                remote_type=pair.remote.type,
                remote_address=pair.remote.address,
                formed_ms=(now - self.started_at) * 1000,
                offerer=self.offerer,
                sealed=sealed,
                peer_identity=peer_identity,
                trust=trust,
                relay_transport=relay_transport,
            )
        )

    def moved(self, pair: PairInfo, now: float, *, relay_transport: str | None = None) -> None:
        """ICE selected another pair for the open link (renomination): reports
        :class:`LinkMoved`. The channel does not care which pair its frames travel on.
        Ignored unless open."""
        if self._state is not LinkState.OPEN:
            return
        self._events.append(
            LinkMoved(
                self.peer,
                local_type=pair.local.type,
                local_address=pair.local.address,
                remote_type=pair.remote.type,
                remote_address=pair.remote.address,
                moved_ms=(now - self.started_at) * 1000,
                relay_transport=relay_transport,
            )
        )

    def fail(self, reason: str, now: float) -> None:
        """Forming failed (gathering, signalling, ICE). Once open, the pair could no longer
        carry data: the link dissolves with "transport lost"."""
        if self._state is LinkState.FORMING:
            self._fail(_Input.FAIL, reason)
        elif self._state in (LinkState.OPEN, LinkState.CLOSING):
            self._dissolve(_Input.TRANSPORT_LOST, f"{DissolveReason.TRANSPORT}: {reason}", now,
                           clean=False)
        elif self._state is LinkState.DRAINING:  # the handshake was done: nothing is lost
            self._dissolve(_Input.TRANSPORT_LOST, self._reason or reason, now)

    def authentication_failed(
        self, reason: str, *, expected: str | None = None, presented: str | None = None
    ) -> None:
        """The peer did not authenticate (:class:`PeerAuthenticationFailed`): a forming link
        fails. Ignored in any other state (a link opens only once both sides authenticated)."""
        if self._state is LinkState.FORMING:
            self._transition(_Input.FAIL)
            self._events.append(
                PeerAuthenticationFailed(
                    self.peer, reason=reason, expected=expected, presented=presented
                )
            )

    def abort(self, reason: str, now: float) -> None:
        """Drop the link at once, without a close handshake (the peer started a new link,
        or the endpoint is being torn down): a forming link fails with ``reason``, an open
        one dissolves with it, a closing one with the reason it was closing for."""
        if self._state is LinkState.FORMING:
            self._fail(_Input.FAIL, reason)
        elif self._state is LinkState.OPEN:
            self._dissolve(_Input.TRANSPORT_LOST, reason, now, clean=False)
        elif self._state is LinkState.CLOSING:
            self._dissolve(_Input.TRANSPORT_LOST, self._reason or reason, now, clean=False)
        elif self._state is LinkState.DRAINING:
            self._dissolve(_Input.TRANSPORT_LOST, self._reason or reason, now)

    def close(self, now: float) -> None:
        """The application closes the link: a forming link fails, an open one starts the
        close handshake. Idempotent."""
        if self._state is LinkState.FORMING:
            self._fail(_Input.CLOSE, "closed before it formed")
        elif self._state is LinkState.OPEN:
            self._start_closing(_Input.CLOSE, DissolveReason.CLOSED, now)

    # ----------------------------------------------------------------- data

    def can_send(self, size: int) -> bool:
        """Whether :meth:`send` of ``size`` bytes would be accepted now."""
        return (
            self._state is LinkState.OPEN
            and self._channel is not None
            and self._channel.can_send(size)
        )

    def send(self, data: bytes, now: float) -> None:
        """Queue one message. Raises :class:`LinkClosed` unless open, and the channel's
        :class:`~anchor_link.reliable.ReliableChannelFull` / ``MessageTooLarge``."""
        if self._state is not LinkState.OPEN or self._channel is None:
            raise LinkClosed(f"link to {self.peer!r} is {self._state.value}")
        self._channel.send(data, now)

    def release(self, messages: int, now: float) -> bool:
        """The application read ``messages`` more :class:`LinkMessage` of this link: their
        frames leave the channel's receive window (a channel made with
        ``manual_release=True``; :meth:`~anchor_link.reliable.ReliableChannel.release`).
        Returns whether frames are owed now (call :meth:`datagrams_to_send`); does nothing
        once the link is final."""
        if self._channel is None or self.final:
            return False
        return self._channel.release(messages, now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one channel frame from the selected pair (never raises):
        :meth:`receive_datagrams` with one."""
        self.receive_datagrams((data,), now)

    def receive_datagrams(self, datagrams: Iterable[bytes], now: float) -> None:
        """Feed the channel frames that arrived together from the selected pair, in order, in
        one call (never raises;
        :meth:`~anchor_link.reliable.ReliableChannel.receive_datagrams`)."""
        if self._channel is None or self.final:
            return
        self._channel.receive_datagrams(datagrams, now)
        self._channel_events(now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Channel frames to send now on the selected pair. Still asked once dissolved: the
        last ACK of the close handshake may be owed."""
        if self._channel is None:
            return []
        out = self._channel.datagrams_to_send(now)
        self._channel_events(now)
        return out

    # ----------------------------------------------------------------- time and events

    def next_timer(self) -> float | None:
        """The next deadline (forming, channel, close handshake, draining), absolute, or
        None."""
        if self._state is LinkState.FORMING:
            return self._form_deadline
        if self._state is LinkState.DRAINING:
            return self._drain_deadline
        if self.final or self._channel is None:
            return None
        deadlines = [d for d in (self._channel.next_timer(), self._close_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed; an early call does nothing."""
        if self._state is LinkState.FORMING:
            if now >= self._form_deadline:
                self._fail(_Input.FORM_TIMEOUT, "timed out while forming")
            return
        if self.final or self._channel is None:
            return
        if self._state is LinkState.DRAINING:
            assert self._drain_deadline is not None
            if now >= self._drain_deadline:
                self._dissolve(_Input.DRAINED, self._reason or DissolveReason.PEER, now)
            return
        self._channel.handle_timer(now)
        self._channel_events(now)
        if (
            self._state is LinkState.CLOSING
            and self._close_deadline is not None
            and now >= self._close_deadline
        ):
            reason = self._reason or DissolveReason.CLOSED
            self._dissolve(_Input.CLOSE_TIMEOUT, reason, now, clean=False)

    def next_event(self) -> LinkEvent | None:
        """The oldest event not yet returned, or None."""
        return self._events.popleft() if self._events else None

    # ----------------------------------------------------------------- internals

    def _channel_events(self, now: float) -> None:
        channel = self._channel
        assert channel is not None
        events, peer = self._events, self.peer
        while (event := channel.next_event()) is not None:
            if self._state in _FINAL:
                continue
            if type(event) is MessageReceived:
                events.append(LinkMessage(peer, event.data))
            elif isinstance(event, SendWindowOpen):
                self._events.append(LinkWritable(self.peer))
            elif isinstance(event, ReliableIdle):
                if self._state is LinkState.OPEN:
                    self._start_closing(_Input.IDLE, DissolveReason.IDLE, now)
            elif isinstance(event, ReliableClosed):
                if event.reason is CloseReason.UNREACHABLE:
                    reason = self._reason or DissolveReason.UNREACHABLE
                    self._dissolve(_Input.CHANNEL_CLOSED, reason, now, clean=False)
                elif self._state is LinkState.CLOSING:
                    self._reason = self._reason or DissolveReason.PEER
                    rto = channel.stats.rto
                    linger = min(self._close_timeout, max(3 * rto, RTO_INITIAL + rto))
                    self._drain_deadline = now + linger
                    self._transition(_Input.HANDSHAKE_DONE)
        if self._state is LinkState.OPEN and channel.state is ReliableState.CLOSING:
            # The peer's FIN arrived in order: it closed first; our FIN is queued.
            self._start_closing(_Input.PEER_FIN, DissolveReason.PEER, now)

    def _start_closing(self, event: _Input, reason: str, now: float) -> None:
        assert self._channel is not None
        self._reason = reason
        self._closing_at = now
        self._channel.close(now)
        self._close_deadline = now + self._close_timeout
        self._transition(event)

    def _dissolve(self, event: _Input, reason: str, now: float, *, clean: bool = True) -> None:
        if self.final:
            return
        self._transition(event)
        channel = self._channel
        assert channel is not None and self.formed_at is not None
        stats = channel.stats
        self._events.append(
            LinkDissolved(
                self.peer,
                reason=str(reason),
                clean=clean,
                messages_sent=stats.messages_sent,
                messages_received=stats.messages_received,
                bytes_sent=stats.bytes_sent,
                bytes_received=stats.bytes_received,
                open_seconds=max(0.0, now - self.formed_at),
                closing_seconds=0.0 if self._closing_at is None else now - self._closing_at,
                retransmissions=stats.retransmissions,
                dropped_window=stats.dropped_window,
            )
        )

    def _fail(self, event: _Input, reason: str) -> None:
        self._transition(event)
        self._events.append(LinkFailed(self.peer, reason=reason))

    def _transition(self, event: _Input) -> None:
        self._state = _TRANSITIONS.get((self._state, event), self._state)

    def __repr__(self) -> str:
        return f"<LinkMachine {self.peer!r} {self._state.value}>"
