"""The TURN client allocation state machine, sans-I/O (RFC 8656 §6-§12).

Theory of operation
-------------------
A :class:`TurnClient` is one allocation on one TURN server, over one 5-tuple. It never touches a
socket or a clock: the adapter feeds it what the server sends (``receive_datagram``), sends what
it asks for (``datagrams_to_send``), calls ``handle_timer(now)`` at ``next_timer()`` and reads
results from ``next_event()``. Requests go through an :class:`~anchor_stun.transaction.StunClient`
(retransmission per RFC 8489 §6.2; over TCP/TLS ``reliable=True``: one send, timeout Ti).

States and the commands each accepts (every transition is in :data:`_TRANSITIONS`; a command in
another state raises :class:`LocalProtocolError` and changes nothing)::

    IDLE --allocate()--> ALLOCATING --success--> ALLOCATED --release()--> RELEASING --> RELEASED
                             |                       |  create_permission(), bind_channel(),
                   error, timeout, 300               |  send(), refresh(), automatic refreshes
                             v                       +--lifetime ran out / 437 to a Refresh--> EXPIRED
                           FAILED

FAILED, RELEASED and EXPIRED are final: a new allocation takes a new client (and, after 437,
RFC 8656 §7.4 wants a new client transport address anyway).

Authentication (RFC 8489 §9.2, RFC 8656 §7.1): the first Allocate goes unsigned; its 401 feeds
:meth:`LongTermCredentials.challenge` and the Allocate is repeated, signed, in a new transaction.
From then on every request is signed with the same credentials. A 438 Stale Nonce to any request
is fed to ``challenge()`` too and the request is repeated once with the new nonce (new
transaction id); a second 438 for it, or a 401 to a signed request, fails it. Responses to signed
requests must carry a MESSAGE-INTEGRITY(-SHA256) that verifies, except 401 and 438 (RFC 8489
§9.2.5). One that does not is discarded as if never received: over UDP the transaction keeps
retransmitting and, if nothing better arrives, ends with "integrity" instead of "timeout"; over
TCP/TLS the transaction ends at once. That check sits here, before the response reaches the
StunClient, which has no verification hook of its own.

Refresh timing. Every deadline is counted from the moment the request that earned it was first
sent, which errs on the safe side (the server starts its clock when it receives the request).
One rule serves the allocation, permissions and channels: refresh ``refresh_margin`` seconds
(default 60) before expiry, but never earlier than half the lifetime::

    refresh_after(L) = max(L - refresh_margin, L / 2)

So a 600 s allocation is refreshed at 540 s (RFC 8656 §8 suggests "roughly 1 minute before it
expires"), a 100 s one at 50 s, permissions (300 s, RFC 8656 §9) at 240 s and channel bindings
(600 s, RFC 8656 §12) at 540 s. Others choose differently: pion/turn refreshes the allocation every
lifetime/2 and every permission each 120 s and re-binds a channel lazily on a write 5 minutes after
its last bind (``internal/client/udp_conn.go``); libjuice refreshes the allocation at a fixed
600 s - 60 s and counts permissions and bindings valid for half their lifetime (``agent.c``:
``TURN_REFRESH_PERIOD``, ``PERMISSION_LIFETIME / 2``, ``BIND_LIFETIME / 2``); ice4j reinstalls
permissions 60 s before they expire (``PERMISSION_LIFETIME_LEEWAY``). A margin gives a lost
request Ti = 39.5 s of retransmissions and still leaves time; the half-lifetime floor keeps short
lifetimes from being refreshed in a loop. Refreshes carry on until ``release()`` or expiry.
Permissions of every peer whose refresh is due go in one CreatePermission (at most
:data:`MAX_PEERS_PER_REQUEST` per request); each channel is re-bound on its own, and since a
ChannelBind also refreshes the permission of its peer (RFC 8656 §12.1), a successful re-bind pushes
that permission's deadline too. Permissions still need their own refresh: they last 300 s,
channels 600 s (RFC 8656 §12.1).

Every allocation refresh that succeeds is reported (:class:`AllocationRefreshed`); permission and
channel refreshes succeed silently (:class:`PermissionCreated` and :class:`ChannelBound` answer
commands). A failed automatic refresh is reported (:class:`RefreshFailed`, :class:`PermissionFailed`,
:class:`ChannelBindFailed`) and not retried: the allocation stays until ``expires_at`` (then
:class:`AllocationExpired`; a ``refresh()`` may still save it), while a permission or channel whose
refresh failed is dropped from ``permissions`` / ``channels`` at once. A failed ``refresh()``
leaves the automatic one scheduled.

Data. ``send()`` uses ChannelData when a channel to that exact peer transport address is bound
(padded to 4 bytes over TCP/TLS, RFC 8656 §12.5), else a Send indication (RFC 8656 §11.1). It does
not check permissions: the relay silently drops data to a peer without one, and making sure there
is one (``create_permission`` or ``bind_channel``, then waiting for the event) is the caller's job.
From the server, Data indications are delivered when their peer IP has (or is being given) a
permission (RFC 8656 §11.4), ChannelData when its channel is bound or being bound (RFC 8656 §12:
data may arrive before the ChannelBind response). Anything else, and anything not from the server
address, is dropped and counted in :attr:`TurnClient.dropped`; ``receive_datagram`` never raises.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Literal

from anchor_stun.address import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    count,
    seconds,
    server_address,
)
from anchor_stun.attributes import (
    AdditionalAddressFamily,
    AddressErrorCode,
    AlternateDomain,
    AlternateServer,
    Attribute,
    AttrType,
    ChannelNumber,
    Data,
    DontFragment,
    ErrorCode,
    EvenPort,
    Family,
    Lifetime,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    TransportProtocol,
    UnknownAttributes,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    enum_member,
    pack_ip,
    unpack_ip,
)
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.integrity import CredentialsRejected, LongTermCredentials, opaque_credential
from anchor_stun.message import Message, MessageClass, Method, is_stun
from anchor_stun.transaction import (
    RC,
    RM,
    RTO_INITIAL,
    TI_RELIABLE,
    StunClient,
    TransactionFailed,
    TransactionSucceeded,
    TransactionTimedOut,
)
from anchor_turn.channeldata import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    valid_channel,
)
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

__all__ = [
    "CHANNEL_LIFETIME",
    "CHANNEL_REUSE_DELAY",
    "DEFAULT_LIFETIME",
    "MAX_PEERS_PER_REQUEST",
    "PERMISSION_LIFETIME",
    "REFRESH_MARGIN",
    "TurnClient",
    "TurnState",
    "check_client_options",
]

DEFAULT_LIFETIME = 600  # RFC 8656 §6: allocation lifetime when none is asked for, seconds
PERMISSION_LIFETIME = 300  # RFC 8656 §9: "The Permission Lifetime MUST be 300 seconds"
CHANNEL_LIFETIME = 600  # RFC 8656 §12: "A channel binding lasts for 10 minutes unless refreshed"
CHANNEL_REUSE_DELAY = 300  # RFC 8656 §12: wait 5 minutes after expiry before rebinding elsewhere
REFRESH_MARGIN = 60.0  # RFC 8656 §8: refresh "roughly 1 minute before it expires"
MAX_PEERS_PER_REQUEST = 32
"""XOR-PEER-ADDRESS attributes per CreatePermission (RFC 8656 §10.1 sets no limit; 32 IPv6
addresses keep a signed request under 1 KB, well clear of IP fragmentation)."""

_MAX_U32 = 0xFFFFFFFF
_CHECK_SERVER: Address = ("192.0.2.1", 3478)  # RFC 5737 TEST-NET-1: never contacted
_RESERVED_TOKEN_SIZE = 8  # RFC 8656 §18.9


class TurnState(Enum):
    """Life cycle of a TURN client allocation (RFC 8656 §6-§8)."""

    IDLE = "idle"
    """Nothing sent yet; ``allocate()`` starts."""
    ALLOCATING = "allocating"
    """An Allocate transaction (possibly its authenticated retry) is running (RFC 8656 §7.1)."""
    ALLOCATED = "allocated"
    """The relay exists; permissions, channels, data and refreshes are possible (RFC 8656 §7.3)."""
    RELEASING = "releasing"
    """A Refresh with LIFETIME 0 is deleting the allocation (RFC 8656 §8.1)."""
    RELEASED = "released"
    """The allocation was deleted (or its deletion request ended unanswered). Final."""
    FAILED = "failed"
    """The Allocate failed, or the server redirected the client (300). Final."""
    EXPIRED = "expired"
    """The lifetime ran out without a successful refresh, or a Refresh got 437. Final."""


_S = TurnState
_TRANSITIONS: dict[TurnState, frozenset[TurnState]] = {
    _S.IDLE: frozenset({_S.ALLOCATING}),
    _S.ALLOCATING: frozenset({_S.ALLOCATED, _S.FAILED}),
    _S.ALLOCATED: frozenset({_S.RELEASING, _S.EXPIRED}),
    _S.RELEASING: frozenset({_S.RELEASED}),
    _S.RELEASED: frozenset(),
    _S.FAILED: frozenset(),
    _S.EXPIRED: frozenset(),
}
"""Every state change the client makes: from -> allowed destinations."""

_COMMANDS: dict[str, frozenset[TurnState]] = {
    "allocate": frozenset({_S.IDLE}),
    "create_permission": frozenset({_S.ALLOCATED}),
    "bind_channel": frozenset({_S.ALLOCATED}),
    "send": frozenset({_S.ALLOCATED}),
    "refresh": frozenset({_S.ALLOCATED}),
    "release": frozenset({_S.ALLOCATED}),
}
"""The states in which each command is accepted."""

_RECEIVING = frozenset({_S.ALLOCATED, _S.RELEASING})
"""States in which data from peers is still delivered."""


class _Kind(Enum):
    ALLOCATE = auto()
    REFRESH = auto()
    RELEASE = auto()
    PERMISSION = auto()
    CHANNEL = auto()


_METHODS = {
    _Kind.ALLOCATE: Method.ALLOCATE,
    _Kind.REFRESH: Method.REFRESH,
    _Kind.RELEASE: Method.REFRESH,
    _Kind.PERMISSION: Method.CREATE_PERMISSION,
    _Kind.CHANNEL: Method.CHANNEL_BIND,
}


@dataclass(slots=True)
class _Request:
    """A request in flight and what its outcome means."""

    kind: _Kind
    attributes: list[Attribute]
    sent_at: float = 0.0
    user: bool = True  # started by a command (success events), not by a refresh timer
    signed: bool = False
    challenged: bool = False  # already repeated after a 401
    stale_retried: bool = False  # already repeated after a 438
    integrity_failed: bool = False  # a response was discarded by the integrity check
    peers: tuple[str, ...] = ()
    channel: int = 0
    peer: Address = ("", 0)


@dataclass(slots=True)
class _Permission:
    expires_at: float
    refresh_at: float | None  # None while an automatic refresh is in flight


@dataclass(slots=True)
class _Channel:
    peer: Address
    bound: bool = False
    expires_at: float = 0.0
    refresh_at: float | None = None  # None until bound, and while a re-bind is in flight


@dataclass(slots=True)
class _Outcome:
    code: int
    reason: str


def _chunks(items: list[str], size: int) -> Iterator[tuple[str, ...]]:
    for start in range(0, len(items), size):
        yield tuple(items[start : start + size])


class TurnClient:
    """One TURN allocation, sans-I/O (RFC 8656 §6-§12); see the module docstring.

    ``server`` is the TURN server's transport address: ``(ip, port)`` or the text
    ``"ip:port"`` / ``"[v6]:port"`` (without a port: 3478, 5349 over TLS, RFC 8656 §3.1); an IP
    address, not a name (a core resolves nothing). ``username`` and ``password`` are the
    long-term credentials (RFC 8489 §9.2), non-empty text the OpaqueString profile accepts.
    ``transport`` is the client-server transport: ``"udp"``, or ``"tcp"``/``"tls"`` (reliable
    transactions, padded ChannelData; the adapter frames the stream). The relay side is always
    UDP (REQUESTED-TRANSPORT 17). Allocate options (RFC 8656 §7.1): ``lifetime`` (LIFETIME hint,
    also sent in automatic refreshes), ``family`` (``Family.IPV6`` sends REQUESTED-ADDRESS-FAMILY),
    ``additional_family`` (``Family.IPV6`` asks for a dual allocation with
    ADDITIONAL-ADDRESS-FAMILY), ``even_port`` (None: no EVEN-PORT; False/True: EVEN-PORT with
    that R bit), ``reservation_token`` (RESERVATION-TOKEN; excludes EVEN-PORT and both family
    attributes, RFC 8656 §7.2), ``dont_fragment`` (DONT-FRAGMENT in the Allocate and in every Send
    indication; if the server answers 420 for it the Allocate is repeated without it and Send
    indications leave it out, RFC 8656 §7.4), ``software`` (SOFTWARE in requests).
    ``refresh_margin`` sets the refresh timing described in the module docstring. ``rto``,
    ``rc``, ``rm``, ``ti`` are the StunClient's retransmission parameters (RFC 8489 §6.2).
    ``rng(n)`` returns ``n`` random bytes (transaction ids).
    """

    def __init__(
        self,
        server: Address | str,
        username: str,
        password: str,
        *,
        transport: Literal["udp", "tcp", "tls"] = "udp",
        rng: Callable[[int], bytes] = os.urandom,
        lifetime: int | None = None,
        family: int = Family.IPV4,
        additional_family: int | None = None,
        even_port: bool | None = None,
        reservation_token: bytes | None = None,
        dont_fragment: bool = False,
        software: str | None = None,
        refresh_margin: float = REFRESH_MARGIN,
        rto: float = RTO_INITIAL,
        rc: int = RC,
        rm: int = RM,
        ti: float = TI_RELIABLE,
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise LocalProtocolError(f"transport must be udp, tcp or tls, not {transport!r}")
        default_port = DEFAULT_TLS_PORT if transport == "tls" else DEFAULT_PORT
        host, port = server_address(server, "server", default_port, ip_only=True)
        server_family, packed = pack_ip(host)
        if family not in (Family.IPV4, Family.IPV6):
            raise LocalProtocolError(f"family must be Family.IPV4 or Family.IPV6, not {family!r}")
        if additional_family is not None:
            if additional_family != Family.IPV6:
                raise LocalProtocolError(
                    "ADDITIONAL-ADDRESS-FAMILY can only ask for IPv6 (RFC 8656 §7.2)"
                )
            if family != Family.IPV4:
                raise LocalProtocolError(
                    "a dual allocation cannot also carry REQUESTED-ADDRESS-FAMILY (RFC 8656 §7.2)"
                )
            if even_port:
                raise LocalProtocolError(
                    "EVEN-PORT with the R bit excludes ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2)"
                )
        if reservation_token is not None:
            if not isinstance(reservation_token, bytes):
                raise LocalProtocolError(
                    f"reservation_token must be 8 bytes, not {type(reservation_token).__name__}"
                )
            if len(reservation_token) != _RESERVED_TOKEN_SIZE:
                raise LocalProtocolError("RESERVATION-TOKEN must be 8 bytes (RFC 8656 §18.9)")
            if even_port is not None or family != Family.IPV4 or additional_family is not None:
                raise LocalProtocolError(
                    "RESERVATION-TOKEN excludes EVEN-PORT, REQUESTED-ADDRESS-FAMILY and "
                    "ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2)"
                )
        if lifetime is not None and not (isinstance(lifetime, int) and 0 < lifetime <= _MAX_U32):
            raise LocalProtocolError(f"lifetime must be 1..2**32-1 seconds, not {lifetime!r}")
        seconds(refresh_margin, "refresh_margin", zero=True)
        seconds(rto, "rto")
        seconds(ti, "ti")
        count(rc, "rc")
        count(rm, "rm")
        for value, what in ((username, "username"), (password, "password")):
            opaque_credential(value, what)
        if software is not None:
            if not isinstance(software, str):
                raise LocalProtocolError(f"software must be a string or None, not {software!r}")
            try:
                Software(software).encode_value(b"")  # too long -> LocalProtocolError now
            except UnicodeError as exc:
                raise LocalProtocolError(f"SOFTWARE is not valid text: {exc}") from exc

        self._server: Address = (host, port)
        self._server_key: Address = (unpack_ip(server_family, packed), port)
        self._transport = transport
        self._reliable = transport != "udp"
        self._rng = rng
        self._credentials = LongTermCredentials(username, password)
        self._family = Family(family)
        self._additional_family = additional_family
        self._even_port = even_port
        self._reservation_token = reservation_token
        self._dont_fragment = dont_fragment
        self._software = software
        self._margin = float(refresh_margin)
        self._stun = StunClient(reliable=self._reliable, rto=rto, rc=rc, rm=rm, ti=ti)

        self._state = TurnState.IDLE
        self._events: deque[TurnEvent] = deque()
        self._out: list[Transmit] = []
        self._early: list[Transmit] = []  # data queued before the newest request: sent first
        self._requests: dict[bytes, _Request] = {}
        self._dropped = 0
        self._desired_lifetime = lifetime
        self._relayed: tuple[Address, ...] = ()
        self._relay_families: frozenset[Family] = frozenset()
        self._mapped: Address | None = None
        self._lifetime: int | None = None
        self._expires_at: float | None = None
        self._refresh_at: float | None = None
        self._reserved_token: bytes | None = None
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[int, _Channel] = {}
        self._channel_by_peer: dict[Address, int] = {}
        self._quarantine: dict[int, tuple[Address, float]] = {}
        self._next_channel = CHANNEL_MIN

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> TurnState:
        """Where the allocation is in its life cycle (RFC 8656 §6-§8)."""
        return self._state

    @property
    def server(self) -> Address:
        """The TURN server transport address every datagram goes to (RFC 8656 §7.1)."""
        return self._server

    @property
    def transport(self) -> str:
        """The client-server transport: "udp", "tcp" or "tls" (RFC 8656 §3.1)."""
        return self._transport

    @property
    def relayed(self) -> Address | None:
        """The (first) relayed transport address, None before the allocation exists
        (RFC 8656 §7.3); all of them are :attr:`relayed_addresses`."""
        return self._relayed[0] if self._relayed else None

    @property
    def relayed_addresses(self) -> tuple[Address, ...]:
        """Every relayed transport address: one, or two for a dual allocation (RFC 8656
        §7.1 ADDITIONAL-ADDRESS-FAMILY, §7.3); empty before the allocation exists."""
        return self._relayed

    @property
    def mapped(self) -> Address | None:
        """The client's server-reflexive address from XOR-MAPPED-ADDRESS (RFC 8656 §7.3)."""
        return self._mapped

    @property
    def lifetime(self) -> int | None:
        """The lifetime the server last granted, in seconds (LIFETIME, RFC 8656 §7.3, §8.3)."""
        return self._lifetime

    @property
    def expires_at(self) -> float | None:
        """When the allocation expires unless refreshed: send time of the request that granted
        :attr:`lifetime`, plus it (RFC 8656 §6); None before the allocation exists."""
        return self._expires_at

    @property
    def reserved_token(self) -> bytes | None:
        """RESERVATION-TOKEN of the Allocate success response, when EVEN-PORT's R bit reserved
        the next port (RFC 8656 §7.2); pass it to another client's ``reservation_token``."""
        return self._reserved_token

    @property
    def permissions(self) -> dict[str, float]:
        """Installed permissions: peer IP address -> when it expires unless refreshed
        (RFC 8656 §9). Requests still in flight are not counted."""
        return {ip: p.expires_at for ip, p in self._permissions.items()}

    @property
    def channels(self) -> dict[int, Address]:
        """Bound channels: channel number -> peer transport address (RFC 8656 §12)."""
        return {n: c.peer for n, c in self._channels.items() if c.bound}

    @property
    def dropped(self) -> int:
        """Datagrams ignored: undecodable, not from the server, unknown transaction, failed
        integrity, Data indication without permission, ChannelData on an unbound channel..."""
        return self._dropped + self._stun.dropped

    # ------------------------------------------------------------------ commands

    def allocate(self, now: float) -> None:
        """Send the Allocate request (RFC 8656 §7.1), unauthenticated at first: the server's 401
        supplies REALM and NONCE for the signed retry (RFC 8489 §9.2.3). Result:
        :class:`AllocationCreated`, :class:`AllocationFailed` or :class:`TryAlternate`."""
        self._require("allocate")
        self._start(_Request(_Kind.ALLOCATE, self._allocate_attributes()), now)
        self._set_state(TurnState.ALLOCATING)

    def create_permission(self, peers: Iterable[str], now: float) -> None:
        """Install (or refresh) permissions for these peer IP addresses with CreatePermission
        requests, several XOR-PEER-ADDRESS per request (RFC 8656 §10.1). They are then refreshed
        automatically until ``release()``. Result: :class:`PermissionCreated` or
        :class:`PermissionFailed` per request (one per :data:`MAX_PEERS_PER_REQUEST` peers)."""
        self._require("create_permission")
        if isinstance(peers, str | bytes):
            raise LocalProtocolError("peers is an iterable of IP address strings, not one string")
        ips = list(dict.fromkeys(self._peer_ip(ip) for ip in peers))
        if not ips:
            raise LocalProtocolError("create_permission needs at least one peer")
        for chunk in _chunks(ips, MAX_PEERS_PER_REQUEST):
            self._start(self._permission_request(chunk, user=True), now)

    def bind_channel(self, peer: Address, now: float, channel: int | None = None) -> int:
        """Bind a channel to ``peer`` with a ChannelBind request, which also installs the
        permission for its IP (RFC 8656 §12.1); returns the channel number. Without ``channel``
        the peer's current number is reused (a re-bind refreshes it), else the next free number
        from 0x4000 is picked. A number is bound to one peer and a peer to one number, and
        neither may move for 5 minutes after a binding lapses (RFC 8656 §12): a conflict raises
        LocalProtocolError. Result: :class:`ChannelBound` or :class:`ChannelBindFailed`; the
        binding is then re-bound automatically until ``release()``."""
        self._require("bind_channel")
        key = self._peer_address(peer)
        self._prune_quarantine(now)
        current = self._channel_by_peer.get(key)
        held = next((n for n, (p, _) in self._quarantine.items() if p == key), None)
        if channel is None:
            number = current if current is not None else held
            if number is None:
                number = self._free_channel()
        else:
            if not isinstance(channel, int) or not valid_channel(channel):
                raise LocalProtocolError(
                    f"channel number {channel!r} outside {CHANNEL_MIN:#x}-{CHANNEL_MAX:#x} (RFC 8656 §12)"
                )
            owner = self._channels.get(channel)
            if owner is not None and owner.peer != key:
                raise LocalProtocolError(f"channel {channel:#x} is bound to {owner.peer}")
            if current is not None and current != channel:
                raise LocalProtocolError(f"{key} is bound to channel {current:#x}")
            quarantined = self._quarantine.get(channel)
            if quarantined is not None and quarantined[0] != key:
                raise LocalProtocolError(
                    f"channel {channel:#x} was bound to {quarantined[0]} until recently; "
                    "it may be rebound elsewhere 5 minutes after that binding expires (RFC 8656 §12)"
                )
            if held is not None and held != channel:
                raise LocalProtocolError(
                    f"{key} was bound to channel {held:#x} until recently (RFC 8656 §12)"
                )
            number = channel
        attrs: list[Attribute] = [ChannelNumber(number), XorPeerAddress(*key)]
        self._start(_Request(_Kind.CHANNEL, attrs, channel=number, peer=key), now)
        if number not in self._channels:
            self._channels[number] = _Channel(key)
            self._channel_by_peer[key] = number
            self._quarantine.pop(number, None)
        return number

    def send(self, data: bytes, peer: Address, now: float) -> None:
        """Queue ``data`` for ``peer``: a ChannelData message when a channel to that transport
        address is bound (RFC 8656 §12.5), else a Send indication with XOR-PEER-ADDRESS, DATA and,
        when asked for, DONT-FRAGMENT (RFC 8656 §11.1). The relay drops data to a peer without a
        permission: installing one is the caller's job (RFC 8656 §11.1)."""
        self._require("send")
        key = self._peer_address(peer)
        payload = bytes(data)
        if len(payload) > 0xFFFF:  # the 16-bit length of ChannelData and of DATA
            raise LocalProtocolError(f"{len(payload)} bytes do not fit one TURN message")
        number = self._channel_by_peer.get(key)
        if number is not None and self._channels[number].bound:
            frame = encode_channel_data(number, payload, pad=self._reliable)
        else:
            attrs: list[Attribute] = [XorPeerAddress(*key), Data(payload)]
            if self._dont_fragment:
                attrs.append(DontFragment())
            frame = Message(Method.SEND, MessageClass.INDICATION, self._tid(), attrs).encode()
        self._out.append(Transmit(frame, self._server))

    def refresh(self, now: float, lifetime: int | None = None) -> None:
        """Refresh the allocation now (RFC 8656 §8.1), replacing a Refresh in flight; the
        automatic refresh stays scheduled until one succeeds. ``lifetime`` (LIFETIME) is also
        used by later automatic refreshes; 0 means :meth:`release`. Result:
        :class:`AllocationRefreshed`, :class:`RefreshFailed`, or :class:`AllocationExpired` on
        437."""
        self._require("refresh")
        if lifetime is not None and not (isinstance(lifetime, int) and 0 <= lifetime <= _MAX_U32):
            raise LocalProtocolError(f"lifetime must be 0..2**32-1 seconds, not {lifetime!r}")
        if lifetime == 0:
            self.release(now)
            return
        if lifetime is not None:
            self._desired_lifetime = lifetime
        self._send_refresh(now, user=True)

    def release(self, now: float) -> None:
        """Delete the allocation with a Refresh of LIFETIME 0 (RFC 8656 §8.1). Every other
        request in flight is abandoned without an event and no refresh follows. Result:
        :class:`AllocationReleased` (also after 437, or when the request goes unanswered)."""
        self._require("release")
        for tid in self._requests:
            self._stun.cancel(tid)
        self._requests.clear()
        self._refresh_at = None
        self._start(_Request(_Kind.RELEASE, [Lifetime(0)]), now)
        self._set_state(TurnState.RELEASING)

    # ------------------------------------------------------------------ driver surface

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram (or one framed message over TCP/TLS) from ``addr``: STUN responses
        (RFC 8656 §7.3-§12.3), Data indications (§11.4), ChannelData (§12.6). Anything else,
        and anything not from the server, is dropped and counted; this never raises."""
        if not self._from_server(addr):
            self._dropped += 1
            return
        raw = bytes(data)
        if is_channel_data(raw):
            self._receive_channel_data(raw)
            return
        if not is_stun(raw):
            self._dropped += 1
            return
        try:
            msg = Message.decode(raw)
        except DecodeError:
            self._dropped += 1
            return
        if msg.fingerprint is not None and not msg.verify_fingerprint():
            self._dropped += 1
        elif msg.msg_class == MessageClass.INDICATION and msg.method == Method.DATA:
            self._receive_data_indication(msg)
        elif msg.is_response:
            self._receive_response(msg, addr, now)
        else:
            self._dropped += 1

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """Everything due for the server, in the order the caller asked for it: Send
        indications and ChannelData queued before the newest request, the requests (and
        retransmissions), then the data queued since."""
        out = self._early
        self._early = []
        out.extend(self._stun.datagrams_to_send(now))
        out.extend(self._out)
        self._out.clear()
        return out

    def next_timer(self) -> float | None:
        """The earliest deadline: a retransmission or transaction timeout, the allocation's
        refresh or expiry, a permission refresh or a channel re-bind; None when there is none."""
        deadlines: list[float] = []
        stun_deadline = self._stun.next_timer()
        if stun_deadline is not None:
            deadlines.append(stun_deadline)
        if self._state is TurnState.ALLOCATED:
            assert self._expires_at is not None
            deadlines.append(self._expires_at)
            if self._refresh_at is not None:
                deadlines.append(self._refresh_at)
            deadlines.extend(
                p.refresh_at for p in self._permissions.values() if p.refresh_at is not None
            )
            deadlines.extend(
                c.refresh_at for c in self._channels.values() if c.refresh_at is not None
            )
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, refresh and expire whatever is due at ``now`` (RFC 8656 §8, §9,
        §12); an early call does nothing."""
        self._stun.handle_timer(now)
        self._drain(now)
        if self._state is not TurnState.ALLOCATED:
            return
        assert self._expires_at is not None
        if now >= self._expires_at:
            self._expire()
            return
        if self._refresh_at is not None and now >= self._refresh_at:
            self._send_refresh(now, user=False)
        due = [
            ip
            for ip, p in self._permissions.items()
            if p.refresh_at is not None and now >= p.refresh_at
        ]
        for ip in due:
            self._permissions[ip].refresh_at = None
        for chunk in _chunks(due, MAX_PEERS_PER_REQUEST):
            self._start(self._permission_request(chunk, user=False), now)
        for number, ch in self._channels.items():
            if ch.refresh_at is not None and now >= ch.refresh_at:
                ch.refresh_at = None
                attrs: list[Attribute] = [ChannelNumber(number), XorPeerAddress(*ch.peer)]
                self._start(
                    _Request(_Kind.CHANNEL, attrs, user=False, channel=number, peer=ch.peer), now
                )

    def next_event(self) -> TurnEvent | None:
        """The oldest event not yet returned, or None."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ requests

    def _require(self, command: str) -> None:
        if self._state not in _COMMANDS[command]:
            raise LocalProtocolError(f"{command}() is not allowed in state {self._state.name}")

    def _set_state(self, state: TurnState) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise AssertionError(f"no transition {self._state.name} -> {state.name}")
        self._state = state

    def _tid(self) -> bytes:
        tid = bytes(self._rng(12))
        if len(tid) != 12:
            raise LocalProtocolError("rng(12) must return 12 bytes")
        return tid

    def _allocate_attributes(self) -> list[Attribute]:
        """RFC 8656 §7.1."""
        attrs: list[Attribute] = [RequestedTransport(TransportProtocol.UDP)]
        if self._family == Family.IPV6:
            attrs.append(RequestedAddressFamily(Family.IPV6))
        if self._additional_family is not None:
            attrs.append(AdditionalAddressFamily(self._additional_family))
        if self._even_port is not None:
            attrs.append(EvenPort(self._even_port))
        if self._reservation_token is not None:
            attrs.append(ReservationToken(self._reservation_token))
        if self._desired_lifetime is not None:
            attrs.append(Lifetime(self._desired_lifetime))
        if self._dont_fragment:
            attrs.append(DontFragment())
        return attrs

    def _permission_request(self, peers: tuple[str, ...], *, user: bool) -> _Request:
        """RFC 8656 §10.1: the port of each XOR-PEER-ADDRESS is ignored."""
        attrs: list[Attribute] = [XorPeerAddress(ip, 0) for ip in peers]
        return _Request(_Kind.PERMISSION, attrs, user=user, peers=peers)

    def _start(self, req: _Request, now: float) -> bytes:
        """Encode (signed once a challenge was answered) and start a transaction for ``req``."""
        # Data the caller queued before this request leaves before it: a Send indication
        # followed by release() must reach the relay while the allocation still exists.
        self._early.extend(self._out)
        self._out.clear()
        tid = self._tid()
        for _ in range(16):
            if tid not in self._requests:
                break
            tid = self._tid()
        else:
            raise LocalProtocolError("rng keeps returning transaction ids already in use")
        attrs = list(req.attributes)
        if self._software is not None:
            attrs.append(Software(self._software))
        msg = Message(_METHODS[req.kind], MessageClass.REQUEST, tid, attrs)
        if self._credentials.ready:
            data = self._credentials.sign(msg)
            req.signed = True
        else:
            data = msg.encode(fingerprint=True)
            req.signed = False
        self._stun.send_request(data, self._server, now)
        req.sent_at = now
        req.integrity_failed = False
        self._requests[tid] = req
        return tid

    def _send_refresh(self, now: float, *, user: bool) -> None:
        for tid, req in list(self._requests.items()):
            if req.kind is _Kind.REFRESH:
                self._stun.cancel(tid)
                del self._requests[tid]
        attrs: list[Attribute] = []
        if self._desired_lifetime is not None:
            attrs.append(Lifetime(self._desired_lifetime))
        self._start(_Request(_Kind.REFRESH, attrs, user=user), now)
        if not user:  # a refresh asked for keeps the automatic one scheduled until it succeeds
            self._refresh_at = None

    def _refresh_after(self, lifetime: float) -> float:
        """Seconds after the send at which to refresh something that lasts ``lifetime``."""
        return max(lifetime - self._margin, lifetime / 2)

    # ------------------------------------------------------------------ peers and channels

    def _peer_ip(self, ip: object) -> str:
        """Canonical text of a peer IP, of a family the relay has (RFC 8656 §10.2: else 443)."""
        if not isinstance(ip, str):
            raise LocalProtocolError(f"peer IP must be a string, not {ip!r}")
        family, packed = pack_ip(ip)
        if self._relay_families and family not in self._relay_families:
            raise LocalProtocolError(
                f"peer {ip} is {family.name} but the relayed addresses are not "
                "(443 Peer Address Family Mismatch, RFC 8656 §10.2)"
            )
        return unpack_ip(family, packed)

    def _peer_address(self, peer: object) -> Address:
        if not isinstance(peer, tuple) or len(peer) < 2:
            raise LocalProtocolError(f"peer must be an (ip, port) pair, not {peer!r}")
        port = peer[1]
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise LocalProtocolError(f"bad peer port: {port!r}")
        return (self._peer_ip(peer[0]), port)

    def _free_channel(self) -> int:
        """The next unused number, counting up from the last one picked (RFC 8656 §12)."""
        span = CHANNEL_MAX - CHANNEL_MIN + 1
        for step in range(span):
            number = CHANNEL_MIN + (self._next_channel - CHANNEL_MIN + step) % span
            if number not in self._channels and number not in self._quarantine:
                self._next_channel = CHANNEL_MIN + (number - CHANNEL_MIN + 1) % span
                return number
        raise LocalProtocolError("all 4096 channel numbers are in use (RFC 8656 §12)")

    def _prune_quarantine(self, now: float) -> None:
        for number, (_, until) in list(self._quarantine.items()):
            if now >= until:
                del self._quarantine[number]

    def _install_permission(self, ip: str, sent_at: float) -> None:
        """A CreatePermission or ChannelBind sent at ``sent_at`` succeeded (RFC 8656 §9)."""
        expires = sent_at + PERMISSION_LIFETIME
        refresh = sent_at + self._refresh_after(PERMISSION_LIFETIME)
        perm = self._permissions.get(ip)
        if perm is None:
            self._permissions[ip] = _Permission(expires, refresh)
            return
        perm.expires_at = max(perm.expires_at, expires)
        if perm.refresh_at is None or refresh > perm.refresh_at:
            perm.refresh_at = refresh

    def _permitted(self, ip: str) -> bool:
        """A permission is installed or being installed for ``ip`` (RFC 8656 §11.4)."""
        if ip in self._permissions:
            return True
        return any(
            ip in req.peers or req.peer[0] == ip
            for req in self._requests.values()
            if req.kind is _Kind.PERMISSION or req.kind is _Kind.CHANNEL
        )

    # ------------------------------------------------------------------ input

    def _from_server(self, addr: object) -> bool:
        """True for the server's address (asyncio may add IPv6 flowinfo and scope id)."""
        if addr == self._server:
            return True
        if not isinstance(addr, tuple) or len(addr) < 2 or not isinstance(addr[0], str):
            return False
        try:
            family, packed = pack_ip(addr[0])
        except LocalProtocolError:
            return False
        return (unpack_ip(family, packed), addr[1]) == self._server_key

    def _receive_channel_data(self, raw: bytes) -> None:
        """RFC 8656 §12.6: deliver data on a bound (or being bound) channel, drop the rest."""
        try:
            number, payload = decode_channel_data(raw)
        except DecodeError:
            self._dropped += 1
            return
        ch = self._channels.get(number)
        if ch is None or self._state not in _RECEIVING:
            self._dropped += 1
            return
        self._events.append(DataReceived(ch.peer, bytes(payload), number))

    def _receive_data_indication(self, msg: Message) -> None:
        """RFC 8656 §11.4: XOR-PEER-ADDRESS and DATA, from a peer with a permission."""
        peer = msg.get(XorPeerAddress)
        data = msg.get(Data)
        if peer is None or data is None or self._state not in _RECEIVING:
            self._dropped += 1  # also ICMP-only indications (RFC 8656 §11.6), not reported
            return
        if not self._permitted(peer.ip):
            self._dropped += 1
            return
        self._events.append(DataReceived(peer.address, data.value, None))

    def _receive_response(self, msg: Message, addr: Address, now: float) -> None:
        tid = msg.transaction_id
        req = self._requests.get(tid)
        if req is None:
            self._dropped += 1
            return
        if not self._authentic(req, msg):
            self._dropped += 1
            if self._reliable:  # RFC 8489 §9.2.5: end the transaction at once
                self._stun.cancel(tid)
                del self._requests[tid]
                self._finish(req, _Outcome(0, _INTEGRITY_REASON), now)
            else:  # as if never received: retransmissions continue
                req.integrity_failed = True
            return
        self._stun.receive_message(msg, addr, now)
        self._drain(now)

    def _authentic(self, req: _Request, msg: Message) -> bool:
        """RFC 8489 §9.2.5: a response to a signed request must verify, 401 and 438 aside."""
        if not req.signed:
            return True
        error = msg.error
        if msg.msg_class == MessageClass.ERROR and error is not None and error.code in (401, 438):
            return True
        if msg.integrity is None and msg.integrity_sha256 is None:
            return False
        return self._credentials.verify_response(msg)

    def _drain(self, now: float) -> None:
        """Turn the StunClient's transaction results into TURN outcomes."""
        while (event := self._stun.next_event()) is not None:
            if isinstance(event, TransactionSucceeded):
                req = self._requests.pop(event.transaction_id, None)
                if req is not None:
                    self._on_success(req, event.response, now)
            elif isinstance(event, TransactionFailed):
                req = self._requests.pop(event.transaction_id, None)
                if req is not None:
                    self._on_error(req, event.response, event.code, event.reason, now)
            elif isinstance(event, TransactionTimedOut):
                req = self._requests.pop(event.transaction_id, None)
                if req is not None:
                    reason = _INTEGRITY_REASON if req.integrity_failed else "no response (timeout)"
                    self._finish(req, _Outcome(0, reason), now)

    # ------------------------------------------------------------------ outcomes

    def _challenge(self, response: Message) -> str | None:
        """Feed a 401/438 to the credentials; None if the request may be repeated, else why not."""
        try:
            self._credentials.challenge(response)
        except (CredentialsRejected, LocalProtocolError) as exc:
            return str(exc)
        return None

    def _on_error(
        self, req: _Request, response: Message, code: int, reason: str, now: float
    ) -> None:
        """RFC 8656 §7.4, §8.3, §10.3, §12.3 and the long-term mechanism of RFC 8489 §9.2.5."""
        if code == ErrorCode.STALE_NONCE and not req.stale_retried:
            why = self._challenge(response)
            if why is None:
                self._repeat(req, now, stale_retried=True)
                return
            reason = why
        elif code == ErrorCode.UNAUTHENTICATED:
            # the credentials tell a first challenge from rejected credentials (RFC 8656 §7.4)
            why = self._challenge(response)
            if why is None and not req.challenged:
                self._repeat(req, now, challenged=True)
                return
            reason = why or reason
        elif (
            code == ErrorCode.UNKNOWN_ATTRIBUTE
            and req.kind is _Kind.ALLOCATE
            and self._dont_fragment
        ):
            unknown = response.get(UnknownAttributes)
            if unknown is not None and AttrType.DONT_FRAGMENT in unknown.types:
                # RFC 8656 §7.4: the server cannot set DF; try again without asking for it.
                self._dont_fragment = False
                self._repeat(req, now, attributes=self._allocate_attributes())
                return
        elif code == ErrorCode.TRY_ALTERNATE and req.kind is _Kind.ALLOCATE:
            alternate = response.get(AlternateServer)
            if alternate is not None:
                domain = response.get(AlternateDomain)
                self._set_state(TurnState.FAILED)
                self._events.append(
                    TryAlternate(alternate.address, domain.value if domain is not None else None)
                )
                return
        self._finish(req, _Outcome(code, reason), now)

    def _repeat(
        self,
        req: _Request,
        now: float,
        *,
        challenged: bool = False,
        stale_retried: bool = False,
        attributes: list[Attribute] | None = None,
    ) -> None:
        """The same request in a new transaction (RFC 8489 §9.2.5: a new transaction id)."""
        again = dataclasses.replace(
            req,
            attributes=req.attributes if attributes is None else attributes,
            challenged=req.challenged or challenged,
            stale_retried=req.stale_retried or stale_retried,
        )
        self._start(again, now)

    def _on_success(self, req: _Request, response: Message, now: float) -> None:
        kind = req.kind
        if kind is _Kind.ALLOCATE:
            self._allocated(req, response, now)
        elif kind is _Kind.REFRESH:
            granted = response.get(Lifetime)
            lifetime = granted.value if granted is not None else self._lifetime
            if not lifetime:  # RFC 8656 §8.3: the server deleted it
                self._expire()
                return
            self._lifetime = lifetime
            self._expires_at = req.sent_at + lifetime
            self._refresh_at = req.sent_at + self._refresh_after(lifetime)
            self._events.append(AllocationRefreshed(lifetime))
        elif kind is _Kind.RELEASE:
            self._released()
        elif kind is _Kind.PERMISSION:
            for ip in req.peers:
                self._install_permission(ip, req.sent_at)
            if req.user:
                self._events.append(PermissionCreated(req.peers))
        else:  # RFC 8656 §12.3: the channel and the peer's permission are now active
            ch = self._channels.get(req.channel)
            if ch is None and req.peer not in self._channel_by_peer:
                ch = self._channels[req.channel] = _Channel(req.peer)
                self._channel_by_peer[req.peer] = req.channel
            if ch is None or ch.peer != req.peer:
                return
            ch.bound = True
            ch.expires_at = max(ch.expires_at, req.sent_at + CHANNEL_LIFETIME)
            refresh = req.sent_at + self._refresh_after(CHANNEL_LIFETIME)
            if ch.refresh_at is None or refresh > ch.refresh_at:
                ch.refresh_at = refresh
            self._install_permission(req.peer[0], req.sent_at)
            if req.user:
                self._events.append(ChannelBound(req.channel, req.peer))

    def _allocated(self, req: _Request, response: Message, now: float) -> None:
        """RFC 8656 §7.3."""
        relayed = tuple(a.address for a in response.get_all(XorRelayedAddress))
        granted = response.get(Lifetime)
        if not relayed or granted is None:
            missing = "XOR-RELAYED-ADDRESS" if not relayed else "LIFETIME"
            self._finish(req, _Outcome(0, f"Allocate success response without {missing}"), now)
            return
        mapped = response.get(XorMappedAddress)
        token = response.get(ReservationToken)
        self._relayed = relayed
        self._relay_families = frozenset(pack_ip(ip)[0] for ip, _ in relayed)
        self._mapped = mapped.address if mapped is not None else None
        self._reserved_token = token.value if token is not None else None
        self._lifetime = granted.value
        self._expires_at = req.sent_at + granted.value
        self._refresh_at = req.sent_at + self._refresh_after(granted.value)
        errors = tuple(
            (a.family, enum_member(ErrorCode, a.code), a.reason) for a in response.get_all(AddressErrorCode)
        )
        self._set_state(TurnState.ALLOCATED)
        self._events.append(AllocationCreated(relayed, self._mapped, granted.value, errors))

    def _finish(self, req: _Request, outcome: _Outcome, now: float) -> None:
        """A request ended without success: error response, timeout or integrity failure."""
        code, reason = enum_member(ErrorCode, outcome.code), outcome.reason
        kind = req.kind
        if kind is _Kind.ALLOCATE:
            self._set_state(TurnState.FAILED)
            self._events.append(AllocationFailed(code, reason))
        elif kind is _Kind.REFRESH:
            if code == ErrorCode.ALLOCATION_MISMATCH:  # RFC 8656 §8.3: no longer exists
                self._expire()
            else:
                self._events.append(RefreshFailed(code, reason))
        elif kind is _Kind.RELEASE:  # RFC 8656 §8.3: 437 to a deletion is a success
            self._released()
        elif kind is _Kind.PERMISSION:
            for ip in req.peers:
                perm = self._permissions.get(ip)
                if perm is None:
                    continue
                if perm.expires_at >= req.sent_at + PERMISSION_LIFETIME:
                    # a request sent later refreshed it meanwhile: keep it
                    if perm.refresh_at is None:
                        perm.refresh_at = req.sent_at + self._refresh_after(PERMISSION_LIFETIME)
                else:
                    del self._permissions[ip]
            self._events.append(PermissionFailed(req.peers, code, reason))
        else:
            ch = self._channels.get(req.channel)
            if ch is not None and ch.peer == req.peer:
                if ch.bound and ch.expires_at >= req.sent_at + CHANNEL_LIFETIME:
                    if ch.refresh_at is None:
                        ch.refresh_at = req.sent_at + self._refresh_after(CHANNEL_LIFETIME)
                elif not self._bind_pending(req.channel):
                    if ch.bound:  # the server may hold it until it expires (RFC 8656 §12)
                        self._quarantine[req.channel] = (
                            ch.peer,
                            ch.expires_at + CHANNEL_REUSE_DELAY,
                        )
                    del self._channels[req.channel]
                    del self._channel_by_peer[ch.peer]
            self._events.append(ChannelBindFailed(req.channel, req.peer, code, reason))

    def _bind_pending(self, number: int) -> bool:
        return any(r.kind is _Kind.CHANNEL and r.channel == number for r in self._requests.values())

    def _forget_allocation(self) -> None:
        for tid in self._requests:
            self._stun.cancel(tid)
        self._requests.clear()
        self._permissions.clear()
        self._channels.clear()
        self._channel_by_peer.clear()
        self._quarantine.clear()
        self._refresh_at = None

    def _expire(self) -> None:
        """RFC 8656 §6: the allocation, its permissions and channels are gone."""
        self._forget_allocation()
        self._set_state(TurnState.EXPIRED)
        self._events.append(AllocationExpired())

    def _released(self) -> None:
        self._forget_allocation()
        self._set_state(TurnState.RELEASED)
        self._events.append(AllocationReleased())


_INTEGRITY_REASON = "no response passed the integrity check (RFC 8489 §9.2.5)"


def check_client_options(options: object, what: str = "options") -> dict[str, Any]:
    """Allocation options meant for a later :class:`TurnClient` (``lifetime``, ``family``,
    ``rto``...: its keyword arguments after ``transport``), checked now, where they enter
    an adapter, rather than when the allocation starts: a mapping of those names, each value
    as :class:`TurnClient` accepts it, else :class:`LocalProtocolError` naming ``what`` and
    the option. A client is a plain object (no socket, no clock, no randomness drawn): the
    check builds one, towards a documentation address it never contacts."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise LocalProtocolError(
            f"{what} must be a mapping of TurnClient options ({{'lifetime': 600}}), not"
            f" {type(options).__name__}"
        )
    unknown = sorted(set(options) - _CLIENT_OPTIONS)
    if unknown:
        raise LocalProtocolError(
            f"{what}: unknown option {unknown[0]!r} (TurnClient takes"
            f" {', '.join(sorted(_CLIENT_OPTIONS))})"
        )
    try:
        TurnClient(_CHECK_SERVER, "user", "password", **options)
    except LocalProtocolError as exc:
        raise LocalProtocolError(f"{what}: {exc}") from None
    return dict(options)


_CLIENT_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(TurnClient).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "transport"
)
"""The keyword arguments of :class:`TurnClient` that :func:`check_client_options` takes."""
