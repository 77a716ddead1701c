"""The responder to connectivity checks (RFC 8445 §7.3), driven as a unit.

Each test makes a :class:`~anchor_ice.responder.Responder` over an agent's state (credentials,
role, candidates, checklist: what the responder reads and changes), hands it requests
directly (``receive_message``, ``receive``, ``replay``) and looks at what it did: the answers
in the agent's outbox, the events, the role, the remote candidates, the checklist. The agent
itself is not driven unless a test needs a pair in a given state (a check sent, a check
answered), and then only for that setup.
"""

from __future__ import annotations

import zlib

import pytest

from anchor_ice.agent import IceAgent, IceRole
from anchor_ice.candidate import CandidateType
from anchor_ice.checklist import CandidatePair, PairState
from anchor_ice.events import PairNominated, RemoteCandidateLearned, RoleChanged
from anchor_ice.nominator import NominationView, StandardNominator
from anchor_ice.responder import MAX_PENDING, Responder
from anchor_stun.attributes import (
    ErrorCodeAttribute,
    IceControlled,
    IceControlling,
    Priority,
    RawAttribute,
    UnknownAttributes,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from anchor_stun.errors import DecodeError
from anchor_stun.events import Address
from anchor_stun.integrity import short_term_key
from anchor_stun.message import Message, MessageClass, Method
from tests.unit.test_ice_harness import host, seeded

LOCAL: Address = ("10.0.0.1", 5000)
PEER: Address = ("10.0.0.2", 6000)
OTHER: Address = ("10.0.0.3", 7000)
L_UFRAG, L_PWD = "LFRG", "L" * 22
R_UFRAG, R_PWD = "RFRG", "R" * 22
L_KEY = short_term_key(L_PWD)
R_KEY = short_term_key(R_PWD)
PRIORITY = 0x6E7F1EFF
TIE = 1000  # the agent's tie-breaker


class Refusing(StandardNominator):
    """A policy that accepts no nomination (RFC 8445 §7.3.1.5: the controlled side's say)."""

    def accept(self, pair: CandidatePair, view: NominationView) -> bool:
        return False


def _agent(
    controlling: bool = False,
    *,
    remote: bool = True,
    peer: bool = True,
    lite: bool = False,
    nominator: StandardNominator | None = None,
) -> IceAgent:
    agent = IceAgent(
        controlling=controlling,
        rng=seeded(1),
        local_ufrag=L_UFRAG,
        local_pwd=L_PWD,
        tie_breaker=TIE,
        lite=lite,
        nominator=nominator,
    )
    agent.add_local_candidate(host(*LOCAL), LOCAL)
    if remote:
        agent.set_remote_credentials(R_UFRAG, R_PWD)
    if peer:
        agent.add_remote_candidate(host(*PEER))
    return agent


def _check(
    *extra: object,
    username: str | None = f"{L_UFRAG}:{R_UFRAG}",
    priority: int | None = PRIORITY,
    key: bytes | None = L_KEY,
    tid: bytes = b"T" * 12,
    fingerprint: bool = True,
) -> Message:
    """A check as the peer sends it (RFC 8445 §7.2.2), decoded as the agent decodes it."""
    attributes: list[object] = [] if username is None else [Username(username)]
    if priority is not None:
        attributes.append(Priority(priority))
    attributes += extra
    data = Message(Method.BINDING, MessageClass.REQUEST, tid, attributes).encode(  # type: ignore[arg-type]
        key=key, fingerprint=fingerprint
    )
    return Message.decode(data)


def _answers(agent: IceAgent, now: float = 0.0) -> list[tuple[Message, Address, Address | None]]:
    """The responses the agent has to send (its own checks, if any, left out)."""
    out = []
    for transmit in agent.datagrams_to_send(now):
        msg = Message.decode(transmit.data)
        if msg.is_response:
            out.append((msg, transmit.addr, transmit.local))
    return out


def _events(agent: IceAgent) -> list[object]:
    out = []
    while (event := agent.next_event()) is not None:
        out.append(event)
    return out


def _error(msg: Message) -> int | None:
    error = msg.get(ErrorCodeAttribute)
    return None if error is None else error.code


def _validated(agent: IceAgent, now: float = 0.0) -> CandidatePair:
    """Our check of (LOCAL, PEER) sent and answered: the valid pair."""
    agent.start(now)
    (check,) = agent.datagrams_to_send(now)
    request = Message.decode(check.data)
    success = Message(
        Method.BINDING, MessageClass.SUCCESS, request.transaction_id, [XorMappedAddress(*LOCAL)]
    ).encode(key=R_KEY, fingerprint=True)
    agent.receive_datagram(success, PEER, LOCAL, now)
    (valid,) = agent.valid_pairs
    _events(agent)
    return valid


# --------------------------------------------------------------------------- §7.3.1.2


def test_a_check_is_answered_from_its_base_with_its_source() -> None:
    agent = _agent()
    responder = Responder(agent)
    request = _check(IceControlling(1))
    responder.receive_message(request, PEER, LOCAL, 0.0)
    ((answer, to, base),) = _answers(agent)
    assert (to, base) == (PEER, LOCAL)
    assert answer.msg_class is MessageClass.SUCCESS
    assert answer.transaction_id == request.transaction_id
    assert answer.get(XorMappedAddress) == XorMappedAddress(*PEER)  # RFC 8445 §7.3.1.2
    assert answer.verify_integrity(L_KEY) and answer.verify_fingerprint()


def test_a_shape_read_once_is_known_by_its_bytes() -> None:
    """``receive`` takes a request whose attributes were read before (the peer's checks repeat
    them) and answers it like the decoded one; any other datagram is left to the agent."""
    agent = _agent()
    responder = Responder(agent)
    first = _check(IceControlling(1), tid=b"A" * 12)
    again = _check(IceControlling(1), tid=b"B" * 12)
    assert not responder.receive(again.raw, PEER, LOCAL, 0.0)  # not read yet
    assert not responder.receive(b"not stun at all", PEER, LOCAL, 0.0)
    responder.receive_message(first, PEER, LOCAL, 0.0)
    assert responder.receive(again.raw, PEER, LOCAL, 0.0)
    answers = _answers(agent)
    assert [m.transaction_id for m, _, _ in answers] == [b"A" * 12, b"B" * 12]
    assert all(m.msg_class is MessageClass.SUCCESS for m, _, _ in answers)


def test_an_answer_stamps_the_selected_pair_it_travels_on() -> None:
    """RFC 8445 §11: an answer is a packet on the pair, so it delays the keepalive."""
    agent = _agent()
    responder = Responder(agent)
    _validated(agent, 1.0)
    responder.receive_message(_check(IceControlling(1), UseCandidate()), PEER, LOCAL, 1.0)
    selected = agent.selected_pair
    assert selected is not None and selected.last_sent == 1.0
    responder.receive_message(_check(IceControlling(1), tid=b"U" * 12), PEER, LOCAL, 7.0)
    assert selected.last_sent == 7.0
    responder.receive_message(_check(IceControlling(1), tid=b"V" * 12), OTHER, LOCAL, 8.0)
    assert selected.last_sent == 7.0  # another path
    assert len(_answers(agent, 8.0)) == 3


# --------------------------------------------------------------------------- 400, 401, 420


@pytest.mark.parametrize(
    ("request_", "code", "signed"),
    [
        (_check(username=None), 400, False),  # no USERNAME
        (_check(key=None), 400, False),  # no MESSAGE-INTEGRITY
        (_check(username=f"XXXX:{R_UFRAG}"), 401, False),  # not our ufrag
        (_check(username=L_UFRAG), 401, False),  # no colon: no ufrag of ours
        (_check(key=short_term_key("W" * 22)), 401, False),  # not our password
        (_check(RawAttribute(0x7FF0, b"x")), 420, True),  # comprehension-required, unknown
        (_check(priority=None), 400, True),  # no PRIORITY
    ],
    ids=["no-username", "no-integrity", "other-ufrag", "no-colon", "bad-key", "unknown",
         "no-priority"],
)  # fmt: skip
def test_requests_that_fail_the_server_checks_get_their_error(
    request_: Message, code: int, signed: bool
) -> None:
    """RFC 8445 §7.3 and RFC 8489 §6.3.1.1, §9.1.3: the error, MESSAGE-INTEGRITY only when
    the request authenticated, FINGERPRINT always; nothing learned, nothing checked."""
    agent = _agent()
    responder = Responder(agent)
    responder.receive_message(request_, PEER, LOCAL, 0.0)
    ((answer, to, base),) = _answers(agent)
    assert (to, base) == (PEER, LOCAL)
    assert answer.msg_class is MessageClass.ERROR and _error(answer) == code
    assert answer.transaction_id == request_.transaction_id
    assert answer.verify_fingerprint()
    assert (answer.integrity is not None) is signed
    if signed:
        assert answer.verify_integrity(L_KEY)
    if code == 420:
        assert answer.get(UnknownAttributes) == UnknownAttributes((0x7FF0,))
    assert agent.remote_candidates == [host(*PEER)] and not agent.checklist.triggered
    assert _events(agent) == []


def test_a_bad_fingerprint_or_an_unknown_base_is_dropped_unanswered() -> None:
    agent = _agent()
    responder = Responder(agent)
    data = bytearray(_check(IceControlling(1)).raw)
    data[-1] ^= 1
    responder.receive_message(Message.decode(bytes(data)), PEER, LOCAL, 0.0)
    responder.receive_message(_check(IceControlling(1)), PEER, ("10.9.9.9", 1), 0.0)
    assert _answers(agent) == [] and agent.dropped == 2


# --------------------------------------------------------------------------- §7.3.1.1


@pytest.mark.parametrize(
    ("controlling", "attribute", "switches"),
    [
        (True, IceControlling(TIE - 1), False),  # ours is larger: we keep controlling, 487
        (True, IceControlling(TIE), False),  # equal: ">=" keeps the role
        (True, IceControlling(TIE + 1), True),  # theirs is larger: we become controlled
        (False, IceControlled(TIE - 1), True),  # ours is larger: we become controlling
        (False, IceControlled(TIE + 1), False),  # theirs is larger: we stay controlled, 487
    ],
)
def test_a_role_conflict_is_repaired_by_the_tie_breakers(
    controlling: bool, attribute: IceControlling | IceControlled, switches: bool
) -> None:
    """RFC 8445 §7.3.1.1: the agent with the larger tie-breaker controls. The agent that
    switches answers the request (and says RoleChanged); the one that keeps its role answers
    487, signed."""
    agent = _agent(controlling)
    responder = Responder(agent)
    responder.receive_message(_check(attribute), PEER, LOCAL, 0.0)
    ((answer, _, _),) = _answers(agent)
    if switches:
        assert answer.msg_class is MessageClass.SUCCESS
        assert agent.controlling is not controlling
        assert _events(agent) == [RoleChanged(controlling=not controlling)]
    else:
        assert _error(answer) == 487 and answer.verify_integrity(L_KEY)
        assert agent.controlling is controlling and _events(agent) == []
    assert agent.tie_breaker == TIE  # only a 487 *response* changes it (§7.2.5.1)


@pytest.mark.parametrize("controlling", [True, False])
def test_no_conflict_when_the_peer_claims_the_other_role(controlling: bool) -> None:
    agent = _agent(controlling)
    responder = Responder(agent)
    attribute = IceControlled(TIE + 1) if controlling else IceControlling(TIE + 1)
    responder.receive_message(_check(attribute), PEER, LOCAL, 0.0)
    ((answer, _, _),) = _answers(agent)
    assert answer.msg_class is MessageClass.SUCCESS and agent.controlling is controlling


def test_a_lite_agent_has_no_role_conflicts() -> None:
    """RFC 8445 §7.3.2 (a lite agent is always controlled; §7.3.1.1 is for full agents)."""
    agent = _agent(lite=True)
    responder = Responder(agent)
    responder.receive_message(_check(IceControlled(TIE + 1)), PEER, LOCAL, 0.0)
    ((answer, _, _),) = _answers(agent)
    assert answer.msg_class is MessageClass.SUCCESS and agent.role is IceRole.CONTROLLED


# --------------------------------------------------------------------------- §7.3.1.3


def test_an_unknown_source_is_learned_as_a_peer_reflexive_remote_once() -> None:
    agent = _agent()
    responder = Responder(agent)
    responder.receive_message(_check(IceControlling(1)), OTHER, LOCAL, 0.0)
    responder.receive_message(_check(IceControlling(1), tid=b"2" * 12), OTHER, LOCAL, 0.0)
    (event,) = _events(agent)
    assert isinstance(event, RemoteCandidateLearned)
    learned = event.candidate
    assert learned.type is CandidateType.PRFLX and learned.address == OTHER
    assert learned.priority == PRIORITY and learned.component == 1  # the request's PRIORITY
    assert agent.remote_candidates == [host(*PEER), learned]
    assert len(_answers(agent)) == 2


# --------------------------------------------------------------------------- §7.3.1.4


def test_a_request_on_a_new_pair_adds_it_as_a_triggered_check() -> None:
    agent = _agent()
    responder = Responder(agent)
    responder.receive_message(_check(IceControlling(1)), OTHER, LOCAL, 0.0)
    pair = agent.checklist.find(1, LOCAL, OTHER)
    assert pair is not None and list(agent.checklist.triggered) == [pair]
    assert pair.remote.type is CandidateType.PRFLX


def test_a_request_on_a_known_pair_queues_it_and_cancels_its_check() -> None:
    agent = _agent()
    responder = Responder(agent)
    pair = agent.checklist.find(1, LOCAL, PEER)
    assert pair is not None and pair.state is PairState.FROZEN
    responder.receive_message(_check(IceControlling(1)), PEER, LOCAL, 0.0)
    assert list(agent.checklist.triggered) == [pair]
    agent.start(0.0)
    sent = agent.datagrams_to_send(0.0)  # the triggered check leaves
    assert [t.addr for t in sent if Message.decode(t.data).is_request] == [PEER]
    assert pair.state is PairState.IN_PROGRESS and pair.transaction_id is not None
    responder.receive_message(_check(IceControlling(1), tid=b"2" * 12), PEER, LOCAL, 0.01)
    # §7.3.1.4: In-Progress: its check is cancelled (no retransmission) and queued again
    assert pair.transaction_id is None and list(agent.checklist.triggered) == [pair]


def test_a_request_on_a_succeeded_pair_queues_nothing() -> None:
    agent = _agent()
    responder = Responder(agent)
    _validated(agent)
    pair = agent.checklist.find(1, LOCAL, PEER)
    assert pair is not None and pair.state is PairState.SUCCEEDED
    responder.receive_message(_check(IceControlling(1)), PEER, LOCAL, 0.01)
    assert not agent.checklist.triggered and len(_answers(agent, 0.01)) == 1


# --------------------------------------------------------------------------- §7.3.1.5


def test_a_nomination_of_a_valid_pair_selects_it() -> None:
    agent = _agent()
    responder = Responder(agent)
    valid = _validated(agent)
    responder.receive_message(_check(IceControlling(1), UseCandidate()), PEER, LOCAL, 0.01)
    assert _events(agent) == [PairNominated(valid.info(), True)]
    assert valid.nominated and agent.selected_pair is valid
    ((answer, _, _),) = _answers(agent, 0.01)
    assert answer.msg_class is MessageClass.SUCCESS


def test_a_nomination_before_the_pair_is_valid_waits_for_its_check() -> None:
    agent = _agent()
    responder = Responder(agent)
    responder.receive_message(_check(IceControlling(1), UseCandidate()), PEER, LOCAL, 0.0)
    pair = agent.checklist.find(1, LOCAL, PEER)
    assert pair is not None and pair.nominate_on_success and pair in agent.checklist.triggered
    assert _error(_answers(agent)[0][0]) is None  # accepted: answered
    assert agent.selected_pair is None


def test_a_refused_nomination_of_a_valid_pair_is_a_400() -> None:
    agent = _agent(nominator=Refusing())
    responder = Responder(agent)
    valid = _validated(agent)
    responder.receive_message(_check(IceControlling(1), UseCandidate()), PEER, LOCAL, 0.01)
    ((answer, _, _),) = _answers(agent, 0.01)
    assert _error(answer) == 400 and answer.verify_integrity(L_KEY)
    assert valid.refused and not valid.nominated and agent.selected_pair is None


def test_a_refused_nomination_of_an_unchecked_pair_is_deferred() -> None:
    """No answer yet: the triggered check goes out, and the peer's retransmission finds the
    valid pair known (anchor_ice.nominator)."""
    agent = _agent(nominator=Refusing())
    responder = Responder(agent)
    responder.receive_message(_check(IceControlling(1), UseCandidate()), PEER, LOCAL, 0.0)
    assert _answers(agent) == []
    pair = agent.checklist.find(1, LOCAL, PEER)
    assert pair is not None and pair in agent.checklist.triggered
    assert not pair.nominate_on_success


def test_a_controlling_agent_takes_no_nomination() -> None:
    agent = _agent(controlling=True)
    responder = Responder(agent)
    valid = _validated(agent)
    responder.receive_message(_check(IceControlled(1), UseCandidate()), PEER, LOCAL, 0.01)
    assert not valid.nominated and _events(agent) == []


def test_a_lite_agent_makes_the_nominated_pair_valid() -> None:
    """RFC 8445 §7.3.2: a lite agent sends no check; USE-CANDIDATE makes (base, source) a
    valid, nominated pair."""
    agent = _agent(lite=True)
    responder = Responder(agent)
    responder.receive_message(_check(IceControlling(1)), PEER, LOCAL, 0.0)
    assert agent.valid_pairs == [] and agent.pairs == []
    responder.receive_message(_check(IceControlling(1), UseCandidate()), PEER, LOCAL, 0.0)
    (valid,) = agent.valid_pairs
    assert (valid.base, valid.remote.address, valid.nominated) == (LOCAL, PEER, True)
    assert [type(e) for e in _events(agent)] == [PairNominated]


# --------------------------------------------------------------------------- sessions


def test_requests_before_the_remote_credentials_are_answered_then_replayed() -> None:
    """RFC 8445 §7.3: checks may come before the answer to an offer. They are answered at
    once; what they teach (a remote, a triggered check) waits for the credentials, and
    only the requests of that remote ufrag count."""
    agent = _agent(remote=False, peer=False)
    responder = Responder(agent)
    responder.receive_message(_check(IceControlling(1)), PEER, LOCAL, 0.0)
    other = _check(IceControlling(1), username=f"{L_UFRAG}:ZZZZ", tid=b"Z" * 12)
    responder.receive_message(other, OTHER, LOCAL, 0.0)
    assert len(_answers(agent)) == 2
    assert agent.remote_candidates == [] and agent.pairs == []
    agent.set_remote_credentials(R_UFRAG, R_PWD)
    responder.replay(R_UFRAG, 0.1)
    (learned,) = agent.remote_candidates
    assert learned.address == PEER and learned.type is CandidateType.PRFLX
    assert [p.remote for p in agent.checklist.triggered] == [learned]
    responder.replay(R_UFRAG, 0.2)  # replayed once
    assert len(agent.remote_candidates) == 1


def test_pending_requests_are_bounded_and_can_be_forgotten() -> None:
    agent = _agent(remote=False, peer=False)
    responder = Responder(agent)
    for i in range(MAX_PENDING + 5):
        source = ("10.1.0.1", 10000 + i)
        responder.receive_message(_check(IceControlling(1)), source, LOCAL, 0.0)
    agent.set_remote_credentials(R_UFRAG, R_PWD)
    responder.replay(R_UFRAG, 0.0)
    assert len(agent.remote_candidates) == MAX_PENDING
    agent2 = _agent(remote=False, peer=False)
    responder2 = Responder(agent2)
    responder2.receive_message(_check(IceControlling(1)), PEER, LOCAL, 0.0)
    responder2.forget_pending()
    agent2.set_remote_credentials(R_UFRAG, R_PWD)
    responder2.replay(R_UFRAG, 0.0)
    assert agent2.remote_candidates == []


def test_another_sessions_request_is_answered_and_teaches_nothing() -> None:
    """A request for our ufrag from another remote ufrag (forking, a stale restart)."""
    agent = _agent()
    responder = Responder(agent)
    other = _check(IceControlling(1), username=f"{L_UFRAG}:ZZZZ")
    responder.receive_message(other, OTHER, LOCAL, 0.0)
    assert len(_answers(agent)) == 1
    assert agent.remote_candidates == [host(*PEER)] and not agent.checklist.triggered


def test_during_a_restart_the_previous_credentials_are_answered_only() -> None:
    """RFC 8445 §9: until the new session selects its pairs, the previous one is answered
    (with its password) and nothing else."""
    agent = _agent()
    responder = Responder(agent)
    agent.restart(1.0)
    assert agent.local_ufrag != L_UFRAG
    responder.receive_message(_check(IceControlling(1)), OTHER, LOCAL, 1.0)
    ((answer, _, _),) = _answers(agent, 1.0)
    assert answer.msg_class is MessageClass.SUCCESS and answer.verify_integrity(L_KEY)
    assert agent.remote_candidates == [] and _events(agent) == []


def test_a_repeated_check_finds_the_role_it_was_answered_under() -> None:
    """The responder remembers the requests that needed nothing but their answer (routes),
    keyed by everything that finding depends on: once the role changed, the same check is
    a conflict (487), not the answer it got before."""
    agent = _agent()
    responder = Responder(agent)
    _validated(agent)
    nominate = _check(IceControlling(TIE - 1), UseCandidate(), tid=b"N" * 12)
    responder.receive_message(nominate, PEER, LOCAL, 0.01)
    assert agent.selected_pair is not None
    responder.receive_message(_check(IceControlling(TIE - 1), tid=b"A" * 12), PEER, LOCAL, 0.02)
    for tid in (b"B", b"C"):
        again = _check(IceControlling(TIE - 1), tid=tid * 12).raw
        assert responder.receive(again, PEER, LOCAL, 0.02)
    assert [_error(m) for m, _, _ in _answers(agent, 0.02)] == [None] * 4
    # ICE-CONTROLLED with a smaller tie-breaker than ours: we become controlling (§7.3.1.1)
    responder.receive_message(_check(IceControlled(TIE - 1), tid=b"R" * 12), PEER, LOCAL, 0.03)
    assert agent.controlling
    again = _check(IceControlling(TIE - 1), tid=b"D" * 12).raw
    assert responder.receive(again, PEER, LOCAL, 0.04)
    assert [_error(m) for m, _, _ in _answers(agent, 0.04)][-1] == 487


def _routed() -> tuple[IceAgent, Responder]:
    """A controlled agent with a selected pair whose responder has a route for the peer's
    plain checks (ICE-CONTROLLING with a smaller tie-breaker than ours)."""
    agent = _agent()
    responder = Responder(agent)
    _validated(agent)
    nominate = _check(IceControlling(TIE - 1), UseCandidate(), tid=b"N" * 12)
    responder.receive_message(nominate, PEER, LOCAL, 0.01)
    responder.receive_message(_check(IceControlling(TIE - 1), tid=b"A" * 12), PEER, LOCAL, 0.02)
    _answers(agent, 0.02)
    _events(agent)
    return agent, responder


@pytest.mark.parametrize(
    "change",
    ["none", "fingerprint-value", "fingerprint-type", "integrity", "header-type",
     "header-length", "cookie"],
)  # fmt: skip
def test_a_repeated_check_that_differs_after_its_attributes_takes_the_steps(
    change: str,
) -> None:
    """A datagram whose attributes before MESSAGE-INTEGRITY are those of a route, but
    whose header, MESSAGE-INTEGRITY or FINGERPRINT differ, is treated as the steps treat
    it: what a responder that never saw the check does, as ``receive`` (bytes) then
    ``receive_message`` (decoded) would be called by the agent."""
    data = bytearray(_check(IceControlling(TIE - 1), tid=b"Q" * 12).raw)
    if change == "fingerprint-value":
        data[-1] ^= 1
    elif change == "fingerprint-type":  # the same value under another (optional) type
        data[-8:-6] = b"\x80\x50"
    elif change == "integrity":
        data[-20] ^= 1
        data[-4:] = (zlib.crc32(bytes(data[:-8])) ^ 0x5354554E).to_bytes(4, "big")
    elif change == "header-type":  # a Binding indication with the same attributes
        data[0:2] = b"\x00\x11"
    elif change == "header-length":
        data[3] ^= 4
    elif change == "cookie":
        data[4] ^= 1
    if change.startswith("header") or change == "cookie":  # FINGERPRINT needs no key
        data[-4:] = (zlib.crc32(bytes(data[:-8])) ^ 0x5354554E).to_bytes(4, "big")
    routed_agent, routed = _routed()
    fresh_agent = _routed()[0]
    outcomes = []
    for agent, responder in ((routed_agent, routed), (fresh_agent, Responder(fresh_agent))):
        handled = responder.receive(bytes(data), PEER, LOCAL, 0.03)
        if not handled:
            try:
                msg: Message | None = Message.decode(bytes(data))
            except DecodeError:
                msg = None
            if msg is not None and msg.is_request:
                responder.receive_message(msg, PEER, LOCAL, 0.03)
        answers = [(m.msg_class, _error(m), m.transaction_id) for m, _, _ in _answers(agent, 0.03)]
        outcomes.append((answers, agent.dropped, _events(agent)))
    assert outcomes[0] == outcomes[1]
    if change == "none":
        assert outcomes[0][0] == [(MessageClass.SUCCESS, None, b"Q" * 12)]


@pytest.mark.parametrize(
    "make",
    [bytes, bytearray, memoryview, lambda d: memoryview(bytearray(d))],
    ids=["bytes", "bytearray", "memoryview", "writable-memoryview"],
)
def test_a_repeated_check_in_any_buffer_is_answered(make: object) -> None:
    """Whatever buffer the datagram comes in (the agent's receive_datagram takes any), a
    check the agent's responder has a route for is answered, by the route or through the
    steps; nothing raises."""
    agent = _agent()
    _validated(agent)
    nominate = _check(IceControlling(TIE - 1), UseCandidate(), tid=b"N" * 12)
    agent.receive_datagram(nominate.raw, PEER, LOCAL, 0.01)
    agent.receive_datagram(_check(IceControlling(TIE - 1), tid=b"A" * 12).raw, PEER, LOCAL, 0.02)
    assert agent.selected_pair is not None and len(_answers(agent, 0.02)) == 2
    data = _check(IceControlling(TIE - 1), tid=b"M" * 12).raw
    buffer = make(data)  # type: ignore[operator]
    assert agent.receive_datagram(buffer, PEER, LOCAL, 0.03)
    assert [(m.msg_class, m.transaction_id) for m, _, _ in _answers(agent, 0.03)] == [
        (MessageClass.SUCCESS, b"M" * 12)
    ]
