"""The NAT lab's address plan and the nftables rules behind each NAT kind.

Address plan (documentation ranges only; nothing in the lab is connected to the machine's own
network namespace, and ``pub`` has no default route, so no packet can leave the lab)::

    hostA 198.51.100.66/26 ── lan 198.51.100.65  natA  wan 203.0.113.66/26 ── linkA 203.0.113.65 ┐
                                                                                                 pub
    hostB 198.51.100.130/26 ─ lan 198.51.100.129 natB  wan 203.0.113.130/26 ─ linkB 203.0.113.129 ┘
                                              pub lo: 203.0.113.1 and 203.0.113.2 (the servers)

On demand (:meth:`natlab.NatLab.add_server_nat`, issue 21) a server behind a 1:1 NAT::

    pub linkS 203.0.113.193/26 ── wan 203.0.113.194/26 natS lan 198.51.100.193/26 ── srv 198.51.100.194/26

203.0.113.0/24 (TEST-NET-3) plays the Internet, 198.51.100.0/24 (TEST-NET-2) the private LANs,
one /26 per LAN (198.51.100.0/26 stays free; .192/26 is the server's on demand). 192.0.2.0/24 (TEST-NET-1) is left
alone: this machine's own uplink uses it (docs/peers.md "The NAT lab").

NAT kinds (RFC 4787 §4.1 mapping, §5 filtering), built with nftables in the NAT namespace:

================  ==================  ==================  =====================================
kind              mapping             filtering           rules
================  ==================  ==================  =====================================
full-cone         endpoint-indep.     endpoint-indep.     masquerade; every outbound UDP packet
                                                          records its mapped port in set ``eif``;
                                                          new inbound UDP to a recorded port is
                                                          DNATed to the LAN host
restricted-cone   endpoint-indep.     address-dependent   masquerade; set ``adf`` records
                                                          (remote IP, mapped port); new inbound
                                                          UDP from a recorded remote IP to that
                                                          port is DNATed to the LAN host
port-restricted   endpoint-indep.     address-and-port    masquerade; conntrack alone (only
                                                          replies to a 5-tuple get in)
symmetric         address-and-port    address-and-port    masquerade fully-random: every new
                                                          5-tuple gets a random public port
================  ==================  ==================  =====================================

Every kind also has: the router drops unsolicited inbound packets to itself (docs/peers.md
gotcha: otherwise a stray packet creates a conntrack entry that later steals the port an
outbound SNAT wanted), and forwards from the WAN only replies and DNATed packets.

Masquerade keeps the source port when it is free (docs/peers.md, "The NAT lab"), and
each LAN has one host, so the mapped port equals the host's port; the DNAT rules rely on it
(``dnat to HOST`` keeps the destination port).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from anchor_stun.nat import Behavior

__all__ = [
    "ANCHOR_ALT_PORT",
    "ANCHOR_PORT",
    "COTURN_ALT_PORT",
    "COTURN_PORT",
    "HOSTS",
    "LINKS",
    "NAMESPACES",
    "NATS",
    "SERVER_ALT_IP",
    "SERVER_IP",
    "SERVER_NAT",
    "SERVER_NAT_LINKS",
    "SERVER_NAT_ROLES",
    "Link",
    "Nat",
    "NatKind",
    "block_ruleset",
    "loss_ruleset",
    "nat_ruleset",
    "one_to_one_ruleset",
]

SERVER_IP = "203.0.113.1"
"""Primary address of both servers in ``pub`` (RFC 5780 §4.1 primary IP)."""
SERVER_ALT_IP = "203.0.113.2"
"""Alternate address of both servers in ``pub`` (RFC 5780 OTHER-ADDRESS IP)."""
ANCHOR_PORT = 3478
"""``anchor serve`` primary port (RFC 8489 §6.2.4 default)."""
ANCHOR_ALT_PORT = 3479
"""``anchor serve`` alternate port (its default, PORT+1)."""
COTURN_PORT = 3490
"""coturn's primary port, on the same two addresses."""
COTURN_ALT_PORT = 3491
"""coturn's alternate port (``--alt-listening-port``)."""

NAMESPACES = ("pub", "natA", "natB", "hostA", "hostB")
"""Lab roles; each is one network namespace (its real name carries a per-lab prefix)."""


@dataclass(frozen=True, slots=True)
class Link:
    """One veth pair between two lab namespaces."""

    left: str
    """Role of the first namespace."""
    left_if: str
    """Interface name in ``left``."""
    left_cidr: str
    """Address/prefix of ``left_if``."""
    right: str
    """Role of the second namespace."""
    right_if: str
    """Interface name in ``right``."""
    right_cidr: str
    """Address/prefix of ``right_if``."""


@dataclass(frozen=True, slots=True)
class Nat:
    """One NAT router namespace and what sits on each side of it."""

    name: str
    """Role of the router namespace."""
    wan_ip: str
    """Its public address: the mapped IP every host behind it should see."""
    upstream_ip: str
    """``pub``'s address on the WAN link (the router's default gateway)."""
    lan_ip: str
    """Its LAN address (the host's default gateway)."""
    host: str
    """Role of the one host namespace behind it."""
    host_ip: str
    """The host's address."""


NATS = {
    "natA": Nat("natA", "203.0.113.66", "203.0.113.65", "198.51.100.65", "hostA", "198.51.100.66"),
    "natB": Nat(
        "natB", "203.0.113.130", "203.0.113.129", "198.51.100.129", "hostB", "198.51.100.130"
    ),
}
"""The two NAT routers by role."""

HOSTS = {nat.host: nat for nat in NATS.values()}
"""Each host role and the NAT in front of it."""

LINKS = (
    Link("pub", "linkA", "203.0.113.65/26", "natA", "wan", "203.0.113.66/26"),
    Link("pub", "linkB", "203.0.113.129/26", "natB", "wan", "203.0.113.130/26"),
    Link("natA", "lan", "198.51.100.65/26", "hostA", "eth0", "198.51.100.66/26"),
    Link("natB", "lan", "198.51.100.129/26", "hostB", "eth0", "198.51.100.130/26"),
)
"""Every veth pair of the lab."""

SERVER_NAT = Nat(
    "natS", "203.0.113.194", "203.0.113.193", "198.51.100.193", "srv", "198.51.100.194"
)
"""A 1:1 NAT in front of a server (a cloud instance's public IP, issue 21): ``natS`` maps its
WAN address to the private address of host ``srv``, every port, both ways
(:func:`one_to_one_ruleset`). Built only on demand (:meth:`natlab.NatLab.add_server_nat`), on
the spare 203.0.113.192/26 and 198.51.100.192/26."""

SERVER_NAT_ROLES = (SERVER_NAT.name, SERVER_NAT.host)
"""The on-demand roles of :data:`SERVER_NAT` (namespaces like those of :data:`NAMESPACES`)."""

SERVER_NAT_LINKS = (
    Link("pub", "linkS", "203.0.113.193/26", "natS", "wan", "203.0.113.194/26"),
    Link("natS", "lan", "198.51.100.193/26", "srv", "eth0", "198.51.100.194/26"),
)
"""The veth pairs of :data:`SERVER_NAT`."""

TABLE = "anchorlab"
"""nftables table (family ip) holding a NAT router's rules."""
LOSS_TABLE = "anchorlab_loss"
"""nftables table (family ip) holding a NAT router's random-loss rules."""
BLOCK_TABLE = "anchorlab_block"
"""nftables table (family ip) holding a NAT router's firewall (:func:`block_ruleset`)."""
MAPPING_TIMEOUT = "120s"
"""Lifetime of a recorded mapping without outbound traffic (RFC 4787 REQ-5: at least 2 min)."""


class NatKind(enum.Enum):
    """A NAT behaviour the lab can give a router, with what RFC 5780 discovery must find."""

    FULL_CONE = ("full-cone", Behavior.ENDPOINT_INDEPENDENT, Behavior.ENDPOINT_INDEPENDENT)
    RESTRICTED_CONE = ("restricted-cone", Behavior.ENDPOINT_INDEPENDENT, Behavior.ADDRESS_DEPENDENT)
    PORT_RESTRICTED_CONE = (
        "port-restricted-cone",
        Behavior.ENDPOINT_INDEPENDENT,
        Behavior.ADDRESS_AND_PORT_DEPENDENT,
    )
    SYMMETRIC = (
        "symmetric",
        Behavior.ADDRESS_AND_PORT_DEPENDENT,
        Behavior.ADDRESS_AND_PORT_DEPENDENT,
    )

    def __init__(self, label: str, mapping: Behavior, filtering: Behavior) -> None:
        self.label = label
        """Short name used in test ids."""
        self.mapping = mapping
        """RFC 4787 §4.1 mapping behaviour of this kind."""
        self.filtering = filtering
        """RFC 4787 §5 filtering behaviour of this kind."""

    def __str__(self) -> str:
        return self.label


def nat_ruleset(kind: NatKind, host_ip: str) -> str:
    """The ``nft -f`` script that gives a NAT router ``kind`` (replacing its previous rules).

    Interfaces are named ``wan`` and ``lan`` in every router namespace."""
    masquerade = "masquerade fully-random" if kind is NatKind.SYMMETRIC else "masquerade"
    sets: list[str] = []
    record: list[str] = []
    admit: list[str] = []
    if kind is NatKind.FULL_CONE:
        # RFC 4787 §5 endpoint-independent filtering: any remote may use a live mapping.
        sets.append(
            f"set eif {{ type inet_service; flags dynamic,timeout; timeout {MAPPING_TIMEOUT}; }}"
        )
        record.append('oifname "wan" meta l4proto udp update @eif { udp sport }')
        admit.append(f'iifname "wan" udp dport @eif dnat to {host_ip}')
    elif kind is NatKind.RESTRICTED_CONE:
        # RFC 4787 §5 address-dependent filtering: remotes the mapping has sent to, any port.
        sets.append(
            "set adf { type ipv4_addr . inet_service; flags dynamic,timeout; "
            f"timeout {MAPPING_TIMEOUT}; }}"
        )
        record.append('oifname "wan" meta l4proto udp update @adf { ip daddr . udp sport }')
        admit.append(f'iifname "wan" ip saddr . udp dport @adf dnat to {host_ip}')
    lines = [
        # Create-then-delete makes the script idempotent and the swap atomic (one transaction).
        f"table ip {TABLE} {{}}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        *(f"  {s}" for s in sets),
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        '    iifname "wan" ct state established,related accept',
        '    iifname "wan" drop',  # unsolicited packets to the router itself
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        '    iifname "wan" ct state established,related accept',
        '    iifname "wan" ct status dnat accept',
        '    iifname "wan" drop',
        "  }",
        "  chain srcnat {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "wan" {masquerade}',
        "  }",
        "  chain dstnat {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *(f"    {rule}" for rule in admit),
        "  }",
        "  chain record {",
        # After srcnat (100): the packet already carries its public source port.
        "    type filter hook postrouting priority 110; policy accept;",
        *(f"    {rule}" for rule in record),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def loss_ruleset(outbound: int, inbound: int) -> str:
    """The ``nft -f`` script dropping ``outbound`` % of packets forwarded LAN -> WAN and
    ``inbound`` % WAN -> LAN at random (this kernel has no netem); 0 and 0 removes it."""
    for value in (outbound, inbound):
        if not 0 <= value <= 100:
            raise ValueError(f"loss must be a percentage, not {value}")
    lines = [f"table ip {LOSS_TABLE} {{}}", f"delete table ip {LOSS_TABLE}"]
    if outbound or inbound:
        lines += [
            f"table ip {LOSS_TABLE} {{",
            "  chain forward {",
            "    type filter hook forward priority -10; policy accept;",
        ]
        if outbound:
            lines.append(f'    iifname "lan" numgen random mod 100 < {outbound} counter drop')
        if inbound:
            lines.append(f'    iifname "wan" numgen random mod 100 < {inbound} counter drop')
        lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def block_ruleset(tcp_ports: tuple[int, ...] | None) -> str:
    """The ``nft -f`` script making a NAT router a restrictive firewall: it forwards no UDP
    at all (either way) and, from the LAN, TCP only to ``tcp_ports`` (a corporate network
    letting only 443 out, issue 18); None removes it. Dropped packets are counted."""
    lines = [f"table ip {BLOCK_TABLE} {{}}", f"delete table ip {BLOCK_TABLE}"]
    if tcp_ports is not None:
        if not tcp_ports or not all(0 < port < 65536 for port in tcp_ports):
            raise ValueError(f"tcp_ports must be ports, not {tcp_ports}")
        ports = ", ".join(str(port) for port in sorted(set(tcp_ports)))
        lines += [
            f"table ip {BLOCK_TABLE} {{",
            "  chain forward {",
            "    type filter hook forward priority -20; policy accept;",
            "    meta l4proto udp counter drop",
            f'    iifname "lan" meta l4proto tcp tcp dport != {{ {ports} }} counter drop',
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def one_to_one_ruleset(public_ip: str, private_ip: str) -> str:
    """The ``nft -f`` script of a 1:1 NAT (a cloud provider's public IP): every packet to
    ``public_ip`` arriving on ``wan`` is DNATed to ``private_ip``, every packet from
    ``private_ip`` leaving on ``wan`` is SNATed to ``public_ip``; ports are kept (one host,
    so none ever clashes), which is what ``--external-ip`` of a TURN server relies on."""
    lines = [
        f"table ip {TABLE} {{}}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  chain dstnat {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f'    iifname "wan" ip daddr {public_ip} dnat to {private_ip}',
        "  }",
        "  chain srcnat {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "wan" ip saddr {private_ip} snat to {public_ip}',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"
