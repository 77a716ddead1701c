"""ChannelData codec (RFC 8656 §12.4, §12.5)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_turn.channeldata import (
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    valid_channel,
)


def test_round_trip_and_padding() -> None:
    frame = encode_channel_data(0x4001, b"hello")
    assert frame == b"\x40\x01\x00\x05hello" and is_channel_data(frame)
    padded = encode_channel_data(0x4001, b"hello", pad=True)
    assert padded == frame + b"\x00\x00\x00"
    assert decode_channel_data(frame) == decode_channel_data(padded) == (0x4001, b"hello")
    assert encode_channel_data(0x4FFF, b"", pad=True) == b"\x4f\xff\x00\x00"


def test_bad_frames_raise_decode_error() -> None:
    for bad in (b"\x40\x00\x00", b"\x3f\xff\x00\x00", b"\x50\x00\x00\x00",
                b"\x40\x00\x00\x05abc", b"\x40\x00\x00\x01abcde"):
        with pytest.raises(DecodeError):
            decode_channel_data(bad)
    with pytest.raises(LocalProtocolError):
        encode_channel_data(0x3FFF, b"x")
    assert valid_channel(0x4000) and not valid_channel(0x5000)


@given(st.integers(0x4000, 0x4FFF), st.binary(max_size=300), st.booleans())
def test_round_trip_property(channel: int, data: bytes, pad: bool) -> None:
    assert decode_channel_data(encode_channel_data(channel, data, pad=pad)) == (channel, data)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode_channel_data(data)
    except DecodeError:
        pass
