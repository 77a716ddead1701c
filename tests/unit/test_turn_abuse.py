"""Abuse resistance of the TURN server core (issue 9), sans-I/O with a fake clock.

What an attacker who is not a user can get out of the server (amplification, memory), what a
user can reach through the relay (peer filtering and its bypass attempts), the limits that
bound what a user can hold (quotas, permissions, channels), and what stale or forged
credentials get (the RFC answer, and no state change). Figures asserted here:

- unauthenticated answers: at most :data:`UNAUTH_MAX` = 136 bytes with this configuration
  (the 401 challenge); reflection factor 6.8 for a minimal 20-byte request (401), 3.0 for
  the 400 answer; indications, ChannelData and responses get no answer at all;
- unsigned answers over UDP are budgeted per source prefix (IPv4 /24, IPv6 /64, issue 24):
  a burst of 50, then 20 a second, and in bytes at most 3 times what the prefix sent plus
  a 4 KiB allowance growing back at 6.8 B/s; measured for every kind of unsigned answer
  across 256 sources of one /24;
- a flood of unauthenticated traffic from 10,000 distinct sources allocates nothing; the
  per-source state it creates is capped (rate-limiter buckets: the sources of the last 2.5 s,
  at most 65,536; source-address caches of the STUN core and codec: 4,096 entries each), so
  a third flood of 10,000 more sources adds less than :data:`FLOOD_GROWTH_MAX` bytes
  (tracemalloc; the second may still see a capped cache's dict resize).
"""

from __future__ import annotations

import gc
import ipaddress
import tracemalloc
from dataclasses import dataclass, field

import pytest

from anchor_stun.attributes import (
    AdditionalAddressFamily,
    Attribute,
    AttrType,
    ChannelNumber,
    Data,
    Lifetime,
    Nonce,
    OtherAddress,
    PasswordAlgorithms,
    RawAttribute,
    Realm,
    RequestedTransport,
    Software,
    XorPeerAddress,
)
from anchor_stun.events import Address, Transmit
from anchor_stun.integrity import LongTermCredentials, turn_rest_password
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.server import StunServer
from anchor_turn.auth import ChainedBackend, RestSecret, StaticUsers
from anchor_turn.channeldata import encode_channel_data
from anchor_turn.server import (
    UNAUTHENTICATED_BURST,
    UNAUTHENTICATED_RATE,
    PeerFilter,
    TurnServer,
)

REALM = "example.org"
LISTEN: Address = ("192.0.2.1", 3478)
CLIENT: Address = ("203.0.113.7", 40000)
CLIENT2: Address = ("203.0.113.8", 40001)
PEER: Address = ("198.51.100.20", 6000)
RELAY_IP4 = "192.0.2.100"
RELAY_IP6 = "2001:db8::100"
T0 = 1000.0
MD5, SHA256 = 1, 2

UNAUTH_MAX = 20 + 24 + 16 + 44 + 12 + 12 + 8
"""The 401 challenge: header, ERROR-CODE 401 "Unauthenticated" (4 + 4 + 16), REALM
"example.org" (4 + 12), NONCE (4 + 40: 13-character cookie + 24 base64 characters, padded),
PASSWORD-ALGORITHMS SHA-256 + MD5 (4 + 8), SOFTWARE "anchor" (4 + 8), FINGERPRINT (8)."""
FLOOD_SOURCES = 10_000
FLOOD_FIRST_MAX = 6 * 1024 * 1024
"""Bytes the first flood (10,000 sources, each a /24 of its own, over 10 s) may add: the
caches keyed by source address fill up (about 2 MB) and the answer budget holds a record
(about 300 B) for each prefix whose credit has not grown back yet (20 s of sources)."""
FLOOD_GROWTH_MAX = 512 * 1024
"""Bytes a second flood, of 10,000 more sources, may add: after the first 10,000 the
source-keyed caches (StunServer's, 4096 entries) are full, so what is
left is the churn of their contents."""


# --------------------------------------------------------------------------- fakes, helpers


@dataclass
class FakeRelay:
    """A RelayAllocator handing out ports 50000, 50001, ... for both families."""

    next_port: int = 50000
    in_use: set[Address] = field(default_factory=set)

    def allocate(
        self, family: int, even_port: bool, reserve_next: bool, token: bytes | None, now: float
    ) -> tuple[Address, bytes | None] | None:
        addr = (RELAY_IP4 if family == 1 else RELAY_IP6, self.next_port)
        self.next_port += 1
        self.in_use.add(addr)
        return addr, None

    def release(self, addr: Address) -> None:
        self.in_use.discard(addr)


def _rng(n: int) -> bytes:
    return bytes((7 * i + 3) & 0xFF for i in range(n))


def make_server(**kw: object) -> tuple[TurnServer, FakeRelay]:
    relay = FakeRelay()
    options: dict[str, object] = {
        "realm": REALM,
        "auth": StaticUsers({"alice": "secret", "bob": "hunter2"}, realm=REALM),
        "relay": relay,
        "stun": StunServer(primary=LISTEN),
        "rng": _rng,
    }
    options.update(kw)
    return TurnServer(**options), relay  # type: ignore[arg-type]


class Client:
    """One 5-tuple's view: builds, signs and exchanges requests with the server."""

    def __init__(
        self,
        server: TurnServer,
        addr: Address = CLIENT,
        user: str = "alice",
        password: str = "secret",
    ) -> None:
        self.server = server
        self.addr = addr
        self.creds = LongTermCredentials(user, password)
        self.n = 0

    def tid(self) -> bytes:
        self.n += 1
        return self.addr[1].to_bytes(4, "big") + self.n.to_bytes(8, "big")

    def send(self, data: bytes, now: float = T0, addr: Address | None = None) -> list[Transmit]:
        self.server.receive_datagram(data, addr or self.addr, LISTEN, now)
        return self.server.datagrams_to_send(now)

    def exchange(self, data: bytes, now: float = T0, addr: Address | None = None) -> Message:
        out = self.send(data, now, addr)
        assert len(out) == 1, out
        return Message.decode(out[0].data)

    def login(self, now: float = T0) -> None:
        req = Message(Method.ALLOCATE, MessageClass.REQUEST, self.tid(), [RequestedTransport()])
        resp = self.exchange(req.encode(fingerprint=True), now)
        assert code(resp) == 401
        self.creds.challenge(resp)

    def signed(self, method: int, *attrs: Attribute, now: float = T0) -> bytes:
        if not self.creds.ready:
            self.login(now)
        return self.creds.sign(Message(method, MessageClass.REQUEST, self.tid(), list(attrs)))

    def request(self, method: int, *attrs: Attribute, now: float = T0) -> Message:
        return self.exchange(self.signed(method, *attrs, now=now), now)

    def allocate(self, *attrs: Attribute, now: float = T0) -> Message:
        return self.request(Method.ALLOCATE, RequestedTransport(), *attrs, now=now)


def code(resp: Message) -> int | None:
    return resp.error.code if resp.error is not None else None


def state(server: TurnServer) -> object:
    """Everything a request can change: allocations, relays, permissions, channels, with
    their expiry times, and the quota counters (the core's private tables, read-only)."""
    return (
        sorted(
            (
                repr(key),
                alloc.username,
                sorted((f, r.addr, r.expires) for f, r in alloc.relays.items()),
                sorted((ip, p.expires) for ip, p in alloc.permissions.items()),
                sorted((n, c.peer, c.expires) for n, c in alloc.channels.items()),
            )
            for key, alloc in server._by_tuple.items()
        ),
        dict(server._per_user),
        sorted(server._relays),
    )


def dual_allocation(server: TurnServer) -> Client:
    """alice with an IPv4 and an IPv6 relayed address, so that the family check (443) never
    hides the peer filter (403)."""
    client = Client(server)
    resp = client.allocate(AdditionalAddressFamily())
    assert code(resp) is None, resp
    return client


# --------------------------------------------------------------------------- amplification


def _unauthenticated_requests() -> list[bytes]:
    tid = b"u" * 12
    out = [
        Message(method, MessageClass.REQUEST, tid).encode()
        for method in (
            Method.ALLOCATE,
            Method.REFRESH,
            Method.CREATE_PERMISSION,
            Method.CHANNEL_BIND,
            0x00F,
            0xFFF,
            Method.BINDING,
        )
    ]
    out.append(
        Message(
            Method.ALLOCATE, MessageClass.REQUEST, tid, [RequestedTransport(), Software("x" * 700)]
        ).encode(fingerprint=True)
    )
    bad_length = bytearray(out[0])
    bad_length[3] = 4  # header says 4 bytes of body, there are none: 400
    out.append(bytes(bad_length))
    out.append(  # credentials without MESSAGE-INTEGRITY: 401
        Message(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            tid,
            [RequestedTransport(), RawAttribute(AttrType.USERNAME, b"alice" * 100)],
        ).encode()
    )
    return out


def test_unauthenticated_answers_never_exceed_the_bound() -> None:
    server, _ = make_server()
    sizes = []
    for request in _unauthenticated_requests():
        for source in (CLIENT, ("2001:db8:1::7", 1), ("::ffff:203.0.113.9", 2)):
            server.receive_datagram(request, source, LISTEN, T0)
            for out in server.datagrams_to_send(T0):
                assert out.addr == source
                sizes.append(len(out.data))
                msg = Message.decode(out.data)
                assert msg.integrity is None and msg.integrity_sha256 is None
    assert sizes and max(sizes) == UNAUTH_MAX == 136
    assert server.allocation_count() == 0


def test_reflection_factor_of_the_401_and_400_answers() -> None:
    server, _ = make_server()
    minimal = Message(Method.ALLOCATE, MessageClass.REQUEST, b"r" * 12).encode()
    assert len(minimal) == 20  # the smallest request there is
    server.receive_datagram(minimal, CLIENT, LISTEN, T0)
    (challenge,) = server.datagrams_to_send(T0)
    assert code(Message.decode(challenge.data)) == 401
    factor_401 = len(challenge.data) / len(minimal)

    truncated = bytearray(minimal)
    truncated[3] = 4
    server.receive_datagram(bytes(truncated), CLIENT, LISTEN, T0)
    (bad,) = server.datagrams_to_send(T0)
    assert code(Message.decode(bad.data)) == 400
    factor_400 = len(bad.data) / len(minimal)

    other_method = Message(0x00F, MessageClass.REQUEST, b"r" * 12).encode()
    server.receive_datagram(other_method, CLIENT, LISTEN, T0)
    (bad_method,) = server.datagrams_to_send(T0)
    assert code(Message.decode(bad_method.data)) == 400

    assert (len(challenge.data), len(bad.data), len(bad_method.data)) == (136, 60, 60)
    assert factor_401 == pytest.approx(6.8) and factor_401 <= 7.0
    assert factor_400 == pytest.approx(3.0)
    # Bigger requests only lower the factor: the answer does not grow with the request.
    padded = Message(
        Method.ALLOCATE, MessageClass.REQUEST, b"r" * 12, [Software("p" * 500)]
    ).encode()
    server.receive_datagram(padded, CLIENT, LISTEN, T0)
    assert len(server.datagrams_to_send(T0)[0].data) == 136


def test_unauthenticated_indications_data_and_responses_get_nothing() -> None:
    server, _ = make_server()
    tid = b"i" * 12
    inputs = [
        encode_channel_data(0x4000, b"x" * 1000),
        Message(
            Method.SEND, MessageClass.INDICATION, tid, [XorPeerAddress(*PEER), Data(b"x" * 1000)]
        ).encode(fingerprint=True),
        Message(
            Method.SEND, MessageClass.INDICATION, tid, [XorPeerAddress(*PEER), Data(b"x")]
        ).encode(),
        Message(Method.DATA, MessageClass.INDICATION, tid, [Data(b"x")]).encode(),
        Message(Method.ALLOCATE, MessageClass.SUCCESS, tid).encode(fingerprint=True),
        Message(Method.ALLOCATE, MessageClass.ERROR, tid).encode(),
        Message(Method.BINDING, MessageClass.INDICATION, tid).encode(),
        b"\xff" * 100,
        b"",
    ]
    for data in inputs:
        server.receive_datagram(data, CLIENT, LISTEN, T0)
        server.receive_relay(data, PEER, (RELAY_IP4, 50000), T0)
    assert server.datagrams_to_send(T0) == []


def _hammer(server: TurnServer, source: Address, count: int, start: float, step: float) -> int:
    """``count`` unauthenticated Allocates from ``source``, ``step`` seconds apart; returns
    how many were answered."""
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, b"f" * 12).encode()
    answered = 0
    for i in range(count):
        now = start + i * step
        server.receive_datagram(request, source, LISTEN, now)
        answered += len(server.datagrams_to_send(now))
    return answered


def test_unauthenticated_requests_are_rate_limited_per_source() -> None:
    server, _ = make_server()
    assert (UNAUTHENTICATED_BURST, UNAUTHENTICATED_RATE) == (50, 20.0)
    # 1000 requests within one second from one source: the burst, then 20 per second.
    answered = _hammer(server, CLIENT, 1000, T0, 0.001)
    assert answered == 50 + 19  # 0.999 s refill 19.98 tokens
    assert server.stats.rate_limited == 1000 - answered
    # In bytes: at most 50 * 136 = 6.8 kB at once, then 20 * 136 = 2.7 kB/s per victim IP.
    assert _hammer(server, (CLIENT[0], 1), 1, T0 + 0.999, 0) == 0  # per IP, whatever the port
    # per prefix (issue 24): the victim's neighbours in its /24 share the budget...
    assert _hammer(server, CLIENT2, 1, T0 + 0.999, 0) == 0
    assert _hammer(server, ("203.0.113.250", 9), 1, T0 + 0.999, 0) == 0
    # ...other prefixes are not affected
    assert _hammer(server, ("203.0.114.8", 40001), 1, T0 + 0.999, 0) == 1
    assert _hammer(server, CLIENT, 100, T0 + 4, 0) == 50  # full again after 2.5 s
    # Steady 100 requests/s: 20 answered per second once the burst is spent.
    assert _hammer(server, ("203.0.115.50", 1), 1000, T0 + 10, 0.01) == 50 + 199


def test_rate_limit_spares_signed_answers_tcp_and_can_be_turned_off() -> None:
    server, _ = make_server()
    alice = Client(server)
    assert code(alice.allocate()) is None
    assert _hammer(server, (CLIENT[0], 9), 200, T0, 0) < 200  # the shared IP is now limited
    # alice's signed requests still get their (signed) answers.
    assert code(alice.request(Method.REFRESH, Lifetime(600))) is None
    # Over TCP the handshake proves the source: no limit.
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, b"t" * 12).encode()
    for _ in range(100):
        server.receive_datagram(request, CLIENT, LISTEN, T0, transport="tcp")
    assert len(server.datagrams_to_send(T0)) == 100
    unlimited, _ = make_server(unauthenticated_rate=None)
    assert _hammer(unlimited, CLIENT, 1000, T0, 0) == 1000
    custom, _ = make_server(unauthenticated_rate=1.0, unauthenticated_burst=2)
    assert _hammer(custom, CLIENT, 10, T0, 0.1) == 2
    assert _hammer(custom, CLIENT, 10, T0 + 1.1, 0.1) == 2  # one second refills one token...
    assert _hammer(custom, CLIENT, 1, T0 + 10, 0) == 1


def _answer_kinds(server: TurnServer) -> dict[str, bytes]:
    """One request per kind of unsigned answer (issue 24 must-show 4): a minimal Allocate
    (401), a signed Allocate whose nonce was issued to another 5-tuple (438), a Binding with
    an unknown comprehension-required attribute (420), a minimal Binding (success, with
    OTHER-ADDRESS when the server has an alternate address), an unknown method (400)."""
    creds = LongTermCredentials("alice", "secret")
    first = Message(Method.ALLOCATE, MessageClass.REQUEST, b"n" * 12, [RequestedTransport()])
    server.receive_datagram(first.encode(), ("192.0.2.200", 5), LISTEN, T0)
    creds.challenge(Message.decode(server.datagrams_to_send(T0)[0].data))
    stale = creds.sign(
        Message(Method.ALLOCATE, MessageClass.REQUEST, b"s" * 12, [RequestedTransport()])
    )
    return {
        "401": Message(Method.ALLOCATE, MessageClass.REQUEST, b"a" * 12).encode(),
        "438": stale,
        "420": Message(
            Method.BINDING, MessageClass.REQUEST, b"u" * 12, [RawAttribute(0x0030, b"")]
        ).encode(),
        "binding": Message(Method.BINDING, MessageClass.REQUEST, b"b" * 12).encode(),
        "400": Message(0x00F, MessageClass.REQUEST, b"m" * 12).encode(),
    }


@pytest.mark.parametrize("kind", ["401", "438", "420", "binding", "400"])
def test_amplification_is_at_most_3x_across_256_sources_of_one_prefix(kind: str) -> None:
    """issue 24 must-show 4, in the core: 256 source addresses of one /24 each send 20
    requests over 2 s (5,120 in all). What they are sent in all is at most 3 times what
    they sent, and the answers are those one source would get (the burst, then the rate):
    the budget is the prefix's, not 256 times one address's. With OTHER-ADDRESS (RFC 5780)
    a Binding answer is the largest per request byte."""
    server, _ = make_server(
        stun=StunServer(primary=LISTEN, other=("192.0.2.2", 3479)), unauthenticated_rate=20.0
    )
    request = _answer_kinds(server)[kind]
    sent = received = answers = 0
    for round_ in range(20):
        now = T0 + 1 + round_ * 0.1
        for host in range(256):
            source = (f"203.0.113.{host}", 40000 + host)
            server.receive_datagram(request, source, LISTEN, now)
            sent += len(request)
            for out in server.datagrams_to_send(now):
                assert out.addr[0] == source[0]
                answer = Message.decode(out.data)
                assert str(code(answer) or "binding") == kind
                if kind == "binding":
                    assert answer.get(OtherAddress) is not None
                received += len(out.data)
                answers += 1
    assert answers >= 50  # the prefix is answered...
    assert answers <= UNAUTHENTICATED_BURST + 2 * UNAUTHENTICATED_RATE + 1  # ...as one source
    assert received <= 3 * sent, (kind, received / sent)
    limited = server.stats.rate_limited + server.stun.stats.rate_limited
    assert limited == 20 * 256 - answers


def test_ipv6_sources_share_the_budget_of_their_64() -> None:
    """IPv6 sources are budgeted per /64 (issue 24: "IPv4 /24, IPv6 /64"), the addresses a
    single host or LAN gets: 256 addresses spread over one /64 (the interface identifiers
    an attacker picks at will) get what one source would; a neighbouring /64 has a budget
    of its own."""
    server, _ = make_server(unauthenticated_rate=20.0)
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, b"6" * 12).encode()  # a 401

    def answered(prefix: str, hosts: range, now: float) -> int:
        count = 0
        for host in hosts:
            source = (f"{prefix}:{host * 0x0101:x}:{host:x}:7:{host + 1:x}", 40000 + host)
            server.receive_datagram(request, source, LISTEN, now)
            count += len(server.datagrams_to_send(now))
        return count

    first = answered("2001:db8:1:2", range(256), T0)
    assert first == UNAUTHENTICATED_BURST  # the /64's burst, not 256 of them
    assert answered("2001:db8:1:2", range(256), T0) == 0  # spent, whichever address asks
    assert answered("2001:db8:1:3", range(256), T0) == UNAUTHENTICATED_BURST  # its own
    assert answered("2001:db8:1:2", range(1), T0 + 1.0) == 1  # the rate refills it


def test_a_slow_prober_gets_at_most_3x_plus_the_allowance() -> None:
    """The strict form of the bound, per prefix: in ``t`` seconds a prefix is sent at most
    3 x what it sent + the 4 KiB allowance + t x 6.8 B/s (the credit growing back), at any
    request rate (a minimal Allocate every 50 ms for 10 minutes: within the rate, so only
    the bytes bind: 3.03 times over in all, not the 6.8 of a 401 per request)."""
    server, _ = make_server()
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, b"p" * 12).encode()
    sent = received = 0
    duration, step = 600.0, 0.05
    for i in range(int(duration / step)):
        now = T0 + i * step
        server.receive_datagram(request, (f"203.0.113.{i % 256}", 1), LISTEN, now)
        sent += len(request)
        received += sum(len(t.data) for t in server.datagrams_to_send(now))
    budget = server.budget
    assert budget is not None
    assert received <= 3 * sent + budget.allowance + duration * budget.regen
    assert received / sent <= 3.05


def test_a_signed_exchange_earns_credit_for_its_prefix() -> None:
    """Legitimate clients behind one prefix keep getting their challenges: each signed
    exchange earns 3 x its size, more than the 401 that preceded it costs."""
    server, _ = make_server()
    for n in range(300):  # 300 logins from one /24 in 30 s
        client = Client(server, addr=(f"203.0.113.{n % 200}", 50000 + n))
        client.login(T0 + n * 0.1)
        resp = client.exchange(client.signed(Method.ALLOCATE, RequestedTransport()), T0 + n * 0.1)
        assert code(resp) in (None, 486)
    assert server.stats.rate_limited == 0


# --------------------------------------------------------------------------- peer filtering

FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped RFC 1918"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local (cloud metadata)"),
    ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
    ("0.0.0.0", "unspecified (CVE-2020-26262)"),
    ("0.1.2.3", "this network"),
    ("::", "unspecified (CVE-2020-26262)"),
    ("10.0.0.1", "RFC 1918"),
    ("172.31.255.255", "RFC 1918"),
    ("192.168.1.1", "RFC 1918"),
    ("fd12:3456::1", "unique local"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast (SSDP)"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    # issue 24: ranges the first filter let through
    ("100.64.0.1", "carrier-grade NAT (RFC 6598)"),
    ("100.100.100.200", "carrier-grade NAT: a cloud metadata service"),
    ("100.127.255.254", "carrier-grade NAT, top"),
    ("192.0.0.1", "IETF protocol assignments (RFC 6890)"),
    ("192.0.0.170", "IETF protocol assignments: NAT64 discovery"),
    ("198.18.0.1", "benchmarking (RFC 2544)"),
    ("198.19.255.254", "benchmarking, top"),
    ("240.0.0.1", "reserved (RFC 1112)"),
    ("254.255.255.255", "reserved, top"),
    ("fec0::1", "site-local (RFC 3879)"),
    ("feff:ffff::1", "site-local, top"),
    ("64:ff9b:1::1", "local-use NAT64 (RFC 8215)"),
    ("64:ff9b:1:ffff::1", "local-use NAT64, top"),
    ("::ffff:100.100.100.200", "IPv4-mapped carrier-grade NAT"),
    ("64:ff9b::6464:64c8", "NAT64 well-known prefix of 100.100.100.200"),
]

ALLOWED_NEIGHBOURS = [
    "100.63.255.255",  # just below 100.64.0.0/10
    "100.128.0.0",  # just above it
    "192.0.1.1",  # just above 192.0.0.0/24
    "198.17.255.255",  # just below 198.18.0.0/15
    "198.20.0.0",  # just above it
    "fe00::1",  # below fe80::/10 and above fc00::/7: not a special range
    "64:ff9b:2::1",  # just above 64:ff9b:1::/48
    "2001:db8::1",
    "8.8.8.8",
]

EMBEDDED_IPV4 = [
    ("::127.0.0.1", "IPv4-compatible (deprecated, RFC 4291 §2.5.5.1) loopback"),
    ("::10.0.0.1", "IPv4-compatible RFC 1918"),
    ("2002:7f00:1::1", "6to4 (RFC 3056) of 127.0.0.1"),
    ("2002:a00:1::1", "6to4 of 10.0.0.1"),
    ("64:ff9b::7f00:1", "NAT64 well-known prefix (RFC 6052) of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254 (cloud metadata)"),
    ("::ffff:0:7f00:1", "IPv4-translated (RFC 2765 SIIT) 127.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo (RFC 4380), client 127.0.0.1"),
]
"""Forms embedding a forbidden IPv4 address that the default PeerFilter does not recognise
(it unwraps IPv4-mapped addresses only). Whether they reach the IPv4 address depends on the
relay host: sit/6to4 tunnels, a NAT64 gateway, a Teredo relay."""


def _forbidden_everywhere(server: TurnServer, client: Client, ip: str, channel: int) -> None:
    before = state(server)
    perm = client.request(Method.CREATE_PERMISSION, XorPeerAddress(ip, 6000))
    assert code(perm) == 403, perm
    bind = client.request(Method.CHANNEL_BIND, ChannelNumber(channel), XorPeerAddress(ip, 6000))
    assert code(bind) == 403, bind
    assert state(server) == before
    send = Message(
        Method.SEND, MessageClass.INDICATION, client.tid(), [XorPeerAddress(ip, 6000), Data(b"x")]
    )
    assert client.send(send.encode(fingerprint=True)) == []
    assert client.send(send.encode()) == []  # without FINGERPRINT too
    assert client.send(encode_channel_data(channel, b"x")) == []


DEFAULT_DENIED = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
]
"""Every range the default peer filter refuses (issue 24 must-show 5)."""


@pytest.mark.parametrize("network", DEFAULT_DENIED)
def test_peer_filter_table_every_default_range(network: str) -> None:
    """First, last and middle address of each range refused by default; the neighbours
    just outside are not; ``allow`` (``anchor serve --allow-peer``) opens the range."""
    net = ipaddress.ip_network(network)
    inside = {net[0], net[-1], net[net.num_addresses // 2]}
    default = PeerFilter()
    for addr in inside:
        assert not default(str(addr)), addr
    for outside in (int(net[0]) - 1, int(net[-1]) + 1):
        if 0 <= outside < (1 << net.max_prefixlen):
            neighbour = ipaddress.ip_address(outside) if net.version == 4 else (
                ipaddress.IPv6Address(outside)
            )
            embeds_ipv4 = isinstance(neighbour, ipaddress.IPv6Address) and (
                neighbour in ipaddress.ip_network("::/96") or neighbour.ipv4_mapped is not None
            )
            if not embeds_ipv4 and not any(
                neighbour in ipaddress.ip_network(n) for n in DEFAULT_DENIED
            ):
                assert default(str(neighbour)), neighbour
    opened = PeerFilter(allow=[network], allow_loopback=True)
    for addr in inside:
        assert opened(str(addr)), addr


@pytest.mark.parametrize("ip", ALLOWED_NEIGHBOURS)
def test_peer_filter_lets_public_neighbours_through(ip: str) -> None:
    assert PeerFilter()(ip)


@pytest.mark.parametrize(("ip", "why"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_forbidden_peers_are_refused_on_every_path(ip: str, why: str) -> None:
    server, _ = make_server()
    client = dual_allocation(server)
    _forbidden_everywhere(server, client, ip, 0x4001)
    # A permission for a public peer opens nothing else.
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) is None
    _forbidden_everywhere(server, client, ip, 0x4002)


@pytest.mark.parametrize(
    ("ip", "why"), EMBEDDED_IPV4, ids=[e[0] for e in EMBEDDED_IPV4]
)
def test_ipv6_embeddings_of_forbidden_ipv4_are_refused(ip: str, why: str) -> None:
    server, _ = make_server()
    client = dual_allocation(server)
    _forbidden_everywhere(server, client, ip, 0x4001)


def test_own_relay_and_listener_are_refused() -> None:
    server, _ = make_server()
    client = dual_allocation(server)
    for peer in (LISTEN, (RELAY_IP4, 50000), (RELAY_IP6, 50001)):
        resp = client.request(Method.CHANNEL_BIND, ChannelNumber(0x4003), XorPeerAddress(*peer))
        assert code(resp) == 403, peer
    # Permissions are per IP (RFC 8656 §9) and the relay IP hosts other allocations' relays
    # (relay to relay is normal): the permission is granted, data to the own relay is not.
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(RELAY_IP4, 1))) is None
    for peer in ((RELAY_IP4, 50000), LISTEN):
        ind = Message(
            Method.SEND,
            MessageClass.INDICATION,
            client.tid(),
            [XorPeerAddress(*peer), Data(b"loop")],
        )
        assert client.send(ind.encode(fingerprint=True)) == [], peer
    ind = Message(
        Method.SEND,
        MessageClass.INDICATION,
        client.tid(),
        [XorPeerAddress(RELAY_IP4, 50007), Data(b"to another relay")],
    )
    assert len(client.send(ind.encode(fingerprint=True))) == 1


def test_wildcard_listener_is_myself_on_every_host_address() -> None:
    """issue 24 must-show 3, in the core: with a wildcard listener (0.0.0.0:3478) the
    "myself" check covers every address the adapter declares (host addresses, an external
    address) and the whole loopback range on the listener's port, so permission, ChannelBind
    and Send to them are refused even with every peer allowed by the filter."""
    wildcard: Address = ("0.0.0.0", 3478)
    host, external = "203.0.113.1", "198.51.100.99"
    server, _ = make_server(
        stun=StunServer(primary=wildcard),
        allow_peers=["0.0.0.0/0", "::/0"],
        self_addresses=[(host, 3478), (external, 3478), ("2001:db8::1", 3478)],
    )
    client = Client(server)

    # Clients reach the wildcard listener: the core is told ``local`` = 0.0.0.0:3478.
    def send(data: bytes) -> list[Transmit]:
        server.receive_datagram(data, client.addr, wildcard, T0)
        return server.datagrams_to_send(T0)

    def exchange(method: int, *attrs: Attribute) -> Message:
        if not client.creds.ready:
            req = Message(
                Method.ALLOCATE, MessageClass.REQUEST, client.tid(), [RequestedTransport()]
            )
            (out,) = send(req.encode())
            client.creds.challenge(Message.decode(out.data))
        data = client.creds.sign(Message(method, MessageClass.REQUEST, client.tid(), list(attrs)))
        (out,) = send(data)
        return Message.decode(out.data)

    assert code(exchange(Method.ALLOCATE, RequestedTransport(), AdditionalAddressFamily())) is None
    selves = [
        (host, 3478),
        (external, 3478),
        ("127.0.0.1", 3478),
        ("127.1.2.3", 3478),
        ("::ffff:" + host, 3478),
        ("2001:db8::1", 3478),
        ("::1", 3478),
    ]
    for n, peer in enumerate(selves):
        assert code(exchange(Method.CREATE_PERMISSION, XorPeerAddress(*peer))) == 403, peer
        bind = exchange(Method.CHANNEL_BIND, ChannelNumber(0x4000 + n), XorPeerAddress(*peer))
        assert code(bind) == 403, peer
    # A permission for the host IP on another port (relay to relay) is fine, but a Send
    # to the listener port of that IP is not relayed.
    assert code(exchange(Method.CREATE_PERMISSION, XorPeerAddress(host, 50000))) is None
    for peer in ((host, 3478), ("::ffff:" + host, 3478), (host, 0)):
        ind = Message(
            Method.SEND, MessageClass.INDICATION, client.tid(), [XorPeerAddress(*peer), Data(b"x")]
        )
        assert send(ind.encode(fingerprint=True)) == [], peer
        assert send(ind.encode()) == [], peer
    ind = Message(
        Method.SEND,
        MessageClass.INDICATION,
        client.tid(),
        [XorPeerAddress(host, 50000), Data(b"x")],
    )
    assert len(send(ind.encode(fingerprint=True))) == 1
    # Another port of loopback, or a channel to port 0: not myself / refused.
    port_zero = XorPeerAddress(host, 0)
    assert code(exchange(Method.CHANNEL_BIND, ChannelNumber(0x4100), port_zero)) == 403
    other_port = XorPeerAddress("127.0.0.1", 3479)
    assert code(exchange(Method.CHANNEL_BIND, ChannelNumber(0x4101), other_port)) is None


def test_mapped_form_of_own_listener_is_refused() -> None:
    server, _ = make_server()
    client = dual_allocation(server)
    for peer in (("::ffff:" + LISTEN[0], LISTEN[1]), ("::ffff:" + RELAY_IP4, 50000)):
        resp = client.request(Method.CHANNEL_BIND, ChannelNumber(0x4003), XorPeerAddress(*peer))
        assert code(resp) == 403, peer


def test_the_address_checked_is_the_address_relayed_to() -> None:
    """XOR tricks: the filter judges the XOR-decoded address, the one data goes to."""
    server, _ = make_server()
    client = dual_allocation(server)
    plain_loopback = b"\x00\x01" + (6000 ^ 0x2112).to_bytes(2, "big") + bytes((127, 0, 0, 1))
    # Not XORed: decodes as 127.0.0.1 XOR 0x2112A442 = 94.18.164.67, a public address.
    resp = client.request(
        Method.CREATE_PERMISSION, RawAttribute(AttrType.XOR_PEER_ADDRESS, plain_loopback)
    )
    assert code(resp) is None
    assert sorted(server._by_tuple[(CLIENT, LISTEN, "udp")].permissions) == ["94.18.164.67"]
    ind = Message(
        Method.SEND,
        MessageClass.INDICATION,
        client.tid(),
        [RawAttribute(AttrType.XOR_PEER_ADDRESS, plain_loopback), Data(b"x")],
    )
    (out,) = client.send(ind.encode(fingerprint=True))
    assert out.addr == ("94.18.164.67", 6000)
    # Correctly XORed loopback, and malformed address values.
    xored = bytes(a ^ b for a, b in zip(bytes((127, 0, 0, 1)), b"\x21\x12\xa4\x42", strict=True))
    good_loopback = b"\x00\x01\x00\x00" + xored
    malformed = [
        b"\x00\x02\x00\x00" + xored,  # IPv6 family, 4 bytes
        b"\x00\x01\x00\x00" + bytes(16),  # IPv4 family, 16 bytes
        b"\x00\x03\x00\x00" + xored,  # unknown family
        b"\x00\x01\x00",  # truncated
    ]
    resp = client.request(
        Method.CREATE_PERMISSION, RawAttribute(AttrType.XOR_PEER_ADDRESS, good_loopback)
    )
    assert code(resp) == 403
    before = state(server)
    for value in malformed:
        for method in (Method.CREATE_PERMISSION, Method.CHANNEL_BIND):
            resp = client.request(
                method, ChannelNumber(0x4005), RawAttribute(AttrType.XOR_PEER_ADDRESS, value)
            )
            assert code(resp) == 400, (value, method)
        ind = Message(
            Method.SEND,
            MessageClass.INDICATION,
            client.tid(),
            [RawAttribute(AttrType.XOR_PEER_ADDRESS, value), Data(b"x")],
        )
        assert client.send(ind.encode(fingerprint=True)) == []
    assert state(server) == before


def test_channel_bind_and_send_do_not_bypass_create_permission() -> None:
    server, _ = make_server()
    client = dual_allocation(server)
    other = ("198.51.100.21", 7000)
    # Send without a permission: dropped, and it installs nothing (RFC 8656 §11.2).
    ind = Message(
        Method.SEND, MessageClass.INDICATION, client.tid(), [XorPeerAddress(*other), Data(b"x")]
    ).encode(fingerprint=True)
    assert client.send(ind) == []
    assert server._by_tuple[(CLIENT, LISTEN, "udp")].permissions == {}
    # ChannelData on a channel never bound: dropped.
    assert client.send(encode_channel_data(0x4000, b"x")) == []
    # The IPv4-mapped form of a permitted IPv4 peer is another peer.
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) is None
    mapped = Message(
        Method.SEND,
        MessageClass.INDICATION,
        client.tid(),
        [XorPeerAddress("::ffff:" + PEER[0], PEER[1]), Data(b"x")],
    )
    assert client.send(mapped.encode(fingerprint=True)) == []
    # A bound channel reaches its peer only, and never outlives the permission.
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*other)))
        is None
    )
    (out,) = client.send(encode_channel_data(0x4000, b"y"))
    assert (out.addr, out.data) == (other, b"y")
    later = T0 + 301  # permission lifetime 300 s; the channel lives 600 s
    server.handle_timer(later)
    assert client.send(encode_channel_data(0x4000, b"z"), now=later) == []
    # Another user on another 5-tuple cannot use alice's channel or permissions.
    bob = Client(server, addr=CLIENT2, user="bob", password="hunter2")
    assert code(bob.allocate()) is None
    assert bob.send(encode_channel_data(0x4000, b"x")) == []
    steal = Message(
        Method.SEND, MessageClass.INDICATION, bob.tid(), [XorPeerAddress(*PEER), Data(b"x")]
    )
    assert bob.send(steal.encode(fingerprint=True)) == []


# --------------------------------------------------------------------------- limits


def test_quota_per_user_and_in_total() -> None:
    server, relay = make_server(user_quota=2, total_quota=3)
    alice = [Client(server, addr=("203.0.113.7", 40000 + i)) for i in range(3)]
    assert [code(c.allocate()) for c in alice] == [None, None, 486]
    bob = [
        Client(server, addr=("203.0.113.8", 40000 + i), user="bob", password="hunter2")
        for i in range(2)
    ]
    assert [code(c.allocate()) for c in bob] == [None, 486]  # the total is reached
    assert server.allocation_count() == 3 and len(relay.in_use) == 3
    before = state(server)
    assert code(alice[2].allocate()) == 486
    assert state(server) == before
    # Freed by a Refresh with lifetime 0.
    assert code(alice[0].request(Method.REFRESH, Lifetime(0))) is None
    assert code(bob[1].allocate()) is None
    assert code(alice[2].allocate()) == 486


def test_permission_and_channel_limits() -> None:
    server, _ = make_server(max_permissions=3, max_channels=2)
    client = Client(server)
    assert code(client.allocate()) is None
    peers = [(f"198.51.100.{i}", 6000) for i in range(1, 6)]
    for ip, port in peers[:3]:
        assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(ip, port))) is None
    before = state(server)
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*peers[3]))) == 508
    # All or nothing: a known peer with a new one is refused as a whole.
    both = client.request(
        Method.CREATE_PERMISSION, XorPeerAddress(*peers[0]), XorPeerAddress(*peers[4])
    )
    assert code(both) == 508
    assert state(server) == before
    # Refreshing an existing permission is fine.
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*peers[0]))) is None
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*peers[0])))
        is None
    )
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4001), XorPeerAddress(*peers[1])))
        is None
    )
    before = state(server)
    assert (
        code(client.request(Method.CHANNEL_BIND, ChannelNumber(0x4002), XorPeerAddress(*peers[2])))
        == 508
    )  # max_channels
    assert state(server) == before
    # A channel to a new peer would need a fourth permission.
    server2, _ = make_server(max_permissions=1)
    one = Client(server2)
    assert code(one.allocate()) is None
    assert code(one.request(Method.CREATE_PERMISSION, XorPeerAddress(*peers[0]))) is None
    assert (
        code(one.request(Method.CHANNEL_BIND, ChannelNumber(0x4000), XorPeerAddress(*peers[1])))
        == 508
    )


# --------------------------------------------------------------------------- credentials


def test_nonce_expiry_gets_438_and_changes_nothing() -> None:
    server, _ = make_server(nonce_lifetime=60)
    client = Client(server)
    assert code(client.allocate()) is None
    later = T0 + 61  # the nonce is stale, the allocation (600 s) lives on
    stale_refresh = client.signed(Method.REFRESH, Lifetime(3600))
    before = state(server)
    resp = client.exchange(stale_refresh, later)
    assert code(resp) == 438
    assert resp.integrity is None and resp.integrity_sha256 is None  # RFC 8489 §9.2.4
    assert resp.get(Realm) == Realm(REALM) and resp.get(Nonce) is not None
    assert resp.get(PasswordAlgorithms) == PasswordAlgorithms.of(SHA256, MD5)
    assert state(server) == before
    client.creds.challenge(resp)
    assert code(client.request(Method.REFRESH, Lifetime(3600), now=later)) is None


def test_rest_credentials_past_their_expiry_are_refused() -> None:
    wall = [1_700_000_000.0]
    rest = RestSecret("s3cret", clock=lambda: wall[0])
    server, _ = make_server(auth=rest)
    expired = "1699999999:alice"
    old = Client(server, user=expired, password=turn_rest_password("s3cret", expired))
    resp = old.allocate()
    assert code(resp) == 401 and server.allocation_count() == 0
    valid = "1700000600:alice"
    client = Client(server, addr=CLIENT2, user=valid, password=turn_rest_password("s3cret", valid))
    assert code(client.allocate()) is None
    wall[0] = 1_700_000_601.0  # the credential expires while the allocation lives
    before = state(server)
    refresh = client.request(Method.REFRESH, Lifetime(600), now=T0 + 10)
    assert code(refresh) == 401
    assert state(server) == before
    forged = "9999999999:alice"  # a far expiry with a password not made from the secret
    thief = Client(server, addr=("203.0.113.66", 1), user=forged, password="guess")
    assert code(thief.allocate()) == 401


def test_bad_credentials_and_wrong_integrity_get_401_and_change_nothing() -> None:
    server, _ = make_server()
    client = Client(server)
    assert code(client.allocate()) is None
    assert code(client.request(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))) is None
    before = state(server)
    failures = server.stats.auth_failures

    attempts: list[bytes] = []
    for user, password in (("alice", "wrong"), ("mallory", "secret"), ("bob", "secret")):
        other = Client(server, user=user, password=password)
        other.login()
        attempts.append(other.signed(Method.REFRESH, Lifetime(0)))
    refresh = Message(Method.REFRESH, MessageClass.REQUEST, client.tid(), [Lifetime(0)])
    good = client.creds.sign(refresh, fingerprint=False)  # FINGERPRINT would catch it first
    flipped = bytearray(good)
    flipped[-1] ^= 1  # inside MESSAGE-INTEGRITY-SHA256
    attempts.append(bytes(flipped))
    body = bytearray(good)
    body[27] ^= 1  # an attribute the integrity covers (LIFETIME's value)
    attempts.append(bytes(body))
    md5 = LongTermCredentials("alice", "secret", algorithms=(MD5,))
    md5.challenge(
        client.exchange(Message(Method.REFRESH, MessageClass.REQUEST, client.tid()).encode())
    )
    weak = bytearray(md5.sign(refresh, fingerprint=False))
    weak[-1] ^= 1  # inside MESSAGE-INTEGRITY (HMAC-SHA1)
    attempts.append(bytes(weak))
    other_realm = LongTermCredentials("alice", "secret")
    resp = client.exchange(
        Message(Method.REFRESH, MessageClass.REQUEST, client.tid()).encode(fingerprint=True)
    )
    other_realm.challenge(resp)
    other_realm.realm = "evil.example"
    attempts.append(
        other_realm.sign(Message(Method.REFRESH, MessageClass.REQUEST, client.tid(), [Lifetime(0)]))
    )
    for data in attempts:
        resp = client.exchange(data)
        assert code(resp) == 401, resp
        assert resp.get(Realm) == Realm(REALM) and resp.get(Nonce) is not None
        assert resp.integrity is None and resp.integrity_sha256 is None
        assert state(server) == before
    assert server.stats.auth_failures == failures + len(attempts)
    # With FINGERPRINT, a changed byte is silently discarded (RFC 8489 §7.3).
    signed = bytearray(client.signed(Method.REFRESH, Lifetime(0)))
    signed[-12] ^= 1
    assert client.send(bytes(signed)) == []
    assert state(server) == before


def test_replayed_requests_get_the_rfc_answer_and_change_nothing() -> None:
    # No rate limit: every replay below must get its (unsigned) answer to be checked.
    server, _ = make_server(nonce_lifetime=600, unauthenticated_rate=None)
    client = Client(server)
    allocate = client.signed(Method.ALLOCATE, RequestedTransport())
    first = client.exchange(allocate)
    assert code(first) is None
    permission = client.signed(Method.CREATE_PERMISSION, XorPeerAddress(*PEER))
    assert code(client.exchange(permission)) is None
    refresh = client.signed(Method.REFRESH, Lifetime(600))
    assert code(client.exchange(refresh)) is None
    before = state(server)

    # The same Allocate again on its 5-tuple: a retransmission, the same response (§7.2).
    (again,) = client.send(allocate, T0 + 5)
    assert again.data == first.raw and state(server) == before
    # The same transaction id with other content: 437 Allocation Mismatch.
    tid = first.transaction_id
    other = client.creds.sign(
        Message(Method.ALLOCATE, MessageClass.REQUEST, tid, [RequestedTransport(), Lifetime(1200)])
    )
    assert code(client.exchange(other, T0 + 5)) == 437
    assert state(server) == before
    # From another IP (a spoofed source): the nonce is bound to the 5-tuple, 438.
    for data in (allocate, permission, refresh):
        assert code(client.exchange(data, T0 + 10, addr=CLIENT2)) == 438
    assert state(server) == before and server.allocation_count() == 1
    # From the same IP, another port (another 5-tuple), from 200 ports: 438 every time and
    # no allocation (issue 24: the nonce used to be bound to the IP only).
    for port in range(1, 201):
        for data in (allocate, permission, refresh):
            assert code(client.exchange(data, T0 + 10, addr=(CLIENT[0], port))) == 438
    # Over another transport from the same address, or to another listener: 438 too.
    out = client.server
    out.receive_datagram(allocate, CLIENT, LISTEN, T0 + 10, transport="tcp")
    (tcp,) = out.datagrams_to_send(T0 + 10)
    assert code(Message.decode(tcp.data)) == 438
    out.receive_datagram(allocate, CLIENT, (LISTEN[0], 3479), T0 + 10)
    (other_listener,) = out.datagrams_to_send(T0 + 10)
    assert code(Message.decode(other_listener.data)) == 438
    assert state(server) == before and server.allocation_count() == 1
    # Later, once the nonce has expired: 438, nothing refreshed.
    later = T0 + 601
    server.handle_timer(later)
    before = state(server)
    for data in (permission, refresh):
        assert code(client.exchange(data, later)) == 438
    assert state(server) == before


# --------------------------------------------------------------------------- flood


def _flood(server: TurnServer, first: int, count: int, start: float) -> int:
    """Unauthenticated traffic of every kind from ``count`` distinct sources, 1,000 new
    sources a second from ``start``; returns the number of answers (every datagram is
    collected, as an adapter would)."""
    allocate = Message(
        Method.ALLOCATE, MessageClass.REQUEST, b"F" * 12, [RequestedTransport()]
    ).encode(fingerprint=True)
    binding = Message(Method.BINDING, MessageClass.REQUEST, b"B" * 12).encode(fingerprint=True)
    channel = encode_channel_data(0x4000, b"x" * 64)
    send = Message(
        Method.SEND, MessageClass.INDICATION, b"S" * 12, [XorPeerAddress(*PEER), Data(b"x" * 64)]
    ).encode(fingerprint=True)
    bad_mi = Message(
        Method.REFRESH,
        MessageClass.REQUEST,
        b"M" * 12,
        [
            RawAttribute(AttrType.USERNAME, b"alice"),
            Realm(REALM),
            Nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
        ],
    ).encode(key=b"k")
    answers = 0
    for i in range(first, first + count):
        now = start + (i - first) / 1000
        source = (  # one source per /24 (or /64): each is a prefix of its own (issue 24)
            f"198.{i >> 8 & 0xFF}.{i & 0xFF}.7" if i < 65536 else f"2001:db8:{i:x}::7",
            1024 + i % 60000,
        )
        for data in (allocate, binding, channel, send, bad_mi, b"\x00\x01junk"):
            server.receive_datagram(data, source, LISTEN, now)
        server.receive_relay(b"x" * 64, source, (RELAY_IP4, 50000), now)
        out = server.datagrams_to_send(now)
        assert all(t.addr == source and len(t.data) <= UNAUTH_MAX for t in out)
        answers += len(out)
        while server.next_event() is not None:
            pass
    return answers


def test_flood_from_10000_sources_keeps_memory_bounded() -> None:
    server, _ = make_server()
    client = Client(server)
    assert code(client.allocate()) is None
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        answers = _flood(server, 0, FLOOD_SOURCES, T0 + 1)  # 10 s of flood
        gc.collect()
        after_first, _ = tracemalloc.get_traced_memory()
        answers += _flood(server, FLOOD_SOURCES, FLOOD_SOURCES, T0 + 20)  # 10,000 more
        gc.collect()
        after_second, _ = tracemalloc.get_traced_memory()
        answers += _flood(server, 2 * FLOOD_SOURCES, FLOOD_SOURCES, T0 + 40)  # and more
        gc.collect()
        after_third, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    first_growth = after_first - base
    # The capped caches churn from the second flood on; a dict of theirs may still resize
    # during it (a few hundred KB, depending on what ran before in the process), not after:
    # the third flood measures the steady state. Per-source state that is not capped would
    # add at least ~100 B x 10,000 sources = 1 MB at every flood.
    second_growth = after_third - after_second
    # Three answers per source: 401 to the Allocate, the Binding success, 401 to the bad MI.
    assert answers == 3 * 3 * FLOOD_SOURCES
    assert server.allocation_count() == 1  # nothing allocated, nothing per source in TURN
    # Per-source state, all capped: the budget's records (the prefixes whose credit has not
    # grown back yet: the last 20 s, 136 B at 6.8 B/s), StunServer's and the codec's caches
    # of source addresses.
    assert len(server.budget) <= FLOOD_SOURCES + 1  # type: ignore[arg-type]
    assert len(server.stun._v4_cache) <= 4096
    assert len(server._peer_tlvs) <= 4096
    assert len(server._events) <= server._events.maxlen  # type: ignore[operator]
    assert second_growth < FLOOD_GROWTH_MAX, (first_growth, second_growth, peak - base)
    assert first_growth < FLOOD_FIRST_MAX, (first_growth, second_growth, peak - base)


def test_rate_limiter_table_is_capped_under_a_burst_of_sources() -> None:
    """70,000 distinct source prefixes within one instant: the budget forgets the least
    recently used beyond 65,536 records (about 10 MB at most)."""
    server, _ = make_server()
    limiter = server.budget
    assert limiter is not None

    def source(i: int) -> str:
        return f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"  # one /64 each

    for i in range(70_000):
        limiter.charge(source(i), 20, 136, T0)
    assert len(limiter) == 65_536
    assert limiter.charge(source(0), 20, 136, T0)  # forgotten: a fresh record
    assert len(limiter) == 65_536
    limiter.charge("192.0.2.77", 20, 136, T0 + 30)  # 30 s later every record is as new
    assert len(limiter) == 1


def test_rest_credentials_made_with_any_of_several_secrets_are_accepted() -> None:
    """coturn keeps a set of REST API secrets (``turnadmin -s``, once each, for rotation)
    and accepts a password made with any of them: so does a RestSecret given several, alone
    or behind another back-end in a chain; a password made with none of them gets 401."""
    wall = [1_700_000_000.0]
    for auth in (
        RestSecret(["old-secret", "new-secret"], clock=lambda: wall[0]),
        ChainedBackend(
            StaticUsers({"bob": "pw"}, realm=REALM),
            RestSecret(["old-secret", "new-secret"], clock=lambda: wall[0]),
        ),
    ):
        server, _ = make_server(auth=auth)
        for i, secret in enumerate(("old-secret", "new-secret")):
            user = f"1700000600:user{i}"
            client = Client(server, addr=("203.0.113.70", 1000 + i), user=user,
                            password=turn_rest_password(secret, user))  # fmt: skip
            assert code(client.allocate()) is None, secret
        user = "1700000600:mallory"
        other = Client(server, addr=("203.0.113.71", 1), user=user,
                       password=turn_rest_password("another-secret", user))  # fmt: skip
        assert code(other.allocate()) == 401
        assert server.allocation_count() == 2
