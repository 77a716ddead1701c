"""Tests of the TURN credential back-ends (RFC 8489 §9.2.2, §14.4; TURN REST API)."""

from __future__ import annotations

import sqlite3
import unicodedata
from pathlib import Path

import pytest

import anchor_turn.auth
from anchor_stun.attributes import PasswordAlgorithmId
from anchor_stun.errors import LocalProtocolError
from anchor_stun.integrity import long_term_key, turn_rest_password, userhash
from anchor_turn.auth import (
    KEY_CACHE_SIZE,
    ChainedBackend,
    CredentialBackend,
    RestSecret,
    SqliteUsers,
    StaticUsers,
    candidate_keys,
)

REALM = "example.org"
MD5 = PasswordAlgorithmId.MD5
SHA256 = PasswordAlgorithmId.SHA256
NOW = 50.0


# --------------------------------------------------------------------------- StaticUsers


def test_static_users_keys_are_long_term_keys() -> None:
    users = StaticUsers({"alice": "secret", "bob": "hunter2"}, realm=REALM)
    assert isinstance(users, CredentialBackend)
    assert len(users) == 2
    for alg in (MD5, SHA256):
        assert users.key("alice", REALM, alg, NOW) == long_term_key("alice", REALM, "secret", alg)
        assert users.key("bob", REALM, alg, NOW) == long_term_key("bob", REALM, "hunter2", alg)
    assert len(users.key("alice", REALM, SHA256, NOW) or b"") == 32
    assert len(users.key("alice", REALM, MD5, NOW) or b"") == 16


def test_static_users_refuse_unknown_user_realm_and_algorithm() -> None:
    users = StaticUsers({"alice": "secret"}, realm=REALM)
    assert users.key("mallory", REALM, MD5, NOW) is None
    assert users.key("alice", "other.org", MD5, NOW) is None
    assert users.key("alice", REALM, 0x7777, NOW) is None


def test_static_users_apply_opaque_string_to_names() -> None:
    decomposed = "jose\u0301"  # OpaqueString normalizes to NFC (RFC 8265 §4.2)
    users = StaticUsers({decomposed: "pw"}, realm=REALM)
    composed = unicodedata.normalize("NFC", decomposed)
    assert users.key(composed, REALM, MD5, NOW) == long_term_key(composed, REALM, "pw", MD5)
    assert users.lookup_userhash(userhash(composed, REALM), REALM) == composed


def test_static_users_keep_no_password() -> None:
    users = StaticUsers({"alice": "s3cr3t-password"}, realm=REALM)
    assert "s3cr3t-password" not in repr(vars(users))


def test_static_users_userhash_lookup() -> None:
    users = StaticUsers({"alice": "secret", "bob": "pw"}, realm=REALM)
    assert users.lookup_userhash(userhash("bob", REALM), REALM) == "bob"
    assert users.lookup_userhash(userhash("bob", "other.org"), REALM) is None
    assert users.lookup_userhash(userhash("bob", REALM), "other.org") is None
    assert users.lookup_userhash(bytes(32), REALM) is None


def test_static_users_reject_bad_configuration() -> None:
    with pytest.raises(LocalProtocolError):
        StaticUsers({"": "secret"}, realm=REALM)
    with pytest.raises(LocalProtocolError):
        StaticUsers({"alice": "bad\x07password"}, realm=REALM)


# --------------------------------------------------------------------------- SqliteUsers


def test_sqlite_stores_keys_not_passwords(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    with SqliteUsers(path) as db:
        db.add_user("alice", "very-secret-pw", REALM)
        assert db.key("alice", REALM, MD5, NOW) == long_term_key("alice", REALM, "very-secret-pw")
        assert db.key("alice", REALM, SHA256, NOW) == long_term_key(
            "alice", REALM, "very-secret-pw", SHA256
        )
    assert b"very-secret-pw" not in path.read_bytes()
    row = (
        sqlite3.connect(path)
        .execute("SELECT name, realm, md5_key, sha256_key, userhash FROM turnusers")
        .fetchone()
    )
    assert row == (
        "alice",
        REALM,
        long_term_key("alice", REALM, "very-secret-pw", MD5).hex(),
        long_term_key("alice", REALM, "very-secret-pw", SHA256).hex(),
        userhash("alice", REALM).hex(),
    )


def test_sqlite_survives_reopen_and_removes(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    db = SqliteUsers(path)
    db.add_user("alice", "secret", REALM)
    db.add_user("bob", "pw", REALM)
    db.add_user("alice", "other", "other.org")
    db.close()

    again = SqliteUsers(path)
    assert again.users() == [("alice", REALM), ("bob", REALM), ("alice", "other.org")]
    assert again.users(REALM) == [("alice", REALM), ("bob", REALM)]
    assert again.key("alice", REALM, MD5, NOW) == long_term_key("alice", REALM, "secret")
    assert again.key("alice", "other.org", MD5, NOW) == long_term_key("alice", "other.org", "other")
    assert again.lookup_userhash(userhash("bob", REALM), REALM) == "bob"
    assert again.lookup_userhash(userhash("bob", REALM), "other.org") is None

    assert again.remove_user("bob", REALM) is True
    assert again.remove_user("bob", REALM) is False
    assert again.key("bob", REALM, MD5, NOW) is None
    assert again.lookup_userhash(userhash("bob", REALM), REALM) is None
    again.add_user("alice", "changed", REALM)  # replaces
    assert again.key("alice", REALM, MD5, NOW) == long_term_key("alice", REALM, "changed")
    again.close()
    with SqliteUsers(path) as third:
        assert third.users(REALM) == [("alice", REALM)]
        assert third.key("alice", REALM, SHA256, NOW) == long_term_key(
            "alice", REALM, "changed", SHA256
        )


def test_sqlite_reload_picks_up_changes_from_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    server_side = SqliteUsers(path, reload_interval=10.0)
    assert server_side.key("carol", REALM, MD5, 100.0) is None  # arms the reload at 110
    with SqliteUsers(path) as admin:
        admin.add_user("carol", "pw", REALM)
    assert server_side.key("carol", REALM, MD5, 109.9) is None  # cached: no disk access
    assert server_side.key("carol", REALM, MD5, 110.0) == long_term_key("carol", REALM, "pw")
    server_side.close()

    manual = SqliteUsers(path)
    with SqliteUsers(path) as admin:
        admin.remove_user("carol", REALM)
    assert manual.key("carol", REALM, MD5, 1e9) is not None  # no reload_interval
    manual.reload()
    assert manual.key("carol", REALM, MD5, 1e9) is None
    manual.close()


def test_sqlite_skips_rows_edited_into_garbage(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    with SqliteUsers(path) as db:
        db.add_user("alice", "secret", REALM)
        db.add_user("bob", "pw", REALM)
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE turnusers SET md5_key = 'zz' WHERE name = 'bob'")
    con.close()
    with SqliteUsers(path) as db:
        assert db.key("bob", REALM, MD5, NOW) is None
        assert db.key("alice", REALM, MD5, NOW) is not None


# --------------------------------------------------------------------------- RestSecret


def test_rest_secret_valid_username() -> None:
    rest = RestSecret("s3cret", clock=lambda: 1_700_000_000.0)
    username = "1700000100:alice"
    password = turn_rest_password("s3cret", username)
    assert rest.password(username) == password
    for alg in (MD5, SHA256):
        assert rest.key(username, REALM, alg, NOW) == long_term_key(username, REALM, password, alg)
    assert rest.key("1700000100", REALM, MD5, NOW) is not None  # the ":user" part is optional


def test_rest_secret_refuses_expired_and_malformed_usernames() -> None:
    wall = [1_700_000_000.0]
    rest = RestSecret("s3cret", clock=lambda: wall[0])
    assert rest.key("1699999999:alice", REALM, MD5, NOW) is None
    assert rest.key("1700000000:alice", REALM, MD5, NOW) is not None  # expiry == now
    wall[0] = 1_700_000_000.5
    assert rest.key("1700000000:alice", REALM, MD5, NOW) is None
    for bad in ("alice", "", ":alice", "12x:alice", "\u0661\u0662:alice", "-5:alice"):
        assert rest.key(bad, REALM, MD5, NOW) is None
    assert rest.key("1800000000:alice", REALM, 0x7777, NOW) is None
    assert rest.lookup_userhash(userhash("1800000000:alice", REALM), REALM) is None


def test_rest_secret_separator_and_configuration() -> None:
    rest = RestSecret("k", clock=lambda: 0.0, separator="-")
    assert rest.key("100-alice", REALM, MD5, NOW) is not None
    assert rest.key("100:alice", REALM, MD5, NOW) is None
    with pytest.raises(LocalProtocolError):
        RestSecret("", clock=lambda: 0.0)
    with pytest.raises(LocalProtocolError):
        RestSecret("k", clock=lambda: 0.0, separator="")


def test_rest_secret_cached_keys_are_the_keys_derived_without_the_cache() -> None:
    wall = [1_700_000_000.0]
    rest = RestSecret("s3cret", clock=lambda: wall[0])
    cases = [
        ("1800000000:alice", REALM),
        ("1800000000:\u00e9l\u00e8ve", REALM),  # a name OpaqueString leaves alone
        ("1800000000:bob", "r\u00e9alm"),  # a realm in NFC ...
        ("1800000000:bob", "re\u0301alm"),  # ... and in NFD: PRECIS makes them one realm
    ]
    for username, realm in cases:
        uncached = {
            alg: long_term_key(username, realm, turn_rest_password("s3cret", username), alg)
            for alg in (MD5, SHA256)
        }
        for _ in range(3):  # a miss, then hits
            for alg in (MD5, SHA256):
                assert rest.key(username, realm, alg, NOW) == uncached[alg]
    assert rest.key("1800000000:bob", "r\u00e9alm", MD5, NOW) == rest.key(
        "1800000000:bob", "re\u0301alm", MD5, NOW
    )
    info = rest._derive.cache_info()
    assert (info.misses, info.hits) == (8, 18)
    wall[0] = 1_800_000_001.0  # the expiry is checked before the cache: a cached key expires
    assert rest.key("1800000000:alice", REALM, MD5, NOW) is None
    assert rest.key("1800000000:alice", REALM, 0x7777, NOW) is None  # refused, not raised
    assert rest.key("1900000000:alice", REALM, 0x7777, NOW) is None


def test_rest_secret_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RestSecret("k", clock=lambda: 0.0)._derive.cache_info().maxsize == KEY_CACHE_SIZE
    assert 1024 <= KEY_CACHE_SIZE <= 65536
    monkeypatch.setattr(anchor_turn.auth, "KEY_CACHE_SIZE", 32)
    rest = RestSecret("k", clock=lambda: 0.0)
    names = [f"{1_000_000 + i}:flood" for i in range(100)]  # distinct, unexpired usernames
    for name in names:
        assert rest.key(name, REALM, MD5, NOW) is not None
    info = rest._derive.cache_info()
    assert info.currsize == info.maxsize == 32 and info.misses == 100
    assert rest.key(names[-1], REALM, MD5, NOW) is not None  # the most recent: a hit
    assert rest.key(names[0], REALM, MD5, NOW) is not None  # the oldest was dropped: a miss
    info = rest._derive.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 101, 32)


# --------------------------------------------------------------------------- ChainedBackend


def test_chained_backend_asks_in_order() -> None:
    first = StaticUsers({"alice": "one"}, realm=REALM)
    second = StaticUsers({"alice": "two", "bob": "pw"}, realm=REALM)
    rest = RestSecret("k", clock=lambda: 0.0)
    chain = ChainedBackend(first, second, rest)
    assert isinstance(chain, CredentialBackend)
    assert chain.key("alice", REALM, MD5, NOW) == long_term_key("alice", REALM, "one")
    assert chain.key("bob", REALM, MD5, NOW) == long_term_key("bob", REALM, "pw")
    assert chain.key("100:x", REALM, MD5, NOW) == long_term_key(
        "100:x", REALM, turn_rest_password("k", "100:x")
    )
    assert chain.key("nobody", REALM, MD5, NOW) is None
    assert chain.lookup_userhash(userhash("bob", REALM), REALM) == "bob"
    assert chain.lookup_userhash(bytes(32), REALM) is None
    assert ChainedBackend.of([first]).key("alice", REALM, SHA256, NOW) == long_term_key(
        "alice", REALM, "one", SHA256
    )


def test_rest_secret_with_several_secrets_offers_a_key_per_secret() -> None:
    rest = RestSecret(["first", "second"], clock=lambda: 1_700_000_000.0)
    username = "1700000100:alice"
    keys = candidate_keys(rest, username, REALM, MD5, NOW)
    assert keys == tuple(
        long_term_key(username, REALM, turn_rest_password(secret, username), MD5)
        for secret in ("first", "second")
    )
    assert rest.key(username, REALM, MD5, NOW) == keys[0]  # key() and password(): the first
    assert rest.password(username) == turn_rest_password("first", username)
    assert candidate_keys(rest, "1699999999:alice", REALM, MD5, NOW) == ()  # expired
    static = StaticUsers({"bob": "pw"}, realm=REALM)  # a back-end with key() only
    assert candidate_keys(static, "bob", REALM, MD5, NOW) == (long_term_key("bob", REALM, "pw"),)
    assert candidate_keys(static, "carol", REALM, MD5, NOW) == ()
    with pytest.raises(LocalProtocolError, match=r"secret\[1\]"):
        RestSecret(["ok", ""], clock=lambda: 0.0)
    with pytest.raises(LocalProtocolError, match="at least one"):
        RestSecret([], clock=lambda: 0.0)
