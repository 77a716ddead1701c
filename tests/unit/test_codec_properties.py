"""Property tests of the STUN codec (anchor_stun.message, anchor_stun.attributes).

- Every typed attribute class, and RawAttribute, with any valid value, survives
  encode -> decode; whole messages of every class and method, with or without
  MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 (16..32 bytes) and FINGERPRINT, re-encode byte
  for byte, and their integrity and fingerprint verify (and fail with another key).
- Untrusted bytes (random, random TLVs behind a valid header, mutated valid messages)
  make ``Message.decode`` raise only ``DecodeError`` (docs/design.md "Errors").
- Named edge cases of RFC 8489 §5, §14, §14.5-§14.7.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from anchor_stun import attributes as A
from anchor_stun.attributes import (
    ATTRIBUTE_CLASSES,
    KNOWN_TYPES,
    Attribute,
    AttrType,
    RawAttribute,
)
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.message import FINGERPRINT_XOR, Message, MessageClass, Method, is_stun

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(SETTINGS, max_examples=400)

# --------------------------------------------------------------------------- strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
tids = st.binary(min_size=12, max_size=12)
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


def text_up_to(max_bytes: int) -> st.SearchStrategy[str]:
    """Text whose UTF-8 form fits in ``max_bytes``."""
    return st.text(max_size=max_bytes // 4).filter(lambda s: len(s.encode()) <= max_bytes)


def address(cls: Callable[[str, int], Attribute]) -> st.SearchStrategy[Attribute]:
    return st.builds(cls, ips, u16)


def error_codes() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(list(A.ErrorCode)).map(int), st.integers(300, 699))


ATTRIBUTE_STRATEGIES: dict[type[Attribute], st.SearchStrategy[Any]] = {
    A.MappedAddress: address(A.MappedAddress),
    A.XorMappedAddress: address(A.XorMappedAddress),
    A.AlternateServer: address(A.AlternateServer),
    A.XorPeerAddress: address(A.XorPeerAddress),
    A.XorRelayedAddress: address(A.XorRelayedAddress),
    A.ResponseOrigin: address(A.ResponseOrigin),
    A.OtherAddress: address(A.OtherAddress),
    A.Username: st.builds(A.Username, text_up_to(512)),
    A.Realm: st.builds(A.Realm, text_up_to(763)),
    A.Nonce: st.builds(A.Nonce, text_up_to(763)),
    A.Software: st.builds(A.Software, text_up_to(763)),
    A.AlternateDomain: st.builds(A.AlternateDomain, text_up_to(763)),
    A.Userhash: st.builds(A.Userhash, st.binary(min_size=32, max_size=32)),
    A.Data: st.builds(A.Data, st.binary(max_size=600)),
    A.ReservationToken: st.builds(A.ReservationToken, st.binary(min_size=8, max_size=8)),
    A.Padding: st.builds(A.Padding, st.binary(max_size=300)),
    A.UseCandidate: st.just(A.UseCandidate()),
    A.DontFragment: st.just(A.DontFragment()),
    A.Priority: st.builds(A.Priority, u32),
    A.IceControlled: st.builds(A.IceControlled, u64),
    A.IceControlling: st.builds(A.IceControlling, u64),
    A.Lifetime: st.builds(A.Lifetime, u32),
    A.ConnectionId: st.builds(A.ConnectionId, u32),
    A.ChannelNumber: st.builds(A.ChannelNumber, u16),
    A.ResponsePort: st.builds(A.ResponsePort, u16),
    A.ChangeRequest: st.builds(A.ChangeRequest, st.booleans(), st.booleans()),
    A.RequestedTransport: st.builds(A.RequestedTransport, u8),
    A.RequestedAddressFamily: st.builds(A.RequestedAddressFamily, u8),
    A.AdditionalAddressFamily: st.builds(A.AdditionalAddressFamily, u8),
    A.EvenPort: st.builds(A.EvenPort, st.booleans()),
    A.Icmp: st.builds(A.Icmp, u8, u8, u32),
    A.ErrorCodeAttribute: st.builds(A.ErrorCodeAttribute, error_codes(), text_up_to(763)),
    A.AddressErrorCode: st.builds(A.AddressErrorCode, u8, error_codes(), text_up_to(763)),
    A.UnknownAttributes: st.builds(A.UnknownAttributes, st.lists(u16, max_size=20).map(tuple)),
    A.PasswordAlgorithm: st.builds(A.PasswordAlgorithm, u16, st.binary(max_size=40)),
    A.PasswordAlgorithms: st.builds(
        A.PasswordAlgorithms,
        st.lists(st.tuples(u16, st.binary(max_size=20)), max_size=6).map(tuple),
    ),
    RawAttribute: st.builds(
        RawAttribute,
        u16.filter(lambda t: t not in KNOWN_TYPES),
        st.binary(max_size=200),
    ),
}

any_attribute = st.one_of(*ATTRIBUTE_STRATEGIES.values())
methods = st.one_of(st.sampled_from(list(Method)), st.integers(0, 0xFFF))
classes = st.sampled_from(list(MessageClass))
keys = st.one_of(st.none(), st.binary(min_size=1, max_size=64))
sha256_lengths = st.sampled_from(range(16, 33, 4))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(
        draw(methods),
        draw(classes),
        draw(tids),
        draw(st.lists(any_attribute, max_size=8)),
    )


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    """Valid encoded messages, with any combination of MI, MI-SHA256 and FINGERPRINT."""
    msg = draw(messages())
    return msg.encode(
        key=draw(keys),
        key_sha256=draw(keys),
        sha256_length=draw(sha256_lengths),
        fingerprint=draw(st.booleans()),
    )


def other_key(key: bytes) -> bytes:
    # Not key + b"\0": HMAC pads short keys with zeros, so that would be the same key.
    return bytes((key[0] ^ 0x01,)) + key[1:]


# --------------------------------------------------------------------------- helpers


def header(length: int, tid: bytes = b"T" * 12, msg_type: int = 0x0001) -> bytes:
    return struct.pack("!HHI", msg_type, length, 0x2112A442) + tid


def tlv(attr_type: int, value: bytes, pad: bytes = b"\0") -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) % 4)


def frame(body: bytes, tid: bytes = b"T" * 12, msg_type: int = 0x0001) -> bytes:
    return header(len(body), tid, msg_type) + body


def append_mi256(data: bytes, key: bytes) -> bytes:
    """``data`` with MESSAGE-INTEGRITY-SHA256 appended, computed by hand (RFC 8489 §14.6)."""
    body = data[20:]
    mac = hmac.digest(key, header(len(body) + 36, data[8:20], _type(data)) + body, "sha256")
    return frame(body + tlv(AttrType.MESSAGE_INTEGRITY_SHA256, mac), data[8:20], _type(data))


def append_fingerprint(data: bytes) -> bytes:
    """``data`` with FINGERPRINT appended, computed by hand (RFC 8489 §14.7)."""
    body = data[20:]
    crc = zlib.crc32(header(len(body) + 8, data[8:20], _type(data)) + body) ^ FINGERPRINT_XOR
    return frame(body + tlv(AttrType.FINGERPRINT, struct.pack("!I", crc)), data[8:20], _type(data))


def append_raw(data: bytes, extra: bytes) -> bytes:
    """``data`` with ``extra`` (whole TLVs) appended and the header length fixed."""
    return frame(data[20:] + extra, data[8:20], _type(data))


def _type(data: bytes) -> int:
    return int.from_bytes(data[:2], "big")


def decode_or_decode_error(data: bytes | bytearray | memoryview) -> Message | None:
    """Message.decode, with DecodeError (the only allowed failure) turned into None."""
    try:
        msg = Message.decode(data)
    except DecodeError as exc:
        assert str(exc)
        return None
    # Whatever decodes can be inspected without raising.
    msg.unknown_required()
    msg.verify_fingerprint()
    msg.verify_integrity(b"key")
    msg.verify_integrity_sha256(b"key")
    return msg


# --------------------------------------------------------------------------- round trips


def test_every_attribute_class_has_a_strategy() -> None:
    missing = set(ATTRIBUTE_CLASSES.values()) - set(ATTRIBUTE_STRATEGIES)
    assert not missing, f"add strategies for {sorted(c.__name__ for c in missing)}"
    for attr_type, cls in ATTRIBUTE_CLASSES.items():
        assert cls.TYPE == attr_type


@pytest.mark.parametrize("cls", list(ATTRIBUTE_STRATEGIES), ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data(), tid=tids)
def test_attribute_value_round_trip(cls: type[Attribute], data: st.DataObject, tid: bytes) -> None:
    attr = data.draw(ATTRIBUTE_STRATEGIES[cls])
    value = attr.encode_value(tid)
    if cls is RawAttribute:
        assert value == attr.value
    else:
        assert cls.decode_value(value, tid) == attr
    msg = Message.decode(Message(Method.BINDING, MessageClass.REQUEST, tid, [attr]).encode())
    assert msg.attributes == [attr]
    assert msg.get(cls) == attr


@SETTINGS
@given(
    msg=messages(),
    key=keys,
    key_sha256=keys,
    sha256_length=sha256_lengths,
    fingerprint=st.booleans(),
)
def test_message_round_trip(
    msg: Message, key: bytes | None, key_sha256: bytes | None, sha256_length: int, fingerprint: bool
) -> None:
    data = msg.encode(
        key=key, key_sha256=key_sha256, sha256_length=sha256_length, fingerprint=fingerprint
    )
    assert is_stun(data)
    assert len(data) % 4 == 0 and int.from_bytes(data[2:4], "big") == len(data) - 20
    decoded = Message.decode(data)
    assert decoded == msg
    assert (decoded.method, decoded.msg_class, decoded.transaction_id) == (
        msg.method,
        msg.msg_class,
        msg.transaction_id,
    )
    assert decoded.attributes == msg.attributes
    assert decoded.raw == data
    assert (
        decoded.encode(
            key=key, key_sha256=key_sha256, sha256_length=sha256_length, fingerprint=fingerprint
        )
        == data
    )

    assert (decoded.integrity is not None) == (key is not None)
    assert (decoded.integrity_sha256 is not None) == (key_sha256 is not None)
    assert (decoded.fingerprint is not None) == fingerprint
    assert decoded.verify_fingerprint() == fingerprint
    if key is not None:
        assert decoded.verify_integrity(key)
        assert not decoded.verify_integrity(other_key(key))
    else:
        assert not decoded.verify_integrity(b"any key")
    if key_sha256 is not None:
        assert decoded.integrity_sha256 is not None
        assert len(decoded.integrity_sha256) == sha256_length
        assert decoded.verify_integrity_sha256(key_sha256)
        assert not decoded.verify_integrity_sha256(other_key(key_sha256))
    else:
        assert not decoded.verify_integrity_sha256(b"any key")
    assert decoded.unknown_required() == [
        a.type for a in msg.attributes if isinstance(a, RawAttribute) and a.type < 0x8000
    ]


@SETTINGS
@given(msg=messages(), pad=u8)
def test_any_padding_byte_is_ignored_and_kept(msg: Message, pad: int) -> None:
    """RFC 8489 §14: padding may hold any value and is ignored; the codec keeps the byte so
    that a decoded message re-encodes exactly."""
    msg.pad_byte = pad
    data = msg.encode(key=b"k", fingerprint=True)
    decoded = Message.decode(data)
    assert decoded.attributes == msg.attributes
    assert decoded.verify_integrity(b"k") and decoded.verify_fingerprint()
    assert decoded.encode(key=b"k", fingerprint=True) == data


# --------------------------------------------------------------------------- untrusted bytes


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    decode_or_decode_error(data)


@st.composite
def plausible(draw: st.DrawFn) -> bytes:
    """A valid header followed by random TLVs of known and unknown types with random values:
    gets past the header checks, so every attribute decoder sees junk."""
    types = st.one_of(
        st.sampled_from(sorted(KNOWN_TYPES)), u16, st.sampled_from([0x0008, 0x001C, 0x8028])
    )
    body = b"".join(
        tlv(t, v, draw(st.sampled_from([b"\0", b" ", b"\xff"])))
        for t, v in draw(st.lists(st.tuples(types, st.binary(max_size=40)), max_size=8))
    )
    msg_type = draw(st.integers(0, 0x3FFF))
    return frame(body, draw(tids), msg_type)


@FUZZ
@given(data=plausible())
def test_random_attributes_raise_only_decode_error(data: bytes) -> None:
    msg = decode_or_decode_error(data)
    if msg is None:
        return
    # What decodes re-encodes into something that decodes to the same attributes, or the
    # encoder refuses it as a local error (e.g. a USERNAME longer than 512 bytes).
    try:
        again = Message.decode(msg.encode())
    except LocalProtocolError:
        return
    assert again.attributes == msg.attributes


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(encoded()))
    kind = draw(st.sampled_from(["flip", "truncate", "length", "extend", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "length":
        struct.pack_into("!H", data, 2, draw(u16))
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=12))
    else:  # overwrite one attribute length field (or any 2 bytes) past the header
        if len(data) > 22:
            pos = draw(st.integers(20, len(data) - 2))
            struct.pack_into("!H", data, pos, draw(u16))
    return bytes(data)


@FUZZ
@given(data=mutated())
def test_mutated_messages_raise_only_decode_error(data: bytes) -> None:
    decode_or_decode_error(data)


@SETTINGS
@given(data=encoded())
def test_decode_accepts_bytearray_and_memoryview(data: bytes) -> None:
    assert Message.decode(bytearray(data)) == Message.decode(data)
    assert Message.decode(memoryview(data)) == Message.decode(data)


# --------------------------------------------------------------------------- named edge cases

BINDING = Message(Method.BINDING, MessageClass.REQUEST, b"T" * 12, [A.Software("edge")])


def decode_error(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        Message.decode(data)
    return info.value


@pytest.mark.parametrize("size", [0, 1, 4, 19])
def test_truncated_header(size: int) -> None:
    assert decode_error(BINDING.encode()[:size]).field == "header"


def test_length_not_multiple_of_4() -> None:
    exc = decode_error(header(2) + b"\0\0")
    assert exc.field == "length"
    assert exc.transaction_id == b"T" * 12


@pytest.mark.parametrize("delta", [-8, -4, 4, 8])
def test_length_mismatch(delta: int) -> None:
    data = BINDING.encode()
    if delta > 0:
        data += b"\0" * delta
    else:
        data = data[:delta]
    exc = decode_error(data)
    assert exc.field == "length"
    assert exc.transaction_id == b"T" * 12


def test_declared_length_differs_from_body() -> None:
    data = bytearray(BINDING.encode())
    struct.pack_into("!H", data, 2, len(data) - 20 + 4)
    assert decode_error(bytes(data)).field == "length"


@pytest.mark.parametrize("declared", [5, 8, 64, 0xFFFF])
def test_attribute_overrunning_the_message(declared: int) -> None:
    body = struct.pack("!HH", AttrType.SOFTWARE, declared) + b"abcd"
    exc = decode_error(frame(body))
    assert exc.field == "attribute"
    assert exc.transaction_id == b"T" * 12


def test_attribute_header_overrunning_after_valid_attribute() -> None:
    # A valid SOFTWARE, then a TLV header that claims 4 bytes of value with none present.
    body = tlv(AttrType.SOFTWARE, b"ok") + struct.pack("!HH", AttrType.SOFTWARE, 4)
    assert decode_error(frame(body)).field == "attribute"


@pytest.mark.parametrize("pad", [b"\0", b" ", b"\xff", b"\x01"])
def test_odd_padding_is_ignored(pad: bytes) -> None:
    # A 5-byte USERNAME is followed by 3 padding bytes of any value (RFC 8489 §14).
    data = frame(tlv(AttrType.USERNAME, b"alice", pad) + tlv(AttrType.LIFETIME, b"\0\0\0\x3c"))
    msg = Message.decode(data)
    assert msg.attributes == [A.Username("alice"), A.Lifetime(60)]
    assert msg.pad_byte == pad[0]
    assert msg.encode() == data


def test_mixed_padding_bytes_still_decode() -> None:
    data = frame(
        tlv(AttrType.USERNAME, b"alice", b"\0")
        + tlv(AttrType.REALM, b"example.org", b"\xff")
        + tlv(AttrType.DATA, b"x", b" ")
    )
    msg = Message.decode(data)
    assert msg.attributes == [A.Username("alice"), A.Realm("example.org"), A.Data(b"x")]


def test_attributes_after_fingerprint_are_ignored() -> None:
    data = BINDING.encode(fingerprint=True)
    assert Message.decode(data).verify_fingerprint()
    tampered = append_raw(data, tlv(AttrType.USERNAME, b"mallory") + tlv(0x7F01, b"zz"))
    msg = Message.decode(tampered)
    assert msg.attributes == BINDING.attributes
    assert msg.fingerprint is not None
    assert not msg.verify_fingerprint()  # FINGERPRINT is not last
    assert msg.unknown_required() == []


def test_second_fingerprint_is_ignored() -> None:
    data = BINDING.encode(fingerprint=True)
    twice = append_fingerprint(data)
    msg = Message.decode(twice)
    assert msg.attributes == BINDING.attributes
    assert not msg.verify_fingerprint()


def test_attributes_after_message_integrity_are_ignored_except_sha256_and_fingerprint() -> None:
    key, key256 = b"short-term key", b"another key for sha256"
    data = BINDING.encode(key=key)
    data = append_raw(
        data,
        tlv(AttrType.USERNAME, b"mallory")  # not covered by MESSAGE-INTEGRITY: ignored
        + tlv(0x7F02, b"unknown required")  # ignored too, so not reported as unknown
        + tlv(AttrType.XOR_MAPPED_ADDRESS, b"\0\x09junk"),  # malformed but ignored
    )
    data = append_fingerprint(append_mi256(data, key256))
    msg = Message.decode(data)
    assert msg.attributes == BINDING.attributes
    assert msg.unknown_required() == []
    assert msg.verify_integrity(key)  # computed over the message up to MESSAGE-INTEGRITY
    assert msg.verify_integrity_sha256(key256)  # MI-SHA256 after MI is processed
    assert msg.verify_fingerprint()  # and so is FINGERPRINT


def test_attributes_after_message_integrity_sha256_are_ignored_except_fingerprint() -> None:
    key256 = b"k" * 32
    data = BINDING.encode(key_sha256=key256, sha256_length=16)
    mi = tlv(AttrType.MESSAGE_INTEGRITY, b"\x55" * 20)
    data = append_fingerprint(append_raw(data, tlv(AttrType.USERNAME, b"mallory") + mi))
    msg = Message.decode(data)
    assert msg.attributes == BINDING.attributes
    assert msg.integrity is None  # MESSAGE-INTEGRITY after MI-SHA256 is ignored
    assert not msg.verify_integrity(key256)
    assert msg.verify_integrity_sha256(key256)
    assert msg.verify_fingerprint()


def test_unknown_comprehension_required_attributes_are_listed() -> None:
    msg = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        b"T" * 12,
        [
            RawAttribute(0x7F00, b"a"),
            A.Software("x"),
            RawAttribute(0xC057, b"\0\x01\0\x02"),  # GOOG-NETWORK-INFO: optional
            RawAttribute(0x0002, b""),  # RESPONSE-ADDRESS (RFC 3489, retired): required
            RawAttribute(0x8FFF, b"opt"),
        ],
    )
    decoded = Message.decode(msg.encode(fingerprint=True))
    assert decoded.unknown_required() == [0x7F00, 0x0002]
    assert decoded.get_raw(0xC057) == RawAttribute(0xC057, b"\0\x01\0\x02")
    assert decoded.get_raw(0x1234) is None
    raw = decoded.get_raw(0x7F00)
    assert raw is not None and raw.comprehension_required
    optional = decoded.get_raw(0x8FFF)
    assert optional is not None and not optional.comprehension_required


@pytest.mark.parametrize("cookie", [0x2112A443, 0, 0x42A41221])
def test_bad_magic_cookie(cookie: int) -> None:
    data = bytearray(BINDING.encode())
    struct.pack_into("!I", data, 4, cookie)
    assert decode_error(bytes(data)).field == "magic_cookie"
    assert not is_stun(bytes(data))


@pytest.mark.parametrize("bits", [0x8000, 0x4000, 0xC000])
def test_first_two_bits_set(bits: int) -> None:
    data = bytearray(BINDING.encode())
    struct.pack_into("!H", data, 0, _type(bytes(data)) | bits)
    assert decode_error(bytes(data)).field == "type"
    assert not is_stun(bytes(data))


@pytest.mark.parametrize(
    ("attr_type", "length", "field"),
    [
        (AttrType.MESSAGE_INTEGRITY, 16, "integrity"),
        (AttrType.MESSAGE_INTEGRITY, 32, "integrity"),
        (AttrType.MESSAGE_INTEGRITY_SHA256, 12, "integrity_sha256"),
        (AttrType.MESSAGE_INTEGRITY_SHA256, 36, "integrity_sha256"),
        (AttrType.FINGERPRINT, 8, "fingerprint"),
        (AttrType.FINGERPRINT, 0, "fingerprint"),
    ],
)
def test_integrity_and_fingerprint_of_wrong_size(attr_type: int, length: int, field: str) -> None:
    exc = decode_error(frame(tlv(AttrType.SOFTWARE, b"x") + tlv(attr_type, b"\0" * length)))
    assert exc.field == field
    assert exc.transaction_id == b"T" * 12


@pytest.mark.parametrize(
    ("attr_type", "value", "field"),
    [
        (AttrType.XOR_MAPPED_ADDRESS, b"\0\x03\0\0\0\0\0\0", "XorMappedAddress"),  # family 3
        (AttrType.XOR_MAPPED_ADDRESS, b"\0\x01\0\0\0\0\0", "XorMappedAddress"),  # short IPv4
        (AttrType.MAPPED_ADDRESS, b"\0\x02\0\0" + b"\0" * 4, "MappedAddress"),  # short IPv6
        (AttrType.XOR_PEER_ADDRESS, b"\0\x01", "XorPeerAddress"),
        (AttrType.USERNAME, b"\xff\xfe", "Username"),  # not UTF-8
        (AttrType.ERROR_CODE, b"\0\0\x07\x00", "ErrorCodeAttribute"),  # class 7
        (AttrType.ERROR_CODE, b"\0\0\x04\x64", "ErrorCodeAttribute"),  # number 100
        (AttrType.ERROR_CODE, b"\0\0\x04", "ErrorCodeAttribute"),
        (AttrType.UNKNOWN_ATTRIBUTES, b"\0\x01\0", "UnknownAttributes"),
        (AttrType.PRIORITY, b"\0\0\0", "Priority"),
        (AttrType.ICE_CONTROLLING, b"\0" * 4, "IceControlling"),
        (AttrType.USE_CANDIDATE, b"\0" * 4, "UseCandidate"),
        (AttrType.USERHASH, b"\0" * 16, "Userhash"),
        (AttrType.CHANNEL_NUMBER, b"\x40\x00", "ChannelNumber"),
        (AttrType.PASSWORD_ALGORITHM, b"\0\x02\0\x08\0\0\0\0", "PasswordAlgorithm"),
        (AttrType.PASSWORD_ALGORITHM, b"", "PasswordAlgorithm"),
        (AttrType.PASSWORD_ALGORITHMS, b"\0\x01\0", "PasswordAlgorithms"),
        (AttrType.EVEN_PORT, b"", "EvenPort"),
    ],
)
def test_malformed_attribute_values(attr_type: int, value: bytes, field: str) -> None:
    exc = decode_error(frame(tlv(attr_type, value)))
    assert exc.field == field
    assert exc.transaction_id == b"T" * 12


def test_message_type_bits_interleave() -> None:
    # RFC 8489 §5: Binding success is 0x0101, Allocate error 0x0113, Send indication 0x0016.
    cases = [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS, 0x0109),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
    ]
    for method, klass, msg_type in cases:
        data = Message(method, klass, b"T" * 12).encode()
        assert _type(data) == msg_type
        decoded = Message.decode(data)
        assert (decoded.method, decoded.msg_class) == (method, klass)


@SETTINGS
@given(msg_type=st.integers(0, 0x3FFF))
def test_every_message_type_round_trips(msg_type: int) -> None:
    msg = Message.decode(frame(b"", msg_type=msg_type))
    assert _type(msg.encode()) == msg_type


def test_xor_address_depends_on_transaction_id() -> None:
    # RFC 8489 §14.2: IPv6 is XORed with cookie + transaction id, IPv4 with the cookie only.
    v6 = A.XorMappedAddress("2001:db8::1", 3478)
    v4 = A.XorMappedAddress("192.0.2.1", 3478)
    assert v6.encode_value(b"A" * 12) != v6.encode_value(b"B" * 12)
    assert v4.encode_value(b"A" * 12) == v4.encode_value(b"B" * 12)
    assert A.XorMappedAddress.decode_value(v6.encode_value(b"A" * 12), b"B" * 12) != v6


@SETTINGS
@given(value=st.binary(max_size=64))
def test_attribute_decoders_raise_only_decode_error(value: bytes) -> None:
    for cls in ATTRIBUTE_CLASSES.values():
        try:
            cls.decode_value(value, b"T" * 12)
        except DecodeError:
            pass


@SETTINGS
@given(data=encoded())
def test_fingerprint_covers_every_byte(data: bytes) -> None:
    assume(Message.decode(data).fingerprint is not None)
    for pos in (0, 3, 7, 19, len(data) // 2, len(data) - 5):
        tampered = bytearray(data)
        tampered[pos] ^= 0x20
        msg = decode_or_decode_error(bytes(tampered))
        if msg is not None:
            assert not msg.verify_fingerprint()


# --------------------------------------------------------------------------- encoder misuse
# docs/design.md "Errors": misuse of an API raises LocalProtocolError (never struct.error, UnicodeError or
# a silently truncated field).


def _msg(*attrs: Attribute) -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, b"T" * 12, list(attrs))



ENCODE_MISUSE = [
    pytest.param(lambda: _msg().encode(sha256_length=12, key_sha256=b"k"), id="mi256-length-12"),
    pytest.param(lambda: _msg().encode(sha256_length=34, key_sha256=b"k"), id="mi256-length-34"),
    pytest.param(
        lambda: Message(Method.BINDING, MessageClass.REQUEST, b"T" * 11).encode(), id="tid-11"
    ),
    pytest.param(lambda: Message(0x1000, MessageClass.REQUEST, b"T" * 12).encode(), id="method"),
    pytest.param(lambda: _msg(A.Username("x" * 513)).encode(), id="username-513-bytes"),
    pytest.param(lambda: _msg(A.Software("\u00e9" * 382)).encode(), id="software-764-bytes"),
    pytest.param(lambda: _msg(A.XorMappedAddress("1.2.3", 1)).encode(), id="bad-ip"),
    pytest.param(lambda: _msg(A.XorMappedAddress("1.2.3.4", 65536)).encode(), id="port"),
    pytest.param(lambda: _msg(A.ErrorCodeAttribute(700)).encode(), id="error-700"),
    pytest.param(lambda: _msg(A.ErrorCodeAttribute(299)).encode(), id="error-299"),
    pytest.param(lambda: _msg(A.ChannelNumber(0x10000)).encode(), id="channel"),
    pytest.param(lambda: _msg(A.Priority(-1)).encode(), id="priority"),
    pytest.param(lambda: _msg(A.IceControlling(1 << 64)).encode(), id="tie-breaker"),
    pytest.param(lambda: _msg(A.Userhash(b"x" * 31)).encode(), id="userhash-31"),
    pytest.param(lambda: _msg(A.RequestedTransport(256)).encode(), id="transport"),
    pytest.param(lambda: _msg(A.RequestedAddressFamily(256)).encode(), id="family"),
    pytest.param(lambda: _msg(A.Icmp(256, 0)).encode(), id="icmp"),
    pytest.param(
        lambda: _msg(A.Data(b"x" * 40000), A.Data(b"x" * 40000)).encode(), id="message-too-long"
    ),
    pytest.param(
        lambda: _msg(A.Data(b"x" * 0x10000)).encode(),
        id="data-65536-bytes",
    ),
    pytest.param(
        lambda: _msg(A.Data(b"x" * 65510)).encode(key=b"k"),
        id="integrity-overflows-length",
    ),
    pytest.param(
        lambda: _msg(A.UnknownAttributes((0x10000,))).encode(),
        id="unknown-attributes-type",
    ),
    pytest.param(
        lambda: _msg(A.PasswordAlgorithm(0x10000)).encode(),
        id="password-algorithm-id",
    ),
    pytest.param(
        lambda: _msg(A.PasswordAlgorithms(((-1, b""),))).encode(),
        id="password-algorithms-id",
    ),
    pytest.param(
        lambda: _msg(RawAttribute(0x10000, b"")).encode(),
        id="raw-type",
    ),
    pytest.param(
        lambda: _msg(A.Username("\udc80")).encode(),
        id="lone-surrogate",
    ),
    pytest.param(
        lambda: _msg(A.AddressErrorCode(0x102, 440)).encode(),
        id="address-error-family",
    ),
]


@pytest.mark.parametrize("encode", ENCODE_MISUSE)
def test_encoder_misuse_raises_local_protocol_error(encode: Callable[[], bytes]) -> None:
    with pytest.raises(LocalProtocolError):
        encode()


def test_largest_message_encodes() -> None:
    # 20-byte header + 65532 bytes of attributes: the largest STUN message (RFC 8489 §5).
    data = _msg(A.Data(b"x" * (0xFFFC - 4 - 8))).encode(fingerprint=True)
    assert len(data) == 20 + 0xFFFC
    assert Message.decode(data).verify_fingerprint()
