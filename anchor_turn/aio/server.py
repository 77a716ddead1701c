"""asyncio adapter of the TURN server core (RFC 8656): listeners, relay sockets, one timer.

Theory of operation
-------------------
:class:`~anchor_turn.server.TurnServer` is sans-I/O. :class:`TurnServerRunner` owns every
socket and the clock (``loop.time()``) and only moves bytes:

* **Listeners.** UDP sockets on the core's STUN addresses (``core.stun.local_addresses()``,
  the four RFC 5780 addresses when it has an alternate) plus any extra ``udp`` address;
  TCP and TLS servers on the ``tcp`` / ``tls`` addresses. Whatever a client sends goes to
  ``core.receive_datagram(data, client, local, now, transport=...)``; Binding requests are
  answered by the core's :class:`~anchor_stun.server.StunServer` on the same ports. A TCP or
  TLS byte stream is cut into STUN messages and ChannelData frames by
  :class:`~anchor_stun.framing.StreamFramer`; bytes that are neither close the connection,
  and a closed connection is reported with ``core.connection_closed`` (its allocation ends,
  RFC 8656 §3.1).
* **Relays.** :class:`UdpRelayAllocator` implements the core's
  :class:`~anchor_turn.server.RelayAllocator`: it binds a real UDP socket per relayed
  transport address, on the configured relay IPs (IPv4 and IPv6), within a port range, with
  EVEN-PORT and the reservation of port N+1 under an 8-byte RESERVATION-TOKEN
  (RFC 8656 §7.2, §14.6, §14.9; a reservation lasts :data:`RESERVATION_LIFETIME` seconds).
  Peer datagrams go to ``core.receive_relay(data, peer, relay, now)``.
* **Fragmentation** (RFC 8656 §7.2 step 4, §11.2, §14, §15). Where the socket options exist
  (Linux: ``IP_MTU_DISCOVER`` for IPv4, ``IPV6_DONTFRAG`` for IPv6; checked once on a scratch
  socket of each relay family, :attr:`UdpRelayAllocator.dont_fragment`), every IPv4 relay
  socket is bound with ``IP_PMTUDISC_DONT``: the DF bit 0 on what it relays (the kernel's
  default would set DF and do path MTU discovery), IPv6 ones keep the default (fragmentation
  allowed). A :class:`~anchor_turn.server.DontFragmentTransmit` is sent with
  ``IP_PMTUDISC_DO`` / ``IPV6_DONTFRAG`` 1: the mode of each relay socket is remembered and
  changed only when the next datagram from it needs the other one, just before its
  ``sendto``. A datagram that does not fit the path then fails with ``EMSGSIZE`` and is
  counted in :attr:`TurnServerRunner.send_errors`. Where the options are missing the runner
  clears ``core.dont_fragment``, so the core answers DONT-FRAGMENT with 420.
* **Output.** After each batch of input the runner drains ``core.datagrams_to_send()`` and
  routes every :class:`~anchor_stun.events.Transmit` by its ``local``: a relayed address
  sends from that relay socket (to a peer); otherwise a live TCP/TLS connection keyed by
  ``(addr, local)`` gets the bytes; otherwise the UDP listener bound to ``local``. Then it
  hands out the core's events and re-arms its one timer at ``core.next_timer()``.

One output path: a relay socket's fragmentation mode is looked at only while some relay
socket is in DF mode or for a :class:`~anchor_turn.server.DontFragmentTransmit`, so ChannelData
relaying pays one test of an empty set and one type comparison per datagram.

Reading. Every UDP socket (listeners and relays) is a plain non-blocking socket watched with
``loop.add_reader``: when it is readable the callback reads up to :data:`READ_BATCH`
datagrams with ``recvfrom`` until ``EAGAIN``, feeds them all to the core, and drains the
core's output once for the whole batch. Under load this costs one selector wake-up and one
output pass per batch instead of per datagram, which is what asyncio's
``DatagramProtocol`` transports do (one ``recvfrom`` per wake-up, plus a transport object
and a protocol call per datagram). Measured with one client blasting 100-byte ChannelData
through a channel to an echo peer (32 in flight, client, peer and server on one 2-CPU
machine): about 72-76 k relayed datagrams/s this way against 44-48 k with
``DatagramProtocol`` transports on the same sockets; the server's own time then goes mostly
to ``sendto`` and ``epoll``. Sends are direct non-blocking ``sendto`` calls; a datagram
that the kernel will not take at once (``EAGAIN``) is dropped, as UDP may be, and counted
in :attr:`TurnServerRunner.send_dropped`. A TCP/TLS connection whose write buffer holds more
than ``stream_buffer`` bytes has further relayed data dropped the same way rather than
buffering without bound. ``add_reader`` needs a selector event loop (asyncio's default on
Unix, and uvloop).

Hostile clients (issue 24). TCP and TLS connections are bounded by a
:class:`~anchor_stun.aio.streams.StreamGuard` (:attr:`TurnServerRunner.guard`: admission
per source and in total at accept time, TLS started only once admitted, deadlines for a
first request, partial frames and idle connections without an allocation, a request rate
per connection, memory handed back), whose counters say what was shed. A relay socket
that cannot be opened for lack of descriptors is counted
(:attr:`UdpRelayAllocator.resource_errors`) and logged once a minute, not per request.

"Myself" (RFC 8656 §21). At start the runner declares every listener to the core
(:meth:`~anchor_turn.server.TurnServer.add_self_addresses`); a wildcard listener (0.0.0.0,
``::``) stands for every address of the host (:func:`host_addresses`, from ``ifaddr``)
and every ``external_ips`` address on its port, so no client can relay to the server.

Addresses are canonical ``(ip, port)`` tuples: an IPv6 socket's flow info and scope id are
stripped and the IP is written as the codec writes it (``ipaddress`` compressed form, so an
IPv4-mapped ``::ffff:1.2.3.4`` from a dual-stack socket becomes ``::ffff:102:304``, which is
also what an XOR-PEER-ADDRESS decodes to). IPv4 addresses come from the kernel in that form
already and are passed through untouched.

Known limit: a :class:`Transmit` names no transport, so when one client IP and port talk to
the same listener address over UDP *and* over TCP at once, output for it goes to the TCP
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import random
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ifaddr

from anchor_stun.address import count, ip_address_list, seconds
from anchor_stun.aio.net import ListenError, credential, port_number, server_list
from anchor_stun.aio.streams import GuardedStream, LoopErrorFilter, StreamGuard, StreamLimits
from anchor_stun.attributes import Family, pack_ip
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.server import StunServer
from anchor_turn.auth import StaticUsers
from anchor_turn.peer_filter import canonical_address as _canonical
from anchor_turn.server import DontFragmentTransmit, TransportName, TurnServer, TurnServerEvent
from anchor_turn.shaper import RelayShaper

__all__ = [
    "DEFAULT_MAX_PORT",
    "DEFAULT_MIN_PORT",
    "READ_BATCH",
    "RESERVATION_LIFETIME",
    "TurnServerRunner",
    "UdpRelayAllocator",
    "canonical_address",
    "dont_fragment_supported",
    "host_addresses",
    "loopback_runner",
]

DEFAULT_MIN_PORT = 49152  # RFC 8656 §7.2: relayed ports SHOULD come from 49152-65535
DEFAULT_MAX_PORT = 65535
RESERVATION_LIFETIME = 30.0  # RFC 8656 §7.2 step 8: a reservation lasts about 30 seconds
READ_BATCH = 64
"""Datagrams read from one readable UDP socket before the output is drained."""
MAX_DATAGRAM = 65535
"""The receive buffer size: the largest UDP payload."""
LISTENER_RCVBUF = 4 << 20
"""SO_RCVBUF asked for the UDP listeners (the kernel caps it at net.core.rmem_max)."""
RELAY_RCVBUF = 1 << 20
"""SO_RCVBUF asked for each relay socket."""
DEFAULT_STREAM_BUFFER = 1 << 20
"""Bytes a TCP/TLS connection may have waiting to be written before relayed data is dropped."""

_IPV4 = int(Family.IPV4)
_IPV6 = int(Family.IPV6)
_log = logging.getLogger("anchor_turn.aio.server")


def host_addresses() -> list[str]:
    """Every IP address of this host's interfaces (``ifaddr``), canonical, scope ids
    dropped: what a wildcard listener answers on."""
    out: list[str] = []
    try:
        adapters = ifaddr.get_adapters()
    except OSError:
        return out
    for adapter in adapters:
        for address in adapter.ips:
            ip = address.ip[0] if isinstance(address.ip, tuple) else address.ip
            with contextlib.suppress(LocalProtocolError, ValueError):
                text = canonical_address((ip, 0))[0]
                if text not in out:
                    out.append(text)
    return out


# Path MTU discovery modes of an IPv4 socket (Linux <linux/in.h>; Python 3.11 does not export
# them). IP_PMTUDISC_DONT: DF 0, the kernel fragments; IP_PMTUDISC_DO: DF 1, never fragments
# (EMSGSIZE beyond the path MTU). IPv6 (RFC 3542 §11.2): IPV6_DONTFRAG 1 / 0.
_LINUX = sys.platform.startswith("linux")
_IP_MTU_DISCOVER: int | None = getattr(socket, "IP_MTU_DISCOVER", 10 if _LINUX else None)
_IP_PMTUDISC_DONT: int = getattr(socket, "IP_PMTUDISC_DONT", 0)
_IP_PMTUDISC_DO: int = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_DONTFRAG: int | None = getattr(socket, "IPV6_DONTFRAG", 62 if _LINUX else None)


ADDRESS_FORMS = 4096
"""Socket addresses whose canonical form a runner keeps (IPv6 sources; all forgotten at
once when full)."""


def canonical_address(sockaddr: Any) -> Address:
    """``(ip, port)`` of a socket address: flow info and scope id dropped, the IP in the
    codec's text form (:func:`~anchor_stun.attributes.unpack_ip`)."""
    ip = str(sockaddr[0])
    if "%" in ip:
        ip = ip.split("%", 1)[0]
    return _canonical((ip, sockaddr[1]))


def _family_of(ip: str) -> int:
    return int(pack_ip(ip)[0])


def _set_dont_fragment(sock: socket.socket, family: int, on: bool) -> None:
    """Forbid (``on``) or allow fragmentation of what ``sock`` sends; raises OSError when the
    platform cannot (the option is missing or refused)."""
    if family == _IPV6:
        if _IPV6_DONTFRAG is None:
            raise OSError(errno.ENOPROTOOPT, "IPV6_DONTFRAG is not available")
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_DONTFRAG, 1 if on else 0)
    else:
        if _IP_MTU_DISCOVER is None:
            raise OSError(errno.ENOPROTOOPT, "IP_MTU_DISCOVER is not available")
        sock.setsockopt(
            socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO if on else _IP_PMTUDISC_DONT
        )


def dont_fragment_supported(family: int) -> bool:
    """Whether UDP sockets of ``family`` (1 IPv4, 2 IPv6) can be switched between forbidding
    and allowing fragmentation here (RFC 8656 §7.2 step 4): tried on a scratch socket, whose
    mode must read back as set."""
    try:
        with socket.socket(
            socket.AF_INET6 if family == _IPV6 else socket.AF_INET, socket.SOCK_DGRAM
        ) as sock:
            level, name = (
                (socket.IPPROTO_IPV6, _IPV6_DONTFRAG)
                if family == _IPV6
                else (socket.IPPROTO_IP, _IP_MTU_DISCOVER)
            )
            if name is None:
                return False
            on = 1 if family == _IPV6 else _IP_PMTUDISC_DO
            off = 0 if family == _IPV6 else _IP_PMTUDISC_DONT
            _set_dont_fragment(sock, family, True)
            if sock.getsockopt(level, name) != on:
                return False
            _set_dont_fragment(sock, family, False)
            return bool(sock.getsockopt(level, name) == off)
    except OSError:
        return False


def _udp_socket(family: int, rcvbuf: int) -> socket.socket:
    sock = socket.socket(
        socket.AF_INET6 if family == _IPV6 else socket.AF_INET, socket.SOCK_DGRAM
    )
    try:
        sock.setblocking(False)
        if family == _IPV6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    except OSError:
        sock.close()
        raise
    return sock


# ----------------------------------------------------------------------------- relay


class _Reservation:
    """A port N+1 kept bound for a later Allocate with RESERVATION-TOKEN (RFC 8656 §7.2)."""

    __slots__ = ("addr", "handle", "sock")

    def __init__(self, sock: socket.socket, addr: Address) -> None:
        self.sock = sock
        self.addr = addr
        self.handle: asyncio.TimerHandle | None = None


RelayReady = Callable[[socket.socket, Address], None]
"""What the runner registers to read a relay socket: ``ready(sock, relayed_address)``."""


class UdpRelayAllocator:
    """A :class:`~anchor_turn.server.RelayAllocator` that binds real UDP sockets
    (RFC 8656 §7.2 "choosing a relayed transport address").

    ``ips`` are the relay IPs (specific IPv4 and/or IPv6 addresses, not wildcards); each
    Allocate takes the next IP of the requested family in turn and a random free port of
    ``min_port``..``max_port`` (an even one for EVEN-PORT; with the R bit, an even port N
    whose N+1 is free too, and N+1 stays bound under a fresh 8-byte RESERVATION-TOKEN from
    ``rng`` for ``reservation_lifetime`` seconds). Ports other programs hold are skipped.

    The runner attaches it to its loop (:meth:`attach`) before the first Allocate; every
    bound relay socket is then watched with ``loop.add_reader``. ``dont_fragment=False``
    keeps the sockets' fragmentation mode untouched and makes :attr:`dont_fragment` False, as
    on a platform without the socket options (module docstring). Raises
    :class:`LocalProtocolError` on a bad configuration.
    """

    def __init__(
        self,
        ips: Iterable[str],
        *,
        min_port: int = DEFAULT_MIN_PORT,
        max_port: int = DEFAULT_MAX_PORT,
        rng: Callable[[int], bytes] = os.urandom,
        reservation_lifetime: float = RESERVATION_LIFETIME,
        rcvbuf: int = RELAY_RCVBUF,
        dont_fragment: bool = True,
    ) -> None:
        port_number(min_port, "min_port")
        port_number(max_port, "max_port")
        if min_port > max_port:
            raise LocalProtocolError(f"min_port {min_port} must be <= max_port {max_port}")
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        seconds(reservation_lifetime, "reservation_lifetime")
        count(rcvbuf, "rcvbuf", 0)
        self._ips: dict[int, list[str]] = {}
        for i, ip in enumerate(ip_address_list(ips, "ips") or ()):
            parsed = ipaddress.ip_address(ip)
            if parsed.is_unspecified or parsed.is_multicast:
                raise LocalProtocolError(
                    f"ips[{i}]: relay IP {ip} must be a specific unicast address"
                )
            family = _IPV4 if parsed.version == 4 else _IPV6
            text = canonical_address((str(parsed), 0))[0]
            if text not in self._ips.setdefault(family, []):
                self._ips[family].append(text)
        if not self._ips:
            raise LocalProtocolError("at least one relay IP is needed")
        self.min_port = min_port
        """Lowest relayed port."""
        self.max_port = max_port
        """Highest relayed port."""
        self.reservation_lifetime = reservation_lifetime
        """Seconds a port reserved with RESERVATION-TOKEN stays bound."""
        self._rng = rng
        self._random = random.Random(int.from_bytes(rng(8), "big"))
        self._rcvbuf = rcvbuf
        self._next_ip: dict[int, int] = {}
        self._used: dict[str, set[int]] = {ip: set() for ips in self._ips.values() for ip in ips}
        self.sockets: dict[Address, socket.socket] = {}
        """The relay socket of every relayed address in use (read by the runner to send)."""
        self.closing: dict[Address, socket.socket] = {}
        """Relay sockets released during the batch being processed: they stop reading at
        once but close only after the runner has sent that batch's output, so data the
        client sent just before its Refresh LIFETIME 0 still reaches the peer."""
        self._reserved: dict[bytes, _Reservation] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: RelayReady | None = None
        self.bind_failures = 0
        """Allocations refused because no port could be bound (508)."""
        self.resource_errors = 0
        """Relay sockets that could not be opened for lack of descriptors or buffers."""
        self._warned_at = -60.0
        self.dont_fragment = dont_fragment and all(
            dont_fragment_supported(family) for family in self._ips
        )
        """Whether relay sockets can forbid fragmentation, for every relay family (RFC 8656
        §7.2 step 4): the ``dont_fragment`` capability of the core."""
        self.dont_fragment_sockets: set[socket.socket] = set()
        """Relay sockets now in the mode that forbids fragmentation (DF 1, IPV6_DONTFRAG);
        the others allow it."""

    @property
    def families(self) -> tuple[int, ...]:
        """The address families (1 IPv4, 2 IPv6) there are relay IPs for."""
        return tuple(sorted(self._ips))

    @property
    def ips(self) -> list[str]:
        """Every relay IP, IPv4 first."""
        return [ip for family in sorted(self._ips) for ip in self._ips[family]]

    def attach(self, loop: asyncio.AbstractEventLoop, ready: RelayReady) -> None:
        """Register the loop and the read callback of the runner."""
        self._loop = loop
        self._ready = ready

    # ------------------------------------------------------------------ RelayAllocator

    def allocate(
        self,
        family: int,
        even_port: bool,
        reserve_next: bool,
        token: bytes | None,
        now: float,
    ) -> tuple[Address, bytes | None] | None:
        """Bind a relayed address (see the class docstring); None when impossible (508)."""
        if self._loop is None or self._ready is None:
            return None
        if token is not None:
            reservation = self._reserved.pop(bytes(token), None)
            if reservation is None:
                return None
            if reservation.handle is not None:
                reservation.handle.cancel()
            self._activate(reservation.sock, reservation.addr)
            return reservation.addr, None
        ips = self._ips.get(family)
        if not ips:
            return None
        start = self._next_ip.get(family, 0)
        self._next_ip[family] = (start + 1) % len(ips)
        for i in range(len(ips)):
            ip = ips[(start + i) % len(ips)]
            bound = self._bind(ip, family, even_port or reserve_next, reserve_next)
            if bound is None:
                continue
            sock, addr, spare = bound
            new_token: bytes | None = None
            if spare is not None:
                new_token = self._reserve(spare)
            self._activate(sock, addr)
            return addr, new_token
        self.bind_failures += 1
        return None

    def release(self, addr: Address) -> None:
        """Stop reading and close the relay socket of ``addr``."""
        sock = self.sockets.pop(addr, None)
        if sock is None:
            return
        if self._loop is None:
            self.dont_fragment_sockets.discard(sock)
            sock.close()
            self._used.get(addr[0], set()).discard(addr[1])
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock.fileno())
        self.closing[addr] = sock
        self._loop.call_soon(self._finish_release, addr)

    def _finish_release(self, addr: Address) -> None:
        sock = self.closing.pop(addr, None)
        if sock is not None:
            self.dont_fragment_sockets.discard(sock)
            sock.close()
            self._used.get(addr[0], set()).discard(addr[1])

    def set_dont_fragment(self, sock: socket.socket, on: bool) -> bool:
        """Make the relay socket ``sock`` forbid (``on``) or allow fragmentation of what it
        sends next (RFC 8656 §14, §15) and remember it; False when the kernel refused."""
        family = _IPV6 if sock.family == socket.AF_INET6 else _IPV4
        try:
            _set_dont_fragment(sock, family, on)
        except OSError:
            return False
        if on:
            self.dont_fragment_sockets.add(sock)
        else:
            self.dont_fragment_sockets.discard(sock)
        return True

    # ------------------------------------------------------------------ sockets

    def open_sockets(self) -> int:
        """Relay and reserved sockets still open."""
        return len(self.sockets) + len(self.closing) + len(self._reserved)

    def close(self) -> None:
        """Release every relayed address and reservation."""
        for addr in list(self.sockets):
            self.release(addr)
        for addr in list(self.closing):
            self._finish_release(addr)
        for reservation in self._reserved.values():
            if reservation.handle is not None:
                reservation.handle.cancel()
            reservation.sock.close()
            self._used.get(reservation.addr[0], set()).discard(reservation.addr[1])
        self._reserved.clear()

    def _activate(self, sock: socket.socket, addr: Address) -> None:
        assert self._loop is not None and self._ready is not None
        self.sockets[addr] = sock
        self._loop.add_reader(sock.fileno(), self._ready, sock, addr)

    def _reserve(self, spare: tuple[socket.socket, Address]) -> bytes:
        assert self._loop is not None
        sock, addr = spare
        token = self._rng(8)
        while token in self._reserved:
            token = self._rng(8)
        reservation = _Reservation(sock, addr)
        reservation.handle = self._loop.call_later(
            self.reservation_lifetime, self._expire_reservation, token
        )
        self._reserved[token] = reservation
        return token

    def _expire_reservation(self, token: bytes) -> None:
        reservation = self._reserved.pop(token, None)
        if reservation is not None:
            reservation.sock.close()
            self._used.get(reservation.addr[0], set()).discard(reservation.addr[1])

    def _try_bind(self, ip: str, family: int, port: int) -> socket.socket | None:
        sock = _udp_socket(family, self._rcvbuf)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL:
                raise
            return None
        if self.dont_fragment and family == _IPV4:
            # DF 0 unless a Send indication asks for it (RFC 8656 §14 Alternate Behavior,
            # §15): Linux's default, IP_PMTUDISC_WANT, would set DF on everything.
            with contextlib.suppress(OSError):
                _set_dont_fragment(sock, family, False)
        return sock

    def _bind(
        self, ip: str, family: int, even: bool, pair: bool
    ) -> tuple[socket.socket, Address, tuple[socket.socket, Address] | None] | None:
        """A bound socket on ``ip`` (an even port when ``even``; with ``pair`` port+1 is
        bound too and returned as the spare), or None when the range is exhausted."""
        low, high = self.min_port, self.max_port
        if even and low % 2:
            low += 1
        if pair:
            high -= 1
        step = 2 if even else 1
        if high < low:
            return None
        count = (high - low) // step + 1
        used = self._used[ip]
        first = self._random.randrange(count)
        try:
            for i in range(count):
                port = low + ((first + i) % count) * step
                if port in used or (pair and port + 1 in used):
                    continue
                sock = self._try_bind(ip, family, port)
                if sock is None:
                    continue
                spare: tuple[socket.socket, Address] | None = None
                if pair:
                    other = self._try_bind(ip, family, port + 1)
                    if other is None:
                        sock.close()
                        continue
                    spare = (other, (ip, port + 1))
                    used.add(port + 1)
                used.add(port)
                return sock, (ip, port), spare
        except OSError as exc:
            if exc.errno in LoopErrorFilter.RESOURCE_ERRNOS:
                self.resource_errors += 1  # the fd limit: 508, no log flood
                now = time.monotonic()
                if now - self._warned_at < 60.0:
                    return None
                self._warned_at = now
            _log.warning("cannot bind relay IP %s: %s", ip, exc,
                         extra={"event": "relay-bind-failed",
                                "fields": {"ip": ip, "error": str(exc)}})  # fmt: skip
        return None


# ----------------------------------------------------------------------------- streams


class _StreamConnection(GuardedStream):
    """One TCP or TLS client connection (RFC 8656 §3.1, framing §12.5) under the runner's
    :class:`~anchor_stun.aio.streams.StreamGuard`."""

    def __init__(
        self,
        runner: TurnServerRunner,
        local: Address,
        name: TransportName,
        context: ssl.SSLContext | None,
    ) -> None:
        super().__init__(runner.guard, local, context, channel_data=True)
        self.runner = runner
        self.name: TransportName = name
        self.write_limit = runner.stream_buffer

    def address(self, sockaddr: Any) -> Address:
        return self.runner._address(sockaddr)

    def frames_received(self, frames: list[bytes], now: float) -> None:
        runner = self.runner
        receive = runner.core.receive_datagram
        try:
            for frame in frames:
                receive(frame, self.peer, self.local, now, transport=self.name)
        finally:
            runner._flush()

    def keep_open(self) -> bool:
        return bool(self.runner.core.relayed_for(self.peer, self.local, self.name))

    def lost(self) -> None:
        runner = self.runner
        if runner._closed:
            return
        runner.core.connection_closed(self.peer, self.local, runner._loop.time())
        runner._flush()


# ----------------------------------------------------------------------------- runner


class TurnServerRunner:
    """Serves a :class:`~anchor_turn.server.TurnServer` core over UDP, TCP and TLS, with
    relays bound by its :class:`UdpRelayAllocator` (see the module docstring).

    ``udp``: extra UDP listener addresses besides ``core.stun.local_addresses()`` (which are
    always served); ``tcp`` / ``tls``: addresses of TCP and TLS listeners (``tls_context``
    is required with ``tls``); each ``(host, port)`` or ``"host:port"``, one or a list,
    checked here (:class:`LocalProtocolError` naming the argument, before any socket). ``limits`` bounds the TCP/TLS connections
    (:class:`~anchor_stun.aio.streams.StreamLimits`); ``external_ips`` are public addresses of the host, refused
    as peers like its own. Listener ports must be concrete (not 0): the core answers
    with the addresses it was configured with. ``on_event`` receives every core event (for
    logs and metrics). After :meth:`start`, :attr:`listeners` lists ``(kind, address)`` of
    every listener. :meth:`close` releases everything; :meth:`open_sockets` then returns 0.

    Deployment options (issue 21): ``serve_udp=False`` opens no UDP listener (coturn's
    ``--no-udp``; relays stay UDP); ``reuse_port`` sets ``SO_REUSEPORT`` on every listener, so
    that several processes serve one address and the kernel spreads clients among them (by
    the hash of the 4-tuple: a client's datagrams always reach the same process while the
    set of processes is unchanged); ``shaper`` (:class:`~anchor_turn.shaper.RelayShaper`)
    bounds the bytes per second of each relayed address in each direction (``--max-bps``).
    """

    def __init__(
        self,
        core: TurnServer,
        *,
        udp: Iterable[Address | str] | Address | str = (),
        tcp: Iterable[Address | str] | Address | str = (),
        tls: Iterable[Address | str] | Address | str = (),
        tls_context: ssl.SSLContext | None = None,
        on_event: Callable[[TurnServerEvent], None] | None = None,
        stream_buffer: int = DEFAULT_STREAM_BUFFER,
        limits: StreamLimits | None = None,
        external_ips: Sequence[str] = (),
        serve_udp: bool = True,
        reuse_port: bool = False,
        shaper: RelayShaper | None = None,
    ) -> None:
        if not isinstance(core, TurnServer):
            raise LocalProtocolError(f"core must be a TurnServer, not {type(core).__name__}")
        if not isinstance(core.relay, UdpRelayAllocator):
            raise LocalProtocolError("the core's relay allocator must be a UdpRelayAllocator")
        # listeners: (host, port) or "host:port", one or a list, with concrete ports (the
        # core answers with the addresses it was configured with)
        udp_listeners = server_list(udp, "udp", default_port=None)
        tcp_listeners = server_list(tcp, "tcp", default_port=None)
        tls_listeners = server_list(tls, "tls", default_port=None)
        for local in core.stun.local_addresses() if serve_udp else ():
            if local[1] == 0:
                raise LocalProtocolError(
                    f"the core's STUN server listens on port 0 ({local[0]}): give it a port"
                )
        if tls_context is not None and not isinstance(tls_context, ssl.SSLContext):
            raise LocalProtocolError(
                f"tls_context must be an ssl.SSLContext, not {type(tls_context).__name__}"
            )
        if tls_listeners and tls_context is None:
            raise LocalProtocolError(
                "TLS listeners (tls=) need a tls_context (a server ssl.SSLContext holding the"
                " certificate)"
            )
        if on_event is not None and not callable(on_event):
            raise LocalProtocolError(f"on_event must be callable, not {on_event!r}")
        if (
            isinstance(stream_buffer, bool)
            or not isinstance(stream_buffer, int)
            or stream_buffer < 1
        ):
            raise LocalProtocolError(
                f"stream_buffer must be a positive number of bytes, not {stream_buffer!r}"
            )
        if isinstance(external_ips, str):
            raise LocalProtocolError(
                f"external_ips must be a list of IP addresses, not one string {external_ips!r}"
            )
        publics: list[str] = []
        for i, ip in enumerate(external_ips):
            try:
                publics.append(str(ipaddress.ip_address(ip)))
            except ValueError:
                raise LocalProtocolError(
                    f"external_ips[{i}] must be an IP address, not {ip!r}"
                ) from None
        self.core = core
        """The TURN core served."""
        self.allocator: UdpRelayAllocator = core.relay
        """The relay allocator (owner of the relay sockets)."""
        if not self.allocator.dont_fragment and core.dont_fragment:
            core.dont_fragment = False  # DONT-FRAGMENT becomes unknown: 420 (RFC 8656 §7.2)
            _log.info("relay sockets cannot forbid fragmentation: DONT-FRAGMENT gets 420",
                      extra={"event": "no-dont-fragment", "fields": {}})  # fmt: skip
        udp_addresses: list[Address] = []
        for addr in [*core.stun.local_addresses(), *udp_listeners] if serve_udp else ():
            if addr not in udp_addresses:
                udp_addresses.append(addr)
        self.reuse_port = reuse_port
        """Whether listeners are opened with SO_REUSEPORT (shared with other processes)."""
        self.shaper = shaper
        """The per-relay bandwidth bound (``--max-bps``), or None."""
        self._udp_addresses = udp_addresses
        self._tcp_addresses = tcp_listeners
        self._tls_addresses = tls_listeners
        self._tls_context = tls_context
        self.on_event = on_event
        """Called with every event of the core, or None."""
        self.stream_buffer = stream_buffer
        """Write-buffer size above which relayed data to a TCP/TLS client is dropped."""
        self.guard = StreamGuard(limits)
        """The bounds of the TCP/TLS connections (:mod:`anchor_stun.aio.streams`)."""
        self.limits = self.guard.limits
        """The guard's :class:`~anchor_stun.aio.streams.StreamLimits`."""
        self.shed = self.guard.shed
        """Connections and requests shed, by reason (the guard's counters)."""
        self.external_ips = publics
        """Public addresses the host is also reached at (a 1:1 NAT): "myself" too."""
        self.listeners: list[tuple[str, Address]] = []
        """(``"udp"``|``"tcp"``|``"tls"``, bound address) of every listener, after start."""
        self.send_dropped = 0
        """Datagrams dropped because a socket or connection would have blocked."""
        self.send_errors = 0
        """Datagrams the kernel refused to send (unreachable, too big with DF, ...)."""
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._udp: dict[Address, socket.socket] = {}
        self._servers: list[asyncio.Server] = []
        self._streams = self.guard.connections
        self._timer: asyncio.TimerHandle | None = None
        self._self_addresses: list[Address] = []
        self._timer_at: float | None = None
        self._address_forms: dict[Any, Address] = {}
        self._closed = False
        self._started = False

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open every listener; on failure close what was opened and re-raise OSError."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started = True
        self.allocator.attach(loop, self._relay_ready)
        self.guard.start(loop)
        try:
            for local in self._udp_addresses:
                family = _family_of(local[0])
                sock = _udp_socket(family, LISTENER_RCVBUF)
                if family == _IPV6 and ipaddress.ip_address(local[0]).is_unspecified:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                try:
                    if self.reuse_port:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    sock.bind(local)
                except OSError as exc:
                    sock.close()
                    raise ListenError("udp", local, exc) from exc
                self._udp[local] = sock
                loop.add_reader(sock.fileno(), self._udp_ready, sock, local)
                self.listeners.append(("udp", canonical_address(sock.getsockname())))
            for local in self._tcp_addresses:
                await self._listen_stream("tcp", local, None)
            for local in self._tls_addresses:
                await self._listen_stream("tls", local, self._tls_context)
        except OSError:
            self.close()
            raise
        self.protect(address for _, address in self.listeners)
        self._flush()

    def protect(self, addresses: Iterable[Address]) -> None:
        """Declare more addresses this server answers on (its listeners are declared at
        start; the CLI adds its metrics and rendezvous ports): the core refuses them as
        peers (RFC 8656 §21, "myself"). A wildcard address stands for every address of the
        host (:func:`host_addresses`) and every external IP on that port."""
        expanded: list[Address] = []
        for ip, port in addresses:
            expanded.append((ip, port))
            parsed = ipaddress.ip_address(ip)
            if parsed.is_unspecified:
                families = (4, 6) if parsed.version == 6 else (4,)
                for host in [*host_addresses(), *self.external_ips]:
                    if ipaddress.ip_address(host).version in families:
                        expanded.append((host, port))
            elif self.external_ips:
                expanded.extend((ext, port) for ext in self.external_ips)
        self._self_addresses.extend(expanded)
        self.core.add_self_addresses(expanded)

    async def _listen_stream(
        self, name: TransportName, local: Address, context: ssl.SSLContext | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: _StreamConnection(self, local, name, context),
                local[0],
                local[1],
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            raise ListenError(name, local, exc) from exc
        self._servers.append(server)
        for sock in server.sockets:
            self.listeners.append((name, canonical_address(sock.getsockname())))

    def open_sockets(self) -> int:
        """Sockets this runner (and its allocator) still has open: 0 after :meth:`close`."""
        count = sum(1 for s in self._udp.values() if s.fileno() != -1)
        count += sum(1 for s in self._servers if s.is_serving())
        count += self.guard.open_sockets()
        return count + self.allocator.open_sockets()

    def close(self) -> None:
        """Close every listener, connection and relay socket, and stop the timer."""
        self._closed = True
        loop: asyncio.AbstractEventLoop | None = getattr(self, "_loop", None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        for sock in self._udp.values():
            if loop is not None and sock.fileno() != -1:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
            sock.close()
        self._udp.clear()
        for server in self._servers:
            server.close()
        self.guard.close()
        self.allocator.close()

    async def wait_closed(self) -> None:
        """Wait until the stream servers have shut down."""
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def __aenter__(self) -> TurnServerRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # ------------------------------------------------------------------ stream bounds

    def connection_count(self) -> int:
        """TCP/TLS connections held now (handshaking ones included)."""
        return len(self.guard)

    # ------------------------------------------------------------------ input

    def _udp_ready(self, sock: socket.socket, local: Address) -> None:
        """A UDP listener is readable: feed a batch of client datagrams to the core."""
        self._read(sock, local, self.core.receive_datagram)

    def _relay_ready(self, sock: socket.socket, relay: Address) -> None:
        """A relay socket is readable: feed a batch of peer datagrams to the core (those over
        ``--max-bps`` towards the client are dropped, as UDP may be)."""
        core_receive = self.core.receive_relay
        shaper = self.shaper
        if shaper is None:
            self._read(sock, relay, core_receive)
            return

        def shaped(data: bytes, src: Address, local: Address, now: float) -> None:
            if shaper.admit(local, False, len(data), now):
                core_receive(data, src, local, now)

        self._read(sock, relay, shaped)

    def _read(
        self,
        sock: socket.socket,
        local: Address,
        receive: Callable[[bytes, Address, Address, float], None],
    ) -> None:
        """Read up to :data:`READ_BATCH` datagrams from ``sock`` (a listener or a relay bound
        to ``local``), hand each to ``receive`` and send the core's output once."""
        recv = sock.recvfrom
        now = self._loop.time()
        address = None if sock.family == socket.AF_INET else self._address
        try:
            for _ in range(READ_BATCH):
                try:
                    data, src = recv(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # an ICMP error reported on the socket: nothing to read
                receive(data, src if address is None else address(src), local, now)
        except Exception:
            _log.exception("TURN core failed on a datagram received on %s", local)
        self._flush()

    def _address(self, sockaddr: Any) -> Address:
        """:func:`canonical_address` of ``sockaddr``, remembered for the next datagram from
        it (at most :data:`ADDRESS_FORMS`; a form never changes, so nothing goes stale)."""
        forms = self._address_forms
        addr = forms.get(sockaddr)
        if addr is None:
            addr = canonical_address(sockaddr)
            if len(forms) >= ADDRESS_FORMS:
                forms.clear()
            forms[sockaddr] = addr
        return addr

    # ------------------------------------------------------------------ output

    def _flush(self) -> None:
        """Send the core's output, hand out its events, re-arm the timer."""
        if self._closed:
            return
        core = self.core
        out = core.datagrams_to_send(self._loop.time())
        if out and self.shaper is not None:
            out = self._shape(out)
        if out:
            self._send(out)
        event = core.next_event()
        while event is not None:
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:
                    _log.exception("TURN event handler failed")
            event = core.next_event()
        deadline = core.next_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else self._loop.call_at(deadline, self._fire)
            self._timer_at = deadline

    def _shape(self, out: list[Transmit]) -> list[Transmit]:
        """``out`` without the datagrams to peers that go over ``--max-bps``."""
        shaper = self.shaper
        assert shaper is not None
        relays = self.allocator.sockets
        now = self._loop.time()
        return [
            t
            for t in out
            if t.local is None
            or t.local not in relays
            or shaper.admit(t.local, True, len(t.data), now)
        ]

    def _send(self, out: list[Transmit]) -> None:
        """Route each :class:`Transmit` by its ``local`` (module docstring): a relay socket,
        else the TCP/TLS connection of (addr, local), else the UDP listener on ``local``.
        From a relay socket, a datagram first gets the fragmentation mode it needs
        (:meth:`_fragmentation`); that is looked at only while some relay socket forbids
        fragmentation or for a :class:`~anchor_turn.server.DontFragmentTransmit`."""
        allocator = self.allocator
        relays = allocator.sockets
        closing = allocator.closing
        forbidding = allocator.dont_fragment_sockets
        streams = self._streams
        udp = self._udp
        for transmit in out:
            data, addr, local = transmit
            sock = relays.get(local) or closing.get(local) if local is not None else None
            if sock is not None:
                if (
                    forbidding or type(transmit) is DontFragmentTransmit
                ) and not self._fragmentation(sock, transmit):
                    continue
            else:
                if streams:
                    connection = streams.get((addr, local))  # type: ignore[arg-type]
                    if connection is not None:
                        if not connection.send(data):
                            self.send_dropped += 1
                        continue
                sock = udp.get(local) if local is not None else None
                if sock is None:
                    continue
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self.send_dropped += 1
            except OSError:
                self.send_errors += 1

    def _fragmentation(self, sock: socket.socket, transmit: Transmit) -> bool:
        """Put the relay socket ``sock`` in the mode ``transmit`` needs (RFC 8656 §14, §15):
        fragmentation forbidden for a DontFragmentTransmit, allowed otherwise. False when a
        datagram that must not be fragmented cannot be sent so (counted in ``send_errors``);
        one that may be fragmented is sent whatever the socket's mode."""
        allocator = self.allocator
        wanted = type(transmit) is DontFragmentTransmit
        if wanted is (sock in allocator.dont_fragment_sockets):
            return True
        if allocator.set_dont_fragment(sock, wanted) or not wanted:
            return True
        self.send_errors += 1
        return False

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.core.handle_timer(self._loop.time())
        except Exception:
            _log.exception("TURN core failed in handle_timer")
        self._flush()


def loopback_runner(
    port: int,
    users: Mapping[str, str],
    realm: str,
    ip: str = "127.0.0.1",
    *,
    tcp_port: int | None = None,
    tls_port: int | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> TurnServerRunner:
    """A STUN/TURN server for one machine's own use (the demo, benchmarks, tests): UDP on
    ``ip`` (a loopback address) and ``port``, the static ``users`` (name -> password) of
    ``realm``, relayed addresses on ``ip``, and loopback peers allowed, since its peers are on
    the same machine. ``tcp_port`` / ``tls_port`` (with ``tls_context``) add TCP and TLS
    listeners on ``ip``. Not started: ``await runner.start()``; ``runner.core`` is the TURN
    core. Every argument is checked here (:class:`LocalProtocolError` naming it)."""
    port = port_number(port, "port")
    tcp_port = None if tcp_port is None else port_number(tcp_port, "tcp_port")
    tls_port = None if tls_port is None else port_number(tls_port, "tls_port")
    if not isinstance(users, Mapping) or not users:
        raise LocalProtocolError(
            f"users must be a non-empty mapping of name -> password, not {type(users).__name__}"
        )
    for name, password in users.items():
        credential(name, "users: a name")
        credential(password, f"users[{name!r}]: the password")
    if not isinstance(realm, str) or not realm:
        raise LocalProtocolError(f"realm must be a non-empty string, not {realm!r}")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise LocalProtocolError(
            f"ip must be an IP address such as '127.0.0.1', not {ip!r}"
        ) from None
    if tls_port is not None and tls_context is None:
        raise LocalProtocolError(
            "tls_port needs a tls_context (a server ssl.SSLContext holding the certificate)"
        )
    return TurnServerRunner(
        TurnServer(
            realm=realm,
            auth=StaticUsers(dict(users), realm=realm),
            relay=UdpRelayAllocator([ip]),
            stun=StunServer(primary=(ip, port)),
            allow_loopback_peers=True,
        ),
        tcp=[(ip, tcp_port)] if tcp_port is not None else (),
        tls=[(ip, tls_port)] if tls_port is not None else (),
        tls_context=tls_context,
    )
