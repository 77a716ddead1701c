"""Tests of the sans-I/O STUN server core (RFC 8489 §6.3, RFC 5780 §6-§7).

No sockets, literal clock. Requests are built with the codec, responses decoded with it.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_stun.attributes import (
    Attribute,
    AttrType,
    ChangeRequest,
    ErrorCodeAttribute,
    IceControlling,
    MappedAddress,
    OtherAddress,
    Padding,
    Priority,
    RawAttribute,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
)
from anchor_stun.budget import AnswerBudget
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.server import DEFAULT_MTU, ServerStats, StunServer

NOW = 100.0
TID = bytes(range(1, 13))

A1, A2 = "192.0.2.1", "192.0.2.2"
P1, P2 = 3478, 3479
PRIMARY: Address = (A1, P1)
OTHER: Address = (A2, P2)
CLIENT4: Address = ("203.0.113.7", 54321)
CLIENT6: Address = ("2001:db8::7", 40000)


def request(*attrs: Attribute, method: int = Method.BINDING, tid: bytes = TID) -> Message:
    return Message(method, MessageClass.REQUEST, tid, list(attrs))


def send(
    server: StunServer, data: bytes, addr: Address = CLIENT4, local: Address = PRIMARY
) -> list[Transmit]:
    server.receive_datagram(data, addr, local, NOW)
    return server.datagrams_to_send(NOW)


def one(server: StunServer, data: bytes, **kw: Address) -> tuple[Transmit, Message]:
    out = send(server, data, **kw)
    assert len(out) == 1
    return out[0], Message.decode(out[0].data)


def plain(**kw: object) -> StunServer:
    return StunServer(primary=PRIMARY, **kw)  # type: ignore[arg-type]


def rfc5780(**kw: object) -> StunServer:
    return StunServer(primary=PRIMARY, other=OTHER, **kw)  # type: ignore[arg-type]


def stats(**counts: int) -> ServerStats:
    return ServerStats(**counts)


# --------------------------------------------------------------------------- Binding


@pytest.mark.parametrize("client", [CLIENT4, CLIENT6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("client_fp", [False, True])
def test_binding_reflects_source_address(client: Address, client_fp: bool) -> None:
    local = ("2001:db8::1", 3478) if ":" in client[0] else PRIMARY
    server = StunServer(primary=local)
    tx, resp = one(server, request().encode(fingerprint=client_fp), addr=client, local=local)
    assert tx.addr == client and tx.local == local
    assert resp.msg_class == MessageClass.SUCCESS and resp.method == Method.BINDING
    assert resp.transaction_id == TID
    assert resp.get(XorMappedAddress) == XorMappedAddress(*client)
    # RFC 8489 server without RFC 5780: XOR-MAPPED-ADDRESS only, no 5780 attributes.
    assert resp.get(MappedAddress) is None
    assert resp.get(ResponseOrigin) is None and resp.get(OtherAddress) is None
    assert resp.get(Software) == Software("anchor")
    assert resp.verify_fingerprint()
    assert [type(a) for a in resp.attributes] == [XorMappedAddress, Software]
    assert server.stats == stats(received=1, answered=1)


def test_software_and_fingerprint_optional() -> None:
    server = plain(software=None, fingerprint=False)
    _, resp = one(server, request().encode())
    assert resp.attributes == [XorMappedAddress(*CLIENT4)]
    assert resp.fingerprint is None
    # A request with FINGERPRINT gets one back even when not configured.
    _, resp = one(server, request().encode(fingerprint=True))
    assert resp.verify_fingerprint()


def test_custom_software() -> None:
    _, resp = one(plain(software="anchor/0.1 \u2693"), request().encode())
    assert resp.get(Software) == Software("anchor/0.1 \u2693")


def test_ipv4_mapped_source_is_reported_as_ipv4() -> None:
    server = StunServer(primary=("::", 3478))
    tx, resp = one(server, request().encode(), addr=("::ffff:198.51.100.9", 4242))
    assert resp.get(XorMappedAddress) == XorMappedAddress("198.51.100.9", 4242)
    assert tx.addr == ("::ffff:198.51.100.9", 4242)  # the socket still wants the v6 form


def test_known_but_unexpected_attributes_are_ignored() -> None:
    # RFC 8489 §6.3: known attributes that a Binding server has no use for are ignored.
    req = request(Username("alice"), Priority(1), IceControlling(7))
    _, resp = one(plain(), req.encode(key=b"k", fingerprint=True))
    assert resp.msg_class == MessageClass.SUCCESS


def test_hot_path_caches_ipv4_sources_and_stays_bounded() -> None:
    server = plain()
    for i in range(5000):
        tx = server.handle(request().encode(), (f"10.0.{i // 256}.{i % 256}", 1), PRIMARY, NOW)
        assert tx is not None
    assert len(server._v4_cache) <= 4096
    assert server.stats == stats(received=5000, answered=5000)


# --------------------------------------------------------------------------- 420


def test_unknown_comprehension_required_attributes_get_420() -> None:
    req = request(
        RawAttribute(0x0030, b"abcd"),
        RawAttribute(0x8FFF, b"optional"),  # unknown but optional: ignored
        RawAttribute(0x7FFF, b""),
        RawAttribute(0x0030, b"again"),
        Software("client"),
    )
    tx, resp = one(plain(), req.encode(fingerprint=True))
    assert resp.msg_class == MessageClass.ERROR and resp.transaction_id == TID
    assert resp.error == ErrorCodeAttribute(420, "Unknown Attribute")
    assert resp.get(UnknownAttributes) == UnknownAttributes((0x0030, 0x7FFF))
    assert resp.get(Software) == Software("anchor") and resp.verify_fingerprint()
    assert tx.addr == CLIENT4 and tx.local == PRIMARY


def test_unknown_optional_attributes_alone_are_ignored() -> None:
    req = request(RawAttribute(0x8FFF, b"x"), RawAttribute(0xC001, b""))
    _, resp = one(plain(), req.encode())
    assert resp.msg_class == MessageClass.SUCCESS


# --------------------------------------------------------------------------- dropping


def test_bad_fingerprint_is_silently_discarded() -> None:
    for server in (plain(), rfc5780()):
        for req in (request(), request(ChangeRequest(True, False))):
            data = bytearray(req.encode(fingerprint=True))
            data[-1] ^= 0xFF
            assert send(server, bytes(data)) == []
        assert server.stats == stats(received=2, dropped_fingerprint=2)


def test_fingerprint_not_last_is_discarded() -> None:
    data = request().encode(fingerprint=True)
    # Append an attribute after FINGERPRINT and fix up the header length.
    data = data + struct.pack("!HH", 0x8FFF, 0)
    data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    server = plain()
    assert send(server, data) == []
    assert server.stats == stats(received=1, dropped_fingerprint=1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x01\x00\x00\x21\x12\xa4",  # truncated header
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)),
        b"\x00\x01\x00\x00\xde\xad\xbe\xef" + TID,  # bad magic cookie (RFC 3489 style)
        b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + TID,  # first two bits set
    ],
    ids=["empty", "one-byte", "short", "http", "junk", "cookie", "top-bits"],
)
def test_undecodable_datagrams_are_dropped(data: bytes) -> None:
    for server in (plain(), rfc5780()):
        assert send(server, data) == []
        assert server.stats == stats(received=1, dropped_malformed=1)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-4],  # truncated body: length no longer matches
        lambda d: d + b"\x00\x00",  # length not a multiple of 4 / mismatch
        lambda d: d[:2] + struct.pack("!H", len(d) - 20 + 4) + d[4:],  # length overruns
        # a known attribute with a bad value: XOR-MAPPED-ADDRESS of family 7
        lambda d: (
            d[:2]
            + struct.pack("!H", len(d) - 20 + 12)
            + d[4:]
            + struct.pack("!HHxBH4s", 0x0020, 8, 7, 1, b"\x00" * 4)
        ),
    ],
    ids=["truncated", "trailing", "overrun", "bad-attribute"],
)
def test_malformed_request_with_readable_header_gets_400(mangle: object) -> None:
    data = mangle(request(Software("x")).encode())  # type: ignore[operator]
    server = plain()
    tx, resp = one(server, data)
    assert resp.msg_class == MessageClass.ERROR and resp.method == Method.BINDING
    assert resp.transaction_id == TID
    assert resp.error is not None and resp.error.code == 400
    assert tx.addr == CLIENT4 and tx.local == PRIMARY
    assert server.stats == stats(received=1, errors_sent=1)


def test_malformed_indication_or_response_is_dropped() -> None:
    for klass in (MessageClass.INDICATION, MessageClass.SUCCESS, MessageClass.ERROR):
        data = Message(Method.BINDING, klass, TID).encode() + b"\x00\x00\x00\x00"
        server = plain()
        assert send(server, data) == []
        assert server.stats == stats(received=1, dropped_malformed=1)


def test_binding_indication_is_a_silent_keepalive() -> None:
    server = plain()
    ind = Message(Method.BINDING, MessageClass.INDICATION, TID)
    assert send(server, ind.encode(fingerprint=True)) == []
    assert send(server, ind.encode()) == []
    assert server.stats == stats(received=2, indications=2)


def test_other_indications_and_responses_are_dropped() -> None:
    server = rfc5780()
    messages = [
        Message(Method.SEND, MessageClass.INDICATION, TID),
        Message(Method.BINDING, MessageClass.INDICATION, TID, [RawAttribute(0x0031, b"")]),
        Message(Method.BINDING, MessageClass.SUCCESS, TID, [XorMappedAddress(*CLIENT4)]),
        Message(Method.BINDING, MessageClass.ERROR, TID, [ErrorCodeAttribute(400, "x")]),
        Message(Method.ALLOCATE, MessageClass.SUCCESS, TID),
    ]
    for msg in messages:
        assert send(server, msg.encode()) == []
    assert server.stats == stats(received=5, dropped_ignored=5)


@pytest.mark.parametrize("method", [Method.ALLOCATE, Method.REFRESH, 0x0FF, 0xFFF])
def test_unknown_method_request_gets_400(method: int) -> None:
    server = rfc5780()
    tx, resp = one(server, request(method=method).encode(fingerprint=True))
    assert resp.method == method and resp.msg_class == MessageClass.ERROR
    assert resp.error == ErrorCodeAttribute(400, "Bad Request")
    assert resp.get(ResponseOrigin) is None and resp.get(OtherAddress) is None
    assert resp.verify_fingerprint()
    assert tx.local == PRIMARY and tx.addr == CLIENT4


# --------------------------------------------------------------------------- RFC 5780


def test_rfc5780_local_addresses() -> None:
    assert plain().local_addresses() == [PRIMARY]
    assert rfc5780().local_addresses() == [(A1, P1), (A1, P2), (A2, P1), (A2, P2)]


LOCALS = [(A1, P1), (A1, P2), (A2, P1), (A2, P2)]


def _swap(value: object, a: object, b: object) -> object:
    return b if value == a else a


@pytest.mark.parametrize("local", LOCALS)
@pytest.mark.parametrize(
    "change",
    [
        None,
        ChangeRequest(),
        ChangeRequest(True, False),
        ChangeRequest(False, True),
        ChangeRequest(True, True),
    ],
    ids=["absent", "none", "ip", "port", "both"],
)
def test_change_request_table_1(local: Address, change: ChangeRequest | None) -> None:
    """RFC 5780 §6.1 Table 1, from each of the four addresses."""
    server = rfc5780()
    req = request() if change is None else request(change)
    tx, resp = one(server, req.encode(), local=local)
    da, dp = local
    ca, cp = _swap(da, A1, A2), _swap(dp, P1, P2)
    change_ip = change is not None and change.change_ip
    change_port = change is not None and change.change_port
    expected = (ca if change_ip else da, cp if change_port else dp)
    assert tx.local == expected
    assert tx.addr == CLIENT4
    assert resp.get(ResponseOrigin) == ResponseOrigin(*tx.local)
    assert resp.get(OtherAddress) == OtherAddress(ca, cp)  # type: ignore[arg-type]
    assert resp.get(XorMappedAddress) == XorMappedAddress(*CLIENT4)
    assert resp.get(MappedAddress) == MappedAddress(*CLIENT4)
    assert [type(a) for a in resp.attributes] == [
        XorMappedAddress,
        MappedAddress,
        ResponseOrigin,
        OtherAddress,
        Software,
    ]
    assert resp.verify_fingerprint()
    assert tx.local in server.local_addresses()


def test_rfc5780_ipv6() -> None:
    server = StunServer(primary=("2001:db8::1", 3478), other=("2001:db8::2", 3479))
    tx, resp = one(
        server,
        request(ChangeRequest(True, True)).encode(),
        addr=CLIENT6,
        local=("2001:db8::1", 3478),
    )
    assert tx.local == ("2001:db8::2", 3479)
    assert resp.get(XorMappedAddress) == XorMappedAddress(*CLIENT6)
    assert resp.get(ResponseOrigin) == ResponseOrigin("2001:db8::2", 3479)
    assert resp.get(OtherAddress) == OtherAddress("2001:db8::2", 3479)


def test_change_request_without_alternate_address_gets_420() -> None:
    """RFC 5780 §6: no second address -> 420 to any request with CHANGE-REQUEST."""
    for change in (ChangeRequest(), ChangeRequest(True, False), ChangeRequest(True, True)):
        server = plain()
        tx, resp = one(server, request(change).encode())
        assert resp.error is not None and resp.error.code == 420
        assert resp.get(UnknownAttributes) == UnknownAttributes((AttrType.CHANGE_REQUEST,))
        assert tx.local == PRIMARY and tx.addr == CLIENT4
        assert server.stats == stats(received=1, errors_sent=1)
    # Listed together with other unknown ones.
    _, resp = one(plain(), request(RawAttribute(0x0040, b""), ChangeRequest(True)).encode())
    assert resp.get(UnknownAttributes) == UnknownAttributes((0x0040, AttrType.CHANGE_REQUEST))


def test_420_wins_over_change_request_and_is_sent_from_arrival_address() -> None:
    server = rfc5780()
    req = request(ChangeRequest(True, True), RawAttribute(0x0040, b""), ResponsePort(9))
    tx, resp = one(server, req.encode(), local=(A2, P2))
    assert resp.error is not None and resp.error.code == 420
    assert tx.local == (A2, P2) and tx.addr == CLIENT4
    assert resp.get(ResponseOrigin) is None and resp.get(OtherAddress) is None


@pytest.mark.parametrize("make", [plain, rfc5780])
def test_response_port(make: object) -> None:
    server = make()  # type: ignore[operator]
    tx, resp = one(server, request(ResponsePort(6000)).encode())
    assert tx.addr == (CLIENT4[0], 6000) and tx.local == PRIMARY
    # XOR-MAPPED-ADDRESS is still the source the request came from.
    assert resp.get(XorMappedAddress) == XorMappedAddress(*CLIENT4)


def test_response_port_with_change_request() -> None:
    tx, _ = one(rfc5780(), request(ChangeRequest(False, True), ResponsePort(6000)).encode())
    assert tx.addr == (CLIENT4[0], 6000) and tx.local == (A1, P2)


@pytest.mark.parametrize(
    "attrs",
    [(ResponsePort(6000), Padding(bytes(100))), (ResponsePort(0),)],
    ids=["with-padding", "port-0"],
)
def test_bad_response_port_gets_400_sent_to_source(attrs: tuple[Attribute, ...]) -> None:
    """RFC 5780 §6.1, §7.5: RESPONSE-PORT with PADDING is 400 (no amplification)."""
    server = rfc5780()
    tx, resp = one(server, request(ChangeRequest(True, True), *attrs).encode())
    assert resp.error == ErrorCodeAttribute(400, "Bad Request")
    assert tx.addr == CLIENT4 and tx.local == PRIMARY


@pytest.mark.parametrize("make", [plain, rfc5780])
def test_padding_mtu_sized_request(make: object) -> None:
    """RFC 5780 §7.6: the response carries PADDING of the MTU, rounded up to 4."""
    server = make(mtu=1499)  # type: ignore[operator]
    data = request(Padding(bytes(1500))).encode(fingerprint=True)
    _, resp = one(server, data)
    padding = resp.get(Padding)
    assert padding is not None and len(padding.value) == 1500
    assert resp.attributes[-1] == padding and resp.verify_fingerprint()
    # Default MTU, larger request padding: the MTU wins.
    _, resp = one(make(), request(Padding(bytes(4000))).encode())  # type: ignore[operator]
    assert resp.get(Padding) == Padding(bytes(1500))


@pytest.mark.parametrize("size", [0, 1, 4, 40, 101, 400, 1496])
def test_padding_is_capped_by_the_request_padding(size: int) -> None:
    """A small request with PADDING cannot buy a large response (no amplification)."""
    server = rfc5780()
    data = request(Padding(bytes(size))).encode(fingerprint=True)
    tx, resp = one(server, data)
    padding = resp.get(Padding)
    assert padding is not None and len(padding.value) == (size + 3) // 4 * 4
    unpadded = len(one(rfc5780(), request().encode(fingerprint=True))[0].data)
    assert len(tx.data) == unpadded + 4 + len(padding.value)


def test_padding_stays_under_64k() -> None:
    server = rfc5780(mtu=0xFFFF)
    data = request(Padding(bytes(0xFFFF - 20 - 4 - 12))).encode()
    tx, resp = one(server, data)
    assert resp.get(Padding) is not None
    assert len(tx.data) <= 0xFFFF - 48


def test_rfc5780_rejects_bad_configurations() -> None:
    bad = [
        dict(primary=PRIMARY, other=(A1, P2)),  # same IP
        dict(primary=PRIMARY, other=(A2, P1)),  # same port
        dict(primary=PRIMARY, other=("2001:db8::2", P2)),  # mixed families
        dict(primary=("0.0.0.0", P1), other=OTHER),  # wildcard
        dict(primary=(A1, 0), other=OTHER),  # ephemeral port
        dict(primary=("not-an-ip", P1)),
        dict(primary=(A1, 70000)),
        dict(primary=(A1,)),
        dict(primary=PRIMARY, mtu=-1),
    ]
    for kw in bad:
        with pytest.raises(LocalProtocolError):
            StunServer(**kw)  # type: ignore[arg-type]


def test_foreign_local_address_is_served_plainly() -> None:
    """A listener outside the four (a TLS port, say) gets single-address behaviour."""
    server = rfc5780()
    tls = (A1, 5349)
    tx, resp = one(server, request().encode(), local=tls)
    assert tx.local == tls and tx.addr == CLIENT4
    assert [type(a) for a in resp.attributes] == [XorMappedAddress, Software]
    tx, resp = one(server, request(ChangeRequest(True, True)).encode(), local=tls)
    assert resp.get(UnknownAttributes) == UnknownAttributes((AttrType.CHANGE_REQUEST,))
    assert tx.local == tls
    # The IPv4 cache is shared by both kinds of answers: it must not mix them up.
    _, resp = one(server, request().encode(), local=PRIMARY)
    assert resp.get(MappedAddress) == MappedAddress(*CLIENT4)
    _, resp = one(server, request().encode(), local=tls)
    assert resp.get(MappedAddress) is None
    assert server.stats == stats(received=4, answered=3, errors_sent=1)


@pytest.mark.parametrize("make", [plain, rfc5780])
def test_stream_requests(make: object) -> None:
    """Over TCP/TLS the response goes back on the connection: no CHANGE-REQUEST, no
    RESPONSE-PORT (420), no RFC 5780 address attributes."""
    server = make()  # type: ignore[operator]
    tx = server.handle(request().encode(), CLIENT4, PRIMARY, NOW, stream=True)
    assert tx is not None and tx.local == PRIMARY and tx.addr == CLIENT4
    resp = Message.decode(tx.data)
    assert [type(a) for a in resp.attributes] == [XorMappedAddress, Software]
    req = request(ChangeRequest(True, False), ResponsePort(7000), RawAttribute(0x0041, b""))
    tx = server.handle(req.encode(), CLIENT4, PRIMARY, NOW, stream=True)
    assert tx is not None and tx.local == PRIMARY and tx.addr == CLIENT4
    resp = Message.decode(tx.data)
    assert resp.get(UnknownAttributes) == UnknownAttributes(
        (0x0041, AttrType.CHANGE_REQUEST, AttrType.RESPONSE_PORT)
    )
    _, resp = one(server, request(Padding(bytes(8))).encode())
    assert resp.get(Padding) == Padding(bytes(8))
    assert server.handle(b"junk", CLIENT4, PRIMARY, NOW, stream=True) is None


# --------------------------------------------------------------------------- driver surface


def test_datagrams_to_send_drains_in_order() -> None:
    server = rfc5780()
    tids = [bytes([i]) * 12 for i in range(3)]
    for i, tid in enumerate(tids):
        server.receive_datagram(request(tid=tid).encode(), CLIENT4, LOCALS[i], NOW + i)
    out = server.datagrams_to_send(NOW + 3)
    assert [Message.decode(t.data).transaction_id for t in out] == tids
    assert [t.local for t in out] == LOCALS[:3]
    assert server.datagrams_to_send(NOW + 4) == []


def test_handle_returns_what_receive_datagram_queues() -> None:
    server = plain()
    data = request().encode()
    tx = server.handle(data, CLIENT4, PRIMARY, NOW)
    assert tx is not None and tx.addr == CLIENT4 and tx.local == PRIMARY
    server.receive_datagram(data, CLIENT4, PRIMARY, NOW)
    assert server.datagrams_to_send(NOW) == [tx]
    assert server.handle(b"junk", CLIENT4, PRIMARY, NOW) is None
    assert server.datagrams_to_send(NOW) == []  # handle() itself does not queue


# --------------------------------------------------------------------------- properties


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200), five780=st.booleans())
def test_arbitrary_bytes_never_raise(data: bytes, five780: bool) -> None:
    server = rfc5780() if five780 else plain()
    server.receive_datagram(data, CLIENT4, PRIMARY, NOW)
    out = server.datagrams_to_send(NOW)
    assert len(out) <= 1
    s = server.stats
    assert s.received == 1
    assert (
        s.answered
        + s.errors_sent
        + s.indications
        + s.dropped_malformed
        + s.dropped_fingerprint
        + s.dropped_ignored
    ) == 1
    assert len(out) == s.answered + s.errors_sent
    for tx in out:
        assert Message.decode(tx.data).is_response
    streamed = server.handle(data, CLIENT4, PRIMARY, NOW, stream=True)
    assert streamed is None or Message.decode(streamed.data).is_response


_attr_types = st.one_of(
    st.sampled_from([0x0001, 0x0003, 0x0006, 0x0008, 0x0020, 0x0026, 0x0027, 0x8022, 0x8028]),
    st.integers(0, 0xFFFF),
)
_raw_attr = st.tuples(_attr_types, st.binary(max_size=24))


@settings(max_examples=500, deadline=None)
@given(
    klass=st.sampled_from(list(MessageClass)),
    method=st.sampled_from([Method.BINDING, Method.BINDING, Method.ALLOCATE, 0x123]),
    attrs=st.lists(_raw_attr, max_size=5),
    fingerprint=st.booleans(),
    cut=st.integers(0, 8),
    five780=st.booleans(),
)
def test_stun_shaped_input_never_raises(
    klass: MessageClass,
    method: int,
    attrs: list[tuple[int, bytes]],
    fingerprint: bool,
    cut: int,
    five780: bool,
) -> None:
    """Well-framed STUN with arbitrary attribute types and values, possibly truncated."""
    msg = Message(method, klass, TID, [RawAttribute(t, v) for t, v in attrs])
    data = msg.encode(fingerprint=fingerprint)
    data = data[: len(data) - cut]
    server = rfc5780() if five780 else plain()
    for local in server.local_addresses():
        server.receive_datagram(data, CLIENT4, local, NOW)
    for tx in server.datagrams_to_send(NOW):
        resp = Message.decode(tx.data)
        assert resp.transaction_id == TID and resp.is_response
        assert resp.verify_fingerprint()
        assert tx.local in server.local_addresses()


_optional_unknown = st.integers(0x8000, 0xFFFF).filter(
    lambda t: t not in {a.value for a in AttrType}
)


@settings(max_examples=300, deadline=None)
@given(
    software=st.one_of(st.none(), st.text(max_size=20)),
    extras=st.lists(st.tuples(_optional_unknown, st.binary(max_size=9)), max_size=3),
    client_software=st.one_of(st.none(), st.text(max_size=6).map(str.encode)),
    fingerprint=st.booleans(),
    client_fp=st.booleans(),
    five780=st.booleans(),
    client=st.sampled_from([CLIENT4, CLIENT6, ("::ffff:203.0.113.9", 4000)]),
    local_index=st.integers(0, 4),
    change=st.one_of(st.none(), st.tuples(st.booleans(), st.booleans())),
    padding=st.one_of(st.none(), st.integers(0, 2000)),
    repeat=st.integers(1, 2),
)
def test_a_success_is_the_message_encoding_of_its_attributes(
    software: str | None,
    extras: list[tuple[int, bytes]],
    client_software: bytes | None,
    fingerprint: bool,
    client_fp: bool,
    five780: bool,
    client: Address,
    local_index: int,
    change: tuple[bool, bool] | None,
    padding: int | None,
    repeat: int,
) -> None:
    """Issue 19: the one path writes a success from the bytes it keeps (per local address,
    per IPv4 source); what it writes is what Message.encode writes for the attributes
    RFC 8489 §6.3.1.1 and RFC 5780 §6.1 list, in that order (the first time and from the
    table of sources alike; on a listed address or another listener)."""
    server = (
        rfc5780(software=software, fingerprint=fingerprint)
        if five780
        else plain(software=software, fingerprint=fingerprint)
    )
    owned = server.local_addresses()
    local = owned[local_index] if local_index < len(owned) else ("198.51.100.1", 5349)
    here = five780 and local in owned
    attrs: list[Attribute] = [RawAttribute(t, v) for t, v in extras]
    if client_software is not None:
        attrs.insert(0, RawAttribute(AttrType.SOFTWARE, client_software))
    if change is not None and here:
        attrs.append(ChangeRequest(*change))
    if padding is not None:
        attrs.append(Padding(bytes(padding)))
    data = request(*attrs).encode(fingerprint=client_fp)
    for _ in range(repeat):
        got = server.handle(data, client, local, NOW)
    assert got is not None
    ip = client[0].removeprefix("::ffff:")
    source = local
    if here and change is not None:
        ips, ports = (A1, A2), (P1, P2)
        i, j = ips.index(local[0]), ports.index(local[1])
        source = (ips[1 - i] if change[0] else local[0], ports[1 - j] if change[1] else local[1])
    want: list[Attribute] = [XorMappedAddress(ip, client[1])]
    if here:
        other = (A2 if local[0] == A1 else A1, P2 if local[1] == P1 else P1)
        want += [MappedAddress(ip, client[1]), ResponseOrigin(*source), OtherAddress(*other)]
    if software is not None:
        want.append(Software(software))
    answer = Message(Method.BINDING, MessageClass.SUCCESS, TID, want)
    fp = client_fp or fingerprint
    if padding is not None:
        unpadded = len(answer.encode()) + 4 + (8 if fp else 0)
        length = min(
            (DEFAULT_MTU + 3) & ~3, (padding + 3) & ~3, max(0, 0xFFFF - 48 - unpadded) & ~3
        )
        answer.add(Padding(bytes(length)))
    assert got == Transmit(answer.encode(fingerprint=fp), client, source)
    assert server.stats.answered == repeat


def test_budget_bounds_response_port_answers_per_prefix() -> None:
    """issue 24: with an AnswerBudget, RESPONSE-PORT answers (to the source IP only, RFC 5780
    §7.5) are charged to the source's prefix like any other: 256 addresses of one /24 each
    asking 20 times get what one source would, at most 3 times the bytes they sent; over
    the budget no answer goes anywhere, neither to the source port nor to RESPONSE-PORT."""
    server = StunServer(
        primary=("192.0.2.1", 3478), other=("192.0.2.2", 3479), budget=AnswerBudget()
    )
    request = Message(
        Method.BINDING, MessageClass.REQUEST, b"r" * 12, [ResponsePort(9999)]
    ).encode()
    sent = received = answers = 0
    for round_ in range(20):
        now = 1000.0 + round_ * 0.1
        for host in range(256):
            source = (f"203.0.113.{host}", 40000)
            out = server.handle(request, source, ("192.0.2.1", 3478), now)
            sent += len(request)
            if out is not None:
                assert out.addr == (source[0], 9999)
                received += len(out.data)
                answers += 1
    assert 50 <= answers <= 50 + 2 * 20 + 1
    assert received <= 3 * sent
    assert server.stats.rate_limited == 20 * 256 - answers
