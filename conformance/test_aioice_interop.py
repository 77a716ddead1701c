"""anchor_stun's codec against aioice's (aioice.stun, a second, independent implementation).

What this proves:

- aioice parses the messages Anchor encodes: an ICE connectivity check (USERNAME, PRIORITY,
  ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY, FINGERPRINT) and its success response
  (XOR-MAPPED-ADDRESS, IPv4 and IPv6); aioice verifies our FINGERPRINT (its parser rejects a
  bad one) and our MESSAGE-INTEGRITY (``check_message_integrity``), and reads the same values.
- Anchor parses what aioice encodes, verifies aioice's MESSAGE-INTEGRITY and FINGERPRINT, and
  re-encodes it byte for byte.
- The same for random messages over every attribute both implement (hypothesis).
- Over a real loopback UDP socket (IPv4 and IPv6), aioice's own client transaction
  (``aioice.stun.Transaction``: retransmissions, and it discards a response whose
  MESSAGE-INTEGRITY does not verify) completes against a responder built on anchor_stun.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor_stun.attributes import (
    Attribute,
    ChangeRequest,
    ChannelNumber,
    Data,
    ErrorCodeAttribute,
    IceControlled,
    IceControlling,
    Lifetime,
    MappedAddress,
    Nonce,
    OtherAddress,
    Priority,
    Realm,
    RequestedTransport,
    ResponseOrigin,
    Software,
    UseCandidate,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from anchor_stun.message import Message, MessageClass, Method

stun: Any
try:
    from aioice import stun
except ImportError:  # the peer mark below skips, or fails under CI
    stun = None

pytestmark = pytest.mark.peer("aioice")

ICE_PWD = b"asd88fgpdd777uzjYhagZg"  # short-term key: the remote ice-pwd (RFC 8445 §7.2.2)
TID = bytes.fromhex("0102030405060708090a0b0c")


# --------------------------------------------------------------------------- aioice adapters


def aioice_class(klass: MessageClass) -> Any:
    return {
        MessageClass.REQUEST: stun.Class.REQUEST,
        MessageClass.INDICATION: stun.Class.INDICATION,
        MessageClass.SUCCESS: stun.Class.RESPONSE,
        MessageClass.ERROR: stun.Class.ERROR,
    }[klass]


def aioice_parse(data: bytes, key: bytes | None = None) -> Any:
    """aioice.stun.parse_message; with ``key``, also aioice's own integrity check (its API
    moved from ``parse_message(data, integrity_key=...)`` to ``check_message_integrity``)."""
    if "integrity_key" in inspect.signature(stun.parse_message).parameters:
        return stun.parse_message(data, integrity_key=key)  # raises ValueError if bad
    message = stun.parse_message(data)
    if key is not None:
        assert message.check_message_integrity(key), "aioice: MESSAGE-INTEGRITY does not verify"
        assert not message.check_message_integrity(key + b"!")
    return message


# --------------------------------------------------------------------------- fixed messages


def connectivity_check() -> Message:
    return Message(
        Method.BINDING,
        MessageClass.REQUEST,
        TID,
        [
            Username("9a3f:1b2c"),
            Priority(0x6E7F1EFF),
            IceControlling(0x0123456789ABCDEF),
            UseCandidate(),
        ],
    )


def test_aioice_parses_anchor_connectivity_check() -> None:
    data = connectivity_check().encode(key=ICE_PWD, fingerprint=True)
    parsed = aioice_parse(data, ICE_PWD)
    assert parsed.message_method == stun.Method.BINDING
    assert parsed.message_class == stun.Class.REQUEST
    assert parsed.transaction_id == TID
    assert parsed.attributes["USERNAME"] == "9a3f:1b2c"
    assert parsed.attributes["PRIORITY"] == 0x6E7F1EFF
    assert parsed.attributes["ICE-CONTROLLING"] == 0x0123456789ABCDEF
    assert "USE-CANDIDATE" in parsed.attributes and parsed.attributes["USE-CANDIDATE"] is None
    assert parsed.attributes["MESSAGE-INTEGRITY"] == Message.decode(data).integrity
    assert parsed.attributes["FINGERPRINT"] == Message.decode(data).fingerprint
    assert list(parsed.attributes) == [
        "USERNAME",
        "PRIORITY",
        "ICE-CONTROLLING",
        "USE-CANDIDATE",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    ]
    # aioice would have built the very same bytes.
    same = stun.Message(
        stun.Method.BINDING,
        stun.Class.REQUEST,
        TID,
        {
            "USERNAME": "9a3f:1b2c",
            "PRIORITY": 0x6E7F1EFF,
            "ICE-CONTROLLING": 0x0123456789ABCDEF,
            "USE-CANDIDATE": None,
        },
    )
    same.add_message_integrity(ICE_PWD)
    assert bytes(same) == data


def test_aioice_rejects_anchor_message_with_broken_fingerprint() -> None:
    data = bytearray(connectivity_check().encode(key=ICE_PWD, fingerprint=True))
    data[-1] ^= 0x01
    with pytest.raises(ValueError, match="fingerprint"):
        stun.parse_message(bytes(data))


@pytest.mark.parametrize("ip", ["192.0.2.33", "2001:db8::7:1", "::ffff:192.0.2.1"])
def test_aioice_parses_anchor_success_response(ip: str) -> None:
    canonical = str(ipaddress.ip_address(ip))
    response = connectivity_check().response([XorMappedAddress(canonical, 61234)])
    data = response.encode(key=ICE_PWD, fingerprint=True)
    parsed = aioice_parse(data, ICE_PWD)
    assert parsed.message_class == stun.Class.RESPONSE
    assert parsed.transaction_id == TID
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == (canonical, 61234)


def test_aioice_parses_anchor_role_conflict() -> None:
    error = connectivity_check().error_response(487)  # RFC 8445 §7.3.1.1
    parsed = aioice_parse(error.encode(key=ICE_PWD, fingerprint=True), ICE_PWD)
    assert parsed.message_class == stun.Class.ERROR
    assert parsed.attributes["ERROR-CODE"] == (487, "Role Conflict")
    assert parsed.error_code == 487


def test_anchor_parses_aioice_connectivity_check() -> None:
    request = stun.Message(
        stun.Method.BINDING,
        stun.Class.REQUEST,
        TID,
        {
            "USERNAME": "1b2c:9a3f",
            "PRIORITY": 1853824767,
            "ICE-CONTROLLED": 0xFEDCBA9876543210,
        },
    )
    request.add_message_integrity(ICE_PWD)  # adds FINGERPRINT too
    data = bytes(request)
    msg = Message.decode(data)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (
        Method.BINDING,
        MessageClass.REQUEST,
        TID,
    )
    assert msg.attributes == [
        Username("1b2c:9a3f"),
        Priority(1853824767),
        IceControlled(0xFEDCBA9876543210),
    ]
    assert msg.verify_integrity(ICE_PWD)
    assert not msg.verify_integrity(b"wrong password")
    assert msg.verify_fingerprint()
    assert msg.unknown_required() == []
    assert msg.encode(key=ICE_PWD, fingerprint=True) == data


def test_anchor_parses_aioice_success_response() -> None:
    response = stun.Message(
        stun.Method.BINDING,
        stun.Class.RESPONSE,
        TID,
        {"XOR-MAPPED-ADDRESS": ("2001:db8:1234:5678:11:2233:4455:6677", 32853)},
    )
    response.add_message_integrity(ICE_PWD)
    data = bytes(response)
    msg = Message.decode(data)
    mapped = msg.get(XorMappedAddress)
    assert mapped is not None
    assert mapped.address == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert msg.verify_integrity(ICE_PWD)
    assert msg.verify_fingerprint()


# --------------------------------------------------------------------------- random messages


@dataclass(frozen=True)
class Shared:
    """One attribute both implementations know: a value strategy, and how each spells it."""

    strategy: st.SearchStrategy[Any]
    anchor: Callable[[Any], Attribute]
    aioice: Callable[[Any], Any] = lambda v: v


_text = st.text(max_size=40)
_ip = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
_addr = st.tuples(_ip, st.integers(0, 0xFFFF))
_u32 = st.integers(0, 0xFFFF_FFFF)
_u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)

SHARED: dict[str, Shared] = {
    "MAPPED-ADDRESS": Shared(_addr, lambda v: MappedAddress(*v)),
    "CHANGE-REQUEST": Shared(
        st.tuples(st.booleans(), st.booleans()),
        lambda v: ChangeRequest(*v),
        lambda v: (4 if v[0] else 0) | (2 if v[1] else 0),
    ),
    "USERNAME": Shared(_text, Username),
    "ERROR-CODE": Shared(st.tuples(st.integers(300, 699), _text), lambda v: ErrorCodeAttribute(*v)),
    "CHANNEL-NUMBER": Shared(st.integers(0x4000, 0x4FFF), ChannelNumber),
    "LIFETIME": Shared(_u32, Lifetime),
    "XOR-PEER-ADDRESS": Shared(_addr, lambda v: XorPeerAddress(*v)),
    "DATA": Shared(st.binary(max_size=100), Data),
    "REALM": Shared(_text, Realm),
    "NONCE": Shared(_text, Nonce, lambda v: v.encode()),
    "XOR-RELAYED-ADDRESS": Shared(_addr, lambda v: XorRelayedAddress(*v)),
    # aioice packs REQUESTED-TRANSPORT as one 32-bit number: protocol << 24.
    "REQUESTED-TRANSPORT": Shared(st.integers(0, 0xFF), RequestedTransport, lambda v: v << 24),
    "XOR-MAPPED-ADDRESS": Shared(_addr, lambda v: XorMappedAddress(*v)),
    "PRIORITY": Shared(_u32, Priority),
    "USE-CANDIDATE": Shared(st.none(), lambda v: UseCandidate()),
    "SOFTWARE": Shared(_text, Software),
    "ICE-CONTROLLED": Shared(_u64, IceControlled),
    "ICE-CONTROLLING": Shared(_u64, IceControlling),
    "RESPONSE-ORIGIN": Shared(_addr, lambda v: ResponseOrigin(*v)),
    "OTHER-ADDRESS": Shared(_addr, lambda v: OtherAddress(*v)),
}

AIOICE_METHODS = [
    Method.BINDING,
    Method.ALLOCATE,
    Method.REFRESH,
    Method.SEND,
    Method.DATA,
    Method.CREATE_PERMISSION,
    Method.CHANNEL_BIND,
]


@dataclass
class Case:
    method: Method
    klass: MessageClass
    tid: bytes
    values: dict[str, Any]
    key: bytes | None
    fingerprint: bool

    def anchor(self) -> Message:
        attrs = [SHARED[name].anchor(v) for name, v in self.values.items()]
        return Message(self.method, self.klass, self.tid, attrs)

    def aioice_attributes(self) -> dict[str, Any]:
        return {name: SHARED[name].aioice(v) for name, v in self.values.items()}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    names = draw(st.lists(st.sampled_from(sorted(SHARED)), unique=True, max_size=8))
    return Case(
        draw(st.sampled_from(AIOICE_METHODS)),
        draw(st.sampled_from(list(MessageClass))),
        draw(st.binary(min_size=12, max_size=12)),
        {name: draw(SHARED[name].strategy) for name in names},
        draw(st.one_of(st.none(), st.binary(min_size=1, max_size=32))),
        draw(st.booleans()),
    )


CROSS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@settings(deadline=None, max_examples=5)
@given(data=st.data())
def test_shared_attribute_table_matches_aioice(data: st.DataObject) -> None:
    # Every attribute aioice knows and Anchor types is cross-checked, except those aioice
    # only has for RFC 3489 (SOURCE-ADDRESS, CHANGED-ADDRESS) or computes itself.
    aioice_names = {name for _, name, _, _ in stun.ATTRIBUTES}
    computed = {"MESSAGE-INTEGRITY", "FINGERPRINT", "SOURCE-ADDRESS", "CHANGED-ADDRESS"}
    assert aioice_names - computed == set(SHARED)
    for name, shared in SHARED.items():
        code = stun.ATTRIBUTES_BY_NAME[name][0]
        example = shared.anchor(data.draw(shared.strategy))
        assert type(example).TYPE == code, name


@CROSS
@given(case=cases())
def test_anchor_to_aioice(case: Case) -> None:
    data = case.anchor().encode(key=case.key, fingerprint=case.fingerprint)
    parsed = aioice_parse(data, case.key)  # a bad FINGERPRINT would raise here
    assert parsed.message_method == case.method
    assert parsed.message_class == aioice_class(case.klass)
    assert parsed.transaction_id == case.tid
    values = dict(parsed.attributes)
    assert ("MESSAGE-INTEGRITY" in values) == (case.key is not None)
    assert ("FINGERPRINT" in values) == case.fingerprint
    values.pop("MESSAGE-INTEGRITY", None)
    values.pop("FINGERPRINT", None)
    assert values == case.aioice_attributes()


@CROSS
@given(case=cases())
def test_aioice_to_anchor(case: Case) -> None:
    message = stun.Message(
        stun.Method(case.method), aioice_class(case.klass), case.tid, case.aioice_attributes()
    )
    if case.key is not None:
        message.add_message_integrity(case.key)  # and FINGERPRINT
    elif case.fingerprint:
        message.add_fingerprint()
    data = bytes(message)
    fingerprint = case.fingerprint or case.key is not None
    msg = Message.decode(data)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (case.method, case.klass, case.tid)
    assert msg.attributes == case.anchor().attributes
    assert msg.verify_fingerprint() == fingerprint
    if case.key is not None:
        assert msg.verify_integrity(case.key)
    assert msg.encode(key=case.key, fingerprint=fingerprint) == data


# --------------------------------------------------------------------------- real sockets


class AnchorResponder(asyncio.DatagramProtocol):
    """A tiny ICE-style Binding responder built on anchor_stun's codec: checks the request's
    MESSAGE-INTEGRITY and FINGERPRINT and answers with XOR-MAPPED-ADDRESS, MI and FINGERPRINT."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.requests: list[Message] = []
        self.problems: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            request = Message.decode(data)
        except Exception as exc:  # recorded, asserted by the test
            self.problems.append(f"decode: {exc!r}")
            return
        if not request.verify_integrity(self.key):
            self.problems.append("request MESSAGE-INTEGRITY does not verify")
        if not request.verify_fingerprint():
            self.problems.append("request FINGERPRINT does not verify")
        self.requests.append(request)
        response = request.response([XorMappedAddress(addr[0], addr[1])])
        assert self.transport is not None
        self.transport.sendto(response.encode(key=self.key, fingerprint=True), addr)


class AioiceClient(asyncio.DatagramProtocol):
    """The client side of aioice's ``StunProtocol``: hands responses to aioice transactions."""

    def __init__(self) -> None:
        self.transactions: dict[bytes, Any] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        message = stun.parse_message(data)
        transaction = self.transactions.get(message.transaction_id)
        if transaction is not None:
            transaction.response_received(message, (addr[0], addr[1]))

    def send_stun(self, message: Any, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)

    async def request(self, message: Any, addr: tuple[str, int], key: bytes) -> Any:
        message.add_message_integrity(key)
        options: dict[str, Any] = {"retransmissions": 3}
        if "integrity_key" in inspect.signature(stun.Transaction).parameters:
            options["integrity_key"] = key  # aioice then drops unauthenticated responses
        transaction = stun.Transaction(message, addr, self, **options)
        self.transactions[message.transaction_id] = transaction
        try:
            response, source = await transaction.run()
        finally:
            del self.transactions[message.transaction_id]
        return response, source


async def exchange(host: str) -> tuple[Any, tuple[str, int], tuple[str, int], AnchorResponder]:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    responder = AnchorResponder(ICE_PWD)
    server, _ = await loop.create_datagram_endpoint(
        lambda: responder, local_addr=(host, 0), family=family
    )
    client = AioiceClient()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: client, local_addr=(host, 0), family=family
    )
    try:
        server_addr = server.get_extra_info("sockname")[:2]
        client_addr = transport.get_extra_info("sockname")[:2]
        request = stun.Message(
            stun.Method.BINDING,
            stun.Class.REQUEST,
            attributes={
                "USERNAME": "9a3f:1b2c",
                "PRIORITY": 1853824767,
                "ICE-CONTROLLING": 0x0123456789ABCDEF,
                "USE-CANDIDATE": None,
            },
        )
        response, source = await asyncio.wait_for(
            client.request(request, server_addr, ICE_PWD), timeout=30
        )
        assert source == server_addr
        return response, client_addr, server_addr, responder
    finally:
        transport.close()
        server.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_aioice_transaction_against_anchor_responder(host: str) -> None:
    response, client_addr, _, responder = asyncio.run(exchange(host))
    assert responder.problems == []
    assert responder.requests, "the responder got nothing"
    request = responder.requests[0]
    assert request.attributes == [
        Username("9a3f:1b2c"),
        Priority(1853824767),
        IceControlling(0x0123456789ABCDEF),
        UseCandidate(),
    ]
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == client_addr
    assert response.check_message_integrity(ICE_PWD)
