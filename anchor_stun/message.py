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
The module keeps no state: nothing is cached between calls here. MESSAGE-INTEGRITY and
FINGERPRINT are computed and checked in one place each, for :meth:`Message.encode`, the
verify methods and the connectivity checks of :mod:`anchor_stun.check` alike: :func:`seal`
writes them (with an :class:`HmacKey`, the shape MESSAGE-INTEGRITY + FINGERPRINT of every
check and answer is :meth:`HmacKey.seal_fingerprinted`), :func:`integrity_matches` checks
MESSAGE-INTEGRITY (with an :class:`HmacKey`: :meth:`HmacKey.mac_matches`) and
:func:`fingerprint_matches` FINGERPRINT (once the header is known to cover it:
:func:`fingerprint_value_matches`). A caller that has already made sure of what the general
function checks first (a known key type, a header it compared) may call the inner one. A
caller that signs many messages with one key passes an :class:`HmacKey`, which holds the
key's precomputed HMAC states (RFC 2104 §2) and the states after the signed headers of the
shapes it signs and checks; what else is worth remembering between messages is remembered
by the object that uses it (see :class:`anchor_stun.check.CheckKey`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Any, TypeVar

from anchor_stun.attributes import (
    ATTRIBUTE_CLASSES,
    MAGIC_COOKIE,
    Attribute,
    AttrType,
    ErrorCode,
    ErrorCodeAttribute,
    RawAttribute,
)
from anchor_stun.errors import DecodeError, LocalProtocolError

__all__ = [
    "FINGERPRINT_XOR",
    "HEADER_SIZE",
    "HEADS",
    "MAX_MESSAGE_SIZE",
    "HmacKey",
    "Key",
    "Message",
    "MessageClass",
    "Method",
    "decode_type",
    "encode_attributes",
    "encode_type",
    "fingerprint_matches",
    "fingerprint_value_matches",
    "integrity_matches",
    "is_stun",
    "seal",
    "signed_check_prefix",
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
_TL_VALUE = struct.Struct("!II")
_FP_TL_INT = _FP << 16 | 4
"""FINGERPRINT's type and length (RFC 8489 §14.7) read as one 32-bit number."""

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
_KNOWN_TYPES: Mapping[int, tuple[int, MessageClass]] = MappingProxyType(
    {encode_type(m, c): (m, c) for m in Method for c in MessageClass}
)
"""decode_type() of the types of the known methods (the method as a :class:`Method`, named in
reprs), computed once (never written to)."""
_KNOWN_CODES: Mapping[int, int] = MappingProxyType(
    {m << 2 | c: encode_type(m, c) for m in Method for c in MessageClass}
)
"""encode_type(method, class) by ``method << 2 | class``, for the known methods."""
_PADS = tuple(bytes((b,)) * 3 for b in range(256))
_INTEGRITY_TYPES = frozenset((_MI, _MI256, _FP))
_SIGNED_MIN = HEADER_SIZE + 32
_FP_TL_BYTES = _TL.pack(_FP, 4)
_CHECK_HEAD = struct.Struct("!HHI")


# ---------------------------------------------------------------------------- HMAC
#
# HMAC (RFC 2104 §2) starts by hashing ``key ^ ipad`` and ``key ^ opad``; those two hash
# states depend on the key alone. An :class:`HmacKey` computes them once and copies them for
# each message, which halves the cost of ``hmac.digest``; whoever signs or checks many
# messages with one key (an ICE agent, a TURN allocation) keeps one. Plain ``bytes`` keys are
# accepted everywhere and go through ``hmac.digest``.

_compare_digest = hmac.compare_digest
_crc32 = zlib.crc32
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_states(key: bytes, new: Callable[..., Any]) -> tuple[Any, Any]:
    block = key
    if len(block) > 64:  # the block size of SHA-1 and SHA-256
        block = new(block).digest()
    block = block.ljust(64, b"\0")
    return new(block.translate(_IPAD)), new(block.translate(_OPAD))


class HmacKey:
    """A MESSAGE-INTEGRITY(-SHA256) key (RFC 8489 §9, §14.5, §14.6) with its HMAC inner and
    outer states computed once (RFC 2104 §2). Pass it wherever a key is taken
    (:meth:`Message.encode`, :meth:`Message.verify_integrity`, ...): the result is the one
    the same key as ``bytes`` gives, for about half the cost per message.

    It also remembers the HMAC-SHA1 inner state having read the signed first 8 bytes of a
    message (type, length up to MESSAGE-INTEGRITY, magic cookie): a key signs and checks the
    same few shapes again and again (connectivity checks and their answers). For
    :func:`seal`, by the message type and body length those bytes are made of
    (:meth:`_head`); for :func:`integrity_matches`, by the first 8 bytes of the message as
    it arrived, with the offset of its MESSAGE-INTEGRITY (:meth:`_signed_head`). At most
    :data:`HEADS` shapes each (emptied when full); a new key is a new object."""

    __slots__ = ("_heads", "_sha1", "_sha256", "_signed", "key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray | memoryview):
            raise LocalProtocolError(
                f"key must be bytes (short_term_key(), long_term_key()), not {type(key).__name__}"
            )
        self.key = bytes(key)
        """The key's bytes."""
        self._sha1 = _hmac_states(self.key, hashlib.sha1)
        self._sha256: tuple[Any, Any] | None = None
        self._heads: dict[int, tuple[Any, bytes]] = {}
        self._signed: dict[bytes, tuple[Any, int]] = {}

    def sha1(self, data: bytes) -> bytes:
        """``hmac.digest(key, data, "sha1")``."""
        inner, outer = self._sha1
        h = inner.copy()
        h.update(data)
        o = outer.copy()
        o.update(h.digest())
        return o.digest()  # type: ignore[no-any-return]

    def sha256(self, data: bytes) -> bytes:
        """``hmac.digest(key, data, "sha256")``."""
        states = self._sha256
        if states is None:
            states = self._sha256 = _hmac_states(self.key, hashlib.sha256)
        h = states[0].copy()
        h.update(data)
        o = states[1].copy()
        o.update(h.digest())
        return o.digest()  # type: ignore[no-any-return]

    def seal_fingerprinted(self, msg_type: int, transaction_id: bytes, body: bytes) -> bytes:
        """``seal(msg_type, transaction_id, body, self, fingerprint=True)``: the message with
        its attributes ``body``, MESSAGE-INTEGRITY (RFC 8489 §14.5) and FINGERPRINT (§14.7),
        the shape of every connectivity check and answer. :func:`seal` comes here for that
        shape; its signed header is read once per message type and length (:meth:`_head`)."""
        length = len(body)
        if len(transaction_id) != 12:
            raise LocalProtocolError("transaction id must be 12 bytes")
        if length > 0xFFFF - 32:
            raise LocalProtocolError("message longer than 65535 bytes after the header")
        head = self._heads.get(msg_type << 16 | length)
        if head is None:
            head = self._head(msg_type, length)
        h = head[0].copy()
        h.update(transaction_id + body)
        o = self._sha1[1].copy()  # HmacKey.sha1 from there on, inline (every check)
        o.update(h.digest())
        data = b"".join((head[1], transaction_id, body, _MI_TL, o.digest()))
        return data + _FP_TLV.pack(_FP, 4, _crc32(data) ^ FINGERPRINT_XOR)

    def mac_matches(self, raw: bytes, at: int, head: bytes | None = None) -> bool:
        """``integrity_matches(raw, at, self)`` for an offset ``at`` past the header: the
        MESSAGE-INTEGRITY at ``at`` matches (RFC 8489 §14.5). :func:`integrity_matches` comes
        here for an :class:`HmacKey`; the signed header of a shape is read once
        (:meth:`_signed_head`). ``head``: ``raw[:8]``, when the caller has those bytes
        already (a bytes object kept from one message to the next hashes once)."""
        if head is None:
            head = raw[:8]
        found = self._signed.get(head)
        if found is None or found[1] != at:
            found = self._signed_head(head, at)
        h = found[0].copy()
        h.update(raw[8:at])
        o = self._sha1[1].copy()  # HmacKey.sha1 from there on, inline (every check)
        o.update(h.digest())
        return _compare_digest(o.digest(), raw[at + 4 : at + 24])

    def _head(self, msg_type: int, length: int) -> tuple[Any, bytes]:
        """For a message of type ``msg_type`` whose attributes before MESSAGE-INTEGRITY are
        ``length`` bytes, followed by MESSAGE-INTEGRITY and FINGERPRINT: the HMAC-SHA1 inner
        state having read its signed first 8 bytes (the length ending at MESSAGE-INTEGRITY,
        RFC 8489 §14.5), and its first 8 bytes as sent (the length ending at FINGERPRINT,
        §14.7). Remembered by ``msg_type << 16 | length``."""
        head = self._heads.get(msg_type << 16 | length)
        if head is None:
            state = self._sha1[0].copy()
            state.update(_CHECK_HEAD.pack(msg_type, length + 24, MAGIC_COOKIE))
            head = (state, _CHECK_HEAD.pack(msg_type, length + 32, MAGIC_COOKIE))
            heads = self._heads
            if len(heads) >= HEADS:
                heads.clear()
            heads[msg_type << 16 | length] = head
        return head

    def _signed_head(self, head: bytes, at: int) -> tuple[Any, int]:
        """For a message whose first 8 bytes are ``head`` and whose MESSAGE-INTEGRITY is at
        offset ``at``: the HMAC-SHA1 inner state having read its signed first 8 bytes (the
        length ending at MESSAGE-INTEGRITY, RFC 8489 §14.5), and ``at``. Remembered by
        ``head``, with ``at``: the state is the one of ``head`` only for that offset."""
        state = self._sha1[0].copy()
        state.update(head[:2] + (at + 4).to_bytes(2, "big") + head[4:8])
        found = (state, at)
        signed = self._signed
        if len(signed) >= HEADS:
            signed.clear()
        signed[head] = found
        return found

    def __repr__(self) -> str:
        return "HmacKey(...)"


HEADS = 64
"""Message shapes whose signed header an :class:`HmacKey` remembers (emptied when full)."""


Key = bytes | HmacKey
"""A MESSAGE-INTEGRITY key: its bytes, or an :class:`HmacKey`."""


def _hmac_sha1(key: Key, data: bytes) -> bytes:
    if isinstance(key, HmacKey):
        return key.sha1(data)
    return hmac.digest(key, data, "sha1")


def _hmac_sha256(key: Key, data: bytes) -> bytes:
    if isinstance(key, HmacKey):
        return key.sha256(data)
    return hmac.digest(key, data, "sha256")


# ---------------------------------------------------------------------------- the trailer
#
# The one implementation of MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT,
# written (seal) and checked (integrity_matches, fingerprint_matches), for Message.encode,
# Message.verify_* and the connectivity checks of anchor_stun.check alike.


def seal(
    msg_type: int,
    transaction_id: bytes,
    body: bytes,
    key: Key | None = None,
    key_sha256: Key | None = None,
    sha256_length: int = 32,
    fingerprint: bool = False,
) -> bytes:
    """The message of type ``msg_type`` (:func:`encode_type`) whose attributes are the
    encoded ``body`` (a multiple of 4 bytes), followed as asked by MESSAGE-INTEGRITY
    (RFC 8489 §14.5), MESSAGE-INTEGRITY-SHA256 (§14.6) and FINGERPRINT (§14.7), each computed
    over the message so far with the header length ending at that attribute."""
    if fingerprint and key_sha256 is None and isinstance(key, HmacKey):
        # the shape of every check and answer, signed with an HmacKey
        return key.seal_fingerprinted(msg_type, transaction_id, body)
    if len(transaction_id) != 12:
        raise LocalProtocolError("transaction id must be 12 bytes")
    length = len(body)
    if key_sha256 is not None or length > 0xFFFF - 32:
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
        signed = header(msg_type, length, MAGIC_COOKIE, transaction_id) + body
        if isinstance(key, HmacKey):
            mac = key.sha1(signed)
        else:
            mac = hmac.digest(key, signed, "sha1")
        body = b"".join((body, _MI_TL, mac))
    if key_sha256 is not None:
        length += 4 + sha256_length
        signed = header(msg_type, length, MAGIC_COOKIE, transaction_id) + body
        mac = _hmac_sha256(key_sha256, signed)[:sha256_length]
        body = b"".join((body, _TL.pack(_MI256, sha256_length), mac))
    if fingerprint:
        data = header(msg_type, length + 8, MAGIC_COOKIE, transaction_id) + body
        return data + _FP_TLV.pack(_FP, 4, _crc32(data) ^ FINGERPRINT_XOR)
    return header(msg_type, length, MAGIC_COOKIE, transaction_id) + body


def integrity_matches(raw: bytes, at: int, key: Key) -> bool:
    """True when the MESSAGE-INTEGRITY attribute at offset ``at`` of the message ``raw``
    matches its HMAC-SHA1 with ``key`` (RFC 8489 §14.5): over the header, its length ending
    at that attribute, and everything before it."""
    if isinstance(key, HmacKey) and at >= HEADER_SIZE:
        return key.mac_matches(raw, at)
    signed = raw[:2] + (at + 4).to_bytes(2, "big") + raw[4:at]  # length ending at MI
    return _compare_digest(_hmac_sha1(key, signed), raw[at + 4 : at + 24])


def fingerprint_matches(raw: bytes, at: int) -> bool:
    """True when the FINGERPRINT attribute at offset ``at`` is the last one of ``raw`` and
    matches its CRC-32 (RFC 8489 §14.7)."""
    if at + 8 != len(raw) or at < HEADER_SIZE:
        return False
    if (raw[2] << 8 | raw[3]) == at - 12:
        # FINGERPRINT is last, so the header already holds the length the CRC covers
        return fingerprint_value_matches(raw, at)
    kind: int
    length: int
    sent: int
    kind, length, sent = _FP_TLV.unpack_from(raw, at)
    head = _crc32(_LEN.pack(at - 12), _crc32(raw[:2]))
    crc = _crc32(memoryview(raw)[4:at], head)
    return kind == _FP and length == 4 and sent == crc ^ FINGERPRINT_XOR


def fingerprint_value_matches(raw: bytes, at: int) -> bool:
    """True when the attribute at offset ``at`` of ``raw`` is a FINGERPRINT whose value is
    the CRC-32 of ``raw[:at]`` XOR 0x5354554E (RFC 8489 §14.7). That is the check of
    :func:`fingerprint_matches` for a message that ends with that attribute and whose header
    length already covers it (``raw[2:4]`` is ``at - 12``), which the caller has made sure
    of: a connectivity check whose header it compared (:func:`signed_check_prefix`)."""
    tl: int
    sent: int
    tl, sent = _TL_VALUE.unpack_from(raw, at)
    # (a slice of a short message costs less than a memoryview)
    crc = _crc32(raw[:at] if at < 2048 else memoryview(raw)[:at])
    return tl == _FP_TL_INT and sent == crc ^ FINGERPRINT_XOR


def signed_check_prefix(data: bytes) -> bytes | None:
    """The attribute bytes before MESSAGE-INTEGRITY when ``data`` (``bytes``) has the shape of
    a connectivity check (RFC 8445 §7.1.1): the header of a Binding request whose length
    matches, ending in a 20-byte MESSAGE-INTEGRITY then a FINGERPRINT. Else None.

    Only the header and the headers of those two attributes are looked at: the bytes
    returned may still be malformed, or hold another MESSAGE-INTEGRITY or FINGERPRINT.
    Two such messages with the same prefix decode to the same attributes, but for those
    whose value depends on the transaction id (see :meth:`Message.signed_prefix`)."""
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


def encode_attributes(
    attributes: Iterable[Attribute], transaction_id: bytes, pad_byte: int = 0
) -> bytes:
    """The attributes' type-length-value bytes, each value padded to 4 bytes with
    ``pad_byte`` (RFC 8489 §14): the body of a message, before :func:`seal`."""
    pad = _PADS[pad_byte]
    parts: list[bytes] = []
    append = parts.append
    tl = _TL.pack
    raw_attribute = RawAttribute
    try:
        for attr in attributes:
            value = attr.encode_value(transaction_id)
            size = len(value)
            append(tl(attr.type if type(attr) is raw_attribute else attr.TYPE, size))
            append(value)
            if size & 3:
                append(pad[: 4 - (size & 3)])
    except (struct.error, UnicodeError, OverflowError) as exc:
        # a value or type that does not fit its field: the caller's mistake (STYLE §7)
        raise LocalProtocolError(f"cannot encode {type(attr).__name__}: {exc}") from exc
    return b"".join(parts)


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

    def verify_integrity(self, key: Key) -> bool:
        """Check MESSAGE-INTEGRITY (HMAC-SHA1) with ``key`` (RFC 8489 §14.5)."""
        at = self._mi_at
        if at < 0 or self.integrity is None:
            return False
        return integrity_matches(self.raw, at, key)

    def verify_integrity_sha256(self, key: Key) -> bool:
        """Check MESSAGE-INTEGRITY-SHA256, possibly truncated (RFC 8489 §14.6)."""
        at = self._mi256_at
        mac = self.integrity_sha256
        if at < 0 or mac is None:
            return False
        raw = self.raw
        data = b"".join((raw[:2], _LEN.pack(at + 4 + len(mac) - HEADER_SIZE), raw[4:at]))
        return _compare_digest(_hmac_sha256(key, data)[: len(mac)], mac)

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

    @property
    def integrity_at(self) -> int:
        """Offset of MESSAGE-INTEGRITY in :attr:`raw` (a decoded message), else -1."""
        return self._mi_at

    @property
    def fingerprint_at(self) -> int:
        """Offset of FINGERPRINT in :attr:`raw` (a decoded message), else -1."""
        return self._fp_at

    def verify_fingerprint(self) -> bool:
        """True when FINGERPRINT is present, last, and matches (RFC 8489 §14.7)."""
        return (
            self._fp_at >= 0
            and self.fingerprint is not None
            and (fingerprint_matches(self.raw, self._fp_at))
        )

    # ------------------------------------------------------------------ codec

    def encode(
        self,
        *,
        key: Key | None = None,
        key_sha256: Key | None = None,
        sha256_length: int = 32,
        fingerprint: bool = False,
    ) -> bytes:
        """Serialize, appending MESSAGE-INTEGRITY (``key``), MESSAGE-INTEGRITY-SHA256
        (``key_sha256``, truncated to ``sha256_length``) and FINGERPRINT as asked."""
        tid = self.transaction_id
        if len(tid) != 12:
            raise LocalProtocolError("transaction id must be 12 bytes")
        method, klass = self.method, self.msg_class
        msg_type = _KNOWN_CODES.get(method << 2 | klass & 3)
        if msg_type is None:
            msg_type = encode_type(method, klass)
        body = encode_attributes(self.attributes, tid, self.pad_byte)
        return seal(
            msg_type,
            tid,
            body,
            key=key,
            key_sha256=key_sha256,
            sha256_length=sha256_length,
            fingerprint=fingerprint,
        )

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
        known = _KNOWN_TYPES.get(msg_type)
        method, klass = known if known is not None else decode_type(msg_type)
        attrs: list[Attribute] = []
        append = attrs.append
        unpack_tl = _TL.unpack_from
        classes = ATTRIBUTE_CLASSES
        pos = HEADER_SIZE
        mi_at = mi256_at = fp_at = -1
        integrity = integrity_sha256 = fingerprint = None
        pad_byte = 0
        covered = True  # no MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT seen yet
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
