"""asyncio adapters for anchor_stun's sans-I/O cores: UDP, TCP and TLS (RFC 8489 §6.2).

The cores never touch a socket or a clock. This module owns both: it feeds received bytes and
``loop.time()`` into a core, sends what the core wants sent, and arms one timer at the core's
``next_timer()``. Nothing protocol-specific happens here.

Client side: :class:`StunTransport` (one socket or connection, many concurrent transactions)
and the helpers :func:`binding_request` and :func:`discover_nat`. Server side:
:class:`StunServerRunner` serves a :class:`~anchor_stun.server.StunServer` core on UDP (all
RFC 5780 addresses), TCP and TLS.

The checks of arguments (:func:`server_address`, :func:`server_list`, :func:`credential`...)
live in the sans-I/O :mod:`anchor_stun.address`, shared with the cores, and are re-exported
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from anchor_stun.address import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    credential,
    parse_address,
    port_number,
    positive_timeout,
    seconds,
    server_address,
    server_list,
    software_value,
)
from anchor_stun.aio.icmp import enable_icmp_errors, read_icmp_errors
from anchor_stun.aio.streams import GuardedStream, StreamGuard, StreamLimits
from anchor_stun.attributes import Software, XorMappedAddress
from anchor_stun.errors import (
    DecodeError,
    DestinationUnreachable,
    LocalProtocolError,
    StreamCorrupted,
    StunError,
    StunErrorResponse,
    TransactionTimeout,
)
from anchor_stun.events import Address, StunEvent, Transmit, format_address
from anchor_stun.framing import StreamFramer
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.nat import NatDiscovery, NatDiscoveryCompleted, NatDiscoveryFailed, NatFailure
from anchor_stun.server import StunServer
from anchor_stun.transaction import (
    StunClient,
    TransactionFailed,
    TransactionSucceeded,
    TransactionTimedOut,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "BindingResult",
    "ClientSocket",
    "CorePump",
    "DatagramCallback",
    "ListenError",
    "StunServerRunner",
    "StunTransport",
    "TransportName",
    "binding_request",
    "call_user",
    "client_tls_context",
    "credential",
    "discover_nat",
    "format_address",
    "parse_address",
    "port_number",
    "positive_timeout",
    "resolve",
    "route_local_ip",
    "server_address",
    "server_list",
    "settle_transaction",
]

TransportName = Literal["udp", "tcp", "tls"]


class ListenError(OSError):
    """A listener could not be opened; the message names the address and the transport
    (``cannot listen on 127.0.0.1:3478 (udp): Address already in use``); ``errno`` is the
    cause's."""

    def __init__(self, kind: str, address: Address, cause: OSError) -> None:
        why = os.strerror(cause.errno) if cause.errno else str(cause)
        self.message = f"cannot listen on {format_address(address)} ({kind}): {why}"
        super().__init__(cause.errno, self.message)
        self.kind = kind
        """``udp``, ``tcp`` or ``tls``."""
        self.address = address
        """The address asked for."""

    def __str__(self) -> str:
        return self.message


def _check_transport(transport: object, what: str = "transport") -> TransportName:
    if transport not in ("udp", "tcp", "tls"):
        raise LocalProtocolError(f"{what} must be 'udp', 'tcp' or 'tls', not {transport!r}")
    return transport


def _check_tls(ssl_context: object, server_hostname: object) -> None:
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise LocalProtocolError(
            "ssl_context must be an ssl.SSLContext (client_tls_context()) or None, not"
            f" {type(ssl_context).__name__}"
        )
    if server_hostname is not None and (
        not isinstance(server_hostname, str) or not server_hostname
    ):
        raise LocalProtocolError(
            f"server_hostname must be a host name or None, not {server_hostname!r}"
        )


def _check_rng(rng: object) -> None:
    if not callable(rng):
        raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")


async def resolve(host: str, port: int, *, family: int = 0) -> Address:
    """Resolve a host name to one (ip, port); raises OSError when it does not resolve."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    sockaddr = infos[0][4]
    return (str(sockaddr[0]), int(sockaddr[1]))


def client_tls_context(ca_file: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A TLS client context for STUN/TURN over TLS: the system's CAs, or ``ca_file``;
    ``insecure`` turns verification off. ValueError (one line) when ``ca_file`` can't load,
    :class:`LocalProtocolError` when it is no path."""
    if ca_file is not None and (not isinstance(ca_file, str | os.PathLike) or not ca_file):
        raise LocalProtocolError(f"ca_file must be the path of a CA bundle or None, not {ca_file!r}")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load --ca-file {ca_file}: {exc}") from exc
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def settle_transaction(
    waiters: dict[bytes, asyncio.Future[TransactionSucceeded]], event: StunEvent
) -> None:
    """Resolve the future waiting for the transaction ``event`` ends: the success event, or
    :class:`StunErrorResponse` / :class:`TransactionTimeout`. Other events are ignored."""
    if not isinstance(event, TransactionSucceeded | TransactionFailed | TransactionTimedOut):
        return
    waiter = waiters.pop(event.transaction_id, None)
    if waiter is None or waiter.done():
        return
    if isinstance(event, TransactionSucceeded):
        waiter.set_result(event)
    elif isinstance(event, TransactionFailed):
        waiter.set_exception(StunErrorResponse(event.code, event.reason, event.response))
    else:
        waiter.set_exception(TransactionTimeout("no response from the STUN server"))


def call_user(what: str, callback: Callable[..., object], *args: object) -> None:
    """Call an application's ``callback(*args)`` from an adapter: an exception it raises goes
    to the running loop's exception handler (reported as "exception in ``what``"), so that a
    user's bug cannot stall the socket or pump that called it."""
    try:
        callback(*args)
    except Exception as exc:
        asyncio.get_running_loop().call_exception_handler(
            {"message": f"exception in {what}", "exception": exc}
        )


def route_local_ip(server: Address) -> str:
    """The local IP the kernel would use to reach ``server`` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(server)
            return str(probe.getsockname()[0])
        except OSError:
            return "::" if family == socket.AF_INET6 else "0.0.0.0"


class _Core(Protocol):
    def datagrams_to_send(self, now: float) -> list[Transmit]: ...
    def next_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> StunEvent | None: ...


_MAX_ROUNDS = 16
"""Due timers a pump handles at once before the rest waits for the loop (a bound, not a rate)."""


class CorePump:
    """Drives a sans-I/O core from asyncio. After each input, :meth:`pump` sends the core's
    output and hands out its events at once; a timer already due is handled right away (no
    extra trip through the loop); one timer handle stays armed at ``next_timer()``, moved
    only when the deadline comes earlier (a handle that fires before the core's deadline
    just re-arms: by convention an early ``handle_timer`` does nothing). The loop wakes
    timers with about 1 ms granularity (epoll)."""

    def __init__(
        self,
        core: _Core,
        send: Callable[[Transmit], None],
        on_event: Callable[[StunEvent], None],
    ) -> None:
        self.core = core
        self._send = send
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def now(self) -> float:
        return self._loop.time()

    def pump(self) -> None:
        core = self.core
        deadline: float | None = None
        for _ in range(_MAX_ROUNDS):
            now = self.flush()
            deadline = core.next_timer()
            if deadline is None or deadline > now:
                break
            core.handle_timer(now)
        self._arm(deadline)

    def flush(self) -> float:
        """Send the core's output and hand out its events, without asking for its next
        deadline: for inputs that cannot bring that deadline earlier (data through a TURN
        allocation, say), where :meth:`pump`'s ``next_timer`` would cost more than the rest.
        The armed timer stays; it fires no later than the core's deadline, since that can
        only have moved later. Returns the loop time the core was asked for output at (one
        round of :meth:`pump`)."""
        core, now = self.core, self._loop.time()
        for transmit in core.datagrams_to_send(now):
            self._send(transmit)
        while (event := core.next_event()) is not None:
            self._on_event(event)
        return now

    def _arm(self, deadline: float | None) -> None:
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = self._timer_at = None
            return
        if timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return  # it fires first and re-arms: no cancel and new handle on every input
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self.pump()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None


# ---------------------------------------------------------------------------- client


DatagramCallback = Callable[[bytes, Address], None]
"""``on_datagram(data, addr)``: one datagram, or one framed message of a stream."""


class _ClientDatagram(asyncio.DatagramProtocol):
    def __init__(self, owner: ClientSocket) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.owner.active:
            self.owner.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # Reported on a connected socket only (Linux): an ICMP error for the server.
        if self.owner.active and isinstance(exc, OSError):
            self.owner.on_error(exc)


class _ClientStream(asyncio.Protocol):
    def __init__(self, owner: ClientSocket, channel_data: bool) -> None:
        self.owner = owner
        self.framer = StreamFramer(channel_data=channel_data)
        self.transport: asyncio.Transport | None = None
        self.reported = False
        """Whether ``on_lost`` was called (once per stream)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if not owner.active:
            return
        corrupt = False
        try:
            frames = self.framer.feed(data)
        except StreamCorrupted as exc:  # the frames before the junk still count
            frames, corrupt = exc.frames, True
        for frame in frames:
            owner.on_datagram(frame, owner.server)
        if corrupt and owner.active and not self.reported:
            self.reported = True
            owner.on_lost(
                "the server sent bytes that are neither STUN nor ChannelData"
                if self.framer.channel_data
                else "the server sent bytes that are not STUN"
            )
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        if not owner.gone.done():
            owner.gone.set_result(None)
        if owner.active and not self.reported:
            self.reported = True
            owner.on_lost("the server closed the connection" if exc is None else str(exc))


class ClientSocket:
    """A client's socket towards one STUN or TURN server: a UDP socket, or a TCP / TLS
    connection whose bytes are framed into STUN messages (RFC 8489 §6.2.2), and ChannelData
    too with ``channel_data`` (RFC 8656 §12.5). Shared by :class:`StunTransport` and
    :class:`~anchor_turn.aio.client.TurnConnection`.

    What arrives goes to ``on_datagram(data, addr)``; an ICMP error on a UDP socket connected
    to the server (Linux reports them there only) to ``on_error(exc)``; the end of a stream
    (closed by the server, or bytes that frame as neither, which also closes it) to
    ``on_lost(reason)``. After :meth:`close` no callback is called."""

    def __init__(
        self,
        transport_name: TransportName,
        server: Address,
        on_datagram: DatagramCallback,
        on_lost: Callable[[str], None],
        on_error: Callable[[OSError], None],
    ) -> None:
        self.transport_name = transport_name
        self.server = server
        self.on_datagram = on_datagram
        self.on_lost = on_lost
        self.on_error = on_error
        self.active = True
        """False once closed: nothing more reaches the callbacks."""
        self.connected = False
        """Whether the UDP socket is connected to the server (then it sends only there)."""
        self.local: Address = ("", 0)
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once a stream is closed (a TLS one after its close_notify exchange)."""
        self._udp: asyncio.DatagramTransport | None = None
        self._stream: asyncio.Transport | None = None

    @classmethod
    async def open(
        cls,
        transport_name: TransportName,
        server: Address,
        on_datagram: DatagramCallback,
        on_lost: Callable[[str], None],
        on_error: Callable[[OSError], None],
        *,
        channel_data: bool = False,
        local: Address | None = None,
        connected: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
    ) -> ClientSocket:
        """Open a UDP socket towards ``server`` (connected to it with ``connected``, so that
        ICMP errors are seen), or a TCP / TLS connection to it within ``timeout`` seconds; TLS
        verifies the server as ``server_hostname`` (default: its IP) with ``ssl_context``
        (default: the system's trust store)."""
        loop = asyncio.get_running_loop()
        self = cls(transport_name, server, on_datagram, on_lost, on_error)
        if transport_name == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _ClientDatagram(self),
                local_addr=local,
                remote_addr=server if connected else None,
            )
            self._udp, self.connected = udp, connected
            sock = udp.get_extra_info("sockname")
        else:
            context: ssl.SSLContext | None = None
            if transport_name == "tls":
                context = ssl_context or ssl.create_default_context()
            stream, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _ClientStream(self, channel_data),
                    server[0],
                    server[1],
                    ssl=context,
                    server_hostname=(server_hostname or server[0]) if context else None,
                    local_addr=local,
                ),
                timeout,
            )
            self._stream = stream
            sock = stream.get_extra_info("sockname")
        self.local = (str(sock[0]), int(sock[1]))
        return self

    @property
    def closing(self) -> bool:
        """Whether nothing can be sent any more (closed, or the stream is closing)."""
        if self._udp is not None:
            return self._udp.is_closing()
        return self._stream is None or self._stream.is_closing()

    def send(self, data: bytes, addr: Address | None = None) -> None:
        """Send ``data`` as it is: to ``addr`` (the server by default) over UDP, on the
        connection over TCP/TLS; nothing once :attr:`closing`."""
        if self._udp is not None:
            if not self._udp.is_closing():
                self._udp.sendto(data, None if self.connected else (addr or self.server))
        elif self._stream is not None and not self._stream.is_closing():
            self._stream.write(data)

    def close(self) -> None:
        """Close the socket or connection; no callback is called after this."""
        self.active = False
        if self._udp is not None:
            self._udp.close()
            self._udp = None
            if not self.gone.done():
                self.gone.set_result(None)
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class StunTransport:
    """A client socket (UDP) or connection (TCP/TLS) carrying STUN transactions.

    ``await request(data)`` sends an encoded request and returns the success response; an
    error response raises :class:`StunErrorResponse`, no response :class:`TransactionTimeout`.
    Over UDP, ``request(data, addr)`` may target any address (RFC 5780 tests do), unless the
    socket was made with ``connected=True``: then only the server, and an ICMP error from it
    ends every transaction at once with :class:`DestinationUnreachable`.

    It is also the socket layer of ``anchor check``'s probes (``channel_data``: a stream
    carries ChannelData too, RFC 8656 §12.5), which override :meth:`_event` and
    :meth:`unsolicited` to see every answer, and send bytes as they are with
    :meth:`send_bytes`.
    """

    def __init__(
        self, transport_name: TransportName, server: Address, *, channel_data: bool = False
    ) -> None:
        self.transport_name = _check_transport(transport_name, "transport_name")
        self.server = server_address(server)
        self.carries_channel_data = channel_data
        """Whether a TCP/TLS stream may carry ChannelData as well as STUN."""
        self.client = StunClient(reliable=transport_name != "udp")
        self._waiters: dict[bytes, asyncio.Future[TransactionSucceeded]] = {}
        self._socket: ClientSocket | None = None
        self._pump = CorePump(self.client, self._send, self._event)
        self.local: Address = ("", 0)

    @classmethod
    async def connect(
        cls,
        server: Address,
        transport: TransportName = "udp",
        *,
        local: Address | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
        connected: bool = False,
    ) -> StunTransport:
        """Open a UDP socket towards ``server`` (connected to it with ``connected``, so that
        ICMP errors are seen), or a TCP / TLS connection to it. ``local``: ``(ip, port)`` or
        ``"ip:port"`` (port 0: any). Every argument is checked before anything is opened."""
        server = server_address(server)
        _check_transport(transport)
        if local is not None:
            local = server_address(local, "local", None, ip_only=True, zero=True)
        _check_tls(ssl_context, server_hostname)
        seconds(timeout, "timeout")
        self = cls(transport, server)
        if transport == "udp" and local is None:
            local = (route_local_ip(server), 0)
        self._socket = await ClientSocket.open(
            transport, server, self._received, self._lost, self._unreachable,
            channel_data=self.carries_channel_data, local=local, connected=connected,
            ssl_context=ssl_context, server_hostname=server_hostname, timeout=timeout,
        )  # fmt: skip
        self.local = self._socket.local
        return self

    def send_bytes(self, data: bytes, addr: Address | None = None) -> None:
        """Send ``data`` as it is: to ``addr`` (the server by default) over UDP, on the
        connection over TCP/TLS."""
        if self._socket is not None:
            self._socket.send(data, addr)

    def _send(self, transmit: Transmit) -> None:
        self.send_bytes(transmit.data, transmit.addr)

    def _received(self, data: bytes, addr: Address) -> None:
        if not self.client.receive_datagram(data, addr, self._pump.now()):
            self.unsolicited(data, addr)
        self._pump.pump()

    def unsolicited(self, data: bytes, addr: Address) -> None:
        """What arrived and ended no transaction (an indication, ChannelData, a late or
        malformed answer): dropped here, a hook for subclasses."""

    def _event(self, event: StunEvent) -> None:
        settle_transaction(self._waiters, event)

    def _lost(self, reason: str) -> None:
        self._fail(TransactionTimeout(reason))

    def _unreachable(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        self._fail(DestinationUnreachable(f"{format_address(self.server)} unreachable ({reason})"))

    def _fail(self, error: StunError) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()

    async def request(self, data: bytes, addr: Address | None = None) -> TransactionSucceeded:
        """Run one client transaction; returns the success event (response, rtt)."""
        sock = self._socket
        if sock is None:
            raise LocalProtocolError("transport is closed")
        if sock.connected and addr is not None and tuple(addr) != self.server:
            raise LocalProtocolError("a connected transport sends to its server only")
        if sock.closing:
            raise TransactionTimeout("connection closed")
        txid = self.client.send_request(data, addr or self.server, self._pump.now())
        waiter: asyncio.Future[TransactionSucceeded] = asyncio.get_running_loop().create_future()
        self._waiters[txid] = waiter
        self._pump.pump()
        try:
            return await waiter
        finally:
            if not waiter.done():
                self.client.cancel(txid)
            self._waiters.pop(txid, None)

    def close(self) -> None:
        """Close the socket or connection and stop the timer."""
        self._pump.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@dataclass(frozen=True, slots=True)
class BindingResult:
    """The answer to a Binding request (RFC 8489 §3)."""

    mapped: Address
    """The reflexive transport address from XOR-MAPPED-ADDRESS."""
    local: Address
    """The local address the request left from."""
    rtt: float
    """Seconds from the first transmission to the response."""
    response: Message
    """The decoded success response."""


async def binding_request(
    server: Address | str,
    transport: TransportName = "udp",
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    software: str | None = None,
    timeout: float | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> BindingResult:
    """One Binding transaction over UDP, TCP or TLS; returns the mapped address.

    ``server`` is ``(host, port)`` or ``"host[:port]"`` (port 3478 by default); a host name
    is resolved. A port nobody listens on ends the transaction at once with
    :class:`DestinationUnreachable` (the ICMP error of a connected UDP socket, or the refused
    TCP connection); no answer raises :class:`TransactionTimeout` after ``timeout`` seconds,
    or after the RFC's retransmissions (39.5 s over UDP, RFC 8489 §6.2.1) by default."""
    host, port = server_address(server)
    _check_transport(transport)
    _check_tls(ssl_context, server_hostname)
    software_value(software)
    timeout = positive_timeout(timeout)
    _check_rng(rng)
    addr = await resolve(host, port)
    try:
        conn = await StunTransport.connect(
            addr, transport, ssl_context=ssl_context, server_hostname=server_hostname or host,
            connected=True, timeout=timeout or 10.0,
        )  # fmt: skip
    except ConnectionRefusedError as exc:
        raise DestinationUnreachable(
            f"{format_address(addr)} unreachable ({exc.strerror or exc})"
        ) from None
    except TimeoutError:
        raise TransactionTimeout(f"no connection to {format_address(addr)}") from None
    try:
        request = Message(Method.BINDING, MessageClass.REQUEST, rng(12))
        if software:
            request.add(Software(software))
        try:
            result = await asyncio.wait_for(conn.request(request.encode(fingerprint=True)), timeout)
        except TimeoutError:
            raise TransactionTimeout(
                f"no answer from {format_address(addr)} within {timeout:g} s"
            ) from None
        mapped = result.response.get(XorMappedAddress)
        if mapped is None:
            raise DecodeError("Binding response without XOR-MAPPED-ADDRESS", field="response")
        return BindingResult(mapped.address, conn.local, result.rtt, result.response)
    finally:
        conn.close()


class _NatDatagram(asyncio.DatagramProtocol):
    """The socket of :func:`discover_nat`: its datagrams and the unreachable destinations
    of its ICMP errors go to the core, once :attr:`pump` is set."""

    def __init__(self, core: NatDiscovery, sock: socket.socket) -> None:
        self.core = core
        self.sock = sock
        self.pump: CorePump | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        pump = self.pump
        if pump is not None:
            self.core.receive_datagram(data, (str(addr[0]), int(addr[1])), pump.now())
            pump.pump()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (IP_RECVERR) reported on a receive or a send: the error queue names
        # the destination(s). Read it in every case: the socket stays readable until it is.
        errors = read_icmp_errors(self.sock)
        pump = self.pump
        if pump is None:
            return
        now = pump.now()
        for addr, error in errors:
            self.core.destination_unreachable(addr, now, reason=error.strerror or str(error))
        pump.pump()


async def _icmp_reporting_socket(bind: tuple[str, int]) -> socket.socket:
    """A non-blocking UDP socket bound to ``bind`` that reports the ICMP errors of its
    datagrams with their destinations (:func:`~anchor_stun.aio.icmp.enable_icmp_errors`)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(bind[0], bind[1], type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        enable_icmp_errors(sock)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def discover_nat(
    server: Address | str,
    *,
    local: Address | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    software: str | None = None,
    timeout: float | None = None,
) -> NatDiscoveryCompleted:
    """RFC 5780 NAT behaviour discovery (§4.3, §4.4) over one UDP socket, driving a
    :class:`~anchor_stun.nat.NatDiscovery`; returns its :class:`NatDiscoveryCompleted`.

    ``server`` is ``(host, port)`` or ``"host[:port]"`` (port 3478 by default); a host name
    is resolved. ``local`` is the address to bind, ``(ip, port)`` or ``"ip:port"`` (the
    route's local IP, any port, by default). The socket sends to the primary and the alternate addresses, so it is not
    connected; it reads its ICMP errors with their destinations instead
    (:mod:`anchor_stun.aio.icmp`, Linux), so that a test whose destination is reported
    unreachable (a closed port, say) ends discovery at once with
    :class:`DestinationUnreachable` naming that address. Other failures raise
    :class:`TransactionTimeout` (a test unanswered after the RFC's retransmissions, 39.5 s
    for test I, RFC 8489 §6.2.1; the message names where it went) or :class:`StunError`
    (an error response, a server without RFC 5780 support), all with the reason of the
    core's :class:`~anchor_stun.nat.NatDiscoveryFailed`. ``timeout`` (seconds) bounds the
    whole discovery: :class:`TransactionTimeout` naming the server when it has not finished
    by then; by default the tests' own retransmission budgets bound it."""
    loop = asyncio.get_running_loop()
    host, port = server_address(server)
    timeout = positive_timeout(timeout)
    if local is not None:
        local = server_address(local, "local", None, ip_only=True, zero=True)
    software_value(software)
    _check_rng(rng)
    server = await resolve(host, port)
    sock = await _icmp_reporting_socket(local or (route_local_ip(server), 0))
    name = sock.getsockname()
    try:
        core = NatDiscovery(
            server, loop.time(), rng=rng, local=(str(name[0]), int(name[1])), software=software
        )
    except BaseException:
        sock.close()
        raise
    done: asyncio.Future[StunEvent] = loop.create_future()

    def on_event(event: StunEvent) -> None:
        if not done.done():
            done.set_result(event)

    try:
        udp, protocol = await loop.create_datagram_endpoint(
            lambda: _NatDatagram(core, sock), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    pump = CorePump(core, lambda t: udp.sendto(t.data, t.addr), on_event)
    protocol.pump = pump
    try:
        pump.pump()
        try:
            event = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise TransactionTimeout(
                f"NAT discovery with {format_address(server)} unfinished after {timeout:g} s"
            ) from None
    finally:
        pump.close()
        udp.close()
    if isinstance(event, NatDiscoveryFailed):
        message = f"NAT discovery failed: {event.reason}"
        if event.cause == NatFailure.UNREACHABLE:
            raise DestinationUnreachable(message)
        if event.cause == NatFailure.NO_RESPONSE:
            raise TransactionTimeout(message)
        raise StunError(message)
    assert isinstance(event, NatDiscoveryCompleted)
    return event


# ---------------------------------------------------------------------------- server


class _ServerDatagram(asyncio.DatagramProtocol):
    def __init__(self, runner: StunServerRunner, local: Address) -> None:
        self.runner = runner
        self.local = local

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.runner._datagram(data, (str(addr[0]), int(addr[1])), self.local)

    def error_received(self, exc: Exception) -> None:
        pass


class _ServerStream(GuardedStream):
    """A TCP or TLS connection to the STUN server, bounded by the runner's guard."""

    def __init__(
        self, runner: StunServerRunner, local: Address, context: ssl.SSLContext | None
    ) -> None:
        super().__init__(runner.guard, local, context)
        self.runner = runner

    def frames_received(self, frames: list[bytes], now: float) -> None:
        core = self.runner.core
        for frame in frames:
            transmit = core.handle(frame, self.peer, self.local, now, stream=True)
            if transmit is not None:
                self.send(transmit.data)


class StunServerRunner:
    """Serves a :class:`StunServer` core: UDP on each of its local addresses, optionally TCP on
    the primary address and TLS on ``tls_address``. ``listeners`` lists what is open. TCP and
    TLS connections are bounded by a :class:`~anchor_stun.aio.streams.StreamGuard` built
    from ``limits`` (:attr:`guard`). With ``reuse_port`` every listener is opened with
    ``SO_REUSEPORT``: several processes serve one address (``anchor serve --workers``)."""

    def __init__(
        self, core: StunServer, *, limits: StreamLimits | None = None, reuse_port: bool = False
    ) -> None:
        if not isinstance(core, StunServer):
            raise LocalProtocolError(
                f"core must be a StunServer (StunServer(primary=...)), not {type(core).__name__}"
            )
        if limits is not None and not isinstance(limits, StreamLimits):
            raise LocalProtocolError(
                f"limits must be a StreamLimits or None, not {type(limits).__name__}"
            )
        self.core = core
        self.reuse_port = reuse_port
        """Whether listeners are shared with other processes (SO_REUSEPORT)."""
        self.listeners: list[tuple[str, Address]] = []
        self.guard = StreamGuard(limits)
        """The bounds of the TCP/TLS connections and their shed counters."""
        self._udp: dict[Address, asyncio.DatagramTransport] = {}
        self._servers: list[asyncio.Server] = []
        self._opened: list[asyncio.BaseTransport] = []

    async def start(
        self,
        *,
        tcp: bool = False,
        tls_context: ssl.SSLContext | None = None,
        tls_address: Address | None = None,
    ) -> None:
        """Open every listener; on failure close what was opened and re-raise OSError.
        ``tls_context``: a server TLS context to listen for TLS too, on ``tls_address``
        (``(ip, port)`` or ``"ip:port"``; default: the primary address)."""
        if tls_context is not None and not isinstance(tls_context, ssl.SSLContext):
            raise LocalProtocolError(
                f"tls_context must be an ssl.SSLContext or None, not {type(tls_context).__name__}"
            )
        if tls_address is not None:
            tls_address = server_address(
                tls_address, "tls_address", DEFAULT_TLS_PORT, ip_only=True, zero=True
            )
        loop = asyncio.get_running_loop()
        self.guard.start(loop)
        try:
            for local in self.core.local_addresses():
                try:
                    udp, _ = await loop.create_datagram_endpoint(
                        lambda local=local: _ServerDatagram(self, local),  # type: ignore[misc]
                        local_addr=local,
                        reuse_port=self.reuse_port or None,
                    )
                except OSError as exc:
                    raise ListenError("udp", local, exc) from exc
                sock = udp.get_extra_info("sockname")
                bound = (str(sock[0]), int(sock[1]))
                self._udp[local] = udp
                self._opened.append(udp)
                self.listeners.append(("udp", bound))
            primary = self.core.local_addresses()[0]
            if tcp:
                await self._listen_stream("tcp", primary, None)
            if tls_context is not None:
                await self._listen_stream("tls", tls_address or primary, tls_context)
        except OSError:
            self.close()
            raise

    async def _listen_stream(
        self, name: str, local: Address, context: ssl.SSLContext | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: _ServerStream(self, local, context),
                local[0],
                local[1],
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            raise ListenError(name, local, exc) from exc
        self._servers.append(server)
        sock = server.sockets[0].getsockname()
        self.listeners.append((name, (str(sock[0]), int(sock[1]))))

    def _datagram(self, data: bytes, addr: Address, local: Address) -> None:
        transmit = self.core.handle(data, addr, local, asyncio.get_running_loop().time())
        if transmit is not None:
            out = self._udp.get(transmit.local or local) or self._udp[local]
            out.sendto(transmit.data, transmit.addr)

    def open_sockets(self) -> int:
        """How many sockets this runner opened are still open (0 after :meth:`close`)."""
        count = sum(1 for t in self._opened if not t.is_closing())
        count += self.guard.open_sockets()
        return count + sum(1 for s in self._servers if s.is_serving())

    def close(self) -> None:
        """Close every listener and connection."""
        for udp in self._udp.values():
            udp.close()
        self._udp.clear()
        for server in self._servers:
            server.close()
        self.guard.close()

    async def wait_closed(self) -> None:
        """Wait until the stream servers have shut down."""
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


_Pump = CorePump  # the name used before CorePump was public; kept for existing imports
