"""aioice's public surface over Anchor's ICE: :class:`Candidate`, :class:`Connection`,
:class:`ConnectionClosed`, :class:`TransportPolicy` (aioice 0.13, RFC 8445).

Theory of operation
-------------------
This module is a drop-in for ``aioice`` (``from aioice import Candidate, Connection,
ConnectionClosed, TransportPolicy``, as aiortc's ``rtcicetransport`` does): the names, the
constructor arguments, the attributes and the errors are aioice's; the ICE underneath is
Anchor's :class:`anchor_ice.aio.connection.Connection` (RFC 8445 regular nomination, consent
freshness of RFC 7675, the gateway policy...). :func:`anchor_ice.compat.install_aioice`
makes ``import aioice`` resolve here.

* :class:`Candidate` has aioice's fields (``host``, ``related_address``, ``generation``...)
  and its SDP form (the ``candidate:`` attribute of RFC 8839 §5.1 without its name); the
  line is parsed by Anchor's :meth:`anchor_ice.candidate.Candidate.from_sdp`, so junk is a
  :class:`CandidateValueError` (a :class:`~anchor_ice.candidate.CandidateError` and the
  ``ValueError`` aioice raises), and written exactly as aioice writes it.
* :class:`Connection` wraps one Anchor connection (:attr:`Connection.anchor`), converts
  candidates both ways, keeps aioice's settable ``ice_controlling`` (until :meth:`connect`)
  and ``remote_is_lite``, and reports the end of the connection by :meth:`get_event` as
  aioice does: one :class:`ConnectionClosed` when it closes, which it does by itself when
  consent is lost (RFC 7675 §5.1).
* Anchor-only options are keyword arguments: ``policy`` (``"standard"``, ``"gateway"``,
  ``"relay"``), ``nominator``, ``host_ips``, ``include_loopback``, ``interfaces``,
  ``port_range``, ``ta``, ``checking_timeout``, ``gather_timeout``... (see
  :class:`anchor_ice.aio.connection.Connection`). ``transport_policy=TransportPolicy.RELAY``
  is the ``"relay"`` policy.

Differences from aioice worth knowing: ``turn_ssl=True`` needs ``turn_transport="tcp"``
(TLS runs over TCP; aioice would ignore it over UDP); remote mDNS (``*.local``) candidates are
ignored rather than resolved; when the machine has no usable address but loopback, host
candidates are gathered on loopback (aioice gathers none, and aiortc then never connects);
a policy that can offer no candidate makes :meth:`Connection.gather_candidates` raise
:class:`~anchor_ice.aio.connection.IceFailedError` with the way out (aiortc would not start
ICE at all without a local candidate, and so never report a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from anchor_ice.agent import IceState
from anchor_ice.aio.connection import Connection as AnchorConnection
from anchor_ice.aio.connection import IceFailedError, IceNotConnectedError
from anchor_ice.aio.gather import host_addresses
from anchor_ice.candidate import Candidate as AnchorCandidate
from anchor_ice.candidate import CandidateError, CandidateType
from anchor_ice.events import PairInfo
from anchor_stun.errors import LocalProtocolError

__all__ = [
    "AIOICE_VERSION",
    "Candidate",
    "CandidateValueError",
    "Connection",
    "ConnectionClosed",
    "ConnectionEvent",
    "LocalValueError",
    "TransportPolicy",
    "UnsupportedOption",
]

AIOICE_VERSION = "0.13.0"
"""The aioice release whose public surface this module reproduces."""

_LOOPBACK = {4: "127.0.0.1", 6: "::1"}


class UnsupportedOption(LocalProtocolError, NotImplementedError):
    """An aioice option Anchor's connection cannot honour yet (TURN over TCP or TLS,
    RFC 6062 / RFC 8656 §3.1; a forced pair for a peer without ICE)."""


class LocalValueError(LocalProtocolError, ValueError):
    """A call aioice refuses with a ``ValueError`` (a candidate after end-of-candidates)."""


class CandidateValueError(CandidateError, ValueError):
    """A candidate line that does not follow RFC 8839 §5.1: a
    :class:`~anchor_ice.candidate.CandidateError` that is also the ``ValueError`` aioice
    raises."""


class TransportPolicy(enum.Enum):
    """aioice's transport policy (RFC 9429 §4.1.1 ``iceTransportPolicy``)."""

    ALL = 0
    """Every candidate: Anchor's ``policy`` (``"standard"`` unless set otherwise) decides."""
    RELAY = 1
    """Relayed candidates only: Anchor's ``"relay"`` policy."""


class ConnectionEvent:
    """Base of what :meth:`Connection.get_event` returns."""


class ConnectionClosed(ConnectionEvent):
    """The connection closed: :meth:`Connection.close` was called, or consent was lost
    (RFC 7675 §5.1) and the connection closed itself."""


class Candidate:
    """An ICE candidate (RFC 8445 §5.1) with aioice's fields, mutable like aioice's."""

    def __init__(
        self,
        foundation: str,
        component: int,
        transport: str,
        priority: int,
        host: str,
        port: int,
        type: str,
        related_address: str | None = None,
        related_port: int | None = None,
        tcptype: str | None = None,
        generation: int | None = None,
    ) -> None:
        self.foundation = foundation
        """Groups candidates for unfreezing (RFC 8445 §5.1.1.3)."""
        self.component = component
        """Component id, 1 for the first (RFC 8445 §4)."""
        self.transport = transport
        """``udp`` (as written in the SDP line; ``tcp`` for RFC 6544 candidates)."""
        self.priority = priority
        """Candidate priority (RFC 8445 §5.1.2)."""
        self.host = host
        """Connection address (an IP, or an mDNS name)."""
        self.port = port
        """Port."""
        self.type = type
        """``host``, ``srflx``, ``prflx`` or ``relay``."""
        self.related_address = related_address
        """``raddr`` (RFC 8839 §5.1)."""
        self.related_port = related_port
        """``rport``."""
        self.tcptype = tcptype
        """``tcptype`` of RFC 6544."""
        self.generation = generation
        """``generation`` (a Chrome extension that aioice keeps)."""

    @classmethod
    def from_sdp(cls, sdp: str) -> Candidate:
        """Parse the value of a ``candidate`` attribute without its name, as aioice does:
        ``'6815297761 1 udp 659136 1.2.3.4 31102 typ host generation 0'`` (RFC 8839 §5.1).
        Raises :class:`CandidateValueError` (a ``ValueError``, as aioice raises)."""
        fields = sdp.split()
        try:
            anchor = AnchorCandidate.from_sdp("candidate:" + " ".join(fields))
        except CandidateError as exc:
            raise CandidateValueError(str(exc), field=exc.field) from None
        return cls.from_anchor(anchor, transport=fields[2])

    def to_sdp(self) -> str:
        """The attribute value aioice writes: the standard fields, then ``raddr``, ``rport``,
        ``tcptype`` and ``generation`` when set (RFC 8839 §5.1)."""
        sdp = (
            f"{self.foundation} {self.component} {self.transport} "
            f"{self.priority} {self.host} {self.port} typ {self.type}"
        )
        if self.related_address is not None:
            sdp += f" raddr {self.related_address}"
        if self.related_port is not None:
            sdp += f" rport {self.related_port}"
        if self.tcptype is not None:
            sdp += f" tcptype {self.tcptype}"
        if self.generation is not None:
            sdp += f" generation {self.generation}"
        return sdp

    @classmethod
    def from_anchor(cls, candidate: AnchorCandidate, *, transport: str | None = None) -> Candidate:
        """The aioice form of an Anchor candidate (``transport``: the spelling to keep)."""
        generation = dict(candidate.extensions).get("generation")
        return cls(
            foundation=candidate.foundation,
            component=candidate.component,
            transport=transport if transport is not None else candidate.transport,
            priority=candidate.priority,
            host=candidate.ip,
            port=candidate.port,
            type=str(candidate.type),
            related_address=candidate.related_ip,
            related_port=candidate.related_port,
            tcptype=candidate.tcptype,
            generation=int(generation) if generation and generation.isdigit() else None,
        )

    def to_anchor(self) -> AnchorCandidate:
        """The Anchor form of this candidate; raises
        :class:`CandidateValueError` for an unknown type."""
        try:
            kind = CandidateType(self.type)
        except ValueError:
            raise CandidateValueError(f"unknown candidate type {self.type!r}", field="typ") from None
        extensions = () if self.generation is None else (("generation", str(self.generation)),)
        return AnchorCandidate(
            foundation=self.foundation,
            component=self.component,
            transport=self.transport.lower(),
            priority=self.priority,
            ip=self.host,
            port=self.port,
            type=kind,
            related_ip=self.related_address,
            related_port=self.related_port,
            tcptype=self.tcptype,
            extensions=extensions,
        )

    def can_pair_with(self, other: Candidate) -> bool:
        """Same component, transport and IP family (RFC 8445 §6.1.2.2)."""
        return (
            self.component == other.component
            and self.transport.lower() == other.transport.lower()
            and self.to_anchor().family == other.to_anchor().family
        )

    def __repr__(self) -> str:
        return f"Candidate({self.to_sdp()})"


def _port_range(ports: Iterable[int] | None) -> tuple[int, int] | None:
    """aioice's ``ephemeral_ports`` (ports to pick from) as Anchor's inclusive range."""
    if ports is None:
        return None
    chosen = sorted(set(ports))
    if not chosen or chosen[-1] - chosen[0] + 1 != len(chosen):
        raise UnsupportedOption("ephemeral_ports must be one contiguous range of ports")
    return (chosen[0], chosen[-1])


class Connection:
    """An ICE connection for one data stream (RFC 8445) with aioice's surface, over
    Anchor's :class:`~anchor_ice.aio.connection.Connection` (:attr:`anchor`).

    aioice's arguments: ``ice_controlling``, ``components``, ``stun_server`` and
    ``turn_server`` (``(host, port)``), ``turn_username`` / ``turn_password``, ``turn_ssl``
    and ``turn_transport`` (TURN over UDP, TCP or TLS, RFC 8656 §3.1), ``use_ipv4`` / ``use_ipv6``, ``transport_policy``, ``local_username`` /
    ``local_password``, and ``ephemeral_ports`` (older aioice: one contiguous range). Every
    other keyword goes to Anchor's connection (``policy``, ``nominator``, ``host_ips``...);
    :attr:`options` holds defaults for them (what :func:`~anchor_ice.compat.install_aioice`
    sets for every connection aiortc creates).
    """

    options: ClassVar[Mapping[str, Any]] = {}
    """Defaults for Anchor's keyword arguments; the ones given to the constructor win."""

    def __init__(
        self,
        ice_controlling: bool,
        components: int = 1,
        stun_server: tuple[str, int] | None = None,
        turn_server: tuple[str, int] | None = None,
        turn_username: str | None = None,
        turn_password: str | None = None,
        turn_ssl: bool = False,
        turn_transport: str = "udp",
        use_ipv4: bool = True,
        use_ipv6: bool = True,
        transport_policy: TransportPolicy = TransportPolicy.ALL,
        local_username: str | None = None,
        local_password: str | None = None,
        ephemeral_ports: Iterable[int] | None = None,
        **anchor_options: Any,
    ) -> None:
        if not isinstance(transport_policy, TransportPolicy):
            # another module's TransportPolicy (aioice's own, say): by its name
            transport_policy = TransportPolicy[str(getattr(transport_policy, "name", ""))]
        options: dict[str, Any] = {**self.options, **anchor_options}
        if transport_policy is TransportPolicy.RELAY:
            options["policy"] = "relay"
            options.pop("nominator", None)
        port_range = _port_range(ephemeral_ports)
        if port_range is not None:
            options["port_range"] = port_range
        if "host_ips" not in options and not options.get("include_loopback"):
            families = tuple(f for f, on in ((4, use_ipv4), (6, use_ipv6)) if on)
            if families and not host_addresses(
                interfaces=options.get("interfaces"), families=families
            ):
                options["host_ips"] = [_LOOPBACK[f] for f in families]
        self.stun_server = stun_server
        """The STUN server, ``(host, port)``, or None."""
        self.turn_server = turn_server
        """The TURN server, ``(host, port)``, or None."""
        self.turn_username = turn_username
        """The TURN user name (RFC 8489 §9.2)."""
        self.turn_password = turn_password
        """The TURN password."""
        self.turn_ssl = turn_ssl
        """Whether the TURN server is reached over TLS."""
        self.turn_transport = turn_transport
        """``"udp"`` or ``"tcp"``: how the TURN server is reached."""
        self.remote_is_lite = False
        """Whether the peer is an ICE-lite agent (RFC 8445 §2.5); when it is, :meth:`connect`
        takes the controlling role if it was not given (RFC 8445 §6.1.1)."""
        self._anchor = AnchorConnection(
            ice_controlling,
            components=components,
            stun_server=stun_server,
            turn_server=turn_server,
            turn_username=turn_username,
            turn_password=turn_password,
            turn_transport=turn_transport.lower(),
            turn_ssl=turn_ssl,
            use_ipv4=use_ipv4,
            use_ipv6=use_ipv6,
            local_username=local_username,
            local_password=local_password,
            **options,
        )
        self._remote_candidates_end = False
        self._closed = False
        self._event_waiter: asyncio.Future[ConnectionEvent] | None = None
        self._watch: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def anchor(self) -> AnchorConnection:
        """The Anchor connection underneath (its ``selected_pair``, ``agent``, ...)."""
        return self._anchor

    @property
    def selected_pair(self) -> PairInfo | None:
        """The pair component 1's data goes on (Anchor's; aioice keeps it private)."""
        return self._anchor.selected_pair

    @property
    def ice_controlling(self) -> bool:
        """True in the controlling role; settable until :meth:`connect` (RFC 8445 §6.1.1)."""
        return self._anchor.ice_controlling

    @ice_controlling.setter
    def ice_controlling(self, value: bool) -> None:
        self._anchor.ice_controlling = value

    @property
    def local_username(self) -> str:
        """The local ufrag (RFC 8445 §5.3)."""
        return self._anchor.local_username

    @property
    def local_password(self) -> str:
        """The local password (RFC 8445 §5.3)."""
        return self._anchor.local_password

    @property
    def remote_username(self) -> str | None:
        """The peer's ufrag; set it from the signalling."""
        return self._anchor.remote_username

    @remote_username.setter
    def remote_username(self, value: str | None) -> None:
        self._anchor.remote_username = value

    @property
    def remote_password(self) -> str | None:
        """The peer's password; set it from the signalling."""
        return self._anchor.remote_password

    @remote_password.setter
    def remote_password(self, value: str | None) -> None:
        self._anchor.remote_password = value

    @property
    def local_candidates(self) -> list[Candidate]:
        """The candidates to signal (the policy's: a gateway policy hides host ones)."""
        if self._closed:
            return []
        return [Candidate.from_anchor(c) for c in self._anchor.local_candidates]

    @property
    def remote_candidates(self) -> list[Candidate]:
        """Remote candidates, signalled and learned (peer-reflexive)."""
        return [Candidate.from_anchor(c) for c in self._anchor.remote_candidates]

    # ------------------------------------------------------------------ aioice's methods

    async def gather_candidates(self) -> None:
        """Gather local candidates (RFC 8445 §5.1.1); call it before :meth:`connect`.

        When the policy can offer no candidate (the gateway policy with no STUN server that
        answers and no TURN server, say), this raises :class:`IceFailedError` naming what
        gathering gave up on and the way out, where Anchor's own connection waits for
        :meth:`connect` to fail: aiortc starts ICE only once it has local candidates, and
        would otherwise wait for ever without a word."""
        await self._anchor.gather_candidates()
        failures = self._anchor.gather_failures
        if any(failure.kind == "policy" for failure in failures):
            raise IceFailedError("; ".join(str(failure) for failure in failures))

    def get_default_candidate(self, component: int) -> Candidate | None:
        """The lowest-priority local candidate of ``component``, as aioice picks it (the
        one most likely to work: RFC 8445 §5.1.4 default candidate)."""
        for candidate in sorted(self.local_candidates, key=lambda c: c.priority):
            if candidate.component == component:
                return candidate
        return None

    async def add_remote_candidate(self, remote_candidate: Candidate | None) -> None:
        """Add a remote candidate, or None for end-of-candidates (RFC 8838). As aioice: a
        candidate after end-of-candidates is a ``ValueError``, after :meth:`close` it is
        ignored."""
        if self._remote_candidates_end:
            raise LocalValueError("Cannot add remote candidate after end-of-candidates.")
        if self._closed:
            return
        if remote_candidate is None:
            self._remote_candidates_end = True
            await self._anchor.add_remote_candidate(None)
            return
        await self._anchor.add_remote_candidate(remote_candidate.to_anchor())

    async def connect(self) -> None:
        """Run connectivity checks until every component has a selected pair (RFC 8445
        §8.1); raises a ``ConnectionError`` when ICE fails. Then watches consent (RFC 7675):
        when it is lost, the connection closes and :meth:`get_event` says so."""
        if self.remote_is_lite and not self.ice_controlling and self._anchor.state is IceState.NEW:
            self.ice_controlling = True  # RFC 8445 §6.1.1: the full agent controls
        await self._anchor.connect()
        if self._watch is None and not self._closed:
            self._watch = asyncio.get_running_loop().create_task(self._watch_consent())

    async def _watch_consent(self) -> None:
        reason = await self._anchor.wait_ended()
        if reason is not None and not self._closed:
            self._watch = None  # close() must not cancel the task it runs in
            await self.close()

    async def close(self) -> None:
        """Close the connection: stop ICE, release TURN allocations (RFC 8656 §8.1), close
        every socket; then :meth:`get_event` reports :class:`ConnectionClosed`."""
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await self._anchor.close()
        if not self._closed:
            self._closed = True
            waiter, self._event_waiter = self._event_waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(ConnectionClosed())

    async def get_event(self) -> ConnectionEvent | None:
        """The next event (:class:`ConnectionClosed`), or None once closed. One caller at
        a time, as in aioice."""
        if self._event_waiter is not None:
            raise LocalProtocolError("already awaiting an event")
        if self._closed:
            return None
        self._event_waiter = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._event_waiter)

    async def recv(self) -> bytes:
        """The next datagram; a ``ConnectionError`` when not connected or once closed."""
        data, _ = await self.recvfrom()
        return data

    async def recvfrom(self) -> tuple[bytes, int]:
        """The next datagram and its component; a ``ConnectionError`` when not connected
        (as aioice) or once closed or failed."""
        if not self._anchor.selected_pairs and not self._anchor.closed:
            raise IceNotConnectedError("Cannot receive data, not connected")
        return await self._anchor.recvfrom()

    async def send(self, data: bytes) -> None:
        """Send a datagram on component 1; a ``ConnectionError`` when not connected."""
        await self._anchor.send(data)

    async def sendto(self, data: bytes, component: int) -> None:
        """Send a datagram on ``component``; a ``ConnectionError`` when not connected."""
        await self._anchor.sendto(data, component)

    def set_selected_pair(
        self, component: int, local_foundation: str, remote_foundation: str
    ) -> None:
        """aioice's forced pair for a peer without ICE: not supported (Anchor always checks
        connectivity, RFC 8445 §7)."""
        raise UnsupportedOption("set_selected_pair: Anchor selects pairs by ICE checks only")

    def __repr__(self) -> str:
        return f"<aioice-compatible {self._anchor!r}>"

