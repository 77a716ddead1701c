"""Issue 23: inputs checked where they enter, closed ports named at once.

Must-show 1: every public entry point given a malformed argument raises a typed error naming
the argument, and a spy on real sockets (``socket.socket`` wrapped so that every bind, listen,
connect and send is recorded, and ``socket.getaddrinfo``, whose name lookups send DNS queries)
proves nothing was resolved, bound or sent. Must-show 2 (gathering): a STUN or TURN server on a
closed port is a gathering failure naming the address as unreachable, not a timeout; the same
for RFC 5780 NAT discovery (``discover_nat``, ``anchor stun --nat``), whose socket is not
connected, at the primary or at the alternate address.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import anchor_stun
from anchor_cli import turn as turn_cli
from anchor_cli.main import build_parser
from anchor_ice.agent import IceAgent
from anchor_ice.aio.connection import Connection, IceFailedError
from anchor_ice.aio.gather import (
    GatheredSocket,
    Gatherer,
    TurnServerConfig,
    turn_server_configs,
)
from anchor_ice.candidate import Candidate, CandidateType, candidate_priority, pair_priority
from anchor_ice.nominator import GatewayNominator, RelayOnly, StandardNominator
from anchor_ice.sdp import parse
from anchor_link.aio.endpoint import LinkEndpoint
from anchor_link.aio.signal import (
    InProcessSignalling,
    RendezvousServer,
    WebSocketSignalling,
    serve_rendezvous,
)
from anchor_link.congestion import Cubic, NewReno, Pacer
from anchor_link.handshake import LinkHandshake, TrickleBox
from anchor_link.identity import (
    Identity,
    format_public,
    load_identity,
    load_or_create_identity,
)
from anchor_link.reliable import ReliableChannel
from anchor_link.seal import Sealer
from anchor_link.state import LinkFormationFailed, LinkMachine
from anchor_link.trust import KnownPeers, TrustPolicy
from anchor_stun import address
from anchor_stun.address import parse_address
from anchor_stun.aio import net
from anchor_stun.aio.net import (
    StunServerRunner,
    StunTransport,
    binding_request,
    client_tls_context,
    discover_nat,
)
from anchor_stun.attributes import (
    AddressErrorCode,
    AttrType,
    ChangeRequest,
    Data,
    ErrorCode,
    ErrorCodeAttribute,
    OtherAddress,
    PasswordAlgorithms,
    RequestedAddressFamily,
    RequestedTransport,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    enum_member,
    pack_ip,
    unpack_ip,
)
from anchor_stun.budget import AnswerBudget
from anchor_stun.check import CheckKey
from anchor_stun.errors import (
    AllocationError,
    DestinationUnreachable,
    LocalProtocolError,
    StunErrorResponse,
    TransactionTimeout,
    error_text,
)
from anchor_stun.events import format_address
from anchor_stun.integrity import (
    LongTermCredentials,
    long_term_key,
    opaque_string,
    short_term_key,
    turn_rest_password,
    userhash,
)
from anchor_stun.message import HmacKey, Message, MessageClass, Method
from anchor_stun.nat import NatDiscovery
from anchor_stun.server import StunServer
from anchor_stun.transaction import ClientTransaction, StunClient
from anchor_turn.aio.check import CheckConfig, run_check
from anchor_turn.aio.client import TurnConnection
from anchor_turn.aio.server import TurnServerRunner, UdpRelayAllocator, loopback_runner
from anchor_turn.auth import ChainedBackend, RestSecret, SqliteUsers, StaticUsers
from anchor_turn.channeldata import encode_channel_data
from anchor_turn.client import TurnClient
from anchor_turn.events import AllocationCreated
from anchor_turn.nonce_auth import NonceAuthenticator
from anchor_turn.peer_filter import PeerFilter, SelfAddresses
from anchor_turn.server import AllocationCreatedEvent, TurnServer
from anchor_turn.uri import parse_turn_uri
from tests.helpers import ANCHOR, free_port, free_port_block, run_anchor

LOOPBACK = "127.0.0.1"


class _Spy:
    """Records every bind, listen, connect and send of every socket made while installed
    (AF_UNIX ones excepted: the event loop's self-pipe)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Spy]:
    record = _Spy()
    real = socket.socket

    class SpySocket(real):  # type: ignore[valid-type,misc]
        def _note(self, what: str, where: Any) -> None:
            if self.family != socket.AF_UNIX:
                record.calls.append((what, where))

        def connect(self, address: Any) -> None:
            self._note("connect", address)
            super().connect(address)

        def connect_ex(self, address: Any) -> int:
            self._note("connect", address)
            return int(super().connect_ex(address))

        def sendto(self, data: Any, *args: Any) -> int:
            self._note("sendto", args[-1])
            return int(super().sendto(data, *args))

        def send(self, data: Any, *args: Any) -> int:
            self._note("send", None)
            return int(super().send(data, *args))

        def sendall(self, data: Any, *args: Any) -> None:
            self._note("send", None)
            super().sendall(data, *args)

        def sendmsg(self, *args: Any) -> int:
            self._note("sendmsg", args[3] if len(args) > 3 else None)
            return int(super().sendmsg(*args))

        def bind(self, address: Any) -> None:
            self._note("bind", address)
            super().bind(address)

        def listen(self, *args: Any) -> None:
            self._note("listen", None)
            super().listen(*args)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        record.calls.append(("getaddrinfo", host))  # a name lookup may send a DNS query
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", SpySocket)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield record


def _endpoint(**kw: Any) -> LinkEndpoint:
    return LinkEndpoint("a", InProcessSignalling(), host_ips=[LOOPBACK], **kw)


def _send(data: bytes, addr: Any) -> None:
    raise AssertionError("nothing may be sent")


def _turn_core() -> TurnServer:
    """A well-formed TURN core (building it binds nothing: the runner does)."""
    return TurnServer(
        realm="r", auth=StaticUsers({"u": "p"}, realm="r"), relay=UdpRelayAllocator([LOOPBACK]),
        stun=StunServer(primary=GOOD), allow_loopback_peers=True,
    )


def _request() -> bytes:
    return Message(Method.BINDING, MessageClass.REQUEST, b"t" * 12).encode()


def _encoded(attribute: Any) -> bytes:
    return Message(Method.BINDING, MessageClass.INDICATION, b"t" * 12, [attribute]).encode()


def _users() -> StaticUsers:
    return StaticUsers({"u": "p"}, realm="r")


def _turn_server(**kw: Any) -> TurnServer:
    options: dict[str, Any] = {
        "realm": "r", "auth": _users(), "relay": UdpRelayAllocator([LOOPBACK]), **kw,
    }
    return TurnServer(**options)


def _candidate(**kw: Any) -> Candidate:
    fields: dict[str, Any] = {
        "foundation": "1", "component": 1, "transport": "udp", "priority": 2130706431,
        "ip": LOOPBACK, "port": 5000, "type": CandidateType.HOST, **kw,
    }
    return Candidate(**fields)


class _NotARouter:
    async def start(self, deliver: Any) -> None:
        pass


GOOD = (LOOPBACK, 3478)
# (entry point, call with one malformed argument, what the error must name)
CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("TurnServerConfig port", lambda: TurnServerConfig("127.0.0.1:0", "alice", "secret"),
     "TurnServerConfig address"),
    ("TurnServerConfig type", lambda: TurnServerConfig(42, "a", "b"),  # type: ignore[arg-type]
     "TurnServerConfig address"),
    ("TurnServerConfig user", lambda: TurnServerConfig(GOOD, "", "secret"),
     "TurnServerConfig username"),
    ("TurnServerConfig password",
     lambda: TurnServerConfig(GOOD, "alice", None),  # type: ignore[arg-type]
     "TurnServerConfig password"),
    ("TurnServerConfig transport", lambda: TurnServerConfig(GOOD, "a", "b", "sctp"),  # type: ignore[arg-type]
     "TurnServerConfig transport"),
    ("TurnServerConfig.from_uri", lambda: TurnServerConfig.from_uri("turn:[::1", "a", "b"),
     "TURN URI"),
    ("turn_server_configs", lambda: turn_server_configs([(LOOPBACK, 3478)]), "turn_servers[0]"),
    ("Gatherer stun_servers", lambda: Gatherer([LOOPBACK], stun_servers="127.0.0.1:70000"),
     "stun_servers"),
    ("Gatherer stun_servers item",
     lambda: Gatherer([LOOPBACK], stun_servers=[GOOD, (LOOPBACK, "3478")]),  # type: ignore[list-item]
     "stun_servers[1]"),
    ("Gatherer turn_servers",
     lambda: Gatherer([LOOPBACK], turn_servers=[(LOOPBACK, 3478, "u", "")]),
     "turn_servers[0]: TurnServerConfig password"),
    ("Gatherer port_range", lambda: Gatherer([LOOPBACK], port_range=(5000, 10)), "port_range"),
    ("Gatherer component", lambda: Gatherer([LOOPBACK], component=0), "component"),
    ("Gatherer host_ips", lambda: Gatherer(LOOPBACK), "host_ips"),
    ("Connection stun_server", lambda: Connection(True, stun_server=(LOOPBACK, "3478")),
     "stun_server"),
    ("Connection turn_server", lambda: Connection(True, turn_server="127.0.0.1:99999",
                                                  turn_username="u", turn_password="p"),
     "turn_server"),
    ("Connection turn_username", lambda: Connection(True, turn_server="127.0.0.1:3478"),
     "turn_username"),
    ("Connection turn_password", lambda: Connection(True, turn_server="127.0.0.1:3478",
                                                    turn_username="u", turn_password=""),
     "turn_password"),
    ("Connection turn_servers",
     lambda: Connection(True, turn_servers=[(LOOPBACK, 0, "u", "p")]), "turn_servers[0]"),
    ("Connection turn_transport", lambda: Connection(True, turn_transport="sctp"),
     "turn_transport"),
    ("Connection policy", lambda: Connection(True, policy="bogus"), "policy"),
    ("Connection relay without TURN", lambda: Connection(True, policy="relay"),
     "policy='relay' needs a TURN server"),
    ("Connection port_range", lambda: Connection(True, port_range=(0, 10)), "port_range"),
    ("LinkEndpoint turn", lambda: _endpoint(turn=[(LOOPBACK, 0, "u", "p")]), "turn[0]"),
    ("LinkEndpoint turn item", lambda: _endpoint(turn=["127.0.0.1:3478"]), "turn[0]"),
    ("LinkEndpoint stun", lambda: _endpoint(stun="127.0.0.1:x"), "stun"),
    ("LinkEndpoint relay without TURN", lambda: _endpoint(policy="relay"),
     "policy='relay' needs a TURN server"),
    ("LinkEndpoint policy", lambda: _endpoint(policy="bogus"), "policy"),
    ("TurnConnection.connect server", lambda: TurnConnection.connect((LOOPBACK, 70000), "u", "p"),
     "server"),
    ("TurnConnection.connect username", lambda: TurnConnection.connect(GOOD, "", "p"),
     "username"),
    ("TurnConnection.connect password",
     lambda: TurnConnection.connect(GOOD, "u", 5),  # type: ignore[arg-type]
     "password"),
    ("TurnConnection.connect transport",
     lambda: TurnConnection.connect(GOOD, "u", "p", "sctp"),  # type: ignore[arg-type]
     "transport"),
    ("TurnConnection.connect timeout", lambda: TurnConnection.connect(GOOD, "u", "p", timeout=0),
     "timeout"),
    ("TurnConnection.connect local",
     lambda: TurnConnection.connect(GOOD, "u", "p", local=("127.0.0.1", -1)), "local"),
    ("TurnConnection.over server",
     lambda: TurnConnection.over(_send, "127.0.0.1", "u", "p", local=(LOOPBACK, 1)),  # type: ignore[arg-type]
     "server"),
    ("TurnConnection.over username",
     lambda: TurnConnection.over(_send, GOOD, "", "p", local=(LOOPBACK, 1)), "username"),
    ("binding_request server", lambda: binding_request("127.0.0.1:99999"), "server"),
    ("binding_request tuple", lambda: binding_request((LOOPBACK, 3478, "x")),  # type: ignore[arg-type]
     "server"),
    ("binding_request timeout", lambda: binding_request(GOOD, timeout=-1), "timeout"),
    ("binding_request transport", lambda: binding_request(GOOD, "quic"),  # type: ignore[arg-type]
     "transport"),
    ("discover_nat server", lambda: discover_nat(("", 3478)), "server"),
    ("discover_nat timeout", lambda: discover_nat(GOOD, timeout=0), "timeout"),
    ("GatheredSocket.bind port_range",
     lambda: GatheredSocket.bind(LOOPBACK, port_range=(10, 5)), "port_range"),
    # the rendezvous and its clients
    ("RendezvousServer host", lambda: serve_rendezvous("", 0), "host"),
    ("RendezvousServer host tuple", lambda: serve_rendezvous(GOOD, 0), "host"),  # type: ignore[arg-type]
    ("RendezvousServer port", lambda: serve_rendezvous(LOOPBACK, 70000), "port"),
    ("RendezvousServer port text", lambda: serve_rendezvous(LOOPBACK, "8765"), "port"),  # type: ignore[arg-type]
    ("RendezvousServer allowed", lambda: RendezvousServer(LOOPBACK, 0, allowed="anchor1:x"),
     "allowed"),
    ("RendezvousServer allowed item",
     lambda: RendezvousServer(LOOPBACK, 0, allowed=["anchor1:nope"]), "allowed[0]"),
    ("RendezvousServer ssl", lambda: RendezvousServer(LOOPBACK, 0, ssl="cert.pem"), "ssl"),  # type: ignore[arg-type]
    ("RendezvousServer auth_timeout", lambda: RendezvousServer(LOOPBACK, 0, auth_timeout=0),
     "auth_timeout"),
    ("RendezvousServer max_per_source",
     lambda: RendezvousServer(LOOPBACK, 0, max_per_source=0), "max_per_source"),
    ("RendezvousServer max_connections",
     lambda: RendezvousServer(LOOPBACK, 0, max_connections=0), "max_connections"),
    ("RendezvousServer rate", lambda: RendezvousServer(LOOPBACK, 0, rate=-1), "rate"),
    ("RendezvousServer router",
     lambda: RendezvousServer(LOOPBACK, 0, router=_NotARouter()), "router"),  # type: ignore[arg-type]
    ("WebSocketSignalling url", lambda: WebSocketSignalling("127.0.0.1:8765"), "url"),
    ("WebSocketSignalling url scheme", lambda: WebSocketSignalling("http://127.0.0.1:8765"),
     "url"),
    ("WebSocketSignalling url port", lambda: WebSocketSignalling("ws://127.0.0.1:99999"), "url"),
    ("WebSocketSignalling url type", lambda: WebSocketSignalling(GOOD), "url"),  # type: ignore[arg-type]
    ("WebSocketSignalling name", lambda: WebSocketSignalling("ws://127.0.0.1:8765", ""), "name"),
    ("WebSocketSignalling identity",
     lambda: WebSocketSignalling("ws://127.0.0.1:8765", identity="key"),  # type: ignore[arg-type]
     "identity"),
    ("WebSocketSignalling ca_file",
     lambda: WebSocketSignalling("wss://127.0.0.1:8765", ca_file=5),  # type: ignore[arg-type]
     "ca_file"),
    ("WebSocketSignalling open_timeout",
     lambda: WebSocketSignalling("ws://127.0.0.1:8765", open_timeout=0), "open_timeout"),
    ("WebSocketSignalling reconnect_timeout",
     lambda: WebSocketSignalling("ws://127.0.0.1:8765", reconnect_timeout=-1),
     "reconnect_timeout"),
    # the TURN server runners
    ("TurnServerRunner core", lambda: TurnServerRunner(object()), "core"),  # type: ignore[arg-type]
    ("TurnServerRunner udp", lambda: TurnServerRunner(_turn_core(), udp="127.0.0.1:0"), "udp"),
    ("TurnServerRunner udp text", lambda: TurnServerRunner(_turn_core(), udp="127.0.0.1"),
     "udp"),
    ("TurnServerRunner tcp item",
     lambda: TurnServerRunner(_turn_core(), tcp=[GOOD, (LOOPBACK, 0)]), "tcp[1]"),
    ("TurnServerRunner tls without context",
     lambda: TurnServerRunner(_turn_core(), tls=[(LOOPBACK, 5349)]), "tls_context"),
    ("TurnServerRunner tls_context",
     lambda: TurnServerRunner(_turn_core(), tls=[(LOOPBACK, 5349)], tls_context="x"),  # type: ignore[arg-type]
     "tls_context"),
    ("TurnServerRunner external_ips",
     lambda: TurnServerRunner(_turn_core(), external_ips="203.0.113.1"), "external_ips"),
    ("TurnServerRunner external_ips item",
     lambda: TurnServerRunner(_turn_core(), external_ips=["203.0.113.1", "x"]),
     "external_ips[1]"),
    ("TurnServerRunner stream_buffer",
     lambda: TurnServerRunner(_turn_core(), stream_buffer=0), "stream_buffer"),
    ("TurnServerRunner core port 0",
     lambda: TurnServerRunner(TurnServer(
         realm="r", auth=StaticUsers({"u": "p"}, realm="r"),
         relay=UdpRelayAllocator([LOOPBACK]), stun=StunServer(primary=(LOOPBACK, 0)))),
     "port 0"),
    ("loopback_runner port", lambda: loopback_runner("3478", {"u": "p"}, "r"), "port"),  # type: ignore[arg-type]
    ("loopback_runner port 0", lambda: loopback_runner(0, {"u": "p"}, "r"), "port"),
    ("loopback_runner users", lambda: loopback_runner(3478, ["u:p"], "r"), "users"),  # type: ignore[arg-type]
    ("loopback_runner password", lambda: loopback_runner(3478, {"u": ""}, "r"),
     "users['u']: the password"),
    ("loopback_runner realm", lambda: loopback_runner(3478, {"u": "p"}, ""), "realm"),
    ("loopback_runner ip", lambda: loopback_runner(3478, {"u": "p"}, "r", "localhost:1"), "ip"),
    ("loopback_runner tcp_port",
     lambda: loopback_runner(3478, {"u": "p"}, "r", tcp_port=70000), "tcp_port"),
    ("loopback_runner tls_port", lambda: loopback_runner(3478, {"u": "p"}, "r", tls_port=5349),
     "tls_port needs a tls_context"),
    # the cores take "ip:port" text as the adapters do (an IP literal: a core resolves nothing)
    ("StunServer primary name", lambda: StunServer(primary="localhost:3478"), "primary"),
    ("StunServer primary text", lambda: StunServer(primary="127.0.0.1:x"), "primary"),
    ("StunServer primary type", lambda: StunServer(primary=3478), "primary"),  # type: ignore[arg-type]
    ("StunServer other", lambda: StunServer(primary=GOOD, other=("stun.example", 3479)),
     "other"),
    ("StunServer mtu", lambda: StunServer(primary=GOOD, mtu="1500"), "mtu"),  # type: ignore[arg-type]
    ("StunServer software", lambda: StunServer(primary=GOOD, software=5), "software"),  # type: ignore[arg-type]
    ("StunServer budget", lambda: StunServer(primary=GOOD, budget=5), "budget"),  # type: ignore[arg-type]
    ("TurnClient server name", lambda: TurnClient(("turn.example", 3478), "u", "p"), "server"),
    ("TurnClient server text", lambda: TurnClient("127.0.0.1:99999", "u", "p"), "server"),
    ("TurnClient server IPv6 text", lambda: TurnClient("::1:3478:x", "u", "p"), "server"),
    ("TurnClient username None", lambda: TurnClient(GOOD, None, "p"), "username"),  # type: ignore[arg-type]
    ("TurnClient username empty", lambda: TurnClient(GOOD, "", "p"), "username"),
    ("TurnClient username control", lambda: TurnClient(GOOD, "u\x00", "p"), "username"),
    ("TurnClient password None", lambda: TurnClient(GOOD, "u", None), "password"),  # type: ignore[arg-type]
    ("TurnClient rto", lambda: TurnClient(GOOD, "u", "p", rto="1"), "rto"),  # type: ignore[arg-type]
    ("TurnClient rc", lambda: TurnClient(GOOD, "u", "p", rc=0), "rc"),
    ("TurnClient refresh_margin",
     lambda: TurnClient(GOOD, "u", "p", refresh_margin=None), "refresh_margin"),  # type: ignore[arg-type]
    ("TurnClient reservation_token",
     lambda: TurnClient(GOOD, "u", "p", reservation_token="12345678"), "reservation_token"),  # type: ignore[arg-type]
    ("TurnClient software", lambda: TurnClient(GOOD, "u", "p", software=5), "software"),  # type: ignore[arg-type]
    # credential back-ends
    ("StaticUsers users", lambda: StaticUsers("u:p", realm="r"), "users"),  # type: ignore[arg-type]
    ("StaticUsers name", lambda: StaticUsers({"": "p"}, realm="r"), "users: a name"),
    ("StaticUsers password", lambda: StaticUsers({"u": None}, realm="r"),  # type: ignore[dict-item]
     "users['u']: the password"),
    ("StaticUsers realm", lambda: StaticUsers({"u": "p"}, realm=""), "realm"),
    ("SqliteUsers path", lambda: SqliteUsers(5), "path"),  # type: ignore[arg-type]
    ("SqliteUsers reload_interval", lambda: SqliteUsers(":memory:", reload_interval=0),
     "reload_interval"),
    ("RestSecret secret", lambda: RestSecret("", clock=float), "secret"),
    ("RestSecret clock", lambda: RestSecret("s", clock=5), "clock"),  # type: ignore[arg-type]
    ("ChainedBackend", lambda: ChainedBackend(StaticUsers({}, realm="r"), "x"),  # type: ignore[arg-type]
     "backends[1]"),
    # TurnConnection: options are checked before the name is resolved
    ("TurnConnection.connect option",
     lambda: TurnConnection.connect("turn.example:3478", "u", "p", rto=0), "rto"),
    ("TurnConnection.connect unknown option",
     lambda: TurnConnection.connect(GOOD, "u", "p", bogus=1), "bogus"),
    ("TurnConnection.connect ssl_context",
     lambda: TurnConnection.connect(GOOD, "u", "p", "tls", ssl_context="x"),  # type: ignore[arg-type]
     "ssl_context"),
    ("TurnConnection.connect max_queue",
     lambda: TurnConnection.connect(GOOD, "u", "p", max_queue=0), "max_queue"),
    ("TurnConnection.connect on_data",
     lambda: TurnConnection.connect(GOOD, "u", "p", on_data=5), "on_data"),  # type: ignore[arg-type]
    ("TurnConnection.over send",
     lambda: TurnConnection.over("x", GOOD, "u", "p", local=(LOOPBACK, 1)), "send"),  # type: ignore[arg-type]
    ("TurnConnection.over local",
     lambda: TurnConnection.over(_send, GOOD, "u", "p", local="x"), "local"),  # type: ignore[arg-type]
    # the ICE connection, its gatherer and its agent
    ("Connection checking_timeout", lambda: Connection(True, checking_timeout=-1),
     "checking_timeout"),
    ("Connection stun_server colons", lambda: Connection(True, stun_server="::::"),
     "stun_server"),
    ("Connection stun_server host",
     lambda: Connection(True, stun_server=("stun example", 3478)), "stun_server"),
    ("Connection host_ips item", lambda: Connection(True, host_ips=["not-an-ip"]),
     "host_ips[0]"),
    ("Connection host_ips", lambda: Connection(True, host_ips=LOOPBACK), "host_ips"),
    ("Connection interfaces", lambda: Connection(True, interfaces="eth0"), "interfaces"),
    ("Connection gather_timeout", lambda: Connection(True, gather_timeout=0), "gather_timeout"),
    ("Connection release_timeout", lambda: Connection(True, release_timeout=-1),
     "release_timeout"),
    ("Connection ta", lambda: Connection(True, ta="5ms"), "ta"),  # type: ignore[arg-type]
    ("Connection components", lambda: Connection(True, components=0), "components"),
    ("Connection local_username", lambda: Connection(True, local_username="a"),
     "local_username"),
    ("Connection local_password", lambda: Connection(True, local_password=5),  # type: ignore[arg-type]
     "local_password"),
    ("Connection agent_options", lambda: Connection(True, agent_options={"bogus": 1}),
     "agent_options"),
    ("Connection agent_options value", lambda: Connection(True, agent_options={"check_rc": 0}),
     "check_rc"),
    ("Connection nominator", lambda: Connection(True, nominator="gateway"), "nominator"),  # type: ignore[arg-type]
    ("Connection rng", lambda: Connection(True, rng=5), "rng"),  # type: ignore[arg-type]
    ("Connection pacer", lambda: Connection(True, pacer=5), "pacer"),  # type: ignore[arg-type]
    ("Connection turn_ssl_context",
     lambda: Connection(True, turn_server=GOOD, turn_username="u", turn_password="p",
                        turn_transport="tcp", turn_ssl=True, turn_ssl_context="x"),
     "turn_ssl_context"),
    ("Gatherer host_ips item", lambda: Gatherer(["localhost"]), "host_ips[0]"),
    ("Gatherer timeout", lambda: Gatherer([LOOPBACK], timeout="5"), "timeout"),  # type: ignore[arg-type]
    ("Gatherer stun_rto", lambda: Gatherer([LOOPBACK], stun_rto=0), "stun_rto"),
    ("Gatherer turn_options", lambda: Gatherer([LOOPBACK], turn_options={"rto": 0}),
     "turn_options: rto"),
    ("Gatherer turn_options unknown", lambda: Gatherer([LOOPBACK], turn_options={"x": 1}),
     "turn_options"),
    ("Gatherer software", lambda: Gatherer([LOOPBACK], software=5), "software"),  # type: ignore[arg-type]
    ("TurnServerConfig username control",
     lambda: TurnServerConfig(GOOD, "a\x07", "b"), "TurnServerConfig username"),
    ("TurnServerConfig host", lambda: TurnServerConfig(("turn example", 3478), "a", "b"),
     "TurnServerConfig address"),
    ("TurnServerConfig ssl_context",
     lambda: TurnServerConfig(GOOD, "a", "b", "tls", ssl_context="x"),  # type: ignore[arg-type]
     "TurnServerConfig ssl_context"),
    ("TurnServerConfig server_name",
     lambda: TurnServerConfig(GOOD, "a", "b", "tls", server_name=""),
     "TurnServerConfig server_name"),
    ("IceAgent checking_timeout",
     lambda: IceAgent(controlling=True, checking_timeout=-1), "checking_timeout"),
    ("IceAgent local_ufrag", lambda: IceAgent(controlling=True, local_ufrag=5),  # type: ignore[arg-type]
     "local_ufrag"),
    ("IceAgent tie_breaker", lambda: IceAgent(controlling=True, tie_breaker=-1), "tie_breaker"),
    ("IceAgent check_rc", lambda: IceAgent(controlling=True, check_rc="7"), "check_rc"),  # type: ignore[arg-type]
    ("IceAgent max_pairs", lambda: IceAgent(controlling=True, max_pairs=0), "max_pairs"),
    # the link endpoint, its channel and its trust
    ("LinkEndpoint signalling URL", lambda: LinkEndpoint("a", "ws://127.0.0.1:8765"),  # type: ignore[arg-type]
     "signalling"),
    ("LinkEndpoint signalling None", lambda: LinkEndpoint("a", None), "signalling"),  # type: ignore[arg-type]
    ("LinkEndpoint name empty", lambda: LinkEndpoint("", InProcessSignalling()), "name"),
    ("LinkEndpoint name type", lambda: LinkEndpoint(5, InProcessSignalling()), "name"),  # type: ignore[arg-type]
    ("LinkEndpoint idle_timeout", lambda: _endpoint(idle_timeout="30"), "idle_timeout"),  # type: ignore[arg-type]
    ("LinkEndpoint form_timeout", lambda: _endpoint(form_timeout=0), "form_timeout"),
    ("LinkEndpoint delivery_timeout", lambda: _endpoint(delivery_timeout=-1),
     "delivery_timeout"),
    ("LinkEndpoint host_ips item",
     lambda: LinkEndpoint("a", InProcessSignalling(), host_ips=["localhost"]), "host_ips[0]"),
    ("LinkEndpoint nominator", lambda: _endpoint(nominator="relay"), "nominator"),  # type: ignore[arg-type]
    ("LinkEndpoint identity", lambda: _endpoint(identity=5), "identity"),  # type: ignore[arg-type]
    ("LinkEndpoint trusted_peers", lambda: _endpoint(trusted_peers=["b"]), "trusted_peers"),  # type: ignore[arg-type]
    ("LinkEndpoint trusted_peers key", lambda: _endpoint(trusted_peers={"b": "anchor1:x"}),
     "trusted_peers['b']"),
    ("LinkEndpoint known_peers", lambda: _endpoint(known_peers=5), "known_peers"),  # type: ignore[arg-type]
    ("LinkEndpoint mtu", lambda: _endpoint(mtu="1200"), "mtu"),  # type: ignore[arg-type]
    ("LinkEndpoint max_message", lambda: _endpoint(max_message=-1), "max_message"),
    ("LinkEndpoint on_message", lambda: _endpoint(on_message=5), "on_message"),  # type: ignore[arg-type]
    ("LinkEndpoint on_event", lambda: _endpoint(on_event="print"), "on_event"),  # type: ignore[arg-type]
    ("LinkEndpoint rng", lambda: _endpoint(rng=5), "rng"),  # type: ignore[arg-type]
    ("LinkEndpoint connection_options",
     lambda: _endpoint(connection_options=[("gather_timeout", 5)]), "connection_options"),  # type: ignore[arg-type]
    ("LinkEndpoint connection_options unknown",
     lambda: _endpoint(connection_options={"gather_timout": 5}), "connection_options"),
    ("LinkEndpoint connection_options set by the endpoint",
     lambda: _endpoint(connection_options={"host_ips": [LOOPBACK]}), "connection_options"),
    ("LinkEndpoint connection_options value",
     lambda: _endpoint(connection_options={"gather_timeout": 0}),
     "connection_options: gather_timeout"),
    ("ReliableChannel mtu", lambda: ReliableChannel(mtu="1200"), "mtu"),  # type: ignore[arg-type]
    ("ReliableChannel seal", lambda: ReliableChannel(seal="x"), "seal"),  # type: ignore[arg-type]
    ("ReliableChannel idle_timeout", lambda: ReliableChannel(idle_timeout=0), "idle_timeout"),
    ("ReliableChannel rng", lambda: ReliableChannel(rng=5), "rng"),  # type: ignore[arg-type]
    ("ReliableChannel now", lambda: ReliableChannel(now="0"), "now"),  # type: ignore[arg-type]
    ("TrustPolicy trusted_peers", lambda: TrustPolicy(["b"]), "trusted_peers"),  # type: ignore[arg-type]
    ("TrustPolicy known_peers", lambda: TrustPolicy(known_peers=5), "known_peers"),  # type: ignore[arg-type]
    ("KnownPeers path", lambda: KnownPeers(5), "path"),  # type: ignore[arg-type]
    # the sweep of the package roots' other names: anchor_stun
    ("binding_request ssl_context",
     lambda: binding_request(GOOD, "tls", ssl_context="x"), "ssl_context"),  # type: ignore[arg-type]
    ("binding_request server_hostname",
     lambda: binding_request(GOOD, "tls", server_hostname=""), "server_hostname"),
    ("binding_request software", lambda: binding_request(GOOD, software=5), "software"),  # type: ignore[arg-type]
    ("binding_request rng", lambda: binding_request(GOOD, rng=5), "rng"),  # type: ignore[arg-type]
    ("discover_nat local", lambda: discover_nat(GOOD, local="x"), "local"),  # type: ignore[arg-type]
    ("discover_nat software", lambda: discover_nat(GOOD, software=5), "software"),  # type: ignore[arg-type]
    ("discover_nat host", lambda: discover_nat(("stun example", 3478)), "server"),
    ("StunTransport.connect transport",
     lambda: StunTransport.connect(GOOD, "sctp"), "transport"),  # type: ignore[arg-type]
    ("StunTransport.connect local",
     lambda: StunTransport.connect(GOOD, local=("localhost", 0)), "local"),
    ("StunTransport.connect ssl_context",
     lambda: StunTransport.connect(GOOD, "tls", ssl_context="x"), "ssl_context"),  # type: ignore[arg-type]
    ("StunTransport.connect timeout", lambda: StunTransport.connect(GOOD, timeout=0), "timeout"),
    ("StunServerRunner core", lambda: StunServerRunner(object()), "core"),  # type: ignore[arg-type]
    ("StunServerRunner limits",
     lambda: StunServerRunner(StunServer(primary=GOOD), limits=5), "limits"),  # type: ignore[arg-type]
    ("StunServerRunner.start tls_context",
     lambda: StunServerRunner(StunServer(primary=(LOOPBACK, 0))).start(tls_context="x"),  # type: ignore[arg-type]
     "tls_context"),
    ("client_tls_context ca_file", lambda: client_tls_context(5), "ca_file"),  # type: ignore[arg-type]
    ("NatDiscovery server name", lambda: NatDiscovery(("stun.example", 3478), 0.0), "server"),
    ("NatDiscovery local", lambda: NatDiscovery(GOOD, 0.0, local="x"), "local"),  # type: ignore[arg-type]
    ("NatDiscovery rc", lambda: NatDiscovery(GOOD, 0.0, rc=0), "rc"),
    ("NatDiscovery now", lambda: NatDiscovery(GOOD, "0"), "now"),  # type: ignore[arg-type]
    ("StunClient rto", lambda: StunClient(rto=-1), "rto"),
    ("StunClient rm", lambda: StunClient(rm="16"), "rm"),  # type: ignore[arg-type]
    ("StunClient.send_request data", lambda: StunClient().send_request("x", GOOD, 0.0),  # type: ignore[arg-type]
     "data"),
    ("StunClient.send_request addr",
     lambda: StunClient().send_request(_request(), "127.0.0.1", 0.0), "addr"),  # type: ignore[arg-type]
    ("ClientTransaction rto", lambda: ClientTransaction(_request(), GOOD, 0.0, rto="1"), "rto"),  # type: ignore[arg-type]
    ("AnswerBudget rate", lambda: AnswerBudget(rate=-1), "rate"),
    ("AnswerBudget burst", lambda: AnswerBudget(burst="5"), "burst"),  # type: ignore[arg-type]
    ("AnswerBudget v4_prefix", lambda: AnswerBudget(v4_prefix=40), "v4_prefix"),
    ("HmacKey key", lambda: HmacKey("secret"), "key"),  # type: ignore[arg-type]
    ("CheckKey key", lambda: CheckKey(None), "key"),  # type: ignore[arg-type]
    ("LongTermCredentials username", lambda: LongTermCredentials(None, "p"), "username"),  # type: ignore[arg-type]
    ("LongTermCredentials password", lambda: LongTermCredentials("u", ""), "password"),
    ("LongTermCredentials algorithms", lambda: LongTermCredentials("u", "p", algorithms=(7,)),
     "algorithms"),
    ("long_term_key realm", lambda: long_term_key("u", None, "p"), "realm"),  # type: ignore[arg-type]
    ("long_term_key algorithm", lambda: long_term_key("u", "r", "p", 7), "algorithm"),
    ("opaque_string", lambda: opaque_string(None), "value"),  # type: ignore[arg-type]
    ("short_term_key", lambda: short_term_key(None), "password"),  # type: ignore[arg-type]
    ("userhash", lambda: userhash(None, "r"), "username"),  # type: ignore[arg-type]
    ("turn_rest_password", lambda: turn_rest_password(None, "u"), "secret"),  # type: ignore[arg-type]
    ("pack_ip text", lambda: pack_ip("localhost"), "ip"),
    ("pack_ip type", lambda: pack_ip(5), "ip"),  # type: ignore[arg-type]
    ("unpack_ip", lambda: unpack_ip(1, b"12"), "packed"),
    ("format_address", lambda: format_address("127.0.0.1:3478"), "addr"),  # type: ignore[arg-type]
    ("parse_address", lambda: parse_address(3478), "text"),  # type: ignore[arg-type]
    ("Data value", lambda: _encoded(Data("x")), "Data value"),  # type: ignore[arg-type]
    ("Username value", lambda: _encoded(Username(5)), "Username value"),  # type: ignore[arg-type]
    # anchor_turn
    ("run_check config", lambda: run_check("127.0.0.1:3478"), "config"),  # type: ignore[arg-type]
    ("run_check ids", lambda: run_check(CheckConfig(GOOD), ids="turn.release"), "ids"),
    ("CheckConfig server name", lambda: CheckConfig(("turn.example", 3478)),
     "CheckConfig server"),
    ("CheckConfig ssl_context", lambda: CheckConfig(GOOD, "tls", ssl_context="x"),  # type: ignore[arg-type]
     "CheckConfig ssl_context"),
    ("NonceAuthenticator realm", lambda: NonceAuthenticator(realm="", backend=_users(), rng=bytes),
     "realm"),
    ("NonceAuthenticator backend",
     lambda: NonceAuthenticator(realm="r", backend=object(), rng=bytes), "backend"),  # type: ignore[arg-type]
    ("NonceAuthenticator nonce_lifetime",
     lambda: NonceAuthenticator(realm="r", backend=_users(), rng=bytes, nonce_lifetime=0),
     "nonce_lifetime"),
    ("NonceAuthenticator password_algorithms",
     lambda: NonceAuthenticator(realm="r", backend=_users(), rng=bytes, password_algorithms=(9,)),
     "password_algorithms"),
    ("NonceAuthenticator secret",
     lambda: NonceAuthenticator(realm="r", backend=_users(), rng=bytes, secret="s" * 32),  # type: ignore[arg-type]
     "secret"),
    ("PeerFilter allow text", lambda: PeerFilter(allow="10.0.0.0/8"), "allow"),
    ("PeerFilter deny item", lambda: PeerFilter(deny=["10.0.0.0/8", "ten"]), "deny[1]"),
    ("SelfAddresses item", lambda: SelfAddresses([GOOD, ("x y", 1)]), "addresses[1]"),
    ("TurnServer auth", lambda: _turn_server(auth=object()), "auth"),
    ("TurnServer relay", lambda: _turn_server(relay=object()), "relay"),
    ("TurnServer stun", lambda: _turn_server(stun="127.0.0.1:3478"), "stun"),
    ("TurnServer default_lifetime", lambda: _turn_server(default_lifetime=-5),
     "default_lifetime"),
    ("TurnServer lifetimes", lambda: _turn_server(default_lifetime=7200), "max_lifetime"),
    ("TurnServer permission_lifetime", lambda: _turn_server(permission_lifetime="300"),
     "permission_lifetime"),
    ("TurnServer allow_peers", lambda: _turn_server(allow_peers="10.0.0.0/8"), "allow_peers"),
    ("TurnServer self_addresses", lambda: _turn_server(self_addresses=[("x y", 1)]),
     "self_addresses[0]"),
    ("TurnServer address_families", lambda: _turn_server(address_families=(3,)),
     "address_families"),
    ("TurnServer user_quota", lambda: _turn_server(user_quota=-1), "user_quota"),
    ("TurnServer unauthenticated_rate", lambda: _turn_server(unauthenticated_rate=0),
     "unauthenticated_rate"),
    ("TurnServer nonce_secret", lambda: _turn_server(nonce_secret=b"short"), "nonce_secret"),
    ("TurnServer peer_filter", lambda: _turn_server(peer_filter="10.0.0.0/8"), "peer_filter"),
    ("TurnServer external", lambda: _turn_server(external=["203.0.113.1"]), "external"),
    ("UdpRelayAllocator ips text", lambda: UdpRelayAllocator(LOOPBACK), "ips"),
    ("UdpRelayAllocator ips name", lambda: UdpRelayAllocator(["localhost"]), "ips[0]"),
    ("UdpRelayAllocator min_port", lambda: UdpRelayAllocator([LOOPBACK], min_port=70000),
     "min_port"),
    ("UdpRelayAllocator port range",
     lambda: UdpRelayAllocator([LOOPBACK], min_port=60000, max_port=50000), "min_port"),
    ("UdpRelayAllocator reservation_lifetime",
     lambda: UdpRelayAllocator([LOOPBACK], reservation_lifetime=0), "reservation_lifetime"),
    ("encode_channel_data channel", lambda: encode_channel_data(5, b"x"), "channel"),
    ("encode_channel_data data", lambda: encode_channel_data(0x4000, "x"), "data"),  # type: ignore[arg-type]
    ("parse_turn_uri type", lambda: parse_turn_uri(3478), "uri"),  # type: ignore[arg-type]
    ("parse_turn_uri host", lambda: parse_turn_uri("turn:a b:3478"), "TURN URI"),
    # anchor_ice
    ("Connection.add_remote_candidate type",
     lambda: Connection(True).add_remote_candidate(5), "candidate"),  # type: ignore[arg-type]
    ("Connection.add_remote_candidate port",
     lambda: Connection(True).add_remote_candidate(_candidate(port=70000)), "candidate: port"),
    ("IceAgent.add_remote_candidate component",
     lambda: IceAgent(controlling=True).add_remote_candidate(_candidate(component=0)),
     "candidate: component"),
    ("GatewayNominator grace", lambda: GatewayNominator(grace=-1), "grace"),
    ("StandardNominator settle", lambda: StandardNominator(settle="1"), "settle"),  # type: ignore[arg-type]
    ("RelayOnly settle", lambda: RelayOnly(settle=-1), "settle"),
    ("candidate_priority type_", lambda: candidate_priority("bogus"), "type_"),
    ("candidate_priority component", lambda: candidate_priority("host", 0), "component"),
    ("candidate_priority local_preference",
     lambda: candidate_priority("host", 1, 70000), "local_preference"),
    ("pair_priority", lambda: pair_priority(-1, 5), "controlling"),
    ("parse text", lambda: parse(b"v=0"), "text"),  # type: ignore[arg-type]
    # anchor_link
    ("Cubic max_datagram_size", lambda: Cubic(0), "max_datagram_size"),
    ("NewReno max_datagram_size", lambda: NewReno("1200"), "max_datagram_size"),  # type: ignore[arg-type]
    ("Pacer burst", lambda: Pacer(0), "burst"),
    ("LinkHandshake identity", lambda: LinkHandshake("key", initiator=True, prologue=b""),  # type: ignore[arg-type]
     "identity"),
    ("LinkHandshake prologue",
     lambda: LinkHandshake(Identity.generate(), initiator=True, prologue="x"), "prologue"),  # type: ignore[arg-type]
    ("LinkMachine peer", lambda: LinkMachine("", offerer=True, now=0.0), "peer"),
    ("LinkMachine form_timeout",
     lambda: LinkMachine("b", offerer=True, now=0.0, form_timeout=0), "form_timeout"),
    ("Sealer", lambda: Sealer(b"short", bytes(32), bytes(32), bytes(32)), "send_key"),
    ("TrickleBox", lambda: TrickleBox(bytes(32), b"short"), "recv_key"),
    ("format_public", lambda: format_public(b"x"), "public"),
    ("load_identity", lambda: load_identity(5), "path"),  # type: ignore[arg-type]
    ("load_or_create_identity", lambda: load_or_create_identity(None), "path"),  # type: ignore[arg-type]
    ("Identity", lambda: Identity("x", b"1"), "private"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("name", "call", "names"), CASES, ids=[c[0] for c in CASES])
def test_malformed_arguments_fail_at_the_boundary_and_send_nothing(
    spy: _Spy, name: str, call: Callable[[], Any], names: str
) -> None:
    async def main() -> None:
        with pytest.raises((LocalProtocolError, TypeError), match=re.escape(names)) as info:
            result = call()
            if isinstance(result, Awaitable):
                await result
        # the message also says which forms are accepted (or what is wrong with the value)
        assert len(str(info.value)) > len(names) + 5, str(info.value)

    asyncio.run(main())
    assert spy.calls == [], f"{name}: {spy.calls}"


def test_the_spy_sees_what_a_well_formed_call_sends(spy: _Spy) -> None:
    """The control: the same spy records the datagram of a good call (to a closed port,
    which is then named at once)."""
    port = free_port("udp")

    async def main() -> None:
        with pytest.raises(DestinationUnreachable, match=f"127.0.0.1:{port}"):
            await binding_request(f"127.0.0.1:{port}", timeout=30)

    asyncio.run(main())
    assert ("connect", (LOOPBACK, port)) in spy.calls


def test_the_spy_sees_what_a_well_formed_server_binds(spy: _Spy) -> None:
    """The control for the servers' rows: a good rendezvous binds and listens."""

    async def main() -> None:
        server = await serve_rendezvous(LOOPBACK, 0)
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert [what for what, _ in spy.calls if what in ("bind", "listen")] == ["bind", "listen"]


def test_the_issues_examples_are_read_as_meant() -> None:
    # "host:port" is an address, not a sequence of characters
    assert TurnServerConfig("127.0.0.1:45678", "alice", "secret").address == (LOOPBACK, 45678)
    assert TurnServerConfig("turn.example", "a", "b", "tls").address == ("turn.example", 5349)
    # LinkEndpoint(turn=[(host, port, user, pw)]) works (checked at construction)
    endpoint = _endpoint(turn=[(LOOPBACK, 45678, "alice", "secret")], stun="127.0.0.1:3478")
    assert endpoint._turn == [TurnServerConfig((LOOPBACK, 45678), "alice", "secret")]
    assert endpoint._stun == [(LOOPBACK, 3478)]
    conn = Connection(True, stun_server=[GOOD, "127.0.0.1"],
                      turn_servers=[("127.0.0.1:3479", "u", "p")])
    assert conn.stun_servers == [GOOD, GOOD]
    assert conn.turn_servers[0].address == (LOOPBACK, 3479)


@pytest.mark.parametrize("command", [
    ["ice", "--controlling"],
    ["pipe", "--signal", "ws://127.0.0.1:9", "--name", "a", "--peer", "b"],
])
def test_a_host_name_as_host_ip_is_refused_naming_the_option(command: list[str]) -> None:
    """--host-ip takes IP addresses (a name would be looked up when gathering): the command
    line says which option is wrong before anything starts."""
    result = run_anchor(*command, "--host-ip", "localhost", timeout=30)
    assert result.returncode == 2
    assert "argument --host-ip: 'localhost' is not an IP address" in result.stderr


def test_the_cores_read_addresses_as_the_adapters_do() -> None:
    """One parser for all (anchor_stun.address, sans-I/O, re-exported by the adapters): the
    cores take "ip:port" text as the adapters do, an IP literal only (a core resolves
    nothing), and valid input reads as before."""
    assert net.server_address is address.server_address
    assert net.parse_address is address.parse_address is anchor_stun.parse_address
    # StunServer: a listener's address, port 0 meaning any free port
    assert StunServer(primary="127.0.0.1:3478").primary == GOOD
    assert StunServer(primary="127.0.0.1").primary == GOOD  # RFC 8489 §6.2.4's port
    assert StunServer(primary="[::1]:0").primary == ("::1", 0)
    rfc5780 = StunServer(primary="127.0.0.1:3478", other="127.0.0.2:3479")
    assert rfc5780.other == ("127.0.0.2", 3479)
    assert StunServer(primary=GOOD).primary == GOOD  # the tuple form, unchanged
    # TurnClient: 3478, or 5349 over TLS (RFC 8656 §3.1), when the text has no port
    assert TurnClient("127.0.0.1:3478", "u", "p").server == GOOD
    assert TurnClient("[::1]", "u", "p", transport="tls").server == ("::1", 5349)
    assert TurnClient(GOOD, "u", "p").server == GOOD
    # NatDiscovery, the third core that takes a server
    assert NatDiscovery("127.0.0.1:3478", 0.0).server == GOOD
    # the forms a host may take, the same for every entry point
    for text, parsed in (
        ("stun.example.org:3478", ("stun.example.org", 3478)),
        ("[2001:db8::1]:3478", ("2001:db8::1", 3478)),
        ("2001:db8::1", ("2001:db8::1", 3478)),
        ("fe80::1%eth0", ("fe80::1%eth0", 3478)),
        ("_stun._udp.example:1", ("_stun._udp.example", 1)),
    ):
        assert address.server_address(text) == parsed
    for bad in ("::::", "a b:1", "[stun.example]:1", "1.2.3.999", "host:", ":1", "-a.example"):
        with pytest.raises(LocalProtocolError, match="server must be"):
            address.server_address(bad)


def test_closed_stun_and_turn_servers_are_named_unreachable_in_gathering() -> None:
    """Must-show 2 for gathering: the ICMP error of a closed port ends the server's job at
    once (the timeout here is 30 s; the reason says unreachable, not "no allocation")."""
    stun_port, turn_port = free_port("udp"), free_port("udp")

    async def main() -> None:
        turn = TurnServerConfig(f"127.0.0.1:{turn_port}", "alice", "secret")
        async with Gatherer(
            [LOOPBACK], stun_servers=[(LOOPBACK, stun_port)], turn_servers=[turn], timeout=30
        ) as gatherer:
            await asyncio.wait_for(gatherer.gather_all(), 10)
            reasons = {(f.kind, f.server): f.reason for f in gatherer.failures}
        assert reasons == {
            ("stun", (LOOPBACK, stun_port)): f"127.0.0.1:{stun_port} unreachable (Connection refused)",
            ("turn", (LOOPBACK, turn_port)):
                f"server 127.0.0.1:{turn_port} unreachable (Connection refused)",
        }

    asyncio.run(main())


def test_an_icmp_error_does_not_cost_the_next_datagram() -> None:
    """A refused destination leaves the gathered socket usable for others: the error is read
    from the queue, and a send that it failed is sent again."""
    closed = free_port("udp")

    async def main() -> None:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((LOOPBACK, 0))
        receiver.settimeout(5)
        sock = await GatheredSocket.bind(LOOPBACK)
        try:
            for i in range(5):
                sock.send(b"x", (LOOPBACK, closed))
                await asyncio.sleep(0.01)
                sock.send(b"%d" % i, receiver.getsockname())
            got = [receiver.recv(10) for _ in range(5)]
            assert got == [b"0", b"1", b"2", b"3", b"4"]
        finally:
            await sock.close()
            receiver.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_anchor_serve_on_a_busy_port_names_the_address_and_the_option(kind: str) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    busy.bind((LOOPBACK, 0))
    if kind == "tcp":
        busy.listen()
    port = busy.getsockname()[1]
    try:
        for extra in ([], ["--user", "alice:secret"]):  # STUN only, and STUN + TURN
            if kind == "tcp":
                extra = [*extra, "--tcp"]
            result = run_anchor("serve", "--listen", f"127.0.0.1:{port}", *extra, timeout=30)
            assert result.returncode == 2
            line = result.stderr.strip()
            assert line == (
                f"anchor serve: cannot listen on 127.0.0.1:{port} ({kind}):"
                " Address already in use; choose another --listen"
            ) or (kind == "tcp" and "(udp)" in line), line
    finally:
        busy.close()


def test_ice_with_a_wrong_password_says_the_peer_rejected_our_credentials() -> None:
    """Must-show 3 over real sockets: A signs its checks with a wrong password for B; B
    answers each with an unauthenticated 401, and A's failure says so."""
    fast = {"check_rto": 0.05, "check_rc": 3, "check_rm": 2}

    async def main() -> None:
        a = Connection(True, host_ips=[LOOPBACK], checking_timeout=3.0, agent_options=fast)
        b = Connection(False, host_ips=[LOOPBACK], checking_timeout=3.0, agent_options=fast)
        try:
            await asyncio.gather(a.gather_candidates(), b.gather_candidates())
            a.remote_username, a.remote_password = b.local_username, "w" * 22  # wrong
            b.remote_username, b.remote_password = a.local_username, a.local_password
            for src, dst in ((a, b), (b, a)):
                for candidate in src.local_candidates:
                    await dst.add_remote_candidate(candidate)
                await dst.add_remote_candidate(None)
            results = await asyncio.wait_for(
                asyncio.gather(a.connect(), b.connect(), return_exceptions=True), 20
            )
            failure = results[0]
            assert isinstance(failure, IceFailedError), results
            assert "the peer rejected our credentials (401 to every check answered)" in (
                failure.reason
            ), failure.reason
        finally:
            await asyncio.gather(a.close(), b.close())

    asyncio.run(main())


def test_an_ice_check_to_a_closed_port_fails_at_once_naming_it(spy: _Spy) -> None:
    """Item 2 for ICE (RFC 8445 §7.2.5.2.2): the only remote candidate is a closed UDP port;
    the socket's ICMP error ends the check after its first send (the RFC's schedule would
    send it 7 times over 39.5 s), and the failure names the address."""
    closed = free_port("udp")
    target = (LOOPBACK, closed)

    async def main() -> Connection:
        conn = Connection(True, host_ips=[LOOPBACK])
        try:
            await conn.gather_candidates()
            conn.remote_username, conn.remote_password = "peer", "p" * 22
            await conn.add_remote_candidate(f"candidate:1 1 udp 2130706431 127.0.0.1 {closed} typ host")
            await conn.add_remote_candidate(None)
            with pytest.raises(IceFailedError) as info:
                await asyncio.wait_for(conn.connect(), 30)
        finally:
            await conn.close()
        assert info.value.reason == (
            "all candidate pairs failed for component 1 (the peer's candidates are"
            f" unreachable: 127.0.0.1:{closed} (Connection refused) (a TURN server gives a"
            " relayed candidate))"
        )
        return conn

    conn = asyncio.run(main())
    assert conn.agent.unreachable_checks == 1
    sends = [call for call in spy.calls if call == ("sendto", target)]
    assert 1 <= len(sends) < conn.agent.check_rc, sends


GATEWAY_WAY_OUT = (
    "no candidate to offer under the gateway policy: it offers none of the local candidates"
    " (host); add a TURN server for a relayed candidate, a STUN server that answers for a"
    " server-reflexive one, or use policy='standard' to allow host pairs"
)


def test_a_policy_with_nothing_to_offer_is_a_gather_failure_with_the_way_out() -> None:
    """Item 4: the gateway policy with host candidates only (no STUN, no TURN) can offer
    nothing; gathering records it with the way out, and connect() fails with it at once."""

    async def main() -> None:
        conn = Connection(True, host_ips=[LOOPBACK], policy="gateway")
        try:
            await conn.gather_candidates()
            assert conn.local_candidates == []
            [failure] = conn.gather_failures
            assert (failure.kind, failure.base, failure.server) == ("policy", None, None)
            assert str(failure) == failure.reason == GATEWAY_WAY_OUT
            conn.remote_username, conn.remote_password = "peer", "p" * 22
            await conn.add_remote_candidate("candidate:1 1 udp 2130706431 127.0.0.1 9 typ host")
            with pytest.raises(IceFailedError) as info:
                await asyncio.wait_for(conn.connect(), 30)
            assert info.value.reason == f"component 1: {GATEWAY_WAY_OUT}"
            assert conn.agent.pairs == []  # nothing was checked
        finally:
            await conn.close()

    asyncio.run(main())


def test_a_link_with_nothing_to_offer_names_what_failed_and_the_way_out() -> None:
    """The same through a LinkEndpoint, whose only STUN server is a closed port: the link
    fails naming the STUN server unreachable, then the policy's way out."""
    closed = free_port("udp")
    stun = f"stun 127.0.0.1:{closed}: 127.0.0.1:{closed} unreachable (Connection refused)"

    async def main() -> None:
        hub = InProcessSignalling()
        options: dict[str, Any] = {
            "host_ips": [LOOPBACK], "stun": f"127.0.0.1:{closed}", "policy": "gateway",
        }
        a = LinkEndpoint("a", hub, **options)
        b = LinkEndpoint("b", hub, **options)
        try:
            await b.start()
            with pytest.raises(LinkFormationFailed) as info:
                await asyncio.wait_for(a.send("b", b"x"), 30)
            # the ICE connection or the link's gathering says it first: either way
            assert info.value.reason in (
                f"ICE failed: {stun}; component 1: {GATEWAY_WAY_OUT}",
                f"{stun}; {GATEWAY_WAY_OUT}",
            ), info.value.reason
        finally:
            await asyncio.gather(a.close(), b.close())

    asyncio.run(main())


def test_turn_connect_timeout_bounds_the_allocate() -> None:
    """timeout= on TurnConnection.connect: a server that never answers is given up after
    it, with the server named (by default the RFC's 39.5 s of retransmissions)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((LOOPBACK, 0))
    where = f"127.0.0.1:{silent.getsockname()[1]}"

    async def main() -> None:
        conn = await TurnConnection.connect(where, "alice", "secret", timeout=0.3)
        try:
            with pytest.raises(AllocationError, match=f"no answer from {where} within 0.3 s"):
                await asyncio.wait_for(conn.allocate(), 10)
        finally:
            await conn.close(0)

    try:
        asyncio.run(main())
    finally:
        silent.close()


def test_one_shape_per_concept() -> None:
    # candidate lines with or without their prefixes
    line = "1 1 udp 2130706431 127.0.0.1 5000 typ host"
    forms = [line, "candidate:" + line, "a=candidate:" + line, " a=candidate:" + line + "\r\n"]
    assert len({Candidate.from_sdp(text) for text in forms}) == 1
    # decoded methods and classes are named in reprs
    decoded = Message.decode(Message(Method.BINDING, MessageClass.REQUEST, b"t" * 12).encode())
    assert decoded.method is Method.BINDING
    assert "Method.BINDING" in repr(decoded) and "MessageClass.REQUEST" in repr(decoded)
    # ... and so are the known codes, families, types and algorithms of decoded attributes,
    # still equal to their ints; values Anchor does not know stay ints
    attributes = [
        ErrorCodeAttribute(401, "Unauthenticated"), AddressErrorCode(2, 440, "no IPv6"),
        RequestedAddressFamily(2), RequestedTransport(17), UnknownAttributes((0x1A, 0x7777)),
        PasswordAlgorithms(((2, b""),)),
    ]
    decoded = Message.decode(
        Message(Method.ALLOCATE, MessageClass.ERROR, b"t" * 12, attributes).encode()  # type: ignore[arg-type]
    )
    text = repr(decoded)
    for name in ("Method.ALLOCATE", "MessageClass.ERROR", "ErrorCode.UNAUTHENTICATED",
                 "ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED", "Family.IPV6",
                 "TransportProtocol.UDP", "AttrType.DONT_FRAGMENT", "PasswordAlgorithmId.SHA256"):
        assert name in text, (name, text)
    assert decoded.attributes == attributes and decoded.get(UnknownAttributes) == (
        UnknownAttributes((AttrType.DONT_FRAGMENT, 0x7777))
    )
    unknown = Message.decode(Message(0x0FF, MessageClass.REQUEST, b"t" * 12).encode())
    assert type(unknown.method) is int and unknown.method == 0x0FF
    assert enum_member(ErrorCode, 499) == 499 and type(enum_member(ErrorCode, 499)) is int
    # error text carries the code once
    assert str(StunErrorResponse(401, "401 Unauthenticated")) == "401 Unauthenticated"
    assert str(AllocationError(401, "401 Unauthenticated: wrong password")) == (
        "401 Unauthenticated: wrong password"
    )
    assert str(AllocationError(438, "Stale Nonce")) == "438 Stale Nonce"
    assert str(StunErrorResponse(420, "")) == "420"
    assert error_text(ErrorCode.UNAUTHENTICATED, "401 Unauthenticated: wrong password") == (
        "401 Unauthenticated: wrong password"
    )
    assert error_text(4010, "401") == "4010 401"  # only the code itself counts
    # relayed addresses: `relayed` is one address and `relayed_addresses` all of them, on the
    # client core, its event, the server's event and TurnConnection (tests/loopback/
    # test_turn_net_client.py checks TurnConnection against the event)
    v4, v6 = (LOOPBACK, 50000), ("::1", 50002)
    created = AllocationCreated((v4, v6), None, 600)
    assert (created.relayed, created.relayed_addresses) == (v4, (v4, v6))
    served = AllocationCreatedEvent(GOOD, GOOD, "udp", "u", (v4,), 600)
    assert (served.relayed, served.relayed_addresses) == (v4, (v4,))
    client = TurnClient(GOOD, "u", "p")
    assert (client.relayed, client.relayed_addresses) == (None, ())


def test_anchor_turn_with_a_wrong_password_names_the_code_once() -> None:
    """Error text without duplicated codes, at the command line too: the core's reason
    ("401 Unauthenticated: wrong username or password") already carries the code."""
    port = free_port("udp")

    async def main() -> None:
        runner = loopback_runner(port, {"alice": "secret"}, "anchor")
        await runner.start()
        try:
            args = build_parser().parse_args(
                ["turn", f"127.0.0.1:{port}", "--user", "alice:wrong", "--timeout", "10"]
            )
            with pytest.raises(turn_cli.TurnStepError) as info:
                await turn_cli.run(args)
        finally:
            runner.close()
            await runner.wait_closed()
        message = str(info.value)
        assert "server answered 401 " in message and message.count("401") == 1, message

    asyncio.run(main())


def test_a_server_of_a_family_not_gathered_on_is_a_failure_too() -> None:
    async def main() -> None:
        async with Gatherer([LOOPBACK], stun_servers=[("::1", 3478)], timeout=5) as gatherer:
            await asyncio.wait_for(gatherer.gather_all(), 10)
            [failure] = gatherer.failures
        assert (failure.kind, failure.server) == ("stun", ("::1", 3478))
        assert failure.reason == "no host address of its family (IPv6) to gather from"

    asyncio.run(main())


# --------------------------------------------------------------------------- NAT discovery


def test_nat_discovery_against_a_closed_port_fails_at_once_naming_it(spy: _Spy) -> None:
    """Item 2 for RFC 5780 discovery, whose socket is not connected (it sends to the
    alternate address too): the ICMP error is read from the socket's error queue with its
    destination, and test I ends after its first send (the RFC's schedule: 7 sends over
    39.5 s). Within the 2 s of the issue's must-show for ``anchor stun``."""
    closed = free_port("udp")
    target = (LOOPBACK, closed)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DestinationUnreachable) as info:
            await asyncio.wait_for(discover_nat(target), 30)
        assert str(info.value) == (
            "NAT discovery failed: test I (binding to the primary address): "
            f"127.0.0.1:{closed} unreachable (Connection refused)"
        )
        return loop.time() - started

    assert asyncio.run(main()) < 2.0
    sends = [call for call in spy.calls if call == ("sendto", target)]
    assert 1 <= len(sends) < 7, sends


def test_nat_discovery_timeout_bounds_it_and_names_the_server() -> None:
    """Item 3: timeout= on discover_nat; a server that never answers is given up after it
    (by default test I's 39.5 s of retransmissions), with the server named."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((LOOPBACK, 0))
    where = f"127.0.0.1:{silent.getsockname()[1]}"

    async def main() -> None:
        with pytest.raises(TransactionTimeout) as info:
            await asyncio.wait_for(discover_nat(where, timeout=0.3), 10)
        assert str(info.value) == f"NAT discovery with {where} unfinished after 0.3 s"

    try:
        asyncio.run(main())
    finally:
        silent.close()


ALTERNATE_IP = "127.0.0.2"


class _HalfRfc5780Server(asyncio.DatagramProtocol):
    """An RFC 5780 server on ``primary`` whose alternate IP listens on the alternate port
    only: test I and filtering test II are answered, and mapping test II, which goes to (the
    alternate IP, the primary port), meets a closed port. Its XOR-MAPPED-ADDRESS is not the
    client's own address, as behind a NAT, so that the mapping tests run."""

    def __init__(self, alternate: asyncio.DatagramTransport, other: tuple[str, int]) -> None:
        self.alternate = alternate
        self.other = other
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = Message.decode(data)
        change = request.get(ChangeRequest)
        answer = request.response(
            [XorMappedAddress("192.0.2.7", 40000), OtherAddress(*self.other)]
        ).encode()
        if change is None:
            assert self.transport is not None
            self.transport.sendto(answer, addr)
        elif change.change_ip and change.change_port:
            self.alternate.sendto(answer, addr)  # from the alternate IP and port


async def _half_rfc5780_server() -> tuple[int, list[asyncio.DatagramTransport]]:
    """Start :class:`_HalfRfc5780Server`; returns its primary port on 127.0.0.1 (closed on
    127.0.0.2) and the transports to close."""
    loop = asyncio.get_running_loop()
    port = free_port_block(1, "udp", hosts=(LOOPBACK, ALTERNATE_IP))
    alternate, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(ALTERNATE_IP, 0)
    )
    other = alternate.get_extra_info("sockname")
    primary, _ = await loop.create_datagram_endpoint(
        lambda: _HalfRfc5780Server(alternate, (ALTERNATE_IP, other[1])),
        local_addr=(LOOPBACK, port),
    )
    return port, [primary, alternate]


def test_nat_discovery_names_a_closed_alternate_address() -> None:
    """The point of reading the error queue rather than connecting the socket: the test
    that fails is mapping test II, sent to the alternate IP, and the error names that
    address, not the server's primary one."""

    async def main() -> None:
        port, transports = await _half_rfc5780_server()
        try:
            with pytest.raises(DestinationUnreachable) as info:
                await asyncio.wait_for(discover_nat((LOOPBACK, port)), 30)
        finally:
            for transport in transports:
                transport.close()
        assert str(info.value) == (
            "NAT discovery failed: mapping test II (alternate IP, primary port): "
            f"{ALTERNATE_IP}:{port} unreachable (Connection refused)"
        )

    asyncio.run(main())


def test_anchor_stun_nat_against_a_closed_port_exits_non_zero_naming_it() -> None:
    """``anchor stun --nat``: a closed primary port is named at once (the Binding request),
    and so is a closed alternate address during discovery; one line, exit 1."""
    closed = free_port("udp")
    result = run_anchor("stun", f"127.0.0.1:{closed}", "--nat", timeout=20)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"anchor stun: 127.0.0.1:{closed} unreachable (Connection refused)"
    )

    async def main() -> tuple[int, int, str]:
        port, transports = await _half_rfc5780_server()
        try:
            process = await asyncio.create_subprocess_exec(
                *ANCHOR, "stun", f"127.0.0.1:{port}", "--nat",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, stderr = await asyncio.wait_for(process.communicate(), 20)
        finally:
            for transport in transports:
                transport.close()
        assert process.returncode is not None
        return port, process.returncode, stderr.decode()

    port, code, stderr = asyncio.run(main())
    assert code == 1, stderr
    assert stderr.strip() == (
        "anchor stun: NAT discovery failed: mapping test II (alternate IP, primary port): "
        f"{ALTERNATE_IP}:{port} unreachable (Connection refused)"
    )
