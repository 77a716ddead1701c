"""``anchor check``: a conformance report for any STUN/TURN server.

Contract (docs/design.md "The command line")::

    anchor check HOST:PORT [--user NAME:PASSWORD | --static-auth-secret S]
                 [--transport udp|tcp|tls] [--peer IP:PORT] [--only stun|turn] [--slow] [--json]

Runs the probes of :mod:`anchor_turn.aio.check` one after the other and prints a table
(result, level, requirement and probe id, RFC section, detail) and a summary; ``--json`` prints
the same as one line holding a list of ``{"id", "requirement", "rfc", "level", "result",
"detail"}``. Without credentials the TURN probes that need an allocation are skipped; without
``--peer`` the round trips use a UDP echo on loopback when the server is on loopback, and are
skipped otherwise. ``--static-auth-secret`` makes TURN REST API credentials (coturn's
``use-auth-secret``) valid for a day. TLS: ``--ca-file`` / ``--insecure`` as for
``anchor stun``; ``--timeout`` bounds each transaction.

Exit status: 0 when no MUST requirement failed and every area asked for was tested, 1 when a
MUST failed or the server cannot be reached at all, 2 for a mistake on the command line, 3 when
an area could not be tested (TURN without credentials: say ``--only stun`` to test STUN alone).
The report names each untested area and why. It fits the terminal: a table when it is wide
(140 columns or more), else one block per probe, wrapped at word boundaries (80 columns when
written to a file or a pipe). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from anchor_cli.common import UsageError, resolve_server, tls_context, user_password
from anchor_stun.aio.net import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    format_address,
)
from anchor_turn.aio.check import CheckConfig, run_check
from anchor_turn.check import (
    Outcome,
    ProbeResult,
    check_passed,
    rest_credentials,
    summary,
    untested_areas,
)

__all__ = ["add_parser", "main", "run"]

DEFAULT_TIMEOUT = 2.0
"""Seconds one transaction may take, retransmissions included."""

_PIPE_WIDTH = 80
"""Width of the report when stdout is not a terminal (and COLUMNS is not set)."""

_TABLE_WIDTH = 140
"""The narrowest terminal that gets the table; narrower ones get one block per probe."""

UNTESTED_STATUS = 3
"""Exit status when an area asked for could not be tested (no MUST failed)."""

_STYLES = {
    Outcome.PASS: "green",
    Outcome.FAIL: "bold red",
    Outcome.SKIP: "dim",
    Outcome.FINDING: "yellow",
}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``check`` subcommand to the ``anchor`` subparsers (``sub``)."""
    check: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="conformance report for a STUN/TURN server",
        description="Runs a battery of probes against a STUN/TURN server (RFC 8489, RFC 5780, "
        "RFC 8656) and reports a verdict per requirement. Exit status 0 when every MUST "
        "passed and every area asked for was tested; 1 when a MUST failed or the server "
        "cannot be reached; 3 when an area could not be tested (TURN without --user or "
        '--static-auth-secret; --only stun asks for STUN alone). --json prints a list of '
        '{"id", "requirement", "rfc", "level", "result", "detail"}.',
    )
    check.add_argument("server", metavar="HOST:PORT")
    auth = check.add_mutually_exclusive_group()
    auth.add_argument("--user", metavar="NAME:PASSWORD", help="long-term credentials")
    auth.add_argument(
        "--static-auth-secret",
        metavar="S",
        help="TURN REST API shared secret (coturn's use-auth-secret)",
    )
    check.add_argument(
        "--transport",
        choices=("udp", "tcp", "tls"),
        default="udp",
        help="transport to the server (the relay is always UDP)",
    )
    check.add_argument(
        "--peer",
        metavar="IP:PORT",
        help="UDP echo peer for the round trips (default: a loopback echo when the server is "
        "on loopback)",
    )
    check.add_argument("--only", choices=("stun", "turn"), help="run only these probes")
    check.add_argument(
        "--slow",
        action="store_true",
        help="also run the probes that wait for server timers (permission expiry: ~5 minutes)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON list")
    check.add_argument("--ca-file", help="CA bundle to verify a TLS server")
    check.add_argument("--insecure", action="store_true", help="do not verify the TLS server")
    check.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"bound on each transaction (default {DEFAULT_TIMEOUT:g})",
    )
    return check


def _credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if args.user is not None:
        return user_password(args.user)
    if args.static_auth_secret is not None:
        if not args.static_auth_secret:
            raise UsageError("--static-auth-secret must not be empty")
        return rest_credentials(args.static_auth_secret, time.time())
    return None, None


async def run(args: argparse.Namespace) -> tuple[CheckConfig, list[ProbeResult], float]:
    """Do what ``anchor check`` does; returns the configuration, the results and the time."""
    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")
    default = DEFAULT_TLS_PORT if args.transport == "tls" else DEFAULT_PORT
    host, server = await resolve_server(args.server, default, "server")
    peer = (await resolve_server(args.peer, None, "--peer"))[1] if args.peer else None
    username, password = _credentials(args)
    config = CheckConfig(
        server=server,
        transport=args.transport,
        username=username,
        password=password,
        peer=peer,
        only=args.only,
        slow=args.slow,
        ssl_context=tls_context(args),
        server_hostname=host,
        timeout=args.timeout,
    )
    start = time.monotonic()
    results = await run_check(config)
    return config, results, time.monotonic() - start


def _print_report(config: CheckConfig, results: list[ProbeResult], seconds: float) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=_PIPE_WIDTH)  # a report written to a file or a pipe
    where = f"{format_address(config.server)} over {config.transport}"
    if console.width >= _TABLE_WIDTH:
        table = Table(title=f"anchor check {where}", show_lines=False)
        table.add_column("result")
        table.add_column("level")
        table.add_column("probe", no_wrap=True)
        table.add_column("requirement")
        table.add_column("RFC")
        table.add_column("detail")
        for result in results:
            style = _STYLES[result.outcome]
            table.add_row(
                f"[{style}]{result.outcome.value}[/{style}]",
                result.info.level.value,
                result.id,
                escape(result.info.requirement),
                result.info.rfc,
                escape(result.detail),
            )
        console.print(table)
    else:
        console.print(f"anchor check {where}")
        for result in results:
            style = _STYLES[result.outcome]
            console.print()
            console.print(
                f"[{style}]{result.outcome.value.upper():7}[/{style}] {result.info.level.value:6} "
                f"{result.id}  ({result.info.rfc})"
            )
            for text in (result.info.requirement, result.detail):
                console.print(escape(text), overflow="fold")
    counts = summary(results)
    verdict = (
        "[green]PASS[/green]: every MUST requirement tested passed"
        if check_passed(results)
        else f"[bold red]FAIL[/bold red]: {counts['must_failed']} MUST requirement(s) failed"
    )
    console.print()
    console.print(
        f"{counts['total']} probes in {seconds:.1f} s: {counts['pass']} passed, "
        f"{counts['fail']} failed, {counts['finding']} findings, {counts['skip']} skipped. "
        f"{verdict}"
    )
    for area, reason in untested_areas(results).items():
        console.print(
            f"[bold yellow]NOT TESTED[/bold yellow]: {area.upper()} ({escape(reason)}); "
            f"--only {'stun' if area == 'turn' else 'turn'} leaves it out"
        )


def main(args: argparse.Namespace) -> int:
    """Run ``anchor check`` with parsed arguments; returns the exit status."""
    # UsageError (exit 2) and AnchorError (CheckError included), OSError, ssl.SSLError (exit
    # 1) go to the anchor command's one handler (anchor_cli.main.main).
    config, results, seconds = asyncio.run(run(args))
    if args.json:
        print(json.dumps([r.to_json() for r in results]))
    else:
        _print_report(config, results, seconds)
    if not check_passed(results):
        return 1
    return UNTESTED_STATUS if untested_areas(results) else 0
