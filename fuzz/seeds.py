"""Write the seed corpus: ``python -m fuzz.seeds`` (re)creates ``fuzz/corpus/<harness>/seed-*``.

Seeds are small valid inputs of every kind, built with Anchor's own codec (and the RFC 5769 /
RFC 8489 vectors of ``tests/data``), so that the fuzzer starts past the magic cookie, the
length checks and the login. They are deterministic: running this again rewrites the same
bytes. Inputs the fuzzer finds sit next to them (``scripts/fuzz``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import crc32c

from anchor_link.reliable import PLAIN_FIRST_BYTE
from anchor_stun.attributes import (
    AttrType,
    ChangeRequest,
    ChannelNumber,
    Data,
    ErrorCodeAttribute,
    IceControlling,
    Lifetime,
    Padding,
    PasswordAlgorithm,
    PasswordAlgorithms,
    Priority,
    RawAttribute,
    Realm,
    RequestedTransport,
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
from anchor_stun.integrity import long_term_key, short_term_key, userhash
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn.channeldata import encode_channel_data

from . import turn as turn_harness
from .harnesses import HARNESSES

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
TEST_DATA = ROOT.parent / "tests" / "data"
TID = bytes(range(1, 13))


def _hex_file(path: Path) -> bytes:
    lines = (line.split("#", 1)[0] for line in path.read_text().splitlines())
    return bytes.fromhex(" ".join(lines))


def rfc_vectors() -> list[bytes]:
    """The RFC 5769 and RFC 8489 sample messages kept in tests/data."""
    return [_hex_file(p) for p in sorted(TEST_DATA.glob("*.hex"))]


def _msg(method: int, klass: MessageClass, *attrs: object) -> Message:
    return Message(method, klass, TID, list(attrs))  # type: ignore[arg-type]


def stun_messages() -> list[bytes]:
    """Valid messages of each kind the codec writes."""
    md5 = long_term_key("alice", "example.org", "secret", 1)
    sha = long_term_key("alice", "example.org", "secret", 2)
    short = short_term_key("VOkJxbRl1RmTxUk/WvJxBt")
    req = MessageClass.REQUEST
    out = [
        _msg(Method.BINDING, req).encode(),
        _msg(Method.BINDING, req).encode(fingerprint=True),
        _msg(Method.BINDING, req, Software("anchor")).encode(fingerprint=True),
        _msg(
            Method.BINDING,
            req,
            Username("evtj:h6vY"),
            Priority(0x6E0001FF),
            IceControlling(0x932FF9B151263B36),
            UseCandidate(),
        ).encode(key=short, fingerprint=True),
        _msg(Method.BINDING, MessageClass.SUCCESS, XorMappedAddress("192.0.2.1", 32853)).encode(
            fingerprint=True
        ),
        _msg(Method.BINDING, MessageClass.SUCCESS, XorMappedAddress("2001:db8::1", 1)).encode(),
        _msg(
            Method.ALLOCATE,
            MessageClass.ERROR,
            ErrorCodeAttribute(401, "Unauthorized"),
            Realm("example.org"),
            RawAttribute(AttrType.NONCE, b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
            PasswordAlgorithms.of(2, 1),
        ).encode(fingerprint=True),
        _msg(
            Method.ALLOCATE,
            req,
            RequestedTransport(),
            Lifetime(600),
            Username("alice"),
            Realm("example.org"),
            PasswordAlgorithm(2),
        ).encode(key_sha256=sha, fingerprint=True),
        _msg(
            Method.CHANNEL_BIND,
            req,
            ChannelNumber(0x4001),
            XorPeerAddress("198.51.100.20", 6000),
            Userhash(userhash("alice", "example.org")),
        ).encode(key=md5, key_sha256=sha, sha256_length=16, fingerprint=True),
        _msg(
            Method.ALLOCATE,
            MessageClass.SUCCESS,
            XorRelayedAddress("192.0.2.100", 50000),
            XorRelayedAddress("2001:db8::100", 50001),
            Lifetime(600),
            XorMappedAddress("203.0.113.7", 40000),
        ).encode(key=md5),
        _msg(
            Method.SEND,
            MessageClass.INDICATION,
            XorPeerAddress("2001:db8:2::20", 6000),
            Data(b"hi"),
        ).encode(fingerprint=True),
        _msg(
            Method.BINDING,
            MessageClass.ERROR,
            ErrorCodeAttribute(420, "Unknown Attribute"),
            UnknownAttributes((0x0030, 0x0031)),
        ).encode(),
        _msg(Method.BINDING, req, RawAttribute(0x0030, b"\x01\x02\x03")).encode(),
        _msg(Method.BINDING, req, ChangeRequest(True, True), ResponsePort(5000)).encode(),
        _msg(Method.BINDING, req, Padding(b"\x00" * 64)).encode(fingerprint=True),
    ]
    return out + rfc_vectors()


def channeldata_seeds() -> list[bytes]:
    stun = stun_messages()
    cd = encode_channel_data(0x4000, b"hello")
    padded = encode_channel_data(0x4FFF, b"hello", pad=True)
    return [
        b"\x02" + cd,
        b"\x03" + padded,
        b"\x02" + padded + stun[1] + cd + b"\x00" * 3,
        b"\x00" + stun[0] + stun[3],
        b"\x42" + stun[7] + stun[1],
        b"\x06" + encode_channel_data(0x4001, b""),
    ]


def stun_server_seeds() -> list[bytes]:
    msgs = stun_messages()
    out: list[bytes] = []
    for i, msg in enumerate((msgs[0], msgs[1], msgs[2], msgs[3], msgs[12], msgs[13], msgs[14])):
        out.append(bytes((i & 0x0F, i)) + msg)
        out.append(bytes((0x01 | (i & 0x0C), i)) + msg)  # RFC 5780 server
    out.append(b"\x03\x00" + msgs[13])  # CHANGE-REQUEST over a stream
    out.append(b"\x00\x00" + msgs[7])  # not Binding: 400
    return out


# --------------------------------------------------------------------------- TURN programs


class TurnProgram:
    """Builds inputs of fuzz.turn.turn_server (its Reader format, op by op)."""

    def __init__(self, config: int = 0) -> None:
        self.data = bytearray((config,))

    def _head(self, op: int, client: int, transport: int) -> None:
        self.data += bytes((op, client, transport))

    def signed(
        self,
        method: int,
        *attrs: bytes,
        client: int = 0,
        transport: int = 0,
        user: int = 0,
        corrupt: int | None = None,
    ) -> TurnProgram:
        self._head(2 if corrupt is not None else 1, client, transport)
        self.data += bytes((user, method, len(attrs))) + b"".join(attrs) + b"\x01"
        if corrupt is not None:
            self.data += corrupt.to_bytes(2, "big") + b"\x01"
        return self

    def unsigned(self, method: int, klass: int, *attrs: bytes, client: int = 0) -> TurnProgram:
        self._head(4, client, 0)
        self.data += bytes((method, klass, len(attrs))) + b"".join(attrs) + b"\x01"
        return self

    def raw(self, data: bytes, client: int = 0, transport: int = 0) -> TurnProgram:
        self._head(0, client, transport)
        self.data += chunk(data)
        return self

    def replay(self, index: int, client: int = 0) -> TurnProgram:
        self._head(3, client, 0)
        self.data += bytes((index,))
        return self

    def channel_data(self, payload: bytes, client: int = 0, transport: int = 0) -> TurnProgram:
        self._head(5, client, transport)
        self.data += b"\x01" + chunk(payload) + b"\x00"  # the first bound channel
        return self

    def send(self, peer_ip: int, payload: bytes, client: int = 0) -> TurnProgram:
        self._head(6, client, 0)
        self.data += bytes((peer_ip, 0)) + chunk(payload) + b"\x00\x01"
        return self

    def from_peer(self, relay: int, peer_ip: int, payload: bytes) -> TurnProgram:
        self._head(7, 0, 0)
        self.data += bytes((relay, peer_ip, 0)) + chunk(payload)
        return self

    def wait(self, step: int) -> TurnProgram:
        self._head(8, 0, 0)
        self.data += bytes((step,))
        return self

    def close(self, client: int = 0, transport: int = 1) -> TurnProgram:
        self._head(9, client, transport)
        return self


def chunk(data: bytes) -> bytes:
    """The Reader.chunk() encoding of ``data``."""
    if len(data) < 255:
        return bytes((len(data),)) + data
    return b"\xff" + len(data).to_bytes(2, "big") + data


# attribute encodings of fuzz.turn._attributes
def a_peer(ip: int = 0, port: int = 0) -> bytes:
    return bytes((0, ip, port))


def a_channel(number: int) -> bytes:
    return b"\x01" + number.to_bytes(2, "big")


def a_lifetime(index: int) -> bytes:
    return bytes((2, index))


A_UDP = b"\x03\x00"
A_TCP = b"\x03\x01"
A_IPV6 = b"\x04\x01"
A_DUAL = b"\x05\x00"
A_EVEN_R = b"\x06\x01"
A_TOKEN = b"\x07\x00"
A_DF = b"\x09"


def a_raw(type_index: int, value: bytes) -> bytes:
    return bytes((11, type_index)) + chunk(value)


ALLOCATE, REFRESH, PERMISSION, BIND, BINDING = 0, 1, 2, 3, 4
FORBIDDEN_PEERS = [
    i for i, ip in enumerate(turn_harness.PEER_IPS) if not turn_harness.reference_allowed(ip)
]


def turn_seeds() -> list[bytes]:
    flow = (
        TurnProgram()
        .signed(ALLOCATE, A_UDP)
        .signed(PERMISSION, a_peer(0))
        .send(0, b"to peer")
        .from_peer(0, 0, b"from peer")
        .signed(BIND, a_channel(0x4000), a_peer(0))
        .channel_data(b"over the channel")
        .from_peer(0, 0, b"back on the channel")
        .signed(REFRESH, a_lifetime(3))
        .wait(4)
        .from_peer(0, 0, b"after the permission expired")
        .signed(REFRESH, a_lifetime(0))
    )
    tcp = (
        TurnProgram()
        .signed(ALLOCATE, A_UDP, A_DUAL, transport=1, user=1)
        .signed(BIND, a_channel(0x4FFF), a_peer(1), transport=1, user=1)
        .from_peer(1, 1, b"six")
        .close(0, 1)
    )
    abuse = TurnProgram(config=1).signed(ALLOCATE, A_UDP)
    for i in FORBIDDEN_PEERS[:8]:
        abuse.signed(PERMISSION, a_peer(i))
        abuse.signed(BIND, a_channel(0x4000 + i), a_peer(i))
        abuse.send(i, b"x")
    quota = TurnProgram(config=1)
    for client in range(4):
        quota.signed(ALLOCATE, A_UDP, client=client)
    quota.signed(ALLOCATE, A_UDP, A_EVEN_R, client=1, transport=1)
    quota.signed(ALLOCATE, A_TOKEN, client=2, transport=1)
    for i in range(4):
        quota.signed(PERMISSION, a_peer(0, i), a_peer(1, i), a_peer(2, i))
    replay = (
        TurnProgram(config=16)
        .signed(ALLOCATE, A_UDP)
        .replay(0)
        .replay(0, client=1)
        .signed(PERMISSION, a_peer(0), corrupt=30)
        .wait(3)
        .replay(1)
        .signed(PERMISSION, a_peer(0))
    )
    odd = (
        TurnProgram(config=2 | 4 | 8)
        .unsigned(ALLOCATE, 0, A_UDP)
        .unsigned(BINDING, 0)
        .unsigned(6, 1, a_peer(0), b"\x08\x02hi")
        .signed(ALLOCATE, A_TCP)
        .signed(ALLOCATE, A_IPV6, A_DUAL)
        .signed(ALLOCATE, A_UDP, a_raw(15, b"\x00\x00"))
        .signed(ALLOCATE, A_UDP, a_raw(0, b"\x00\x01\x02"))
        .signed(BIND, a_channel(0x7000), a_peer(0))
        .signed(BINDING, A_DF)
        .raw(encode_channel_data(0x4000, b"raw"))
    )
    return [bytes(p.data) for p in (flow, tcp, abuse, quota, replay, odd)]


# --------------------------------------------------------------------------- channel


def _frame(body: bytes) -> bytes:
    return chunk(body)


def channel_seeds() -> list[bytes]:
    data1 = b"\x31" + (0).to_bytes(4, "big") + b"hello"
    data2 = b"\x11" + (1).to_bytes(4, "big") + b"frag"
    data3 = b"\x21" + (2).to_bytes(4, "big") + b"ment"
    fin = b"\x03" + (3).to_bytes(4, "big")
    ack = (
        b"\x02" + (1).to_bytes(4, "big") + b"\x01" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    )
    plain = bytes((PLAIN_FIRST_BYTE,))
    raw_frame = plain + data1
    raw_frame += crc32c.crc32c(raw_frame).to_bytes(4, "little")
    out = []
    for mode in (0, 2, 4, 6):  # injection: plain / sealed, default / small
        prog = bytearray((mode,))
        for body in (data1, data2, data3, ack, fin):
            prog += b"\x01" + (b"\xc5" if mode & 2 else b"") + _frame(body)
        prog += b"\x02\x00" + b"\x03\x03" + b"\x04" + chunk(b"reply") + b"\x05" + b"\x03\x06"
        prog += b"\x00" + chunk(raw_frame)
        out.append(bytes(prog))
    for mode in (1, 3, 5, 7):  # network
        prog = bytearray((mode,))
        prog += b"\x00" + chunk(b"ping") + b"\x00"  # a sends "ping"
        prog += b"\x03\x00"  # deliver to b
        prog += b"\x01" + chunk(b"pong" * 40) + b"\x03"  # b sends 640 bytes
        prog += b"\x04\x00"  # drop one on its way to a
        prog += b"\x06\x00"  # duplicate
        prog += b"\x07\x03"  # wait 1 s
        prog += b"\x09\x01\x00\x00\x05\x01"  # corrupt one in flight
        prog += b"\x08\x00"  # a closes
        out.append(bytes(prog))
    return out


# --------------------------------------------------------------------------- SDP

SDP_TEXTS = [
    "candidate:1 1 UDP 2130706431 192.0.2.10 50000 typ host",
    "a=candidate:842163049 1 udp 1677729535 203.0.113.7 61234 typ srflx raddr 192.0.2.10"
    " rport 50000 generation 0 ufrag EsAw network-id 1 network-cost 10",
    "candidate:3 1 tcp 1518280447 2001:db8::10 9 typ host tcptype active",
    "candidate:4 1 udp 16777215 198.51.100.1 3478 typ relay raddr 203.0.113.7 rport 61234",
    "candidate:5 1 udp 2113937151 1f4712db-ea17-4bcf-a596-105139dfd8bf.local 54400 typ host",
    "m=- 50112 ICE/SDP\nc=IN IP4 203.0.113.7\na=ice-ufrag:Fw2R\na=ice-pwd:0Ea5aGCj3Q8tFJ1wQxqgLh\n"
    "a=candidate:1 1 UDP 2130706431 192.0.2.10 50112 typ host\na=end-of-candidates\n",
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=ice-options:trickle\r\na=ice-lite\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "c=IN IP4 0.0.0.0\r\na=ice-ufrag:Fw2R\r\na=ice-pwd:0Ea5aGCj3Q8tFJ1wQxqgLh\r\n"
    "a=ice-pacing:50\r\na=candidate:1 1 udp 2113937151 192.0.2.10 50000 typ host\r\n"
    "m=audio 9 RTP/AVP 0\r\nc=IN IP6 ::\r\na=ice-ufrag:Zz9Y\r\na=ice-pwd:abcdefghijklmnopqrstuvwxyz\r\n",
    "a=ice-ufrag:abcd\na=ice-pwd:aaaaaaaaaaaaaaaaaaaaaa\ncandidate:1 1 udp 1 ::1 1 typ prflx\n",
]


def sdp_seeds() -> list[bytes]:
    out = []
    for text in SDP_TEXTS:
        flag = 1 if text.startswith(("candidate", "a=candidate")) else 0
        out.append(bytes((flag,)) + text.encode())
    out.append(b"\x02" + SDP_TEXTS[6].encode())  # the second media section
    return out


SEEDS = {
    "stun_decode": stun_messages,
    "channeldata": channeldata_seeds,
    "stun_server": stun_server_seeds,
    "turn_server": turn_seeds,
    "channel": channel_seeds,
    "sdp": sdp_seeds,
}


def write(name: str, inputs: Iterable[bytes]) -> int:
    """Write ``inputs`` as ``fuzz/corpus/<name>/seed-<sha1 prefix>``; returns how many."""
    directory = CORPUS / name
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for data in inputs:
        (directory / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        n += 1
    return n


def main() -> None:
    extra = {}
    try:
        from . import ice

        extra = {"ice_agent": ice.seeds}
    except ImportError:
        pass
    for name, make in {**SEEDS, **extra}.items():
        if name in HARNESSES:
            print(f"{name}: {write(name, make())} seeds")


if __name__ == "__main__":
    main()
