"""Candidate gathering over asyncio (RFC 8445 §5.1.1), streamed as it comes (RFC 8838).

Theory of operation
-------------------
This module is an asyncio adapter: it owns sockets, the loop and the clock, and drives the
sans-I/O :class:`~anchor_stun.transaction.StunClient` through the same pump the other adapters
use; TURN goes through anchor_turn's one client adapter,
:class:`~anchor_turn.aio.client.TurnConnection`. Nothing protocol-specific happens here
besides the ICE rules of gathering.

Host addresses. :func:`host_addresses` lists the interface addresses (``ifaddr``) an agent
may gather on, filtered per RFC 8445 §5.1.1.1: never unspecified, multicast, IPv6 site-local,
IPv4-compatible or IPv4-mapped IPv6 addresses; loopback and link-local only on request.

One socket per host address. A :class:`Gatherer` binds one UDP socket per host address
(within ``port_range`` when given) and wraps it in a :class:`GatheredSocket`, which reads
it straight from the loop's readiness callback, every waiting datagram at once
(``_DrainingTransport``; asyncio's datagram transport on loops without ``add_reader``).
That socket is the *base* of three kinds of candidates (RFC 8445 §5.1.1.2):

- the host candidate: the socket's own address;
- server-reflexive candidates: a Binding request to each STUN server leaves from the socket
  (a :class:`~anchor_stun.transaction.StunClient` pumped on it); XOR-MAPPED-ADDRESS is the
  candidate, the socket's address its base and related address;
- relayed candidates: an Allocate to each TURN server (a :class:`RelayEndpoint` around a
  :class:`~anchor_turn.aio.client.TurnConnection`). Over UDP it leaves from the socket
  (``TurnConnection.over``); over TCP or TLS (RFC 8656 §3.1, ``turn:...?transport=tcp`` and
  ``turns:`` in RFC 7065's terms) from a connection of its own bound to the socket's IP, its
  relayed datagrams framed on the stream (ChannelData padded, RFC 8656 §12.5). The relayed
  address (UDP in every case) is the candidate and its own base, the mapped address its
  related address; over UDP the mapped address is, when new, a server-reflexive candidate as
  well (over TCP it is a TCP mapping, no UDP candidate).

Demultiplexing and the hand-over to ICE. The same socket later carries the connectivity
checks and the data of the ICE connection, so every datagram that arrives on it is routed:

1. a STUN response to a pending gathering Binding transaction -> that StunClient;
2. anything from the transport address of a TURN server allocated over UDP on this socket
   (STUN responses, Data indications, ChannelData) -> that allocation's TurnConnection (a
   TCP/TLS allocation reads its own stream); data a peer
   sent through the relay comes out as a ``DataReceived`` event and is delivered to the
   :class:`RelayEndpoint`'s handler, with the peer's address;
3. everything else -> the socket's handler (:meth:`GatheredSocket.set_handler`).

Handlers are replaceable at any time. Until one is set, datagrams wait in a bounded backlog
(:data:`MAX_BACKLOG`) and are delivered, in order, when it is: the checks of a fast peer that
arrive while gathering (trickle ICE) are not lost. The ICE connection therefore takes a
socket over by setting handlers (``sock.set_handler`` for host and server-reflexive
candidates, ``relay.set_handler`` for relayed ones) and sends with ``sock.send(data, addr)``
or ``relay.send(data, peer)``. ICMP errors the socket reports (IP_RECVERR's error queue,
read by :mod:`anchor_stun.aio.icmp`, which NAT discovery uses too) end the gathering
transactions with that server, then go to ``sock.set_unreachable_handler``'s handler with
the destination, so the ICE agent fails the checks that went there at once
(RFC 8445 §7.2.5.2.2). :meth:`Gatherer.endpoint` finds the object by the candidate's
base (``gatherer.endpoint(gatherer.base_of(candidate))``). Ownership: the :class:`Gatherer`
closes every socket and releases every allocation in :meth:`Gatherer.close`, unless
:meth:`Gatherer.detach` handed them over, after which the caller closes each
:class:`GatheredSocket` (which releases its allocations) itself. Gathering may still be going
on when the ICE connection takes over; its transactions keep reaching their cores.

Streaming. :meth:`Gatherer.gather` yields each candidate as soon as it is known (host
candidates at once), then one :class:`EndOfCandidates` marker (RFC 8838 "end-of-candidates",
carrying the failures), then stops. Every call replays the stream from the start.

Redundant candidates (RFC 8445 §5.1.3): a candidate whose transport address and base equal
those of one already found is dropped and counted (:attr:`Gatherer.redundant`). Host
candidates are found first and have the highest type preference, so a server-reflexive
candidate equal to its host candidate (no NAT, or a STUN server on loopback) is the one
dropped, as the RFC wants; between two equal reflexive candidates the first found stays.

Time limits: gathering never hangs (the STUN and TURN servers may not answer at all, see
docs/peers.md). Each server gets ``timeout`` seconds per socket, name resolution
included; then the transaction is abandoned and a :class:`GatherFailure` recorded. A TURN
allocation abandoned this way is released if its success response still arrives. New
transactions over UDP are paced ``ta`` seconds apart (RFC 8445 §14.2, default Ta = 50 ms),
and each also waits for a slot of the process's pacer when one is given (``pacer``: a
:class:`~anchor_ice.aio.connection.Connection` gives its own, the loop's shared one by
default, so that gathering and checks of every agent of a process leave 5 ms apart);
TCP/TLS allocations start at once (TCP's own congestion control paces them), so the
allocations over every configured transport start together.

Priorities and foundations come from :func:`~anchor_ice.candidate.make_candidate`: the type
preferences of RFC 8445 §5.1.2.2 and a local preference unique per candidate of one type
(RFC 8445 §5.1.2.1): ``65535 - (h * S + slot)`` where ``h`` is the host address's index
(the order of ``host_ips`` is the preference order), ``S`` the number of servers and
``slot`` the server's index (for host candidates 0; for a TURN server's server-reflexive
candidate, the number of STUN servers plus its index). Relayed candidates are ranked by the
client-server transport first (UDP above TCP above TLS, whatever the host or server index),
and their foundation includes that transport (RFC 8445 §5.1.1.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import ipaddress
import os
import socket
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import ifaddr

from anchor_ice.aio.pacing import TransactionPacer
from anchor_ice.candidate import COMPONENT_RTP, Candidate, CandidateType, make_candidate
from anchor_stun.address import canonical_ip, count, ip_address_list, seconds
from anchor_stun.aio.icmp import UNREACHABLE_ERRNOS, enable_icmp_errors, read_icmp_errors
from anchor_stun.aio.net import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    CorePump,
    TransportName,
    call_user,
    format_address,
    resolve,
    server_address,
    server_list,
    settle_transaction,
)
from anchor_stun.aio.udp import UdpBatchIO
from anchor_stun.attributes import Software, XorMappedAddress
from anchor_stun.errors import (
    AnchorError,
    DecodeError,
    DestinationUnreachable,
    LocalProtocolError,
)
from anchor_stun.events import Address, StunEvent, Transmit
from anchor_stun.integrity import opaque_credential
from anchor_stun.message import Message, MessageClass, Method, is_stun
from anchor_stun.transaction import (
    RTO_INITIAL,
    StunClient,
    TransactionSucceeded,
)
from anchor_turn.aio.client import TurnConnection
from anchor_turn.client import TurnClient, TurnState, check_client_options
from anchor_turn.events import TurnEvent
from anchor_turn.uri import TurnUri, parse_turn_uri

__all__ = [
    "DEFAULT_RELEASE_TIMEOUT",
    "DEFAULT_SERVER_TIMEOUT",
    "DEFAULT_TA",
    "MAX_BACKLOG",
    "DatagramBatchHandler",
    "DatagramHandler",
    "EndOfCandidates",
    "GatherFailure",
    "GatheredSocket",
    "Gatherer",
    "RelayEndpoint",
    "TurnServerConfig",
    "UnreachableHandler",
    "check_port_range",
    "host_addresses",
    "turn_server_configs",
]

SOCKET_RCVBUF = 1 << 20
"""SO_RCVBUF asked for every gathered socket (the kernel caps it at net.core.rmem_max): a
link's channel sends bursts of up to a window of frames."""
SOCKET_SNDBUF = 16384
"""SO_SNDBUF of every gathered socket (Linux counts twice that): how much of what a socket
sent may still sit in the host (its qdiscs and device queue) before a send waits for the
socket to be writable. Where the path's bottleneck is the host's own egress (a shaped
uplink), that is what the socket holds of the bottleneck's queue; the kernel's TCP bounds
its own share of it the same way (TCP small queues), so a link beside the host's TCP flows
takes about half, not the whole queue (measured at a 20 Mbit/s tbf with a 60 KB queue
beside one CUBIC flow: the link's share 43-50 %, against 87 % with the default of about
208 KiB; 8 KiB gave 29 %). Elsewhere the bound costs nothing: loopback and the veths of
namespaces free a datagram's memory as it leaves the qdisc, and a NIC on its transmit
completion, long before a Python sender could fill it."""
# Don't fragment (RFC 8085 §3.2: "datagrams ... SHOULD NOT be fragmented"). Python 3.11 names
# none of these on Linux; the values are those of <linux/in.h> and <linux/in6.h>.
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_DO = getattr(socket, "IPV6_PMTUDISC_DO", 2)
DEFAULT_SERVER_TIMEOUT = 5.0
"""Seconds each STUN / TURN server gets per socket (resolution included) before it is given up."""
DEFAULT_RELEASE_TIMEOUT = 2.0
"""Seconds :meth:`GatheredSocket.close` waits for the answers to its Refresh(0) requests."""
DEFAULT_TA = 0.05  # RFC 8445 §14.2: pacing of new STUN/TURN transactions, seconds
MAX_BACKLOG = 256
"""Datagrams kept for a handler not set yet; more are dropped and counted."""
READ_BATCH = 64
"""Datagrams a socket's readiness callback reads at most before it lets the loop run on."""
MAX_SEND_BUFFER = 1024
"""Datagrams kept while the kernel's send buffer is full; more are dropped and counted."""
MAX_QUEUED_PER_PEER = 32
"""Datagrams a :class:`RelayEndpoint` holds for a peer while its permission is being created."""
MAX_REDIRECTS = 2  # RFC 8656 §7.4 / RFC 8489 §10: 300 Try Alternate followed at most this often

DatagramHandler = Callable[[bytes, Address], None]
"""``handler(data, addr)``: a datagram that arrived from ``addr`` (a peer's transport address)."""
DatagramBatchHandler = Callable[[list[tuple[bytes, Address]]], None]
"""``handler(batch)``: datagrams that arrived together (one wake-up of the socket), in order,
each ``(data, addr)``."""
UnreachableHandler = Callable[[Address, OSError], None]
"""``handler(addr, error)``: the socket reported ``addr`` unreachable (an ICMP error)."""

_TRANSPORT_RANK = {"udp": 0, "tcp": 1, "tls": 2}  # relays' local preference, best first


# ----------------------------------------------------------------------------- host addresses


def _usable(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, loopback: bool,
            link_local: bool) -> bool:
    """RFC 8445 §5.1.1.1: which interface addresses may become host candidates."""
    if addr.is_unspecified or addr.is_multicast:
        return False
    if addr.is_loopback:
        return loopback
    if addr.is_link_local:
        return link_local
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.is_site_local:  # MUST NOT (RFC 3879)
            return False
        if addr.ipv4_mapped is not None:  # SHOULD NOT
            return False
        if int(addr) >> 32 == 0:  # deprecated IPv4-compatible ::a.b.c.d: MUST NOT (RFC 4291)
            return False
    return True


def host_addresses(
    *,
    interfaces: Iterable[str] | None = None,
    families: Sequence[int] = (4, 6),
    include_loopback: bool = False,
    include_link_local: bool = False,
    adapters: Iterable[ifaddr.Adapter] | None = None,
) -> list[str]:
    """The IP addresses to gather host candidates on (RFC 8445 §5.1.1.1), best first.

    ``interfaces``: only adapters whose name (or nice name) matches one of these names or
    shell patterns (``"eth*"``); None: every adapter. ``families``: 4 and/or 6; their order is
    the order of the result. Loopback addresses are left out unless ``include_loopback``
    (tests), link-local ones (169.254/16, fe80::/10) unless ``include_link_local``; IPv6
    site-local, IPv4-mapped and IPv4-compatible addresses always. ``adapters`` replaces
    ``ifaddr.get_adapters()`` (tests inject a fake list).

    The order is deterministic: by family (as in ``families``), then by the position of the
    first matching name in ``interfaces`` (else the adapter's position), then as the adapter
    lists them. Duplicates are dropped. A link-local IPv6 address is returned with its zone
    (``fe80::1%eth0``): it cannot be bound without one.
    """
    wanted = tuple(families)
    if not wanted or any(f not in (4, 6) for f in wanted):
        raise LocalProtocolError(f"families must be a non-empty subset of (4, 6), not {families!r}")
    if isinstance(interfaces, str):
        raise LocalProtocolError("interfaces is an iterable of names, not one string")
    patterns = list(interfaces) if interfaces is not None else None
    found: list[tuple[int, int, int, str]] = []
    for position, adapter in enumerate(ifaddr.get_adapters() if adapters is None else adapters):
        if patterns is None:
            rank = position
        else:
            ranks = [
                i for i, pattern in enumerate(patterns)
                if fnmatch.fnmatchcase(adapter.name, pattern)
                or fnmatch.fnmatchcase(adapter.nice_name, pattern)
            ]
            if not ranks:
                continue
            rank = ranks[0]
        for entry in adapter.ips:
            text = entry.ip[0] if isinstance(entry.ip, tuple) else entry.ip
            try:
                addr = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            if addr.version not in wanted:
                continue
            if not _usable(addr, include_loopback, include_link_local):
                continue
            name = str(addr)
            if addr.version == 6 and addr.is_link_local:
                name = f"{name}%{adapter.name}"
            found.append((wanted.index(addr.version), rank, len(found), name))
    result: list[str] = []
    for *_, name in sorted(found):
        if name not in result:
            result.append(name)
    return result


# ----------------------------------------------------------------------------- helpers


def _canonical(addr: Address) -> Address:
    return (canonical_ip(addr[0]), int(addr[1]))


def _family(ip: str) -> int:
    """4 or 6 for an IP literal (a zone suffix allowed), 0 for a name."""
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).version
    except ValueError:
        return 0


def check_port_range(value: object) -> tuple[int, int] | None:
    """``None`` or ``(min, max)`` local ports, inclusive, with 1 <= min <= max <= 65535;
    :class:`LocalProtocolError` naming ``port_range`` otherwise."""
    if value is None:
        return None
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 1 <= value[0] <= value[1] <= 0xFFFF
    ):
        return (value[0], value[1])
    raise LocalProtocolError(
        f"port_range must be (min, max) with 1 <= min <= max <= 65535, not {value!r}"
    )


def _set_dont_fragment(sock: socket.socket, family: int) -> None:
    """Set DF on every datagram ``sock`` sends, so that none is ever fragmented on the way
    (RFC 8085 §3.2; RFC 8899 §3 needs it for path MTU probing). On Linux, path MTU discovery
    "do" (IP_MTU_DISCOVER / IPV6_MTU_DISCOVER = *_PMTUDISC_DO: DF set, never fragmented
    locally; a datagram above a path MTU the kernel learned fails with EMSGSIZE); elsewhere
    IPV6_DONTFRAG / IP_DONTFRAG where the platform has them. Best effort: a platform without
    them sends as before. The reliable channel keeps its frames at 1200 bytes, which every
    path that carries IPv6's minimum MTU of 1280 carries with room for the IP, UDP and TURN
    ChannelData headers, so DF never costs it a frame (module docstring of
    :mod:`anchor_link.reliable`)."""
    with contextlib.suppress(OSError):
        if sys.platform.startswith("linux"):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        elif family == socket.AF_INET6 and hasattr(socket, "IPV6_DONTFRAG"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG, 1)
        elif family == socket.AF_INET and hasattr(socket, "IP_DONTFRAG"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_DONTFRAG, 1)


def _bind_socket(
    ip: str, port_range: tuple[int, int] | None, rng: Callable[[int], bytes]
) -> socket.socket:
    """A non-blocking UDP socket bound to ``ip`` (a zone allowed), on a port of
    ``port_range`` (tried from a random start) or any port; OSError when impossible."""
    family = socket.AF_INET6 if _family(ip) == 6 else socket.AF_INET
    infos = socket.getaddrinfo(ip, 0, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    sockaddr: tuple[Any, ...] = infos[0][4]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):  # the kernel caps it at net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SNDBUF)
        _set_dont_fragment(sock, family)
        enable_icmp_errors(sock)  # unreachable destinations, named (anchor_stun.aio.icmp)
        if port_range is None:
            sock.bind(sockaddr)
            return sock
        low, high = port_range
        span = high - low + 1
        start = int.from_bytes(rng(4), "big") % span
        for step in range(span):
            port = low + (start + step) % span
            try:
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue  # taken, or privileged: try the next one
                raise
            return sock
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {low}-{high} on {ip}")
    except BaseException:
        sock.close()
        raise


# ----------------------------------------------------------------------------- sockets


class _Protocol(asyncio.DatagramProtocol):
    """Hands datagrams to its :class:`GatheredSocket` (held back until it is attached: the
    socket is readable before ``create_datagram_endpoint`` returns)."""

    def __init__(self) -> None:
        self.owner: GatheredSocket | None = None
        self.early: list[tuple[bytes, Address]] = []
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def attach(self, owner: GatheredSocket) -> None:
        self.owner = owner
        early, self.early = self.early, []
        if early:
            owner._received(early)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams_received([(data, addr)])

    def datagrams_received(self, batch: list[tuple[bytes, Any]]) -> None:
        """The datagrams of one wake-up of the socket, each ``(data, addr)`` as the socket
        gave it (:meth:`datagram_received` is this with one)."""
        if not batch:
            return
        if len(batch[0][1]) != 2:  # an IPv6 socket's (ip, port, flowinfo, scope_id)
            batch = [(data, (str(addr[0]), int(addr[1]))) for data, addr in batch]
        if self.owner is None:
            room = MAX_BACKLOG - len(self.early)
            self.early.extend(batch[: max(0, room)])
            return
        self.owner._received(batch)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error without its address: transactions time out on their own

    def unreachable(self, addr: Address, exc: OSError) -> None:
        """An ICMP error for a datagram sent to ``addr`` (from the socket's error queue)."""
        if self.owner is not None:
            self.owner._unreachable(addr, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class _DrainingTransport(asyncio.DatagramTransport):
    """A UDP socket read straight from the loop's readiness callback: up to
    :data:`READ_BATCH` reads per wake-up, where asyncio's datagram transport reads one
    and returns to the loop. Datagrams that arrive together are then handled together: a
    link's channel acknowledges a burst once, not every frame (about 3x the messages per
    second of a link on loopback). Reads and sends go through
    :class:`~anchor_stun.aio.udp.UdpBatchIO`: where the OS offers it, a read may bring
    several datagrams of one flow at once (``UDP_GRO``), and :meth:`sendto_many` sends a run
    of equal-size datagrams with one segmented send (``UDP_SEGMENT``). Sends are direct;
    while the kernel will not take more (``EAGAIN``) they wait, in order, for the socket to be
    writable, at most :data:`MAX_SEND_BUFFER` of them (more are dropped and counted in
    :attr:`dropped`, as UDP may drop). Needs ``loop.add_reader`` (selector loops, uvloop);
    :meth:`GatheredSocket.bind` uses asyncio's own transport where the loop has none."""

    def __init__(self, sock: socket.socket, protocol: _Protocol) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._io = UdpBatchIO(sock)
        self._fd = sock.fileno()
        self._protocol = protocol
        self._pending: deque[tuple[bytes, Any]] = deque()
        self._closing = False
        self.dropped = 0
        """Datagrams dropped because :data:`MAX_SEND_BUFFER` were already waiting."""
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        batch: list[tuple[bytes, Any]] = []
        error = self._io.receive(batch, READ_BATCH)
        if batch:
            self._protocol.datagrams_received(batch)
        if error is not None:  # an ICMP error reported on the socket
            self._protocol.error_received(error)
            self._drain_errors()
        elif not batch:  # woken with nothing to read: an ICMP error is queued
            self._drain_errors()

    def _drain_errors(self) -> None:
        """Read the socket's error queue (:func:`~anchor_stun.aio.icmp.read_icmp_errors`):
        each unreachable destination goes to the protocol, with its error."""
        if self._closing:
            return
        for addr, exc in read_icmp_errors(self._sock, READ_BATCH):
            self._protocol.unreachable(addr, exc)

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sendto_many((data,), addr)

    def sendto_many(self, datagrams: Sequence[bytes], addr: Any) -> None:
        """Send ``datagrams`` to ``addr``, in order (:meth:`sendto` is this with one)."""
        if self._closing:
            return
        sent = 0
        count = len(datagrams)
        if not self._pending:
            send = self._io.send
            while sent < count:
                sent, error = send(datagrams, addr, sent)
                if sent == count:
                    return
                if error is None:  # the kernel's buffer is full: wait until writable
                    self._loop.add_writer(self._fd, self._writable)
                    break
                if error.errno not in UNREACHABLE_ERRNOS:
                    self._protocol.error_received(error)
                else:
                    # an earlier ICMP error (for any destination) failed this send: read it,
                    # and send again (the error is reported once)
                    self._drain_errors()
                    with contextlib.suppress(OSError):
                        self._sock.sendto(datagrams[sent], addr)
                sent += 1
        pending = self._pending
        for data in datagrams[sent:]:
            if len(pending) >= MAX_SEND_BUFFER:
                self.dropped += 1
            else:
                pending.append((bytes(data), addr))

    def _writable(self) -> None:
        while self._pending:
            data, addr = self._pending[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._pending.popleft()
        self._loop.remove_writer(self._fd)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._pending.clear()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def _one_by_one(handler: DatagramHandler, what: str) -> DatagramBatchHandler:
    """A batch handler that hands each datagram of a batch to ``handler(data, addr)`` (an
    exception of one goes to the loop's handler and the next datagram is delivered)."""

    def each(batch: list[tuple[bytes, Address]]) -> None:
        for data, addr in batch:
            call_user(what, handler, data, addr)

    return each


class _Inbox:
    """A replaceable batch handler with a bounded backlog for the time before it is set."""

    def __init__(self, what: str) -> None:
        self.what = f"the datagram handler of {what}"
        self.handler: DatagramBatchHandler | None = None
        self.backlog: deque[tuple[bytes, Address]] = deque()
        self.dropped = 0

    def set(self, handler: DatagramBatchHandler | None) -> None:
        self.handler = handler
        while handler is not None and self.backlog and self.handler is handler:
            call_user(self.what, handler, [self.backlog.popleft()])

    def set_each(self, handler: DatagramHandler | None) -> None:
        """:meth:`set` with a handler of one datagram at a time."""
        self.set(None if handler is None else _one_by_one(handler, self.what))

    def deliver(self, data: bytes, addr: Address) -> None:
        self.deliver_many([(data, addr)])

    def deliver_many(self, batch: list[tuple[bytes, Address]]) -> None:
        handler = self.handler
        if handler is not None:
            call_user(self.what, handler, batch)
            return
        room = MAX_BACKLOG - len(self.backlog)
        self.backlog.extend(batch[: max(0, room)])
        self.dropped += max(0, len(batch) - max(0, room))


class GatheredSocket:
    """One UDP socket bound to a host address: the base of a host candidate, of the
    server-reflexive candidates learnt through it and of the TURN allocations made from it
    (RFC 8445 §5.1.1). See the module docstring for how datagrams are routed.

    Build it with :meth:`bind`. :meth:`binding` and :meth:`allocate` run gathering
    transactions on it; :meth:`send` and :meth:`set_handler` are the ICE connection's way in;
    :meth:`close` releases the allocations and closes the socket.
    """

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        protocol: _Protocol,
        *,
        rng: Callable[[int], bytes],
        stun_rto: float,
    ) -> None:
        """Use :meth:`bind`."""
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._protocol = protocol
        sockname = transport.get_extra_info("sockname")
        self.local: Address = (canonical_ip(str(sockname[0])), int(sockname[1]))
        """The socket's address: the host candidate's transport address and base."""
        self.family: int = _family(self.local[0])
        """4 or 6."""
        self._scope_id = int(sockname[3]) if len(sockname) > 3 else 0
        self._rng = rng
        self._stun = StunClient(rto=stun_rto)
        self._stun_pump = CorePump(self._stun, self._send_transmit, self._stun_event)
        self._stun_waiters: dict[bytes, asyncio.Future[TransactionSucceeded]] = {}
        self._stun_servers: dict[bytes, Address] = {}  # where each Binding went
        self._relays: list[RelayEndpoint] = []
        self._inbox = _Inbox(f"socket {format_address(self.local)}")
        self._on_unreachable: UnreachableHandler | None = None
        self._closing = False
        self._closed = False
        self._closed_event = asyncio.Event()
        protocol.attach(self)

    @classmethod
    async def bind(
        cls,
        ip: str,
        *,
        port_range: tuple[int, int] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        stun_rto: float = RTO_INITIAL,
    ) -> GatheredSocket:
        """Bind a UDP socket to ``ip`` (``fe80::1%eth0`` for a link-local address) on a port
        within ``port_range`` (inclusive; any port when None). Raises OSError when no port is
        free or the address cannot be bound. ``stun_rto`` is the initial retransmission
        timeout of the gathering Binding requests (RFC 8489 §6.2.1)."""
        port_range = check_port_range(port_range)
        sock = _bind_socket(ip, port_range, rng)
        loop = asyncio.get_running_loop()
        transport: asyncio.DatagramTransport
        protocol = _Protocol()
        try:
            try:
                transport = _DrainingTransport(sock, protocol)
            except NotImplementedError:  # no add_reader (a proactor loop): asyncio's transport
                transport, protocol = await loop.create_datagram_endpoint(_Protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(transport, protocol, rng=rng, stun_rto=stun_rto)

    # ------------------------------------------------------------------ properties

    @property
    def transport(self) -> asyncio.DatagramTransport:
        """The asyncio transport (read its extra info; send through :meth:`send`)."""
        return self._transport

    @property
    def relays(self) -> list[RelayEndpoint]:
        """The allocations made for this socket that exist now (RFC 8656 §7.3), over every
        client-server transport."""
        return [r for r in self._relays if r.state is TurnState.ALLOCATED and r.turn.failure is None]

    @property
    def closed(self) -> bool:
        """True once :meth:`close` finished: the socket is closed."""
        return self._closed

    @property
    def dropped(self) -> int:
        """Datagrams dropped because no handler was set and the backlog was full."""
        return self._inbox.dropped

    # ------------------------------------------------------------------ ICE side

    def set_handler(self, handler: DatagramHandler | None) -> None:
        """Receive, with ``handler(data, addr)``, every datagram not meant for a gathering
        transaction or a TURN allocation of this socket; datagrams that arrived before are
        delivered first, in order. None: keep them in the backlog again."""
        self._inbox.set_each(handler)

    def set_batch_handler(self, handler: DatagramBatchHandler | None) -> None:
        """:meth:`set_handler`, with ``handler(batch)`` taking the datagrams that arrived
        together at once (one call per wake-up of the socket rather than per datagram)."""
        self._inbox.set(handler)

    def set_unreachable_handler(self, handler: UnreachableHandler | None) -> None:
        """Hear, with ``handler(addr, error)``, of every ICMP error the socket reports for a
        datagram it sent to ``addr`` (Linux: IP_RECVERR's error queue; ``error.errno`` is
        ``ECONNREFUSED`` for a closed port, ``EHOSTUNREACH``, ``ENETUNREACH`` or
        ``EHOSTDOWN`` otherwise), after the gathering transactions with that server ended
        (RFC 8445 §7.2.5.2.2: the ICE agent fails the checks that went there). Platforms
        without an error queue report nothing. None: no more calls."""
        self._on_unreachable = handler

    def send(self, data: bytes, addr: Address) -> None:
        """Send ``data`` to ``addr`` from this socket (the host candidate's base).
        Raises LocalProtocolError once closed."""
        self.send_many((data,), addr)

    def send_many(self, datagrams: Sequence[bytes], addr: Address) -> None:
        """Send ``datagrams`` to ``addr`` from this socket, in order and at once: a run of
        equal-size ones leaves with one system call where the OS offers segmentation
        (:mod:`anchor_stun.aio.udp`). Raises LocalProtocolError once closed."""
        if self._closing:
            raise LocalProtocolError("the socket is closed")
        self._sendto_many(datagrams, addr)

    # ------------------------------------------------------------------ gathering

    async def binding(self, server: Address, *, software: str | None = None) -> Address:
        """One Binding transaction with the STUN server ``server`` (an IP address) from this
        socket; returns XOR-MAPPED-ADDRESS (RFC 8489 §14.2, RFC 8445 §5.1.1.2). Raises
        :class:`~anchor_stun.errors.StunErrorResponse`, TransactionTimeout (after the
        StunClient's retransmissions, RFC 8489 §6.2.1: wrap it in a timeout) or DecodeError."""
        if self._closing:
            raise LocalProtocolError("the socket is closed")
        request = Message(Method.BINDING, MessageClass.REQUEST, self._rng(12))
        if software:
            request.add(Software(software))
        txid = self._stun.send_request(request.encode(fingerprint=True), server, self._now())
        waiter: asyncio.Future[TransactionSucceeded] = self._loop.create_future()
        self._stun_waiters[txid] = waiter
        self._stun_servers[txid] = _canonical(server)
        self._stun_pump.pump()
        try:
            result = await waiter
        finally:
            if not waiter.done():
                self._stun.cancel(txid)
            self._stun_waiters.pop(txid, None)
            self._stun_servers.pop(txid, None)
        mapped = result.response.get(XorMappedAddress)
        if mapped is None:
            raise DecodeError("Binding response without XOR-MAPPED-ADDRESS", field="response")
        return _canonical(mapped.address)

    async def allocate(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        transport: TransportName = "udp",
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_redirects: int = MAX_REDIRECTS,
        **options: Any,
    ) -> RelayEndpoint:
        """Allocate a relay on the TURN server ``server`` (an IP address) for this socket
        (RFC 8656 §7); returns the :class:`RelayEndpoint`, which then refreshes itself until
        released. Over ``transport`` "udp" the requests leave from this socket; over "tcp"
        or "tls" from a connection of the allocation's own, bound to this socket's IP (TLS
        verifies the server against ``server_hostname`` with ``ssl_context``, default the
        system's trust store). ``options`` go to :class:`~anchor_turn.client.TurnClient`
        (``lifetime``, ``software``, ``rto``...). Raises
        :class:`~anchor_stun.errors.AllocationError`, OSError when the connection fails.
        Cancelled (say by a timeout), the allocation is abandoned: released as soon as it
        exists, should its success response still arrive."""
        if self._closing:
            raise LocalProtocolError("the socket is closed")
        options.setdefault("rng", self._rng)
        turn: TurnConnection
        if transport == "udp":
            turn = TurnConnection.over(
                self._sendto, _canonical(server), username, password, local=self.local,
                max_redirects=max_redirects, **options,
            )
        else:
            link_local = self.family == 6 and self.local[0].lower().startswith("fe80")
            turn = await TurnConnection.connect(
                server, username, password, transport, ssl_context=ssl_context,
                server_hostname=server_hostname, local=None if link_local else (self.local[0], 0),
                max_redirects=max_redirects, **options,
            )
        relay = RelayEndpoint(self, turn)
        self._relays.append(relay)
        if self._closing:  # closed while the connection was being opened
            await turn.close(0)
            raise LocalProtocolError("the socket is closed")
        try:
            await turn.allocate()
        except BaseException:
            if transport != "udp" and turn.state is not TurnState.ALLOCATING:
                await turn.close(0)  # nothing exists: drop the connection now
            raise
        return relay

    async def close(self, release_timeout: float = DEFAULT_RELEASE_TIMEOUT) -> None:
        """Release every allocation (Refresh with LIFETIME 0, RFC 8656 §8.1; waiting at most
        ``release_timeout`` seconds for the answers), fail the pending gathering
        transactions, close the socket and wait until it is closed. Idempotent."""
        if self._closing:
            await self._closed_event.wait()
            return
        self._closing = True
        try:
            await asyncio.gather(*(relay.release(release_timeout) for relay in self._relays))
        finally:
            for relay in self._relays:
                relay._shutdown()
            self._stun_pump.close()
            for waiter in self._stun_waiters.values():
                if not waiter.done():
                    waiter.set_exception(LocalProtocolError("the socket was closed"))
            self._stun_waiters.clear()
            self._transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._protocol.lost), 1.0)
            except TimeoutError:
                pass
            self._closed = True
            self._closed_event.set()

    # ------------------------------------------------------------------ plumbing

    def _now(self) -> float:
        return self._loop.time()

    def _sendto(self, data: bytes, addr: Address) -> None:
        self._sendto_many((data,), addr)

    def _sendto_many(self, datagrams: Sequence[bytes], addr: Address) -> None:
        transport = self._transport
        if transport.is_closing():
            return
        target: tuple[Any, ...] = addr
        if self.family == 6:
            ip = addr[0].split("%", 1)[0]
            scope = self._scope_id if ip.lower().startswith("fe80") else 0
            target = (ip, addr[1], 0, scope)
        if isinstance(transport, _DrainingTransport):
            transport.sendto_many(datagrams, target)
        else:  # asyncio's own transport (no add_reader): one at a time
            for data in datagrams:
                transport.sendto(data, target)

    def _send_transmit(self, transmit: Transmit) -> None:
        self._sendto(transmit.data, transmit.addr)

    def _received(self, batch: list[tuple[bytes, Address]]) -> None:
        """Route the datagrams of one wake-up (module docstring): those for a gathering
        transaction or a TURN allocation of this socket one by one, the rest to the
        handler in one batch."""
        if self._closed:
            return
        if not self._stun_waiters and not self._relays:
            self._inbox.deliver_many(batch)
            return
        rest: list[tuple[bytes, Address]] = []
        for data, addr in batch:
            if self._stun_waiters and is_stun(data) and bytes(data[8:20]) in self._stun:
                self._stun.receive_datagram(data, addr, self._now())
                self._stun_pump.pump()
                continue
            for relay in self._relays:
                if relay.shared and relay.turn.server == addr:
                    relay.turn.datagram_received(data, addr)
                    break
            else:
                rest.append((data, addr))
        if rest:
            self._inbox.deliver_many(rest)

    def _stun_event(self, event: StunEvent) -> None:
        settle_transaction(self._stun_waiters, event)

    def _unreachable(self, addr: Address, exc: OSError) -> None:
        """The socket reported ``addr`` unreachable (an ICMP error): a gathering Binding or
        an Allocate in progress with that server ends at once, naming it (RFC 8489 §6.2.1
        leaves ICMP handling to the client; RFC 8445 §5.1.1.2 gathering then moves on)."""
        if self._closed:
            return
        for txid, server in list(self._stun_servers.items()):
            waiter = self._stun_waiters.get(txid)
            if server == addr and waiter is not None and not waiter.done():
                self._stun.cancel(txid)
                waiter.set_exception(DestinationUnreachable(
                    f"{format_address(addr)} unreachable ({exc.strerror})"
                ))
        for relay in self._relays:
            if relay.shared and relay.turn.server == addr:
                relay.turn.error_received(exc)
        handler = self._on_unreachable
        if handler is not None:
            call_user(f"the unreachable handler of socket {format_address(self.local)}",
                      handler, addr, exc)

    def __repr__(self) -> str:
        return f"<GatheredSocket {format_address(self.local)}{' closed' if self._closed else ''}>"


class RelayEndpoint:
    """One TURN allocation made for a :class:`GatheredSocket` (RFC 8656): the base of a
    relayed candidate (RFC 8445 §5.1.1.2). The TURN work is done by one
    :class:`~anchor_turn.aio.client.TurnConnection` (:attr:`turn`): over UDP it runs over the
    host socket itself (the allocation's 5-tuple starts at the host candidate), over TCP or
    TLS over a connection of its own whose local end is the host address (RFC 8656 §3.1: only
    the client's leg changes, the relayed address is UDP either way). This class adds what the
    ICE connection needs on top: a send that creates the peer's permission first, and a
    replaceable handler with a backlog.

    The ICE connection sends through it with :meth:`send` (a permission for the peer's IP is
    created on first use, RFC 8656 §9, and the datagrams wait for it) and receives with
    :meth:`set_handler`. The allocation, its permissions and channels refresh themselves
    (the TurnClient's timers) until :meth:`release` or the socket's ``close()``.
    """

    def __init__(self, owner: GatheredSocket, turn: TurnConnection) -> None:
        """Use :meth:`GatheredSocket.allocate`."""
        self.socket = owner
        """The host socket the allocation belongs to: over UDP its 5-tuple's client end
        (RFC 8656 §2); over TCP/TLS the socket whose address the connection leaves from."""
        self.turn = turn
        """The TURN client adapter doing the work (read it; do not close it yourself)."""
        self._inbox = _Inbox(f"relay via {format_address(turn.server)} ({turn.transport})")
        turn.on_data = self._inbox.deliver
        self._queued: dict[str, list[tuple[bytes, Address]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0
        """Datagrams to peers dropped: too many waiting for a permission, or it failed."""

    # ------------------------------------------------------------------ properties

    @property
    def transport(self) -> str:
        """The client-server transport: "udp", "tcp" or "tls" (RFC 8656 §3.1)."""
        return self.turn.transport

    @property
    def shared(self) -> bool:
        """True when the allocation runs over the host socket itself (UDP)."""
        return self.turn.transport == "udp"

    @property
    def server(self) -> Address:
        """The TURN server's transport address (after a redirect: the alternate)."""
        return self.turn.server

    @property
    def redirects(self) -> list[Address]:
        """Servers that answered 300 Try Alternate, in order (RFC 8656 §7.4)."""
        return self.turn.redirects

    @property
    def client(self) -> TurnClient:
        """The sans-I/O core (read its state; do not drive it directly)."""
        return self.turn.client

    @property
    def state(self) -> TurnState:
        """The allocation's state (RFC 8656 §6-§8)."""
        return self.turn.state

    @property
    def on_event(self) -> Callable[[TurnEvent], None] | None:
        """Called with every event of the TURN core (refreshes, failures...), e.g. for logs."""
        return self.turn.on_event

    @on_event.setter
    def on_event(self, callback: Callable[[TurnEvent], None] | None) -> None:
        self.turn.on_event = callback

    @property
    def relayed(self) -> Address:
        """The relayed transport address: the relayed candidate and its base (RFC 8445
        §5.1.1.2). LocalProtocolError before the allocation exists."""
        relayed = self.turn.relayed
        if relayed is None:
            raise LocalProtocolError("no allocation yet")
        return _canonical(relayed)

    @property
    def base(self) -> Address:
        """Same as :attr:`relayed`: a relayed candidate is its own base (RFC 8445 §5.1.1.2)."""
        return self.relayed

    @property
    def mapped(self) -> Address | None:
        """The server-reflexive address from the Allocate response (RFC 8656 §7.3); over
        TCP/TLS the mapping of the connection, not a UDP candidate."""
        mapped = self.turn.mapped
        return _canonical(mapped) if mapped is not None else None

    # ------------------------------------------------------------------ ICE side

    def set_handler(self, handler: DatagramHandler | None) -> None:
        """Receive, with ``handler(data, peer)``, every datagram a peer sent through the
        relay (RFC 8656 §11.4, §12.6); earlier ones are delivered first, in order."""
        self._inbox.set_each(handler)

    def set_batch_handler(self, handler: DatagramBatchHandler | None) -> None:
        """:meth:`set_handler` with ``handler(batch)`` (here one datagram per batch: the
        TURN client hands them over one by one)."""
        self._inbox.set(handler)

    def send_many(self, datagrams: Sequence[bytes], peer: Address) -> None:
        """:meth:`send` of each datagram, in order (each is wrapped on its own)."""
        for data in datagrams:
            self.send(data, peer)

    def send(self, data: bytes, peer: Address) -> None:
        """Send ``data`` to ``peer`` through the relay: ChannelData when a channel is bound,
        else a Send indication (RFC 8656 §11.1, §12.5). The first datagram to a new peer IP
        starts a CreatePermission (RFC 8656 §9); datagrams wait for it (at most
        :data:`MAX_QUEUED_PER_PEER`) and are dropped if it fails. Raises LocalProtocolError
        when the allocation does not exist (any more)."""
        self._check_usable()
        ip = canonical_ip(peer[0])
        if ip in self.turn.client.permissions and ip not in self._queued:
            self.turn.send(data, peer)
            return
        queue = self._queued.get(ip)
        if queue is None:
            queue = self._queued[ip] = []
            task = asyncio.get_running_loop().create_task(self._permit(ip))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(queue) < MAX_QUEUED_PER_PEER:
            queue.append((bytes(data), peer))
        else:
            self.dropped += 1

    async def create_permission(self, *ips: str) -> None:
        """Install permissions for these peer IPs now and wait for them (RFC 8656 §9).
        Raises :class:`~anchor_stun.errors.AllocationError`."""
        self._check_usable()
        await self.turn.create_permission(*(canonical_ip(ip) for ip in ips))

    async def bind_channel(self, peer: Address) -> int:
        """Bind a channel to ``peer`` (RFC 8656 §12): later datagrams to it go as
        ChannelData. Returns the channel number; raises AllocationError."""
        self._check_usable()
        return await self.turn.bind_channel(peer)

    async def release(self, timeout: float = DEFAULT_RELEASE_TIMEOUT) -> None:
        """Delete the allocation (Refresh with LIFETIME 0, RFC 8656 §8.1) and wait at most
        ``timeout`` seconds for the answer. The host socket stays open (a TCP/TLS connection
        of the allocation is closed). Idempotent."""
        await self.turn.close(timeout)
        self._shutdown()

    # ------------------------------------------------------------------ plumbing

    async def _permit(self, ip: str) -> None:
        """Create the permission the queued datagrams to ``ip`` wait for, then send them."""
        try:
            await self.turn.create_permission(ip)
        except AnchorError:
            self.dropped += len(self._queued.pop(ip, []))
            return
        for data, peer in self._queued.pop(ip, []):
            if self.turn.closed or self.turn.state is not TurnState.ALLOCATED:
                return
            self.turn.send(data, peer)

    def _shutdown(self) -> None:
        """The allocation is over: drop what waits, stop the permission tasks."""
        self._queued.clear()
        for task in self._tasks:
            task.cancel()

    def _check_usable(self) -> None:
        turn = self.turn
        if turn.failure is not None:
            raise LocalProtocolError(f"the allocation is gone: {turn.failure}")
        if turn.closed or turn.state is not TurnState.ALLOCATED:
            raise LocalProtocolError(f"no usable allocation (state {turn.state.value})")

    def __repr__(self) -> str:
        relayed = self.turn.relayed
        where = format_address(relayed) if relayed else "-"
        return (
            f"<RelayEndpoint {where} via {self.turn.transport} "
            f"{format_address(self.server)} {self.state.value}>"
        )


# ----------------------------------------------------------------------------- gatherer


@dataclass(frozen=True, slots=True)
class TurnServerConfig:
    """A TURN server to gather relayed candidates from (RFC 8445 §5.1.1.2, RFC 8656)."""

    address: Address
    """(host, port); the host may be a name, resolved when gathering."""
    username: str
    """Long-term credential user name (RFC 8489 §9.2)."""
    password: str = field(repr=False)
    """Long-term credential password."""
    transport: TransportName = "udp"
    """Client-server transport (RFC 8656 §3.1): "udp" (the allocation shares the host
    socket), "tcp" or "tls" (a connection of its own). The relayed address is UDP always."""
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    """TLS only: how to verify the server (default: the system's trust store)."""
    server_name: str | None = None
    """TLS only: the name the certificate must carry (default: the host of ``address``)."""

    def __post_init__(self) -> None:
        if self.transport not in ("udp", "tcp", "tls"):
            raise LocalProtocolError(
                f"TurnServerConfig transport must be 'udp', 'tcp' or 'tls', not {self.transport!r}"
            )
        default_port = DEFAULT_TLS_PORT if self.transport == "tls" else DEFAULT_PORT
        # "host:port" is read as such (never as a sequence of characters), checked here
        address = server_address(self.address, "TurnServerConfig address", default_port)
        object.__setattr__(self, "address", address)
        opaque_credential(self.username, "TurnServerConfig username")
        opaque_credential(self.password, "TurnServerConfig password")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise LocalProtocolError(
                "TurnServerConfig ssl_context must be an ssl.SSLContext or None, not"
                f" {type(self.ssl_context).__name__}"
            )
        if self.server_name is not None and (
            not isinstance(self.server_name, str) or not self.server_name
        ):
            raise LocalProtocolError(
                "TurnServerConfig server_name must be a host name (the certificate's) or None,"
                f" not {self.server_name!r}"
            )

    @classmethod
    def from_uri(
        cls,
        uri: str,
        username: str,
        password: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> TurnServerConfig:
        """A server from an RFC 7065 URI: ``turn:HOST[:PORT]`` (UDP),
        ``turn:HOST[:PORT]?transport=tcp``, ``turns:HOST[:PORT]`` (TLS; default port 5349),
        or plain ``HOST[:PORT]`` (UDP). Raises LocalProtocolError for anything else."""
        parsed = parse_turn_uri(uri)
        return cls(
            (parsed.host, parsed.port), username, password, parsed.transport,
            ssl_context=ssl_context if parsed.transport == "tls" else None,
        )

    @property
    def uri(self) -> str:
        """The server as an RFC 7065 URI."""
        return str(TurnUri(self.address[0], self.address[1], self.transport))


def turn_server_configs(value: object, what: str = "turn_servers") -> list[TurnServerConfig]:
    """TURN servers given as one or a list of :class:`TurnServerConfig` or
    ``(host, port, username, password)`` / ``("host:port", username, password)`` tuples (UDP),
    checked where they enter: :class:`LocalProtocolError` naming ``what[i]`` otherwise."""
    if value is None:
        return []
    if isinstance(value, TurnServerConfig):
        return [value]
    if isinstance(value, str | bytes | bytearray | dict) or not hasattr(value, "__iter__"):
        raise LocalProtocolError(
            f"{what} must be a list of TurnServerConfig or (host, port, username, password),"
            f" not {type(value).__name__}"
        )
    out: list[TurnServerConfig] = []
    for i, item in enumerate(value):
        name = f"{what}[{i}]"
        if isinstance(item, TurnServerConfig):
            out.append(item)
        elif isinstance(item, tuple | list) and len(item) == 4:
            out.append(_config(name, (item[0], item[1]), item[2], item[3]))
        elif isinstance(item, tuple | list) and len(item) == 3:
            out.append(_config(name, item[0], item[1], item[2]))
        else:
            raise LocalProtocolError(
                f"{name} must be a TurnServerConfig, (host, port, username, password) or"
                f" ('host:port', username, password), not {type(item).__name__}"
                + (f" of {len(item)}" if isinstance(item, tuple | list) else "")
            )
    return out


def _config(what: str, address: object, username: object, password: object) -> TurnServerConfig:
    try:
        return TurnServerConfig(address, username, password)  # type: ignore[arg-type]
    except LocalProtocolError as exc:
        raise LocalProtocolError(f"{what}: {exc}") from None


@dataclass(frozen=True, slots=True)
class GatherFailure:
    """Something gathering had to give up on (the rest carried on), or, as ``"policy"``, a
    policy that can offer none of what was gathered (recorded by the ICE connection).
    ``str()`` gives it in one line: ``stun 192.0.2.1:3478: timeout after 5.0 s``."""

    kind: Literal["host", "stun", "turn", "policy"]
    """What failed: binding a host socket, a STUN Binding, a TURN Allocate, or the policy
    (no candidate to offer, RFC 8445 §5.1.3, with the way out in ``reason``)."""
    base: Address | None
    """The host socket's address (for ``"host"``: the IP that could not be bound, port 0;
    None for ``"policy"``)."""
    server: Address | None
    """The STUN / TURN server as configured (None for ``"host"`` and ``"policy"``)."""
    reason: str
    """Why, in one line (``timeout after 5.0 s``, ``401 Unauthorized``...)."""

    def __str__(self) -> str:
        if self.server is not None:
            return f"{self.kind} {format_address(self.server)}: {self.reason}"
        if self.base is not None:
            return f"{self.kind} {self.base[0]}: {self.reason}"
        return self.reason


@dataclass(frozen=True, slots=True)
class EndOfCandidates:
    """The last item of a :meth:`Gatherer.gather` stream: every candidate has been found
    (RFC 8838, signalled as ``a=end-of-candidates``, RFC 8840)."""

    failures: tuple[GatherFailure, ...] = field(default=())
    """What could not be gathered."""


class Gatherer:
    """Gathers host, server-reflexive and relayed candidates for one component (RFC 8445
    §5.1.1) and streams them as they come (RFC 8838); see the module docstring.

    ``host_ips``: the addresses to bind, best first (default: :func:`host_addresses()`).
    ``stun_servers``: (host, port) of STUN servers. ``turn_servers``: :class:`TurnServerConfig`
    of TURN servers (UDP, TCP or TLS). ``component``: the component id (RFC 8445 §4). ``port_range``:
    (min, max) local ports, inclusive. ``timeout``: seconds per server and socket.
    ``ta``: pacing of new transactions (RFC 8445 §14.2). ``turn_options`` go to every
    :class:`~anchor_turn.client.TurnClient` (``lifetime``, ``rto``...; and
    ``max_redirects``, the ALTERNATE-SERVER redirections followed), checked here. ``rng``: random bytes
    (transaction ids, the first port tried).

    Use it as an async context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        host_ips: Iterable[str] | None = None,
        *,
        stun_servers: Iterable[Address | str] = (),
        turn_servers: Iterable[TurnServerConfig | tuple[Any, ...]] = (),
        component: int = COMPONENT_RTP,
        port_range: tuple[int, int] | None = None,
        timeout: float = DEFAULT_SERVER_TIMEOUT,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        ta: float = DEFAULT_TA,
        stun_rto: float = RTO_INITIAL,
        software: str | None = None,
        turn_options: Mapping[str, Any] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        pacer: TransactionPacer | None = None,
    ) -> None:
        self._host_ips = ip_address_list(host_ips, "host_ips")
        self._stun_servers = server_list(stun_servers, "stun_servers")
        self._turn_servers = turn_server_configs(turn_servers)
        count(component, "component", 1, 256)
        port_range = check_port_range(port_range)
        seconds(timeout, "timeout")
        seconds(release_timeout, "release_timeout", zero=True)
        seconds(ta, "ta", zero=True)
        seconds(stun_rto, "stun_rto")
        if software is not None and not isinstance(software, str):
            raise LocalProtocolError(f"software must be a string or None, not {software!r}")
        client_options: object = turn_options
        if isinstance(turn_options, Mapping) and "max_redirects" in turn_options:
            count(turn_options["max_redirects"], "turn_options: max_redirects", 0)
            client_options = {k: v for k, v in turn_options.items() if k != "max_redirects"}
        check_client_options(client_options, "turn_options")
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        if pacer is not None and not isinstance(pacer, TransactionPacer):
            raise LocalProtocolError(
                f"pacer must be a TransactionPacer or None, not {type(pacer).__name__}"
            )
        self.component = component
        """The component id of every candidate (RFC 8445 §4)."""
        self.port_range = port_range
        """Local ports allowed, inclusive, or None."""
        self.timeout = timeout
        """Seconds each server gets per socket."""
        self.release_timeout = release_timeout
        """Seconds :meth:`close` waits for the answers to the Refresh(0) requests."""
        self.ta = ta
        """Seconds between the starts of two gathering transactions (RFC 8445 §14.2)."""
        self.pacer = pacer
        """The process's pacer of new STUN transactions (:mod:`anchor_ice.aio.pacing`),
        which each server's gathering transaction over UDP also waits for after this
        gatherer's own Ta (RFC 8445 §14.2: all transactions of all agents of a process;
        :class:`~anchor_ice.aio.connection.Connection` passes its own), or None: Ta only."""
        self._stun_rto = stun_rto
        self._software = software
        self._turn_options = dict(turn_options or {})
        if software is not None:
            self._turn_options.setdefault("software", software)
        self._rng = rng
        self._sockets: list[GatheredSocket] = []
        self._owned = True
        self._endpoints: dict[Address, GatheredSocket | RelayEndpoint] = {}
        self._candidates: list[Candidate] = []
        self._bases: dict[Candidate, Address] = {}
        self._seen: set[tuple[Address, Address]] = set()
        self._failures: list[GatherFailure] = []
        self.redundant = 0
        """Candidates dropped as redundant (RFC 8445 §5.1.3)."""
        self._started = False
        self._complete = False
        self._closed = False
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_start = 0.0
        self._start_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ properties

    @property
    def candidates(self) -> list[Candidate]:
        """The candidates found so far, in the order found."""
        return list(self._candidates)

    @property
    def failures(self) -> list[GatherFailure]:
        """What could not be gathered so far."""
        return list(self._failures)

    @property
    def sockets(self) -> list[GatheredSocket]:
        """The host sockets, in the order of the host addresses."""
        return list(self._sockets)

    @property
    def complete(self) -> bool:
        """True once every server answered or was given up (the end marker was reached)."""
        return self._complete

    def base_of(self, candidate: Candidate) -> Address:
        """The base of a candidate found here (RFC 8445 §5.1.1): the host socket's address
        for host and server-reflexive candidates, the relayed address for relayed ones."""
        try:
            return self._bases[candidate]
        except KeyError:
            raise LocalProtocolError(f"not a candidate of this gatherer: {candidate}") from None

    def endpoint(self, base: Address) -> GatheredSocket | RelayEndpoint:
        """What sends from and receives on ``base``: the :class:`GatheredSocket` of a host
        address or the :class:`RelayEndpoint` of a relayed one."""
        try:
            return self._endpoints[_canonical(base)]
        except (KeyError, LocalProtocolError):
            raise LocalProtocolError(f"no socket or relay with base {base!r}") from None

    def open_sockets(self) -> int:
        """How many of the sockets bound here are still open (0 after :meth:`close`, unless
        they were detached and are not closed yet)."""
        return sum(1 for sock in self._sockets if not sock.closed)

    # ------------------------------------------------------------------ running

    async def start(self) -> None:
        """Bind the host sockets (their candidates are then known) and start gathering the
        others in the background. Raises OSError when no host address could be bound.
        Called by :meth:`gather`; calling it again does nothing."""
        if self._closed:
            raise LocalProtocolError("the gatherer is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
            self._changed = asyncio.Event()
        async with self._start_lock:
            if self._started:
                return
            await self._bind_hosts()
            self._started = True
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def gather(self) -> AsyncIterator[Candidate | EndOfCandidates]:
        """Every candidate as soon as it is found (RFC 8838), then one
        :class:`EndOfCandidates`. Starts gathering if needed; each call replays from the
        first candidate."""
        await self.start()
        assert self._changed is not None
        index = 0
        while True:
            while index < len(self._candidates):
                yield self._candidates[index]
                index += 1
            if self._complete:
                yield EndOfCandidates(tuple(self._failures))
                return
            self._changed.clear()
            await self._changed.wait()

    async def gather_all(self) -> list[Candidate]:
        """Gather to the end and return every candidate."""
        return [item async for item in self.gather() if isinstance(item, Candidate)]

    def detach(self) -> list[GatheredSocket]:
        """Hand the sockets (and their allocations) over to the caller, who closes them
        from now on; :meth:`close` then only stops gathering. Returns them."""
        self._owned = False
        return list(self._sockets)

    async def close(self) -> None:
        """Stop gathering; unless :meth:`detach` was called, release every allocation and
        close every socket (waiting until they are closed). Idempotent."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._complete = True
        if self._changed is not None:
            self._changed.set()
        if self._owned:
            await asyncio.gather(*(s.close(self.release_timeout) for s in self._sockets))

    async def __aenter__(self) -> Gatherer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    async def _bind_hosts(self) -> None:
        ips = self._host_ips if self._host_ips is not None else host_addresses()
        if not ips:
            raise OSError("no host address to gather candidates on")
        errors: list[str] = []
        for ip in ips:
            try:
                sock = await GatheredSocket.bind(
                    ip, port_range=self.port_range, rng=self._rng, stun_rto=self._stun_rto
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                self._failures.append(GatherFailure("host", (ip, 0), None, reason))
                errors.append(f"{ip}: {reason}")
                continue
            self._sockets.append(sock)
            self._endpoints[sock.local] = sock
        if not self._sockets:
            raise OSError("no host address could be bound: " + "; ".join(errors))
        for h, sock in enumerate(self._sockets):
            host = make_candidate(
                CandidateType.HOST,
                sock.local,
                component=self.component,
                local_preference=self._preference(h, 0),
            )
            self._add(host, sock.local)

    def _preference(self, host: int, slot: int) -> int:
        """A local preference unique per candidate of one type (RFC 8445 §5.1.2.1)."""
        servers = max(1, len(self._stun_servers) + len(self._turn_servers))
        return max(0, 65535 - (host * servers + slot))

    def _relay_preference(self, host: int, slot: int, transport: str) -> int:
        """The local preference of a relayed candidate: unique (its server's slot), and every
        relay reached over UDP above every one over TCP, above every one over TLS (RFC 8445
        §5.1.2.1 lets the agent rank TURN servers like interfaces; UDP adds no head-of-line
        blocking and no TLS records; libwebrtc ranks them the same way)."""
        servers = max(1, len(self._stun_servers) + len(self._turn_servers))
        band = _TRANSPORT_RANK[transport] * max(1, len(self._sockets)) * servers
        return max(0, 65535 - (band + host * servers + slot))

    def _add(self, candidate: Candidate, base: Address) -> None:
        """Keep ``candidate`` unless it is redundant (RFC 8445 §5.1.3) and wake the streams."""
        key = (_canonical(candidate.address), _canonical(base))
        if key in self._seen:
            self.redundant += 1
            return
        self._seen.add(key)
        self._candidates.append(candidate)
        self._bases[candidate] = _canonical(base)
        if self._changed is not None:
            self._changed.set()

    def _fail(self, kind: Literal["stun", "turn"], sock: GatheredSocket, server: Address,
              reason: str) -> None:
        self._failures.append(GatherFailure(kind, sock.local, server, reason))

    async def _pace(self) -> None:
        """Start new transactions at most every Ta, and in a slot of the process's pacer
        when there is one (RFC 8445 §14.2)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_start)
        self._next_start = start + self.ta
        if start > now:
            await asyncio.sleep(start - now)
        if self.pacer is not None:
            slot: asyncio.Future[None] = loop.create_future()

            def release() -> None:
                if not slot.done():  # (cancelled: gathering was closed meanwhile)
                    slot.set_result(None)

            self.pacer.submit(release)
            await slot

    async def _run(self) -> None:
        jobs: list[Coroutine[Any, Any, None]] = []
        n_stun = len(self._stun_servers)
        for h, sock in enumerate(self._sockets):
            for s, server in enumerate(self._stun_servers):
                if _family(server[0]) in (0, sock.family):
                    jobs.append(self._srflx(h, s, sock, server))
            for t, turn in enumerate(self._turn_servers):
                if _family(turn.address[0]) in (0, sock.family):
                    jobs.append(self._relay(h, t, n_stun, sock, turn))
        # a server no host socket can reach (its address family is not gathered on) is a
        # failure too: every configured server is accounted for
        families = {sock.family for sock in self._sockets}
        servers: list[tuple[Literal["stun", "turn"], Address]] = [
            ("stun", a) for a in self._stun_servers
        ]
        servers += [("turn", turn.address) for turn in self._turn_servers]
        for kind, address in servers:
            family = _family(address[0])
            if family and family not in families:
                self._failures.append(GatherFailure(
                    kind, self._sockets[0].local, address,
                    f"no host address of its family (IPv{family}) to gather from",
                ))
        try:
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):  # a bug: the jobs catch what they expect
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "candidate gathering job failed", "exception": result}
                    )
        finally:
            self._complete = True
            if self._changed is not None:
                self._changed.set()

    async def _resolve(self, server: Address, sock: GatheredSocket) -> Address:
        family = socket.AF_INET6 if sock.family == 6 else socket.AF_INET
        addr = await resolve(server[0], server[1], family=family)
        return _canonical(addr)

    async def _srflx(self, h: int, s: int, sock: GatheredSocket, server: Address) -> None:
        """A server-reflexive candidate from one STUN server (RFC 8445 §5.1.1.2)."""
        await self._pace()
        try:
            async with asyncio.timeout(self.timeout):
                addr = await self._resolve(server, sock)
                mapped = await sock.binding(addr, software=self._software)
        except TimeoutError:
            self._fail("stun", sock, server, f"no answer within {self.timeout:g} s")
            return
        except (OSError, AnchorError) as exc:
            self._fail("stun", sock, server, str(exc) or type(exc).__name__)
            return
        candidate = make_candidate(
            CandidateType.SRFLX,
            mapped,
            base=sock.local,
            related=sock.local,
            component=self.component,
            server_ip=addr[0],
            local_preference=self._preference(h, s),
        )
        self._add(candidate, sock.local)

    async def _relay(
        self, h: int, t: int, n_stun: int, sock: GatheredSocket, turn: TurnServerConfig
    ) -> None:
        """A relayed candidate (and, over UDP, a server-reflexive one) from one TURN server
        (RFC 8445 §5.1.1.2). Over TCP and TLS the allocation is not paced: it opens a
        connection first, whose congestion control does what Ta does for UDP (RFC 8445 §14),
        so relays over every transport start together and none waits for another."""
        if turn.transport == "udp":
            await self._pace()
        try:
            async with asyncio.timeout(self.timeout):
                addr = await self._resolve(turn.address, sock)
                relay = await sock.allocate(
                    addr, turn.username, turn.password, transport=turn.transport,
                    ssl_context=turn.ssl_context,
                    server_hostname=turn.server_name or turn.address[0],
                    **self._turn_options,
                )
        except TimeoutError:
            self._fail("turn", sock, turn.address, f"no allocation within {self.timeout:g} s")
            return
        except (OSError, AnchorError) as exc:
            self._fail("turn", sock, turn.address, str(exc) or type(exc).__name__)
            return
        relayed = relay.relayed
        mapped = relay.mapped
        self._endpoints[relayed] = relay
        if mapped is not None and turn.transport == "udp":  # over TCP: a TCP mapping
            srflx = make_candidate(
                CandidateType.SRFLX,
                mapped,
                base=sock.local,
                related=sock.local,
                component=self.component,
                server_ip=relay.server[0],
                local_preference=self._preference(h, n_stun + t),
            )
            self._add(srflx, sock.local)
        candidate = make_candidate(
            CandidateType.RELAY,
            relayed,
            base=relayed,
            related=mapped or sock.local,
            component=self.component,
            server_ip=relay.server[0],
            local_preference=self._relay_preference(h, t, turn.transport),
            server_transport=turn.transport,
        )
        self._add(candidate, relayed)
