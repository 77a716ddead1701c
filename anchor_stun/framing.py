"""Framing of STUN (and TURN ChannelData) over stream transports (RFC 8489 §6.2.2, RFC 8656 §12.5).

Over TCP and TLS, STUN messages follow each other with no extra framing: the 20-byte header
gives the length. TURN adds ChannelData messages (first byte 0x40-0x7F: a 4-byte header, then
the data padded to a multiple of 4 over streams). :class:`StreamFramer` turns a byte stream
into whole frames; bytes that can be neither make it raise
:class:`~anchor_stun.errors.StreamCorrupted` (a :class:`DecodeError`), after which the
connection should be closed (there is no way to find the next frame boundary); the exception
carries the whole frames that came before the junk in the same read, which are not lost.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from anchor_stun.attributes import MAGIC_COOKIE_BYTES
from anchor_stun.errors import StreamCorrupted

__all__ = [
    "MAX_BUFFER",
    "StreamFramer",
]

_LEN = struct.Struct("!H")
MAX_BUFFER = 0xFFFF + 20
"""The largest frame a stream can carry; a peer cannot make the buffer grow beyond it."""


class StreamFramer:
    """Reassembles STUN and ChannelData frames from a byte stream."""

    __slots__ = ("_buf", "channel_data")

    def __init__(self, *, channel_data: bool = False) -> None:
        self._buf = bytearray()
        self.channel_data = channel_data
        """Accept ChannelData frames (TURN); otherwise only STUN messages are valid."""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they completed, in order. Raises
        :class:`~anchor_stun.errors.StreamCorrupted` (with the good frames before the junk)
        when the bytes can be no frame; the buffer is then empty."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        size = len(buf)
        while size - pos >= 4:
            first = buf[pos]
            length = _LEN.unpack_from(buf, pos + 2)[0]
            if first < 0x40:
                if size - pos >= 8 and buf[pos + 4 : pos + 8] != MAGIC_COOKIE_BYTES:
                    self._corrupt("stream carries a non-STUN message", "magic_cookie", frames)
                if length & 3:
                    self._corrupt("STUN length not a multiple of 4", "length", frames)
                total = 20 + length
            elif self.channel_data and first < 0x80:
                total = 4 + length + (-length & 3)
            else:
                self._corrupt(f"stream frame starts with {first:#04x}", "type", frames)
            if size - pos < total:
                break
            frames.append(bytes(buf[pos : pos + total]))
            pos += total
        if pos:
            del buf[:pos]
        return frames

    def _corrupt(self, message: str, field: str, frames: list[bytes]) -> NoReturn:
        self._buf = bytearray()
        raise StreamCorrupted(message, field=field, frames=frames)
