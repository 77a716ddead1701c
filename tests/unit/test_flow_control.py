"""Flow control of the reliable channel (anchor_link.reliable): the receiver advertises in
every ACK how many frames it can still take; a receiver whose application does not read
makes the sender wait, without drops or retransmissions, and the persist timer finds a lost
window update. Fake clock, in-memory path (tests.unit.test_congestion.Path)."""

from __future__ import annotations

import struct

import pytest

from anchor_link.reliable import ReliableChannel
from anchor_stun.errors import LocalProtocolError
from tests.unit.test_congestion import RTT, Path

WINDOW = 32


def slow_reader_path(count: int) -> tuple[Path, list[bytes]]:
    a = ReliableChannel(now=0.0)
    b = ReliableChannel(receive_window=WINDOW, max_message=16384, manual_release=True, now=0.0)
    path = Path(a, b)
    messages = [i.to_bytes(4, "big") * 100 for i in range(count)]
    queue = list(messages)

    def feed(ch: ReliableChannel, out: list[bytes]) -> None:
        while queue and ch.can_send(len(queue[0])):
            ch.send(queue.pop(0), path.now)

    path.check = feed
    feed(a, [])
    return path, messages


def data_frames(frames: list[bytes]) -> int:
    return sum(1 for f in frames if f[1] & 0x0F == 0x01)


def test_a_receiver_that_does_not_read_stops_the_sender_at_its_window() -> None:
    path, messages = slow_reader_path(200)
    sent: list[bytes] = []
    feed = path.check

    def record(ch: ReliableChannel, out: list[bytes]) -> None:
        sent.extend(out)
        feed(ch, out)

    path.check = record
    path.flush()
    path.run_until(30.0)  # the application never reads
    a, b = path.a, path.b
    # The sender stopped exactly at the advertised window: no frame was dropped for lack of
    # buffer, none retransmitted, nothing is in flight; the receiver holds WINDOW frames.
    assert data_frames(sent) == WINDOW
    assert a.stats.retransmissions == 0 and a.stats.timeouts == 0 and a.stats.probes == 0
    assert b.stats.dropped_window == 0 and b.stats.duplicates == 0
    assert b.stats.messages_received == WINDOW and b.receive_window == 0
    assert a.stats.bytes_in_flight == 0 and a.stats.peer_window == 0
    assert a.in_flight == 0 and a.state.value == "open"
    # The persist timer asked for the window a few times, backing off (0.2 s doubling).
    assert 1 <= a.stats.window_probes <= 8
    # The application reads: the window update lets the sender go on, still without loss.
    b.release(WINDOW, path.now)
    path.flush()
    read = WINDOW
    while path.received < len(messages) or read < len(messages):
        path.step()
        held = b.stats.messages_received - read
        if held:
            b.release(held, path.now)
            read += held
        assert path.now < 60.0
    assert path.received == len(messages)
    assert a.stats.retransmissions == 0 and b.stats.dropped_window == 0
    assert data_frames(sent) == len(messages)


def test_a_lost_window_update_is_recovered_by_the_persist_timer() -> None:
    path, _ = slow_reader_path(100)
    path.flush()
    path.run_until(1.0)
    a, b = path.a, path.b
    assert b.receive_window == 0 and a.stats.peer_window == 0
    # The window update after the read is lost, and every ACK after it until the sender's
    # next ACK request: only the answer to that request can tell it the window opened.
    probes = a.stats.window_probes
    path.drop_back = lambda frame: a.stats.window_probes == probes
    b.release(WINDOW, path.now)
    path.flush()
    while b.stats.messages_received == WINDOW:
        path.step()
        assert path.now < 30.0
    assert a.stats.window_probes == probes + 1
    assert a.stats.retransmissions == 0 and b.stats.dropped_window == 0


def test_ack_request_flag_and_receive_window_on_the_wire() -> None:
    path, _ = slow_reader_path(100)
    a, b = path.a, path.b
    sent: list[bytes] = []
    answers: list[bytes] = []
    feed = path.check

    def record(ch: ReliableChannel, out: list[bytes]) -> None:
        sent.extend(out)
        feed(ch, out)

    path.check = record
    path.flush()
    while a.stats.window_probes == 0:
        path.step()
    # The window probe is an ACK with the ACK_REQUEST flag (0x12); it is answered with a
    # plain ACK carrying cumulative point WINDOW and a receive window of 0.
    assert sent[-1][1] == 0x12 and [f[1] for f in sent].count(0x12) == 1
    path.drop_back = lambda frame: answers.append(frame) is not None
    while not answers:
        path.step()
    [answer] = answers
    assert answer[1] == 0x02 and struct.unpack_from("!II", answer, 2) == (WINDOW, 0)
    assert b.stats.dropped_invalid == 0


def test_release_is_checked() -> None:
    with pytest.raises(LocalProtocolError):
        ReliableChannel().release(1, 0.0)
    b = ReliableChannel(manual_release=True)
    with pytest.raises(LocalProtocolError):
        b.release(1, 0.0)
    assert not b.release(0, 0.0)
    with pytest.raises(LocalProtocolError):
        ReliableChannel(peer_receive_window=0)


def test_a_receive_window_must_hold_a_largest_message() -> None:
    """A half-received message holds its frames of the window until it is whole: a window
    smaller than a largest message would close on one and stall both sides for good (the
    channel fuzz harness found it with an 8-frame window and 9-frame messages)."""
    with pytest.raises(LocalProtocolError, match="receive_window 6 cannot hold"):
        ReliableChannel(mtu=100, receive_window=6, send_window=16, max_message=600)
    ReliableChannel(mtu=100, receive_window=7, send_window=16, max_message=600)  # 7 x 90 bytes


def test_the_right_edge_never_shrinks_and_a_late_ack_does_not_close_it() -> None:
    path, _ = slow_reader_path(100)
    path.flush()
    path.run_until(4 * RTT)
    a = path.a
    limit = a.stats.peer_window + a.stats.frames_sent
    # An old ACK (cumulative point 0, window 1) arriving late changes nothing.
    a.receive_datagram(_ack(0, 1), path.now)
    assert a.stats.peer_window + a.stats.frames_sent == limit


def _ack(cum: int, window: int) -> bytes:
    import crc32c

    head = bytes([0xC2, 0x02]) + struct.pack("!IIB", cum, window, 0)
    return head + struct.pack("<I", crc32c.crc32c(head))
