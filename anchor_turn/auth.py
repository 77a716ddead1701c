"""Credential back-ends of the TURN server (RFC 8489 §9.2, RFC 8656 §7.2 step 1).

Theory of operation
-------------------
The TURN server core (:mod:`anchor_turn.server`) authenticates every request with the
long-term credential mechanism of RFC 8489 §9.2. It never sees a password: it asks a
:class:`CredentialBackend` for the *key* of a username in its realm for one password algorithm
(RFC 8489 §9.2.2: ``H(username ":" OpaqueString(realm) ":" OpaqueString(password))`` with
H = MD5 or SHA-256, :func:`~anchor_stun.integrity.long_term_key`), and, for a request that
carries USERHASH instead of USERNAME (RFC 8489 §9.2.4, §14.4), for the username behind a hash.

Back-ends:

* :class:`StaticUsers` — a fixed ``{name: password}`` table (``anchor serve --user``). The
  keys for both algorithms are computed once, at construction; passwords are not kept.
* :class:`SqliteUsers` — a user database that, like coturn's ``turnadmin``, stores keys and
  never passwords: one row per (name, realm) with the MD5 key, the SHA-256 key and the
  USERHASH, all hex. Rows are read into memory when the file is opened (and again on
  :meth:`SqliteUsers.reload`, or every ``reload_interval`` seconds of the core's clock), so a
  lookup never touches the disk.
* :class:`RestSecret` — the "TURN REST API" scheme (draft-uberti-behave-turn-rest, as coturn's
  ``--static-auth-secret``): the username is ``expiry[:user]``, the password
  ``base64(HMAC-SHA1(secret, username))``; a username whose expiry (UNIX seconds) is in the
  past is refused. Expiry is wall-clock time, which a core must not read: the adapter injects
  it as ``clock`` (for instance ``time.time``). Deriving a key takes the PRECIS OpaqueString
  preparation of the realm and of the password (RFC 8265, with ``precis-i18n``), an HMAC and
  a hash: about half the cost of an authenticated request. The keys of the last
  :data:`KEY_CACHE_SIZE` (username, realm, algorithm) are kept, least recently used dropped
  first, so a flood of distinct usernames cannot grow memory; the expiry is checked on every
  request, cached or not.
* :class:`ChainedBackend` — asks several back-ends in order; the first answer wins.

Every back-end returns ``None`` for anything it does not know or cannot accept (unknown user,
other realm, unsupported algorithm, malformed or expired REST username); it never raises on
values that came from the network. Configuration errors (an argument of the wrong type, an
empty name or password, or one the OpaqueString profile refuses) raise
:class:`~anchor_stun.errors.LocalProtocolError` at once, naming the argument.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from os import PathLike
from types import TracebackType
from typing import Protocol, runtime_checkable

from anchor_stun.address import credential, positive_timeout
from anchor_stun.attributes import PasswordAlgorithmId
from anchor_stun.errors import LocalProtocolError
from anchor_stun.integrity import (
    long_term_key,
    opaque_credential,
    opaque_string,
    turn_rest_password,
    userhash,
)

__all__ = [
    "ALGORITHMS",
    "KEY_CACHE_SIZE",
    "ChainedBackend",
    "CredentialBackend",
    "RestSecret",
    "SqliteUsers",
    "StaticUsers",
    "candidate_keys",
]

ALGORITHMS = (PasswordAlgorithmId.MD5, PasswordAlgorithmId.SHA256)
"""Password algorithms every back-end here derives keys for (RFC 8489 §18.5)."""
KEY_CACHE_SIZE = 4096
"""Derived keys a :class:`RestSecret` keeps, by (username, realm, algorithm)."""


@runtime_checkable
class CredentialBackend(Protocol):
    """Where the TURN server gets long-term keys (RFC 8489 §9.2.2) and USERHASH owners.

    ``now`` is the core's monotonic clock (seconds); back-ends that need wall-clock time get
    it injected by the adapter instead. A back-end for which a user may have several keys
    (several REST API secrets) also offers ``candidate_keys(username, realm, algorithm,
    now)``, the tuple of them, which the server tries in turn (:func:`candidate_keys`).
    """

    def key(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """The long-term key of ``username`` in ``realm`` for the password ``algorithm``
        (RFC 8489 §9.2.2), or None when the user is unknown or refused."""
        ...

    def lookup_userhash(self, userhash: bytes, realm: str) -> str | None:
        """The username whose USERHASH (RFC 8489 §14.4) in ``realm`` is ``userhash``,
        or None."""
        ...


def candidate_keys(
    backend: CredentialBackend, username: str, realm: str, algorithm: int, now: float
) -> tuple[bytes, ...]:
    """Every key a request of ``username`` may be signed with, for the server to try in
    turn: those of the back-end's ``candidate_keys`` method where it has one (a back-end
    with several REST API secrets, as coturn accepts any of the secrets it stores), else its
    one :meth:`~CredentialBackend.key`; empty for an unknown or refused user."""
    several = getattr(backend, "candidate_keys", None)
    if several is not None:
        return tuple(several(username, realm, algorithm, now))
    key = backend.key(username, realm, algorithm, now)
    return () if key is None else (key,)


def _keys_for(name: str, realm: str, password: str) -> dict[int, bytes]:
    return {alg: long_term_key(name, realm, password, alg) for alg in ALGORITHMS}


class StaticUsers:
    """A fixed table of users for one realm (RFC 8489 §9.2).

    ``users`` maps names to passwords. Names are prepared with OpaqueString (RFC 8265, as a
    client prepares the USERNAME it sends, RFC 8489 §14.3); the MD5 and SHA-256 keys and the
    USERHASH of each user are computed once here and the passwords are dropped.
    """

    def __init__(self, users: Mapping[str, str], *, realm: str) -> None:
        if not isinstance(users, Mapping):
            raise LocalProtocolError(
                "users must be a mapping of name -> password ({'alice': 'secret'}),"
                f" not {type(users).__name__}"
            )
        opaque_credential(realm, "realm")
        for name, password in users.items():
            opaque_credential(name, "users: a name")
            opaque_credential(password, f"users[{name!r}]: the password")
        self.realm = realm
        """The realm the keys were derived for (RFC 8489 §14.9)."""
        self._keys: dict[tuple[str, int], bytes] = {}
        self._hashes: dict[bytes, str] = {}
        for name, password in users.items():
            prepared = opaque_string(name)
            for alg, key in _keys_for(prepared, realm, password).items():
                self._keys[(prepared, alg)] = key
            self._hashes[userhash(prepared, realm)] = prepared

    def __len__(self) -> int:
        return len(self._hashes)

    def key(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """The precomputed key, or None for another realm or an unknown user."""
        if realm != self.realm:
            return None
        return self._keys.get((username, algorithm))

    def lookup_userhash(self, userhash: bytes, realm: str) -> str | None:
        """The user whose USERHASH is ``userhash`` (RFC 8489 §14.4), or None."""
        if realm != self.realm:
            return None
        return self._hashes.get(bytes(userhash))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS turnusers (
    name TEXT NOT NULL,
    realm TEXT NOT NULL,
    md5_key TEXT NOT NULL,
    sha256_key TEXT NOT NULL,
    userhash TEXT NOT NULL,
    PRIMARY KEY (name, realm)
)
"""


class SqliteUsers:
    """Users in an SQLite file, stored as keys, never as passwords (RFC 8489 §9.2.2).

    Table ``turnusers(name, realm, md5_key, sha256_key, userhash)``, keys and USERHASH in hex
    (the same idea as coturn's ``turnadmin``, which stores the MD5 key as ``hmackey``). The
    whole table is cached in memory: :meth:`key` and :meth:`lookup_userhash` never touch the
    file. Changes made through this object update the cache at once; changes made by another
    process are picked up by :meth:`reload`, or automatically every ``reload_interval``
    seconds of the ``now`` the server core passes to :meth:`key`.
    """

    def __init__(self, path: str | PathLike[str], *, reload_interval: float | None = None) -> None:
        if not isinstance(path, str | PathLike) or not str(path):
            raise LocalProtocolError(
                f"path must be the path of an SQLite file (str or os.PathLike), not {path!r}"
            )
        positive_timeout(reload_interval, "reload_interval")
        self.path = path
        """The database file."""
        self.reload_interval = reload_interval
        """Seconds between automatic re-reads of the table, or None for never."""
        self._db = sqlite3.connect(path)
        with self._db:
            self._db.execute(_SCHEMA)
        self._keys: dict[tuple[str, str, int], bytes] = {}
        self._hashes: dict[tuple[bytes, str], str] = {}
        self._next_reload: float | None = None
        self.reload()

    # ------------------------------------------------------------------ administration

    def add_user(self, name: str, password: str, realm: str) -> None:
        """Add or replace a user: stores its MD5 and SHA-256 keys and USERHASH, not the
        password. Raises :class:`LocalProtocolError` for a name, realm or password that
        OpaqueString refuses (RFC 8265)."""
        prepared = opaque_string(name)
        keys = _keys_for(prepared, realm, password)
        uhash = userhash(prepared, realm)
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO turnusers (name, realm, md5_key, sha256_key, userhash)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    prepared,
                    realm,
                    keys[PasswordAlgorithmId.MD5].hex(),
                    keys[PasswordAlgorithmId.SHA256].hex(),
                    uhash.hex(),
                ),
            )
        self._cache(prepared, realm, keys, uhash)

    def remove_user(self, name: str, realm: str) -> bool:
        """Delete a user; True when there was one."""
        prepared = opaque_string(name)
        with self._db:
            cursor = self._db.execute(
                "DELETE FROM turnusers WHERE name = ? AND realm = ?", (prepared, realm)
            )
        for alg in ALGORITHMS:
            self._keys.pop((prepared, realm, alg), None)
        for hkey, owner in list(self._hashes.items()):
            if owner == prepared and hkey[1] == realm:
                del self._hashes[hkey]
        return cursor.rowcount > 0

    def users(self, realm: str | None = None) -> list[tuple[str, str]]:
        """(name, realm) of every user, or of those of one realm, sorted."""
        if realm is None:
            rows = self._db.execute("SELECT name, realm FROM turnusers ORDER BY realm, name")
        else:
            rows = self._db.execute(
                "SELECT name, realm FROM turnusers WHERE realm = ? ORDER BY name", (realm,)
            )
        return [(str(n), str(r)) for n, r in rows]

    def reload(self) -> None:
        """Re-read the whole table into the in-memory cache."""
        self._keys.clear()
        self._hashes.clear()
        rows = self._db.execute("SELECT name, realm, md5_key, sha256_key, userhash FROM turnusers")
        for name, realm, md5_hex, sha_hex, hash_hex in rows:
            try:
                keys: dict[int, bytes] = {
                    PasswordAlgorithmId.MD5: bytes.fromhex(md5_hex),
                    PasswordAlgorithmId.SHA256: bytes.fromhex(sha_hex),
                }
                uhash = bytes.fromhex(hash_hex)
            except (TypeError, ValueError):
                continue  # a row someone edited by hand: skip it rather than fail
            self._cache(str(name), str(realm), keys, uhash)

    def close(self) -> None:
        """Close the database file."""
        self._db.close()

    def __enter__(self) -> SqliteUsers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _cache(self, name: str, realm: str, keys: Mapping[int, bytes], uhash: bytes) -> None:
        for alg, key in keys.items():
            self._keys[(name, realm, alg)] = key
        self._hashes[(uhash, realm)] = name

    # ------------------------------------------------------------------ CredentialBackend

    def key(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """The stored key (RFC 8489 §9.2.2), or None."""
        interval = self.reload_interval
        if interval is not None:
            if self._next_reload is None:
                self._next_reload = now + interval
            elif now >= self._next_reload:
                self._next_reload = now + interval
                try:
                    self.reload()
                except sqlite3.Error:
                    pass  # keep serving the cached table
        return self._keys.get((username, realm, algorithm))

    def lookup_userhash(self, userhash: bytes, realm: str) -> str | None:
        """The user whose stored USERHASH is ``userhash`` (RFC 8489 §14.4), or None."""
        return self._hashes.get((bytes(userhash), realm))


def _rest_key(secret: str, username: str, realm: str, algorithm: int) -> bytes | None:
    """The long-term key of a REST API username (RFC 8489 §9.2.2 over the password of
    :func:`~anchor_stun.integrity.turn_rest_password`), or None for an algorithm or a realm
    that cannot be used. A pure function of its arguments: safe to cache."""
    try:
        return long_term_key(username, realm, turn_rest_password(secret, username), algorithm)
    except LocalProtocolError:
        return None


class RestSecret:
    """Time-limited credentials of the TURN REST API (coturn's ``--static-auth-secret``).

    A username is ``expiry`` or ``expiry:user`` (``separator`` between them), with ``expiry``
    in UNIX seconds; its password is ``base64(HMAC-SHA1(secret, username))``
    (:func:`~anchor_stun.integrity.turn_rest_password`). ``secret`` may be several secrets
    (a sequence, as coturn keeps a set of them in its database, for rotation): a password
    made with any of them is accepted (:meth:`candidate_keys`), and :meth:`password` and
    :meth:`key` use the first. A username whose expiry is earlier
    than ``clock()`` is refused. ``clock`` returns wall-clock UNIX time and is injected by the
    adapter (``time.time``): a protocol core never reads the clock itself. USERHASH cannot be
    served (a hash cannot be turned back into a timestamped name): :meth:`lookup_userhash`
    always returns None. Derived keys are cached (module docstring, :data:`KEY_CACHE_SIZE`).
    """

    def __init__(
        self,
        secret: str | Sequence[str],
        *,
        clock: Callable[[], float],
        separator: str = ":",
    ) -> None:
        secrets = (secret,) if isinstance(secret, str) else tuple(secret)
        if not secrets:
            raise LocalProtocolError("secret: at least one REST API shared secret is needed")
        for i, one in enumerate(secrets):
            credential(one, "secret (the REST API shared secret)" if isinstance(secret, str)
                       else f"secret[{i}] (a REST API shared secret)")  # fmt: skip
        credential(separator, "separator (between the expiry and the user name)")
        if not callable(clock):
            raise LocalProtocolError(
                f"clock must be a function returning UNIX time (time.time), not {clock!r}"
            )
        self._secret = secrets[0]
        self.clock = clock
        """Wall-clock UNIX time, injected by the adapter."""
        self.separator = separator
        """What separates the expiry from the user name in a username."""
        self._secrets = secrets
        self._derive = lru_cache(maxsize=KEY_CACHE_SIZE)(_rest_key)

    def password(self, username: str) -> str:
        """The password that goes with ``username`` (what a credentials service hands out)."""
        return turn_rest_password(self._secret, username)

    def key(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """The key of a REST username still within its expiry under the first secret, else
        None."""
        keys = self.candidate_keys(username, realm, algorithm, now)
        return keys[0] if keys else None

    def candidate_keys(
        self, username: str, realm: str, algorithm: int, now: float
    ) -> tuple[bytes, ...]:
        """The keys of a REST username still within its expiry, one per secret (empty for
        an expired or malformed username, or an algorithm or realm that cannot be used)."""
        head = username.split(self.separator, 1)[0]
        if not head.isascii() or not head.isdigit():
            return ()
        if int(head) < self.clock():
            return ()
        keys = (self._derive(secret, username, realm, algorithm) for secret in self._secrets)
        return tuple(key for key in keys if key is not None)

    def lookup_userhash(self, userhash: bytes, realm: str) -> str | None:
        """Always None: REST usernames cannot be found from their hash."""
        return None


class ChainedBackend:
    """Several back-ends asked in order; the first that knows the user answers."""

    def __init__(self, *backends: CredentialBackend) -> None:
        for i, backend in enumerate(backends):
            if not isinstance(backend, CredentialBackend):
                raise LocalProtocolError(
                    f"backends[{i}] must be a CredentialBackend (StaticUsers, SqliteUsers,"
                    f" RestSecret...), not {type(backend).__name__}"
                )
        self.backends: tuple[CredentialBackend, ...] = tuple(backends)
        """The back-ends, in the order they are asked."""

    @classmethod
    def of(cls, backends: Iterable[CredentialBackend]) -> ChainedBackend:
        """A chain of the given back-ends."""
        return cls(*backends)

    def key(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """The first key a back-end returns, or None."""
        for backend in self.backends:
            key = backend.key(username, realm, algorithm, now)
            if key is not None:
                return key
        return None

    def candidate_keys(
        self, username: str, realm: str, algorithm: int, now: float
    ) -> tuple[bytes, ...]:
        """The keys (:func:`candidate_keys`) of the first back-end that knows the user."""
        for backend in self.backends:
            keys = candidate_keys(backend, username, realm, algorithm, now)
            if keys:
                return keys
        return ()

    def lookup_userhash(self, userhash: bytes, realm: str) -> str | None:
        """The first user a back-end finds for ``userhash``, or None."""
        for backend in self.backends:
            name = backend.lookup_userhash(userhash, realm)
            if name is not None:
                return name
        return None
