"""The STUN server side of an ICE agent: answering connectivity checks (RFC 8445 §7.3), sans-I/O.

Theory of operation
-------------------
A full ICE agent is a STUN server for its peer's checks: every Binding request that reaches
one of its bases gets an answer, and what the request says feeds the agent's own checks.
:class:`Responder` is that procedure and nothing else; :class:`~anchor_ice.agent.IceAgent`
owns one and hands it the Binding requests it receives (like aioquic's connection drives its
loss recovery, and pion's agent its selectors), through :meth:`Responder.receive` (a request
whose shape was read before, by its bytes) and :meth:`Responder.receive_message` (a decoded
one). Nothing here touches a socket or a clock: ``now`` is passed in, answers go to the
agent's outbox as :class:`~anchor_stun.events.Transmit`, events to its event queue.

The steps, in order (RFC 8445 §7.3, RFC 8489 §6.3 and §9.1.3 for the checks on the request):

1. FINGERPRINT, when present, must verify, else the datagram is dropped (RFC 8489 §7.3: it is
   not a STUN message after all); so is a request that arrived on an address that is none of
   the agent's bases.
2. USERNAME and MESSAGE-INTEGRITY are required: 400 without them; 401 when the ufrag before
   the colon is not the agent's (nor, during an ICE restart, its previous one) or the
   integrity does not verify with that password (RFC 8445 §7.3, RFC 8489 §9.1.3). These
   errors carry no MESSAGE-INTEGRITY; the ones below do.
3. Unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1);
   a missing PRIORITY: 400.
4. Role conflicts (§7.3.1.1): a controlling agent that receives ICE-CONTROLLING, or a
   controlled one that receives ICE-CONTROLLED, compares tie-breakers: the larger one controls.
   The agent either switches roles (the agent's ``_set_role``, with a
   :class:`~anchor_ice.events.RoleChanged`) and goes on, or keeps its role and answers 487.
5. Nomination (§7.3.1.5, controlled side, before answering): a request with USE-CANDIDATE is
   judged by the agent's :class:`~anchor_ice.nominator.Nominator` (see
   :meth:`Responder._nomination_decision`): accepted, refused (400: the controlling agent will
   nominate another pair), or deferred (no answer yet; the triggered check goes out and the
   peer's retransmission finds the valid pair known).
6. The answer (§7.3.1.2): a Binding success with XOR-MAPPED-ADDRESS (the source of the
   request), MESSAGE-INTEGRITY with the same password and FINGERPRINT, from the base the
   request arrived on. An answer is a packet on the pair: it stamps the ``last_sent`` of a
   selected pair between the same addresses (RFC 8445 §11, keepalives).
7. Then, for a request of the current session (not the previous credentials of a restart, not
   another session's remote ufrag): the source is a remote candidate, learned as
   peer-reflexive with the request's PRIORITY when it is new (§7.3.1.3,
   :class:`~anchor_ice.events.RemoteCandidateLearned`); the pair (base, source) becomes a
   triggered check (§7.3.1.4): added to the checklist when new, queued again unless it
   succeeded, its check cancelled and queued again when in progress; and a nomination the
   agent accepted nominates the valid pair, at once when known, else when the triggered
   check succeeds (§7.3.1.5). Once a component has its selected pair no triggered check is
   queued any more (§8.1.2), but a nomination of another valid pair is still taken
   (aggressive nomination, renomination); under renomination the triggered checks of pairs
   that outrank the selected one go on, new pairs included, the agent's rule for any pair
   it forms (``IceAgent._admit_new_pair``). An ICE-lite agent (§7.3.2) only learns the remote
   candidate and, with USE-CANDIDATE, makes (base, source) a valid nominated pair.

Before the remote credentials are known (checks can arrive before the answer to an offer),
requests are answered and remembered (at most :data:`MAX_PENDING`), and their step 7 runs when
the credentials come (:meth:`Responder.replay`).

What the responder remembers, each memory keyed by everything its result depends on, so that
nothing is cleared by hand: the attributes of the check shapes it has read, by their bytes
(:class:`~anchor_stun.check.CheckReader`); the base of each ``local`` address, by the identity
of the agent's (immutable) tuple of local candidates; and the *routes*: requests (their bytes
before MESSAGE-INTEGRITY, source and ``local``) that needed nothing but their answer, valid
while the credentials, local candidates, role and selected pairs they were found under are
the same objects (the agent replaces these, never changes them in place; a route is recorded
only where step 7 changed nothing, which stays true until a restart, since remote
candidates only grow until then). A route also holds the parts of the answer that do not
change from one repeat to the next: its base, the XOR-MAPPED-ADDRESS of an IPv4 source, the
selected pairs it stamps. A repeated check with a valid route is verified and answered, and
nothing else.

The responder works on the agent that owns it (``agent``): it reads the agent's credentials,
role, candidates, checklist and selected pairs, and calls its role switch, nomination,
cancellation and nominator view, as pion's selectors call their agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from anchor_ice.candidate import Candidate, CandidateType
from anchor_ice.checklist import CandidatePair, PairState
from anchor_ice.events import RemoteCandidateLearned
from anchor_stun.attributes import ErrorCode, UnknownAttributes, xor_mapped_tlv_v4
from anchor_stun.check import CheckAttributes, CheckKey, CheckReader
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.message import (
    HEADER_SIZE,
    Message,
    MessageClass,
    Method,
    encode_type,
    fingerprint_matches,
    fingerprint_value_matches,
    integrity_matches,
)

if TYPE_CHECKING:
    from anchor_ice.agent import IceAgent, _Credentials

__all__ = ["MAX_PENDING", "TABLE_SIZE", "Responder"]

MAX_PENDING = 64
"""Requests remembered before the remote credentials are known (RFC 8445 §7.3)."""
TABLE_SIZE = 256
"""Entries of the responder's tables of bases and routes (emptied when full)."""

_SUCCESS = encode_type(Method.BINDING, MessageClass.SUCCESS)
_transmit = tuple.__new__
"""``_transmit(Transmit, (data, addr, local))`` is ``Transmit(data, addr, local)`` without
the call of its generated ``__new__`` (what ``Transmit._make`` does): one per answer."""


class _Decision(Enum):
    """What to do with a nomination from the peer (RFC 8445 §7.3.1.5)."""

    ACCEPT = "accept"
    REFUSE = "refuse"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class _Route:
    """What the §7.3 steps of :meth:`Responder._on_request` found for a request that then
    needed nothing but its answer, everything that finding depends on, and the parts of the
    answer that do not change from one repeat to the next. The same request (its attributes
    before MESSAGE-INTEGRITY, source and ``local``) under the same credentials, local
    candidates, role and selected pairs finds the same again (the remote candidates it
    relied on only grow until a restart, which draws new credentials)."""

    credentials: _Credentials
    remote: _Credentials
    locals: tuple[tuple[Candidate, Address], ...]
    controlling: bool
    selected: Mapping[int, CandidatePair]
    previous: Mapping[int, CandidatePair]
    """The agent's selected pairs (and a restart's previous ones) when the route was found:
    the answer stamps those of them it travels on (``stamp``)."""
    head: bytes
    """The request's first 8 bytes (type, length, magic cookie)."""
    addr: Address
    """The source, as the answer is addressed (``(str, int)``)."""
    base: Address
    """The base the answer leaves from."""
    body: bytes | None
    """The answer's attributes before MESSAGE-INTEGRITY: XOR-MAPPED-ADDRESS of an IPv4
    source, which does not depend on the transaction id (RFC 8489 §14.2); None for IPv6."""
    stamp: tuple[CandidatePair, ...]
    """The selected pairs the answer travels on (:meth:`Responder._pairs_on`)."""


@dataclass(slots=True)
class _PendingRequest:
    """A request answered before the remote credentials were known (RFC 8445 §7.3)."""

    local: Candidate
    base: Address
    source: Address
    priority: int
    use_candidate: bool
    remote_ufrag: str


class Responder:
    """Answers the connectivity checks an ICE agent receives (RFC 8445 §7.3; see the module
    docstring). Made and driven by ``agent``, whose state it reads and changes."""

    __slots__ = ("_agent", "_bases", "_pending", "_prflx_count", "_reader", "_routes")

    def __init__(self, agent: IceAgent) -> None:
        self._agent = agent
        self._reader = CheckReader()
        """The attributes of the checks received, by their bytes (RFC 8445 §7.3)."""
        self._routes: dict[tuple[bytes, object, object], _Route] = {}
        """Requests (attribute bytes before MESSAGE-INTEGRITY, source and ``local`` as given
        to :meth:`receive`) that needed nothing but their answer, with what that depended on
        (see :class:`_Route`); a stale entry is never used."""
        self._bases: tuple[
            tuple[tuple[Candidate, Address], ...],
            dict[object, tuple[Candidate, Address] | None],
        ] = ((), {})
        """What :meth:`_local_for_base` gave for each ``local``, and the agent's local
        candidates it was computed from: new candidates mean a new table."""
        self._pending: list[_PendingRequest] = []
        self._prflx_count = 0

    # ================================================================== driver surface

    def receive(self, data: bytes, addr: Address, local: Address | None, now: float) -> bool:
        """Handle ``data`` when it is a Binding request of a check shape read before (the
        peer's checks repeat their attributes: :meth:`~anchor_stun.check.CheckReader.known`):
        True, answered or dropped (RFC 8445 §7.3). False for anything else, which the agent
        decodes; a decoded request comes back through :meth:`receive_message`.

        A request whose route is current (see :class:`_Route`) is verified and answered: that
        is all the steps of :meth:`_on_request` would do for it. Its header was compared to
        the route's, so FINGERPRINT is checked by
        :func:`~anchor_stun.message.fingerprint_value_matches` (what
        :func:`~anchor_stun.message.fingerprint_matches` does once it has checked the header),
        MESSAGE-INTEGRITY by :meth:`~anchor_stun.message.HmacKey.mac_matches` (where
        :func:`~anchor_stun.message.integrity_matches` sends every key of its kind), and the
        answer is sealed by :meth:`~anchor_stun.message.HmacKey.seal_fingerprinted` (where
        :func:`~anchor_stun.message.seal` sends it). Anything else takes those steps."""
        size = len(data)
        try:
            route = self._routes.get((data[HEADER_SIZE : size - 28], addr, local))
            # the same attributes and the same header: the route's request (then the last
            # 8 bytes are a FINGERPRINT, or fingerprint_value_matches says no)
            if route is not None and not data.startswith(route.head):
                route = None
        except (TypeError, ValueError, AttributeError):  # unhashable source, local or data
            route = None  # (a bytearray, a writable memoryview), or data not bytes
        if route is not None:
            agent = self._agent
            credentials = route.credentials
            if (
                credentials is agent._local
                and route.remote is agent._remote
                and route.locals is agent._locals
                and route.controlling is agent._controlling
                and route.selected is agent._selected
                and route.previous is agent._previous
            ):
                # (a FINGERPRINT or MESSAGE-INTEGRITY that fails: the steps drop it, or 401)
                key = credentials.key
                if fingerprint_value_matches(data, size - 8) and key.mac_matches(
                    data, size - 32, route.head
                ):
                    body = route.body
                    if body is None:
                        self._answer(data[8:20], route.addr, route.base, key, now)
                    else:
                        answer = key.seal_fingerprinted(_SUCCESS, data[8:20], body)
                        self._queue_answer(answer, route.addr, route.base, now, route.stamp)
                    return True
        request = self._reader.known(data)
        if request is None:
            return False
        # a known shape ends in MESSAGE-INTEGRITY then FINGERPRINT
        self._on_request(data, request, size - 32, size - 8, addr, local, now)
        return True

    def receive_message(
        self, msg: Message, addr: Address, local: Address | None, now: float
    ) -> None:
        """Handle the decoded Binding request ``msg`` (RFC 8445 §7.3): answered or dropped,
        and its shape remembered (:meth:`~anchor_stun.check.CheckReader.remember`)."""
        request = self._reader.remember(msg)
        self._on_request(
            msg.raw, request, msg.integrity_at, msg.fingerprint_at, addr, local, now
        )

    def replay(self, remote_ufrag: str, now: float) -> None:
        """The remote credentials are known now: step 7 of the module docstring for the
        requests answered before, those of the remote ufrag ``remote_ufrag`` (RFC 8445 §7.3)."""
        pending, self._pending = self._pending, []
        for request in pending:
            if request.remote_ufrag == remote_ufrag:
                self._request_ice(
                    request.local,
                    request.base,
                    request.source,
                    request.priority,
                    request.use_candidate,
                    now,
                )

    def forget_pending(self) -> None:
        """Forget the requests answered before the remote credentials were known (an ICE
        restart forgets the remote side; a closed agent answers nothing more)."""
        self._pending.clear()

    # ================================================================== answers

    def _respond_error(
        self,
        transaction_id: bytes,
        addr: Address,
        local: Address,
        code: int,
        key: CheckKey | None,
        now: float,
        extra: UnknownAttributes | None = None,
    ) -> None:
        """Queue an error answer to a request: ERROR-CODE, with MESSAGE-INTEGRITY when the
        request authenticated, FINGERPRINT always (RFC 8445 §7.3, RFC 8489 §6.3.1.1)."""
        response = Message(Method.BINDING, MessageClass.REQUEST, transaction_id).error_response(
            code
        )
        if extra is not None:
            response.add(extra)
        data = response.encode(key=key, fingerprint=True)
        self._queue_answer(data, addr, local, now, self._pairs_on(addr, local))

    def _answer(
        self, transaction_id: bytes, addr: Address, local: Address, key: CheckKey, now: float
    ) -> None:
        """Queue a Binding success: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT
        (RFC 8445 §7.3.1.2)."""
        try:
            data = key.success(transaction_id, addr)
        except LocalProtocolError:
            self._agent.dropped += 1
            return
        self._queue_answer(data, addr, local, now, self._pairs_on(addr, local))

    def _queue_answer(
        self,
        data: bytes,
        addr: Address,
        local: Address,
        now: float,
        pairs: tuple[CandidatePair, ...],
    ) -> None:
        """Queue the answer ``data`` to ``addr`` from ``local``; it is a packet on ``pairs``
        (:meth:`_pairs_on`): their ``last_sent`` is ``now`` (RFC 8445 §11, keepalives)."""
        self._agent._outbox.append(_transmit(Transmit, (data, addr, local)))
        for pair in pairs:
            pair.last_sent = now

    def _pairs_on(self, addr: Address, local: Address) -> tuple[CandidatePair, ...]:
        """The selected pairs (a restart's previous ones included) between ``local`` and
        ``addr``: those an answer to ``addr`` from ``local`` travels on."""
        agent = self._agent
        return tuple(
            pair
            for pair in agent._active_pairs()
            if pair.remote.address == addr and pair.base == local
        )

    # ================================================================== §7.3

    def _on_request(
        self,
        data: bytes,
        request: CheckAttributes,
        integrity_at: int,
        fingerprint_at: int,
        source: Address,
        local: Address | None,
        now: float,
    ) -> None:
        """RFC 8445 §7.3 (and RFC 8489 §6.3.1, §9.1.3 for the checks on the request), for the
        request ``data`` whose attributes say ``request`` and whose MESSAGE-INTEGRITY and
        FINGERPRINT are at the given offsets (-1: absent), from ``source`` on ``local``."""
        agent = self._agent
        if fingerprint_at >= 0 and not fingerprint_matches(data, fingerprint_at):
            agent.dropped += 1  # RFC 8489 §7.3: not a STUN message after all
            return
        addr = (str(source[0]), int(source[1]))
        entry = self._local_for_base(local)
        if entry is None:
            agent.dropped += 1  # not one of our bases (RFC 8445 §7.3)
            return
        local_candidate, base = entry
        transaction_id = data[8:20]
        if request.username is None or integrity_at < 0:
            self._respond_error(transaction_id, addr, base, ErrorCode.BAD_REQUEST, None, now)
            return
        ufrag = request.ufrag
        credentials = agent._local
        if ufrag != credentials.ufrag:
            previous = agent._previous_local
            if ufrag is None or previous is None or ufrag != previous.ufrag:
                self._respond_error(
                    transaction_id, addr, base, ErrorCode.UNAUTHENTICATED, None, now
                )
                return
            credentials = previous
        key = credentials.key
        if not integrity_matches(data, integrity_at, key):
            self._respond_error(transaction_id, addr, base, ErrorCode.UNAUTHENTICATED, None, now)
            return
        if request.unknown:
            self._respond_error(
                transaction_id,
                addr,
                base,
                ErrorCode.UNKNOWN_ATTRIBUTE,
                key,
                now,
                UnknownAttributes(request.unknown),
            )
            return
        priority = request.priority
        if priority is None:
            self._respond_error(transaction_id, addr, base, ErrorCode.BAD_REQUEST, key, now)
            return
        current = credentials is agent._local
        if (
            current
            and not agent.lite
            and (request.controlling if agent._controlling else request.controlled) is not None
            and self._role_conflict(request.controlling, request.controlled)
        ):
            self._respond_error(transaction_id, addr, base, ErrorCode.ROLE_CONFLICT, key, now)
            return
        remote_ufrag = request.remote_ufrag
        use_candidate = request.use_candidate and not agent._controlling
        if current and use_candidate:
            decision = self._nomination_decision(local_candidate, base, addr, priority)
            if decision is _Decision.REFUSE:
                # RFC 8445 §7.3.1.5: a nomination the controlled agent does not accept
                self._respond_error(transaction_id, addr, base, ErrorCode.BAD_REQUEST, key, now)
                return
            if decision is _Decision.DEFER:
                use_candidate = False  # judged when the peer retransmits; check it meanwhile
                if agent._remote is not None and remote_ufrag == agent._remote.ufrag:
                    self._request_ice(local_candidate, base, addr, priority, False, now)
                return
        self._answer(transaction_id, addr, base, key, now)
        if not current:
            return  # the previous session during a restart: answered, nothing else
        remote = agent._remote
        if remote is None:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(
                    _PendingRequest(
                        local_candidate, base, addr, priority, use_candidate, remote_ufrag
                    )
                )
            return
        if remote_ufrag != remote.ufrag:
            return  # another session's request (forking, a stale restart): answered only
        if (
            self._request_ice(local_candidate, base, addr, priority, use_candidate, now)
            and request.head  # a shape the reader remembers: the same object next time
            and (request.controlling if agent._controlling else request.controlled) is None
        ):  # (a request carrying both roles may conflict with the role it switched to)
            try:
                body = xor_mapped_tlv_v4(addr[0], addr[1])
            except LocalProtocolError:  # (answered, so the address encodes: not reached)
                return
            route = _Route(
                credentials, remote, agent._locals, agent._controlling, agent._selected,
                agent._previous, request.head, addr, base, body, self._pairs_on(addr, base),
            )  # fmt: skip
            routes = self._routes
            if len(routes) >= TABLE_SIZE:
                routes.clear()
            try:
                routes[(data[HEADER_SIZE : len(data) - 28], source, local)] = route
            except TypeError:  # an unhashable source or ``local``
                pass

    def _renominating(
        self, pair: CandidatePair | None, local: Candidate, remote: Candidate, base: Address
    ) -> bool:
        """Renomination, a request for a component with a selected pair: True when the
        request's pair (``pair``, or a new one added to the checklist) outranks the selected
        pair (the agent's rule for every new pair), so that its triggered check runs."""
        agent = self._agent
        if not agent.renomination:
            return False
        new = pair is None
        if pair is None:
            pair = agent._checklist.add(local, remote, base)
            if pair is None:
                return False
        if agent._admit_new_pair(pair):
            return True
        if new:
            agent._checklist.remove(pair)
        return False

    def _role_conflict(self, controlling: int | None, controlled: int | None) -> bool:
        """RFC 8445 §7.3.1.1, given the tie-breakers of the request's ICE-CONTROLLING and
        ICE-CONTROLLED. True when the agent keeps its role and answers 487."""
        agent = self._agent
        if agent._controlling and controlling is not None:
            if agent._tie_breaker >= controlling:
                return True
            agent._set_role(False)
        elif not agent._controlling and controlled is not None:
            if agent._tie_breaker >= controlled:
                agent._set_role(True)
            else:
                return True
        return False

    def _local_for_base(self, local: Address | None) -> tuple[Candidate, Address] | None:
        """The host or relayed candidate whose address is ``local`` (RFC 8445 §7.3.1.4),
        looked up once per ``local`` and local candidates (every check needs it)."""
        locals_ = self._agent._locals
        bases = self._bases
        if bases[0] is not locals_:
            bases = self._bases = (locals_, {})
        table = bases[1]
        try:
            return table[local]
        except KeyError:
            found = table[local] = self._find_base(local)
            if len(table) > TABLE_SIZE:
                del table[local]
            return found
        except TypeError:  # an unhashable ``local``
            return self._find_base(local)

    def _find_base(self, local: Address | None) -> tuple[Candidate, Address] | None:
        locals_ = self._agent._locals
        if local is None:
            bases = {b for _, b in locals_}
            if len(bases) != 1:
                return None
            local = next(iter(bases))
        local = (str(local[0]), int(local[1]))
        fallback = None
        for candidate, base in locals_:
            if base != local:
                continue
            if candidate.address == local and candidate.type in (
                CandidateType.HOST,
                CandidateType.RELAY,
            ):
                return candidate, base
            if fallback is None and candidate.type is not CandidateType.PRFLX:
                fallback = (candidate, base)
        return fallback

    def _remote_by_address(self, component: int, address: Address) -> Candidate | None:
        for candidate in self._agent._remotes:
            if candidate.component == component and candidate.address == address:
                return candidate
        return None

    def _remote_for_request(
        self, component: int, source: Address, priority: int
    ) -> Candidate:
        """The remote candidate at ``source``, learning a peer-reflexive one (§7.3.1.3)."""
        remote = self._remote_by_address(component, source)
        if remote is None:
            self._prflx_count += 1
            remote = Candidate(
                foundation=f"prflx{self._prflx_count}",
                component=component,
                transport="udp",
                priority=priority,
                ip=source[0],
                port=source[1],
                type=CandidateType.PRFLX,
            )
            agent = self._agent
            agent._remotes.append(remote)
            agent._events.append(RemoteCandidateLearned(remote))
        return remote

    def _nomination_decision(
        self, local: Candidate, base: Address, source: Address, priority: int
    ) -> _Decision:
        """Controlled side, before answering a USE-CANDIDATE request (RFC 8445 §7.3.1.5).

        The nominator judges the valid pair the nomination is about. When that pair is not
        known yet (our own check on it has not succeeded), the nominator judges the pair as it
        stands (local base, source): if it accepts, the request is accepted now and the valid
        pair nominated once the triggered check succeeds; if it refuses, the answer is
        deferred: no response, the triggered check goes out, and the controlling agent's
        retransmission of the same request finds the valid pair known.
        """
        agent = self._agent
        component = local.component
        remote = self._remote_by_address(component, source) or Candidate(
            "prflx", component, "udp", priority, source[0], source[1], CandidateType.PRFLX
        )
        if agent.lite:
            probe = CandidatePair(local, remote, base)
            probe.compute_priority(False)
            ok = agent.nominator.accept(probe, agent._view(component))
            return _Decision.ACCEPT if ok else _Decision.REFUSE
        pair = agent._checklist.find(component, base, source)
        valid = None
        if pair is not None and pair.state is PairState.SUCCEEDED:
            valid = agent._valid_from(pair)
        if valid is None:
            selected = agent._selected.get(component)
            if selected is not None and selected.base == base and (
                selected.remote.address == source
            ):
                return _Decision.ACCEPT
            probe = CandidatePair(local, remote, base)
            probe.compute_priority(False)
            if agent.nominator.accept(probe, agent._view(component)):
                return _Decision.ACCEPT
            return _Decision.DEFER
        if valid.refused:
            return _Decision.REFUSE
        if valid.nominated or agent.nominator.accept(valid, agent._view(component)):
            return _Decision.ACCEPT
        valid.refused = True
        agent._refused.add((component, valid.local.address, valid.remote.address))
        return _Decision.REFUSE

    def _request_ice(
        self,
        local: Candidate,
        base: Address,
        source: Address,
        priority: int,
        use_candidate: bool,
        now: float,
    ) -> bool:
        """RFC 8445 §7.3.1.3-§7.3.1.5 (full) and §7.3.2 (lite) after a successful answer.
        True when it changed nothing: the source was a known remote candidate and there was
        nothing to learn, check or nominate (what a repeat of the request will find too, as
        long as the credentials, the local candidates and the role stay; see ``_routes``)."""
        agent = self._agent
        checklist = agent._checklist
        component = local.component
        learned = self._prflx_count
        remote = self._remote_for_request(component, source, priority)
        if agent.lite:
            if use_candidate:
                valid = checklist.find_valid(component, local.address, source, base)
                if valid is None:
                    valid = CandidatePair(local, remote, base)
                    valid.compute_priority(False)
                    valid.state = PairState.SUCCEEDED
                    valid.last_success = now
                    checklist.add_valid(valid)
                agent._nominate(valid, now)
            return not use_candidate and learned == self._prflx_count
        pair = checklist.find(component, base, source)
        if (
            component in agent._selected
            and not agent._improvable(component)
            and not self._renominating(pair, local, remote, base)
        ):
            # §8.1.2: no more triggered checks for a component with a nominated pair, but a
            # peer nominating aggressively (or renominating) may nominate another valid pair;
            # under renomination a new pair that outranks the selected one is checked.
            if use_candidate:
                valid = agent._valid_from(pair) if pair is not None else None
                if valid is not None and not valid.refused:
                    agent._nominate(valid, now)
            return not use_candidate and learned == self._prflx_count
        if pair is None:
            pair = checklist.add(local, remote, base)
            if pair is None:
                return False  # the limit of §6.1.2.5
            checklist.enqueue_triggered(pair)
        elif pair.state is PairState.SUCCEEDED:
            pass
        else:
            if pair.state is PairState.IN_PROGRESS:
                agent._cancel(pair, now)
            checklist.enqueue_triggered(pair)
        if use_candidate:
            valid = agent._valid_from(pair) if pair.state is PairState.SUCCEEDED else None
            if valid is not None:
                if not valid.refused:
                    agent._nominate(valid, now)
            else:
                pair.nominate_on_success = True
        return False
