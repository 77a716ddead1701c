"""Bandwidth of each allocation, as coturn's ``--max-bps``: bytes per second a relayed
transport address may carry, each direction on its own (RFC 8656 §7.2 leaves resource
limits to the server; §21 asks servers to bound what one client can make them send).

Theory of operation
-------------------
:class:`RelayShaper` keeps two token buckets of bytes per relayed address: one for what the
client sends to peers, one for what peers send to the client. Each fills at ``rate`` bytes a
second up to ``burst`` bytes (one second's worth by default, so a client that keeps under
the rate never loses a datagram and one that goes over loses what is over). A datagram that
does not fit its bucket is dropped, as UDP may be, and counted in :attr:`RelayShaper.dropped`.
The adapter asks :meth:`RelayShaper.admit` for each relayed datagram (it knows the relayed
address of both directions); the core is not involved, so the relay's fast path pays
nothing when no rate is set. A bucket that is full again is as good as none: such buckets are
forgotten when the table grows (amortised, as the core's timer heap), so memory follows the
relays that are busy, not every relay that ever was. Sans-I/O: ``now`` is given.
"""

from __future__ import annotations

from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address

__all__ = ["RelayShaper"]

_PRUNE_MIN = 4096


class RelayShaper:
    """Per-relay byte rate in each direction (coturn's ``--max-bps``). ``rate`` is bytes per
    second (> 0); ``burst`` the bucket size in bytes (default ``max(rate, 65535)``, so one
    datagram of any size can pass). Raises :class:`LocalProtocolError` on a bad value."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0:
            raise LocalProtocolError("the relay rate must be > 0 bytes per second")
        self.rate = float(rate)
        """Bytes per second per relayed address and direction."""
        self.burst = float(burst if burst is not None else max(rate, 65535.0))
        """Bucket size, bytes."""
        if not self.burst > 0:
            raise LocalProtocolError("the relay burst must be > 0 bytes")
        self.dropped = 0
        """Datagrams dropped for going over the rate."""
        self.dropped_bytes = 0
        """Bytes of those datagrams."""
        self._buckets: dict[tuple[Address, bool], list[float]] = {}
        self._prune_at = _PRUNE_MIN

    def admit(self, relay: Address, to_peer: bool, size: int, now: float) -> bool:
        """Whether a datagram of ``size`` bytes through ``relay`` (towards the peer when
        ``to_peer``, else towards the client) fits the rate now; counts it if not."""
        key = (relay, to_peer)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[key] = [self.burst, now]
        else:
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            bucket[0] = tokens if tokens < self.burst else self.burst
            bucket[1] = now
        if bucket[0] >= size:
            bucket[0] -= size
            return True
        self.dropped += 1
        self.dropped_bytes += size
        return False

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        full = self.burst
        rate = self.rate
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if bucket[0] + (now - bucket[1]) * rate < full
        }
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._buckets))
