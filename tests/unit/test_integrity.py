"""Keys, USERHASH, the nonce cookie and the client side of long-term negotiation (RFC 8489 §9)."""

import hashlib

import pytest

from anchor_stun.attributes import (
    ErrorCodeAttribute,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithmId,
    PasswordAlgorithms,
    Realm,
    Software,
    Userhash,
    Username,
)
from anchor_stun.errors import LocalProtocolError
from anchor_stun.integrity import (
    CredentialsRejected,
    LongTermCredentials,
    SecurityFeatures,
    long_term_key,
    make_nonce,
    nonce_features,
    opaque_string,
    short_term_key,
    turn_rest_password,
    userhash,
)
from anchor_stun.message import Message, MessageClass, Method

TID = bytes(range(12))
MATRIX = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"


def challenge(code: int, nonce: str, algorithms: PasswordAlgorithms | None = None) -> Message:
    attrs = [Realm("example.org"), Nonce(nonce)]
    if algorithms is not None:
        attrs.append(algorithms)
    return Message(Method.ALLOCATE, MessageClass.ERROR, TID, [ErrorCodeAttribute(code), *attrs])


def test_keys_match_the_rfc_formulas() -> None:
    assert long_term_key(MATRIX, "example.org", "TheMatrIX") == hashlib.md5(
        f"{MATRIX}:example.org:TheMatrIX".encode()
    ).digest()
    assert long_term_key("u", "r", "p", PasswordAlgorithmId.SHA256) == hashlib.sha256(b"u:r:p").digest()
    assert userhash(MATRIX, "example.org") == bytes.fromhex(
        "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    )
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"


def test_opaque_string_normalizes_and_rejects() -> None:
    # OpaqueString maps non-ASCII spaces to ASCII space and applies NFC.
    assert opaque_string("a\u00a0b") == "a b"
    assert opaque_string("e\u0301") == "\u00e9"
    with pytest.raises(LocalProtocolError):
        opaque_string("bad\x00")
    with pytest.raises(LocalProtocolError):
        opaque_string("")


def test_nonce_cookie_round_trip_and_bit_order() -> None:
    both = SecurityFeatures.PASSWORD_ALGORITHMS | SecurityFeatures.USERNAME_ANONYMITY
    nonce = make_nonce(both, "xyz")
    assert nonce.startswith("obMatJos2") and nonce_features(nonce) == both
    # RFC 8489 B.1's nonce "obMatJos2AAAC..." sets bit 1 (username anonymity), erratum 6290.
    assert nonce_features("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA") == (
        SecurityFeatures.USERNAME_ANONYMITY
    )
    assert nonce_features("obMatJos2AAAB") == SecurityFeatures.PASSWORD_ALGORITHMS
    assert nonce_features("plainnonce") is None
    assert nonce_features("obMatJos2!!!!") is None


def test_md5_negotiation_without_cookie() -> None:
    creds = LongTermCredentials("alice", "secret")
    # PASSWORD-ALGORITHMS without the cookie bit is not protected: ignore it, use MD5.
    creds.challenge(challenge(401, "abcdef", PasswordAlgorithms.of(PasswordAlgorithmId.SHA256)))
    assert creds.algorithm == PasswordAlgorithmId.MD5 and creds.offered is None
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, TID, [Software("t")])
    msg = Message.decode(creds.sign(request))
    assert msg.get(Username) == Username("alice")
    assert msg.get(PasswordAlgorithm) is None and msg.get(PasswordAlgorithms) is None
    assert msg.verify_integrity(long_term_key("alice", "example.org", "secret"))
    assert msg.integrity_sha256 is None and msg.verify_fingerprint()


def test_sha256_negotiation_with_cookie_and_userhash() -> None:
    features = SecurityFeatures.PASSWORD_ALGORITHMS | SecurityFeatures.USERNAME_ANONYMITY
    offered = PasswordAlgorithms.of(PasswordAlgorithmId.SHA256, PasswordAlgorithmId.MD5)
    creds = LongTermCredentials("alice", "secret")
    creds.challenge(challenge(401, make_nonce(features, "n1"), offered))
    assert creds.algorithm == PasswordAlgorithmId.SHA256
    msg = Message.decode(creds.sign(Message(Method.ALLOCATE, MessageClass.REQUEST, TID)))
    assert msg.get(Username) is None
    assert msg.get(Userhash) == Userhash(userhash("alice", "example.org"))
    assert msg.get(PasswordAlgorithms) == offered
    assert msg.get(PasswordAlgorithm) == PasswordAlgorithm(PasswordAlgorithmId.SHA256)
    key = long_term_key("alice", "example.org", "secret", PasswordAlgorithmId.SHA256)
    assert msg.verify_integrity_sha256(key) and msg.integrity is None
    # A response signed with the same key verifies; another key does not.
    response = msg.response().encode(key_sha256=key)
    assert creds.verify_response(Message.decode(response))
    assert not creds.verify_response(Message.decode(msg.response().encode(key_sha256=b"x" * 32)))


def test_client_follows_server_preference_among_supported() -> None:
    offered = PasswordAlgorithms.of(PasswordAlgorithmId.MD5, PasswordAlgorithmId.SHA256)
    creds = LongTermCredentials("alice", "secret")
    creds.challenge(challenge(401, make_nonce(SecurityFeatures.PASSWORD_ALGORITHMS, "n"), offered))
    assert creds.algorithm == PasswordAlgorithmId.MD5
    only = LongTermCredentials("alice", "secret", algorithms=(PasswordAlgorithmId.SHA256,))
    only.challenge(challenge(401, make_nonce(SecurityFeatures.PASSWORD_ALGORITHMS, "n"), offered))
    assert only.algorithm == PasswordAlgorithmId.SHA256


def test_bid_down_cookie_without_algorithms_is_refused() -> None:
    creds = LongTermCredentials("alice", "secret")
    with pytest.raises(CredentialsRejected, match="bid-down"):
        creds.challenge(challenge(401, make_nonce(SecurityFeatures.PASSWORD_ALGORITHMS, "n")))
    assert not creds.ready


def test_bid_down_algorithms_changed_on_stale_nonce_is_refused() -> None:
    cookie = make_nonce(SecurityFeatures.PASSWORD_ALGORITHMS, "n1")
    both = PasswordAlgorithms.of(PasswordAlgorithmId.SHA256, PasswordAlgorithmId.MD5)
    creds = LongTermCredentials("alice", "secret")
    creds.challenge(challenge(401, cookie, both))
    creds.challenge(challenge(438, make_nonce(SecurityFeatures.PASSWORD_ALGORITHMS, "n2"), both))
    assert creds.nonce is not None and creds.nonce.endswith("n2")
    with pytest.raises(CredentialsRejected, match="bid-down"):
        creds.challenge(
            challenge(
                438,
                make_nonce(SecurityFeatures.PASSWORD_ALGORITHMS, "n3"),
                PasswordAlgorithms.of(PasswordAlgorithmId.MD5),
            )
        )


def test_no_common_algorithm_and_second_401_are_refused() -> None:
    creds = LongTermCredentials("alice", "secret", algorithms=(PasswordAlgorithmId.SHA256,))
    with pytest.raises(CredentialsRejected, match="no supported"):
        creds.challenge(
            challenge(
                401,
                make_nonce(SecurityFeatures.PASSWORD_ALGORITHMS, "n"),
                PasswordAlgorithms.of(PasswordAlgorithmId.MD5),
            )
        )
    creds = LongTermCredentials("alice", "wrong")
    creds.challenge(challenge(401, "n1"))
    creds.sign(Message(Method.ALLOCATE, MessageClass.REQUEST, TID))
    with pytest.raises(CredentialsRejected, match="wrong username or password"):
        creds.challenge(challenge(401, "n2"))


def test_stale_nonce_before_challenge_and_non_challenge() -> None:
    creds = LongTermCredentials("alice", "secret")
    with pytest.raises(CredentialsRejected):
        creds.challenge(challenge(438, "n"))
    with pytest.raises(LocalProtocolError):
        creds.challenge(challenge(400, "n"))
    with pytest.raises(LocalProtocolError):
        creds.sign(Message(Method.ALLOCATE, MessageClass.REQUEST, TID))


def test_turn_rest_password_matches_coturn_formula() -> None:
    # printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
    assert turn_rest_password("secret", "1700000000:alice") == "d8soP47RbdIKLDUOpnJPVQyq5Ts="
