"""ICMP errors on an unconnected UDP socket, with the address each one is about (Linux).

Theory of operation
-------------------
A UDP socket that sends to many destinations (NAT discovery's primary and alternate
addresses, RFC 5780 §4; gathering's STUN and TURN servers and the ICE checks, RFC 8445
§5.1.1 and §7.2.5.2.2) cannot be connected, and an unconnected socket hears nothing of the
ICMP errors its datagrams cause unless it asks. :func:`enable_icmp_errors` asks
(``IP_RECVERR`` / ``IPV6_RECVERR``, ip(7) and ipv6(7)): the kernel then queues every ICMP
error in the socket's *error queue*, with the destination of the datagram that caused it,
and reports the error once on the next receive or send (``recvfrom``/``sendto`` raise it,
asyncio calls ``error_received``). The socket stays readable (``EPOLLERR``) while the queue
holds an entry, so whoever sees such an error must drain the queue:
:func:`read_icmp_errors` reads it (``MSG_ERRQUEUE``) and returns the destinations reported
unreachable (RFC 1122 §4.1.3.3: port, protocol, host or network unreachable, or
administratively prohibited), each with its ``OSError``. Other entries (a local ``EMSGSIZE``,
say) are read and dropped.

Both are best effort: elsewhere than Linux, :func:`enable_icmp_errors` returns False and
:func:`read_icmp_errors` finds nothing, so transactions end by their own timeouts. What an
error means (ending a transaction, failing a check) is for the caller, usually by handing the
address to a sans-I/O core (:meth:`~anchor_stun.nat.NatDiscovery.destination_unreachable`,
``IceAgent.destination_unreachable``).
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from anchor_stun.address import canonical_ip
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address

__all__ = [
    "ERRQUEUE_BATCH",
    "UNREACHABLE_ERRNOS",
    "enable_icmp_errors",
    "read_icmp_errors",
]

# Python 3.11 names none of these on Linux; the values are those of <linux/in.h>,
# <linux/in6.h> and <linux/socket.h>.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_CONTROL_SIZE = 512  # struct sock_extended_err and the offender's address, with room

UNREACHABLE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}
)
"""Errors an ICMP error turns into when the destination is unreachable (RFC 1122
§4.1.3.3): ``ECONNREFUSED`` for a closed port (a *hard* error, RFC 1122 §4.2.3.9), the
others for a host or network the packet could not reach."""
ERRQUEUE_BATCH = 64
"""Entries :func:`read_icmp_errors` reads at most per call (a bound, not a rate)."""


def enable_icmp_errors(sock: socket.socket) -> bool:
    """Ask the kernel to queue the ICMP errors of the UDP socket ``sock`` with their
    destinations (``IP_RECVERR``, or ``IPV6_RECVERR`` on an IPv6 socket; Linux). Returns
    whether it agreed; elsewhere nothing changes and the result is False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
    except OSError:
        return False
    return True


def _canonical(addr: object) -> Address | None:
    """``(ip, port)`` in the cores' text form (a zone dropped), or None for no address."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    try:
        return (canonical_ip(str(addr[0])), int(addr[1]))
    except (LocalProtocolError, ValueError, TypeError):
        return None


def read_icmp_errors(
    sock: socket.socket, limit: int = ERRQUEUE_BATCH
) -> list[tuple[Address, OSError]]:
    """Drain up to ``limit`` entries of the error queue of ``sock`` (non-blocking, with
    :func:`enable_icmp_errors` on) and return, in order, ``(destination, error)`` for each
    destination reported unreachable (``error.errno`` in :data:`UNREACHABLE_ERRNOS`). The
    destination is the address the datagram that caused the error was sent to, as
    ``(ip, port)``. Never raises: an empty queue, or a platform without one, gives []."""
    found: list[tuple[Address, OSError]] = []
    for _ in range(limit):
        try:
            _, ancillary, _, addr = sock.recvmsg(1, _CONTROL_SIZE, _MSG_ERRQUEUE)
        except OSError:  # empty (EAGAIN), or no error queue on this platform
            break
        destination = _canonical(addr)
        for _level, _kind, data in ancillary:
            if len(data) < 4 or destination is None:
                continue
            code = int.from_bytes(data[:4], sys.byteorder)  # sock_extended_err.ee_errno
            if code in UNREACHABLE_ERRNOS:
                found.append((destination, OSError(code, os.strerror(code))))
    return found
