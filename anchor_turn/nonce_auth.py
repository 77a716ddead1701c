"""Long-term credential authentication of TURN requests with stateless nonces bound to the
5-tuple (RFC 8489 §9.2, RFC 8656 §7.2 step 1).

Theory of operation
-------------------
:class:`NonceAuthenticator` decides, for one decoded request, who sent it and with which key
the answer is signed, or which error answers it. It keeps no per-client state and touches no
clock (``now`` is passed in): :class:`~anchor_turn.server.TurnServer` calls
:meth:`NonceAuthenticator.authenticate` and acts on the verdict, an :class:`Authenticated`
(username, key, how to sign) or a :class:`Refusal` (error code and attributes to answer with,
unsigned). The server counts and reports refusals whose credentials did not verify.

Checks, in the order of RFC 8489 §9.2.4:

a. no MESSAGE-INTEGRITY nor MESSAGE-INTEGRITY-SHA256: 401 with REALM, a fresh NONCE and
   PASSWORD-ALGORITHMS (the *challenge*);
b. missing USERNAME/USERHASH, REALM or NONCE: 400;
c. a NONCE whose cookie announces password algorithms (§9.2.1): without PASSWORD-ALGORITHM
   and PASSWORD-ALGORITHMS the key is MD5 (400 if MD5 is not offered); otherwise both must be
   present, the list must be the one offered and contain the chosen algorithm, or 400;
d. unknown USERNAME, USERHASH with no owner, or another REALM: 401 (a new challenge);
e. MESSAGE-INTEGRITY-SHA256 (when present, else MESSAGE-INTEGRITY) does not verify: 401;
f. NONCE not one issued to this 5-tuple, or past its lifetime: 438 with a fresh challenge.

The credential lookup is the :class:`~anchor_turn.auth.CredentialBackend`'s: a key for
(username, realm, algorithm), and the username behind a USERHASH.

Nonces are stateless: ``cookie | base64(expiry_ms | HMAC-SHA256(secret, cookie | expiry |
5-tuple)[:12])``, the expiry 6 bytes of milliseconds, the secret 32 bytes drawn from ``rng``
at construction (so a restart makes every nonce stale: 438, and the client retries with the
new one). The 5-tuple is the transport, the client IP and port and the listener address: a
nonce is only valid on the 5-tuple it was issued to, as coturn binds it to the session
(RFC 8489 §9.2 asks nonces not to be shared across clients). A request captured and replayed
byte for byte from another source port (or over another transport) therefore gets 438; a
forged, foreign or expired nonce gets 438 too, after the integrity check, as §9.2.4 orders.
The cookie (``obMatJos2``, §9.2.1) announces PASSWORD-ALGORITHMS when algorithms are
offered and USERHASH support with ``username_anonymity``; USERHASH is accepted either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from anchor_stun.address import seconds
from anchor_stun.attributes import (
    Attribute,
    ErrorCode,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithmId,
    PasswordAlgorithms,
    Realm,
    Userhash,
    Username,
)
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address
from anchor_stun.integrity import (
    SecurityFeatures,
    make_nonce,
    nonce_features,
    opaque_credential,
)
from anchor_stun.message import Message
from anchor_turn.auth import CredentialBackend, candidate_keys

__all__ = [
    "DEFAULT_NONCE_LIFETIME",
    "Authenticated",
    "NonceAuthenticator",
    "Refusal",
]

DEFAULT_NONCE_LIFETIME = 600  # RFC 8489 §9.2 leaves it to the server

_MD5 = int(PasswordAlgorithmId.MD5)
_SHA256 = int(PasswordAlgorithmId.SHA256)
_EXPIRY = struct.Struct("!Q")  # nonce expiry, milliseconds, 6 bytes on the wire
_MAX_EXPIRY_MS = (1 << 48) - 1
_NONCE_RAW = 6 + 12  # expiry + truncated HMAC

_Transport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A request whose credentials verified (RFC 8489 §9.2.4): who, with which key, and how
    to sign the response (with the integrity attribute the request used)."""

    username: str
    """The USERNAME, or the owner of the USERHASH."""
    key: bytes
    """The long-term key (RFC 8489 §9.2.2) of the algorithm the request used."""
    sha256_length: int
    """0 to sign with MESSAGE-INTEGRITY, else the MESSAGE-INTEGRITY-SHA256 length."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """How to answer a request that is not authenticated: an unsigned error response."""

    code: ErrorCode
    """400, 401 or 438."""
    attributes: tuple[Attribute, ...]
    """REALM, NONCE and PASSWORD-ALGORITHMS for 401 and 438; none for 400."""
    bad_credentials: bool = False
    """True for a 401 after credentials were presented (steps d, e): an authentication
    failure to count and report."""
    username: str | None = None
    """The USERNAME (or owner of the USERHASH) claimed, when known."""


class NonceAuthenticator:
    """The long-term credential mechanism of a TURN server (see the module docstring).

    ``realm``: the REALM; ``backend``: where keys come from; ``rng``: randomness for the nonce
    secret; ``nonce_lifetime``: seconds a NONCE stays valid; ``password_algorithms``: offered
    in PASSWORD-ALGORITHMS in preference order (RFC 8489 §14.11), empty for RFC 5389-style MD5
    only; ``username_anonymity``: announce USERHASH support in the cookie (§9.2.1). Raises
    :class:`LocalProtocolError` on a bad configuration."""

    def __init__(
        self,
        *,
        realm: str,
        backend: CredentialBackend,
        rng: Callable[[int], bytes],
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        password_algorithms: tuple[int, ...] = (_SHA256, _MD5),
        username_anonymity: bool = False,
        secret: bytes | None = None,
    ) -> None:
        opaque_credential(realm, "realm")
        if not isinstance(backend, CredentialBackend):
            raise LocalProtocolError(
                "backend must be a CredentialBackend (StaticUsers, SqliteUsers, RestSecret...),"
                f" not {type(backend).__name__}"
            )
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        seconds(nonce_lifetime, "nonce_lifetime")
        if not isinstance(password_algorithms, tuple | list) or any(
            alg not in (_MD5, _SHA256) for alg in password_algorithms
        ):
            raise LocalProtocolError(
                "password_algorithms must be a tuple of PasswordAlgorithmId.SHA256 / MD5"
                f" (RFC 8489 §18.5), not {password_algorithms!r}"
            )
        if secret is not None and not isinstance(secret, bytes):
            raise LocalProtocolError(f"secret must be bytes or None, not {type(secret).__name__}")
        try:
            Realm(realm).encode_value(bytes(12))  # raises on an over-long realm
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"realm: {exc}") from None
        backend_realm = getattr(backend, "realm", realm)
        if isinstance(backend_realm, str) and backend_realm != realm:
            raise LocalProtocolError(
                f"the credential back-end serves realm {backend_realm!r}, not {realm!r}"
            )
        self.realm = realm
        """The REALM of the long-term credentials (RFC 8489 §14.9)."""
        self.backend = backend
        """The credential back-end."""
        self.nonce_lifetime = nonce_lifetime
        """How long a NONCE stays valid, seconds (RFC 8489 §9.2)."""
        self.password_algorithms = tuple(int(a) for a in password_algorithms)
        """Algorithms offered in PASSWORD-ALGORITHMS, in preference order."""
        features = SecurityFeatures.NONE
        if self.password_algorithms:
            features |= SecurityFeatures.PASSWORD_ALGORITHMS
        if username_anonymity:
            features |= SecurityFeatures.USERNAME_ANONYMITY
        self._features = features
        self._prefix = make_nonce(features, "")
        self._offered: PasswordAlgorithms | None = (
            PasswordAlgorithms.of(*self.password_algorithms) if self.password_algorithms else None
        )
        if secret is not None and len(secret) < 16:
            raise LocalProtocolError("nonce_secret must be at least 16 bytes")
        self._secret = secret if secret is not None else rng(32)
        """The key of the stateless nonces: drawn at start, or given (``--workers``: one for
        every worker, so a nonce made by one is valid on all)."""
        self._bad_request = Refusal(ErrorCode.BAD_REQUEST, ())

    # ------------------------------------------------------------------ verdicts

    def authenticate(
        self, msg: Message, addr: Address, local: Address, transport: _Transport, now: float
    ) -> Authenticated | Refusal:
        """Steps a-f of the module docstring for a request that arrived on the 5-tuple
        (``addr``, ``local``, ``transport``)."""
        if msg.integrity is None and msg.integrity_sha256 is None:
            return self.challenge(ErrorCode.UNAUTHENTICATED, addr, local, transport, now)
        username_attr = msg.get(Username)
        userhash_attr = msg.get(Userhash)
        realm = msg.get(Realm)
        nonce = msg.get(Nonce)
        if (username_attr is None and userhash_attr is None) or realm is None or nonce is None:
            return self._bad_request
        algorithm = _MD5
        features = nonce_features(nonce.value)
        if features is not None and SecurityFeatures.PASSWORD_ALGORITHMS in features:
            chosen = msg.get(PasswordAlgorithm)
            offered = msg.get(PasswordAlgorithms)
            if chosen is None and offered is None:
                if self.password_algorithms and _MD5 not in self.password_algorithms:
                    return self._bad_request
            elif (
                chosen is None
                or offered is None
                or offered != self._offered
                or chosen.algorithm not in offered.ids
            ):
                return self._bad_request
            else:
                algorithm = chosen.algorithm
        username: str | None
        if username_attr is not None:
            username = username_attr.value
        else:
            assert userhash_attr is not None
            username = self.backend.lookup_userhash(userhash_attr.value, self.realm)
        key = None
        if username is not None and realm.value == self.realm:
            for candidate in candidate_keys(self.backend, username, self.realm, algorithm, now):
                if _verify(msg, candidate):
                    key = candidate
                    break
        if username is None or key is None:
            refusal = self.challenge(ErrorCode.UNAUTHENTICATED, addr, local, transport, now)
            return Refusal(refusal.code, refusal.attributes, True, username)
        if not self.nonce_valid(nonce.value, addr, local, transport, now):
            return self.challenge(ErrorCode.STALE_NONCE, addr, local, transport, now)
        mac = msg.integrity_sha256
        return Authenticated(username, key, len(mac) if mac is not None else 0)

    def challenge(
        self, code: ErrorCode, addr: Address, local: Address, transport: _Transport, now: float
    ) -> Refusal:
        """401 or 438 with REALM, a fresh NONCE for the 5-tuple and PASSWORD-ALGORITHMS
        (RFC 8489 §9.2.4)."""
        attrs: list[Attribute] = [Realm(self.realm), Nonce(self.nonce(addr, local, transport, now))]
        if self._offered is not None:
            attrs.append(self._offered)
        return Refusal(code, tuple(attrs))

    # ------------------------------------------------------------------ nonces

    def nonce(self, addr: Address, local: Address, transport: _Transport, now: float) -> str:
        """A NONCE valid on this 5-tuple until ``now + nonce_lifetime`` (module docstring)."""
        expiry_ms = min(max(0, int((now + self.nonce_lifetime) * 1000)), _MAX_EXPIRY_MS)
        expiry = _EXPIRY.pack(expiry_ms)[2:]
        mac = self._mac(expiry, addr, local, transport)
        return make_nonce(self._features, base64.urlsafe_b64encode(expiry + mac).decode("ascii"))

    def nonce_valid(
        self, nonce: str, addr: Address, local: Address, transport: _Transport, now: float
    ) -> bool:
        """True when ``nonce`` was minted by this authenticator for this 5-tuple and has not
        expired at ``now``."""
        prefix = self._prefix
        if not nonce.startswith(prefix):
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce[len(prefix) :].encode("ascii"))
        except (ValueError, UnicodeError):
            return False
        if len(raw) != _NONCE_RAW:
            return False
        expiry, mac = raw[:6], raw[6:]
        if not hmac.compare_digest(mac, self._mac(expiry, addr, local, transport)):
            return False
        return now * 1000 < int.from_bytes(expiry, "big")

    def _mac(self, expiry: bytes, addr: Address, local: Address, transport: str) -> bytes:
        text = "|".join(
            (self._prefix, transport, addr[0], str(addr[1]), local[0], str(local[1]))
        ).encode("utf-8")
        return hmac.digest(self._secret, expiry + text, hashlib.sha256)[:12]


def _verify(msg: Message, key: bytes) -> bool:
    """MESSAGE-INTEGRITY-SHA256 when present, else MESSAGE-INTEGRITY (RFC 8489 §9.2.4)."""
    if msg.integrity_sha256 is not None:
        return msg.verify_integrity_sha256(key)
    return msg.verify_integrity(key)
