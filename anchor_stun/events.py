"""Values shared by the sans-I/O cores: addresses, outgoing datagrams, the event base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Address",
    "StunEvent",
    "Transmit",
    "format_address",
]

Address = tuple[str, int]
"""An (ip, port) transport address, as asyncio and socket use it."""


def format_address(addr: Address) -> str:
    """``ip:port``, with the IPv6 address in brackets (RFC 3986 §3.2.2); TypeError naming
    ``addr`` for anything but an ``(ip, port)`` pair."""
    try:
        if isinstance(addr, str):
            raise TypeError
        ip, port = addr[0], addr[1]
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    except (IndexError, KeyError, TypeError):
        raise TypeError(f"addr must be an (ip, port) pair, not {addr!r}") from None


class Transmit(NamedTuple):
    """A datagram a core wants sent: ``data`` to ``addr``, from ``local`` when it matters
    (a server with several listening addresses, RFC 5780 CHANGE-REQUEST)."""

    data: bytes
    addr: Address
    local: Address | None = None


@dataclass(frozen=True, slots=True)
class StunEvent:
    """Base of the events anchor_stun's cores emit through ``next_event()``."""
