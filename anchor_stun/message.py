"""STUN message codec (RFC 8489 §5, §14.5-§14.7).

Theory of operation
-------------------
A :class:`Message` is a method, a class, a 96-bit transaction id and an ordered list of typed
attributes. ``Message.decode(data)`` checks the header (two zero bits, the magic cookie, a
length that is a multiple of 4 and matches the data), walks the TLVs and decodes each known
attribute into its typed class (unknown ones become :class:`RawAttribute`). It keeps the raw
bytes and the offsets of MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, so that
integrity can be checked later, once the caller knows which key applies (the username comes
from the message itself).

Attribute order rules (RFC 8489 §14.5-§14.7): attributes that follow MESSAGE-INTEGRITY are
ignored except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT; those after
MESSAGE-INTEGRITY-SHA256 except FINGERPRINT; and, since FINGERPRINT must be last, anything
after FINGERPRINT is ignored too and makes :meth:`Message.verify_fingerprint` fail.

``encode`` writes the attributes and then, as asked, MESSAGE-INTEGRITY (HMAC-SHA1),
MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, optionally truncated to 16..32 bytes in steps of 4)
and FINGERPRINT (CRC-32 XOR 0x5354554E), each computed over the message so far with the
header length adjusted to end at that attribute. Padding bytes are zero unless the message
was decoded with other padding (the RFC 5769 samples pad with spaces), so that a decoded
message re-encodes byte for byte.

Speed (this is the hot path of connectivity checks; ``anchor bench codec`` measures it).
HMACs start from per-key precomputed inner/outer hash states (RFC 2104 §2) instead of
``hmac.digest``. Decoding shares immutable typed attributes between messages through two
bounded tables keyed by bytes: single small attributes of types that do not depend on the
transaction id (USERNAME, PRIORITY, ICE-CONTROLLING, ...), and the whole run of attributes
before a final MESSAGE-INTEGRITY + FINGERPRINT, the shape of every check. Both only skip
work whose result is already known: the decoded message is the same either way. The two
messages of a check also have direct builders, :func:`binding_request` and
:func:`binding_success`, byte for byte what ``encode`` gives for the same attributes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

from anchor_stun.attributes import (
    ATTRIBUTE_CLASSES,
    MAGIC_COOKIE,
    AlternateDomain,
    Attribute,
    AttrType,
    ConnectionId,
    DontFragment,
    ErrorCode,
    ErrorCodeAttribute,
    IceControlled,
    IceControlling,
    Lifetime,
    Nonce,
    Priority,
    RawAttribute,
    Realm,
    Software,
    UseCandidate,
    Username,
    XorMappedAddress,
    xor_mapped_tlv_v4,
)
from anchor_stun.errors import DecodeError, LocalProtocolError

__all__ = [
    "FINGERPRINT_XOR",
    "HEADER_SIZE",
    "MAX_MESSAGE_SIZE",
    "CheckAnswerer",
    "Message",
    "MessageClass",
    "Method",
    "binding_request",
    "binding_success",
    "decode_type",
    "encode_type",
    "is_stun",
    "signed_check_prefix",
    "verify_signed_check",
]

HEADER_SIZE = 20  # RFC 8489 §5
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
MAX_MESSAGE_SIZE = 0xFFFF + HEADER_SIZE

_HEADER = struct.Struct("!HHI12s")
_TL = struct.Struct("!HH")
_LEN = struct.Struct("!H")
_U32 = struct.Struct("!I")

_MI = int(AttrType.MESSAGE_INTEGRITY)
_MI256 = int(AttrType.MESSAGE_INTEGRITY_SHA256)
_FP = int(AttrType.FINGERPRINT)
_MI_TL = _TL.pack(_MI, 20)
_FP_TLV = struct.Struct("!HHI")
_PRIORITY_TYPE = int(AttrType.PRIORITY)
_CONTROLLING_TYPE = int(AttrType.ICE_CONTROLLING)
_CONTROLLED_TYPE = int(AttrType.ICE_CONTROLLED)

A = TypeVar("A", bound=Attribute)


class MessageClass(IntEnum):
    """The two class bits C1 C0 (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(IntEnum):
    """STUN methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


def encode_type(method: int, msg_class: int) -> int:
    """The 14-bit message type: method bits M11..M0 interleaved with class bits C1 C0."""
    if not 0 <= method <= 0xFFF:
        raise LocalProtocolError(f"method out of range: {method:#x}")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((msg_class & 0b01) << 4)
        | ((msg_class & 0b10) << 7)
    )


def decode_type(msg_type: int) -> tuple[int, MessageClass]:
    """(method, class) of a 14-bit message type."""
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    klass = ((msg_type & 0x0010) >> 4) | ((msg_type & 0x0100) >> 7)
    return method, _CLASSES[klass]


_CLASSES = tuple(sorted(MessageClass))
_DECODED_TYPES: dict[int, tuple[int, MessageClass]] = {}
"""decode_type() by message type, filled as types are seen (at most 2**14 entries)."""
_PADS = {b: bytes((b,)) * 3 for b in range(256)}
_INTEGRITY_TYPES = frozenset((_MI, _MI256, _FP))

# Decoded attributes, by their TLV bytes: the attributes of connectivity checks and TURN
# requests repeat from message to message (same USERNAME, PRIORITY, tie-breaker, ...), and
# typed attributes are immutable, so one decoded value can be shared. Only types whose
# value does not depend on the transaction id, small values, and at most _CACHE_SIZE
# entries (the table is emptied when full).
_CACHED_TYPES = frozenset(
    int(t)
    for t in (
        AttrType.USERNAME,
        AttrType.REALM,
        AttrType.NONCE,
        AttrType.SOFTWARE,
        AttrType.PRIORITY,
        AttrType.USE_CANDIDATE,
        AttrType.ICE_CONTROLLED,
        AttrType.ICE_CONTROLLING,
        AttrType.LIFETIME,
        AttrType.REQUESTED_TRANSPORT,
        AttrType.CHANNEL_NUMBER,
        AttrType.ERROR_CODE,
    )
)
_CACHED_MAX = 128
_CACHE_SIZE = 1024
_DECODED: dict[bytes, Attribute] = {}

# The typed attributes (and padding byte) of the part of a message that precedes a final
# MESSAGE-INTEGRITY + FINGERPRINT, by its bytes, when every one of them is of a type
# _DECODED may hold: the shape of every connectivity check (RFC 8445 §7.1) and of most
# signed requests. Walking those bytes again would give the same attributes, and the two
# trailing attributes are checked by their headers.
_SIGNED: dict[bytes, tuple[tuple[Attribute, ...], int]] = {}
_SIGNED_MIN = HEADER_SIZE + 32
_FP_TL_BYTES = _TL.pack(_FP, 4)
# Encoded attributes (type, length, value and zero padding), by (class, value): the
# attributes whose value bytes depend only on a str or int ``value`` (or on nothing), which
# a check or a TURN request repeats from message to message. Keyed by the exact class and
# an exact str or int (True == 1 and 1.0 == 1, but they do not encode alike), at most
# _CACHE_SIZE entries of at most _CACHED_MAX value bytes; only successful encodings.
_TLV_KINDS: dict[type[Attribute], bool] = {
    **{
        cls: True
        for cls in (
            Username,
            Realm,
            Nonce,
            Software,
            AlternateDomain,
            Priority,
            IceControlled,
            IceControlling,
            Lifetime,
            ConnectionId,
        )
    },
    UseCandidate: False,
    DontFragment: False,
}
"""Class -> whether it has a ``value`` (False: an empty attribute)."""
_ENCODED: dict[object, bytes] = {}
_TYPE_CODES: dict[int, int] = {}
"""encode_type(method, msg_class) by ``method << 2 | msg_class & 3`` (the two bits it uses)."""


def _type_code(method: int, msg_class: int) -> int:
    """:func:`encode_type`, remembered for the valid methods (the only ones it returns for)."""
    code = encode_type(method, msg_class)
    _TYPE_CODES[method << 2 | msg_class & 3] = code
    return code


# ---------------------------------------------------------------------------- HMAC
#
# HMAC (RFC 2104 §2) starts by hashing ``key ^ ipad`` and ``key ^ opad``; those two hash
# states depend on the key alone, so they are computed once per key and copied for each
# message, which halves the cost of ``hmac.digest``. A connectivity check or a TURN request
# reuses one key many times. Each table is emptied when it holds _HMAC_CACHE_SIZE keys.

_compare_digest = hmac.compare_digest
_HMAC_CACHE_SIZE = 256
_HmacStates = tuple[Any, Any]
_SHA1_STATES: dict[bytes, _HmacStates] = {}
_SHA256_STATES: dict[bytes, _HmacStates] = {}
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_states(
    key: bytes, new: Callable[..., Any], table: dict[bytes, _HmacStates]
) -> _HmacStates:
    block = key
    if len(block) > 64:  # the block size of SHA-1 and SHA-256
        block = new(block).digest()
    block = block.ljust(64, b"\0")
    states = (new(block.translate(_IPAD)), new(block.translate(_OPAD)))
    if len(table) >= _HMAC_CACHE_SIZE:
        table.clear()
    table[key] = states
    return states


def _hmac_sha1(key: bytes, data: bytes) -> bytes:
    """``hmac.digest(key, data, "sha1")``, from the key's cached states."""
    try:
        inner, outer = _SHA1_STATES[key]
    except KeyError:
        inner, outer = _hmac_states(key, hashlib.sha1, _SHA1_STATES)
    except TypeError:  # an unhashable key (bytearray, memoryview)
        return hmac.digest(key, data, "sha1")
    h = inner.copy()
    h.update(data)
    o = outer.copy()
    o.update(h.digest())
    return o.digest()  # type: ignore[no-any-return]


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    """``hmac.digest(key, data, "sha256")``, from the key's cached states."""
    try:
        inner, outer = _SHA256_STATES[key]
    except KeyError:
        inner, outer = _hmac_states(key, hashlib.sha256, _SHA256_STATES)
    except TypeError:  # an unhashable key (bytearray, memoryview)
        return hmac.digest(key, data, "sha256")
    h = inner.copy()
    h.update(data)
    o = outer.copy()
    o.update(h.digest())
    return o.digest()  # type: ignore[no-any-return]


_SUCCESS_HEAD = _HEADER.pack(0x0101, 12 + 24, MAGIC_COOKIE, bytes(12))[:8]
"""Header of a Binding success response carrying an IPv4 XOR-MAPPED-ADDRESS, up to
MESSAGE-INTEGRITY (the length its HMAC covers, RFC 8489 §14.5), without transaction id."""
_SUCCESS_HEAD_FP = _HEADER.pack(0x0101, 12 + 24 + 8, MAGIC_COOKIE, bytes(12))[:8]
"""The same with FINGERPRINT: the final header."""


_SUCCESS_PARTS: dict[tuple[bytes, str, int], tuple[bytes, Any, Any]] = {}
"""What :func:`binding_success` reuses, by (key, ip, port) of an IPv4 address: the
XOR-MAPPED-ADDRESS TLV, the key's HMAC-SHA1 inner state having read the header up to the
transaction id, and its outer state. At most _CACHE_SIZE entries (emptied when full)."""


def _success_parts(key: bytes, ip: str, port: int) -> tuple[bytes, Any, Any] | None:
    tlv = xor_mapped_tlv_v4(ip, port)
    if tlv is None:
        return None
    try:
        inner, outer = _SHA1_STATES[key]
    except KeyError:
        inner, outer = _hmac_states(key, hashlib.sha1, _SHA1_STATES)
    inner = inner.copy()
    inner.update(_SUCCESS_HEAD)
    if len(_SUCCESS_PARTS) >= _CACHE_SIZE:
        _SUCCESS_PARTS.clear()
    parts = _SUCCESS_PARTS[(key, ip, port)] = (tlv, inner, outer)
    return parts


def binding_success(transaction_id: bytes, address: tuple[str, int], key: bytes) -> bytes:
    """The answer to a connectivity check (RFC 8445 §7.3.1.2): the bytes of
    ``Message(BINDING, SUCCESS, transaction_id, [XorMappedAddress(*address)])
    .encode(key=key, fingerprint=True)``, byte for byte, raising what that raises.

    An IPv4 address takes a fast path: the XOR-MAPPED-ADDRESS TLV and the HMAC states
    (which do not depend on the transaction id) are cached per (key, address), and the
    header, MESSAGE-INTEGRITY and FINGERPRINT are written around them directly; anything
    else goes the general way."""
    ip, port = address[0], address[1]
    if (
        type(ip) is str
        and type(port) is int
        and type(transaction_id) is bytes
        and len(transaction_id) == 12
        and type(key) is bytes
        and ":" not in ip
    ):
        parts = _SUCCESS_PARTS.get((key, ip, port)) or _success_parts(key, ip, port)
        if parts is not None:
            tlv, inner, outer = parts
            h = inner.copy()
            h.update(transaction_id)
            h.update(tlv)
            o = outer.copy()
            o.update(h.digest())
            data = b"".join((_SUCCESS_HEAD_FP, transaction_id, tlv, _MI_TL, o.digest()))
            return data + _FP_TLV.pack(_FP, 4, zlib.crc32(data) ^ FINGERPRINT_XOR)
    return Message(
        Method.BINDING, MessageClass.SUCCESS, transaction_id, [XorMappedAddress(ip, port)]
    ).encode(key=key, fingerprint=True)


_REQUESTS: dict[tuple[object, ...], tuple[bytes, bytes, bytes, Any, Any]] = {}
"""What :func:`binding_request` reuses, by (key, username, priority, controlling,
tie-breaker, use_candidate): the header up to MESSAGE-INTEGRITY and the final header (both
without transaction id), the attribute bytes before MESSAGE-INTEGRITY, and the key's HMAC-SHA1
inner and outer states. At most _CACHE_SIZE entries (emptied when full)."""
_USERNAME_TYPE = int(AttrType.USERNAME)
_PRIORITY_ROLE = struct.Struct("!HHIHHQ")
"""PRIORITY then ICE-CONTROLLING or ICE-CONTROLLED, type-length-value each."""
_USE_CANDIDATE_TL = _TL.pack(AttrType.USE_CANDIDATE, 0)
_REQUEST_HEAD = struct.Struct("!HHI")


def binding_request(
    transaction_id: bytes,
    username: str,
    priority: int,
    controlling: bool,
    tie_breaker: int,
    key: bytes,
    use_candidate: bool = False,
) -> bytes:
    """A connectivity check (RFC 8445 §7.1, §7.2.2): the bytes of
    ``Message(BINDING, REQUEST, transaction_id, [Username(username), Priority(priority),
    IceControlling(tie_breaker) if controlling else IceControlled(tie_breaker)]
    + ([UseCandidate()] if use_candidate else [])).encode(key=key, fingerprint=True)``,
    byte for byte, raising what that raises.

    The attributes are packed directly (anything unusual goes the general way), and what
    does not depend on the transaction id (the attribute bytes, the two headers, the key's
    HMAC states) is kept for the next request of the same kind, which a check list and
    consent freshness send again and again."""
    if (
        type(key) is not bytes
        or type(transaction_id) is not bytes
        or len(transaction_id) != 12
        or type(username) is not str
        or type(priority) is not int
        or type(controlling) is not bool
        or type(tie_breaker) is not int
        or type(use_candidate) is not bool
    ):
        return _general_request(
            transaction_id, username, priority, controlling, tie_breaker, key, use_candidate
        )
    cache_key = (key, username, priority, controlling, tie_breaker, use_candidate)
    entry = _REQUESTS.get(cache_key)
    if entry is None:
        try:
            name = username.encode("utf-8")
        except UnicodeError:
            name = b"\xff" * 513  # not encodable: the general path says why
        size = len(name)
        if not (size <= 512 and 0 <= priority <= 0xFFFF_FFFF and 0 <= tie_breaker < 1 << 64):
            return _general_request(
                transaction_id, username, priority, controlling, tie_breaker, key, use_candidate
            )
        attributes = b"".join(
            (
                _TL.pack(_USERNAME_TYPE, size),
                name,
                _PADS[0][: -size & 3],
                _PRIORITY_ROLE.pack(
                    _PRIORITY_TYPE,
                    4,
                    priority,
                    _CONTROLLING_TYPE if controlling else _CONTROLLED_TYPE,
                    8,
                    tie_breaker,
                ),
                _USE_CANDIDATE_TL if use_candidate else b"",
            )
        )
        length = len(attributes) + 24
        try:
            inner, outer = _SHA1_STATES[key]
        except KeyError:
            inner, outer = _hmac_states(key, hashlib.sha1, _SHA1_STATES)
        entry = (
            _REQUEST_HEAD.pack(0x0001, length, MAGIC_COOKIE),
            _REQUEST_HEAD.pack(0x0001, length + 8, MAGIC_COOKIE),
            attributes,
            inner,
            outer,
        )
        if len(_REQUESTS) >= _CACHE_SIZE:
            _REQUESTS.clear()
        _REQUESTS[cache_key] = entry
    head, head_fp, attributes, inner, outer = entry
    h = inner.copy()
    h.update(b"".join((head, transaction_id, attributes)))
    o = outer.copy()
    o.update(h.digest())
    data = b"".join((head_fp, transaction_id, attributes, _MI_TL, o.digest()))
    return data + _FP_TLV.pack(_FP, 4, zlib.crc32(data) ^ FINGERPRINT_XOR)


def _general_request(
    transaction_id: bytes,
    username: str,
    priority: int,
    controlling: bool,
    tie_breaker: int,
    key: bytes,
    use_candidate: bool,
) -> bytes:
    """:func:`binding_request` the way its docstring states it."""
    attrs: list[Attribute] = [
        Username(username),
        Priority(priority),
        IceControlling(tie_breaker) if controlling else IceControlled(tie_breaker),
    ]
    if use_candidate:
        attrs.append(UseCandidate())
    return Message(Method.BINDING, MessageClass.REQUEST, transaction_id, attrs).encode(
        key=key, fingerprint=True
    )


_CHECK_HEAD = struct.Struct("!HHI")


def signed_check_prefix(data: bytes) -> bytes | None:
    """The attribute bytes before MESSAGE-INTEGRITY when ``data`` (``bytes``) has the shape of
    a connectivity check (RFC 8445 §7.1.1): the header of a Binding request whose length
    matches, ending in a 20-byte MESSAGE-INTEGRITY then a FINGERPRINT. Else None.

    Only the header and the headers of those two attributes are looked at: the bytes
    returned may still be malformed, or hold another MESSAGE-INTEGRITY or FINGERPRINT.
    A caller that has decoded a message with the same prefix, for which
    :meth:`Message.signed_prefix` gave these bytes, knows how this one decodes (for
    attributes whose value does not depend on the transaction id)."""
    size = len(data)
    if (
        type(data) is not bytes
        or not _SIGNED_MIN <= size <= MAX_MESSAGE_SIZE
        or data[:8] != _CHECK_HEAD.pack(0x0001, size - HEADER_SIZE, MAGIC_COOKIE)
        or data[size - 32 : size - 28] != _MI_TL
        or data[size - 8 : size - 4] != _FP_TL_BYTES
    ):
        return None
    return data[HEADER_SIZE : size - 32]


def verify_signed_check(data: bytes, key: bytes) -> bool:
    """For ``data`` of the shape :func:`signed_check_prefix` accepts and whose decoded
    message has that MESSAGE-INTEGRITY and FINGERPRINT (:meth:`Message.signed_prefix` is not
    None): ``msg.verify_fingerprint() and msg.verify_integrity(key)``, without decoding."""
    size = len(data)
    if (zlib.crc32(data[: size - 8]) ^ FINGERPRINT_XOR) != _U32.unpack_from(data, size - 4)[0]:
        return False
    signed = b"".join((data[:2], _LEN.pack(size - 28), data[4 : size - 32]))
    try:
        inner, outer = _SHA1_STATES[key]
    except KeyError:
        inner, outer = _hmac_states(key, hashlib.sha1, _SHA1_STATES)
    except TypeError:  # an unhashable key (bytearray, memoryview)
        return _compare_digest(hmac.digest(key, signed, "sha1"), data[size - 28 : size - 8])
    h = inner.copy()  # _hmac_sha1, inline
    h.update(signed)
    o = outer.copy()
    o.update(h.digest())
    return _compare_digest(o.digest(), data[size - 28 : size - 8])


class CheckAnswerer:
    """Verifies and answers the connectivity checks of one shape, from one IPv4 source,
    under one short-term key: what an ICE agent does for every check of a connected peer.

    It is made for the checks whose bytes between the transaction id and the value of
    MESSAGE-INTEGRITY (``data[20:len(data) - 28]``: the prefix :func:`signed_check_prefix`
    returns, then MESSAGE-INTEGRITY's type and length) are those of one check of ``size``
    bytes; the caller finds it by those bytes. For such ``data``, ``answer(data)`` is
    ``binding_success(data[8:20], source, key) if signed_check_prefix(data) is not None and
    verify_signed_check(data, key) else None``, byte for byte. Everything that does not
    depend on the transaction id is done once, here: the key's HMAC states having read the
    signed header of the check and the header of the answer, and the answer's
    XOR-MAPPED-ADDRESS.

    Raises ValueError for a source that is not an IPv4 address (those go the general way)."""

    __slots__ = ("_check", "_outer", "_success", "_tlv", "head")

    def __init__(self, key: bytes, size: int, source: tuple[str, int]) -> None:
        if not _SIGNED_MIN <= size <= MAX_MESSAGE_SIZE or size & 3:
            raise ValueError(f"no check has {size} bytes")
        tlv = xor_mapped_tlv_v4(source[0], source[1])
        if tlv is None:
            raise ValueError(f"not an IPv4 source: {source!r}")
        try:
            inner, outer = _SHA1_STATES[key]
        except KeyError:
            inner, outer = _hmac_states(key, hashlib.sha1, _SHA1_STATES)
        self.head = _CHECK_HEAD.pack(0x0001, size - HEADER_SIZE, MAGIC_COOKIE)
        """The header a check of this size has (Binding request, its length, the cookie)."""
        self._check = inner.copy()  # the signed header: length up to MESSAGE-INTEGRITY
        self._check.update(_CHECK_HEAD.pack(0x0001, size - 28, MAGIC_COOKIE))
        self._success = inner.copy()
        self._success.update(_SUCCESS_HEAD)
        self._outer = outer
        self._tlv = tlv

    def answer(self, data: bytes) -> bytes | None:
        """The success answer to the check ``data`` (see the class), or None when its header
        is not that of a Binding request of this size, it does not end in FINGERPRINT, or
        its FINGERPRINT or MESSAGE-INTEGRITY does not verify."""
        size = len(data)
        if (
            data[:8] != self.head
            or data[size - 8 : size - 4] != _FP_TL_BYTES
            or _crc32(data[: size - 8]) ^ FINGERPRINT_XOR != _unpack_u32(data, size - 4)[0]
        ):
            return None
        outer = self._outer
        h = self._check.copy()
        h.update(data[8 : size - 32])  # transaction id and attributes
        o = outer.copy()
        o.update(h.digest())
        if not _compare_digest(o.digest(), data[size - 28 : size - 8]):
            return None
        transaction_id = data[8:20]
        tlv = self._tlv
        h = self._success.copy()
        h.update(transaction_id)
        h.update(tlv)
        o = outer.copy()
        o.update(h.digest())
        out = b"".join((_SUCCESS_HEAD_FP, transaction_id, tlv, _MI_TL, o.digest()))
        return out + _pack_fp(_FP, 4, _crc32(out) ^ FINGERPRINT_XOR)


_crc32 = zlib.crc32
_unpack_u32 = _U32.unpack_from
_pack_fp = _FP_TLV.pack


def is_stun(data: bytes) -> bool:
    """Cheap test used to demultiplex STUN from other traffic (RFC 7983, RFC 8489 §5)."""
    return len(data) >= HEADER_SIZE and data[0] < 0x40 and data[4:8] == b"\x21\x12\xa4\x42"


@dataclass(slots=True)
class Message:
    """A STUN message: method, class, transaction id and typed attributes (RFC 8489 §5)."""

    method: int
    msg_class: MessageClass
    transaction_id: bytes
    attributes: list[Attribute] = field(default_factory=list)
    integrity: bytes | None = field(default=None, compare=False)
    """MESSAGE-INTEGRITY value of a decoded message (20 bytes), else None."""
    integrity_sha256: bytes | None = field(default=None, compare=False)
    """MESSAGE-INTEGRITY-SHA256 value of a decoded message (16-32 bytes), else None."""
    fingerprint: int | None = field(default=None, compare=False)
    """FINGERPRINT value of a decoded message, else None."""
    raw: bytes = field(default=b"", compare=False, repr=False)
    """The bytes the message was decoded from (empty for a message built locally)."""
    pad_byte: int = field(default=0, compare=False, repr=False)
    """Byte used to pad attribute values to 4 bytes (0 unless decoded otherwise)."""
    _mi_at: int = field(default=-1, compare=False, repr=False)
    _mi256_at: int = field(default=-1, compare=False, repr=False)
    _fp_at: int = field(default=-1, compare=False, repr=False)

    # ------------------------------------------------------------------ building

    def add(self, attribute: Attribute) -> Message:
        """Append an attribute; returns the message for chaining."""
        self.attributes.append(attribute)
        return self

    def response(self, attributes: Iterable[Attribute] = ()) -> Message:
        """A success response to this request: same method and transaction id."""
        return Message(self.method, MessageClass.SUCCESS, self.transaction_id, list(attributes))

    def error_response(
        self, code: int, reason: str | None = None, attributes: Iterable[Attribute] = ()
    ) -> Message:
        """An error response to this request carrying ERROR-CODE first, then ``attributes``."""
        if reason is None:
            try:
                reason = ErrorCode(code).reason
            except ValueError:
                reason = ""
        attrs: list[Attribute] = [ErrorCodeAttribute(code, reason)]
        attrs.extend(attributes)
        return Message(self.method, MessageClass.ERROR, self.transaction_id, attrs)

    # ------------------------------------------------------------------ reading

    def get(self, cls: type[A]) -> A | None:
        """The first attribute of class ``cls``, or None."""
        for attr in self.attributes:
            if type(attr) is cls:
                return attr
        return None

    def get_all(self, cls: type[A]) -> list[A]:
        """Every attribute of class ``cls``, in order."""
        return [a for a in self.attributes if type(a) is cls]

    def get_raw(self, attr_type: int) -> RawAttribute | None:
        """The first unknown attribute of the given type code, or None."""
        for attr in self.attributes:
            if isinstance(attr, RawAttribute) and attr.type == attr_type:
                return attr
        return None

    def unknown_required(self) -> list[int]:
        """Unknown comprehension-required types, for a 420 response (RFC 8489 §6.3.1.1)."""
        return [a.type for a in self.attributes if isinstance(a, RawAttribute) and a.type < 0x8000]

    @property
    def error(self) -> ErrorCodeAttribute | None:
        """The ERROR-CODE attribute, if any."""
        return self.get(ErrorCodeAttribute)

    @property
    def is_request(self) -> bool:
        """True for the request class."""
        return self.msg_class == MessageClass.REQUEST

    @property
    def is_response(self) -> bool:
        """True for success and error responses."""
        return self.msg_class >= MessageClass.SUCCESS

    # ------------------------------------------------------------------ integrity

    def verify_integrity(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY (HMAC-SHA1) with ``key`` (RFC 8489 §14.5)."""
        at = self._mi_at
        mac = self.integrity
        if at < 0 or mac is None:
            return False
        raw = self.raw
        data = b"".join((raw[:2], _LEN.pack(at + 24 - HEADER_SIZE), raw[4:at]))
        return _compare_digest(_hmac_sha1(key, data), mac)

    def verify_integrity_sha256(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY-SHA256, possibly truncated (RFC 8489 §14.6)."""
        at = self._mi256_at
        mac = self.integrity_sha256
        if at < 0 or mac is None:
            return False
        raw = self.raw
        data = b"".join((raw[:2], _LEN.pack(at + 4 + len(mac) - HEADER_SIZE), raw[4:at]))
        return hmac.compare_digest(_hmac_sha256(key, data)[: len(mac)], mac)

    def signed_prefix(self) -> bytes | None:
        """For a decoded message that ends in MESSAGE-INTEGRITY then FINGERPRINT, without
        MESSAGE-INTEGRITY-SHA256 (the shape of a connectivity check): the bytes of its
        attributes before MESSAGE-INTEGRITY, as :func:`signed_check_prefix` gives them. Any
        message with the same header fields and these bytes before the same two trailing
        attributes is walked the same way by :meth:`decode`. Else None."""
        raw = self.raw
        size = len(raw)
        if self._mi_at != size - 32 or self._fp_at != size - 8 or self._mi256_at >= 0:
            return None
        return raw[HEADER_SIZE : size - 32]

    def verify_fingerprint(self) -> bool:
        """True when FINGERPRINT is present, last, and matches (RFC 8489 §14.7)."""
        at = self._fp_at
        raw = self.raw
        if at < 0 or self.fingerprint is None or at + 8 != len(raw):
            return False
        length = at + 8 - HEADER_SIZE
        if _LEN.unpack_from(raw, 2)[0] == length:
            # FINGERPRINT is last, so the header already holds the length the CRC covers.
            # (A slice of a short message costs less than a memoryview.)
            crc = zlib.crc32(raw[:at] if at < 2048 else memoryview(raw)[:at])
        else:
            head = zlib.crc32(_LEN.pack(length), zlib.crc32(raw[:2]))
            crc = zlib.crc32(memoryview(raw)[4:at], head)
        return (crc ^ FINGERPRINT_XOR) == self.fingerprint

    # ------------------------------------------------------------------ codec

    def encode(
        self,
        *,
        key: bytes | None = None,
        key_sha256: bytes | None = None,
        sha256_length: int = 32,
        fingerprint: bool = False,
    ) -> bytes:
        """Serialize, appending MESSAGE-INTEGRITY (``key``), MESSAGE-INTEGRITY-SHA256
        (``key_sha256``, truncated to ``sha256_length``) and FINGERPRINT as asked."""
        tid = self.transaction_id
        if len(tid) != 12:
            raise LocalProtocolError("transaction id must be 12 bytes")
        method, klass = self.method, self.msg_class
        msg_type = _TYPE_CODES.get(method << 2 | klass & 3)
        if msg_type is None:
            msg_type = _type_code(method, klass)
        pad = _PADS.get(self.pad_byte) or bytes((self.pad_byte,)) * 3
        parts: list[bytes] = [b""]  # parts[0]: the header, packed once the length is known
        append = parts.append
        tl = _TL.pack
        raw_attribute = RawAttribute
        kinds = _TLV_KINDS if not self.pad_byte else {}
        encoded = _ENCODED
        length = 0
        try:
            for attr in self.attributes:
                kind = type(attr)
                valued = kinds.get(kind)
                if valued is not None:
                    if valued:
                        held = attr.value  # type: ignore[attr-defined]
                        held_type = type(held)
                        cache_key: object = (
                            (kind, held) if held_type is str or held_type is int else None
                        )
                    else:
                        cache_key = kind
                    if cache_key is not None:
                        tlv = encoded.get(cache_key)
                        if tlv is None:
                            value = attr.encode_value(tid)
                            size = len(value)
                            tlv = tl(attr.TYPE, size) + value + pad[: -size & 3]
                            if size <= _CACHED_MAX:
                                if len(encoded) >= _CACHE_SIZE:
                                    encoded.clear()
                                encoded[cache_key] = tlv
                        append(tlv)
                        length += len(tlv)
                        continue
                value = attr.encode_value(tid)
                size = len(value)
                append(tl(attr.type if type(attr) is raw_attribute else attr.TYPE, size))
                append(value)
                if size & 3:
                    append(pad[: 4 - (size & 3)])
                    size += 4 - (size & 3)
                length += 4 + size
        except (struct.error, UnicodeError, OverflowError) as exc:
            # a value or type that does not fit its field: the caller's mistake (STYLE §7)
            raise LocalProtocolError(f"cannot encode {type(attr).__name__}: {exc}") from exc
        if key_sha256 is not None and not (16 <= sha256_length <= 32 and sha256_length % 4 == 0):
            raise LocalProtocolError("MESSAGE-INTEGRITY-SHA256 length must be 16..32, x4")
        total = (
            length
            + (24 if key is not None else 0)
            + (4 + sha256_length if key_sha256 is not None else 0)
            + (8 if fingerprint else 0)
        )
        if total > 0xFFFF:
            raise LocalProtocolError("message longer than 65535 bytes after the header")
        header = _HEADER.pack
        if key is not None:
            length += 24
            parts[0] = header(msg_type, length, MAGIC_COOKIE, tid)
            parts += (_MI_TL, _hmac_sha1(key, b"".join(parts)))
        if key_sha256 is not None:
            length += 4 + sha256_length
            parts[0] = header(msg_type, length, MAGIC_COOKIE, tid)
            mac = _hmac_sha256(key_sha256, b"".join(parts))
            parts += (tl(_MI256, sha256_length), mac[:sha256_length])
        if fingerprint:
            length += 8
        parts[0] = header(msg_type, length, MAGIC_COOKIE, tid)
        data = b"".join(parts)
        if fingerprint:
            return data + _FP_TLV.pack(_FP, 4, zlib.crc32(data) ^ FINGERPRINT_XOR)
        return data

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Message:
        """Parse one whole STUN message. Raises only :class:`DecodeError`."""
        raw = data if type(data) is bytes else bytes(data)
        size = len(raw)
        if size < HEADER_SIZE:
            raise DecodeError(f"{size} bytes is shorter than a STUN header", field="header")
        msg_type, length, cookie, tid = _HEADER.unpack_from(raw)
        if msg_type & 0xC000:
            raise DecodeError("the first two bits of a STUN message must be zero", field="type")
        if cookie != MAGIC_COOKIE:
            raise DecodeError("bad magic cookie", field="magic_cookie")
        if length & 3:
            raise DecodeError(
                "message length is not a multiple of 4", field="length", transaction_id=tid
            )
        if HEADER_SIZE + length != size:
            raise DecodeError(
                f"message length {length} does not match {size - HEADER_SIZE} bytes of body",
                field="length",
                transaction_id=tid,
            )
        try:
            method, klass = _DECODED_TYPES[msg_type]
        except KeyError:
            method, klass = _DECODED_TYPES[msg_type] = decode_type(msg_type)
        # Fast path: a message ending in MESSAGE-INTEGRITY + FINGERPRINT whose attributes
        # before them were seen before (see _SIGNED): nothing left to walk or decode.
        if size >= _SIGNED_MIN and raw[-32:-28] == _MI_TL and raw[-8:-4] == _FP_TL_BYTES:
            signed = _SIGNED.get(raw[HEADER_SIZE:-32])
            if signed is not None:
                return cls(
                    method,
                    klass,
                    tid,
                    list(signed[0]),
                    raw[-28:-8],
                    None,
                    _U32.unpack_from(raw, size - 4)[0],
                    raw,
                    signed[1],
                    size - 32,
                    -1,
                    size - 8,
                )
        attrs: list[Attribute] = []
        append = attrs.append
        unpack_tl = _TL.unpack_from
        classes = ATTRIBUTE_CLASSES
        cache = _DECODED
        pos = HEADER_SIZE
        mi_at = mi256_at = fp_at = -1
        integrity = integrity_sha256 = fingerprint = None
        pad_byte = 0
        covered = True  # no MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT seen yet
        shareable = True  # every attribute so far is one _DECODED may hold
        try:
            # ``size`` and ``pos`` are multiples of 4, so a whole TLV header is always there.
            while pos < size:
                atype, alen = unpack_tl(raw, pos)
                start = pos + 4
                end = start + alen
                nxt = end + (-alen & 3)
                if nxt > size:
                    raise DecodeError(
                        f"attribute {atype:#06x} of length {alen} overruns the message",
                        field="attribute",
                    )
                if nxt != end and not pad_byte:
                    pad_byte = raw[end]
                if atype in _INTEGRITY_TYPES:
                    if fp_at >= 0:
                        pass  # FINGERPRINT must be last: anything after it is ignored
                    elif atype == _MI:
                        if mi_at < 0 and mi256_at < 0:
                            if alen != 20:
                                raise DecodeError(
                                    "MESSAGE-INTEGRITY must be 20 bytes", field="integrity"
                                )
                            mi_at = pos
                            integrity = raw[start:end]
                            covered = False
                    elif atype == _MI256:
                        if mi256_at < 0:
                            if not (16 <= alen <= 32 and alen % 4 == 0):
                                raise DecodeError(
                                    "MESSAGE-INTEGRITY-SHA256 must be 16..32 bytes, x4",
                                    field="integrity_sha256",
                                )
                            mi256_at = pos
                            integrity_sha256 = raw[start:end]
                            covered = False
                    else:
                        if alen != 4:
                            raise DecodeError("FINGERPRINT must be 4 bytes", field="fingerprint")
                        fp_at = pos
                        fingerprint = _U32.unpack_from(raw, start)[0]
                        covered = False
                elif covered:
                    if atype in _CACHED_TYPES and alen <= _CACHED_MAX:
                        tlv = raw[pos:end]
                        attr = cache.get(tlv)
                        if attr is None:
                            attr = classes[atype].decode_value(raw[start:end], tid)
                            if len(cache) >= _CACHE_SIZE:
                                cache.clear()
                            cache[tlv] = attr
                        append(attr)
                    else:
                        shareable = False
                        decoder = classes.get(atype)
                        value = raw[start:end]
                        append(
                            decoder.decode_value(value, tid)
                            if decoder is not None
                            else RawAttribute(atype, value)
                        )
                pos = nxt
        except DecodeError as exc:
            exc.transaction_id = tid
            raise
        if shareable and mi_at == size - 32 and fp_at == size - 8 and size >= _SIGNED_MIN:
            if len(_SIGNED) >= _CACHE_SIZE:
                _SIGNED.clear()
            _SIGNED[raw[HEADER_SIZE:mi_at]] = (tuple(attrs), pad_byte)
        return cls(
            method,
            klass,
            tid,
            attrs,
            integrity,
            integrity_sha256,
            fingerprint,
            raw,
            pad_byte,
            mi_at,
            mi256_at,
            fp_at,
        )
