"""Sealing of channel frames: ChaCha20-Poly1305 with a masked packet counter (docs/design.md).

Theory of operation
-------------------
A :class:`Sealer` seals and opens the frames of one channel, in both directions, with four
32-byte keys: a payload key and a counter-masking key per direction. They come from the link's
authenticated handshake (:meth:`anchor_link.handshake.LinkHandshake.sealer`: Noise XX, then HKDF
per direction), made fresh for every link; the keys of the two directions differ, so no nonce
is used twice with one key and no frame can be reflected back at its sender.

Sealed frame, from the plaintext frame ``first | rest`` of :mod:`anchor_link.reliable`::

    offset  size  field
    0       1     first byte, random in 192-255 per frame (RFC 7983 demultiplexing)
    1       8     packet counter, masked: counter XOR ChaCha20(hp, 1, sample)[0:8]
    9       n+16  ChaCha20-Poly1305(key, nonce, rest, aad = first byte) (RFC 8439 §2.8)

The nonce is 4 zero bytes and the 64-bit big-endian packet counter, which starts at 0 and
goes up by one per sealed frame in that direction (retransmissions included), so a nonce is
never used twice with one key. The counter is masked as QUIC protects packet numbers with
AES (RFC 9001 §5.4.3): ``sample`` is the first 16 bytes of the AEAD output (there are always
the 16 of the tag), and the mask is the first 8 bytes of ``AES-ECB(hp, sample)``, AES-256
under the 32-byte ``hp`` key. So the wire shows no counter, no fixed byte and no length
field, only the demultiplexing range of the first byte. The AES block, rather than
RFC 9001 §5.4.4's ChaCha20 keystream, because of what each costs in ``cryptography``: one
ECB context per key, kept, encrypts a sample in 0.2 µs, where every ChaCha20 keystream
needs a cipher context set up for its nonce (3 µs as an 8-byte ChaCha20-Poly1305
encryption, which format 3 used; 7 µs as a ChaCha20 cipher object): that was a third of
a link's CPU per message. Header protection needs only a pseudorandom function of the
sample under a key of its own, which AES is (RFC 9001 §5.4.1); the frames stay
ChaCha20-Poly1305. A flipped bit anywhere fails: in the first byte (it is the AAD), in the
masked counter (wrong nonce), in the ciphertext or tag.

Replay (RFC 4303 §3.4.3 style): a sliding window of :data:`REPLAY_WINDOW` counters below the
highest authenticated one. A counter already seen, or older than the window, is refused before
decryption; a counter is marked seen only after the frame authenticated, so forged frames
cannot poison the window.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from anchor_link.reliable import AuthenticationFailed, ReplayDetected, SealError
from anchor_stun.errors import LocalProtocolError

__all__ = [
    "REPLAY_WINDOW",
    "SEAL_OVERHEAD",
    "ReplayWindow",
    "Sealer",
    "check_key",
]

REPLAY_WINDOW = 1024
"""Counters below the highest one seen that are still accepted once (RFC 4303 §3.4.3 uses
at least 32; 1024 absorbs the reordering of a full send window)."""
_COUNTER_SIZE = 8
_TAG_SIZE = 16  # RFC 8439 §2.8
_SAMPLE_SIZE = 16  # one AES block of the AEAD output (RFC 9001 §5.4.3)
SEAL_OVERHEAD = _COUNTER_SIZE + _TAG_SIZE
"""Bytes a sealed frame adds to the plaintext frame (which keeps its crc inside)."""
_MAX_COUNTER = (1 << 64) - 1
_NONCE = struct.Struct("!4xQ")  # RFC 8439 §2.8's 96-bit nonce: 4 zero bytes, the counter
_U64 = struct.Struct("!Q")
_ONE_BYTE = tuple(bytes((value,)) for value in range(256))


class ReplayWindow:
    """A sliding bitmap of the last :data:`REPLAY_WINDOW` packet counters (RFC 4303 §3.4.3)."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self._size = size
        self._mask = (1 << size) - 1
        self._highest = -1
        self._bitmap = 0  # bit i set: counter highest - i was seen (bits >= size: stale)

    @property
    def highest(self) -> int:
        """The highest counter marked so far (-1: none)."""
        return self._highest

    def fresh(self, counter: int) -> bool:
        """Whether ``counter`` may still be accepted (not seen, not older than the window)."""
        if counter > self._highest:
            return True
        offset = self._highest - counter
        return offset < self._size and not (self._bitmap >> offset) & 1

    def mark(self, counter: int) -> None:
        """Record ``counter`` as seen (call only after the frame authenticated)."""
        if counter > self._highest:
            bitmap = (self._bitmap << (counter - self._highest)) | 1
            if bitmap.bit_length() > 2 * self._size:
                bitmap &= self._mask  # bits past the window are never read: trimmed now and then
            self._bitmap = bitmap
            self._highest = counter
        else:
            self._bitmap |= 1 << (self._highest - counter)


def check_key(key: object, what: str) -> bytes:
    """A 32-byte key checked where it enters: :class:`LocalProtocolError` naming ``what``
    otherwise (saying its length or type, never its bytes)."""
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return bytes(key)
    shown = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
    raise LocalProtocolError(f"{what} must be a 32-byte key, not {shown}")


class Sealer:
    """Seals and opens the frames of one :class:`~anchor_link.reliable.ReliableChannel`
    (a :class:`~anchor_link.reliable.FrameSealer`). Stateful: it holds the send counter and the
    replay window, so each channel needs its own."""

    overhead: int = SEAL_OVERHEAD
    """Bytes added to every frame: the masked counter and the Poly1305 tag."""

    def __init__(self, send_key: bytes, send_hp: bytes, recv_key: bytes, recv_hp: bytes) -> None:
        """The sealer of one side from its four 32-byte keys (module docstring), as
        :meth:`anchor_link.handshake.LinkHandshake.sealer` makes it."""
        for key, what in (
            (send_key, "send_key"), (send_hp, "send_hp"), (recv_key, "recv_key"),
            (recv_hp, "recv_hp"),
        ):
            check_key(key, what)
        self._send = ChaCha20Poly1305(send_key)
        self._send_hp = _mask_context(send_hp)
        self._recv = ChaCha20Poly1305(recv_key)
        self._recv_hp = _mask_context(recv_hp)
        self._counter = 0
        self._replay = ReplayWindow()

    @property
    def frames_sealed(self) -> int:
        """Frames sealed so far (the next packet counter)."""
        return self._counter

    def seal(self, first_byte: int, rest: bytes) -> bytes:
        """The wire form of the frame ``bytes([first_byte]) + rest``: first byte, masked
        counter, ciphertext and tag."""
        counter = self._counter
        if counter > _MAX_COUNTER:
            raise SealError("packet counter exhausted: rekey (a new channel)")
        self._counter += 1
        first = _ONE_BYTE[first_byte]
        sealed = self._send.encrypt(_NONCE.pack(counter), rest, first)
        mask = _mask(self._send_hp, sealed[:_SAMPLE_SIZE])
        return b"".join((first, _U64.pack(counter ^ mask), sealed))

    def open(self, data: bytes) -> bytes:
        """The frame after its first byte, from the sealed datagram ``data``. Raises
        :class:`~anchor_link.reliable.ReplayDetected` or
        :class:`~anchor_link.reliable.AuthenticationFailed`; on either, nothing changes."""
        if len(data) < 1 + _COUNTER_SIZE + _TAG_SIZE:
            raise AuthenticationFailed("sealed frame too short")
        sealed = bytes(data[1 + _COUNTER_SIZE :])
        counter = _U64.unpack_from(data, 1)[0] ^ _mask(self._recv_hp, sealed[:_SAMPLE_SIZE])
        if not self._replay.fresh(counter):
            raise ReplayDetected(f"packet counter {counter} replayed or too old")
        try:
            rest = self._recv.decrypt(_NONCE.pack(counter), sealed, _ONE_BYTE[data[0]])
        except InvalidTag:
            raise AuthenticationFailed("sealed frame did not authenticate") from None
        self._replay.mark(counter)
        return rest


def _mask_context(hp: bytes) -> CipherContext:
    """The AES-ECB encryption context of a header-protection key, kept for every frame (ECB
    has no state between blocks)."""
    return Cipher(algorithms.AES(hp), modes.ECB()).encryptor()


def _mask(hp: CipherContext, sample: bytes) -> int:
    """The 64-bit counter mask (module docstring; RFC 9001 §5.4.3): the first 8 bytes of
    ``AES-ECB(hp, sample)``, ``sample`` the first 16 bytes of the AEAD output."""
    mask: int = _U64.unpack_from(hp.update(sample))[0]
    return mask
