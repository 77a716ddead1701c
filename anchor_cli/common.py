"""Helpers shared by the subcommands of the ``anchor`` command."""

from __future__ import annotations

import argparse
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: `anchor --help` stays quick
    from anchor_ice.aio.gather import TurnServerConfig
    from anchor_stun.events import Address

__all__ = [
    "SOFTWARE",
    "TURN_URI_HELP",
    "UsageError",
    "add_turn_arguments",
    "free_loopback_port",
    "ip_argument",
    "resolve_server",
    "tls_context",
    "turn_servers",
    "user_password",
]

TURN_URI_HELP = (
    "TURN server as an RFC 7065 URI: turn:HOST[:PORT] (UDP), turn:HOST[:PORT]?transport=tcp, "
    "turns:HOST[:PORT] (TLS, default port 5349), or HOST:PORT (UDP); repeatable"
)

SOFTWARE = "anchor 0.1"


class UsageError(Exception):
    """A mistake on the command line or in its inputs: reported as one line, exit 2."""


def ip_argument(text: str) -> str:
    """An argparse ``type=`` for options that take an IP address (``--host-ip``): a host name
    is refused on the command line, naming the option, rather than looked up later."""
    from anchor_stun.address import is_ip

    if not is_ip(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address")
    return text


def user_password(text: str, option: str = "--user") -> tuple[str, str]:
    """``NAME:PASSWORD`` of ``option``; :class:`UsageError` otherwise."""
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise UsageError(f"{option} must be NAME:PASSWORD")
    return name, password


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS client context of ``--transport tls`` with ``--ca-file`` / ``--insecure``, or
    None for another transport; :class:`UsageError` when the CA file cannot be loaded."""
    from anchor_stun.aio.net import client_tls_context

    if args.transport != "tls":
        return None
    try:
        return client_tls_context(args.ca_file, insecure=args.insecure)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


async def resolve_server(
    text: str, default_port: int | None, what: str
) -> tuple[str, Address]:
    """``HOST[:PORT]`` given as ``what`` (``default_port`` when it has none), parsed and
    resolved: the host as given (for TLS's server name) and the address; :class:`UsageError`
    naming ``what`` for a malformed one, or the host that does not resolve."""
    from anchor_stun.aio.net import parse_address, resolve

    try:
        host, port = parse_address(text, default_port)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from exc
    try:
        return host, await resolve(host, port)
    except OSError as exc:
        raise UsageError(f"cannot resolve {host}: {exc.strerror or exc}") from exc


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP at the time of the call."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if _port_free(port):
            return port


def add_turn_arguments(parser: argparse.ArgumentParser, *, ca_help: str | None = None) -> None:
    """``--turn URI``..., ``--user NAME:PASSWORD``..., ``--ca-file FILE``, ``--insecure``: the
    TURN options of ``anchor ice``, ``anchor pipe`` and ``anchor demo`` (``ca_help``: the
    help of ``--ca-file`` where it verifies more than TURN servers)."""
    parser.add_argument("--turn", action="append", default=[], metavar="URI", help=TURN_URI_HELP)
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                        help="TURN credentials, one per --turn (or one for all)")
    parser.add_argument("--ca-file", metavar="FILE",
                        help=ca_help or "CA bundle to verify turns: servers (default: the system's)")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify turns: servers' certificates")


def turn_servers(
    uris: Sequence[str],
    users: Sequence[str],
    *,
    ca_file: str | None = None,
    insecure: bool = False,
) -> list[TurnServerConfig]:
    """The TURN servers of ``--turn URI``... with ``--user NAME:PASSWORD`` (one for all, or
    one per server) and, for ``turns:`` servers, ``--ca-file`` / ``--insecure``. Raises
    :class:`UsageError` with a one-line reason."""
    from anchor_ice.aio.gather import TurnServerConfig
    from anchor_stun.aio.net import client_tls_context
    from anchor_stun.errors import LocalProtocolError

    if users and not uris:
        raise UsageError("--user goes with --turn")
    if uris and not users:
        raise UsageError("--turn needs --user NAME:PASSWORD")
    if (ca_file or insecure) and not uris:
        raise UsageError("--ca-file and --insecure go with --turn turns:...")
    if uris and len(users) not in (1, len(uris)):
        raise UsageError("give one --user for all --turn servers, or one per --turn")
    context = None
    if ca_file is not None or insecure:
        try:
            context = client_tls_context(ca_file, insecure=insecure)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    out = []
    for uri, user in zip(uris, list(users) * len(uris) if len(users) == 1 else users, strict=True):
        name, colon, password = user.partition(":")
        if not colon or not name:
            raise UsageError(f"bad --user {user!r}: expected NAME:PASSWORD")
        try:
            out.append(TurnServerConfig.from_uri(uri, name, password, ssl_context=context))
        except LocalProtocolError as exc:
            raise UsageError(f"--turn: {exc}") from None
    return out
