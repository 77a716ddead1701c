"""Congestion control of the reliable channel: NewReno and a pacer, sans-I/O (RFC 9002 §7).

Theory of operation
-------------------
RFC 8085 §3.1 requires congestion control of bulk UDP. :class:`~anchor_link.reliable.ReliableChannel`
drives two small machines of this module, in the manner of aioquic's ``QuicCongestionControl``
and ``QuicPacketPacer``; neither reads a clock: ``now`` comes from the channel.

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

__all__ = [
    "LOSS_REDUCTION_FACTOR",
    "PACING_GAIN",
    "PACING_GRANULARITY",
    "PERSISTENT_CONGESTION_THRESHOLD",
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
        self.max_datagram_size = max_datagram_size
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

    def on_acked(self, acked_bytes: int, growth_bytes: int) -> None:
        """An ACK newly acknowledged ``acked_bytes`` of frames in flight, ``growth_bytes`` of
        them sent after the recovery period began (RFC 9002 §7.3, OnPacketAcked)."""
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
