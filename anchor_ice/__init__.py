"""anchor_ice: ICE (RFC 8445): candidates and SDP descriptions (RFC 8839), the sans-I/O agent
with pluggable nominators, and the asyncio ``Connection`` (aioice-shaped) with its gatherer
(:mod:`anchor_ice.aio`).

The names below are the public API; everything in ``__all__`` is re-exported here."""

from __future__ import annotations

from anchor_ice.agent import (
    IceAgent,
    IceRole,
    IceState,
)
from anchor_ice.aio.connection import (
    POLICIES,
    Connection,
    IceError,
    IceFailedError,
    IceNotConnectedError,
    Policy,
    make_nominator,
)
from anchor_ice.aio.gather import (
    Gatherer,
    GatherFailure,
    TurnServerConfig,
)
from anchor_ice.candidate import (
    Candidate,
    CandidateError,
    CandidateType,
    candidate_priority,
    pair_priority,
)
from anchor_ice.checklist import (
    CandidatePair,
    Checklist,
    PairState,
)
from anchor_ice.events import (
    ConsentLost,
    IceCompleted,
    IceConnected,
    IceEvent,
    IceFailed,
    LocalCandidateLearned,
    PairInfo,
    PairNominated,
    RemoteCandidateLearned,
    RestartCompleted,
    RoleChanged,
)
from anchor_ice.nominator import (
    GatewayNominator,
    NominationView,
    Nominator,
    RelayOnly,
    StandardNominator,
    is_host_pair,
)
from anchor_ice.sdp import (
    IceDescription,
    SdpError,
    parse,
)

__all__ = [
    "POLICIES",
    "Candidate",
    "CandidateError",
    "CandidatePair",
    "CandidateType",
    "Checklist",
    "Connection",
    "ConsentLost",
    "GatewayNominator",
    "GatherFailure",
    "Gatherer",
    "IceAgent",
    "IceCompleted",
    "IceConnected",
    "IceDescription",
    "IceError",
    "IceEvent",
    "IceFailed",
    "IceFailedError",
    "IceNotConnectedError",
    "IceRole",
    "IceState",
    "LocalCandidateLearned",
    "NominationView",
    "Nominator",
    "PairInfo",
    "PairNominated",
    "PairState",
    "Policy",
    "RelayOnly",
    "RemoteCandidateLearned",
    "RestartCompleted",
    "RoleChanged",
    "SdpError",
    "StandardNominator",
    "TurnServerConfig",
    "candidate_priority",
    "is_host_pair",
    "make_nominator",
    "pair_priority",
    "parse",
]
