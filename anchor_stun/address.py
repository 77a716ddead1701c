"""Arguments checked where they enter: addresses, ports, credentials, timeouts (sans-I/O).

One parser for every public entry point of every package, cores and adapters alike, so that a
server's address is accepted the same way everywhere: ``(host, port)`` or the text
``"host:port"`` (``"[v6]:port"`` for IPv6 with a port, RFC 3986 §3.2.2; a bare ``"v6"`` or
``"host"`` takes the default port, 3478 for STUN and TURN, RFC 8489 §6.2.4). Anything else
raises :class:`~anchor_stun.errors.LocalProtocolError` naming the argument and the accepted
forms, before anything is sent.

Nothing here resolves a name (no DNS, no socket): a host is checked for its form only, an IP
literal or a host name (RFC 1123 §2.1). A core, which must not resolve either, asks for an IP
literal (``ip_only=True``); the asyncio adapters accept host names and resolve them later.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from anchor_stun.attributes import Software, pack_ip, unpack_ip
from anchor_stun.errors import LocalProtocolError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "canonical_ip",
    "count",
    "credential",
    "ip_address_list",
    "is_host",
    "is_ip",
    "option_mapping",
    "parse_address",
    "port_number",
    "positive_timeout",
    "seconds",
    "server_address",
    "server_list",
    "software_value",
]

DEFAULT_PORT = 3478  # RFC 8489 §6.2.4 (UDP/TCP)
DEFAULT_TLS_PORT = 5349  # RFC 8489 §6.2.4 (TLS)

_LABEL = re.compile(r"(?!-)[\w-]{1,63}(?<!-)\Z")


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 literal (an IPv6 one may carry a ``%zone``)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_host(text: str) -> bool:
    """Whether ``text`` has the form of a host: an IP literal, or a host name of dot-separated
    labels of 1-63 letters, digits, hyphens or underscores (RFC 1123 §2.1; at most 253
    characters, an optional final dot) whose last label is not all digits (RFC 3696 §2: that
    would be a malformed IPv4 address). Its form only: nothing is resolved."""
    if is_ip(text):
        return True
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def parse_address(
    text: str, default_port: int | None = None, *, zero: bool = False
) -> tuple[str, int]:
    """Split ``host[:port]`` / ``[v6]:port`` / ``v6``; ``default_port`` when there is no port
    (none: the port is required). The host must be an IP literal or a host name
    (:func:`is_host`; bracketed or with several colons, an IPv6 literal); the port 1-65535
    (0 too with ``zero``: "any free port", for a listener). Raises ValueError with a clear
    message (TypeError for a ``text`` that is no string)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string 'host:port', not {type(text).__name__}")
    host, port_text, has_port = text, "", False
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port_text, has_port = rest[1:], True
        if host and (":" not in host or not is_ip(host)):
            raise ValueError(f"bad address {text!r}: {host!r} in brackets is not an IPv6 address")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        has_port = True
    elif ":" in text and not is_ip(text):
        raise ValueError(
            f"bad address {text!r}: not an IPv6 address (with a port: '[v6]:port')"
        )
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not is_host(host):
        raise ValueError(f"bad address {text!r}: {host!r} is neither an IP address nor a host name")
    if has_port:
        low = 0 if zero else 1
        if not port_text.isdigit() or not low <= int(port_text) < 65536:
            raise ValueError(f"bad port in {text!r}")
        return host, int(port_text)
    if default_port is None:
        raise ValueError(f"address {text!r} needs a port")
    return host, default_port


def server_address(
    value: object,
    what: str = "server",
    default_port: int | None = DEFAULT_PORT,
    *,
    ip_only: bool = False,
    zero: bool = False,
) -> tuple[str, int]:
    """A server's address given as ``(host, port)`` or as text (``host[:port]``,
    ``[v6]:port``), checked where it enters: :class:`LocalProtocolError` naming ``what`` and
    the accepted forms for anything else (a bad type, a host of no host's form, a port out of
    range). ``ip_only``: the host must be an IP literal (a core's address: cores resolve
    nothing). ``zero``: port 0 ("any free port") is accepted too (a listener's address)."""
    forms = (
        f"{what} must be an IP address and port, (ip, port) or 'ip:port'"
        if ip_only
        else f"{what} must be (host, port) or 'host:port'"
    )
    if isinstance(value, str):
        try:
            address = parse_address(value, default_port, zero=zero)
        except ValueError as exc:
            raise LocalProtocolError(f"{forms}: {exc}") from None
    elif (
        isinstance(value, tuple | list)
        and len(value) in (2, 4)  # (host, port) or an IPv6 sockaddr (host, port, flow, scope)
        and all(isinstance(v, int) for v in value[2:])
        and isinstance(value[0], str)
        and value[0]
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        low = 0 if zero else 1
        if not low <= value[1] < 65536:
            raise LocalProtocolError(f"{forms}: port {value[1]} out of range {low}-65535")
        if not is_host(value[0]):
            raise LocalProtocolError(
                f"{forms}: {value[0]!r} is neither an IP address nor a host name"
            )
        address = (value[0], value[1])
    else:
        raise LocalProtocolError(f"{forms}, not {value!r}")
    if ip_only and not is_ip(address[0]):
        raise LocalProtocolError(
            f"{forms}: {address[0]!r} is not an IP address (resolve a host name first)"
        )
    return address


def server_list(
    value: object,
    what: str = "servers",
    default_port: int | None = DEFAULT_PORT,
    *,
    ip_only: bool = False,
) -> list[tuple[str, int]]:
    """Servers given as ``None``, one address (``(host, port)`` or ``"host[:port]"``) or an
    iterable of addresses, each checked by :func:`server_address` (the error names
    ``what[i]``). A string is one address, never an iterable of characters."""
    if value is None:
        return []
    if isinstance(value, str) or (
        isinstance(value, tuple)
        and len(value) == 2
        and not isinstance(value[1], tuple | list)
        and not (isinstance(value[1], str) and not value[1].strip().isdigit())
    ):  # one address: ("host", 3478), or a malformed one such as ("host", "3478")
        return [server_address(value, what, default_port, ip_only=ip_only)]
    if isinstance(value, bytes | bytearray | dict) or not isinstance(value, Iterable):
        raise LocalProtocolError(
            f"{what} must be (host, port), 'host:port' or a list of them, not {value!r}"
        )
    return [
        server_address(item, f"{what}[{i}]", default_port, ip_only=ip_only)
        for i, item in enumerate(value)
    ]


def ip_address_list(value: object, what: str = "host_ips") -> list[str] | None:
    """``None`` or an iterable of IP literals (local addresses to bind: ``"192.0.2.1"``,
    ``"::1"``, ``"fe80::1%eth0"``), checked where they enter: :class:`LocalProtocolError`
    naming ``what`` (or ``what[i]``) otherwise. Host names are refused: binding one would
    resolve it."""
    if value is None:
        return None
    if isinstance(value, str | bytes | bytearray | dict) or not isinstance(value, Iterable):
        raise LocalProtocolError(
            f"{what} must be a list of IP addresses (['192.0.2.1', '::1']), not {value!r}"
        )
    ips = list(value)
    for i, ip in enumerate(ips):
        if not isinstance(ip, str) or not is_ip(ip):
            raise LocalProtocolError(f"{what}[{i}] must be an IP address, not {ip!r}")
    return ips


def credential(value: object, what: str) -> str:
    """A user name or password checked where it enters: a non-empty string, else
    :class:`LocalProtocolError` naming ``what`` (the value itself is never echoed)."""
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be a non-empty string, not {type(value).__name__}")
    if not value:
        raise LocalProtocolError(f"{what} must be a non-empty string, not ''")
    return value


def port_number(value: object, what: str = "port", *, zero: bool = False) -> int:
    """A port number checked where it enters: an ``int`` in 1-65535 (or 0, "any free port",
    with ``zero``), else :class:`LocalProtocolError` naming ``what``."""
    low = 0 if zero else 1
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= 0xFFFF:
        return value
    any_port = " (0: any free port)" if zero else ""
    raise LocalProtocolError(
        f"{what} must be a port number {low}-65535{any_port}, not {value!r}"
    )


def positive_timeout(value: object, what: str = "timeout") -> float | None:
    """``None`` or a positive number of seconds, else :class:`LocalProtocolError` naming
    ``what``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise LocalProtocolError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


def seconds(value: object, what: str, *, zero: bool = False) -> float:
    """A number of seconds checked where it enters: positive (or also 0 with ``zero``), else
    :class:`LocalProtocolError` naming ``what``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if zero else value > 0)
    ):
        kind = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise LocalProtocolError(f"{what} must be {kind}, not {value!r}")
    return float(value)


def count(value: object, what: str, low: int = 1, high: int | None = None) -> int:
    """A whole number checked where it enters: an ``int`` in ``low``-``high`` (no upper bound
    when ``high`` is None), else :class:`LocalProtocolError` naming ``what``."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and low <= value
        and (high is None or value <= high)
    ):
        return value
    bounds = f">= {low}" if high is None else f"{low}-{high}"
    raise LocalProtocolError(f"{what} must be an integer {bounds}, not {value!r}")


def option_mapping(
    value: object, what: str, accepted: Collection[str], example: str
) -> dict[str, Any]:
    """Keyword options passed on to another constructor (``agent_options=``,
    ``connection_options=``), checked where they enter: None (none) or a mapping whose keys
    are all in ``accepted``, else :class:`LocalProtocolError` naming ``what`` with ``example``
    (say ``"{'check_rc': 3}"``) or the names accepted. The values are the receiver's to
    check."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LocalProtocolError(
            f"{what} must be a mapping of options ({example}), not {type(value).__name__}"
        )
    for key in value:
        if key not in accepted:
            raise LocalProtocolError(
                f"{what}: {key!r} is not an option left open here (those are: "
                f"{', '.join(sorted(accepted))})"
            )
    return dict(value)


def software_value(value: object, what: str = "software") -> str | None:
    """None or a SOFTWARE value (RFC 8489 §14.14: UTF-8, at most 763 bytes) checked where it
    enters, else :class:`LocalProtocolError` naming ``what``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be a string or None, not {value!r}")
    try:
        Software(value).encode_value(b"")
    except (UnicodeError, LocalProtocolError) as exc:
        raise LocalProtocolError(f"{what} is not a valid SOFTWARE value: {exc}") from None
    return value


def canonical_ip(ip: str) -> str:
    """The text form the cores use for an IP literal (``"::ffff:1.2.3.4"``-style spellings and
    letter case made one, a zone suffix ``%eth0`` dropped), so that addresses from sockets and
    from messages compare equal; :class:`LocalProtocolError` for anything not an IP."""
    family, packed = pack_ip(ip.split("%", 1)[0])
    return unpack_ip(family, packed)
