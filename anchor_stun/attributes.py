"""Typed STUN attributes (RFC 8489 §14, RFC 8656 §18, RFC 8445 §16.1, RFC 5780 §7, RFC 6062).

Each attribute is a frozen, slotted dataclass with its ``TYPE`` code, an ``encode_value``
that returns the value bytes (without the TLV header or padding) and a ``decode_value``
class method. The XOR-address attributes need the transaction id, so both methods take it.

``Message.get(XorMappedAddress)`` returns the typed value; an attribute of a type Anchor does
not know is kept as :class:`RawAttribute`. Decoding raises only :class:`DecodeError`.

MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are not attributes a caller adds:
``Message.encode`` computes them, and a decoded message exposes them through its
``integrity`` / ``integrity_sha256`` / ``fingerprint`` fields.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import ClassVar, Self

from anchor_stun.errors import DecodeError, LocalProtocolError

__all__ = [
    "ATTRIBUTE_CLASSES",
    "KNOWN_TYPES",
    "MAGIC_COOKIE",
    "MAGIC_COOKIE_BYTES",
    "AdditionalAddressFamily",
    "AddressErrorCode",
    "AlternateDomain",
    "AlternateServer",
    "AttrType",
    "Attribute",
    "ChangeRequest",
    "ChannelNumber",
    "ConnectionId",
    "Data",
    "DontFragment",
    "ErrorCode",
    "ErrorCodeAttribute",
    "EvenPort",
    "Family",
    "IceControlled",
    "IceControlling",
    "Icmp",
    "Lifetime",
    "MappedAddress",
    "Nonce",
    "OtherAddress",
    "Padding",
    "PasswordAlgorithm",
    "PasswordAlgorithmId",
    "PasswordAlgorithms",
    "Priority",
    "RawAttribute",
    "Realm",
    "RequestedAddressFamily",
    "RequestedTransport",
    "ReservationToken",
    "ResponseOrigin",
    "ResponsePort",
    "Software",
    "TransportProtocol",
    "UnknownAttributes",
    "UseCandidate",
    "Userhash",
    "Username",
    "XorMappedAddress",
    "XorPeerAddress",
    "XorRelayedAddress",
    "enum_member",
    "is_comprehension_required",
    "pack_ip",
    "unpack_ip",
    "xor_mapped_tlv_v4",
]

MAGIC_COOKIE = 0x2112A442  # RFC 8489 §5
MAGIC_COOKIE_BYTES = b"\x21\x12\xa4\x42"

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_U16U16 = struct.Struct("!HH")
_ADDR_HEAD = struct.Struct("!xBH")  # reserved, family, port


class AttrType(IntEnum):
    """Attribute type codes, grouped by RFC (IANA "STUN Attributes" registry)."""

    # RFC 8489 §18.3.1, comprehension-required
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    # RFC 8489 §18.3.2, comprehension-optional
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    # RFC 8656 §18
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    RESERVATION_TOKEN = 0x0022
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    ICMP = 0x8004
    # RFC 8445 §16.1
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    # RFC 5780 §7
    CHANGE_REQUEST = 0x0003
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C
    # RFC 6062 §6.2
    CONNECTION_ID = 0x002A


def is_comprehension_required(attr_type: int) -> bool:
    """True for types 0x0000-0x7FFF, which an agent must understand (RFC 8489 §14)."""
    return attr_type < 0x8000


def enum_member(enum: type[IntEnum], value: int) -> int:
    """``value`` as the member of ``enum`` it is (named in reprs:
    ``<ErrorCode.UNAUTHENTICATED: 401>``; still equal to the int), else the plain int: decoded
    fields keep values Anchor does not know."""
    member = enum._value2member_map_.get(value)
    return member if isinstance(member, int) else value


class Family(IntEnum):
    """Address family codes of (XOR-)address attributes (RFC 8489 §14.1)."""

    IPV4 = 0x01
    IPV6 = 0x02


_XOR_MAPPED_TL = struct.pack("!HH", AttrType.XOR_MAPPED_ADDRESS, 8)


class Attribute:
    """Base of all typed attributes. Subclasses set ``TYPE``."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def encode_value(self, transaction_id: bytes) -> bytes:
        """The attribute's value bytes, without header and padding."""
        raise NotImplementedError

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        """Parse the value bytes; raises :class:`DecodeError` when they are malformed."""
        raise NotImplementedError


def _bad(attr: type[Attribute] | str, why: str) -> DecodeError:
    name = attr if isinstance(attr, str) else attr.__name__
    return DecodeError(f"{name}: {why}", field=name)


def _fixed(cls: type[Attribute], value: bytes, size: int) -> None:
    if len(value) != size:
        raise _bad(cls, f"length {len(value)}, expected {size}")


# --------------------------------------------------------------------------- addresses


_IPV4_TEXT = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}", re.ASCII)
"""The dotted-quad text :mod:`ipaddress` accepts for IPv4 (no leading zeros), but for the
range of each part."""


def pack_ip(ip: str) -> tuple[Family, bytes]:
    """(family, packed bytes) of an IPv4 or IPv6 address string, as :mod:`ipaddress` reads
    it; LocalProtocolError if it is not one."""
    if type(ip) is str and _IPV4_TEXT.fullmatch(ip) is not None:
        try:
            return Family.IPV4, bytes(map(int, ip.split(".")))
        except ValueError:
            pass  # a part above 255: ipaddress says why
    if not isinstance(ip, str):
        raise LocalProtocolError(f"ip must be an IPv4 or IPv6 address (text), not {ip!r}")
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise LocalProtocolError(f"ip must be an IPv4 or IPv6 address, not {ip!r}") from exc
    return (Family.IPV4 if addr.version == 4 else Family.IPV6), addr.packed


def unpack_ip(family: int, packed: bytes) -> str:
    """Text form of a packed address of the given family (4 bytes for IPv4, 16 for IPv6);
    LocalProtocolError for bytes of another length."""
    if family == Family.IPV4 and len(packed) == 4:
        return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"
    if family == Family.IPV6 and len(packed) == 16:
        return ipaddress.IPv6Address(packed).compressed
    raise LocalProtocolError(
        f"packed must be 4 bytes (family IPv4) or 16 bytes (IPv6), not {len(packed)} bytes of"
        f" family {family!r}"
    )


def _xor_key(family: int, transaction_id: bytes) -> bytes:
    return MAGIC_COOKIE_BYTES if family == Family.IPV4 else MAGIC_COOKIE_BYTES + transaction_id


def _xor(data: bytes, key: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def xor_mapped_tlv_v4(ip: str, port: int) -> bytes | None:
    """The whole XOR-MAPPED-ADDRESS TLV (type, length 8, value; RFC 8489 §14.2) of an IPv4
    (ip, port): what every success response to a check from that address carries, whatever
    its transaction id (an IPv4 XOR address does not depend on it). None when ``ip`` is not
    IPv4; raises :class:`LocalProtocolError` for a bad address or port, as
    :meth:`XorMappedAddress.encode_value` does. Nothing is remembered here: a caller that
    answers the same peers again and again keeps the result (see
    :class:`anchor_stun.check.CheckKey`)."""
    family, packed = pack_ip(ip)
    if family != Family.IPV4:
        return None
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port out of range: {port}")
    return (
        _XOR_MAPPED_TL
        + _ADDR_HEAD.pack(family, port ^ (MAGIC_COOKIE >> 16))
        + _xor(packed, MAGIC_COOKIE_BYTES)
    )


class _Address(Attribute):
    """Shared encoding of MAPPED-ADDRESS-shaped attributes (RFC 8489 §14.1, §14.2)."""

    __slots__ = ()
    XOR: ClassVar[bool] = False
    ip: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        """The (ip, port) tuple, as asyncio and socket use it."""
        return (self.ip, self.port)

    def encode_value(self, transaction_id: bytes) -> bytes:
        ip, port = self.ip, self.port
        family, packed = pack_ip(ip)
        if not 0 <= port <= 0xFFFF:
            raise LocalProtocolError(f"port out of range: {port}")
        if self.XOR:
            port ^= MAGIC_COOKIE >> 16
            packed = _xor(packed, _xor_key(family, transaction_id))
        return _ADDR_HEAD.pack(family, port) + packed

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) < 4:
            raise _bad(cls, "truncated")
        family, port = _ADDR_HEAD.unpack_from(value)
        packed = value[4:]
        if family == Family.IPV4:
            if len(packed) != 4:
                raise _bad(cls, "IPv4 address must be 4 bytes")
        elif family == Family.IPV6:
            if len(packed) != 16:
                raise _bad(cls, "IPv6 address must be 16 bytes")
        else:
            raise _bad(cls, f"unknown address family {family:#x}")
        if cls.XOR:
            port ^= MAGIC_COOKIE >> 16
            packed = _xor(packed, _xor_key(family, transaction_id))
        return cls(unpack_ip(family, packed), port)  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class MappedAddress(_Address):
    """MAPPED-ADDRESS (RFC 8489 §14.1): the reflexive address, not XORed (legacy)."""

    TYPE: ClassVar[int] = AttrType.MAPPED_ADDRESS
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class XorMappedAddress(_Address):
    """XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the client's reflexive transport address."""

    TYPE: ClassVar[int] = AttrType.XOR_MAPPED_ADDRESS
    XOR: ClassVar[bool] = True
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class AlternateServer(_Address):
    """ALTERNATE-SERVER (RFC 8489 §14.15): where a 300 Try Alternate sends the client."""

    TYPE: ClassVar[int] = AttrType.ALTERNATE_SERVER
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class XorPeerAddress(_Address):
    """XOR-PEER-ADDRESS (RFC 8656 §18.3): a peer's address as seen from the relay."""

    TYPE: ClassVar[int] = AttrType.XOR_PEER_ADDRESS
    XOR: ClassVar[bool] = True
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class XorRelayedAddress(_Address):
    """XOR-RELAYED-ADDRESS (RFC 8656 §18.5): the relayed transport address allocated."""

    TYPE: ClassVar[int] = AttrType.XOR_RELAYED_ADDRESS
    XOR: ClassVar[bool] = True
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class ResponseOrigin(_Address):
    """RESPONSE-ORIGIN (RFC 5780 §7.3): the address the response was sent from."""

    TYPE: ClassVar[int] = AttrType.RESPONSE_ORIGIN
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class OtherAddress(_Address):
    """OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate IP address and port."""

    TYPE: ClassVar[int] = AttrType.OTHER_ADDRESS
    ip: str
    port: int


# --------------------------------------------------------------------------- text


def _decode_text(cls: type[Attribute], value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(cls, "not valid UTF-8") from exc


class _Text(Attribute):
    __slots__ = ()
    MAX_BYTES: ClassVar[int] = 763  # 128 characters of up to 6 bytes (RFC 8489 §14)
    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not isinstance(self.value, str):
            raise TypeError(f"{type(self).__name__} value must be text, not {type(self.value).__name__}")
        data = self.value.encode("utf-8")
        if len(data) > self.MAX_BYTES:
            raise LocalProtocolError(f"{type(self).__name__} longer than {self.MAX_BYTES} bytes")
        return data

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_text(cls, value))  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class Username(_Text):
    """USERNAME (RFC 8489 §14.3): UTF-8, processed with OpaqueString, < 513 bytes."""

    TYPE: ClassVar[int] = AttrType.USERNAME
    MAX_BYTES: ClassVar[int] = 512
    value: str


@dataclass(frozen=True, slots=True)
class Realm(_Text):
    """REALM (RFC 8489 §14.9): presence means long-term credentials."""

    TYPE: ClassVar[int] = AttrType.REALM
    value: str


@dataclass(frozen=True, slots=True)
class Nonce(_Text):
    """NONCE (RFC 8489 §14.10); may start with the nonce cookie of §9.2.1."""

    TYPE: ClassVar[int] = AttrType.NONCE
    value: str


@dataclass(frozen=True, slots=True)
class Software(_Text):
    """SOFTWARE (RFC 8489 §14.14): a description of the agent's software."""

    TYPE: ClassVar[int] = AttrType.SOFTWARE
    value: str


@dataclass(frozen=True, slots=True)
class AlternateDomain(_Text):
    """ALTERNATE-DOMAIN (RFC 8489 §14.16): the TLS server name of ALTERNATE-SERVER."""

    TYPE: ClassVar[int] = AttrType.ALTERNATE_DOMAIN
    value: str


# --------------------------------------------------------------------------- opaque bytes


class _Bytes(Attribute):
    __slots__ = ()
    SIZE: ClassVar[int | None] = None
    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        value = self.value
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"{type(self).__name__} value must be bytes, not {type(value).__name__}")
        if self.SIZE is not None and len(value) != self.SIZE:
            raise LocalProtocolError(f"{type(self).__name__} must be {self.SIZE} bytes")
        return bytes(value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if cls.SIZE is not None:
            _fixed(cls, value, cls.SIZE)
        return cls(bytes(value))  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class Userhash(_Bytes):
    """USERHASH (RFC 8489 §14.4): SHA-256(OpaqueString(username) ":" realm)."""

    TYPE: ClassVar[int] = AttrType.USERHASH
    SIZE: ClassVar[int | None] = 32
    value: bytes


@dataclass(frozen=True, slots=True)
class Data(_Bytes):
    """DATA (RFC 8656 §18.4): application data of a Send or Data indication."""

    TYPE: ClassVar[int] = AttrType.DATA
    value: bytes


@dataclass(frozen=True, slots=True)
class ReservationToken(_Bytes):
    """RESERVATION-TOKEN (RFC 8656 §18.9): 8 bytes naming a reserved relayed address."""

    TYPE: ClassVar[int] = AttrType.RESERVATION_TOKEN
    SIZE: ClassVar[int | None] = 8
    value: bytes


@dataclass(frozen=True, slots=True)
class Padding(_Bytes):
    """PADDING (RFC 5780 §7.6): filler to probe fragmentation; its contents are ignored."""

    TYPE: ClassVar[int] = AttrType.PADDING
    value: bytes


# --------------------------------------------------------------------------- flags


class _Empty(Attribute):
    __slots__ = ()

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 0)
        return cls()


@dataclass(frozen=True, slots=True)
class UseCandidate(_Empty):
    """USE-CANDIDATE (RFC 8445 §7.1.2): the controlling agent nominates this pair."""

    TYPE: ClassVar[int] = AttrType.USE_CANDIDATE


@dataclass(frozen=True, slots=True)
class DontFragment(_Empty):
    """DONT-FRAGMENT (RFC 8656 §18.8): set DF on packets the relay sends to peers."""

    TYPE: ClassVar[int] = AttrType.DONT_FRAGMENT


# --------------------------------------------------------------------------- integers


class _Int(Attribute):
    __slots__ = ()
    FMT: ClassVar[struct.Struct]
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        try:
            return self.FMT.pack(self.value)
        except struct.error as exc:
            raise LocalProtocolError(f"{type(self).__name__} out of range: {self.value}") from exc

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, cls.FMT.size)
        return cls(cls.FMT.unpack(value)[0])  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class Priority(_Int):
    """PRIORITY (RFC 8445 §7.1.1): the priority a peer-reflexive candidate would get."""

    TYPE: ClassVar[int] = AttrType.PRIORITY
    FMT: ClassVar[struct.Struct] = _U32
    value: int


@dataclass(frozen=True, slots=True)
class IceControlled(_Int):
    """ICE-CONTROLLED (RFC 8445 §7.1.3): the sender is controlled; 64-bit tie-breaker."""

    TYPE: ClassVar[int] = AttrType.ICE_CONTROLLED
    FMT: ClassVar[struct.Struct] = _U64
    value: int


@dataclass(frozen=True, slots=True)
class IceControlling(_Int):
    """ICE-CONTROLLING (RFC 8445 §7.1.3): the sender is controlling; 64-bit tie-breaker."""

    TYPE: ClassVar[int] = AttrType.ICE_CONTROLLING
    FMT: ClassVar[struct.Struct] = _U64
    value: int


@dataclass(frozen=True, slots=True)
class Lifetime(_Int):
    """LIFETIME (RFC 8656 §18.2): seconds until the allocation expires."""

    TYPE: ClassVar[int] = AttrType.LIFETIME
    FMT: ClassVar[struct.Struct] = _U32
    value: int


@dataclass(frozen=True, slots=True)
class ConnectionId(_Int):
    """CONNECTION-ID (RFC 6062 §6.2.1): names a TCP connection to a peer."""

    TYPE: ClassVar[int] = AttrType.CONNECTION_ID
    FMT: ClassVar[struct.Struct] = _U32
    value: int


@dataclass(frozen=True, slots=True)
class ChannelNumber(Attribute):
    """CHANNEL-NUMBER (RFC 8656 §18.1): 0x4000-0x4FFF, then 16 reserved bits."""

    TYPE: ClassVar[int] = AttrType.CHANNEL_NUMBER
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.value <= 0xFFFF:
            raise LocalProtocolError(f"channel number out of range: {self.value}")
        return _U16U16.pack(self.value, 0)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 4)
        return cls(_U16.unpack_from(value)[0])


@dataclass(frozen=True, slots=True)
class ResponsePort(Attribute):
    """RESPONSE-PORT (RFC 5780 §7.5): the port the response should be sent to."""

    TYPE: ClassVar[int] = AttrType.RESPONSE_PORT
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.value <= 0xFFFF:
            raise LocalProtocolError(f"port out of range: {self.value}")
        return _U16U16.pack(self.value, 0)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 4)
        return cls(_U16.unpack_from(value)[0])


@dataclass(frozen=True, slots=True)
class ChangeRequest(Attribute):
    """CHANGE-REQUEST (RFC 5780 §7.2): answer from the other IP and/or the other port."""

    TYPE: ClassVar[int] = AttrType.CHANGE_REQUEST
    change_ip: bool = False
    change_port: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack((0x4 if self.change_ip else 0) | (0x2 if self.change_port else 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 4)
        flags = _U32.unpack(value)[0]
        return cls(bool(flags & 0x4), bool(flags & 0x2))


class TransportProtocol(IntEnum):
    """IANA protocol numbers used by REQUESTED-TRANSPORT (RFC 8656 §18.11, RFC 6062)."""

    TCP = 6
    UDP = 17


@dataclass(frozen=True, slots=True)
class RequestedTransport(Attribute):
    """REQUESTED-TRANSPORT (RFC 8656 §18.11): protocol number (17 = UDP), 3 reserved bytes."""

    TYPE: ClassVar[int] = AttrType.REQUESTED_TRANSPORT
    protocol: int = TransportProtocol.UDP

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.protocol <= 0xFF:
            raise LocalProtocolError(f"protocol out of range: {self.protocol}")
        return bytes((self.protocol, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 4)
        return cls(enum_member(TransportProtocol, value[0]))


class _FamilyAttr(Attribute):
    __slots__ = ()
    family: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.family <= 0xFF:
            raise LocalProtocolError(f"family out of range: {self.family}")
        return bytes((self.family, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 4)
        return cls(enum_member(Family, value[0]))  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class RequestedAddressFamily(_FamilyAttr):
    """REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6): 0x01 IPv4 or 0x02 IPv6 relayed address."""

    TYPE: ClassVar[int] = AttrType.REQUESTED_ADDRESS_FAMILY
    family: int = Family.IPV4


@dataclass(frozen=True, slots=True)
class AdditionalAddressFamily(_FamilyAttr):
    """ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.12): ask for an IPv6 relay as well."""

    TYPE: ClassVar[int] = AttrType.ADDITIONAL_ADDRESS_FAMILY
    family: int = Family.IPV6


@dataclass(frozen=True, slots=True)
class EvenPort(Attribute):
    """EVEN-PORT (RFC 8656 §18.7): an even relayed port; R = also reserve the next one."""

    TYPE: ClassVar[int] = AttrType.EVEN_PORT
    reserve: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"\x80" if self.reserve else b"\x00"

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 1)
        return cls(bool(value[0] & 0x80))


@dataclass(frozen=True, slots=True)
class Icmp(Attribute):
    """ICMP (RFC 8656 §18.13): an ICMP error the relay received from a peer."""

    TYPE: ClassVar[int] = AttrType.ICMP
    icmp_type: int
    icmp_code: int
    error_data: int = 0

    def encode_value(self, transaction_id: bytes) -> bytes:
        try:
            return struct.pack("!HBBI", 0, self.icmp_type, self.icmp_code, self.error_data)
        except struct.error as exc:
            raise LocalProtocolError(f"ICMP field out of range: {exc}") from exc

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _fixed(cls, value, 8)
        _, icmp_type, icmp_code, data = struct.unpack("!HBBI", value)
        return cls(icmp_type, icmp_code, data)


# --------------------------------------------------------------------------- error codes


class ErrorCode(IntEnum):
    """Error codes of RFC 8489 §14.8, RFC 8656 §19, RFC 8445 §7.3.1.1 and RFC 6062."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    MOBILITY_FORBIDDEN = 405
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    CONNECTION_ALREADY_EXISTS = 446
    CONNECTION_TIMEOUT_OR_FAILURE = 447
    ALLOCATION_QUOTA_REACHED = 486
    ROLE_CONFLICT = 487
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508

    @property
    def reason(self) -> str:
        """The recommended reason phrase."""
        return _REASONS[self]


_REASONS: Mapping[ErrorCode, str] = MappingProxyType(
    {
        ErrorCode.TRY_ALTERNATE: "Try Alternate",
        ErrorCode.BAD_REQUEST: "Bad Request",
        ErrorCode.UNAUTHENTICATED: "Unauthenticated",
        ErrorCode.FORBIDDEN: "Forbidden",
        ErrorCode.MOBILITY_FORBIDDEN: "Mobility Forbidden",
        ErrorCode.UNKNOWN_ATTRIBUTE: "Unknown Attribute",
        ErrorCode.ALLOCATION_MISMATCH: "Allocation Mismatch",
        ErrorCode.STALE_NONCE: "Stale Nonce",
        ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED: "Address Family not Supported",
        ErrorCode.WRONG_CREDENTIALS: "Wrong Credentials",
        ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL: "Unsupported Transport Protocol",
        ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH: "Peer Address Family Mismatch",
        ErrorCode.CONNECTION_ALREADY_EXISTS: "Connection Already Exists",
        ErrorCode.CONNECTION_TIMEOUT_OR_FAILURE: "Connection Timeout or Failure",
        ErrorCode.ALLOCATION_QUOTA_REACHED: "Allocation Quota Reached",
        ErrorCode.ROLE_CONFLICT: "Role Conflict",
        ErrorCode.SERVER_ERROR: "Server Error",
        ErrorCode.INSUFFICIENT_CAPACITY: "Insufficient Capacity",
    }
)


def _encode_code(code: int, reason: str, head: bytes = b"\x00\x00") -> bytes:
    if not 300 <= code <= 699:
        raise LocalProtocolError(f"error code out of range 300-699: {code}")
    data = reason.encode("utf-8")
    if len(data) > 763:
        raise LocalProtocolError("reason phrase longer than 763 bytes")
    return head + bytes((code // 100, code % 100)) + data


def _decode_code(cls: type[Attribute], value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise _bad(cls, "truncated")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise _bad(cls, f"invalid class/number {klass}/{number}")
    return klass * 100 + number, _decode_text(cls, value[4:])


@dataclass(frozen=True, slots=True)
class ErrorCodeAttribute(Attribute):
    """ERROR-CODE (RFC 8489 §14.8): class * 100 + number, and a UTF-8 reason phrase."""

    TYPE: ClassVar[int] = AttrType.ERROR_CODE
    code: int
    reason: str = ""

    @classmethod
    def of(cls, code: ErrorCode) -> ErrorCodeAttribute:
        """ERROR-CODE with the RFC's recommended reason phrase."""
        return cls(int(code), code.reason)

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_code(self.code, self.reason)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        code, reason = _decode_code(cls, value)
        return cls(enum_member(ErrorCode, code), reason)


@dataclass(frozen=True, slots=True)
class AddressErrorCode(Attribute):
    """ADDRESS-ERROR-CODE (RFC 8656 §18.14): why one family of a dual allocation failed."""

    TYPE: ClassVar[int] = AttrType.ADDRESS_ERROR_CODE
    family: int
    code: int
    reason: str = ""

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.family <= 0xFF:
            raise LocalProtocolError(f"family out of range: {self.family}")
        return _encode_code(self.code, self.reason, bytes((self.family, 0)))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        code, reason = _decode_code(cls, value)
        return cls(enum_member(Family, value[0]), enum_member(ErrorCode, code), reason)


@dataclass(frozen=True, slots=True)
class UnknownAttributes(Attribute):
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): the types a 420 response did not understand."""

    TYPE: ClassVar[int] = AttrType.UNKNOWN_ATTRIBUTES
    types: tuple[int, ...]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(_U16.pack(t) for t in self.types)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) % 2:
            raise _bad(cls, "odd length")
        types = struct.unpack(f"!{len(value) // 2}H", value)
        return cls(tuple(enum_member(AttrType, t) for t in types))


# --------------------------------------------------------------------------- password algorithms


class PasswordAlgorithmId(IntEnum):
    """STUN Password Algorithm registry (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


def _encode_algorithm(algorithm: int, params: bytes) -> bytes:
    pad = -len(params) % 4
    return _U16U16.pack(algorithm, len(params)) + params + b"\x00" * pad


def _decode_algorithms(cls: type[Attribute], value: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(value):
        if pos + 4 > len(value):
            raise _bad(cls, "truncated algorithm")
        algorithm, length = _U16U16.unpack_from(value, pos)
        end = pos + 4 + length
        if end > len(value):
            raise _bad(cls, "algorithm parameters overrun")
        out.append((enum_member(PasswordAlgorithmId, algorithm), bytes(value[pos + 4 : end])))
        pos = end + (-length % 4)
    if pos != len(value):
        raise _bad(cls, "bad padding")
    return out


@dataclass(frozen=True, slots=True)
class PasswordAlgorithm(Attribute):
    """PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm the client chose for the key."""

    TYPE: ClassVar[int] = AttrType.PASSWORD_ALGORITHM
    algorithm: int
    params: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_algorithm(self.algorithm, self.params)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        algorithms = _decode_algorithms(cls, value)
        if len(algorithms) != 1:
            raise _bad(cls, "must hold exactly one algorithm")
        return cls(*algorithms[0])


@dataclass(frozen=True, slots=True)
class PasswordAlgorithms(Attribute):
    """PASSWORD-ALGORITHMS (RFC 8489 §14.11): the server's algorithms, in its preference order."""

    TYPE: ClassVar[int] = AttrType.PASSWORD_ALGORITHMS
    algorithms: tuple[tuple[int, bytes], ...]

    @classmethod
    def of(cls, *ids: int) -> PasswordAlgorithms:
        """The list for the given algorithm ids, without parameters."""
        return cls(tuple((i, b"") for i in ids))

    @property
    def ids(self) -> tuple[int, ...]:
        """The algorithm numbers, in order."""
        return tuple(a for a, _ in self.algorithms)

    def encode_value(self, transaction_id: bytes) -> bytes:
        try:
            return b"".join(_encode_algorithm(a, p) for a, p in self.algorithms)
        except (TypeError, ValueError):
            raise TypeError(
                "PasswordAlgorithms algorithms must be ((algorithm, params bytes), ...), not"
                f" {self.algorithms!r}"
            ) from None

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(tuple(_decode_algorithms(cls, value)))


# --------------------------------------------------------------------------- raw


@dataclass(frozen=True, slots=True)
class RawAttribute(Attribute):
    """An attribute of a type Anchor does not decode: its type and value bytes, kept as is."""

    type: int
    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not isinstance(self.value, bytes | bytearray | memoryview):
            raise TypeError(f"RawAttribute value must be bytes, not {type(self.value).__name__}")
        return bytes(self.value)

    @property
    def comprehension_required(self) -> bool:
        """True when an agent that does not know this type must reject the message."""
        return is_comprehension_required(self.type)


ATTRIBUTE_CLASSES: Mapping[int, type[Attribute]] = MappingProxyType(
    {
        cls.TYPE: cls
        for cls in (
            MappedAddress,
            XorMappedAddress,
            AlternateServer,
            XorPeerAddress,
            XorRelayedAddress,
            ResponseOrigin,
            OtherAddress,
            Username,
            Realm,
            Nonce,
            Software,
            AlternateDomain,
            Userhash,
            Data,
            ReservationToken,
            Padding,
            UseCandidate,
            DontFragment,
            Priority,
            IceControlled,
            IceControlling,
            Lifetime,
            ConnectionId,
            ChannelNumber,
            ResponsePort,
            ChangeRequest,
            RequestedTransport,
            RequestedAddressFamily,
            AdditionalAddressFamily,
            EvenPort,
            Icmp,
            ErrorCodeAttribute,
            AddressErrorCode,
            UnknownAttributes,
            PasswordAlgorithm,
            PasswordAlgorithms,
        )
    }
)
"""Decoder for each known attribute type (integrity and fingerprint are handled by Message)."""

KNOWN_TYPES: frozenset[int] = frozenset(ATTRIBUTE_CLASSES) | {
    AttrType.MESSAGE_INTEGRITY,
    AttrType.MESSAGE_INTEGRITY_SHA256,
    AttrType.FINGERPRINT,
}
"""Every attribute type Anchor understands (feeds 420 Unknown Attribute, RFC 8489 §6.3.1.1)."""
