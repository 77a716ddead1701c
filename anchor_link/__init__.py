"""anchor_link: the ephemeral link: a reliable datagram channel (sans-I/O), its sealing, the
authenticated handshake (Noise XX) with identities and trust, the link state machine, and the
asyncio endpoint and signalling (:mod:`anchor_link.aio`).

The names below are the public API; everything in ``__all__`` is re-exported here."""

from __future__ import annotations

from anchor_link.aio.endpoint import (
    LinkEndpoint,
)
from anchor_link.aio.signal import (
    InProcessSignalling,
    Mailbox,
    RendezvousRouter,
    RendezvousServer,
    Signalling,
    SignallingClosed,
    SignallingError,
    WebSocketSignalling,
)
from anchor_link.congestion import (
    Cubic,
    NewReno,
    Pacer,
)
from anchor_link.delivery import (
    MessagesUndelivered,
    UndeliveredMessages,
)
from anchor_link.handshake import (
    HandshakeFailed,
    LinkHandshake,
    TrickleBox,
)
from anchor_link.identity import (
    Identity,
    IdentityError,
    default_identity_path,
    format_public,
    load_identity,
    load_or_create_identity,
    parse_public,
)
from anchor_link.reliable import (
    AuthenticationFailed,
    CloseReason,
    FrameSealer,
    MessageReceived,
    MessageTooLarge,
    ReliableChannel,
    ReliableChannelError,
    ReliableChannelFull,
    ReliableClosed,
    ReliableEvent,
    ReliableIdle,
    ReliableState,
    ReliableStats,
    ReplayDetected,
    SealError,
    SendWindowOpen,
)
from anchor_link.seal import (
    Sealer,
)
from anchor_link.state import (
    DissolveReason,
    LinkClosed,
    LinkDissolved,
    LinkError,
    LinkEvent,
    LinkFailed,
    LinkFormationFailed,
    LinkFormed,
    LinkMachine,
    LinkMessage,
    LinkMoved,
    LinkState,
    LinkWritable,
    PeerAuthenticationError,
    PeerAuthenticationFailed,
)
from anchor_link.trust import (
    KnownPeers,
    PeerKeyMismatch,
    Trust,
    TrustPolicy,
)

__all__ = [
    "AuthenticationFailed",
    "CloseReason",
    "Cubic",
    "DissolveReason",
    "FrameSealer",
    "HandshakeFailed",
    "Identity",
    "IdentityError",
    "InProcessSignalling",
    "KnownPeers",
    "LinkClosed",
    "LinkDissolved",
    "LinkEndpoint",
    "LinkError",
    "LinkEvent",
    "LinkFailed",
    "LinkFormationFailed",
    "LinkFormed",
    "LinkHandshake",
    "LinkMachine",
    "LinkMessage",
    "LinkMoved",
    "LinkState",
    "LinkWritable",
    "Mailbox",
    "MessageReceived",
    "MessageTooLarge",
    "MessagesUndelivered",
    "NewReno",
    "Pacer",
    "PeerAuthenticationError",
    "PeerAuthenticationFailed",
    "PeerKeyMismatch",
    "ReliableChannel",
    "ReliableChannelError",
    "ReliableChannelFull",
    "ReliableClosed",
    "ReliableEvent",
    "ReliableIdle",
    "ReliableState",
    "ReliableStats",
    "RendezvousRouter",
    "RendezvousServer",
    "ReplayDetected",
    "SealError",
    "Sealer",
    "SendWindowOpen",
    "Signalling",
    "SignallingClosed",
    "SignallingError",
    "TrickleBox",
    "Trust",
    "TrustPolicy",
    "UndeliveredMessages",
    "WebSocketSignalling",
    "default_identity_path",
    "format_public",
    "load_identity",
    "load_or_create_identity",
    "parse_public",
]


def __getattr__(name: str) -> object:
    """``Anchor``: the deprecated name of :class:`LinkEndpoint` (see
    :mod:`anchor_link.aio.endpoint`)."""
    if name == "Anchor":
        from anchor_link.aio import endpoint

        return endpoint.Anchor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
