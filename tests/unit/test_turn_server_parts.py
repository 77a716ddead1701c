"""The parts TurnServer drives, through their public surface: the nonce authenticator
(RFC 8489 §9.2) and the "myself" set (RFC 8656 §21). No sockets, literal clock values."""

from __future__ import annotations

import itertools

import anchor_turn
import anchor_turn.server
from anchor_stun.attributes import (
    ErrorCode,
    Nonce,
    PasswordAlgorithms,
    Realm,
    RequestedTransport,
    Username,
)
from anchor_stun.events import Address
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn import NonceAuthenticator, PeerFilter, SelfAddresses, StaticUsers
from anchor_turn.nonce_auth import Authenticated, Refusal

REALM = "example.org"
CLIENT: Address = ("203.0.113.7", 40000)
LISTEN: Address = ("192.0.2.1", 3478)
T0 = 1000.0


def counter_rng() -> object:
    counter = itertools.count()
    return lambda n: bytes((next(counter) + i) & 0xFF for i in range(n))


def authenticator(**kw: object) -> NonceAuthenticator:
    options: dict[str, object] = {
        "realm": REALM,
        "backend": StaticUsers({"alice": "secret"}, realm=REALM),
        "rng": counter_rng(),
        "nonce_lifetime": 60.0,
    }
    options.update(kw)
    return NonceAuthenticator(**options)  # type: ignore[arg-type]


def test_a_nonce_is_valid_only_on_its_5_tuple_and_until_it_expires() -> None:
    auth = authenticator()
    nonce = auth.nonce(CLIENT, LISTEN, "udp", T0)
    assert auth.nonce_valid(nonce, CLIENT, LISTEN, "udp", T0 + 59.9)
    assert not auth.nonce_valid(nonce, CLIENT, LISTEN, "udp", T0 + 60.0)
    assert not auth.nonce_valid(nonce, (CLIENT[0], CLIENT[1] + 1), LISTEN, "udp", T0)
    assert not auth.nonce_valid(nonce, ("203.0.113.8", CLIENT[1]), LISTEN, "udp", T0)
    assert not auth.nonce_valid(nonce, CLIENT, (LISTEN[0], 3479), "udp", T0)
    assert not auth.nonce_valid(nonce, CLIENT, LISTEN, "tcp", T0)
    other = authenticator(rng=lambda n: b"\xff" * n)  # another secret: a restarted server
    assert not other.nonce_valid(nonce, CLIENT, LISTEN, "udp", T0)
    assert not auth.nonce_valid(nonce[:-2], CLIENT, LISTEN, "udp", T0)
    assert not auth.nonce_valid("not a nonce", CLIENT, LISTEN, "udp", T0)


def test_an_unsigned_request_gets_the_challenge_a_missing_attribute_400() -> None:
    auth = authenticator()
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, b"t" * 12, [RequestedTransport()])
    verdict = auth.authenticate(request, CLIENT, LISTEN, "udp", T0)
    assert isinstance(verdict, Refusal) and verdict.code == ErrorCode.UNAUTHENTICATED
    assert not verdict.bad_credentials
    realm, nonce, offered = verdict.attributes
    assert realm == Realm(REALM) and isinstance(offered, PasswordAlgorithms)
    assert isinstance(nonce, Nonce) and auth.nonce_valid(nonce.value, CLIENT, LISTEN, "udp", T0)
    # signed, but without REALM and NONCE (RFC 8489 §9.2.4 step b): 400
    signed = Message(Method.ALLOCATE, MessageClass.REQUEST, b"t" * 12, [Username("alice")]).encode(
        key=b"k" * 16
    )
    verdict = auth.authenticate(Message.decode(signed), CLIENT, LISTEN, "udp", T0)
    assert isinstance(verdict, Refusal) and verdict.code == ErrorCode.BAD_REQUEST
    assert not isinstance(verdict, Authenticated)


def test_self_addresses_cover_mapped_forms_and_loopback_on_wildcard_ports() -> None:
    myself = SelfAddresses([LISTEN, ("0.0.0.0", 5000)])
    assert LISTEN in myself and ("::ffff:192.0.2.1", 3478) in myself
    assert ("127.0.0.5", 5000) in myself and ("::1", 5000) in myself  # any family
    assert ("127.0.0.5", 5001) not in myself and (LISTEN[0], 3479) not in myself
    assert myself.includes(("::ffff:198.51.100.1", 9), [("198.51.100.1", 9)])
    assert not myself.includes(("198.51.100.1", 9))
    myself.add([("::", 6000)])
    assert ("::1", 6000) in myself and ("127.0.0.1", 6000) in myself


def test_the_parts_are_importable_from_the_root_and_the_server_module() -> None:
    assert anchor_turn.server.PeerFilter is PeerFilter is anchor_turn.PeerFilter
    assert anchor_turn.server.TurnServerStats is anchor_turn.TurnServerStats
    assert not PeerFilter()("127.0.0.1") and PeerFilter(allow_loopback=True)("127.0.0.1")
