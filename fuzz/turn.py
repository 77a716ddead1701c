"""Harness of the TURN server core's receive path (``TurnServer.receive_datagram`` over UDP,
TCP and TLS 5-tuples, ``receive_relay``, timers, closed connections).

The input is a program: a configuration byte, then operations (see :data:`_OPS`). To let
the fuzzer past authentication, the harness itself can build requests and sign them with
valid long-term credentials (it logs in through the real 401 challenge first): the fuzzer
only chooses the method and the attributes, including raw, malformed ones. It can also send
raw bytes, replay what was sent before, cut a byte out of a signed request (a wrong
MESSAGE-INTEGRITY), send ChannelData and Send indications, feed peer traffic to relayed
addresses and move the clock.

Contracts checked after every operation:

- nothing escapes ``receive_datagram`` / ``receive_relay`` / ``handle_timer`` /
  ``connection_closed`` (TurnServer: "Bad network input never raises");
- data leaves a relayed address only to a peer the allocation has a live permission for,
  that the peer filter accepts and that an independent reading of the documented default
  policy (:func:`reference_allowed`) accepts, never to a listener or the relay itself;
- every STUN answer to a client decodes and has a valid FINGERPRINT; an unsigned one (the
  only kind an unauthenticated source can get) is at most :data:`UNAUTH_ANSWER_MAX` bytes;
- input that is not validly signed (raw bytes, unsigned requests, a corrupted signature, a
  replay from another IP) changes no allocation, permission or channel;
- the bookkeeping adds up: counters match the tables, quotas and per-allocation limits hold,
  and the relay allocator holds exactly the addresses of live allocations (no leak).
"""

from __future__ import annotations

import inspect
import ipaddress
from dataclasses import dataclass, field

from anchor_stun.attributes import (
    AdditionalAddressFamily,
    Attribute,
    AttrType,
    ChannelNumber,
    Data,
    DontFragment,
    EvenPort,
    Lifetime,
    PasswordAlgorithmId,
    RawAttribute,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    XorPeerAddress,
)
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.integrity import LongTermCredentials
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.server import StunServer
from anchor_turn.auth import StaticUsers
from anchor_turn.server import TransportName, TurnServer

from .common import Reader, Violation, check, corrupt

REALM = "example.org"
LISTEN: Address = ("192.0.2.1", 3478)
LISTEN_TLS: Address = ("192.0.2.1", 5349)
RELAY_IP4 = "192.0.2.100"
RELAY_IP6 = "2001:db8::100"
USERS = StaticUsers({"alice": "secret", "bob": "hunter2"}, realm=REALM)
T0 = 1000.0
UNAUTH_ANSWER_MAX = 160
"""Largest unsigned answer (401/438 challenge, 400, Binding response without PADDING):
20 header + ERROR-CODE 438 "Stale Nonce" 20 + REALM 16 + NONCE 44 + PASSWORD-ALGORITHMS 12
+ SOFTWARE 12 + FINGERPRINT 8 = 132, rounded up. A Binding response with PADDING is bounded
by the request instead (fuzz.stun)."""

CLIENTS: tuple[Address, ...] = (
    ("203.0.113.7", 40000),
    ("203.0.113.8", 40001),
    ("2001:db8:1::7", 40002),
    ("::ffff:203.0.113.9", 40003),
)
TRANSPORTS: tuple[TransportName, ...] = ("udp", "tcp", "tls")
PEER_IPS = (
    "198.51.100.20",  # allowed
    "2001:db8:2::20",  # allowed
    "203.0.113.8",  # another client's IP: allowed
    RELAY_IP4,  # relayed addresses (of this or another allocation)
    "127.0.0.1",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "2002:7f00:1::1",
    "64:ff9b::7f00:1",
    "0.0.0.0",
    "::",
    "255.255.255.255",
    "224.0.0.1",
    "ff02::1",
    "fe80::1",
    "169.254.169.254",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "fc00::1",
    LISTEN[0],
)
PEER_PORTS = (6000, LISTEN[1], LISTEN_TLS[1], 50000, 50001, 0, 1, 65535)
_METHODS: tuple[int, ...] = (
    Method.ALLOCATE,
    Method.REFRESH,
    Method.CREATE_PERMISSION,
    Method.CHANNEL_BIND,
    Method.BINDING,
    Method.SEND,
    Method.DATA,
)
_RAW_TYPES = (
    AttrType.XOR_PEER_ADDRESS,
    AttrType.CHANNEL_NUMBER,
    AttrType.LIFETIME,
    AttrType.REQUESTED_TRANSPORT,
    AttrType.REQUESTED_ADDRESS_FAMILY,
    AttrType.ADDITIONAL_ADDRESS_FAMILY,
    AttrType.EVEN_PORT,
    AttrType.RESERVATION_TOKEN,
    AttrType.DATA,
    AttrType.DONT_FRAGMENT,
    AttrType.USERNAME,
    AttrType.NONCE,
    AttrType.REALM,
    AttrType.PASSWORD_ALGORITHM,
    AttrType.ICMP,
    0x0030,  # unknown, comprehension-required
    0xC001,  # unknown, comprehension-optional
)
_HAS_STRICT_CHANNELS = "strict_channels" in inspect.signature(TurnServer).parameters

# The documented default policy (PeerFilter), written independently of PeerFilter.
_DENIED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)


def reference_allowed(ip: str) -> bool:
    """Whether the default peer filter's documented policy lets data go to ``ip``: not
    loopback, RFC 1918, unique-local, link-local, multicast, unspecified nor broadcast, and
    an IPv4-mapped IPv6 address judged as the IPv4 address it maps."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not any(addr.version == net.version and addr in net for net in _DENIED)


@dataclass
class FakeRelay:
    """A RelayAllocator with a few ports: hands out 50000, 50001, ... per family."""

    capacity: int = 6
    next_port: int = 50000
    in_use: set[Address] = field(default_factory=set)
    ever: set[Address] = field(default_factory=set)
    reservations: dict[bytes, Address] = field(default_factory=dict)

    def allocate(
        self, family: int, even_port: bool, reserve_next: bool, token: bytes | None, now: float
    ) -> tuple[Address, bytes | None] | None:
        if token is not None:
            addr = self.reservations.pop(token, None)
            if addr is None or addr in self.in_use:
                return None
            self.in_use.add(addr)
            self.ever.add(addr)
            return addr, None
        if len(self.in_use) >= self.capacity:
            return None
        port = self.next_port + (1 if even_port and self.next_port % 2 else 0)
        self.next_port = port + (2 if reserve_next else 1)
        addr = (RELAY_IP4 if family == 1 else RELAY_IP6, port)
        self.in_use.add(addr)
        self.ever.add(addr)
        token_out = None
        if reserve_next:
            token_out = b"tok" + port.to_bytes(5, "big")
            self.reservations[token_out] = (addr[0], port + 1)
        return addr, token_out

    def release(self, addr: Address) -> None:
        check(addr in self.in_use, f"release of {addr}, which is not in use")
        self.in_use.discard(addr)


def _counter_rng() -> object:
    state = [0]

    def rng(n: int) -> bytes:
        state[0] += 1
        return bytes((state[0] * 7 + i) & 0xFF for i in range(n))

    return rng


class _Session:
    """The harness's view of one TURN server under test."""

    def __init__(self, config: int) -> None:
        small = bool(config & 1)
        options: dict[str, object] = {
            "realm": REALM,
            "auth": USERS,
            "relay": FakeRelay(),
            "stun": StunServer(primary=LISTEN),
            "rng": _counter_rng(),
            "user_quota": 2 if small else None,
            "total_quota": 3 if small else None,
            "max_permissions": 3 if small else 256,
            "max_channels": 2 if small else 4096,
            "password_algorithms": () if config & 2 else (2, 1),
            "username_anonymity": bool(config & 4),
            "nonce_lifetime": 30.0 if config & 16 else 600.0,
        }
        if _HAS_STRICT_CHANNELS:
            options["strict_channels"] = bool(config & 8)
        self.server = TurnServer(**options)  # type: ignore[arg-type]
        self.relay: FakeRelay = options["relay"]  # type: ignore[assignment]
        self.now = T0
        self.creds: dict[tuple[int, str, int], LongTermCredentials] = {}
        self.sent: list[tuple[bytes, int, TransportName]] = []
        self.tid = 0

    # ------------------------------------------------------------------ helpers

    def next_tid(self) -> bytes:
        self.tid += 1
        return b"fz" + self.tid.to_bytes(10, "big")

    def local_for(self, transport: TransportName) -> Address:
        return LISTEN_TLS if transport == "tls" else LISTEN

    def deliver(self, data: bytes, client: int, transport: TransportName) -> list[Transmit]:
        self.server.receive_datagram(
            data, CLIENTS[client], self.local_for(transport), self.now, transport=transport
        )
        return self.server.datagrams_to_send(self.now)

    def credentials(self, client: int, transport: TransportName, user: int) -> LongTermCredentials:
        key = (client, transport, user)
        creds = self.creds.get(key)
        if creds is None:
            if user:
                creds = LongTermCredentials("bob", "hunter2", algorithms=(PasswordAlgorithmId.MD5,))
            else:
                creds = LongTermCredentials("alice", "secret")
            self.creds[key] = creds
        if not creds.ready:
            login = Message(
                Method.ALLOCATE, MessageClass.REQUEST, self.next_tid(), [RequestedTransport()]
            ).encode(fingerprint=True)
            for out in self.deliver(login, client, transport):
                resp = Message.decode(out.data)
                if resp.error is not None and resp.error.code == 401:
                    creds.challenge(resp)
        return creds

    def snapshot(self) -> object:
        """Everything a request could change: allocations, relays, permissions, channels."""
        server = self.server
        return sorted(
            (
                repr(key),
                alloc.username,
                sorted((f, r.addr, r.expires) for f, r in alloc.relays.items()),
                sorted((ip, p.expires) for ip, p in alloc.permissions.items()),
                sorted((n, c.peer, c.expires) for n, c in alloc.channels.items()),
            )
            for key, alloc in server._by_tuple.items()
        )

    # ------------------------------------------------------------------ the audit

    def audit(self, outputs: list[Transmit], request: bytes | None) -> None:
        server, relay, now = self.server, self.relay, self.now
        listeners = {LISTEN, LISTEN_TLS}
        for out in outputs:
            if out.local in relay.ever:  # client data to a peer
                ip = out.addr[0]
                check(server.peer_filter(ip), f"data to {out.addr}, which the filter refuses")
                check(reference_allowed(ip), f"data to {out.addr} (default policy refuses)")
                check(out.addr not in listeners and out.addr != out.local, f"loop to {out.addr}")
                rel = server._relays.get(out.local)
                check(rel is not None, f"data from {out.local}, not a live relayed address")
                assert rel is not None
                perm = rel.allocation.permissions.get(ip)
                check(perm is not None and perm.expires > now, f"data to {ip}: no permission")
                continue
            check(out.local in listeners, f"answer from {out.local}")
            check(out.addr in CLIENTS, f"answer to {out.addr}")
            first = out.data[0]
            if first < 0x40:
                try:
                    msg = Message.decode(out.data)
                except DecodeError as exc:
                    raise Violation(f"the server sent undecodable STUN: {exc}") from exc
                check(msg.verify_fingerprint(), "an answer without a valid FINGERPRINT")
                unsigned = msg.integrity is None and msg.integrity_sha256 is None
                if unsigned and msg.msg_class == MessageClass.ERROR and request is not None:
                    check(
                        len(out.data) <= UNAUTH_ANSWER_MAX,
                        f"{len(out.data)}-byte unsigned error answer",
                    )
            else:
                check(0x40 <= first <= 0x7F, f"answer starting with {first:#x}")
        # Bookkeeping adds up.
        allocs = list(server._by_tuple.values())
        stats = server.stats
        check(stats.allocations == len(allocs), "stats.allocations is off")
        check(stats.permissions == sum(len(a.permissions) for a in allocs), "permissions")
        check(stats.channels == sum(len(a.channels) for a in allocs), "channels count")
        check(relay.in_use == set(server._relays), "relay allocator and server disagree")
        per_user: dict[str, int] = {}
        for alloc in allocs:
            per_user[alloc.username] = per_user.get(alloc.username, 0) + 1
            check(len(alloc.permissions) <= server.max_permissions, "max_permissions broken")
            check(len(alloc.channels) <= server.max_channels, "max_channels broken")
            check(len(alloc.by_peer) == len(alloc.channels), "channel tables disagree")
            for relay_ in alloc.relays.values():
                check(server._relays.get(relay_.addr) is relay_, "relay table disagrees")
        check(per_user == server._per_user, "per-user counts are off")
        if server.user_quota is not None:
            check(all(n <= server.user_quota for n in per_user.values()), "user quota")
        if server.total_quota is not None:
            check(len(allocs) <= server.total_quota, "total quota broken")


def _attributes(r: Reader) -> list[Attribute]:
    attrs: list[Attribute] = []
    for _ in range(r.byte() % 6):
        kind = r.byte() % 12
        if kind == 0:
            attrs.append(XorPeerAddress(r.pick(PEER_IPS), r.pick(PEER_PORTS)))
        elif kind == 1:
            attrs.append(ChannelNumber(r.u16()))
        elif kind == 2:
            attrs.append(Lifetime(r.pick_or((0, 1, 600, 3600, 0xFFFFFFFF), r.u32)))
        elif kind == 3:
            attrs.append(RequestedTransport(r.pick_or((17, 6), r.byte)))
        elif kind == 4:
            attrs.append(RequestedAddressFamily(r.pick_or((1, 2), r.byte)))
        elif kind == 5:
            attrs.append(AdditionalAddressFamily(r.pick_or((2, 1), r.byte)))
        elif kind == 6:
            attrs.append(EvenPort(bool(r.byte() & 1)))
        elif kind == 7:
            attrs.append(ReservationToken(r.pick((b"tok" + (50000).to_bytes(5, "big"), b"x" * 8))))
        elif kind == 8:
            attrs.append(Data(r.chunk()))
        elif kind == 9:
            attrs.append(DontFragment())
        elif kind == 10:
            attrs.append(XorPeerAddress(r.pick(PEER_IPS), r.u16()))
        else:
            attrs.append(RawAttribute(r.pick(_RAW_TYPES), r.chunk()))
    return attrs


def _channel_number(session: _Session, r: Reader) -> int:
    bound = [n for a in session.server._by_tuple.values() for n in a.channels]
    choice = r.byte()
    if bound and choice & 1:
        return bound[(choice >> 1) % len(bound)]
    return 0x4000 + (r.byte() if choice & 2 else r.u16() & 0x3FFF)


def turn_server(data: bytes) -> None:
    """Run one program against a fresh TurnServer (module docstring)."""
    r = Reader(data)
    session = _Session(r.byte())
    server = session.server
    for _ in range(64):
        if not r.left:
            break
        op = r.byte() % 10
        client = r.byte() % len(CLIENTS)
        transport = TRANSPORTS[r.byte() % 3]
        request: bytes | None = None
        before = None
        stateless = False  # True when the operation must not change allocations

        if op == 0:  # raw bytes from a client
            request = r.chunk()
            server.handle_timer(session.now)
            before, stateless = session.snapshot(), True
            outputs = session.deliver(request, client, transport)
        elif op in (1, 2):  # a validly signed request, or the same with one byte changed
            user = r.byte() & 1
            creds = session.credentials(client, transport, user)
            method = r.pick_or(_METHODS, lambda: r.u16() & 0x0FFF)
            msg = Message(method, MessageClass.REQUEST, session.next_tid(), _attributes(r))
            if not creds.ready:
                continue
            try:
                request = creds.sign(msg, fingerprint=bool(r.byte() & 1))
            except LocalProtocolError:  # attributes too long for one message
                continue
            if op == 2:  # corrupt a byte that the integrity attribute covers
                request = corrupt(request, r)
                server.handle_timer(session.now)
                before, stateless = session.snapshot(), True
            else:
                session.sent.append((request, client, transport))
            outputs = session.deliver(request, client, transport)
            if op == 1:
                for out in outputs:  # keep the credentials fresh, like a client does
                    if out.data[0] < 0x40:
                        resp = Message.decode(out.data)
                        if resp.error is not None and resp.error.code == 438:
                            creds.challenge(resp)
        elif op == 3:  # replay something signed, maybe from elsewhere
            if not session.sent:
                continue
            request, origin, transport = session.sent[r.byte() % len(session.sent)]
            if CLIENTS[client][0] != CLIENTS[origin][0]:  # the nonce is bound to the IP
                server.handle_timer(session.now)
                before, stateless = session.snapshot(), True
            outputs = session.deliver(request, client, transport)
        elif op == 4:  # unsigned request built by the harness
            method = r.pick_or(_METHODS, lambda: r.u16() & 0x0FFF)
            klass = MessageClass(r.byte() & 3)
            try:
                request = Message(method, klass, session.next_tid(), _attributes(r)).encode(
                    fingerprint=bool(r.byte() & 1)
                )
            except LocalProtocolError:
                continue
            server.handle_timer(session.now)
            before, stateless = session.snapshot(), True
            outputs = session.deliver(request, client, transport)
        elif op == 5:  # ChannelData
            number = _channel_number(session, r)
            payload = r.chunk()
            pad = b"\x00" * (r.byte() % 4)
            frame = number.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload + pad
            server.handle_timer(session.now)
            before, stateless = session.snapshot(), True
            outputs = session.deliver(frame, client, transport)
        elif op == 6:  # Send indication
            peer = (r.pick(PEER_IPS), r.pick(PEER_PORTS))
            attrs: list[Attribute] = [XorPeerAddress(*peer), Data(r.chunk())]
            if r.byte() & 1:
                attrs.extend(_attributes(r))
            ind = Message(Method.SEND, MessageClass.INDICATION, session.next_tid(), attrs)
            server.handle_timer(session.now)
            before, stateless = session.snapshot(), True
            try:
                request = ind.encode(fingerprint=bool(r.byte() & 1))
            except LocalProtocolError:
                continue
            outputs = session.deliver(request, client, transport)
        elif op == 7:  # a peer sends to a relayed address
            relays = sorted(session.relay.ever) or [(RELAY_IP4, 50000)]
            relayed = relays[r.byte() % len(relays)]
            peer = (r.pick(PEER_IPS), r.pick(PEER_PORTS))
            payload = r.chunk()
            server.handle_timer(session.now)
            before, stateless = session.snapshot(), True
            server.receive_relay(payload, peer, relayed, session.now)
            outputs = server.datagrams_to_send(session.now)
            for out in outputs:
                rel = server._relays.get(relayed)
                check(rel is not None, f"peer data through {relayed}, not a live relay")
                assert rel is not None
                alloc = rel.allocation
                check((out.addr, out.local) == (alloc.client, alloc.local), "data to a stranger")
                perm = alloc.permissions.get(peer[0])
                check(perm is not None and perm.expires > session.now, "peer data let in")
        elif op == 8:  # time passes
            session.now += r.pick((0.001, 1.0, 29.0, 31.0, 299.0, 301.0, 601.0, 3601.0))
            server.handle_timer(session.now)
            timer = server.next_timer()
            check(timer is None or timer > session.now, "next_timer() in the past")
            outputs = server.datagrams_to_send(session.now)
        else:  # a TCP/TLS connection closes
            server.connection_closed(CLIENTS[client], session.local_for(transport), session.now)
            outputs = server.datagrams_to_send(session.now)

        session.audit(outputs, request)
        if stateless:
            check(
                session.snapshot() == before,
                f"operation {op} without valid credentials changed state",
            )
        while server.next_event() is not None:
            pass
