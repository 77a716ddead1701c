"""Congestion control of the reliable channel (anchor_link.congestion, RFC 9002 §7, RFC 9438):
the NewReno and CUBIC controllers and the pacer on their own, then the channel driving them,
with a fake clock.

Clock values are binary fractions (1/64 s round trips), so every deadline is exact.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import pytest

from anchor_link.congestion import (
    CUBIC_ALPHA,
    CUBIC_BETA,
    CUBIC_C,
    PACING_GRANULARITY,
    Cubic,
    NewReno,
    Pacer,
    initial_window,
    minimum_window,
)
from anchor_link.reliable import MessageReceived, ReliableChannel

MDS = 1200  # max datagram size: the channel's default mtu
RTT = 1 / 64
HALF = RTT / 2


# --------------------------------------------------------------------------- NewReno alone


def test_windows_of_rfc_9002_section_7_2() -> None:
    assert initial_window(1200) == 12000  # min(10 * 1200, max(14720, 2400))
    assert initial_window(1500) == 14720
    assert initial_window(9000) == 18000
    assert minimum_window(1200) == 2400


def test_newreno_slow_start_loss_recovery_avoidance_persistent_congestion() -> None:
    """Every step of RFC 9002 Appendix B with the window checked after each."""
    cc = NewReno(MDS)
    assert (cc.congestion_window, cc.ssthresh, cc.bytes_in_flight) == (12000, None, 0)
    assert cc.in_slow_start

    # Slow start: the window grows by every byte acknowledged (§7.3.1).
    cc.on_sent(12000, blocked=True)
    cc.on_acked(12000, 12000)
    assert (cc.congestion_window, cc.bytes_in_flight) == (24000, 0)
    cc.on_sent(24000, blocked=True)
    cc.on_acked(6000, 6000)
    assert (cc.congestion_window, cc.bytes_in_flight) == (30000, 18000)

    # Loss of a frame sent at 1.0, found at 1.1: one congestion event (§7.3.2).
    cc.bytes_in_flight -= 1200  # the channel takes the lost frame out of flight
    assert cc.on_lost(1.0, now=1.1)
    assert (cc.congestion_window, cc.ssthresh, cc.recovery_start) == (15000, 15000, 1.1)
    assert cc.congestion_events == 1 and not cc.in_slow_start
    # More losses of the same round trip (sent before 1.1): no second reduction.
    assert not cc.on_lost(1.05, now=1.12)
    assert not cc.on_lost(1.1, now=1.15)  # sent at the recovery start: still inside
    assert (cc.congestion_window, cc.congestion_events) == (15000, 1)
    # Recovery: acknowledgements of frames sent before it began do not grow the window.
    cc.on_acked(4800, 0)
    assert cc.congestion_window == 15000 and cc.bytes_in_flight == 12000

    # Congestion avoidance: one datagram per window of bytes acknowledged (§7.3.3).
    cc.on_sent(3000, blocked=True)
    cc.on_acked(15000, 15000)
    assert cc.congestion_window == 15000 + 1200  # 1200 * 15000 // 15000
    cc.on_sent(16200, blocked=True)
    cc.on_acked(8100, 8100)
    assert cc.congestion_window == 16200 + 1200 * 8100 // 16200  # 16800

    # A loss sent after the recovery start: a new congestion event.
    assert cc.on_lost(1.3, now=1.4)
    assert (cc.congestion_window, cc.ssthresh, cc.congestion_events) == (8400, 8400, 2)

    # Persistent congestion (§7.6.2): the minimum window, then slow start towards ssthresh.
    cc.on_persistent_congestion(now=2.0)
    assert (cc.congestion_window, cc.ssthresh, cc.persistent_congestion) == (2400, 8400, 1)
    assert cc.in_slow_start
    cc.bytes_in_flight = 0
    cc.on_sent(2400, blocked=True)
    cc.on_acked(2400, 2400)
    assert cc.congestion_window == 4800
    cc.on_sent(4800, blocked=True)
    cc.on_acked(4800, 4800)
    assert cc.congestion_window == 9600 and not cc.in_slow_start  # past ssthresh: avoidance
    cc.on_sent(9600, blocked=True)
    cc.on_acked(9600, 9600)
    assert cc.congestion_window == 9600 + 1200


def test_newreno_window_is_floored_at_the_minimum() -> None:
    cc = NewReno(MDS)
    for t in range(1, 6):
        cc.on_lost(float(t), now=t + 0.5)
    assert cc.congestion_window == cc.ssthresh == 2400 and cc.congestion_events == 5


def test_newreno_does_not_grow_a_window_it_does_not_use() -> None:
    """RFC 9002 §7.8: an application-limited sender (less than half the window in flight,
    not blocked by it) does not grow the window."""
    cc = NewReno(MDS)
    cc.on_sent(1200, blocked=False)
    cc.on_acked(1200, 1200)
    assert cc.congestion_window == 12000
    cc.on_sent(6000, blocked=False)  # half the window in flight: it is being used
    cc.on_acked(6000, 6000)
    assert cc.congestion_window == 18000


def test_persistent_congestion_duration() -> None:
    # RFC 9002 §7.6.1: (smoothed_rtt + max(4 rttvar, kGranularity)) * 3
    assert NewReno.persistent_congestion_duration(0.1, 0.025) == pytest.approx(0.6)
    assert NewReno.persistent_congestion_duration(0.01, 0.0) == pytest.approx(0.033)


# --------------------------------------------------------------------------- CUBIC alone


def _k(w_max: float, cwnd_epoch: float) -> float:
    """RFC 9438 §4.2 eq. 2 in seconds, windows in bytes of MDS-byte segments."""
    return ((w_max - cwnd_epoch) / MDS / 0.4) ** (1 / 3)


def _w_cubic(t: float, k: float, w_max: float) -> float:
    """RFC 9438 §4.2 eq. 1 in bytes."""
    return 0.4 * (t - k) ** 3 * MDS + w_max


def test_cubic_constants_of_rfc_9438() -> None:
    assert (CUBIC_C, CUBIC_BETA) == (0.4, 0.7)
    assert CUBIC_ALPHA == pytest.approx(3 * 0.3 / 1.7)  # §4.3: 0.529...


def test_cubic_slow_start_then_first_congestion_event() -> None:
    """Slow start as NewReno's; the first loss: W_max = cwnd, cwnd = ssthresh = 0.7 cwnd,
    an epoch at ``now`` with K = cbrt((W_max - cwnd_epoch) / C) (RFC 9438 §4.2, §4.6)."""
    cc = Cubic(MDS)
    assert (cc.congestion_window, cc.ssthresh, cc.w_max, cc.t_epoch) == (12000, None, None, None)
    cc.on_sent(12000, blocked=True)
    cc.on_acked(12000, 12000, now=RTT, srtt=RTT)
    assert cc.congestion_window == 24000 and cc.in_slow_start
    cc.bytes_in_flight = 0
    assert cc.on_lost(0.5, now=1.0)
    assert (cc.congestion_window, cc.ssthresh) == (16800, 16800)  # 0.7 x 24,000
    assert (cc.w_max, cc.cwnd_prior, cc.cwnd_epoch, cc.w_est) == (24000, 24000, 16800, 16800)
    assert cc.t_epoch == 1.0 and cc.k == pytest.approx(15 ** (1 / 3))  # (24000-16800)/1200/0.4
    assert cc.congestion_events == 1 and not cc.in_slow_start
    # Losses of the same round trip (sent at or before the recovery start): nothing more.
    assert not cc.on_lost(1.0, now=1.01)
    assert cc.congestion_window == 16800 and cc.congestion_events == 1


def test_cubic_reno_friendly_concave_and_convex_regions() -> None:
    """The window at each step of congestion avoidance (RFC 9438 §4.3-§4.5), computed here
    from the RFC's formulas: Reno-friendly while W_cubic(t) < W_est, then towards
    W_cubic(t + RTT) by (target - cwnd) / cwnd per segment acknowledged."""
    cc = Cubic(MDS)
    cc.on_sent(12000, blocked=True)
    cc.on_acked(12000, 12000, now=RTT, srtt=RTT)  # 24,000
    assert cc.on_lost(0.5, now=1.0)  # 16,800, K = cbrt(15)
    k, w_max = 15 ** (1 / 3), 24000.0
    cc.bytes_in_flight = 0

    # Reno-friendly region (§4.3): one window acknowledged 1/64 s into the epoch.
    cc.on_sent(16800, blocked=True)
    cc.on_acked(16800, 16800, now=1.0 + RTT, srtt=RTT)
    w_est = 16800 + CUBIC_ALPHA * MDS * 16800 / 16800
    assert _w_cubic(RTT, k, w_max) < w_est
    assert cc.w_est == pytest.approx(w_est)
    assert cc.congestion_window == int(w_est) == 17435  # 16,800 + 0.529 x 1,200

    # Concave region (§4.4): 2 s into the epoch W_cubic(t) = 23,951 is above W_est, and the
    # window moves towards W_cubic(t + RTT) by (target - cwnd) / cwnd per segment.
    cwnd = w_est
    cc.on_sent(1200, blocked=True)
    cc.on_acked(1200, 1200, now=3.0, srtt=RTT)
    w_est += CUBIC_ALPHA * MDS * 1200 / cwnd
    assert _w_cubic(2.0, k, w_max) > w_est
    target = _w_cubic(2.0 + RTT, k, w_max)
    assert cwnd < target < w_max
    cwnd += (target - cwnd) * 1200 / cwnd
    assert cc.congestion_window == int(cwnd) == 17884  # + (23,956 - 17,435) x 1200 / 17,435

    # Convex region (§4.5): past K the target is above W_max, clamped at 1.5 cwnd.
    cc.on_sent(1200, blocked=True)
    cc.on_acked(1200, 1200, now=1.0 + 6.0, srtt=RTT)
    target = _w_cubic(6.0 + RTT, k, w_max)
    assert target > 1.5 * cwnd  # 0.4 x 3.53^3 x 1200 + 24000 = 45,165
    cwnd += (1.5 * cwnd - cwnd) * 1200 / cwnd
    assert cc.congestion_window == int(cwnd) == 18484  # half a segment more

    # A target below the window does not shrink it (§4.2: clamped at cwnd).
    cc2 = Cubic(MDS)
    cc2.on_sent(12000, blocked=True)
    cc2.on_acked(12000, 12000, now=RTT, srtt=RTT)
    cc2.on_lost(0.5, now=1.0)
    cc2.bytes_in_flight = 0
    cc2.w_est = 0.0  # (forced out of the Reno-friendly region for this check)
    cc2.on_sent(1200, blocked=True)
    cc2.on_acked(1200, 1200, now=1.0, srtt=0.0)  # W_cubic(0) = cwnd_epoch: target = cwnd
    assert cc2.congestion_window == 16800


def test_cubic_alpha_becomes_one_past_cwnd_prior() -> None:
    """RFC 9438 §4.3: once W_est reaches cwnd_prior, alpha_cubic is 1 (Reno's growth)."""
    cc = Cubic(MDS)
    cc.on_sent(12000, blocked=True)
    cc.on_acked(12000, 12000, now=RTT, srtt=RTT)
    cc.on_lost(0.5, now=1.0)  # cwnd_prior 24,000, W_est 16,800
    cc.bytes_in_flight = 0
    cc.w_est = 24000.0  # as if grown that far
    cc.on_sent(1200, blocked=True)
    cc.on_acked(1200, 1200, now=1.0 + RTT, srtt=RTT)
    assert cc.w_est == pytest.approx(24000 + 1.0 * MDS * 1200 / 16800)
    assert cc.congestion_window == int(cc.w_est)


def test_cubic_fast_convergence() -> None:
    """RFC 9438 §4.7: a congestion event below the previous W_max releases bandwidth:
    W_max = cwnd x (1 + beta) / 2; at or above it, W_max = cwnd."""
    cc = Cubic(MDS)
    cc.on_sent(12000, blocked=True)
    cc.on_acked(12000, 12000, now=RTT, srtt=RTT)
    cc.on_lost(0.5, now=1.0)  # W_max 24,000, cwnd 16,800
    assert cc.on_lost(1.5, now=2.0)  # 16,800 < 24,000
    assert cc.w_max == pytest.approx(16800 * 1.7 / 2)  # 14,280
    assert cc.congestion_window == cc.ssthresh == int(16800 * 0.7) == 11760
    assert cc.k == pytest.approx(_k(14280, 11760))
    cc.bytes_in_flight = 0
    cc.on_sent(11760, blocked=True)  # grow it past W_max: far into the convex region
    cc.on_acked(11760, 11760, now=12.0, srtt=RTT)  # 1.5 x 11,760 (the clamp)
    assert cc.congestion_window == 17640
    cc.bytes_in_flight = 0
    assert cc.on_lost(2.5, now=13.0)  # 17,640 >= W_max 14,280: W_max = cwnd
    assert cc.w_max == 17640 and cc.congestion_window == int(17640 * 0.7) == 12348


def test_cubic_persistent_congestion_and_slow_start_to_a_new_epoch() -> None:
    """RFC 9438 §4.8 (and RFC 9002 §7.6.2): the minimum window, ssthresh = 0.7 cwnd, slow
    start; reaching ssthresh starts an epoch there, K from the W_max of the collapse."""
    cc = Cubic(MDS)
    cc.on_sent(12000, blocked=True)
    cc.on_acked(12000, 12000, now=RTT, srtt=RTT)  # 24,000
    cc.bytes_in_flight = 0
    cc.on_persistent_congestion(now=1.0)
    assert (cc.congestion_window, cc.ssthresh, cc.w_max, cc.t_epoch) == (2400, 16800, 24000, None)
    assert cc.persistent_congestion == 1 and cc.in_slow_start
    cc.on_sent(2400, blocked=True)
    cc.on_acked(2400, 2400, now=1.1, srtt=RTT)
    cc.on_sent(4800, blocked=True)
    cc.on_acked(4800, 4800, now=1.2, srtt=RTT)
    cc.on_sent(9600, blocked=True)
    cc.on_acked(9600, 9600, now=1.3, srtt=RTT)  # 19,200 would pass 16,800: CA from there
    assert cc.t_epoch == 1.3 and cc.cwnd_epoch == 16800
    assert cc.k == pytest.approx(_k(24000, 16800))
    # The 2,400 bytes past ssthresh grow it as congestion avoidance does at t = 0.
    w_est = 16800 + CUBIC_ALPHA * MDS * 2400 / 16800
    assert cc.congestion_window == int(w_est)
    # A loss found with persistent congestion in the same call: the event's ssthresh stands.
    cc2 = Cubic(MDS)
    cc2.on_lost(0.5, now=1.0)  # 12,000 -> 8,400
    cc2.on_persistent_congestion(now=1.0)
    assert (cc2.congestion_window, cc2.ssthresh, cc2.w_max) == (2400, 8400, 12000)


def test_cubic_does_not_grow_a_window_it_does_not_use() -> None:
    cc = Cubic(MDS)
    cc.on_lost(0.5, now=1.0)
    cc.on_sent(1200, blocked=False)
    cc.on_acked(1200, 1200, now=2.0, srtt=RTT)
    assert cc.congestion_window == 8400


# --------------------------------------------------------------------------- the pacer alone


def test_pacer_spreads_a_window_over_a_round_trip() -> None:
    pacer = Pacer(12000)
    assert pacer.rate is None and pacer.budget(0.0) == math.inf  # no RTT sample: no pacing
    pacer.update_rate(48000, 0.1)
    assert pacer.rate == pytest.approx(1.25 * 48000 / 0.1)  # 600,000 bytes/s (§7.7)
    # The bucket holds the initial window, plus what the granularity lets go early.
    assert pacer.budget(1.0) == pytest.approx(12000 + 600)
    pacer.on_sent(13200, 1.0)
    assert pacer.tokens == pytest.approx(-1200)
    assert pacer.budget(1.0) == 0.0
    # The deficit is gone 2 ms later: from then on a frame may leave.
    assert pacer.next_send_time(1.0) == pytest.approx(1.002)
    assert pacer.budget(1.002) == pytest.approx(600)
    # It never holds more than the burst, however long it waited.
    assert pacer.budget(10.0) == pytest.approx(12000 + 600)
    assert PACING_GRANULARITY == 0.001


# --------------------------------------------------------------------------- the channel


class Path:
    """A sender and a receiver joined by a path of one-way delay HALF, driven by an
    event-driven fake clock. ``drop(frame)`` decides the fate of frames from a to b,
    ``drop_back(frame)`` of those from b to a. ``check`` runs after every output of the
    sender."""

    def __init__(self, a: ReliableChannel, b: ReliableChannel) -> None:
        self.a, self.b = a, b
        self.now = 0.0
        self.wire: list[tuple[float, int, str, bytes]] = []
        self.order = 0
        self.drop: Callable[[bytes], bool] = lambda frame: False
        self.drop_back: Callable[[bytes], bool] = lambda frame: False
        self.check: Callable[[ReliableChannel, list[bytes]], None] = lambda ch, out: None
        self.received = 0

    def flush(self) -> None:
        out = self.a.datagrams_to_send(self.now)
        self.check(self.a, out)
        for frame in out:
            if not self.drop(frame):
                heapq.heappush(self.wire, (self.now + HALF, self.order, "b", frame))
                self.order += 1
        for frame in self.b.datagrams_to_send(self.now):
            if not self.drop_back(frame):
                heapq.heappush(self.wire, (self.now + HALF, self.order, "a", frame))
                self.order += 1
        while (event := self.b.next_event()) is not None:
            self.received += isinstance(event, MessageReceived)

    def step(self) -> None:
        """Advance to the next arrival or timer, handle it, flush."""
        times = [t for t in (self.a.next_timer(), self.b.next_timer()) if t is not None]
        if self.wire:
            times.append(self.wire[0][0])
        self.now = max(self.now, min(times))
        while self.wire and self.wire[0][0] <= self.now:
            _, _, to, frame = heapq.heappop(self.wire)
            (self.a if to == "a" else self.b).receive_datagram(frame, self.now)
        self.a.handle_timer(self.now)
        self.b.handle_timer(self.now)
        self.flush()

    def run_until(self, t: float) -> None:
        while self.now < t:
            self.step()


def fill(ch: ReliableChannel, now: float) -> None:
    while ch.can_send(1190):
        ch.send(bytes(1190), now)


def bulk_path(congestion_control: str = "cubic") -> Path:
    a = ReliableChannel(send_window=1024, now=0.0, congestion_control=congestion_control)
    b = ReliableChannel(receive_window=4096, now=0.0)
    path = Path(a, b)

    def check(ch: ReliableChannel, out: list[bytes]) -> None:
        s = ch.stats
        # Bytes in flight never exceed the window when frames go out (RFC 9002 §7).
        if any(frame[1] & 0x0F == 0x01 for frame in out):
            assert s.bytes_in_flight <= s.congestion_window
        fill(ch, path.now)

    path.check = check
    fill(a, 0.0)
    return path


def test_channel_slow_start_doubles_the_window_every_round_trip() -> None:
    path = bulk_path()
    path.flush()
    s = path.a.stats
    assert (s.congestion_window, s.bytes_in_flight, s.frames_sent) == (12000, 12000, 10)
    path.run_until(RTT)  # the ten frames are acknowledged at once
    s = path.a.stats
    assert s.congestion_window == 24000 and s.srtt == RTT
    windows = []
    for k in range(2, 6):
        path.run_until(k * RTT)
        windows.append(path.a.stats.congestion_window)
    # About doubling each round trip: the pacer spreads each window over the round trip
    # (RFC 9002 §7.7), so part of its acknowledgements fall in the next one.
    assert all(1.5 * w1 <= w2 <= 2 * w1 for w1, w2 in itertools.pairwise(windows))
    assert path.a.stats.retransmissions == 0 and path.a.stats.congestion_events == 0


@pytest.mark.parametrize(("controller", "beta"), [("newreno", 0.5), ("cubic", CUBIC_BETA)])
def test_channel_reacts_once_per_round_trip_then_avoids_congestion(
    controller: str, beta: float
) -> None:
    """Three frames of one round trip lost: RACK finds them, the window is reduced once
    (halved by NewReno, RFC 9002 §7.3.2; to 0.7 by CUBIC, RFC 9438 §4.6), the losses are
    repaired, and the window then grows by about one datagram per round trip at most (§7.3.3;
    CUBIC's Reno-friendly region, RFC 9438 §4.3), never past the bytes in flight at any
    send."""
    path = bulk_path(controller)
    path.flush()
    path.run_until(4 * RTT)
    cwnd_before = path.a.stats.congestion_window
    sent_before = path.a.stats.frames_sent
    dropped: list[int] = []

    def drop(frame: bytes) -> bool:
        seq = int.from_bytes(frame[2:6], "big")
        if frame[1] & 0x0F == 0x01 and len(dropped) < 3 and seq >= sent_before + 5:
            if seq not in dropped:
                dropped.append(seq)
                return True
        return False

    path.drop = drop
    path.run_until(6 * RTT)
    s = path.a.stats
    assert len(dropped) == 3 and s.fast_retransmits == 3 and s.timeouts == 0
    assert s.congestion_events == 1
    assert s.ssthresh is not None
    assert cwnd_before * beta < s.ssthresh <= (2 * cwnd_before + 2400) * beta
    after_loss = s.congestion_window
    path.drop = lambda frame: False
    path.run_until(16 * RTT)
    s = path.a.stats
    assert s.congestion_events == 1 and s.retransmissions == 3
    # Congestion avoidance: about one datagram per round trip, not a doubling.
    assert after_loss < s.congestion_window <= after_loss + 11 * 1200
    assert path.received > 0 and s.timeouts == 0


def test_channel_persistent_congestion_collapses_the_window() -> None:
    """A path that loses everything: both tail-loss probes go unanswered, the RTO fires and
    the window falls to the minimum (two datagrams); slow start then starts again."""
    path = bulk_path()
    path.flush()
    path.run_until(4 * RTT)
    assert path.a.stats.congestion_window > 24000
    path.drop = lambda frame: path.a.stats.timeouts == 0  # until the RTO fires
    while path.a.stats.timeouts == 0:
        path.step()
    s = path.a.stats
    assert s.probes == 2 and s.persistent_congestion == 1
    assert s.congestion_window == 2400 and s.ssthresh is not None and s.ssthresh >= 2400
    assert s.bytes_in_flight <= s.congestion_window + 2 * 1200  # the probes still out
    path.drop = lambda frame: False
    t = path.now
    path.run_until(t + 4 * RTT)
    s = path.a.stats
    assert s.congestion_window > 2400 and s.persistent_congestion == 1


def _advance(path: Path, t: float) -> None:
    """Handle every arrival and timer due by ``t``, then set the clock to ``t``."""
    while True:
        times = [x for x in (path.a.next_timer(), path.b.next_timer()) if x is not None]
        if path.wire:
            times.append(path.wire[0][0])
        if not times or min(times) > t:
            break
        path.step()
    path.now = max(path.now, t)


@pytest.mark.parametrize(("blackout_rtts", "persistent"), [(8, True), (2, False)])
def test_channel_detects_persistent_congestion_from_the_span_of_a_loss_run(
    blackout_rtts: int, persistent: bool
) -> None:
    """RFC 9002 §7.6: a sender that sends a 100-byte message every quarter round trip (so
    neither the tail-loss probe nor the RTO fires, and the window never fills) into a path that drops everything for
    ``blackout_rtts`` round trips. The first frame through after the blackout is SACKed; RACK
    then declares the frames sent during it lost at once. When they span at least the
    persistent congestion duration (3 x (SRTT + max(4 RTTVAR, 1 ms)), about 50-70 ms here)
    with nothing delivered in between, the window collapses to the minimum (two datagrams)
    on top of the congestion event; a short blackout is one congestion event only."""
    a = ReliableChannel(now=0.0)  # NewReno, the default
    b = ReliableChannel(now=0.0)
    path = Path(a, b)
    t = 0.0
    for _ in range(40):  # warm up: RTT samples, every frame delivered and acknowledged
        a.send(bytes(100), t)
        path.flush()
        t += RTT / 4
        _advance(path, t)
    _advance(path, t + 4 * RTT)
    s = a.stats
    assert s.srtt == RTT and s.bytes_in_flight == 0 and s.congestion_events == 0
    window = s.congestion_window
    path.drop = lambda frame: frame[1] & 0x0F == 0x01  # the blackout: every DATA frame lost
    t = path.now
    end = t + blackout_rtts * RTT
    while t < end:
        a.send(bytes(100), t)
        path.flush()
        t += RTT / 4
        _advance(path, t)
    path.drop = lambda frame: False
    a.send(bytes(100), t)  # the first frame through: its SACK lets RACK find the rest
    path.flush()
    _advance(path, t + RTT)
    s = a.stats
    assert s.timeouts == 0 and s.probes == 0  # found by RACK alone
    assert s.congestion_events == 1
    assert s.ssthresh == window // 2  # NewReno's reduction (RFC 9002 §7.3.2)
    if persistent:
        assert s.persistent_congestion == 1
        assert s.congestion_window == minimum_window(MDS)  # RFC 9002 §7.6.2
    else:
        assert s.persistent_congestion == 0
        assert s.congestion_window == window // 2
    _advance(path, t + 20 * RTT)
    assert path.received == 40 + 4 * blackout_rtts + 1  # every message repaired


def test_pacing_deadline_is_the_next_timer() -> None:
    """Once the window is larger than the pacer's burst, frames wait for the pacer, and
    ``next_timer()`` says when the next may leave."""
    path = bulk_path()
    path.flush()
    path.run_until(RTT)
    a = path.a
    # At RTT the window is 24,000 bytes; the pacer lets 12,000 + 1.25 * 24,000 / RTT * 1 ms
    # (+ one frame of overdraft) out at once, the rest is spread.
    s = a.stats
    assert s.bytes_in_flight < s.congestion_window
    deadline = a.next_timer()
    assert deadline is not None and path.now < deadline < path.now + RTT
    assert a.datagrams_to_send(path.now) == []  # early: nothing
    frames = a.datagrams_to_send(deadline)
    assert frames and all(f[1] & 0x0F == 0x01 for f in frames)
