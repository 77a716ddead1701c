"""External (public) addresses of a TURN server behind a 1:1 NAT, as coturn's
``--external-ip PUBLIC[/PRIVATE]`` (RFC 8656 §7.2: the relayed transport address a client is
given must be one peers can reach).

Theory of operation
-------------------
A server on a cloud instance binds its relay sockets on a private address (10.0.0.5) that a
1:1 NAT maps to a public one (203.0.113.7), port for port. Peers must be told the public
address, so the XOR-RELAYED-ADDRESS of an Allocate success response names
``PUBLIC:port`` for a relay bound on ``PRIVATE:port``. :class:`ExternalAddresses` holds the
mappings: ``PUBLIC/PRIVATE`` maps that private IP; a bare ``PUBLIC`` maps every relay IP of
its address family that no ``PUBLIC/PRIVATE`` pair names (coturn: "if only one address is
given, it is used for all relays"). XOR-MAPPED-ADDRESS needs no mapping: it is the client's
address as the server sees it, which for a client outside is already its public one. The
core keeps the private (bound) address everywhere else: relaying, events, metrics.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address

__all__ = ["ExternalAddresses"]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        parsed = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise LocalProtocolError(f"external IP {text!r} is not an IP address") from None
    if parsed.is_unspecified or parsed.is_multicast:
        raise LocalProtocolError(f"external IP {text} must be a unicast address")
    return parsed


class ExternalAddresses:
    """Public addresses advertised for relays bound on private ones (coturn's
    ``--external-ip``; RFC 8656 §7.2). ``specs`` are ``PUBLIC`` or ``PUBLIC/PRIVATE``
    strings; raises :class:`LocalProtocolError` on a malformed one, on two public addresses
    for one private address or family, and on a pair of mixed families."""

    def __init__(self, specs: Iterable[str]) -> None:
        self._by_private: dict[str, str] = {}
        self._by_family: dict[int, str] = {}
        for spec in specs:
            public_text, sep, private_text = spec.partition("/")
            public = _ip(public_text)
            if sep:
                private = _ip(private_text)
                if private.version != public.version:
                    raise LocalProtocolError(f"external IP {spec}: mixed address families")
                if str(private) in self._by_private:
                    raise LocalProtocolError(f"external IP {spec}: {private} mapped twice")
                self._by_private[str(private)] = str(public)
            else:
                if public.version in self._by_family:
                    raise LocalProtocolError(
                        f"external IP {spec}: one bare IPv{public.version} address at most"
                    )
                self._by_family[public.version] = str(public)

    def __bool__(self) -> bool:
        return bool(self._by_private or self._by_family)

    @property
    def publics(self) -> list[str]:
        """Every public address (the server answers there too: "myself", RFC 8656 §21)."""
        return list(dict.fromkeys([*self._by_private.values(), *self._by_family.values()]))

    @property
    def privates(self) -> list[str]:
        """The private addresses named by ``PUBLIC/PRIVATE`` pairs."""
        return list(self._by_private)

    def public_ip(self, ip: str) -> str:
        """The address peers reach ``ip`` at (``ip`` itself when it is not mapped)."""
        mapped = self._by_private.get(ip)
        if mapped is not None:
            return mapped
        if self._by_family:
            try:
                version = ipaddress.ip_address(ip).version
            except ValueError:
                return ip
            return self._by_family.get(version, ip)
        return ip

    def public(self, addr: Address) -> Address:
        """``addr`` (a relayed transport address) as peers reach it: same port."""
        return (self.public_ip(addr[0]), addr[1])
