"""Core tests of what a TURN fleet and a deployment need (issue 21): --external-ip
(ExternalAddresses), 300 Try Alternate (AlternateServers), a quota shared with other servers
(SharedQuota), nonces valid across servers given one secret, per-relay bandwidth (RelayShaper)
and the peer filter's denied ranges. No sockets, literal clock values."""

from __future__ import annotations

import pytest

from anchor_stun.attributes import (
    AlternateDomain,
    AlternateServer,
    Family,
    RequestedAddressFamily,
    XorRelayedAddress,
)
from anchor_stun.errors import LocalProtocolError
from anchor_stun.message import Method
from anchor_turn.admission import AlternateServers, SharedQuota
from anchor_turn.external import ExternalAddresses
from anchor_turn.server import AllocationCreatedEvent, PeerFilter
from anchor_turn.shaper import RelayShaper
from tests.unit.test_turn_server import (
    CLIENT2,
    RELAY_IP4,
    RELAY_IP6,
    T0,
    Client,
    code,
    events,
    make_server,
)

# --------------------------------------------------------------------------- --external-ip


def test_external_ip_pair_maps_the_private_relay_in_xor_relayed_address() -> None:
    server, relay = make_server(external=ExternalAddresses([f"203.0.113.50/{RELAY_IP4}"]))
    resp = Client(server).allocate()
    assert code(resp) is None
    assert resp.get(XorRelayedAddress) == XorRelayedAddress("203.0.113.50", 50000)
    # Everything else keeps the bound (private) address: the relay socket, the events.
    assert relay.in_use == {(RELAY_IP4, 50000)}
    created = [e for e in events(server) if isinstance(e, AllocationCreatedEvent)]
    assert created[0].relayed_addresses == ((RELAY_IP4, 50000),)


def test_bare_external_ip_maps_every_relay_of_its_family_only() -> None:
    server, _ = make_server(external=ExternalAddresses(["203.0.113.50"]))
    client = Client(server)
    resp = client.allocate(RequestedAddressFamily(Family.IPV6))
    assert resp.get(XorRelayedAddress) == XorRelayedAddress(RELAY_IP6, 50000)
    resp = Client(server, CLIENT2).allocate()
    assert resp.get(XorRelayedAddress) == XorRelayedAddress("203.0.113.50", 50001)


def test_external_addresses_parse_like_coturn() -> None:
    ext = ExternalAddresses(["198.51.100.1/10.0.0.1", "198.51.100.9", "2001:db8::7/fd00::7"])
    assert ext.public_ip("10.0.0.1") == "198.51.100.1"
    assert ext.public_ip("10.0.0.2") == "198.51.100.9"  # the bare one covers the family
    assert ext.public_ip("fd00::7") == "2001:db8::7"
    assert ext.public_ip("fd00::8") == "fd00::8"  # no bare IPv6: unchanged
    assert ext.publics == ["198.51.100.1", "2001:db8::7", "198.51.100.9"]
    assert ext.privates == ["10.0.0.1", "fd00::7"]
    for bad in (["x"], ["1.2.3.4/::1"], ["0.0.0.0"], ["1.1.1.1", "2.2.2.2"],
                ["1.1.1.1/10.0.0.1", "2.2.2.2/10.0.0.1"]):  # fmt: skip
        with pytest.raises(LocalProtocolError):
            ExternalAddresses(bad)


# --------------------------------------------------------------------------- ALTERNATE-SERVER


def test_alternate_server_redirects_above_the_load_with_a_signed_300() -> None:
    alternates = AlternateServers([("192.0.2.200", 3478), ("2001:db8::200", 3478)], above=1)
    server, relay = make_server(alternates=alternates)
    assert code(Client(server).allocate()) is None  # below the load: served here
    resp = Client(server, CLIENT2).allocate()
    assert code(resp) == 300
    # RFC 8489 §10: only an alternate of the client's family; the answer is signed (the
    # test client verified its integrity).
    assert resp.get(AlternateServer) == AlternateServer("192.0.2.200", 3478)
    assert resp.get(AlternateDomain) is None
    assert len(relay.in_use) == 1 and alternates.redirected == 1


def test_draining_redirects_every_new_allocation_and_tls_needs_a_domain() -> None:
    alternates = AlternateServers([("192.0.2.200", 3478)])
    server, _ = make_server(alternates=alternates)
    assert code(Client(server).allocate()) is None  # above=None: only while draining
    alternates.draining = True
    assert code(Client(server, CLIENT2).allocate()) == 300
    # Without ALTERNATE-DOMAIN a TLS client cannot check the alternate: served here.
    assert code(Client(server, ("203.0.113.9", 1), transport="tls").allocate()) is None
    alternates.domain = "turn2.example.org"
    resp = Client(server, ("203.0.113.9", 2), transport="tls").allocate()
    assert code(resp) == 300 and resp.get(AlternateDomain) == AlternateDomain("turn2.example.org")


def test_alternates_of_another_family_only_are_not_used() -> None:
    server, _ = make_server(alternates=AlternateServers([("2001:db8::200", 3478)], above=0))
    assert code(Client(server).allocate()) is None


# --------------------------------------------------------------------------- shared quota


class DictQuota:
    """A SharedQuota over a dict, standing for a store several servers share."""

    def __init__(self, per_user: int, available: bool = True) -> None:
        self.per_user = per_user
        self.available = available
        self.held: dict[str, str] = {}

    def acquire(self, username: str, allocation: str, now: float) -> int | None:
        if not self.available:
            return 508
        if sum(1 for u in self.held.values() if u == username) >= self.per_user:
            return 486
        self.held[allocation] = username
        return None

    def release(self, username: str, allocation: str) -> None:
        self.held.pop(allocation, None)


def test_shared_quota_is_asked_and_released_by_two_servers() -> None:
    store = DictQuota(per_user=1)
    assert isinstance(store, SharedQuota)
    first, _ = make_server(shared_quota=store)
    second, _ = make_server(shared_quota=store)
    a = Client(first)
    assert code(a.allocate()) is None
    assert code(Client(second, CLIENT2).allocate()) == 486  # the first server holds it
    assert code(a.request(Method.REFRESH, *_zero())) is None  # released
    assert store.held == {}
    assert code(Client(second, CLIENT2).allocate()) is None


def test_shared_quota_unavailable_is_508_and_expiry_releases() -> None:
    store = DictQuota(per_user=5, available=False)
    server, relay = make_server(shared_quota=store)
    assert code(Client(server).allocate()) == 508
    assert relay.in_use == set()
    store.available = True
    assert code(Client(server).allocate()) is None
    server.handle_timer(T0 + 3601)
    assert store.held == {}


def test_shared_quota_is_given_back_when_no_relay_can_be_bound() -> None:
    store = DictQuota(per_user=5)
    server, relay = make_server(shared_quota=store)
    relay.capacity = 0
    assert code(Client(server).allocate()) == 508
    assert store.held == {}


def _zero() -> list[object]:
    from anchor_stun.attributes import Lifetime

    return [Lifetime(0)]


# --------------------------------------------------------------------------- nonces


def test_servers_with_one_nonce_secret_accept_each_others_nonces() -> None:
    secret = bytes(range(32))
    first, _ = make_server(nonce_secret=secret)
    second, _ = make_server(nonce_secret=secret)
    other, _ = make_server()
    client = Client(first)
    client.login(T0)  # the 401 and its nonce come from the first server
    client.server = second
    assert code(client.request(Method.ALLOCATE, *_transport(), retry_stale=False)) is None
    client = Client(first, CLIENT2)
    client.login(T0)
    client.server = other  # another secret: the nonce is stale there
    assert code(client.request(Method.ALLOCATE, *_transport(), retry_stale=False)) == 438
    with pytest.raises(LocalProtocolError):
        make_server(nonce_secret=b"short")


def _transport() -> list[object]:
    from anchor_stun.attributes import RequestedTransport

    return [RequestedTransport()]


# --------------------------------------------------------------------------- --max-bps


def test_relay_shaper_keeps_each_direction_of_each_relay_to_its_rate() -> None:
    shaper = RelayShaper(1000, burst=1500)
    relay = ("192.0.2.100", 50000)
    assert shaper.admit(relay, True, 1000, 0.0)
    assert not shaper.admit(relay, True, 1000, 0.0)  # 500 left of the burst
    assert shaper.admit(relay, False, 1000, 0.0)  # the other direction has its own
    assert shaper.admit(("192.0.2.100", 50001), True, 1500, 0.0)  # another relay too
    assert shaper.admit(relay, True, 1000, 0.5)  # 500 + 0.5 s x 1000 B/s
    assert not shaper.admit(relay, True, 1, 0.5)
    assert shaper.admit(relay, True, 1500, 10.0)  # never above the burst
    assert not shaper.admit(relay, True, 1, 10.0)
    assert (shaper.dropped, shaper.dropped_bytes) == (3, 1002)
    with pytest.raises(LocalProtocolError):
        RelayShaper(0)


def test_relay_shaper_forgets_full_buckets_as_it_grows() -> None:
    shaper = RelayShaper(100, burst=100)
    for port in range(5000):
        shaper.admit(("192.0.2.100", port), True, 1, float(port))
    assert len(shaper) < 4200  # refilled buckets were dropped when the table grew


# --------------------------------------------------------------------------- --denied-peer-ip


def test_denied_peer_ranges_and_allowed_exceptions() -> None:
    peers = PeerFilter(deny=["198.51.100.0/24"], allow=["198.51.100.7/32"])
    assert not peers("198.51.100.8")
    assert peers("198.51.100.7")  # allowed wins, as coturn's allowed-peer-ip
    assert peers("203.0.113.1")
