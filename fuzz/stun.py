"""Harnesses of the STUN layer: the codec, ChannelData and stream framing, the Binding server.

Contracts checked (docs/design.md "Errors", docs/design.md "Errors"):

- ``Message.decode`` raises only :class:`DecodeError`; a message it returns can be checked
  (``verify_*`` return booleans), re-encoded, and decodes back to the same message, signed
  or not.
- ``decode_channel_data`` raises only :class:`DecodeError`; ``StreamFramer.feed`` too, and
  the frames it finds do not depend on how the stream was cut into reads.
- ``StunServer.handle`` never raises; every answer decodes, carries the
  request's transaction id, goes back to the source (or RESPONSE-PORT) and is at most
  :data:`STUN_REFLECTION_SLACK` bytes longer than the request (no amplification).
"""

from __future__ import annotations

from anchor_stun.attributes import PasswordAlgorithmId, ResponsePort
from anchor_stun.errors import DecodeError
from anchor_stun.events import Address
from anchor_stun.framing import MAX_BUFFER, StreamFramer
from anchor_stun.integrity import long_term_key, short_term_key
from anchor_stun.message import HEADER_SIZE, Message, MessageClass
from anchor_stun.server import StunServer
from anchor_turn.channeldata import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
)

from .common import Reader, check

KEYS = (
    b"",
    long_term_key("alice", "example.org", "secret", PasswordAlgorithmId.MD5),
    long_term_key("alice", "example.org", "secret", PasswordAlgorithmId.SHA256),
    short_term_key("VOkJxbRl1RmTxUk/WvJxBt"),  # RFC 5769 §2
)
_SIGNING_OVERHEAD = 24 + 36 + 8  # MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, FINGERPRINT


# --------------------------------------------------------------------------- codec


def stun_decode(data: bytes) -> None:
    """``Message.decode`` of arbitrary bytes, then everything a receiver does with it."""
    try:
        msg = Message.decode(data)
    except DecodeError as exc:
        tid = exc.transaction_id
        check(tid is None or len(tid) == 12, f"DecodeError with a bad transaction id {tid!r}")
        return
    check(len(msg.transaction_id) == 12, "decoded transaction id is not 12 bytes")
    check(Message.decode(bytearray(data)) == msg, "bytearray decodes differently")
    check(Message.decode(memoryview(data)) == msg, "memoryview decodes differently")
    for key in KEYS:
        check(isinstance(msg.verify_integrity(key), bool), "verify_integrity not a bool")
        check(isinstance(msg.verify_integrity_sha256(key), bool), "verify_integrity_sha256")
    check(isinstance(msg.verify_fingerprint(), bool), "verify_fingerprint not a bool")
    msg.unknown_required()
    _ = msg.error, msg.is_request, msg.is_response

    # Whatever the codec accepted, it must be able to write back (docs/design.md "Errors").
    plain = msg.encode()
    again = Message.decode(plain)
    check(again == msg, f"decode(encode(m)) != m:\n{again!r}\n{msg!r}")
    check(plain == again.encode(), "encoding is not stable")
    if len(plain) - HEADER_SIZE + _SIGNING_OVERHEAD <= 0xFFFF:
        md5, sha = KEYS[1], KEYS[2]
        signed = msg.encode(key=md5, key_sha256=sha, sha256_length=16, fingerprint=True)
        back = Message.decode(signed)
        check(back == msg, "signing changed the attributes")
        check(back.verify_integrity(md5), "MESSAGE-INTEGRITY of a re-signed message fails")
        check(back.verify_integrity_sha256(sha), "MESSAGE-INTEGRITY-SHA256 fails")
        check(back.verify_fingerprint(), "FINGERPRINT of a re-signed message fails")
        check(not back.verify_integrity(sha), "MESSAGE-INTEGRITY verifies with a wrong key")
    if msg.is_request:  # what a server does first with a request it could not serve
        Message.decode(msg.error_response(400).encode(fingerprint=True))
        Message.decode(msg.response().encode(fingerprint=True))


# --------------------------------------------------------------------------- ChannelData


def _feed_all(framer: StreamFramer, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    frames: list[bytes] = []
    for chunk in chunks:
        try:
            frames.extend(framer.feed(chunk))
        except DecodeError:
            check(framer.buffered == 0, "framer kept bytes after a DecodeError")
            return frames, True
        check(framer.buffered <= MAX_BUFFER, f"framer buffers {framer.buffered} bytes")
    return frames, False


def channeldata_framer(data: bytes) -> None:
    """``decode_channel_data`` and ``StreamFramer`` on arbitrary bytes; the first byte picks
    padding, ChannelData support of the framer and how the stream is cut into reads."""
    r = Reader(data)
    flags = r.byte()
    body = r.rest()

    try:
        channel, payload = decode_channel_data(body)
    except DecodeError:
        pass
    else:
        check(CHANNEL_MIN <= channel <= CHANNEL_MAX, f"channel {channel:#x} accepted")
        check(is_channel_data(body), "decoded ChannelData that is_channel_data refuses")
        check(len(body) - 4 - len(payload) in range(4), "more than 3 bytes of padding")
        again = encode_channel_data(channel, payload, pad=bool(flags & 1))
        check(decode_channel_data(again) == (channel, payload), "ChannelData round trip")

    cd = bool(flags & 2)
    whole, whole_error = _feed_all(StreamFramer(channel_data=cd), [body])
    step = (flags >> 2) + 1  # 1..64 bytes per read
    cut = [body[i : i + step] for i in range(0, len(body), step)]
    pieces, pieces_error = _feed_all(StreamFramer(channel_data=cd), cut)
    check(whole_error == pieces_error, "framing error depends on how the stream was read")
    if not whole_error:
        check(whole == pieces, "frames depend on how the stream was read")
    check(b"".join(pieces) == body[: sum(map(len, pieces))], "frames are not the stream")
    for frame in pieces:
        if frame[0] < 0x40:
            check(len(frame) == HEADER_SIZE + int.from_bytes(frame[2:4], "big"), "STUN frame")
        else:
            check(cd and frame[0] < 0x80, "ChannelData frame from a STUN-only framer")
            size = int.from_bytes(frame[2:4], "big")
            check(len(frame) == 4 + size + (-size & 3), "ChannelData frame not padded")


# --------------------------------------------------------------------------- Binding server

PRIMARY: Address = ("192.0.2.1", 3478)
OTHER: Address = ("192.0.2.2", 3479)
FOREIGN_LOCAL: Address = ("192.0.2.1", 5349)
SOURCES: tuple[Address, ...] = (
    ("203.0.113.7", 40000),
    ("2001:db8::7", 40001),
    ("::ffff:203.0.113.9", 1),
    ("203.0.113.10", 65535),
)
STUN_REFLECTION_SLACK = 116
"""Most bytes a Binding response may add to its request: header + XOR-MAPPED-ADDRESS (IPv6)
+ MAPPED-ADDRESS + RESPONSE-ORIGIN + OTHER-ADDRESS + SOFTWARE "anchor" + FINGERPRINT
(20 + 4*24 + 12 + 8) minus the 20-byte header every request has. PADDING never grows it:
the server echoes at most the request's own PADDING (RFC 5780 §7.6)."""


def stun_server(data: bytes) -> None:
    """One request to a Binding server (plain or RFC 5780): the answer, if any, must be
    valid, small, and sent where the RFCs say."""
    r = Reader(data)
    flags = r.byte()
    where = r.byte()
    request = r.rest()
    rfc5780 = bool(flags & 1)
    stream = bool(flags & 2)
    addr = SOURCES[(flags >> 2) & 3]
    fingerprint = not flags & 0x10
    server = StunServer(primary=PRIMARY, other=OTHER if rfc5780 else None, fingerprint=fingerprint)
    locals_ = [*server.local_addresses(), FOREIGN_LOCAL]
    local = locals_[where % len(locals_)]
    now = 1000.0
    got = server.handle(request, addr, local, now, stream=stream)
    if got is None:
        return
    check(
        len(got.data) <= len(request) + STUN_REFLECTION_SLACK,
        f"{len(request)}-byte request got a {len(got.data)}-byte answer",
    )
    response = Message.decode(got.data)
    try:
        req = Message.decode(request)
    except DecodeError:  # a readable header and a malformed body: 400
        check(response.error is not None and response.error.code == 400, "not a 400")
        req = Message(response.method, MessageClass.REQUEST, request[8:20])
    check(response.transaction_id == req.transaction_id, "answer with another transaction id")
    check(response.msg_class in (MessageClass.SUCCESS, MessageClass.ERROR), "answer class")
    if response.fingerprint is not None:
        check(response.verify_fingerprint(), "answer with a bad FINGERPRINT")
    check(got.local in locals_ or got.local == local, f"answer from {got.local}")
    port = req.get(ResponsePort)
    allowed = {addr} if port is None or stream else {addr, (addr[0], port.value)}
    check(got.addr in allowed, f"answer to {got.addr}, not the source {addr}")
    if response.msg_class == MessageClass.ERROR:
        check(got.local == local, "an error answer left from another address")
