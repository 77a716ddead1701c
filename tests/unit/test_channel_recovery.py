"""Loss recovery of the reliable channel (anchor_link.reliable): RACK-TLP, fake clock.

RACK (RFC 8985 §6): a frame is lost once a frame transmitted after it was acknowledged and it
is overdue by the reordering window, retransmissions included. TLP (RFC 8985 §7, RFC 9002
§6.2): with no acknowledgement for 2 SRTT, a probe retransmits the frame holding the window.
Every test would fail with RFC 6298 timeouts alone: they assert recovery well before
``rto_min`` (0.2 s) of simulated time.

The clock values are binary fractions (1/64 s round trips), so every deadline is exact.
"""

from __future__ import annotations

import random

from anchor_link.reliable import (
    RTO_MIN,
    MessageReceived,
    ReliableChannel,
    ReliableEvent,
    SendWindowOpen,
)
from tests.unit.test_channel import Harness, Network, deliver

RTT = 1 / 64
HALF = RTT / 2


def events(ch: ReliableChannel) -> list[ReliableEvent]:
    out = []
    while (event := ch.next_event()) is not None:
        out.append(event)
    return out


def received(ch: ReliableChannel) -> list[bytes]:
    return [e.data for e in events(ch) if isinstance(e, MessageReceived)]


def warmed_pair(**options: int) -> tuple[ReliableChannel, ReliableChannel]:
    """A small-window sender and a receiver that have exchanged one message over a path of
    round trip RTT (so SRTT = min_rtt = RTT, RTTVAR = RTT / 2, RTO = rto_min)."""
    a = ReliableChannel(mtu=100, send_window=8, max_message=720, **options)
    b = ReliableChannel()
    a.send(b"warm", 0.0)
    deliver(a.datagrams_to_send(0.0), b, HALF)
    deliver(b.datagrams_to_send(HALF), a, RTT)
    assert received(b) == [b"warm"]
    s = a.stats
    assert (s.srtt, s.rttvar, s.rto) == (RTT, HALF, RTO_MIN)
    return a, b


def fill_window(a: ReliableChannel, now: float) -> list[bytes]:
    messages = 0
    while a.can_send(1):
        a.send(bytes([messages]), now)
        messages += 1
    frames = a.datagrams_to_send(now)
    assert len(frames) == messages == 8
    return frames


def test_lost_retransmission_with_full_window_recovered_by_probe_before_rto_min() -> None:
    """The stall of benchmarks/README.md: a hole is fast-retransmitted, the retransmission is
    lost too, and the window is full of selectively acknowledged frames, so nothing else goes
    out whose acknowledgement could reveal the loss. The probe timeout recovers it after
    2 SRTT instead of the RTO (rto_min 0.2 s)."""
    a, b = warmed_pair()
    frames = fill_window(a, 1.0)
    deliver(frames[1:], b, 1.0 + HALF)  # the first frame is lost
    deliver(b.datagrams_to_send(1.0 + HALF), a, 1.0 + RTT)
    # Seven frames after the hole were acknowledged: DupThresh, retransmitted at once...
    assert a.datagrams_to_send(1.0 + RTT) == [frames[0]]  # ...and lost again.
    assert not a.can_send(1) and a.in_flight == 1
    probe_at = 1.0 + RTT + 2 * RTT  # RFC 8985 §7.2: PTO = 2 SRTT after the last frame
    assert a.next_timer() == probe_at < 1.0 + RTO_MIN
    a.handle_timer(probe_at - 1 / 1024)
    assert a.datagrams_to_send(probe_at - 1 / 1024) == []
    a.handle_timer(probe_at)
    assert a.datagrams_to_send(probe_at) == [frames[0]]
    b.receive_datagram(frames[0], probe_at + HALF)
    assert received(b) == [bytes([i]) for i in range(8)]
    a.receive_datagram(b.datagrams_to_send(probe_at + HALF)[0], probe_at + RTT)
    assert events(a) == [SendWindowOpen(writable_bytes=720)]
    s = a.stats
    assert (s.retransmissions, s.fast_retransmits, s.probes, s.timeouts) == (2, 1, 1, 0)
    assert probe_at + RTT - 1.0 < RTO_MIN / 2  # recovered in 4 round trips, not rto_min


def test_lost_retransmission_found_by_rack_when_a_later_frame_is_acknowledged() -> None:
    """RACK's time threshold judges retransmissions like first transmissions: a frame sent
    after the retransmission was acknowledged, and the retransmission is overdue by the
    reordering window (min_rtt / 4), so it is lost. One frame after it is not DupThresh."""
    a, b = warmed_pair()
    for i in range(4):
        a.send(bytes([i]), 1.0)
    f1, f2, f3, f4 = a.datagrams_to_send(1.0)
    deliver([f2, f3, f4], b, 1.0 + HALF)  # f1 lost
    a.receive_datagram(b.datagrams_to_send(1.0 + HALF)[0], 1.0 + RTT)
    assert a.datagrams_to_send(1.0 + RTT) == [f1]  # DupThresh; lost again
    t = 1.0 + 2 * RTT  # one new message, after the retransmission
    a.send(b"late", t)
    [f5] = a.datagrams_to_send(t)
    b.receive_datagram(f5, t + HALF)
    a.receive_datagram(b.datagrams_to_send(t + HALF)[0], t + RTT)
    # f1's retransmission went out at 1 + RTT; the ACK of f5 (sent RTT later) came back
    # RACK.rtt = RTT after f5: f1 was due by 1 + RTT + RTT + RTT / 4 < t + RTT.
    assert a.datagrams_to_send(t + RTT) == [f1]
    s = a.stats
    assert (s.fast_retransmits, s.probes, s.timeouts) == (2, 0, 0)
    b.receive_datagram(f1, t + RTT + HALF)
    assert received(b) == [b"\x00", b"\x01", b"\x02", b"\x03", b"late"]


def test_rack_timer_for_a_frame_not_yet_overdue() -> None:
    """A hole with a single frame after it: not DupThresh and not yet overdue when the ACK
    comes; RACK's reordering timer fires exactly at sent_at + RACK.rtt + min_rtt / 4."""
    a, b = warmed_pair()
    a.send(b"x", 1.0)
    a.send(b"y", 1.0)
    fx, fy = a.datagrams_to_send(1.0)
    b.receive_datagram(fy, 1.0 + HALF)
    a.receive_datagram(b.datagrams_to_send(1.0 + HALF)[0], 1.0 + RTT)
    assert a.datagrams_to_send(1.0 + RTT) == []
    due = 1.0 + RTT + RTT / 4
    assert a.next_timer() == due
    a.handle_timer(due - 1 / 4096)
    assert a.datagrams_to_send(due - 1 / 4096) == []
    a.handle_timer(due)
    assert a.datagrams_to_send(due) == [fx]
    assert a.stats.fast_retransmits == 1 and a.stats.timeouts == 0


def test_reordering_within_the_window_is_not_loss() -> None:
    """A frame overtaken by one sent with it, but acknowledged before RACK's deadline, is not
    retransmitted; one acknowledged after the deadline is. Once the path is seen to reorder,
    DupThresh no longer applies: three later frames overtaking one is not loss by itself."""
    a, b = warmed_pair()
    a.send(b"x", 1.0)
    a.send(b"y", 1.0)
    fx, fy = a.datagrams_to_send(1.0)
    b.receive_datagram(fy, 1.0 + HALF)
    a.receive_datagram(b.datagrams_to_send(1.0 + HALF)[0], 1.0 + RTT)
    due = 1.0 + RTT + RTT / 4
    assert a.next_timer() == due
    # fx arrives late, but within the reordering window.
    b.receive_datagram(fx, 1.0 + HALF + RTT / 8)
    a.receive_datagram(b.datagrams_to_send(1.0 + HALF + RTT / 8)[0], 1.0 + RTT + RTT / 8)
    assert a.datagrams_to_send(due) == [] and a.in_flight == 0
    assert a.stats.retransmissions == 0
    assert received(b) == [b"x", b"y"]

    # Now that reordering was seen: four frames, the first overtaken by the three others.
    for i in range(4):
        a.send(bytes([i]), 2.0)
    g0, *later = a.datagrams_to_send(2.0)
    deliver(later, b, 2.0 + HALF)
    a.receive_datagram(b.datagrams_to_send(2.0 + HALF)[0], 2.0 + RTT)
    assert a.datagrams_to_send(2.0 + RTT) == []  # not DupThresh: the window decides
    b.receive_datagram(g0, 2.0 + HALF + RTT / 8)
    a.receive_datagram(b.datagrams_to_send(2.0 + HALF + RTT / 8)[0], 2.0 + RTT + RTT / 8)
    assert a.stats.retransmissions == 0 and a.in_flight == 0


def test_repeated_tail_loss_probes_back_off_then_the_rto_takes_over() -> None:
    """A probe that is lost too is followed by a second one after twice the probe timeout
    (RFC 9002 §6.2.1); after MAX_PROBES probes without an acknowledgement the RTO (restarted
    by each probe, RFC 8985 §7.3) retransmits and backs off."""
    a, _b = warmed_pair()
    a.send(b"tail", 1.0)
    [frame] = a.datagrams_to_send(1.0)  # lost
    first = 1.0 + 2 * RTT
    assert a.next_timer() == first
    a.handle_timer(first)
    assert a.datagrams_to_send(first) == [frame]  # lost
    second = first + 4 * RTT
    assert a.next_timer() == second
    a.handle_timer(second)
    assert a.datagrams_to_send(second) == [frame]  # lost
    assert a.stats.probes == 2
    rto_at = second + RTO_MIN
    assert a.next_timer() == rto_at  # no third probe
    a.handle_timer(rto_at)
    assert a.datagrams_to_send(rto_at) == [frame]
    s = a.stats
    assert (s.probes, s.timeouts, s.rto) == (2, 1, 2 * RTO_MIN)
    assert a.next_timer() == rto_at + 2 * RTO_MIN


def test_tail_loss_episodes_in_a_row_each_recovered_by_one_probe() -> None:
    """Every episode of tail loss (the last frame lost, then its acknowledgement) costs one
    probe 2 SRTT after the frame, never a timeout; the probe count starts again after each
    acknowledgement."""
    a, b = warmed_pair()
    now = 1.0
    for i in range(5):
        a.send(bytes([i]), now)
        [frame] = a.datagrams_to_send(now)  # lost
        probe_at = now + 2 * RTT
        assert a.next_timer() == probe_at
        a.handle_timer(probe_at)
        assert a.datagrams_to_send(probe_at) == [frame]
        b.receive_datagram(frame, probe_at + HALF)
        a.receive_datagram(b.datagrams_to_send(probe_at + HALF)[0], probe_at + RTT)
        assert a.in_flight == 0
        now = probe_at + 2 * RTT
    assert received(b) == [bytes([i]) for i in range(5)]
    s = a.stats
    assert (s.probes, s.timeouts, s.srtt) == (5, 0, RTT)


def test_ack_repeated_when_the_peer_is_recovering() -> None:
    """In-order data is acknowledged once per batch; a batch with a duplicate or a frame out
    of order is acknowledged twice (the peer is recovering: losing that ACK costs it a
    timeout)."""
    a, b = ReliableChannel(), ReliableChannel()
    a.send(b"one", 0.0)
    a.send(b"two", 0.0)
    f1, f2 = a.datagrams_to_send(0.0)
    b.receive_datagram(f1, 0.1)
    assert len(b.datagrams_to_send(0.1)) == 1
    b.receive_datagram(f1, 0.2)  # duplicate
    first, second = b.datagrams_to_send(0.2)
    assert first == second
    c = ReliableChannel()
    c.receive_datagram(f2, 0.1)  # out of order
    assert len(c.datagrams_to_send(0.1)) == 2


def test_rto_floor_is_two_smoothed_round_trips() -> None:
    """On a steady path RTTVAR decays and SRTT + 4 RTTVAR would fall towards SRTT: the RTO is
    never below 2 SRTT (nor rto_min)."""
    a, b = ReliableChannel(), ReliableChannel()
    now = 0.0
    for i in range(4):
        a.send(bytes([i]), now)
        deliver(a.datagrams_to_send(now), b, now + 0.25)
        deliver(b.datagrams_to_send(now + 0.25), a, now + 0.5)
        now += 1.0
    s = a.stats
    # Four samples of 0.5: RTTVAR = 0.25 * 0.75**3 = 0.10546875; 0.5 + 4 RTTVAR < 1.0.
    assert (s.srtt, s.rttvar) == (0.5, 0.10546875)
    assert s.rto == 1.0


def test_five_percent_loss_recovers_without_timeouts() -> None:
    """2,000 one-frame messages over a 20 ms path losing 5 % of the frames both ways (ACKs
    too), default channels: every message arrives in order and no RTO expires. Loss is a
    congestion signal (RFC 9002 §7.3.2, RFC 8085 §3.1), so the channel goes no faster than a
    TCP-friendly flow would: its goodput is within a factor of two of the NewReno formula,
    MSS / RTT * sqrt(3 / (2 p)) (Mathis et al.; RFC 5348 §3.1 with b = 1), and not below
    half of it (RACK-TLP recovers without timeouts)."""

    def transfer(loss: float) -> tuple[float, ReliableChannel]:
        net = Network(rng=random.Random(8), loss=loss, delay=0.01)
        h = Harness(ReliableChannel(), ReliableChannel(), net)
        messages = [i.to_bytes(4, "big") * 297 for i in range(2000)]
        queue = list(messages)

        def feed() -> None:
            while queue and h.a.can_send(len(queue[0])):
                h.a.send(queue.pop(0), h.now)

        h.run(lambda: len(h.received("b")) == len(messages), each=feed)
        assert h.received("b") == messages
        return h.now, h.a

    clean, clean_sender = transfer(0.0)
    assert clean_sender.stats.congestion_events == 0 and clean_sender.stats.retransmissions == 0
    lossy, sender = transfer(0.05)
    assert clean < lossy
    s = sender.stats
    assert s.timeouts == 0 and s.retransmissions > 50 and s.congestion_events > 5
    assert s.srtt is not None
    formula = 1198 / s.srtt * (3 / (2 * 0.05)) ** 0.5  # bytes per second
    goodput = 2000 * 1188 / lossy
    assert formula / 2 < goodput < 2 * formula
