"""Where a TURN client may send through the relay: the peer filter and the "myself" set
(RFC 8656 §10.2, §11.2, §12.2 "MAY impose restrictions", §21).

Theory of operation
-------------------
:class:`~anchor_turn.server.TurnServer` asks two questions before it installs a permission,
binds a channel or relays a Send indication, and refuses (403) or drops when either says no:

* **Is the peer's IP allowed?** :class:`PeerFilter` (or any ``Callable[[str], bool]`` given
  as ``peer_filter``) judges an IP string. By default it refuses the ranges no relay should
  reach from the Internet (loopback, RFC 1918, carrier-grade NAT where cloud metadata
  services live, link-local, multicast, ...; the list is in the class docstring), and an IPv6
  address that carries an IPv4 address is judged as that IPv4 address too. A verdict depends
  only on the IP and on the filter's configuration, which is fixed at construction: verdicts
  are kept (at most 65,536, all forgotten at once when full) for as long as the filter lives.
* **Is the peer the server itself?** :class:`SelfAddresses` is the set of transport
  addresses the server answers on: every listener and, for a wildcard listener (0.0.0.0,
  ``::``), every host and external address the adapter declares on its port plus the whole
  loopback range on that port. Relaying to one of them would loop traffic back into the
  server. Addresses are compared in one form (:func:`canonical_address`, and an
  IPv4-mapped IPv6 address as the IPv4 address it maps). The allocation's own relayed
  addresses are "myself" too; the server checks those, since they belong to the allocation.

Relayed addresses of *other* allocations are not "myself": two clients of one server talking
relay to relay is normal. Both classes are sans-I/O and never raise on network input (a
string that is not an IP is refused by the filter and is no listener).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from anchor_stun.address import server_address
from anchor_stun.attributes import pack_ip, unpack_ip
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address

__all__ = ["PeerFilter", "SelfAddresses", "canonical_address", "networks"]

_DEFAULT_DENIED_V4 = (
    "0.0.0.0/8",  # unspecified / "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598); cloud metadata
    "169.254.0.0/16",  # link-local
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved (RFC 1112), limited broadcast included
)
_DEFAULT_DENIED_V6 = (
    "::/128",  # unspecified
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
    "fc00::/7",  # unique local (RFC 4193)
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local, deprecated (RFC 3879)
    "ff00::/8",  # multicast
)
_LOOPBACK = ("127.0.0.0/8", "::1/128")
_VERDICTS_MAX = 65536

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(values: object, what: str) -> tuple[_Network, ...]:
    """IP networks (``"10.0.0.0/8"``, ``"2001:db8::/32"``, an address for a single host, or
    :mod:`ipaddress` networks) checked where they enter: :class:`LocalProtocolError` naming
    ``what`` (or ``what[i]``) and the accepted forms otherwise."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise LocalProtocolError(
            f"{what} must be a list of networks (['10.0.0.0/8', '::1']), not {values!r}"
        )
    out: list[_Network] = []
    for i, value in enumerate(values):
        try:
            if not isinstance(value, str | ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise ValueError("not text")
            out.append(ipaddress.ip_network(value))
        except ValueError as exc:
            raise LocalProtocolError(
                f"{what}[{i}] must be a network such as '10.0.0.0/8' or an IP address, not"
                f" {value!r} ({exc})"
            ) from None
    return tuple(out)


def canonical_address(addr: Address) -> Address:
    """``(ip, port)`` with the IP in the text form the codec produces (RFC 5952 for IPv6,
    :func:`~anchor_stun.attributes.unpack_ip`) and the port an int. Raises
    :class:`LocalProtocolError` when the IP is not one."""
    family, packed = pack_ip(addr[0])
    return (unpack_ip(family, packed), int(addr[1]))


class PeerFilter:
    """Which peer IPs a client may reach through the relay (RFC 8656 §10.2, §11.2, §12.2
    "MAY impose restrictions", §21.1 on relaying to private addresses).

    Refused by default: loopback (unless ``allow_loopback``), RFC 1918, carrier-grade NAT
    (100.64.0.0/10), IETF protocol assignments (192.0.0.0/24), benchmarking (198.18.0.0/15),
    reserved (240.0.0.0/4, with broadcast), unique-local, site-local (fec0::/10), local-use
    NAT64 (64:ff9b:1::/48), link-local, multicast and unspecified addresses; an IPv6 address that carries
    an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo: ``_embedded_ipv4``)
    is judged as that IPv4 address too. Networks in ``allow`` are
    accepted even inside those ranges (a lab, a VPN); networks in ``deny`` are refused as
    well. A string that is not an IP address is refused.
    """

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        allow: Iterable[str | _Network] = (),
        deny: Iterable[str | _Network] = (),
    ) -> None:
        denied = [*_DEFAULT_DENIED_V4, *_DEFAULT_DENIED_V6]
        if not allow_loopback:
            denied.extend(_LOOPBACK)
        self._deny: tuple[_Network, ...] = networks(denied, "denied") + networks(deny, "deny")
        self._allow: tuple[_Network, ...] = networks(allow, "allow")
        self.allow_loopback = allow_loopback
        """Whether loopback peers are accepted."""
        self._verdicts: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        """True when relaying to ``ip`` is allowed."""
        verdicts = self._verdicts
        verdict = verdicts.get(ip)
        if verdict is None:
            verdict = self._judge(ip)
            if len(verdicts) >= _VERDICTS_MAX:
                verdicts.clear()
            verdicts[ip] = verdict
        return verdict

    def _judge(self, ip: str) -> bool:
        try:
            addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if any(addr in net for net in self._allow):
            return True
        if any(addr in net for net in self._deny):
            return False
        embedded = _embedded_ipv4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
        if embedded is None:
            return True
        return any(embedded in net for net in self._allow) or not any(
            embedded in net for net in self._deny
        )


class SelfAddresses:
    """The transport addresses a TURN server answers on, "myself" (RFC 8656 §21): no
    permission, channel or Send may target one of them.

    ``peer in addresses`` is True for a declared address, and for any loopback IP on the port
    of a declared wildcard address (0.0.0.0, ``::``), in any textual form of the IP (an
    IPv4-mapped IPv6 address counts as the IPv4 address it maps)."""

    __slots__ = ("_addresses", "_wildcard_ports")

    def __init__(self, addresses: Iterable[Address] = ()) -> None:
        self._addresses: set[Address] = set()
        self._wildcard_ports: set[int] = set()
        self.add(addresses)

    def add(self, addresses: Iterable[Address], what: str = "addresses") -> None:
        """Declare more addresses, each ``(ip, port)`` or ``"ip:port"``; raises
        :class:`LocalProtocolError` naming ``what[i]`` for a malformed one."""
        if isinstance(addresses, str | bytes) or not isinstance(addresses, Iterable):
            raise LocalProtocolError(
                f"{what} must be a list of (ip, port) addresses, not {addresses!r}"
            )
        for i, addr in enumerate(addresses):
            checked = server_address(addr, f"{what}[{i}]", None, ip_only=True, zero=True)
            ip, port = canonical_address(checked)
            if ip in ("0.0.0.0", "::"):
                self._wildcard_ports.add(port)
            self._addresses.add(_self_form((ip, port)))

    def __contains__(self, peer: object) -> bool:
        return isinstance(peer, tuple) and len(peer) == 2 and self.includes(peer)

    def includes(self, peer: Address, relayed: Iterable[Address] = ()) -> bool:
        """True when ``peer`` is one of the declared addresses (or a loopback IP on a
        wildcard port) or one of ``relayed``, an allocation's own relayed addresses (which
        are in canonical form), comparing an IPv4-mapped IPv6 address as the IPv4 address it
        maps."""
        if peer[0].startswith("::ffff:"):
            peer = _self_form(peer)
        if peer in self._addresses:
            return True
        if peer[1] in self._wildcard_ports and _is_loopback(peer[0]):
            return True
        return any(addr == peer for addr in relayed)

    def __len__(self) -> int:
        return len(self._addresses)


_V4_EMBEDDING = (
    ipaddress.ip_network("::ffff:0:0/96"),  # IPv4-mapped (RFC 4291 §2.5.5.2)
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated, SIIT (RFC 2765)
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052 §2.1)
    ipaddress.ip_network("::/96"),  # IPv4-compatible, deprecated (RFC 4291 §2.5.5.1)
)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries in its low 32 bits (IPv4-mapped,
    IPv4-translated, NAT64 well-known prefix, IPv4-compatible), in 6to4 (RFC 3056) or as a
    Teredo client (RFC 4380); None otherwise. The relay host may reach it through a dual-stack
    socket, a NAT64 gateway or a tunnel: the peer filter judges that IPv4 address too."""
    if int(addr) > 1 and any(addr in net for net in _V4_EMBEDDING):  # not :: nor ::1
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    return None


def _self_form(addr: Address) -> Address:
    """The form addresses are compared in by the "myself" check: an IPv4-mapped IPv6
    address becomes the IPv4 address it maps."""
    ip = addr[0]
    if ip.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        except ValueError:
            return addr
        if mapped is not None:
            return (str(mapped), addr[1])
    return addr


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
