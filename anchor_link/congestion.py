"""Congestion control of the reliable channel: CUBIC, NewReno and a pacer, sans-I/O (RFC 9438,
RFC 9002 §7).

Theory of operation
-------------------
RFC 8085 §3.1 requires congestion control of bulk UDP. :class:`~anchor_link.reliable.ReliableChannel`
drives two small machines of this module, in the manner of aioquic's ``QuicCongestionControl``
and ``QuicPacketPacer``; neither reads a clock: ``now`` comes from the channel.

The channel's controller is :class:`NewReno` (RFC 9002 §7) by default,
``congestion_control="cubic"`` for :class:`Cubic` (RFC 9438, Linux TCP's default controller:
a reduction to 0.7 of the window, then a window that is a cubic function of the time since the
loss, never below what Reno would have). Measured through a 20 Mbit/s bottleneck with a 60 KB
queue, beside one kernel TCP CUBIC flow that joins a link already running
(conformance/test_natlab_bottleneck.py), ten seconds measured: NewReno took 47-55 % of the
bottleneck (3 runs), CUBIC 55-66 % (and more the longer both ran: 62-70 % over the ten seconds
from 4.5 s on), its paced frames seeing fewer losses than the bursty TCP's. Alone, both fill
the bottleneck (18.6-18.7 Mbit/s). NewReno is the fairer neighbour here, so it is the
default. Everything below about NewReno (slow start, recovery periods, persistent
congestion, the application-limited rule) holds for :class:`Cubic` too; its congestion
avoidance and reduction are in its docstring.

:class:`NewReno` (RFC 9002 §7.3, Appendix B; RFC 5681, RFC 6582) keeps the congestion window
``congestion_window`` and ``bytes_in_flight``, both in bytes of UDP payload (DATA and FIN
frames; ACK frames are not counted, like QUIC's ACK-only packets). The channel sends a frame
only when ``bytes_in_flight + size <= congestion_window``: bytes in flight never exceed the
window, except after the window shrinks under data already sent.

- Slow start: the window starts at :func:`initial_window` (ten datagrams, §7.2) and grows by
  every byte acknowledged while it is below ``ssthresh`` (infinite at first).
- Congestion avoidance: at or above ``ssthresh`` it grows by one ``max_datagram_size`` per
  window of bytes acknowledged (``max_datagram_size * acked / congestion_window`` per ACK).
- It grows only while the sender is congestion-limited (§7.8): when the latest send pass was
  blocked by the window or left at least half of it in flight; an application or flow-control
  limited sender would otherwise inflate a window it never used.
- Loss (§7.3.2): the channel's RACK (RFC 8985) declares frames lost and calls
  :meth:`NewReno.on_lost` with the latest send time among them. If that frame was sent after
  the current recovery period began, a congestion event starts one: ``ssthresh`` = half the
  window, the window = ``max(ssthresh, minimum window)``, the recovery period starts ``now``.
  Losses of frames sent before that (the rest of the same round trip) cause no second
  reduction: one reaction per round trip. Frames sent before the recovery period began do not
  grow the window when they are acknowledged (§7.3.2: "recovery period").
- Persistent congestion (§7.6): frames lost over a span of at least
  :meth:`NewReno.persistent_congestion_duration` (3 x (SRTT + max(4 RTTVAR, G))) with nothing
  delivered in between, or the channel's retransmission timeout (both tail-loss probes lost,
  RFC 6298's last resort; RFC 5681 §3.1 sets the loss window there): the window collapses to
  the minimum window (two datagrams, §7.2) and slow start begins again.

:class:`Pacer` (§7.7) spreads a window over a round trip instead of one burst: a token bucket
in bytes that fills at ``1.25 * congestion_window / smoothed_rtt``, holds at most the initial
window (the largest burst §7.7 allows), and may go negative by one frame (a frame leaves while
the bucket is not negative). When it is empty, :meth:`Pacer.next_send_time` says when the next
frame may leave; the channel reports that through ``next_timer()``. A deficit that refills
within :data:`PACING_GRANULARITY` does not hold a frame (timers are not that fine, and the
bucket would only fill in the meantime). Before the first RTT sample there is no rate and
nothing is paced (the initial window alone bounds the first flight).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from anchor_stun.address import count

__all__ = [
    "CONGESTION_CONTROLLERS",
    "CUBIC_ALPHA",
    "CUBIC_BETA",
    "CUBIC_C",
    "DEFAULT_CONGESTION_CONTROL",
    "LOSS_REDUCTION_FACTOR",
    "PACING_GAIN",
    "PACING_GRANULARITY",
    "PERSISTENT_CONGESTION_THRESHOLD",
    "CongestionController",
    "Cubic",
    "NewReno",
    "Pacer",
    "initial_window",
    "minimum_window",
]

LOSS_REDUCTION_FACTOR = 0.5  # RFC 9002 §7.3.2 (kLossReductionFactor)
PERSISTENT_CONGESTION_THRESHOLD = 3  # RFC 9002 §7.6.1 (kPersistentCongestionThreshold)
PACING_GAIN = 1.25  # RFC 9002 §7.7: N = 1.25
PACING_GRANULARITY = 0.001  # seconds; RFC 9002 §6.1.2's kGranularity
_GRANULARITY = 0.001  # RFC 9002 §6.1.2 kGranularity (and RFC 6298's G)


def initial_window(max_datagram_size: int) -> int:
    """RFC 9002 §7.2: min(10 * max_datagram_size, max(14720, 2 * max_datagram_size))."""
    return min(10 * max_datagram_size, max(14720, 2 * max_datagram_size))


def minimum_window(max_datagram_size: int) -> int:
    """RFC 9002 §7.2: kMinimumWindow, two datagrams."""
    return 2 * max_datagram_size


class NewReno:
    """The NewReno congestion controller of RFC 9002 §7.3 and Appendix B (module docstring).

    ``max_datagram_size`` is the largest frame the channel sends (its ``mtu``)."""

    __slots__ = (
        "_limited",
        "_min_window",
        "bytes_in_flight",
        "congestion_events",
        "congestion_window",
        "max_datagram_size",
        "persistent_congestion",
        "recovery_start",
        "ssthresh",
    )

    def __init__(self, max_datagram_size: int) -> None:
        self.max_datagram_size = count(max_datagram_size, "max_datagram_size")
        """Bytes of the largest datagram (RFC 9002 §7.2 max_datagram_size)."""
        self.congestion_window = initial_window(max_datagram_size)
        """Bytes that may be in flight (RFC 9002 §7)."""
        self.ssthresh: int | None = None
        """Slow start threshold in bytes; None: infinite (RFC 9002 §7.3.1)."""
        self.bytes_in_flight = 0
        """Bytes of DATA and FIN frames sent, neither acknowledged nor declared lost."""
        self.recovery_start: float = float("-inf")
        """When the current recovery period began (RFC 9002 §7.3.2
        congestion_recovery_start_time); frames sent at or before it do not start another."""
        self.congestion_events = 0
        """Reductions of the window for loss (one per round trip at most)."""
        self.persistent_congestion = 0
        """Collapses to the minimum window (RFC 9002 §7.6.2, or a retransmission timeout)."""
        self._min_window = minimum_window(max_datagram_size)
        self._limited = False

    @property
    def in_slow_start(self) -> bool:
        """Whether the window is below ``ssthresh`` (RFC 9002 §7.3.1)."""
        return self.ssthresh is None or self.congestion_window < self.ssthresh

    def on_sent(self, sent_bytes: int, blocked: bool) -> None:
        """A send pass put ``sent_bytes`` in flight; ``blocked``: frames were left waiting
        because the window was full (the sender is congestion-limited, RFC 9002 §7.8)."""
        self.bytes_in_flight += sent_bytes
        self._limited = blocked or 2 * self.bytes_in_flight >= self.congestion_window

    def on_acked(
        self, acked_bytes: int, growth_bytes: int, now: float = 0.0, srtt: float | None = None
    ) -> None:
        """An ACK newly acknowledged ``acked_bytes`` of frames in flight, ``growth_bytes`` of
        them sent after the recovery period began (RFC 9002 §7.3, OnPacketAcked). ``now`` and
        ``srtt`` are not used (NewReno counts bytes, not time; :class:`Cubic` uses them)."""
        self.bytes_in_flight -= acked_bytes
        if growth_bytes <= 0 or not self._limited:
            return
        cwnd = self.congestion_window
        if self.ssthresh is None or cwnd < self.ssthresh:
            self.congestion_window = cwnd + growth_bytes  # slow start, RFC 9002 §7.3.1
        else:  # congestion avoidance, RFC 9002 §7.3.3
            self.congestion_window = cwnd + self.max_datagram_size * growth_bytes // cwnd

    def on_lost(self, latest_sent_at: float, now: float) -> bool:
        """Frames were declared lost (the caller took their bytes out of ``bytes_in_flight``),
        the latest of them sent at ``latest_sent_at``: a congestion event unless that frame
        was sent within the current recovery period (RFC 9002 §7.3.2, OnCongestionEvent).
        True when the window was reduced."""
        if latest_sent_at <= self.recovery_start:
            return False
        self.recovery_start = now
        self.congestion_events += 1
        ssthresh = int(self.congestion_window * LOSS_REDUCTION_FACTOR)
        self.ssthresh = max(ssthresh, self._min_window)
        self.congestion_window = max(ssthresh, self._min_window)
        return True

    def on_persistent_congestion(self, now: float) -> None:
        """RFC 9002 §7.6.2: the window collapses to the minimum window and slow start starts
        again (towards ``ssthresh``, which a congestion event set). Also the reaction to a
        retransmission timeout (RFC 5681 §3.1)."""
        self.persistent_congestion += 1
        if self.ssthresh is None:
            self.ssthresh = max(
                int(self.congestion_window * LOSS_REDUCTION_FACTOR), self._min_window
            )
        self.congestion_window = self._min_window
        self.recovery_start = now

    @staticmethod
    def persistent_congestion_duration(srtt: float, rttvar: float) -> float:
        """RFC 9002 §7.6.1: (smoothed_rtt + max(4 rttvar, kGranularity)) * 3 (no
        max_ack_delay: the channel acknowledges every batch at once)."""
        return (srtt + max(4 * rttvar, _GRANULARITY)) * PERSISTENT_CONGESTION_THRESHOLD


class Pacer:
    """A token bucket of bytes that paces frames at 1.25 x cwnd / SRTT (RFC 9002 §7.7;
    module docstring). ``burst``: the most bytes it holds (the initial window)."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, burst: int) -> None:
        count(burst, "burst")
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = 0.0
        self._rate: float | None = None

    @property
    def rate(self) -> float | None:
        """Bytes per second, None before the first RTT sample (no pacing)."""
        return self._rate

    @property
    def tokens(self) -> float:
        """Bytes in the bucket at the last update (negative: a deficit)."""
        return self._tokens

    def update_rate(self, congestion_window: int, srtt: float) -> None:
        """Set the rate from the window and the smoothed RTT (RFC 9002 §7.7)."""
        self._rate = PACING_GAIN * congestion_window / max(srtt, 1e-6)

    def budget(self, now: float) -> float:
        """Bytes that may start leaving at ``now``: frames leave while the bytes sent in this
        pass are below it (so the last one may overdraw the bucket). Infinite without a rate;
        a deficit that refills within :data:`PACING_GRANULARITY` does not hold a frame."""
        rate = self._rate
        if rate is None:
            return float("inf")
        if now > self._last:
            tokens = self._tokens + (now - self._last) * rate
            self._tokens = tokens if tokens < self._burst else self._burst
            self._last = now
        return max(0.0, self._tokens + rate * PACING_GRANULARITY)

    def on_sent(self, sent_bytes: int, now: float) -> None:
        """Take ``sent_bytes`` out of the bucket (call :meth:`budget` at ``now`` first)."""
        if self._rate is not None:
            self._tokens -= sent_bytes

    def next_send_time(self, now: float) -> float:
        """When the bucket is no longer in deficit (``now`` if it is not): from then on
        :meth:`budget` is positive."""
        rate = self._rate
        if rate is None or self._tokens >= 0:
            return now
        return max(now, self._last + -self._tokens / rate)


CUBIC_C = 0.4  # RFC 9438 §5.1: C, in segments per second cubed
CUBIC_BETA = 0.7  # RFC 9438 §4.6: beta_cubic, the multiplicative decrease factor
CUBIC_ALPHA = 3 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA)  # RFC 9438 §4.3: alpha_cubic


class Cubic:
    """CUBIC (RFC 9438), the congestion controller of Linux TCP, with NewReno's interface.

    Slow start, recovery periods, persistent congestion, the minimum window and the
    application-limited rule are those of :class:`NewReno` (RFC 9438 §4.10 keeps slow start;
    RFC 9002 frames the rest). What differs is congestion avoidance and the reduction:

    - A congestion event (§4.6) sets ``ssthresh`` and the window to ``beta_cubic`` (0.7) times
      the window, and starts a congestion avoidance epoch at ``now``: ``t_epoch = now``,
      ``cwnd_epoch`` the reduced window, ``W_est = cwnd_epoch``, ``cwnd_prior`` the window
      before the reduction. ``W_max`` is the window before it, or with fast convergence
      (§4.7), when that window is below the previous ``W_max``, ``window * (1 + beta) / 2``.
    - ``K = cbrt((W_max - cwnd_epoch) / C)`` seconds (§4.2, eq. 2; windows in segments of
      ``max_datagram_size``), 0 when the epoch starts at or above ``W_max`` (then
      ``W_max`` = the window: the curve starts on its plateau).
    - Per ACK in congestion avoidance, with ``t = now - t_epoch`` and ``RTT`` the smoothed RTT:
      ``W_cubic(t) = C (t - K)^3 + W_max`` (eq. 1); ``W_est += alpha * acked / cwnd`` (eq. 4,
      in segments; ``alpha = 3 (1 - beta) / (1 + beta)``, or 1 once ``W_est >= cwnd_prior``,
      §4.3). In the Reno-friendly region (``W_cubic(t) < W_est``) the window is ``W_est``;
      otherwise (concave §4.4, convex §4.5) it grows towards
      ``target = W_cubic(t + RTT)`` clamped to [cwnd, 1.5 cwnd] by ``(target - cwnd) / cwnd``
      segments per segment acknowledged.
    - Slow start ending at ``ssthresh`` (after a timeout or persistent congestion) starts an
      epoch there too (§4.8: ``W_max`` as set by the last congestion event).
    - Persistent congestion and the retransmission timeout (§4.8): ``ssthresh`` = ``beta`` x
      the window, the window the minimum window, no epoch until slow start reaches
      ``ssthresh``.

    Windows are kept in bytes; ``congestion_window`` is an int (the fraction of a byte the
    per-ACK increase yields is carried in ``_cwnd``)."""

    __slots__ = (
        "_cwnd",
        "_limited",
        "_min_window",
        "bytes_in_flight",
        "congestion_events",
        "congestion_window",
        "cwnd_epoch",
        "cwnd_prior",
        "k",
        "max_datagram_size",
        "persistent_congestion",
        "recovery_start",
        "ssthresh",
        "t_epoch",
        "w_est",
        "w_max",
    )

    def __init__(self, max_datagram_size: int) -> None:
        self.max_datagram_size = count(max_datagram_size, "max_datagram_size")
        """Bytes of the largest datagram (one segment of RFC 9438's windows)."""
        self.congestion_window = initial_window(max_datagram_size)
        """Bytes that may be in flight (RFC 9438 cwnd)."""
        self._cwnd = float(self.congestion_window)
        self.ssthresh: int | None = None
        """Slow start threshold in bytes; None: infinite."""
        self.bytes_in_flight = 0
        """Bytes of DATA and FIN frames sent, neither acknowledged nor declared lost."""
        self.recovery_start: float = float("-inf")
        """When the current recovery period began (RFC 9002 §7.3.2)."""
        self.congestion_events = 0
        """Reductions of the window for loss (one per round trip at most)."""
        self.persistent_congestion = 0
        """Collapses to the minimum window (persistent congestion or a retransmission timeout)."""
        self.w_max: float | None = None
        """Bytes: the window just before the last reduction (RFC 9438 W_max), None before one."""
        self.cwnd_prior = 0.0
        """Bytes: the window before the last congestion event (RFC 9438 cwnd_prior)."""
        self.cwnd_epoch = 0.0
        """Bytes: the window when the current congestion avoidance epoch began."""
        self.w_est = 0.0
        """Bytes: the Reno-friendly estimate (RFC 9438 W_est, §4.3)."""
        self.k = 0.0
        """Seconds from the epoch's start until ``W_cubic`` reaches ``W_max`` (RFC 9438 K)."""
        self.t_epoch: float | None = None
        """When the current congestion avoidance epoch began; None: none (slow start)."""
        self._min_window = minimum_window(max_datagram_size)
        self._limited = False

    @property
    def in_slow_start(self) -> bool:
        """Whether the window is below ``ssthresh`` (RFC 9438 §4.10)."""
        return self.ssthresh is None or self.congestion_window < self.ssthresh

    def w_cubic(self, t: float) -> float:
        """RFC 9438 §4.2 eq. 1 in bytes: C (t - K)^3 segments + W_max, ``t`` seconds into
        the epoch."""
        w_max = self.w_max if self.w_max is not None else self.cwnd_epoch
        return CUBIC_C * (t - self.k) ** 3 * self.max_datagram_size + w_max

    def on_sent(self, sent_bytes: int, blocked: bool) -> None:
        """As :meth:`NewReno.on_sent` (RFC 9002 §7.8's congestion-limited test)."""
        self.bytes_in_flight += sent_bytes
        self._limited = blocked or 2 * self.bytes_in_flight >= self.congestion_window

    def _start_epoch(self, now: float) -> None:
        """A congestion avoidance epoch begins at ``now`` with the current window (§4.2)."""
        cwnd = self._cwnd
        self.t_epoch = now
        self.cwnd_epoch = cwnd
        self.w_est = cwnd
        if self.w_max is None or self.w_max <= cwnd:
            self.w_max = cwnd
            self.k = 0.0
        else:
            self.k = ((self.w_max - cwnd) / self.max_datagram_size / CUBIC_C) ** (1 / 3)

    def on_acked(
        self, acked_bytes: int, growth_bytes: int, now: float = 0.0, srtt: float | None = None
    ) -> None:
        """An ACK newly acknowledged ``acked_bytes`` of frames in flight, ``growth_bytes`` of
        them sent after the recovery period began: slow start, or RFC 9438 §4.2-§4.5 at
        ``now`` with the smoothed RTT ``srtt`` (class docstring)."""
        self.bytes_in_flight -= acked_bytes
        if growth_bytes <= 0 or not self._limited:
            return
        cwnd = self._cwnd
        ssthresh = self.ssthresh
        if ssthresh is None or cwnd < ssthresh:
            cwnd += growth_bytes  # slow start
            if ssthresh is None or cwnd < ssthresh:
                self._set(cwnd)
                return
            growth_bytes = int(cwnd - ssthresh)  # the rest is congestion avoidance
            cwnd = float(ssthresh)
            self._cwnd = cwnd
            self.t_epoch = None
        if self.t_epoch is None:
            self._start_epoch(now)
            if growth_bytes <= 0:
                self._set(cwnd)
                return
        assert self.t_epoch is not None
        mds = self.max_datagram_size
        t = now - self.t_epoch
        rtt = srtt if srtt is not None else 0.0
        # Reno-friendly estimate (§4.3, eq. 4): alpha_cubic, then 1 once past cwnd_prior.
        alpha = 1.0 if self.w_est >= self.cwnd_prior else CUBIC_ALPHA
        self.w_est += alpha * mds * growth_bytes / cwnd
        if self.w_cubic(t) < self.w_est:
            cwnd = self.w_est  # Reno-friendly region (§4.3)
        else:  # concave (§4.4) or convex (§4.5) region
            target = min(max(self.w_cubic(t + rtt), cwnd), 1.5 * cwnd)
            cwnd += (target - cwnd) * growth_bytes / cwnd
        self._set(cwnd)

    def _set(self, cwnd: float) -> None:
        self._cwnd = cwnd
        self.congestion_window = int(cwnd)

    def on_lost(self, latest_sent_at: float, now: float) -> bool:
        """Frames were declared lost, the latest sent at ``latest_sent_at``: unless within
        the current recovery period, a congestion event (RFC 9438 §4.6, §4.7; class
        docstring). True when the window was reduced."""
        if latest_sent_at <= self.recovery_start:
            return False
        self.recovery_start = now
        self.congestion_events += 1
        cwnd = self._cwnd
        if self.w_max is not None and cwnd < self.w_max:
            self.w_max = cwnd * (1 + CUBIC_BETA) / 2  # fast convergence (§4.7)
        else:
            self.w_max = cwnd
        self.cwnd_prior = cwnd
        reduced = max(int(cwnd * CUBIC_BETA), self._min_window)
        self.ssthresh = reduced
        self._set(float(reduced))
        self._start_epoch(now)
        return True

    def on_persistent_congestion(self, now: float) -> None:
        """Persistent congestion or a retransmission timeout (RFC 9438 §4.8; RFC 9002
        §7.6.2): ``ssthresh`` = beta x the window (unless a congestion event of this
        recovery period already set it), the minimum window, slow start up to ``ssthresh``."""
        self.persistent_congestion += 1
        if self.recovery_start < now:  # not reduced by a congestion event just now
            cwnd = self._cwnd
            self.w_max = self.cwnd_prior = cwnd
            self.ssthresh = max(int(cwnd * CUBIC_BETA), self._min_window)
        self._set(float(self._min_window))
        self.t_epoch = None
        self.recovery_start = now

    persistent_congestion_duration = staticmethod(NewReno.persistent_congestion_duration)


class CongestionController(Protocol):
    """What :class:`~anchor_link.reliable.ReliableChannel` needs of a congestion controller
    (:class:`Cubic`, :class:`NewReno`)."""

    congestion_window: int
    ssthresh: int | None
    bytes_in_flight: int
    recovery_start: float
    congestion_events: int
    persistent_congestion: int

    @property
    def in_slow_start(self) -> bool: ...
    def on_sent(self, sent_bytes: int, blocked: bool) -> None: ...
    def on_acked(
        self, acked_bytes: int, growth_bytes: int, now: float = 0.0, srtt: float | None = None
    ) -> None: ...
    def on_lost(self, latest_sent_at: float, now: float) -> bool: ...
    def on_persistent_congestion(self, now: float) -> None: ...
    def persistent_congestion_duration(self, srtt: float, rttvar: float) -> float: ...


CONGESTION_CONTROLLERS: dict[str, Callable[[int], CongestionController]] = {
    "cubic": Cubic,
    "newreno": NewReno,
}
"""The controllers a channel can use, by name (each made with the channel's ``mtu``)."""
DEFAULT_CONGESTION_CONTROL = "newreno"
"""NewReno (RFC 9002 §7): beside a kernel TCP CUBIC flow it took the fairer share of a shared
bottleneck (module docstring); ``congestion_control="cubic"`` selects CUBIC (RFC 9438)."""
