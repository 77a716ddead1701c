"""Credentials: keys, OpaqueString, USERHASH, the nonce cookie, long-term negotiation.

RFC 8489 §9 defines two credential mechanisms:

* short-term (§9.1): the key is ``OpaqueString(password)``; ICE uses it.
* long-term (§9.2): the key is ``H(username ":" OpaqueString(realm) ":" OpaqueString(password))``
  with H = MD5 or SHA-256 (the PASSWORD-ALGORITHM), after a 401 challenge that supplies REALM
  and NONCE. MD5 keys sign with MESSAGE-INTEGRITY (HMAC-SHA1); SHA-256 keys with
  MESSAGE-INTEGRITY-SHA256.

The nonce cookie (§9.2): a NONCE that starts with ``obMatJos2`` carries 24 bits of "STUN
Security Features" as 4 base64 characters. Bit 0 (the least significant bit, per erratum 6290)
says the server does password-algorithm negotiation; bit 1 that it accepts USERHASH. A client
that sees the bit for algorithms but no PASSWORD-ALGORITHMS, or a list that changed between
the 401 and a later 438, is being bid down and stops (§9.2.5).

:class:`LongTermCredentials` is the client side of that negotiation as a small sans-I/O state
holder: feed it each 401/438 with :meth:`~LongTermCredentials.challenge`, sign each request with
:meth:`~LongTermCredentials.sign`, check each response with
:meth:`~LongTermCredentials.verify_response`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from enum import IntFlag

from precis_i18n import get_profile

from anchor_stun.address import credential
from anchor_stun.attributes import (
    Attribute,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithmId,
    PasswordAlgorithms,
    Realm,
    Userhash,
    Username,
)
from anchor_stun.errors import LocalProtocolError, StunError
from anchor_stun.message import Message

__all__ = [
    "NONCE_COOKIE",
    "SUPPORTED_ALGORITHMS",
    "CredentialsRejected",
    "LongTermCredentials",
    "SecurityFeatures",
    "long_term_key",
    "make_nonce",
    "nonce_features",
    "opaque_credential",
    "opaque_string",
    "short_term_key",
    "turn_rest_password",
    "userhash",
    "verify_request_integrity",
]

NONCE_COOKIE = "obMatJos2"  # RFC 8489 §9.2
SUPPORTED_ALGORITHMS = (PasswordAlgorithmId.SHA256, PasswordAlgorithmId.MD5)
"""Password algorithms Anchor implements, in its order of preference (RFC 8489 §18.5)."""

_OPAQUE = get_profile("OpaqueString")


def opaque_string(value: str) -> str:
    """Prepare a username, realm or password with the PRECIS OpaqueString profile (RFC 8265).

    Raises :class:`LocalProtocolError` for a string the profile disallows (for instance one
    with control characters or an empty one), or for a value that is no string.
    """
    if not isinstance(value, str):
        raise LocalProtocolError(
            f"value must be text (a username, realm or password), not {type(value).__name__}"
        )
    try:
        return str(_OPAQUE.enforce(value))
    except UnicodeError as exc:
        raise LocalProtocolError(f"not a valid OpaqueString: {exc}") from exc


def opaque_credential(value: object, what: str) -> str:
    """A user name, realm or password checked where it enters: a non-empty string
    (:func:`~anchor_stun.address.credential`) that the OpaqueString profile accepts (RFC 8265
    §4.2, RFC 8489 §9.2.2), else :class:`LocalProtocolError` naming ``what``. Returns it
    prepared."""
    text = credential(value, what)
    try:
        return opaque_string(text)
    except LocalProtocolError as exc:
        raise LocalProtocolError(
            f"{what} must be text the OpaqueString profile accepts (RFC 8265 §4.2: no"
            f" control characters): {exc}"
        ) from None


def short_term_key(password: str) -> bytes:
    """Short-term credential key: ``OpaqueString(password)`` as UTF-8 (RFC 8489 §9.1.1)."""
    return opaque_credential(password, "password").encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: int = PasswordAlgorithmId.MD5,
) -> bytes:
    """Long-term credential key (RFC 8489 §9.2.2):
    ``H(username ":" OpaqueString(realm) ":" OpaqueString(password))`` with H = MD5 or SHA-256.
    """
    if not isinstance(username, str):
        raise LocalProtocolError(f"username must be text, not {type(username).__name__}")
    prepared = f"{username}:{opaque_credential(realm, 'realm')}:"
    text = (prepared + opaque_credential(password, "password")).encode()
    if algorithm == PasswordAlgorithmId.MD5:
        return hashlib.md5(text).digest()
    if algorithm == PasswordAlgorithmId.SHA256:
        return hashlib.sha256(text).digest()
    raise LocalProtocolError(
        f"algorithm must be PasswordAlgorithmId.MD5 or SHA256, not {algorithm!r}"
        " (unsupported password algorithm, RFC 8489 §18.5)"
    )


def userhash(username: str, realm: str) -> bytes:
    """USERHASH value: ``SHA-256(OpaqueString(username) ":" OpaqueString(realm))`` (RFC 8489 §14.4)."""
    text = f"{opaque_credential(username, 'username')}:{opaque_credential(realm, 'realm')}"
    return hashlib.sha256(text.encode()).digest()


class SecurityFeatures(IntFlag):
    """STUN Security Features carried by the nonce cookie (RFC 8489 §18.1, erratum 6290)."""

    NONE = 0
    PASSWORD_ALGORITHMS = 1 << 0
    USERNAME_ANONYMITY = 1 << 1


def make_nonce(features: SecurityFeatures, rest: str) -> str:
    """A NONCE value that starts with the nonce cookie announcing ``features`` (RFC 8489 §9.2)."""
    encoded = base64.b64encode(int(features).to_bytes(3, "big")).decode("ascii")
    return NONCE_COOKIE + encoded + rest


def nonce_features(nonce: str) -> SecurityFeatures | None:
    """The security features of a NONCE that starts with the nonce cookie, else None."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < len(NONCE_COOKIE) + 4:
        return None
    chunk = nonce[len(NONCE_COOKIE) : len(NONCE_COOKIE) + 4]
    try:
        bits = int.from_bytes(base64.b64decode(chunk, validate=True), "big")
    except ValueError:
        return None
    return SecurityFeatures(bits & 0x3)


class CredentialsRejected(StunError):
    """The server's challenge cannot be answered: wrong credentials, no common password
    algorithm, or a bid-down attempt (RFC 8489 §9.2.5)."""


@dataclass
class LongTermCredentials:
    """Client state of the long-term credential mechanism (RFC 8489 §9.2.3-§9.2.5).

    Usage: send the first request unsigned; on a 401 or 438 error response call
    :meth:`challenge` (it raises :class:`CredentialsRejected` when the client must not
    retry), then :meth:`sign` every request; check responses with :meth:`verify_response`.
    """

    username: str
    password: str
    algorithms: tuple[int, ...] = SUPPORTED_ALGORITHMS
    """Algorithms this client accepts (defaults to all Anchor implements)."""
    realm: str | None = None
    nonce: str | None = None
    offered: PasswordAlgorithms | None = None
    """PASSWORD-ALGORITHMS from the server's first challenge (echoed in every request)."""
    algorithm: int = PasswordAlgorithmId.MD5
    use_userhash: bool = False
    key: bytes | None = None
    _signed_once: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        opaque_credential(self.username, "username")
        opaque_credential(self.password, "password")
        if (
            not isinstance(self.algorithms, tuple | list)
            or not self.algorithms
            or any(a not in SUPPORTED_ALGORITHMS for a in self.algorithms)
        ):
            raise LocalProtocolError(
                "algorithms must be a non-empty tuple of PasswordAlgorithmId.SHA256 / MD5,"
                f" not {self.algorithms!r}"
            )
        self.algorithms = tuple(self.algorithms)

    @property
    def ready(self) -> bool:
        """True once a challenge has supplied REALM and NONCE."""
        return self.key is not None

    def challenge(self, response: Message) -> None:
        """Take a 401 (Unauthenticated) or 438 (Stale Nonce) error response into account."""
        error = response.error
        code = error.code if error else 0
        if code not in (401, 438):
            raise LocalProtocolError(f"not a credential challenge: {code}")
        realm = response.get(Realm)
        nonce = response.get(Nonce)
        if realm is None or nonce is None:
            raise CredentialsRejected(f"{code} without REALM and NONCE")
        features = nonce_features(nonce.value)
        offered = response.get(PasswordAlgorithms)
        if features is not None and SecurityFeatures.PASSWORD_ALGORITHMS in features:
            if offered is None:
                raise CredentialsRejected(
                    "nonce cookie announces password algorithms but none were offered (bid-down)"
                )
        else:
            offered = None  # without the cookie bit the list is not protected: use MD5
        if code == 401:
            if self._signed_once and realm.value == self.realm:
                raise CredentialsRejected("401 Unauthenticated: wrong username or password")
            if offered is not None:
                choice = next((a for a in offered.ids if a in self.algorithms), None)
                if choice is None:
                    raise CredentialsRejected("no supported password algorithm offered")
                self.algorithm = choice
            else:
                if PasswordAlgorithmId.MD5 not in self.algorithms:
                    raise CredentialsRejected("server offers MD5 only")
                self.algorithm = PasswordAlgorithmId.MD5
            self.offered = offered
            self.realm = realm.value
            self.use_userhash = bool(
                features is not None and SecurityFeatures.USERNAME_ANONYMITY in features
            )
            self.key = long_term_key(
                opaque_string(self.username), realm.value, self.password, self.algorithm
            )
        else:  # 438 Stale Nonce: same realm and algorithms, new nonce
            if self.key is None:
                raise CredentialsRejected("438 before any 401 challenge")
            if offered != self.offered:
                raise CredentialsRejected("PASSWORD-ALGORITHMS changed after 438 (bid-down)")
            if realm.value != self.realm:
                raise CredentialsRejected("REALM changed after 438")
        self.nonce = nonce.value

    def attributes(self) -> list[Attribute]:
        """USERNAME or USERHASH, REALM, NONCE and the algorithm attributes for a request."""
        if self.key is None or self.realm is None or self.nonce is None:
            raise LocalProtocolError("no challenge received yet")
        attrs: list[Attribute] = []
        if self.use_userhash:
            attrs.append(Userhash(userhash(self.username, self.realm)))
        else:
            attrs.append(Username(opaque_string(self.username)))
        attrs += [Realm(self.realm), Nonce(self.nonce)]
        if self.offered is not None:
            attrs += [self.offered, PasswordAlgorithm(self.algorithm)]
        return attrs

    def sign(self, request: Message, *, fingerprint: bool = True) -> bytes:
        """Encode ``request`` with the credential attributes and its integrity attribute."""
        if self.key is None:
            raise LocalProtocolError("no challenge received yet")
        signed = Message(
            request.method,
            request.msg_class,
            request.transaction_id,
            [a for a in request.attributes if not isinstance(a, _CREDENTIAL_TYPES)]
            + self.attributes(),
        )
        self._signed_once = True
        if self.algorithm == PasswordAlgorithmId.SHA256:
            return signed.encode(key_sha256=self.key, fingerprint=fingerprint)
        return signed.encode(key=self.key, fingerprint=fingerprint)

    def verify_response(self, response: Message) -> bool:
        """True when the response is signed with our key (RFC 8489 §9.2.5)."""
        if self.key is None:
            return False
        if self.algorithm == PasswordAlgorithmId.SHA256:
            return response.verify_integrity_sha256(self.key)
        return response.verify_integrity(self.key)


_CREDENTIAL_TYPES = (Username, Userhash, Realm, Nonce, PasswordAlgorithm, PasswordAlgorithms)


def verify_request_integrity(request: Message, key: bytes) -> bool:
    """Check whichever integrity attribute a request carries: MESSAGE-INTEGRITY-SHA256 when
    present (it is the stronger one, RFC 8489 §14.6), else MESSAGE-INTEGRITY."""
    if request.integrity_sha256 is not None:
        return request.verify_integrity_sha256(key)
    return request.verify_integrity(key)


def turn_rest_password(secret: str, username: str) -> str:
    """Password of the TURN REST API scheme coturn implements:
    ``base64(HMAC-SHA1(secret, username))`` where username is ``expiry[:user]``."""
    credential(secret, "secret")
    if not isinstance(username, str):
        raise LocalProtocolError(f"username must be text, not {type(username).__name__}")
    mac = hmac.digest(secret.encode(), username.encode(), "sha1")
    return base64.b64encode(mac).decode("ascii")
