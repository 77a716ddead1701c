"""Events of the ICE agent (RFC 8445), returned by :meth:`IceAgent.next_event`.

Every event is a frozen, slotted dataclass under :class:`IceEvent` (itself a
:class:`~anchor_stun.events.StunEvent`), so a driver that pumps several Anchor cores can
dispatch on one base. Pairs are reported as :class:`PairInfo` snapshots: immutable copies of
what the agent knew about a candidate pair when the event was queued, safe to keep after the
agent moves on (the live :class:`~anchor_ice.checklist.CandidatePair` objects keep changing).

Order of a successful run: any number of :class:`LocalCandidateLearned` /
:class:`RemoteCandidateLearned` (peer-reflexive candidates, RFC 8445 §7.2.5.3.1, §7.3.1.3),
one :class:`PairNominated` per component (more when a peer nominates aggressively),
:class:`IceConnected` once every component has a selected pair, :class:`IceCompleted` once no
check is left to run (RFC 8445 §8.1.2). After :meth:`IceAgent.restart` the new selection
ends with :class:`RestartCompleted` instead of :class:`IceConnected` and
:class:`IceCompleted`. A run ends badly
with :class:`IceFailed`, preceded by :class:`ConsentLost` when consent expired (RFC 7675).
"""

from __future__ import annotations

from dataclasses import dataclass

from anchor_ice.candidate import Candidate, CandidateType
from anchor_stun.events import Address, StunEvent


@dataclass(frozen=True, slots=True)
class PairInfo:
    """An immutable snapshot of a candidate pair (RFC 8445 §6.1.2, Figure 5)."""

    component: int
    """Component id of both candidates (RFC 8445 §4)."""
    local: Candidate
    """The local candidate: host, srflx, prflx or relay (for a valid pair, the one whose
    address equals the mapped address of the check, RFC 8445 §7.2.5.3.2)."""
    remote: Candidate
    """The remote candidate (signalled, or peer-reflexive learned from a check)."""
    base: Address
    """The local address the pair's packets leave from: a host socket or a relayed address."""
    priority: int
    """Pair priority for the agent's role when the snapshot was taken (RFC 8445 §6.1.2.3)."""
    rtt: float | None = None
    """Latest round-trip time of an unambiguous check on the pair, seconds, if any."""

    @property
    def local_type(self) -> CandidateType:
        """Type of the local candidate."""
        return self.local.type

    @property
    def remote_type(self) -> CandidateType:
        """Type of the remote candidate."""
        return self.remote.type

    @property
    def local_address(self) -> Address:
        """(ip, port) of the local candidate."""
        return self.local.address

    @property
    def remote_address(self) -> Address:
        """(ip, port) of the remote candidate: where data for this pair goes."""
        return self.remote.address


@dataclass(frozen=True, slots=True)
class IceEvent(StunEvent):
    """Base of the events the ICE agent emits."""


@dataclass(frozen=True, slots=True)
class LocalCandidateLearned(IceEvent):
    """A local peer-reflexive candidate was discovered from the XOR-MAPPED-ADDRESS of a
    check response (RFC 8445 §7.2.5.3.1). It may be signalled to the peer."""

    candidate: Candidate
    """The new prflx candidate (its related address is its base)."""


@dataclass(frozen=True, slots=True)
class RemoteCandidateLearned(IceEvent):
    """A remote peer-reflexive candidate was learned from the source of a check request
    (RFC 8445 §7.3.1.3)."""

    candidate: Candidate
    """The new prflx candidate, with the priority of the request's PRIORITY attribute."""


@dataclass(frozen=True, slots=True)
class PairNominated(IceEvent):
    """A valid pair got its nominated flag (RFC 8445 §7.2.5.3.4, §7.3.1.5, §7.3.2)."""

    pair: PairInfo
    """The nominated pair."""
    selected: bool
    """True when it became the selected pair of its component (RFC 8445 §8.1.1)."""


@dataclass(frozen=True, slots=True)
class IceConnected(IceEvent):
    """Every component has a selected pair: data may flow (RFC 8445 §8.1.1, §12.1)."""

    pairs: tuple[PairInfo, ...]
    """The selected pair of each component, by component id."""


@dataclass(frozen=True, slots=True)
class IceCompleted(IceEvent):
    """The checklist is Completed and no check is left to run (RFC 8445 §8.1.2)."""


@dataclass(frozen=True, slots=True)
class IceFailed(IceEvent):
    """ICE processing failed (RFC 8445 §8.1.2, §7.2.5.4) or consent was lost (RFC 7675)."""

    reason: str
    """Why, in one line (for instance "all candidate pairs failed for component 1")."""


@dataclass(frozen=True, slots=True)
class ConsentLost(IceEvent):
    """No consent check on the selected pair succeeded for the consent timeout: the agent
    stops sending on it (RFC 7675 §5.1)."""

    component: int
    """The component whose selected pair lost consent."""


@dataclass(frozen=True, slots=True)
class RoleChanged(IceEvent):
    """The agent switched roles to repair a role conflict (RFC 8445 §7.2.5.1, §7.3.1.1)."""

    controlling: bool
    """The new role: True for controlling."""


@dataclass(frozen=True, slots=True)
class RestartCompleted(IceEvent):
    """An ICE restart (RFC 8445 §9) produced new selected pairs for every component; the
    previous selected pairs are no longer used."""

    pairs: tuple[PairInfo, ...]
    """The new selected pair of each component, by component id."""


__all__ = [
    "ConsentLost",
    "IceCompleted",
    "IceConnected",
    "IceEvent",
    "IceFailed",
    "LocalCandidateLearned",
    "PairInfo",
    "PairNominated",
    "RemoteCandidateLearned",
    "RestartCompleted",
    "RoleChanged",
]
