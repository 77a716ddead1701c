"""``anchor ice``: a standalone ICE peer speaking SDP lines over stdin/stdout (docs/design.md
"The command line").

Contract::

    anchor ice (--controlling|--controlled) [--policy gateway|standard|relay] [--host-ip IP]...
               [--stun HOST:PORT]... [--turn URI --user NAME:PASSWORD]... [--ca-file FILE]
               [--insecure] [--timeout S] [--json]

Steps, all within ``--timeout`` seconds (30 by default) from the start:

1. Gather (:class:`~anchor_ice.aio.connection.Connection`) on the ``--host-ip`` addresses (loopback
   allowed when named), else on every usable interface address; srflx from each ``--stun``,
   relays from each ``--turn`` (an RFC 7065 URI: ``turn:HOST:PORT`` over UDP,
   ``turn:HOST:PORT?transport=tcp``, ``turns:HOST:PORT`` over TLS verified with
   ``--ca-file`` or the system's CAs unless ``--insecure``; plain ``HOST:PORT`` is UDP;
   ``--user`` pairs with the ``--turn`` at the same position, or one ``--user`` serves them
   all).
2. Print the local description as SDP lines (``a=ice-pacing``, ``m=``, ``c=``,
   ``a=ice-ufrag``, ``a=ice-pwd``, ``a=candidate``..., ``a=end-of-candidates``, see
   :mod:`anchor_ice.sdp`), then one empty line, and flush. Checks are paced at the higher of
   both sides' ``a=ice-pacing`` (RFC 8445's 50 ms when the peer gives none).
3. Read the peer's description from stdin up to an empty line (or end of input); leading
   empty lines are skipped. libnice's ``generate_local_sdp()`` output is accepted. What was
   read is the whole description: end-of-candidates is assumed.
4. Connect. The controlling side then sends ``b"ping"`` (again every
   :data:`PING_INTERVAL` seconds until the echo comes back); every datagram received is
   printed as ``RECV <python repr of the bytes>``; the controlled side answers each with
   ``b"echo:" + data`` and stops :data:`LINGER` seconds after the last one (or at the
   deadline if none comes).
5. Close (sockets closed, allocations released). ``--json`` prints one last line
   ``{"state": "connected"|"failed", "connect_ms": ..., "selected_pair": {"local": {"type",
   "address"}, "remote": {"type", "address"}}, "received": N}``; without it, a one-line
   summary.

Exit status: 0 when connected (and, controlling, the echo came back); 1 when ICE failed, the
echo did not come back, or the peer's description is malformed; 2 for a mistake on the
command line. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

from anchor_cli.common import UsageError, ip_argument
from anchor_stun.aio.net import DEFAULT_PORT, format_address, parse_address
from anchor_stun.errors import AnchorError, DecodeError

__all__ = ["DEFAULT_TIMEOUT", "LINGER", "PING", "PING_INTERVAL", "add_parser", "main", "run"]

DEFAULT_TIMEOUT = 30.0
"""Seconds the whole run may take by default."""
PING = b"ping"
"""What the controlling side sends."""
ECHO_PREFIX = b"echo:"
"""What the controlled side puts before each datagram it sends back."""
PING_INTERVAL = 0.5
"""Seconds between two pings while the echo has not come back."""
LINGER = 1.0
"""Seconds the controlled side keeps answering after the last datagram."""

_T = TypeVar("_T")


class IceStepError(AnchorError):
    """A step that failed (bad peer description...): one line on stderr, exit status 1."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``ice`` subcommand to the ``anchor`` subparsers (``sub``)."""
    ice: argparse.ArgumentParser = sub.add_parser(
        "ice",
        help="a standalone ICE peer speaking SDP over stdin/stdout",
        description="Gathers, prints its local description as SDP lines and one empty line, "
        "reads the peer's from stdin up to an empty line, connects; the controlling side "
        "sends b'ping', every datagram received is printed as RECV <repr>, the controlled "
        "side answers b'echo:' + data. --json ends with a summary line.",
    )
    role = ice.add_mutually_exclusive_group(required=True)
    role.add_argument("--controlling", action="store_true", help="take the controlling role")
    role.add_argument("--controlled", action="store_true", help="take the controlled role")
    ice.add_argument(
        "--policy",
        choices=("gateway", "standard", "relay"),
        default="standard",
        help="nomination policy (default: standard, RFC 8445 regular nomination)",
    )
    ice.add_argument(
        "--host-ip",
        action="append",
        default=[],
        type=ip_argument,
        metavar="IP",
        help="gather host candidates on this address (loopback allowed); repeatable",
    )
    ice.add_argument(
        "--stun", action="append", default=[], metavar="HOST:PORT", help="STUN server; repeatable"
    )
    from anchor_cli.common import add_turn_arguments

    add_turn_arguments(ice)
    ice.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds the whole run may take (default {DEFAULT_TIMEOUT:g})",
    )
    ice.add_argument("--json", action="store_true", help="end with one JSON summary line")
    return ice


# ----------------------------------------------------------------------------- input


class _Lines:
    """Lines of a binary stream, read without blocking the event loop."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def open(self) -> None:
        try:
            mode = os.fstat(self._stream.fileno()).st_mode
            pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or self._stream.isatty()
        except (OSError, ValueError):
            pollable = False
        if not pollable:
            return  # a regular file or /dev/null: reading never blocks (and epoll refuses it)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), self._stream
            )
        except (ValueError, OSError):
            return
        self._reader = reader
        self._transport = transport

    async def readline(self) -> bytes:
        if self._reader is not None:
            return await self._reader.readline()
        return self._stream.readline()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def read_description(lines: _Lines) -> str:
    """Lines up to the first empty line after some text (or the end of input)."""
    out: list[str] = []
    while True:
        raw = await lines.readline()
        if not raw:
            return "\n".join(out)
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            if out:
                return "\n".join(out)
            continue
        out.append(line)


# ----------------------------------------------------------------------------- run


def _turn_servers(args: argparse.Namespace) -> list[Any]:
    from anchor_cli.common import turn_servers

    try:
        return turn_servers(args.turn, args.user, ca_file=args.ca_file, insecure=args.insecure)
    except UsageError as exc:
        raise UsageError(str(exc)) from None


def _pair_json(pair: Any) -> dict[str, Any] | None:
    if pair is None:
        return None
    return {
        "local": {"type": str(pair.local.type), "address": format_address(pair.local.address)},
        "remote": {"type": str(pair.remote.type), "address": format_address(pair.remote.address)},
    }


async def run(
    args: argparse.Namespace,
    stdin: IO[bytes] | None = None,
    emit: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Run one ``anchor ice`` peer; returns the summary and whether it succeeded."""
    from anchor_ice.aio.connection import Connection, IceFailedError
    from anchor_ice.sdp import parse

    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")
    turn_servers = _turn_servers(args)
    stun_servers = []
    for text in args.stun:
        try:
            stun_servers.append(parse_address(text, DEFAULT_PORT))
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def write(line: str) -> None:
        if emit is not None:
            emit(line)
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout

    async def bounded(awaitable: Awaitable[_T]) -> _T:
        async with asyncio.timeout_at(deadline):
            return await awaitable

    conn = Connection(
        bool(args.controlling),
        policy=args.policy,
        host_ips=args.host_ip or None,
        stun_server=stun_servers,
        turn_servers=turn_servers,
    )
    lines = _Lines(stdin if stdin is not None else sys.stdin.buffer)
    summary: dict[str, Any] = {
        "state": "failed",
        "connect_ms": None,
        "selected_pair": None,
        "received": 0,
    }
    ok = False
    try:
        try:
            await bounded(conn.gather_candidates())
        except TimeoutError:
            raise IceStepError(f"gathering did not finish within {args.timeout:g} s") from None
        for failure in conn.gather_failures:
            print(f"anchor ice: warning: {failure}", file=sys.stderr)
        from anchor_ice.sdp import IceDescription

        local = IceDescription(
            conn.local_username,
            conn.local_password,
            conn.local_candidates,
            end_of_candidates=True,
            pacing=conn.local_pacing,
        )
        for line in local.to_lines():
            write(line)
        write("")
        await lines.open()
        try:
            text = await bounded(read_description(lines))
        except TimeoutError:
            raise IceStepError(
                f"no peer description on stdin within {args.timeout:g} s"
            ) from None
        if not text:
            raise IceStepError("no peer description on stdin (end of input)")
        try:
            remote = parse(text)
        except DecodeError as exc:
            raise IceStepError(f"bad peer description: {exc}") from None
        conn.remote_username = remote.ufrag
        conn.remote_password = remote.pwd
        if remote.pacing is not None:  # RFC 8839 §5.5; without it RFC 8445's 50 ms stands
            conn.remote_ta = remote.pacing / 1000
        for candidate in remote.candidates:
            await conn.add_remote_candidate(candidate)
        await conn.add_remote_candidate(None)
        started = loop.time()
        try:
            await bounded(conn.connect())
        except TimeoutError:
            print(f"anchor ice: not connected within {args.timeout:g} s", file=sys.stderr)
            return summary, False
        except IceFailedError as exc:
            print(f"anchor ice: {exc}", file=sys.stderr)
            return summary, False
        summary["state"] = "connected"
        summary["connect_ms"] = round((loop.time() - started) * 1000, 3)
        summary["selected_pair"] = _pair_json(conn.selected_pair)
        if args.controlling:
            ok = await _ping(conn, summary, write, deadline)
            if not ok:
                print("anchor ice: the echo did not come back", file=sys.stderr)
        else:
            await _echo(conn, summary, write, deadline)
            ok = True
        summary["selected_pair"] = _pair_json(conn.selected_pair) or summary["selected_pair"]
        return summary, ok
    finally:
        lines.close()
        await conn.close()


async def _ping(
    conn: Any, summary: dict[str, Any], write: Callable[[str], None], deadline: float
) -> bool:
    """Controlling: send b"ping" until the echo comes back or the deadline."""
    from anchor_ice.aio.connection import IceError

    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        with contextlib.suppress(IceError):
            await conn.send(PING)
        wait = min(PING_INTERVAL, max(0.0, deadline - loop.time()))
        end = loop.time() + wait
        while loop.time() < end:
            try:
                async with asyncio.timeout_at(end):
                    data = await conn.recv()
            except TimeoutError:
                break
            except IceError:
                return False
            summary["received"] += 1
            write(f"RECV {data!r}")
            if data == ECHO_PREFIX + PING:
                return True
    return False


async def _echo(
    conn: Any, summary: dict[str, Any], write: Callable[[str], None], deadline: float
) -> None:
    """Controlled: answer every datagram until LINGER seconds after the last (or the deadline)."""
    from anchor_ice.aio.connection import IceError

    loop = asyncio.get_running_loop()
    until = deadline
    while True:
        try:
            async with asyncio.timeout_at(until):
                data = await conn.recv()
        except (TimeoutError, IceError):
            return
        summary["received"] += 1
        write(f"RECV {data!r}")
        with contextlib.suppress(IceError):
            await conn.send(ECHO_PREFIX + data)
        until = min(deadline, loop.time() + LINGER)


def _human(summary: dict[str, Any]) -> str:
    pair = summary["selected_pair"]
    if summary["state"] != "connected" or pair is None:
        return f"failed; received {summary['received']}"
    return (
        f"connected in {summary['connect_ms']:.1f} ms: {pair['local']['type']} "
        f"{pair['local']['address']} -> {pair['remote']['type']} {pair['remote']['address']}; "
        f"received {summary['received']}"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``anchor ice`` from parsed arguments; returns the exit status."""
    try:
        summary, ok = asyncio.run(run(args))
    except UsageError as exc:
        print(f"anchor ice: {exc}", file=sys.stderr)
        return 2
    except (IceStepError, AnchorError, OSError) as exc:
        print(f"anchor ice: {exc}", file=sys.stderr)
        if args.json:
            failed = {"state": "failed", "connect_ms": None, "selected_pair": None, "received": 0}
            with contextlib.suppress(BrokenPipeError):
                print(json.dumps(failed), flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    line = json.dumps(summary) if args.json else _human(summary)
    with contextlib.suppress(BrokenPipeError):
        print(line, flush=True)
    return 0 if ok else 1
