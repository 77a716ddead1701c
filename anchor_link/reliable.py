"""The reliable datagram channel, sans-I/O (docs/design.md "Reliable channel").

Theory of operation
-------------------
A :class:`ReliableChannel` carries whole messages (``send(data, now)`` in, ``MessageReceived``
out) over an unreliable datagram path: in Anchor, the nominated ICE pair. It never touches a
socket, a clock or a random source of its own. The adapter pumps it like an aioquic connection:

- ``receive_datagrams(datagrams, now)`` with the datagrams of the pair that arrived together
  (one read of the socket, or one wake-up), those whose first byte is in the channel's range
  (:func:`is_reliable_frame`; STUN and TURN go elsewhere); ``receive_datagram(data, now)`` is
  the same call with one;
- ``datagrams_to_send(now)`` after every input, sending each frame on the selected pair;
- ``handle_timer(now)`` at ``next_timer()`` (an absolute deadline, or ``None``);
- ``next_event()`` until ``None``: :class:`MessageReceived`, :class:`SendWindowOpen`,
  :class:`ReliableIdle`, :class:`ReliableClosed`.

Sending. A message of up to ``max_message`` bytes (64 KiB by default) is cut into fragments
that fill a frame of ``mtu`` bytes of UDP payload. Each fragment gets the next 32-bit frame
sequence number and the FIRST / LAST flags that delimit its message. The sender keeps every
frame until it is acknowledged; at most ``send_window`` frames may be unacknowledged (queued,
in flight or selectively acknowledged above a hole). ``send()`` of a message that does not fit
raises :class:`ReliableChannelFull` and changes nothing; once acknowledgements make room,
:class:`SendWindowOpen` says so (``can_send(size)`` and ``writable_bytes`` ask first).
Buffered frames go out at ``datagrams_to_send`` calls, retransmissions first, as three limits
allow:

- Congestion control (:mod:`anchor_link.congestion`, RFC 9002 §7; RFC 8085 §3.1 requires it of
  bulk UDP): a window in bytes, ten frames at first, doubled every round trip in slow start,
  reduced once per round trip in which RACK finds frames lost, and back to two frames on
  persistent congestion (lost frames spanning 3 x (SRTT + 4 RTTVAR) with nothing delivered in
  between) or an RTO expiry. By default NewReno (RFC 9002 §7.3): a loss halves the window,
  then one frame more per round trip; ``congestion_control="cubic"`` (RFC 9438, Linux TCP's
  controller): a loss reduces the window to 0.7 of itself, and congestion avoidance follows
  CUBIC's cubic function of the time since that loss, never below Reno's growth (which of the
  two, and why: :mod:`anchor_link.congestion`). A frame
  leaves only when the bytes in flight (DATA and FIN frames sent, neither acknowledged nor
  found lost) stay within the window. Tail-loss probes are not held (RFC 9002 §7.5): they
  resend a frame still counted in flight.
- Pacing (RFC 9002 §7.7): a token bucket at 1.25 x window / SRTT that holds the initial window;
  when it holds a frame back, ``next_timer()`` returns the time it may leave (the adapter calls
  ``handle_timer`` then ``datagrams_to_send``, as for every deadline).
- Flow control: a frame is sent for the first time only below the peer's right edge, the
  cumulative point plus the receive window of its latest ACK (before any ACK,
  ``peer_receive_window``). While frames wait for that alone and nothing is outstanding, the
  persist timer (RFC 9293 §3.8.6.1; the RTO, doubled per request since the window last
  opened) sends an ACK with the ACK_REQUEST flag, which the peer answers with an ACK: a lost
  window update costs a timer, never a deadlock. ``max_retransmissions`` + 1 requests in a row
  without any ACK give up ("peer unreachable").

Receiving. Frames are put back in sequence order; a message is delivered when its LAST
fragment is in order, so every message arrives whole, exactly once, in order. Frames already
received count as ``duplicates``. The receiver holds at most ``receive_window`` frames: those
waiting above a hole and, with ``manual_release``, those of messages delivered and not yet
``release()``-d by the application (a half-received message counts too). What is left of it is
advertised in every ACK; its right edge (cumulative point + window) never moves back, and a
frame at or beyond it is dropped and counted (``dropped_window``: a sender that follows the
advertisements never sees it). When the application's reads move the edge by a quarter of
``receive_window`` past the one last advertised, an ACK says so (a window update). Without
``manual_release`` a message frees its frames once delivered: the adapter reads every event
at once, and the window then bounds only what waits for a hole. Any DATA or FIN frame
received, a duplicate too, makes the next
``datagrams_to_send`` call begin with one ACK frame (no delayed ACKs: the adapter calls
``datagrams_to_send`` once per batch of input, so one ACK covers a batch: a receiver's
choice of acknowledgment frequency, RFC 9000 §13.2.2). When that batch
held a duplicate or a frame out of order, the peer is recovering from a loss and losing this
one ACK would cost it a timeout: the ACK is sent twice. An ACK carries the cumulative point
(every frame below it arrived) and up to 64 SACK ranges above it, highest first (the idea of
RFC 2018; the receiver never reneges on a SACKed frame).

Loss recovery: RACK-TLP (RFC 8985) over SACK, with the RFC 6298 timer as the last resort.
Every transmission, retransmissions included, gets a local transmission number and time, the
way QUIC numbers packets (RFC 9002), so "sent after" is exact even at one clock value.

- RTT (RFC 6298 §2-§3): the first sample R sets SRTT = R, RTTVAR = R/2; later ones
  RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R'|, then SRTT = 7/8 SRTT + 1/8 R'. Karn's rule: only a
  frame sent once gives a sample; each ACK gives at most one, from the most recently sent frame
  it newly acknowledges. min_rtt is the smallest sample.
- RACK (RFC 8985 §6): RACK's frame is the most recently transmitted frame known delivered.
  A frame not acknowledged and transmitted before it is lost when it is overdue by the
  reordering window: sent_at + RACK.rtt + reo_wnd <= now, reo_wnd = min(min_rtt / 4, SRTT);
  or, until the path has been seen to reorder, as soon as 3 transmissions separate them
  (DupThresh, RFC 6675 §4; QUIC's packet threshold, RFC 9002 §6.1.1). A frame not yet overdue
  arms RACK's timer for the moment it will be. Lost frames are retransmitted at once (counted
  in ``fast_retransmits``), retransmissions included: a lost retransmission is found as soon
  as a frame sent after it is acknowledged. An ACK of a retransmitted frame may answer an
  earlier copy (Karn's ambiguity): it moves RACK only if the copy before was known lost when
  the frame went out again, and the ACK came at least min_rtt after it (§6.2 step 2). The
  path reorders when a frame sent once is delivered after a later one, or such an ACK comes
  sooner than min_rtt (the earlier copy was only late: what a DSACK would say).
- Tail-loss probe (RFC 8985 §7, RFC 9002 §6.2): when nothing is acknowledged for
  PTO = 2 SRTT after the latest transmission (doubled for the second probe), the earliest
  frame not acknowledged, the one holding the window, is sent again. There is never new data
  to send instead (every queued frame goes out at once). Nothing is declared lost: the probe's
  ACK lets RACK find the rest. This is what recovers a lost retransmission when the window is
  full of frames acknowledged above it and nothing else is in flight, in about 2 SRTT instead
  of an RTO. At most ``MAX_PROBES`` (2) probes in a row without an acknowledgement; no probe
  before the first RTT sample (the initial RTO, 1 s, is the same figure).
- RTO (RFC 6298 §2, §5), the last resort: ``rto_initial`` 1 s; RTO = SRTT + max(G, 4 RTTVAR)
  with G = 1 ms, clamped to [max(``rto_min``, 2 SRTT), ``rto_max``]. The 2 SRTT floor comes
  from the path: on a steady one RTTVAR decays and SRTT + 4 RTTVAR falls towards SRTT, which a
  queue or a busy peer overshoots. ``rto_min`` is the sane minimum for real paths: 0.2 s,
  Linux's ``TCP_RTO_MIN`` (§2.4 says 1 s; pass ``rto_min=1.0`` for its letter), the RTO that
  Linux keeps behind RACK-TLP too. With RACK and the probes the RTO only fires when both probes
  are lost, or before the first RTT sample. ``rto_max`` is 60 s (§2.5). One timer for the
  channel, as §5 says: started when a frame goes out and it is not running (5.1), stopped when
  nothing is outstanding (5.2), restarted when the cumulative point advances (5.3) and by a
  probe (RFC 8985 §7.3). When it expires the RTO doubles (5.5), the timer restarts (5.6), no
  probe is sent until an acknowledgement, and the earliest outstanding frame is retransmitted
  (5.4), together with every other frame not SACKed that has itself been outstanding for the
  whole expired RTO (as if each frame had its own timer; RFC 6675 §5.1). Frames sent less than
  an RTO ago stay in flight.
- A channel whose timer expires ``max_retransmissions`` + 1 times in a row without the peer
  acknowledging anything new gives up: :class:`ReliableClosed` with reason "peer unreachable".

Idle (docs/design.md "Idle"). Activity is an application datagram: a message accepted by
``send()``, a DATA or FIN frame put on the wire (retransmissions and probes included), or a
DATA frame received for the first time; and while anything sent is still unacknowledged the
channel is not idle at all (a slow recovery must not make a sender close under its own
data). ACKs, duplicates received and ICE consent checks are not activity.
:class:`ReliableIdle` comes exactly ``idle_timeout`` seconds after the last activity (the idle
clock starts at construction when ``now`` is given, else at the first activity), once per
idle period. The channel stays usable;
closing it is the owner's decision (the ephemeral link closes it and dissolves).

Closing (a FIN / ACK handshake, like TCP's but without TIME-WAIT). ``close(now)`` queues a FIN
frame behind the data already sent: it takes the next sequence number, so it is retransmitted
like data and arrives after every message. A channel that receives the peer's FIN in order
stops accepting ``send()`` and queues its own FIN behind its remaining data. A channel is
closed once its FIN is acknowledged and the peer's FIN has arrived in order; it then reports
:class:`ReliableClosed` ("closed" on the side that called ``close()`` first, "closed by peer" on
the other) and still answers a retransmitted FIN with an ACK, in case the last ACK was lost.

States (every change is in :data:`_TRANSITIONS`)::

    OPEN --close() or peer FIN--> CLOSING --own FIN acked and peer FIN received--> CLOSED
      |                              |
      +------ retransmission limit --+-----------------------------------------> CLOSED

Frame layout
------------
Every frame is one UDP payload. Integers are big-endian, but the crc. Plaintext frames::

    offset  size  field
    0       1     demux byte: 0b11xxxxxx (192-255); 0xC2 in plaintext frames (the format
                  version: 0xC1 had its crc big-endian, 0xC0 was the format before ACKs
                  carried a receive window)
    1       1     type (low nibble) and flags (high nibble)
                    0x01 DATA   flags 0x10 FIRST fragment of a message, 0x20 LAST fragment
                    0x02 ACK    flag 0x10 ACK_REQUEST: answer with an ACK (window probe)
                    0x03 FIN    no flags
    DATA:
    2       4     sequence number (32 bits, wrapping; unwrapped near the expected value)
    6       n     fragment of the message (n >= 0)
    FIN:
    2       4     sequence number (the one after the last DATA frame)
    ACK:
    2       4     cumulative point: the next sequence number expected
    6       4     receive window: frames accepted from the cumulative point on
    10      1     number of SACK ranges k (at most 64 are sent; up to 255 are read)
    11      8k    k ranges [start, end) of frames received above the cumulative point,
                  highest first: start (4), end (4, exclusive)
    last    4     crc32c (Castagnoli, RFC 3720 §12.1) of every byte before it, least
                  significant byte first: the crc32c of the whole frame is then the
                  constant 0x48674BC7 (a CRC's residue), checked without cutting the frame

Overhead: 10 bytes per DATA frame, so 1190 bytes of message per 1200-byte frame.

Demultiplexing (RFC 7983 §7, updated by RFC 9443). On the 5-tuple of an ICE pair the first
byte tells protocols apart: 0-3 STUN, 16-19 ZRTP, 20-63 DTLS, 64-79 TURN ChannelData,
128-191 RTP/RTCP. Channel frames use 192-255, which RFC 7983 leaves unassigned. (RFC 9443 later
lets QUIC use it for long-header packets: the channel must not share its 5-tuple with QUIC,
which no ICE pair of Anchor does.)

Sealed frames (optional, :mod:`anchor_link.seal`): the first byte is drawn from ``rng`` in
192-255 for every frame (``rng`` is asked for 256 bytes at a time), the plaintext frame ``first | body | crc32c`` is built with it, and
the sealer sends ``first | masked counter (8) | AEAD(body | crc32c)``: the crc stays inside
the ciphertext, where it gives an observer nothing to recognise the protocol by. A sealed frame
is 24 bytes longer (1166 bytes of message per 1200-byte frame).

Versions: both ends of a link run Anchor, so the format changes cleanly rather than being
negotiated: plaintext frames name theirs in the first byte (a peer of another version has its
frames dropped as invalid, nothing misread), and sealed frames through the version in the
link handshake's prologue and HKDF labels (:mod:`anchor_link.handshake`: a peer of another
version fails the handshake, and could not open a frame anyway).

What is left out on purpose: path MTU discovery (``mtu`` is configured: 1200 bytes fit every
path that carries IPv6's 1280 with room for a TURN ChannelData header, and the ICE sockets set
DF so that nothing fragments), ECN, and a connection handshake (the channel is born open on a
pair ICE has already checked).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from itertools import repeat
from typing import Any, Protocol

import crc32c as _crc32c

from anchor_link.congestion import (
    CONGESTION_CONTROLLERS,
    DEFAULT_CONGESTION_CONTROL,
    CongestionController,
    Pacer,
    initial_window,
)
from anchor_stun.address import count, seconds
from anchor_stun.errors import AnchorError, LocalProtocolError
from anchor_stun.events import StunEvent

__all__ = [
    "ACK_MAX_RANGES",
    "CLOCK_GRANULARITY",
    "DUP_THRESH",
    "FIRST_BYTE_MAX",
    "FIRST_BYTE_MIN",
    "MAX_PROBES",
    "PLAIN_FIRST_BYTE",
    "PTO_SRTT",
    "RTO_INITIAL",
    "RTO_MAX",
    "RTO_MIN",
    "RTO_SRTT_FLOOR",
    "AuthenticationFailed",
    "CloseReason",
    "FrameSealer",
    "MessageReceived",
    "MessageTooLarge",
    "ReliableChannel",
    "ReliableChannelError",
    "ReliableChannelFull",
    "ReliableClosed",
    "ReliableEvent",
    "ReliableIdle",
    "ReliableState",
    "ReliableStateError",
    "ReliableStats",
    "ReplayDetected",
    "SealError",
    "SendWindowOpen",
    "is_reliable_frame",
]

# --------------------------------------------------------------------------- constants

FIRST_BYTE_MIN = 192
"""Lowest first byte of a channel frame (RFC 7983 §7: 192-255 is unassigned)."""
FIRST_BYTE_MAX = 255
"""Highest first byte of a channel frame."""
PLAIN_FIRST_BYTE = 0xC2
"""First byte of every plaintext frame (sealed frames draw theirs at random in 192-255). It
names the frame format: 0xC2 since the crc is little-endian (0xC1 before, 0xC0 before ACK
frames carried a receive window); a plaintext frame with another first byte is dropped."""

RTO_INITIAL = 1.0  # RFC 6298 §2.1
RTO_MIN = 0.2  # RFC 6298 §2.4 says 1 s; Linux TCP_RTO_MIN (module docstring, "RTO")
RTO_SRTT_FLOOR = 2.0
"""The RTO is never below this many smoothed round trips (the floor derived from the path)."""
RTO_MAX = 60.0  # RFC 6298 §2.5: a maximum "provided it is at least 60 seconds"
CLOCK_GRANULARITY = 0.001  # G of RFC 6298 §2, seconds
_ALPHA = 1 / 8  # RFC 6298 §2.3
_BETA = 1 / 4  # RFC 6298 §2.3
_K = 4  # RFC 6298 §2
DUP_THRESH = 3  # RFC 6675 §2 / RFC 5681 §3.2: three duplicate ACKs
PTO_SRTT = 2.0  # RFC 8985 §7.2: PTO = 2 SRTT
MAX_PROBES = 2
_NO_DUP_THRESH = 1 << 62  # once reordering was seen: time threshold only
"""Tail-loss probes in a row without an acknowledgement before the RTO takes over."""
ACK_MAX_RANGES = 64
"""Most SACK ranges in one ACK frame (fewer when the MTU is small)."""

DEFAULT_MTU = 1200  # UDP payload bytes: with a TURN ChannelData header, within IPv6's 1280
DEFAULT_SEND_WINDOW = 128  # frames: a 64 KiB message takes 56
DEFAULT_MAX_MESSAGE = 65536
DEFAULT_IDLE_TIMEOUT = 30.0  # docs/design.md "Idle"
DEFAULT_MAX_RETRANSMISSIONS = 8  # 1+2+4+8+16+32+60+60+60 s: gives up after 243 s
_MIN_MTU = 64
_MAX_MTU = 65507  # the largest UDP payload over IPv4

_DATA = 0x01
_ACK = 0x02
_FIN = 0x03
_ACK_REQUEST = 0x10  # on an ACK frame: answer with an ACK (a window probe)
_FIRST = 0x10
_LAST = 0x20
_FIRST_LAST = _FIRST | _LAST
_FIRST_LAST_DATA = _DATA | _FIRST | _LAST  # a whole message in one DATA frame

_SEQ_SPACE = 1 << 32
_SEQ_MASK = _SEQ_SPACE - 1
_SEQ_HALF = 1 << 31

_HEAD = struct.Struct("!BBI")  # demux, type, sequence number / cumulative point
_BODY_HEAD = struct.Struct("!BI")  # the same without the demux byte: where a body starts
_WINDOW_COUNT = struct.Struct("!IB")  # an ACK's receive window and SACK range count
_CRC = struct.Struct("<I")  # the crc32c is appended least significant byte first
_CRC_RESIDUE = 0x48674BC7
"""crc32c of any bytes followed by their own crc32c, little-endian (module docstring)."""
_RANGE = struct.Struct("!II")
_CRC_SIZE = 4
_SEQ_END = _HEAD.size  # where a DATA frame's fragment starts
_unpack_body_head = _BODY_HEAD.unpack_from
_crc32c_of = _crc32c.crc32c
_FIRST_BYTE_CRC = tuple(_crc32c.crc32c(bytes((first,))) for first in range(256))
"""crc32c of each one-byte prefix: a frame's crc continues from its first byte's."""
_RANDOM_BLOCK = 256  # bytes drawn from rng at a time for the first bytes of sealed frames
_DATA_OVERHEAD = _HEAD.size + _CRC_SIZE  # 10
_ACK_RANGES = _HEAD.size + 4 + 1  # where an ACK frame's ranges start: 11
_ACK_FIXED = _ACK_RANGES + _CRC_SIZE  # 15
_MAX_WINDOW = _SEQ_HALF // 4
_PLAIN_PREFIX = bytes((PLAIN_FIRST_BYTE,))


def _unwrap(expected: int, value: int) -> int:
    """The integer nearest to ``expected`` whose low 32 bits are ``value`` (serial number
    arithmetic in the style of RFC 1982; QUIC decodes packet numbers the same way)."""
    candidate = (expected & ~_SEQ_MASK) | value
    if candidate - expected > _SEQ_HALF:
        candidate -= _SEQ_SPACE
    elif expected - candidate >= _SEQ_HALF:
        candidate += _SEQ_SPACE
    return candidate


def is_reliable_frame(data: bytes) -> bool:
    """Whether a datagram received on an ICE pair belongs to the channel (first byte in
    192-255, RFC 7983 §7), rather than to STUN (0-3) or TURN ChannelData (64-79)."""
    return len(data) > 0 and data[0] >= FIRST_BYTE_MIN


# --------------------------------------------------------------------------- errors


class ReliableChannelError(AnchorError):
    """Anything the reliable datagram channel refuses or reports as an exception."""


class ReliableChannelFull(ReliableChannelError):
    """Backpressure: the message does not fit in the send window now. Nothing was queued;
    wait for :class:`SendWindowOpen` (or poll ``can_send``) and send it again."""


class ReliableStateError(ReliableChannelError, LocalProtocolError):
    """``send()`` on a channel that is closing or closed."""


class MessageTooLarge(ReliableChannelError, LocalProtocolError):
    """``send()`` of a message longer than ``max_message`` bytes."""


class SealError(ReliableChannelError):
    """Sealing or opening a frame failed (:mod:`anchor_link.seal`), or keys could not be
    agreed."""


class AuthenticationFailed(SealError):
    """A sealed frame did not authenticate (wrong key or context, or altered on the way)."""


class ReplayDetected(SealError):
    """A sealed frame's packet counter was already seen, or is older than the replay window."""


# --------------------------------------------------------------------------- sealing hook


class FrameSealer(Protocol):
    """What the channel needs from a sealer (:class:`anchor_link.seal.Sealer` is one).

    ``seal`` turns a plaintext frame's first byte and the rest of it into the wire bytes;
    ``open`` reverses it, returning the rest of the frame (everything after the first byte)
    or raising :class:`AuthenticationFailed` / :class:`ReplayDetected`.
    """

    @property
    def overhead(self) -> int:
        """Bytes a sealed frame adds to a plaintext one."""
        ...

    def seal(self, first_byte: int, rest: bytes) -> bytes:
        """The wire form of the frame ``bytes([first_byte]) + rest``."""
        ...

    def open(self, data: bytes) -> bytes:
        """The frame after its first byte, from a sealed datagram ``data``."""
        ...


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ReliableEvent(StunEvent):
    """Base of the events :class:`ReliableChannel` emits through ``next_event()`` (a
    :class:`~anchor_stun.events.StunEvent`, like the TURN and ICE events, so one driver loop
    can dispatch on one base)."""


@dataclass(frozen=True, slots=True)
class MessageReceived(ReliableEvent):
    """A whole message arrived, in order, exactly once."""

    data: bytes
    """The message, as the peer passed it to ``send()``."""


@dataclass(frozen=True, slots=True)
class SendWindowOpen(ReliableEvent):
    """Acknowledgements made room in the send window after ``send()`` raised
    :class:`ReliableChannelFull` (or ``can_send()`` said no)."""

    writable_bytes: int
    """The longest message ``send()`` would accept now."""


@dataclass(frozen=True, slots=True)
class ReliableIdle(ReliableEvent):
    """No application datagram was sent or received for ``idle_timeout`` seconds
    (docs/design.md "Idle"). Reported once per idle period; the channel stays open."""

    last_activity: float
    """When the last message was accepted by ``send()`` or new data arrived (or the channel
    was created)."""


class CloseReason(StrEnum):
    """Why a channel closed (the ``reason`` of :class:`ReliableClosed`)."""

    LOCAL = "closed"
    """This side called ``close()`` first; the handshake completed."""
    PEER = "closed by peer"
    """The peer closed first; the handshake completed."""
    UNREACHABLE = "peer unreachable"
    """A frame went unacknowledged through every retransmission; nothing was handshaken."""


@dataclass(frozen=True, slots=True)
class ReliableClosed(ReliableEvent):
    """The channel reached CLOSED; nothing more will be delivered or sent (but ACKs of a
    retransmitted FIN)."""

    reason: CloseReason
    """Who closed it, or "peer unreachable"."""


# --------------------------------------------------------------------------- state


class ReliableState(Enum):
    """Life cycle of a channel (see the module docstring)."""

    OPEN = "open"
    """Messages flow both ways."""
    CLOSING = "closing"
    """A FIN was queued (ours, after ``close()`` or the peer's FIN); the peer may still be
    sending; ``send()`` is refused."""
    CLOSED = "closed"
    """Both FINs exchanged, or the peer was unreachable. Final."""


class _Input(Enum):
    CLOSE = "close()"
    PEER_FIN = "peer FIN received"
    HANDSHAKE_DONE = "own FIN acked and peer FIN received"
    GIVE_UP = "retransmission limit"


_S = ReliableState
# The states as module names: an enum member looked up through its class costs about 90 ns
# in CPython 3.11, more than the rest of a state test; send() and the receive path make one.
_OPEN, _CLOSING, _CLOSED = ReliableState.OPEN, ReliableState.CLOSING, ReliableState.CLOSED
_TRANSITIONS: dict[tuple[ReliableState, _Input], ReliableState] = {
    (_S.OPEN, _Input.CLOSE): _S.CLOSING,
    (_S.OPEN, _Input.PEER_FIN): _S.CLOSING,
    (_S.OPEN, _Input.GIVE_UP): _S.CLOSED,
    (_S.CLOSING, _Input.HANDSHAKE_DONE): _S.CLOSED,
    (_S.CLOSING, _Input.GIVE_UP): _S.CLOSED,
}
"""Every state change: (state, input) -> next state. Other pairs change nothing."""


@dataclass(slots=True)
class ReliableStats:
    """Counters of a channel; ``ReliableChannel.stats`` returns a copy."""

    frames_sent: int = 0
    """Frames handed to the adapter (DATA, FIN, ACK, retransmissions included)."""
    frames_received: int = 0
    """Frames that passed the crc32c (and opened, when sealed) and parsed."""
    messages_sent: int = 0
    """Messages accepted by ``send()``."""
    messages_received: int = 0
    """Messages delivered as :class:`MessageReceived`."""
    messages_acked: int = 0
    """Messages sent whose every frame the peer acknowledged cumulatively: delivered to the
    peer's application (its channel delivers a message once its last frame is in order),
    in the order they were sent."""
    bytes_sent: int = 0
    """Message bytes accepted by ``send()``."""
    bytes_received: int = 0
    """Message bytes delivered."""
    retransmissions: int = 0
    """DATA and FIN frames sent again (after an RTO or a fast retransmit)."""
    fast_retransmits: int = 0
    """Frames deemed lost from acknowledgements (RACK, RFC 8985 §6: packet or time threshold)
    before any timer expired, retransmissions included."""
    probes: int = 0
    """Tail-loss probes sent (RFC 8985 §7, RFC 9002 §6.2): retransmissions at the probe
    timeout."""
    timeouts: int = 0
    """Expirations of the retransmission timer (RFC 6298 §5.4)."""
    duplicates: int = 0
    """DATA and FIN frames received again."""
    dropped_crc: int = 0
    """Frames whose crc32c did not match."""
    dropped_auth: int = 0
    """Sealed frames that did not authenticate."""
    dropped_replay: int = 0
    """Sealed frames rejected by the replay window."""
    dropped_invalid: int = 0
    """Frames too short, of an unknown type, inconsistent, or not in the channel's range."""
    dropped_window: int = 0
    """DATA frames too far ahead of the receive window."""
    srtt: float | None = None
    """Smoothed round-trip time (RFC 6298 §2), None before the first sample."""
    rttvar: float | None = None
    """Round-trip time variation (RFC 6298 §2), None before the first sample."""
    rto: float = RTO_INITIAL
    """The current retransmission timeout, backoff included."""
    congestion_window: int = 0
    """Bytes the congestion controller lets be in flight (RFC 9002 §7)."""
    ssthresh: int | None = None
    """Slow start threshold in bytes, None while infinite (RFC 9002 §7.3.1)."""
    bytes_in_flight: int = 0
    """Bytes of DATA and FIN frames sent and neither acknowledged nor declared lost."""
    congestion_events: int = 0
    """Window reductions for loss, at most one per round trip (RFC 9002 §7.3.2)."""
    persistent_congestion: int = 0
    """Collapses of the window to its minimum (RFC 9002 §7.6.2, or a retransmission
    timeout)."""
    window_probes: int = 0
    """ACK requests sent while the peer's receive window was closed (the persist timer)."""
    peer_window: int = 0
    """Frames the peer's receive window still lets this side send for the first time."""


_Sent = list[Any]
"""A DATA or FIN frame sent and held until it is acknowledged, made at its first
transmission (before it, a frame is only its type and payload in the queue): a list
indexed by the names below. A list, not a slotted dataclass: making one costs 55 ns
against 220 ns, a quarter of what a frame's first transmission costs besides building its
bytes (measured in CPython 3.11), and every frame sent makes one."""
_TYPE = 0  # the type byte, flags included
_PAYLOAD = 1
_SENT_AT = 2  # when its latest transmission left
_TX_ORDER = 3  # transmission number of the latest transmission
_TRANSMISSIONS = 4
_COUNTED = 5  # its bytes in the congestion controller's bytes_in_flight (0: none)
_WIRE = 6  # a plaintext frame's bytes (the same at every transmission), else None
_SACKED = 7
_KNOWN_LOST = 8  # its previous copy was known lost when it was queued again


# --------------------------------------------------------------------------- the channel


class ReliableChannel:
    """A message-oriented reliable channel over a datagram path, sans-I/O (module docstring).

    Keyword arguments (all sizes in bytes unless said otherwise):

    - ``mtu``: UDP payload bytes per frame (default 1200);
    - ``send_window``: most unacknowledged frames (default 128); it must hold a
      ``max_message`` message;
    - ``receive_window``: frames the receiver holds at most, messages delivered but not read
      yet included; what is left of it is advertised in every ACK (flow control; default
      ``2 * send_window``);
    - ``peer_receive_window``: the peer's receive window assumed until its first ACK tells
      (frames; default ``receive_window``: both ends of a link have the same settings);
    - ``manual_release``: a delivered message holds its frames of the receive window until
      the application read it, ``release()`` (default False: the frames are free once
      the message is delivered, and the window bounds only what waits for a hole);
    - ``max_message``: longest message (default 65536);
    - ``idle_timeout``: seconds without application data before :class:`ReliableIdle`
      (default 30);
    - ``rto_initial``, ``rto_min``, ``rto_max``: RFC 6298 timer bounds (1, 0.2, 60 s; the RTO
      is never below 2 SRTT either);
    - ``max_retransmissions``: RTO expirations in a row before "peer unreachable" (8);
    - ``seal``: a :class:`FrameSealer` (e.g. :class:`anchor_link.seal.Sealer`), or None for
      plaintext frames;
    - ``rng``: random bytes, used for the first byte of sealed frames;
    - ``now``: when the channel opened; starts the idle clock (None: at the first activity);
    - ``congestion_control``: ``"newreno"`` (default, RFC 9002 §7) or ``"cubic"`` (RFC 9438),
      :data:`~anchor_link.congestion.CONGESTION_CONTROLLERS`.

    Bad arguments raise :class:`~anchor_stun.errors.LocalProtocolError`.
    """

    def __init__(
        self,
        *,
        mtu: int = DEFAULT_MTU,
        send_window: int = DEFAULT_SEND_WINDOW,
        receive_window: int | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        rto_initial: float = RTO_INITIAL,
        rto_min: float = RTO_MIN,
        rto_max: float = RTO_MAX,
        max_retransmissions: int = DEFAULT_MAX_RETRANSMISSIONS,
        seal: FrameSealer | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        now: float | None = None,
        peer_receive_window: int | None = None,
        manual_release: bool = False,
        congestion_control: str = DEFAULT_CONGESTION_CONTROL,
    ) -> None:
        if seal is not None and not all(
            hasattr(seal, name) for name in ("overhead", "seal", "open")
        ):
            raise LocalProtocolError(
                f"seal must be a FrameSealer (a Sealer) or None, not {type(seal).__name__}"
            )
        count(mtu, "mtu", _MIN_MTU, _MAX_MTU)
        count(max_message, "max_message", 0)
        count(send_window, "send_window", 1, _SEQ_HALF // 4)
        for window, what in (
            (receive_window, "receive_window"), (peer_receive_window, "peer_receive_window")
        ):
            if window is not None:
                count(window, what, 1, _MAX_WINDOW)
        for value, what in (
            (rto_initial, "rto_initial"), (rto_min, "rto_min"), (rto_max, "rto_max"),
            (idle_timeout, "idle_timeout"),
        ):
            seconds(value, what)
        count(max_retransmissions, "max_retransmissions", 0)
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        if now is not None and (isinstance(now, bool) or not isinstance(now, int | float)):
            raise LocalProtocolError(f"now must be a time in seconds or None, not {now!r}")
        overhead = seal.overhead if seal is not None else 0
        payload = mtu - _DATA_OVERHEAD - overhead
        if payload < 1:
            raise LocalProtocolError(f"mtu {mtu} leaves no room for data")
        if max_message < 0:
            raise LocalProtocolError("max_message must not be negative")
        if not 1 <= send_window <= _SEQ_HALF // 4:
            raise LocalProtocolError(f"send_window out of range: {send_window}")
        if _frames_for(max_message, payload) > send_window:
            raise LocalProtocolError(
                f"send_window {send_window} cannot hold a {max_message}-byte message "
                f"({_frames_for(max_message, payload)} frames of {payload} bytes)"
            )
        if receive_window is None:
            receive_window = 2 * send_window
        if not 1 <= receive_window <= _MAX_WINDOW:
            raise LocalProtocolError(f"receive_window out of range: {receive_window}")
        if _frames_for(max_message, payload) > receive_window:
            # A message is delivered only once whole, and its frames count against the window
            # until then: a window smaller than a largest message would close on a half-received
            # one, and neither side could go on.
            raise LocalProtocolError(
                f"receive_window {receive_window} cannot hold a {max_message}-byte message "
                f"({_frames_for(max_message, payload)} frames of {payload} bytes)"
            )
        if peer_receive_window is None:
            peer_receive_window = receive_window
        if not 1 <= peer_receive_window <= _MAX_WINDOW:
            raise LocalProtocolError(f"peer_receive_window out of range: {peer_receive_window}")
        if not 0 < rto_min <= rto_initial <= rto_max:
            raise LocalProtocolError("need 0 < rto_min <= rto_initial <= rto_max")
        if idle_timeout <= 0:
            raise LocalProtocolError("idle_timeout must be positive")
        if max_retransmissions < 0:
            raise LocalProtocolError("max_retransmissions must not be negative")
        controller = CONGESTION_CONTROLLERS.get(congestion_control)
        if controller is None:
            raise LocalProtocolError(
                f"congestion_control must be one of {', '.join(CONGESTION_CONTROLLERS)}, "
                f"not {congestion_control!r}"
            )

        self._mtu = mtu
        self._payload = payload
        self._send_window = send_window
        self._receive_window = receive_window
        self._max_message = max_message
        self._idle_timeout = idle_timeout
        self._rto_min = rto_min
        self._rto_max = rto_max
        self._max_retransmissions = max_retransmissions
        self._sealer = seal
        self._rng = rng
        self._random = b""  # drawn from rng, for the first bytes of sealed frames
        self._random_at = 0
        self._ack_max_ranges = max(0, min(ACK_MAX_RANGES, (mtu - _ACK_FIXED - overhead) // 8))
        self._frame_overhead = _DATA_OVERHEAD + overhead  # wire bytes of a frame: payload + this
        self._manual_release = manual_release

        self._state = _OPEN
        self._events: deque[ReliableEvent] = deque()
        self._stats = ReliableStats(rto=rto_initial)

        # Sender (sequence numbers are unbounded ints here, 32 bits on the wire).
        self._out: dict[int, _Sent] = {}  # frames sent, snd_una..snd_sent
        self._unsent: deque[tuple[int, bytes]] = deque()  # (type, payload), snd_sent..snd_next
        self._snd_una = 0  # oldest unacknowledged
        self._snd_sent = 0  # next never-transmitted
        self._snd_next = 0  # next to assign
        self._retransmit: set[int] = set()
        self._tx_counter = 0
        self._rto = rto_initial
        self._srtt: float | None = None
        self._rttvar: float | None = None
        self._min_rtt: float | None = None
        self._rto_deadline: float | None = None
        self._backoffs = 0
        # RACK (RFC 8985 §6): the latest transmission known delivered, and its RTT.
        self._rack_tx = -1
        self._rack_rtt = 0.0
        self._loss_deadline: float | None = None  # RACK's reordering timer
        self._reordering_seen = False  # RFC 8985 §6.2 step 3
        # Tail-loss probe (RFC 8985 §7).
        self._last_tx = 0.0  # when the latest DATA / FIN frame went out
        self._probes = 0  # probes since the last acknowledgement of anything new
        self._pto_deadline: float | None = None
        self._blocked = False
        # Congestion control (anchor_link.congestion): CUBIC or NewReno, and the pacer.
        self._cc: CongestionController = controller(mtu)
        self._pacer = Pacer(initial_window(mtu))
        self._pace_deadline: float | None = None  # the pacer holds a frame until then
        self._first_sample_at: float | None = None  # persistent congestion counts after it
        # Flow control: the peer's right edge (first sequence number it does not accept yet),
        # and the persist timer that asks it for an ACK while that edge holds us back.
        self._snd_limit = peer_receive_window
        self._snd_limit_known = False  # set by the first ACK (the assumption may be too high)
        self._persist_deadline: float | None = None
        self._persist_backoff = 0  # ACK requests since the peer's window last opened
        self._persist_unanswered = 0  # ACK requests since the last ACK
        self._ack_request = False  # send an ACK with the ACK_REQUEST flag
        self._fin_seq: int | None = None  # ours
        self._fin_acked = False
        self._closed_first = False

        # Receiver.
        self._rcv_next = 0
        self._rcv_buf: dict[int, tuple[int, bytes]] = {}
        self._unread = 0  # frames of delivered messages the application has not read
        self._unread_frames: deque[int] = deque()  # frames of each, oldest first
        self._adv_edge = receive_window  # the highest right edge advertised
        self._ack_owed = False
        self._ack_repeat = False  # send the next ACK twice (see datagrams_to_send)
        self._partial: list[bytes] | None = None
        self._partial_size = 0
        self._skip_message = False
        self._peer_fin = False
        # Nothing buffered, no message half reassembled, no FIN, not closed: receive_datagrams
        # may take a whole in-order message without its handler (recomputed after every frame
        # a handler takes, and at every change of state).
        self._rcv_simple = True

        # Idle.
        self._last_activity: float | None = now
        # The _last_activity that ReliableIdle was reported for: activity moves _last_activity
        # on (to a later time, since the report came idle_timeout after it), which re-arms idle.
        self._idle_reported_for: float | None = None

    # ----------------------------------------------------------------- properties

    @property
    def state(self) -> ReliableState:
        """The current :class:`ReliableState`."""
        return self._state

    @property
    def stats(self) -> ReliableStats:
        """A snapshot of the counters and the RTT estimator."""
        cc = self._cc
        return dataclasses.replace(
            self._stats,
            srtt=self._srtt,
            rttvar=self._rttvar,
            rto=self._rto,
            congestion_window=cc.congestion_window,
            ssthresh=cc.ssthresh,
            bytes_in_flight=cc.bytes_in_flight,
            congestion_events=cc.congestion_events,
            persistent_congestion=cc.persistent_congestion,
            peer_window=max(0, self._snd_limit - self._snd_sent),
        )

    @property
    def messages_acked(self) -> int:
        """Messages sent whose every frame the peer acknowledged cumulatively (delivered to
        it, in order): :attr:`ReliableStats.messages_acked` without a snapshot."""
        return self._stats.messages_acked

    @property
    def congestion(self) -> CongestionController:
        """The congestion controller (RFC 9002 §7), for inspection: change nothing in it."""
        return self._cc

    @property
    def receive_window(self) -> int:
        """Frames the receiver can take now beyond the next expected one (what the next ACK
        advertises): ``receive_window`` less the frames of messages not read yet."""
        return max(0, self._receive_window - self._held())

    @property
    def max_fragment(self) -> int:
        """Message bytes per DATA frame: ``mtu`` minus framing (and sealing) overhead."""
        return self._payload

    @property
    def writable_bytes(self) -> int:
        """The longest message ``send()`` would accept now (0: none, not even an empty one)."""
        if self._state is not _OPEN:
            return 0
        free = self._free_frames()
        if free <= 0:
            return 0
        return min(self._max_message, free * self._payload)

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet acknowledged, cumulatively or selectively."""
        return sum(1 for f in self._out.values() if f[_TRANSMISSIONS] and not f[_SACKED])

    # ----------------------------------------------------------------- driver API

    def can_send(self, size: int) -> bool:
        """Whether ``send()`` of a ``size``-byte message would be accepted now. A False
        answer because the window is full arms :class:`SendWindowOpen`."""
        if self._state is not _OPEN or not 0 <= size <= self._max_message:
            return False
        need = 1 if size <= self._payload else _frames_for(size, self._payload)
        if need > self._send_window - (self._snd_next - self._snd_una):
            self._blocked = True
            return False
        return True

    def send(self, data: bytes, now: float) -> None:
        """Queue one message for reliable, in-order delivery; it goes out at the next
        ``datagrams_to_send``. Raises :class:`ReliableChannelFull` when the send window has no room
        for it (nothing is queued), :class:`MessageTooLarge` above ``max_message`` and
        :class:`ReliableStateError` once closing; the channel is unchanged after any of them."""
        if self._state is not _OPEN:
            raise ReliableStateError(f"cannot send: channel is {self._state.value}")
        size = len(data)
        if size > self._max_message:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds max_message {self._max_message}"
            )
        count = 1 if size <= self._payload else _frames_for(size, self._payload)
        free = self._send_window - (self._snd_next - self._snd_una)
        if count > free:
            self._blocked = True
            raise ReliableChannelFull(f"message needs {count} frames, the send window has {free}")
        if count == 1:  # the common case: no slicing (bytes are immutable: no copy either)
            self._unsent.append((_FIRST_LAST_DATA, data if type(data) is bytes else bytes(data)))
            self._snd_next += 1
        else:
            view = memoryview(data)
            for i in range(count):
                type_ = _DATA
                if i == 0:
                    type_ |= _FIRST
                if i == count - 1:
                    type_ |= _LAST
                chunk = bytes(view[i * self._payload : (i + 1) * self._payload])
                self._queue(type_, chunk)
        stats = self._stats
        stats.messages_sent += 1
        stats.bytes_sent += size
        self._last_activity = now

    def close(self, now: float) -> None:
        """Start the close handshake: a FIN goes out after every message already sent.
        Idempotent; :class:`ReliableClosed` reports the end."""
        if self._state is _OPEN:
            self._closed_first = True
            self._transition(_Input.CLOSE)
            self._queue_fin()

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one datagram from the pair: :meth:`receive_datagrams` with one item."""
        self.receive_datagrams((data,), now)

    def receive_datagrams(self, datagrams: Iterable[bytes], now: float) -> None:
        """Feed the datagrams of the pair that arrived together (a batch read at once), in
        the order they arrived. Never raises: anything malformed, corrupted, unauthenticated
        or replayed is dropped and counted in ``stats``. One call per batch costs less than
        one per datagram, and the next ``datagrams_to_send`` acknowledges them all with one
        ACK (module docstring, "Receiving")."""
        sealer = self._sealer
        stats = self._stats
        # A whole message in one frame, next in sequence, with nothing buffered (``simple``:
        # no hole, no half-reassembled message, no FIN, not closed) and room in the window is
        # the path of nearly every frame: it is taken here with the sequence point in a local
        # and the messages collected in ``whole`` for _messages (both handed over before
        # anything else runs, and at the end). Every other frame goes to its handler: _on_data
        # and _on_sequenced buffer it in sequence order and _deliver hands what is in order to
        # _reassemble.
        rcv_next = self._rcv_next
        simple = self._rcv_simple
        manual = self._manual_release
        max_message = self._max_message
        whole: list[bytes] = []
        frames = 0
        for data in datagrams:
            # ``body`` holds the frame from its type byte on, at ``start``: the plaintext
            # frame itself (start 1), or what the sealer opened (start 0, without the first
            # byte, which the crc covers all the same).
            if sealer is None:
                body = data if type(data) is bytes else bytes(data)
                size = len(body)
                if size < _DATA_OVERHEAD or body[0] != PLAIN_FIRST_BYTE:
                    stats.dropped_invalid += 1
                    continue
                if _crc32c_of(body) != _CRC_RESIDUE:
                    stats.dropped_crc += 1
                    continue
                start = 1
            else:
                if len(data) < 1 or data[0] < FIRST_BYTE_MIN:
                    stats.dropped_invalid += 1
                    continue
                try:
                    body = sealer.open(bytes(data))
                except ReplayDetected:
                    stats.dropped_replay += 1
                    continue
                except SealError:
                    stats.dropped_auth += 1
                    continue
                size = len(body) + 1
                if size < _DATA_OVERHEAD:
                    stats.dropped_invalid += 1
                    continue
                if _crc32c_of(body, _FIRST_BYTE_CRC[data[0]]) != _CRC_RESIDUE:
                    stats.dropped_crc += 1
                    continue
                start = 0
            kind, seq = _unpack_body_head(body, start)
            if (
                kind == _FIRST_LAST_DATA
                and seq == rcv_next & _SEQ_MASK
                and simple
                and (not manual or self._unread + len(whole) < self._receive_window)
            ):
                rcv_next += 1
                frames += 1
                if size - _DATA_OVERHEAD > max_message:
                    stats.dropped_invalid += 1
                    continue
                whole.append(body[start + _BODY_HEAD.size : -_CRC_SIZE])
                continue
            if frames:
                self._rcv_next = rcv_next
                self._ack_owed = True
                self._last_activity = now
                if whole:
                    self._messages(whole, 1)
                    whole = []
            handler = self._HANDLERS.get(kind & 0x0F)
            accepted = handler is not None and handler(
                self, body if start else bytes(data[:1]) + body, now
            )
            rcv_next = self._rcv_next
            simple = self._rcv_simple = (
                not self._rcv_buf
                and self._partial is None
                and not self._skip_message
                and not self._peer_fin
                and self._state is not _CLOSED
            )
            if not accepted:
                stats.dropped_invalid += 1
                continue
            stats.frames_received += 1
        if frames:
            self._rcv_next = rcv_next
            self._ack_owed = True
            self._last_activity = now
            stats.frames_received += frames
            if whole:
                self._messages(whole, 1)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The frames to send now on the selected pair, in order: an ACK if one is owed,
        retransmissions, then new DATA / FIN frames, as far as the congestion window, the
        pacer and the peer's receive window allow (module docstring)."""
        out: list[bytes] = []
        if self._ack_owed or self._ack_request:
            self._ack_owed = False
            body = self._ack_body(self._ack_request)
            self._ack_request = False
            out.append(self._encode(body))
            if self._ack_repeat:
                # The frames this ACK answers were duplicates or out of order: the peer is
                # recovering from a loss, and losing this ACK would cost it a timeout (the
                # receiver ACKs once per batch, not per frame). Send it twice.
                self._ack_repeat = False
                out.append(out[-1] if self._sealer is None else self._encode(body))
        if self._state is not _CLOSED and (
            self._retransmit or self._snd_sent < self._snd_next
        ):
            cc = self._cc
            room = cc.congestion_window - cc.bytes_in_flight
            budget = self._pacer.budget(now)
            counted = paced = 0  # bytes newly put in flight, bytes sent
            blocked = False  # by the congestion window
            if self._retransmit:
                ovh = self._frame_overhead
                retransmit = self._retransmit
                for seq in sorted(retransmit):
                    frame = self._out[seq]
                    size = len(frame[_PAYLOAD]) + ovh
                    if not frame[_COUNTED]:
                        # (A frame still in flight, a probe, is neither held by the window
                        # nor by the pacer: RFC 9002 §7.5.)
                        if counted + size > room:
                            blocked = True
                            break
                        if paced >= budget:
                            break
                        frame[_COUNTED] = size
                        counted += size
                    paced += size
                    out.append(self._retransmit_frame(seq, frame, now))
                    retransmit.discard(seq)
                    self._stats.retransmissions += 1
            limit = min(self._snd_next, self._snd_limit)
            if not self._retransmit and self._snd_sent < limit:
                sent, blocked = self._first_transmissions(
                    out, now, limit, room - counted, budget - paced
                )
                counted += sent
                paced += sent
            if counted or blocked:
                cc.on_sent(counted, blocked)
            if paced:
                self._pacer.on_sent(paced, now)
            self._pace_deadline = None
            if not blocked and (self._retransmit or self._snd_sent < limit):
                self._pace_deadline = self._pacer.next_send_time(now)  # held by the pacer
            self._arm_pto()
            self._arm_persist(now)
        self._stats.frames_sent += len(out)
        return out

    def next_timer(self) -> float | None:
        """The next deadline (RACK reordering timer, tail-loss probe, retransmission timeout,
        pacing, persist timer or idle), absolute, or None."""
        if self._state is _CLOSED:
            return None
        deadline = self._idle_deadline()
        for other in (
            self._loss_deadline,
            self._pto_deadline,
            self._rto_deadline,
            self._pace_deadline,
            self._persist_deadline,
        ):
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        return deadline

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed: RACK's reordering timer (RFC 8985 §6.3), the
        retransmission timeout (RFC 6298 §5.4-§5.6) or else the probe timeout (RFC 8985 §7.3),
        the pacer's release time (frames go out at the next ``datagrams_to_send``), the
        persist timer (an ACK request to a peer whose receive window holds us back), and idle
        expiry. An early call does nothing."""
        if self._state is _CLOSED:
            return
        if self._loss_deadline is not None and now >= self._loss_deadline:
            self._detect_losses(now)
            self._arm_pto()
        if self._rto_deadline is not None and now >= self._rto_deadline:
            if not self._on_rto(now):
                return  # gave up
        elif self._pto_deadline is not None and now >= self._pto_deadline:
            self._on_pto(now)
        if self._pace_deadline is not None and now >= self._pace_deadline:
            self._pace_deadline = None
        if self._persist_deadline is not None and now >= self._persist_deadline:
            if not self._on_persist(now):
                return  # gave up
        idle = self._idle_deadline()
        if idle is not None and now >= idle:
            self._idle_reported_for = self._last_activity
            self._events.append(ReliableIdle(self._last_active()))

    def next_event(self) -> ReliableEvent | None:
        """The oldest event not yet returned, or None."""
        return self._events.popleft() if self._events else None

    def release(self, messages: int, now: float) -> bool:
        """With ``manual_release``: the application has read the ``messages`` oldest messages
        delivered and not released yet; their frames leave the receive window (an ACK says so
        once the window grew by a quarter). A read is activity: the idle clock restarts, and
        it does not run at all while messages wait to be read (docs/design.md "Idle": the peer is
        held back, not silent). Returns whether an ACK is owed now (call
        ``datagrams_to_send``). Raises :class:`~anchor_stun.errors.LocalProtocolError` without
        ``manual_release``, or for more messages than are held (nothing changes then)."""
        if not self._manual_release:
            raise LocalProtocolError("release() needs manual_release=True")
        held = self._unread_frames
        if not 0 <= messages <= len(held):
            raise LocalProtocolError(f"release({messages}) with {len(held)} messages held")
        for _ in range(messages):
            self._unread -= held.popleft()
        if messages:
            self._last_activity = now
        if not self._ack_owed:
            self._maybe_window_update()
        return self._ack_owed

    # ----------------------------------------------------------------- sending internals

    def _free_frames(self) -> int:
        return self._send_window - (self._snd_next - self._snd_una)

    def _queue(self, type_: int, payload: bytes) -> int:
        seq = self._snd_next
        self._unsent.append((type_, payload))
        self._snd_next += 1
        return seq

    def _queue_fin(self) -> None:
        # The FIN may take the window one past send_window; receive_window leaves room.
        self._fin_seq = self._queue(_FIN, b"")

    def _retransmit_frame(self, seq: int, frame: _Sent, now: float) -> bytes:
        """The wire bytes of frame ``seq`` sent again, its transmission recorded."""
        frame[_TRANSMISSIONS] += 1
        frame[_SENT_AT] = now
        frame[_TX_ORDER] = self._tx_counter
        self._tx_counter += 1
        self._last_tx = now
        if self._rto_deadline is None:
            self._rto_deadline = now + self._rto  # RFC 6298 §5.1
        wire: bytes | None = frame[_WIRE]
        if wire is not None:
            return wire  # a plaintext frame is the same bytes at every transmission
        return self._encode(_BODY_HEAD.pack(frame[_TYPE], seq & _SEQ_MASK), frame[_PAYLOAD])

    def _first_transmissions(
        self, out: list[bytes], now: float, limit: int, room: int, budget: float
    ) -> tuple[int, bool]:
        """First transmissions of the queued frames below ``limit`` (the peer's receive
        window) while ``room`` bytes of congestion window are left and the pacer's ``budget``
        lasts (the last frame may overdraw it by up to one frame): each is built, recorded
        (a :data:`_Sent` record, made here with everything its transmission sets) and appended
        to ``out``. Returns the bytes sent and whether the congestion window stopped it."""
        frames = self._out
        unsent = self._unsent
        sealer = self._sealer
        tx = self._tx_counter
        ovh = self._frame_overhead
        pack_head, pack_crc, crc = _HEAD.pack, _CRC.pack, _crc32c_of
        sent = 0
        blocked = False
        # One test per frame for both limits: the pacer lets frames start while its budget
        # lasts, so the last one may overdraw it by up to a frame.
        cap = min(room, budget + self._mtu) if budget > 0 else 0
        seq = start = self._snd_sent
        while seq < limit:
            type_, payload = unsent.popleft()
            size = len(payload) + ovh
            if sent + size > cap:
                unsent.appendleft((type_, payload))
                blocked = sent + size > room
                break
            sent += size
            if sealer is None:
                head = pack_head(PLAIN_FIRST_BYTE, type_, seq & _SEQ_MASK) + payload
                wire = head + pack_crc(crc(head))
                frames[seq] = [type_, payload, now, tx, 1, size, wire, False, False]
            else:
                wire = self._encode(_BODY_HEAD.pack(type_, seq & _SEQ_MASK), payload)
                frames[seq] = [type_, payload, now, tx, 1, size, None, False, False]
            out.append(wire)
            tx += 1
            seq += 1
        if seq != start:
            self._snd_sent = seq
            self._tx_counter = tx
            self._last_tx = now
            if self._rto_deadline is None:
                self._rto_deadline = now + self._rto  # RFC 6298 §5.1
        return sent, blocked

    def _encode(self, body: bytes, payload: bytes = b"") -> bytes:
        """A frame from its body (everything between the first byte and the crc), given as
        ``body`` then ``payload`` (copied once, into the frame)."""
        sealer = self._sealer
        if sealer is None:
            first = PLAIN_FIRST_BYTE
        else:
            first = self._random_first_byte()
        crc = _CRC.pack(_crc32c_of(payload, _crc32c_of(body, _FIRST_BYTE_CRC[first])))
        if sealer is None:
            return b"".join((_PLAIN_PREFIX, body, payload, crc))
        return sealer.seal(first, b"".join((body, payload, crc)))

    def _random_first_byte(self) -> int:
        """A first byte for a sealed frame, random in 192-255 (module docstring, "Sealed
        frames"): ``rng`` is asked for :data:`_RANDOM_BLOCK` bytes at a time, used one per
        frame (one call to the random source per block, not per frame)."""
        at = self._random_at
        if at >= len(self._random):
            self._random = self._rng(_RANDOM_BLOCK)
            at = 0
        self._random_at = at + 1
        return FIRST_BYTE_MIN | (self._random[at] & 0x3F)

    def _held(self) -> int:
        """Frames of the receive window held: messages not read, a message half received."""
        partial = self._partial
        return self._unread if partial is None else self._unread + len(partial)

    def _maybe_window_update(self) -> None:
        """Owe an ACK once the window grew by a quarter of ``receive_window`` past the right
        edge last advertised (a sender held back by it learns it may go on; fewer updates
        would stall it, one per frame read would cost an ACK each; RFC 9293 §3.8.6.2.2)."""
        edge = self._rcv_next + self._receive_window - self._held()
        if edge - self._adv_edge >= max(1, self._receive_window // 4):
            self._ack_owed = True

    def _ack_body(self, request: bool = False) -> bytes:
        ranges: list[tuple[int, int]] = []
        if self._rcv_buf and self._ack_max_ranges:
            start = end = -1
            for seq in sorted(self._rcv_buf, reverse=True):
                if seq == start - 1:
                    start = seq
                    continue
                if end >= 0:
                    ranges.append((start, end))
                    if len(ranges) == self._ack_max_ranges:
                        break
                start, end = seq, seq + 1
            else:
                ranges.append((start, end))
        window = max(0, self._receive_window - self._held())
        edge = self._rcv_next + window
        if edge > self._adv_edge:
            self._adv_edge = edge
        kind = _ACK | _ACK_REQUEST if request else _ACK
        parts = [
            _HEAD.pack(0, kind, self._rcv_next & _SEQ_MASK)[1:],
            _WINDOW_COUNT.pack(window, len(ranges)),
        ]
        parts.extend(_RANGE.pack(s & _SEQ_MASK, e & _SEQ_MASK) for s, e in ranges)
        return b"".join(parts)

    def _on_rto(self, now: float) -> bool:
        """RFC 6298 §5.4-§5.6; False when the retransmission limit closed the channel."""
        self._stats.timeouts += 1
        if self._backoffs >= self._max_retransmissions:
            self._give_up()
            return False
        self._backoffs += 1
        # No probes until an acknowledgement: the backed-off timer paces retransmissions now.
        self._probes = MAX_PROBES
        self._pto_deadline = None
        expired = self._rto
        self._rto = min(self._rto * 2, self._rto_max)  # RFC 6298 §5.5
        self._rto_deadline = now + self._rto  # RFC 6298 §5.6
        # RFC 6298 §5.4: the earliest outstanding frame, and with it every other hole that has
        # been outstanding for a whole RTO itself (as if each frame had its own timer). Frames
        # sent more recently are left in flight: retransmitting them would be spurious and,
        # by Karn's rule, would rob the estimator of its samples.
        earliest = True
        lost = 0
        for seq in range(self._snd_una, self._snd_sent):
            frame = self._out[seq]
            if frame[_SACKED]:
                continue
            if earliest or now - frame[_SENT_AT] >= expired:
                self._retransmit.add(seq)
                frame[_KNOWN_LOST] = frame[_TX_ORDER] < self._rack_tx
                lost += frame[_COUNTED]
                frame[_COUNTED] = 0
            earliest = False
        # The frames retransmitted leave the flight; the window collapses (RFC 5681 §3.1's
        # loss window; RFC 9002 §7.6.2's persistent congestion: both probes went unanswered).
        cc = self._cc
        cc.bytes_in_flight -= lost
        cc.on_persistent_congestion(now)
        self._update_pacing_rate()
        return True

    def _arm_persist(self, now: float) -> None:
        """The persist timer (RFC 9293 §3.8.6.1): armed while frames wait only for the peer's
        receive window and nothing is outstanding (no ACK will come by itself to open it), at
        the RTO, doubled for every ACK request since the window last opened (at most
        ``rto_max``), answered or not: a peer that does not read is asked ever less often."""
        if (
            self._snd_sent < self._snd_next
            and self._snd_sent >= self._snd_limit
            and self._snd_una >= self._snd_sent
            and not self._retransmit
            and self._state is not _CLOSED
        ):
            if self._persist_deadline is None:
                wait = min(self._rto * (1 << min(self._persist_backoff, 16)), self._rto_max)
                self._persist_deadline = now + wait
        else:
            self._persist_deadline = None

    def _on_persist(self, now: float) -> bool:
        """The persist timer expired: send an ACK with the ACK_REQUEST flag, which the peer
        answers with an ACK carrying its window (a lost window update is found this way).
        False when ``max_retransmissions`` + 1 requests in a row went unanswered."""
        self._persist_deadline = None
        if self._persist_unanswered > self._max_retransmissions:
            self._give_up()
            return False
        self._persist_unanswered += 1
        self._persist_backoff += 1
        self._stats.window_probes += 1
        self._ack_request = True
        self._arm_persist(now)
        return True

    def _update_pacing_rate(self) -> None:
        if self._srtt is not None:
            self._pacer.update_rate(self._cc.congestion_window, self._srtt)

    def _on_pto(self, now: float) -> None:
        """RFC 8985 §7.3 (and RFC 9002 §6.2.4): no acknowledgement for a probe timeout. There is
        never new data to send instead (every queued frame goes out at once), so the probe is a
        retransmission of the earliest frame not acknowledged: the one holding the window.
        Nothing is declared lost; the acknowledgement the probe draws lets RACK find the rest.
        The RTO is restarted behind the probe (RFC 8985 §7.3)."""
        self._pto_deadline = None
        if self._snd_una >= self._snd_sent or self._snd_una in self._retransmit:
            return
        self._probes += 1
        self._stats.probes += 1
        self._retransmit.add(self._snd_una)
        probe = self._out[self._snd_una]
        probe[_KNOWN_LOST] = probe[_TX_ORDER] < self._rack_tx  # overtaken by a delivered frame
        self._rto_deadline = now + self._rto

    def _arm_pto(self) -> None:
        """Schedule the tail-loss probe (RFC 8985 §7.2): 2 SRTT after the latest transmission,
        doubled for each probe already sent without an acknowledgement, while frames are in
        flight, the RTT is known and neither RACK's timer nor retransmissions are pending."""
        srtt = self._srtt
        if (
            srtt is None
            or self._probes >= MAX_PROBES
            or self._loss_deadline is not None
            or self._retransmit
            or self._snd_una >= self._snd_sent
        ):
            self._pto_deadline = None
            return
        pto = max(PTO_SRTT * srtt, CLOCK_GRANULARITY) * (1 << self._probes)
        self._pto_deadline = self._last_tx + pto

    def _detect_losses(self, now: float) -> None:
        """RACK (RFC 8985 §6.2 step 5): a frame not acknowledged whose latest transmission came
        before that of a frame known delivered is lost when it is overdue by the reordering
        window, sent_at + RACK.rtt + reo_wnd <= now, with reo_wnd = min(min_rtt / 4, SRTT);
        or, until reordering has been seen on the path, as soon as ``DUP_THRESH``
        transmissions separate them (RFC 6675's DupThresh; QUIC's packet threshold, RFC 9002
        §6.1.1; what §6.2 step 4's reo_wnd = 0 stands for). Retransmissions are judged like
        first transmissions, so a lost retransmission is found as soon as a frame sent after
        it is acknowledged. Frames not yet overdue set the reordering timer (§6.3). (The
        window is not widened on spurious retransmissions as §6.2 step 4 does on DSACKs.)

        The frames found lost leave the flight and make one congestion event (RFC 9002
        §7.3.2); a run of them, with nothing delivered or still pending in between, sent
        after the first RTT sample over at least the persistent congestion duration, is
        persistent congestion (§7.6.2)."""
        self._loss_deadline = None
        rack_tx = self._rack_tx
        if rack_tx < 0:
            return
        reo_wnd = 0.0
        if self._min_rtt is not None and self._srtt is not None:
            reo_wnd = min(self._min_rtt / 4, self._srtt)
        threshold = self._rack_rtt + reo_wnd
        dup_thresh = _NO_DUP_THRESH if self._reordering_seen else DUP_THRESH
        out = self._out
        retransmit = self._retransmit
        deadline: float | None = None
        lost = 0  # bytes taken out of flight
        latest_lost = float("-inf")  # the latest send time of a frame found lost
        first_sample = self._first_sample_at
        if first_sample is None:
            first_sample = float("inf")
        run_first = run_last = span = 0.0  # persistent congestion: the current run of losses
        in_run = False
        # Frames are first sent in sequence order and a retransmission takes a later
        # transmission number, so every frame after one sent only once was transmitted after
        # it: once such a frame is not before the RACK frame, no later one is.
        for seq in range(self._snd_una, self._snd_sent):
            frame = out[seq]
            tx = frame[_TX_ORDER]
            if tx >= rack_tx:
                if frame[_TRANSMISSIONS] == 1:
                    break
                continue
            if seq in retransmit:
                continue  # lost before: the run goes on
            if frame[_SACKED]:
                in_run = False
                continue
            sent_at = frame[_SENT_AT]
            due = sent_at + threshold
            if due <= now or tx + dup_thresh <= rack_tx:
                retransmit.add(seq)
                frame[_KNOWN_LOST] = True
                self._stats.fast_retransmits += 1
                lost += frame[_COUNTED]
                frame[_COUNTED] = 0
                if sent_at > latest_lost:
                    latest_lost = sent_at
                if sent_at > first_sample:
                    if not in_run:
                        in_run, run_first, run_last = True, sent_at, sent_at
                    elif sent_at < run_first:
                        run_first = sent_at
                    elif sent_at > run_last:
                        run_last = sent_at
                    if run_last - run_first > span:
                        span = run_last - run_first
            else:
                in_run = False
                if deadline is None or due < deadline:
                    deadline = due
        self._loss_deadline = deadline
        if latest_lost > float("-inf"):
            cc = self._cc
            cc.bytes_in_flight -= lost
            cc.on_lost(latest_lost, now)
            srtt, rttvar = self._srtt, self._rttvar
            if (
                srtt is not None
                and rttvar is not None
                and span >= cc.persistent_congestion_duration(srtt, rttvar)
            ):
                cc.on_persistent_congestion(now)  # RFC 9002 §7.6.2
            self._update_pacing_rate()

    def _give_up(self) -> None:
        self._transition(_Input.GIVE_UP)
        self._out.clear()
        self._unsent.clear()
        self._retransmit.clear()
        self._rcv_buf.clear()
        self._rto_deadline = self._pto_deadline = self._loss_deadline = None
        self._pace_deadline = self._persist_deadline = None
        self._events.append(ReliableClosed(CloseReason.UNREACHABLE))

    def _rtt_sample(self, r: float, now: float) -> None:
        """RFC 6298 §2.2 / §2.3, with the floor of the module docstring; min_rtt for RACK."""
        if self._min_rtt is None or r < self._min_rtt:
            self._min_rtt = r
        if self._srtt is None or self._rttvar is None:
            self._first_sample_at = now
            self._srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar = (1 - _BETA) * self._rttvar + _BETA * abs(self._srtt - r)
            self._srtt = (1 - _ALPHA) * self._srtt + _ALPHA * r
        rto = self._srtt + max(CLOCK_GRANULARITY, _K * self._rttvar)
        floor = max(self._rto_min, RTO_SRTT_FLOOR * self._srtt)  # RFC 6298 §2.4 (see above)
        self._rto = min(max(rto, floor), self._rto_max)  # RFC 6298 §2.5

    # ----------------------------------------------------------------- receiving internals

    def _on_data(self, frame: bytes, now: float) -> bool:
        flags = frame[1] & 0xF0
        if flags & ~(_FIRST | _LAST):
            return False
        return self._on_sequenced(_HEAD.unpack_from(frame)[2], frame[1], frame[6:-_CRC_SIZE], now)

    def _on_fin(self, frame: bytes, now: float) -> bool:
        if frame[1] != _FIN or len(frame) != _HEAD.size + _CRC_SIZE:
            return False
        return self._on_sequenced(_HEAD.unpack_from(frame)[2], _FIN, b"", now)

    def _on_sequenced(self, wire_seq: int, type_: int, payload: bytes, now: float) -> bool:
        seq = _unwrap(self._rcv_next, wire_seq)
        if seq < self._rcv_next or seq in self._rcv_buf:
            self._stats.duplicates += 1
            self._ack_owed = self._ack_repeat = True
            return True
        if self._state is _CLOSED or self._peer_fin:
            return False  # nothing follows the peer's FIN
        if seq >= self._rcv_next + self._receive_window - self._held():
            self._stats.dropped_window += 1
            self._ack_owed = self._ack_repeat = True
            return True
        self._ack_owed = True
        if type_ != _FIN:
            self._last_activity = now
        if seq != self._rcv_next:
            self._ack_repeat = True  # out of order: the peer recovers from a loss
            self._rcv_buf[seq] = (type_, payload)
            return True
        if self._rcv_buf:
            self._ack_repeat = True  # filling a hole
        self._deliver(type_, payload)
        return True

    def _deliver(self, type_: int, payload: bytes) -> None:
        """Deliver the frame that is next in sequence, then every buffered one it puts in
        order: their fragments go to _reassemble, and a FIN ends the peer's side."""
        buffered = self._rcv_buf
        while True:
            self._rcv_next += 1
            if type_ == _FIN:
                self._on_peer_fin()
                return
            self._reassemble(type_, payload)
            if not buffered or self._rcv_next not in buffered:
                return
            type_, payload = buffered.pop(self._rcv_next)

    def _reassemble(self, type_: int, payload: bytes) -> None:
        """Put the fragments of a message together, in order; a message above ``max_message``
        or one missing its FIRST or LAST fragment is dropped and counted."""
        if type_ & _FIRST:
            if self._partial is not None or self._skip_message:
                self._stats.dropped_invalid += 1  # a message without its LAST fragment
            self._partial, self._partial_size, self._skip_message = [], 0, False
        elif self._partial is None:
            if not self._skip_message:
                self._stats.dropped_invalid += 1  # a fragment without its FIRST
            self._skip_message = not type_ & _LAST
            return
        assert self._partial is not None
        self._partial.append(payload)
        self._partial_size += len(payload)
        if self._partial_size > self._max_message:
            self._stats.dropped_invalid += 1
            self._partial, self._partial_size = None, 0
            self._skip_message = not type_ & _LAST
            return
        if type_ & _LAST:
            fragments = self._partial
            self._partial, self._partial_size = None, 0
            self._messages((b"".join(fragments),), len(fragments))

    def _messages(self, messages: Sequence[bytes], frames: int) -> None:
        """Whole messages, in order, of ``frames`` frames each: count them, hold their frames
        in the receive window until the application releases them (``manual_release``), and
        report them. The one place a message is delivered."""
        stats = self._stats
        count = len(messages)
        stats.messages_received += count
        stats.bytes_received += sum(map(len, messages))
        if self._manual_release:
            self._unread += count * frames
            self._unread_frames.extend(repeat(frames, count))
        self._events.extend(map(MessageReceived, messages))

    def _on_peer_fin(self) -> None:
        self._peer_fin = True
        if self._partial is not None:
            self._stats.dropped_invalid += 1
            self._partial, self._partial_size = None, 0
        self._stats.dropped_invalid += len(self._rcv_buf)  # frames after the FIN
        self._rcv_buf.clear()
        if self._state is _OPEN:
            self._transition(_Input.PEER_FIN)
            self._queue_fin()
        self._maybe_closed()

    def _on_ack(self, frame: bytes, now: float) -> bool:
        kind = frame[1]
        if kind & 0xEF != _ACK or len(frame) < _ACK_FIXED:
            return False
        window, count = _WINDOW_COUNT.unpack_from(frame, _SEQ_END)
        if len(frame) != _ACK_FIXED + 8 * count or window > _MAX_WINDOW:
            return False
        if kind & _ACK_REQUEST:
            self._ack_owed = True  # a window probe: answer it, even once closed
        if self._state is _CLOSED:
            return True
        # Validate everything before changing anything.
        cum = _unwrap(self._snd_una, _HEAD.unpack_from(frame)[2])
        if cum > self._snd_sent:
            return False  # acknowledges frames never sent
        ranges: list[tuple[int, int]] = []
        for i in range(count):
            s_w, e_w = _RANGE.unpack_from(frame, _ACK_RANGES + 8 * i)
            start = _unwrap(self._snd_una, s_w)
            end = start + ((e_w - s_w) & _SEQ_MASK)
            if end <= start or start <= cum or end > self._snd_sent:
                return False
            ranges.append((max(start, self._snd_una), end))

        # Flow control: the first ACK sets the peer's right edge, later ones only move it
        # forward (an ACK may come late).
        if cum + window > self._snd_limit or not self._snd_limit_known:
            self._snd_limit = cum + window
            self._snd_limit_known = True
            self._persist_backoff = 0
        self._persist_unanswered = 0
        self._persist_deadline = None

        # Newly acknowledged frames: ``latest``, the one sent once and last (Karn's rule, RFC
        # 6298 §3: only those give RTT samples), and ``again``, those sent more than once.
        out = self._out
        retransmit = self._retransmit
        newly = False
        latest: _Sent | None = None
        first_once: _Sent | None = None
        again: list[_Sent] = []
        una = self._snd_una
        rack_tx = self._rack_tx
        advanced = cum > una
        # Bytes leaving the flight, and those of frames sent after the recovery period began
        # (only these grow the window, RFC 9002 §7.3.2).
        acked = growth = 0
        recovery_start = self._cc.recovery_start
        if advanced:
            pop = out.pop
            delivered = 0  # messages whose LAST frame the cumulative point passed
            for seq in range(una, cum):
                done = pop(seq)
                if done[_TYPE] & _LAST:
                    delivered += 1
                if done[_SACKED]:
                    continue
                newly = True
                size = done[_COUNTED]
                if size:
                    acked += size
                    if done[_SENT_AT] > recovery_start:
                        growth += size
                if done[_TRANSMISSIONS] == 1:
                    latest = done  # sent once: sequence order is transmission order
                    if first_once is None:
                        first_once = done  # (so the earliest of them is the one to check)
                else:
                    again.append(done)
            if retransmit:
                retransmit.difference_update(range(una, cum))
            self._snd_una = cum
            self._stats.messages_acked += delivered
        for start, end in ranges:
            for seq in range(start, end):
                sacked = out[seq]
                if sacked[_SACKED]:
                    continue
                sacked[_SACKED] = True
                retransmit.discard(seq)
                newly = True
                size = sacked[_COUNTED]
                if size:
                    sacked[_COUNTED] = 0
                    acked += size
                    if sacked[_SENT_AT] > recovery_start:
                        growth += size
                if sacked[_TRANSMISSIONS] != 1:
                    again.append(sacked)
                else:
                    if sacked[_TX_ORDER] < rack_tx:
                        self._reordering_seen = True  # delivered after a later frame
                    if latest is None or sacked[_TX_ORDER] > latest[_TX_ORDER]:
                        latest = sacked
        if not newly:
            self._arm_persist(now)
            return True
        if acked:
            self._cc.on_acked(acked, growth, now, self._srtt)
        if first_once is not None and first_once[_TX_ORDER] < rack_tx:
            self._reordering_seen = True  # delivered after a later frame
        self._backoffs = 0
        self._probes = 0
        rack = latest
        if latest is not None and now >= latest[_SENT_AT]:
            self._rtt_sample(now - latest[_SENT_AT], now)
        if again and self._min_rtt is not None:
            # RFC 8985 §6.2 step 2: an acknowledgement of a retransmitted frame sooner than
            # min_rtt after its latest transmission must be for an earlier one, else it is
            # taken for the latest. (min_rtt less G: an ACK at exactly min_rtt is not early by
            # rounding.) When RACK had deemed that frame lost, the earlier one was only late:
            # the path reorders (what a DSACK would tell, §6.2 step 3).
            min_rtt = self._min_rtt
            early = min_rtt - CLOCK_GRANULARITY
            for frame_ in again:
                if not frame_[_KNOWN_LOST]:
                    continue  # a probe or RTO copy: its predecessor may be the one acked
                age = now - frame_[_SENT_AT]
                if age < early:
                    self._reordering_seen = True  # the predecessor was only late
                elif age >= min_rtt and (rack is None or frame_[_TX_ORDER] > rack[_TX_ORDER]):
                    rack = frame_
        if rack is not None and rack[_TX_ORDER] > self._rack_tx:
            self._rack_tx = rack[_TX_ORDER]  # RFC 8985 §6.2 step 2: RACK.xmit_ts
            self._rack_rtt = now - rack[_SENT_AT]  # RACK.rtt

        if self._snd_una >= self._snd_sent:  # the frame at snd_una is never SACKed
            self._rto_deadline = None  # RFC 6298 §5.2
        elif advanced:
            self._rto_deadline = now + self._rto  # RFC 6298 §5.3
        self._detect_losses(now)
        self._update_pacing_rate()
        self._arm_pto()
        self._arm_persist(now)

        if self._fin_seq is not None and self._snd_una > self._fin_seq:
            self._fin_acked = True
            self._maybe_closed()
        if self._blocked and self._state is _OPEN and self._free_frames() > 0:
            self._blocked = False
            self._events.append(SendWindowOpen(self.writable_bytes))
        return True

    _HANDLERS: dict[int, Callable[[ReliableChannel, bytes, float], bool]] = {
        _DATA: _on_data,
        _ACK: _on_ack,
        _FIN: _on_fin,
    }

    # ----------------------------------------------------------------- state, idle

    def _maybe_closed(self) -> None:
        if self._state is _CLOSING and self._fin_acked and self._peer_fin:
            self._transition(_Input.HANDSHAKE_DONE)
            self._rto_deadline = self._pto_deadline = self._loss_deadline = None
            self._pace_deadline = self._persist_deadline = None
            self._retransmit.clear()
            reason = CloseReason.LOCAL if self._closed_first else CloseReason.PEER
            self._events.append(ReliableClosed(reason))

    def _transition(self, event: _Input) -> None:
        self._state = _TRANSITIONS.get((self._state, event), self._state)
        if self._state is _CLOSED:
            self._rcv_simple = False

    def _last_active(self) -> float:
        assert self._last_activity is not None
        return max(self._last_activity, self._last_tx)

    def _idle_deadline(self) -> float | None:
        if (
            self._last_activity is None
            or self._idle_reported_for == self._last_activity
            or self._snd_una < self._snd_next
            or self._unread
        ):
            return None  # (a channel still delivering what it accepted, or held, is not idle)
        return self._last_active() + self._idle_timeout


def _frames_for(size: int, payload: int) -> int:
    """DATA frames a ``size``-byte message takes (an empty message takes one)."""
    return max(1, -(-size // payload))
