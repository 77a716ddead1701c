"""The reliable datagram channel (anchor_link.reliable): fake clock, in-memory network.

The network helper below is the only place randomness appears, from a seeded random.Random:
it drops, duplicates, reorders (extra delay) and corrupts frames in flight.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor_link.reliable import (
    FIRST_BYTE_MIN,
    PLAIN_FIRST_BYTE,
    CloseReason,
    MessageReceived,
    MessageTooLarge,
    ReliableChannel,
    ReliableChannelFull,
    ReliableClosed,
    ReliableEvent,
    ReliableIdle,
    ReliableState,
    ReliableStateError,
    SendWindowOpen,
    is_reliable_frame,
)
from anchor_stun.errors import AnchorError, LocalProtocolError

# --------------------------------------------------------------------------- helpers


@dataclass
class Network:
    """An in-memory datagram network between channels, with faults from a seeded rng.

    ``transfer(a, b, now)`` puts what ``a`` wants to send on the a->b wire and hands ``b``
    every frame on that wire that is due by ``now``.
    """

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.025
    jitter: float = 0.05
    drop_pattern: list[bool] | None = None
    """When set, frame i on the wire (both directions) is dropped if drop_pattern[i]; frames
    past its end are not dropped (``loss`` is not used)."""
    sent: list[bytes] = field(default_factory=list)
    """Every frame any channel sent, in order (before faults)."""
    corrupted: int = 0
    _wires: dict[int, list[tuple[float, int, bytes]]] = field(default_factory=dict)
    _order: int = 0

    def transfer(self, a: ReliableChannel, b: ReliableChannel, now: float) -> int:
        moved = 0
        wire = self._wires.setdefault(id(b), [])
        for data in a.datagrams_to_send(now):
            moved += 1
            index = len(self.sent)
            self.sent.append(data)
            if self.drop_pattern is not None:
                if index < len(self.drop_pattern) and self.drop_pattern[index]:
                    continue
            elif self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                frame = data
                if self.rng.random() < self.corrupt:
                    frame = flip_bit(frame, self.rng.randrange(8, 8 * len(frame)))
                    self.corrupted += 1
                at = now + self.delay
                if self.rng.random() < self.reorder:
                    at += self.rng.uniform(0, self.jitter)
                heapq.heappush(wire, (at, self._order, frame))
                self._order += 1
        while wire and wire[0][0] <= now:
            b.receive_datagram(heapq.heappop(wire)[2], now)
            moved += 1
        return moved

    def next_arrival(self) -> float | None:
        return min((w[0][0] for w in self._wires.values() if w), default=None)


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


@dataclass
class Harness:
    """Two channels on a Network, driven by an event-driven fake clock."""

    a: ReliableChannel
    b: ReliableChannel
    net: Network = field(default_factory=Network)
    now: float = 0.0
    events: dict[str, list[ReliableEvent]] = field(default_factory=lambda: {"a": [], "b": []})

    def pump(self, each: Callable[[], None] | None = None) -> None:
        """Exchange frames at ``now`` until nothing moves (calling ``each`` before every
        round, to feed the senders); collect events."""
        while True:
            if each is not None:
                each()
            if not self.net.transfer(self.a, self.b, self.now) + self.net.transfer(
                self.b, self.a, self.now
            ):
                break
        for name, ch in (("a", self.a), ("b", self.b)):
            while (event := ch.next_event()) is not None:
                self.events[name].append(event)

    def step(self) -> None:
        """Move the clock to the next timer or arrival and handle it."""
        times = [
            t
            for t in (self.a.next_timer(), self.b.next_timer(), self.net.next_arrival())
            if t is not None
        ]
        assert times, "deadlock: nothing pending"
        self.now = max(self.now, min(times))
        self.a.handle_timer(self.now)
        self.b.handle_timer(self.now)

    def run(
        self,
        until: Callable[[], bool],
        *,
        limit: float = 3600.0,
        each: Callable[[], None] | None = None,
    ) -> None:
        while True:
            self.pump(each)
            if until():
                return
            assert self.now < limit, f"not done by t={self.now}"
            self.step()

    def received(self, name: str) -> list[bytes]:
        return [e.data for e in self.events[name] if isinstance(e, MessageReceived)]

    def of(self, name: str, kind: type[ReliableEvent]) -> list[ReliableEvent]:
        return [e for e in self.events[name] if isinstance(e, kind)]


def events(ch: ReliableChannel) -> list[ReliableEvent]:
    out = []
    while (event := ch.next_event()) is not None:
        out.append(event)
    return out


def deliver(frames: list[bytes], to: ReliableChannel, now: float) -> None:
    for frame in frames:
        to.receive_datagram(frame, now)


def make_frame(body: bytes, first: int = PLAIN_FIRST_BYTE) -> bytes:
    head = bytes((first,)) + body
    return head + struct.pack("<I", crc32c.crc32c(head))


def mixed_messages(rng: random.Random, count: int) -> list[bytes]:
    """Sizes at every interesting edge and random ones, up to 64 KiB."""
    sizes = [0, 1, 1189, 1190, 1191, 2380, 65536, 65535, 4096]
    sizes += [rng.choice([rng.randrange(0, 300), rng.randrange(0, 65537)]) for _ in range(count)]
    return [rng.randbytes(n) for n in sizes]


# --------------------------------------------------------------------------- layout


def test_frame_layout_and_demux_range() -> None:
    a = ReliableChannel()
    a.send(b"hello", 0.0)
    [frame] = a.datagrams_to_send(0.0)
    assert frame == make_frame(bytes([0x31, 0, 0, 0, 0]) + b"hello")  # DATA FIRST|LAST seq 0
    assert frame[0] == 0xC2 and is_reliable_frame(frame)
    assert crc32c.crc32c(frame) == 0x48674BC7  # the residue of a crc appended little-endian
    # RFC 7983 first bytes of the protocols sharing the 5-tuple are not ours.
    for first in [*range(0, 4), *range(20, 64), *range(64, 80), *range(128, 192)]:
        assert not is_reliable_frame(bytes([first]) + frame[1:])
    assert not is_reliable_frame(b"")
    b = ReliableChannel()
    b.receive_datagram(frame, 0.0)
    [ack] = b.datagrams_to_send(0.0)
    # ACK cum 1, receive window 256 frames, no ranges
    assert ack == make_frame(bytes([0x02, 0, 0, 0, 1, 0, 0, 1, 0, 0]))
    assert events(b) == [MessageReceived(b"hello")]


def test_fragmentation_sizes() -> None:
    a = ReliableChannel()
    assert a.max_fragment == 1190
    a.send(bytes(65536), 0.0)
    frames = a.datagrams_to_send(0.0)
    assert len(frames) == 10  # the initial congestion window (RFC 9002 §7.2)
    b, now = ReliableChannel(), 0.0
    new = frames
    while new:
        deliver(new, b, now + 0.01)
        deliver(b.datagrams_to_send(now + 0.01), a, now + 0.02)
        now += 0.02
        new = a.datagrams_to_send(now)
        frames += new
    assert len(frames) == 56  # ceil(65536 / 1190)
    assert all(len(f) == 1200 for f in frames[:-1])
    assert len(frames[-1]) == 10 + 65536 - 55 * 1190
    assert [f[1] for f in frames[:2]] == [0x11, 0x01] and frames[-1][1] == 0x21


def test_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        ReliableChannel(send_window=10)  # a 64 KiB message needs 56 frames
    with pytest.raises(LocalProtocolError):
        ReliableChannel(mtu=10)
    with pytest.raises(LocalProtocolError):
        ReliableChannel(rto_min=2.0, rto_initial=1.0)
    a = ReliableChannel(mtu=100, send_window=8, max_message=720)
    with pytest.raises(MessageTooLarge) as info:
        a.send(bytes(721), 0.0)
    assert isinstance(info.value, LocalProtocolError) and isinstance(info.value, AnchorError)
    assert a.datagrams_to_send(0.0) == []


# --------------------------------------------------------------------------- must show 1


def test_lossy_network_delivers_every_message_once_in_order_intact() -> None:
    """Issue 6, must show 1: 10 % loss, reordering, duplication, some corruption."""
    rng = random.Random(6)
    net = Network(rng=random.Random(1), loss=0.10, duplicate=0.10, reorder=0.25, corrupt=0.02)
    h = Harness(ReliableChannel(), ReliableChannel(), net)
    to_b = mixed_messages(rng, 40)
    to_a = mixed_messages(rng, 20)
    queues = {"a": list(to_b), "b": list(to_a)}

    def feed() -> None:
        for name, ch in (("a", h.a), ("b", h.b)):
            q = queues[name]
            while q and ch.can_send(len(q[0])):
                ch.send(q.pop(0), h.now)

    h.run(
        lambda: len(h.received("b")) == len(to_b) and len(h.received("a")) == len(to_a), each=feed
    )
    assert h.received("b") == to_b
    assert h.received("a") == to_a
    sa, sb = h.a.stats, h.b.stats
    assert sa.messages_sent == len(to_b) and sb.messages_received == len(to_b)
    assert sa.retransmissions > 0 and sa.fast_retransmits > 0
    assert sb.duplicates > 0 and sa.duplicates > 0
    assert net.corrupted > 0
    # Corruption never touches the first byte here, so every corrupted frame that arrived
    # failed the crc32c (some were still in flight, or dropped by the loss, at the end).
    assert 0 < sa.dropped_crc + sb.dropped_crc <= net.corrupted
    assert sa.dropped_invalid == sb.dropped_invalid == 0
    assert h.of("a", SendWindowOpen)  # backpressure happened and released

    # Close under the same faults: both sides end closed, nothing else delivered.
    h.a.close(h.now)
    h.run(lambda: h.a.state is h.b.state is ReliableState.CLOSED)
    assert h.of("a", ReliableClosed) == [ReliableClosed(CloseReason.LOCAL)]
    assert h.of("b", ReliableClosed) == [ReliableClosed(CloseReason.PEER)]
    assert h.received("b") == to_b and h.received("a") == to_a


def test_corrupted_frame_dropped_by_crc_and_recovered() -> None:
    a, b = ReliableChannel(), ReliableChannel()
    message = bytes(range(256)) * 10  # 3 frames
    a.send(message, 0.0)
    f0, f1, f2 = a.datagrams_to_send(0.0)
    deliver([f0, flip_bit(f1, 8 * 100 + 3), f2], b, 0.25)
    assert b.stats.dropped_crc == 1
    assert events(b) == []
    ack, again = b.datagrams_to_send(0.25)  # cum 1, SACK [2, 3)
    assert again == ack  # out of order: the ACK goes twice, losing it would cost a timeout
    a.receive_datagram(ack, 0.5)
    # Only one frame after the hole was acknowledged: not DupThresh. f1 was sent with f2,
    # which came back after RACK.rtt = 0.5, so f1 is lost once it is overdue by the reordering
    # window min_rtt / 4 = 0.125 (RFC 8985 §6.2): RACK's timer, before the RTO (at 2.0).
    assert a.datagrams_to_send(0.5) == []
    assert a.next_timer() == 0.625
    a.handle_timer(0.624)
    assert a.datagrams_to_send(0.624) == []
    a.handle_timer(0.625)
    assert a.datagrams_to_send(0.625) == [f1]
    b.receive_datagram(f1, 0.875)
    assert events(b) == [MessageReceived(message)]
    s = a.stats
    assert (s.retransmissions, s.fast_retransmits, s.timeouts, s.probes) == (1, 1, 0, 0)


# --------------------------------------------------------------------------- RTO, RFC 6298


def test_rto_initial_backoff_and_karn() -> None:
    a, b = ReliableChannel(), ReliableChannel()
    a.send(b"x", 0.0)
    [f0] = a.datagrams_to_send(0.0)  # lost
    assert a.next_timer() == 1.0  # RFC 6298 §2.1, §5.1: RTO 1 s
    a.handle_timer(0.999)
    assert a.datagrams_to_send(0.999) == []
    a.handle_timer(1.0)
    assert a.datagrams_to_send(1.0) == [f0]  # §5.4
    assert a.stats.rto == 2.0 and a.next_timer() == 3.0  # §5.5 doubled, §5.6 restarted
    a.handle_timer(3.0)
    assert a.datagrams_to_send(3.0) == [f0]
    assert a.stats.rto == 4.0 and a.next_timer() == 7.0
    b.receive_datagram(f0, 3.25)
    a.receive_datagram(b.datagrams_to_send(3.25)[0], 3.5)
    # Karn (§3): the frame was sent three times, the ACK gives no sample; the backed-off RTO
    # stays; nothing outstanding, so the timer is off (§5.2): only the idle deadline is left
    # (30 s after the last transmission, at 3.0).
    s = a.stats
    assert (s.srtt, s.rttvar, s.rto) == (None, None, 4.0)
    assert a.next_timer() == 33.0
    assert s.retransmissions == 2 and s.timeouts == 2

    # First sample R = 0.5 (§2.2): SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR.
    a.send(b"y", 4.0)
    b.receive_datagram(a.datagrams_to_send(4.0)[0], 4.25)
    a.receive_datagram(b.datagrams_to_send(4.25)[0], 4.5)
    s = a.stats
    assert (s.srtt, s.rttvar, s.rto) == (0.5, 0.25, 1.5)
    # Second sample R' = 1.0 (§2.3): RTTVAR = 3/4 * 0.25 + 1/4 * |0.5 - 1.0| = 0.3125,
    # SRTT = 7/8 * 0.5 + 1/8 * 1.0 = 0.5625, RTO = 0.5625 + 4 * 0.3125 = 1.8125.
    a.send(b"z", 5.0)
    b.receive_datagram(a.datagrams_to_send(5.0)[0], 5.5)
    a.receive_datagram(b.datagrams_to_send(5.5)[0], 6.0)
    s = a.stats
    assert (s.srtt, s.rttvar, s.rto) == (0.5625, 0.3125, 1.8125)
    a.send(b"w", 7.0)
    [fw] = a.datagrams_to_send(7.0)
    # With an SRTT, a tail-loss probe comes first (RFC 8985 §7.2: 2 SRTT = 1.125), the RTO
    # (7 + 1.8125) behind it; the probe restarts the RTO (§7.3) and does not back it off.
    assert a.next_timer() == 8.125
    a.handle_timer(8.125)
    assert a.datagrams_to_send(8.125) == [fw]
    assert a.stats.probes == 1 and a.stats.rto == 1.8125
    # The second probe would wait twice as long (8.125 + 2.25): the RTO comes first.
    assert a.next_timer() == 8.125 + 1.8125
    a.handle_timer(9.9375)
    assert a.datagrams_to_send(9.9375) == [fw]
    assert a.stats.timeouts == 3 and a.stats.rto == 3.625

    # Karn with an estimate in place: a retransmitted frame's ACK leaves SRTT/RTTVAR alone
    # (and the backed-off RTO stays until a clean sample).
    b.receive_datagram(fw, 10.0)
    a.receive_datagram(b.datagrams_to_send(10.0)[0], 10.125)
    s = a.stats
    assert (s.srtt, s.rttvar, s.rto) == (0.5625, 0.3125, 3.625)


def test_rto_retransmits_earliest_and_frames_outstanding_a_whole_rto() -> None:
    a = ReliableChannel()
    a.send(b"early", 0.0)
    [f0] = a.datagrams_to_send(0.0)
    a.send(b"late", 0.5)
    [f1] = a.datagrams_to_send(0.5)
    assert a.next_timer() == 1.0  # one timer, started by the first frame (§5.1)
    a.handle_timer(1.0)
    assert a.datagrams_to_send(1.0) == [f0]  # §5.4: the earliest; f1 is only 0.5 s old
    assert a.next_timer() == 3.0
    a.handle_timer(3.0)
    assert a.datagrams_to_send(3.0) == [f0, f1]  # f1 has now been out 2.5 s >= RTO 2 s
    assert a.stats.retransmissions == 3


def test_rto_min_and_max() -> None:
    a, b = ReliableChannel(), ReliableChannel()
    a.send(b"x", 0.0)
    b.receive_datagram(a.datagrams_to_send(0.0)[0], 0.0078125)
    a.receive_datagram(b.datagrams_to_send(0.0078125)[0], 0.015625)
    s = a.stats
    # RTO = 0.015625 + 4 * 0.0078125 = 0.046875, raised to rto_min 0.2.
    assert (s.srtt, s.rttvar, s.rto) == (0.015625, 0.0078125, 0.2)

    c = ReliableChannel(max_retransmissions=20, idle_timeout=1000.0)
    c.send(b"lost forever", 0.0)
    c.datagrams_to_send(0.0)
    deadlines = []
    for _ in range(9):
        t = c.next_timer()
        assert t is not None
        deadlines.append(t)
        c.handle_timer(t)
        assert len(c.datagrams_to_send(t)) == 1
    # RTO 1, 2, 4, 8, 16, 32, then capped at 60 s (§2.5).
    assert deadlines == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 123.0, 183.0, 243.0]
    assert c.stats.rto == 60.0 and c.stats.timeouts == 9


def test_gives_up_after_max_retransmissions() -> None:
    a = ReliableChannel(max_retransmissions=2)
    a.send(b"x", 0.0)
    a.datagrams_to_send(0.0)
    for t in (1.0, 3.0):
        a.handle_timer(t)
        assert len(a.datagrams_to_send(t)) == 1
    assert a.next_timer() == 7.0
    a.handle_timer(7.0)
    assert a.state is ReliableState.CLOSED
    assert events(a) == [ReliableClosed(CloseReason.UNREACHABLE)]
    assert a.next_timer() is None and a.datagrams_to_send(7.0) == []
    with pytest.raises(ReliableStateError):
        a.send(b"y", 8.0)


# --------------------------------------------------------------------------- fast retransmit


def test_fast_retransmit_after_three_later_frames_acknowledged() -> None:
    a, b = ReliableChannel(), ReliableChannel()
    messages = [b"m0", b"m1", b"m2", b"m3", b"m4"]
    for m in messages:
        a.send(m, 0.0)
    f0, f1, f2, f3, f4 = a.datagrams_to_send(0.0)  # f0 is lost
    deliver([f1, f2], b, 0.05)
    ack, again = b.datagrams_to_send(0.05)
    window = [0, 0, 1, 0]  # 256 frames: nothing delivered yet
    assert ack == again == make_frame(bytes([0x02, 0, 0, 0, 0, *window, 1, 0, 0, 0, 1, 0, 0, 0, 3]))
    a.receive_datagram(ack, 0.1)
    a.receive_datagram(again, 0.1)  # changes nothing
    assert a.datagrams_to_send(0.1) == []  # two frames past the hole: not yet
    b.receive_datagram(f3, 0.06)
    a.receive_datagram(b.datagrams_to_send(0.06)[0], 0.11)
    assert a.datagrams_to_send(0.11) == [f0]  # three past the hole: at 0.11, RTO was 1.0
    assert a.stats.fast_retransmits == 1 and a.stats.retransmissions == 1
    assert a.stats.timeouts == 0
    # Fast retransmit does not restart the RTO (still at 1.0); the tail-loss probe, 2 SRTT
    # after the latest transmission, comes first.
    srtt = a.stats.srtt
    assert srtt is not None and a.next_timer() == 0.11 + 2 * srtt < 1.0
    assert events(b) == []
    deliver([f0, f4], b, 0.16)
    assert [e.data for e in events(b) if isinstance(e, MessageReceived)] == messages
    a.receive_datagram(b.datagrams_to_send(0.16)[0], 0.21)
    assert a.in_flight == 0 and a.next_timer() == 30.11  # idle: the retransmission at 0.11


# --------------------------------------------------------------------------- backpressure


def test_window_full_backpressure_then_open() -> None:
    a, b = ReliableChannel(mtu=100, send_window=8, max_message=720), ReliableChannel()
    assert a.max_fragment == 90 and a.writable_bytes == 720
    a.send(bytes(90 * 5), 0.0)  # 5 frames
    assert a.writable_bytes == 270
    assert a.can_send(270) and not a.can_send(271)
    with pytest.raises(ReliableChannelFull) as info:
        a.send(bytes(271), 0.0)
    assert not isinstance(info.value, LocalProtocolError) and isinstance(info.value, AnchorError)
    a.send(bytes(270), 0.0)
    assert a.writable_bytes == 0 and not a.can_send(0)
    with pytest.raises(ReliableChannelFull):
        a.send(b"", 0.0)
    frames = a.datagrams_to_send(0.0)
    assert len(frames) == 8 and a.stats.messages_sent == 2
    assert events(a) == []
    deliver(frames[:3], b, 0.1)
    a.receive_datagram(b.datagrams_to_send(0.1)[0], 0.2)
    assert events(a) == [SendWindowOpen(writable_bytes=270)]
    assert a.can_send(270)
    deliver(frames[3:], b, 0.1)
    a.receive_datagram(b.datagrams_to_send(0.1)[0], 0.2)
    assert events(a) == []  # reported once per refusal
    assert a.writable_bytes == 720
    assert [len(e.data) for e in events(b) if isinstance(e, MessageReceived)] == [450, 270]


def test_selective_ack_holds_window_until_hole_filled() -> None:
    a, b = ReliableChannel(mtu=100, send_window=8, max_message=720), ReliableChannel()
    for i in range(8):
        a.send(bytes([i]), 0.0)
    frames = a.datagrams_to_send(0.0)
    deliver(frames[1:], b, 0.1)  # frame 0 lost
    a.receive_datagram(b.datagrams_to_send(0.1)[0], 0.2)
    assert a.in_flight == 1 and a.writable_bytes == 0  # SACKed frames stay in the window
    assert a.datagrams_to_send(0.2) == [frames[0]]  # fast retransmit only the hole
    b.receive_datagram(frames[0], 0.3)
    a.receive_datagram(b.datagrams_to_send(0.3)[0], 0.4)
    assert a.writable_bytes == 720
    assert [e.data for e in events(b) if isinstance(e, MessageReceived)] == [
        bytes([i]) for i in range(8)
    ]


def test_receive_window_bounds_buffering() -> None:
    b = ReliableChannel(receive_window=4, max_message=4 * 1000)
    body = bytes([0x31]) + struct.pack("!I", 4) + b"far"  # seq 4 with only 0..3 allowed
    b.receive_datagram(make_frame(body), 0.0)
    assert b.stats.dropped_window == 1 and events(b) == []
    b.receive_datagram(make_frame(bytes([0x31]) + struct.pack("!I", 3) + b"ok"), 0.0)
    assert b.stats.dropped_window == 1


# --------------------------------------------------------------------------- idle


def test_idle_exactly_after_last_application_datagram_acks_do_not_count() -> None:
    a, b = ReliableChannel(idle_timeout=30.0), ReliableChannel(idle_timeout=30.0)
    assert a.next_timer() is None  # no activity yet
    a.send(b"hi", 2.0)
    [frame] = a.datagrams_to_send(2.0)
    b.receive_datagram(frame, 2.25)
    [ack] = b.datagrams_to_send(2.25)
    a.receive_datagram(ack, 2.5)
    assert a.next_timer() == 32.0  # the ACK did not move it
    assert b.next_timer() == 32.25
    # A duplicate of the data frame is re-acknowledged, and neither resets the idle clock.
    b.receive_datagram(frame, 10.0)
    assert b.stats.duplicates == 1
    a.receive_datagram(b.datagrams_to_send(10.0)[0], 10.5)
    assert a.next_timer() == 32.0 and b.next_timer() == 32.25
    a.handle_timer(31.999)
    assert events(a) == []
    a.handle_timer(32.0)
    assert events(a) == [ReliableIdle(last_activity=2.0)]
    assert a.next_timer() is None and a.state is ReliableState.OPEN  # once per idle period
    b.handle_timer(32.25)
    assert events(b) == [MessageReceived(b"hi"), ReliableIdle(last_activity=2.25)]
    # The next application datagram starts a new idle period.
    a.send(b"again", 40.0)
    [frame] = a.datagrams_to_send(40.0)
    assert a.next_timer() == 41.0  # the tail-loss probe first (2 SRTT after the frame)
    b.receive_datagram(frame, 40.25)
    a.receive_datagram(b.datagrams_to_send(40.25)[0], 40.5)
    assert a.next_timer() == 70.0 and b.next_timer() == 70.25


def test_idle_clock_starts_at_construction_when_given() -> None:
    a = ReliableChannel(idle_timeout=5.0, now=100.0)
    assert a.next_timer() == 105.0
    a.handle_timer(105.0)
    assert events(a) == [ReliableIdle(last_activity=100.0)]


def test_unacknowledged_data_defers_idle_and_retransmissions_count_as_activity() -> None:
    """A sender still recovering lost frames is not idle (it would close under its own data);
    once everything is acknowledged, idle counts from the last frame put on the wire."""
    a, b = ReliableChannel(idle_timeout=10.0), ReliableChannel(idle_timeout=10.0)
    a.send(b"x", 0.0)
    assert len(a.datagrams_to_send(0.0)) == 1  # lost, and the retransmissions until 15.0
    for t in (1.0, 3.0, 7.0, 15.0):
        deadline = a.next_timer()
        assert deadline is not None and deadline <= t  # never the idle deadline
        a.handle_timer(t)
        sent = a.datagrams_to_send(t)
        assert events(a) == [] and sent
    b.receive_datagram(sent[0], 15.25)
    a.receive_datagram(b.datagrams_to_send(15.25)[0], 15.5)
    assert a.next_timer() == 25.0  # 10 s after the last transmission, at 15.0
    a.handle_timer(25.0)
    assert events(a) == [ReliableIdle(last_activity=15.0)]


# --------------------------------------------------------------------------- close


def test_close_handshake_both_sides() -> None:
    a, b = ReliableChannel(), ReliableChannel()
    a.send(b"last words", 0.0)
    a.close(0.0)
    assert a.state is ReliableState.CLOSING
    with pytest.raises(ReliableStateError):
        a.send(b"more", 0.0)
    data, fin_a = a.datagrams_to_send(0.0)
    assert fin_a == make_frame(bytes([0x03, 0, 0, 0, 1]))  # FIN takes sequence number 1
    deliver([data, fin_a], b, 0.1)
    assert b.state is ReliableState.CLOSING  # the peer's FIN closes us too
    assert events(b) == [MessageReceived(b"last words")]
    ack_b, fin_b = b.datagrams_to_send(0.1)
    deliver([ack_b, fin_b], a, 0.2)
    assert a.state is ReliableState.CLOSED
    assert events(a) == [ReliableClosed(CloseReason.LOCAL)]
    assert a.next_timer() is None
    [last_ack] = a.datagrams_to_send(0.2)  # lost
    del last_ack
    # b retransmits its FIN at its RTO; closed a still answers it.
    assert b.next_timer() == 1.1
    b.handle_timer(1.1)
    assert b.datagrams_to_send(1.1) == [fin_b]
    a.receive_datagram(fin_b, 1.2)
    assert a.stats.duplicates == 1
    b.receive_datagram(a.datagrams_to_send(1.2)[0], 1.3)
    assert b.state is ReliableState.CLOSED
    assert events(b) == [ReliableClosed(CloseReason.PEER)]
    assert b.next_timer() is None
    a.close(2.0)  # idempotent
    assert events(a) == []


def test_simultaneous_close_and_data_in_flight_both_ways() -> None:
    h = Harness(ReliableChannel(), ReliableChannel(), Network(rng=random.Random(3), loss=0.2))
    h.a.send(b"from a", 0.0)
    h.b.send(b"from b", 0.0)
    h.a.close(0.0)
    h.b.close(0.0)
    h.run(lambda: h.a.state is h.b.state is ReliableState.CLOSED)
    assert h.received("a") == [b"from b"] and h.received("b") == [b"from a"]
    assert (
        h.of("a", ReliableClosed) == h.of("b", ReliableClosed) == [ReliableClosed(CloseReason.LOCAL)]
    )


def test_data_after_peer_fin_is_refused() -> None:
    b = ReliableChannel()
    b.receive_datagram(make_frame(bytes([0x03, 0, 0, 0, 0])), 0.0)  # FIN at seq 0
    assert b.state is ReliableState.CLOSING
    b.receive_datagram(make_frame(bytes([0x31, 0, 0, 0, 1]) + b"late"), 0.0)
    assert b.stats.dropped_invalid == 1
    assert events(b) == []


# --------------------------------------------------------------------------- robustness


def test_junk_is_counted_not_raised() -> None:
    b = ReliableChannel()
    b.receive_datagram(b"", 0.0)
    b.receive_datagram(b"\x00\x01\x00\x00", 0.0)  # STUN-looking
    b.receive_datagram(b"\xc2\x01", 0.0)  # too short
    b.receive_datagram(make_frame(bytes([0x07, 0, 0, 0, 0])), 0.0)  # unknown type
    win = bytes(4)
    b.receive_datagram(make_frame(bytes([0x02, 0, 0, 0, 5]) + win + b"\0"), 0.0)  # unsent frames
    b.receive_datagram(make_frame(bytes([0x02, 0, 0, 0, 0]) + win + b"\2"), 0.0)  # count lies
    b.receive_datagram(make_frame(bytes([0x21, 0, 0, 0, 0]) + b"orphan"), 0.0)  # no FIRST
    assert b.stats.dropped_invalid == 7
    b.receive_datagram(make_frame(bytes([0x31, 0, 0, 0, 0]))[:-1] + b"\x00", 0.0)
    assert b.stats.dropped_crc == 1
    assert b.stats.frames_received == 1  # the orphan fragment was a valid frame
    assert [e for e in events(b) if isinstance(e, MessageReceived)] == []


def test_sequence_numbers_wrap() -> None:
    from anchor_link.reliable import _unwrap

    assert _unwrap(0, 0xFFFFFFFF) == -1
    assert _unwrap(0xFFFFFFFE, 1) == 0x1_0000_0001
    assert _unwrap(0x1_0000_0005, 0xFFFFFFF0) == 0xFFFFFFF0
    assert _unwrap(5, 7) == 7


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=1500))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    b = ReliableChannel()
    b.send(b"some state", 0.0)
    b.datagrams_to_send(0.0)
    b.receive_datagram(data, 0.1)
    b.receive_datagram(bytes([FIRST_BYTE_MIN]) + data, 0.1)
    b.datagrams_to_send(0.1)
    b.handle_timer(100.0)


_types = st.sampled_from([0x01, 0x11, 0x21, 0x31, 0x02, 0x03, 0x41, 0x00, 0x0F])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(
        st.tuples(
            _types,
            st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)),
            st.binary(max_size=80),
        ),
        max_size=20,
    )
)
def test_well_formed_crc_with_arbitrary_contents_never_raise(
    frames: list[tuple[int, int, bytes]],
) -> None:
    """Frames that pass the crc32c (the parser's real input) with any contents."""
    a = ReliableChannel(mtu=100, send_window=8, max_message=720)
    for i in range(4):
        a.send(bytes([i]) * 100, 0.0)
    a.datagrams_to_send(0.0)
    for type_, seq, rest in frames:
        a.receive_datagram(make_frame(bytes([type_]) + struct.pack("!I", seq) + rest), 0.5)
        a.datagrams_to_send(0.5)
        events(a)
    a.handle_timer(2.0)
    a.datagrams_to_send(2.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.lists(st.booleans(), max_size=120),
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_loss_patterns_still_deliver_in_order(
    pattern: list[bool], sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    messages = [rng.randbytes(n) for n in sizes]
    net = Network(rng=rng, drop_pattern=pattern, duplicate=0.1, reorder=0.3)
    h = Harness(ReliableChannel(max_retransmissions=50), ReliableChannel(), net)
    for m in messages:
        h.a.send(m, 0.0)
    h.run(lambda: len(h.received("b")) == len(messages))
    assert h.received("b") == messages


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(1, 20), min_size=1, max_size=30),
    manual=st.booleans(),
    sealed=st.booleans(),
)
def test_a_batch_is_the_same_datagrams_one_by_one(
    sizes: list[int], seed: int, cuts: list[int], manual: bool, sealed: bool
) -> None:
    """``receive_datagrams`` leaves a channel exactly as ``receive_datagram`` of each datagram
    would: same events, counters, state and ACK, whatever the batch boundaries, for a stream
    with losses, duplicates, reordering, corruption, junk and ACKs in it, plaintext or
    sealed."""
    from anchor_link.seal import Sealer

    keys = [bytes([i]) * 32 for i in range(4)]

    def seal(sender: bool) -> Sealer | None:
        if not sealed:
            return None
        return Sealer(*keys) if sender else Sealer(keys[2], keys[3], keys[0], keys[1])

    rng = random.Random(seed)
    sender = ReliableChannel(now=0.0, seal=seal(True), rng=rng.randbytes)
    now = 0.0
    stream: list[bytes] = []
    for size in sizes:
        sender.send(rng.randbytes(size), now)
        stream += sender.datagrams_to_send(now)
    sender.close(now)
    stream += sender.datagrams_to_send(now)
    peer = ReliableChannel(now=0.0, seal=seal(False))  # something to take ACK frames from
    peer.send(b"ack me", now)
    (data_frame,) = peer.datagrams_to_send(now)
    sender.receive_datagram(data_frame, now)
    stream += sender.datagrams_to_send(now)  # an ACK frame
    mixed: list[bytes] = []
    for frame in stream:
        roll = rng.random()
        if roll < 0.1:
            continue  # lost
        if roll < 0.2:
            mixed.append(frame)  # duplicated
        elif roll < 0.25:
            frame = flip_bit(frame, rng.randrange(8, 8 * len(frame)))
        elif roll < 0.3:
            mixed.append(rng.randbytes(rng.randrange(0, 40)))  # junk
        mixed.append(frame)
    if rng.random() < 0.3:
        rng.shuffle(mixed)  # heavy reordering
    one, many = (
        ReliableChannel(
            now=0.0, manual_release=manual, seal=seal(False), rng=random.Random(1).randbytes
        )
        for _ in range(2)
    )
    for data in mixed:
        one.receive_datagram(data, 1.0)
    i = 0
    for cut in cuts * (len(mixed) // max(1, sum(cuts)) + 1):
        if i >= len(mixed):
            break
        many.receive_datagrams(mixed[i : i + cut], 1.0)
        i += cut
    assert events(one) == events(many)
    assert one.stats == many.stats
    assert one.state is many.state
    assert one.receive_window == many.receive_window
    assert one.next_timer() == many.next_timer()
    assert one.datagrams_to_send(1.0) == many.datagrams_to_send(1.0)
