"""Counters of the TURN server core (:class:`~anchor_turn.server.TurnServer`).

Theory of operation
-------------------
:class:`TurnServerStats` is a plain record the core owns (``server.stats``) and increments
in place where things happen: on the relay paths an increment is one attribute update, so
counting costs the hot path nothing it can measure. Nobody but the core writes it; readers
(the runner, ``anchor serve``'s metrics and logs, tests) read it whenever they like, between
two calls into the core. ``allocations``, ``permissions`` and ``channels`` are current
values (incremented on creation, decremented on expiry or deletion); every other field only
grows. Binding requests on the TURN ports are counted by the STUN core
(``server.stun.stats``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TurnServerStats"]


@dataclass(slots=True)
class TurnServerStats:
    """Counters of :class:`~anchor_turn.server.TurnServer` (RFC 8656 has none; these are
    for operators); the first three are current values."""

    allocations: int = 0
    """Allocations alive now."""
    permissions: int = 0
    """Permissions alive now, over all allocations."""
    channels: int = 0
    """Channel bindings alive now, over all allocations."""
    allocations_created: int = 0
    """Allocate requests that succeeded."""
    allocations_expired: int = 0
    """Allocations that timed out."""
    allocations_deleted: int = 0
    """Allocations deleted by Refresh with lifetime 0 or a closed connection."""
    requests: int = 0
    """TURN requests received (Binding requests are counted by the STUN core)."""
    errors_sent: int = 0
    """Error responses sent to TURN requests (challenges included)."""
    auth_failures: int = 0
    """Requests whose credentials did not verify (401 after credentials were presented)."""
    to_peer_packets: int = 0
    """Datagrams relayed from clients to peers (Send indications and ChannelData)."""
    to_peer_bytes: int = 0
    """Application bytes relayed from clients to peers."""
    to_peer_dont_fragment: int = 0
    """Of ``to_peer_packets``: datagrams to send with fragmentation forbidden
    (:class:`DontFragmentTransmit`, Send indications with DONT-FRAGMENT, RFC 8656 §11.2)."""
    to_client_packets: int = 0
    """Datagrams relayed from peers to clients (Data indications and ChannelData)."""
    to_client_bytes: int = 0
    """Application bytes relayed from peers to clients."""
    dropped: int = 0
    """Messages and datagrams dropped: malformed, no allocation, no channel, ... ."""
    dropped_no_permission: int = 0
    """Of ``dropped``: data without a live permission for the peer (RFC 8656 §9)."""
    rate_limited: int = 0
    """Requests left unanswered: their source IP was over its rate of unsigned answers."""
    quota_refused: int = 0
    """Allocate requests refused for the per-user or total quota (486, RFC 8656 §7.2)."""
    peers_refused: int = 0
    """CreatePermission and ChannelBind requests refused for a forbidden peer (403, RFC 8656
    §10.2, §12.2: the peer filter, port 0, the server's own addresses) and Send indications
    dropped for port 0 or the server's own addresses (the relay loop)."""
    stale_nonces: int = 0
    """Requests refused with 438 Stale Nonce (RFC 8489 §9.2.4): a nonce expired, or issued to
    another 5-tuple (a replayed request)."""
