"""The rendezvous of several ``anchor serve --signal`` instances, through Redis pub/sub
(``--redis``): a :class:`~anchor_link.aio.signal.RendezvousRouter`.

Theory of operation
-------------------
Each name held on an instance is a Redis channel ``anchor/rendezvous/<name>`` that the
instance subscribes to while the name is held. A description for a name nobody holds on
the instance is PUBLISHed on the name's channel: Redis answers how many subscribers got it,
so 0 means nobody in the fleet holds the name (the sender is told "unreachable", as on one
instance). What arrives on a subscribed channel is handed to the local holder. The
subscription connection is kept by one task; when Redis goes away the task retries every
:data:`RETRY` seconds and subscribes again to every name held, and meanwhile routing
answers "unreachable" (local names are still served). Uses ``redis.asyncio``, only with
``--redis``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio

__all__ = ["PREFIX", "RETRY", "RedisRouter"]

PREFIX = "anchor/rendezvous/"
"""Prefix of the channel of each name."""
RETRY = 1.0
"""Seconds between two attempts to subscribe again after Redis went away."""

_log = logging.getLogger("anchor_cli.redis_router")


class RedisRouter:
    """Routes rendezvous frames between instances over Redis pub/sub (module docstring).
    ``url`` is ``redis://HOST:PORT/DB``; :meth:`close` stops it."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self.redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout
        )
        """Commands (PUBLISH)."""
        self._publisher = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._names: set[str] = set()
        self._own = f"{PREFIX}_instance/{os.getpid()}/{os.urandom(4).hex()}"
        self._deliver: Callable[[str, str], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pubsub: redis.asyncio.client.PubSub | None = None
        self.routed = 0
        """Frames published to another instance."""

    async def start(self, deliver: Callable[[str, str], Awaitable[None]]) -> None:
        """Begin listening; ``deliver(name, frame)`` gets the frames routed here."""
        self._deliver = deliver
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _subscribe(self) -> redis.asyncio.client.PubSub:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._own, *(PREFIX + n for n in self._names))
        self._pubsub = pubsub
        return pubsub

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = await self._subscribe()
                async for message in pubsub.listen():
                    if message.get("type") != "message" or self._deliver is None:
                        continue
                    channel = message["channel"].decode("utf-8", "replace")
                    data = message["data"]
                    if channel.startswith(PREFIX) and isinstance(data, bytes):
                        name = channel[len(PREFIX) :]
                        with contextlib.suppress(Exception):
                            await self._deliver(name, data.decode("utf-8", "replace"))
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                _log.warning("rendezvous router: Redis unavailable (%s); retrying", exc,
                             extra={"event": "redis-unavailable",
                                    "fields": {"error": str(exc), "component": "rendezvous"}})  # fmt: skip
            self._pubsub = None
            await asyncio.sleep(RETRY)

    async def claim(self, name: str) -> None:
        """Subscribe to ``name``'s channel."""
        self._names.add(name)
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.subscribe(PREFIX + name)

    async def release(self, name: str) -> None:
        """Unsubscribe from ``name``'s channel."""
        self._names.discard(name)
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.unsubscribe(PREFIX + name)

    async def route(self, name: str, frame: str) -> bool:
        """PUBLISH ``frame`` on ``name``'s channel; whether an instance holds it."""
        try:
            received = await self._publisher.publish(PREFIX + name, frame)
        except (redis.RedisError, OSError):
            return False
        if received:
            self.routed += 1
        return bool(received)

    def close(self) -> None:
        """Stop listening (then :meth:`wait_closed` closes the connections)."""
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        """Close the connections to Redis."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        for client in (self.redis, self._publisher):
            with contextlib.suppress(Exception):
                await client.aclose()
