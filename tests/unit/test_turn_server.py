"""Tests of the sans-I/O TURN server core (RFC 8656, RFC 8489 §9.2).

No sockets, literal clock values, a fake relay allocator. Requests are built with the codec
and signed with :class:`LongTermCredentials`; responses are decoded and verified with them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor_stun.attributes import (
    AdditionalAddressFamily,
    AddressErrorCode,
    Attribute,
    ChannelNumber,
    Data,
    DontFragment,
    EvenPort,
    Family,
    Lifetime,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithmId,
    PasswordAlgorithms,
    RawAttribute,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttributes,
    Userhash,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from anchor_stun.events import Address, Transmit
from anchor_stun.integrity import (
    NONCE_COOKIE,
    LongTermCredentials,
    SecurityFeatures,
    long_term_key,
    nonce_features,
    turn_rest_password,
    userhash,
)
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.server import StunServer
from anchor_turn.auth import RestSecret, StaticUsers
from anchor_turn.channeldata import decode_channel_data, encode_channel_data
from anchor_turn.server import (
    AllocationCreatedEvent,
    AllocationDeletedEvent,
    AllocationExpiredEvent,
    AllocationRefreshedEvent,
    AuthenticationFailedEvent,
    ChannelBoundEvent,
    ChannelExpiredEvent,
    DontFragmentTransmit,
    PeerFilter,
    PermissionCreatedEvent,
    PermissionExpiredEvent,
    TurnServer,
    TurnServerEvent,
)

REALM = "example.org"
LISTEN: Address = ("192.0.2.1", 3478)
CLIENT: Address = ("203.0.113.7", 40000)
CLIENT2: Address = ("203.0.113.8", 40001)
PEER: Address = ("198.51.100.20", 6000)
PEER6: Address = ("2001:db8:2::20", 6000)
RELAY_IP4 = "192.0.2.100"
RELAY_IP6 = "2001:db8::100"
MD5 = PasswordAlgorithmId.MD5
SHA256 = PasswordAlgorithmId.SHA256
T0 = 1000.0


# --------------------------------------------------------------------------- fakes


@dataclass
class FakeRelay:
    """A RelayAllocator that hands out ports 50000, 50001, ... and records releases."""

    capacity: int = 100
    fail: set[int] = field(default_factory=set)
    next_port: int = 50000
    in_use: set[Address] = field(default_factory=set)
    released: list[Address] = field(default_factory=list)
    reservations: dict[bytes, Address] = field(default_factory=dict)
    calls: list[tuple[int, bool, bool, bytes | None, float]] = field(default_factory=list)

    def allocate(
        self, family: int, even_port: bool, reserve_next: bool, token: bytes | None, now: float
    ) -> tuple[Address, bytes | None] | None:
        self.calls.append((family, even_port, reserve_next, token, now))
        if token is not None:
            addr = self.reservations.pop(token, None)
            if addr is None:
                return None
            self.in_use.add(addr)
            return addr, None
        if family in self.fail or len(self.in_use) >= self.capacity:
            return None
        ip = RELAY_IP4 if family == Family.IPV4 else RELAY_IP6
        port = self.next_port
        if even_port and port % 2:
            port += 1
        self.next_port = port + (2 if reserve_next else 1)
        addr = (ip, port)
        self.in_use.add(addr)
        reservation = None
        if reserve_next:
            reservation = b"tok" + port.to_bytes(5, "big")
            self.reservations[reservation] = (ip, port + 1)
        return addr, reservation

    def release(self, addr: Address) -> None:
        self.in_use.discard(addr)
        self.released.append(addr)


def counter_rng() -> object:
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] + i) & 0xFF for i in range(n))

    return rng


def make_server(**kw: object) -> tuple[TurnServer, FakeRelay]:
    relay = FakeRelay()
    users = StaticUsers({"alice": "secret", "bob": "hunter2"}, realm=REALM)
    options: dict[str, object] = {
        "realm": REALM,
        "auth": users,
        "relay": relay,
        "stun": StunServer(primary=LISTEN),
        "rng": counter_rng(),
    }
    options.update(kw)
    return TurnServer(**options), relay  # type: ignore[arg-type]


class Client:
    """A test client on one 5-tuple: builds, signs and exchanges requests."""

    def __init__(
        self,
        server: TurnServer,
        addr: Address = CLIENT,
        user: str = "alice",
        password: str = "secret",
        algorithms: tuple[int, ...] = (SHA256, MD5),
        transport: str = "udp",
    ) -> None:
        self.server = server
        self.addr = addr
        self.transport = transport
        self.creds = LongTermCredentials(user, password, algorithms=algorithms)
        self.n = 0

    def tid(self) -> bytes:
        self.n += 1
        return self.addr[1].to_bytes(4, "big") + self.n.to_bytes(8, "big")

    def send(self, data: bytes, now: float) -> list[Transmit]:
        self.server.receive_datagram(data, self.addr, LISTEN, now, transport=self.transport)  # type: ignore[arg-type]
        return self.server.datagrams_to_send(now)

    def exchange(self, data: bytes, now: float) -> Message:
        out = self.send(data, now)
        assert len(out) == 1, out
        assert out[0].addr == self.addr and out[0].local == LISTEN
        msg = Message.decode(out[0].data)
        assert msg.verify_fingerprint()
        return msg

    def login(self, now: float) -> Message:
        """An unauthenticated Allocate, answered by the 401 challenge."""
        req = Message(Method.ALLOCATE, MessageClass.REQUEST, self.tid(), [RequestedTransport()])
        resp = self.exchange(req.encode(fingerprint=True), now)
        assert resp.error is not None and resp.error.code == 401
        self.creds.challenge(resp)
        return resp

    def request(
        self, method: int, *attrs: Attribute, now: float = T0, retry_stale: bool = True
    ) -> Message:
        if not self.creds.ready:
            self.login(now)
        req = Message(method, MessageClass.REQUEST, self.tid(), list(attrs))
        resp = self.exchange(self.creds.sign(req), now)
        if retry_stale and code(resp) == 438:  # RFC 8489 §9.2.5: retry with the new nonce
            self.creds.challenge(resp)
            req.transaction_id = self.tid()
            resp = self.exchange(self.creds.sign(req), now)
        if not (resp.error is not None and resp.error.code in (400, 401, 438)):
            assert self.creds.verify_response(resp), resp
        return resp

    def allocate(self, *attrs: Attribute, now: float = T0) -> Message:
        if not any(isinstance(a, RequestedTransport) for a in attrs):
            attrs = (RequestedTransport(), *attrs)
        return self.request(Method.ALLOCATE, *attrs, now=now)

    def relayed(self, resp: Message) -> Address:
        rel = resp.get(XorRelayedAddress)
        assert rel is not None, resp
        return rel.address


def code(resp: Message) -> int | None:
    return resp.error.code if resp.error is not None else None


def events(server: TurnServer) -> list[TurnServerEvent]:
    out = []
    while (event := server.next_event()) is not None:
        out.append(event)
    return out


def allocated(**kw: object) -> tuple[TurnServer, FakeRelay, Client, Address]:
    server, relay = make_server(**kw)
    client = Client(server)
    resp = client.allocate()
    assert code(resp) is None, resp
    return server, relay, client, client.relayed(resp)


def send_indication(peer: Address, payload: bytes, tid: bytes = b"s" * 12) -> bytes:
    msg = Message(Method.SEND, MessageClass.INDICATION, tid, [XorPeerAddress(*peer), Data(payload)])
    return msg.encode(fingerprint=True)


# --------------------------------------------------------------------------- authentication


def test_first_request_gets_401_with_realm_nonce_and_algorithms() -> None:
    server, _ = make_server()
    client = Client(server)
    resp = client.login(T0)
    realm, nonce = resp.get(Realm), resp.get(Nonce)
    assert realm == Realm(REALM)
    assert nonce is not None and nonce.value.startswith(NONCE_COOKIE)
    assert nonce_features(nonce.value) == SecurityFeatures.PASSWORD_ALGORITHMS
    assert resp.get(PasswordAlgorithms) == PasswordAlgorithms.of(SHA256, MD5)
    assert resp.get(Software) == Software("anchor")
    assert resp.integrity is None and resp.integrity_sha256 is None
    assert resp.method == Method.ALLOCATE and resp.msg_class == MessageClass.ERROR
    assert server.stats.errors_sent == 1 and server.stats.auth_failures == 0


def test_allocate_with_sha256_signs_with_message_integrity_sha256() -> None:
    server, relay = make_server()
    client = Client(server)
    resp = client.allocate()
    assert client.creds.algorithm == SHA256
    assert code(resp) is None and resp.msg_class == MessageClass.SUCCESS
    assert resp.integrity_sha256 is not None and resp.integrity is None
    assert resp.verify_integrity_sha256(long_term_key("alice", REALM, "secret", SHA256))
    assert resp.get(XorRelayedAddress) == XorRelayedAddress(RELAY_IP4, 50000)
    assert resp.get(XorMappedAddress) == XorMappedAddress(*CLIENT)
    assert resp.get(Lifetime) == Lifetime(600)
    assert resp.get(Software) == Software("anchor")
    assert relay.in_use == {(RELAY_IP4, 50000)}
    assert server.relayed_for(CLIENT, LISTEN) == ((RELAY_IP4, 50000),)
    assert events(server) == [
        AllocationCreatedEvent(CLIENT, LISTEN, "udp", "alice", ((RELAY_IP4, 50000),), 600)
    ]
    assert server.stats.allocations == 1 and server.stats.allocations_created == 1


def test_allocate_with_md5_signs_with_message_integrity() -> None:
    server, _ = make_server()
    client = Client(server, algorithms=(MD5,))
    resp = client.allocate()
    assert code(resp) is None
    assert resp.integrity is not None and resp.integrity_sha256 is None
    assert resp.verify_integrity(long_term_key("alice", REALM, "secret", MD5))


def test_truncated_sha256_integrity_is_mirrored() -> None:
    server, _ = make_server()
    client = Client(server)
    client.login(T0)
    req = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        client.tid(),
        [RequestedTransport(), *client.creds.attributes()],
    )
    key = long_term_key("alice", REALM, "secret", SHA256)
    resp = client.exchange(req.encode(key_sha256=key, sha256_length=16, fingerprint=True), T0)
    assert code(resp) is None
    assert resp.integrity_sha256 is not None and len(resp.integrity_sha256) == 16
    assert resp.verify_integrity_sha256(key)


def test_server_offering_md5_only_without_cookie_algorithms() -> None:
    server, _ = make_server(password_algorithms=())
    client = Client(server)
    resp = client.login(T0)
    nonce = resp.get(Nonce)
    assert nonce is not None and nonce_features(nonce.value) == SecurityFeatures.NONE
    assert resp.get(PasswordAlgorithms) is None
    assert code(client.allocate()) is None
    assert client.creds.algorithm == MD5


def test_wrong_password_gets_401_and_is_counted() -> None:
    server, _ = make_server()
    client = Client(server, password="wrong")
    resp = client.allocate()
    assert code(resp) == 401 and resp.get(Nonce) is not None and resp.get(Realm) is not None
    assert resp.integrity is None and resp.integrity_sha256 is None
    assert server.stats.auth_failures == 1
    assert AuthenticationFailedEvent(CLIENT, "alice", 401) in events(server)
    assert server.allocation_count() == 0


def test_unknown_user_and_other_realm_get_401() -> None:
    server, _ = make_server()
    assert code(Client(server, user="mallory").allocate()) == 401
    client = Client(server)
    client.login(T0)
    client.creds.realm = "other.org"  # signs with a REALM the server does not serve
    assert code(client.allocate()) == 401
    assert server.stats.auth_failures == 2


def test_missing_credential_attributes_get_400() -> None:
    server, _ = make_server()
    client = Client(server)
    client.login(T0)
    key = client.creds.key
    assert key is not None
    full = client.creds.attributes()
    for drop in (Username, Realm, Nonce):
        attrs = [RequestedTransport(), *(a for a in full if not isinstance(a, drop))]
        req = Message(Method.ALLOCATE, MessageClass.REQUEST, client.tid(), attrs)
        resp = client.exchange(req.encode(key_sha256=key, fingerprint=True), T0)
        assert code(resp) == 400
        assert resp.get(Nonce) is None and resp.integrity_sha256 is None


def test_password_algorithm_negotiation_errors_get_400() -> None:
    server, _ = make_server()
    client = Client(server)
    client.login(T0)
    key = client.creds.key
    assert key is not None
    base = [a for a in client.creds.attributes() if not isinstance(a, PasswordAlgorithm)]
    cases: list[list[Attribute]] = [
        base,  # PASSWORD-ALGORITHMS without PASSWORD-ALGORITHM
        [a for a in base if not isinstance(a, PasswordAlgorithms)] + [PasswordAlgorithm(SHA256)],
        [a for a in base if not isinstance(a, PasswordAlgorithms)]
        + [PasswordAlgorithms.of(SHA256), PasswordAlgorithm(SHA256)],  # list changed
        [*base, PasswordAlgorithm(0x7777)],  # not in the list
    ]
    for attrs in cases:
        req = Message(
            Method.ALLOCATE, MessageClass.REQUEST, client.tid(), [RequestedTransport(), *attrs]
        )
        assert code(client.exchange(req.encode(key_sha256=key, fingerprint=True), T0)) == 400


def test_no_algorithm_attributes_mean_md5() -> None:
    server, _ = make_server()
    client = Client(server)
    client.login(T0)
    nonce = client.creds.nonce
    assert nonce is not None
    attrs: list[Attribute] = [RequestedTransport(), Username("alice"), Realm(REALM), Nonce(nonce)]
    req = Message(Method.ALLOCATE, MessageClass.REQUEST, client.tid(), attrs)
    md5 = long_term_key("alice", REALM, "secret", MD5)
    resp = client.exchange(req.encode(key=md5, fingerprint=True), T0)
    assert code(resp) is None and resp.verify_integrity(md5)

    sha_only, _ = make_server(password_algorithms=(SHA256,))
    other = Client(sha_only)
    other.login(T0)
    assert other.creds.nonce is not None
    attrs = [RequestedTransport(), Username("alice"), Realm(REALM), Nonce(other.creds.nonce)]
    req = Message(Method.ALLOCATE, MessageClass.REQUEST, other.tid(), attrs)
    assert code(other.exchange(req.encode(key=md5, fingerprint=True), T0)) == 400


def test_stale_nonce_after_nonce_lifetime_then_success() -> None:
    server, _ = make_server(nonce_lifetime=600)
    client = Client(server)
    client.login(T0)
    first_nonce = client.creds.nonce
    resp = client.allocate(now=T0 + 599.999)
    assert code(resp) is None
    # the 438 carries REALM, a new NONCE and the same PASSWORD-ALGORITHMS (RFC 8489 §9.2.4)
    stale = client.request(Method.REFRESH, now=T0 + 600, retry_stale=False)
    assert code(stale) == 438 and stale.get(PasswordAlgorithms) == PasswordAlgorithms.of(
        SHA256, MD5
    )
    assert stale.integrity is None and stale.integrity_sha256 is None
    client.creds.challenge(stale)
    assert client.creds.nonce != first_nonce
    refreshed = client.request(Method.REFRESH, now=T0 + 600)
    assert code(refreshed) is None and refreshed.get(Lifetime) == Lifetime(600)


def test_nonce_is_bound_to_the_client_ip_and_unforgeable() -> None:
    server, _ = make_server()
    client = Client(server)
    client.login(T0)
    other = Client(server, addr=CLIENT2)
    other.creds = client.creds  # same credentials, nonce issued to another IP
    stale = other.request(Method.ALLOCATE, RequestedTransport(), retry_stale=False)
    assert code(stale) == 438
    other.creds.challenge(stale)
    assert code(other.allocate()) is None
    forged = Client(server, addr=CLIENT2)
    forged.login(T0)
    assert forged.creds.nonce is not None
    nonce = forged.creds.nonce
    for bad in (nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB"), NONCE_COOKIE + "AAABjunk"):
        forged.creds.nonce = bad
        req = Message(Method.ALLOCATE, MessageClass.REQUEST, forged.tid(), [RequestedTransport()])
        assert code(forged.exchange(forged.creds.sign(req), T0)) == 438


def test_userhash_is_accepted_and_advertised_on_request() -> None:
    server, _ = make_server(username_anonymity=True)
    client = Client(server)
    nonce = client.login(T0).get(Nonce)
    assert nonce is not None
    assert SecurityFeatures.USERNAME_ANONYMITY in (
        nonce_features(nonce.value) or SecurityFeatures.NONE
    )
    assert client.creds.use_userhash
    resp = client.allocate()
    assert code(resp) is None
    assert events(server)[0] == AllocationCreatedEvent(
        CLIENT, LISTEN, "udp", "alice", ((RELAY_IP4, 50000),), 600
    )

    plain, _ = make_server()  # not advertised, still accepted
    other = Client(plain)
    other.login(T0)
    other.creds.use_userhash = True
    assert code(other.allocate()) is None
    unknown = Client(plain, addr=CLIENT2)
    unknown.login(T0)
    unknown.creds.use_userhash = True
    unknown.creds.username = "nobody"
    assert code(unknown.allocate()) == 401


def test_rest_secret_credentials_end_to_end() -> None:
    rest = RestSecret("s3cret", clock=lambda: 1_700_000_000.0)
    server, _ = make_server(auth=rest)
    good = "1700000600:alice"
    client = Client(server, user=good, password=turn_rest_password("s3cret", good))
    assert code(client.allocate()) is None
    expired = "1699999999:alice"
    late = Client(
        server, addr=CLIENT2, user=expired, password=turn_rest_password("s3cret", expired)
    )
    assert code(late.allocate()) == 401


def test_wrong_credentials_on_another_users_allocation_get_441() -> None:
    server, _, alice, _ = allocated()
    bob = Client(server, user="bob", password="hunter2")  # same 5-tuple as alice
    resp = bob.request(Method.REFRESH)
    assert code(resp) == 441 and bob.creds.verify_response(resp)
    assert code(bob.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) == 441
    assert (
        code(bob.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER))) == 441
    )
    assert code(alice.request(Method.REFRESH)) is None


# --------------------------------------------------------------------------- Allocate


def test_allocation_mismatch_and_retransmission() -> None:
    server, relay = make_server()
    client = Client(server)
    client.login(T0)
    req = Message(Method.ALLOCATE, MessageClass.REQUEST, client.tid(), [RequestedTransport()])
    signed = client.creds.sign(req)
    first = client.send(signed, T0)
    again = client.send(signed, T0 + 1)  # a retransmission: the same success
    assert [t.data for t in again] == [t.data for t in first]
    assert len(relay.calls) == 1
    resp = client.allocate()  # a new transaction on the same 5-tuple
    assert code(resp) == 437 and client.creds.verify_response(resp)
    assert server.allocation_count() == 1


def test_requested_transport_missing_or_not_udp() -> None:
    server, _ = make_server()
    client = Client(server)
    assert code(client.request(Method.ALLOCATE)) == 400
    resp = client.allocate(RequestedTransport(6))
    assert code(resp) == 442 and client.creds.verify_response(resp)
    assert server.allocation_count() == 0


def test_unknown_comprehension_required_attribute_gets_signed_420() -> None:
    server, _ = make_server()
    client = Client(server)
    resp = client.allocate(RawAttribute(0x7FF0, b"\x00\x00\x00\x00"))
    assert code(resp) == 420 and resp.get(UnknownAttributes) == UnknownAttributes((0x7FF0,))
    assert client.creds.verify_response(resp)
    assert code(client.allocate(RawAttribute(0xC0DE, b"ok"), DontFragment())) is None


def test_unknown_method_and_malformed_request_get_400() -> None:
    server, _ = make_server()
    client = Client(server)
    resp = client.exchange(Message(0x0ABC, MessageClass.REQUEST, client.tid()).encode(), T0)
    assert code(resp) == 400 and resp.method == 0x0ABC
    bad = bytearray(
        Message(Method.ALLOCATE, MessageClass.REQUEST, client.tid(), [Lifetime(5)]).encode()
    )
    bad[22:24] = b"\x00\x09"  # LIFETIME claims 9 bytes: overruns the message
    resp = client.exchange(bytes(bad), T0)
    assert code(resp) == 400 and resp.method == Method.ALLOCATE


def test_binding_requests_are_answered_by_the_stun_core() -> None:
    server, _ = make_server()
    client = Client(server)
    req = Message(Method.BINDING, MessageClass.REQUEST, client.tid())
    resp = client.exchange(req.encode(fingerprint=True), T0)
    assert resp.msg_class == MessageClass.SUCCESS
    assert resp.get(XorMappedAddress) == XorMappedAddress(*CLIENT)
    assert server.stun.stats.answered == 1
    tcp = Client(server, transport="tcp")
    assert tcp.exchange(req.encode(), T0).get(XorMappedAddress) == XorMappedAddress(*CLIENT)


@pytest.mark.parametrize(
    ("requested", "granted"),
    [(None, 600), (0, 600), (30, 600), (600, 600), (1200, 1200), (3600, 3600), (999_999, 3600)],
)
def test_allocate_lifetime_is_clamped(requested: int | None, granted: int) -> None:
    server, _ = make_server()
    client = Client(server)
    attrs = [] if requested is None else [Lifetime(requested)]
    resp = client.allocate(*attrs)
    assert resp.get(Lifetime) == Lifetime(granted)
    assert server.next_timer() == T0 + granted


def test_user_quota_and_total_quota_get_486() -> None:
    server, _ = make_server(user_quota=1)
    assert code(Client(server).allocate()) is None
    second = Client(server, addr=CLIENT2)
    resp = second.allocate()
    assert code(resp) == 486 and second.creds.verify_response(resp)
    assert (
        code(Client(server, addr=("203.0.113.9", 1), user="bob", password="hunter2").allocate())
        is None
    )

    total, _ = make_server(total_quota=2)
    assert code(Client(total).allocate()) is None
    assert code(Client(total, addr=CLIENT2).allocate()) is None
    assert (
        code(Client(total, addr=("203.0.113.9", 1), user="bob", password="hunter2").allocate())
        == 486
    )


def test_quota_frees_up_when_an_allocation_goes() -> None:
    server, _ = make_server(user_quota=1)
    first = Client(server)
    assert code(first.allocate()) is None
    assert code(first.request(Method.REFRESH, Lifetime(0))) is None
    assert code(Client(server, addr=CLIENT2).allocate()) is None


def test_no_relay_available_gets_508() -> None:
    server, relay = make_server()
    relay.capacity = 0
    client = Client(server)
    resp = client.allocate()
    assert code(resp) == 508 and client.creds.verify_response(resp)
    assert server.allocation_count() == 0 and server.stats.allocations == 0


def test_requested_address_family() -> None:
    server, _ = make_server()
    resp = Client(server).allocate(RequestedAddressFamily(Family.IPV6))
    assert resp.get(XorRelayedAddress) == XorRelayedAddress(RELAY_IP6, 50000)
    assert code(Client(server, addr=CLIENT2).allocate(RequestedAddressFamily(3))) == 440

    v4only, _ = make_server(address_families=(Family.IPV4,))
    assert code(Client(v4only).allocate(RequestedAddressFamily(Family.IPV6))) == 440
    v6only, _ = make_server(address_families=(Family.IPV6,))
    assert code(Client(v6only).allocate()) == 440  # no family asked and IPv4 not offered


def test_dual_allocation() -> None:
    server, relay = make_server()
    client = Client(server)
    resp = client.allocate(AdditionalAddressFamily(Family.IPV6))
    assert code(resp) is None
    assert resp.get_all(XorRelayedAddress) == [
        XorRelayedAddress(RELAY_IP4, 50000),
        XorRelayedAddress(RELAY_IP6, 50001),
    ]
    assert resp.get(AddressErrorCode) is None
    assert [c[0] for c in relay.calls] == [Family.IPV4, Family.IPV6]


def test_dual_allocation_partial_failures_carry_address_error_code() -> None:
    server, relay = make_server()
    relay.fail = {Family.IPV6}
    resp = Client(server).allocate(AdditionalAddressFamily(Family.IPV6))
    assert resp.get_all(XorRelayedAddress) == [XorRelayedAddress(RELAY_IP4, 50000)]
    assert resp.get(AddressErrorCode) == AddressErrorCode(Family.IPV6, 508, "Insufficient Capacity")

    v4only, _ = make_server(address_families=(Family.IPV4,))
    resp = Client(v4only).allocate(AdditionalAddressFamily(Family.IPV6))
    assert resp.get_all(XorRelayedAddress) == [XorRelayedAddress(RELAY_IP4, 50000)]
    err = resp.get(AddressErrorCode)
    assert err is not None and (err.family, err.code) == (Family.IPV6, 440)

    both, relay = make_server()
    relay.fail = {Family.IPV4, Family.IPV6}
    assert code(Client(both).allocate(AdditionalAddressFamily(Family.IPV6))) == 508


@pytest.mark.parametrize(
    "attrs",
    [
        [AdditionalAddressFamily(Family.IPV4)],
        [AdditionalAddressFamily(3)],
        [RequestedAddressFamily(Family.IPV4), AdditionalAddressFamily(Family.IPV6)],
        [EvenPort(reserve=True), AdditionalAddressFamily(Family.IPV6)],
        [ReservationToken(b"12345678"), EvenPort()],
        [ReservationToken(b"12345678"), RequestedAddressFamily(Family.IPV4)],
        [ReservationToken(b"12345678"), AdditionalAddressFamily(Family.IPV6)],
    ],
)
def test_conflicting_allocate_attributes_get_400(attrs: list[Attribute]) -> None:
    server, relay = make_server()
    assert code(Client(server).allocate(*attrs)) == 400
    assert relay.calls == []


def test_even_port_and_reservation_token() -> None:
    server, relay = make_server()
    relay.next_port = 50001
    first = Client(server)
    resp = first.allocate(EvenPort(reserve=True))
    assert resp.get(XorRelayedAddress) == XorRelayedAddress(RELAY_IP4, 50002)
    token = resp.get(ReservationToken)
    assert token is not None and len(token.value) == 8
    assert relay.calls[-1][1:3] == (True, True)

    second = Client(server, addr=CLIENT2)
    resp = second.allocate(token)
    assert resp.get(XorRelayedAddress) == XorRelayedAddress(RELAY_IP4, 50003)
    assert resp.get(ReservationToken) is None
    third = Client(server, addr=("203.0.113.9", 1))
    assert code(third.allocate(token)) == 508  # used up


# --------------------------------------------------------------------------- Refresh and expiry


def test_refresh_sets_the_lifetime_and_moves_the_timer() -> None:
    server, relay, client, relayed = allocated()
    assert server.next_timer() == T0 + 600
    resp = client.request(Method.REFRESH, Lifetime(1800), now=T0 + 100)
    assert resp.get(Lifetime) == Lifetime(1800)
    assert server.next_timer() == T0 + 100 + 1800
    resp = client.request(Method.REFRESH, now=T0 + 200)  # no LIFETIME: the default
    assert resp.get(Lifetime) == Lifetime(600)
    assert server.next_timer() == T0 + 800
    assert AllocationRefreshedEvent(CLIENT, LISTEN, "udp", 600) in events(server)
    server.handle_timer(T0 + 799.999)
    assert relay.released == []
    server.handle_timer(T0 + 800)
    assert relay.released == [relayed]


def test_refresh_with_zero_deletes_and_then_437() -> None:
    server, relay, client, relayed = allocated()
    events(server)
    resp = client.request(Method.REFRESH, Lifetime(0), now=T0 + 5)
    assert code(resp) is None and resp.get(Lifetime) == Lifetime(0)
    assert relay.released == [relayed] and relay.in_use == set()
    assert server.allocation_count() == 0 and server.next_timer() is None
    assert events(server) == [
        AllocationDeletedEvent(CLIENT, LISTEN, "udp", "alice", (relayed,), "refresh")
    ]
    assert code(client.request(Method.REFRESH, Lifetime(0), now=T0 + 6)) == 437
    assert code(client.allocate(now=T0 + 7)) is None  # the 5-tuple is free again


def test_refresh_without_allocation_gets_437() -> None:
    server, _ = make_server()
    client = Client(server)
    resp = client.request(Method.REFRESH)
    assert code(resp) == 437 and client.creds.verify_response(resp)
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) == 437
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER)))
        == 437
    )


def test_allocation_expires_at_its_lifetime_and_releases_the_relay() -> None:
    server, relay, client, relayed = allocated()
    events(server)
    assert server.next_timer() == 1600.0
    server.handle_timer(1599.999)
    assert relay.released == [] and server.allocation_count() == 1
    server.handle_timer(1600.0)
    assert relay.released == [relayed] and server.allocation_count() == 0
    assert events(server) == [AllocationExpiredEvent(CLIENT, LISTEN, "udp", "alice", (relayed,))]
    assert server.next_timer() is None
    assert server.stats.allocations == 0 and server.stats.allocations_expired == 1
    assert code(client.request(Method.REFRESH, now=1600.0)) == 437


def test_permission_and_channel_expire_at_exact_times() -> None:
    server, relay, client, relayed = allocated()
    assert code(client.request(Method.REFRESH, Lifetime(3600), now=1000.0)) is None
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER), now=1010.0)) is None
    other = ("198.51.100.30", 7000)
    assert (
        code(
            client.request(
                Method.CHANNEL_BIND, ChannelNumber(0x4001), XorPeerAddress(*other), now=1020.0
            )
        )
        is None
    )
    events(server)
    assert server.stats.permissions == 2 and server.stats.channels == 1
    assert server.next_timer() == 1310.0
    server.handle_timer(1309.999)
    assert server.stats.permissions == 2
    server.handle_timer(1310.0)
    assert events(server) == [PermissionExpiredEvent(CLIENT, PEER[0])]
    assert server.next_timer() == 1320.0
    server.handle_timer(1320.0)
    assert events(server) == [PermissionExpiredEvent(CLIENT, other[0])]
    assert server.next_timer() == 1620.0
    server.handle_timer(1620.0)
    assert events(server) == [ChannelExpiredEvent(CLIENT, 0x4001, other)]
    assert server.stats.channels == 0 and server.stats.permissions == 0
    assert server.next_timer() == 4600.0
    server.handle_timer(4600.0)
    assert relay.released == [relayed]


def test_permission_refresh_moves_its_expiry() -> None:
    server, _, client, relayed = allocated()
    client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER), now=1000.0)
    client.request(Method.CREATE_PERMISSION, XorPeerAddress(PEER[0], 1), now=1200.0)
    events(server)
    assert server.next_timer() == 1500.0
    server.handle_timer(1310.0)
    server.receive_relay(b"hi", PEER, relayed, 1310.0)
    assert len(server.datagrams_to_send(1310.0)) == 1
    server.handle_timer(1500.0)
    assert events(server) == [PermissionExpiredEvent(CLIENT, PEER[0])]


def test_expiry_is_honoured_even_before_handle_timer() -> None:
    server, _, client, relayed = allocated()
    client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER), now=1000.0)
    server.receive_relay(b"x", PEER, relayed, 1299.999)
    assert len(server.datagrams_to_send(0)) == 1
    server.receive_relay(b"x", PEER, relayed, 1300.0)  # handle_timer not called yet
    assert server.datagrams_to_send(0) == []


def test_dual_allocation_refresh_per_family() -> None:
    server, relay = make_server()
    client = Client(server)
    resp = client.allocate(AdditionalAddressFamily(Family.IPV6))
    v4, v6 = (a.address for a in resp.get_all(XorRelayedAddress))
    resp = client.request(
        Method.REFRESH, RequestedAddressFamily(Family.IPV6), Lifetime(1200), now=1100.0
    )
    assert resp.get(Lifetime) == Lifetime(1200)
    assert server.next_timer() == 1600.0  # IPv4 keeps its lifetime
    server.handle_timer(1600.0)
    assert relay.released == [v4] and server.relayed_for(CLIENT, LISTEN) == (v6,)
    assert (
        code(client.request(Method.REFRESH, RequestedAddressFamily(Family.IPV4), now=1601.0)) == 443
    )
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER), now=1601.0)) == 443
    resp = client.request(
        Method.REFRESH, RequestedAddressFamily(Family.IPV6), Lifetime(0), now=1602.0
    )
    assert code(resp) is None and relay.released == [v4, v6]
    assert server.allocation_count() == 0


def test_dual_allocation_delete_one_family() -> None:
    server, relay = make_server()
    client = Client(server)
    resp = client.allocate(AdditionalAddressFamily(Family.IPV6))
    v4, v6 = (a.address for a in resp.get_all(XorRelayedAddress))
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER6))) is None
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) is None
    assert server.stats.permissions == 2
    client.request(Method.REFRESH, RequestedAddressFamily(Family.IPV6), Lifetime(0))
    assert relay.released == [v6] and server.stats.permissions == 1
    server.receive_relay(b"x", PEER, v4, T0)
    assert len(server.datagrams_to_send(T0)) == 1


def test_tcp_allocation_ends_with_its_connection() -> None:
    server, relay = make_server()
    client = Client(server, transport="tcp")
    relayed = client.relayed(client.allocate())
    assert server.relayed_for(CLIENT, LISTEN) == ()  # other transport, other 5-tuple
    server.connection_closed(CLIENT, LISTEN, T0 + 1)
    assert relay.released == [relayed]
    assert AllocationDeletedEvent(
        CLIENT, LISTEN, "tcp", "alice", (relayed,), "connection closed"
    ) in events(server)


# --------------------------------------------------------------------------- CreatePermission


def test_create_permission_with_several_peers() -> None:
    server, _, client, _ = allocated()
    events(server)
    peers = [XorPeerAddress(*PEER), XorPeerAddress("198.51.100.21", 1), XorPeerAddress(*PEER)]
    resp = client.request(Method.CREATE_PERMISSION, *peers)
    assert code(resp) is None and resp.msg_class == MessageClass.SUCCESS
    assert server.stats.permissions == 2
    assert events(server) == [
        PermissionCreatedEvent(CLIENT, PEER[0]),
        PermissionCreatedEvent(CLIENT, "198.51.100.21"),
    ]
    assert code(client.request(Method.CREATE_PERMISSION)) == 400


def test_create_permission_family_mismatch_gets_443() -> None:
    server, _, client, _ = allocated()
    resp = client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER), XorPeerAddress(*PEER6))
    assert code(resp) == 443 and client.creds.verify_response(resp)
    assert server.stats.permissions == 0  # all or nothing


def test_create_permission_limit_gets_508() -> None:
    _server, _, client, _ = allocated(max_permissions=2)
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("198.51.100.1", 1))) is None
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("198.51.100.2", 1))) is None
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("198.51.100.3", 1))) == 508
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("198.51.100.1", 9))) is None


FILTERED_V4 = [
    "127.0.0.1",
    "127.1.2.3",
    "10.1.2.3",
    "172.16.5.4",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.1.1",
    "224.0.0.1",
    "239.255.255.250",
    "0.0.0.0",
    "255.255.255.255",
]
FILTERED_V6 = [
    "::1",
    "::",
    "fd00::1",
    "fc00::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:192.168.0.1",
    "::ffff:169.254.0.1",
    "::ffff:224.0.0.1",
]


@pytest.mark.parametrize("ip", FILTERED_V4)
def test_filtered_ipv4_peers_get_403(ip: str) -> None:
    server, _, client, _ = allocated()
    resp = client.request(Method.CREATE_PERMISSION, XorPeerAddress(ip, 5000))
    assert code(resp) == 403 and client.creds.verify_response(resp)
    resp = client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(ip, 5000))
    assert code(resp) == 403
    assert server.stats.permissions == 0 and server.stats.channels == 0


@pytest.mark.parametrize("ip", FILTERED_V6)
def test_filtered_ipv6_peers_get_403(ip: str) -> None:
    server, _ = make_server()
    client = Client(server)
    assert code(client.allocate(RequestedAddressFamily(Family.IPV6))) is None
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(ip, 5000))) == 403
    resp = client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(ip, 5000))
    assert code(resp) == 403


def test_own_relayed_address_and_listener_are_forbidden() -> None:
    server, _, client, relayed = allocated()
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*relayed))) == 403
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*relayed)))
        == 403
    )
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*LISTEN)))
        == 403
    )
    # the relay's IP on another port (another allocation) stays reachable: relay to relay
    other = Client(server, addr=CLIENT2)
    other_relayed = other.relayed(other.allocate())
    assert (
        code(
            client.request(
                Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*other_relayed)
            )
        )
        is None
    )
    # and a Send indication to the relay itself is dropped even with a permission for its IP
    client.send(send_indication(relayed, b"loop"), T0)
    assert server.datagrams_to_send(T0) == []


def test_allow_loopback_peers_and_allowed_networks() -> None:
    _server, _, client, _relayed = allocated(allow_loopback_peers=True)
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("127.0.0.1", 1))) is None
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("10.0.0.1", 1))) == 403
    server6, _ = make_server(allow_loopback_peers=True)
    client6 = Client(server6)
    client6.allocate(RequestedAddressFamily(Family.IPV6))
    assert (
        code(client6.request(Method.CREATE_PERMISSION, XorPeerAddress("::ffff:127.0.0.1", 1)))
        is None
    )
    assert code(client6.request(Method.CREATE_PERMISSION, XorPeerAddress("::1", 1))) is None

    _lab, _, lab_client, _ = allocated(allow_peers=["10.0.0.0/8"])
    assert code(lab_client.request(Method.CREATE_PERMISSION, XorPeerAddress("10.9.8.7", 1))) is None
    assert (
        code(lab_client.request(Method.CREATE_PERMISSION, XorPeerAddress("192.168.0.1", 1))) == 403
    )


def test_peer_filter_object() -> None:
    default = PeerFilter()
    assert default("198.51.100.1") and default("2001:db8::1") and default("8.8.8.8")
    assert not default("127.0.0.1") and not default("::ffff:127.0.0.1") and not default("x")
    assert PeerFilter(allow_loopback=True)("127.0.0.1")
    assert not PeerFilter(deny=["198.51.100.0/24"])("198.51.100.1")
    assert PeerFilter(allow=["192.168.0.0/16"])("::ffff:192.168.1.1")
    _server, _, client, _ = allocated(peer_filter=lambda ip: ip != "198.51.100.66")
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("198.51.100.66", 1))) == 403
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress("127.0.0.1", 1))) is None


# --------------------------------------------------------------------------- ChannelBind


@pytest.mark.parametrize("number", [0x0000, 0x3FFF, 0x8000, 0xFFFF])
def test_invalid_channel_numbers_get_400(number: int) -> None:
    _server, _, client, _ = allocated()
    resp = client.request(Method.CHANNEL_BIND, ChannelNumber(number), XorPeerAddress(*PEER))
    assert code(resp) == 400 and client.creds.verify_response(resp)


@pytest.mark.parametrize("number", [0x5000, 0x7FFF])
def test_strict_channels_refuse_rfc5766_numbers(number: int) -> None:
    """RFC 8656 §12: 0x5000-0x7FFF are reserved; ``strict_channels`` answers 400."""
    _server, _, client, _ = allocated(strict_channels=True)
    resp = client.request(Method.CHANNEL_BIND, ChannelNumber(number), XorPeerAddress(*PEER))
    assert code(resp) == 400 and client.creds.verify_response(resp)


@pytest.mark.parametrize(("number", "strict"), [(0x4000, False), (0x4FFF, False), (0x5000, False),
                                                 (0x7FFF, False), (0x4000, True), (0x4FFF, True)])
def test_channel_number_bounds_are_valid(number: int, strict: bool) -> None:
    """By default RFC 5766 §11's range 0x4000-0x7FFF (libwebrtc and turnutils_uclient draw
    from it), with ``strict_channels`` RFC 8656 §12's 0x4000-0x4FFF."""
    server, _, client, _ = allocated(strict_channels=strict)
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(number), XorPeerAddress(*PEER)))
        is None
    )
    assert ChannelBoundEvent(CLIENT, number, PEER) in events(server)
    assert server.stats.channels == 1 and server.stats.permissions == 1


def test_channel_conflicts_get_400_and_rebinding_refreshes() -> None:
    server, _, client, _ = allocated()
    bind = Method.CHANNEL_BIND
    assert (
        code(client.request(bind, ChannelNumber(0x4000), XorPeerAddress(*PEER), now=1000.0)) is None
    )
    other = ("198.51.100.21", 7000)
    assert code(client.request(bind, ChannelNumber(0x4000), XorPeerAddress(*other))) == 400
    assert code(client.request(bind, ChannelNumber(0x4001), XorPeerAddress(*PEER))) == 400
    assert code(client.request(bind, ChannelNumber(0x4001), XorPeerAddress(PEER[0], 6001))) is None
    assert code(client.request(bind, ChannelNumber(0x4000))) == 400
    assert code(client.request(bind, XorPeerAddress(*PEER))) == 400
    assert code(client.request(bind, ChannelNumber(0x4000), XorPeerAddress(*PEER6))) == 400
    assert code(client.request(bind, ChannelNumber(0x4002), XorPeerAddress(*PEER6))) == 443
    events(server)
    assert (
        code(client.request(bind, ChannelNumber(0x4000), XorPeerAddress(*PEER), now=1100.0)) is None
    )
    assert events(server) == []  # a refresh, not a new binding
    assert server.stats.channels == 2


def test_channel_limit_gets_508() -> None:
    _server, _, client, _ = allocated(max_channels=1)
    bind = Method.CHANNEL_BIND
    assert code(client.request(bind, ChannelNumber(0x4000), XorPeerAddress(*PEER))) is None
    assert code(client.request(bind, ChannelNumber(0x4001), XorPeerAddress(PEER[0], 1))) == 508
    assert code(client.request(bind, ChannelNumber(0x4000), XorPeerAddress(*PEER))) is None


def test_channel_number_reusable_after_expiry() -> None:
    _server, _, client, _ = allocated()
    client.request(Method.REFRESH, Lifetime(3600), now=1000.0)
    client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER), now=1000.0)
    other = ("198.51.100.21", 7000)
    resp = client.request(
        Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*other), now=1600.0
    )
    assert code(resp) is None


# --------------------------------------------------------------------------- data


def with_permission(**kw: object) -> tuple[TurnServer, Client, Address]:
    server, _, client, relayed = allocated(**kw)
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) is None
    server.datagrams_to_send(T0)
    return server, client, relayed


def test_send_indication_is_relayed_from_the_relayed_address() -> None:
    server, client, relayed = with_permission()
    out = client.send(send_indication(PEER, b"hello peer"), T0 + 1)
    assert out == [Transmit(b"hello peer", PEER, relayed)]
    out = client.send(send_indication(PEER, b""), T0 + 1)  # DATA may be empty (§11.2)
    assert out == [Transmit(b"", PEER, relayed)]
    assert server.stats.to_peer_packets == 2 and server.stats.to_peer_bytes == 10


def test_send_indication_reads_only_what_it_relays() -> None:
    # RFC 8656 §11.2 with RFC 8489 §6.3.2, §14.5-§14.7: known attributes it does not use are
    # skipped, the first XOR-PEER-ADDRESS and DATA count, what follows MESSAGE-INTEGRITY or
    # FINGERPRINT is ignored, an unknown comprehension-required attribute drops it.
    server, client, relayed = with_permission()
    other = ("198.51.100.21", 7000)

    def send(*attrs: Attribute, key: bytes | None = None, fingerprint: bool = True) -> bytes:
        msg = Message(Method.SEND, MessageClass.INDICATION, b"g" * 12, list(attrs))
        return msg.encode(key=key, fingerprint=fingerprint)

    known = send(Software("x"), XorPeerAddress(*PEER), Lifetime(3), Data(b"known"))
    assert client.send(known, T0) == [Transmit(b"known", PEER, relayed)]
    twice = send(XorPeerAddress(*PEER), Data(b"first"), XorPeerAddress(*other), Data(b"second"))
    assert client.send(twice, T0) == [Transmit(b"first", PEER, relayed)]
    unsigned = send(XorPeerAddress(*PEER), Data(b"x"), fingerprint=False)
    assert client.send(unsigned, T0) == [Transmit(b"x", PEER, relayed)]
    # DATA after MESSAGE-INTEGRITY is outside what the integrity covers: no DATA, dropped
    signed = Message(Method.SEND, MessageClass.INDICATION, b"g" * 12, [XorPeerAddress(*PEER)])
    after_mi = signed.encode(key=b"k" * 16)
    after_mi = after_mi[:2] + (len(after_mi) - 20 + 8).to_bytes(2, "big") + after_mi[4:]
    after_mi += _tlv(0x0013, b"late")
    dropped = server.stats.dropped
    assert client.send(after_mi, T0) == []
    unknown = send(XorPeerAddress(*PEER), Data(b"x"), RawAttribute(0x7FF0, b""))
    assert client.send(unknown, T0) == []
    optional = send(XorPeerAddress(*PEER), Data(b"opt"), RawAttribute(0xBFF0, b"?"))
    assert client.send(optional, T0) == [Transmit(b"opt", PEER, relayed)]
    truncated = bytearray(send(XorPeerAddress(*PEER), Data(b"x"), fingerprint=False))
    truncated[3] += 4  # the body claims 4 bytes more than there are: not STUN, dropped
    assert client.send(bytes(truncated) + b"\x00\x13\x00\x08", T0) == []
    bad_peer = send(RawAttribute(0x0012, b"\x00\x07\x00"), Data(b"x"))  # family 7
    assert client.send(bad_peer, T0) == []
    assert server.stats.dropped == dropped + 4
    assert server.stats.to_peer_packets == 4


def _tlv(atype: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes (RFC 8489 §14)."""
    return atype.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value + bytes(-len(value) % 4)


def test_send_indication_dropped_without_permission_or_allocation() -> None:
    server, client, _ = with_permission()
    assert client.send(send_indication(("198.51.100.99", 1), b"x"), T0) == []
    assert server.stats.dropped_no_permission == 1
    stranger = Client(server, addr=CLIENT2)
    assert stranger.send(send_indication(PEER, b"x"), T0) == []
    no_data = Message(Method.SEND, MessageClass.INDICATION, b"s" * 12, [XorPeerAddress(*PEER)])
    assert client.send(no_data.encode(fingerprint=True), T0) == []
    bad_fp = bytearray(send_indication(PEER, b"x"))
    bad_fp[-1] ^= 1
    assert client.send(bytes(bad_fp), T0) == []
    assert server.stats.to_peer_packets == 0


def test_peer_data_becomes_a_data_indication() -> None:
    server, _client, relayed = with_permission()
    server.receive_relay(b"from peer", (PEER[0], 9999), relayed, T0 + 1)  # ports are ignored
    (out,) = server.datagrams_to_send(T0 + 1)
    assert out.addr == CLIENT and out.local == LISTEN
    msg = Message.decode(out.data)
    assert (msg.method, msg.msg_class) == (Method.DATA, MessageClass.INDICATION)
    assert msg.get(XorPeerAddress) == XorPeerAddress(PEER[0], 9999)
    assert msg.get(Data) == Data(b"from peer")
    assert msg.verify_fingerprint()
    assert server.stats.to_client_packets == 1 and server.stats.to_client_bytes == 9
    server.receive_relay(b"again", PEER, relayed, T0 + 1)
    (second,) = server.datagrams_to_send(T0 + 1)
    assert Message.decode(second.data).transaction_id != msg.transaction_id


def test_ipv6_peer_data_indication() -> None:
    server, _ = make_server()
    client = Client(server)
    relayed = client.relayed(client.allocate(RequestedAddressFamily(Family.IPV6)))
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER6))) is None
    server.datagrams_to_send(T0)
    server.receive_relay(b"six", PEER6, relayed, T0)
    (out,) = server.datagrams_to_send(T0)
    msg = Message.decode(out.data)
    assert msg.get(XorPeerAddress) == XorPeerAddress(*PEER6) and msg.verify_fingerprint()
    assert client.send(send_indication(PEER6, b"back"), T0) == [Transmit(b"back", PEER6, relayed)]


def test_peer_data_without_permission_is_dropped() -> None:
    server, _client, relayed = with_permission()
    server.receive_relay(b"x", ("198.51.100.99", 1), relayed, T0)
    server.receive_relay(b"x", PEER, ("192.0.2.200", 1), T0)  # not a relayed address
    assert server.datagrams_to_send(T0) == []
    assert server.stats.dropped_no_permission == 1 and server.stats.dropped == 2


def test_channel_data_both_ways_over_udp() -> None:
    server, _, client, relayed = allocated()
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER)))
        is None
    )
    server.receive_relay(b"hello", PEER, relayed, T0 + 1)
    (out,) = server.datagrams_to_send(T0 + 1)
    assert out == Transmit(b"\x40\x00\x00\x05hello", CLIENT, LISTEN)  # UDP: not padded
    server.receive_relay(b"other port", (PEER[0], 1), relayed, T0 + 1)  # no channel: Data ind.
    (out,) = server.datagrams_to_send(T0 + 1)
    assert Message.decode(out.data).method == Method.DATA
    assert client.send(encode_channel_data(0x4000, b"to peer"), T0 + 2) == [
        Transmit(b"to peer", PEER, relayed)
    ]
    padded = encode_channel_data(0x4000, b"abc", pad=True)
    assert client.send(padded, T0 + 2) == [Transmit(b"abc", PEER, relayed)]
    assert server.stats.to_peer_packets == 2 and server.stats.to_client_packets == 2


def test_rfc5766_channel_data_both_ways() -> None:
    """A channel numbered 0x7FFF (RFC 5766 §11, as libwebrtc may pick) carries ChannelData
    both ways, padded over TCP (RFC 8656 §12.5)."""
    for transport in ("udp", "tcp"):
        server, _ = make_server()
        client = Client(server, transport=transport)
        relayed = client.relayed(client.allocate())
        bind = Method.CHANNEL_BIND
        assert code(client.request(bind, ChannelNumber(0x7FFF), XorPeerAddress(*PEER))) is None
        server.receive_relay(b"hello", PEER, relayed, T0)
        (out,) = server.datagrams_to_send(T0)
        pad = b"\x00\x00\x00" if transport == "tcp" else b""
        assert out.data == b"\x7f\xff\x00\x05hello" + pad
        frame = b"\x7f\xff\x00\x02up" + (b"\x00\x00" if transport == "tcp" else b"")
        assert client.send(frame, T0) == [Transmit(b"up", PEER, relayed)]


def test_channel_data_padded_for_tcp_clients() -> None:
    server, _ = make_server()
    client = Client(server, transport="tcp")
    relayed = client.relayed(client.allocate())
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4ABC), XorPeerAddress(*PEER)))
        is None
    )
    server.receive_relay(b"hello", PEER, relayed, T0)
    (out,) = server.datagrams_to_send(T0)
    assert out.data == b"\x4a\xbc\x00\x05hello\x00\x00\x00" and len(out.data) % 4 == 0
    assert decode_channel_data(out.data) == (0x4ABC, b"hello")
    server.receive_relay(b"four", PEER, relayed, T0)
    assert server.datagrams_to_send(T0)[0].data == b"\x4a\xbc\x00\x04four"
    assert client.send(encode_channel_data(0x4ABC, b"up", pad=True), T0) == [
        Transmit(b"up", PEER, relayed)
    ]


def test_bad_channel_data_is_dropped() -> None:
    server, _, client, relayed = allocated()
    client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER), now=1000.0)
    dropped = server.stats.dropped
    for data in (
        encode_channel_data(0x4001, b"unbound"),
        b"\x40\x00\x00\x09short",  # shorter than its length
        b"\x40\x00\x00\x01x" + b"\x00" * 4,  # more than 3 bytes of padding
        b"\x50\x00\x00\x01x",  # outside the channel range
        b"\x40\x00",
    ):
        assert client.send(data, 1001.0) == []
    assert server.stats.dropped == dropped + 5
    assert Client(server, addr=CLIENT2).send(encode_channel_data(0x4000, b"x"), 1001.0) == []
    # the permission (300 s) expires before the channel (600 s): data stops both ways
    assert client.send(encode_channel_data(0x4000, b"x"), 1300.0) == []
    server.receive_relay(b"x", PEER, relayed, 1300.0)
    assert server.datagrams_to_send(1300.0) == []


def test_channel_data_does_not_refresh_channel_or_permission() -> None:
    server, _, client, _ = allocated()
    client.request(Method.REFRESH, Lifetime(3600), now=1000.0)
    client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER), now=1000.0)
    for t in (1100.0, 1200.0, 1299.0):
        assert len(client.send(encode_channel_data(0x4000, b"x"), t)) == 1
    assert server.next_timer() == 1300.0


# --------------------------------------------------------------------------- DONT-FRAGMENT


def send_with(peer: Address, payload: bytes, *extra: Attribute, lifetime: bool = False) -> bytes:
    """A Send indication with ``extra`` attributes; ``lifetime`` adds a known
    comprehension-required attribute (LIFETIME) that a Send indication does not use."""
    attrs: list[Attribute] = [XorPeerAddress(*peer), Data(payload), *extra]
    if lifetime:
        attrs.append(Lifetime(3))
    return Message(Method.SEND, MessageClass.INDICATION, b"d" * 12, attrs).encode(fingerprint=True)


def kinds(out: list[Transmit]) -> list[tuple[type, bytes]]:
    """(exact class, data) of each transmit: a DontFragmentTransmit compares equal to a
    Transmit with the same fields, so the class is asserted apart."""
    return [(type(t), t.data) for t in out]


@pytest.mark.parametrize("lifetime", [False, True])
def test_send_indication_with_dont_fragment_forbids_fragmentation(lifetime: bool) -> None:
    # RFC 8656 §11.2, §14: DF on what relays a Send indication carrying DONT-FRAGMENT; DF 0
    # (a plain Transmit) for a Send indication without it and for ChannelData.
    server, client, relayed = with_permission()
    out = client.send(send_with(PEER, b"df", DontFragment(), lifetime=lifetime), T0)
    assert out == [DontFragmentTransmit(b"df", PEER, relayed)]
    assert kinds(out) == [(DontFragmentTransmit, b"df")]
    out = client.send(send_with(PEER, b"plain", lifetime=lifetime), T0)
    assert kinds(out) == [(Transmit, b"plain")]
    client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER))
    server.datagrams_to_send(T0)
    assert kinds(client.send(encode_channel_data(0x4000, b"chan"), T0)) == [(Transmit, b"chan")]
    stats = server.stats
    assert stats.to_peer_dont_fragment == 1 and stats.to_peer_packets == 3


def test_allocate_with_dont_fragment_succeeds_with_the_capability() -> None:
    server, _ = make_server()
    client = Client(server)
    assert server.dont_fragment is True
    assert code(client.allocate(DontFragment())) is None


def test_without_the_capability_dont_fragment_is_an_unknown_attribute() -> None:
    # RFC 8656 §7.2 step 4: 420 listing DONT-FRAGMENT (signed, after authentication);
    # §11.2: a Send indication carrying it is dropped, with other attributes or without.
    server, _ = make_server(dont_fragment=False)
    client = Client(server)
    resp = client.allocate(DontFragment())
    assert code(resp) == 420 and client.creds.verify_response(resp)
    assert resp.get(UnknownAttributes) == UnknownAttributes((0x001A,))
    resp = client.allocate(DontFragment(), RawAttribute(0x7FF0, b""))
    assert resp.get(UnknownAttributes) == UnknownAttributes((0x7FF0, 0x001A))
    assert server.allocation_count() == 0
    relayed = client.relayed(client.allocate())  # the client's retry without it (§7.4)
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) is None
    server.datagrams_to_send(T0)
    dropped = server.stats.dropped
    for lifetime in (False, True):
        assert client.send(send_with(PEER, b"df", DontFragment(), lifetime=lifetime), T0) == []
    assert server.stats.dropped == dropped + 2
    out = client.send(send_with(PEER, b"plain"), T0)
    assert kinds(out) == [(Transmit, b"plain")] and out[0].local == relayed
    assert server.stats.to_peer_dont_fragment == 0


@pytest.mark.parametrize(
    ("addr", "transport", "family", "peer", "forbidden"),
    [
        (CLIENT, "udp", Family.IPV4, PEER, True),  # IPv4-to-IPv4 over UDP (§14)
        (CLIENT, "udp", Family.IPV6, PEER6, False),  # IPv4-to-IPv6: ignored (§13.1)
        (("2001:db8:9::7", 40000), "udp", Family.IPV6, PEER6, False),  # §13.2: ignored
        (("2001:db8:9::7", 40000), "udp", Family.IPV4, PEER, False),  # §13.3: ignored
        (("::ffff:203.0.113.7", 40000), "udp", Family.IPV4, PEER, True),  # IPv4 on the wire
        (CLIENT, "tcp", Family.IPV4, PEER, True),  # TCP-to-UDP (§15)
        (CLIENT, "tcp", Family.IPV6, PEER6, True),  # §15: not ignored for TCP (§13)
        (("2001:db8:9::7", 40000), "tls", Family.IPV6, PEER6, True),
    ],
)
def test_dont_fragment_is_ignored_where_the_relay_translates_over_udp(
    addr: Address, transport: str, family: Family, peer: Address, forbidden: bool
) -> None:
    server, _ = make_server()
    client = Client(server, addr=addr, transport=transport)
    relayed = client.relayed(client.allocate(RequestedAddressFamily(family), DontFragment()))
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*peer))) is None
    server.datagrams_to_send(T0)
    out = client.send(send_with(peer, b"x", DontFragment()), T0)
    assert out == [Transmit(b"x", peer, relayed)]
    assert type(out[0]) is (DontFragmentTransmit if forbidden else Transmit)
    assert server.stats.to_peer_dont_fragment == int(forbidden)


# --------------------------------------------------------------------------- misc


def test_responses_carry_software_and_fingerprint_or_none() -> None:
    server, _ = make_server(software=None)
    client = Client(server)
    resp = client.allocate()
    assert resp.get(Software) is None and resp.fingerprint is not None
    assert code(resp) is None


def test_indications_and_responses_from_clients_are_dropped() -> None:
    _server, _, client, _ = allocated()
    for klass in (MessageClass.SUCCESS, MessageClass.ERROR, MessageClass.INDICATION):
        msg = Message(Method.ALLOCATE, klass, b"r" * 12)
        assert client.send(msg.encode(), T0) == []
    assert client.send(b"\x80" + bytes(30), T0) == []
    assert client.send(b"", T0) == []


def test_bad_configuration_is_refused() -> None:
    from anchor_stun.errors import LocalProtocolError

    for kw in (
        {"default_lifetime": 0},
        {"default_lifetime": 700, "max_lifetime": 600},
        {"password_algorithms": (7,)},
        {"address_families": (9,)},
        {"max_permissions": 0},
        {"permission_lifetime": 0},
        {"allow_peers": ["not a network"]},
    ):
        with pytest.raises(LocalProtocolError):
            make_server(**kw)


# --------------------------------------------------------------------------- hypothesis


def _stun_like() -> st.SearchStrategy[bytes]:
    """Bytes that pass the STUN header checks and carry random TLVs."""

    def build(msg_type: int, tid: bytes, body: bytes) -> bytes:
        body = body[: len(body) & ~3]
        return struct.pack("!HHI12s", msg_type, len(body), 0x2112A442, tid) + body

    tlv = st.builds(
        lambda t, v: struct.pack("!HH", t, len(v)) + v + b"\x00" * (-len(v) & 3),
        st.sampled_from(
            [
                0x0006,
                0x0008,
                0x000C,
                0x000D,
                0x0012,
                0x0013,
                0x0014,
                0x0015,
                0x0016,
                0x0017,
                0x0018,
                0x0019,
                0x001A,
                0x001C,
                0x001D,
                0x001E,
                0x0022,
                0x8000,
                0x8002,
                0x8022,
                0x8028,
                0x7FFF,
                0xFFFF,
            ]
        ),
        st.binary(max_size=40),
    )
    return st.builds(
        build,
        st.sampled_from([0x0003, 0x0004, 0x0008, 0x0009, 0x0016, 0x0001, 0x0011, 0x0113, 0x0ABC]),
        st.binary(min_size=12, max_size=12),
        st.lists(tlv, max_size=6).map(b"".join),
    )


_SERVER_FOR_FUZZ: list[tuple[TurnServer, Client, Address]] = []


def fuzz_target() -> tuple[TurnServer, Client, Address]:
    if not _SERVER_FOR_FUZZ:
        server, _, client, relayed = allocated()
        client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*PEER))
        _SERVER_FOR_FUZZ.append((server, client, relayed))
    return _SERVER_FOR_FUZZ[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=60).map(lambda b: b"\x40\x00" + b),
        _stun_like(),
    ),
    transport=st.sampled_from(["udp", "tcp", "tls"]),
    known=st.booleans(),
)
def test_receive_datagram_never_raises(data: bytes, transport: str, known: bool) -> None:
    server, _client, _ = fuzz_target()
    addr = CLIENT if known else CLIENT2
    server.receive_datagram(data, addr, LISTEN, T0, transport=transport)  # type: ignore[arg-type]
    for out in server.datagrams_to_send(T0):
        assert isinstance(out.data, bytes) and out.addr in (addr, PEER)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300),
    peer=st.sampled_from([PEER, (PEER[0], 1), PEER6, ("198.51.100.99", 5), ("junk", 0)]),
    known_relay=st.booleans(),
)
def test_receive_relay_never_raises(data: bytes, peer: Address, known_relay: bool) -> None:
    server, _, relayed = fuzz_target()
    server.receive_relay(data, peer, relayed if known_relay else ("192.0.2.9", 9), T0)
    for out in server.datagrams_to_send(T0):
        assert out.addr == CLIENT


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=70), port=st.integers(min_value=0, max_value=65535))
def test_data_indication_fast_path_matches_the_codec(payload: bytes, port: int) -> None:
    server, _client, relayed = with_permission()
    server.receive_relay(payload, (PEER[0], port), relayed, T0)
    (out,) = server.datagrams_to_send(T0)
    msg = Message.decode(out.data)
    expected = Message(
        Method.DATA,
        MessageClass.INDICATION,
        msg.transaction_id,
        [XorPeerAddress(PEER[0], port), Data(payload)],
    ).encode(fingerprint=True)
    assert out.data == expected


def test_userhash_attribute_sanity() -> None:
    assert Userhash(userhash("alice", REALM)).value == userhash("alice", REALM)


def test_refreshing_in_a_loop_does_not_grow_the_timer_heap() -> None:
    """Each CreatePermission refresh reschedules the permission; the entries it replaces are
    dropped (not left in the heap until their old deadline), so an authenticated client
    cannot grow the server's memory by refreshing in a loop. Expiry stays exact."""
    server, _relay, client, _relayed = allocated()
    now = T0
    for _ in range(5000):
        now += 0.01
        assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER), now=now)) is None
    assert len(server._heap) <= 2048  # 5,000 entries without compaction
    assert server.stats.permissions == 1
    events(server)
    server.handle_timer(now + 299.999)
    assert events(server) == []
    server.handle_timer(now + 300.0)  # RFC 8656 §9: 300 s after the last refresh
    assert events(server) == [PermissionExpiredEvent(CLIENT, PEER[0])]
