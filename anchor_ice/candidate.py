"""ICE candidates: the model, priorities and foundations (RFC 8445 §5.1), SDP lines (RFC 8839).

A :class:`Candidate` is a transport address with its type (host, srflx, prflx, relay), the
component it serves, its priority and foundation, and for reflexive and relayed candidates
the related address (the base, or the mapped address for relayed ones). It is immutable.

``Candidate.to_sdp()`` / ``Candidate.from_sdp()`` write and read the ``candidate:`` attribute
of RFC 8839 §5.1 (with or without the leading ``a=``), including ``raddr``/``rport``,
``tcptype`` and any extension pairs (Chrome's ``generation``, ``ufrag``, ``network-id`` ...),
which are kept in order. Parsing raises :class:`CandidateError` (a DecodeError) only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum

from anchor_stun.address import count
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address

__all__ = [
    "COMPONENT_RTP",
    "DEFAULT_LOCAL_PREFERENCE",
    "TYPE_PREFERENCE",
    "Candidate",
    "CandidateError",
    "CandidateType",
    "candidate_priority",
    "check_candidate",
    "compute_foundation",
    "make_candidate",
    "pair_priority",
]


class CandidateType(StrEnum):
    """Candidate types (RFC 8445 §5.1.1, RFC 8839 §5.1 ``typ``)."""

    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


TYPE_PREFERENCE = {  # RFC 8445 §5.1.2.2 recommended values
    CandidateType.HOST: 126,
    CandidateType.PRFLX: 110,
    CandidateType.SRFLX: 100,
    CandidateType.RELAY: 0,
}
DEFAULT_LOCAL_PREFERENCE = 65535  # RFC 8445 §5.1.2.1, single-homed agent
COMPONENT_RTP = 1  # RFC 8445 §4: the first component


_ADDRESS = re.compile(r"[A-Za-z0-9.:%-]+")  # IPv4, IPv6 (with a zone), FQDN (RFC 8866 §9)


_MAX_PRIORITY = 0xFFFFFFFF  # RFC 8445 §5.1.2: a 32-bit priority


def check_candidate(candidate: object, what: str = "candidate") -> Candidate:
    """A :class:`Candidate` given to an API (not parsed from the network) checked where it
    enters: its fields of the types and ranges RFC 8445 §5.1 and RFC 8839 §5.1 give, else
    :class:`LocalProtocolError` naming ``what`` and the field."""
    if not isinstance(candidate, Candidate):
        raise LocalProtocolError(
            f"{what} must be a Candidate or its 'candidate:' SDP line, not"
            f" {type(candidate).__name__}"
        )
    c = candidate
    if not isinstance(c.foundation, str) or not 1 <= len(c.foundation) <= 32:
        raise LocalProtocolError(f"{what}: foundation must be 1-32 characters, not {c.foundation!r}")
    count(c.component, f"{what}: component", 1, 256)
    count(c.priority, f"{what}: priority", 1, _MAX_PRIORITY)
    count(c.port, f"{what}: port", 0, 0xFFFF)
    if not isinstance(c.transport, str) or not c.transport:
        raise LocalProtocolError(f"{what}: transport must be 'udp' or 'tcp', not {c.transport!r}")
    if c.type not in TYPE_PREFERENCE:
        raise LocalProtocolError(
            f"{what}: type must be a CandidateType ({', '.join(CandidateType)}), not {c.type!r}"
        )
    # A name (mDNS, FQDN) is kept, never resolved: such a candidate does not pair (its
    # family is 0, RFC 8445 §6.1.2.2).
    if not isinstance(c.ip, str) or not c.ip:
        raise LocalProtocolError(f"{what}: ip must be an IP address (text), not {c.ip!r}")
    if c.related_ip is not None and not isinstance(c.related_ip, str):
        raise LocalProtocolError(
            f"{what}: related_ip must be an IP address (text) or None, not {c.related_ip!r}"
        )
    if c.related_port is not None:
        count(c.related_port, f"{what}: related_port", 0, 0xFFFF)
    return c


class CandidateError(DecodeError):
    """A ``candidate:`` line that does not follow RFC 8839 §5.1."""


def candidate_priority(
    type_: CandidateType | str,
    component: int = COMPONENT_RTP,
    local_preference: int = DEFAULT_LOCAL_PREFERENCE,
    type_preference: int | None = None,
) -> int:
    """``2^24 * type pref + 2^8 * local pref + (256 - component)`` (RFC 8445 §5.1.2.1);
    :class:`LocalProtocolError` naming an argument out of its range."""
    if type_preference is None:
        try:
            type_preference = TYPE_PREFERENCE[CandidateType(type_)]
        except ValueError:
            raise LocalProtocolError(
                f"type_ must be a CandidateType ({', '.join(CandidateType)}), not {type_!r}"
            ) from None
    count(type_preference, "type_preference (RFC 8445 §5.1.2.1)", 0, 126)
    count(local_preference, "local_preference (RFC 8445 §5.1.2.1)", 0, 65535)
    count(component, "component (RFC 8445 §4)", 1, 256)
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


def pair_priority(controlling: int, controlled: int) -> int:
    """``2^32 * min(G, D) + 2 * max(G, D) + (G > D)`` where G is the controlling agent's
    candidate priority and D the controlled agent's (RFC 8445 §6.1.2.3); both 32-bit
    unsigned integers (:class:`LocalProtocolError` naming the other)."""
    if not (0 <= controlling <= _MAX_PRIORITY and 0 <= controlled <= _MAX_PRIORITY):
        count(controlling, "controlling (a candidate priority)", 0, _MAX_PRIORITY)
        count(controlled, "controlled (a candidate priority)", 0, _MAX_PRIORITY)
    return (min(controlling, controlled) << 32) + 2 * max(controlling, controlled) + (
        1 if controlling > controlled else 0
    )


def compute_foundation(
    type_: CandidateType | str,
    base_ip: str,
    transport: str = "udp",
    server_ip: str | None = None,
    server_transport: str = "udp",
) -> str:
    """Equal for candidates of the same type, base IP, STUN/TURN server and transport
    (RFC 8445 §5.1.1.3: "the transport protocol used to obtain them": ``server_transport``,
    the client's leg to the server, "udp", "tcp" or "tls"). Short, stable, ``ice-char`` only
    (RFC 8839 §5.1)."""
    key = f"{type_}|{base_ip}|{transport.lower()}|{server_ip or ''}"
    if server_transport != "udp":
        key += f"|{server_transport}"
    return str(int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big"))


@dataclass(frozen=True, slots=True)
class Candidate:
    """An ICE candidate (RFC 8445 §5.1) as exchanged in SDP (RFC 8839 §5.1)."""

    foundation: str
    """Groups candidates for frozen-pair unfreezing (RFC 8445 §5.1.1.3)."""
    component: int
    """Component id, 1 for the first (RFC 8445 §4)."""
    transport: str
    """"udp" (or "tcp" for RFC 6544 candidates)."""
    priority: int
    """Candidate priority (RFC 8445 §5.1.2)."""
    ip: str
    """Connection address."""
    port: int
    """Port."""
    type: CandidateType
    """host, srflx, prflx or relay."""
    related_ip: str | None = None
    """``raddr``: the base of a reflexive candidate, the mapped address of a relayed one."""
    related_port: int | None = None
    """``rport``."""
    tcptype: str | None = None
    """``tcptype`` of RFC 6544 (active, passive, so)."""
    extensions: tuple[tuple[str, str], ...] = field(default=())
    """Other ``name value`` pairs after the standard fields, in order."""

    @property
    def address(self) -> Address:
        """(ip, port)."""
        return (self.ip, self.port)

    @property
    def is_host(self) -> bool:
        """True for a host candidate (the ones the gateway policy never nominates)."""
        return self.type == CandidateType.HOST

    def with_priority(self, priority: int) -> Candidate:
        """The same candidate with another priority."""
        return replace(self, priority=priority)

    def to_sdp(self) -> str:
        """The ``candidate:...`` attribute value (without ``a=``), RFC 8839 §5.1."""
        parts = [
            f"candidate:{self.foundation}",
            str(self.component),
            self.transport.upper() if self.transport.lower() == "udp" else self.transport,
            str(self.priority),
            self.ip,
            str(self.port),
            "typ",
            str(self.type),
        ]
        if self.related_ip is not None:
            parts += ["raddr", self.related_ip]
        if self.related_port is not None:
            parts += ["rport", str(self.related_port)]
        if self.tcptype is not None:
            parts += ["tcptype", self.tcptype]
        for name, value in self.extensions:
            parts += [name, value]
        return " ".join(parts)

    @classmethod
    def from_sdp(cls, line: str) -> Candidate:
        """Parse a candidate attribute (RFC 8839 §5.1) with or without its prefix:
        ``a=candidate:...``, ``candidate:...`` or the value alone (aioice's form); raises
        :class:`CandidateError`."""
        text = line.strip()
        if text.startswith("a="):
            text = text[2:]
        text = text.removeprefix("candidate:")
        fields = text.split()
        if len(fields) < 8 or fields[6] != "typ":
            raise CandidateError(f"malformed candidate line: {line!r}", field="candidate")
        foundation, component, transport, priority, ip, port = fields[:6]
        try:
            type_ = CandidateType(fields[7])
        except ValueError:
            raise CandidateError(f"unknown candidate type {fields[7]!r}", field="typ") from None
        if not 1 <= len(foundation) <= 32:
            raise CandidateError("foundation must be 1-32 characters", field="foundation")
        if not _ADDRESS.fullmatch(ip):  # an IP address or an mDNS / DNS name (RFC 8839 §5.1)
            raise CandidateError(f"bad connection-address {ip!r}", field="connection-address")
        if not all(f.isascii() and f.isdigit() for f in (component, priority, port)):
            raise CandidateError(f"non-numeric field in {line!r}", field="candidate")
        comp, prio, port_num = int(component), int(priority), int(port)
        if not 1 <= comp <= 256 or not 0 < prio < 2**32 or not 0 <= port_num <= 65535:
            raise CandidateError(f"field out of range in {line!r}", field="candidate")
        rest = fields[8:]
        if len(rest) % 2:
            raise CandidateError(f"dangling extension in {line!r}", field="candidate")
        related_ip: str | None = None
        related_port: int | None = None
        tcptype: str | None = None
        extensions: list[tuple[str, str]] = []
        for name, value in zip(rest[::2], rest[1::2], strict=True):
            if name == "raddr":
                related_ip = value
            elif name == "rport":
                if not (value.isascii() and value.isdigit()) or int(value) > 65535:
                    raise CandidateError(f"bad rport {value!r}", field="rport")
                related_port = int(value)
            elif name == "tcptype":
                tcptype = value
            else:
                extensions.append((name, value))
        return cls(
            foundation=foundation,
            component=comp,
            transport=transport.lower(),
            priority=prio,
            ip=ip,
            port=port_num,
            type=type_,
            related_ip=related_ip,
            related_port=related_port,
            tcptype=tcptype,
            extensions=tuple(extensions),
        )

    @property
    def is_mdns(self) -> bool:
        """True when the address is an mDNS name (``*.local``) rather than an IP."""
        return self.ip.endswith(".local")

    @property
    def family(self) -> int:
        """4 or 6 (0 for an mDNS name)."""
        if self.is_mdns:
            return 0
        try:
            return ipaddress.ip_address(self.ip).version
        except ValueError:
            return 0


def make_candidate(
    type_: CandidateType | str,
    address: Address,
    *,
    base: Address | None = None,
    related: Address | None = None,
    component: int = COMPONENT_RTP,
    transport: str = "udp",
    server_ip: str | None = None,
    local_preference: int = DEFAULT_LOCAL_PREFERENCE,
    server_transport: str = "udp",
) -> Candidate:
    """A candidate with its RFC priority and foundation computed; ``base`` is the local
    address it was gathered from (RFC 8445 §5.1.1), ``related`` goes into raddr/rport,
    ``server_transport`` is how the STUN/TURN server was reached (RFC 8445 §5.1.1.3)."""
    kind = CandidateType(type_)
    base_ip = (base or address)[0]
    return Candidate(
        foundation=compute_foundation(kind, base_ip, transport, server_ip, server_transport),
        component=component,
        transport=transport,
        priority=candidate_priority(kind, component, local_preference),
        ip=address[0],
        port=address[1],
        type=kind,
        related_ip=related[0] if related else None,
        related_port=related[1] if related else None,
    )
