"""Endpoint identities: a long-term X25519 key pair per endpoint, kept in a file.

Theory of operation
-------------------
An :class:`Identity` is the static key pair an endpoint proves on every link (the ``s`` of
the Noise handshake in :mod:`anchor_link.handshake`) and on the rendezvous
(:mod:`anchor_link.aio.signal`). It is an X25519 key pair (RFC 7748 §6.1): 32 random bytes
of private key, clamped by X25519 itself, and the 32-byte public key.

Its **public identity** is one line of text that can be copied into a command line or a
configuration file::

    anchor1:<the 32-byte public key in base32, RFC 4648 §6, lower case, no padding>

(60 characters: the ``anchor1:`` prefix names the format and its version; base32 has no
character a shell, a URL or a double-click selection treats specially, and it reads back
whatever the case). :func:`parse_public` accepts exactly that; :func:`format_public` makes it.

The **identity file** (``anchor keygen --out FILE``) is text, created with mode 0600 and
never overwritten::

    # Anchor identity: an X25519 private key. Keep this file secret.
    # public anchor1:...
    private <the 32-byte private key in base64url, RFC 4648 §5, no padding>

Only the ``private`` line is read back; the ``public`` comment is for people. Like SSH with
its private keys, :func:`load_identity` refuses a file that other users may read.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from anchor_stun.errors import LocalProtocolError

from .state import LinkError

__all__ = [
    "IDENTITY_FILE_MODE",
    "PUBLIC_KEY_SIZE",
    "PUBLIC_PREFIX",
    "Identity",
    "IdentityError",
    "default_identity_path",
    "format_public",
    "load_identity",
    "load_or_create_identity",
    "parse_public",
]

PUBLIC_KEY_SIZE = 32  # RFC 7748 §6.1
PUBLIC_PREFIX = "anchor1:"
"""The prefix of a public identity: the format's name and version."""
IDENTITY_FILE_MODE = 0o600
"""Mode of an identity file: read and write for its owner only."""
_HEADER = "# Anchor identity: an X25519 private key. Keep this file secret.\n"


class IdentityError(LinkError):
    """An identity file or public identity that cannot be used (the message says why)."""


def format_public(public: bytes) -> str:
    """The public identity text of a 32-byte X25519 public key (module docstring);
    :class:`~anchor_stun.errors.LocalProtocolError` for anything else."""
    if not isinstance(public, bytes | bytearray) or len(public) != PUBLIC_KEY_SIZE:
        shown = f"{len(public)} bytes" if isinstance(public, bytes | bytearray) else repr(public)
        raise LocalProtocolError(
            f"public must be a {PUBLIC_KEY_SIZE}-byte X25519 public key, not {shown}"
        )
    return PUBLIC_PREFIX + base64.b32encode(public).decode("ascii").rstrip("=").lower()


def parse_public(text: str) -> bytes:
    """The 32-byte public key of a public identity ``anchor1:...``; raises
    :class:`IdentityError` for anything else (module docstring)."""
    if not isinstance(text, str):
        raise IdentityError("a public identity is text")
    text = text.strip()
    if not text.lower().startswith(PUBLIC_PREFIX):
        raise IdentityError(f"a public identity starts with {PUBLIC_PREFIX!r}: {text[:80]!r}")
    body = text[len(PUBLIC_PREFIX) :].upper()
    if len(body) != 52:
        raise IdentityError(f"not a public identity (wrong length): {text[:80]!r}")
    try:
        public = base64.b32decode(body + "====")
    except (binascii.Error, ValueError):
        raise IdentityError(f"not a public identity (bad base32): {text[:80]!r}") from None
    if len(public) != PUBLIC_KEY_SIZE or format_public(public) != text.lower():
        raise IdentityError(f"not a public identity (non-canonical): {text[:80]!r}")
    return public


@dataclass(frozen=True)
class Identity:
    """An endpoint's long-term X25519 key pair (module docstring). Make one with
    :meth:`generate`, :func:`load_identity` or :meth:`from_private_bytes`."""

    private: X25519PrivateKey = field(repr=False, compare=False)
    """The private key; it never leaves this process except into the identity file."""
    public: bytes
    """The 32-byte public key."""

    def __post_init__(self) -> None:
        if not isinstance(self.private, X25519PrivateKey):
            raise LocalProtocolError(
                "private must be an X25519PrivateKey (or use Identity.generate(),"
                f" load_identity(path)), not {type(self.private).__name__}"
            )
        if self.public != self.private.public_key().public_bytes_raw():
            raise LocalProtocolError("public must be the public key of private (32 bytes)")

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> Identity:
        """A new identity from 32 bytes of ``rng`` (RFC 7748 §6.1)."""
        return cls.from_private_bytes(bytes(rng(32)))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        """The identity whose private key is the 32 bytes ``raw``."""
        if len(raw) != 32:
            raise IdentityError("an X25519 private key is 32 bytes")
        private = X25519PrivateKey.from_private_bytes(bytes(raw))
        return cls(private, private.public_key().public_bytes_raw())

    @property
    def public_text(self) -> str:
        """The public identity, ``anchor1:...`` (:func:`format_public`)."""
        return format_public(self.public)

    def private_bytes(self) -> bytes:
        """The 32 raw bytes of the private key (for the identity file and the Noise library)."""
        return self.private.private_bytes_raw()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the identity file at ``path``: mode 0600, created exclusively (an existing
        file is never overwritten: :class:`IdentityError`)."""
        raw = base64.urlsafe_b64encode(self.private_bytes()).decode("ascii").rstrip("=")
        text = f"{_HEADER}# public {self.public_text}\nprivate {raw}\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, IDENTITY_FILE_MODE)
        except FileExistsError:
            raise IdentityError(f"{os.fspath(path)} exists: not overwriting an identity") from None
        except OSError as exc:
            raise IdentityError(f"cannot create {os.fspath(path)}: {exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="ascii") as out:
            os.fchmod(out.fileno(), IDENTITY_FILE_MODE)  # whatever the umask said
            out.write(text)

    def __str__(self) -> str:
        return self.public_text


def _check_path(path: object) -> str:
    """An identity file's path checked where it enters (:class:`LocalProtocolError`)."""
    if isinstance(path, str | os.PathLike):
        name = os.fspath(path)
        if isinstance(name, str) and name:
            return name
    raise LocalProtocolError(f"path must be the path of an identity file, not {path!r}")


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """The identity in the file at ``path`` (module docstring). Raises :class:`IdentityError`
    when it is missing, malformed, or readable by other users."""
    name = _check_path(path)
    try:
        with open(path, encoding="ascii") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(4096)
    except FileNotFoundError:
        raise IdentityError(f"no identity file {name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read identity file {name}: {exc}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise IdentityError(
            f"identity file {name} is readable by others (mode {stat.S_IMODE(mode):04o}): "
            "chmod 600 it"
        )
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key != "private":
            continue
        value = value.strip()
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            break
        if len(raw) == 32:
            return Identity.from_private_bytes(raw)
        break
    raise IdentityError(f"{name} is not an Anchor identity file")


def default_identity_path() -> Path:
    """Where the user's default identity lives: ``$XDG_CONFIG_HOME/anchor/identity``
    (``~/.config/anchor/identity`` when XDG_CONFIG_HOME is not set)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "anchor" / "identity"


def load_or_create_identity(
    path: str | os.PathLike[str], rng: Callable[[int], bytes] = os.urandom
) -> tuple[Identity, bool]:
    """The identity at ``path``, made (with its directory, mode 0700) when there is none;
    returns it and whether it was just created."""
    _check_path(path)
    if not callable(rng):
        raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
    if os.path.exists(path):
        return load_identity(path), False
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    identity = Identity.generate(rng)
    try:
        identity.save(path)
    except IdentityError:
        if os.path.exists(path):  # another process made it meanwhile: use theirs
            return load_identity(path), False
        raise
    return identity, True
