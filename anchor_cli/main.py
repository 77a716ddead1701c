"""The ``anchor`` command line (contract in docs/design.md "The command line").

Subcommands: ``demo`` (an ephemeral link between two local processes through an embedded
loopback STUN/TURN server, :mod:`anchor_cli.demo`), ``stun`` (Binding and RFC 5780 NAT
discovery against any server), ``serve`` (the STUN/TURN server, with RFC 5780 when given an
alternate address, and the WebSocket rendezvous with ``--signal``), ``pipe`` (netcat over an
ephemeral link, :mod:`anchor_cli.pipe`), ``keygen`` (an endpoint identity,
:mod:`anchor_cli.keygen`), ``turn``, ``check``, ``ice`` and ``bench``.
User mistakes print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from anchor_cli.common import (
    SOFTWARE,
    UsageError,
    add_turn_arguments,
    resolve_server,
    tls_context,
)
from anchor_stun.aio.net import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    binding_request,
    discover_nat,
    format_address,
)
from anchor_stun.errors import AnchorError, StunErrorResponse

__all__ = [
    "build_parser",
    "main",
]

# ----------------------------------------------------------------------------- stun


async def _cmd_stun(args: argparse.Namespace) -> dict[str, Any]:
    default = DEFAULT_TLS_PORT if args.transport == "tls" else DEFAULT_PORT
    host, server = await resolve_server(args.server, default, "server")
    context = tls_context(args)
    if args.nat and args.transport != "udp":
        raise UsageError("--nat needs --transport udp (RFC 5780 discovery runs over UDP)")
    result = await binding_request(
        server,
        args.transport,
        ssl_context=context,
        server_hostname=host,
        software=SOFTWARE,
        timeout=args.timeout,
    )
    out: dict[str, Any] = {
        "mapped": format_address(result.mapped),
        "rtt_ms": round(result.rtt * 1000, 3),
    }
    if args.nat:
        nat = await discover_nat(server, software=SOFTWARE, timeout=args.timeout)
        out["nat"] = {"mapping": nat.mapping, "filtering": nat.filtering}
    return out


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _print_stun(out: dict[str, Any]) -> None:
    print(f"mapped address  {out['mapped']}")
    print(f"round trip      {out['rtt_ms']:.3f} ms")
    if "nat" in out:
        print(f"NAT mapping     {out['nat']['mapping']}")
        print(f"NAT filtering   {out['nat']['filtering']}")


# ----------------------------------------------------------------------------- main


def _version() -> str:
    """The installed distribution's version (``anchor-nat``), or "unknown" in a checkout
    that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anchor-nat")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``anchor`` command."""
    parser = argparse.ArgumentParser(
        prog="anchor", description="Anchor: pure-Python ICE / STUN / TURN toolkit."
    )
    parser.add_argument("--version", action="version", version=f"anchor {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="form, use and dissolve an ephemeral link between two local processes",
        description="Starts an embedded STUN/TURN server and a rendezvous on loopback and two "
        "peer processes; one sends messages over an ephemeral link, the other echoes them; "
        "the link dissolves after --idle seconds. Prints a timeline, or with --json one "
        "object (selected_pair, formed_ms, messages, bytes, lost, dissolved, "
        "allocations_left, sockets_left).",
    )
    demo.add_argument("--policy", choices=("gateway", "standard", "relay"), default="gateway",
                      help="nomination policy of the link (default gateway: never a host pair)")
    demo.add_argument("--idle", type=float, default=2.0, metavar="SECONDS",
                      help="idle timeout of the link (default 2 s, short for a demo; the "
                      "library's default is 30 s)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    add_turn_arguments(demo)  # the peers relay through these instead of the embedded server

    stun = sub.add_parser(
        "stun",
        help="ask a STUN server for the mapped address (and NAT behaviour)",
        description="Binding request to HOST[:PORT]; with --nat, RFC 5780 NAT discovery.",
    )
    stun.add_argument("server", metavar="HOST[:PORT]")
    stun.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    stun.add_argument("--nat", action="store_true", help="classify mapping and filtering")
    stun.add_argument("--json", action="store_true", help="print one JSON object")
    stun.add_argument("--ca-file", help="CA bundle to verify a TLS server")
    stun.add_argument("--insecure", action="store_true", help="do not verify the TLS server")
    stun.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS",
                      help="give up after SECONDS (default: the RFC's retransmissions, 39.5 s "
                      "over UDP); a closed port fails at once")

    from anchor_cli.serve import SERVE_DESCRIPTION, add_serve_arguments

    serve = sub.add_parser(
        "serve",
        help="run a STUN server, and a TURN server when given credentials",
        description=SERVE_DESCRIPTION,
    )
    add_serve_arguments(serve)

    from anchor_cli.turn import add_parser as add_turn_parser

    add_turn_parser(sub)  # anchor turn HOST:PORT --user NAME:PASSWORD ... (anchor_cli/turn.py)

    from anchor_cli.check import add_parser as add_check_parser

    add_check_parser(sub)  # anchor check HOST:PORT ... (anchor_cli/check.py)

    from anchor_cli.ice import add_parser as add_ice_parser

    add_ice_parser(sub)  # anchor ice (--controlling|--controlled) ... (anchor_cli/ice.py)

    from anchor_cli.pipe import add_parser as add_pipe_parser

    add_pipe_parser(sub)  # anchor pipe --signal URL --name A --peer B (anchor_cli/pipe.py)

    from anchor_cli.keygen import add_parser as add_keygen_parser

    add_keygen_parser(sub)  # anchor keygen --out FILE (anchor_cli/keygen.py)

    from anchor_cli.bench import add_parser as add_bench_parser

    add_bench_parser(sub)  # anchor bench [METRIC]... (anchor_cli/bench.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anchor`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "stun":
            out = asyncio.run(_cmd_stun(args))
            print(json.dumps(out)) if args.json else _print_stun(out)
        elif args.command == "serve":
            from anchor_cli.serve import run_serve

            return run_serve(args, software=SOFTWARE)
        elif args.command == "demo":
            from anchor_cli.demo import main as demo_main

            return demo_main(args)
        elif args.command == "pipe":
            from anchor_cli.pipe import main as pipe_main

            return pipe_main(args)
        elif args.command == "keygen":
            from anchor_cli.keygen import main as keygen_main

            return keygen_main(args)
        elif args.command == "ice":
            from anchor_cli.ice import main as ice_main

            return ice_main(args)
        elif args.command == "turn":
            from anchor_cli.turn import main as turn_main

            return turn_main(args)
        elif args.command == "check":
            from anchor_cli.check import main as check_main

            return check_main(args)
        elif args.command == "bench":
            from anchor_cli.bench import main as bench_main

            return bench_main(args)
    except UsageError as exc:
        print(f"anchor {args.command}: {exc}", file=sys.stderr)
        return 2
    except StunErrorResponse as exc:
        print(f"anchor {args.command}: server answered {exc}", file=sys.stderr)
        return 1
    except (AnchorError, OSError, ssl.SSLError) as exc:
        print(f"anchor {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
