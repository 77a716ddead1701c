"""Admission of new allocations beyond one server's own quotas: ALTERNATE-SERVER redirection
and a quota shared with other servers (RFC 8489 §10, RFC 8656 §7.2 steps 6 and 7).

Theory of operation
-------------------
The TURN core (:class:`~anchor_turn.server.TurnServer`) counts its own allocations per
username and in all (486 Allocation Quota Reached past ``user_quota`` / ``total_quota``).
A fleet of servers needs two more answers to an Allocate that passed authentication, both
asked in this order, after the request's own checks and before a relayed address is bound:

1. :class:`AlternateServers` — "try another server" (300 Try Alternate with
   ALTERNATE-SERVER, RFC 8489 §10; RFC 8656 §7.2 lets a server redirect Allocate). The
   server redirects while it is :attr:`~AlternateServers.draining` (shutting down) or once it
   holds ``above`` allocations or more (``above=0``: always, which is what coturn's
   ``--alternate-server`` does). Alternates are handed out in turn, only those of the
   client's address family (as coturn does: a client cannot follow a redirect to the other
   family). A TLS client would need ALTERNATE-DOMAIN to check the alternate's certificate
   (RFC 8489 §10): without a configured ``domain`` TLS clients are not redirected.
2. :class:`SharedQuota` — a quota kept outside the process (in Redis,
   :mod:`anchor_turn.aio.redis_store`), which the core asks with :meth:`SharedQuota.acquire`
   (``None``: admitted; otherwise the error code to answer: 486 when the user or the fleet
   is at its quota, 508 Insufficient Capacity when the store cannot be reached) and tells
   with :meth:`SharedQuota.release` when the allocation ends, however it ends. ``allocation``
   is a string naming the allocation within this server (its 5-tuple); the store makes it
   unique across servers.

Both are sans-I/O as seen from the core: ``acquire`` must answer at once (an implementation
that talks to a store bounds its wait and fails fast while the store is down).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from anchor_stun.attributes import AlternateDomain, AlternateServer, Attribute
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address

__all__ = [
    "AlternateServers",
    "SharedQuota",
]


@runtime_checkable
class SharedQuota(Protocol):
    """A quota of allocations shared by several servers (RFC 8656 §7.2 step 7, 486)."""

    def acquire(self, username: str, allocation: str, now: float) -> int | None:
        """Count a new allocation of ``username`` named ``allocation``: None when admitted,
        else the error code to answer (486 over quota, 508 when the store is unavailable)."""
        ...

    def release(self, username: str, allocation: str) -> None:
        """The allocation admitted under ``allocation`` ended (deleted or expired)."""
        ...


def _is_ipv6(ip: str) -> bool:
    return ":" in ip


class AlternateServers:
    """Where to send clients with 300 Try Alternate (RFC 8489 §10, §14.15; RFC 8656 §7.2).

    ``servers`` are (ip, port) addresses; ``above`` the number of allocations from which new
    ones are redirected (None: only while :attr:`draining`; 0: always); ``domain`` the
    ALTERNATE-DOMAIN sent with them, without which TLS clients are never redirected.
    Raises :class:`LocalProtocolError` on an empty list or a negative ``above``.
    """

    def __init__(
        self, servers: Iterable[Address], *, above: int | None = None, domain: str | None = None
    ) -> None:
        self.servers: tuple[Address, ...] = tuple((str(ip), int(port)) for ip, port in servers)
        """The alternate servers."""
        if not self.servers:
            raise LocalProtocolError("AlternateServers needs at least one server")
        if above is not None and above < 0:
            raise LocalProtocolError("AlternateServers above must be >= 0")
        self.above = above
        """Allocations held from which new ones are redirected (None: only when draining)."""
        self.domain = domain
        """ALTERNATE-DOMAIN (RFC 8489 §14.16), or None."""
        self.draining = False
        """True while the server shuts down: every new allocation is redirected."""
        self.redirected = 0
        """Allocate requests answered with 300."""
        self._turn = 0

    def choose(self, client: Address, transport: str, allocations: int) -> list[Attribute] | None:
        """The attributes of a 300 for a new allocation of ``client`` over ``transport``
        while the server holds ``allocations``, or None to serve it here."""
        if not self.draining and (self.above is None or allocations < self.above):
            return None
        if transport == "tls" and self.domain is None:
            return None
        v6 = _is_ipv6(client[0]) and not client[0].startswith("::ffff:")
        same = [s for s in self.servers if _is_ipv6(s[0]) == v6]
        if not same:
            return None
        server = same[self._turn % len(same)]
        self._turn += 1
        self.redirected += 1
        attrs: list[Attribute] = [AlternateServer(server[0], server[1])]
        if self.domain is not None:
            attrs.append(AlternateDomain(self.domain))
        return attrs
