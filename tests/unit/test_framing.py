"""STUN / ChannelData framing over streams (RFC 8489 §6.2.2, RFC 8656 §12.5)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchor_stun.attributes import Software
from anchor_stun.errors import DecodeError, StreamCorrupted
from anchor_stun.framing import StreamFramer
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn.channeldata import encode_channel_data

MSG = Message(Method.BINDING, MessageClass.REQUEST, b"x" * 12, [Software("abc")]).encode(
    fingerprint=True
)


def test_split_across_reads_and_back_to_back() -> None:
    framer = StreamFramer()
    stream = MSG + MSG
    frames = []
    for i in range(0, len(stream), 7):
        frames += framer.feed(stream[i : i + 7])
    assert frames == [MSG, MSG] and framer.buffered == 0


def test_channel_data_only_when_enabled() -> None:
    cd = encode_channel_data(0x4001, b"hello", pad=True)
    assert StreamFramer(channel_data=True).feed(cd + MSG) == [cd, MSG]
    with pytest.raises(DecodeError):
        StreamFramer().feed(cd)


def test_garbage_raises_and_resets() -> None:
    framer = StreamFramer()
    with pytest.raises(DecodeError):
        framer.feed(b"\x00\x01\x00\x00\xde\xad\xbe\xef" + b"\x00" * 12)
    assert framer.buffered == 0
    with pytest.raises(DecodeError):
        StreamFramer().feed(b"\x00\x01\x00\x02\x21\x12\xa4\x42")
    with pytest.raises(DecodeError):
        StreamFramer().feed(b"\xff\xff\xff\xff")


def test_frames_before_junk_in_the_same_read_are_not_lost() -> None:
    cd = encode_channel_data(0x4001, b"hello", pad=True)
    framer = StreamFramer(channel_data=True)
    assert framer.feed(MSG[:10]) == []  # a frame split across reads, then junk after it
    with pytest.raises(StreamCorrupted) as caught:
        framer.feed(MSG[10:] + cd + b"\xff\xff\xff\xff")
    assert caught.value.frames == [MSG, cd] and caught.value.field == "type"
    assert isinstance(caught.value, DecodeError) and framer.buffered == 0
    with pytest.raises(StreamCorrupted) as caught:
        StreamFramer().feed(MSG + b"\x00\x01\x00\x00\xde\xad\xbe\xef")
    assert caught.value.frames == [MSG] and caught.value.field == "magic_cookie"


@given(st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_any_chunking_gives_the_same_frames(cuts: list[int]) -> None:
    stream = MSG * 3
    framer = StreamFramer()
    frames: list[bytes] = []
    pos = 0
    for cut in cuts:
        frames += framer.feed(stream[pos : pos + cut])
        pos += cut
    frames += framer.feed(stream[pos:])
    assert frames == [MSG, MSG, MSG]
