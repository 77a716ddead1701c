"""TURN server URIs (RFC 7065): ``turn:HOST[:PORT][?transport=udp|tcp]`` and ``turns:...``.

RFC 7065 §3.1 grammar::

    turnURI   = scheme ":" host [ ":" port ] [ "?transport=" transport ]
    scheme    = "turn" / "turns"
    transport = "udp" / "tcp" / transport-ext

The client-server transport follows from the scheme and the ``transport`` parameter (§3.2):
``turn:`` is UDP unless ``?transport=tcp``; ``turns:`` is TLS over TCP (``?transport=tcp``
says the same); ``turns:...?transport=udp`` would be DTLS (RFC 7350), which Anchor does not
speak. The default port is 3478 for ``turn`` and 5349 for ``turns`` (RFC 8656 §3.1). Plain
``HOST[:PORT]`` (no scheme) is accepted for compatibility and means UDP. The relayed transport
is UDP in every case (RFC 8656 §3.1): only the client's leg to the server changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from anchor_stun.address import is_host, is_ip
from anchor_stun.errors import LocalProtocolError

__all__ = ["DEFAULT_TURNS_PORT", "DEFAULT_TURN_PORT", "TurnUri", "parse_turn_uri"]

DEFAULT_TURN_PORT = 3478  # RFC 8656 §3.1 (UDP and TCP)
DEFAULT_TURNS_PORT = 5349  # RFC 8656 §3.1 (TLS)

ClientTransport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True, slots=True)
class TurnUri:
    """A parsed TURN URI (RFC 7065 §3.1)."""

    host: str
    """The host: an IP literal (brackets removed) or a name."""
    port: int
    """The port, the scheme's default when the URI has none."""
    transport: ClientTransport
    """The client-server transport: "udp", "tcp" or "tls" (RFC 7065 §3.2)."""

    @property
    def secure(self) -> bool:
        """True for ``turns:`` (TLS)."""
        return self.transport == "tls"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.transport == "tls":
            return f"turns:{host}:{self.port}"
        if self.transport == "tcp":
            return f"turn:{host}:{self.port}?transport=tcp"
        return f"turn:{host}:{self.port}"


def _host_port(text: str, default_port: int, uri: str) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise LocalProtocolError(f"bad TURN URI {uri!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise LocalProtocolError(f"bad TURN URI {uri!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:  # an IPv6 literal without brackets: RFC 3986 wants them
        raise LocalProtocolError(f"bad TURN URI {uri!r}: put an IPv6 address in brackets")
    bracketed = text.startswith("[")
    if not host or not is_host(host) or bracketed != (":" in host and is_ip(host)):
        raise LocalProtocolError(
            f"bad TURN URI {uri!r}: no usable host (an IP address, [an IPv6 address] or a"
            " host name)"
        )
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise LocalProtocolError(f"bad port in TURN URI {uri!r}")
    return host, int(port_text)


def parse_turn_uri(uri: str) -> TurnUri:
    """Parse ``turn:``/``turns:`` URIs (RFC 7065 §3.1) and plain ``HOST[:PORT]`` (UDP).
    Raises :class:`~anchor_stun.errors.LocalProtocolError` with a one-line reason when the
    text is not one, or asks for a transport Anchor does not speak (DTLS, anything but
    udp/tcp)."""
    if not isinstance(uri, str):
        raise LocalProtocolError(
            f"uri must be text ('turn:HOST:PORT', 'turns:HOST', 'HOST:PORT'), not {uri!r}"
        )
    text = uri.strip()
    lowered = text.lower()
    if lowered.startswith(("turn:", "turns:")):
        scheme, rest = text.split(":", 1)
        secure = scheme.lower() == "turns"
        if rest.startswith("//"):
            raise LocalProtocolError(f"bad TURN URI {uri!r}: no '//' after the scheme (RFC 7065)")
        hostport, _, query = rest.partition("?")
        transport: ClientTransport = "tls" if secure else "udp"
        if query:
            key, eq, value = query.partition("=")
            if key.lower() != "transport" or not eq:
                raise LocalProtocolError(f"bad TURN URI {uri!r}: only ?transport= is defined")
            value = value.lower()
            if value == "tcp":
                transport = "tls" if secure else "tcp"
            elif value == "udp":
                if secure:
                    raise LocalProtocolError(
                        f"TURN URI {uri!r} asks for DTLS (turns with transport=udp, RFC 7350): "
                        "not supported; use turns: (TLS) or turn: (UDP)"
                    )
            else:
                raise LocalProtocolError(f"TURN URI {uri!r}: unknown transport {value!r}")
        port = DEFAULT_TURNS_PORT if secure else DEFAULT_TURN_PORT
        host, number = _host_port(hostport, port, uri)
        return TurnUri(host, number, transport)
    if "://" in text or text.lower().startswith("stun"):
        raise LocalProtocolError(f"bad TURN URI {uri!r}: expected turn:, turns: or HOST:PORT")
    host, number = _host_port(text, DEFAULT_TURN_PORT, uri)
    return TurnUri(host, number, "udp")
