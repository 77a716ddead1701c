"""The probes of ``anchor check`` and the asyncio plumbing they share (RFC 8489, 5780, 8656).

Theory of operation
-------------------
Each probe is a small coroutine ``probe(ctx) -> Verdict`` registered with :func:`_probe`,
which records its :class:`~anchor_turn.check.ProbeInfo` (id, requirement, RFC section, level)
in :data:`PROBES`, in report order. :func:`run_check` runs the selected probes one after the
other against one server; :func:`run_probe` runs one, bounded in time, and turns what it
raises into a verdict: :class:`ProbeFailed` is a ``fail``, :class:`ProbeSkipped` a ``skip``,
running out of time a ``fail``. The conformance tests call the same functions, so the command
and the suite cannot drift apart.

Probes work at the message level rather than through :class:`~anchor_turn.client.TurnClient`:
they must send what a well-behaved client never sends (a forged nonce, channel 0x3FFF, a
second Allocate on one 5-tuple, a FINGERPRINT that does not verify) and look at every byte that
comes back. The plumbing:

- :class:`_Link`: one client transport address towards the server, a UDP socket (not
  connected, so that RFC 5780 answers from the other address arrive) or a TCP/TLS connection
  framed by :class:`~anchor_stun.framing.StreamFramer`. ``transact`` runs a request as a
  client transaction of anchor_stun's :class:`~anchor_stun.transaction.StunClient` (its
  RFC 8489 §6.2 retransmissions), given up after ``CheckConfig.timeout``;
  it returns ``None`` when nothing came back. A response the transaction rejects as malformed
  (another method, an error without ERROR-CODE: RFC 8489 §6.3) still reaches the probe, which
  reports it. Indications and ChannelData go to an inbox (``receive``).
- :class:`_Turn`: long-term credentials on a link (RFC 8489 §9.2): the first request goes
  unsigned, its 401 supplies REALM and NONCE, then every request is signed; a 438 is answered
  once with the new nonce.
- :class:`CheckContext`: the configuration, the links and allocations a probe opened (each
  probe gets fresh 5-tuples, and the runner releases and closes everything after it), and the
  data peer: ``--peer``, or, when the server is on loopback, a UDP echo the check starts on
  127.0.0.1 (it also records what reached it, and from where).

Peers. Permission and channel probes need a peer the server accepts. They try the data peer
first and, when the server refuses it with 403 (a loopback echo against a server that
refuses loopback peers), the documentation address :data:`DOCUMENTATION_PEER`: installing a
permission or binding a channel sends nothing to the peer, so no third party is ever
contacted. Round trips need the data peer itself and are skipped without one.

Bounded waits. "No answer" (silent discard, data that must not be relayed) is waited for
``ctx.quiet``: ``CheckConfig.quiet`` or four round trips, whichever is longer, at most 2 s.
Each probe is bounded by ``CheckConfig.probe_timeout`` (the ``--slow`` one by that plus 1.1
times the permission lifetime plus 30 s). Against a loopback server the default check takes
one to three seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import struct
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from anchor_stun.aio.net import (
    StunTransport,
    TransportName,
    credential,
    format_address,
    positive_timeout,
    server_address,
)
from anchor_stun.attributes import (
    Attribute,
    Lifetime,
    PasswordAlgorithmId,
    RequestedTransport,
    TransportProtocol,
    XorRelayedAddress,
)
from anchor_stun.errors import (
    AnchorError,
    DecodeError,
    LocalProtocolError,
    StunError,
    error_text,
)
from anchor_stun.events import Address, StunEvent
from anchor_stun.integrity import (
    CredentialsRejected,
    LongTermCredentials,
)
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.transaction import (
    TransactionFailed,
    TransactionSucceeded,
    TransactionTimedOut,
)
from anchor_turn.check import Group, Level, ProbeInfo, ProbeResult, Verdict

__all__ = [
    "DOCUMENTATION_PEER",
    "PROBES",
    "CheckConfig",
    "CheckContext",
    "CheckError",
    "Probe",
    "ProbeFailed",
    "ProbeSkipped",
    "probe_ids",
    "run_check",
    "run_probe",
    "select_probes",
]

DEFAULT_LIFETIME = 600  # RFC 8656 §7.2 ("default lifetime", 10 minutes)
MAX_LIFETIME = 3600  # RFC 8656 §7.2: RECOMMENDED maximum allowed lifetime
PERMISSION_LIFETIME = 300.0  # RFC 8656 §9: "MUST be 300 seconds"
UNKNOWN_REQUIRED = 0x7FF0
"""An unassigned comprehension-required attribute type (RFC 8489 §18.3: 0x4000-0x7FFF is
Expert Review, nothing there is registered)."""
UNKNOWN_OPTIONAL = 0xFFF0
"""An unassigned comprehension-optional attribute type."""
UNSUPPORTED_PROTOCOL = 253
"""REQUESTED-TRANSPORT for the 442 probe: IANA protocol number 253 is reserved for
experimentation (RFC 3692), so no TURN server relays it. TCP (6) is not used: RFC 6062 servers
accept it over TCP connections."""
DOCUMENTATION_PEER: Address = ("192.0.2.1", 9)
"""RFC 5737 TEST-NET-1: the fallback peer of permission and channel probes (nothing is ever
sent to it: installing a permission or binding a channel sends no packet to the peer)."""
FIRST_CHANNEL = 0x4000  # RFC 8656 §12
QUIET_MAX = 2.0
"""Upper bound of a "no answer" wait, seconds."""
RELEASE_WAIT = 3.0
"""How long a released allocation may take to disappear (coturn deletes it at its next
one-second timer tick), seconds."""

_CHANNEL_HEAD = struct.Struct("!HH")
_METHOD_NAMES: dict[int, str] = {
    Method.BINDING: "Binding",
    Method.ALLOCATE: "Allocate",
    Method.REFRESH: "Refresh",
    Method.CREATE_PERMISSION: "CreatePermission",
    Method.CHANNEL_BIND: "ChannelBind",
}
_ALGORITHM_NAMES: dict[int, str] = {PasswordAlgorithmId.MD5: "MD5", PasswordAlgorithmId.SHA256: "SHA-256"}


# ----------------------------------------------------------------------------- errors


class CheckError(AnchorError):
    """The check cannot run at all (the server cannot be reached): one line, exit 1."""


class ProbeFailed(Exception):
    """Raised inside a probe: the requirement is not met (``detail`` says why)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ProbeSkipped(Exception):
    """Raised inside a probe: it cannot run here (``detail`` says why)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """What to check and how patiently."""

    server: Address
    """The server's (ip, port), resolved."""
    transport: TransportName = "udp"
    """Transport to the server (the relay is always UDP)."""
    username: str | None = None
    """Long-term credentials (RFC 8489 §9.2); without them TURN probes that need an
    allocation are skipped."""
    password: str | None = None
    """The password of ``username``."""
    peer: Address | None = None
    """A UDP echo peer for the round-trip probes (None: a loopback echo when the server is
    on loopback)."""
    only: Group | None = None
    """Run only the ``stun`` or the ``turn`` probes."""
    slow: bool = False
    """Also run the probes that wait for a server timer (permission expiry, ~5 minutes)."""
    ssl_context: ssl.SSLContext | None = None
    """TLS client context (``tls`` transport); None: the system's trust store."""
    server_hostname: str | None = None
    """Name the TLS certificate is checked against (None: the server IP)."""
    timeout: float = 2.0
    """Seconds one transaction may take (retransmissions included)."""
    quiet: float = 0.5
    """Seconds to wait for an answer that must not come (at least; see ``CheckContext.quiet``)."""
    probe_timeout: float = 20.0
    """Bound on one probe, seconds."""
    permission_lifetime: float = PERMISSION_LIFETIME
    """The permission lifetime the ``--slow`` probe waits past (RFC 8656 §9: 300 s)."""

    def __post_init__(self) -> None:
        """Every field checked where it enters: :class:`LocalProtocolError` naming the field
        and the accepted forms, before anything is sent. ``server`` and ``peer`` may be
        ``(ip, port)`` or ``"ip:port"`` text (resolve a host name first)."""
        set_field = object.__setattr__
        set_field(self, "server", _ip_address(self.server, "CheckConfig server"))
        if self.peer is not None:
            set_field(self, "peer", _ip_address(self.peer, "CheckConfig peer"))
        if self.transport not in ("udp", "tcp", "tls"):
            raise LocalProtocolError(
                f"CheckConfig transport must be 'udp', 'tcp' or 'tls', not {self.transport!r}"
            )
        if (self.username is None) != (self.password is None):
            raise LocalProtocolError(
                "CheckConfig username and password go together (both, or neither to skip "
                "the probes that need credentials)"
            )
        if self.username is not None:
            credential(self.username, "CheckConfig username")
            credential(self.password, "CheckConfig password")
        if self.only not in (None, "stun", "turn"):
            raise LocalProtocolError(
                f"CheckConfig only must be None, 'stun' or 'turn', not {self.only!r}"
            )
        for name in ("timeout", "quiet", "probe_timeout", "permission_lifetime"):
            positive_timeout(getattr(self, name), f"CheckConfig {name}")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise LocalProtocolError(
                "CheckConfig ssl_context must be an ssl.SSLContext or None, not"
                f" {type(self.ssl_context).__name__}"
            )
        if self.server_hostname is not None and (
            not isinstance(self.server_hostname, str) or not self.server_hostname
        ):
            raise LocalProtocolError(
                "CheckConfig server_hostname must be a host name or None, not"
                f" {self.server_hostname!r}"
            )


def _ip_address(value: object, what: str) -> Address:
    """``(ip, port)`` or ``"ip:port"`` as ``(ip, port)``; a host name is refused (the probes
    compare addresses: resolve it first, as ``anchor check`` does)."""
    return server_address(value, what, default_port=None, ip_only=True)


# ----------------------------------------------------------------------------- link


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to one of our requests."""

    message: Message
    """The decoded response."""
    source: Address
    """Where it came from (RFC 5780 probes compare it with the advertised addresses)."""
    rtt: float
    """Seconds from the first transmission to the response."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """Something the server sent that answers no request: an indication or ChannelData."""

    message: Message | None
    """The STUN indication (None for ChannelData)."""
    channel: int | None
    """The channel number of ChannelData (None for STUN)."""
    data: bytes
    """The application data of ChannelData (empty for STUN)."""
    source: Address
    """Where it came from."""


class _Link(StunTransport):
    """One client transport address towards the server: a UDP socket or a TCP/TLS connection
    (anchor_stun's :class:`~anchor_stun.aio.net.StunTransport`, with ChannelData on streams),
    whose every answer reaches the probe: error responses as replies, malformed ones too."""

    def __init__(
        self, transport_name: TransportName, server: Address, *, channel_data: bool = True
    ) -> None:
        super().__init__(transport_name, server, channel_data=channel_data)
        self.config = CheckConfig(server, transport_name)
        """The check's configuration (set by :meth:`open`)."""
        self._replies: dict[bytes, tuple[asyncio.Future[Reply | None], float]] = {}
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self.closed: str | None = None
        """Why the connection is gone (stream transports), else None."""

    @property
    def stream(self) -> bool:
        """True over TCP and TLS."""
        return self.transport_name != "udp"

    @classmethod
    async def open(cls, config: CheckConfig, *, connected: bool = False) -> _Link:
        """Open the socket or connection; raises :class:`ProbeFailed` when it cannot. A
        ``connected`` UDP socket sends to the server only and sees its ICMP errors."""
        try:
            link = await cls.connect(
                config.server,
                config.transport,
                ssl_context=config.ssl_context,
                server_hostname=config.server_hostname,
                timeout=config.timeout,
                connected=connected,
            )
        except TimeoutError:
            raise ProbeFailed(
                f"cannot connect over {config.transport}: no answer within {config.timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ProbeFailed(f"cannot connect over {config.transport}: {exc}") from None
        assert isinstance(link, _Link)
        link.config = config
        return link

    def send(self, data: bytes, to: Address | None = None) -> None:
        """Send bytes as they are (to ``to`` over UDP; the connection otherwise)."""
        self.send_bytes(data, to)

    def channel_data(self, channel: int, payload: bytes) -> bytes:
        """A ChannelData message, padded to 4 bytes over TCP/TLS (RFC 8656 §12.5)."""
        head = _CHANNEL_HEAD.pack(channel, len(payload))
        pad = b"\x00" * (-len(payload) % 4) if self.stream else b""
        return head + payload + pad

    async def transact(
        self, data: bytes, *, to: Address | None = None, timeout: float | None = None
    ) -> Reply | None:
        """Send an encoded request and return the response with its transaction id, or None
        when none came within ``timeout`` (the transaction's RFC 8489 §6.2 retransmissions
        over UDP; one send over TCP/TLS)."""
        limit = self.config.timeout if timeout is None else timeout
        if self.closed is not None:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply | None] = loop.create_future()
        tid = self.client.send_request(data, to or self.server, loop.time())
        self._replies[tid] = (future, loop.time())
        self._pump.pump()
        try:
            done, _ = await asyncio.wait({future}, timeout=limit)
            return future.result() if done else None
        finally:
            self._replies.pop(tid, None)
            self.client.cancel(tid)

    def _event(self, event: StunEvent) -> None:
        """A transaction ended: its response (success or error), or None when it ran out of
        retransmissions before ``transact`` gave up on it."""
        if isinstance(event, TransactionSucceeded | TransactionFailed):
            reply: Reply | None = Reply(event.response, event.addr, event.rtt)
        elif isinstance(event, TransactionTimedOut):
            reply = None
        else:
            return
        waiter = self._replies.get(event.transaction_id)
        if waiter is not None and not waiter[0].done():
            waiter[0].set_result(reply)

    async def receive(self, timeout: float) -> Inbound | None:
        """The next indication or ChannelData, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            return None

    async def send_until(
        self, data: bytes, accept: Callable[[Inbound], bool], timeout: float, tries: int = 3
    ) -> Inbound | None:
        """Send ``data`` up to ``tries`` times, each followed by ``timeout / tries`` seconds
        of waiting for an inbound item ``accept`` takes (UDP may lose either way); the item,
        or None."""
        for _ in range(tries):
            self.send(data)
            item = await self.receive_matching(accept, timeout / tries)
            if item is not None:
                return item
        return None

    async def receive_matching(
        self, accept: Callable[[Inbound], bool], timeout: float
    ) -> Inbound | None:
        """The first inbound item ``accept`` takes within ``timeout`` (others are dropped)."""
        deadline = self._pump.now() + timeout
        while (remaining := deadline - self._pump.now()) > 0:
            item = await self.receive(remaining)
            if item is None:
                return None
            if accept(item):
                return item
        return None

    def unsolicited(self, data: bytes, source: Address) -> None:
        """What ended no transaction: a late answer (to a retransmission, or to a request given
        up on), an answer the transaction rejects as malformed (which the probe waiting for it
        must see and report), an indication or ChannelData (the inbox)."""
        if not data:
            return
        first = data[0]
        if first < 0x40:
            try:
                msg = Message.decode(data)
            except DecodeError as exc:
                waiter = self._replies.get(bytes(data[8:20]))
                if waiter is not None and not waiter[0].done():
                    waiter[0].set_exception(ProbeFailed(f"malformed response: {exc}"))
                return
            if msg.is_response:
                waiter = self._replies.get(msg.transaction_id)
                if waiter is not None and not waiter[0].done():
                    waiter[0].set_result(Reply(msg, source, self._pump.now() - waiter[1]))
                return
            self._inbox.put_nowait(Inbound(msg, None, b"", source))
        elif first < 0x80 and len(data) >= 4:
            channel, length = _CHANNEL_HEAD.unpack_from(data)
            if 4 + length <= len(data):
                self._inbox.put_nowait(Inbound(None, channel, data[4 : 4 + length], source))

    def _fail(self, error: StunError) -> None:
        """The server unreachable (the ICMP error of a connected UDP socket): like a lost
        connection, every transaction ends without a reply and :attr:`closed` says why."""
        super()._fail(error)
        self._lost(str(error))

    def _lost(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        for future, _ in self._replies.values():
            if not future.done():
                future.set_result(None)
        if self._socket is not None:
            self._socket.close()

    def close(self) -> None:
        """Close the socket or connection."""
        super().close()
        if self.closed is None:
            self.closed = "closed by the check"


# ----------------------------------------------------------------------------- messages


def _tid() -> bytes:
    return os.urandom(12)


def _request(method: int, *attributes: Attribute) -> Message:
    return Message(method, MessageClass.REQUEST, _tid(), list(attributes))


def _code(msg: Message) -> int:
    """0 for a success response, else the ERROR-CODE (-1 when it has none)."""
    if msg.msg_class == MessageClass.SUCCESS:
        return 0
    error = msg.error
    return error.code if error is not None else -1


def _describe(msg: Message) -> str:
    if msg.msg_class == MessageClass.SUCCESS:
        return "success"
    error = msg.error
    if error is None:
        return "an error without ERROR-CODE"
    return error_text(error.code, error.reason)


def _name(method: int) -> str:
    return _METHOD_NAMES.get(method, f"method {method:#x}")


def _no_answer(link: _Link, what: str) -> ProbeFailed:
    why = f" ({link.closed})" if link.closed else ""
    return ProbeFailed(f"no response to {what} within {link.config.timeout:g} s{why}")


async def _transact(link: _Link, msg: Message | bytes, what: str) -> Reply:
    data = msg if isinstance(msg, bytes) else msg.encode(fingerprint=True)
    reply = await link.transact(data)
    if reply is None:
        raise _no_answer(link, what)
    return reply


def _mapped_ok(link: _Link, mapped: Address) -> str | None:
    """Why ``mapped`` cannot be right for a server on loopback (no NAT between), else None."""
    server_ip = ipaddress.ip_address(link.config.server[0])
    if not server_ip.is_loopback or not link.local[0]:
        return None
    if ipaddress.ip_address(mapped[0]) != ipaddress.ip_address(link.local[0]) or (
        mapped[1] != link.local[1]
    ):
        return (
            f"XOR-MAPPED-ADDRESS {format_address(mapped)}, but the request left from "
            f"{format_address(link.local)} (no NAT on loopback)"
        )
    return None


# ----------------------------------------------------------------------------- TURN sessions


class _Turn:
    """Long-term credentials on one link (RFC 8489 §9.2): unsigned first request, 401
    challenge, then signed requests; one retry with the new nonce after a 438."""

    def __init__(self, link: _Link, credentials: LongTermCredentials) -> None:
        self.link = link
        self.credentials = credentials
        self.challenge: Message | None = None
        """The 401 that supplied REALM and NONCE."""

    async def request(
        self, method: int, attributes: Sequence[Attribute], *, retry_stale: bool = True
    ) -> Message:
        """Run ``method`` to its final response (which may be an error). Raises
        :class:`ProbeFailed` when the server does not answer."""
        what = _name(method)
        creds = self.credentials
        if not creds.ready:
            first = await _transact(self.link, _request(method, *attributes), what)
            if _code(first.message) != 401:
                return first.message
            self.challenge = first.message
            try:
                creds.challenge(first.message)
            except CredentialsRejected:
                return first.message
        reply = await _transact(self.link, creds.sign(_request(method, *attributes)), what)
        if retry_stale and _code(reply.message) == 438:
            try:
                creds.challenge(reply.message)
            except CredentialsRejected:
                return reply.message
            reply = await _transact(self.link, creds.sign(_request(method, *attributes)), what)
        return reply.message

    def authentic(self, msg: Message) -> bool:
        """True when ``msg`` carries an integrity attribute computed with our key."""
        return self.credentials.verify_response(msg)

    @property
    def algorithm(self) -> str:
        """The password algorithm in use (MD5 or SHA-256)."""
        return _ALGORITHM_NAMES.get(self.credentials.algorithm, str(self.credentials.algorithm))


@dataclass(slots=True)
class _Allocation:
    turn: _Turn
    response: Message
    relayed: Address
    lifetime: int | None
    released: bool = False

    @property
    def link(self) -> _Link:
        return self.turn.link


# ----------------------------------------------------------------------------- echo peer


class _EchoPeer(asyncio.DatagramProtocol):
    """A UDP echo on loopback that also records what reached it and from where."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[bytes, Address]] = []
        self.address: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("sockname")
        self.address = (str(sock[0]), int(sock[1]))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source = (str(addr[0]), int(addr[1]))
        self.received.append((data, source))
        if self.transport is not None:
            self.transport.sendto(data, source)

    def error_received(self, exc: Exception) -> None:
        pass

    def source_of(self, payload: bytes) -> Address | None:
        """Where ``payload`` came from, if it arrived."""
        for data, source in self.received:
            if data == payload:
                return source
        return None

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send from the echo's own socket (a peer starting a flow)."""
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


# ----------------------------------------------------------------------------- context


class CheckContext:
    """What probes share: the configuration, the data peer, and the links and allocations
    the running probe opened (:meth:`cleanup` releases and closes them)."""

    def __init__(self, config: CheckConfig) -> None:
        self.config = config
        self.rtt: float | None = None
        """A round-trip time to the server measured before the probes, seconds."""
        self._links: list[_Link] = []
        self._allocations: list[_Allocation] = []
        self._echo: _EchoPeer | None = None

    @property
    def quiet(self) -> float:
        """How long to wait for an answer that must not come."""
        wait = self.config.quiet
        if self.rtt is not None:
            wait = max(wait, 4 * self.rtt)
        return min(wait, max(QUIET_MAX, self.config.quiet))

    @property
    def server_on_loopback(self) -> bool:
        """True when the server is on this host's loopback."""
        return ipaddress.ip_address(self.config.server[0]).is_loopback

    async def link(self, *, connected: bool = False) -> _Link:
        """A fresh link to the server (closed after the probe); ``connected``: a UDP socket
        that sees the server's ICMP errors but can send to no other address."""
        link = await _Link.open(self.config, connected=connected)
        self._links.append(link)
        return link

    def credentials(self) -> LongTermCredentials:
        """Fresh client credential state; skips the probe when none were given."""
        if self.config.username is None or self.config.password is None:
            raise ProbeSkipped("needs credentials: --user NAME:PASSWORD or --static-auth-secret")
        return LongTermCredentials(self.config.username, self.config.password)

    async def try_allocate(self, *, lifetime: int | None = None) -> tuple[_Turn, Message]:
        """One authenticated Allocate (UDP relay) on a fresh link; returns the final response,
        success or error. A success is released after the probe."""
        turn = _Turn(await self.link(), self.credentials())
        attrs: list[Attribute] = [RequestedTransport(TransportProtocol.UDP)]
        if lifetime is not None:
            attrs.append(Lifetime(lifetime))
        response = await turn.request(Method.ALLOCATE, attrs)
        if response.msg_class == MessageClass.SUCCESS:
            self.track(turn, response)
        return turn, response

    def track(self, turn: _Turn, response: Message) -> _Allocation:
        """Remember an allocation the probe made (released after it), whatever made it."""
        relayed = response.get(XorRelayedAddress)
        lifetime = response.get(Lifetime)
        alloc = _Allocation(
            turn,
            response,
            relayed.address if relayed is not None else ("", 0),
            lifetime.value if lifetime is not None else None,
        )
        self._allocations.append(alloc)
        return alloc

    async def allocate(self, *, lifetime: int | None = None) -> _Allocation:
        """An allocation for a probe that needs one; skips the probe when none can be made
        (turn.allocate reports why)."""
        _, response = await self.try_allocate(lifetime=lifetime)
        code = _code(response)
        if code == 401:
            raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
        if code != 0:
            raise ProbeSkipped(f"cannot allocate: {_describe(response)}; see turn.allocate")
        alloc = self._allocations[-1]
        if not alloc.relayed[0]:
            raise ProbeSkipped("Allocate success without XOR-RELAYED-ADDRESS; see turn.allocate")
        return alloc

    async def data_peer(self) -> Address:
        """The UDP echo peer for round trips: ``--peer``, or a loopback echo started here when
        the server is on loopback; skips the probe otherwise."""
        if self.config.peer is not None:
            return self.config.peer
        echo = await self.local_echo()
        if echo is None:
            raise ProbeSkipped("needs a UDP echo peer: --peer IP:PORT")
        return echo.address

    async def local_echo(self) -> _EchoPeer | None:
        """The loopback echo (started on first use), or None when ``--peer`` is given or the
        server is not on loopback."""
        if self.config.peer is not None or not self.server_on_loopback:
            return None
        if self._echo is None:
            loop = asyncio.get_running_loop()
            _, echo = await loop.create_datagram_endpoint(
                _EchoPeer, local_addr=("127.0.0.1", 0)
            )
            self._echo = echo
        return self._echo

    async def peer_candidates(self) -> list[Address]:
        """Peers to install permissions for: the data peer when there is one, then
        :data:`DOCUMENTATION_PEER`."""
        peers: list[Address] = []
        with contextlib.suppress(ProbeSkipped):
            peers.append(await self.data_peer())
        peers.append(DOCUMENTATION_PEER)
        return peers

    async def cleanup(self) -> None:
        """Release the allocations the probe left (Refresh LIFETIME 0) and close its links."""
        allocations, self._allocations = self._allocations, []
        for alloc in allocations:
            if alloc.released or alloc.link.closed:
                continue
            data = alloc.turn.credentials.sign(_request(Method.REFRESH, Lifetime(0)))
            with contextlib.suppress(ProbeFailed):
                await alloc.link.transact(data, timeout=min(1.0, self.config.timeout))
        links, self._links = self._links, []
        for link in links:
            link.close()
        if self._echo is not None:
            self._echo.received.clear()

    async def close(self) -> None:
        """:meth:`cleanup`, and stop the loopback echo."""
        await self.cleanup()
        if self._echo is not None:
            self._echo.close()
            self._echo = None

    async def preflight(self) -> None:
        """Make sure the server answers at all (a Binding, else an Allocate) and measure a
        round trip; raises :class:`CheckError` when it cannot be reached: at once when the
        server's host says the port is closed (ICMP, RFC 8489 §6.2.1's transaction ends)."""
        config = self.config
        where = f"{format_address(config.server)} over {config.transport}"
        try:
            link = await self.link(connected=config.transport == "udp")
        except ProbeFailed as exc:
            raise CheckError(f"{where}: {exc.detail}") from None
        unreachable: str | None = None
        try:
            for msg in (
                _request(Method.BINDING),
                _request(Method.ALLOCATE, RequestedTransport(TransportProtocol.UDP)),
            ):
                reply = await link.transact(msg.encode(fingerprint=True))
                if reply is not None:
                    self.rtt = reply.rtt
                    return
                if link.closed:
                    if not link.stream:
                        unreachable = link.closed
                    break
        finally:
            await self.cleanup()
        if unreachable is not None:
            raise CheckError(f"{unreachable} over {config.transport}")
        raise CheckError(f"no answer from {where} within {config.timeout:g} s")


# ----------------------------------------------------------------------------- registry

ProbeFunc = Callable[[CheckContext], Awaitable[Verdict]]


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe: what it tests and the coroutine that tests it."""

    info: ProbeInfo
    """Id, requirement, RFC section, level, group."""
    run: ProbeFunc = field(compare=False)
    """``await run(ctx)`` gives the verdict (or raises ProbeFailed / ProbeSkipped)."""


PROBES: list[Probe] = []
"""Every probe, in report order."""


def _probe(
    probe_id: str, requirement: str, rfc: str, level: Level, *, slow: bool = False
) -> Callable[[ProbeFunc], ProbeFunc]:
    group: Group = "stun" if probe_id.startswith("stun.") else "turn"
    info = ProbeInfo(probe_id, requirement, rfc, level, group, slow)

    def register(func: ProbeFunc) -> ProbeFunc:
        PROBES.append(Probe(info, func))
        return func

    return register


def probe_ids() -> list[str]:
    """The id of every probe, in report order."""
    return [p.info.id for p in PROBES]


def select_probes(only: Group | None = None, ids: Collection[str] | None = None) -> list[Probe]:
    """The probes of one group (or all), optionally only those with the given ids."""
    if ids is not None:
        unknown = set(ids) - set(probe_ids())
        if unknown:
            raise ValueError(f"unknown probe ids: {', '.join(sorted(unknown))}")
    return [
        p
        for p in PROBES
        if (only is None or p.info.group == only) and (ids is None or p.info.id in ids)
    ]


async def run_probe(ctx: CheckContext, probe: Probe) -> ProbeResult:
    """Run one probe, bounded in time, and release what it opened."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    config = ctx.config
    if probe.info.slow and not config.slow:
        verdict = Verdict.skipped(
            f"runs with --slow (waits {config.permission_lifetime:g} s and more)"
        )
        return ProbeResult(probe.info, verdict.outcome, verdict.detail, 0.0)
    limit = config.probe_timeout
    if probe.info.slow:
        limit += config.permission_lifetime * 1.1 + 30
    try:
        verdict = await asyncio.wait_for(probe.run(ctx), limit)
    except ProbeFailed as exc:
        verdict = Verdict.failed(exc.detail)
    except ProbeSkipped as exc:
        verdict = Verdict.skipped(exc.detail)
    except TimeoutError:
        verdict = Verdict.failed(f"no verdict within {limit:g} s")
    except (AnchorError, OSError, ssl.SSLError) as exc:
        verdict = Verdict.failed(f"{type(exc).__name__}: {exc}")
    finally:
        await ctx.cleanup()
    return ProbeResult(probe.info, verdict.outcome, verdict.detail, loop.time() - start)


async def run_check(
    config: CheckConfig,
    *,
    ids: Collection[str] | None = None,
    on_result: Callable[[ProbeResult], None] | None = None,
) -> list[ProbeResult]:
    """Run the probes ``config`` selects (or those in ``ids``) one after the other.

    Raises :class:`CheckError` when the server does not answer at all."""
    if not isinstance(config, CheckConfig):
        raise TypeError(
            f"config must be a CheckConfig (CheckConfig(server=...)), not {type(config).__name__}"
        )
    if ids is not None and (isinstance(ids, str) or not all(isinstance(i, str) for i in ids)):
        raise TypeError(f"ids must be a collection of probe ids (['turn.release']), not {ids!r}")
    if on_result is not None and not callable(on_result):
        raise TypeError(f"on_result must be a function or None, not {on_result!r}")
    probes = select_probes(config.only, ids)
    ctx = CheckContext(config)
    results: list[ProbeResult] = []
    try:
        await ctx.preflight()
        for probe in probes:
            result = await run_probe(ctx, probe)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        await ctx.close()
    return results
