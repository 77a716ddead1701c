"""The NAT lab: real Linux NATs in network namespaces, for issue 7.

Loopback cannot show what Anchor is for (a link whose endpoint is the NAT gateway); this lab
can. It builds, with ``ip netns``, ``ip link`` and nftables, a ``pub`` namespace playing the
Internet (``anchor serve`` and coturn, both with RFC 5780 on 203.0.113.1 and 203.0.113.2), two
NAT routers configurable as full cone, restricted cone, port-restricted cone or symmetric, and
one host behind each. Address plan and NAT rules: :mod:`natlab.topology`; building, running
commands inside, teardown: :mod:`natlab.lab`; the pytest fixture: :mod:`natlab.fixtures`.

Measured facts and gotchas this is based on: ``docs/peers.md "The NAT lab"``.
"""

from .lab import ANCHOR, LabError, NatLab, lab_namespaces, remove_stale_labs
from .topology import (
    ANCHOR_ALT_PORT,
    ANCHOR_PORT,
    COTURN_ALT_PORT,
    COTURN_PORT,
    HOSTS,
    NATS,
    SERVER_ALT_IP,
    SERVER_IP,
    NatKind,
)

__all__ = [
    "ANCHOR",
    "ANCHOR_ALT_PORT",
    "ANCHOR_PORT",
    "COTURN_ALT_PORT",
    "COTURN_PORT",
    "HOSTS",
    "NATS",
    "SERVER_ALT_IP",
    "SERVER_IP",
    "LabError",
    "NatKind",
    "NatLab",
    "lab_namespaces",
    "remove_stale_labs",
]
