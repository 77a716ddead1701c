"""ChannelData messages (RFC 8656 §12.4, §12.5).

A ChannelData message is a 4-byte header (channel number 0x4000-0x4FFF, data length) followed
by the application data. Over UDP the data is not padded (a receiver accepts padding); over
TCP and TLS it is padded to a multiple of 4 bytes. The first byte (0x40-0x4F) tells it apart
from STUN (0x00-0x03) on the same 5-tuple (RFC 7983).
"""

from __future__ import annotations

import struct

from anchor_stun.errors import DecodeError, LocalProtocolError

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MAX_RFC5766",
    "CHANNEL_MIN",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
    "valid_channel",
]

CHANNEL_MIN = 0x4000  # RFC 8656 §12
CHANNEL_MAX = 0x4FFF  # RFC 8656 §12
CHANNEL_MAX_RFC5766 = 0x7FFF  # RFC 5766 §11: the wider range RFC 8656 §12 narrowed
_HEAD = struct.Struct("!HH")
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


def is_channel_data(data: bytes) -> bool:
    """True when the first byte says ChannelData (0x40-0x4F, RFC 8656 §12, RFC 7983)."""
    return len(data) >= 4 and 0x40 <= data[0] <= 0x4F


def valid_channel(number: int) -> bool:
    """True for channel numbers a client may bind (RFC 8656 §12)."""
    return CHANNEL_MIN <= number <= CHANNEL_MAX


def encode_channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
    """A ChannelData message; ``pad`` to 4 bytes for stream transports (RFC 8656 §12.5)."""
    try:
        if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            raise LocalProtocolError(
                f"channel must be a channel number {CHANNEL_MIN:#x}-{CHANNEL_MAX:#x},"
                f" not {hex(channel) if isinstance(channel, int) else repr(channel)}"
            )
        size = len(data)
        if size > 0xFFFF:
            raise LocalProtocolError("ChannelData longer than 65535 bytes")
        if pad and size & 3:
            return b"".join((_HEAD.pack(channel, size), data, _PAD[size & 3]))
        return _HEAD.pack(channel, size) + data
    except (TypeError, struct.error):  # only on a bad argument: no cost on the fast path
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise TypeError(f"channel must be an int channel number, not {channel!r}") from None
        raise TypeError(f"data must be bytes, not {type(data).__name__}") from None


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    """(channel, application data) of a ChannelData message; padding after the data is
    accepted. Raises :class:`DecodeError` when the bytes are not a valid ChannelData."""
    if len(data) < 4:
        raise DecodeError("ChannelData shorter than its header", field="channel_data")
    channel, size = _HEAD.unpack_from(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise DecodeError(f"channel number {channel:#x} out of range", field="channel")
    if 4 + size > len(data) or len(data) - 4 - size > 3:
        raise DecodeError("ChannelData length does not match the data", field="length")
    return channel, data[4 : 4 + size]
