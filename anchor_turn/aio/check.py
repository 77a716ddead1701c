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

from anchor_stun.aio.net import StunTransport, TransportName, format_address
from anchor_stun.attributes import (
    Attribute,
    AttrType,
    ChangeRequest,
    ChannelNumber,
    Data,
    DontFragment,
    Lifetime,
    Nonce,
    OtherAddress,
    PasswordAlgorithmId,
    PasswordAlgorithms,
    RawAttribute,
    Realm,
    RequestedTransport,
    ResponseOrigin,
    TransportProtocol,
    UnknownAttributes,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from anchor_stun.errors import AnchorError, DecodeError
from anchor_stun.events import Address, StunEvent
from anchor_stun.integrity import (
    CredentialsRejected,
    LongTermCredentials,
    SecurityFeatures,
    nonce_features,
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
    async def open(cls, config: CheckConfig) -> _Link:
        """Open the socket or connection; raises :class:`ProbeFailed` when it cannot."""
        try:
            link = await cls.connect(
                config.server,
                config.transport,
                ssl_context=config.ssl_context,
                server_hostname=config.server_hostname,
                timeout=config.timeout,
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

    def _lost(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        for future, _ in self._replies.values():
            if not future.done():
                future.set_result(None)
        if self._stream is not None:
            self._stream.close()

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
    return f"{error.code} {error.reason.strip()}".strip()


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

    async def link(self) -> _Link:
        """A fresh link to the server (closed after the probe)."""
        link = await _Link.open(self.config)
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
        round trip; raises :class:`CheckError` when it cannot be reached."""
        config = self.config
        where = f"{format_address(config.server)} over {config.transport}"
        try:
            link = await self.link()
        except ProbeFailed as exc:
            raise CheckError(f"{where}: {exc.detail}") from None
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
                    break
        finally:
            await self.cleanup()
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


# ============================================================================= STUN probes


async def _binding(ctx: CheckContext, *attrs: Attribute, fingerprint: bool = True) -> Reply:
    link = await ctx.link()
    msg = _request(Method.BINDING, *attrs)
    return await _transact(link, msg.encode(fingerprint=fingerprint), "Binding")


def _binding_success(reply: Reply) -> XorMappedAddress:
    msg = reply.message
    if msg.msg_class != MessageClass.SUCCESS or msg.method != Method.BINDING:
        raise ProbeFailed(f"answered {_describe(msg)}")
    mapped = msg.get(XorMappedAddress)
    if mapped is None:
        raise ProbeFailed("success response without XOR-MAPPED-ADDRESS")
    return mapped


@_probe(
    "stun.binding",
    "A Binding request is answered with a success response carrying XOR-MAPPED-ADDRESS",
    "RFC 8489 §6.3.1.1, §14.2",
    Level.MUST,
)
async def _probe_binding(ctx: CheckContext) -> Verdict:
    link = await ctx.link()
    reply = await _transact(link, _request(Method.BINDING).encode(), "Binding")
    mapped = _binding_success(reply)
    wrong = _mapped_ok(link, mapped.address)
    if wrong:
        return Verdict.failed(wrong)
    return Verdict.passed(
        f"mapped {format_address(mapped.address)}, {reply.rtt * 1000:.1f} ms (no FINGERPRINT)"
    )


@_probe(
    "stun.binding-fingerprint",
    "A Binding request with FINGERPRINT is answered; a FINGERPRINT in the response verifies",
    "RFC 8489 §14.7",
    Level.MUST,
)
async def _probe_binding_fingerprint(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx)
    mapped = _binding_success(reply)
    msg = reply.message
    if msg.fingerprint is None:
        return Verdict.passed(
            f"mapped {format_address(mapped.address)}; the response has no FINGERPRINT"
        )
    if not msg.verify_fingerprint():
        return Verdict.failed("the response's FINGERPRINT does not verify")
    return Verdict.passed(
        f"mapped {format_address(mapped.address)}; the response's FINGERPRINT verifies"
    )


@_probe(
    "stun.unknown-required",
    "A request with an unknown comprehension-required attribute gets 420 with "
    "UNKNOWN-ATTRIBUTES listing it",
    "RFC 8489 §6.3.1, §14.13",
    Level.MUST,
)
async def _probe_unknown_required(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx, RawAttribute(UNKNOWN_REQUIRED, b"\x00\x00\x00\x00"))
    msg = reply.message
    code = _code(msg)
    if code == 0:
        return Verdict.failed(
            f"answered success: the unknown comprehension-required attribute "
            f"{UNKNOWN_REQUIRED:#06x} was ignored"
        )
    if code != 420:
        return Verdict.failed(f"answered {_describe(msg)}, expected 420")
    unknown = msg.get(UnknownAttributes)
    if unknown is None or UNKNOWN_REQUIRED not in unknown.types:
        listed = ", ".join(f"{t:#06x}" for t in unknown.types) if unknown else "none"
        return Verdict.failed(f"420 without UNKNOWN-ATTRIBUTES listing {UNKNOWN_REQUIRED:#06x} "
                              f"(listed: {listed})")
    return Verdict.passed(f"420 with UNKNOWN-ATTRIBUTES {UNKNOWN_REQUIRED:#06x}")


@_probe(
    "stun.unknown-optional",
    "An unknown comprehension-optional attribute is ignored: the request succeeds",
    "RFC 8489 §14, §6.3.1",
    Level.MUST,
)
async def _probe_unknown_optional(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx, RawAttribute(UNKNOWN_OPTIONAL, b"\x00\x00\x00\x00"))
    if _code(reply.message) != 0:
        return Verdict.failed(
            f"answered {_describe(reply.message)} to a request with the unknown "
            f"comprehension-optional attribute {UNKNOWN_OPTIONAL:#06x}"
        )
    _binding_success(reply)
    return Verdict.passed(f"success despite {UNKNOWN_OPTIONAL:#06x}")


@_probe(
    "stun.bad-fingerprint",
    "A request whose FINGERPRINT does not verify is silently discarded",
    "RFC 8489 §6.3, §14.7",
    Level.MUST,
)
async def _probe_bad_fingerprint(ctx: CheckContext) -> Verdict:
    link = await ctx.link()
    good = _request(Method.BINDING).encode(fingerprint=True)
    bad = good[:-1] + bytes((good[-1] ^ 0x01,))
    quiet = ctx.quiet
    reply = await link.transact(bad, timeout=quiet)
    if reply is not None:
        return Verdict.failed(
            f"answered ({_describe(reply.message)}) a request whose FINGERPRINT does not verify"
        )
    if link.closed:
        return Verdict.passed(f"no answer ({link.closed})")
    after = await link.transact(_request(Method.BINDING).encode(fingerprint=True))
    if after is None:
        return Verdict.failed(
            "no answer, but no answer to a valid Binding right after either: "
            "cannot tell a discard from an outage"
        )
    return Verdict.passed(f"no answer within {quiet:g} s; a valid Binding right after was answered")


async def _rfc5780(ctx: CheckContext) -> tuple[Reply, OtherAddress]:
    reply = await _binding(ctx)
    _binding_success(reply)
    other = reply.message.get(OtherAddress)
    if other is None:
        raise ProbeSkipped("RFC 5780 is not offered (no OTHER-ADDRESS); see stun.rfc5780")
    return reply, other


@_probe(
    "stun.rfc5780",
    "RFC 5780 NAT behaviour discovery is offered: the Binding response carries OTHER-ADDRESS",
    "RFC 5780 §6.1",
    Level.INFO,
)
async def _probe_rfc5780(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx)
    _binding_success(reply)
    other = reply.message.get(OtherAddress)
    if other is None:
        return Verdict.finding("not offered: no OTHER-ADDRESS in the Binding response")
    return Verdict.passed(f"offered: OTHER-ADDRESS {format_address(other.address)}")


@_probe(
    "stun.rfc5780-response-origin",
    "A server offering RFC 5780 adds RESPONSE-ORIGIN: the address the response was sent from",
    "RFC 5780 §6.1, §7.3",
    Level.MUST,
)
async def _probe_response_origin(ctx: CheckContext) -> Verdict:
    reply, _ = await _rfc5780(ctx)
    origin = reply.message.get(ResponseOrigin)
    if origin is None:
        return Verdict.failed("OTHER-ADDRESS without RESPONSE-ORIGIN")
    if ctx.config.transport == "udp" and origin.address != reply.source:
        return Verdict.failed(
            f"RESPONSE-ORIGIN {format_address(origin.address)}, but the response came from "
            f"{format_address(reply.source)}"
        )
    return Verdict.passed(f"RESPONSE-ORIGIN {format_address(origin.address)}")


@_probe(
    "stun.rfc5780-change-request",
    "CHANGE-REQUEST is honoured: the response leaves from the other IP and/or port",
    "RFC 5780 §6.1, §7.2",
    Level.MUST,
)
async def _probe_change_request(ctx: CheckContext) -> Verdict:
    reply, other = await _rfc5780(ctx)
    if ctx.config.transport != "udp":
        raise ProbeSkipped("CHANGE-REQUEST is a UDP mechanism (RFC 5780 §6.1); use --transport udp")
    primary = reply.source
    shared = [n for n, same in (("IP", other.ip == primary[0]), ("port", other.port == primary[1]))
              if same]
    if shared:
        return Verdict.failed(
            f"OTHER-ADDRESS {format_address(other.address)} has the {' and '.join(shared)} of "
            f"the address that answered ({format_address(primary)}): no change of "
            f"{' or '.join(shared)} is possible"
        )
    cases = (
        (ChangeRequest(change_ip=True, change_port=True), other.address, "IP and port"),
        (ChangeRequest(change_port=True), (primary[0], other.port), "port"),
        (ChangeRequest(change_ip=True), (other.ip, primary[1]), "IP"),
    )
    done = []
    for attr, expected, what in cases:
        answer = await _binding(ctx, attr)
        if _code(answer.message) != 0:
            return Verdict.failed(f"change {what}: answered {_describe(answer.message)}")
        if answer.source != expected:
            return Verdict.failed(
                f"change {what}: answered from {format_address(answer.source)}, expected "
                f"{format_address(expected)}"
            )
        done.append(f"{what} -> {format_address(answer.source)}")
    return Verdict.passed("; ".join(done))


# ============================================================================= TURN probes


@_probe(
    "turn.auth-challenge",
    "An Allocate without credentials is refused with 401 carrying REALM and NONCE",
    "RFC 8489 §9.2.4, RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_auth_challenge(ctx: CheckContext) -> Verdict:
    link = await ctx.link()
    request = _request(Method.ALLOCATE, RequestedTransport(TransportProtocol.UDP))
    reply = await _transact(link, request, "Allocate")
    msg = reply.message
    code = _code(msg)
    if code == 0:
        release = _request(Method.REFRESH, Lifetime(0))
        await link.transact(release.encode(fingerprint=True), timeout=1.0)
        return Verdict.failed("allocated without any credentials")
    if code != 401:
        return Verdict.failed(f"answered {_describe(msg)}, expected 401")
    realm, nonce = msg.get(Realm), msg.get(Nonce)
    missing = [n for n, a in (("REALM", realm), ("NONCE", nonce)) if a is None]
    if missing:
        return Verdict.failed(f"401 without {' and '.join(missing)}")
    assert realm is not None
    return Verdict.passed(f"401 with REALM {realm.value!r} and a NONCE")


async def _challenge(ctx: CheckContext) -> Message:
    link = await ctx.link()
    request = _request(Method.ALLOCATE, RequestedTransport(TransportProtocol.UDP))
    msg = (await _transact(link, request, "Allocate")).message
    if _code(msg) != 401 or msg.get(Realm) is None or msg.get(Nonce) is None:
        raise ProbeSkipped(f"no 401 challenge to work from ({_describe(msg)}); "
                           "see turn.auth-challenge")
    return msg


@_probe(
    "turn.password-algorithms",
    "SHA-256 long-term keys are offered (nonce cookie and PASSWORD-ALGORITHMS)",
    "RFC 8489 §9.2.1, §9.2.4, §14.11",
    Level.INFO,
)
async def _probe_password_algorithms(ctx: CheckContext) -> Verdict:
    msg = await _challenge(ctx)
    nonce = msg.get(Nonce)
    assert nonce is not None
    features = nonce_features(nonce.value)
    offered = msg.get(PasswordAlgorithms)
    announced = features is not None and SecurityFeatures.PASSWORD_ALGORITHMS in features
    names = (
        ", ".join(_ALGORITHM_NAMES.get(a, f"{a:#x}") for a in offered.ids) if offered else ""
    )
    if not announced:
        if offered is not None:
            return Verdict.finding(
                f"PASSWORD-ALGORITHMS ({names}) without the nonce cookie bit: clients must "
                "ignore it, so MD5 only"
            )
        return Verdict.finding("not offered: MD5 only (no nonce cookie, no PASSWORD-ALGORITHMS)")
    if offered is None:
        return Verdict.finding(
            "the nonce cookie announces password algorithms but no PASSWORD-ALGORITHMS "
            "came with it: RFC 8489 clients must refuse this as a bid-down"
        )
    if PasswordAlgorithmId.SHA256 not in offered.ids:
        return Verdict.finding(f"SHA-256 not offered (PASSWORD-ALGORITHMS: {names})")
    if ctx.config.username is None:
        return Verdict.passed(f"SHA-256 offered (PASSWORD-ALGORITHMS: {names})")
    turn, response = await ctx.try_allocate()
    if _code(response) == 401:
        raise ProbeSkipped(
            f"SHA-256 offered ({names}); the credentials were refused (401), see turn.allocate"
        )
    if _code(response) != 0 or turn.credentials.algorithm != PasswordAlgorithmId.SHA256:
        return Verdict.failed(
            f"SHA-256 offered ({names}), but an Allocate signed with it got {_describe(response)}"
        )
    return Verdict.passed(f"SHA-256 offered ({names}) and accepted")


@_probe(
    "turn.wrong-password",
    "A request signed with a wrong password is refused with 401",
    "RFC 8489 §9.2.4",
    Level.MUST,
)
async def _probe_wrong_password(ctx: CheckContext) -> Verdict:
    username = ctx.config.username or "anchor-check"
    password = (ctx.config.password or "") + "-wrong"
    link = await ctx.link()
    turn = _Turn(link, LongTermCredentials(username, password))
    response = await turn.request(
        Method.ALLOCATE, [RequestedTransport(TransportProtocol.UDP)], retry_stale=False
    )
    code = _code(response)
    if code == 0:
        ctx.track(turn, response)
        return Verdict.failed(f"allocated with a wrong password for {username!r}")
    if turn.challenge is None:
        return Verdict.skipped(f"no 401 challenge to start from ({_describe(response)})")
    if code != 401:
        return Verdict.failed(f"answered {_describe(response)} to a wrong password, expected 401")
    return Verdict.passed(f"401 for {username!r} with a wrong password")


def _forge(nonce: str) -> str:
    """``nonce`` with its last characters changed, each within its class (digit, letter)."""
    head, tail = nonce[:-4], nonce[-4:]
    out = []
    for char in tail:
        if char.isdigit():
            out.append(str((int(char) + 1) % 10))
        elif "a" <= char <= "z":
            out.append(chr((ord(char) - 97 + 1) % 26 + 97))
        elif "A" <= char <= "Z":
            out.append(chr((ord(char) - 65 + 1) % 26 + 65))
        else:
            out.append(char)
    forged = head + "".join(out)
    return forged if forged != nonce else nonce + "x"


@_probe(
    "turn.stale-nonce",
    "A correctly signed request with a nonce the server did not issue gets 438 with a new "
    "NONCE, which then works",
    "RFC 8489 §9.2.4, §9.2.5",
    Level.MUST,
)
async def _probe_stale_nonce(ctx: CheckContext) -> Verdict:
    creds = ctx.credentials()
    link = await ctx.link()
    turn = _Turn(link, creds)
    allocate = [RequestedTransport(TransportProtocol.UDP)]
    first = await _transact(link, _request(Method.ALLOCATE, *allocate), "Allocate")
    if _code(first.message) != 401:
        raise ProbeSkipped(f"no 401 challenge ({_describe(first.message)})")
    try:
        creds.challenge(first.message)
    except CredentialsRejected as exc:
        raise ProbeSkipped(f"cannot use the 401 challenge: {exc}") from None
    assert creds.nonce is not None
    issued = creds.nonce
    forged = _forge(issued)
    creds.nonce = forged
    reply = await _transact(link, creds.sign(_request(Method.ALLOCATE, *allocate)), "Allocate")
    msg = reply.message
    code = _code(msg)
    if code == 0:
        ctx.track(turn, msg)
        return Verdict.failed("allocated with a forged nonce")
    if code == 401:
        creds.nonce = issued  # were the credentials good? (integrity is checked before nonces)
        check = await _transact(link, creds.sign(_request(Method.ALLOCATE, *allocate)), "Allocate")
        if _code(check.message) == 401:
            raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
        if _code(check.message) == 0:
            ctx.track(turn, check.message)
        return Verdict.failed("answered 401 to a forged nonce with valid credentials, expected 438")
    if code != 438:
        return Verdict.failed(f"answered {_describe(msg)} to a forged nonce, expected 438")
    fresh = msg.get(Nonce)
    if fresh is None or msg.get(Realm) is None:
        return Verdict.failed("438 without NONCE and REALM")
    if fresh.value == forged:
        return Verdict.failed("438 repeating the forged nonce")
    try:
        creds.challenge(msg)
    except CredentialsRejected as exc:
        return Verdict.failed(f"438 cannot be followed: {exc}")
    retry = await _transact(link, creds.sign(_request(Method.ALLOCATE, *allocate)), "Allocate")
    if _code(retry.message) != 0:
        return Verdict.failed(f"the new nonce did not work: {_describe(retry.message)}")
    ctx.track(turn, retry.message)
    return Verdict.passed("438 with a new NONCE; the Allocate succeeded with it")


@_probe(
    "turn.allocate",
    "An authenticated Allocate succeeds with XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS and LIFETIME",
    "RFC 8656 §7.2, §7.3",
    Level.MUST,
)
async def _probe_allocate(ctx: CheckContext) -> Verdict:
    turn, response = await ctx.try_allocate()
    code = _code(response)
    if code == 401:
        return Verdict.failed(
            "the credentials were refused (401): check --user / --static-auth-secret"
        )
    if code != 0:
        return Verdict.failed(f"answered {_describe(response)}")
    relayed = response.get(XorRelayedAddress)
    mapped = response.get(XorMappedAddress)
    lifetime = response.get(Lifetime)
    missing = [
        name
        for name, attr in (
            ("XOR-RELAYED-ADDRESS", relayed),
            ("XOR-MAPPED-ADDRESS", mapped),
            ("LIFETIME", lifetime),
        )
        if attr is None
    ]
    if missing:
        return Verdict.failed(f"success without {', '.join(missing)}")
    assert relayed is not None and mapped is not None and lifetime is not None
    wrong = _mapped_ok(turn.link, mapped.address)
    if wrong:
        return Verdict.failed(wrong)
    return Verdict.passed(
        f"relayed {format_address(relayed.address)}, mapped {format_address(mapped.address)}, "
        f"lifetime {lifetime.value} s, key {turn.algorithm}"
    )


@_probe(
    "turn.response-integrity",
    "Success responses to authenticated requests carry a valid MESSAGE-INTEGRITY(-SHA256)",
    "RFC 8489 §9.2.4",
    Level.MUST,
)
async def _probe_response_integrity(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    if not alloc.turn.authentic(alloc.response):
        return Verdict.failed("the Allocate success response is not signed with the user's key")
    refresh = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    if _code(refresh) == 0 and not alloc.turn.authentic(refresh):
        return Verdict.failed("the Refresh success response is not signed with the user's key")
    return Verdict.passed(f"Allocate and Refresh responses signed ({alloc.turn.algorithm} key)")


@_probe(
    "turn.refresh",
    "A Refresh of a live allocation succeeds with LIFETIME",
    "RFC 8656 §8.2",
    Level.MUST,
)
async def _probe_refresh(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    response = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    if _code(response) != 0:
        return Verdict.failed(f"answered {_describe(response)}")
    lifetime = response.get(Lifetime)
    if lifetime is None:
        return Verdict.failed("success without LIFETIME")
    return Verdict.passed(f"asked {DEFAULT_LIFETIME} s, granted {lifetime.value} s")


@_probe(
    "turn.lifetime",
    f"Requested lifetimes are clamped: never below the default {DEFAULT_LIFETIME} s, "
    f"at most {MAX_LIFETIME} s",
    "RFC 8656 §7.2",
    Level.SHOULD,
)
async def _probe_lifetime(ctx: CheckContext) -> Verdict:
    granted: dict[int, int] = {}
    for asked in (1, 999999):
        alloc = await ctx.allocate(lifetime=asked)
        if alloc.lifetime is None:
            return Verdict.failed(f"asked {asked} s: success without LIFETIME")
        granted[asked] = alloc.lifetime
    low, high = granted[1], granted[999999]
    detail = f"asked 1 s: granted {low} s; asked 999999 s: granted {high} s"
    problems = []
    if low < DEFAULT_LIFETIME:
        problems.append(f"below the default {DEFAULT_LIFETIME} s")
    if high > MAX_LIFETIME:
        problems.append(f"above the RECOMMENDED maximum {MAX_LIFETIME} s")
    if high < low:
        problems.append("the longer request got the shorter lifetime")
    if problems:
        return Verdict.failed(f"{detail} ({'; '.join(problems)})")
    return Verdict.passed(detail)


async def _permitted_peer(
    ctx: CheckContext, alloc: _Allocation, *, own_probe: bool = False
) -> tuple[Address, str]:
    """A peer the server installs a permission for: the data peer, else the documentation
    address. Returns it and a note on the refused ones. Unless ``own_probe`` (the
    create-permission probe), anything but 403 skips the calling probe."""
    refused: list[str] = []
    for peer in await ctx.peer_candidates():
        response = await alloc.turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(*peer)])
        code = _code(response)
        if code == 0:
            note = f" ({'; '.join(refused)})" if refused else ""
            return peer, note
        if code == 403:
            refused.append(f"{peer[0]} refused with 403")
            continue
        text = f"CreatePermission for {peer[0]} answered {_describe(response)}"
        raise ProbeFailed(text) if own_probe else ProbeSkipped(f"{text}; see turn.create-permission")
    raise ProbeSkipped(
        f"every peer was refused ({'; '.join(refused)}): give --peer with an address the "
        "server accepts"
    )


@_probe(
    "turn.create-permission",
    "CreatePermission for a peer succeeds",
    "RFC 8656 §10.2",
    Level.MUST,
)
async def _probe_create_permission(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, note = await _permitted_peer(ctx, alloc, own_probe=True)
    return Verdict.passed(f"permission for {peer[0]}{note}")


async def _bind(alloc: _Allocation, channel: int, peer: Address) -> Message:
    return await alloc.turn.request(
        Method.CHANNEL_BIND, [ChannelNumber(channel), XorPeerAddress(*peer)]
    )


@_probe(
    "turn.channel-bind",
    "ChannelBind of channel 0x4000 to a peer succeeds",
    "RFC 8656 §12.2",
    Level.MUST,
)
async def _probe_channel_bind(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, note = await _permitted_peer(ctx, alloc)
    response = await _bind(alloc, FIRST_CHANNEL, peer)
    if _code(response) != 0:
        return Verdict.failed(f"answered {_describe(response)}")
    return Verdict.passed(f"channel {FIRST_CHANNEL:#06x} bound to {format_address(peer)}{note}")


@_probe(
    "turn.channel-bind-invalid",
    "ChannelBind of channel 0x3FFF (below the channel range) is refused with 400",
    "RFC 8656 §12.2",
    Level.MUST,
)
async def _probe_channel_bind_invalid(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, _ = await _permitted_peer(ctx, alloc)
    response = await _bind(alloc, 0x3FFF, peer)
    code = _code(response)
    if code == 0:
        return Verdict.failed("channel 0x3fff was bound")
    if code != 400:
        return Verdict.failed(f"answered {_describe(response)}, expected 400")
    return Verdict.passed("channel 0x3fff refused with 400")


@_probe(
    "turn.channel-bind-range",
    "ChannelBind of channel 0x5000 (RFC 5766's range, reserved since RFC 8656) is refused "
    "with 400",
    "RFC 8656 §12, §12.2",
    Level.SHOULD,
)
async def _probe_channel_bind_range(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, _ = await _permitted_peer(ctx, alloc)
    response = await _bind(alloc, 0x5000, peer)
    code = _code(response)
    if code == 0:
        return Verdict.finding(
            "channel 0x5000 was bound: the server keeps RFC 5766's channel range 0x4000-0x7FFF "
            "(RFC 8656 narrowed it to 0x4FFF; a compatibility choice)"
        )
    if code != 400:
        return Verdict.failed(f"answered {_describe(response)}, expected 400")
    return Verdict.passed("channel 0x5000 refused with 400")


async def _data_allocation(ctx: CheckContext) -> tuple[_Allocation, Address]:
    """An allocation with a permission for the data peer (skips when refused)."""
    peer = await ctx.data_peer()
    alloc = await ctx.allocate()
    response = await alloc.turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(*peer)])
    if _code(response) != 0:
        raise ProbeSkipped(
            f"the server refuses the data peer {peer[0]} ({_describe(response)}): give --peer "
            "with an address it accepts"
        )
    return alloc, peer


def _payload(what: str) -> bytes:
    return f"anchor check {what} ".encode() + os.urandom(6).hex().encode()


async def _relay_source(ctx: CheckContext, payload: bytes, alloc: _Allocation) -> str | None:
    """With the loopback echo: why the datagram did not reach the peer from the relayed
    address, or None when it did (or there is no way to tell)."""
    echo = await ctx.local_echo()
    if echo is None:
        return None
    source = echo.source_of(payload)
    if source is None:
        return "the peer never received the datagram"
    if source != alloc.relayed:
        return (
            f"the peer received it from {format_address(source)}, not from the relayed "
            f"address {format_address(alloc.relayed)}"
        )
    return None


@_probe(
    "turn.send-data",
    "A Send indication reaches the peer from the relayed address; the peer's answer comes "
    "back in a Data indication",
    "RFC 8656 §11.2, §11.3",
    Level.MUST,
)
async def _probe_send_data(ctx: CheckContext) -> Verdict:
    alloc, peer = await _data_allocation(ctx)
    wrong = await _send_round_trip(ctx, alloc, peer, _payload("send"))
    if wrong:
        return Verdict.failed(wrong)
    return Verdict.passed(f"echo from {format_address(peer)} came back in a Data indication")


async def _send_round_trip(
    ctx: CheckContext, alloc: _Allocation, peer: Address, payload: bytes, *extra: Attribute
) -> str | None:
    """A Send indication (with ``extra`` attributes) to the echo ``peer``, up to three times;
    why its echo did not come back from the peer in a Data indication, or None when it did."""
    indication = Message(
        Method.SEND,
        MessageClass.INDICATION,
        _tid(),
        [XorPeerAddress(*peer), Data(payload), *extra],
    ).encode(fingerprint=True)

    def is_echo(item: Inbound) -> bool:
        msg = item.message
        if msg is None or msg.method != Method.DATA or msg.msg_class != MessageClass.INDICATION:
            return False
        data = msg.get(Data)
        return data is not None and data.value == payload

    item = None
    for _ in range(3):
        alloc.link.send(indication)
        item = await alloc.link.receive_matching(is_echo, ctx.config.timeout / 3)
        if item is not None:
            break
    wrong = await _relay_source(ctx, payload, alloc)
    if wrong:
        return wrong
    if item is None or item.message is None:
        return f"no Data indication with the echo from {format_address(peer)}"
    origin = item.message.get(XorPeerAddress)
    if origin is None or origin.address != peer:
        shown = format_address(origin.address) if origin else "none"
        return f"Data indication with XOR-PEER-ADDRESS {shown}, expected {format_address(peer)}"
    return None


@_probe(
    "turn.channel-data",
    "ChannelData on a bound channel reaches the peer; its answer comes back as ChannelData "
    "on the same channel",
    "RFC 8656 §12.5-§12.7",
    Level.MUST,
)
async def _probe_channel_data(ctx: CheckContext) -> Verdict:
    alloc, peer = await _data_allocation(ctx)
    channel = FIRST_CHANNEL + 1
    response = await _bind(alloc, channel, peer)
    if _code(response) != 0:
        raise ProbeSkipped(f"ChannelBind answered {_describe(response)}; see turn.channel-bind")
    payload = _payload("channel")
    frame = alloc.link.channel_data(channel, payload)

    def is_echo(item: Inbound) -> bool:
        if item.channel is not None:
            return item.data == payload
        data = item.message.get(Data) if item.message is not None else None
        return data is not None and data.value == payload

    item = None
    for _ in range(3):
        alloc.link.send(frame)
        item = await alloc.link.receive_matching(is_echo, ctx.config.timeout / 3)
        if item is not None:
            break
    wrong = await _relay_source(ctx, payload, alloc)
    if wrong:
        return Verdict.failed(wrong)
    if item is None:
        return Verdict.failed(f"no echo from {format_address(peer)} on channel {channel:#06x}")
    if item.channel is None:
        return Verdict.failed("the echo came back in a Data indication although a channel "
                              "is bound to the peer (RFC 8656 §12.5: MUST use ChannelData)")
    if item.channel != channel:
        return Verdict.failed(f"the echo came back on channel {item.channel:#06x}, "
                              f"expected {channel:#06x}")
    return Verdict.passed(f"echo came back on channel {channel:#06x}")


async def _not_relayed(
    ctx: CheckContext, alloc: _Allocation, peer: Address, payload: bytes
) -> str | None:
    """Send ``payload`` to ``peer`` in a Send indication (and, with the loopback echo, from
    the peer to the relayed address); why it was relayed, or None when it was not."""
    indication = Message(
        Method.SEND, MessageClass.INDICATION, _tid(), [XorPeerAddress(*peer), Data(payload)]
    ).encode(fingerprint=True)
    alloc.link.send(indication)
    echo = await ctx.local_echo()
    inbound = payload + b" inbound"
    if echo is not None:
        echo.sendto(inbound, alloc.relayed)

    def relayed(item: Inbound) -> bool:
        data = item.data
        if item.message is not None:
            attr = item.message.get(Data)
            data = attr.value if attr is not None else b""
        return data in (payload, inbound)

    item = await alloc.link.receive_matching(relayed, ctx.quiet)
    if echo is not None and echo.source_of(payload) is not None:
        return "the Send indication reached the peer"
    if item is not None:
        return "data from the peer was relayed to the client"
    return None


@_probe(
    "turn.no-permission",
    "Without a permission, data is not relayed (neither the client's Send nor the peer's "
    "datagrams)",
    "RFC 8656 §9, §11.2",
    Level.MUST,
)
async def _probe_no_permission(ctx: CheckContext) -> Verdict:
    peer = await ctx.data_peer()
    alloc = await ctx.allocate()
    wrong = await _not_relayed(ctx, alloc, peer, _payload("no-permission"))
    if wrong:
        return Verdict.failed(f"no permission for {peer[0]}, yet {wrong}")
    both = "either way" if await ctx.local_echo() is not None else "(no echo came back)"
    return Verdict.passed(f"nothing relayed {both} within {ctx.quiet:g} s")


@_probe(
    "turn.permission-expiry",
    "A permission expires after 300 s without a refresh: data is no longer relayed",
    "RFC 8656 §9",
    Level.MUST,
    slow=True,
)
async def _probe_permission_expiry(ctx: CheckContext) -> Verdict:
    alloc, peer = await _data_allocation(ctx)
    loop = asyncio.get_running_loop()
    installed = loop.time()
    payload = _payload("before-expiry")
    indication = Message(
        Method.SEND, MessageClass.INDICATION, _tid(), [XorPeerAddress(*peer), Data(payload)]
    ).encode(fingerprint=True)

    def is_echo(item: Inbound) -> bool:
        attr = item.message.get(Data) if item.message is not None else None
        return attr is not None and attr.value == payload

    item = None
    for _ in range(3):
        alloc.link.send(indication)
        item = await alloc.link.receive_matching(is_echo, ctx.config.timeout / 3)
        if item is not None:
            break
    if item is None:
        raise ProbeSkipped("data does not flow even with a fresh permission; see turn.send-data")
    lifetime = ctx.config.permission_lifetime
    margin = max(1.0, 0.05 * lifetime)
    await asyncio.sleep(max(0.0, installed + lifetime + margin - loop.time()))
    wrong = await _not_relayed(ctx, alloc, peer, _payload("after-expiry"))
    waited = loop.time() - installed
    if wrong:
        return Verdict.failed(f"{waited:.0f} s after the permission was installed, {wrong}")
    return Verdict.passed(f"relayed at first, nothing relayed {waited:.0f} s later")


@_probe(
    "turn.no-allocation",
    "Refresh, CreatePermission and ChannelBind on a 5-tuple without an allocation get 437",
    "RFC 8656 §5",
    Level.MUST,
)
async def _probe_no_allocation(ctx: CheckContext) -> Verdict:
    peer = XorPeerAddress(*DOCUMENTATION_PEER)
    requests: list[tuple[int, list[Attribute]]] = [
        (Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)]),
        (Method.CREATE_PERMISSION, [peer]),
        (Method.CHANNEL_BIND, [ChannelNumber(FIRST_CHANNEL), peer]),
    ]
    answers, wrong = [], []
    for method, attrs in requests:
        turn = _Turn(await ctx.link(), ctx.credentials())
        await _challenge_on(turn)
        response = await turn.request(method, attrs)
        code = _code(response)
        if code == 0:
            ctx.track(turn, response)  # a server that allocated on the fly: release it
        if code == 401:
            raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
        answers.append(f"{_name(method)} {_describe(response)}")
        if code != 437:
            wrong.append(f"{_name(method)} answered {_describe(response)}")
    if wrong:
        return Verdict.failed(f"{'; '.join(wrong)} (expected 437)")
    return Verdict.passed("437 to " + ", ".join(_name(m) for m, _ in requests))


@_probe(
    "turn.allocation-mismatch",
    "A second Allocate on a 5-tuple that has an allocation is refused with 437",
    "RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_allocation_mismatch(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    response = await alloc.turn.request(
        Method.ALLOCATE, [RequestedTransport(TransportProtocol.UDP)]
    )
    code = _code(response)
    if code == 0:
        return Verdict.failed("a second Allocate (new transaction) on the same 5-tuple succeeded")
    if code != 437:
        return Verdict.failed(f"answered {_describe(response)}, expected 437")
    return Verdict.passed("437 to a second Allocate on the same 5-tuple")


@_probe(
    "turn.missing-transport",
    "An Allocate without REQUESTED-TRANSPORT is refused with 400",
    "RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_missing_transport(ctx: CheckContext) -> Verdict:
    turn = _Turn(await ctx.link(), ctx.credentials())
    await _challenge_on(turn)  # a complete Allocate draws the 401; the signed one lacks it
    response = await turn.request(Method.ALLOCATE, [])
    return _expect_refusal(ctx, turn, response, 400, "an Allocate without REQUESTED-TRANSPORT")


async def _challenge_on(turn: _Turn) -> None:
    """Take the 401 challenge on ``turn``'s link with a well-formed unsigned Allocate, so
    that the malformed request of a probe goes out signed (skips the probe if impossible)."""
    if turn.credentials.ready:
        return
    msg = (
        await _transact(
            turn.link,
            _request(Method.ALLOCATE, RequestedTransport(TransportProtocol.UDP)),
            "Allocate",
        )
    ).message
    if _code(msg) != 401:
        raise ProbeSkipped(f"no 401 challenge ({_describe(msg)}); see turn.auth-challenge")
    turn.challenge = msg
    try:
        turn.credentials.challenge(msg)
    except CredentialsRejected as exc:
        raise ProbeSkipped(f"cannot use the 401 challenge: {exc}") from None


def _expect_refusal(
    ctx: CheckContext, turn: _Turn, response: Message, expected: int, what: str
) -> Verdict:
    code = _code(response)
    if code == 0:
        ctx.track(turn, response)
        return Verdict.failed(f"{what} succeeded")
    if code == 401:
        raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
    if code != expected:
        return Verdict.failed(f"{what} answered {_describe(response)}, expected {expected}")
    return Verdict.passed(f"{expected} to {what}")


@_probe(
    "turn.unsupported-transport",
    f"An Allocate for a transport the server does not relay (protocol {UNSUPPORTED_PROTOCOL}) "
    "is refused with 442",
    "RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_unsupported_transport(ctx: CheckContext) -> Verdict:
    turn = _Turn(await ctx.link(), ctx.credentials())
    await _challenge_on(turn)
    response = await turn.request(Method.ALLOCATE, [RequestedTransport(UNSUPPORTED_PROTOCOL)])
    return _expect_refusal(
        ctx, turn, response, 442, f"REQUESTED-TRANSPORT {UNSUPPORTED_PROTOCOL}"
    )


@_probe(
    "turn.dont-fragment",
    "An Allocate with DONT-FRAGMENT succeeds, or is refused with 420 listing it (the server "
    "cannot set DF); when it succeeds, a Send indication carrying it is relayed",
    "RFC 8656 §7.2, §11.2",
    Level.MUST,
)
async def _probe_dont_fragment(ctx: CheckContext) -> Verdict:
    turn = _Turn(await ctx.link(), ctx.credentials())
    response = await turn.request(
        Method.ALLOCATE, [RequestedTransport(TransportProtocol.UDP), DontFragment()]
    )
    code = _code(response)
    if code == 401:
        raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
    if code == 420:
        unknown = response.get(UnknownAttributes)
        if unknown is None or AttrType.DONT_FRAGMENT not in unknown.types:
            listed = ", ".join(f"{t:#06x}" for t in unknown.types) if unknown else "none"
            return Verdict.failed(
                f"420 without UNKNOWN-ATTRIBUTES listing DONT-FRAGMENT (0x001a) (listed: {listed})"
            )
        return Verdict.passed(
            "not supported: 420 with UNKNOWN-ATTRIBUTES DONT-FRAGMENT (0x001a); clients retry "
            "without it (§7.4)"
        )
    if code != 0:
        return Verdict.failed(
            f"answered {_describe(response)}, expected success or 420 listing DONT-FRAGMENT"
        )
    alloc = ctx.track(turn, response)
    supported = "supported: the Allocate with DONT-FRAGMENT succeeded"
    try:
        peer = await ctx.data_peer()
    except ProbeSkipped as exc:
        return Verdict.passed(f"{supported} (Send indication not tried: {exc.detail})")
    permission = await turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(*peer)])
    if _code(permission) != 0 or not alloc.relayed[0]:
        return Verdict.passed(
            f"{supported} (Send indication not tried: CreatePermission for {peer[0]} "
            f"answered {_describe(permission)})"
        )
    wrong = await _send_round_trip(ctx, alloc, peer, _payload("dont-fragment"), DontFragment())
    if wrong:
        return Verdict.failed(f"{supported}, but a Send indication carrying it: {wrong}")
    return Verdict.passed(f"{supported}; a Send indication carrying it was relayed and echoed")


async def _release(alloc: _Allocation) -> Verdict | None:
    """Refresh with LIFETIME 0; a failing verdict when that is not a success."""
    response = await alloc.turn.request(Method.REFRESH, [Lifetime(0)])
    if _code(response) != 0:
        return Verdict.failed(f"Refresh with LIFETIME 0 answered {_describe(response)}")
    alloc.released = True
    return None


@_probe(
    "turn.release",
    f"Refresh with LIFETIME 0 deletes the allocation: within {RELEASE_WAIT:g} s, requests on "
    "the 5-tuple get 437",
    "RFC 8656 §8.2, §5",
    Level.MUST,
)
async def _probe_release(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    failed = await _release(alloc)
    if failed is not None:
        return failed
    loop = asyncio.get_running_loop()
    released = loop.time()
    # CreatePermission, unlike Refresh, cannot extend the allocation's life while it is
    # being deleted: poll with it until it fails (437, RFC 8656 §5; turn.no-allocation
    # checks the code).
    probe = [XorPeerAddress(*DOCUMENTATION_PEER)]
    while True:
        if alloc.link.closed:
            return Verdict.passed(f"released; then {alloc.link.closed}")
        try:
            response = await alloc.turn.request(Method.CREATE_PERMISSION, probe)
        except ProbeFailed:
            if alloc.link.closed:
                return Verdict.passed(f"released; then {alloc.link.closed}")
            raise
        waited = loop.time() - released
        if _code(response) != 0:
            break
        if waited > RELEASE_WAIT:
            return Verdict.failed(
                f"{waited:.1f} s after the release, CreatePermission still succeeds: the "
                "allocation lives on"
            )
        await asyncio.sleep(0.25)
    after = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    if _code(after) == 0:
        alloc.released = False
        return Verdict.failed("a Refresh after the deletion succeeded: the allocation came back")
    if _code(after) != 437:
        return Verdict.failed(
            f"a Refresh after the release answered {_describe(after)}, expected 437"
        )
    when = "at once" if waited < 0.1 else f"{waited:.1f} s later"
    return Verdict.passed(f"released; gone {when} (a Refresh then got 437)")


@_probe(
    "turn.release-immediate",
    "The deletion is immediate: a Refresh right after the release gets 437 instead of "
    "reviving the allocation",
    "RFC 8656 §8.2",
    Level.SHOULD,
)
async def _probe_release_immediate(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    failed = await _release(alloc)
    if failed is not None:
        return failed
    if alloc.link.closed:
        return Verdict.passed(f"released ({alloc.link.closed})")
    after = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    code = _code(after)
    if code == 0:
        alloc.released = False
        return Verdict.finding(
            "deletion is deferred: a Refresh right after the release succeeded and the "
            "allocation lived on"
        )
    if code != 437:
        return Verdict.failed(f"a Refresh right after the release answered {_describe(after)}, "
                              "expected 437")
    return Verdict.passed("a Refresh right after the release got 437")


async def _peer_policy(ctx: CheckContext, ips: Sequence[str], what: str) -> Verdict:
    alloc = await ctx.allocate()
    accepted, refused = [], []
    for ip in ips:
        response = await alloc.turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(ip, 9)])
        if _code(response) == 0:
            accepted.append(ip)
        else:
            refused.append(f"{ip} {_describe(response)}")
    if accepted:
        return Verdict.finding(
            f"{what} accepted ({', '.join(accepted)}): clients can relay to them through the "
            "server (CVE-2020-26262 class); refuse them in production"
        )
    return Verdict.passed(f"refused: {'; '.join(refused)}")


@_probe(
    "turn.peer-loopback",
    "Loopback peers are refused (CreatePermission for 127.0.0.1)",
    "RFC 8656 §10.2, §21.2.2; CVE-2020-26262",
    Level.SHOULD,
)
async def _probe_peer_loopback(ctx: CheckContext) -> Verdict:
    return await _peer_policy(ctx, ["127.0.0.1"], "loopback peers")


@_probe(
    "turn.peer-unspecified",
    "The unspecified address 0.0.0.0 (which reaches the server's own host) is refused as a peer",
    "RFC 8656 §10.2, §21.2.2; CVE-2020-26262",
    Level.SHOULD,
)
async def _probe_peer_unspecified(ctx: CheckContext) -> Verdict:
    return await _peer_policy(ctx, ["0.0.0.0"], "the unspecified address")


@_probe(
    "turn.peer-private",
    "Private and link-local peers (RFC 1918, RFC 3927) are refused",
    "RFC 8656 §10.2, §21.2.2",
    Level.SHOULD,
)
async def _probe_peer_private(ctx: CheckContext) -> Verdict:
    return await _peer_policy(
        ctx, ["10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254"], "private peers"
    )
