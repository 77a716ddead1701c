"""Sealing of channel frames: X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (docs/design.md, "Definitions").

Theory of operation
-------------------
Each peer makes a key pair (``Sealer.create(rng)``) and puts ``keypair.public`` (32 bytes) in
its signalling message next to its ICE ufrag and password. Once both descriptions are known,
each side calls ``Sealer.derive(keypair, remote_public, context)`` with the same ``context``
(:func:`ice_context` of both peers' ICE credentials) and hands the result to
``ReliableChannel(seal=...)``.

Key schedule::

    shared = X25519(local private, remote public)                 (RFC 7748 §6.1)
    low, high = the two public keys, sorted bytewise
    okm = HKDF-SHA256(salt = "anchor-channel-seal-v3",
                      ikm = shared,
                      info = len(context) (4) | context | low | high,
                      L = 128)                                      (RFC 5869)
    okm = key_low (32) | hp_low (32) | key_high (32) | hp_high (32)

The owner of the lower public key sends with ``key_low`` / ``hp_low`` and receives with the
``high`` pair; the other owner the reverse. Directions therefore never share a key (no nonce
reuse across directions, no reflection of our own frames back at us), and both keys depend
on the context: a peer that saw other ICE credentials, or a man in the middle that swapped
public keys in one signalling direction only, derives different keys and every frame fails
authentication. Equal public keys (a reflected offer) are refused, and so is a second derivation from one key
pair for the same peer and context (two channels would reuse nonces): make a key pair per
channel, as the ephemeral link does per link.

Sealed frame, from the plaintext frame ``first | rest`` of :mod:`anchor_link.reliable`::

    offset  size  field
    0       1     first byte, random in 192-255 per frame (RFC 7983 demultiplexing)
    1       8     packet counter, masked: counter XOR ChaCha20(hp, 1, sample)[0:8]
    9       n+16  ChaCha20-Poly1305(key, nonce, rest, aad = first byte) (RFC 8439 §2.8)

The nonce is 4 zero bytes and the 64-bit big-endian packet counter, which starts at 0 and
goes up by one per sealed frame in that direction (retransmissions included), so a nonce is
never used twice with one key. The counter is masked much as QUIC protects packet numbers
(RFC 9001 §5.4.4): ``sample`` is the first 12 bytes of the AEAD output (there are always at
least the 16 of the tag), and the mask is the first 8 bytes of the ChaCha20 keystream under
``hp`` with block counter 1 and the sample as nonce (RFC 8439 §2.4). So the wire shows no
counter, no fixed byte and no length field, only the demultiplexing range of the first
byte. That keystream is taken as the ChaCha20-Poly1305 encryption of 8 zero bytes
(RFC 8439 §2.8 encrypts from block 1), with one AEAD object per ``hp`` key: 0.9 µs a frame,
where a ChaCha20 cipher object made for each sample (QUIC's 16-byte counter-and-nonce form)
cost 7 µs in ``cryptography``. A flipped bit anywhere fails: in the first byte (it is the
AAD), in the masked counter (wrong nonce), in the ciphertext or tag.

Replay (RFC 4303 §3.4.3 style): a sliding window of :data:`REPLAY_WINDOW` counters below the
highest authenticated one. A counter already seen, or older than the window, is refused before
decryption; a counter is marked seen only after the frame authenticated, so forged frames
cannot poison the window.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from anchor_link.reliable import AuthenticationFailed, ReplayDetected, SealError

__all__ = [
    "HKDF_SALT",
    "PUBLIC_KEY_SIZE",
    "REPLAY_WINDOW",
    "SEAL_OVERHEAD",
    "ReplayWindow",
    "SealKeyPair",
    "Sealer",
    "ice_context",
]

PUBLIC_KEY_SIZE = 32  # RFC 7748 §6.1
REPLAY_WINDOW = 1024
"""Counters below the highest one seen that are still accepted once (RFC 4303 §3.4.3 uses
at least 32; 1024 absorbs the reordering of a full send window)."""
HKDF_SALT = b"anchor-channel-seal-v3"
"""HKDF salt (RFC 5869 §3.1): names the protocol and its frame format version (v3: ACK frames
carry a receive window; a peer of another version fails authentication, nothing is misread)."""
_COUNTER_SIZE = 8
_TAG_SIZE = 16  # RFC 8439 §2.8
_SAMPLE_SIZE = 12  # the nonce of the mask's ChaCha20 (RFC 8439 §2.8)
_ZERO_COUNTER = bytes(_COUNTER_SIZE)
SEAL_OVERHEAD = _COUNTER_SIZE + _TAG_SIZE
"""Bytes a sealed frame adds to the plaintext frame (which keeps its crc inside)."""
_MAX_COUNTER = (1 << 64) - 1
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def ice_context(local_ufrag: str, local_pwd: str, remote_ufrag: str, remote_pwd: str) -> bytes:
    """The ``context`` that binds sealing keys to one ICE session: both peers' (ufrag,
    password) pairs (RFC 8445 §5.3), sorted so that both sides build the same bytes, each
    string UTF-8 with a 4-byte length in front."""
    pairs = sorted([(local_ufrag, local_pwd), (remote_ufrag, remote_pwd)])
    out = bytearray()
    for ufrag, pwd in pairs:
        for text in (ufrag, pwd):
            raw = text.encode("utf-8")
            out += _U32.pack(len(raw)) + raw
    return bytes(out)


@dataclass(frozen=True)
class SealKeyPair:
    """A local X25519 key pair (RFC 7748); ``public`` goes into the signalling.

    Make a new one for every channel: :meth:`Sealer.derive` refuses to derive twice from one
    key pair for the same peer key and context, because two channels with the same keys would
    both start their packet counters at 0 and reuse nonces.
    """

    private: X25519PrivateKey = field(repr=False)
    """The private key; never leaves this process."""
    public: bytes
    """The 32-byte public key to send to the peer."""
    _derived: set[bytes] = field(default_factory=set, repr=False, compare=False)


class ReplayWindow:
    """A sliding bitmap of the last :data:`REPLAY_WINDOW` packet counters (RFC 4303 §3.4.3)."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self._size = size
        self._highest = -1
        self._bitmap = 0  # bit i set: counter highest - i was seen

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
            shift = counter - self._highest
            self._bitmap = ((self._bitmap << shift) | 1) & ((1 << self._size) - 1)
            self._highest = counter
        else:
            self._bitmap |= 1 << (self._highest - counter)


class Sealer:
    """Seals and opens the frames of one :class:`~anchor_link.reliable.ReliableChannel`
    (a :class:`~anchor_link.reliable.FrameSealer`). Stateful: it holds the send counter and the
    replay window, so each channel needs its own, from :meth:`derive`."""

    overhead: int = SEAL_OVERHEAD
    """Bytes added to every frame: the masked counter and the Poly1305 tag."""

    def __init__(self, send_key: bytes, send_hp: bytes, recv_key: bytes, recv_hp: bytes) -> None:
        """Direct construction from the four 32-byte keys; :meth:`derive` is the usual way."""
        for key in (send_key, send_hp, recv_key, recv_hp):
            if len(key) != 32:
                raise SealError("sealing keys are 32 bytes")
        self._send = ChaCha20Poly1305(send_key)
        self._send_hp = ChaCha20Poly1305(send_hp)
        self._recv = ChaCha20Poly1305(recv_key)
        self._recv_hp = ChaCha20Poly1305(recv_hp)
        self._counter = 0
        self._replay = ReplayWindow()

    @staticmethod
    def create(rng: Callable[[int], bytes] = os.urandom) -> SealKeyPair:
        """A fresh X25519 key pair from 32 bytes of ``rng`` (RFC 7748 §6.1: the private key
        is 32 random bytes, clamped by X25519 itself)."""
        seed = bytes(rng(32))
        if len(seed) != 32:
            raise SealError("rng(32) must return 32 bytes")
        private = X25519PrivateKey.from_private_bytes(seed)
        return SealKeyPair(private, private.public_key().public_bytes_raw())

    @classmethod
    def derive(cls, local: SealKeyPair, remote_public: bytes, context: bytes) -> Sealer:
        """The sealer of this side of a channel (module docstring: key schedule).
        Raises :class:`~anchor_link.reliable.SealError` for a malformed or low-order remote key
        and for a remote key equal to ours."""
        remote_public = bytes(remote_public)
        if len(remote_public) != PUBLIC_KEY_SIZE:
            raise SealError(f"remote public key must be {PUBLIC_KEY_SIZE} bytes")
        if remote_public == local.public:
            raise SealError("remote public key equals ours (reflected offer?)")
        try:
            shared = local.private.exchange(X25519PublicKey.from_public_bytes(remote_public))
        except ValueError as exc:  # an all-zero shared secret: a low-order point, RFC 7748 §6.1
            raise SealError(f"key agreement failed: {exc}") from None
        low, high = sorted((local.public, remote_public))
        info = _U32.pack(len(context)) + bytes(context) + low + high
        if info in local._derived:
            raise SealError("keys already derived for this peer and context: nonces would repeat")
        local._derived.add(info)
        okm = HKDF(algorithm=SHA256(), length=128, salt=HKDF_SALT, info=info).derive(shared)
        keys_low, keys_high = (okm[0:32], okm[32:64]), (okm[64:96], okm[96:128])
        send, recv = (keys_low, keys_high) if local.public == low else (keys_high, keys_low)
        return cls(send[0], send[1], recv[0], recv[1])

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
        first = bytes((first_byte,))
        sealed = self._send.encrypt(_NONCE_PREFIX + _U64.pack(counter), rest, first)
        mask = _mask(self._send_hp, sealed)
        return first + _U64.pack(counter ^ mask) + sealed

    def open(self, data: bytes) -> bytes:
        """The frame after its first byte, from the sealed datagram ``data``. Raises
        :class:`~anchor_link.reliable.ReplayDetected` or
        :class:`~anchor_link.reliable.AuthenticationFailed`; on either, nothing changes."""
        if len(data) < 1 + _COUNTER_SIZE + _TAG_SIZE:
            raise AuthenticationFailed("sealed frame too short")
        sealed = bytes(data[1 + _COUNTER_SIZE :])
        counter = _U64.unpack_from(data, 1)[0] ^ _mask(self._recv_hp, sealed)
        if not self._replay.fresh(counter):
            raise ReplayDetected(f"packet counter {counter} replayed or too old")
        try:
            rest = self._recv.decrypt(_NONCE_PREFIX + _U64.pack(counter), sealed, bytes(data[:1]))
        except InvalidTag:
            raise AuthenticationFailed("sealed frame did not authenticate") from None
        self._replay.mark(counter)
        return rest


def _mask(hp: ChaCha20Poly1305, sealed: bytes) -> int:
    """The 64-bit counter mask (module docstring): the ChaCha20 keystream under the ``hp`` key,
    block counter 1, with the sample (the first 12 bytes of the AEAD output) as nonce."""
    keystream = hp.encrypt(sealed[:_SAMPLE_SIZE], _ZERO_COUNTER, None)
    mask: int = _U64.unpack_from(keystream)[0]
    return mask
