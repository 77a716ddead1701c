"""The link's authenticated key exchange: Noise XX carried in the signalling descriptions.

Theory of operation
-------------------
Every link runs one handshake of the Noise Protocol Framework (revision 34),
``Noise_XX_25519_ChaChaPoly_SHA256`` (§7.5), through the ``noiseprotocol`` package: fresh
ephemeral keys on both sides (forward secrecy) and both static keys, the endpoints'
:class:`~anchor_link.identity.Identity`, proven (mutual authentication)::

    offer    -> e                  payload: the offerer's ICE description, in clear
    answer   <- e, ee, s, es       payload: the answerer's ICE description, encrypted
    confirm  -> s, se              payload: the offerer's later candidates, encrypted

The three messages travel on the signalling as the ``offer``, ``answer`` and ``confirm``
descriptions of :mod:`anchor_link.aio.endpoint`.

**Why XX and not IK.** IK needs two messages but the initiator must know the responder's static
key before it starts; XX needs no such knowledge, so one pattern serves pinned peers
(``trusted_peers``, the known-peers file) and peers met for the first time alike: one code
path, no IK-with-fallback (Noise Pipes, §10.2) to get wrong. Its third message costs no
waiting: the offerer sends it the moment it has read the answer, and the ICE checks it starts
at the same time take longer than one signalling hop. The answerer learns who the offerer is
only from that third message, and opens no channel before it arrives.

**What is bound.** The prologue (§6) is ``"anchor-link/4"`` (4: the channel's frame
format with flow control, its crc little-endian and its packet counter masked with AES; 3
had a big-endian crc and masked with ChaCha20, :mod:`anchor_link.seal`), the link id and both names
(offerer's first), each with a 2-byte length, so a description moved to another link or between
other names fails. Each side's ICE description (ufrag, password, candidates, channel settings)
*is* its handshake payload, so it is covered by the handshake hash: an answer's payload is
encrypted and authenticated under keys that depend on the offer, and the offerer's static key in
the third message authenticates the hash of everything before it. A description changed on the
way makes the next handshake message fail to decrypt; a static key that is not the one pinned is
refused by :mod:`anchor_link.trust`. A replayed offer yields an answer nobody can complete (the
third message needs the offerer's ephemeral and static private keys); a replayed answer or
confirm fails to decrypt under the new link's keys.

**The channel's keys** come from Noise's ``Split()`` (§5.2): ``k1`` for the initiator's direction
and ``k2`` for the responder's. Each is expanded with HKDF-SHA256 (RFC 5869), salt
the handshake hash ``h``, into the payload key and the counter-masking key of
:class:`~anchor_link.seal.Sealer` (as QUIC expands a traffic secret into its key and its header
protection key, RFC 9001 §5.1) and a key-confirmation key::

    key, hp, finished = HKDF(salt = h, ikm = k, info = "anchor-link/4 seal", L = 96)

so they depend on the two ephemeral Diffie-Hellman results and nothing the rendezvous chose.
``k1`` and ``k2`` themselves encrypt nothing.

**Key confirmation.** XX tells the responder who the initiator is only in the third message, and
the responder may refuse that identity (``trusted_peers``). So the responder answers the third
message with an ``accept`` carrying ``HMAC-SHA256(finished of k2, h)`` (TLS 1.3's Finished,
RFC 8446 §4.4.4), and the initiator opens its channel only once that verifies
(:meth:`LinkHandshake.check_accept`): a link then opens on both sides or on neither, and a
rendezvous cannot forge the go-ahead.

**Trickled candidates** (RFC 8838). A side's ICE description carries the candidates it had
gathered when it wrote it; the offerer's later ones ride in the confirm's payload (encrypted,
and authenticated like the rest), and every later candidate of either side, once the
handshake is complete, travels in a ``candidates`` message sealed with ChaCha20-Poly1305
(RFC 8439 §2.8) under a key of its own per direction::

    key = HKDF(salt = h, ikm = k, info = "anchor-link/4 trickle", L = 32)

(``k1`` for the initiator's candidates, ``k2`` for the responder's), so it never shares a key
with the channel's frames; the nonce is the message's sequence number (4 zero bytes and 8
bytes big-endian, as Noise's own nonces, §5.1). :class:`TrickleBox` numbers what it seals from
0 and opens each number at most once: a candidate changed on the way fails to open, a replayed
one is refused, and the rendezvous cannot inject an address (which could steer the checks, and
the data, somewhere it chose).

Randomness is injected: the ephemeral private key is ``rng(32)``. A handshake message that does
not authenticate, or arrives out of turn, raises :class:`HandshakeFailed` and ends the
handshake (Noise §5: a failed ``DECRYPT`` is not retried).
"""

from __future__ import annotations

import hmac
import os
import struct
import warnings
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from noise.connection import Keypair, NoiseConnection
from noise.constants import Empty
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
)

from anchor_stun.errors import LocalProtocolError

from .identity import Identity
from .seal import Sealer, check_key
from .state import LinkError

__all__ = [
    "LINK_PROLOGUE",
    "MAX_HANDSHAKE_MESSAGE",
    "MAX_TRICKLE_MESSAGES",
    "PROTOCOL_NAME",
    "RENDEZVOUS_PROLOGUE",
    "RENDEZVOUS_PROTOCOL",
    "TRICKLE_INFO",
    "HandshakeFailed",
    "LinkHandshake",
    "NoiseHandshake",
    "TrickleBox",
    "link_prologue",
    "rendezvous_handshake",
]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
"""The Noise protocol of every link (Noise §8)."""
LINK_PROLOGUE = b"anchor-link/4"
"""First bytes of the prologue: the protocol and its version."""
MAX_HANDSHAKE_MESSAGE = 65535
"""Largest Noise message (Noise §3)."""
RENDEZVOUS_PROTOCOL = b"Noise_XN_25519_ChaChaPoly_SHA256"
"""The Noise protocol a rendezvous client proves its identity with (Noise §7.5, XN: the client's
static key is transmitted and proven; the server has none)."""
RENDEZVOUS_PROLOGUE = b"anchor-rendezvous/1"
"""First bytes of the rendezvous handshake's prologue."""
SEAL_INFO = b"anchor-link/4 seal"
"""HKDF ``info`` of the channel keys (module docstring)."""
TRICKLE_INFO = b"anchor-link/4 trickle"
"""HKDF ``info`` of the keys of trickled candidates (module docstring)."""
MAX_TRICKLE_MESSAGES = 1024
"""Sealed ``candidates`` messages one direction of a link may carry (sequence numbers
0-1023); more are refused."""
_U16 = struct.Struct("!H")
_LIBRARY_ERRORS = (
    InvalidTag,  # a ciphertext that does not authenticate
    ValueError,  # a point the curve refuses, an all-zero shared secret (RFC 7748 §6.1)
    IndexError,
    TypeError,
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
)
"""What the ``noiseprotocol`` package raises for a bad message or a call out of turn."""


class HandshakeFailed(LinkError):
    """A handshake message did not authenticate, was malformed or came out of turn."""


def link_prologue(link_id: str, offerer: str, answerer: str) -> bytes:
    """The prologue of a link's handshake (module docstring): both sides build the same bytes
    from what they know of the link."""
    out = bytearray(LINK_PROLOGUE)
    for text in (link_id, offerer, answerer):
        raw = text.encode("utf-8")[:0xFFFF]
        out += _U16.pack(len(raw)) + raw
    return bytes(out)


def rendezvous_handshake(
    identity: Identity | None,
    *,
    client: bool,
    name: str,
    rng: Callable[[int], bytes] = os.urandom,
) -> NoiseHandshake:
    """One side of the rendezvous proof (:mod:`anchor_link.aio.signal`):
    ``Noise_XN_25519_ChaChaPoly_SHA256``::

        hello      -> e
        challenge  <- e, ee          the server's fresh ephemeral key is the challenge
        prove      -> s, se          the client's static key, proven by DH with it

    The prologue binds the name the client asks for. The client passes its identity, the
    server None."""
    raw = name.encode("utf-8")[:0xFFFF]
    prologue = RENDEZVOUS_PROLOGUE + _U16.pack(len(raw)) + raw
    return NoiseHandshake(
        RENDEZVOUS_PROTOCOL, identity if client else None,
        initiator=client, prologue=prologue, rng=rng,
    )  # fmt: skip


class NoiseHandshake:
    """One side of one Noise handshake of ``protocol_name`` (a pattern the ``noiseprotocol``
    package knows), sans-I/O: ``write_message`` / ``read_message`` in the pattern's turn.
    ``identity`` is the local static key pair (None for a pattern whose side has none)."""

    def __init__(
        self,
        protocol_name: bytes,
        identity: Identity | None,
        *,
        initiator: bool,
        prologue: bytes,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if identity is not None and not isinstance(identity, Identity):
            raise LocalProtocolError(
                "identity must be an Identity (Identity.generate(), load_identity(path)), not"
                f" {type(identity).__name__}"
            )
        if not isinstance(prologue, bytes | bytearray):
            raise LocalProtocolError(f"prologue must be bytes, not {type(prologue).__name__}")
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        self.initiator = initiator
        """True on the side that sends the first message."""
        self._noise = NoiseConnection.from_name(protocol_name)
        if initiator:
            self._noise.set_as_initiator()
        else:
            self._noise.set_as_responder()
        self._noise.set_prologue(bytes(prologue))
        if identity is not None:
            self._noise.set_keypair_from_private_bytes(Keypair.STATIC, identity.private_bytes())
        ephemeral = bytes(rng(32))
        if len(ephemeral) != 32:
            raise HandshakeFailed("rng(32) must return 32 bytes")
        self._noise.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
        with warnings.catch_warnings():
            # The library warns that a preset ephemeral key is for tests: here it is the
            # injected randomness (docs/design.md, "Sans-I/O cores"), as fresh as the library's own.
            warnings.simplefilter("ignore")
            try:
                self._noise.start_handshake()
            except _LIBRARY_ERRORS as exc:
                raise HandshakeFailed(f"cannot start the handshake: {exc}") from None
        self._failed = False
        self.remote_static: bytes | None = None
        """The peer's static public key, once its handshake message carrying it authenticated."""
        self.handshake_hash: bytes | None = None
        """Noise's ``h`` once complete: both sides hold the same 32 bytes (channel binding)."""

    @property
    def complete(self) -> bool:
        """True once the three messages are through."""
        return bool(self._noise.handshake_finished)

    @property
    def failed(self) -> bool:
        """True once a message failed: the handshake cannot go on."""
        return self._failed

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message, carrying ``payload``."""
        self._check_usable()
        try:
            message = bytes(self._noise.write_message(bytes(payload)))
        except _LIBRARY_ERRORS as exc:
            self._failed = True
            raise HandshakeFailed(f"cannot write the handshake message: {exc}") from None
        self._after()
        return message

    def read_message(self, message: bytes) -> bytes:
        """The payload of the peer's next handshake message. Raises :class:`HandshakeFailed`
        (and the handshake is over) when it does not authenticate or is malformed."""
        self._check_usable()
        if not 32 <= len(message) <= MAX_HANDSHAKE_MESSAGE:
            self._failed = True
            raise HandshakeFailed("handshake message of impossible length")
        state = self._noise.noise_protocol.handshake_state
        try:
            payload = bytes(self._noise.read_message(bytes(message)))
        except _LIBRARY_ERRORS:
            self._failed = True
            raise HandshakeFailed("handshake message did not authenticate") from None
        rs = state.rs  # the library drops its handshake state once complete: kept above
        if not isinstance(rs, Empty):
            self.remote_static = bytes(rs.public_bytes)
        self._after()
        return payload

    def _check_usable(self) -> None:
        if self._failed:
            raise HandshakeFailed("the handshake already failed")
        if self.complete:
            raise HandshakeFailed("the handshake is complete")

    def _after(self) -> None:
        if self.complete:
            self.handshake_hash = bytes(self._noise.get_handshake_hash())



class LinkHandshake(NoiseHandshake):
    """One side of one link's Noise XX handshake (module docstring), sans-I/O.

    The initiator calls ``write_message`` (offer), ``read_message`` (answer),
    ``write_message`` (confirm); the responder ``read_message``, ``write_message``,
    ``read_message``. Once :attr:`complete`, :attr:`remote_static` is the peer's proven
    public key and :meth:`sealer` the channel's :class:`~anchor_link.seal.Sealer`.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        prologue: bytes,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(identity, Identity):
            raise LocalProtocolError(
                "identity must be an Identity (Identity.generate(), load_identity(path)), not"
                f" {type(identity).__name__}"
            )
        super().__init__(PROTOCOL_NAME, identity, initiator=initiator, prologue=prologue, rng=rng)
        self._sealer_made = False
        self._trickle_made = False

    def split_keys(self) -> tuple[bytes, bytes]:
        """Noise's ``Split()`` keys ``(k1, k2)``: k1 protects the initiator's direction,
        k2 the responder's (Noise §5.2). Only once complete."""
        if not self.complete:
            raise HandshakeFailed("the handshake is not complete")
        protocol = self._noise.noise_protocol
        send, recv = protocol.cipher_state_encrypt.k, protocol.cipher_state_decrypt.k
        return (bytes(send), bytes(recv)) if self.initiator else (bytes(recv), bytes(send))

    def accept_message(self) -> bytes:
        """The responder's key confirmation (module docstring), once complete."""
        if self.initiator:
            raise HandshakeFailed("only the responder accepts")
        return self._finished()

    def check_accept(self, message: bytes) -> None:
        """Verify the responder's key confirmation; raises :class:`HandshakeFailed`."""
        if not self.initiator:
            raise HandshakeFailed("only the initiator checks an accept")
        if not hmac.compare_digest(bytes(message), self._finished()):
            raise HandshakeFailed("the accept did not authenticate")

    def _finished(self) -> bytes:
        _k1, k2 = self.split_keys()
        assert self.handshake_hash is not None
        finished = _expand(k2, self.handshake_hash)[2]
        return hmac.digest(finished, self.handshake_hash, "sha256")

    def sealer(self) -> Sealer:
        """The channel's :class:`~anchor_link.seal.Sealer` (module docstring: keys). Made once:
        a second channel on the same keys would reuse nonces."""
        if self._sealer_made:
            raise HandshakeFailed("the channel keys were already handed out")
        k1, k2 = self.split_keys()
        assert self.handshake_hash is not None
        initiator_keys = _expand(k1, self.handshake_hash)
        responder_keys = _expand(k2, self.handshake_hash)
        send, recv = (
            (initiator_keys, responder_keys) if self.initiator else (responder_keys, initiator_keys)
        )
        self._sealer_made = True
        return Sealer(send[0], send[1], recv[0], recv[1])


    def trickle_box(self) -> TrickleBox:
        """The :class:`TrickleBox` of this link's later candidates (module docstring). Made
        once, only once complete: a second box on the same keys would reuse nonces."""
        if self._trickle_made:
            raise HandshakeFailed("the trickle keys were already handed out")
        k1, k2 = self.split_keys()
        assert self.handshake_hash is not None
        initiator_key = _trickle_key(k1, self.handshake_hash)
        responder_key = _trickle_key(k2, self.handshake_hash)
        self._trickle_made = True
        if self.initiator:
            return TrickleBox(initiator_key, responder_key)
        return TrickleBox(responder_key, initiator_key)


class TrickleBox:
    """Seals this side's trickled candidates and opens the peer's (module docstring,
    "Trickled candidates"): ChaCha20-Poly1305 (RFC 8439 §2.8) under ``send_key`` and
    ``recv_key``, the sequence number as nonce. Sans-I/O; made by
    :meth:`LinkHandshake.trickle_box`."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = ChaCha20Poly1305(check_key(send_key, "send_key"))
        self._recv = ChaCha20Poly1305(check_key(recv_key, "recv_key"))
        self._next = 0
        self._opened: set[int] = set()
        self.refused = 0
        """Messages that did not open: changed on the way, replayed, or out of range."""

    def seal(self, payload: bytes) -> tuple[int, bytes]:
        """``(seq, box)``: ``payload`` sealed under the next sequence number."""
        seq = self._next
        if seq >= MAX_TRICKLE_MESSAGES:
            raise HandshakeFailed("no sequence number left for trickled candidates")
        self._next += 1
        return seq, self._send.encrypt(_trickle_nonce(seq), bytes(payload), None)

    def open(self, seq: object, box: bytes) -> bytes:
        """The payload of the peer's message ``seq``. Raises :class:`HandshakeFailed` when it
        does not authenticate, when ``seq`` was opened before (a replay) or is out of range;
        a refusal leaves the box usable (the genuine message may still come)."""
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or not 0 <= seq < MAX_TRICKLE_MESSAGES
        ):
            self.refused += 1
            raise HandshakeFailed("trickled candidates with an impossible sequence number")
        if seq in self._opened:
            self.refused += 1
            raise HandshakeFailed(f"trickled candidates {seq} replayed")
        try:
            payload = self._recv.decrypt(_trickle_nonce(seq), bytes(box), None)
        except InvalidTag:
            self.refused += 1
            raise HandshakeFailed("trickled candidates did not authenticate") from None
        self._opened.add(seq)
        return payload


def _trickle_nonce(seq: int) -> bytes:
    return bytes(4) + seq.to_bytes(8, "big")


def _trickle_key(key: bytes, handshake_hash: bytes) -> bytes:
    """The key of one direction's trickled candidates (module docstring)."""
    return HKDF(algorithm=SHA256(), length=32, salt=handshake_hash, info=TRICKLE_INFO).derive(key)


def _expand(key: bytes, handshake_hash: bytes) -> tuple[bytes, bytes, bytes]:
    """``key, hp, finished`` of one direction (module docstring)."""
    okm = HKDF(algorithm=SHA256(), length=96, salt=handshake_hash, info=SEAL_INFO).derive(key)
    return okm[:32], okm[32:64], okm[64:]
