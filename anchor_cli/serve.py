"""``anchor serve``: the STUN + TURN server on the command line (docs/design.md "The command
line").

Theory of operation
-------------------
:func:`add_serve_arguments` declares every option of ``anchor serve`` on the subparser the
``anchor`` command builds, all from one table (:data:`OPTIONS`), with ``None`` defaults so
that :func:`run_serve` can tell what the command line gave. :func:`run_serve` then:

1. merges ``--config FILE.toml`` (``tomllib``): every option can be a key there, with the
   same name, dashes or underscores; the command line wins, option by option;
2. applies the real defaults and checks everything, reporting a mistake as one line on
   stderr with exit status 2;
3. with ``--add-user`` / ``--remove-user`` / ``--list-users``, manages the ``--users-db``
   SQLite file (keys only, like coturn's ``turnadmin``) and exits;
4. otherwise serves until SIGINT or SIGTERM, then exits 0. TURN (RFC 8656) is on when a
   credential source is given (``--user``, ``--users-db``, ``--static-auth-secret``,
   ``--redis``): one
   :class:`~anchor_turn.server.TurnServer` core served by
   :class:`~anchor_turn.aio.server.TurnServerRunner`, which answers STUN Binding on the same
   ports. Without credentials it is the STUN server of :mod:`anchor_stun.aio.net`.

Once every listener is open it prints one line ``listening <udp|tcp|tls> <ip:port>`` per
listener (tests wait for them), ``metrics http <ip:port>`` for ``--metrics``, and
``listening ws <ip:port>`` for ``--signal`` (``listening wss <ip:port>`` with ``--tls-cert``).

Hostile clients (issue 24). At start the process raises its soft ``RLIMIT_NOFILE`` to the
hard limit and sizes its defaults from what it got (:func:`~anchor_turn.aio.server.
resource_budget`): the total allocation quota (``--total-quota``), the per-user quota
(``--user-quota``, :data:`DEFAULT_USER_QUOTA` or a quarter of the total) and the TCP/TLS
connection bound (``--max-connections``), so that what clients hold never takes every
descriptor (a flood of connects can still make ``accept()`` fail for a moment: asyncio
accepts up to a listen backlog of them before the bounds see one). The other bounds of
TCP/TLS connections (per source, deadlines, request rate) are
:class:`~anchor_turn.aio.server.StreamLimits`, with a flag each. Unsigned answers over
UDP are budgeted per source prefix (:mod:`anchor_stun.budget`), in STUN-only mode too. A
:class:`~anchor_turn.aio.server.LoopErrorFilter` turns asyncio's ``accept()`` failures for
lack of descriptors into a counter and one warning a minute (and silences their retries
that come after a shutdown closed the listeners). The wildcard listener's host
addresses and the metrics and rendezvous ports are declared "myself" to the TURN core, so
no client can relay to them. The rendezvous has bounds of its own
(:class:`~anchor_link.aio.signal.RendezvousServer`): ``--signal-max-connections`` (by default
:func:`signal_budget`, taken from the TCP/TLS share) and ``--signal-auth-timeout``. After a
wave of closed connections the memory they held is handed back
(:func:`~anchor_stun.aio.streams.release_memory`).

Deployments (issue 21). ``--external-ip``, ``--alternate-server``, ``--max-bps``,
``--denied-peer-ip`` and ``--no-udp`` / ``--no-tcp`` configure the core and the runner
(:mod:`anchor_turn.external`, :mod:`anchor_turn.admission`, :mod:`anchor_turn.shaper`).
``--workers N`` hands the command to :mod:`anchor_cli.serve_workers` (a supervisor and N
workers, each running :func:`_serve` with a :class:`~anchor_cli.serve_workers.WorkerRole`).
``--redis URL`` adds :class:`~anchor_turn.aio.redis_store.RedisStore` (shared quotas,
coturn-layout users) and, with ``--signal``, :class:`~anchor_cli.redis_router.RedisRouter`;
both import the ``redis`` package only then. With ``--drain SECONDS`` a SIGTERM first
redirects new allocations to the alternates and waits for the allocations held to end.
What goes to stderr (warnings, mistakes, ``--verbose`` events, started/stopping/stopped) goes
through :mod:`anchor_cli.serve_log`: plain text, or JSON lines with ``--log-format json``.

``--signal IP:PORT`` also serves the WebSocket rendezvous of ephemeral links
(:class:`anchor_link.aio.signal.RendezvousServer`, used by ``anchor pipe``).

``--metrics IP:PORT`` serves Prometheus metrics (prometheus-client's text format) at
``/metrics``: allocations, permissions and channels alive, allocations created / expired /
deleted, requests, error responses, authentication failures, relayed packets and bytes per
direction, drops, answers refused by the budget (``anchor_turn_rate_limited``,
``anchor_stun_rate_limited``), TCP/TLS connections held and shed by reason
(``anchor_stream_connections``, ``anchor_stream_shed{reason=...}``), TURN requests refused
by a bound (``anchor_turn_refused{reason=quota|peer|stale_nonce}``), descriptor shortages
(``anchor_resource_errors``, ``anchor_turn_relay_resource_errors``), the STUN Binding
counters and, with ``--signal``, the rendezvous's connections, names, forwarded descriptions,
connections shed and frames dropped by reason (``anchor_rendezvous_*``, docs/serve.md). The values are read from the cores'
counters when scraped, so metrics cost nothing on the packet path. The small HTTP server
runs on the same asyncio loop (no thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import signal
import socket
import ssl
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anchor_cli.serve_log import LOG_FORMATS, configure_logging, log_event, report_error, turn_event
from anchor_link.aio.signal import (
    AUTH_TIMEOUT,
    FRAME_DROP_REASONS,
    RENDEZVOUS_SHED_REASONS,
    RendezvousServer,
)
from anchor_link.identity import IdentityError, parse_public
from anchor_stun.aio.net import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    ListenError,
    StunServerRunner,
    format_address,
    parse_address,
    route_local_ip,
)
from anchor_stun.aio.streams import (
    SHED_REASONS,
    LoopErrorFilter,
    StreamGuard,
    StreamLimits,
    nofile_limit,
    raise_nofile_limit,
    resource_budget,
)
from anchor_stun.attributes import Family, PasswordAlgorithmId
from anchor_stun.budget import AnswerBudget
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address
from anchor_stun.server import ServerStats, StunServer
from anchor_turn import PeerFilter
from anchor_turn.admission import AlternateServers
from anchor_turn.aio.server import (
    DEFAULT_MAX_PORT,
    DEFAULT_MIN_PORT,
    TurnServerRunner,
    UdpRelayAllocator,
)
from anchor_turn.auth import ChainedBackend, CredentialBackend, RestSecret, SqliteUsers, StaticUsers
from anchor_turn.external import ExternalAddresses
from anchor_turn.server import DEFAULT_NONCE_LIFETIME, TurnServer
from anchor_turn.shaper import RelayShaper

if TYPE_CHECKING:
    from anchor_cli.serve_workers import WorkerRole

__all__ = [
    "DEFAULT_REALM",
    "DEFAULT_USER_QUOTA",
    "OPTIONS",
    "SERVE_DESCRIPTION",
    "MetricsExporter",
    "ServeConfig",
    "ServeError",
    "add_serve_arguments",
    "build_config",
    "run_serve",
    "signal_budget",
]

DEFAULT_USER_QUOTA = 100
"""Allocations one username may hold when ``--user-quota`` is not given (fewer when a
quarter of the total quota is less): a browser makes one to four per TURN server it is
given, so one user holding a hundred is a flood, not a session (issue 24)."""
DEFAULT_REALM = "anchor"
"""REALM of the long-term credentials when ``--realm`` is not given (RFC 8489 §14.9)."""

SERVE_DESCRIPTION = (
    "STUN server (RFC 8489; RFC 5780 with --alt-ip) and, when a credential source is given "
    "(--user, --users-db, --static-auth-secret or --redis), TURN server (RFC 8656) on the "
    "same ports. "
    'Prints "listening <udp|tcp|tls> <ip:port>" per listener once ready and runs until '
    "SIGINT/SIGTERM (exit 0). Every option can also be set in --config FILE.toml under the "
    "same name (dashes or underscores); the command line wins. Users database (keys only, "
    "like coturn's turnadmin): anchor serve --users-db FILE --realm R --add-user NAME:PASSWORD "
    "(or --remove-user NAME, --list-users) changes the file and exits."
)


class ServeError(Exception):
    """A mistake in the options, the config file or the environment: one line, exit 2."""


def _listen_failure(
    exc: OSError, address: Address | None = None, alt: Address | None = None
) -> str:
    """One line naming the listener that could not be opened and the option that moves it."""
    if isinstance(exc, ListenError):
        if exc.kind == "tls":
            option = "--tls-listen"
        elif alt is not None and exc.address[1] == alt[1]:
            option = "--alt-port (or --alt-ip)"
        else:
            option = "--listen"
        return f"{exc}; choose another {option}"
    where = f" on {format_address(address)}" if address is not None else ""
    return f"cannot listen{where}: {exc.strerror or exc}; choose another --listen"


@dataclass(frozen=True, slots=True)
class _Option:
    """One option of ``anchor serve``: its flag, kind and help."""

    name: str
    """The long flag without dashes (also the TOML key)."""
    kind: str
    """``str``, ``int``, ``float``, ``flag`` (boolean) or ``list`` (repeatable string)."""
    help: str
    """The ``--help`` text."""
    metavar: str | None = None
    """Shown in ``--help``."""
    short: str | None = None
    """A short flag, if any."""

    @property
    def dest(self) -> str:
        """The attribute name in the parsed namespace."""
        return self.name.replace("-", "_")


_LIMITS = StreamLimits()

OPTIONS: tuple[_Option, ...] = (
    _Option("listen", "list", "address to serve on (repeatable; default 0.0.0.0:3478)",
            "IP:PORT"),
    _Option("alt-ip", "str", "alternate IP for RFC 5780 (NAT behaviour discovery)", "IP"),
    _Option("alt-port", "int", "alternate port for RFC 5780 (default PORT+1)", "PORT"),
    _Option("tcp", "flag", "also serve over TCP on every --listen address"),
    _Option("tls-cert", "str", "certificate (PEM) to serve over TLS", "FILE"),
    _Option("tls-key", "str", "private key (PEM) of --tls-cert", "FILE"),
    _Option("tls-listen", "str", "TLS address (default port 5349 beside 3478, else PORT+1)",
            "IP:PORT"),
    _Option("realm", "str", f"REALM of the TURN credentials (default {DEFAULT_REALM!r})", "R"),
    _Option("user", "list", "a TURN user (repeatable); turns TURN on", "NAME:PASSWORD"),
    _Option("users-db", "str", "SQLite users database (keys only, like turnadmin); turns "
            "TURN on", "FILE"),
    _Option("static-auth-secret", "str", "TURN REST API shared secret: username "
            "EXPIRY[:user], password base64(HMAC-SHA1(secret, username)); turns TURN on", "S"),
    _Option("allow-loopback-peers", "flag", "let clients relay to loopback peers (tests only)"),
    _Option("allow-peer", "list", "network peers may be in even when private (repeatable)",
            "CIDR"),
    _Option("allowed-peer-ip", "list", "coturn's name: peers allowed even when private or "
            "denied (repeatable)", "IP[-IP]|CIDR"),
    _Option("denied-peer-ip", "list", "peers refused besides the private ranges "
            "(repeatable; --allowed-peer-ip wins)", "IP[-IP]|CIDR"),
    _Option("external-ip", "list", "public address of a 1:1 NAT: XOR-RELAYED-ADDRESS names "
            "PUBLIC for relays on PRIVATE (a bare PUBLIC: every relay of its family; "
            "repeatable)", "PUBLIC[/PRIVATE]"),
    _Option("alternate-server", "list", "send new allocations there with 300 Try Alternate "
            "while draining or above --alternate-above (repeatable)", "IP:PORT"),
    _Option("alternate-above", "int", "allocations held from which new ones are redirected "
            "to --alternate-server (0: always, as coturn; default: only while draining)", "N"),
    _Option("alternate-domain", "str", "ALTERNATE-DOMAIN sent with 300 (TLS clients are "
            "redirected only with it)", "NAME"),
    _Option("drain", "float", "on SIGTERM, redirect new allocations to --alternate-server "
            "and wait up to SECONDS for the allocations held to end (default 0)", "SECONDS"),
    _Option("max-bps", "int", "bytes per second each allocation may relay, each direction "
            "(beyond: dropped)", "BYTES"),
    _Option("no-udp", "flag", "no UDP listeners (TURN over TCP/TLS only; relays stay UDP)"),
    _Option("no-tcp", "flag", "no TCP listeners (overrides --tcp)"),
    _Option("workers", "str", "worker processes sharing the listeners (SO_REUSEPORT), "
            "'auto' for one per CPU (default 1)", "N|auto"),
    _Option("redis", "str", "share quotas, users and the rendezvous with other servers in "
            "Redis (coturn's key layout)", "redis://HOST:PORT/DB"),
    _Option("relay-ip", "list", "IP to bind relayed addresses on (repeatable; default: the "
            "listen IP, and the IPv6 listen IP or ::1 beside a loopback listen)", "IP"),
    _Option("min-port", "int", f"lowest relayed port (default {DEFAULT_MIN_PORT})", "PORT"),
    _Option("max-port", "int", f"highest relayed port (default {DEFAULT_MAX_PORT})", "PORT"),
    _Option("user-quota", "int", "allocations allowed per username (486 beyond; default "
            "100, or a quarter of --total-quota when less)", "N"),
    _Option("total-quota", "int", "allocations allowed in all (486 beyond; default what the "
            "file-descriptor limit can hold)", "N"),
    _Option("max-connections", "int", "TCP/TLS connections at once (default three eighths of "
            "the file-descriptor limit, less --signal-max-connections with --signal)", "N"),
    _Option("max-connections-per-source", "int", "TCP/TLS connections at once from one IP "
            f"(default {_LIMITS.max_per_source})", "N"),
    _Option("first-request-timeout", "float", "seconds a TCP/TLS connection has to send its "
            f"first request (default {_LIMITS.first_request_timeout:g})", "SECONDS"),
    _Option("idle-timeout", "float", "seconds before an idle TCP/TLS connection without an "
            f"allocation is closed (default {_LIMITS.idle_timeout:g})", "SECONDS"),
    _Option("partial-frame-timeout", "float", "seconds a TCP/TLS frame may stay incomplete "
            f"(default {_LIMITS.partial_frame_timeout:g})", "SECONDS"),
    _Option("stream-request-rate", "float", "STUN requests per second per TCP/TLS connection "
            f"(default {_LIMITS.request_rate:g}, after a burst of "
            f"{_LIMITS.request_burst})", "N"),
    _Option("strict-channels", "flag", "accept only RFC 8656's channel numbers 0x4000-0x4FFF "
            "(default: RFC 5766's 0x4000-0x7FFF, which browsers and turnutils_uclient use)"),
    _Option("rfc5766-channels", "flag", "no effect, kept for old command lines: RFC 5766's "
            "channel numbers are accepted by default now (see --strict-channels)"),
    _Option("nonce-lifetime", "float", "seconds a NONCE stays valid before 438 (default "
            f"{DEFAULT_NONCE_LIFETIME})", "SECONDS"),
    _Option("metrics", "str", "serve Prometheus metrics at http://IP:PORT/metrics", "IP:PORT"),
    _Option("signal", "str", "also serve the WebSocket rendezvous of ephemeral links (anchor "
            "pipe --signal ws://IP:PORT) on IP:PORT; wss:// with --tls-cert/--tls-key", "IP:PORT"),
    _Option("signal-allow", "list", "only these public identities (anchor1:...) may hold a name "
            "on the rendezvous; repeatable", "PUBLIC"),
    _Option("signal-auth-timeout", "float", "seconds from accept for a rendezvous connection "
            f"to prove its key (default {AUTH_TIMEOUT:g})", "SECONDS"),
    _Option("signal-max-connections", "int", "rendezvous connections at once (default a "
            "quarter of the TCP/TLS connection budget, taken from it)", "N"),
    _Option("verbose", "flag", "log TURN events (allocations, permissions, ...) on stderr",
            short="-v"),
    _Option("log-format", "str", "stderr as plain text (default) or one JSON object per line "
            "(time, level, event, message, fields)", "text|json"),
    _Option("add-user", "list", "add (or replace) a user in --users-db for --realm, then exit",
            "NAME:PASSWORD"),
    _Option("remove-user", "list", "remove a user of --realm from --users-db, then exit", "NAME"),
    _Option("list-users", "flag", "list the users in --users-db, then exit"),
)
"""Every option of ``anchor serve`` (``--config`` is added beside them)."""

_BY_DEST = {option.dest: option for option in OPTIONS}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``anchor serve`` on ``parser`` (defaults are applied later,
    by :func:`build_config`, so that a config file can fill what the command line left)."""
    for option in OPTIONS:
        flags = [f"--{option.name}"] + ([option.short] if option.short else [])
        if option.kind == "flag":
            parser.add_argument(*flags, dest=option.dest, action="store_true", default=None,
                                help=option.help)
        elif option.kind == "list":
            parser.add_argument(*flags, dest=option.dest, action="append", default=None,
                                metavar=option.metavar, help=option.help)
        else:
            parser.add_argument(*flags, dest=option.dest, default=None, metavar=option.metavar,
                                type=str, help=option.help)
    parser.add_argument("--config", metavar="FILE.toml",
                        help="read options from a TOML file (command line wins)")


# ----------------------------------------------------------------------------- configuration


@dataclass(slots=True)
class ServeConfig:
    """Everything ``anchor serve`` needs, checked, with defaults applied."""

    listen: list[Address]
    """UDP (and, with ``tcp``, TCP) listener addresses; the first is the primary."""
    alt: Address | None = None
    """RFC 5780 alternate address (alt IP, alt port), or None."""
    tcp: bool = False
    """Serve TCP on every listen address."""
    tls_context: ssl.SSLContext | None = None
    """TLS server context, or None."""
    tls_address: Address | None = None
    """TLS listener address (with ``tls_context``)."""
    realm: str = DEFAULT_REALM
    """The long-term credential realm."""
    users: dict[str, str] = field(default_factory=dict)
    """Static users."""
    users_db: str | None = None
    """SQLite users database path."""
    secret: str | None = None
    """TURN REST API shared secret."""
    allow_loopback_peers: bool = False
    """Allow loopback peers."""
    allow_peers: list[str] = field(default_factory=list)
    """Networks allowed even when private."""
    deny_peers: list[str] = field(default_factory=list)
    """Networks refused besides the private ranges (``--denied-peer-ip``)."""
    external_ips: list[str] = field(default_factory=list)
    """``PUBLIC[/PRIVATE]`` mappings of a 1:1 NAT (``--external-ip``)."""
    alternates: list[Address] = field(default_factory=list)
    """ALTERNATE-SERVER addresses (RFC 8489 §10)."""
    alternate_above: int | None = None
    """Allocations from which new ones are redirected (None: only while draining)."""
    alternate_domain: str | None = None
    """ALTERNATE-DOMAIN, or None."""
    drain: float = 0.0
    """Seconds to wait for allocations to end after SIGTERM."""
    max_bps: int | None = None
    """Bytes per second per allocation and direction, or None."""
    udp: bool = True
    """Serve UDP listeners (False with ``--no-udp``)."""
    workers: int = 1
    """Worker processes (``--workers``)."""
    redis: str | None = None
    """Redis URL (``--redis``), or None."""
    relay_ips: list[str] = field(default_factory=list)
    """Relay IPs (TURN)."""
    min_port: int = DEFAULT_MIN_PORT
    """Lowest relayed port."""
    max_port: int = DEFAULT_MAX_PORT
    """Highest relayed port."""
    user_quota: int | None = None
    """Allocations per username (None: :data:`DEFAULT_USER_QUOTA`, or a quarter of the
    total quota when less)."""
    total_quota: int | None = None
    """Allocations in all (None: from the file-descriptor limit)."""
    limits: StreamLimits = field(default_factory=StreamLimits)
    """Bounds of the TCP/TLS connections."""
    nonce_lifetime: float = DEFAULT_NONCE_LIFETIME
    """NONCE validity, seconds."""
    strict_channels: bool = False
    """Accept only RFC 8656's channel numbers (up to 0x4FFF), not RFC 5766's (0x7FFF)."""
    metrics: Address | None = None
    """Prometheus metrics address, or None."""
    signal: Address | None = None
    """WebSocket rendezvous address, or None."""
    signal_allow: list[str] | None = None
    """Public identities allowed on the rendezvous (None: any)."""
    signal_auth_timeout: float = AUTH_TIMEOUT
    """Seconds from accept for a rendezvous connection to prove its key."""
    signal_max_connections: int | None = None
    """Rendezvous connections at once (None: :func:`signal_budget`)."""
    verbose: bool = False
    """Log TURN events on stderr."""
    log_format: str = "text"
    """``text`` or ``json`` (:mod:`anchor_cli.serve_log`)."""
    add_users: dict[str, str] = field(default_factory=dict)
    """Users to add to the database (administration mode)."""
    remove_users: list[str] = field(default_factory=list)
    """Users to remove from the database (administration mode)."""
    list_users: bool = False
    """List the database users (administration mode)."""

    @property
    def turn(self) -> bool:
        """True when a credential source is configured (TURN is served)."""
        return bool(self.users or self.users_db or self.secret or self.redis)

    @property
    def admin(self) -> bool:
        """True in users-database administration mode."""
        return bool(self.add_users or self.remove_users or self.list_users)


def _load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ServeError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ServeError(f"config {path} is not valid TOML: {exc}") from exc
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        option = _BY_DEST.get(dest)
        if option is None:
            raise ServeError(f"config {path}: unknown option {key!r}")
        out[dest] = _config_value(path, key, option, value)
    return out


def _config_value(path: str, key: str, option: _Option, value: Any) -> Any:
    where = f"config {path}: {key}"
    if option.kind == "flag":
        if not isinstance(value, bool):
            raise ServeError(f"{where} must be true or false")
        return value
    if option.kind == "list":
        if option.dest in ("user", "add_user") and isinstance(value, dict):
            value = [f"{name}:{password}" for name, password in value.items()]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ServeError(f"{where} must be a string or a list of strings")
        return list(value)
    if option.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ServeError(f"{where} must be a number")
        return str(value)
    if not isinstance(value, str | int):
        raise ServeError(f"{where} must be a string")
    return str(value)


def _int(name: str, text: str | None, low: int, high: int) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ServeError(f"--{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise ServeError(f"--{name} must be within {low}..{high}, not {value}")
    return value


def _float(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ServeError(f"--{name} must be a number, not {text!r}") from None
    if not value > 0:
        raise ServeError(f"--{name} must be positive")
    return value


def _ip(name: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ServeError(f"--{name}: {text!r} is not an IP address") from None


def _address(name: str, text: str, default_port: int | None) -> Address:
    try:
        host, port = parse_address(text, default_port)
    except ValueError as exc:
        raise ServeError(f"--{name}: {exc}") from None
    return _ip(name, host), port


def _credentials(name: str, texts: Iterable[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for text in texts:
        user, sep, password = text.partition(":")
        if not sep or not user or not password:
            raise ServeError(f"--{name} needs NAME:PASSWORD, not {text!r}")
        users[user] = password
    return users


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"cannot load TLS certificate/key: {exc}") from exc
    return context


def _can_bind(ip: str) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, 0))
    except OSError:
        return False
    return True


def default_relay_ips(listen: Sequence[Address]) -> list[str]:
    """Relay IPs when ``--relay-ip`` is not given: one per family among the listen IPs (a
    wildcard listen is replaced by the source address of the default route, found without
    sending anything), plus ``::1`` beside a loopback IPv4 listen when no IPv6 one is given."""
    by_family: dict[int, str] = {}
    loopback_v4 = False
    for ip, _ in listen:
        parsed = ipaddress.ip_address(ip)
        family = 4 if parsed.version == 4 else 6
        if family in by_family:
            continue
        if parsed.is_unspecified:
            probe = ("192.0.2.1", 9) if family == 4 else ("2001:db8::1", 9)  # RFC 5737/3849
            routed = route_local_ip(probe)
            if ipaddress.ip_address(routed).is_unspecified:
                continue
            ip = routed
        by_family[family] = ip
        loopback_v4 = loopback_v4 or (family == 4 and ipaddress.ip_address(ip).is_loopback)
    if 6 not in by_family and loopback_v4 and _can_bind("::1"):
        by_family[6] = "::1"
    return [by_family[f] for f in sorted(by_family)]


def build_config(args: argparse.Namespace) -> ServeConfig:
    """Merge ``--config`` into the parsed options (command line wins), apply defaults and
    check everything; raises :class:`ServeError`."""
    given: dict[str, Any] = {o.dest: getattr(args, o.dest, None) for o in OPTIONS}
    config_path = getattr(args, "config", None)
    if config_path:
        for dest, value in _load_toml(config_path).items():
            if given.get(dest) is None:
                given[dest] = value

    listen = [_address("listen", t, DEFAULT_PORT) for t in given["listen"] or ["0.0.0.0"]]
    cfg = ServeConfig(listen=listen)
    cfg.tcp = bool(given["tcp"])
    if given["alt_ip"]:
        alt_port = _int("alt-port", given["alt_port"], 1, 65535)
        cfg.alt = (_ip("alt-ip", given["alt_ip"]), alt_port or listen[0][1] + 1)
    elif given["alt_port"] is not None:
        raise ServeError("--alt-port needs --alt-ip")
    cert, key = given["tls_cert"], given["tls_key"]
    if bool(cert) != bool(key):
        raise ServeError("--tls-cert and --tls-key go together")
    if cert:
        cfg.tls_context = _tls_context(cert, key)
        if given["tls_listen"]:
            cfg.tls_address = _address("tls-listen", given["tls_listen"], DEFAULT_TLS_PORT)
        else:
            ip, port = listen[0]
            cfg.tls_address = (ip, DEFAULT_TLS_PORT if port == DEFAULT_PORT else port + 1)
    elif given["tls_listen"]:
        raise ServeError("--tls-listen needs --tls-cert and --tls-key")
    cfg.realm = given["realm"] or DEFAULT_REALM
    cfg.users = _credentials("user", given["user"] or [])
    cfg.users_db = given["users_db"]
    cfg.secret = given["static_auth_secret"]
    cfg.allow_loopback_peers = bool(given["allow_loopback_peers"])
    for net in given["allow_peer"] or []:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ServeError(f"--allow-peer: {net!r} is not a network") from None
        cfg.allow_peers.append(net)
    for text in given["allowed_peer_ip"] or []:
        cfg.allow_peers.extend(_networks("allowed-peer-ip", text))
    for text in given["denied_peer_ip"] or []:
        cfg.deny_peers.extend(_networks("denied-peer-ip", text))
    cfg.external_ips = list(given["external_ip"] or [])
    try:
        ExternalAddresses(cfg.external_ips)
    except LocalProtocolError as exc:
        raise ServeError(f"--external-ip: {exc}") from None
    cfg.alternates = [
        _address("alternate-server", t, DEFAULT_PORT) for t in given["alternate_server"] or []
    ]
    cfg.alternate_above = _int("alternate-above", given["alternate_above"], 0, 1 << 31)
    cfg.alternate_domain = given["alternate_domain"]
    if (cfg.alternate_above is not None or cfg.alternate_domain) and not cfg.alternates:
        raise ServeError("--alternate-above and --alternate-domain need --alternate-server")
    cfg.drain = _float("drain", given["drain"]) or 0.0
    cfg.max_bps = _int("max-bps", given["max_bps"], 1, 1 << 40)
    cfg.udp = not given["no_udp"]
    if given["no_tcp"]:
        cfg.tcp = False
    cfg.workers = _workers(given["workers"])
    cfg.redis = given["redis"]
    if cfg.redis is not None and not cfg.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ServeError(f"--redis needs redis://HOST:PORT/DB, not {cfg.redis!r}")
    cfg.min_port = _int("min-port", given["min_port"], 1, 65535) or DEFAULT_MIN_PORT
    cfg.max_port = _int("max-port", given["max_port"], 1, 65535) or DEFAULT_MAX_PORT
    if cfg.min_port > cfg.max_port:
        raise ServeError(f"--min-port {cfg.min_port} is above --max-port {cfg.max_port}")
    cfg.user_quota = _int("user-quota", given["user_quota"], 1, 1 << 31)
    cfg.total_quota = _int("total-quota", given["total_quota"], 1, 1 << 31)
    defaults = StreamLimits()
    cfg.limits = StreamLimits(
        max_connections=_int("max-connections", given["max_connections"], 1, 1 << 24),
        max_per_source=_int(
            "max-connections-per-source", given["max_connections_per_source"], 1, 1 << 24
        )
        or defaults.max_per_source,
        first_request_timeout=_float("first-request-timeout", given["first_request_timeout"])
        or defaults.first_request_timeout,
        handshake_timeout=min(
            defaults.handshake_timeout,
            _float("first-request-timeout", given["first_request_timeout"])
            or defaults.handshake_timeout,
        ),
        idle_timeout=_float("idle-timeout", given["idle_timeout"]) or defaults.idle_timeout,
        partial_frame_timeout=_float("partial-frame-timeout", given["partial_frame_timeout"])
        or defaults.partial_frame_timeout,
        request_rate=_float("stream-request-rate", given["stream_request_rate"])
        or defaults.request_rate,
    )
    cfg.nonce_lifetime = _float("nonce-lifetime", given["nonce_lifetime"]) or (
        DEFAULT_NONCE_LIFETIME
    )
    if given["metrics"]:
        cfg.metrics = _address("metrics", given["metrics"], None)
    if given["signal"]:
        cfg.signal = _address("signal", given["signal"], None)
    if given["signal_allow"]:
        if not given["signal"]:
            raise ServeError("--signal-allow needs --signal")
        for public in given["signal_allow"]:
            try:
                parse_public(public)
            except IdentityError as exc:
                raise ServeError(f"--signal-allow: {exc}") from None
        cfg.signal_allow = list(given["signal_allow"])
    for dest in ("signal_auth_timeout", "signal_max_connections"):
        if given[dest] is not None and not given["signal"]:
            raise ServeError(f"--{dest.replace('_', '-')} needs --signal")
    cfg.signal_auth_timeout = (
        _float("signal-auth-timeout", given["signal_auth_timeout"]) or AUTH_TIMEOUT
    )
    cfg.signal_max_connections = _int(
        "signal-max-connections", given["signal_max_connections"], 1, 1 << 24
    )
    cfg.verbose = bool(given["verbose"])
    cfg.log_format = given["log_format"] or "text"
    if cfg.log_format not in LOG_FORMATS:
        raise ServeError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, "
                         f"not {cfg.log_format!r}")
    cfg.strict_channels = bool(given["strict_channels"])  # --rfc5766-channels: no effect
    cfg.add_users = _credentials("add-user", given["add_user"] or [])
    cfg.remove_users = list(given["remove_user"] or [])
    cfg.list_users = bool(given["list_users"])
    if cfg.admin and not cfg.users_db:
        raise ServeError("--add-user, --remove-user and --list-users need --users-db")
    if given["relay_ip"]:
        cfg.relay_ips = [_ip("relay-ip", t) for t in given["relay_ip"]]
    elif cfg.turn:
        cfg.relay_ips = default_relay_ips(listen)
        if not cfg.relay_ips:
            raise ServeError("cannot tell which IP to relay on: give --relay-ip")
    if not cfg.turn:
        for flag, used in (("--no-udp", not cfg.udp), ("--external-ip", cfg.external_ips),
                           ("--alternate-server", cfg.alternates), ("--max-bps", cfg.max_bps),
                           ("--denied-peer-ip", cfg.deny_peers)):  # fmt: skip
            if used:
                raise ServeError(f"{flag} is for the TURN server: give --user, --users-db "
                                 "or --static-auth-secret")
    if not cfg.udp and not cfg.tcp and cfg.tls_context is None:
        raise ServeError("--no-udp leaves nothing to listen on: add --tcp or --tls-cert")
    return cfg


def _networks(name: str, text: str) -> list[str]:
    """coturn's peer ranges: an IP, ``IP-IP`` (inclusive) or a CIDR, as CIDRs."""
    first, sep, last = text.partition("-")
    try:
        if not sep:
            return [str(ipaddress.ip_network(text.strip(), strict=False))]
        low, high = ipaddress.ip_address(first.strip()), ipaddress.ip_address(last.strip())
        return [str(n) for n in ipaddress.summarize_address_range(low, high)]
    except (ValueError, TypeError):
        raise ServeError(f"--{name}: {text!r} is not an IP, IP-IP range or CIDR") from None


def _workers(text: str | None) -> int:
    if text is None:
        return 1
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)  # fmt: skip
    value = _int("workers", text, 1, 256)
    assert value is not None
    return value


# ----------------------------------------------------------------------------- metrics


def _stats_collector(
    turn: Callable[[], TurnServer | None],
    stun: Callable[[], Sequence[ServerStats]],
    runner: Callable[[], TurnServerRunner | None],
    errors: LoopErrorFilter | None = None,
    guards: Callable[[], Sequence[StreamGuard]] = lambda: (),
) -> Any:
    """A prometheus-client collector reading the cores' counters at scrape time."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            core = turn()
            if core is not None:
                s = core.stats
                for name, doc, value in (
                    ("allocations", "TURN allocations alive (RFC 8656 §5)", s.allocations),
                    ("permissions", "TURN permissions alive (RFC 8656 §9)", s.permissions),
                    ("channels", "TURN channel bindings alive (RFC 8656 §12)", s.channels),
                ):
                    yield GaugeMetricFamily(f"anchor_turn_{name}", doc, value=value)
                for name, doc, value in (
                    ("allocations_created", "Allocate requests that succeeded",
                     s.allocations_created),
                    ("allocations_expired", "allocations that timed out", s.allocations_expired),
                    ("allocations_deleted", "allocations deleted by Refresh 0 or a closed "
                     "connection", s.allocations_deleted),
                    ("requests", "TURN requests received", s.requests),
                    ("error_responses", "error responses sent (challenges included)",
                     s.errors_sent),
                    ("auth_failures", "requests whose credentials did not verify",
                     s.auth_failures),
                    ("dropped", "messages and datagrams dropped", s.dropped),
                    ("dropped_no_permission", "data dropped for lack of a permission",
                     s.dropped_no_permission),
                ):
                    yield CounterMetricFamily(f"anchor_turn_{name}", doc, value=value)
                packets = CounterMetricFamily(
                    "anchor_turn_relayed_packets", "datagrams relayed", labels=["direction"]
                )
                packets.add_metric(["to_peer"], s.to_peer_packets)
                packets.add_metric(["to_client"], s.to_client_packets)
                yield packets
                size = CounterMetricFamily(
                    "anchor_turn_relayed_bytes", "application bytes relayed",
                    labels=["direction"],
                )
                size.add_metric(["to_peer"], s.to_peer_bytes)
                size.add_metric(["to_client"], s.to_client_bytes)
                yield size
                yield CounterMetricFamily(
                    "anchor_turn_rate_limited",
                    "unsigned answers not sent: the source prefix was over its budget",
                    value=s.rate_limited,
                )
                refused = CounterMetricFamily(
                    "anchor_turn_refused", "TURN requests refused by a bound, by reason: "
                    "quota (486), peer (403, and Sends to the server itself), stale_nonce "
                    "(438: expired, or issued to another 5-tuple)", labels=["reason"],
                )
                refused.add_metric(["quota"], s.quota_refused)
                refused.add_metric(["peer"], s.peers_refused)
                refused.add_metric(["stale_nonce"], s.stale_nonces)
                yield refused
                if core.alternates is not None:
                    yield CounterMetricFamily(
                        "anchor_turn_redirected",
                        "Allocate requests answered 300 Try Alternate (RFC 8489 §10)",
                        value=core.alternates.redirected,
                    )
            run = runner()
            if run is not None:
                yield CounterMetricFamily(
                    "anchor_turn_send_dropped", "datagrams dropped because a socket was full",
                    value=run.send_dropped,
                )
                yield CounterMetricFamily(
                    "anchor_turn_relay_resource_errors",
                    "relay sockets not opened for lack of file descriptors (508)",
                    value=run.allocator.resource_errors,
                )
                if run.shaper is not None:
                    yield CounterMetricFamily(
                        "anchor_turn_bandwidth_dropped",
                        "relayed datagrams dropped for going over --max-bps",
                        value=run.shaper.dropped,
                    )
            held = list(guards())
            if held:
                yield GaugeMetricFamily(
                    "anchor_stream_connections", "TCP/TLS connections held",
                    value=sum(len(g) for g in held),
                )
                shed = CounterMetricFamily(
                    "anchor_stream_shed",
                    "TCP/TLS connections (or requests, for request_rate) shed, by reason",
                    labels=["reason"],
                )
                for reason in SHED_REASONS:
                    shed.add_metric([reason], sum(g.shed[reason] for g in held))
                yield shed
            if errors is not None:
                yield CounterMetricFamily(
                    "anchor_resource_errors",
                    "accept() and other failures for lack of file descriptors or buffers",
                    value=errors.resource_errors,
                )
            stats = list(stun())
            if stats:
                for name, doc, attr in (
                    ("received", "datagrams handed to the STUN core", "received"),
                    ("binding_answered", "Binding requests answered", "answered"),
                    ("error_responses", "STUN error responses sent", "errors_sent"),
                    ("dropped", "STUN datagrams dropped", "dropped_malformed"),
                    ("rate_limited", "STUN answers not sent: the source prefix was over its "
                     "budget", "rate_limited"),
                ):
                    value = sum(int(getattr(st, attr)) for st in stats)
                    yield CounterMetricFamily(f"anchor_stun_{name}", doc, value=value)

    return _Collector()


class MetricsExporter:
    """Prometheus metrics over HTTP on the running asyncio loop (no thread).

    ``collectors`` are prometheus-client collectors (objects with ``collect()``); GET
    ``/metrics`` (or ``/``) answers the text exposition format, anything else 404.
    """

    def __init__(self, *collectors: Any) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        """The registry scraped (holding only ``collectors``)."""
        for collector in collectors:
            self.registry.register(collector)
        self.address: Address | None = None
        """The bound address, after :meth:`start`."""
        self._server: asyncio.Server | None = None

    async def start(self, address: Address) -> Address:
        """Listen on ``address``; returns the bound address."""
        self._server = await asyncio.start_server(
            self._handle, address[0], address[1], reuse_address=True
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        return self.address

    def render(self) -> bytes:
        """The current metrics, in the text exposition format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b"\r\n", 1)[0].split()
            path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
            if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and path in (b"/", b"/metrics"):
                from prometheus_client import CONTENT_TYPE_LATEST

                body = self.render()
                status, ctype = b"200 OK", CONTENT_TYPE_LATEST.encode()
                if parts[0] == b"HEAD":
                    writer.write(_http_head(status, ctype, len(body)))
                else:
                    writer.write(_http_head(status, ctype, len(body)) + body)
            else:
                body = b"not found\n"
                writer.write(_http_head(b"404 Not Found", b"text/plain", len(body)) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def open_sockets(self) -> int:
        """1 while listening, else 0."""
        return 1 if self._server is not None and self._server.is_serving() else 0

    def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Wait until the listener is closed."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


def _http_head(status: bytes, ctype: bytes, length: int) -> bytes:
    return b"".join((
        b"HTTP/1.1 ", status, b"\r\nContent-Type: ", ctype,
        b"\r\nContent-Length: ", str(length).encode(), b"\r\nConnection: close\r\n\r\n",
    ))


# ----------------------------------------------------------------------------- serving


def _backend(cfg: ServeConfig) -> tuple[CredentialBackend, list[SqliteUsers]]:
    backends: list[CredentialBackend] = []
    opened: list[SqliteUsers] = []
    try:
        if cfg.users:
            backends.append(StaticUsers(cfg.users, realm=cfg.realm))
        if cfg.users_db:
            db = _open_db(cfg.users_db, reload_interval=10.0)
            opened.append(db)
            backends.append(db)
        if cfg.secret:
            backends.append(RestSecret(cfg.secret, clock=time.time))
    except LocalProtocolError as exc:
        for db in opened:
            db.close()
        raise ServeError(str(exc)) from exc
    if len(backends) == 1:
        return backends[0], opened
    return ChainedBackend(*backends), opened  # none at all with --redis alone: Redis's users


def _open_db(path: str, *, reload_interval: float | None = None) -> SqliteUsers:
    import sqlite3

    try:
        return SqliteUsers(path, reload_interval=reload_interval)
    except sqlite3.Error as exc:
        raise ServeError(f"cannot open users database {path}: {exc}") from exc


def _admin(cfg: ServeConfig) -> None:
    """``--add-user`` / ``--remove-user`` / ``--list-users`` on ``--users-db``."""
    assert cfg.users_db is not None
    with _open_db(cfg.users_db) as db:
        for name, password in cfg.add_users.items():
            try:
                db.add_user(name, password, cfg.realm)
            except LocalProtocolError as exc:
                raise ServeError(f"--add-user {name}: {exc}") from exc
            print(f"added {name} (realm {cfg.realm})")
        for name in cfg.remove_users:
            try:
                found = db.remove_user(name, cfg.realm)
            except LocalProtocolError as exc:
                raise ServeError(f"--remove-user {name}: {exc}") from exc
            print(f"{'removed' if found else 'no such user'} {name} (realm {cfg.realm})")
        if cfg.list_users:
            for name, realm in db.users():
                print(f"{name}\t{realm}")


def signal_budget(connections: int) -> int:
    """Rendezvous connections (``--signal-max-connections`` when not given) of a server
    whose TCP/TLS connection budget is ``connections`` (:func:`~anchor_stun.aio.streams.
    resource_budget`): a quarter of it, which the TCP/TLS listeners then do without, so that
    the descriptors still add up to the limit."""
    return max(8, connections // 4)


def _rendezvous_collector(service: RendezvousServer) -> Any:
    """A prometheus-client collector of the rendezvous's bounds (read at scrape time)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            yield GaugeMetricFamily(
                "anchor_rendezvous_connections",
                "rendezvous connections held (WebSocket handshakes included)",
                value=service.connections(),
            )
            yield GaugeMetricFamily(
                "anchor_rendezvous_names", "names held on the rendezvous",
                value=len(service.names()),
            )
            yield CounterMetricFamily(
                "anchor_rendezvous_forwarded", "descriptions forwarded to their holder",
                value=service.forwarded,
            )
            for name, text, reasons, counts in (
                ("shed", "rendezvous connections closed by the server, by reason",
                 RENDEZVOUS_SHED_REASONS, service.shed),
                ("frames_dropped", "rendezvous frames not forwarded, by reason",
                 FRAME_DROP_REASONS, service.dropped),
            ):
                family = CounterMetricFamily(f"anchor_rendezvous_{name}", text, labels=["reason"])
                for reason in reasons:
                    family.add_metric([reason], counts[reason])
                yield family

    return _Collector()


async def start_side_services(
    cfg: ServeConfig,
    collectors: Sequence[Any],
    closers: list[Any],
    waiters: list[Any],
    lines: list[str],
    protect: Callable[[list[Address]], None] | None,
) -> None:
    """Start what serves beside the STUN/TURN listeners, for one process or for the
    supervisor of ``--workers``: ``/metrics`` (``--metrics``, from ``collectors``, and the
    rendezvous's) and the rendezvous (``--signal``, bounded by :func:`signal_budget`).
    Appends their closers, waiters and "listening" lines; their addresses go to ``protect``
    (the server never relays to itself)."""
    service: RendezvousServer | None = None
    if cfg.signal is not None:
        service = RendezvousServer(
            cfg.signal[0], cfg.signal[1], ssl=cfg.tls_context, allowed=cfg.signal_allow,
            auth_timeout=cfg.signal_auth_timeout,
            max_connections=cfg.signal_max_connections
            or signal_budget(resource_budget(nofile_limit())[0]),
            **_router(cfg, closers, waiters),
        )
        collectors = [*collectors, _rendezvous_collector(service)]
    if cfg.metrics is not None:
        exporter = MetricsExporter(*collectors)
        closers.append(exporter.close)
        waiters.append(exporter.wait_closed)
        try:
            bound = await exporter.start(cfg.metrics)
        except OSError as exc:
            raise ServeError(f"cannot serve metrics on {format_address(cfg.metrics)}: {exc}") from exc
        lines.append(f"metrics http {format_address(bound)}")
        if protect is not None:
            protect([bound])
    if cfg.signal is not None and service is not None:
        closers.append(service.close)
        waiters.append(service.wait_closed)
        try:
            bound = await service.start()
        except OSError as exc:
            raise ServeError(
                f"cannot serve the rendezvous on {format_address(cfg.signal)}: {exc}"
            ) from exc
        scheme = "wss" if cfg.tls_context is not None else "ws"
        lines.append(f"listening {scheme} {format_address(bound)}")
        if protect is not None:
            protect([bound])


async def _serve(cfg: ServeConfig, software: str, role: WorkerRole | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or, in a worker, until the supervisor goes away)."""
    loop = asyncio.get_running_loop()
    errors = LoopErrorFilter()
    errors.install(loop)
    connections, allocations = resource_budget(raise_nofile_limit())
    total_quota = cfg.total_quota or allocations
    user_quota = cfg.user_quota or min(DEFAULT_USER_QUOTA, max(1, total_quota // 4))
    limits = cfg.limits
    if limits.max_connections is None:
        if cfg.signal is not None and role is None:  # the rendezvous's share (signal_budget)
            connections -= cfg.signal_max_connections or signal_budget(connections)
        limits = dataclasses.replace(limits, max_connections=max(8, connections))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    closers: list[Callable[[], None]] = []
    waiters: list[Callable[[], Any]] = []
    turn_runner: TurnServerRunner | None = None
    stun_runners: list[StunServerRunner] = []
    dbs: list[SqliteUsers] = []
    lines: list[str] = []
    alternates: AlternateServers | None = None
    shared: Any = None
    try:
        budget = AnswerBudget()  # every STUN core's, in STUN-only mode (TURN: the core's)
        try:
            stun = StunServer(
                primary=cfg.listen[0], other=cfg.alt, software=software, budget=budget
            )
        except LocalProtocolError as exc:
            raise ServeError(str(exc)) from exc
        if cfg.turn:
            auth, dbs = _backend(cfg)
            if cfg.redis is not None:
                shared = _redis_store(cfg, user_quota=user_quota, total_quota=cfg.total_quota)
                closers.append(shared.close)
                auth = shared.credentials(auth, clock=time.time)
            try:
                allocator = UdpRelayAllocator(
                    cfg.relay_ips, min_port=cfg.min_port, max_port=cfg.max_port
                )
                external = ExternalAddresses(cfg.external_ips) if cfg.external_ips else None
                if cfg.alternates:
                    alternates = AlternateServers(
                        cfg.alternates, above=cfg.alternate_above, domain=cfg.alternate_domain
                    )
                core = TurnServer(
                    realm=cfg.realm,
                    auth=auth,
                    relay=allocator,
                    stun=stun,
                    software=software,
                    nonce_lifetime=cfg.nonce_lifetime,
                    user_quota=user_quota,
                    total_quota=total_quota,
                    address_families=tuple(Family(f) for f in allocator.families),
                    peer_filter=PeerFilter(
                        allow_loopback=cfg.allow_loopback_peers,
                        allow=cfg.allow_peers,
                        deny=cfg.deny_peers,
                    ),
                    strict_channels=cfg.strict_channels,
                    # coturn's keys in Redis are MD5: offered first, clients take it
                    # (RFC 8489 §9.2.5); SHA-256 stays available.
                    password_algorithms=(
                        (PasswordAlgorithmId.MD5, PasswordAlgorithmId.SHA256)
                        if cfg.redis is not None
                        else (PasswordAlgorithmId.SHA256, PasswordAlgorithmId.MD5)
                    ),
                    nonce_secret=role.nonce_secret if role is not None else None,
                    external=external,
                    alternates=alternates,
                    shared_quota=shared.quota if shared is not None else None,
                )
                turn_runner = TurnServerRunner(
                    core,
                    udp=cfg.listen[1:],
                    tcp=cfg.listen if cfg.tcp else (),
                    tls=[cfg.tls_address] if cfg.tls_address and cfg.tls_context else (),
                    tls_context=cfg.tls_context,
                    on_event=turn_event if cfg.verbose else None,
                    limits=limits,
                    external_ips=external.publics if external is not None else (),
                    serve_udp=cfg.udp,
                    reuse_port=role is not None,
                    shaper=RelayShaper(cfg.max_bps) if cfg.max_bps else None,
                )
            except LocalProtocolError as exc:
                raise ServeError(str(exc)) from exc
            closers.append(turn_runner.close)
            waiters.append(turn_runner.wait_closed)
            try:
                await turn_runner.start()
            except OSError as exc:
                raise ServeError(_listen_failure(exc, alt=cfg.alt)) from exc
            for kind, addr in turn_runner.listeners:
                lines.append(f"listening {kind} {format_address(addr)}")
            if shared is not None:
                shared.start(loop)
        else:
            for index, primary in enumerate(cfg.listen):
                core_stun = (
                    stun
                    if index == 0
                    else StunServer(primary=primary, software=software, budget=budget)
                )
                runner = StunServerRunner(core_stun, limits=limits, reuse_port=role is not None)
                stun_runners.append(runner)
                closers.append(runner.close)
                waiters.append(runner.wait_closed)
                try:
                    await runner.start(
                        tcp=cfg.tcp,
                        tls_context=cfg.tls_context if index == 0 else None,
                        tls_address=cfg.tls_address,
                    )
                except OSError as exc:
                    raise ServeError(_listen_failure(exc, primary, cfg.alt)) from exc
                for kind, addr in runner.listeners:
                    lines.append(f"listening {kind} {format_address(addr)}")
        final_turn = turn_runner
        collector = _stats_collector(
            lambda: final_turn.core if final_turn is not None else None,
            lambda: [r.core.stats for r in stun_runners] or [stun.stats],
            lambda: final_turn,
            errors,
            lambda: [final_turn.guard] if final_turn is not None else [
                r.guard for r in stun_runners
            ],
        )
        protect = turn_runner.protect if turn_runner is not None else None
        await start_side_services(
            cfg, (collector,) if cfg.metrics is not None else (), closers, waiters, lines, protect
        )
        if role is not None:
            if turn_runner is not None:
                turn_runner.protect(role.protect)
            role.start(stop, collector)
            closers.append(role.close)
        for line in lines:
            print(line, flush=True)
        log_event("started", "serving", listeners=[line.split(" ", 1)[1] for line in lines],
                  turn=turn_runner is not None)  # fmt: skip
        if role is not None:
            role.ready()
        await stop.wait()
        held = turn_runner.core.allocation_count() if turn_runner is not None else 0
        log_event("stopping", f"stopping ({held} allocations held)", allocations=held,
                  drain=cfg.drain)  # fmt: skip
        if cfg.drain > 0 and turn_runner is not None:
            await _drain(turn_runner.core, alternates, cfg.drain)
    finally:
        for close in closers:
            close()
        for wait in waiters:
            await wait()
        for db in dbs:
            db.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log_event("stopped", "stopped")


async def _drain(core: TurnServer, alternates: AlternateServers | None, seconds: float) -> None:
    """``--drain``: redirect new allocations (RFC 8489 §10) and wait, up to ``seconds``, for
    the ones held to end; a second SIGTERM does not cut it short (the supervisor's does)."""
    if alternates is not None:
        alternates.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while core.allocation_count() and loop.time() < deadline:
        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))


def _redis_store(cfg: ServeConfig, *, user_quota: int, total_quota: int | None) -> Any:
    """The Redis-backed shared state of ``--redis`` (quotas, users, REST secrets)."""
    assert cfg.redis is not None
    try:
        from anchor_turn.aio.redis_store import RedisStore
    except ImportError as exc:  # the `redis` package is the `server` extra
        raise ServeError(f"--redis needs the redis package (pip install anchor-nat[server]): "
                         f"{exc}") from exc
    try:
        return RedisStore(
            cfg.redis, realm=cfg.realm, user_quota=user_quota, total_quota=total_quota
        )
    except LocalProtocolError as exc:
        raise ServeError(f"--redis: {exc}") from exc


def _router(
    cfg: ServeConfig, closers: list[Callable[[], None]], waiters: list[Callable[[], Any]]
) -> dict[str, Any]:
    """The rendezvous router of ``--redis`` (names held on other instances), or none."""
    if cfg.redis is None:
        return {}
    try:
        from anchor_cli.redis_router import RedisRouter
    except ImportError as exc:
        raise ServeError(f"--redis needs the redis package (pip install anchor-nat[server]): "
                         f"{exc}") from exc
    router = RedisRouter(cfg.redis)
    closers.append(router.close)
    waiters.append(router.wait_closed)
    return {"router": router}


def run_serve(
    args: argparse.Namespace,
    *,
    software: str = "anchor",
) -> int:
    """Run ``anchor serve`` with the parsed ``args``; returns the exit status (0 after
    SIGINT/SIGTERM or a users-database command, 2 after a mistake reported on stderr)."""
    configure_logging(getattr(args, "log_format", None))
    try:
        cfg = build_config(args)
        if getattr(args, "log_format", None) is None:  # from --config
            configure_logging(cfg.log_format)
        if cfg.admin:
            _admin(cfg)
            return 0
        if cfg.workers > 1:
            from anchor_cli.serve_workers import run_supervisor

            return run_supervisor(cfg, args, software)
        asyncio.run(_serve(cfg, software))
    except ServeError as exc:
        report_error(f"anchor serve: {exc}")
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
