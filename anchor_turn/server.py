"""Sans-I/O TURN server core (RFC 8656) with long-term credentials (RFC 8489 §9.2).

Theory of operation
-------------------
:class:`TurnServer` is fed two kinds of traffic and never touches a socket or a clock:

* ``receive_datagram(data, addr, local, now, transport=...)`` — what a client sent to one of
  the server's listeners (``local``): STUN requests and indications, or ChannelData. Over TCP
  and TLS the adapter frames the stream (:class:`anchor_stun.framing.StreamFramer`) and passes
  one whole message at a time.
* ``receive_relay(data, peer, relay, now)`` — a UDP datagram a peer sent to a relayed
  transport address that the adapter bound through the injected :class:`RelayAllocator`.

``datagrams_to_send(now)`` returns :class:`~anchor_stun.events.Transmit` records. To a client:
``Transmit(data, client, local=listener)`` (for TCP/TLS the adapter routes by (addr, local) to
the connection). To a peer: ``Transmit(payload, peer, local=relayed address)``: the adapter
sends it from that relay socket, with fragmentation allowed (the DF bit 0); a
:class:`DontFragmentTransmit` (same fields) must leave with fragmentation forbidden (DF 1,
``IPV6_DONTFRAG``): it relays a Send indication that carried DONT-FRAGMENT (§11.2, §14, §15;
see "DONT-FRAGMENT" below); each one is counted in ``stats.to_peer_dont_fragment``.
``next_timer()`` /
``handle_timer(now)`` expire allocations (releasing their relayed addresses through
``RelayAllocator.release``), permissions and channels; ``next_event()`` reports what
happened, for logs and metrics; :attr:`stats` counts.
An allocation is identified by its 5-tuple: (client address, listener address, transport).

Processing a message from a client, in this order:

1. ChannelData (first byte 0x40-0x7F, RFC 8656 §12.4, RFC 5766 §11; 0x40-0x4F with
   ``strict_channels``): fast path, no decoding.
   Dropped unless the 5-tuple has an allocation, the channel is bound and unexpired, a
   permission for the peer's IP is live, and the length fits (at most 3 bytes of padding
   after the data). Never refreshes the channel or the permission (§12.4).
2. Anything else that cannot be STUN (first two bits set, shorter than a header, a length
   that does not match, another magic cookie) is dropped, but a request gets 400 (step 4).
   A Send indication goes to its own parser (step 5), which never runs the codec.
3. Binding requests and indications are handed to the :class:`~anchor_stun.server.StunServer`
   core unchanged (``stream=True`` over TCP/TLS): the TURN ports answer STUN too.
4. Decode (RFC 8489 §6.3): a request whose header is readable but whose body is malformed
   gets 400; other malformed input is dropped. A FINGERPRINT that does not verify: drop.
   Responses and indications are dropped.
5. Send indication (§11.2), parsed in one pass over its attributes without the codec: only
   XOR-PEER-ADDRESS is decoded, the first XOR-PEER-ADDRESS and DATA count, attributes after
   MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT are ignored (RFC 8489 §14.5-§14.7), other known
   attributes are skipped unread. Dropped: a body not made of whole attributes, a FINGERPRINT
   that does not verify, no allocation on the 5-tuple, no
   XOR-PEER-ADDRESS or DATA, unknown comprehension-required attributes, a peer of
   a family the allocation has no relay for, without a live permission for the peer's IP,
   or to a forbidden destination (port 0, the allocation's own relayed address, one of the
   server's own addresses).
   DONT-FRAGMENT without the ``dont_fragment`` capability is an unknown comprehension-required
   attribute: the indication is dropped (§11.2).
   Otherwise the DATA goes to the peer from the relayed address. Never refreshes a permission.
6. A request whose method is not Allocate, Refresh, CreatePermission or ChannelBind: 400.
7. Allocate retransmission (§7.2, RFC 8489 §6.3.1): a request byte-for-byte equal to the
   one that created the allocation on this 5-tuple gets the same success response again.
8. Authentication, RFC 8489 §9.2.4, by :class:`~anchor_turn.nonce_auth.NonceAuthenticator`
   (steps a-f in :mod:`anchor_turn.nonce_auth`): 401 with a challenge when the request is
   unsigned, its credentials unknown or its integrity wrong; 400 when a credential attribute
   is missing or the password algorithms were bid down; 438 with a fresh challenge when the
   NONCE was not issued to this 5-tuple or has expired.
   Errors of steps a-f are unsigned; every later response, success or error, carries the
   integrity attribute the request used (MESSAGE-INTEGRITY-SHA256 truncated as the
   request's, or MESSAGE-INTEGRITY) computed with the same key (§9.2.4).
9. Unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1);
   DONT-FRAGMENT is one of them without the ``dont_fragment`` capability (RFC 8656 §7.2 step 4).
10. Method, with the allocation of the 5-tuple:
    - Allocate (RFC 8656 §7.2): 437 when the 5-tuple has one; REQUESTED-TRANSPORT missing
      400, not UDP 442; RESERVATION-TOKEN with EVEN-PORT, REQUESTED-ADDRESS-FAMILY or
      ADDITIONAL-ADDRESS-FAMILY 400; REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together 400;
      REQUESTED-ADDRESS-FAMILY not offered 440 (no family asked and IPv4 not offered: 440);
      EVEN-PORT with R set and ADDITIONAL-ADDRESS-FAMILY 400; ADDITIONAL-ADDRESS-FAMILY
      other than IPv6 400; per-user or total quota reached 486; then the relay allocator:
      nothing available 508 (a bad reservation token too). A dual allocation that gets
      only one family succeeds with ADDRESS-ERROR-CODE (440 or 508) for the other.
    - Refresh (§8.2), CreatePermission (§10.2), ChannelBind (§12.2): 437 without an
      allocation; 441 when the username is not the one that created it (§5).
    - Refresh: REQUESTED-ADDRESS-FAMILY of a family the allocation lacks 443; the desired
      lifetime 0 deletes (that family, or the whole allocation).
    - CreatePermission: no XOR-PEER-ADDRESS 400; a peer family without relay 443; a
      forbidden peer 403; more than ``max_permissions`` 508. All-or-nothing.
    - ChannelBind: CHANNEL-NUMBER or XOR-PEER-ADDRESS missing, a number outside
      0x4000-0x7FFF (0x4000-0x4FFF with ``strict_channels``), a number bound to another
      peer or a peer bound to another number 400;
      peer family 443; forbidden peer or port 0: 403; over ``max_channels``/``max_permissions`` 508.
      Success binds or refreshes the channel and installs or refreshes the permission.

Every response carries SOFTWARE (when configured) and FINGERPRINT; Data indications carry
FINGERPRINT. Bad network input never raises: it is answered or dropped and counted.

Traffic from a peer (§11.3, §12.7): the relayed address must belong to a live allocation and
the peer's IP must have a live permission (ports are not compared, §9), else drop. When a
channel is bound to the peer's (ip, port) it goes to the client as ChannelData (padded to 4
bytes for a TCP/TLS client, §12.5), otherwise as a Data indication.

Decisions where the RFCs leave room
-----------------------------------
- Lifetime (§7.2, §8.2): ``max(default, min(requested, max))``; no LIFETIME gives the default.
- Nonces are stateless and bound to the 5-tuple (transport, client IP and port, listener),
  keyed by a secret drawn from ``rng`` at start-up: a restart makes every nonce stale (438),
  and a request replayed from another source port gets 438 and creates nothing
  (:mod:`anchor_turn.nonce_auth`).
- When the nonce cookie announces algorithms but the request names none, RFC 8489 §9.2.4
  says MD5; this server then refuses with 400 if MD5 is not among ``password_algorithms``.
- USERHASH is always accepted; the cookie advertises it only with ``username_anonymity``
  (the REST back-end cannot map hashes to users).
- ChannelData from the client also needs a live permission for the peer's IP, as data from
  the peer does (§9): a channel never outlives its permission in effect. A client that keeps
  the channel bound refreshes the permission with each ChannelBind (§12.2).
- Peer filter (§10.2, §11.2, §12.2 "MAY impose restrictions"; §21,
  :mod:`anchor_turn.peer_filter`): by default :class:`~anchor_turn.peer_filter.PeerFilter`
  refuses loopback, private, carrier-grade NAT, link-local, multicast, reserved and similar
  ranges (``allow_peers`` opens networks); so are the allocation's own relayed addresses and
  the server's own addresses, "myself" (:attr:`TurnServer.myself`: every listener, and for a
  wildcard listener every host and external address the adapter declares with
  :meth:`TurnServer.add_self_addresses`, and the whole loopback range on its port). A
  ChannelBind to port 0 is refused (403) and a Send to port 0 dropped: no datagram can go
  there; a CreatePermission ignores the port (§9). Relayed addresses of *other*
  allocations stay reachable: two clients of one server talking relay-to-relay is normal.
- Dual allocations keep one lifetime per family: Refresh with REQUESTED-ADDRESS-FAMILY
  refreshes (or with LIFETIME 0 deletes) that family only (§8.1).
- DONT-FRAGMENT (RFC 8656 §7.2 step 4, §11.2, §13-§15). ``dont_fragment`` says whether the
  adapter can send UDP datagrams with fragmentation forbidden (the runner clears it where the
  socket options are missing). Without it the attribute is unknown and comprehension-required:
  a request carrying it gets 420 listing 0x001A, a Send indication carrying it is dropped.
  With it, a Send indication carrying it becomes a :class:`DontFragmentTransmit` when the
  relay is one where the attribute applies: IPv4-to-IPv4 over UDP (§14) and every TCP/TLS
  allocation (§15); over UDP with an IPv6 client or relay the packet is translated and the
  attribute MUST be ignored (§13.1-§13.3). Everything else relayed to a peer (ChannelData, a
  Send indication without it) gets DF 0: the Alternate Behavior of §14 (the incoming DF bit
  cannot be read through a socket, so it is taken as 0) and the Preferred one of §15.
- Channel numbers: by default a ChannelBind may ask for RFC 5766's range 0x4000-0x7FFF
  (RFC 5766 §11), which RFC 8656 §12 narrowed to 0x4000-0x4FFF. The clients a TURN server
  meets still draw from the old range: libwebrtc's TURN port (kMinChannelNumber 0x4000,
  kMaxChannelNumber 0x7FFF) and coturn's ``turnutils_uclient``. RFC 8656 §12 only reserves
  0x5000-0x7FFF (they mean nothing else on a TURN 5-tuple, and a first byte of 0x50-0x7F is
  no STUN message). ``strict_channels`` keeps RFC 8656's range (400 above 0x4FFF). Anchor's
  own client draws from 0x4000-0x4FFF either way.
- 508 when a CreatePermission/ChannelBind would exceed the per-allocation limits.
- A TCP/TLS allocation also ends when the adapter reports the connection closed
  (:meth:`TurnServer.connection_closed`).
- Unsigned answers over UDP (the 401 and 438 challenges, 400s, 420s, Binding responses:
  all an unauthenticated source can get) are charged to the source's prefix (IPv4 /24,
  IPv6 /64) in an :class:`~anchor_stun.budget.AnswerBudget` shared with the STUN core:
  ``unauthenticated_rate`` answers per second after a burst of ``unauthenticated_burst``
  (20/s after 50 by default; ``None`` turns the budget off), and never more than 3 times
  the bytes the prefix sent beyond a 4 KiB allowance that grows back at 6.8 B/s (a 401 is
  6.8 times a minimal request: a flood of them is answered at most 3 times over). Over the
  budget the request is dropped and counted in ``stats.rate_limited``
  (``stun.stats.rate_limited`` for Binding). A signed exchange earns its prefix credit.
  The budget forgets a prefix once it is as good as new and keeps at most 65,536 (the
  least recently used goes first), so a flood from many sources cannot grow memory. TCP and TLS are not charged: their
  handshakes prove the source, and the runner bounds connections and their request rate.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Literal, Protocol

from anchor_stun.address import count as _whole
from anchor_stun.address import seconds
from anchor_stun.attributes import (
    KNOWN_TYPES,
    MAGIC_COOKIE,
    AdditionalAddressFamily,
    AddressErrorCode,
    Attribute,
    AttrType,
    ChannelNumber,
    DontFragment,
    ErrorCode,
    EvenPort,
    Family,
    Lifetime,
    PasswordAlgorithmId,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    TransportProtocol,
    UnknownAttributes,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    pack_ip,
    unpack_ip,
)
from anchor_stun.budget import ANSWER_BURST, ANSWER_RATE, AnswerBudget
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.message import (
    FINGERPRINT_XOR,
    HEADER_SIZE,
    Message,
    MessageClass,
    Method,
    decode_type,
    encode_type,
)
from anchor_stun.server import StunServer
from anchor_turn.admission import AlternateServers, SharedQuota
from anchor_turn.auth import CredentialBackend
from anchor_turn.channeldata import CHANNEL_MAX, CHANNEL_MAX_RFC5766, CHANNEL_MIN
from anchor_turn.external import ExternalAddresses
from anchor_turn.nonce_auth import (
    DEFAULT_NONCE_LIFETIME,
    Authenticated,
    NonceAuthenticator,
)
from anchor_turn.peer_filter import PeerFilter, SelfAddresses, canonical_address, networks
from anchor_turn.stats import TurnServerStats

__all__ = [
    "DEFAULT_CHANNEL_LIFETIME",
    "DEFAULT_LIFETIME",
    "DEFAULT_NONCE_LIFETIME",
    "DEFAULT_PERMISSION_LIFETIME",
    "MAX_LIFETIME",
    "UNAUTHENTICATED_BURST",
    "UNAUTHENTICATED_RATE",
    "AllocationCreatedEvent",
    "AllocationDeletedEvent",
    "AllocationExpiredEvent",
    "AllocationRefreshedEvent",
    "AuthenticationFailedEvent",
    "ChannelBoundEvent",
    "ChannelExpiredEvent",
    "DontFragmentTransmit",
    "PeerFilter",
    "PermissionCreatedEvent",
    "PermissionExpiredEvent",
    "RelayAllocator",
    "TransportName",
    "TurnServer",
    "TurnServerEvent",
    "TurnServerStats",
]

TransportName = Literal["udp", "tcp", "tls"]
"""The client-facing transport of a 5-tuple (RFC 8656 §3.1)."""

DEFAULT_LIFETIME = 600  # RFC 8656 §7.2 ("default lifetime", 10 minutes)
MAX_LIFETIME = 3600  # RFC 8656 §7.2 (RECOMMENDED maximum, 1 hour)
DEFAULT_PERMISSION_LIFETIME = 300  # RFC 8656 §9 (MUST be 300 s)
DEFAULT_CHANNEL_LIFETIME = 600  # RFC 8656 §12 (10 minutes)
RESERVATION_TOKEN_SIZE = 8  # RFC 8656 §18.9
UNAUTHENTICATED_RATE = ANSWER_RATE
"""Unsigned answers per second per source prefix over UDP, after the burst (issue 9, 24)."""
UNAUTHENTICATED_BURST = ANSWER_BURST
"""Unsigned answers a source prefix may get at once before the rate applies (issue 9, 24)."""

_HEAD3 = struct.Struct("!HHI")
_HEADER = struct.Struct("!HHI12s")
_TL = struct.Struct("!HH")
_CD_HEAD = struct.Struct("!HH")
_FP_TLV = struct.Struct("!HHI")
_ADDR4_TLV = struct.Struct("!HHxBH4s")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")

_SEND_INDICATION = encode_type(Method.SEND, MessageClass.INDICATION)
_DATA_INDICATION = encode_type(Method.DATA, MessageClass.INDICATION)
_BINDING_METHOD = int(Method.BINDING)
_XOR_PEER = int(AttrType.XOR_PEER_ADDRESS)
_DATA = int(AttrType.DATA)
_DONT_FRAGMENT = int(AttrType.DONT_FRAGMENT)
_HEAP_COMPACT_MIN = 1024
"""Timer-heap size below which stale entries are left for handle_timer to skip."""
_FINGERPRINT = int(AttrType.FINGERPRINT)
_INTEGRITY = frozenset((int(AttrType.MESSAGE_INTEGRITY), int(AttrType.MESSAGE_INTEGRITY_SHA256)))
_IPV4 = int(Family.IPV4)
_IPV6 = int(Family.IPV6)
_MD5 = int(PasswordAlgorithmId.MD5)
_SHA256 = int(PasswordAlgorithmId.SHA256)
_COOKIE_PORT = MAGIC_COOKIE >> 16
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
_MAX_BODY = 0xFFFF
_PEER_TLV_CACHE = 4096
_TURN_METHODS = frozenset(
    (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
)
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


# --------------------------------------------------------------------------- output


class DontFragmentTransmit(Transmit):
    """A :class:`~anchor_stun.events.Transmit` to a peer that must be sent with fragmentation
    forbidden: the DF bit set (IPv4) or ``IPV6_DONTFRAG`` (IPv6). It relays a Send indication
    that carried DONT-FRAGMENT (RFC 8656 §11.2, §14, §15); a plain ``Transmit`` to a peer is
    sent with fragmentation allowed."""

    __slots__ = ()


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TurnServerEvent:
    """Base of the events :class:`TurnServer` reports through ``next_event()``."""


@dataclass(frozen=True, slots=True)
class AllocationCreatedEvent(TurnServerEvent):
    """An Allocate request succeeded (RFC 8656 §7.2)."""

    client: Address
    """The client's transport address (source of the 5-tuple)."""
    local: Address
    """The listener the client used (server side of the 5-tuple)."""
    transport: TransportName
    """The client-facing transport."""
    username: str
    """The authenticated username that owns the allocation."""
    relayed_addresses: tuple[Address, ...]
    """Every relayed transport address: one, or two for a dual allocation (RFC 8656 §7.1
    ADDITIONAL-ADDRESS-FAMILY, §7.2)."""
    lifetime: int
    """The granted lifetime, seconds."""

    @property
    def relayed(self) -> Address:
        """The (first) relayed transport address; all of them are :attr:`relayed_addresses`
        (the client's :class:`~anchor_turn.events.AllocationCreated` has the same two)."""
        return self.relayed_addresses[0]


@dataclass(frozen=True, slots=True)
class AllocationRefreshedEvent(TurnServerEvent):
    """A Refresh request with a non-zero lifetime succeeded (RFC 8656 §8.2)."""

    client: Address
    """The client's transport address."""
    local: Address
    """The listener of the 5-tuple."""
    transport: TransportName
    """The client-facing transport."""
    lifetime: int
    """The new lifetime, seconds."""


@dataclass(frozen=True, slots=True)
class AllocationDeletedEvent(TurnServerEvent):
    """An allocation was deleted by its client (Refresh with LIFETIME 0, RFC 8656 §8.2) or
    because its TCP/TLS connection closed."""

    client: Address
    """The client's transport address."""
    local: Address
    """The listener of the 5-tuple."""
    transport: TransportName
    """The client-facing transport."""
    username: str
    """The username that owned the allocation."""
    relayed: tuple[Address, ...]
    """The relayed transport addresses released."""
    reason: Literal["refresh", "connection closed"]
    """Why: a Refresh with lifetime zero, or the connection closing."""


@dataclass(frozen=True, slots=True)
class AllocationExpiredEvent(TurnServerEvent):
    """An allocation reached its time-to-expiry without a refresh (RFC 8656 §5)."""

    client: Address
    """The client's transport address."""
    local: Address
    """The listener of the 5-tuple."""
    transport: TransportName
    """The client-facing transport."""
    username: str
    """The username that owned the allocation."""
    relayed: tuple[Address, ...]
    """The relayed transport addresses released."""


@dataclass(frozen=True, slots=True)
class PermissionCreatedEvent(TurnServerEvent):
    """A permission was installed for a peer IP (RFC 8656 §9); not sent on refreshes."""

    client: Address
    """The client's transport address."""
    peer_ip: str
    """The peer IP address now allowed."""


@dataclass(frozen=True, slots=True)
class PermissionExpiredEvent(TurnServerEvent):
    """A permission reached its time-to-expiry (RFC 8656 §9)."""

    client: Address
    """The client's transport address."""
    peer_ip: str
    """The peer IP address no longer allowed."""


@dataclass(frozen=True, slots=True)
class ChannelBoundEvent(TurnServerEvent):
    """A channel was bound to a peer (RFC 8656 §12.2); not sent on refreshes."""

    client: Address
    """The client's transport address."""
    channel: int
    """The channel number, 0x4000-0x7FFF (0x4000-0x4FFF with ``strict_channels``)."""
    peer: Address
    """The peer transport address bound to it."""


@dataclass(frozen=True, slots=True)
class ChannelExpiredEvent(TurnServerEvent):
    """A channel binding reached its time-to-expiry (RFC 8656 §12)."""

    client: Address
    """The client's transport address."""
    channel: int
    """The channel number."""
    peer: Address
    """The peer transport address it was bound to."""


@dataclass(frozen=True, slots=True)
class AuthenticationFailedEvent(TurnServerEvent):
    """A request presented credentials that did not verify (RFC 8489 §9.2.4): an unknown
    user, another realm, or a MESSAGE-INTEGRITY that does not match."""

    client: Address
    """The source of the request."""
    username: str | None
    """The USERNAME (or the owner of the USERHASH) claimed, when known."""
    code: int
    """The error code answered (401)."""


# --------------------------------------------------------------------------- injected parts


class RelayAllocator(Protocol):
    """Binds and releases relayed transport addresses; implemented by the adapter (which
    owns the sockets) and by fakes in tests (RFC 8656 §7.2 "choosing a relayed address")."""

    def allocate(
        self,
        family: int,
        even_port: bool,
        reserve_next: bool,
        token: bytes | None,
        now: float,
    ) -> tuple[Address, bytes | None] | None:
        """Bind a relayed address of ``family`` (1 IPv4, 2 IPv6), with an even port when
        ``even_port``; with ``reserve_next`` also reserve port N+1 and return its 8-byte
        RESERVATION-TOKEN; with ``token`` use the address reserved under it (``family`` is
        then IPv4 by default and the reserved address's family wins). Returns (address,
        token or None), or None when nothing suitable is available (508)."""
        ...

    def release(self, addr: Address) -> None:
        """Close the relayed address ``addr`` (its allocation or family ended)."""
        ...


# --------------------------------------------------------------------------- state


class _Timed:
    """Something with a time-to-expiry that sits in the timer heap."""

    __slots__ = ("alive", "expires")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.alive = True


class _Relay(_Timed):
    """One relayed transport address of an allocation, with its own lifetime (§8.1)."""

    __slots__ = ("addr", "allocation", "dont_fragment", "family")

    def __init__(
        self,
        addr: Address,
        family: int,
        allocation: _Allocation,
        expires: float,
        dont_fragment: bool,
    ) -> None:
        super().__init__(expires)
        self.addr = addr
        self.family = family
        self.allocation = allocation
        self.dont_fragment = dont_fragment
        """Whether DONT-FRAGMENT in a Send indication applies on this relay: IPv4-to-IPv4
        over UDP (RFC 8656 §14) or any TCP/TLS allocation (§15), not a translation (§13)."""


class _Permission(_Timed):
    """A permission: a peer IP and its time-to-expiry (RFC 8656 §9)."""

    __slots__ = ("allocation", "family", "ip")

    def __init__(self, ip: str, family: int, allocation: _Allocation, expires: float) -> None:
        super().__init__(expires)
        self.ip = ip
        self.family = family
        self.allocation = allocation


class _Channel(_Timed):
    """A channel binding (RFC 8656 §12): number, peer transport address, relay to use."""

    __slots__ = ("allocation", "family", "number", "peer", "relay")

    def __init__(
        self,
        number: int,
        peer: Address,
        family: int,
        relay: Address,
        allocation: _Allocation,
        expires: float,
    ) -> None:
        super().__init__(expires)
        self.number = number
        self.peer = peer
        self.family = family
        self.relay = relay
        self.allocation = allocation


class _Allocation:
    """The server's allocation record (RFC 8656 §5)."""

    __slots__ = (
        "alive",
        "by_peer",
        "channels",
        "client",
        "key",
        "local",
        "permissions",
        "relays",
        "request",
        "response",
        "stream",
        "transport",
        "username",
    )

    def __init__(
        self,
        client: Address,
        local: Address,
        transport: TransportName,
        username: str,
    ) -> None:
        self.client = client
        self.local = local
        self.transport: TransportName = transport
        self.key = (client, local, transport)
        self.stream = transport != "udp"
        self.username = username
        self.relays: dict[int, _Relay] = {}
        self.permissions: dict[str, _Permission] = {}
        self.channels: dict[int, _Channel] = {}
        self.by_peer: dict[Address, _Channel] = {}
        self.request = b""
        self.response = b""
        self.alive = True

    def relayed(self) -> tuple[Address, ...]:
        return tuple(r.addr for r in self.relays.values())


class _Reject(Exception):
    """Internal: stop processing a request with this error response (never escapes)."""

    def __init__(self, code: ErrorCode, *attrs: Attribute) -> None:
        super().__init__(int(code))
        self.code = code
        self.attrs = attrs


def _family_of(ip: str) -> int:
    """1 or 2 for an IP string; raises LocalProtocolError when it is not one."""
    return int(pack_ip(ip)[0])


def _is_ipv4(ip: str) -> bool:
    """True for an IPv4 address, and for an IPv4-mapped IPv6 one (a dual-stack listener's
    IPv4 client: its packets are IPv4 on the wire)."""
    family, packed = pack_ip(ip)
    return family == Family.IPV4 or packed[:12] == _V4_MAPPED


def _reflexive(addr: Address) -> XorMappedAddress:
    """XOR-MAPPED-ADDRESS of a client; an IPv4-mapped IPv6 source is reported as IPv4."""
    family, packed = pack_ip(addr[0])
    if family == Family.IPV6 and packed[:12] == _V4_MAPPED:
        return XorMappedAddress(unpack_ip(Family.IPV4, packed[12:]), addr[1])
    return XorMappedAddress(addr[0], addr[1])


# --------------------------------------------------------------------------- the core


class TurnServer:
    """Sans-I/O TURN server (RFC 8656) with long-term authentication (RFC 8489 §9.2).

    See the module docstring for the order of checks. Keyword-only configuration:

    - ``realm`` and ``auth`` (a :class:`~anchor_turn.auth.CredentialBackend`): the long-term
      credential realm and where keys come from.
    - ``relay``: the :class:`RelayAllocator` the adapter implements.
    - ``stun``: the :class:`~anchor_stun.server.StunServer` answering Binding requests on the
      TURN listeners (default: a plain one with the same SOFTWARE).
    - ``rng``: randomness for the nonce secret and indication transaction ids.
    - lifetimes in seconds: ``default_lifetime``, ``max_lifetime`` (RFC 8656 §7.2),
      ``permission_lifetime`` (§9), ``channel_lifetime`` (§12), ``nonce_lifetime``.
    - ``password_algorithms``: offered in PASSWORD-ALGORITHMS, in preference order
      (RFC 8489 §14.11); empty for RFC 5389-style MD5 only, without the cookie bit.
    - ``username_anonymity``: advertise USERHASH support in the nonce cookie (§9.2.1).
    - ``user_quota``, ``total_quota``: allocations per username / in all (486, §7.2).
    - ``max_permissions``, ``max_channels``: per allocation (508).
    - ``address_families``: relay families offered (440 for others, §7.2).
    - ``peer_filter``: a ``Callable[[str], bool]`` deciding which peer IPs are allowed;
      default :class:`PeerFilter` built from ``allow_loopback_peers`` and ``allow_peers``.
    - ``max_events``: events kept when nobody reads them (oldest dropped first).
    - ``strict_channels``: accept only RFC 8656 §12's channel numbers 0x4000-0x4FFF; by
      default RFC 5766 §11's 0x4000-0x7FFF, which browsers and coturn's clients use.
    - ``unauthenticated_rate``, ``unauthenticated_burst``: the per-source-IP rate limit of
      unsigned answers over UDP (module docstring); a rate of ``None`` turns it off.
    - ``dont_fragment``: the adapter can send datagrams to peers with fragmentation forbidden
      (:class:`DontFragmentTransmit`); False makes DONT-FRAGMENT an unknown attribute
      (RFC 8656 §7.2 step 4, §11.2).
    - ``self_addresses``: more (ip, port) addresses the server answers on, refused as peers
      besides its listeners (see :meth:`add_self_addresses`).
    - ``nonce_secret``: the key of the stateless nonces (default 32 bytes from ``rng``);
      servers given the same one accept each other's nonces (worker processes).
    - ``external``: :class:`~anchor_turn.external.ExternalAddresses`, the public addresses
      XOR-RELAYED-ADDRESS names for relays on private ones (coturn's ``--external-ip``).
    - ``alternates``: :class:`~anchor_turn.admission.AlternateServers`, when to answer an
      Allocate with 300 Try Alternate (RFC 8489 §10).
    - ``shared_quota``: a :class:`~anchor_turn.admission.SharedQuota` asked after the
      server's own quotas (486 or 508 from it), told when each allocation it admitted ends.

    Raises :class:`LocalProtocolError` on a bad configuration.
    """

    def __init__(
        self,
        *,
        realm: str,
        auth: CredentialBackend,
        relay: RelayAllocator,
        stun: StunServer | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        software: str | None = "anchor",
        default_lifetime: int = DEFAULT_LIFETIME,
        max_lifetime: int = MAX_LIFETIME,
        permission_lifetime: float = DEFAULT_PERMISSION_LIFETIME,
        channel_lifetime: float = DEFAULT_CHANNEL_LIFETIME,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        password_algorithms: tuple[int, ...] = (_SHA256, _MD5),
        username_anonymity: bool = False,
        user_quota: int | None = None,
        total_quota: int | None = None,
        max_permissions: int = 256,
        max_channels: int = CHANNEL_MAX - CHANNEL_MIN + 1,
        address_families: tuple[int, ...] = (_IPV4, _IPV6),
        peer_filter: Callable[[str], bool] | None = None,
        allow_loopback_peers: bool = False,
        allow_peers: Iterable[str] = (),
        max_events: int = 4096,
        strict_channels: bool = False,
        unauthenticated_rate: float | None = UNAUTHENTICATED_RATE,
        unauthenticated_burst: int = UNAUTHENTICATED_BURST,
        dont_fragment: bool = True,
        self_addresses: Iterable[Address] = (),
        nonce_secret: bytes | None = None,
        external: ExternalAddresses | None = None,
        alternates: AlternateServers | None = None,
        shared_quota: SharedQuota | None = None,
    ) -> None:
        self._check_parts(auth, relay, stun, rng, software, peer_filter, external, alternates,
                          shared_quota)
        _whole(default_lifetime, "default_lifetime", 1, 0xFFFFFFFF)
        _whole(max_lifetime, "max_lifetime", 1, 0xFFFFFFFF)
        if default_lifetime > max_lifetime:
            raise LocalProtocolError(
                f"default_lifetime ({default_lifetime}) must be <= max_lifetime ({max_lifetime})"
            )
        seconds(permission_lifetime, "permission_lifetime")
        seconds(channel_lifetime, "channel_lifetime")
        if not isinstance(address_families, tuple | list) or any(
            fam not in (_IPV4, _IPV6) for fam in address_families
        ):
            raise LocalProtocolError(
                "address_families must be a tuple of Family.IPV4 / Family.IPV6 (RFC 8656"
                f" §7.2), not {address_families!r}"
            )
        for quota, what in ((user_quota, "user_quota"), (total_quota, "total_quota")):
            if quota is not None:
                _whole(quota, what, 0)
        _whole(max_permissions, "max_permissions", 1)
        _whole(max_channels, "max_channels", 1)
        _whole(max_events, "max_events", 0)
        if unauthenticated_rate is not None and (
            isinstance(unauthenticated_rate, bool)
            or not isinstance(unauthenticated_rate, int | float)
            or not unauthenticated_rate > 0
        ):
            raise LocalProtocolError(
                "unauthenticated_rate must be a number of answers per second > 0, or None (no"
                f" limit), not {unauthenticated_rate!r}"
            )
        _whole(unauthenticated_burst, "unauthenticated_burst", 1)
        networks(allow_peers, "allow_peers")
        if nonce_secret is not None and (
            not isinstance(nonce_secret, bytes) or len(nonce_secret) < 16
        ):
            raise LocalProtocolError(
                f"nonce_secret must be at least 16 bytes (or None), not {nonce_secret!r}"
            )
        self.authenticator = NonceAuthenticator(
            realm=realm,
            backend=auth,
            rng=rng,
            secret=nonce_secret,
            nonce_lifetime=nonce_lifetime,
            password_algorithms=password_algorithms,
            username_anonymity=username_anonymity,
        )
        """The long-term credential mechanism with its nonces (:mod:`anchor_turn.nonce_auth`)."""
        self.relay = relay
        """The relayed-address allocator."""
        self.stun = (
            stun if stun is not None else StunServer(primary=("0.0.0.0", 3478), software=software)
        )
        """The STUN core answering Binding requests (RFC 8489)."""
        self.software = software
        """SOFTWARE of every response, or None (RFC 8489 §14.14)."""
        self.default_lifetime = default_lifetime
        """Default allocation lifetime, seconds (RFC 8656 §7.2)."""
        self.max_lifetime = max_lifetime
        """Maximum allocation lifetime, seconds (RFC 8656 §7.2)."""
        self.permission_lifetime = permission_lifetime
        """Permission lifetime, seconds (RFC 8656 §9)."""
        self.channel_lifetime = channel_lifetime
        """Channel binding lifetime, seconds (RFC 8656 §12)."""
        self.user_quota = user_quota
        """Allocations allowed per username, or None (RFC 8656 §7.2, 486)."""
        self.total_quota = total_quota
        """Allocations allowed in all, or None (486)."""
        self.max_permissions = max_permissions
        """Permissions allowed per allocation (508 beyond)."""
        self.max_channels = max_channels
        """Channel bindings allowed per allocation (508 beyond)."""
        self.channel_max = CHANNEL_MAX if strict_channels else CHANNEL_MAX_RFC5766
        """Highest channel number a ChannelBind may ask for (RFC 8656 §12, RFC 5766 §11)."""
        self.address_families = tuple(address_families)
        """Relayed address families offered (RFC 8656 §7.2, 440 for others)."""
        self.dont_fragment = dont_fragment
        """Whether the adapter can forbid fragmentation of datagrams to peers; without it
        DONT-FRAGMENT is an unknown comprehension-required attribute (RFC 8656 §7.2 step 4,
        §11.2). :class:`~anchor_turn.aio.server.TurnServerRunner` clears it where the
        platform lacks the socket options."""
        self.peer_filter: Callable[[str], bool] = (
            peer_filter
            if peer_filter is not None
            else PeerFilter(allow_loopback=allow_loopback_peers, allow=allow_peers)
        )
        """Decides which peer IPs may be reached (403 otherwise)."""
        self.stats = TurnServerStats()
        """Counters."""
        self.external = external
        """Public addresses advertised for relays on private ones, or None."""
        self.alternates = alternates
        """When and where to redirect Allocate requests (300), or None."""
        self.shared_quota = shared_quota
        """The quota shared with other servers, or None."""

        self._rng = rng
        self._software_attrs: list[Attribute] = [Software(software)] if software else []
        self._tid_prefix = rng(4)
        self._tid_counter = 0

        self._by_tuple: dict[tuple[Address, Address, str], _Allocation] = {}
        self._relays: dict[Address, _Relay] = {}
        self._per_user: dict[str, int] = {}
        self.myself = SelfAddresses(self.stun.local_addresses() if stun is not None else ())
        """The addresses the server answers on, refused as peers (RFC 8656 §21,
        :class:`~anchor_turn.peer_filter.SelfAddresses`)."""
        self.myself.add(self_addresses, "self_addresses")
        self._heap: list[tuple[float, int, _Timed]] = []
        self._heap_compact_at = _HEAP_COMPACT_MIN
        self._seq = count()
        self._out: list[Transmit] = []
        self._events: deque[TurnServerEvent] = deque(maxlen=max_events)
        self._peer_tlvs: dict[Address, bytes] = {}
        self.budget: AnswerBudget | None = (
            AnswerBudget(rate=unauthenticated_rate, burst=unauthenticated_burst)
            if unauthenticated_rate is not None
            else None
        )
        """The per-prefix budget of unsigned answers over UDP (:mod:`anchor_stun.budget`),
        shared with the STUN core, or None."""
        self.stun.budget = self.budget

    @staticmethod
    def _check_parts(
        auth: object,
        relay: object,
        stun: object,
        rng: object,
        software: object,
        peer_filter: object,
        external: object,
        alternates: object,
        shared_quota: object,
    ) -> None:
        """The injected parts checked where they enter (LocalProtocolError naming each)."""
        if not isinstance(auth, CredentialBackend):
            raise LocalProtocolError(
                "auth must be a CredentialBackend (StaticUsers, SqliteUsers, RestSecret...),"
                f" not {type(auth).__name__}"
            )
        if not all(callable(getattr(relay, name, None)) for name in ("allocate", "release")):
            raise LocalProtocolError(
                f"relay must be a RelayAllocator (UdpRelayAllocator), not {type(relay).__name__}"
            )
        if stun is not None and not isinstance(stun, StunServer):
            raise LocalProtocolError(
                f"stun must be a StunServer (StunServer(primary=...)) or None, not {stun!r}"
            )
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        if software is not None and not isinstance(software, str):
            raise LocalProtocolError(f"software must be a string or None, not {software!r}")
        if peer_filter is not None and not callable(peer_filter):
            raise LocalProtocolError(
                f"peer_filter must be a function ip -> bool (a PeerFilter) or None, not {peer_filter!r}"
            )
        for part, what, kind in (
            (external, "external", ExternalAddresses), (alternates, "alternates", AlternateServers),
            (shared_quota, "shared_quota", SharedQuota),
        ):
            if part is not None and not isinstance(part, kind):
                raise LocalProtocolError(
                    f"{what} must be a {kind.__name__} or None, not {type(part).__name__}"
                )

    @property
    def realm(self) -> str:
        """The REALM of the long-term credentials (RFC 8489 §14.9)."""
        return self.authenticator.realm

    @property
    def auth(self) -> CredentialBackend:
        """The credential back-end."""
        return self.authenticator.backend

    @property
    def nonce_lifetime(self) -> float:
        """How long a NONCE stays valid, seconds (RFC 8489 §9.2)."""
        return self.authenticator.nonce_lifetime

    @property
    def password_algorithms(self) -> tuple[int, ...]:
        """Algorithms offered in PASSWORD-ALGORITHMS, in preference order."""
        return self.authenticator.password_algorithms

    # ================================================================== driver surface

    def receive_datagram(
        self,
        data: bytes,
        addr: Address,
        local: Address,
        now: float,
        *,
        transport: TransportName = "udp",
    ) -> None:
        """Feed one message a client sent to the listener ``local`` (RFC 8656 §5): a STUN
        message or ChannelData, one whole frame for TCP/TLS. Never raises on bad input."""
        size = len(data)
        if size < 4:
            self.stats.dropped += 1
            return
        first = data[0]
        if 0x40 <= first <= 0x7F:  # only channels ChannelBind accepted can match
            # ChannelData fast path (RFC 8656 §12.4): dict lookups, one slice, no decoding.
            alloc = self._by_tuple.get((addr, local, transport))
            if alloc is not None:
                number, length = _CD_HEAD.unpack_from(data)
                channel = alloc.channels.get(number)
                if channel is not None and 0 <= size - 4 - length <= 3 and channel.expires > now:
                    permission = alloc.permissions.get(channel.peer[0])
                    if permission is not None and permission.expires > now:
                        payload = data[4 : 4 + length]
                        self._out.append(Transmit(payload, channel.peer, channel.relay))
                        stats = self.stats
                        stats.to_peer_packets += 1
                        stats.to_peer_bytes += length
                        return
                    self.stats.dropped_no_permission += 1
            self.stats.dropped += 1
            return
        if first >= 0x80 or size < HEADER_SIZE:
            self.stats.dropped += 1
            return
        msg_type, length, cookie = _HEAD3.unpack_from(data)
        if cookie != MAGIC_COOKIE or length + HEADER_SIZE != size:
            if cookie == MAGIC_COOKIE and decode_type(msg_type)[1] == MessageClass.REQUEST:
                self._stun_general(data, addr, local, transport, now)  # 400 on bad length
            else:
                self.stats.dropped += 1
            return
        if msg_type == _SEND_INDICATION:
            self._send_indication(data, addr, local, transport, now)
            return
        if decode_type(msg_type)[0] == _BINDING_METHOD:
            out = self.stun.handle(data, addr, local, now, stream=transport != "udp")
            if out is not None:  # the STUN core charged it to the shared budget
                self._out.append(out)
            return
        self._stun_general(data, addr, local, transport, now)

    def receive_relay(self, data: bytes, peer: Address, relay: Address, now: float) -> None:
        """Feed one UDP datagram that ``peer`` sent to the relayed address ``relay``
        (RFC 8656 §11.3, §12.7). ``relay`` is the address the allocator returned; ``peer`` an
        (ip, port) tuple with the IP in canonical text form. Never raises."""
        rel = self._relays.get(relay)
        stats = self.stats
        if rel is None:
            stats.dropped += 1
            return
        alloc = rel.allocation
        permission = alloc.permissions.get(peer[0])
        if rel.expires <= now:
            stats.dropped += 1
            return
        if permission is None or permission.expires <= now:
            stats.dropped_no_permission += 1
            stats.dropped += 1
            return
        size = len(data)
        channel = alloc.by_peer.get(peer)
        if channel is not None and channel.expires > now:
            if size > _MAX_BODY:
                stats.dropped += 1
                return
            if alloc.stream and size & 3:
                out = b"".join((_CD_HEAD.pack(channel.number, size), data, _PAD[size & 3]))
            else:
                out = _CD_HEAD.pack(channel.number, size) + data
        else:
            out = self._data_indication(data, peer)
            if not out:
                stats.dropped += 1
                return
        self._out.append(Transmit(out, alloc.client, alloc.local))
        stats.to_client_packets += 1
        stats.to_client_bytes += size

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """Everything to send since the last call, in order: responses, indications and
        ChannelData to clients (``local`` = listener), payloads to peers (``local`` = the
        relayed address to send from)."""
        out, self._out = self._out, []
        return out

    def next_timer(self) -> float | None:
        """The next time an allocation, permission or channel expires, or None."""
        heap = self._heap
        while heap:
            when, _, obj = heap[0]
            if obj.alive and obj.expires == when:
                return when
            heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Expire what is due at ``now`` (RFC 8656 §5, §9, §12); early calls do nothing."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, obj = heappop(heap)
            if not obj.alive or obj.expires != when:
                continue
            if isinstance(obj, _Permission):
                self._expire_permission(obj)
            elif isinstance(obj, _Channel):
                self._expire_channel(obj)
            elif isinstance(obj, _Relay):
                self._expire_relay(obj)

    def next_event(self) -> TurnServerEvent | None:
        """The oldest event not yet read, or None."""
        events = self._events
        return events.popleft() if events else None

    def connection_closed(self, addr: Address, local: Address, now: float) -> None:
        """The TCP/TLS connection from ``addr`` to ``local`` closed: its allocation, if any,
        is deleted (RFC 8656 §3.1: the allocation lives on that connection)."""
        for transport in ("tcp", "tls"):
            alloc = self._by_tuple.get((addr, local, transport))
            if alloc is not None:
                relayed = alloc.relayed()
                self._delete_allocation(alloc)
                self.stats.allocations_deleted += 1
                self._events.append(
                    AllocationDeletedEvent(
                        alloc.client,
                        alloc.local,
                        alloc.transport,
                        alloc.username,
                        relayed,
                        "connection closed",
                    )
                )

    # ------------------------------------------------------------------ introspection

    def allocation_count(self) -> int:
        """Allocations alive now."""
        return len(self._by_tuple)

    def relayed_addresses(self) -> list[Address]:
        """Every relayed transport address in use."""
        return list(self._relays)

    def relayed_for(
        self, addr: Address, local: Address, transport: TransportName = "udp"
    ) -> tuple[Address, ...]:
        """The relayed addresses of the allocation of a 5-tuple (empty when none)."""
        alloc = self._by_tuple.get((addr, local, transport))
        return alloc.relayed() if alloc is not None else ()

    def add_self_addresses(self, addresses: Iterable[Address]) -> None:
        """Declare addresses the server answers on (RFC 8656 §21: no relaying to itself): a
        permission, ChannelBind or Send to one of them is refused. The adapter passes every
        listener, and for a wildcard listener (0.0.0.0, ::) the host's addresses with its
        port and any external address; a wildcard here also makes the whole loopback range
        on that port "myself". Raises :class:`LocalProtocolError` for a malformed address."""
        self.myself.add(addresses)

    # ================================================================== client → peer data

    def _send_indication(
        self, data: bytes, addr: Address, local: Address, transport: str, now: float
    ) -> None:
        """The one parser of Send indications (RFC 8656 §11.2): the attribute list is walked
        without the codec and only XOR-PEER-ADDRESS is decoded. ``data`` has a valid header
        (type, cookie, length). Dropped: a body not cut into whole attributes, a FINGERPRINT
        that does not verify, an unknown comprehension-required attribute (DONT-FRAGMENT is
        one without the ``dont_fragment`` capability), no XOR-PEER-ADDRESS or DATA, a peer
        address that does not decode. The first XOR-PEER-ADDRESS and DATA count; attributes
        after MESSAGE-INTEGRITY(-SHA256) are ignored (RFC 8489 §14.5, §14.6) and so is what
        follows FINGERPRINT (§14.7); integrity is not checked (an indication cannot be
        authenticated, §11.2), and other known attributes are not looked at."""
        size = len(data)
        if size & 3:  # the length of a STUN message is a multiple of 4 (RFC 8489 §5)
            self.stats.dropped += 1
            return
        pos = HEADER_SIZE
        peer_at = data_at = -1
        peer_len = data_len = 0
        dont_fragment = False
        covered = True  # no MESSAGE-INTEGRITY(-SHA256) yet
        while pos < size:  # pos and size are multiples of 4: a whole TLV header is there
            atype, alen = _TL.unpack_from(data, pos)
            nxt = pos + 4 + alen + (-alen & 3)
            if nxt > size:
                self.stats.dropped += 1
                return
            if atype == _FINGERPRINT:
                crc = zlib.crc32(memoryview(data)[:pos]) ^ FINGERPRINT_XOR
                if alen != 4 or crc != _U32.unpack_from(data, pos + 4)[0]:
                    self.stats.dropped += 1
                    return
                break
            if covered:
                if atype == _XOR_PEER:
                    if peer_at < 0:
                        peer_at, peer_len = pos + 4, alen
                elif atype == _DATA:
                    if data_at < 0:
                        data_at, data_len = pos + 4, alen
                elif atype == _DONT_FRAGMENT:
                    if not self.dont_fragment:  # unknown comprehension-required (§11.2)
                        self.stats.dropped += 1
                        return
                    dont_fragment = True
                elif atype in _INTEGRITY:
                    covered = False
                elif atype < 0x8000 and atype not in KNOWN_TYPES:
                    self.stats.dropped += 1  # unknown comprehension-required (RFC 8489 §6.3.2)
                    return
            pos = nxt
        if peer_at < 0 or data_at < 0:
            self.stats.dropped += 1
            return
        try:
            peer = XorPeerAddress.decode_value(data[peer_at : peer_at + peer_len], data[8:20])
        except DecodeError:
            self.stats.dropped += 1
            return
        self._relay_to_peer(
            data[data_at : data_at + data_len],
            peer.address,
            addr,
            local,
            transport,
            now,
            dont_fragment,
        )

    def _relay_to_peer(
        self,
        payload: bytes,
        peer: Address,
        addr: Address,
        local: Address,
        transport: str,
        now: float,
        dont_fragment: bool = False,
    ) -> None:
        """The checks of RFC 8656 §11.2 after parsing, then the datagram to the peer, with
        fragmentation forbidden when the indication carried DONT-FRAGMENT and it applies on
        the relay (§13-§15)."""
        stats = self.stats
        alloc = self._by_tuple.get((addr, local, transport))
        if alloc is None:
            stats.dropped += 1
            return
        permission = alloc.permissions.get(peer[0])
        if permission is None or permission.expires <= now:
            stats.dropped_no_permission += 1
            stats.dropped += 1
            return
        relay = alloc.relays.get(permission.family)
        if relay is None or relay.expires <= now:
            stats.dropped += 1
            return
        if peer[1] == 0 or self._is_self(peer, alloc):
            stats.peers_refused += 1
            stats.dropped += 1
            return
        if dont_fragment and relay.dont_fragment:
            self._out.append(DontFragmentTransmit(payload, peer, relay.addr))
            stats.to_peer_dont_fragment += 1
        else:
            self._out.append(Transmit(payload, peer, relay.addr))
        stats.to_peer_packets += 1
        stats.to_peer_bytes += len(payload)

    def _is_self(self, peer: Address, alloc: _Allocation) -> bool:
        """True for the allocation's own relayed addresses and the server's own addresses
        (:meth:`add_self_addresses`; any loopback IP on the port of a wildcard listener), in
        any textual form (an IPv4-mapped IPv6 address is the IPv4 address it maps)."""
        return self.myself.includes(peer, alloc.relayed())

    # ================================================================== peer → client data

    def _data_indication(self, payload: bytes, peer: Address) -> bytes:
        """A Data indication with XOR-PEER-ADDRESS, DATA and FINGERPRINT (RFC 8656 §11.3);
        empty when it would not fit in a STUN message."""
        self._tid_counter += 1
        tid = self._tid_prefix + _U64.pack(self._tid_counter)
        peer_tlv = self._peer_tlvs.get(peer)
        if peer_tlv is None:
            try:
                family, packed = pack_ip(peer[0])
                if family == Family.IPV4:
                    xored = (int.from_bytes(packed, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
                    peer_tlv = _ADDR4_TLV.pack(_XOR_PEER, 8, _IPV4, peer[1] ^ _COOKIE_PORT, xored)
                    cache = self._peer_tlvs
                    if len(cache) >= _PEER_TLV_CACHE:
                        cache.clear()
                    cache[peer] = peer_tlv
                else:  # IPv6: the XOR key includes the transaction id (RFC 8489 §14.2)
                    value = XorPeerAddress(peer[0], peer[1]).encode_value(tid)
                    peer_tlv = _TL.pack(_XOR_PEER, len(value)) + value
            except LocalProtocolError:
                return b""
        size = len(payload)
        pad = _PAD[size & 3]
        body_length = len(peer_tlv) + 4 + size + len(pad) + 8
        if body_length > _MAX_BODY:
            return b""
        head = _HEADER.pack(_DATA_INDICATION, body_length, MAGIC_COOKIE, tid)
        data_tl = _TL.pack(_DATA, size)
        crc = zlib.crc32(head)
        crc = zlib.crc32(peer_tlv, crc)
        crc = zlib.crc32(data_tl, crc)
        crc = zlib.crc32(payload, crc)
        crc = zlib.crc32(pad, crc) ^ FINGERPRINT_XOR
        return b"".join((head, peer_tlv, data_tl, payload, pad, _FP_TLV.pack(_FINGERPRINT, 4, crc)))

    # ================================================================== STUN messages

    def _stun_general(
        self, data: bytes, addr: Address, local: Address, transport: TransportName, now: float
    ) -> None:
        """Decode and process a STUN message (steps 4-10 of the module docstring)."""
        stats = self.stats
        if local not in self.myself:
            self.myself.add((local,))
        try:
            msg = Message.decode(data)
        except DecodeError as exc:
            tid = exc.transaction_id
            method, klass = decode_type(((data[0] << 8) | data[1]) & 0x3FFF)
            if tid is None or klass != MessageClass.REQUEST:
                stats.dropped += 1
                return
            stats.requests += 1
            request = Message(method, klass, bytes(tid), raw=data)
            self._send_error(request, ErrorCode.BAD_REQUEST, (), addr, local, None, now, transport)
            return
        if msg.fingerprint is not None and not msg.verify_fingerprint():
            stats.dropped += 1
            return
        klass = msg.msg_class
        if klass != MessageClass.REQUEST:  # responses; indications other than Send (§11.2)
            stats.dropped += 1
            return
        stats.requests += 1
        self._request(msg, data, addr, local, transport, now)

    def _request(
        self,
        msg: Message,
        data: bytes,
        addr: Address,
        local: Address,
        transport: TransportName,
        now: float,
    ) -> None:
        """Steps 6-10 of the module docstring for one decoded request."""
        if msg.method not in _TURN_METHODS:
            self._send_error(msg, ErrorCode.BAD_REQUEST, (), addr, local, None, now, transport)
            return
        self.handle_timer(now)  # what is due is gone before the request looks at it
        alloc = self._by_tuple.get((addr, local, transport))
        if (
            alloc is not None
            and msg.method == Method.ALLOCATE
            and alloc.request == data
            and alloc.response
        ):
            self._out.append(Transmit(alloc.response, addr, local))  # retransmission (§7.2)
            return
        auth = self._authenticate(msg, addr, local, now, transport)
        if auth is None:
            return
        if self.budget is not None and transport == "udp":
            self.budget.earn(addr[0], len(data), now)  # a signed exchange: the prefix earns
        unknown = self._unknown(msg)
        try:
            if unknown:
                raise _Reject(
                    ErrorCode.UNKNOWN_ATTRIBUTE, UnknownAttributes(tuple(dict.fromkeys(unknown)))
                )
            if msg.method == Method.ALLOCATE:
                attrs = self._allocate(msg, auth, alloc, addr, local, transport, now)
            else:
                if alloc is None:
                    raise _Reject(ErrorCode.ALLOCATION_MISMATCH)
                if alloc.username != auth.username:
                    raise _Reject(ErrorCode.WRONG_CREDENTIALS)  # RFC 8656 §5
                if msg.method == Method.REFRESH:
                    attrs = self._refresh(msg, alloc, now)
                elif msg.method == Method.CREATE_PERMISSION:
                    attrs = self._create_permission(msg, alloc, now)
                else:
                    attrs = self._channel_bind(msg, alloc, now)
        except _Reject as reject:
            self._send_error(msg, reject.code, reject.attrs, addr, local, auth, now, transport)
            return
        response = self._encode(
            Message(msg.method, MessageClass.SUCCESS, msg.transaction_id, attrs), auth
        )
        if msg.method == Method.ALLOCATE:
            created = self._by_tuple.get((addr, local, transport))
            if created is not None:
                created.request, created.response = data, response
        self._out.append(Transmit(response, addr, local))

    def _unknown(self, msg: Message) -> list[int]:
        """The comprehension-required attributes this server does not understand: unknown to
        the codec, and DONT-FRAGMENT without the ``dont_fragment`` capability (§7.2, §11.2)."""
        unknown = msg.unknown_required()
        if not self.dont_fragment and msg.get(DontFragment) is not None:
            unknown.append(_DONT_FRAGMENT)
        return unknown

    # ------------------------------------------------------------------ authentication

    def _authenticate(
        self, msg: Message, addr: Address, local: Address, now: float, transport: TransportName
    ) -> Authenticated | None:
        """Step 8 of the module docstring (:meth:`NonceAuthenticator.authenticate`); None
        when the request has been refused (an unsigned error response queued, within the
        source's budget)."""
        verdict = self.authenticator.authenticate(msg, addr, local, transport, now)
        if type(verdict) is Authenticated:
            return verdict
        assert not isinstance(verdict, Authenticated)
        if verdict.bad_credentials:
            self.stats.auth_failures += 1
            self._events.append(AuthenticationFailedEvent(addr, verdict.username, 401))
        elif verdict.code == ErrorCode.STALE_NONCE:
            self.stats.stale_nonces += 1
        self._send_error(msg, verdict.code, verdict.attributes, addr, local, None, now, transport)
        return None

    # ------------------------------------------------------------------ responses

    def _may_answer(
        self, addr: Address, request: int, answer: int, now: float, transport: TransportName
    ) -> bool:
        """Whether an unsigned answer of ``answer`` bytes to a request of ``request`` bytes
        may go to ``addr`` now (the per-prefix budget of the module docstring); counts the
        ones that may not."""
        budget = self.budget
        if budget is None or transport != "udp" or budget.charge(addr[0], request, answer, now):
            return True
        self.stats.rate_limited += 1
        return False

    def _encode(self, msg: Message, auth: Authenticated | None) -> bytes:
        """SOFTWARE, the integrity attribute the request used, FINGERPRINT."""
        msg.attributes.extend(self._software_attrs)
        if auth is None:
            return msg.encode(fingerprint=True)
        if auth.sha256_length:
            return msg.encode(
                key_sha256=auth.key, sha256_length=auth.sha256_length, fingerprint=True
            )
        return msg.encode(key=auth.key, fingerprint=True)

    def _send_error(
        self,
        request: Message,
        code: ErrorCode,
        attrs: Iterable[Attribute],
        addr: Address,
        local: Address,
        auth: Authenticated | None,
        now: float,
        transport: TransportName,
    ) -> None:
        """Queue an error response (RFC 8489 §6.3.1.1), signed when ``auth`` is given;
        an unsigned one only within the source's budget (:meth:`_may_answer`)."""
        response = request.error_response(int(code), code.reason, attrs)
        data = self._encode(response, auth)
        if auth is None and not self._may_answer(
            addr, len(request.raw) or HEADER_SIZE, len(data), now, transport
        ):
            return
        self.stats.errors_sent += 1
        self._out.append(Transmit(data, addr, local))

    # ------------------------------------------------------------------ Allocate

    def _lifetime(self, requested: Lifetime | None) -> int:
        """RFC 8656 §7.2: max(default, min(requested, max)); the default without LIFETIME."""
        if requested is None:
            return self.default_lifetime
        granted = min(requested.value, self.max_lifetime)
        return granted if granted > self.default_lifetime else self.default_lifetime

    def _allocate(
        self,
        msg: Message,
        auth: Authenticated,
        existing: _Allocation | None,
        addr: Address,
        local: Address,
        transport: TransportName,
        now: float,
    ) -> list[Attribute]:
        """RFC 8656 §7.2 steps 2-10; returns the success attributes or raises _Reject."""
        if existing is not None:
            raise _Reject(ErrorCode.ALLOCATION_MISMATCH)
        requested = msg.get(RequestedTransport)
        if requested is None:
            raise _Reject(ErrorCode.BAD_REQUEST)
        if requested.protocol != TransportProtocol.UDP:
            raise _Reject(ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL)
        token = msg.get(ReservationToken)
        even = msg.get(EvenPort)
        raf = msg.get(RequestedAddressFamily)
        aaf = msg.get(AdditionalAddressFamily)
        if token is not None and (even is not None or raf is not None or aaf is not None):
            raise _Reject(ErrorCode.BAD_REQUEST)
        if raf is not None and aaf is not None:
            raise _Reject(ErrorCode.BAD_REQUEST)
        family = _IPV4
        if raf is not None:
            if raf.family not in self.address_families:
                raise _Reject(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
            family = raf.family
        elif aaf is None and _IPV4 not in self.address_families:
            raise _Reject(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
        reserve = even is not None and even.reserve
        if aaf is not None and (reserve or aaf.family != _IPV6):
            raise _Reject(ErrorCode.BAD_REQUEST)
        if self.alternates is not None:
            redirect = self.alternates.choose(addr, transport, len(self._by_tuple))
            if redirect is not None:
                raise _Reject(ErrorCode.TRY_ALTERNATE, *redirect)  # RFC 8489 §10
        username = auth.username
        if (self.total_quota is not None and len(self._by_tuple) >= self.total_quota) or (
            self.user_quota is not None and self._per_user.get(username, 0) >= self.user_quota
        ):
            self.stats.quota_refused += 1
            raise _Reject(ErrorCode.ALLOCATION_QUOTA_REACHED)
        shared = self.shared_quota
        if shared is not None:
            refused = shared.acquire(username, _quota_name(addr, local, transport), now)
            if refused is not None:
                if refused == ErrorCode.ALLOCATION_QUOTA_REACHED:
                    self.stats.quota_refused += 1
                raise _Reject(ErrorCode(refused))
        try:
            return self._bind_relays(
                msg, username, addr, local, transport, family, even, reserve, token, aaf, now
            )
        except _Reject:
            if shared is not None:
                shared.release(username, _quota_name(addr, local, transport))
            raise

    def _bind_relays(
        self,
        msg: Message,
        username: str,
        addr: Address,
        local: Address,
        transport: TransportName,
        family: int,
        even: EvenPort | None,
        reserve: bool,
        token: ReservationToken | None,
        aaf: AdditionalAddressFamily | None,
        now: float,
    ) -> list[Attribute]:
        """RFC 8656 §7.2 steps 8-10, once the allocation is admitted."""

        families = (_IPV4, _IPV6) if aaf is not None else (family,)
        bound: list[tuple[int, Address]] = []
        failures: list[AddressErrorCode] = []
        new_token: bytes | None = None
        for fam in families:
            if fam not in self.address_families:
                failures.append(_address_error(fam, ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED))
                continue
            result = self.relay.allocate(
                fam, even is not None, reserve, token.value if token else None, now
            )
            relayed = _checked_relay(result, self._relays)
            if relayed is None or result is None:
                failures.append(_address_error(fam, ErrorCode.INSUFFICIENT_CAPACITY))
                continue
            bound.append((_family_of(relayed[0]), relayed))
            if result[1] is not None and len(result[1]) == RESERVATION_TOKEN_SIZE:
                new_token = result[1]
        if not bound:
            if all(f.code == ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED for f in failures):
                raise _Reject(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY)

        lifetime = self._lifetime(msg.get(Lifetime))
        expires = now + lifetime
        alloc = _Allocation(addr, local, transport, username)
        client_v4 = _is_ipv4(addr[0])
        for fam, relayed in bound:
            if fam in alloc.relays:  # an allocator that answered twice with one family
                self.relay.release(relayed)
                continue
            # DONT-FRAGMENT applies IPv4-to-IPv4 over UDP (§14) and from TCP/TLS (§15); a
            # UDP translation (IPv6 client or relay) MUST ignore it (§13.1-§13.3).
            honoured = alloc.stream or (client_v4 and fam == _IPV4)
            rel = _Relay(relayed, fam, alloc, expires, honoured)
            alloc.relays[fam] = rel
            self._relays[relayed] = rel
            self._schedule(rel)
        self._by_tuple[alloc.key] = alloc
        self._per_user[username] = self._per_user.get(username, 0) + 1
        stats = self.stats
        stats.allocations += 1
        stats.allocations_created += 1
        self._events.append(
            AllocationCreatedEvent(addr, local, transport, username, alloc.relayed(), lifetime)
        )
        external = self.external
        attrs: list[Attribute] = [
            XorRelayedAddress(*(external.public(a) if external is not None else a))
            for a in alloc.relayed()
        ]
        attrs.append(Lifetime(lifetime))
        if new_token is not None:
            attrs.append(ReservationToken(new_token))
        attrs.append(_reflexive(addr))
        if aaf is not None:
            attrs.extend(failures)
        return attrs

    # ------------------------------------------------------------------ Refresh

    def _refresh(self, msg: Message, alloc: _Allocation, now: float) -> list[Attribute]:
        """RFC 8656 §8.2."""
        raf = msg.get(RequestedAddressFamily)
        if raf is not None:
            target = alloc.relays.get(raf.family)
            if target is None:
                raise _Reject(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
            targets = [target]
        else:
            targets = list(alloc.relays.values())
        requested = msg.get(Lifetime)
        if requested is not None and requested.value == 0:
            if len(targets) == len(alloc.relays):
                self._delete_allocation(alloc)
                self.stats.allocations_deleted += 1
                self._events.append(
                    AllocationDeletedEvent(
                        alloc.client,
                        alloc.local,
                        alloc.transport,
                        alloc.username,
                        tuple(r.addr for r in targets),
                        "refresh",
                    )
                )
            else:
                for rel in targets:
                    self._remove_relay(rel)
            return [Lifetime(0)]
        lifetime = self._lifetime(requested)
        for rel in targets:
            rel.expires = now + lifetime
            self._schedule(rel)
        self._events.append(
            AllocationRefreshedEvent(alloc.client, alloc.local, alloc.transport, lifetime)
        )
        return [Lifetime(lifetime)]

    # ------------------------------------------------------------------ permissions

    def _check_peer(self, peer: XorPeerAddress, alloc: _Allocation) -> int:
        """The 443 check of RFC 8656 §10.2 and §12.2; returns the peer's family."""
        family = _family_of(peer.ip)
        if family not in alloc.relays:
            raise _Reject(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        return family

    def _forbidden(self, peer: XorPeerAddress, alloc: _Allocation) -> bool:
        return not self.peer_filter(peer.ip) or self._is_self(peer.address, alloc)

    def _forbidden_channel(self, peer: XorPeerAddress, alloc: _Allocation) -> bool:
        """:meth:`_forbidden`, and port 0, where no datagram can go (a channel names a
        transport address; a permission names only an IP, RFC 8656 §9)."""
        return peer.port == 0 or self._forbidden(peer, alloc)

    def _create_permission(self, msg: Message, alloc: _Allocation, now: float) -> list[Attribute]:
        """RFC 8656 §10.2: all the peers are checked before any permission is installed."""
        peers = msg.get_all(XorPeerAddress)
        if not peers:
            raise _Reject(ErrorCode.BAD_REQUEST)
        families = [self._check_peer(p, alloc) for p in peers]
        if any(self._forbidden(p, alloc) for p in peers):
            self.stats.peers_refused += 1
            raise _Reject(ErrorCode.FORBIDDEN)
        new = {p.ip for p in peers if p.ip not in alloc.permissions}
        if len(alloc.permissions) + len(new) > self.max_permissions:
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY)
        for peer, family in zip(peers, families, strict=True):
            self._install_permission(alloc, peer.ip, family, now)
        return []

    def _install_permission(self, alloc: _Allocation, ip: str, family: int, now: float) -> None:
        """Install or refresh a permission (RFC 8656 §9)."""
        expires = now + self.permission_lifetime
        permission = alloc.permissions.get(ip)
        if permission is None:
            permission = _Permission(ip, family, alloc, expires)
            alloc.permissions[ip] = permission
            self.stats.permissions += 1
            self._events.append(PermissionCreatedEvent(alloc.client, ip))
        else:
            permission.expires = expires
        self._schedule(permission)

    # ------------------------------------------------------------------ channels

    def _channel_bind(self, msg: Message, alloc: _Allocation, now: float) -> list[Attribute]:
        """RFC 8656 §12.2."""
        number_attr = msg.get(ChannelNumber)
        peer = msg.get(XorPeerAddress)
        if number_attr is None or peer is None:
            raise _Reject(ErrorCode.BAD_REQUEST)
        number = number_attr.value
        if not CHANNEL_MIN <= number <= self.channel_max:
            raise _Reject(ErrorCode.BAD_REQUEST)
        address = peer.address
        channel = alloc.channels.get(number)
        if channel is not None and channel.peer != address:
            raise _Reject(ErrorCode.BAD_REQUEST)
        other = alloc.by_peer.get(address)
        if other is not None and other.number != number:
            raise _Reject(ErrorCode.BAD_REQUEST)
        family = self._check_peer(peer, alloc)
        if self._forbidden_channel(peer, alloc):
            self.stats.peers_refused += 1
            raise _Reject(ErrorCode.FORBIDDEN)
        if channel is None and len(alloc.channels) >= self.max_channels:
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY)
        if peer.ip not in alloc.permissions and len(alloc.permissions) >= self.max_permissions:
            raise _Reject(ErrorCode.INSUFFICIENT_CAPACITY)
        expires = now + self.channel_lifetime
        if channel is None:
            channel = _Channel(number, address, family, alloc.relays[family].addr, alloc, expires)
            alloc.channels[number] = channel
            alloc.by_peer[address] = channel
            self.stats.channels += 1
            self._events.append(ChannelBoundEvent(alloc.client, number, address))
        else:
            channel.expires = expires
        self._schedule(channel)
        self._install_permission(alloc, peer.ip, family, now)
        return []

    # ------------------------------------------------------------------ expiry

    def _schedule(self, obj: _Timed) -> None:
        heap = self._heap
        heappush(heap, (obj.expires, next(self._seq), obj))
        if len(heap) > self._heap_compact_at:
            self._compact_heap()

    def _compact_heap(self) -> None:
        """Drop the entries of refreshed or deleted objects (a refresh pushes a new entry and
        leaves the old one to be skipped when it comes up): without this, an authenticated
        client refreshing a permission in a loop grows the heap by one entry per request for
        up to the permission lifetime. Amortised O(1) per push."""
        seen: set[int] = set()
        live = []
        for entry in self._heap:
            when, _, obj = entry
            if obj.alive and obj.expires == when and id(obj) not in seen:
                seen.add(id(obj))
                live.append(entry)
        heapify(live)
        self._heap = live
        self._heap_compact_at = max(_HEAP_COMPACT_MIN, 2 * len(live))

    def _expire_permission(self, permission: _Permission) -> None:
        alloc = permission.allocation
        if alloc.permissions.get(permission.ip) is permission:
            del alloc.permissions[permission.ip]
        permission.alive = False
        self.stats.permissions -= 1
        self._events.append(PermissionExpiredEvent(alloc.client, permission.ip))

    def _drop_channel(self, channel: _Channel) -> None:
        alloc = channel.allocation
        if alloc.channels.get(channel.number) is channel:
            del alloc.channels[channel.number]
        if alloc.by_peer.get(channel.peer) is channel:
            del alloc.by_peer[channel.peer]
        channel.alive = False
        self.stats.channels -= 1

    def _expire_channel(self, channel: _Channel) -> None:
        self._drop_channel(channel)
        self._events.append(
            ChannelExpiredEvent(channel.allocation.client, channel.number, channel.peer)
        )

    def _expire_relay(self, relay: _Relay) -> None:
        alloc = relay.allocation
        if len(alloc.relays) > 1:
            self._remove_relay(relay)
            return
        self._delete_allocation(alloc)
        self.stats.allocations_expired += 1
        self._events.append(
            AllocationExpiredEvent(
                alloc.client, alloc.local, alloc.transport, alloc.username, (relay.addr,)
            )
        )

    def _remove_relay(self, relay: _Relay) -> None:
        """Release one family of a dual allocation with its permissions and channels."""
        alloc = relay.allocation
        relay.alive = False
        alloc.relays.pop(relay.family, None)
        if self._relays.get(relay.addr) is relay:
            del self._relays[relay.addr]
        self.relay.release(relay.addr)
        for permission in [p for p in alloc.permissions.values() if p.family == relay.family]:
            del alloc.permissions[permission.ip]
            permission.alive = False
            self.stats.permissions -= 1
        for channel in [c for c in alloc.channels.values() if c.family == relay.family]:
            self._drop_channel(channel)

    def _delete_allocation(self, alloc: _Allocation) -> None:
        """Release every relayed address and forget the allocation (RFC 8656 §5)."""
        if not alloc.alive:
            return
        alloc.alive = False
        for relay in list(alloc.relays.values()):
            self._remove_relay(relay)
        if self._by_tuple.get(alloc.key) is alloc:
            del self._by_tuple[alloc.key]
        left = self._per_user.get(alloc.username, 0) - 1
        if left > 0:
            self._per_user[alloc.username] = left
        else:
            self._per_user.pop(alloc.username, None)
        self.stats.allocations -= 1
        if self.shared_quota is not None:
            self.shared_quota.release(
                alloc.username, _quota_name(alloc.client, alloc.local, alloc.transport)
            )


def _quota_name(addr: Address, local: Address, transport: str) -> str:
    """The name of an allocation for a :class:`~anchor_turn.admission.SharedQuota`: its
    5-tuple."""
    return f"{transport}/{addr[0]}/{addr[1]}/{local[0]}/{local[1]}"


def _address_error(family: int, code: ErrorCode) -> AddressErrorCode:
    return AddressErrorCode(family, int(code), code.reason)


def _checked_relay(
    result: tuple[Address, bytes | None] | None, in_use: dict[Address, _Relay]
) -> Address | None:
    """The canonical relayed address an allocator returned, or None when it is unusable
    (not an (ip, port) tuple, or already the relay of another allocation)."""
    if result is None:
        return None
    try:
        relayed = canonical_address(result[0])
    except (LocalProtocolError, TypeError, ValueError, IndexError):
        return None
    if relayed in in_use or not 0 < relayed[1] <= 0xFFFF:
        return None
    return relayed
