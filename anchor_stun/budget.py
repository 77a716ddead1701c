"""The answer budget of a STUN/TURN server: what an unauthenticated source can be sent.

Theory of operation
-------------------
Over UDP a request's source address is not proven, so every answer a server sends without
first checking a credential (a Binding response, a 400, a 420, the 401 and 438 challenges
of RFC 8489 §9.2.4) can be aimed at a victim by spoofing its address: a reflection, and an
amplification when the answer is bigger than the request (a 401 is 6.8 times a minimal
20-byte Allocate, a Binding response with OTHER-ADDRESS 4.4 times a minimal Binding).
RFC 8489 §16.1 and RFC 8656 §21.1 leave the defence to the server; QUIC's answer to the
same problem (RFC 9000 §8.1: at most three times the bytes received from an address not
yet validated) is the model here, kept per source *prefix* so that a victim's many
addresses share one budget.

:class:`AnswerBudget` keeps, per prefix (IPv4 /24, IPv6 /64 by default; an IPv4-mapped
IPv6 address counts as its IPv4 address), two things:

* a token bucket of answers: ``rate`` per second after a burst of ``burst``, which bounds
  the work and the packets one prefix gets;
* a credit of bytes: every request from the prefix earns ``factor`` times its size, every
  answer spends its size, the credit grows back by itself at ``allowance / memory`` bytes a
  second (6.8 B/s at the defaults) and never exceeds ``allowance`` (which is also what a
  new prefix starts with). So what a prefix is sent in ``t`` seconds is at most
  ``allowance + factor x`` what it sent ``+ t x allowance / memory``: a flood is answered
  at most ``factor`` (3) times over, a slow prober gets at most 6.8 B/s more, and
  a new client gets its first answers at once from the allowance.

An answer is sent only when both allow it (:meth:`AnswerBudget.charge`); a request that is
answered with a signed response (an authenticated TURN request) earns credit for its
prefix without spending any (:meth:`AnswerBudget.earn`). A prefix's record is forgotten
once it is as good as new (its tokens and credit grown back: it is then no different from
no record), and at most ``max_prefixes`` are kept, the least recently used dropped first,
so a flood from many sources cannot grow memory.

The budget is sans-I/O: ``now`` is given. Both :class:`~anchor_stun.server.StunServer` and
the TURN server core take one; the TURN core shares its budget with its STUN core, so
Binding answers and challenges to one prefix draw from one budget.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from anchor_stun.address import count
from anchor_stun.errors import LocalProtocolError

__all__ = [
    "AMPLIFICATION_FACTOR",
    "ANSWER_ALLOWANCE",
    "ANSWER_BURST",
    "ANSWER_RATE",
    "AnswerBudget",
]

ANSWER_RATE = 20.0
"""Unsigned answers per second per source prefix, after the burst."""
ANSWER_BURST = 50
"""Unsigned answers a source prefix may get at once."""
AMPLIFICATION_FACTOR = 3.0
"""Bytes a prefix may be sent per byte it sent (RFC 9000 §8.1 uses the same factor)."""
ANSWER_ALLOWANCE = 4096
"""Bytes of answers a prefix may get beyond ``factor`` x its requests (its first answers)."""
_MEMORY = 600.0
_MAX_PREFIXES = 65536
_PREFIX_CACHE = 4096


class AnswerBudget:
    """Per-prefix budget of unsigned answers over UDP (module docstring).

    ``rate`` and ``burst``: the answer count bucket; ``factor`` and ``allowance``: the
    byte credit; ``v4_prefix`` and ``v6_prefix``: the prefix lengths sources are grouped
    by; ``memory``: seconds a record is kept after its last request; ``max_prefixes``: the
    most records kept. :attr:`refused` and :attr:`refused_bytes` count what was not sent.
    A bad argument raises :class:`~anchor_stun.errors.LocalProtocolError` naming it.
    """

    __slots__ = (
        "_prefix_cache",
        "_records",
        "allowance",
        "burst",
        "factor",
        "max_prefixes",
        "memory",
        "rate",
        "refused",
        "refused_bytes",
        "regen",
        "v4_prefix",
        "v6_prefix",
    )

    def __init__(
        self,
        *,
        rate: float = ANSWER_RATE,
        burst: int = ANSWER_BURST,
        factor: float = AMPLIFICATION_FACTOR,
        allowance: int = ANSWER_ALLOWANCE,
        v4_prefix: int = 24,
        v6_prefix: int = 64,
        memory: float = _MEMORY,
        max_prefixes: int = _MAX_PREFIXES,
    ) -> None:
        for value, what, low, strict in (
            (rate, "rate", 0, True), (memory, "memory", 0, True), (burst, "burst", 1, False),
            (factor, "factor", 0, False), (allowance, "allowance", 0, False),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (value > low if strict else value >= low)
            ):
                bound = f"> {low}" if strict else f">= {low}"
                raise LocalProtocolError(f"{what} must be a number {bound}, not {value!r}")
        count(v4_prefix, "v4_prefix", 0, 32)
        count(v6_prefix, "v6_prefix", 0, 128)
        count(max_prefixes, "max_prefixes")
        self.rate = rate
        self.burst = float(burst)
        self.factor = factor
        self.allowance = float(allowance)
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.memory = memory
        self.regen = allowance / memory if memory > 0 else float(allowance)
        self.max_prefixes = max_prefixes
        self.refused = 0
        """Answers not sent: their prefix was over its budget."""
        self.refused_bytes = 0
        """Bytes of the answers not sent."""
        # prefix -> [answer tokens, byte credit, time of last request], least recent first
        self._records: OrderedDict[bytes, list[float]] = OrderedDict()
        self._prefix_cache: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._records)

    def prefix(self, ip: str) -> bytes:
        """The prefix ``ip`` is accounted under (an IPv4-mapped IPv6 address as IPv4);
        a string that is not an IP address is its own prefix."""
        cache = self._prefix_cache
        key = cache.get(ip)
        if key is None:
            try:
                addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
            except ValueError:
                key = ip.encode("utf-8", "replace")
            else:
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                if isinstance(addr, ipaddress.IPv4Address):
                    bits = self.v4_prefix
                    key = b"4" + (int(addr) >> (32 - bits) << (32 - bits)).to_bytes(4, "big")
                else:
                    bits = self.v6_prefix
                    key = b"6" + (int(addr) >> (128 - bits) << (128 - bits)).to_bytes(16, "big")
            if len(cache) >= _PREFIX_CACHE:
                cache.clear()
            cache[ip] = key
        return key

    def charge(self, ip: str, request: int, answer: int, now: float) -> bool:
        """A request of ``request`` bytes from ``ip`` would be answered with ``answer``
        bytes: True (and the answer is spent) when the prefix's budget allows it."""
        record = self._touch(ip, request, now)
        tokens, credit = record[0], record[1]
        if tokens >= 1.0 and credit >= answer:
            record[0] = tokens - 1.0
            record[1] = credit - answer
            return True
        self.refused += 1
        self.refused_bytes += answer
        return False

    def earn(self, ip: str, request: int, now: float) -> None:
        """A request of ``request`` bytes from ``ip`` got a signed answer: it earns credit
        for its prefix (only a prefix with a record: a new one starts full anyway)."""
        key = self.prefix(ip)
        record = self._records.get(key)
        if record is not None:
            record[1] = min(self.allowance, record[1] + self.factor * request)

    def _touch(self, ip: str, request: int, now: float) -> list[float]:
        records = self._records
        key = self.prefix(ip)
        record = records.get(key)
        allowance = self.allowance
        if record is None:
            record = [self.burst, allowance, now]
            records[key] = record
        else:
            elapsed = now - record[2]
            if elapsed > 0:
                record[0] = min(self.burst, record[0] + elapsed * self.rate)
                record[1] = min(allowance, record[1] + elapsed * self.regen)
                record[2] = now
            records.move_to_end(key)
        record[1] = min(allowance, record[1] + self.factor * request)
        burst, rate, regen = self.burst, self.rate, self.regen
        while records:
            oldest = next(iter(records.values()))
            if oldest is record and len(records) <= self.max_prefixes:
                break
            full_at = oldest[2] + max(
                (burst - oldest[0]) / rate, (allowance - oldest[1]) / regen if regen else 0.0
            )
            if full_at > now and len(records) <= self.max_prefixes:
                break
            records.popitem(last=False)  # as good as new (or one too many): forget it
        return record
