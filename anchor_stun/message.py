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
"""

from __future__ import annotations

import hmac
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from .attributes import (
    ATTRIBUTE_CLASSES,
    MAGIC_COOKIE,
    Attribute,
    AttrType,
    ErrorCode,
    ErrorCodeAttribute,
    RawAttribute,
)
from .errors import DecodeError, LocalProtocolError

HEADER_SIZE = 20  # RFC 8489 §5
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
MAX_MESSAGE_SIZE = 0xFFFF + HEADER_SIZE

_HEADER = struct.Struct("!HHI12s")
_HEAD3 = struct.Struct("!HHI")
_TL = struct.Struct("!HH")
_LEN = struct.Struct("!H")
_U32 = struct.Struct("!I")

_MI = AttrType.MESSAGE_INTEGRITY
_MI256 = AttrType.MESSAGE_INTEGRITY_SHA256
_FP = AttrType.FINGERPRINT

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
    return method, MessageClass(klass)


def is_stun(data: bytes) -> bool:
    """Cheap test used to demultiplex STUN from other traffic (RFC 7983, RFC 8489 §5)."""
    return len(data) >= HEADER_SIZE and data[0] < 0x40 and data[4:8] == b"\x21\x12\xa4\x42"


def _with_length(prefix: bytes | memoryview, length: int) -> bytes:
    """``prefix`` (which starts with the header) with its length field replaced."""
    return b"".join((prefix[:2], _LEN.pack(length), prefix[4:]))


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
        return [
            a.type
            for a in self.attributes
            if isinstance(a, RawAttribute) and a.type < 0x8000
        ]

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
        if at < 0 or self.integrity is None:
            return False
        data = _with_length(memoryview(self.raw)[:at], at + 24 - HEADER_SIZE)
        return hmac.compare_digest(hmac.digest(key, data, "sha1"), self.integrity)

    def verify_integrity_sha256(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY-SHA256, possibly truncated (RFC 8489 §14.6)."""
        at = self._mi256_at
        mac = self.integrity_sha256
        if at < 0 or mac is None:
            return False
        data = _with_length(memoryview(self.raw)[:at], at + 4 + len(mac) - HEADER_SIZE)
        return hmac.compare_digest(hmac.digest(key, data, "sha256")[: len(mac)], mac)

    def verify_fingerprint(self) -> bool:
        """True when FINGERPRINT is present, last, and matches (RFC 8489 §14.7)."""
        at = self._fp_at
        if at < 0 or self.fingerprint is None or at + 8 != len(self.raw):
            return False
        crc = zlib.crc32(_with_length(memoryview(self.raw)[:at], at + 8 - HEADER_SIZE))
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
        msg_type = encode_type(self.method, self.msg_class)
        pad = bytes((self.pad_byte,)) * 3
        parts: list[bytes] = []
        append = parts.append
        tl = _TL.pack
        for attr in self.attributes:
            value = attr.encode_value(tid)
            size = len(value)
            append(tl(attr.type if type(attr) is RawAttribute else attr.TYPE, size))
            append(value)
            if size & 3:
                append(pad[: 4 - (size & 3)])
        body = b"".join(parts)
        head = _HEAD3.pack(msg_type, 0, MAGIC_COOKIE) + tid
        if key is not None:
            size = len(body) + 24
            mac = hmac.digest(key, _with_length(head, size) + body, "sha1")
            body = b"".join((body, tl(_MI, 20), mac))
        if key_sha256 is not None:
            if not (16 <= sha256_length <= 32 and sha256_length % 4 == 0):
                raise LocalProtocolError("MESSAGE-INTEGRITY-SHA256 length must be 16..32, x4")
            size = len(body) + 4 + sha256_length
            mac = hmac.digest(key_sha256, _with_length(head, size) + body, "sha256")
            body = b"".join((body, tl(_MI256, sha256_length), mac[:sha256_length]))
        if fingerprint:
            size = len(body) + 8
            crc = zlib.crc32(_with_length(head, size) + body) ^ FINGERPRINT_XOR
            body = b"".join((body, tl(_FP, 4), _U32.pack(crc)))
        if len(body) > 0xFFFF:
            raise LocalProtocolError("message longer than 65535 bytes after the header")
        return _with_length(head, len(body)) + body

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Message:
        """Parse one whole STUN message. Raises only :class:`DecodeError`."""
        raw = bytes(data)
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
        method, klass = decode_type(msg_type)
        msg = cls(method, klass, tid, raw=raw)
        attrs = msg.attributes
        unpack_tl = _TL.unpack_from
        classes = ATTRIBUTE_CLASSES
        pos = HEADER_SIZE
        mi_at = mi256_at = fp_at = -1
        pad_byte = 0
        try:
            while pos < size:
                if pos + 4 > size:
                    raise DecodeError("truncated attribute header", field="attribute")
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
                if fp_at >= 0:
                    pass  # FINGERPRINT must be last: anything after it is ignored
                elif atype == _MI:
                    if mi_at < 0 and mi256_at < 0:
                        if alen != 20:
                            raise DecodeError("MESSAGE-INTEGRITY must be 20 bytes", field="integrity")
                        mi_at = pos
                        msg.integrity = raw[start:end]
                elif atype == _MI256:
                    if mi256_at < 0:
                        if not (16 <= alen <= 32 and alen % 4 == 0):
                            raise DecodeError(
                                "MESSAGE-INTEGRITY-SHA256 must be 16..32 bytes, x4",
                                field="integrity_sha256",
                            )
                        mi256_at = pos
                        msg.integrity_sha256 = raw[start:end]
                elif atype == _FP:
                    if alen != 4:
                        raise DecodeError("FINGERPRINT must be 4 bytes", field="fingerprint")
                    fp_at = pos
                    msg.fingerprint = _U32.unpack_from(raw, start)[0]
                elif mi_at < 0 and mi256_at < 0:
                    decoder = classes.get(atype)
                    value = raw[start:end]
                    attrs.append(
                        decoder.decode_value(value, tid)
                        if decoder is not None
                        else RawAttribute(atype, value)
                    )
                pos = nxt
        except DecodeError as exc:
            exc.transaction_id = tid
            raise
        msg._mi_at, msg._mi256_at, msg._fp_at = mi_at, mi256_at, fp_at
        msg.pad_byte = pad_byte
        return msg
