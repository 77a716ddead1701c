"""Which peer identities an endpoint accepts: pinned keys and a known-peers file (TOFU).

Theory of operation
-------------------
After a link's handshake (:mod:`anchor_link.handshake`) the endpoint knows the static key the
peer *proved*. :meth:`TrustPolicy.verify` decides whether that is the peer it meant:

1. **Pinned** (``trusted_peers={"bob": "anchor1:..."}``, ``anchor pipe --trust bob=anchor1:...``):
   the proven key must be the pinned one, else :class:`PeerKeyMismatch`.
2. **Known peers** (opt-in, ``known_peers=FILE``, ``--known-peers FILE``): trust on first use,
   as SSH's ``known_hosts`` (RFC 4251 §4.1). A name not in the file is accepted and its key
   appended; a name in the file must prove the key written there. A changed key is refused,
   loudly: the error names the file, the line, the key on record and the key presented, and
   says how to accept the change (delete the line) if it is expected.
3. **Nothing configured** for that name: the link forms, and it reports the peer's identity with
   ``trust="unverified"`` (the CLI says so on stderr).

The verdict (:class:`Trust`) goes into :class:`~anchor_link.state.LinkFormed`.

Known-peers file: one peer per line, ``PUBLIC-IDENTITY NAME`` (the name is the rest of the line,
so it may hold spaces); ``#`` starts a comment; the file is only ever appended to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum

from anchor_stun.errors import LocalProtocolError

from .identity import IdentityError, format_public, parse_public
from .state import LinkError

__all__ = ["KnownPeers", "PeerKeyMismatch", "Trust", "TrustPolicy"]


class Trust(StrEnum):
    """How the peer's proven identity was checked (``LinkFormed.trust``)."""

    PINNED = "pinned"
    """It is the key pinned for that name (``trusted_peers``)."""
    KNOWN = "known"
    """It is the key the known-peers file holds for that name."""
    NEW = "new"
    """First use: the name was not in the known-peers file; its key is now."""
    UNVERIFIED = "unverified"
    """Nothing was configured for that name: the key is reported, not checked."""


class PeerKeyMismatch(LinkError):
    """The peer proved a key that is not the one pinned or known for its name."""

    def __init__(self, peer: str, expected: bytes, presented: bytes, detail: str) -> None:
        super().__init__(detail)
        self.peer = peer
        self.expected = expected
        self.presented = presented


class KnownPeers:
    """The known-peers file at ``path`` (module docstring). It need not exist yet."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise LocalProtocolError(f"path must be the path of a known-peers file, not {path!r}")
        self.path = os.fspath(path)
        """The file."""

    def lookup(self, name: str) -> tuple[bytes, int] | None:
        """The key on record for ``name`` and its line number, or None."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise LinkError(f"cannot read known-peers file {self.path}: {exc}") from None
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            public, _, peer = text.partition(" ")
            if peer.strip() != name:
                continue
            try:
                return parse_public(public), number
            except IdentityError:
                raise LinkError(f"{self.path} line {number}: not a public identity") from None
        return None

    def add(self, name: str, public: bytes) -> None:
        """Append ``name``'s key (the file is created with mode 0600 if need be)."""
        if "\n" in name or "\r" in name:
            raise LinkError("a peer name in the known-peers file is one line")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(f"{format_public(public)} {name}\n")


class TrustPolicy:
    """Pinned identities and an optional known-peers file (module docstring).

    ``trusted_peers`` maps peer names to public identities (``anchor1:...`` text or 32 raw
    bytes); ``known_peers`` is the path of a known-peers file, or None for no TOFU."""

    def __init__(
        self,
        trusted_peers: Mapping[str, str | bytes] | None = None,
        known_peers: str | os.PathLike[str] | None = None,
    ) -> None:
        if trusted_peers is not None and not isinstance(trusted_peers, Mapping):
            raise LocalProtocolError(
                "trusted_peers must be a mapping of peer name -> public identity"
                f" ({{'bob': 'anchor1:...'}}), not {type(trusted_peers).__name__}"
            )
        if known_peers is not None and (
            not isinstance(known_peers, str | os.PathLike) or not os.fspath(known_peers)
        ):
            raise LocalProtocolError(
                f"known_peers must be the path of a known-peers file, not {known_peers!r}"
            )
        self._pinned: dict[str, bytes] = {}
        for name, key in (trusted_peers or {}).items():
            if not isinstance(name, str) or not name:
                raise LocalProtocolError(
                    f"trusted_peers: a peer name must be a non-empty string, not {name!r}"
                )
            try:
                raw = bytes(key) if isinstance(key, bytes | bytearray) else parse_public(key)
            except IdentityError as exc:
                raise LocalProtocolError(
                    f"trusted_peers[{name!r}] must be a public identity ('anchor1:...') or 32"
                    f" bytes: {exc}"
                ) from None
            if len(raw) != 32:
                raise LocalProtocolError(
                    f"trusted_peers[{name!r}] must be a public identity ('anchor1:...') or 32"
                    f" bytes, not {len(raw)} bytes"
                )
            self._pinned[name] = raw
        self.known_peers = KnownPeers(known_peers) if known_peers is not None else None
        """The known-peers file, or None."""

    @property
    def configured(self) -> bool:
        """Whether anything is pinned or a known-peers file is in use."""
        return bool(self._pinned) or self.known_peers is not None

    def pinned(self, name: str) -> bytes | None:
        """The key pinned for ``name``, or None."""
        return self._pinned.get(name)

    def verify(self, name: str, public: bytes) -> Trust:
        """Check ``name``'s proven key ``public``; raises :class:`PeerKeyMismatch` (module
        docstring). Recording a first-use key in the known-peers file is part of it."""
        pinned = self._pinned.get(name)
        if pinned is not None:
            if public != pinned:
                raise PeerKeyMismatch(
                    name, pinned, public,
                    f"{name!r} proved {format_public(public)}, not its pinned identity "
                    f"{format_public(pinned)}",
                )  # fmt: skip
            return Trust.PINNED
        if self.known_peers is None:
            return Trust.UNVERIFIED
        record = self.known_peers.lookup(name)
        if record is None:
            self.known_peers.add(name, public)
            return Trust.NEW
        known, line = record
        if public != known:
            raise PeerKeyMismatch(
                name, known, public,
                f"THE IDENTITY OF {name!r} HAS CHANGED: {self.known_peers.path} line {line} holds "
                f"{format_public(known)}, the peer proved {format_public(public)}. Someone may be "
                f"posing as {name!r}; if the change is expected, delete that line",
            )  # fmt: skip
        return Trust.KNOWN
