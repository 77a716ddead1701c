"""Events of the TURN cores (RFC 8656), returned by ``next_event()``.

Every event is a frozen, slotted dataclass under :class:`TurnEvent` (itself a
:class:`~anchor_stun.events.StunEvent`, so one ``next_event()`` loop can handle both layers).
The client events come out of :class:`anchor_turn.client.TurnClient`; they report the outcome
of a command (``allocate``, ``create_permission``, ``bind_channel``, ``refresh``, ``release``),
of an automatic refresh, or data relayed from a peer.

Error codes are ``int`` values; codes Anchor knows are :class:`~anchor_stun.attributes.ErrorCode`
members (an ``IntEnum``, so ``event.code == 437`` and ``event.code is ErrorCode.ALLOCATION_MISMATCH``
both hold). Code 0 means there was no usable response: the transaction timed out, every response
failed the integrity check (RFC 8489 §9.2.5), or the response was malformed; ``reason`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

from anchor_stun.events import Address, StunEvent

__all__ = [
    "AllocationCreated",
    "AllocationExpired",
    "AllocationFailed",
    "AllocationRefreshed",
    "AllocationReleased",
    "ChannelBindFailed",
    "ChannelBound",
    "DataReceived",
    "PermissionCreated",
    "PermissionFailed",
    "RefreshFailed",
    "TryAlternate",
    "TurnEvent",
]


@dataclass(frozen=True, slots=True)
class TurnEvent(StunEvent):
    """Base of the events anchor_turn's cores emit through ``next_event()`` (RFC 8656)."""


# --------------------------------------------------------------------------- allocation


@dataclass(frozen=True, slots=True)
class AllocationCreated(TurnEvent):
    """An Allocate request succeeded: the relay exists (RFC 8656 §7.3)."""

    relayed_addresses: tuple[Address, ...]
    """Every relayed transport address (XOR-RELAYED-ADDRESS), in the response's order: one,
    or two for a dual allocation (RFC 8656 §7.1 ADDITIONAL-ADDRESS-FAMILY, §7.3, §18.5)."""
    mapped: Address | None
    """The client's server-reflexive address (XOR-MAPPED-ADDRESS), None if the server left it out."""
    lifetime: int
    """Seconds the allocation lasts unless refreshed (LIFETIME, RFC 8656 §18.2)."""
    address_errors: tuple[tuple[int, int, str], ...] = ()
    """(family, code, reason) of each ADDRESS-ERROR-CODE: a family of a dual allocation the
    server could not provide (RFC 8656 §7.3, §18.14)."""

    @property
    def relayed(self) -> Address:
        """The (first) relayed transport address, as
        :attr:`~anchor_turn.aio.client.TurnConnection.relayed` gives it; all of them are
        :attr:`relayed_addresses`."""
        return self.relayed_addresses[0]


@dataclass(frozen=True, slots=True)
class AllocationFailed(TurnEvent):
    """The Allocate request failed; the client is now FAILED (RFC 8656 §7.4)."""

    code: int
    """ERROR-CODE of the final error response (an ErrorCode member when known; 403, 437, 440,
    441, 442, 486, 508...), or 0 when there was no usable response (timeout, integrity)."""
    reason: str
    """The reason phrase, or what went wrong locally (wrong credentials, timeout...)."""


@dataclass(frozen=True, slots=True)
class TryAlternate(TurnEvent):
    """The server answered the Allocate with 300 Try Alternate and an ALTERNATE-SERVER
    (RFC 8656 §7.4, RFC 8489 §10): the adapter should allocate again, with a new client, at
    ``server``. The client is now FAILED."""

    server: Address
    """The alternate server's transport address (ALTERNATE-SERVER, RFC 8489 §14.15)."""
    domain: str | None = None
    """ALTERNATE-DOMAIN, the name to verify the alternate's TLS certificate against
    (RFC 8489 §14.16), when the server gave one."""


@dataclass(frozen=True, slots=True)
class AllocationRefreshed(TurnEvent):
    """A Refresh request (automatic or asked for) succeeded (RFC 8656 §8.3)."""

    lifetime: int
    """The new lifetime in seconds, counted from when the Refresh was sent (LIFETIME)."""


@dataclass(frozen=True, slots=True)
class RefreshFailed(TurnEvent):
    """A Refresh request failed with something other than 437 (RFC 8656 §8.3). The allocation
    stays usable until ``TurnClient.expires_at``; a later ``refresh()`` may still save it."""

    code: int
    """ERROR-CODE of the error response, or 0 when there was no usable response."""
    reason: str
    """The reason phrase, or what went wrong locally."""


@dataclass(frozen=True, slots=True)
class AllocationReleased(TurnEvent):
    """The allocation was deleted with a Refresh of LIFETIME 0 (RFC 8656 §8.1), or the
    deletion request ended without an answer (the allocation then times out on the server)."""


@dataclass(frozen=True, slots=True)
class AllocationExpired(TurnEvent):
    """The allocation's lifetime ran out without a successful Refresh, or a Refresh got
    437 Allocation Mismatch: the relay is gone (RFC 8656 §8.3, §2.2)."""


# --------------------------------------------------------------------------- permissions


@dataclass(frozen=True, slots=True)
class PermissionCreated(TurnEvent):
    """A CreatePermission request asked for by ``create_permission`` succeeded: the relay
    now accepts data from these IP addresses for 300 s (RFC 8656 §9.3)."""

    peers: tuple[str, ...]
    """The peers' IP addresses (no ports: permissions are per IP address, RFC 8656 §9)."""


@dataclass(frozen=True, slots=True)
class PermissionFailed(TurnEvent):
    """A CreatePermission request failed, the first one or an automatic refresh
    (RFC 8656 §9.2). The client no longer counts these permissions as installed."""

    peers: tuple[str, ...]
    """The IP addresses the request carried."""
    code: int
    """ERROR-CODE (403 Forbidden, 443 Peer Address Family Mismatch, 508...), or 0."""
    reason: str
    """The reason phrase, or what went wrong locally."""


# --------------------------------------------------------------------------- channels


@dataclass(frozen=True, slots=True)
class ChannelBound(TurnEvent):
    """A ChannelBind request asked for by ``bind_channel`` succeeded (RFC 8656 §11.3): data
    to and from ``peer`` may now use ChannelData messages on ``channel``."""

    channel: int
    """The channel number, 0x4000-0x4FFF (RFC 8656 §12)."""
    peer: Address
    """The peer transport address bound to it."""


@dataclass(frozen=True, slots=True)
class ChannelBindFailed(TurnEvent):
    """A ChannelBind request failed, the first one or an automatic re-bind (RFC 8656 §11.3).
    The channel is forgotten: data to ``peer`` goes in Send indications again."""

    channel: int
    """The channel number the request carried."""
    peer: Address
    """The peer transport address the request carried."""
    code: int
    """ERROR-CODE (400 Bad Request for a number bound elsewhere, 403, 443, 508...), or 0."""
    reason: str
    """The reason phrase, or what went wrong locally."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class DataReceived(TurnEvent):
    """Application data a peer sent to the relayed address, delivered by the server in a Data
    indication (RFC 8656 §11.6) or a ChannelData message (RFC 8656 §12.6)."""

    peer: Address
    """The peer's transport address as the relay saw it."""
    data: bytes
    """The application data (the UDP payload the peer sent)."""
    channel: int | None
    """The channel number for ChannelData, None for a Data indication."""
