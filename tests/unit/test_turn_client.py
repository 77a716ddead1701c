"""TURN client allocation state machine (RFC 8656 §6-§12), against an in-test fake server.

No sockets, no event loop: the clock is a literal number moved by the test, the server is a
function of the request bytes (plus a little scripted state: the nonce, the allocation, the
next error to return).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_stun.attributes import (
    AdditionalAddressFamily,
    AddressErrorCode,
    AlternateServer,
    Attribute,
    AttrType,
    ChannelNumber,
    Data,
    DontFragment,
    ErrorCode,
    ErrorCodeAttribute,
    EvenPort,
    Family,
    Lifetime,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address
from anchor_stun.integrity import long_term_key, verify_request_integrity
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn.channeldata import encode_channel_data
from anchor_turn.client import (
    MAX_PEERS_PER_REQUEST,
    TurnClient,
    TurnState,
)
from anchor_turn.events import (
    AllocationCreated,
    AllocationExpired,
    AllocationFailed,
    AllocationRefreshed,
    AllocationReleased,
    ChannelBindFailed,
    ChannelBound,
    DataReceived,
    PermissionCreated,
    PermissionFailed,
    RefreshFailed,
    TryAlternate,
    TurnEvent,
)

SERVER: Address = ("192.0.2.1", 3478)
ALTERNATE: Address = ("192.0.2.99", 3478)
MAPPED: Address = ("203.0.113.5", 40000)
RELAYED4: Address = ("198.51.100.10", 50000)
RELAYED6: Address = ("2001:db8::10", 50002)
PEER: Address = ("198.51.100.77", 6000)
PEER2: Address = ("198.51.100.78", 6001)
USER, PASSWORD, REALM = "alice", "secret", "example.org"
KEY = long_term_key(USER, REALM, PASSWORD)
WRONG_KEY = long_term_key(USER, REALM, "not the password")


# --------------------------------------------------------------------------- the fake server


@dataclass
class FakeTurnServer:
    """A TURN server reduced to its answers (RFC 8656 §7.2, §8.2, §10.2, §12.2).

    ``pre_auth`` actions apply to requests before authentication, ``script[method]`` to
    authenticated ones, one action per request datagram: an error code to answer with
    (438 rotates the nonce first), "drop", or "badmi" (answer, signed with the wrong key).
    ``drop`` lists methods never answered.
    """

    nonce: str = "nonce-1"
    lifetime: int = 600
    ipv6: bool = True
    df_supported: bool = True
    alternate: Address | None = ALTERNATE
    pre_auth: list[object] = field(default_factory=list)
    script: dict[int, list[object]] = field(default_factory=dict)
    drop: set[int] = field(default_factory=set)
    log: list[tuple[float, Message]] = field(default_factory=list)
    channel_data: list[tuple[float, bytes]] = field(default_factory=list)
    allocate_tid: bytes | None = None
    nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    def handle(self, data: bytes, now: float) -> list[bytes]:
        if 0x40 <= data[0] <= 0x4F:
            self.channel_data.append((now, data))
            return []
        msg = Message.decode(data)
        self.log.append((now, msg))
        if msg.msg_class != MessageClass.REQUEST or msg.method in self.drop:
            return []
        if msg.integrity is None:
            action = self.pre_auth.pop(0) if self.pre_auth else None
            if action == "drop":
                return []
            if isinstance(action, int):
                return [self.error(msg, action, key=None)]
            return [self.error(msg, 401, key=None)]
        if msg.get(Username) != Username(USER) or not verify_request_integrity(msg, KEY):
            return [self.error(msg, 401, key=None)]
        actions = self.script.get(msg.method, [])
        action = actions.pop(0) if actions else None
        if action == 438:
            self.nonce = f"nonce-{next(self.nonces)}"
        if msg.get(Nonce) != Nonce(self.nonce):
            return [self.error(msg, 438, key=None)]
        if action == "drop":
            return []
        if isinstance(action, int):
            return [self.error(msg, action, key=KEY)]
        response = answer(self, msg)
        return [response.encode(key=WRONG_KEY if action == "badmi" else KEY, fingerprint=True)]

    def error(self, msg: Message, code: int, key: bytes | None) -> bytes:
        attrs: list[Attribute] = []
        if code in (401, 438):
            attrs += [Realm(REALM), Nonce(self.nonce)]
        if code == 300 and self.alternate is not None:
            attrs.append(AlternateServer(*self.alternate))
        if code == 420:
            attrs.append(UnknownAttributes((AttrType.DONT_FRAGMENT,)))
        return msg.error_response(code, attributes=attrs).encode(key=key, fingerprint=True)

    def requests(self, method: int) -> list[tuple[float, Message]]:
        return [(t, m) for t, m in self.log if m.method == method and m.is_request]

    def times(self, method: int) -> list[float]:
        return [t for t, _ in self.requests(method)]


def answer(server: FakeTurnServer, msg: Message) -> Message:
    """The success (or semantic error) response to an authenticated request."""
    if msg.method == Method.ALLOCATE:
        if server.allocate_tid not in (None, msg.transaction_id):
            return msg.error_response(437)
        if msg.get(DontFragment) is not None and not server.df_supported:
            return msg.error_response(
                420, attributes=[UnknownAttributes((AttrType.DONT_FRAGMENT,))]
            )
        server.allocate_tid = msg.transaction_id
        attrs: list[Attribute] = []
        requested = msg.get(RequestedAddressFamily)
        if msg.get(AdditionalAddressFamily) is not None:
            attrs.append(XorRelayedAddress(*RELAYED4))
            if server.ipv6:
                attrs.append(XorRelayedAddress(*RELAYED6))
            else:
                attrs.append(AddressErrorCode(Family.IPV6, 440, "Address Family not Supported"))
        elif requested is not None and requested.family == Family.IPV6:
            attrs.append(XorRelayedAddress(*RELAYED6))
        else:
            attrs.append(XorRelayedAddress(*RELAYED4))
        attrs += [Lifetime(granted(server, msg)), XorMappedAddress(*MAPPED)]
        even = msg.get(EvenPort)
        if even is not None and even.reserve:
            attrs.append(ReservationToken(b"TOKEN-01"))
        return msg.response(attrs)
    if msg.method == Method.REFRESH:
        return msg.response([Lifetime(granted(server, msg))])
    return msg.response()  # CreatePermission, ChannelBind: no attributes needed


def granted(server: FakeTurnServer, msg: Message) -> int:
    asked = msg.get(Lifetime)
    if asked is None:
        return server.lifetime
    return 0 if asked.value == 0 else min(asked.value, 3600)


# --------------------------------------------------------------------------- helpers


def counter_rng() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda size: next(counter).to_bytes(size, "big")


def new_client(**kwargs: object) -> TurnClient:
    kwargs.setdefault("rng", counter_rng())
    password = kwargs.pop("password", PASSWORD)
    return TurnClient(SERVER, USER, password, **kwargs)  # type: ignore[arg-type]


def pump(client: TurnClient, server: FakeTurnServer, now: float) -> None:
    """Carry datagrams both ways at ``now`` until nothing is left to send."""
    while out := client.datagrams_to_send(now):
        for transmit in out:
            assert transmit.addr == SERVER
            for reply in server.handle(transmit.data, now):
                client.receive_datagram(reply, SERVER, now)


def run(client: TurnClient, server: FakeTurnServer, until: float) -> None:
    """Fire every timer due up to ``until`` (inclusive), exchanging datagrams at each."""
    while (deadline := client.next_timer()) is not None and deadline <= until:
        client.handle_timer(deadline)
        pump(client, server, deadline)


def events(client: TurnClient) -> list[TurnEvent]:
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def allocated(
    server: FakeTurnServer | None = None, **kwargs: object
) -> tuple[TurnClient, FakeTurnServer]:
    server = server or FakeTurnServer()
    client = new_client(**kwargs)
    client.allocate(0.0)
    pump(client, server, 0.0)
    assert client.state is TurnState.ALLOCATED
    assert [type(e) for e in events(client)] == [AllocationCreated]
    return client, server


def decode_all(client: TurnClient, now: float) -> list[Message]:
    return [Message.decode(t.data) for t in client.datagrams_to_send(now)]


# --------------------------------------------------------------------------- allocation


def test_allocate_401_dance() -> None:
    server = FakeTurnServer()
    client = new_client()
    assert client.state is TurnState.IDLE
    client.allocate(0.0)
    assert client.state is TurnState.ALLOCATING
    (first,) = client.datagrams_to_send(0.0)
    assert first.addr == SERVER
    request = Message.decode(first.data)
    assert (request.method, request.msg_class) == (Method.ALLOCATE, MessageClass.REQUEST)
    assert request.get(RequestedTransport) == RequestedTransport(17)
    assert request.get(Username) is None and request.integrity is None
    assert request.get(RequestedAddressFamily) is None
    assert request.get(AdditionalAddressFamily) is None
    assert request.get(Lifetime) is None
    (challenge,) = server.handle(first.data, 0.0)
    assert Message.decode(challenge).error == ErrorCodeAttribute(401, "Unauthenticated")

    client.receive_datagram(challenge, SERVER, 0.25)
    assert events(client) == []
    (second,) = client.datagrams_to_send(0.25)
    signed = Message.decode(second.data)
    assert signed.transaction_id != request.transaction_id
    assert signed.get(Username) == Username(USER)
    assert signed.get(Realm) == Realm(REALM)
    assert signed.get(Nonce) == Nonce("nonce-1")
    assert signed.get(RequestedTransport) == RequestedTransport(17)
    assert verify_request_integrity(signed, KEY)
    assert signed.verify_fingerprint()

    (success,) = server.handle(second.data, 0.25)
    client.receive_datagram(success, SERVER, 0.5)
    assert events(client) == [AllocationCreated((RELAYED4,), MAPPED, 600, ())]
    assert client.state is TurnState.ALLOCATED
    assert client.relayed == RELAYED4 and client.relayed_addresses == (RELAYED4,)
    assert client.mapped == MAPPED
    assert client.lifetime == 600
    assert client.expires_at == 600.25  # counted from the send of the signed Allocate
    assert client.next_timer() == 540.25
    assert client.permissions == {} and client.channels == {}


def test_wrong_password_fails_with_401() -> None:
    server = FakeTurnServer()
    client = new_client(password="guess")
    client.allocate(0.0)
    pump(client, server, 0.0)
    (event,) = events(client)
    assert isinstance(event, AllocationFailed)
    assert event.code == 401 and "wrong username or password" in event.reason
    assert client.state is TurnState.FAILED
    assert len(server.requests(Method.ALLOCATE)) == 2
    assert client.next_timer() is None


def test_stale_nonce_on_allocate_retries_with_new_nonce() -> None:
    server = FakeTurnServer(script={Method.ALLOCATE: [438]})
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    assert [type(e) for e in events(client)] == [AllocationCreated]
    allocates = [m for _, m in server.requests(Method.ALLOCATE)]
    assert len(allocates) == 3
    assert len({m.transaction_id for m in allocates}) == 3
    assert [m.get(Nonce) for m in allocates] == [None, Nonce("nonce-1"), Nonce("nonce-2")]


def test_stale_nonce_on_refresh_retries_once() -> None:
    client, server = allocated(FakeTurnServer(script={Method.REFRESH: [438]}))
    run(client, server, 541.0)
    refreshes = server.requests(Method.REFRESH)
    assert [t for t, _ in refreshes] == [540.0, 540.0]
    first, second = (m for _, m in refreshes)
    assert first.transaction_id != second.transaction_id
    assert (first.get(Nonce), second.get(Nonce)) == (Nonce("nonce-1"), Nonce("nonce-2"))
    assert verify_request_integrity(second, KEY)
    assert events(client) == [AllocationRefreshed(600)]
    assert client.expires_at == 1140.0


def test_second_stale_nonce_fails_the_refresh() -> None:
    client, server = allocated(FakeTurnServer(script={Method.REFRESH: [438, 438]}))
    run(client, server, 541.0)
    assert len(server.requests(Method.REFRESH)) == 2
    (event,) = events(client)
    assert isinstance(event, RefreshFailed) and event.code == 438
    assert client.state is TurnState.ALLOCATED
    run(client, server, 600.0)
    assert events(client) == [AllocationExpired()]
    assert client.state is TurnState.EXPIRED


@pytest.mark.parametrize("code", [403, 437, 440, 441, 442, 486, 508])
def test_typed_allocate_failures(code: int) -> None:
    server = FakeTurnServer(script={Method.ALLOCATE: [code]})
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    (event,) = events(client)
    assert isinstance(event, AllocationFailed)
    assert event.code == code
    assert event.code is ErrorCode(code)
    assert event.reason == ErrorCode(code).reason
    assert client.state is TurnState.FAILED
    assert client.next_timer() is None
    assert client.relayed is None and client.relayed_addresses == ()


def test_unknown_error_code_is_reported_as_is() -> None:
    server = FakeTurnServer(script={Method.ALLOCATE: [599]})
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    (event,) = events(client)
    assert event == AllocationFailed(599, "")


def test_try_alternate_before_authentication() -> None:
    server = FakeTurnServer(pre_auth=[300])
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    assert events(client) == [TryAlternate(ALTERNATE)]
    assert client.state is TurnState.FAILED
    assert client.next_timer() is None


def test_try_alternate_after_authentication_is_verified() -> None:
    server = FakeTurnServer(script={Method.ALLOCATE: [300]})
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    assert events(client) == [TryAlternate(ALTERNATE)]


def test_300_without_alternate_server_fails() -> None:
    server = FakeTurnServer(pre_auth=[300], alternate=None)
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    assert events(client) == [AllocationFailed(300, "Try Alternate")]


def test_allocate_timeout_over_udp() -> None:
    server = FakeTurnServer(drop={Method.ALLOCATE})
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    run(client, server, 100.0)
    assert server.times(Method.ALLOCATE) == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    (event,) = events(client)
    assert isinstance(event, AllocationFailed) and event.code == 0
    assert "timeout" in event.reason
    assert client.state is TurnState.FAILED


def test_allocate_timeout_over_tcp_sends_once() -> None:
    server = FakeTurnServer(drop={Method.ALLOCATE})
    client = new_client(transport="tcp")
    client.allocate(0.0)
    pump(client, server, 0.0)
    assert client.next_timer() == 39.5
    run(client, server, 100.0)
    assert server.times(Method.ALLOCATE) == [0]
    (event,) = events(client)
    assert isinstance(event, AllocationFailed) and event.code == 0


def test_allocate_attribute_options() -> None:
    client = new_client(lifetime=1200, even_port=True, dont_fragment=True, software="anchor-test/1")
    client.allocate(0.0)
    (request,) = decode_all(client, 0.0)
    assert request.get(Lifetime) == Lifetime(1200)
    assert request.get(EvenPort) == EvenPort(True)
    assert request.get(DontFragment) == DontFragment()
    assert request.get(Software) == Software("anchor-test/1")
    assert request.get(ReservationToken) is None

    token_client = new_client(reservation_token=b"TOKEN-01", even_port=None)
    token_client.allocate(0.0)
    (request,) = decode_all(token_client, 0.0)
    assert request.get(ReservationToken) == ReservationToken(b"TOKEN-01")
    assert request.get(EvenPort) is None and request.get(RequestedAddressFamily) is None


def test_even_port_reservation_token_is_kept() -> None:
    client, _ = allocated(even_port=True)
    assert client.reserved_token == b"TOKEN-01"


def test_software_in_every_request() -> None:
    client, server = allocated(software="anchor-test/1")
    client.create_permission([PEER[0]], 1.0)
    client.bind_channel(PEER2, 1.0)
    pump(client, server, 1.0)
    run(client, server, 541.0)
    requests = [m for _, m in server.log if m.is_request]
    assert len(requests) >= 5
    assert all(m.get(Software) == Software("anchor-test/1") for m in requests)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reservation_token": b"TOKEN-01", "even_port": False},
        {"reservation_token": b"TOKEN-01", "family": Family.IPV6},
        {"reservation_token": b"TOKEN-01", "additional_family": Family.IPV6},
        {"reservation_token": b"short"},
        {"additional_family": Family.IPV6, "family": Family.IPV6},
        {"additional_family": Family.IPV4},
        {"additional_family": Family.IPV6, "even_port": True},
        {"family": 3},
        {"transport": "sctp"},
        {"lifetime": 0},
        {"refresh_margin": -1.0},
        {"rto": 0.0},
        {"password": ""},
    ],
)
def test_constructor_rejects_inconsistent_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        new_client(**kwargs)


def test_constructor_rejects_bad_server() -> None:
    with pytest.raises(LocalProtocolError):
        TurnClient(("turn.example.org", 3478), USER, PASSWORD)
    with pytest.raises(LocalProtocolError):
        TurnClient(("192.0.2.1", 0), USER, PASSWORD)


# --------------------------------------------------------------------------- dual allocation


def test_dual_allocation_with_address_error_code() -> None:
    server = FakeTurnServer(ipv6=False)
    client = new_client(additional_family=Family.IPV6)
    client.allocate(0.0)
    pump(client, server, 0.0)
    (_, unsigned), (_, signed) = server.requests(Method.ALLOCATE)
    for request in (unsigned, signed):
        assert request.get(AdditionalAddressFamily) == AdditionalAddressFamily(Family.IPV6)
        assert request.get(RequestedAddressFamily) is None
    (event,) = events(client)
    assert event == AllocationCreated(
        (RELAYED4,), MAPPED, 600, ((Family.IPV6, 440, "Address Family not Supported"),)
    )
    assert isinstance(event, AllocationCreated)
    assert event.address_errors[0][1] is ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED
    with pytest.raises(LocalProtocolError):
        client.create_permission(["2001:db8::77"], 1.0)


def test_dual_allocation_with_both_families() -> None:
    client, server = allocated(additional_family=Family.IPV6)
    assert client.relayed_addresses == (RELAYED4, RELAYED6) and client.relayed == RELAYED4
    client.create_permission(["2001:DB8::77", PEER[0]], 1.0)
    pump(client, server, 1.0)
    assert events(client) == [PermissionCreated(("2001:db8::77", PEER[0]))]


def test_ipv6_allocation_sends_requested_address_family() -> None:
    client, server = allocated(family=Family.IPV6)
    _, signed = server.requests(Method.ALLOCATE)[1]
    assert signed.get(RequestedAddressFamily) == RequestedAddressFamily(Family.IPV6)
    assert signed.get(AdditionalAddressFamily) is None
    assert client.relayed_addresses == (RELAYED6,)
    with pytest.raises(LocalProtocolError):
        client.send(b"x", PEER, 1.0)  # IPv4 peer, IPv6 relay


# --------------------------------------------------------------------------- refresh timing


def test_allocation_refreshed_a_minute_before_expiry() -> None:
    client, server = allocated()
    assert client.next_timer() == 540.0
    run(client, server, 1700.0)
    assert server.times(Method.REFRESH) == [540.0, 1080.0, 1620.0]
    for _, refresh in server.requests(Method.REFRESH):
        assert refresh.get(Lifetime) is None
        assert verify_request_integrity(refresh, KEY)
    assert events(client) == [AllocationRefreshed(600)] * 3
    assert client.expires_at == 2220.0


def test_requested_lifetime_is_kept_in_refreshes() -> None:
    client, server = allocated(lifetime=1200)
    assert client.lifetime == 1200
    run(client, server, 2300.0)
    assert server.times(Method.REFRESH) == [1140.0, 2280.0]
    assert all(m.get(Lifetime) == Lifetime(1200) for _, m in server.requests(Method.REFRESH))


def test_short_lifetime_refreshed_at_half() -> None:
    client, server = allocated(FakeTurnServer(lifetime=100))
    run(client, server, 160.0)
    assert server.times(Method.REFRESH) == [50.0, 100.0, 150.0]


def test_refresh_margin_knob() -> None:
    client, server = allocated(refresh_margin=120.0)
    run(client, server, 1000.0)
    assert server.times(Method.REFRESH) == [480.0, 960.0]


def test_user_refresh_with_lifetime() -> None:
    client, server = allocated()
    client.refresh(100.0, lifetime=1200)
    pump(client, server, 100.0)
    assert events(client) == [AllocationRefreshed(1200)]
    assert client.expires_at == 1300.0
    assert client.next_timer() == 1240.0
    run(client, server, 1240.0)
    ((_, auto),) = server.requests(Method.REFRESH)[1:]
    assert auto.get(Lifetime) == Lifetime(1200)


def test_refresh_timeout_then_expiry() -> None:
    client, server = allocated(FakeTurnServer(drop={Method.REFRESH}))
    run(client, server, 1000.0)
    assert server.times(Method.REFRESH) == [540.0, 540.5, 541.5, 543.5, 547.5, 555.5, 571.5]
    refresh_failed, expired = events(client)
    assert isinstance(refresh_failed, RefreshFailed) and refresh_failed.code == 0
    assert expired == AllocationExpired()
    assert client.state is TurnState.EXPIRED
    assert client.next_timer() is None


def test_refresh_437_means_the_allocation_is_gone() -> None:
    client, server = allocated(FakeTurnServer(script={Method.REFRESH: [437]}))
    client.create_permission([PEER[0]], 1.0)
    pump(client, server, 1.0)
    run(client, server, 541.0)
    assert events(client)[-1] == AllocationExpired()
    assert client.state is TurnState.EXPIRED
    assert client.permissions == {}
    with pytest.raises(LocalProtocolError):
        client.send(b"x", PEER, 542.0)


# --------------------------------------------------------------------------- permissions


def test_create_permission_several_ips_in_one_request() -> None:
    client, server = allocated()
    client.create_permission(["198.51.100.1", "198.51.100.2", "198.51.100.1"], 10.0)
    pump(client, server, 10.0)
    ((_, request),) = server.requests(Method.CREATE_PERMISSION)
    assert request.get_all(XorPeerAddress) == [
        XorPeerAddress("198.51.100.1", 0),
        XorPeerAddress("198.51.100.2", 0),
    ]
    assert verify_request_integrity(request, KEY)
    assert events(client) == [PermissionCreated(("198.51.100.1", "198.51.100.2"))]
    assert client.permissions == {"198.51.100.1": 310.0, "198.51.100.2": 310.0}


def test_permissions_refreshed_before_300_seconds() -> None:
    client, server = allocated()
    client.create_permission(["198.51.100.1", "198.51.100.2"], 10.0)
    pump(client, server, 10.0)
    events(client)
    run(client, server, 800.0)
    assert server.times(Method.CREATE_PERMISSION) == [10.0, 250.0, 490.0, 730.0]
    for _, request in server.requests(Method.CREATE_PERMISSION)[1:]:
        assert len(request.get_all(XorPeerAddress)) == 2
    # automatic refreshes succeed silently; the allocation's own refresh is reported
    assert events(client) == [AllocationRefreshed(600)]
    assert client.permissions == {"198.51.100.1": 1030.0, "198.51.100.2": 1030.0}


def test_many_permissions_are_split() -> None:
    client, server = allocated()
    ips = [f"198.51.100.{n}" for n in range(1, 41)]
    client.create_permission(ips, 1.0)
    pump(client, server, 1.0)
    sizes = [len(m.get_all(XorPeerAddress)) for _, m in server.requests(Method.CREATE_PERMISSION)]
    assert sizes == [MAX_PEERS_PER_REQUEST, 40 - MAX_PEERS_PER_REQUEST]
    created = events(client)
    assert [len(e.peers) for e in created if isinstance(e, PermissionCreated)] == sizes
    assert len(client.permissions) == 40
    run(client, server, 241.0)
    assert server.times(Method.CREATE_PERMISSION) == [1.0, 1.0, 241.0, 241.0]


def test_permission_failure() -> None:
    client, server = allocated(FakeTurnServer(script={Method.CREATE_PERMISSION: [403]}))
    client.create_permission([PEER[0]], 1.0)
    pump(client, server, 1.0)
    assert events(client) == [PermissionFailed((PEER[0],), 403, "Forbidden")]
    assert client.permissions == {}


def test_permission_refresh_failure_drops_it() -> None:
    client, server = allocated()
    client.create_permission([PEER[0]], 0.0)
    pump(client, server, 0.0)
    events(client)
    server.script[Method.CREATE_PERMISSION] = [403]
    run(client, server, 500.0)
    assert server.times(Method.CREATE_PERMISSION) == [0.0, 240.0]
    assert events(client) == [PermissionFailed((PEER[0],), 403, "Forbidden")]
    assert client.permissions == {}


def test_create_permission_rejects_bad_input() -> None:
    client, _ = allocated()
    for bad in ("198.51.100.1", [], ["not an ip"], [42]):
        with pytest.raises(LocalProtocolError):
            client.create_permission(bad, 1.0)  # type: ignore[arg-type]
    assert client.datagrams_to_send(1.0) == []


# --------------------------------------------------------------------------- channels


def test_bind_channel_installs_permission_and_rebinds() -> None:
    client, server = allocated()
    assert client.bind_channel(PEER, 20.0) == 0x4000
    pump(client, server, 20.0)
    ((_, request),) = server.requests(Method.CHANNEL_BIND)
    assert request.get(ChannelNumber) == ChannelNumber(0x4000)
    assert request.get(XorPeerAddress) == XorPeerAddress(*PEER)
    assert events(client) == [ChannelBound(0x4000, PEER)]
    assert client.channels == {0x4000: PEER}
    assert client.permissions == {PEER[0]: 320.0}
    run(client, server, 900.0)
    assert server.times(Method.CHANNEL_BIND) == [20.0, 560.0]
    # the permission is refreshed on its own (300 s) and the re-bind at 560 pushes it to 860
    assert server.times(Method.CREATE_PERMISSION) == [260.0, 500.0, 800.0]
    assert server.times(Method.REFRESH) == [540.0]
    assert client.permissions == {PEER[0]: 1100.0}


def test_channel_numbers() -> None:
    client, server = allocated()
    assert client.bind_channel(PEER, 1.0) == 0x4000
    assert client.bind_channel(PEER2, 1.0) == 0x4001
    assert client.bind_channel(PEER, 1.0) == 0x4000  # a re-bind keeps the number
    assert client.bind_channel(("198.51.100.79", 1), 1.0, channel=0x4ABC) == 0x4ABC
    for n in range(10):
        client.bind_channel(("198.51.100.90", 7000 + n), 1.0)
    pump(client, server, 1.0)
    assert len(client.channels) == 13
    assert sorted(client.channels)[:4] == [0x4000, 0x4001, 0x4002, 0x4003]
    with pytest.raises(LocalProtocolError):
        client.bind_channel(("198.51.100.80", 1), 1.0, channel=0x4000)  # number taken
    with pytest.raises(LocalProtocolError):
        client.bind_channel(PEER, 1.0, channel=0x4100)  # peer bound elsewhere
    with pytest.raises(LocalProtocolError):
        client.bind_channel(("198.51.100.80", 1), 1.0, channel=0x5000)
    with pytest.raises(LocalProtocolError):
        client.bind_channel(("198.51.100.80", 70000), 1.0)
    assert client.datagrams_to_send(1.0) == []


def test_channel_bind_failure() -> None:
    client, server = allocated(FakeTurnServer(script={Method.CHANNEL_BIND: [508]}))
    assert client.bind_channel(PEER, 1.0) == 0x4000
    pump(client, server, 1.0)
    assert events(client) == [ChannelBindFailed(0x4000, PEER, 508, "Insufficient Capacity")]
    assert client.channels == {}
    assert client.permissions == {}
    assert client.bind_channel(PEER, 2.0) == 0x4001


def test_failed_rebind_quarantines_the_number() -> None:
    client, server = allocated()
    client.bind_channel(PEER, 20.0)
    pump(client, server, 20.0)
    events(client)
    server.script[Method.CHANNEL_BIND] = [403]
    run(client, server, 561.0)
    assert ChannelBindFailed(0x4000, PEER, 403, "Forbidden") in events(client)
    assert client.channels == {}
    # the server may keep 0x4000 -> PEER until 620; neither moves before 920 (RFC 8656 §12)
    with pytest.raises(LocalProtocolError):
        client.bind_channel(PEER2, 600.0, channel=0x4000)
    with pytest.raises(LocalProtocolError):
        client.bind_channel(PEER, 600.0, channel=0x4005)
    assert client.bind_channel(PEER2, 600.0) == 0x4001
    assert client.bind_channel(PEER, 600.0) == 0x4000


# --------------------------------------------------------------------------- data


def test_send_indication_then_channel_data() -> None:
    client, server = allocated()
    client.create_permission([PEER[0]], 1.0)
    pump(client, server, 1.0)
    client.send(b"hello", PEER, 2.0)
    (indication,) = decode_all(client, 2.0)
    assert (indication.method, indication.msg_class) == (Method.SEND, MessageClass.INDICATION)
    assert indication.get(XorPeerAddress) == XorPeerAddress(*PEER)
    assert indication.get(Data) == Data(b"hello")
    assert indication.get(DontFragment) is None

    client.bind_channel(PEER, 3.0)
    client.send(b"early", PEER, 3.0)  # not bound until the success response
    out = client.datagrams_to_send(3.0)
    assert [Message.decode(t.data).method for t in out] == [Method.CHANNEL_BIND, Method.SEND]
    for reply in server.handle(out[0].data, 3.0):
        client.receive_datagram(reply, SERVER, 3.0)
    client.send(b"abc", PEER, 4.0)
    client.send(b"other port", (PEER[0], PEER[1] + 1), 4.0)
    channel_data, other = client.datagrams_to_send(4.0)
    assert channel_data.data == b"\x40\x00\x00\x03abc"
    assert channel_data.addr == SERVER
    assert Message.decode(other.data).get(Data) == Data(b"other port")


def test_dont_fragment_in_send_indications() -> None:
    client, _ = allocated(dont_fragment=True)
    client.send(b"x", PEER, 1.0)
    (indication,) = decode_all(client, 1.0)
    assert indication.get(DontFragment) == DontFragment()


def test_dont_fragment_unsupported_is_dropped_after_420() -> None:
    server = FakeTurnServer(df_supported=False)
    client, _ = allocated(server, dont_fragment=True)
    with_df, without_df = (m for _, m in server.requests(Method.ALLOCATE)[1:])
    assert with_df.get(DontFragment) is not None and without_df.get(DontFragment) is None
    client.send(b"x", PEER, 1.0)
    (indication,) = decode_all(client, 1.0)
    assert indication.get(DontFragment) is None


def data_indication(peer: Address, payload: bytes) -> bytes:
    attrs: list[Attribute] = [XorPeerAddress(*peer), Data(payload)]
    return Message(Method.DATA, MessageClass.INDICATION, b"D" * 12, attrs).encode()


def test_data_received_from_indications_and_channel_data() -> None:
    client, server = allocated()
    client.create_permission([PEER[0]], 1.0)
    pump(client, server, 1.0)
    events(client)
    client.receive_datagram(data_indication(PEER, b"via indication"), SERVER, 2.0)
    assert events(client) == [DataReceived(PEER, b"via indication", None)]

    dropped = client.dropped
    client.receive_datagram(data_indication(PEER2, b"no permission"), SERVER, 2.0)
    assert events(client) == []
    assert client.dropped == dropped + 1

    client.bind_channel(PEER2, 3.0)
    client.datagrams_to_send(3.0)  # in flight: data may already arrive on the channel
    client.receive_datagram(encode_channel_data(0x4000, b"early"), SERVER, 3.0)
    client.receive_datagram(encode_channel_data(0x4000, b"padded", pad=True), SERVER, 3.0)
    client.receive_datagram(encode_channel_data(0x4005, b"unbound"), SERVER, 3.0)
    assert events(client) == [
        DataReceived(PEER2, b"early", 0x4000),
        DataReceived(PEER2, b"padded", 0x4000),
    ]
    assert client.dropped == dropped + 2


def test_data_from_another_address_is_dropped() -> None:
    client, _ = allocated()
    client.create_permission([PEER[0]], 1.0)
    client.receive_datagram(data_indication(PEER, b"spoofed"), ("192.0.2.66", 3478), 2.0)
    client.receive_datagram(data_indication(PEER, b"spoofed"), (SERVER[0], 3479), 2.0)
    assert events(client) == []
    assert client.dropped == 2


def test_ipv6_server_address_forms_match() -> None:
    server = FakeTurnServer()
    client = TurnClient(("2001:db8::1", 3478), USER, PASSWORD, rng=counter_rng())
    client.allocate(0.0)
    (request,) = client.datagrams_to_send(0.0)
    (reply,) = server.handle(request.data, 0.0)
    asyncio_addr = ("2001:DB8:0::1", 3478, 0, 0)  # what asyncio gives for IPv6
    client.receive_datagram(reply, asyncio_addr, 0.0)  # type: ignore[arg-type]
    assert len(client.datagrams_to_send(0.0)) == 1  # the signed retry: the 401 was accepted


def test_tcp_pads_channel_data() -> None:
    client, server = allocated(transport="tcp")
    client.bind_channel(PEER, 1.0)
    pump(client, server, 1.0)
    client.send(b"abcde", PEER, 2.0)
    (frame,) = client.datagrams_to_send(2.0)
    assert frame.data == b"\x40\x00\x00\x05abcde\x00\x00\x00"
    client.receive_datagram(encode_channel_data(0x4000, b"xyz", pad=True), SERVER, 2.0)
    assert events(client)[-1] == DataReceived(PEER, b"xyz", 0x4000)


# --------------------------------------------------------------------------- release


def test_release_sends_lifetime_zero_and_stops_timers() -> None:
    client, server = allocated()
    client.create_permission([PEER[0]], 1.0)
    client.bind_channel(PEER2, 1.0)
    pump(client, server, 1.0)
    events(client)
    client.release(100.0)
    assert client.state is TurnState.RELEASING
    assert client.next_timer() == 100.5  # only the Refresh's retransmission is left
    pump(client, server, 100.0)
    ((_, release),) = server.requests(Method.REFRESH)
    assert release.get(Lifetime) == Lifetime(0)
    assert verify_request_integrity(release, KEY)
    assert events(client) == [AllocationReleased()]
    assert client.state is TurnState.RELEASED
    assert client.next_timer() is None
    assert client.permissions == {} and client.channels == {}
    count = len(server.log)
    client.handle_timer(10_000.0)
    assert client.datagrams_to_send(10_000.0) == []
    assert len(server.log) == count


def test_release_unanswered_or_437_still_releases() -> None:
    client, server = allocated(FakeTurnServer(drop={Method.REFRESH}))
    client.release(100.0)
    pump(client, server, 100.0)
    run(client, server, 1000.0)
    assert events(client) == [AllocationReleased()]
    assert client.state is TurnState.RELEASED

    client, server = allocated(FakeTurnServer(script={Method.REFRESH: [437]}))
    client.release(100.0)
    pump(client, server, 100.0)
    assert events(client) == [AllocationReleased()]


def test_refresh_with_lifetime_zero_releases() -> None:
    client, server = allocated()
    client.refresh(5.0, lifetime=0)
    pump(client, server, 5.0)
    assert events(client) == [AllocationReleased()]


# --------------------------------------------------------------------------- wrong state


def test_commands_in_the_wrong_state() -> None:
    client = new_client()
    idle_commands: list[Callable[[], object]] = [
        lambda: client.create_permission([PEER[0]], 0.0),
        lambda: client.bind_channel(PEER, 0.0),
        lambda: client.send(b"x", PEER, 0.0),
        lambda: client.refresh(0.0),
        lambda: client.release(0.0),
    ]
    for command in idle_commands:
        with pytest.raises(LocalProtocolError):
            command()
        assert client.state is TurnState.IDLE
        assert client.datagrams_to_send(0.0) == []
    client.allocate(0.0)
    for command in [*idle_commands, lambda: client.allocate(0.0)]:
        with pytest.raises(LocalProtocolError):
            command()
        assert client.state is TurnState.ALLOCATING
    assert len(client.datagrams_to_send(0.0)) == 1

    released, server = allocated()
    released.release(1.0)
    with pytest.raises(LocalProtocolError):
        released.release(1.0)
    pump(released, server, 1.0)
    for command in [
        lambda: released.allocate(2.0),
        lambda: released.send(b"x", PEER, 2.0),
        lambda: released.refresh(2.0),
    ]:
        with pytest.raises(LocalProtocolError):
            command()
        assert released.state is TurnState.RELEASED


def test_allocated_client_rejects_bad_arguments() -> None:
    client, _ = allocated()
    for bad in (("nope", 1), ("198.51.100.1",), "198.51.100.1:5", ("198.51.100.1", -1)):
        with pytest.raises(LocalProtocolError):
            client.send(b"x", bad, 1.0)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        client.send(b"x" * 70000, PEER, 1.0)
    with pytest.raises(LocalProtocolError):
        client.refresh(1.0, lifetime=-5)
    assert client.datagrams_to_send(1.0) == []
    assert client.state is TurnState.ALLOCATED


# --------------------------------------------------------------------------- integrity


def test_response_with_wrong_integrity_is_ignored() -> None:
    server = FakeTurnServer(script={Method.ALLOCATE: ["badmi"]})
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    assert client.state is TurnState.ALLOCATING
    assert events(client) == []
    assert client.dropped == 1
    assert client.next_timer() == 0.5  # the signed Allocate keeps retransmitting
    run(client, server, 0.5)
    assert client.state is TurnState.ALLOCATED
    assert [type(e) for e in events(client)] == [AllocationCreated]


def test_response_without_integrity_is_ignored() -> None:
    client, server = allocated()
    client.refresh(10.0)
    (request,) = client.datagrams_to_send(10.0)
    unsigned = Message.decode(request.data).response([Lifetime(600)]).encode()
    client.receive_datagram(unsigned, SERVER, 10.0)
    assert events(client) == [] and client.dropped == 1
    for reply in server.handle(request.data, 10.0):
        client.receive_datagram(reply, SERVER, 10.0)
    assert events(client) == [AllocationRefreshed(600)]


def test_only_bad_responses_end_as_integrity_failure() -> None:
    client, server = allocated(FakeTurnServer(script={Method.REFRESH: ["badmi"] * 7}))
    run(client, server, 590.0)
    (event,) = events(client)
    assert isinstance(event, RefreshFailed) and event.code == 0
    assert "integrity" in event.reason


def test_bad_integrity_over_tcp_ends_the_transaction() -> None:
    server = FakeTurnServer(script={Method.ALLOCATE: ["badmi"]})
    client = new_client(transport="tls")
    client.allocate(0.0)
    pump(client, server, 0.0)
    (event,) = events(client)
    assert isinstance(event, AllocationFailed) and event.code == 0
    assert "integrity" in event.reason
    assert client.state is TurnState.FAILED


# --------------------------------------------------------------------------- garbage


def clients_in_every_state() -> list[TurnClient]:
    idle = new_client()
    allocating = new_client()
    allocating.allocate(0.0)
    allocating.datagrams_to_send(0.0)
    ready, server = allocated()
    ready.create_permission([PEER[0]], 1.0)
    ready.bind_channel(PEER, 1.0)
    pump(ready, server, 1.0)
    releasing, _ = allocated()
    releasing.release(1.0)
    return [idle, allocating, ready, releasing]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    for client in clients_in_every_state():
        before = client.state
        client.receive_datagram(data, SERVER, 2.0)
        client.receive_datagram(b"\x40\x00" + data, SERVER, 2.0)
        client.receive_datagram(b"\x01\x01\x00\x00\x21\x12\xa4\x42" + data, SERVER, 2.0)
        assert client.state is before


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_server_replies_never_raise(data: st.DataObject) -> None:
    server = FakeTurnServer()
    client = new_client()
    client.allocate(0.0)
    pump(client, server, 0.0)
    client.create_permission([PEER[0]], 1.0)
    (request,) = client.datagrams_to_send(1.0)
    (reply,) = server.handle(request.data, 1.0)
    replies = [reply, data_indication(PEER, b"payload"), encode_channel_data(0x4000, b"cd")]
    raw = bytearray(data.draw(st.sampled_from(replies)))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    client.receive_datagram(bytes(raw[:cut]), SERVER, 1.0)
    client.receive_datagram(bytes(raw), SERVER, 1.0)
    client.handle_timer(2.0)


def test_odd_addresses_never_raise() -> None:
    client, _ = allocated()
    for addr in [("not-an-ip", 1), ("::1",), (1, 2), ("192.0.2.1", "x"), None]:
        client.receive_datagram(data_indication(PEER, b"x"), addr, 1.0)  # type: ignore[arg-type]
    assert events(client) == []


def test_failed_user_refresh_keeps_the_automatic_one() -> None:
    client, server = allocated(FakeTurnServer(script={Method.REFRESH: [508]}))
    client.refresh(100.0)
    pump(client, server, 100.0)
    assert events(client) == [RefreshFailed(508, "Insufficient Capacity")]
    assert client.next_timer() == 540.0
    run(client, server, 541.0)
    assert server.times(Method.REFRESH) == [100.0, 540.0]
    assert events(client) == [AllocationRefreshed(600)]
