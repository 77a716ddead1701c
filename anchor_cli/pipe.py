"""``anchor pipe``: netcat over an ephemeral link, through a WebSocket rendezvous.

``anchor pipe --signal ws://IP:PORT --name A --peer B [--turn URI --user NAME:PASSWORD]``
(``--turn`` takes RFC 7065 URIs, ``turn:``/``turns:``, and plain ``HOST:PORT``; repeatable;
``--ca-file FILE`` / ``--insecure`` for ``turns:``)
subscribes ``A`` to the rendezvous (``anchor serve --signal IP:PORT``), sends what it reads on
stdin to ``B`` (one message per read, up to ``--chunk`` bytes; the first one forms the link)
and writes to stdout, unchanged, every message that comes from ``B``. The other side runs the
same command with the names swapped.

A slow stdout makes the peer wait (issue 17, flow control): each message is taken off the link
(``LinkEndpoint.recv``) only once stdout has taken the one before, and until then the channel's
receive window holds what has arrived (:mod:`anchor_link.reliable`, "Receiving"): the peer's
sender stops at that window, nothing is dropped or retransmitted for lack of buffer, and
memory stays bounded (about the window and the stdout transport's 64 KiB high-water mark)
whatever stdin brings. A reader that never reads holds both sides until it does. What is
still waiting for stdout once the link has dissolved (at most a receive window's worth) is
written before exit, waiting at most ``--flush-timeout`` seconds (30) for the reader; when the
reader takes nothing in that time, the pipe exits 1 saying how many bytes it could not write.

Identities (:mod:`anchor_link.identity`): ``--identity FILE`` (``anchor keygen``) is the key this
side proves on every link; without it the user's default identity is used, created on first use
(said on stderr). ``--trust PEER=anchor1:...`` pins the peer's public identity and
``--known-peers FILE`` trusts on first use (SSH's known_hosts model); a peer that cannot prove
its pinned or known key fails the link: nothing is sent to it, the error on stderr names
authentication, exit 1. Without either, the link still forms and stderr says the peer is
unverified, with the identity it proved.

It exits 0 once stdin is at its end and a link has come and gone: the link dissolves ``--idle``
seconds after the last data either way, so a sender exits that long after its input ends (into a
slow reader: after the last of it could be sent), and a side with nothing to send
(``< /dev/null``) exits when the peer's link to it has dissolved. Data accepted on a link that
breaks goes again on the next link to the peer, formed at once (exactly once, in order:
:mod:`anchor_link.delivery`); when none can be formed within ``--delivery-timeout`` seconds,
stderr says which bytes of stdin were not delivered ("N bytes of input undelivered to B (bytes
X-Y of stdin, ...)") and the exit status is 1. Exit 1 (one line on stderr) when the link cannot
be formed, 2 for a usage mistake. ``-v`` prints the link's events on stderr (formed, moved to a
better pair, dissolved with the frames it retransmitted and those it dropped beyond its receive
window, failed), and when the first message was sent and received, on the machine's monotonic
clock (so that two pipes on one machine can measure its latency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
import time
from typing import IO, Any

from anchor_cli.common import UsageError, add_turn_arguments, ip_argument, turn_servers
from anchor_link.identity import (
    Identity,
    IdentityError,
    default_identity_path,
    load_identity,
    load_or_create_identity,
    parse_public,
)
from anchor_stun.aio.net import DEFAULT_PORT, format_address, parse_address
from anchor_stun.errors import AnchorError

__all__ = ["add_parser", "main", "run"]

DEFAULT_CHUNK = 16384
DEFAULT_PIPE_IDLE = 5.0
DEFAULT_PIPE_DELIVERY = 60.0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``pipe`` to the ``anchor`` subparsers."""
    pipe: argparse.ArgumentParser = sub.add_parser(
        "pipe",
        help="netcat over an ephemeral link: stdin to the peer, the peer to stdout",
        description="Subscribes NAME to the rendezvous, sends stdin to PEER over an ephemeral "
        "link formed on the first data, writes what PEER sends to stdout. Exits once stdin "
        "ended and a link has dissolved (--idle seconds after the last data).",
    )
    pipe.add_argument("--signal", required=True, metavar="ws://IP:PORT",
                      help="the rendezvous (anchor serve --signal IP:PORT)")
    pipe.add_argument("--name", required=True, help="our name on the rendezvous")
    pipe.add_argument("--peer", required=True, help="the peer's name")
    pipe.add_argument("--stun", action="append", default=[], metavar="HOST:PORT",
                      help="STUN server; repeatable")
    add_turn_arguments(pipe, ca_help="CA bundle to verify turns: servers and a wss:// rendezvous "
                       "(default: the system's)")
    pipe.add_argument("--policy", choices=("gateway", "standard", "relay"), default="gateway",
                      help="nomination policy (default gateway: never a host pair)")
    pipe.add_argument("--host-ip", action="append", default=[], metavar="IP", type=ip_argument,
                      help="gather host candidates on this address only; repeatable")
    pipe.add_argument("--idle", type=float, default=DEFAULT_PIPE_IDLE, metavar="SECONDS",
                      help=f"idle timeout of the link (default {DEFAULT_PIPE_IDLE:g})")
    pipe.add_argument("--flush-timeout", type=float, default=_Output.FLUSH_TIMEOUT,
                      metavar="SECONDS",
                      help="how long, once the link is gone, to wait for a stdout that takes "
                      "nothing before giving up on what is left, with exit 1 "
                      f"(default {_Output.FLUSH_TIMEOUT:g})")
    pipe.add_argument("--delivery-timeout", type=float, default=DEFAULT_PIPE_DELIVERY,
                      metavar="SECONDS",
                      help="how long data accepted on a link that broke waits for a new link "
                      f"to the peer before it is given up (default {DEFAULT_PIPE_DELIVERY:g})")
    pipe.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, metavar="BYTES",
                      help=f"largest message read from stdin (default {DEFAULT_CHUNK})")
    pipe.add_argument("--identity", metavar="FILE",
                      help="our identity file (anchor keygen); default: the user's, "
                      "made on first use")
    pipe.add_argument("--trust", action="append", default=[], metavar="NAME=PUBLIC",
                      help="pin a peer's public identity (anchor1:...); repeatable")
    pipe.add_argument("--known-peers", metavar="FILE",
                      help="trust on first use: remember peers' identities in FILE and refuse "
                      "a changed one")
    pipe.add_argument("-v", "--verbose", action="store_true", help="link events on stderr")
    return pipe


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if not args.signal.startswith(("ws://", "wss://")):
        raise UsageError(f"--signal must be a ws:// or wss:// URL, not {args.signal!r}")
    if args.name == args.peer:
        raise UsageError("--name and --peer must differ")
    if not 0 < args.idle <= 3600:
        raise UsageError("--idle must be in (0, 3600] seconds")
    if not 0 < args.delivery_timeout <= 3600:
        raise UsageError("--delivery-timeout must be in (0, 3600] seconds")
    if not 1 <= args.chunk <= 65536:
        raise UsageError("--chunk must be in 1..65536")
    if not 0 < args.flush_timeout <= 3600:
        raise UsageError("--flush-timeout must be in (0, 3600] seconds")
    try:
        stun = [parse_address(text, DEFAULT_PORT) for text in args.stun]
        turn = turn_servers(
            args.turn, args.user, ca_file=args.ca_file if args.turn else None,
            insecure=args.insecure,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    trusted: dict[str, str] = {}
    for text in args.trust:
        name, equals, public = text.partition("=")
        if not equals or not name:
            raise UsageError(f"bad --trust {text!r}: expected NAME=anchor1:...")
        try:
            parse_public(public)
        except IdentityError as exc:
            raise UsageError(f"bad --trust {text!r}: {exc}") from None
        trusted[name] = public
    return {"stun": stun, "turn": turn, "trusted": trusted}


def _identity(args: argparse.Namespace) -> Identity:
    """``--identity FILE``, or the user's default identity (made on first use, said on
    stderr)."""
    if args.identity:
        return load_identity(args.identity)
    path = default_identity_path()
    identity, created = load_or_create_identity(path)
    if created:
        print(f"anchor pipe: created the default identity {path} (public {identity.public_text})",
              file=sys.stderr, flush=True)  # fmt: skip
    return identity


async def _open_stdin(stream: IO[bytes]) -> asyncio.StreamReader | None:
    """A StreamReader on a pipe, socket or terminal; None for a regular file (read directly:
    it never blocks, and epoll refuses it)."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError):
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stream.isatty()):
        return None
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    return reader


class _Paced(asyncio.Protocol):
    """Write side of a pipe transport: knows when the transport's buffer is drained."""

    def __init__(self) -> None:
        self.drained = asyncio.Event()
        self.drained.set()

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.drained.set()


class _Output:
    """stdout, written without ever blocking the event loop: through a pipe transport when
    it is a pipe, socket or terminal (a blocking write would stop the loop, and with it ACKs
    and consent); directly when it is a regular file (which never blocks, and which epoll
    refuses). :meth:`drain` waits until the transport's buffer is below its high-water mark,
    so a writer that drains after each write keeps at most that much here: a slow reader
    holds the writer back instead of costing memory."""

    FLUSH_TIMEOUT = 30.0
    """Seconds :meth:`flush` waits for a reader that does not read, by default."""

    def __init__(self, stream: IO[bytes], flush_timeout: float = FLUSH_TIMEOUT) -> None:
        self._stream = stream
        self.flush_timeout = flush_timeout
        """Seconds :meth:`flush` waits (``--flush-timeout``)."""
        self._transport: asyncio.WriteTransport | None = None
        self._protocol = _Paced()

    async def open(self) -> None:
        try:
            mode = os.fstat(self._stream.fileno()).st_mode
        except (OSError, ValueError):
            return
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or self._stream.isatty():
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.connect_write_pipe(
                lambda: self._protocol, self._stream
            )

    def write(self, data: bytes) -> None:
        """Write ``data`` at once: into the transport's buffer, or to the file. (Once the
        reader has gone, what is written is dropped.)"""
        if self._transport is None:
            self._stream.write(data)
            self._stream.flush()
        elif not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark (the reader has
        read enough), or the reader has gone."""
        await self._protocol.drained.wait()

    async def flush(self) -> int:
        """Wait (at most :attr:`flush_timeout`) until everything written has left the
        process; returns the bytes still held then (0: all written, or the reader is gone)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return 0
        transport.set_write_buffer_limits(high=0)  # "drained" now means empty
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._protocol.drained.wait(), self.flush_timeout)
        return 0 if transport.is_closing() else transport.get_write_buffer_size()


async def run(args: argparse.Namespace) -> int:
    """Run ``anchor pipe``; returns the exit status."""
    from anchor_link.aio.endpoint import LinkEndpoint
    from anchor_link.aio.signal import WebSocketSignalling
    from anchor_link.delivery import MessagesUndelivered
    from anchor_link.state import LinkDissolved, LinkEvent, LinkFailed, LinkFormed, LinkMoved

    cfg = _config(args)
    identity = _identity(args)
    out = _Output(sys.stdout.buffer, args.flush_timeout)
    await out.open()
    failures: list[str] = []
    undelivered: list[str] = []
    accepted = [0]  # bytes of stdin the endpoint accepted so far

    first_received: set[str] = set()

    def on_event(event: LinkEvent) -> None:
        if isinstance(event, LinkFailed):
            failures.append(event.reason)
        if isinstance(event, MessagesUndelivered):
            # The undelivered messages are the latest ones accepted: a suffix of the input.
            size = sum(len(m) for m in event.messages)
            undelivered.append(
                f"{size} bytes of input undelivered to {event.peer} (bytes "
                f"{accepted[0] - size}-{accepted[0]} of stdin, {len(event.messages)} "
                f"messages): {event.reason}"
            )
            print(f"anchor pipe: {undelivered[-1]}", file=sys.stderr, flush=True)
        if isinstance(event, LinkFormed) and event.trust == "unverified":
            print(f"anchor pipe: {event.peer} is unverified: it proved {event.peer_identity} "
                  f"(pin it with --trust {event.peer}={event.peer_identity})",
                  file=sys.stderr, flush=True)  # fmt: skip
        elif isinstance(event, LinkFormed) and event.trust == "new":
            print(f"anchor pipe: {event.peer}'s identity {event.peer_identity} is new: "
                  f"added to {args.known_peers}", file=sys.stderr, flush=True)  # fmt: skip
        if not args.verbose:
            return
        if isinstance(event, LinkFormed):
            text = (f"link formed with {event.peer} in {event.formed_ms:.0f} ms: "
                    f"{event.local_type} {format_address(event.local_address)} <-> "
                    f"{event.remote_type} {format_address(event.remote_address)}")  # fmt: skip
            if event.relay_transport is not None:
                text += f" (relay over {event.relay_transport})"
        elif isinstance(event, LinkMoved):
            text = (f"link with {event.peer} moved in {event.moved_ms:.0f} ms: "
                    f"{event.local_type} {format_address(event.local_address)} <-> "
                    f"{event.remote_type} {format_address(event.remote_address)}")  # fmt: skip
            if event.relay_transport is not None:
                text += f" (relay over {event.relay_transport})"
        elif isinstance(event, LinkDissolved):
            text = (f"link with {event.peer} dissolved ({event.reason}): "
                    f"{event.retransmissions} frames retransmitted, {event.dropped_window} "
                    f"dropped beyond the receive window")  # fmt: skip
        elif isinstance(event, LinkFailed):
            text = f"link with {event.peer} failed: {event.reason}"
        else:
            return
        print(f"anchor pipe: {text}", file=sys.stderr, flush=True)

    anchor = LinkEndpoint(
        args.name,
        WebSocketSignalling(args.signal, ca_file=args.ca_file),
        identity=identity,
        trusted_peers=cfg["trusted"],
        known_peers=args.known_peers,
        stun=cfg["stun"],
        turn=cfg["turn"],
        policy=args.policy,
        idle_timeout=args.idle,
        delivery_timeout=args.delivery_timeout,
        host_ips=args.host_ip or None,
        on_event=on_event,
    )

    async def copy_out(paced: bool) -> None:
        """What the peer sends, to stdout, one message at a time until the endpoint is closed
        and every message was read. A message read with recv() holds its frames of the
        channel's receive window until then: ``paced``, each message waits until stdout has
        taken the one before (drain), so a slow reader holds the window closed and the peer's
        sender waits (flow control) instead of this process buffering what it cannot write."""
        async for peer, data in anchor:
            if peer != args.peer:
                continue  # (read all the same: it releases that link's window)
            if args.verbose and peer not in first_received:
                first_received.add(peer)
                print(f"anchor pipe: first message from {peer} received at monotonic "
                      f"{time.monotonic():.6f} s", file=sys.stderr, flush=True)  # fmt: skip
            out.write(data)
            if paced:
                await out.drain()

    async def copy_in() -> None:
        """stdin to the peer; then wait until a link has come and gone, none is left, and
        nothing accepted is still waiting for a link (anchor_link.delivery)."""
        stdin = sys.stdin.buffer
        reader = await _open_stdin(stdin)
        first = True
        while True:
            data = await reader.read(args.chunk) if reader is not None else stdin.read(args.chunk)
            if not data:
                break
            if first and args.verbose:
                print(f"anchor pipe: first message to {args.peer} sent at monotonic "
                      f"{time.monotonic():.6f} s", file=sys.stderr, flush=True)  # fmt: skip
            first = False
            await anchor.send(args.peer, data)
            accepted[0] += len(data)
        while True:
            ended = [e for e in anchor.history if isinstance(e, LinkDissolved | LinkFailed)]
            if ended and not anchor.active_peers() and not anchor.pending():
                break
            await anchor.wait_for(LinkEvent, after=anchor.events_recorded)

    loop = asyncio.get_running_loop()
    async with anchor:
        writing = loop.create_task(copy_out(paced=True), name="anchor pipe: stdout")
        reading = loop.create_task(copy_in(), name="anchor pipe: stdin")
        try:
            await asyncio.wait((writing, reading), return_when=asyncio.FIRST_COMPLETED)
            if writing.done():  # before the endpoint is closed, only by an error (stdout's)
                writing.result()
            await reading
        finally:
            # Cancelled in recv() or in drain(), the writer loses nothing: a message is
            # taken and written with no wait in between.
            reading.cancel()
            writing.cancel()
            await asyncio.gather(reading, writing, return_exceptions=True)
    # The endpoint is closed: what is left (at most the receive windows' worth), without
    # waiting for the reader; then flush, bounded.
    await copy_out(paced=False)
    held = await out.flush()
    if held:
        raise AnchorError(
            f"stdout took nothing for {out.flush_timeout:g} s: the last {held} bytes "
            "received were not written"
        )
    if undelivered:
        raise AnchorError(undelivered[-1])
    if failures and not any(isinstance(e, LinkDissolved) for e in anchor.history):
        raise AnchorError(f"link to {args.peer!r} failed: {failures[-1]}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Entry point of ``anchor pipe`` (called by ``anchor_cli.main``)."""
    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        print(f"anchor pipe: {exc}", file=sys.stderr)
        return 2
    except (AnchorError, OSError) as exc:
        print(f"anchor pipe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
