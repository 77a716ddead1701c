"""asyncio adapter for the TURN client core: one allocation over UDP, TCP or TLS (RFC 8656).

:class:`TurnConnection` owns a socket (UDP) or a connection (TCP, TLS) to one TURN server (an
:class:`~anchor_stun.aio.net.ClientSocket`, as anchor_stun's clients) and a
:class:`~anchor_turn.client.TurnClient`, and does nothing protocol-specific itself: it feeds the
core what arrives (over TCP/TLS cut into STUN and ChannelData frames, RFC 8656 §12.5), sends what the core
wants sent, arms one timer at the core's ``next_timer()`` (which is how allocation, permission and
channel refreshes happen on their own), and turns the core's events into awaited results::

    async with await TurnConnection.connect(("198.51.100.7", 3478), "alice", "secret") as turn:
        created = await turn.allocate()           # AllocationCreated: relayed, mapped, lifetime
                                                  # (relayed_addresses: all of them)
        await turn.create_permission("203.0.113.5")
        turn.send(b"hello", ("203.0.113.5", 4000))  # a Send indication (RFC 8656 §11.1)
        number = await turn.bind_channel(("203.0.113.5", 4000))
        turn.send(b"again", ("203.0.113.5", 4000))  # now ChannelData (RFC 8656 §12.5)
        data, peer = await turn.recv()
    # leaving the block releases the allocation (Refresh LIFETIME 0) and closes the socket

Failures of requests raise :class:`~anchor_stun.errors.AllocationError` with the error code of
the response (401, 403, 437, 441, 486, 508...) or 0 when no usable response came (timeout,
integrity, connection lost). A 300 Try Alternate to the Allocate is followed by reconnecting to
the ALTERNATE-SERVER (at most ``max_redirects`` times, RFC 8656 §7.4, RFC 8489 §10).

Over UDP the socket is connected to the server, so that an ICMP "port unreachable" reaches the
adapter: during the Allocate it fails the allocation at once instead of after Ti = 39.5 s of
retransmissions (RFC 8489 §6.2.1 leaves ICMP handling to the client). Later ICMP errors are
ignored; the transactions time out on their own.

A UDP socket owned by someone else. :meth:`TurnConnection.over` runs the allocation over a
socket the caller owns and demultiplexes (ICE gathering: the allocation must leave from the
host socket, RFC 8445 §5.1.1.2): the connection sends with the caller's ``send(data, addr)``
and is fed with :meth:`TurnConnection.datagram_received` what the socket got from the server.
Closing the connection then leaves the socket open.

Abandoned allocations. An :meth:`~TurnConnection.allocate` that is cancelled (a timeout, say)
leaves the request on its way: should the success response still arrive, the allocation is
released at once. :meth:`~TurnConnection.close` during an Allocate waits (within the release
timeout) for its outcome and releases what it created, unless the server never answered at
all (then no signed Allocate left, and no allocation can exist: RFC 8656 §7.2 authenticates
first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from anchor_stun.address import count, seconds
from anchor_stun.aio.net import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    ClientSocket,
    CorePump,
    TransportName,
    call_user,
    credential,
    format_address,
    positive_timeout,
    resolve,
    server_address,
)
from anchor_stun.attributes import ErrorCode, pack_ip, unpack_ip
from anchor_stun.errors import (
    AllocationError,
    LocalProtocolError,
    TurnError,
)
from anchor_stun.events import Address, StunEvent, Transmit
from anchor_turn.channeldata import is_channel_data
from anchor_turn.client import TurnClient, TurnState, check_client_options
from anchor_turn.events import (
    AllocationCreated,
    AllocationExpired,
    AllocationFailed,
    AllocationRefreshed,
    AllocationReleased,
    ChannelBindFailed,
    ChannelBound,
    DataReceived,
    PermissionCreated,
    PermissionFailed,
    RefreshFailed,
    TryAlternate,
    TurnEvent,
)

__all__ = ["DataCallback", "DatagramSender", "EventCallback", "TurnConnection"]

DataCallback = Callable[[bytes, Address], None]
"""``on_data(data, peer)``: called for every datagram a peer sent through the relay."""
EventCallback = Callable[[TurnEvent], None]
"""``on_event(event)``: called with every event of the core, before the adapter acts on it."""
DatagramSender = Callable[[bytes, Address], None]
"""``send(data, addr)``: sends one datagram from a UDP socket the caller owns."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to open a TCP or TLS connection (handshake included)."""
DEFAULT_RELEASE_TIMEOUT = 5.0
"""Seconds :meth:`TurnConnection.close` waits for the answer to the release request."""
STREAM_CLOSE_TIMEOUT = 1.0
"""Seconds :meth:`TurnConnection.close` waits for a TCP/TLS connection to be closed."""
DEFAULT_MAX_QUEUE = 1024
"""Datagrams from peers kept for :meth:`TurnConnection.recv`; more are dropped and counted."""


def _check_arguments(username: object, password: object, transport: object) -> None:
    """Credentials present and a known transport, checked before anything is opened."""
    credential(username, "username")
    credential(password, "password")
    if transport not in ("udp", "tcp", "tls"):
        raise LocalProtocolError(f"transport must be 'udp', 'tcp' or 'tls', not {transport!r}")


def _check_settings(
    *,
    ssl_context: object = None,
    server_hostname: object = None,
    connect_timeout: object = DEFAULT_CONNECT_TIMEOUT,
    release_timeout: object,
    max_redirects: object,
    max_queue: object,
    on_data: object,
    on_event: object,
    options: Mapping[str, Any],
) -> None:
    """The settings shared by :meth:`TurnConnection.connect` and :meth:`TurnConnection.over`,
    checked before anything is resolved or opened (:class:`LocalProtocolError` naming each);
    ``options`` as the :class:`~anchor_turn.client.TurnClient` will take them."""
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise LocalProtocolError(
            f"ssl_context must be an ssl.SSLContext or None, not {type(ssl_context).__name__}"
        )
    if server_hostname is not None and (
        not isinstance(server_hostname, str) or not server_hostname
    ):
        raise LocalProtocolError(
            f"server_hostname must be a host name or None, not {server_hostname!r}"
        )
    seconds(connect_timeout, "connect_timeout")
    seconds(release_timeout, "release_timeout", zero=True)
    count(max_redirects, "max_redirects", 0)
    count(max_queue, "max_queue")
    for callback, what in ((on_data, "on_data"), (on_event, "on_event")):
        if callback is not None and not callable(callback):
            raise LocalProtocolError(f"{what} must be a function or None, not {callback!r}")
    check_client_options(options, "options")


def _local_address(local: object) -> Address:
    """``local`` as ``(ip, port)`` or ``"ip:port"``, an IP literal, port 0 allowed (any
    port)."""
    return server_address(local, "local", None, ip_only=True, zero=True)


def _canonical_ip(ip: str) -> str:
    """The text form the core uses for a peer IP (so that events can be matched)."""
    family, packed = pack_ip(ip)
    return unpack_ip(family, packed)


class TurnConnection:
    """One TURN allocation over one UDP socket or TCP/TLS connection (RFC 8656), asyncio.

    Build it with :meth:`connect`. Commands (:meth:`allocate`, :meth:`create_permission`,
    :meth:`bind_channel`, :meth:`refresh`, :meth:`release`) are coroutines that return when the
    server answered; :meth:`send` queues a datagram at once. Data from peers arrives through
    :meth:`recv`, ``async for data, peer in conn``, or the ``on_data`` callback (then it is not
    queued). Refreshes run on their own until the allocation is released. Use it as an async
    context manager, or call :meth:`close`, which releases the allocation first.
    """

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        transport: TransportName,
        *,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        local: Address | None,
        connect_timeout: float,
        release_timeout: float,
        max_redirects: int,
        max_queue: int,
        on_data: DataCallback | None,
        on_event: EventCallback | None,
        options: dict[str, Any],
        shared: DatagramSender | None = None,
    ) -> None:
        """Use :meth:`connect` or :meth:`over`; this only stores the settings."""
        if transport not in ("udp", "tcp", "tls"):
            raise LocalProtocolError(f"transport must be udp, tcp or tls, not {transport!r}")
        self._username = username
        self._password = password
        self._transport_name: TransportName = transport
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self._local_request = local
        self._connect_timeout = connect_timeout
        self._release_timeout = release_timeout
        self._max_redirects = max_redirects
        self._max_queue = max_queue
        self._options = options
        self._shared = shared
        if shared is not None and transport != "udp":
            raise LocalProtocolError("only a UDP socket can be shared")
        self.on_data: DataCallback | None = on_data
        """Called with ``(data, peer)`` for each datagram from a peer; None: queue for recv()."""
        self.on_event: EventCallback | None = on_event
        """Called with every core event (refreshes, failures, data...), e.g. for logging."""
        self._loop = asyncio.get_running_loop()
        self._server: Address = server
        self._client = TurnClient(server, username, password, transport=transport, **options)
        self._pump = CorePump(self._client, self._send, self._event)
        self._socket: ClientSocket | None = None
        self._local: Address = ("", 0)
        self._redirects: list[Address] = []
        self._closed = False
        self._dead: str | None = None
        self._inbox: deque[DataReceived] = deque()
        self._inbox_changed = asyncio.Event()
        self._dropped_data = 0
        self._allocating: asyncio.Future[AllocationCreated | TryAlternate] | None = None
        self._refreshing: list[asyncio.Future[int]] = []
        self._releasing: asyncio.Future[None] | None = None
        self._permission_waiters: list[tuple[set[str], asyncio.Future[None]]] = []
        self._channel_waiters: dict[int, list[asyncio.Future[int]]] = {}
        self._abandoned = False  # nobody waits for the Allocate: release what it creates
        self._heard = False  # anything came from the server yet
        self._settled: asyncio.Future[None] | None = None  # close() waiting for the Allocate
        self._kicked = False
        self._timeout: float | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    async def connect(
        cls,
        server: Address,
        username: str,
        password: str,
        transport: TransportName = "udp",
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        local: Address | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        max_redirects: int = 2,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_data: DataCallback | None = None,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> TurnConnection:
        """Open a UDP socket towards ``server`` (``(host, port)`` or ``"host[:port]"``), or a
        TCP / TLS connection to it.

        A host name is resolved first. TLS verifies the server against ``server_hostname``
        (default: the host as given) with ``ssl_context`` (default: the system's trust store).
        ``local`` binds the local end. ``timeout`` bounds opening (resolution and connection)
        and each Allocate attempt (:meth:`allocate` then raises :class:`AllocationError` with
        code 0 naming the server); None keeps ``connect_timeout`` and the RFC's
        retransmissions (Ti = 39.5 s over UDP, RFC 8489 §6.2.1). ``options`` go to
        :class:`~anchor_turn.client.TurnClient` (``lifetime``, ``family``,
        ``additional_family``, ``even_port``, ``reservation_token``, ``dont_fragment``,
        ``software``, ``refresh_margin``, ``rto``, ``rc``, ``rm``, ``ti``, ``rng``). Raises
        :class:`LocalProtocolError` naming a malformed argument before anything is sent,
        OSError when the server cannot be resolved or connected to."""
        default_port = DEFAULT_TLS_PORT if transport == "tls" else DEFAULT_PORT
        host, port = server_address(server, "server", default_port)
        _check_arguments(username, password, transport)
        timeout = positive_timeout(timeout)
        if local is not None:
            local = _local_address(local)
        _check_settings(
            ssl_context=ssl_context, server_hostname=server_hostname,
            connect_timeout=connect_timeout, release_timeout=release_timeout,
            max_redirects=max_redirects, max_queue=max_queue, on_data=on_data,
            on_event=on_event, options=options,
        )
        try:
            async with asyncio.timeout(timeout):
                address = await resolve(host, port)
        except TimeoutError:
            raise OSError(f"cannot resolve {host!r} within {timeout:g} s") from None
        self = cls(
            address,
            username,
            password,
            transport,
            ssl_context=ssl_context,
            server_hostname=server_hostname or host,
            local=local,
            connect_timeout=connect_timeout if timeout is None else timeout,
            release_timeout=release_timeout,
            max_redirects=max_redirects,
            max_queue=max_queue,
            on_data=on_data,
            on_event=on_event,
            options=dict(options),
        )
        self._timeout = timeout
        await self._open()
        return self

    @classmethod
    def over(
        cls,
        send: DatagramSender,
        server: Address,
        username: str,
        password: str,
        *,
        local: Address,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        max_redirects: int = 2,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_data: DataCallback | None = None,
        on_event: EventCallback | None = None,
        **options: Any,
    ) -> TurnConnection:
        """A connection to ``server`` (an IP address, UDP) over a socket the caller owns
        (see the module docstring): datagrams leave through ``send(data, addr)``; the caller
        hands what the socket receives from :attr:`server` to :meth:`datagram_received`.
        ``local`` is that socket's address. Nothing is opened; :meth:`close` releases the
        allocation and leaves the socket alone. Other arguments as for :meth:`connect`."""
        server = server_address(server, "server", None)
        _check_arguments(username, password, "udp")
        if not callable(send):
            raise LocalProtocolError(f"send must be a function send(data, addr), not {send!r}")
        local = _local_address(local)
        _check_settings(
            release_timeout=release_timeout, max_redirects=max_redirects, max_queue=max_queue,
            on_data=on_data, on_event=on_event, options=options,
        )
        self = cls(
            server,
            username,
            password,
            "udp",
            ssl_context=None,
            server_hostname=None,
            local=local,
            connect_timeout=DEFAULT_CONNECT_TIMEOUT,
            release_timeout=release_timeout,
            max_redirects=max_redirects,
            max_queue=max_queue,
            on_data=on_data,
            on_event=on_event,
            options=dict(options),
            shared=send,
        )
        self._local = local
        return self

    async def _open(self) -> None:
        """Open the socket or connection to ``self._server``."""
        server = self._server
        if self._shared is not None:
            return  # the caller's socket: nothing to open
        self._socket = await ClientSocket.open(
            self._transport_name, server, self._received, self._lost, self._icmp,
            channel_data=True, local=self._local_request, connected=True,
            ssl_context=self._ssl_context, server_hostname=self._server_hostname,
            timeout=self._connect_timeout,
        )  # fmt: skip
        self._local = self._socket.local

    def _close_link(self) -> None:
        self._pump.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _redirect(self, alternate: TryAlternate) -> None:
        """RFC 8656 §7.4 / RFC 8489 §10: allocate again at the alternate server, new client."""
        if len(self._redirects) >= self._max_redirects:
            raise AllocationError(
                ErrorCode.TRY_ALTERNATE,
                f"redirected more than {self._max_redirects} times "
                f"(last to {format_address(alternate.server)})",
            )
        if alternate.server == self._server or alternate.server in self._redirects:
            raise AllocationError(
                ErrorCode.TRY_ALTERNATE,
                f"redirect loop to {format_address(alternate.server)}",
            )
        self._close_link()
        self._redirects.append(self._server)
        self._server = (alternate.server[0], alternate.server[1])
        if alternate.domain:  # RFC 8489 §10: verify the alternate's certificate against it
            self._server_hostname = alternate.domain
        self._client = TurnClient(
            self._server,
            self._username,
            self._password,
            transport=self._transport_name,
            **self._options,
        )
        self._pump = CorePump(self._client, self._send, self._event)
        if self._local_request is not None and self._shared is None:
            # a fixed local port cannot serve a second server
            self._local_request = (self._local_request[0], 0)
        await self._open()

    # ------------------------------------------------------------------ properties

    @property
    def client(self) -> TurnClient:
        """The sans-I/O core (read its state; do not drive it directly)."""
        return self._client

    @property
    def state(self) -> TurnState:
        """The allocation's state (RFC 8656 §6-§8)."""
        return self._client.state

    @property
    def server(self) -> Address:
        """The TURN server in use (after a 300 redirect: the alternate)."""
        return self._server

    @property
    def redirects(self) -> list[Address]:
        """The servers that answered 300 Try Alternate, in order (RFC 8656 §7.4)."""
        return list(self._redirects)

    @property
    def transport(self) -> TransportName:
        """The client-server transport: "udp", "tcp" or "tls"."""
        return self._transport_name

    @property
    def local(self) -> Address:
        """The local end of the socket or connection (the client's host transport address)."""
        return self._local

    @property
    def relayed(self) -> Address | None:
        """The (first) relayed transport address, None before the allocation exists
        (RFC 8656 §7.3); all of them are :attr:`relayed_addresses`."""
        return self._client.relayed

    @property
    def relayed_addresses(self) -> tuple[Address, ...]:
        """Every relayed transport address: one, or two for a dual allocation (RFC 8656
        §7.1 ADDITIONAL-ADDRESS-FAMILY, §7.3); empty before the allocation exists."""
        return self._client.relayed_addresses

    @property
    def mapped(self) -> Address | None:
        """The server-reflexive address from XOR-MAPPED-ADDRESS (RFC 8656 §7.3)."""
        return self._client.mapped

    @property
    def lifetime(self) -> int | None:
        """The lifetime the server last granted, in seconds."""
        return self._client.lifetime

    @property
    def dropped_data(self) -> int:
        """Datagrams from peers dropped because the receive queue was full."""
        return self._dropped_data

    @property
    def failure(self) -> str | None:
        """Why the allocation became unusable (released, expired, connection lost, closed),
        or None while it may still be used."""
        return self._dead

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or started)."""
        return self._closed

    # ------------------------------------------------------------------ commands

    async def allocate(self) -> AllocationCreated:
        """Create the allocation (RFC 8656 §7): the 401 challenge, a 438 retry and 300
        redirects are handled. Returns the :class:`AllocationCreated` event (``relayed``,
        ``mapped``, ``lifetime``); raises :class:`AllocationError` (401, 403, 437, 441, 442,
        486, 508..., 300 when redirected too often, 0 for no answer)."""
        while True:
            self._check_open()
            self._client.allocate(self._now())  # raises (and changes nothing) when misused
            fut: asyncio.Future[AllocationCreated | TryAlternate] = self._loop.create_future()
            self._allocating = fut
            self._pump.pump()
            try:
                async with asyncio.timeout(self._timeout):
                    try:
                        result = await fut
                    except asyncio.CancelledError:
                        self._abandoned = True  # a late success is released (module docstring)
                        if self._client.state is TurnState.ALLOCATED and self._releasing is None:
                            # it succeeded, but the caller was cancelled before it heard so
                            self._releasing = self._loop.create_future()
                            self._client.release(self._now())
                            self._kick()
                        raise
                    finally:
                        self._allocating = None
            except TimeoutError:
                raise AllocationError(
                    0,
                    f"no answer from {format_address(self._server)} within {self._timeout:g} s",
                ) from None
            if isinstance(result, AllocationCreated):
                return result
            await self._redirect(result)

    async def create_permission(self, *ips: str) -> None:
        """Install (or refresh) permissions for these peer IP addresses (RFC 8656 §9); they are
        then refreshed automatically. Raises :class:`AllocationError` (403, 443, 508...)."""
        self._check_open()
        wanted = {_canonical_ip(ip) for ip in ips}
        self._client.create_permission(ips, self._now())
        fut: asyncio.Future[None] = self._loop.create_future()
        entry = (wanted, fut)
        self._permission_waiters.append(entry)
        self._pump.pump()
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._permission_waiters.remove(entry)

    async def bind_channel(self, peer: Address, channel: int | None = None) -> int:
        """Bind a channel to ``peer`` (RFC 8656 §12), which also installs its permission; data
        to and from it then travels as ChannelData. Returns the channel number; the binding is
        refreshed automatically. Raises :class:`AllocationError` (400, 403, 443, 508...)."""
        self._check_open()
        number = self._client.bind_channel(peer, self._now(), channel)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._channel_waiters.setdefault(number, []).append(fut)
        self._pump.pump()
        try:
            return await fut
        finally:
            waiters = self._channel_waiters.get(number, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._channel_waiters.pop(number, None)

    def send(self, data: bytes, peer: Address) -> None:
        """Send ``data`` to ``peer`` through the relay, without waiting: ChannelData when a
        channel to ``peer`` is bound, else a Send indication (RFC 8656 §11.1, §12.5). The relay
        drops data to a peer without a permission."""
        self._check_open()
        self._client.send(data, peer, self._now())
        self._pump.flush()  # data changes no deadline of the core

    async def refresh(self, lifetime: int | None = None) -> int:
        """Refresh the allocation now (RFC 8656 §8); returns the granted lifetime. ``lifetime``
        also applies to later automatic refreshes; 0 releases (returns 0). Raises
        :class:`AllocationError` (437 when the allocation no longer exists)."""
        self._check_open()
        self._client.refresh(self._now(), lifetime)
        fut: asyncio.Future[int] = self._loop.create_future()
        if lifetime == 0:
            self._releasing = self._releasing or self._loop.create_future()
        self._refreshing.append(fut)
        self._pump.pump()
        try:
            return await fut
        finally:
            if fut in self._refreshing:
                self._refreshing.remove(fut)

    async def release(self) -> None:
        """Delete the allocation with a Refresh of LIFETIME 0 (RFC 8656 §8.1) and wait for the
        answer (the core gives up after its transaction timeout). The socket stays open until
        :meth:`close`. Does nothing when there is no allocation."""
        if self._releasing is None:
            if self._client.state is not TurnState.ALLOCATED or self._dead is not None:
                return
            self._releasing = self._loop.create_future()
            self._client.release(self._now())
            self._pump.pump()
        await asyncio.shield(self._releasing)

    async def close(self, release_timeout: float | None = None) -> None:
        """Release the allocation (waiting at most ``release_timeout`` seconds, by default the
        one given at connection, for the answer), then close the socket or connection (not a
        shared one) and stop the timer. During an Allocate the server answered, the outcome is
        awaited within the same time and what it created released. Idempotent."""
        if self._closed:
            return
        timeout = self._release_timeout if release_timeout is None else release_timeout
        deadline = self._loop.time() + timeout
        try:
            if self._dead is None and self._client.state is TurnState.ALLOCATING:
                self._abandoned = True
                if self._heard:
                    self._settled = self._loop.create_future()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self._settled), timeout)
            if self._dead is None and self._client.state in (
                TurnState.ALLOCATED,
                TurnState.RELEASING,
            ):
                with contextlib.suppress(TurnError, TimeoutError):
                    left = max(0.0, deadline - self._loop.time())
                    await asyncio.wait_for(self.release(), left)
        finally:
            self._closed = True
            self._terminate("connection closed")
            sock = self._socket
            self._close_link()
        if sock is not None:  # the socket is closed once this is done (TLS: close_notify)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sock.gone), STREAM_CLOSE_TIMEOUT)

    async def __aenter__(self) -> TurnConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ receiving

    async def recv_event(self) -> DataReceived:
        """The next datagram from a peer as a :class:`DataReceived` event (its ``channel`` says
        whether it came as ChannelData). Raises :class:`TurnError` once the allocation is gone
        (closed, released, expired, connection lost) and nothing is left to read."""
        while not self._inbox:
            if self._dead is not None:
                raise TurnError(self._dead)
            self._inbox_changed.clear()
            await self._inbox_changed.wait()
        return self._inbox.popleft()

    async def recv(self) -> tuple[bytes, Address]:
        """The next ``(data, peer)`` a peer sent through the relay; see :meth:`recv_event`."""
        event = await self.recv_event()
        return event.data, event.peer

    def __aiter__(self) -> AsyncIterator[tuple[bytes, Address]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[bytes, Address]]:
        while True:
            try:
                event = await self.recv_event()
            except TurnError:
                return
            yield event.data, event.peer

    # ------------------------------------------------------------------ pump plumbing

    def _now(self) -> float:
        return self._loop.time()

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the TURN connection is closed")
        if self._dead is not None:
            raise AllocationError(0, self._dead)

    def _send(self, transmit: Transmit) -> None:
        if self._shared is not None:
            if not self._closed:
                self._shared(transmit.data, transmit.addr)
        elif self._socket is not None:
            self._socket.send(transmit.data)  # UDP: connected to the server

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Feed what a shared socket (:meth:`over`) received from the server."""
        self._received(data, addr)

    def _received(self, data: bytes, addr: Address) -> None:
        if self._closed:
            return
        self._heard = True
        self._client.receive_datagram(data, addr, self._now())
        if is_channel_data(data):  # data only (RFC 8656 §12.4): no deadline moves
            self._pump.flush()
        else:
            self._pump.pump()

    def _kick(self) -> None:
        """Pump again soon: a request made while an event is handed out is queued after the
        pump in progress collected the core's output."""
        if not self._kicked:
            self._kicked = True
            self._loop.call_soon(self._kicked_pump)

    def _kicked_pump(self) -> None:
        self._kicked = False
        if not self._closed and self._dead is None:
            self._pump.pump()

    def error_received(self, exc: Exception) -> None:
        """Feed an ICMP error a shared socket (:meth:`over`) reported for the server: a
        refused destination during the Allocate fails it at once, naming the server (as the
        connection's own socket does, see the module docstring)."""
        self._icmp(exc)

    def _icmp(self, exc: Exception) -> None:
        """An ICMP error on the connected UDP socket (see the module docstring)."""
        if self._allocating is not None and isinstance(exc, ConnectionRefusedError):
            self._terminate(f"server {format_address(self._server)} unreachable ({exc.strerror})")
            self._pump.close()

    def _lost(self, reason: str) -> None:
        if self._closed:
            return
        self._terminate(reason)
        self._pump.close()

    @staticmethod
    def _user_callback(callback: Callable[..., None], *args: object) -> None:
        call_user("a TurnConnection callback", callback, *args)

    @staticmethod
    def _fail(fut: asyncio.Future[Any] | None, exc: BaseException) -> None:
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    @staticmethod
    def _resolve(fut: asyncio.Future[Any] | None, value: object) -> None:
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _terminate(self, reason: str) -> None:
        """The allocation is unusable: fail every waiter and wake the receivers."""
        if self._dead is None:
            self._dead = reason
        error = AllocationError(0, reason)
        self._fail(self._allocating, error)
        for waiter in self._refreshing:
            self._fail(waiter, error)
        self._resolve(self._releasing, None)  # nothing left to release
        self._resolve(self._settled, None)
        for _, pending in self._permission_waiters:
            self._fail(pending, error)
        for futs in self._channel_waiters.values():
            for fut in futs:
                self._fail(fut, error)
        self._inbox_changed.set()

    def _event(self, event: StunEvent) -> None:
        assert isinstance(event, TurnEvent)
        if self.on_event is not None:
            self._user_callback(self.on_event, event)
        if isinstance(event, DataReceived):
            if self.on_data is not None:
                self._user_callback(self.on_data, event.data, event.peer)
            elif len(self._inbox) >= self._max_queue:
                self._dropped_data += 1
            else:
                self._inbox.append(event)
                self._inbox_changed.set()
        elif isinstance(event, AllocationCreated | TryAlternate):
            if self._abandoned and self._allocating is None:
                # nobody waits for it: release what was created, give up a redirect
                if isinstance(event, AllocationCreated):
                    self._releasing = self._releasing or self._loop.create_future()
                    self._client.release(self._now())
                    self._kick()
                self._resolve(self._settled, None)
            else:
                self._resolve(self._allocating, event)
        elif isinstance(event, AllocationFailed):
            self._fail(self._allocating, AllocationError(event.code, event.reason))
            self._resolve(self._settled, None)
        elif isinstance(event, AllocationRefreshed):
            for waiter in self._refreshing:
                self._resolve(waiter, event.lifetime)
        elif isinstance(event, RefreshFailed):
            for waiter in self._refreshing:
                self._fail(waiter, AllocationError(event.code, event.reason))
        elif isinstance(event, AllocationReleased):
            for waiter in self._refreshing:  # refresh(0)
                self._resolve(waiter, 0)
            self._resolve(self._releasing, None)
            self._terminate("the allocation was released")
        elif isinstance(event, AllocationExpired):
            error = AllocationError(
                ErrorCode.ALLOCATION_MISMATCH,
                "the allocation expired or the server no longer knows it (RFC 8656 §8.3)",
            )
            for waiter in self._refreshing:
                self._fail(waiter, error)
            self._terminate("the allocation expired")
        elif isinstance(event, PermissionCreated):
            done = set(event.peers)
            for wanted, pending in self._permission_waiters:
                wanted -= done
                if not wanted:
                    self._resolve(pending, None)
        elif isinstance(event, PermissionFailed):
            failed = set(event.peers)
            for wanted, pending in self._permission_waiters:
                if wanted & failed:
                    self._fail(pending, AllocationError(event.code, event.reason))
        elif isinstance(event, ChannelBound):
            for fut in self._channel_waiters.get(event.channel, []):
                self._resolve(fut, event.channel)
        elif isinstance(event, ChannelBindFailed):
            for fut in self._channel_waiters.get(event.channel, []):
                self._fail(fut, AllocationError(event.code, event.reason))
