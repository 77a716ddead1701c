"""Bounded TCP and TLS connections for the servers' asyncio runners (issue 24).

Theory of operation
-------------------
A server that accepts TCP or TLS connections holds, for each, a descriptor, buffers and,
for TLS, a session; an unauthenticated client can open as many as it likes and hold them
with nothing but idleness or a frame that never ends. :class:`StreamGuard` bounds what
every client can make a runner hold (:class:`StreamLimits`), and :class:`GuardedStream`
is the asyncio protocol of one connection under a guard; the STUN runner
(:class:`~anchor_stun.aio.net.StunServerRunner`) and the TURN runner
(:class:`~anchor_turn.aio.server.TurnServerRunner`) both subclass it, adding only what
they do with the frames.

* **Admission at accept time.** TCP and TLS connections are counted together, handshaking
  ones included: a TLS listener is a plain TCP server whose connections start TLS
  (``loop.start_tls``) only once admitted, so a stalled handshake holds a slot like any
  connection. A source IP at ``max_per_source``, or the runner at ``max_connections`` (by
  default three eighths of the descriptors, :func:`resource_budget`): the oldest connection
  (of that source, or of all) that has not sent a request yet is evicted, else the new one
  is refused, so idle connections cannot keep out a client that sends its request at once. Refused and
  evicted connections are aborted (RST): nothing is owed to them.
* **Deadlines**, checked by a sweep once a second (:data:`SWEEP_INTERVAL`): a first STUN
  request within ``first_request_timeout`` of accept (TLS handshake included, itself bounded
  by ``handshake_timeout``); a partial frame completed within ``partial_frame_timeout``; a
  connection idle for ``idle_timeout`` closed unless its owner keeps it
  (:meth:`GuardedStream.keep_open`: a TURN allocation lives on its connection, RFC 8656
  §3.1; RFC 8489 §6.2.2 lets a server manage idle connections).
* **Sizes and rates.** A frame longer than ``max_frame`` closes the connection. STUN
  requests are rate-limited per connection (a token bucket); over the rate the request is
  dropped and reading pauses until a token is back, so a client pipelining Bindings cannot
  starve the loop (ChannelData and indications, the relayed data, are not limited).
* **Memory.** After many connections close, what they held is released and handed back
  to the system (:func:`release_memory`): the reference cycles left by closed connections
  (an exception and its traceback, a protocol and its transport) are collected at once
  rather than at the collector's next full pass, which an idle server may not reach for a
  long time; then glibc returns the freed heap pages (asyncio keeps a 256 KiB buffer per
  TLS session, and a frame buffer of up to 64 KiB per connection, which stay in glibc's
  heap once freed).
* **Descriptors.** :func:`raise_nofile_limit` and :func:`resource_budget` size the bounds
  from the process's descriptor limit; :class:`LoopErrorFilter` turns asyncio's own
  ``accept()`` failures for lack of descriptors into a counter and one warning a minute.

Every connection or request shed is counted by reason in :attr:`StreamGuard.shed`
(:data:`SHED_REASONS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import resource
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any

from anchor_stun.errors import StreamCorrupted
from anchor_stun.events import Address
from anchor_stun.framing import MAX_BUFFER, StreamFramer

__all__ = [
    "FD_RESERVE",
    "SHED_REASONS",
    "SWEEP_INTERVAL",
    "GuardedStream",
    "LoopErrorFilter",
    "StreamGuard",
    "StreamLimits",
    "nofile_limit",
    "raise_nofile_limit",
    "release_memory",
    "resource_budget",
]

_log = logging.getLogger("anchor_stun.aio.streams")
_LINUX = sys.platform.startswith("linux")

SWEEP_INTERVAL = 1.0
"""Seconds between two passes over the TCP/TLS connections looking for missed deadlines."""
TRIM_AFTER = 32
"""Connections closed between two sweeps after which freed memory is handed back."""
SHED_REASONS = (
    "per_source",
    "total",
    "evicted",
    "first_request_timeout",
    "partial_frame_timeout",
    "idle_timeout",
    "frame_size",
    "request_rate",
    "tls_handshake",
)
"""Why a TCP/TLS connection (or, for ``request_rate``, a request) was shed."""
FD_RESERVE = 64
"""File descriptors kept for listeners, metrics, logs and the rendezvous."""


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds of the TCP and TLS connections of a :class:`TurnServerRunner` (module
    docstring, "Hostile clients"). Times in seconds of the loop's clock."""

    max_connections: int | None = None
    """Connections at once, TCP and TLS together (handshaking ones included); None:
    from the file-descriptor limit (:func:`resource_budget`)."""
    max_per_source: int = 128
    """Connections at once from one source IP."""
    first_request_timeout: float = 10.0
    """Time from accept (TLS handshake included) to a first STUN request."""
    handshake_timeout: float = 10.0
    """Time a TLS handshake may take."""
    idle_timeout: float = 120.0
    """Time without a frame after which a connection with no allocation is closed (RFC 8489
    §6.2.2 lets the server manage idle connections; an allocation keeps its connection,
    RFC 8656 §3.1)."""
    partial_frame_timeout: float = 10.0
    """Time a frame may stay incomplete."""
    max_frame: int = MAX_BUFFER
    """Bytes a frame may have (the framer never buffers more than one frame)."""
    request_rate: float = 100.0
    """STUN requests per second one connection may send after the burst; over it the
    request is dropped (counted) and reading pauses until a token is back."""
    request_burst: int = 200
    """STUN requests one connection may send at once."""


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (how many descriptors it may hold)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as servers do at start); returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return nofile_limit()


def resource_budget(nofile: int) -> tuple[int, int]:
    """(TCP/TLS connections, allocations) a server with ``nofile`` descriptors can hold
    without running out: :data:`FD_RESERVE` kept aside, three eighths of the rest for
    connections, the remainder for allocations at two relay sockets each (dual-stack)."""
    usable = max(16, nofile - FD_RESERVE)
    connections = max(8, usable * 3 // 8)
    allocations = max(4, (usable - connections) // 2)
    return connections, allocations


def release_memory() -> None:
    """Release what closed connections left and hand it back to the system (module
    docstring, "Memory"): a full garbage collection (closed connections leave reference
    cycles, which an idle server would otherwise keep until the collector's next full pass),
    then glibc's ``malloc_trim(0)`` (the freed buffers, 256 KiB per TLS session and up to a
    frame per connection, otherwise stay in the process's resident size). Called after a
    wave of closes, never per connection; the trim is skipped where there is no
    ``malloc_trim``."""
    gc.collect()
    if not _LINUX:
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class LoopErrorFilter:
    """An asyncio exception handler for a server process: running out of descriptors or
    buffers (``accept()`` failing with EMFILE, ENFILE, ENOBUFS, ENOMEM; asyncio retries by
    itself a second later) is counted in :attr:`resource_errors` and logged as one warning
    per ``interval`` seconds, without a traceback; other errors go to the loop's default
    handler, at most ``burst`` per ``interval`` (the rest counted in :attr:`suppressed`).

    asyncio schedules one retry per failed ``accept()``, and a listen queue full of
    connections fails it once per connection (up to the listener's backlog) in one go: when
    the server closes its listeners with retries pending (a shutdown during a shortage),
    each of them fails on the closed socket (``ValueError: Invalid file descriptor: -1``).
    Those are counted in :attr:`stale_retries` and not logged: the listener they would have
    restarted is gone on purpose."""

    RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

    def __init__(self, *, interval: float = 60.0, burst: int = 10) -> None:
        self.interval = interval
        self.burst = burst
        self.resource_errors = 0
        """Errors for lack of descriptors or memory."""
        self.suppressed = 0
        """Other errors not logged because too many came at once."""
        self.stale_retries = 0
        """Retries of a failed ``accept()`` that ran after their listener was closed."""
        self._warned_at: float | None = None
        self._window_start = 0.0
        self._window_count = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make this the exception handler of ``loop``."""
        loop.set_exception_handler(self)

    def resource_error(self, what: str) -> None:
        """Count one resource error and warn if none was logged for ``interval``."""
        self.resource_errors += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= self.interval:
            self._warned_at = now
            _log.warning(
                "out of file descriptors or buffers (%s): shedding load; %d so far",
                what,
                self.resource_errors,
                extra={"event": "resource-shortage",
                       "fields": {"what": what, "count": self.resource_errors}},
            )  # fmt: skip

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in self.RESOURCE_ERRNOS:
            self.resource_error(str(context.get("message", exc)))
            return
        if isinstance(exc, ValueError | OSError) and _is_accept_retry(context.get("handle")):
            self.stale_retries += 1
            return
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if self._window_count > self.burst:
            self.suppressed += 1
            return
        loop.default_exception_handler(context)


def _is_accept_retry(handle: object) -> bool:
    """Whether ``handle`` is asyncio's retry of a failed ``accept()`` (its selector loop's
    ``_start_serving``, scheduled a second after the failure; asyncio's handles have no
    public accessor for their callback)."""
    callback = getattr(handle, "_callback", None)
    return getattr(callback, "__name__", None) == "_start_serving"


class StreamGuard:
    """The bounds of one runner's TCP and TLS connections (module docstring).

    ``limits`` are the bounds. After :meth:`start` on the running loop, connections
    (:class:`GuardedStream`) ask :meth:`admit` when accepted and the guard sweeps them once
    a second; :attr:`connections` maps ``(peer, local)`` to each one admitted (the runner
    routes its output by it); :meth:`close` aborts them all.
    """

    def __init__(self, limits: StreamLimits | None = None) -> None:
        self.limits = limits if limits is not None else StreamLimits()
        """The bounds."""
        self.max_connections = self.limits.max_connections or 0
        """Connections allowed at once (from the descriptor limit at :meth:`start` when the
        limits leave it unset)."""
        self.shed: dict[str, int] = dict.fromkeys(SHED_REASONS, 0)
        """Connections and requests shed, by reason (:data:`SHED_REASONS`)."""
        self.connections: dict[tuple[Address, Address], GuardedStream] = {}
        """Every admitted connection by (peer, local), handshaking ones included."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._per_source: dict[str, dict[tuple[Address, Address], GuardedStream]] = {}
        self._closed_since_trim = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.connections)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Size the bounds and start sweeping."""
        self.loop = loop
        if not self.max_connections:
            self.max_connections = resource_budget(nofile_limit())[0]
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def close(self) -> None:
        """Stop sweeping and abort every connection."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections.values()):
            connection.close()
        self.connections.clear()
        self._per_source.clear()

    def open_sockets(self) -> int:
        """Connections still open."""
        return sum(1 for c in self.connections.values() if not c.closed)

    def admit(self, connection: GuardedStream) -> bool:
        """Admission at accept time. A source at its share, or the server at its total:
        the oldest connection (of that source, or of all) that has sent no request yet is
        evicted to make room, else the new one is refused. So idle attackers cannot keep
        out a client that sends its request at once, even from their own address. Counted
        in :attr:`shed` (``per_source``, ``evicted``, ``total``)."""
        if self.closed:
            return False
        source = connection.source
        mine = self._per_source.get(source)
        if mine is not None and len(mine) >= self.limits.max_per_source:
            victim = next((c for c in mine.values() if not c.proven), None)
            if victim is None:
                self.shed["per_source"] += 1
                return False
            victim.close("per_source")
            self.release(victim)
        connections = self.connections
        if len(connections) >= self.max_connections:
            victim = next((c for c in connections.values() if not c.proven), None)
            if victim is None:
                self.shed["total"] += 1
                return False
            victim.close("evicted")
            self.release(victim)
        old = connections.get(connection.key)
        if old is not None:
            old.close()
            self.release(old)
        connections[connection.key] = connection
        self._per_source.setdefault(source, {})[connection.key] = connection
        return True

    def release(self, connection: GuardedStream) -> bool:
        """Forget a connection (closed, refused or evicted); True when it was admitted."""
        if self.connections.get(connection.key) is not connection:
            return False
        del self.connections[connection.key]
        mine = self._per_source.get(connection.source)
        if mine is not None:
            mine.pop(connection.key, None)
            if not mine:
                del self._per_source[connection.source]
        self._closed_since_trim += 1
        return True

    def _sweep(self) -> None:
        """Once a second: close connections past a deadline, then hand freed memory back
        when many connections closed."""
        self._sweeper = None
        loop = self.loop
        if self.closed or loop is None:
            return
        now = loop.time()
        limits = self.limits
        try:
            for connection in list(self.connections.values()):
                if connection.closed:
                    continue
                if not connection.proven and now - connection.opened > limits.first_request_timeout:
                    connection.close("first_request_timeout")
                    continue
                partial = connection.partial_since
                if partial is not None and now - partial > limits.partial_frame_timeout:
                    connection.close("partial_frame_timeout")
                elif (
                    connection.proven
                    and now - connection.active > limits.idle_timeout
                    and not connection.keep_open()
                ):
                    connection.close("idle_timeout")
        except Exception:
            _log.exception("stream sweep failed")
        if self._closed_since_trim >= TRIM_AFTER:
            self._closed_since_trim = 0
            release_memory()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)


class GuardedStream(asyncio.Protocol):
    """One TCP or TLS connection under a :class:`StreamGuard` (module docstring): admitted
    or shed at accept time, TLS started only once admitted (``context``), framed by a
    :class:`~anchor_stun.framing.StreamFramer` (``channel_data`` for TURN), requests
    rate-limited. Subclasses implement :meth:`frames_received` and may override
    :meth:`keep_open` and :meth:`lost`."""

    def __init__(
        self,
        guard: StreamGuard,
        local: Address,
        context: ssl.SSLContext | None = None,
        *,
        channel_data: bool = False,
    ) -> None:
        assert guard.loop is not None, "StreamGuard.start() first"
        self.guard = guard
        self.local = local
        """The listener address."""
        self.context = context
        self.framer = StreamFramer(channel_data=channel_data)
        self.transport: asyncio.Transport | None = None
        """The transport once admitted (after the TLS handshake for TLS), else None."""
        self.peer: Address = ("", 0)
        """The client's address."""
        self.key: tuple[Address, Address] = (self.peer, local)
        self.source = ""
        now = guard.loop.time()
        self.opened = now
        """When the connection was accepted (loop time)."""
        self.active = now
        """When the last whole frame arrived."""
        self.partial_since: float | None = None
        """Since when a partial frame has been waiting, or None."""
        self.proven = False
        """Whether a STUN request has arrived (an unproven connection may be evicted)."""
        self.closed = False
        self._tokens = float(guard.limits.request_burst)
        self._token_time = now
        self._paused = False
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        """Bytes the TLS layer delivered before ``start_tls`` returned (see data_received)."""
        self.write_limit = 1 << 20
        """Bytes waiting to be written beyond which :meth:`send` drops."""

    # ------------------------------------------------------------------ subclass hooks

    def address(self, sockaddr: Any) -> Address:
        """The peer address of the transport, as the runner writes addresses."""
        return (str(sockaddr[0]), int(sockaddr[1]))

    def frames_received(self, frames: list[bytes], now: float) -> None:
        """Whole frames that passed the rate limit, in order."""
        raise NotImplementedError

    def keep_open(self) -> bool:
        """Whether an idle connection must stay open (a TURN allocation lives on it)."""
        return False

    def lost(self) -> None:
        """The admitted connection closed (not called once the guard is closed)."""

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self.guard
        self.peer = self.address(transport.get_extra_info("peername"))
        self.key = (self.peer, self.local)
        self.source = self.peer[0]
        if not guard.admit(self):
            self.closed = True
            transport.abort()
            return
        if self.context is None:
            self.transport = transport
        else:
            assert guard.loop is not None
            # Nothing may be read before start_tls takes the transport over: a ClientHello
            # read here, before the task runs, would reach data_received and be lost, and
            # the handshake would stall (it did, intermittently, on loopback).
            transport.pause_reading()
            self._handshake = guard.loop.create_task(self._start_tls(transport, self.context))

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        guard = self.guard
        assert guard.loop is not None
        try:
            tls = await guard.loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=guard.limits.handshake_timeout,
            )
        except (OSError, TimeoutError, ConnectionError, asyncio.CancelledError, ssl.SSLError):
            guard.shed["tls_handshake"] += 1
            transport.abort()
            guard.release(self)
            return
        if tls is None or self.closed:
            if tls is not None:
                tls.abort()
            guard.release(self)
            return
        self.transport = tls
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            if self._handshake is not None and not self.closed:
                # A TLS 1.3 client may send its first request right behind its Finished:
                # the TLS layer hands it over before start_tls has returned the transport.
                # Kept (bounded like any partial frame) and fed once it has.
                if sum(map(len, self._early)) + len(data) <= self.guard.limits.max_frame:
                    self._early.append(data)
            return
        if transport.is_closing():
            return
        guard = self.guard
        limits = guard.limits
        assert guard.loop is not None
        corrupt = False
        try:
            frames = self.framer.feed(data)
        except StreamCorrupted as exc:  # the frames before the junk are still handled
            frames, corrupt = exc.frames, True
        now = guard.loop.time()
        buffered = self.framer.buffered
        if buffered:
            if buffered > limits.max_frame:
                guard.shed["frame_size"] += 1
                corrupt = True
            elif self.partial_since is None:
                self.partial_since = now
        else:
            self.partial_since = None
        if frames:
            self.active = now
            passed = []
            for frame in frames:
                if frame[0] < 0x40 and not frame[0] & 0x01 and not frame[1] & 0x10:
                    # a STUN request (class bits 00, RFC 8489 §5): the per-connection rate
                    self.proven = True
                    tokens = min(
                        limits.request_burst,
                        self._tokens + (now - self._token_time) * limits.request_rate,
                    )
                    self._token_time = now
                    if tokens < 1.0:
                        self._tokens = tokens
                        guard.shed["request_rate"] += 1
                        self._pause()
                        continue
                    self._tokens = tokens - 1.0
                passed.append(frame)
            try:
                self.frames_received(passed, now)
            except Exception:  # a core bug must not kill the connection silently or loop
                _log.exception("server failed on a frame from %s", self.peer)
        if corrupt:
            transport.close()

    def _pause(self) -> None:
        """Stop reading until a request token is back (backpressure on a pipelining client)."""
        if self._paused or self.transport is None or self.guard.loop is None:
            return
        self._paused = True
        with contextlib.suppress(Exception):
            self.transport.pause_reading()
        self.guard.loop.call_later(1.0 / self.guard.limits.request_rate, self._resume)

    def _resume(self) -> None:
        self._paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.resume_reading()

    def send(self, data: bytes) -> bool:
        """Write ``data``; False (not written) when more than :attr:`write_limit` bytes
        already wait, rather than buffering without bound."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        if transport.get_write_buffer_size() > self.write_limit:
            return False
        transport.write(data)
        return True

    def close(self, reason: str | None = None) -> None:
        """Abort the connection (nothing more is owed to a shed client); count ``reason``."""
        if reason is not None:
            self.guard.shed[reason] += 1
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        elif self._handshake is not None:
            self._handshake.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.guard.release(self) and not self.guard.closed:
            self.lost()
