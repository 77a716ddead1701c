"""Wireshark's STUN dissector (tshark 4.0) as an independent judge of anchor_stun's encoder.

Messages of many kinds, all built with anchor_stun, go over real loopback sockets (UDP, and
TCP with RFC 8489 §6.2.2 framing) while tshark captures ``lo``. What this proves, per message:

- tshark decodes it as STUN with the message type, length, transaction id and attribute
  types (MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT included) we meant;
- nothing is malformed, there is no warning- or error-level expert info, and FINGERPRINT
  verifies (tshark checks it; it does not check MESSAGE-INTEGRITY);
- the values tshark reads back (addresses un-XORed, ports, strings, numbers, error codes,
  UNKNOWN-ATTRIBUTES, password algorithms, tie-breakers, ...) are the ones we encoded.

Negative controls show the checker is not vacuous: a broken FINGERPRINT and a truncated
header are reported.

tshark 4.0 quirks this file works around (not Anchor bugs): it still names 0x0027 by the old
draft's XOR-RESPONSE-TARGET instead of RFC 5780's RESPONSE-PORT, it reads the ICMP
attribute's type and code from the first two bytes of the value, where RFC 8656 §18.13 puts
16 reserved bits, and it warns "Unknown attribute" for types it does not know.
"""

from __future__ import annotations

import hashlib
import socket
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import (
    CRC_GOOD,
    LOOPBACK,
    STUN_FIELDS,
    TsharkCapture,
    stun_packets,
    stun_problems,
)

from anchor_stun.attributes import (
    AdditionalAddressFamily,
    AddressErrorCode,
    AlternateDomain,
    AlternateServer,
    Attribute,
    ChangeRequest,
    ChannelNumber,
    ConnectionId,
    Data,
    DontFragment,
    ErrorCodeAttribute,
    EvenPort,
    IceControlled,
    IceControlling,
    Icmp,
    Lifetime,
    MappedAddress,
    Nonce,
    OtherAddress,
    Padding,
    PasswordAlgorithm,
    PasswordAlgorithmId,
    PasswordAlgorithms,
    Priority,
    RawAttribute,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    UseCandidate,
    Userhash,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from anchor_stun.attributes import (
    _Address as AddressAttribute,
)
from anchor_stun.message import Message, MessageClass, Method

pytestmark = pytest.mark.peer("tshark")

KEY = hashlib.md5(b"alice:example.org:secret").digest()
KEY256 = hashlib.sha256(b"alice:example.org:secret").digest()

VALUE_FIELDS = (
    "stun.id",
    "stun.att.ipv4",
    "stun.att.ipv6",
    "stun.att.port",
    "stun.att.username",
    "stun.att.realm",
    "stun.att.nonce",
    "stun.att.software",
    "stun.att.priority",
    "stun.att.lifetime",
    "stun.att.channelnum",
    "stun.att.transp",
    "stun.att.error.class",
    "stun.att.error",
    "stun.att.error.reason",
    "stun.att.unknown",
    "stun.att.pw_alg",
    "stun.att.tie-breaker",
    "stun.att.change-ip",
    "stun.att.change-port",
    "stun.att.even-port.reserve-next",
    "stun.att.token",
    "stun.long_attribute",
    "stun.short_packet",
)
FIELDS = (*STUN_FIELDS, *VALUE_FIELDS)


@dataclass
class Case:
    """One message to send, and how to encode it."""

    name: str
    method: int
    klass: MessageClass
    attributes: list[Attribute]
    key: bytes | None = None
    key_sha256: bytes | None = None
    sha256_length: int = 32
    fingerprint: bool = True
    unknown_to_tshark: tuple[int, ...] = ()
    """Attribute types tshark does not know: it warns about them and lists no type."""

    @property
    def tid(self) -> bytes:
        return hashlib.sha256(self.name.encode()).digest()[:12]

    def message(self) -> Message:
        return Message(self.method, self.klass, self.tid, list(self.attributes))

    def encode(self) -> bytes:
        return self.message().encode(
            key=self.key,
            key_sha256=self.key_sha256,
            sha256_length=self.sha256_length,
            fingerprint=self.fingerprint,
        )

    def expected(self) -> dict[str, list[str]]:
        """The field values tshark should show for this message."""
        data = self.encode()
        exp: dict[str, list[str]] = defaultdict(list)
        exp["stun.type"] = [f"0x{int.from_bytes(data[:2], 'big'):04x}"]
        exp["stun.length"] = [str(len(data) - 20)]
        exp["stun.id"] = [self.tid.hex()]
        types = [a.type if isinstance(a, RawAttribute) else a.TYPE for a in self.attributes]
        types = [t for t in types if t not in self.unknown_to_tshark]
        types += [0x0008] if self.key is not None else []
        types += [0x001C] if self.key_sha256 is not None else []
        types += [0x8028] if self.fingerprint else []
        exp["stun.att.type"] = [f"0x{t:04x}" for t in types]
        exp["stun.att.crc32.status"] = [CRC_GOOD] if self.fingerprint else []
        for attr in self.attributes:
            _expect(attr, exp)
        return exp


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _expect(attr: Attribute, exp: dict[str, list[str]]) -> None:
    if isinstance(attr, AddressAttribute):
        exp["stun.att.ipv6" if ":" in attr.ip else "stun.att.ipv4"].append(attr.ip)
        exp["stun.att.port"].append(str(attr.port))
    elif isinstance(attr, Username):
        exp["stun.att.username"].append(attr.value)
    elif isinstance(attr, Realm):
        exp["stun.att.realm"].append(attr.value)
    elif isinstance(attr, Nonce):
        exp["stun.att.nonce"].append(attr.value)
    elif isinstance(attr, Software):
        exp["stun.att.software"].append(attr.value)
    elif isinstance(attr, Priority):
        exp["stun.att.priority"].append(str(attr.value))
    elif isinstance(attr, Lifetime):
        exp["stun.att.lifetime"].append(str(attr.value))
    elif isinstance(attr, ChannelNumber):
        exp["stun.att.channelnum"].append(f"0x{attr.value:04x}")
    elif isinstance(attr, RequestedTransport):
        exp["stun.att.transp"].append(f"0x{attr.protocol:02x}")
    elif isinstance(attr, ErrorCodeAttribute):
        exp["stun.att.error.class"].append(str(attr.code // 100))
        exp["stun.att.error"].append(str(attr.code % 100))
        exp["stun.att.error.reason"].append(attr.reason)
    elif isinstance(attr, UnknownAttributes):
        exp["stun.att.unknown"] += [f"0x{t:04x}" for t in attr.types]
    elif isinstance(attr, PasswordAlgorithms):
        exp["stun.att.pw_alg"] += [str(i) for i in attr.ids]
    elif isinstance(attr, PasswordAlgorithm):
        exp["stun.att.pw_alg"].append(str(attr.algorithm))
    elif isinstance(attr, IceControlled | IceControlling):
        exp["stun.att.tie-breaker"].append(f"{attr.value:016x}")
    elif isinstance(attr, ChangeRequest):
        exp["stun.att.change-ip"].append(_flag(attr.change_ip))
        exp["stun.att.change-port"].append(_flag(attr.change_port))
    elif isinstance(attr, EvenPort):
        exp["stun.att.even-port.reserve-next"].append(_flag(attr.reserve))
    elif isinstance(attr, ReservationToken):
        exp["stun.att.token"].append(attr.value.hex())


# Fields compared exactly with Case.expected(); RESPONSE-PORT (0x0027) adds a bogus "port"
# in tshark 4.0 (see the module docstring), so ports are not compared for that case.
COMPARED = (
    "stun.type",
    "stun.length",
    "stun.id",
    "stun.att.type",
    "stun.att.crc32.status",
    *(f for f in VALUE_FIELDS if f.startswith("stun.att.")),
)

USERNAME = Username("alice")
REALM = Realm("example.org")
NONCE = Nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")

CASES = [
    Case(
        "binding request (ICE check)",
        Method.BINDING,
        MessageClass.REQUEST,
        [
            Software("anchor test"),
            Priority(0x6E0001FF),
            IceControlling(0x932FF9B151263B36),
            UseCandidate(),
            Username("9a3f:1b2c"),
        ],
        key=b"VOkJxbRl1RmTxUk/WvJxBt",
    ),
    Case(
        "binding request, controlled, no fingerprint",
        Method.BINDING,
        MessageClass.REQUEST,
        [Priority(1), IceControlled(2**64 - 1), Username("a:b")],
        key=b"pwd",
        fingerprint=False,
    ),
    Case(
        "binding success ipv4",
        Method.BINDING,
        MessageClass.SUCCESS,
        [XorMappedAddress("192.0.2.1", 32853), MappedAddress("192.0.2.1", 32853)],
        key=b"VOkJxbRl1RmTxUk/WvJxBt",
    ),
    Case(
        "binding success ipv6",
        Method.BINDING,
        MessageClass.SUCCESS,
        [XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853), Software("x")],
    ),
    Case(
        "binding error 420",
        Method.BINDING,
        MessageClass.ERROR,
        [
            ErrorCodeAttribute(420, "Unknown Attribute"),
            UnknownAttributes((0x7F31, 0x0002, 0x7777)),  # odd count: 2 bytes of padding
        ],
    ),
    Case(
        "binding error 487",
        Method.BINDING,
        MessageClass.ERROR,
        [ErrorCodeAttribute(487, "Role Conflict")],
        key=b"pwd",
    ),
    Case(
        "binding error 300 try alternate",
        Method.BINDING,
        MessageClass.ERROR,
        [
            ErrorCodeAttribute(300, "Try Alternate"),
            AlternateServer("2001:db8::3478", 3478),
            AlternateDomain("turn.example.org"),
        ],
    ),
    Case(
        "allocate request unauthenticated",
        Method.ALLOCATE,
        MessageClass.REQUEST,
        [RequestedTransport(17), Lifetime(600), DontFragment(), EvenPort(True)],
    ),
    Case(
        "allocate 401",
        Method.ALLOCATE,
        MessageClass.ERROR,
        [
            ErrorCodeAttribute(401, "Unauthenticated"),
            REALM,
            NONCE,
            PasswordAlgorithms(((PasswordAlgorithmId.SHA256, b""), (PasswordAlgorithmId.MD5, b""))),
        ],
    ),
    Case(
        "allocate request long-term MI + MI-SHA256",
        Method.ALLOCATE,
        MessageClass.REQUEST,
        [
            RequestedTransport(17),
            USERNAME,
            REALM,
            NONCE,
            PasswordAlgorithms.of(PasswordAlgorithmId.SHA256, PasswordAlgorithmId.MD5),
            PasswordAlgorithm(PasswordAlgorithmId.SHA256),
        ],
        key=KEY,
        key_sha256=KEY256,
    ),
    Case(
        "allocate request userhash, truncated MI-SHA256",
        Method.ALLOCATE,
        MessageClass.REQUEST,
        [
            RequestedTransport(17),
            Userhash(hashlib.sha256(b"alice:example.org").digest()),
            REALM,
            NONCE,
            RequestedAddressFamily(2),
            AdditionalAddressFamily(2),
        ],
        key_sha256=KEY256,
        sha256_length=16,
    ),
    Case(
        "allocate success",
        Method.ALLOCATE,
        MessageClass.SUCCESS,
        [
            XorRelayedAddress("203.0.113.7", 49152),
            XorRelayedAddress("2001:db8::7", 49153),
            XorMappedAddress("198.51.100.9", 40000),
            Lifetime(600),
            ReservationToken(b"\x01\x02\x03\x04\x05\x06\x07\x08"),
            AddressErrorCode(2, 440, "Address Family not Supported"),
        ],
        key=KEY,
    ),
    Case(
        "refresh release",
        Method.REFRESH,
        MessageClass.REQUEST,
        [Lifetime(0), USERNAME, REALM, NONCE],
        key=KEY,
    ),
    Case(
        "create permission",
        Method.CREATE_PERMISSION,
        MessageClass.REQUEST,
        [
            XorPeerAddress("192.0.2.150", 0),
            XorPeerAddress("2001:db8::150", 0),
            USERNAME,
            REALM,
            NONCE,
        ],
        key=KEY,
    ),
    Case(
        "channel bind",
        Method.CHANNEL_BIND,
        MessageClass.REQUEST,
        [ChannelNumber(0x4001), XorPeerAddress("192.0.2.15", 9000), USERNAME, REALM, NONCE],
        key=KEY,
    ),
    Case(
        "send indication",
        Method.SEND,
        MessageClass.INDICATION,
        [XorPeerAddress("192.0.2.15", 9000), Data(b"hello, peer"), DontFragment()],
        fingerprint=False,
    ),
    Case(
        "data indication ipv6 + icmp",
        Method.DATA,
        MessageClass.INDICATION,
        [XorPeerAddress("2001:db8::15", 9000), Data(bytes(range(256)) * 4), Icmp(3, 4, 1400)],
    ),
    Case(
        "binding request rfc5780",
        Method.BINDING,
        MessageClass.REQUEST,
        [ChangeRequest(True, False), Padding(b"\0" * 100), ResponsePort(40000)],
    ),
    Case(
        "binding success rfc5780",
        Method.BINDING,
        MessageClass.SUCCESS,
        [
            XorMappedAddress("192.0.2.1", 50000),
            ResponseOrigin("192.0.2.200", 3478),
            OtherAddress("192.0.2.201", 3479),
        ],
    ),
    Case(
        "connect + connection id (rfc 6062)",
        Method.CONNECT,
        MessageClass.REQUEST,
        [XorPeerAddress("192.0.2.15", 80), ConnectionId(0x01020304)],
        key=KEY,
    ),
    Case(
        "unknown attributes",
        Method.BINDING,
        MessageClass.REQUEST,
        [RawAttribute(0x7F31, b"abc"), RawAttribute(0xC057, b"\x00\x01\x00\x0a")],
        unknown_to_tshark=(0x7F31,),  # tshark knows 0xC057 (GOOG-NETWORK-INFO)
    ),
]


# --------------------------------------------------------------------------- captures


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    return sock


@dataclass
class UdpRun:
    pcap: Path
    port: int
    bad_port: int
    packets: dict[str, dict[str, list[str]]]
    """Decoded packets by transaction id (hex)."""


@pytest.fixture(scope="module")
def udp_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UdpRun]:
    """Send every case (and the negative controls) over UDP once, under one capture."""
    rx, bad_rx, tx = _udp_socket(), _udp_socket(), _udp_socket()
    port, bad_port = rx.getsockname()[1], bad_rx.getsockname()[1]
    capture = TsharkCapture(
        tmp_path_factory.mktemp("tshark") / "udp.pcapng",
        f"udp port {port} or udp port {bad_port}",
    )
    try:
        capture.start()
        for case in CASES:
            tx.sendto(case.encode(), (LOOPBACK, port))
        for data in negative_controls():
            tx.sendto(data, (LOOPBACK, bad_port))
        pcap = capture.stop()
        packets = {}
        for packet in stun_packets(pcap, port, fields=FIELDS):
            (tid,) = packet["stun.id"]
            packets[tid] = packet
        yield UdpRun(pcap, port, bad_port, packets)
    finally:
        capture.close()
        for sock in (rx, bad_rx, tx):
            sock.close()


def negative_controls() -> list[bytes]:
    good = Message(Method.BINDING, MessageClass.REQUEST, b"N" * 12, [Software("x")])
    bad_fingerprint = bytearray(good.encode(fingerprint=True))
    bad_fingerprint[-1] ^= 0xFF
    return [bytes(bad_fingerprint), good.encode()[:16]]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tshark_decodes_anchor_message(udp_run: UdpRun, case: Case) -> None:
    packet = udp_run.packets.get(case.tid.hex())
    assert packet is not None, f"tshark did not decode {case.name!r} as STUN"
    if case.unknown_to_tshark:
        warnings = [f"Unknown attribute 0x{t:04x}" for t in case.unknown_to_tshark]
        assert packet["_ws.expert.message"] == warnings
        assert not packet["_ws.malformed"]
    else:
        assert stun_problems(packet) == [], packet
    assert not packet["stun.long_attribute"] and not packet["stun.short_packet"]
    expected = case.expected()
    for name in COMPARED:
        if name == "stun.att.port" and any(isinstance(a, ResponsePort) for a in case.attributes):
            continue
        assert packet[name] == expected.get(name, []), name


def test_every_case_was_captured(udp_run: UdpRun) -> None:
    assert set(udp_run.packets) == {case.tid.hex() for case in CASES}


def test_negative_controls_are_reported(udp_run: UdpRun) -> None:
    packets = stun_packets(udp_run.pcap, udp_run.bad_port, fields=FIELDS)
    assert len(packets) == 2
    bad_fingerprint, truncated = packets
    assert "bad FINGERPRINT" in stun_problems(bad_fingerprint)
    assert "not decoded as STUN" in stun_problems(truncated)


# --------------------------------------------------------------------------- TCP


def test_tshark_decodes_anchor_messages_over_tcp(
    tshark_capture: Callable[..., TsharkCapture],
) -> None:
    """Several messages back to back on one TCP stream (RFC 8489 §6.2.2 framing: each
    message is delimited by its own length), some in one segment."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    cases = [c for c in CASES if not c.unknown_to_tshark][:6]
    capture = tshark_capture(f"tcp port {port}", name="tcp")
    try:
        client = socket.create_connection((LOOPBACK, port))
        server, _ = listener.accept()
        with client, server:
            client.sendall(b"".join(c.encode() for c in cases[:3]))  # one segment
            for case in cases[3:]:
                client.sendall(case.encode())
            received = b""
            want = sum(len(c.encode()) for c in cases)
            while len(received) < want:
                chunk = server.recv(65536)
                assert chunk
                received += chunk
            assert received == b"".join(c.encode() for c in cases)
        pcap = capture.stop()
    finally:
        listener.close()
    packets = stun_packets(pcap, port, transport="tcp", fields=FIELDS)
    stun_frames = [p for p in packets if p["stun.type"]]
    assert stun_frames, "tshark decoded nothing as STUN over TCP"
    for packet in stun_frames:
        assert not packet["_ws.malformed"], packet
        assert not [s for s in packet["_ws.expert.severity"] if int(s) >= 0x00600000], packet
    seen = [tid for p in stun_frames for tid in p["stun.id"]]
    assert seen == [c.tid.hex() for c in cases]
    types = [t for p in stun_frames for t in p["stun.type"]]
    assert types == [c.expected()["stun.type"][0] for c in cases]
