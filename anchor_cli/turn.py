"""``anchor turn``: allocate on a TURN server, optionally echo through a peer, release.

Contract (docs/design.md "The command line")::

    anchor turn HOST:PORT --user NAME:PASSWORD [--transport udp|tcp|tls] [--peer IP:PORT] [--json]
    {"relayed": "ip:port", "mapped": "ip:port", "lifetime": ..., "echo": true|false}

Steps: connect (UDP, TCP or TLS; ``--ca-file`` / ``--insecure`` as for ``anchor stun``),
Allocate (RFC 8656 §7, with the 401 challenge, 438 and 300 handled by
:class:`~anchor_turn.aio.client.TurnConnection`). With ``--peer``: CreatePermission for the peer
(RFC 8656 §9), one datagram in a Send indication (§11) and, after a ChannelBind (§12), one in
ChannelData; each must come back from the peer (an echo server such as ``turnutils_peer``)
within ``--timeout`` seconds, sent up to three times. ``echo`` is true only when both came back.
Finally the allocation is released (Refresh with LIFETIME 0, §8.1) and the socket closed.

Exit status: 0 on success (with ``--peer``: both echoes came back), 1 when the server refused
or did not answer, or the echo did not come back (the JSON is still printed), 2 for a mistake
on the command line. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from dataclasses import dataclass
from typing import Any

from anchor_cli.common import UsageError, resolve_server, tls_context, user_password
from anchor_stun.aio.net import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    format_address,
)
from anchor_stun.errors import AllocationError, AnchorError
from anchor_stun.events import Address
from anchor_turn.aio.client import TurnConnection
from anchor_turn.events import DataReceived

__all__ = ["add_parser", "main", "run"]

SOFTWARE = "anchor 0.1"
DEFAULT_TIMEOUT = 5.0
"""Seconds each step may take: connecting and allocating, permission, channel, each echo."""
_ECHO_ATTEMPTS = 3


class TurnStepError(AnchorError):
    """A step that failed against the server: reported as one line, exit status 1."""


@dataclass(slots=True)
class _Echo:
    path: str
    """How the datagram went: "send-indication" or "channel-data"."""
    rtt: float | None = None
    """Seconds until the echo came back, None when it did not."""
    channel: int | None = None
    """The channel number the echo came back on (None: in a Data indication)."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``turn`` subcommand to the ``anchor`` subparsers (``sub``)."""
    turn: argparse.ArgumentParser = sub.add_parser(
        "turn",
        help="allocate a TURN relay, echo through a peer, release",
        description="Allocates on a TURN server (RFC 8656), optionally sends a datagram to a "
        "UDP echo peer (by Send indication and by ChannelData) and waits for the echo, then "
        'releases. --json prints {"relayed", "mapped", "lifetime", "echo"}.',
    )
    turn.add_argument("server", metavar="HOST:PORT")
    turn.add_argument(
        "--user",
        required=True,
        metavar="NAME:PASSWORD",
        help="long-term credentials (RFC 8489 §9.2)",
    )
    turn.add_argument(
        "--transport",
        choices=("udp", "tcp", "tls"),
        default="udp",
        help="transport to the server (the relay is always UDP)",
    )
    turn.add_argument("--peer", metavar="IP:PORT", help="UDP echo peer to send a datagram to")
    turn.add_argument("--json", action="store_true", help="print one JSON object")
    turn.add_argument("--ca-file", help="CA bundle to verify a TLS server")
    turn.add_argument("--insecure", action="store_true", help="do not verify the TLS server")
    turn.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"bound on each step (default {DEFAULT_TIMEOUT:g})",
    )
    return turn


async def _step(what: str, timeout: float, awaitable: Any) -> Any:
    """Await one step, turning a timeout and a refusal into one clear line."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise TurnStepError(f"{what}: no answer within {timeout:g} s") from None
    except AllocationError as exc:
        raise TurnStepError(f"{what}: {_describe(exc)}") from None


def _describe(exc: AllocationError) -> str:
    if not exc.code:
        return exc.reason or "no usable answer"
    return f"server answered {exc}"  # the code once (error_text)


async def _echo(conn: TurnConnection, peer: Address, path: str, timeout: float) -> _Echo:
    """Send a unique datagram to ``peer`` (up to three times) and wait for it to come back."""
    loop = asyncio.get_running_loop()
    payload = f"anchor turn echo {path} ".encode() + os.urandom(8).hex().encode()
    result = _Echo(path)
    start = loop.time()
    for _ in range(_ECHO_ATTEMPTS):
        conn.send(payload, peer)
        try:
            event = await asyncio.wait_for(_wait_for(conn, peer, payload), timeout / _ECHO_ATTEMPTS)
        except TimeoutError:
            continue
        result.rtt = loop.time() - start
        result.channel = event.channel
        return result
    return result


async def _wait_for(conn: TurnConnection, peer: Address, payload: bytes) -> DataReceived:
    while True:
        event = await conn.recv_event()
        if event.peer[0] == peer[0] and payload in event.data:
            return event


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[_Echo]]:
    """Do what ``anchor turn`` does; returns the JSON object and the echo results."""
    default = DEFAULT_TLS_PORT if args.transport == "tls" else DEFAULT_PORT
    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")
    username, password = user_password(args.user)
    context = tls_context(args)
    host, server = await resolve_server(args.server, default, "server")
    peer = (await resolve_server(args.peer, None, "--peer"))[1] if args.peer else None
    where = format_address(server)
    try:
        conn = await asyncio.wait_for(
            TurnConnection.connect(
                server, username, password, args.transport,
                ssl_context=context, server_hostname=host, software=SOFTWARE,
                connect_timeout=args.timeout, release_timeout=args.timeout,
            ),
            args.timeout,
        )  # fmt: skip
    except TimeoutError:
        raise TurnStepError(
            f"cannot connect to {where}: no answer within {args.timeout:g} s"
        ) from None
    except ssl.SSLError as exc:
        raise TurnStepError(f"TLS with {where} failed: {exc}") from exc
    except OSError as exc:
        raise TurnStepError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
    echoes: list[_Echo] = []
    try:
        created = await _step(f"Allocate at {where}", args.timeout, conn.allocate())
        out: dict[str, Any] = {
            "relayed": format_address(created.relayed),
            "mapped": format_address(created.mapped) if created.mapped else None,
            "lifetime": created.lifetime,
            "echo": False,
        }
        if peer is not None:
            await _step(
                f"CreatePermission for {peer[0]}", args.timeout, conn.create_permission(peer[0])
            )
            echoes.append(await _echo(conn, peer, "send-indication", args.timeout))
            await _step(
                f"ChannelBind to {format_address(peer)}", args.timeout, conn.bind_channel(peer)
            )
            echoes.append(await _echo(conn, peer, "channel-data", args.timeout))
            out["echo"] = all(e.rtt is not None for e in echoes)
    finally:
        await conn.close()
    return out, echoes


def _print_text(out: dict[str, Any], echoes: list[_Echo]) -> None:
    print(f"relayed address  {out['relayed']}")
    print(f"mapped address   {out['mapped']}")
    print(f"lifetime         {out['lifetime']} s")
    for echo in echoes:
        if echo.rtt is None:
            print(f"echo via {echo.path:<16} none")
        else:
            back = "Data indication" if echo.channel is None else f"channel {echo.channel:#06x}"
            print(f"echo via {echo.path:<16} {echo.rtt * 1000:.1f} ms (back in {back})")
    print("released")


def main(args: argparse.Namespace) -> int:
    """Run ``anchor turn`` with parsed arguments; returns the exit status."""
    # UsageError (exit 2) and AnchorError (TurnStepError included), OSError, ssl.SSLError
    # (exit 1) go to the anchor command's one handler (anchor_cli.main.main).
    out, echoes = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out))
    else:
        _print_text(out, echoes)
    if args.peer and not out["echo"]:
        print("anchor turn: the peer's echo did not come back", file=sys.stderr)
        return 1
    return 0
