"""State a fleet of TURN servers shares in Redis (``anchor serve --redis redis://HOST:PORT/DB``):
allocation quotas, and users and REST API secrets in coturn's key layout.

Theory of operation
-------------------
A fleet of servers behind DNS or ALTERNATE-SERVER must agree on how many allocations a user
(and the fleet) holds, and on who the users are. It keeps that in an existing engine, Redis,
through the ``redis`` package (the ``server`` extra; this module is imported only with
``--redis``, so the protocol packages never need it).

**Quotas** (:class:`RedisQuota`, the core's :class:`~anchor_turn.admission.SharedQuota`).
Each allocation is a member ``<server id>/<5-tuple>`` of two sorted sets,
``anchor/realm/<realm>/allocations/user/<name>`` and ``anchor/realm/<realm>/allocations``,
scored by the time its lease ends. One Lua script (atomic in Redis) drops the expired
members, compares the counts with the per-user and total quotas and adds the new member
(486 when over). The lease (:data:`LEASE`, with Redis's own clock, ``TIME``, so the servers'
clocks do not matter) is renewed every third of it for every allocation the server holds,
which also puts them back after Redis lost its data; a server that dies stops renewing and
its allocations leave the counts within one lease. Release removes the member at once.

**Users** (:class:`RedisUsers`, a :class:`~anchor_turn.auth.CredentialBackend`) in coturn's
layout, so users managed with ``turnadmin -a -N "ip=... port=... dbname=..."`` work
unchanged: ``turn/realm/<realm>/user/<name>/key`` holds the hex key (32 digits: MD5,
RFC 8489 §9.2.2, which is what turnadmin writes; 64: SHA-256), or
``turn/realm/<realm>/user/<name>/password`` the password in clear (coturn allows both).
The REST API secrets are the set ``turn/realm/<realm>/secret`` (``turnadmin -s``, once per
secret); a REST username's password may be made with any of them, as coturn accepts (the
core tries the key of each, :func:`~anchor_turn.auth.candidate_keys`): rotate by adding the
new secret, then removing the old one once no username made with it is still valid. Answers are cached for :data:`USER_TTL` seconds of
the core's clock (at most :data:`USER_CACHE` names), so a request costs no Redis round trip
most of the time. coturn's keys are MD5: with ``--redis`` the server offers MD5 first in
PASSWORD-ALGORITHMS, which clients take (RFC 8489 §9.2.5: the first one they support).

**Redis unavailable.** Calls are synchronous, made from the event loop with a short
timeout (:data:`TIMEOUT`): an Allocate is rare next to the datagrams relayed, and a
round trip to a Redis server on the LAN costs a fraction of a millisecond. When a call
fails, the store is marked down for :data:`RETRY` seconds, during which every call fails at
once without waiting: new allocations get 508 (Insufficient Capacity) from the quota,
unknown users 401, while existing allocations keep relaying (the packet path never asks
Redis). After that the next call tries again (``redis`` reconnects by itself), so the server
recovers on its own when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import redis

from anchor_stun.attributes import ErrorCode, PasswordAlgorithmId
from anchor_stun.errors import LocalProtocolError
from anchor_stun.integrity import long_term_key
from anchor_turn.auth import ChainedBackend, CredentialBackend, RestSecret

__all__ = [
    "LEASE",
    "RETRY",
    "TIMEOUT",
    "USER_CACHE",
    "USER_TTL",
    "RedisQuota",
    "RedisStore",
    "RedisUnavailable",
    "RedisUsers",
]

LEASE = 60.0
"""Seconds an allocation counts in Redis without being renewed (renewed every third)."""
TIMEOUT = 0.5
"""Seconds a Redis call may take (connect and answer) before it fails."""
RETRY = 1.0
"""Seconds after a failure during which calls fail at once."""
USER_TTL = 5.0
"""Seconds a user's key (or its absence) read from Redis is reused."""
USER_CACHE = 4096
"""Users whose answers are cached, least recently used dropped first."""

_log = logging.getLogger("anchor_turn.aio.redis_store")
_T = TypeVar("_T")

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local user_quota, total_quota = tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then
  if user_quota > 0 and redis.call('ZCARD', KEYS[1]) >= user_quota then return 1 end
  if total_quota > 0 and redis.call('ZCARD', KEYS[2]) >= total_quota then return 2 end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(lease * 2))
redis.call('EXPIRE', KEYS[2], math.ceil(lease * 2))
return 0
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local user_key = ARGV[i]
  redis.call('ZADD', user_key, now + lease, ARGV[i + 1])
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i + 1])
  redis.call('EXPIRE', user_key, math.ceil(lease * 2))
end
redis.call('EXPIRE', KEYS[1], math.ceil(lease * 2))
return 0
"""


class RedisUnavailable(Exception):
    """Redis could not be reached (or is marked down for :data:`RETRY` seconds)."""


class RedisStore:
    """One connection pool to Redis and what is kept there (module docstring).

    ``url`` is ``redis://HOST:PORT/DB`` (``rediss://`` for TLS, ``unix://``); ``realm`` the
    TURN realm; ``user_quota`` / ``total_quota`` the fleet's quotas (None: no bound).
    :attr:`quota` is the core's shared quota; :meth:`credentials` adds the Redis users to a
    back-end; :meth:`start` renews the leases on the loop; :meth:`close` stops. Raises
    :class:`LocalProtocolError` on a malformed URL."""

    def __init__(
        self,
        url: str,
        *,
        realm: str,
        user_quota: int | None = None,
        total_quota: int | None = None,
        lease: float = LEASE,
        timeout: float = TIMEOUT,
        retry: float = RETRY,
    ) -> None:
        path = urlsplit(url).path if url.startswith(("redis://", "rediss://")) else ""
        if path.strip("/") and not path.strip("/").isdigit():
            # (redis-py would silently use database 0)
            raise LocalProtocolError(
                f"bad Redis URL {url!r}: the database after the port must be a number "
                "(redis://HOST:PORT/DB)"
            )
        try:
            self.redis: redis.Redis = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry_on_timeout=False, health_check_interval=30,
            )  # fmt: skip
        except ValueError as exc:
            raise LocalProtocolError(f"bad Redis URL {url!r}: {exc}") from None
        self.url = url
        """The Redis URL."""
        self.realm = realm
        """The TURN realm (part of every key)."""
        self.lease = lease
        """Seconds an allocation counts without renewal."""
        self.retry = retry
        """Seconds calls fail at once after a failure."""
        self.failures = 0
        """Calls that failed (Redis unreachable, timed out or refusing)."""
        self.server_id = f"{socket.gethostname()}/{os.getpid()}/{os.urandom(4).hex()}"
        """This server's name in the members of the quota sets."""
        self.quota = RedisQuota(self, user_quota=user_quota, total_quota=total_quota)
        """The shared quota (:class:`~anchor_turn.admission.SharedQuota`)."""
        self._down_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)

    @property
    def available(self) -> bool:
        """False while calls fail at once after a failure."""
        return time.monotonic() >= self._down_until

    def call(self, fn: Callable[[redis.Redis], _T]) -> _T:
        """``fn(redis)``, or :class:`RedisUnavailable` at once while down or when it fails."""
        if not self.available:
            raise RedisUnavailable("Redis marked down")
        try:
            return fn(self.redis)
        except redis.RedisError as exc:
            self.failures += 1
            self._down_until = time.monotonic() + self.retry
            if self.failures == 1 or self.failures % 100 == 0:
                _log.warning(
                    "Redis unavailable (%s): retrying in %.1f s", exc, self.retry,
                    extra={"event": "redis-unavailable",
                           "fields": {"error": str(exc), "failures": self.failures}},
                )  # fmt: skip
            raise RedisUnavailable(str(exc)) from exc

    def credentials(
        self, fallback: CredentialBackend | None, *, clock: Callable[[], float]
    ) -> CredentialBackend:
        """``fallback`` (the command line's users, if any) and then the users and REST
        secrets in Redis; ``clock`` is wall-clock time for REST usernames."""
        users = RedisUsers(self, clock=clock)
        return users if fallback is None else ChainedBackend(fallback, users)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Say at once when Redis cannot be reached (one PING: :meth:`call` logs the failure;
        the server starts all the same and recovers when Redis comes), then renew the leases
        of the allocations held every third of :attr:`lease`."""
        with contextlib.suppress(RedisUnavailable):
            self.call(lambda r: r.ping())
        self._task = loop.create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(RedisUnavailable):
                self.quota.renew()

    def close(self) -> None:
        """Stop renewing, give back what this server holds, close the pool."""
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(RedisUnavailable):
            self.quota.release_all()
        with contextlib.suppress(Exception):
            self.redis.close()

    def key(self, *parts: str) -> str:
        """``turn/realm/<realm>/<parts...>`` (coturn's layout)."""
        return "/".join(("turn", "realm", self.realm, *parts))

    def own_key(self, *parts: str) -> str:
        """``anchor/realm/<realm>/<parts...>`` (Anchor's own keys)."""
        return "/".join(("anchor", "realm", self.realm, *parts))


class RedisQuota:
    """The quota of allocations shared through Redis (module docstring); implements
    :class:`~anchor_turn.admission.SharedQuota`."""

    def __init__(
        self, store: RedisStore, *, user_quota: int | None, total_quota: int | None
    ) -> None:
        self.store = store
        """The store."""
        self.user_quota = user_quota
        """Allocations per user in the fleet, or None."""
        self.total_quota = total_quota
        """Allocations in the fleet, or None."""
        self.held: dict[str, str] = {}
        """Members this server holds -> username."""

    def _member(self, allocation: str) -> str:
        return f"{self.store.server_id}/{allocation}"

    def acquire(self, username: str, allocation: str, now: float) -> int | None:
        """RFC 8656 §7.2 step 7 for the fleet: None, 486 over a quota, 508 without Redis."""
        store = self.store
        member = self._member(allocation)
        keys = [store.own_key("allocations", "user", username), store.own_key("allocations")]
        args: list[str | float] = [member, self.user_quota or 0, self.total_quota or 0, store.lease]
        try:
            refused = store.call(lambda r: store._acquire(keys=keys, args=args, client=r))
        except RedisUnavailable:
            return int(ErrorCode.INSUFFICIENT_CAPACITY)
        if refused:
            return int(ErrorCode.ALLOCATION_QUOTA_REACHED)
        self.held[member] = username
        return None

    def release(self, username: str, allocation: str) -> None:
        """Remove the allocation from the counts (its lease ends it if Redis is down)."""
        store = self.store
        member = self._member(allocation)
        if self.held.pop(member, None) is None:
            return
        keys = (store.own_key("allocations", "user", username), store.own_key("allocations"))

        def remove(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, member)
            pipe.execute()

        with contextlib.suppress(RedisUnavailable):
            store.call(remove)

    def renew(self) -> None:
        """Extend the lease of every allocation held (and put them back if Redis lost them)."""
        store = self.store
        if not self.held:
            return
        args: list[str | float] = [store.lease]
        for member, username in self.held.items():
            args.extend((store.own_key("allocations", "user", username), member))
        store.call(
            lambda r: store._renew(keys=[store.own_key("allocations")], args=args, client=r)
        )

    def release_all(self) -> None:
        """Give back everything held (the server stops)."""
        for member, username in list(self.held.items()):
            self.release(username, member.removeprefix(f"{self.store.server_id}/"))


class RedisUsers:
    """Users and REST API secrets in coturn's Redis layout (module docstring); a
    :class:`~anchor_turn.auth.CredentialBackend`. ``clock`` gives wall-clock seconds
    (REST usernames carry an expiry)."""

    def __init__(self, store: RedisStore, *, clock: Callable[[], float]) -> None:
        self.store = store
        """The store."""
        self.realm = store.realm
        """The realm served."""
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, dict[int, bytes] | None]] = OrderedDict()
        self._secret: tuple[float, tuple[str, ...], RestSecret | None] = (
            float("-inf"), (), None,
        )  # fmt: skip

    def _fetch(self, username: str) -> dict[int, bytes] | None:
        store = self.store
        raw_key, password = store.call(
            lambda r: r.mget(
                store.key("user", username, "key"), store.key("user", username, "password")
            )
        )
        if password is not None:
            with contextlib.suppress(LocalProtocolError, UnicodeDecodeError):
                text = _text(password)
                return {
                    int(alg): long_term_key(username, self.realm, text, algorithm=alg)
                    for alg in (PasswordAlgorithmId.MD5, PasswordAlgorithmId.SHA256)
                }
        if raw_key is not None:
            try:
                key = bytes.fromhex(_text(raw_key).strip())
            except (ValueError, UnicodeDecodeError):
                return None
            if len(key) == 16:
                return {int(PasswordAlgorithmId.MD5): key}
            if len(key) == 32:
                return {int(PasswordAlgorithmId.SHA256): key}
        return None

    def _keys(self, username: str, now: float) -> dict[int, bytes] | None:
        cached = self._cache.get(username)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(username)
            return cached[1]
        try:
            keys = self._fetch(username)
        except RedisUnavailable:
            return cached[1] if cached is not None else None  # stale beats nothing
        self._cache[username] = (now + USER_TTL, keys)
        self._cache.move_to_end(username)
        while len(self._cache) > USER_CACHE:
            self._cache.popitem(last=False)
        return keys

    def _rest_secret(self, now: float) -> RestSecret | None:
        until, secret, rest = self._secret
        if until > now:
            return rest
        store = self.store
        try:
            members = store.call(lambda r: r.smembers(store.key("secret")))
        except RedisUnavailable:
            return rest
        texts = tuple(sorted(text for text in map(_text, members) if text))
        if not texts:
            rest, secret = None, ()
        elif texts != secret:
            secret = texts
            rest = RestSecret(secret, clock=self._clock)
        self._secret = (now + USER_TTL, secret, rest)
        return rest

    def key(self, username: str, realm: str, algorithm: int, now: float) -> bytes | None:
        """The key of ``username`` (RFC 8489 §9.2.2) from Redis: a stored key or password,
        else a REST API username's under the first stored secret."""
        keys = self.candidate_keys(username, realm, algorithm, now)
        return keys[0] if keys else None

    def candidate_keys(
        self, username: str, realm: str, algorithm: int, now: float
    ) -> tuple[bytes, ...]:
        """The keys a request of ``username`` may be signed with: its stored key or
        password's, else, for a REST API username, one per stored secret."""
        if realm != self.realm:
            return ()
        keys = self._keys(username, now)
        if keys is not None:
            key = keys.get(int(algorithm))
            return () if key is None else (key,)
        rest = self._rest_secret(now)
        return rest.candidate_keys(username, realm, algorithm, now) if rest is not None else ()

    def lookup_userhash(self, userhash: bytes, realm: str) -> str | None:
        """None: Redis keys are by name (USERHASH needs another back-end)."""
        return None


def _text(value: bytes | str) -> str:
    """A Redis reply as text (UnicodeDecodeError on bytes that are not UTF-8)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value
