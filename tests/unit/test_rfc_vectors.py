"""The test vectors of RFC 5769 §2.1-§2.4 and RFC 8489 Appendix B.1 (erratum 6268).

Each sample (hex in tests/data/) is decoded, its typed attributes are compared with the
values the RFC states, MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are
verified, and the message is re-encoded byte for byte, both from the decoded message and from
a message built from scratch. The RFC 5769 §2.1-§2.3 samples pad with spaces (0x20), §2.4
and B.1 with zeros.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from anchor_stun.attributes import (
    IceControlled,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithmId,
    Priority,
    Realm,
    Software,
    Userhash,
    Username,
    XorMappedAddress,
)
from anchor_stun.errors import DecodeError
from anchor_stun.message import Message, MessageClass, Method

# --------------------------------------------------------------------------- keys
# Key derivation lives here, in one place, until the tests switch to anchor_stun.integrity.


def short_term_key(password: str) -> bytes:
    """RFC 8489 §9.1.1: the (OpaqueString-processed) password itself."""
    return password.encode("utf-8")


def long_term_key(username: str, realm: str, password: str, algorithm: str = "md5") -> bytes:
    """RFC 8489 §9.2.2: H(username ":" realm ":" password), H = MD5 or SHA-256."""
    return hashlib.new(algorithm, f"{username}:{realm}:{password}".encode()).digest()


def userhash(username: str, realm: str) -> bytes:
    """RFC 8489 §14.4: SHA-256(username ":" realm)."""
    return hashlib.sha256(f"{username}:{realm}".encode()).digest()


# --------------------------------------------------------------------------- vectors

DATA = Path(__file__).resolve().parents[1] / "data"


def load_hex(name: str) -> bytes:
    """Bytes of a tests/data/*.hex file ('#' starts a comment)."""
    text = (DATA / name).read_text()
    return bytes.fromhex(" ".join(line.split("#", 1)[0] for line in text.splitlines()))


SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"  # RFC 5769 §2.1-§2.3
TID_5769 = bytes.fromhex("b7e7a701bc34d686fa87dfae")
TID_LONG_TERM = bytes.fromhex("78ad3433c6ad72c029da412e")
USERNAME_LT = (
    "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # "マトリックス", unchanged by SASLprep/OpaqueString
)
PASSWORD_LT = "TheMatrIX"  # "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep / OpaqueString
REALM_LT = "example.org"
NONCE_5769 = "f//499k954d6OL34oL9FSTvy64sA"
NONCE_8489 = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"  # erratum 6268

REQUEST = load_hex("rfc5769-2.1-sample-request.hex")
IPV4_RESPONSE = load_hex("rfc5769-2.2-sample-ipv4-response.hex")
IPV6_RESPONSE = load_hex("rfc5769-2.3-sample-ipv6-response.hex")
LONG_TERM_REQUEST = load_hex("rfc5769-2.4-sample-request-long-term.hex")
SHA256_REQUEST = load_hex("rfc8489-b.1-sample-request-sha256.hex")


def test_vector_files_have_the_stated_lengths() -> None:
    # 20-byte header + the message length each RFC states.
    assert [len(v) for v in (REQUEST, IPV4_RESPONSE, IPV6_RESPONSE)] == [108, 80, 92]
    assert len(LONG_TERM_REQUEST) == 20 + 0x60
    assert len(SHA256_REQUEST) == 20 + 0x90


# --------------------------------------------------------------------------- RFC 5769 §2.1


def test_5769_sample_request() -> None:
    key = short_term_key(SHORT_TERM_PASSWORD)
    msg = Message.decode(REQUEST)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (
        Method.BINDING,
        MessageClass.REQUEST,
        TID_5769,
    )
    assert msg.attributes == [
        Software("STUN test client"),
        Priority(0x6E0001FF),
        IceControlled(0x932FF9B151263B36),
        Username("evtj:h6vY"),
    ]
    assert msg.unknown_required() == []
    assert msg.integrity == bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")
    assert msg.fingerprint == 0xE57A3BCF
    assert msg.verify_integrity(key)
    assert not msg.verify_integrity(short_term_key("wrong password"))
    assert not msg.verify_integrity_sha256(key)  # there is no MESSAGE-INTEGRITY-SHA256
    assert msg.verify_fingerprint()
    assert msg.pad_byte == 0x20
    assert msg.encode(key=key, fingerprint=True) == REQUEST


def test_5769_sample_request_built_from_scratch() -> None:
    msg = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        TID_5769,
        [
            Software("STUN test client"),
            Priority(0x6E0001FF),
            IceControlled(0x932FF9B151263B36),
            Username("evtj:h6vY"),
        ],
        pad_byte=0x20,
    )
    assert msg.encode(key=short_term_key(SHORT_TERM_PASSWORD), fingerprint=True) == REQUEST


# --------------------------------------------------------------------------- RFC 5769 §2.2, §2.3


@pytest.mark.parametrize(
    ("data", "ip", "mi", "fp"),
    [
        pytest.param(
            IPV4_RESPONSE,
            "192.0.2.1",
            "2b91f599fd9e90c38c7489f92af9ba53f06be7d7",
            0xC07D4C96,
            id="2.2-ipv4",
        ),
        pytest.param(
            IPV6_RESPONSE,
            "2001:db8:1234:5678:11:2233:4455:6677",
            "a382954e4be67bf11784c97c8292c275bfe3ed41",
            0xC8FB0B4C,
            id="2.3-ipv6",
        ),
    ],
)
def test_5769_sample_responses(data: bytes, ip: str, mi: str, fp: int) -> None:
    key = short_term_key(SHORT_TERM_PASSWORD)
    msg = Message.decode(data)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (
        Method.BINDING,
        MessageClass.SUCCESS,
        TID_5769,
    )
    assert msg.attributes == [Software("test vector"), XorMappedAddress(ip, 32853)]
    mapped = msg.get(XorMappedAddress)
    assert mapped is not None and mapped.address == (ip, 32853)
    assert msg.integrity == bytes.fromhex(mi)
    assert msg.fingerprint == fp
    assert msg.verify_integrity(key)
    assert not msg.verify_integrity(key[:-1])
    assert msg.verify_fingerprint()
    assert msg.encode(key=key, fingerprint=True) == data

    fresh = Message(
        Method.BINDING,
        MessageClass.SUCCESS,
        TID_5769,
        [Software("test vector"), XorMappedAddress(ip, 32853)],
        pad_byte=0x20,
    )
    assert fresh.encode(key=key, fingerprint=True) == data


# --------------------------------------------------------------------------- RFC 5769 §2.4


def test_5769_sample_request_long_term() -> None:
    key = long_term_key(USERNAME_LT, REALM_LT, PASSWORD_LT)
    msg = Message.decode(LONG_TERM_REQUEST)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (
        Method.BINDING,
        MessageClass.REQUEST,
        TID_LONG_TERM,
    )
    assert msg.attributes == [Username(USERNAME_LT), Nonce(NONCE_5769), Realm(REALM_LT)]
    assert msg.integrity == bytes.fromhex("f67024656dd64a3e02b8e0712e85c9a28ca89666")
    assert msg.fingerprint is None
    assert msg.verify_integrity(key)
    assert not msg.verify_integrity(long_term_key(USERNAME_LT, REALM_LT, "TheMatrIx"))
    assert not msg.verify_fingerprint()  # the sample has no FINGERPRINT
    assert msg.pad_byte == 0
    assert msg.encode(key=key) == LONG_TERM_REQUEST

    fresh = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        TID_LONG_TERM,
        [Username(USERNAME_LT), Nonce(NONCE_5769), Realm(REALM_LT)],
    )
    assert fresh.encode(key=key) == LONG_TERM_REQUEST


# --------------------------------------------------------------------------- RFC 8489 B.1


def test_8489_sample_request_sha256_userhash() -> None:
    key = long_term_key(USERNAME_LT, REALM_LT, PASSWORD_LT, "sha256")
    msg = Message.decode(SHA256_REQUEST)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (
        Method.BINDING,
        MessageClass.REQUEST,
        TID_LONG_TERM,
    )
    assert msg.attributes == [
        Userhash(userhash(USERNAME_LT, REALM_LT)),
        Nonce(NONCE_8489),
        Realm(REALM_LT),
        PasswordAlgorithm(PasswordAlgorithmId.SHA256, b""),
    ]
    assert msg.integrity is None
    assert msg.integrity_sha256 == bytes.fromhex(
        "b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65"
    )
    assert msg.verify_integrity_sha256(key)
    assert not msg.verify_integrity_sha256(long_term_key(USERNAME_LT, REALM_LT, PASSWORD_LT))
    assert not msg.verify_integrity(key)  # there is no MESSAGE-INTEGRITY
    assert not msg.verify_fingerprint()
    assert msg.encode(key_sha256=key) == SHA256_REQUEST

    fresh = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        TID_LONG_TERM,
        [
            Userhash(userhash(USERNAME_LT, REALM_LT)),
            Nonce(NONCE_8489),
            Realm(REALM_LT),
            PasswordAlgorithm(PasswordAlgorithmId.SHA256),
        ],
    )
    assert fresh.encode(key_sha256=key, sha256_length=32) == SHA256_REQUEST


# --------------------------------------------------------------------------- all samples

ALL = [
    pytest.param(REQUEST, short_term_key(SHORT_TERM_PASSWORD), "sha1", id="5769-2.1"),
    pytest.param(IPV4_RESPONSE, short_term_key(SHORT_TERM_PASSWORD), "sha1", id="5769-2.2"),
    pytest.param(IPV6_RESPONSE, short_term_key(SHORT_TERM_PASSWORD), "sha1", id="5769-2.3"),
    pytest.param(
        LONG_TERM_REQUEST, long_term_key(USERNAME_LT, REALM_LT, PASSWORD_LT), "sha1", id="5769-2.4"
    ),
    pytest.param(
        SHA256_REQUEST,
        long_term_key(USERNAME_LT, REALM_LT, PASSWORD_LT, "sha256"),
        "sha256",
        id="8489-B.1",
    ),
]


def _verify(msg: Message, key: bytes, algorithm: str) -> bool:
    return msg.verify_integrity(key) if algorithm == "sha1" else msg.verify_integrity_sha256(key)


@pytest.mark.parametrize(("data", "key", "algorithm"), ALL)
def test_every_covered_byte_is_protected(data: bytes, key: bytes, algorithm: str) -> None:
    """Flipping any bit before the integrity attribute breaks the MAC (and the FINGERPRINT),
    or makes the message undecodable; it never leaves a message that still verifies."""
    mac_at = (
        data.find(b"\x00\x08\x00\x14") if algorithm == "sha1" else data.find(b"\x00\x1c\x00\x20")
    )
    assert mac_at > 20
    for pos in range(mac_at):
        for bit in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[pos] ^= bit
            try:
                msg = Message.decode(bytes(tampered))
            except DecodeError:
                continue
            assert not _verify(msg, key, algorithm), f"flip {bit:#x} at byte {pos} still verifies"
            assert not msg.verify_fingerprint()


@pytest.mark.parametrize(("data", "key", "algorithm"), ALL)
def test_zero_padding_reencode_still_verifies(data: bytes, key: bytes, algorithm: str) -> None:
    """Re-encoded with RFC 8489's zero padding, every sample decodes to the same attributes
    and its fresh MAC and FINGERPRINT verify."""
    msg = Message.decode(data)
    msg.pad_byte = 0
    out = msg.encode(
        key=key if algorithm == "sha1" else None,
        key_sha256=key if algorithm == "sha256" else None,
        fingerprint=True,
    )
    again = Message.decode(out)
    assert again.attributes == msg.attributes
    assert _verify(again, key, algorithm)
    assert again.verify_fingerprint()
    assert again.pad_byte == 0
