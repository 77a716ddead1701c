"""The sans-I/O ICE agent (RFC 8445) with consent freshness (RFC 7675).

Theory of operation
-------------------
:class:`IceAgent` runs one data stream with ``components`` components. It never touches a
socket, a clock or a random source: datagrams come in through :meth:`IceAgent.receive_datagram`,
go out through :meth:`IceAgent.datagrams_to_send`, time is the ``now`` argument (monotonic
seconds, last parameter everywhere), randomness comes from the ``rng`` callable, and results
come out of :meth:`IceAgent.next_event` (see :mod:`anchor_ice.events`).

Addresses. Every local candidate is added with its *base* (RFC 8445 §5.1.1): the local
address its packets leave from. For host and server-reflexive candidates that is the host
socket; for a relayed candidate it is the relayed address itself, and the adapter maps a
:class:`~anchor_stun.events.Transmit` whose ``local`` is a relayed address to a Send
indication or ChannelData through that TURN allocation. Likewise the adapter passes, for each
datagram, the ``local`` address it arrived on (the relayed address for data from a TURN
allocation) and the peer address (XOR-PEER-ADDRESS for relayed data, RFC 8445 §7.3.1.2).

Life cycle (``state``)::

    NEW --start--> CHECKING --every component selected--> CONNECTED --no check left--> COMPLETED
     |                |  ^                                    |  ^                         |
     |                |  |                                    |  +- a better pair to check +  (renomination)
     |                |  +------------- restart --------------+----------------------------+
     |                +--all pairs failed / checking timeout / consent lost--> FAILED
     +--------------------------------- close ---------------------------------> CLOSED

A controlled agent answers checks from construction on (RFC 8445 §7.3: requests can arrive
before the candidates), but sends its own checks only after :meth:`IceAgent.start` and once the
remote credentials are known.

Checks (RFC 8445 §6.1.4, §7.2). Pairs are formed, pruned and ordered by
:class:`~anchor_ice.checklist.Checklist`. Only candidates the nominator advertises, and the
bases they are sent from, take part (a gateway-mode agent checks from the host socket that
carries its server-reflexive candidate, a relay-only agent only through its relays). At most
one new check leaves per Ta (:attr:`IceAgent.effective_ta`: the higher of both agents' Ta
proposals, RFC 8445 §14.2: 50 ms unless the peer proposed less, 5 ms when both propose
Anchor's default): the first at once, then the head of the triggered-check queue, else the highest-priority
Waiting pair, each a Ta after the previous check (so the nominating repeat of a lone pair
leaves exactly one Ta after its first check). A check is a Binding request with USERNAME
``remote-ufrag:local-ufrag``, PRIORITY (the peer-reflexive priority of the local candidate,
§7.1.1), ICE-CONTROLLING or ICE-CONTROLLED with the tie-breaker, USE-CANDIDATE when
nominating, MESSAGE-INTEGRITY keyed with the remote password and FINGERPRINT. Each check is a
STUN client transaction (:class:`~anchor_stun.transaction.ClientTransaction`) retransmitted
with an RTO of ``max(500 ms, Ta * N * (Waiting + In-Progress))`` (RFC 8445 §14.3, N the number
of pairs) unless ``check_rto`` fixes it, ``check_rc`` sends and a final wait of
``check_rm * RTO`` (RFC 8489 §6.2.1 defaults: 7 and 16, which is 39.5 s for a 500 ms RTO).

Responses (§7.2.5): a 487 switches the role the request claimed, changes the tie-breaker and
re-queues the pair (§7.2.5.1); a response whose source is not the request's destination, or
that arrived on another local address, fails the pair (§7.2.5.2.1); other errors and
timeouts fail it, and so does an ICMP error the adapter reports for the check's destination
(:meth:`IceAgent.destination_unreachable`, §7.2.5.2.2: a hard one at once, without the rest
of the retransmissions). A success builds the valid pair from XOR-MAPPED-ADDRESS (§7.2.5.3.2),
learning a local peer-reflexive candidate when the address is new (§7.2.5.3.1), sets both
pairs Succeeded and unfreezes the pairs of the same foundation (§7.2.5.3.3).

Requests (§7.3): the agent answers its peer's checks through its
:class:`~anchor_ice.responder.Responder`, the one path every Binding request takes (see
:mod:`anchor_ice.responder`). FINGERPRINT, when present, must verify (else the datagram is
dropped); USERNAME and MESSAGE-INTEGRITY are required (400 without, 401 when the ufrag is not
ours or the integrity does not verify with our password), unknown comprehension-required
attributes get 420, a missing PRIORITY 400. A full agent then repairs role conflicts
(§7.3.1.1, 487 when it keeps its role), answers with XOR-MAPPED-ADDRESS + MESSAGE-INTEGRITY +
FINGERPRINT, learns a remote peer-reflexive candidate from an unknown source (§7.3.1.3),
queues a triggered check (§7.3.1.4) and, controlled, records the peer's nomination
(§7.3.1.5) — regular or aggressive. Before the remote credentials are known, requests are
answered and remembered, and their triggered checks are queued once the credentials come.
The peer's checks repeat, so what the responder looks up is remembered, each memory keyed by
everything its result depends on (nothing is cleared by hand; see its module docstring), and
the key's HMAC states and encoded answers by :class:`~anchor_stun.check.CheckKey`.

Nomination (§8.1). The controlling agent asks its :class:`~anchor_ice.nominator.Nominator`
which valid pair to nominate and when, and repeats that pair's check with USE-CANDIDATE.
With ``aggressive=True`` every check carries USE-CANDIDATE and the first success wins (for
interoperability tests). The controlled agent asks the nominator whether to accept each
nomination; a refusal is a 400, after which the controlling agent never nominates that pair
again and asks its nominator for another. A nomination of a pair the controlled agent has
not validated yet is accepted when the nominator accepts the pair as it stands, and otherwise
left unanswered until the peer's retransmission, by when the triggered check has shown the
real valid pair (see :mod:`anchor_ice.nominator`). (RFC 8445 §7.2.5.3.4 would set the checklist
Failed on a failed nomination; Anchor lets the nominator pick another valid pair, since a
policy refusal is not a connectivity failure.) A nominated pair becomes the selected pair of
its component (the highest-priority nominated pair when a peer nominates several), the
component's other pairs are dropped (§8.1.2), and once every component has one the agent is
CONNECTED, then COMPLETED when no check is left.

Renomination (``renomination=True``, only between agents that both signalled it: Anchor's
links do, in their descriptions). RFC 8445 §8.1.1 lets the controlling agent nominate one
pair per component and §8.1.2 stops the checks once it did; a link that must carry data
early would then have to choose between waiting for the best pair and settling for a worse
one for good. With renomination (the idea of draft-thatcher-ice-renomination, as libwebrtc
and pion use it) the controlling agent may nominate again: checks of pairs with a higher
priority than the selected one go on (on both sides, triggered checks included), the
nominator is asked again (its view carries ``selected`` and ``renomination``), and when it
picks a valid pair better than the selected one, that pair's check is repeated with
USE-CANDIDATE. Anchor only ever renominates to a pair of higher priority, so the controlled
agent's rule above (the highest-priority nominated pair is selected) is the draft's
"latest nomination wins" without its NOMINATION counter. Once no pending pair is better
than the selected one, the component's checks stop as in §8.1.2. A candidate that comes
after that (trickle ICE, RFC 8838: a peer's srflx candidate signalled late, a local one
gathered late), or a peer's check on a pair this side does not hold, is paired as before any
selection, and its pairs that outrank the selected one are checked (a COMPLETED agent is
CONNECTED again meanwhile, and COMPLETED once more when they are done): the link can still
move to a better pair when the peer's own checks never reach us. Data received on the
previous pair is still delivered (it is a valid pair), so nothing in flight is lost.

ICE-lite (``lite=True``, RFC 8445 §2.5, §7.3.2, §8.2): the agent only answers. A request with
USE-CANDIDATE makes (local address, source) a valid, nominated pair.

Failure. A component fails when every one of its pairs failed, it has no valid pair and the
peer signalled end-of-candidates (RFC 8445 §7.2.5.4; without end-of-candidates more pairs may
still come, RFC 8838, and only the timeout applies). ``checking_timeout`` seconds after the
start of checks (39.5 s by default, the PAC timer of RFC 8863) the agent fails if some
component still has no selected pair. Either way :class:`~anchor_ice.events.IceFailed` says
why, and the agent goes quiet.

Keepalives and consent. On each selected pair a full agent sends a consent check (a Binding
request like any check) every ``consent_interval`` seconds randomized to 0.8-1.2 times that
(RFC 7675 §5.1); every successful check on the pair renews consent. ``consent_timeout``
seconds after the last success, consent is lost: :class:`~anchor_ice.events.ConsentLost`,
then FAILED, and :meth:`IceAgent.send` returns None. A Binding indication with only
FINGERPRINT goes on a selected pair that saw no packet for ``keepalive_interval`` seconds
(RFC 8445 §11, Tr = 15 s); with consent checks every few seconds that only happens for lite
agents. The consent bookkeeping is :class:`~anchor_ice.consent.ConsentFreshness`, which the
agent drives (it sends the checks and fails when consent is lost).

ICE restart (§9): :meth:`IceAgent.restart` draws new local credentials and forgets the remote
credentials, candidates, pairs and checks; the role stays. The previous selected pairs keep
carrying data (and consent checks) until the new checks select pairs for every component,
which is :class:`~anchor_ice.events.RestartCompleted`. Requests with the previous credentials
are answered until then. Both sides call ``restart`` and exchange the new credentials and
candidates; new remote credentials given without a local restart are an error.

Malformed or hostile datagrams never raise: they are dropped and counted in
:attr:`IceAgent.dropped`.
"""

from __future__ import annotations

import os
import string
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from anchor_ice.candidate import Candidate, CandidateType, check_candidate, compute_foundation
from anchor_ice.checklist import MAX_PAIRS, CandidatePair, Checklist, PairState
from anchor_ice.consent import ConsentFreshness
from anchor_ice.events import (
    ConsentLost,
    IceCompleted,
    IceConnected,
    IceEvent,
    IceFailed,
    LocalCandidateLearned,
    PairInfo,
    PairNominated,
    RestartCompleted,
    RoleChanged,
)
from anchor_ice.nominator import NominationView, Nominator, StandardNominator
from anchor_ice.responder import Responder
from anchor_stun.address import count, positive_timeout, seconds
from anchor_stun.attributes import (
    ErrorCode,
    XorMappedAddress,
)
from anchor_stun.check import CheckKey
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address, Transmit, format_address
from anchor_stun.integrity import short_term_key
from anchor_stun.message import (
    Message,
    MessageClass,
    Method,
    is_stun,
)
from anchor_stun.transaction import (
    RC,
    RM,
    ClientTransaction,
    TransactionSucceeded,
)

__all__ = [
    "CHECKING_TIMEOUT",
    "CONSENT_INTERVAL",
    "CONSENT_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "PROPOSED_TA",
    "RTO_MIN",
    "TA",
    "TA_MIN",
    "IceAgent",
    "IceRole",
    "IceState",
    "check_ice_string",
]

TA = 0.05  # RFC 8445 §14.2: default Ta, and the value of a peer that proposes none, seconds
TA_MIN = 0.005  # RFC 8445 §14.2, App. B.1: transactions never more often than every 5 ms
PROPOSED_TA = TA_MIN  # Anchor's Ta proposal (a=ice-pacing, RFC 8839 §5.5); see IceAgent
RTO_MIN = 0.5  # RFC 8445 §14.3: agents MUST NOT use an RTO smaller than 500 ms
CONSENT_INTERVAL = 5.0  # RFC 7675 §5.1: default period of consent checks, seconds
CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1: consent expires after 30 s without a response
KEEPALIVE_INTERVAL = 15.0  # RFC 8445 §11: Tr, seconds
CHECKING_TIMEOUT = 39.5  # RFC 8863: PAC timer, RECOMMENDED = the check transaction timeout
CONSENT_RC = 4  # consent check sends (0, 0.5, 1.5, 3.5 s): done before the next check is due
CONSENT_RM = 2  # final wait of a consent transaction, in RTOs
ICE_CHARS = string.ascii_letters + string.digits + "+/"  # RFC 8839 §5.4 ice-char
UFRAG_LENGTH = 8  # RFC 8839 §5.4: at least 4 characters
PWD_LENGTH = 24  # RFC 8839 §5.4: at least 22 characters
_MAX_RTTS = 16


class IceState(Enum):
    """State of the agent (RFC 8445 §6.1.3, with WebRTC-like CONNECTED/COMPLETED)."""

    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    COMPLETED = "completed"
    FAILED = "failed"
    CLOSED = "closed"


# States as module constants: an enum member looked up through its class costs about
# 80 ns in CPython 3.11, and these tests run for every check a connected agent answers.
_ENDED = (IceState.CLOSED, IceState.FAILED)
_NEW_OR_ENDED = (IceState.CLOSED, IceState.FAILED, IceState.NEW)
_COMPLETED = IceState.COMPLETED


class IceRole(Enum):
    """ICE roles (RFC 8445 §6.1.1)."""

    CONTROLLING = "controlling"
    CONTROLLED = "controlled"


class _Kind(Enum):
    CHECK = "check"
    CONSENT = "consent"


@dataclass(eq=False, slots=True)
class _Check:
    """One Binding request the agent sent, and what to do with its response."""

    kind: _Kind
    txid: bytes
    pair: CandidatePair
    base: Address
    dest: Address
    key: CheckKey
    priority: int
    controlling: bool
    use_candidate: bool
    nominate_on_success: bool
    transaction: ClientTransaction | None
    sent_at: float
    expires: float  # end of the transaction's lifetime: a cancelled check is forgotten then
    clean: bool = True  # no retransmission before cancellation: a late answer times well


@dataclass(slots=True)
class _Credentials:
    ufrag: str
    pwd: str
    key: CheckKey = field(repr=False)
    """The short-term key (RFC 8489 §9.1) of ``pwd``, which signs or verifies checks."""


def _ice_string(rng: Callable[[int], bytes], length: int) -> str:
    return "".join(ICE_CHARS[b % 64] for b in rng(length))


def check_ice_string(value: object, minimum: int, what: str) -> None:
    """An ICE user fragment or password (``minimum`` 4 or 22) checked where it enters:
    ``minimum``-256 ice-chars (RFC 8839 §5.4), else :class:`LocalProtocolError` naming
    ``what``."""
    if (
        not isinstance(value, str)
        or not minimum <= len(value) <= 256
        or any(c not in ICE_CHARS for c in value)
    ):
        raise LocalProtocolError(
            f"{what} must be {minimum}-256 ice-chars (RFC 8839 §5.4), got {value!r}"
        )


def peer_reflexive_priority(candidate: Candidate) -> int:
    """The PRIORITY attribute of a check from ``candidate``: its priority with the
    peer-reflexive type preference (RFC 8445 §7.1.1, §5.1.2.1)."""
    return (110 << 24) | (candidate.priority & 0x00FFFFFF)


def _binding(data: bytes) -> Message | None:
    """``data`` decoded when it is a STUN Binding message (ICE's), else None: not STUN, not
    well formed (RFC 8489 §6.3), or another method."""
    if not is_stun(data):
        return None
    try:
        msg = Message.decode(data)
    except DecodeError:
        return None
    return msg if msg.method == Method.BINDING else None


def _pair_key(pair: CandidatePair) -> tuple[int, Address, Address]:
    return (pair.component, pair.local.address, pair.remote.address)


def _policy_name(nominator: Nominator) -> str:
    """``relay`` for RelayOnly, ``gateway`` for GatewayNominator...: the name users chose."""
    name = type(nominator).__name__
    return {"RelayOnly": "relay", "GatewayNominator": "gateway",
            "StandardNominator": "standard"}.get(name, name)


_WAY_OUT = {
    "gateway": "add a TURN server for a relayed candidate, a STUN server that answers for a"
    " server-reflexive one, or use policy='standard' to allow host pairs",
    "relay": "add a TURN server that answers (check its address and credentials), or use"
    " policy='standard'",
    "standard": "give a host address to gather on",
}
"""The way out of "no candidate to offer", per policy (by :func:`_policy_name`)."""


class IceAgent:
    """A full (or lite) ICE agent for one data stream (RFC 8445), sans-I/O.

    See the module docstring for the theory of operation. Keyword arguments:

    * ``controlling``: initial role (RFC 8445 §6.1.1).
    * ``rng``: ``rng(n) -> n random bytes``; feeds credentials, the tie-breaker, transaction
      ids and the consent jitter.
    * ``local_ufrag`` / ``local_pwd``: credentials (RFC 8839 §5.4 ice-chars, at least 4 and
      22 characters); drawn from ``rng`` when omitted.
    * ``tie_breaker``: 64-bit role-conflict tie-breaker (RFC 8445 §7.1.3), from ``rng`` by default.
    * ``components``: number of components of the stream (RFC 8445 §4).
    * ``ta``: this agent's Ta proposal, seconds (RFC 8445 §14.2; signal it as
      ``a=ice-pacing``, RFC 8839 §5.5). Checks are paced at :attr:`effective_ta`, the higher
      of this and the peer's proposal (:meth:`set_remote_ta`), which is RFC 8445's default
      50 ms until the peer's proposal is given. The default proposal, 5 ms, is the §14.2
      floor (see :attr:`effective_ta`); smaller values are outside RFC 8445.
    * ``nominator``: the nomination policy (:class:`~anchor_ice.nominator.StandardNominator`).
    * ``lite``: act as an ICE-lite agent (RFC 8445 §2.5); always controlled.
    * ``aggressive``: controlling only, USE-CANDIDATE on every check (RFC 5245 aggressive
      nomination), for interoperability tests.
    * ``max_pairs``: checklist limit (RFC 8445 §6.1.2.5).
    * ``check_rto``: fixed RTO of checks, seconds; None for the RFC 8445 §14.3 formula.
    * ``check_rc`` / ``check_rm``: sends and final wait (in RTOs) of a check (RFC 8489 §6.2.1).
    * ``consent_interval`` / ``consent_timeout``: RFC 7675 §5.1 period and expiry, seconds.
    * ``keepalive_interval``: Tr of RFC 8445 §11, seconds.
    * ``checking_timeout``: seconds after the start of checks before failing when some
      component has no selected pair (RFC 8863 PAC timer); None never times out.
    * ``renomination``: both agents agreed on renomination (module docstring); default
      False, RFC 8445 regular nomination.
    """

    def __init__(
        self,
        *,
        controlling: bool,
        rng: Callable[[int], bytes] = os.urandom,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        tie_breaker: int | None = None,
        components: int = 1,
        ta: float = PROPOSED_TA,
        nominator: Nominator | None = None,
        lite: bool = False,
        aggressive: bool = False,
        max_pairs: int = MAX_PAIRS,
        check_rto: float | None = None,
        check_rc: int = RC,
        check_rm: int = RM,
        consent_interval: float = CONSENT_INTERVAL,
        consent_timeout: float = CONSENT_TIMEOUT,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        checking_timeout: float | None = CHECKING_TIMEOUT,
        renomination: bool = False,
    ) -> None:
        count(components, "components", 1, 256)
        seconds(ta, "ta")
        positive_timeout(check_rto, "check_rto")
        count(check_rc, "check_rc")
        count(check_rm, "check_rm")
        count(max_pairs, "max_pairs")
        seconds(consent_interval, "consent_interval")
        seconds(consent_timeout, "consent_timeout")
        seconds(keepalive_interval, "keepalive_interval")
        positive_timeout(checking_timeout, "checking_timeout")
        if lite and controlling:
            raise LocalProtocolError("an ICE-lite agent is controlled (RFC 8445 §6.1.1)")
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        if nominator is not None and not isinstance(nominator, Nominator):
            raise LocalProtocolError(
                "nominator must be a Nominator (GatewayNominator(), StandardNominator(),"
                f" RelayOnly()...), not {type(nominator).__name__}"
            )
        if local_ufrag is not None:
            check_ice_string(local_ufrag, 4, "local_ufrag")
        if local_pwd is not None:
            check_ice_string(local_pwd, 22, "local_pwd")
        if tie_breaker is not None and (
            isinstance(tie_breaker, bool)
            or not isinstance(tie_breaker, int)
            or not 0 <= tie_breaker < 2**64
        ):
            raise LocalProtocolError(
                f"tie_breaker must be a 64-bit unsigned integer, not {tie_breaker!r}"
            )
        self._rng = rng
        ufrag = local_ufrag if local_ufrag is not None else _ice_string(rng, UFRAG_LENGTH)
        pwd = local_pwd if local_pwd is not None else _ice_string(rng, PWD_LENGTH)
        self._local = _Credentials(ufrag, pwd, CheckKey(short_term_key(pwd)))
        self._previous_local: _Credentials | None = None
        self._remote: _Credentials | None = None
        self._previous_remote: _Credentials | None = None
        if tie_breaker is None:
            tie_breaker = int.from_bytes(rng(8), "big")
        self._tie_breaker = tie_breaker
        self._controlling = controlling
        self.components = components
        """Number of components of the data stream."""
        self.ta = ta
        """This agent's Ta proposal, seconds (RFC 8445 §14.2, ``a=ice-pacing``)."""
        self._remote_ta: float | None = None
        self.nominator: Nominator = nominator if nominator is not None else StandardNominator()
        """The nomination policy."""
        self.lite = lite
        """True for an ICE-lite agent."""
        self.aggressive = aggressive
        """True: USE-CANDIDATE on every check of a controlling agent."""
        self.check_rto = check_rto
        """Fixed RTO of checks, or None for RFC 8445 §14.3 (never below 500 ms there;
        a fixed value is taken as given, so tests may go lower)."""
        self.check_rc = check_rc
        """Sends of a check transaction (RFC 8489 §6.2.1 Rc)."""
        self.check_rm = check_rm
        """Final wait of a check transaction, in RTOs (RFC 8489 §6.2.1 Rm)."""
        self.keepalive_interval = keepalive_interval
        """Tr: idle time before a keepalive indication, seconds (RFC 8445 §11)."""
        self.checking_timeout = checking_timeout
        """Seconds from the start of checks to a selected pair per component, or None."""
        self.renomination = renomination
        """True when both agents agreed on renomination (module docstring, "Renomination"):
        checks go on after a pair is selected while a better one may still succeed, and the
        controlling agent nominates again when its nominator picks a better valid pair. Set
        it before the first check; only between agents that both signalled it."""
        self.dropped = 0
        """Datagrams ignored: undecodable, failing FINGERPRINT or integrity, unknown local
        address, responses to checks no longer tracked, anything after close or failure."""
        self.failure_reason: str | None = None
        """Why the agent failed, once FAILED."""

        self._state = IceState.NEW
        self._checklist = Checklist(controlling=controlling, max_pairs=max_pairs)
        self._locals: tuple[tuple[Candidate, Address], ...] = ()
        """Local candidates and their bases; replaced, never changed in place, so that what
        is derived from it can tell it is still current (the bases and routes of
        :class:`~anchor_ice.responder.Responder`)."""
        self._remotes: list[Candidate] = []
        self._remote_complete = False
        self._local_complete = False
        self._records: dict[bytes, _Check] = {}
        self._outbox: list[Transmit] = []
        self._events: deque[IceEvent] = deque()
        self._started = False
        self._started_at = 0.0
        self._running = False
        self._last_check_at: float | None = None
        self._next_check_at = 0.0
        self._now = 0.0
        self._selected: Mapping[int, CandidatePair] = {}
        """The selected pair of each component; replaced, never changed in place (as
        ``_locals``), so that what is derived from it can tell it is still current."""
        self._previous: Mapping[int, CandidatePair] = {}
        """During a restart, the selected pairs of the previous session (replaced likewise)."""
        self._nominating: dict[int, CandidatePair] = {}
        self._first_valid_at: dict[int, float] = {}
        self._refused: set[tuple[int, Address, Address]] = set()
        # What the checks saw, for failure reasons: pairs (component, local, remote) whose
        # checks got an authenticated answer, and those that got an unauthenticated 401 (the
        # peer could not verify our MESSAGE-INTEGRITY: wrong remote password, RFC 8445 §7.3.1)
        self._answered: set[tuple[int, Address, Address]] = set()
        self._rejected: set[tuple[int, Address, Address]] = set()
        # ... and those whose check the network reported unreachable (an ICMP error, see
        # destination_unreachable): the address and why, for the reason
        self._unreachable: dict[tuple[int, Address, Address], tuple[Address, str]] = {}
        self.unreachable_checks = 0
        """Checks ended at once because their destination was reported unreachable with a
        hard error (:meth:`destination_unreachable`) instead of being retransmitted."""
        self._consent = ConsentFreshness(consent_interval, consent_timeout, rng)
        """Consent freshness of the selected pairs (RFC 7675), which this agent drives."""
        self._responder = Responder(self)
        """The answers to the peer's checks (RFC 8445 §7.3), which this agent drives."""
        self._restarting = False
        self._quiet_completion = False
        self._nomination_eval_at = float("-inf")

    # ================================================================== properties

    @property
    def state(self) -> IceState:
        """The agent's state."""
        return self._state

    @property
    def consent_interval(self) -> float:
        """Base period of consent checks, seconds (RFC 7675 §5.1)."""
        return self._consent.interval

    @property
    def consent_timeout(self) -> float:
        """Consent expires this long after the last successful check (RFC 7675 §5.1)."""
        return self._consent.timeout

    @property
    def controlling(self) -> bool:
        """True in the controlling role."""
        return self._controlling

    @property
    def role(self) -> IceRole:
        """The current role (it can change on a role conflict, RFC 8445 §7.3.1.1)."""
        return IceRole.CONTROLLING if self._controlling else IceRole.CONTROLLED

    @property
    def remote_ta(self) -> float | None:
        """The peer's Ta proposal, seconds (``a=ice-pacing``), or None: it proposed none."""
        return self._remote_ta

    @property
    def effective_ta(self) -> float:
        """The Ta checks are paced with (RFC 8445 §14.2): the higher of the two agents'
        proposals, a peer that proposed none counting as the default 50 ms. So 50 ms until
        :meth:`set_remote_ta` gives the peer's proposal; 5 ms when both agents propose
        Anchor's default, the floor §14.2 sets for all transactions ("MUST NOT be sent more
        often than once every 5 ms"). Why 5 ms suits Anchor's data (§14.2 "MAY use another
        value based on the characteristics of the associated data"): a check is about 100
        bytes, so one per 5 ms is 20 KB/s, well under what a link carrying datagrams moves
        (Appendix B.1: checks should not take more bandwidth than the data), and at most 100
        checks are outstanding in a 500 ms RTO, the bound Appendix B.1 derives 5 ms from.
        The floor is for every agent of a process taken together; Anchor paces each agent on
        its own (two agents of one process may each send a check in the same 5 ms)."""
        remote = self._remote_ta if self._remote_ta is not None else TA
        return max(self.ta, remote)

    @property
    def tie_breaker(self) -> int:
        """The current tie-breaker (RFC 8445 §7.1.3; changed on a 487, §7.2.5.1)."""
        return self._tie_breaker

    @property
    def local_ufrag(self) -> str:
        """Local username fragment (RFC 8445 §5.3), to signal."""
        return self._local.ufrag

    @property
    def local_pwd(self) -> str:
        """Local password (RFC 8445 §5.3), to signal."""
        return self._local.pwd

    @property
    def remote_ufrag(self) -> str | None:
        """The peer's username fragment, once known."""
        return self._remote.ufrag if self._remote else None

    @property
    def pairs(self) -> list[CandidatePair]:
        """The checklist, by decreasing priority (read only)."""
        return list(self._checklist.pairs)

    @property
    def valid_pairs(self) -> list[CandidatePair]:
        """The valid list, by decreasing priority (read only)."""
        return list(self._checklist.valid)

    @property
    def checklist(self) -> Checklist:
        """The checklist object itself (read only)."""
        return self._checklist

    @property
    def selected_pair(self) -> CandidatePair | None:
        """The pair data of component 1 goes on (the previous one during a restart)."""
        return self.selected_pairs.get(1)

    @property
    def selected_pairs(self) -> dict[int, CandidatePair]:
        """Pairs data goes on, by component (previous ones during a restart)."""
        out = dict(self._previous)
        out.update(self._selected)
        return out

    @property
    def remote_candidates(self) -> list[Candidate]:
        """Remote candidates, signalled and learned."""
        return list(self._remotes)

    def local_candidates(self, advertised_only: bool = True) -> list[Candidate]:
        """Local candidates. With ``advertised_only`` (the default) those to signal: the ones
        the nominator advertises (a gateway-mode agent hides its host candidates), learned
        peer-reflexive ones excluded. Otherwise every local candidate."""
        if not advertised_only:
            return [c for c, _ in self._locals]
        return [
            c
            for c, _ in self._locals
            if c.type is not CandidateType.PRFLX and self.nominator.advertise(c)
        ]

    def nothing_to_offer(self, component: int = 1) -> str | None:
        """Why the nominator leaves this agent no local candidate to offer on ``component``
        (none gathered, or the policy advertises none of them: a gateway policy with host
        candidates only, a relay policy without a relayed one), with the way out; None when
        there is one to offer. Once local gathering is complete
        (:meth:`end_of_local_candidates`) a full agent fails with this reason as soon as
        checks start: no check can leave and the peer has nothing to check (RFC 8445
        §7.2.5.4, a checklist that can never succeed)."""
        local = [
            c for c, _ in self._locals
            if c.component == component and c.type is not CandidateType.PRFLX
        ]
        if any(self.nominator.advertise(c) for c in local):
            return None
        policy = _policy_name(self.nominator)
        kinds = ", ".join(sorted({c.type.value for c in local})) or "none gathered"
        way_out = _WAY_OUT.get(policy, "add a TURN server or use policy='standard'")
        return (
            f"no candidate to offer under the {policy} policy: it offers none of the local"
            f" candidates ({kinds}); {way_out}"
        )

    # ================================================================== signalling input

    def add_local_candidate(self, candidate: Candidate, base: Address) -> None:
        """Add a gathered local candidate and its base (the local socket address, or the
        relayed address for a relayed candidate). A candidate with the same address and base
        as one already known is redundant (RFC 8445 §5.1.3): the higher priority one stays."""
        if self._state is IceState.CLOSED:
            raise LocalProtocolError("the agent is closed")
        if not 1 <= candidate.component <= self.components:
            raise LocalProtocolError(
                f"component {candidate.component} outside 1-{self.components}"
            )
        base = (str(base[0]), int(base[1]))
        checking = set(self._checking_locals())
        for i, (existing, existing_base) in enumerate(self._locals):
            if (
                existing.component == candidate.component
                and existing.address == candidate.address
                and existing_base == base
            ):
                if candidate.priority > existing.priority:
                    self._locals = (*self._locals[:i], (candidate, base), *self._locals[i + 1 :])
                    self._form_pairs()
                return
        self._locals += ((candidate, base),)
        self._form_pairs([x for x in self._checking_locals() if x not in checking])

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """The peer's ufrag and password (RFC 8445 §5.3). Changing them while checks run
        needs a local :meth:`restart` first (RFC 8445 §9)."""
        if self._state is IceState.CLOSED:
            raise LocalProtocolError("the agent is closed")
        if not ufrag or not pwd or ":" in ufrag:
            raise LocalProtocolError("remote ufrag and pwd must be non-empty, ufrag without ':'")
        if self._remote is not None:
            if (self._remote.ufrag, self._remote.pwd) == (ufrag, pwd):
                return
            raise LocalProtocolError(
                "the remote credentials changed: the peer restarted ICE, call restart(now) "
                "first (RFC 8445 §9)"
            )
        self._remote = _Credentials(ufrag, pwd, CheckKey(short_term_key(pwd)))
        self._responder.replay(ufrag, self._now)
        self._update_running()

    def set_remote_ta(self, ta: float | None) -> None:
        """The peer's Ta proposal in seconds (its ``a=ice-pacing``, RFC 8839 §5.5), or None
        when it proposed none (RFC 8445's default, 50 ms, then stands for it). Checks are
        paced at :attr:`effective_ta` from the next one on."""
        if ta is not None and not ta > 0:
            raise LocalProtocolError(f"the remote Ta must be positive, got {ta}")
        self._remote_ta = ta

    def end_of_local_candidates(self) -> None:
        """Local gathering is complete: no local candidate will be added any more (only
        peer-reflexive ones learned from checks). Nominators see it as
        :attr:`~anchor_ice.nominator.NominationView.local_complete`."""
        self._local_complete = True

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        """Add a candidate signalled by the peer; None means end-of-candidates (RFC 8838).
        Candidates of components this stream does not have are ignored (RFC 8445 §6.1.2.2);
        one that has the address of a learned peer-reflexive candidate replaces it
        (RFC 8445 §7.3.1.3)."""
        if self._state is IceState.CLOSED:
            raise LocalProtocolError("the agent is closed")
        if candidate is None:
            self._remote_complete = True
            return
        check_candidate(candidate)
        if not 1 <= candidate.component <= self.components:
            return
        for existing in self._remotes:
            if (
                existing.component == candidate.component
                and existing.address == candidate.address
            ):
                if existing.type is CandidateType.PRFLX and candidate.type is not (
                    CandidateType.PRFLX
                ):
                    self._remotes[self._remotes.index(existing)] = candidate
                    self._checklist.replace_remote(existing, candidate)
                    for pair in (*self._selected.values(), *self._previous.values()):
                        if pair.remote == existing:
                            pair.remote = candidate
                            pair.compute_priority(self._controlling)
                    self._form_pairs()
                return
        self._remotes.append(candidate)
        self._form_pairs(fresh_remote=candidate)

    # ================================================================== control

    def start(self, now: float) -> None:
        """Begin connectivity checks (RFC 8445 §6.1.4.2); the first check leaves at ``now``
        once the remote credentials and a pair are known. A lite agent only answers."""
        if self._state is not IceState.NEW:
            raise LocalProtocolError(f"start() in state {self._state.value}")
        self._now = now
        self._started = True
        self._started_at = now
        self._next_check_at = now
        self._state = IceState.CHECKING
        self._update_running()
        self._after_change(now)

    def restart(self, now: float) -> None:
        """ICE restart (RFC 8445 §9): new local credentials; remote credentials, candidates,
        pairs and checks forgotten; role kept. Data keeps flowing on the previous selected
        pairs until the new checks select pairs for every component."""
        if self._state is IceState.CLOSED:
            raise LocalProtocolError("the agent is closed")
        self._now = now
        ufrag = _ice_string(self._rng, UFRAG_LENGTH)
        pwd = _ice_string(self._rng, PWD_LENGTH)
        self._previous_local = self._local
        self._local = _Credentials(ufrag, pwd, CheckKey(short_term_key(pwd)))
        if self._remote is not None:
            self._previous_remote = self._remote
        self._remote = None
        for txid, record in list(self._records.items()):
            if record.kind is _Kind.CHECK:
                del self._records[txid]
        lost = self._consent.lost()
        previous = dict(self._previous)
        if self._state is not IceState.FAILED:
            for component, pair in self._selected.items():
                if component not in lost:
                    previous[component] = pair
        for component in lost:
            previous.pop(component, None)
        self._previous = previous
        self._consent.keep(previous)
        self._selected = {}
        self._nominating.clear()
        self._first_valid_at.clear()
        self._refused.clear()
        self._answered.clear()
        self._rejected.clear()
        self._unreachable.clear()
        self._checklist.clear()
        self._remotes.clear()
        self._remote_complete = False
        self._responder.forget_pending()
        self._locals = tuple((c, b) for c, b in self._locals if c.type is not CandidateType.PRFLX)
        self._restarting = self._started
        self._running = False
        self._last_check_at = None
        self._nomination_eval_at = float("-inf")
        self.failure_reason = None
        if self._started:
            self._state = IceState.CHECKING
            self._started_at = now
            self._next_check_at = now
        self._form_pairs()

    def close(self, now: float) -> None:
        """Stop everything: no more checks, answers, consent or keepalives (RFC 8445 §11:
        keepalives stop with the session). Idempotent."""
        self._now = now
        self._state = IceState.CLOSED
        self._records.clear()
        self._outbox.clear()
        self._responder.forget_pending()
        self._consent.clear()

    # ================================================================== driver surface

    def receive_datagram(
        self, data: bytes, addr: Address, local: Address | None, now: float
    ) -> bool:
        """Feed a datagram that arrived on ``local`` (a base: host socket or relayed address;
        None only when the agent has a single base) from ``addr``. Returns True when it was a
        STUN Binding message for ICE (handled or dropped), False otherwise (application data,
        undecodable bytes, STUN of another method) so that the adapter can pass it on.
        Never raises on bad input."""
        self._now = now
        if self._state in _ENDED:
            return self._ignore(data)
        # A check whose attributes were read before (the peer's checks repeat them) is not
        # decoded again (Responder.receive).
        responder = self._responder
        if not responder.receive(data, addr, local, now):
            msg = _binding(data)
            if msg is None:
                return False
            if msg.msg_class is MessageClass.REQUEST:
                responder.receive_message(msg, addr, local, now)
            elif msg.msg_class is MessageClass.INDICATION:
                return True  # a keepalive (RFC 8445 §11): nothing to do
            else:
                self._on_response(msg, (str(addr[0]), int(addr[1])), local, now)
        self._after_change(now)
        return True

    def destination_unreachable(
        self,
        addr: Address,
        local: Address | None,
        now: float,
        *,
        reason: str = "unreachable",
        hard: bool = True,
    ) -> int:
        """The socket of the base ``local`` (None only when the agent has a single base)
        reported an ICMP error for a datagram it sent to ``addr`` (RFC 8445 §7.2.5.2.2; the
        adapter reads it from the socket, RFC 1122 §4.1.3.3). A *hard* error (port or
        protocol unreachable, communication administratively prohibited: ``ECONNREFUSED``)
        ends every connectivity check in flight from that base to ``addr`` at once: the
        pair's transaction failed (RFC 8445 §7.2.5.2), so it is not retransmitted to the end
        of its Rc sends, and the checklist moves on. A *soft* one (host or network
        unreachable, which may pass, RFC 1122 §4.2.3.9) changes no state, as §7.2.5.2.2
        says. Either way the address and ``reason`` (the error's text) are remembered for the
        failure reason, should ICE fail (``... unreachable: 192.0.2.1:5000 (Connection
        refused)``). Consent checks are left to their own expiry (RFC 7675). Returns how many
        checks ended; an address no check went to changes nothing. Never raises."""
        self._now = now
        if self._state in _ENDED:
            return 0
        try:
            addr = (str(addr[0]), int(addr[1]))
            if local is None:
                bases = {b for _, b in self._locals}
                if len(bases) != 1:
                    return 0
                base = next(iter(bases))
            else:
                base = (str(local[0]), int(local[1]))
        except (TypeError, ValueError, IndexError):
            return 0
        ended = 0
        for txid, record in list(self._records.items()):
            if (
                record.kind is not _Kind.CHECK
                or record.transaction is None
                or record.dest != addr
                or record.base != base
            ):
                continue
            self._unreachable[_pair_key(record.pair)] = (addr, reason)
            if hard:
                del self._records[txid]
                self._check_failed(record, now, refused=False)
                ended += 1
        self.unreachable_checks += ended
        if ended:
            self._after_change(now)
        return ended

    def _ignore(self, data: bytes) -> bool:
        """What :meth:`receive_datagram` does once the agent is closed or failed: a STUN
        Binding message is dropped and counted (True), anything else is not ICE's (False)."""
        if _binding(data) is None:
            return False
        self.dropped += 1
        return True

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """Everything due: answers, checks (at most one new check per Ta), retransmissions,
        consent checks, keepalives. Each Transmit names the local base it leaves from."""
        self._now = now
        if self._state not in _ENDED:
            self._pace(now)
            self._after_change(now)
        out, self._outbox = self._outbox, []
        return out

    def next_timer(self) -> float | None:
        """The absolute time at which :meth:`handle_timer` wants to run, or None."""
        if self._state in _ENDED:
            return None
        times: list[float] = []
        for record in self._records.values():
            if record.transaction is not None:
                t = record.transaction.next_timer()
                if t is not None:
                    times.append(t)
        if self._running and self._checklist.has_work():
            times.append(self._check_due())
        consent = self._consent.next_timer()
        if consent is not None:
            times.append(consent)
        for pair in self._active_pairs():
            if pair.last_sent is not None:
                times.append(pair.last_sent + self.keepalive_interval)
        if self._nominates():
            for component in range(1, self.components + 1):
                if component in self._nominating or (
                    component in self._selected and not self._improvable(component)
                ):
                    continue
                view = self._view(component)
                if not view.valid_pairs:
                    continue
                t = self.nominator.next_timer(view)
                if t is not None and t > self._nomination_eval_at:
                    times.append(t)
        if self._started and self.checking_timeout is not None and self._awaiting_selection():
            times.append(self._started_at + self.checking_timeout)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at ``now``: retransmissions and timeouts of checks, the next
        paced check, nomination decisions, consent and keepalives, the checking timeout.
        An early call does nothing that was not due."""
        self._now = now
        if self._state in _ENDED:
            return
        for txid, record in list(self._records.items()):
            transaction = record.transaction
            if transaction is None:
                if now >= record.expires:
                    del self._records[txid]
                continue
            transaction.handle_timer(now)
            self._drain(record, now)
            if transaction.done:
                del self._records[txid]
                if record.kind is _Kind.CHECK:
                    self._check_failed(record, now, refused=False)
        if not self._consent_timers(now):
            return
        self._keepalives(now)
        self._pace(now)
        self._after_change(now)
        if (
            self._state not in (IceState.FAILED, IceState.CLOSED)
            and self._started
            and self.checking_timeout is not None
            and self._awaiting_selection()
            and now >= self._started_at + self.checking_timeout
        ):
            self._fail(self._timeout_reason(), now)

    def next_event(self) -> IceEvent | None:
        """The oldest event not yet returned, or None."""
        return self._events.popleft() if self._events else None

    def send(self, data: bytes, now: float) -> Transmit | None:
        """Application data on component 1: see :meth:`send_on`."""
        return self.send_on(1, data, now)

    def send_on(self, component: int, data: bytes, now: float) -> Transmit | None:
        """A Transmit carrying ``data`` on the selected pair of ``component`` (the previous
        one during a restart), or None when there is none, the agent is closed or failed, or
        consent was lost (RFC 7675 §5.1: sending stops): :meth:`data_route` for one
        datagram."""
        route = self.data_route(component, now)
        if route is None:
            return None
        return Transmit(bytes(data), route[0], route[1])

    def data_route(self, component: int, now: float) -> tuple[Address, Address] | None:
        """Where application data on ``component`` goes now: the remote address and the
        local base of its selected pair (the previous one during a restart), or None when
        there is none, the agent is closed or failed, or consent was lost (RFC 7675 §5.1:
        sending stops). The call counts as data sent on the pair (its keepalive clock, RFC
        8445 §11): one call covers the datagrams that go out together."""
        self._now = now
        if self._state in _ENDED:
            return None
        if not self._consent_timers(now, send_checks=False):
            return None
        pair = self._selected.get(component) or self._previous.get(component)
        if pair is None:
            return None
        if self._consent.is_lost(component):
            return None
        pair.last_sent = now
        return pair.remote.address, pair.base

    # ================================================================== pairs

    def _checking_locals(self) -> list[tuple[Candidate, Address]]:
        """Local candidates checks may leave from: advertised ones and the bases of advertised
        ones (a hidden host candidate carrying an advertised srflx)."""
        advertised = [
            (c, b)
            for c, b in self._locals
            if c.type is not CandidateType.PRFLX and self.nominator.advertise(c)
        ]
        bases = {(c.component, b) for c, b in advertised}
        out = []
        for candidate, base in self._locals:
            if candidate.type is CandidateType.PRFLX:
                continue
            if (candidate, base) in advertised or (
                candidate.type is CandidateType.HOST
                and (candidate.component, candidate.address) in bases
            ):
                out.append((candidate, base))
        return out

    def _form_pairs(
        self,
        fresh_locals: Sequence[tuple[Candidate, Address]] = (),
        fresh_remote: Candidate | None = None,
    ) -> None:
        """Pair the candidates (RFC 8445 §6.1.2). A component with a selected pair gets no
        new pair (§8.1.2), except under renomination (module docstring, "Renomination"):
        there a new candidate (``fresh_locals``, the checking locals a local candidate
        added, or ``fresh_remote``) is paired like any other, and its pairs that outrank the
        selected pair are checked (:meth:`_admit_new_pair`)."""
        if self.lite:
            return
        checking = self._checking_locals()
        remotes = [r for r in self._remotes if r.component not in self._selected]
        added = self._checklist.form(checking, remotes)
        if self.renomination and self._selected:
            if fresh_remote is not None and fresh_remote.component in self._selected:
                added += self._checklist.form(checking, [fresh_remote])
            if fresh_locals:
                added += self._checklist.form(
                    fresh_locals, [r for r in self._remotes if r.component in self._selected]
                )
        for pair in added:
            if not self._admit_new_pair(pair):
                self._checklist.remove(pair)
            elif self._running:
                pair.state = self._checklist.state_for_new_pair(pair)

    def _admit_new_pair(self, pair: CandidatePair) -> bool:
        """Admit a pair just formed (or learned from a peer's check) to checking, and say
        whether it was admitted: always before its component has a selected pair; after,
        only under renomination and when it outranks the selected pair (§8.1.2 otherwise;
        module docstring, "Renomination"). Admitting one there makes a COMPLETED agent
        CONNECTED again while it is checked; it completes again without a second
        :class:`~anchor_ice.events.IceCompleted`. The caller removes a pair not admitted."""
        selected = self._selected.get(pair.component)
        if selected is None:
            return True
        if not (self.renomination and pair.priority > selected.priority):
            return False
        if self._state is IceState.COMPLETED and not self._restarting:
            self._state = IceState.CONNECTED
            self._quiet_completion = True  # IceCompleted was said once: not again
        return True

    def _update_running(self) -> None:
        running = (
            self._started
            and not self.lite
            and self._remote is not None
            and self._state in (IceState.CHECKING, IceState.CONNECTED, IceState.COMPLETED)
        )
        if running and not self._running:
            self._checklist.initial_states()
        self._running = running

    _LOOKUP_ORDER = {
        CandidateType.HOST: 0,
        CandidateType.SRFLX: 1,
        CandidateType.RELAY: 2,
        CandidateType.PRFLX: 3,
    }

    def _local_for_mapped(self, component: int, mapped: Address) -> Candidate | None:
        """The local candidate whose address is the mapped address (RFC 8445 §7.2.5.3.1);
        when several share it, the host one (a srflx equal to a host is redundant, §5.1.3)."""
        found = [
            c for c, _ in self._locals if c.component == component and c.address == mapped
        ]
        if not found:
            return None
        return min(found, key=lambda c: self._LOOKUP_ORDER[c.type])

    def _valid_from(self, pair: CandidatePair) -> CandidatePair | None:
        """The best valid pair produced by the checklist pair ``pair``."""
        for valid in self._checklist.valid:
            if valid is pair or valid.source is pair:
                return valid
        return None

    def _active_pairs(self) -> Collection[CandidatePair]:
        """The pairs data goes on: :attr:`selected_pairs` (the selected ones, which never
        change in place, unless a restart keeps previous ones)."""
        if not self._previous:
            return self._selected.values()
        return list(self.selected_pairs.values())

    # ================================================================== sending checks

    def _rto(self) -> float:
        """RFC 8445 §14.3: ``MAX(500 ms, Ta * N * (Num-Waiting + Num-In-Progress))``."""
        if self.check_rto is not None:
            return self.check_rto
        pairs = self._checklist.pairs
        busy = sum(
            1 for p in pairs if p.state in (PairState.WAITING, PairState.IN_PROGRESS)
        )
        return max(RTO_MIN, self.effective_ta * len(pairs) * busy)

    def _check_lifetime(self, rto: float) -> float:
        """How long a check transaction lives (RFC 8489 §6.2.1): last send plus Rm * RTO."""
        return rto * ((1 << (self.check_rc - 1)) - 1 + self.check_rm)

    def _check_due(self) -> float:
        """When the next new check may leave (RFC 8445 §6.1.4.2, §14.2): at the start of
        checks, then one Ta after the previous new check. Ta runs from the last check sent,
        not on a fixed tick, so that a check that becomes due when the checklist had nothing
        to send (the nominating repeat of a single pair, say) leaves as soon as a Ta has
        passed since the last one, and never sooner."""
        if self._last_check_at is None:
            return self._next_check_at
        return max(self._next_check_at, self._last_check_at + self.effective_ta)

    def _pace(self, now: float) -> None:
        """RFC 8445 §6.1.4.2: when Ta fired, one check (triggered first)."""
        if not self._running or now < self._check_due():
            return
        pair = self._checklist.next_check()
        if pair is None:
            return
        self._send_check(pair, now)
        self._last_check_at = now

    def _request(
        self, pair: CandidatePair, use_candidate: bool, credentials: _Credentials
    ) -> tuple[bytes, bytes, int]:
        """RFC 8445 §7.2.2: a check's transaction id, bytes and PRIORITY: USERNAME, PRIORITY,
        ICE-CONTROLLING or ICE-CONTROLLED, USE-CANDIDATE if asked, MESSAGE-INTEGRITY with the
        peer's password, FINGERPRINT (:meth:`~anchor_stun.check.CheckKey.request`)."""
        priority = peer_reflexive_priority(pair.local)
        txid = bytes(self._rng(12))
        data = credentials.key.request(
            txid,
            f"{credentials.ufrag}:{self._local.ufrag}",
            priority,
            self._controlling,
            self._tie_breaker,
            use_candidate,
        )
        return txid, data, priority

    def _send_check(self, pair: CandidatePair, now: float) -> None:
        """RFC 8445 §7.2.4: a Binding request from the pair's base to its remote candidate."""
        assert self._remote is not None
        if pair.transaction_id is not None:
            self._cancel(pair, now)
        use_candidate = self._controlling and (pair.use_candidate or self.aggressive)
        rto = self._rto()
        txid, data, priority = self._request(pair, use_candidate, self._remote)
        transaction = ClientTransaction(
            data, pair.remote.address, now, rto=rto, rc=self.check_rc, rm=self.check_rm
        )
        record = _Check(
            _Kind.CHECK,
            txid,
            pair,
            pair.base,
            pair.remote.address,
            self._remote.key,
            priority,
            self._controlling,
            use_candidate,
            pair.nominate_on_success,
            transaction,
            now,
            now + self._check_lifetime(rto),
        )
        self._records[txid] = record
        pair.state = PairState.IN_PROGRESS
        pair.transaction_id = txid
        pair.last_check = now
        self._drain(record, now)

    def _send_consent(self, pair: CandidatePair, now: float) -> None:
        """RFC 7675 §5.1: a consent check, a Binding request on the selected pair."""
        credentials = self._remote or self._previous_remote
        if credentials is None:
            return
        txid, data, priority = self._request(pair, False, credentials)
        transaction = ClientTransaction(
            data, pair.remote.address, now, rto=RTO_MIN, rc=CONSENT_RC, rm=CONSENT_RM
        )
        record = _Check(
            _Kind.CONSENT,
            txid,
            pair,
            pair.base,
            pair.remote.address,
            credentials.key,
            priority,
            self._controlling,
            False,
            False,
            transaction,
            now,
            now + RTO_MIN * ((1 << (CONSENT_RC - 1)) - 1 + CONSENT_RM),
        )
        self._records[txid] = record
        self._drain(record, now)

    def _drain(self, record: _Check, now: float) -> None:
        if record.transaction is None:
            return
        sent = record.transaction.datagrams_to_send(now)
        for transmit in sent:
            self._outbox.append(Transmit(transmit.data, transmit.addr, record.base))
        if sent:
            record.pair.last_sent = now

    def _cancel(self, pair: CandidatePair, now: float) -> None:
        """RFC 8445 §7.3.1.4: stop retransmitting, do not count a timeout as a failure, but
        accept a response for the rest of the transaction's lifetime."""
        txid = pair.transaction_id
        pair.transaction_id = None
        record = self._records.get(txid) if txid is not None else None
        if record is not None and record.transaction is not None:
            record.clean = record.transaction.retransmissions == 0
            record.transaction = None

    # ================================================================== responses

    def _on_response(self, msg: Message, addr: Address, local: Address | None, now: float) -> None:
        record = self._records.get(msg.transaction_id)
        if record is None:
            self.dropped += 1
            return
        if msg.integrity is None or not msg.verify_integrity(record.key):
            self.dropped += 1  # RFC 8489 §9.1.4: an unauthenticated response is discarded
            if record.kind is _Kind.CHECK and msg.msg_class is MessageClass.ERROR:
                error = msg.error
                if error is not None and error.code == ErrorCode.UNAUTHENTICATED:
                    self._rejected.add(_pair_key(record.pair))  # remembered for the reason
            return
        if msg.fingerprint is not None and not msg.verify_fingerprint():
            self.dropped += 1
            return
        rtt: float | None = None
        transaction = record.transaction
        if transaction is not None:
            if not transaction.receive_response(msg, addr, now):
                self.dropped += 1
                return
            result = transaction.result
            if isinstance(result, TransactionSucceeded) and result.retransmissions == 0:
                rtt = result.rtt
        elif record.clean:
            rtt = now - record.sent_at  # a cancelled check sent once (RFC 8445 §7.3.1.4)
        del self._records[msg.transaction_id]
        symmetric = addr == record.dest and (
            local is None or (str(local[0]), int(local[1])) == record.base
        )
        if record.kind is _Kind.CONSENT:
            self._on_consent_response(record, msg, symmetric, now)
            return
        pair = record.pair
        self._answered.add(_pair_key(pair))
        if pair.transaction_id == msg.transaction_id:
            pair.transaction_id = None
        if msg.msg_class is MessageClass.ERROR:
            code = msg.error.code if msg.error is not None else 0
            if code == ErrorCode.ROLE_CONFLICT:
                self._role_conflict_response(record, now)
            else:
                self._check_failed(record, now, refused=code in (400, 403))
            return
        mapped = msg.get(XorMappedAddress)
        if not symmetric or mapped is None:
            self._check_failed(record, now, refused=False)  # RFC 8445 §7.2.5.2.1
            return
        self._check_succeeded(record, (mapped.ip, mapped.port), rtt, now)

    def _role_conflict_response(self, record: _Check, now: float) -> None:
        """RFC 8445 §7.2.5.1: switch to the role opposite to the one the request claimed,
        change the tie-breaker, and re-queue the pair as a triggered check."""
        if record.controlling == self._controlling:
            self._tie_breaker = int.from_bytes(self._rng(8), "big")
            self._set_role(not record.controlling)
        pair = record.pair
        if record.kind is _Kind.CHECK and pair in self._checklist.pairs:
            self._checklist.enqueue_triggered(pair)

    def _check_failed(self, record: _Check, now: float, *, refused: bool) -> None:
        """RFC 8445 §7.2.5.2 (and §7.2.5.3.4 for a failed nomination)."""
        pair = record.pair
        if pair.transaction_id is not None and pair.transaction_id != record.txid:
            return  # a newer check on this pair is under way: it decides
        pair.transaction_id = None
        pair.state = PairState.FAILED
        if record.use_candidate or record.nominate_on_success or pair.nominate_on_success:
            pair.use_candidate = False
            pair.nominate_on_success = False
            for valid in [v for v in self._checklist.valid if v is pair or v.source is pair]:
                self._checklist.remove_valid(valid)
                if refused:
                    valid.refused = True
                    self._refused.add((valid.component, valid.local.address, valid.remote.address))
            if refused:
                pair.refused = True
            nominating = self._nominating.get(pair.component)
            if nominating is not None and (nominating is pair or nominating.source is pair):
                del self._nominating[pair.component]

    def _check_succeeded(
        self, record: _Check, mapped: Address, rtt: float | None, now: float
    ) -> None:
        """RFC 8445 §7.2.5.3: peer-reflexive discovery, valid pair, states, nomination."""
        pair = record.pair
        component = pair.component
        local = self._local_for_mapped(component, mapped)
        if local is None:  # §7.2.5.3.1
            local = Candidate(
                foundation=compute_foundation(CandidateType.PRFLX, pair.base[0]),
                component=component,
                transport="udp",
                priority=record.priority,
                ip=mapped[0],
                port=mapped[1],
                type=CandidateType.PRFLX,
                related_ip=pair.base[0],
                related_port=pair.base[1],
            )
            self._locals += ((local, pair.base),)
            self._events.append(LocalCandidateLearned(local))
        # §7.2.5.3.2: the valid pair is (mapped, destination)
        if local.address == pair.local.address:
            valid = pair
        else:
            other = next(
                (
                    p
                    for p in self._checklist.pairs
                    if p.component == component
                    and p.local.address == local.address
                    and p.remote.address == pair.remote.address
                ),
                None,
            )
            valid = other or self._checklist.find_valid(
                component, local.address, pair.remote.address, pair.base
            ) or CandidatePair(local, pair.remote, pair.base, source=pair)
            valid.compute_priority(self._controlling)
        if (component, valid.local.address, valid.remote.address) in self._refused:
            valid.refused = True
        # §7.2.5.3.3
        pair.state = PairState.SUCCEEDED
        valid.state = PairState.SUCCEEDED
        pair.last_success = valid.last_success = now
        if rtt is not None:
            for p in {id(pair): pair, id(valid): valid}.values():
                p.rtts.append(rtt)
                del p.rtts[:-_MAX_RTTS]
        self._first_valid_at.setdefault(component, now)
        self._checklist.add_valid(valid)
        self._checklist.unfreeze_foundation(pair.foundation)
        if pair in self._checklist.triggered and not pair.use_candidate:
            self._checklist.triggered.remove(pair)  # answered meanwhile: nothing left to learn
        # consent: any successful check on a selected pair renews it (RFC 7675 §5.1)
        self._consent.renew(valid, now)
        # §7.2.5.3.4
        if record.use_candidate:
            pair.use_candidate = False
            self._nominating.pop(component, None)
            if record.controlling and self._controlling and not valid.refused:
                self._nominate(valid, now)
        elif record.nominate_on_success or pair.nominate_on_success:
            pair.nominate_on_success = False
            if not self._controlling:
                if not valid.refused and self.nominator.accept(valid, self._view(component)):
                    self._nominate(valid, now)
                else:
                    valid.refused = True

    def _on_consent_response(
        self, record: _Check, msg: Message, symmetric: bool, now: float
    ) -> None:
        if msg.msg_class is MessageClass.ERROR:
            error = msg.error
            if error is not None and error.code == ErrorCode.ROLE_CONFLICT:
                self._role_conflict_response(record, now)
            return
        if not symmetric:
            return
        record.pair.last_success = now
        self._consent.renew(record.pair, now)

    def set_role(self, controlling: bool) -> None:
        """Choose the role before checks start (RFC 8445 §6.1.1: signalling decides it, e.g.
        the offerer of an RFC 8839 offer/answer is controlling unless the answerer is lite),
        for users that learn their role after the agent exists. Raises
        :class:`LocalProtocolError` (state unchanged) once :meth:`start` was called, where
        only a role conflict may change it (RFC 8445 §7.3.1.1), or for a lite agent asked to
        control."""
        if self._state is not IceState.NEW:
            raise LocalProtocolError(f"the role is chosen before start(), not in state "
                                     f"{self._state.value} (RFC 8445 §6.1.1)")
        if controlling and self.lite:
            raise LocalProtocolError("an ICE-lite agent is controlled (RFC 8445 §6.1.1)")
        self._change_role(controlling)

    def _set_role(self, controlling: bool) -> None:
        """Switch roles to repair a role conflict (RFC 8445 §7.3.1.1), with a RoleChanged."""
        if controlling == self._controlling:
            return
        self._change_role(controlling)
        self._events.append(RoleChanged(controlling))

    def _change_role(self, controlling: bool) -> None:
        if controlling == self._controlling:
            return
        self._controlling = controlling
        self._checklist.set_role(controlling)
        for pair in (*self._selected.values(), *self._previous.values()):
            pair.compute_priority(controlling)
        if not controlling:
            for pair in self._checklist.pairs:
                pair.use_candidate = False
            self._nominating.clear()

    # ================================================================== nomination

    def _nominates(self) -> bool:
        return (
            self._running
            and self._controlling
            and not self.aggressive
            and self._state in (IceState.CHECKING, IceState.CONNECTED, IceState.COMPLETED)
        )

    def _view(self, component: int) -> NominationView:
        return NominationView(
            component=component,
            valid_pairs=tuple(
                p for p in self._checklist.valid_for(component) if not p.refused
            ),
            pending_pairs=tuple(self._checklist.pending(component)),
            local_candidates=tuple(c for c, _ in self._locals if c.component == component),
            remote_candidates=tuple(c for c in self._remotes if c.component == component),
            started_at=self._started_at,
            first_valid_at=self._first_valid_at.get(component),
            remote_complete=self._remote_complete,
            controlling=self._controlling,
            local_complete=self._local_complete,
            selected=self._selected.get(component),
            renomination=self.renomination,
        )

    def _improvable(self, component: int) -> bool:
        """Renomination: the component has a selected pair and a pending pair of higher
        priority may still succeed, so its checks go on (module docstring)."""
        if not self.renomination:
            return False
        selected = self._selected.get(component)
        if selected is None:
            return False
        return any(p.priority > selected.priority for p in self._checklist.pending(component))

    def _renominate(self, component: int, now: float) -> None:
        """Renomination, controlling side: nominate the nominator's choice when it is a
        better valid pair than the selected one; stop the component's checks once nothing
        better can come (§8.1.2, postponed)."""
        selected = self._selected[component]
        if component not in self._nominating:
            view = self._view(component)
            choice = self.nominator.choose(view, now)
            if (
                choice is not None
                and choice is not selected
                and not choice.nominated
                and choice.priority > selected.priority
                and any(choice is p for p in view.valid_pairs)
            ):
                self._send_nomination(component, choice)
                return
        if component not in self._nominating and not self._improvable(component):
            for pair in self._checklist.stop_component(component):
                self._cancel(pair, now)

    def _evaluate_nomination(self, now: float) -> None:
        """RFC 8445 §8.1.1: ask the nominator, then repeat the chosen pair's check with
        USE-CANDIDATE (the pair that generated the check goes to the triggered queue)."""
        self._nomination_eval_at = now
        if not self._nominates():
            return
        for component in range(1, self.components + 1):
            if component in self._selected:
                if self.renomination and any(
                    p.component == component for p in self._checklist.pairs
                ):
                    self._renominate(component, now)
                continue
            if component in self._nominating:
                continue
            view = self._view(component)
            if not view.valid_pairs:
                continue
            choice = self.nominator.choose(view, now)
            if choice is None:
                continue
            if not any(choice is p for p in view.valid_pairs):
                raise LocalProtocolError("the nominator returned a pair that is not in valid_pairs")
            self._send_nomination(component, choice)

    def _send_nomination(self, component: int, choice: CandidatePair) -> None:
        """Repeat the check of a valid pair with USE-CANDIDATE (RFC 8445 §8.1.1)."""
        source = choice.source or choice
        if source not in self._checklist.pairs:
            # its checklist pair is gone (the limit of §6.1.2.5): check from the valid
            # pair itself, same base and remote candidate
            source = choice
            self._checklist.insert(source)
        source.use_candidate = True
        self._checklist.enqueue_triggered(source)
        self._nominating[component] = choice

    def _nominate(self, valid: CandidatePair, now: float) -> None:
        """Set the nominated flag; the highest-priority nominated pair of a component is its
        selected pair (RFC 8445 §8.1.1); drop the component's other pairs (§8.1.2)."""
        if valid.nominated:
            return
        valid.nominated = True
        component = valid.component
        current = self._selected.get(component)
        selected = current is None or valid.priority > current.priority
        if selected:
            self._selected = {**self._selected, component: valid}
            if component in self._previous:
                self._previous = {c: p for c, p in self._previous.items() if c != component}
            if not self.lite:  # a lite agent sends no request, hence no consent check
                self._consent.start(
                    component,
                    valid,
                    valid.last_success if valid.last_success is not None else now,
                    now,
                )
            if valid.last_sent is None:
                valid.last_sent = now
        self._nominating.pop(component, None)
        self._events.append(PairNominated(valid.info(), selected))
        if self._improvable(component):
            return  # renomination: the better pairs' checks go on
        for pair in self._checklist.stop_component(component):
            self._cancel(pair, now)

    # ================================================================== state

    def _after_change(self, now: float) -> None:
        state = self._state
        if state is _COMPLETED and not self._restarting:
            # every component has its selected pair and no check is left: there is nothing
            # to nominate, no state to move to and nothing to fail (the three steps below
            # return at once; the time of the nomination evaluation they would record is
            # read only while a component may still nominate, which restart() resets)
            return
        if state in _NEW_OR_ENDED:
            return
        self._evaluate_nomination(now)
        self._update_state(now)
        self._check_failure(now)

    def _awaiting_selection(self) -> bool:
        return self._state is IceState.CHECKING or self._restarting

    def _update_state(self, now: float) -> None:
        if self._state is _COMPLETED and not self._restarting:
            return  # nothing can change (runs after every check a connected agent answers)
        components = range(1, self.components + 1)
        if not all(c in self._selected for c in components):
            return
        if self._restarting:
            self._restarting = False
            self._previous = {}
            self._previous_local = None
            self._previous_remote = None
            self._events.append(RestartCompleted(self._selected_infos()))
            self._state = IceState.CONNECTED
            self._quiet_completion = True
        elif self._state is IceState.CHECKING:
            self._state = IceState.CONNECTED
            self._events.append(IceConnected(self._selected_infos()))
        if self._state is IceState.CONNECTED and not self._checklist.has_work() and not any(
            p.state is PairState.IN_PROGRESS for p in self._checklist.pairs
        ):
            self._state = IceState.COMPLETED
            if not self._quiet_completion:
                self._events.append(IceCompleted())

    def _selected_infos(self) -> tuple[PairInfo, ...]:
        return tuple(self._selected[c].info() for c in range(1, self.components + 1))

    def _check_failure(self, now: float) -> None:
        """RFC 8445 §7.2.5.4: a component whose pairs all failed, with no valid pair, once
        the peer has no more candidates to send; or one with nothing to offer once local
        gathering is complete (:meth:`nothing_to_offer`)."""
        if not self._started or self.lite or not self._awaiting_selection():
            return
        if self._local_complete:
            for component in range(1, self.components + 1):
                if component in self._selected:
                    continue
                nothing = self.nothing_to_offer(component)
                if nothing is not None:
                    self._fail(f"component {component}: {nothing}", now)
                    return
        if not self._running or not self._remote_complete:
            return
        for component in range(1, self.components + 1):
            if component in self._selected or component in self._nominating:
                continue
            if any(not p.refused for p in self._checklist.valid_for(component)):
                continue
            if self._checklist.pending(component) or any(
                p.component == component for p in self._checklist.triggered
            ):
                continue
            if not any(p.component == component for p in self._checklist.pairs):
                # No pair at all is not "all pairs failed": the peer's checks can still
                # teach us a peer-reflexive candidate (§7.3.1.3), as browsers whose offer
                # carries no candidate rely on. The checking timeout decides instead.
                continue
            self._fail(
                f"all candidate pairs failed for component {component}"
                f" ({self._what_checks_saw(component)})",
                now,
            )
            return

    def _timeout_reason(self) -> str:
        missing = [c for c in range(1, self.components + 1) if c not in self._selected]
        parts = []
        for component in missing:
            valid = self._checklist.valid_for(component)
            if not valid:
                parts.append(f"component {component}: no valid pair:"
                             f" {self._what_checks_saw(component)}")
            elif all(p.refused for p in valid):
                parts.append(f"component {component}: every valid pair refused")
            elif not any(self.nominator.accept(p, self._view(component)) for p in valid):
                kinds = sorted({f"{p.local.type.value}-{p.remote.type.value}" for p in valid})
                parts.append(
                    f"component {component}: no candidate pair possible under the"
                    f" {_policy_name(self.nominator)} policy (valid: {', '.join(kinds)});"
                    " add a TURN server or use policy='standard'"
                )
            else:
                parts.append(f"component {component}: no pair nominated")
        return f"checking timeout after {self.checking_timeout} s ({'; '.join(parts)})"

    def _what_checks_saw(self, component: int) -> str:
        """Why a component has no valid pair, from what its checks got back."""
        keys = {_pair_key(p) for p in self._checklist.pairs if p.component == component}
        if not keys:
            nothing = self.nothing_to_offer(component)
            if nothing is not None:
                return nothing
            if not any(c.component == component for c in self._remotes):
                return "no remote candidate to pair with"
            return "no candidate pair (no local and remote candidates of one address family)"
        answered = keys & self._answered
        rejected = keys & self._rejected
        if rejected and not answered:
            return (
                "the peer rejected our credentials (401 to every check answered):"
                " check the remote ufrag and password"
            )
        if not answered:
            unreachable = sorted(
                {f"{format_address(a)} ({why})" for k, (a, why) in self._unreachable.items()
                 if k in keys}
            )
            if unreachable and len(keys & self._unreachable.keys()) == len(keys):
                return (
                    f"the peer's candidates are unreachable: {', '.join(unreachable)}"
                    " (a TURN server gives a relayed candidate)"
                )
            seen = f"; unreachable: {', '.join(unreachable)}" if unreachable else ""
            return (
                f"no response to any check ({len(keys)} pair{'s' if len(keys) > 1 else ''}"
                f" tried{seen}): the peer's candidates are not reachable from here (a TURN"
                " server gives a relayed candidate)"
            )
        return f"{len(answered)} of {len(keys)} pairs answered, none valid"

    def _fail(self, reason: str, now: float) -> None:
        self._state = IceState.FAILED
        self.failure_reason = reason
        self._records.clear()
        self._running = False
        self._events.append(IceFailed(reason))

    # ================================================================== consent, keepalives

    def _consent_timers(self, now: float, send_checks: bool = True) -> bool:
        """Expire consent and send consent checks that are due (RFC 7675 §5.1). False when
        consent was lost (the agent is then FAILED)."""
        if self.lite:
            return True
        consent = self._consent
        due, lost = consent.poll(now, send_checks)
        for component in due:
            self._send_consent(consent.pair(component), now)
            consent.sent(component, now)
        if lost is not None:
            self._events.append(ConsentLost(lost))
            self._fail(f"consent lost on component {lost} (RFC 7675)", now)
            return False
        return True

    def _keepalives(self, now: float) -> None:
        """RFC 8445 §11: a Binding indication on a pair idle for Tr."""
        for pair in self._active_pairs():
            if pair.last_sent is not None and now >= pair.last_sent + self.keepalive_interval:
                message = Message(Method.BINDING, MessageClass.INDICATION, bytes(self._rng(12)))
                self._outbox.append(
                    Transmit(message.encode(fingerprint=True), pair.remote.address, pair.base)
                )
                pair.last_sent = now

