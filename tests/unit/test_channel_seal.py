"""Sealed channel frames (anchor_link.seal): ChaCha20-Poly1305 under keys from the link's Noise
handshake (anchor_link.handshake), with a masked packet counter."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor_link.handshake import LinkHandshake
from anchor_link.identity import Identity
from anchor_link.reliable import (
    FIRST_BYTE_MAX,
    FIRST_BYTE_MIN,
    AuthenticationFailed,
    CloseReason,
    MessageReceived,
    ReliableChannel,
    ReliableClosed,
    ReliableState,
    ReplayDetected,
    is_reliable_frame,
)
from anchor_link.seal import (
    REPLAY_WINDOW,
    SEAL_OVERHEAD,
    ReplayWindow,
    Sealer,
    _mask,
    _mask_context,
)
from anchor_stun.errors import LocalProtocolError
from tests.unit.test_channel import Harness, Network, events, flip_bit, mixed_messages

CTX = b"anchor-link/2 test prologue"
SECRET = b"TOP-SECRET-PAYLOAD:"


def rng_from(seed: int) -> random.Random:
    return random.Random(seed)


def sealer_pair(
    ctx_a: bytes = CTX, ctx_b: bytes = CTX, seed: int = 1
) -> tuple[Sealer, Sealer, bytes, bytes]:
    """The two sealers of one link, from a handshake between two identities (all randomness
    from ``seed``). With different prologues the handshake fails: then each side gets the
    sealer of a handshake of its own, as two links that were crossed would."""
    rng = rng_from(seed).randbytes
    id_a, id_b = Identity.generate(rng), Identity.generate(rng)
    a = LinkHandshake(id_a, initiator=True, prologue=ctx_a, rng=rng)
    b = LinkHandshake(id_b, initiator=False, prologue=ctx_a, rng=rng)
    b.read_message(a.write_message(b""))
    a.read_message(b.write_message(b""))
    b.read_message(a.write_message(b""))
    if ctx_b != ctx_a:
        c = LinkHandshake(id_a, initiator=True, prologue=ctx_b, rng=rng)
        d = LinkHandshake(id_b, initiator=False, prologue=ctx_b, rng=rng)
        d.read_message(c.write_message(b""))
        c.read_message(d.write_message(b""))
        d.read_message(c.write_message(b""))
        b = d
    return a.sealer(), b.sealer(), id_a.public, id_b.public


def sealed_pair(
    ctx_a: bytes = CTX, ctx_b: bytes = CTX, max_retransmissions: int = 8
) -> tuple[ReliableChannel, ReliableChannel]:
    seal_a, seal_b, _, _ = sealer_pair(ctx_a, ctx_b)
    rng = rng_from(99)
    return (
        ReliableChannel(
            seal=seal_a, rng=rng.randbytes, max_retransmissions=max_retransmissions
        ),
        ReliableChannel(seal=seal_b, rng=rng.randbytes),
    )


# --------------------------------------------------------------------------- keys


def test_sealers_come_from_the_handshake_and_the_rng_is_the_only_input() -> None:
    seal_a, seal_b, _, _ = sealer_pair(seed=5)
    again_a, _, _, _ = sealer_pair(seed=5)
    other_a, _, _, _ = sealer_pair(seed=6)
    frame = seal_a.seal(0xD0, b"same")
    assert again_a.seal(0xD0, b"same") == frame  # same randomness, same keys
    assert other_a.seal(0xD0, b"same") != frame
    assert seal_b.open(frame) == b"same"
    with pytest.raises(LocalProtocolError, match="send_key must be a 32-byte key, not 5 bytes"):
        Sealer(b"short", bytes(32), bytes(32), bytes(32))


def test_seal_open_round_trip_and_directions() -> None:
    seal_a, seal_b, _, _ = sealer_pair()
    wire = seal_a.seal(0xD5, b"frame body")
    assert wire[0] == 0xD5 and len(wire) == 1 + len(b"frame body") + SEAL_OVERHEAD
    assert seal_b.open(wire) == b"frame body"
    with pytest.raises(ReplayDetected):
        seal_b.open(wire)
    # A frame reflected back at its sender does not open: directions use different keys.
    with pytest.raises(AuthenticationFailed):
        seal_a.open(seal_a.seal(0xD5, b"frame body"))
    with pytest.raises(AuthenticationFailed):
        seal_b.open(wire[:10])


def test_replay_window() -> None:
    w = ReplayWindow()
    assert REPLAY_WINDOW == 1024
    for counter in (0, 1, 5, 3):
        assert w.fresh(counter)
        w.mark(counter)
    assert not w.fresh(3) and not w.fresh(5) and w.fresh(4) and w.fresh(2)
    w.mark(2000)
    assert w.highest == 2000
    assert not w.fresh(2000 - 1024)  # slid out of the window
    assert w.fresh(2000 - 1023) and not w.fresh(2000) and w.fresh(2001)
    w.mark(2000 - 1023)
    assert not w.fresh(2000 - 1023)
    w.mark(10_000)  # a jump wider than the window clears it
    assert not w.fresh(2001) and w.fresh(9999) and not w.fresh(10_000)


# --------------------------------------------------------------------------- must show 2


def test_payload_unreadable_and_first_byte_in_demux_range() -> None:
    a, b = sealed_pair()
    message = SECRET * 300  # 5700 bytes: 5 frames
    a.send(message, 0.0)
    frames = a.datagrams_to_send(0.0)
    assert len(frames) == 5 and all(len(f) <= 1200 for f in frames)
    assert a.max_fragment == 1200 - 10 - 24
    for frame in frames:
        assert is_reliable_frame(frame) and FIRST_BYTE_MIN <= frame[0] <= FIRST_BYTE_MAX
        assert b"SECRET" not in frame and b"TOP-" not in frame
    for frame in frames:
        b.receive_datagram(frame, 0.1)
    assert events(b) == [MessageReceived(message)]
    # Control: the same message in a plaintext channel is readable on the wire.
    plain = ReliableChannel()
    plain.send(message, 0.0)
    assert all(SECRET in f for f in plain.datagrams_to_send(0.0)[:-1])


def test_no_fixed_plaintext_marker() -> None:
    a, _ = sealed_pair()
    frames = []
    for i in range(64):
        a.send(bytes([i]), 0.0)
        frames.extend(a.datagrams_to_send(0.0))
    # The first byte varies within 192-255; the masked counter shows no counting pattern.
    assert len({f[0] for f in frames}) > 20
    assert all(f[0] >= FIRST_BYTE_MIN for f in frames)
    counters = [f[1:9] for f in frames]
    assert len(set(counters)) == len(counters)
    assert not any(c == i.to_bytes(8, "big") for i, c in enumerate(counters))
    assert not any(c[:4] == b"\x00\x00\x00\x00" for c in counters)
    # No byte position is constant across frames (but the demux bits of byte 0).
    for pos in range(1, 12):
        assert len({f[pos] for f in frames}) > 1


def test_flipped_bit_is_rejected() -> None:
    a, b = sealed_pair()
    a.send(SECRET, 0.0)
    [frame] = a.datagrams_to_send(0.0)
    auth_failures = 0
    for bit in range(8 * len(frame)):
        b.receive_datagram(flip_bit(frame, bit), 0.1)
        if bit not in (0, 1):  # the two top bits of byte 0 leave the demux range
            auth_failures += 1
    s = b.stats
    assert s.dropped_auth == auth_failures and s.dropped_invalid == 2 and s.dropped_replay == 0
    assert events(b) == [] and s.frames_received == 0
    b.receive_datagram(frame, 0.1)  # the genuine frame still opens afterwards
    assert events(b) == [MessageReceived(SECRET)]


def test_replayed_frame_is_rejected() -> None:
    a, b = sealed_pair()
    a.send(b"once", 0.0)
    [frame] = a.datagrams_to_send(0.0)
    b.receive_datagram(frame, 0.1)
    b.receive_datagram(frame, 0.2)
    b.receive_datagram(frame, 5.0)
    assert events(b) == [MessageReceived(b"once")]
    assert b.stats.dropped_replay == 2 and b.stats.duplicates == 0
    # A retransmission of the same DATA frame is a new sealed frame (new counter): it opens,
    # and the channel counts it as a duplicate, as it would in plaintext.
    a.handle_timer(1.0)
    [again] = a.datagrams_to_send(1.0)
    assert again != frame
    b.receive_datagram(again, 1.1)
    assert b.stats.duplicates == 1 and events(b) == []


def test_keys_are_bound_to_the_handshake() -> None:
    a, b = sealed_pair(CTX, CTX + b" another link")
    a.send(b"hello", 0.0)
    for frame in a.datagrams_to_send(0.0):
        b.receive_datagram(frame, 0.1)
    assert events(b) == [] and b.stats.dropped_auth == 1
    assert b.datagrams_to_send(0.1) == []  # nothing to acknowledge


def test_plaintext_frames_rejected_by_sealed_channel() -> None:
    _, b = sealed_pair()
    plain = ReliableChannel()
    plain.send(b"hello", 0.0)
    b.receive_datagram(plain.datagrams_to_send(0.0)[0], 0.1)
    assert b.stats.dropped_auth == 1 and events(b) == []


def test_sealed_channel_over_lossy_network() -> None:
    rng = random.Random(7)
    a, b = sealed_pair()
    net = Network(rng=random.Random(2), loss=0.10, duplicate=0.10, reorder=0.25, corrupt=0.02)
    h = Harness(a, b, net)
    messages = mixed_messages(rng, 15)
    pending = list(messages)

    def feed() -> None:
        while pending and h.a.can_send(len(pending[0])):
            h.a.send(pending.pop(0), h.now)

    h.run(lambda: len(h.received("b")) == len(messages), each=feed)
    assert h.received("b") == messages
    sa, sb = h.a.stats, h.b.stats
    # Duplicated datagrams are replays to a sealed channel; corrupted ones fail the tag.
    assert sb.dropped_replay > 0 and sb.dropped_auth + sa.dropped_auth > 0
    assert sb.dropped_crc == sa.dropped_crc == 0
    assert all(SECRET not in f for f in net.sent)
    h.a.close(h.now)
    h.run(lambda: h.a.state is h.b.state is ReliableState.CLOSED)
    assert h.of("b", ReliableClosed) == [ReliableClosed(CloseReason.PEER)]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=1500))
def test_arbitrary_bytes_to_sealed_channel_never_raise(data: bytes) -> None:
    a, b = sealed_pair()
    a.send(b"x", 0.0)
    for frame in a.datagrams_to_send(0.0):
        b.receive_datagram(frame, 0.05)
    b.receive_datagram(data, 0.1)
    b.receive_datagram(bytes([0xC7]) + data, 0.1)
    b.datagrams_to_send(0.1)
    b.handle_timer(100.0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.lists(st.booleans(), max_size=120),
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_sealed_random_loss_patterns_still_deliver_in_order(
    pattern: list[bool], sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    messages = [rng.randbytes(n) for n in sizes]
    # (The pattern may drop more than 8 transmissions in a row: a sender with the default
    # max_retransmissions would give up, as the plain-channel test's sender would.)
    a, b = sealed_pair(max_retransmissions=50)
    h = Harness(a, b, Network(rng=rng, drop_pattern=pattern, duplicate=0.1, reorder=0.3))
    for m in messages:
        h.a.send(m, 0.0)
    h.run(lambda: len(h.received("b")) == len(messages))
    assert h.received("b") == messages


def test_the_counter_mask_is_aes_ecb_of_the_sample_rfc_9001_vectors() -> None:
    """The module docstring's mask is QUIC's AES header protection (RFC 9001 §5.4.3): the
    first bytes of AES-ECB(hp, sample). RFC 9001 Appendix A.2 and A.3 give the masks of two
    samples under AES-128 keys (5 bytes each); FIPS-197 Appendix C.3 an AES-256 block (the
    sealer's ``hp`` keys are 32 bytes)."""
    vectors = [
        (  # RFC 9001 A.2, client Initial
            "9f50449e04a0e810283a1e9933adedd2",
            "d1b1c98dd7689fb8ec11d242b123dc9b",
            "437b9aec36",
        ),
        (  # RFC 9001 A.3, server Initial
            "c206b8d9b9f0f37644430b490eeaa314",
            "2cd0991cd25b0aac406a5816b6394100",
            "2ec0d8356a",
        ),
        (  # FIPS-197 C.3, AES-256
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "00112233445566778899aabbccddeeff",
            "8ea2b7ca516745bf",
        ),
    ]
    for key, sample, expected in vectors:
        mask = _mask(_mask_context(bytes.fromhex(key)), bytes.fromhex(sample))
        assert mask.to_bytes(8, "big").hex().startswith(expected)


def test_a_sealed_frame_carries_its_counter_masked_with_the_sample() -> None:
    """Recomputed from the wire: the counter XOR AES-ECB(hp, the 16 bytes after it), and the
    AEAD output opens under the nonce of that counter with the first byte as AAD."""
    send_key, send_hp = bytes(range(32)), bytes(range(32, 64))
    sealer = Sealer(send_key, send_hp, bytes(32), bytes(32))
    for counter in range(3):
        wire = sealer.seal(0xC7, b"body of frame %d" % counter)
        sample = wire[9:25]
        aes = Cipher(algorithms.AES(send_hp), modes.ECB()).encryptor()
        mask = int.from_bytes(aes.update(sample)[:8], "big")
        assert int.from_bytes(wire[1:9], "big") ^ mask == counter
        nonce = bytes(4) + counter.to_bytes(8, "big")
        plain = ChaCha20Poly1305(send_key).decrypt(nonce, wire[9:], wire[:1])
        assert plain == b"body of frame %d" % counter
