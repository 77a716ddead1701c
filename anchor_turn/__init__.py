"""anchor_turn: TURN (RFC 8656): the client allocation machine and the server core (with its
credential back-ends), their asyncio adapters (:mod:`anchor_turn.aio`: ``TurnConnection``,
the server runner, the probes of ``anchor check``).

The names below are the public API; everything in ``__all__`` is re-exported here."""

from __future__ import annotations

from anchor_turn.aio.check import (
    CheckConfig,
    run_check,
)
from anchor_turn.aio.client import (
    TurnConnection,
)
from anchor_turn.aio.server import (
    TurnServerRunner,
    UdpRelayAllocator,
    loopback_runner,
)
from anchor_turn.auth import (
    ChainedBackend,
    CredentialBackend,
    RestSecret,
    SqliteUsers,
    StaticUsers,
    candidate_keys,
)
from anchor_turn.channeldata import (
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
)
from anchor_turn.check import (
    ProbeResult,
    check_passed,
)
from anchor_turn.client import (
    TurnClient,
    TurnState,
)
from anchor_turn.events import (
    AllocationCreated,
    AllocationExpired,
    AllocationFailed,
    AllocationRefreshed,
    AllocationReleased,
    ChannelBindFailed,
    ChannelBound,
    DataReceived,
    PermissionCreated,
    PermissionFailed,
    RefreshFailed,
    TryAlternate,
    TurnEvent,
)
from anchor_turn.nonce_auth import (
    NonceAuthenticator,
)
from anchor_turn.peer_filter import (
    PeerFilter,
    SelfAddresses,
)
from anchor_turn.server import (
    RelayAllocator,
    TurnServer,
    TurnServerEvent,
)
from anchor_turn.stats import (
    TurnServerStats,
)
from anchor_turn.uri import (
    TurnUri,
    parse_turn_uri,
)

__all__ = [
    "AllocationCreated",
    "AllocationExpired",
    "AllocationFailed",
    "AllocationRefreshed",
    "AllocationReleased",
    "ChainedBackend",
    "ChannelBindFailed",
    "ChannelBound",
    "CheckConfig",
    "CredentialBackend",
    "DataReceived",
    "NonceAuthenticator",
    "PeerFilter",
    "PermissionCreated",
    "PermissionFailed",
    "ProbeResult",
    "RefreshFailed",
    "RelayAllocator",
    "RestSecret",
    "SelfAddresses",
    "SqliteUsers",
    "StaticUsers",
    "TryAlternate",
    "TurnClient",
    "TurnConnection",
    "TurnEvent",
    "TurnServer",
    "TurnServerEvent",
    "TurnServerRunner",
    "TurnServerStats",
    "TurnState",
    "TurnUri",
    "UdpRelayAllocator",
    "candidate_keys",
    "check_passed",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
    "loopback_runner",
    "parse_turn_uri",
    "run_check",
]
