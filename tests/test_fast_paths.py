"""The fast paths of connectivity checks (issue 8) against the general paths they shortcut.

Each fast path must accept and reject exactly what the general path does, and produce the
same bytes and the same state:

* ``binding_success`` vs ``Message(...).encode(key=..., fingerprint=True)``;
* the encoder's table of encoded attributes (warm vs cold);
* ``signed_check_prefix`` + ``verify_signed_check`` vs ``Message.decode`` + the verify
  methods;
* ``CheckAnswerer.answer`` (verify and answer a check of a remembered shape) vs
  ``signed_check_prefix`` + ``verify_signed_check`` + ``binding_success``;
* ``IceAgent._fast_check`` (a check of a known shape answered without decoding, and the
  checks it remembers as needing nothing but an answer) vs the agent with the fast path
  switched off: twin agents fed the same datagrams (hypothesis programs, with the
  signalling and control calls that change what a remembered check may skip, and the
  whole ``fuzz/corpus/ice_agent`` corpus) must return, send, emit and hold the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fuzz.ice
from anchor_ice.agent import IceAgent, IceState
from anchor_ice.candidate import CandidateType, make_candidate
from anchor_stun import message as message_module
from anchor_stun.attributes import (
    AlternateDomain,
    ConnectionId,
    DontFragment,
    IceControlled,
    IceControlling,
    Lifetime,
    Nonce,
    Priority,
    RawAttribute,
    Realm,
    Software,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address
from anchor_stun.integrity import short_term_key
from anchor_stun.message import (
    CheckAnswerer,
    Message,
    MessageClass,
    Method,
    binding_success,
    signed_check_prefix,
    verify_signed_check,
)

FAST = settings(deadline=None, max_examples=200)
CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus" / "ice_agent"


def _outcome(call: Any) -> tuple[str, object]:
    try:
        return "ok", call()
    except (LocalProtocolError, TypeError) as exc:
        return type(exc).__name__, str(exc)


# --------------------------------------------------------------------------- codec

ipv4 = st.ip_addresses(v=4).map(str)
ips = st.one_of(
    ipv4,
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["not-an-ip", "", "1.2.3", "::ffff:1.2.3.4", "01.2.3.4"]),
)
ports = st.one_of(st.integers(0, 0xFFFF), st.integers(-5, 0x1_0005), st.just(True))
keys = st.binary(min_size=0, max_size=80)
odd_keys = st.one_of(keys, st.none(), st.binary(max_size=30).map(bytearray))
tids = st.one_of(st.binary(min_size=12, max_size=12), st.binary(max_size=16))


@FAST
@given(ip=ips, port=ports, key=odd_keys, tid=tids)
def test_binding_success_is_the_general_encoding(
    ip: str, port: int, key: bytes, tid: bytes
) -> None:
    for _ in range(2):  # cold, then from the cached XOR-MAPPED-ADDRESS
        fast = _outcome(lambda: binding_success(tid, (ip, port), key))
        slow = _outcome(
            lambda: Message(
                Method.BINDING, MessageClass.SUCCESS, tid, [XorMappedAddress(ip, port)]
            ).encode(key=key, fingerprint=True)
        )
        assert fast == slow


value_attributes = st.one_of(
    st.builds(Username, st.one_of(st.text(max_size=30), st.text(min_size=120, max_size=200))),
    st.builds(Realm, st.text(max_size=20)),
    st.builds(Nonce, st.text(max_size=20)),
    st.builds(Software, st.text(max_size=20)),
    st.builds(AlternateDomain, st.text(max_size=20)),
    st.builds(Priority, st.one_of(st.integers(-3, 2**32 + 3), st.booleans())),
    st.builds(IceControlling, st.one_of(st.integers(-3, 2**64 + 3), st.booleans())),
    st.builds(IceControlled, st.integers(0, 2**64 - 1)),
    st.builds(Lifetime, st.integers(0, 2**32 - 1)),
    st.builds(ConnectionId, st.integers(0, 2**32 - 1)),
    st.just(UseCandidate()),
    st.just(DontFragment()),
    st.builds(RawAttribute, st.integers(0, 0xFFFF), st.binary(max_size=9)),
    st.builds(XorMappedAddress, ipv4, st.integers(0, 0xFFFF)),
)


@FAST
@given(
    attrs=st.lists(value_attributes, max_size=5),
    key=st.one_of(st.none(), keys),
    fingerprint=st.booleans(),
    pad_byte=st.sampled_from([0, 0, 0x20]),
    tid=st.binary(min_size=12, max_size=12),
)
def test_encoding_from_the_attribute_table_equals_a_cold_encoding(
    attrs: list[Any], key: bytes | None, fingerprint: bool, pad_byte: int, tid: bytes
) -> None:
    msg = Message(Method.BINDING, MessageClass.REQUEST, tid, attrs, pad_byte=pad_byte)
    message_module._ENCODED.clear()
    cold = _outcome(lambda: msg.encode(key=key, fingerprint=fingerprint))
    warm = [_outcome(lambda: msg.encode(key=key, fingerprint=fingerprint)) for _ in range(2)]
    assert warm == [cold, cold]


def test_the_attribute_table_tells_look_alike_values_apart() -> None:
    # True == 1.0 == 1 and they hash alike, but they do not encode alike: a value the
    # table holds for 1 must not answer for them.
    tid = bytes(12)

    def encode(value: object) -> tuple[str, object]:
        msg = Message(Method.BINDING, MessageClass.REQUEST, tid, [Priority(value)])  # type: ignore[arg-type]
        return _outcome(msg.encode)

    for value in (True, 1.0):
        message_module._ENCODED.clear()
        cold = encode(value)
        encode(1)
        assert encode(value) == cold
    assert encode(1.0)[0] == "LocalProtocolError"


def _check(tid: bytes, attrs: list[Any], key: bytes, fingerprint: bool = True) -> bytes:
    return Message(Method.BINDING, MessageClass.REQUEST, tid, attrs).encode(
        key=key, fingerprint=fingerprint
    )


check_attrs = st.lists(
    st.one_of(
        st.builds(Username, st.text(min_size=1, max_size=12)),
        st.builds(Priority, st.integers(0, 2**32 - 1)),
        st.builds(IceControlling, st.integers(0, 2**64 - 1)),
        st.builds(IceControlled, st.integers(0, 2**64 - 1)),
        st.just(UseCandidate()),
        st.builds(Software, st.text(max_size=7)),
        st.builds(
            RawAttribute, st.sampled_from([0x0008, 0x8028, 0x001C, 0x7F00]), st.binary(max_size=24)
        ),
    ),
    max_size=5,
)


@FAST
@given(
    tid=st.binary(min_size=12, max_size=12),
    attrs=check_attrs,
    key=keys,
    other_key=keys,
    fingerprint=st.booleans(),
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 400), st.integers(1, 255))),
    method=st.sampled_from([Method.BINDING, Method.ALLOCATE]),
    klass=st.sampled_from([MessageClass.REQUEST, MessageClass.INDICATION]),
)
def test_signed_check_verification_equals_decode_and_verify(
    tid: bytes,
    attrs: list[Any],
    key: bytes,
    other_key: bytes,
    fingerprint: bool,
    flip: tuple[int, int] | None,
    method: int,
    klass: MessageClass,
) -> None:
    try:
        data = Message(method, klass, tid, attrs).encode(key=key, fingerprint=fingerprint)
    except LocalProtocolError:
        return
    if flip is not None:
        at, mask = flip
        at %= len(data)
        data = data[:at] + bytes((data[at] ^ mask,)) + data[at + 1 :]
    prefix = signed_check_prefix(data)
    try:
        msg = Message.decode(data)
    except DecodeError:
        msg = None
    if prefix is None or msg is None or msg.signed_prefix() is None:
        return  # the fast path only runs on a check's prefix that a decoded message gave
    assert prefix == msg.signed_prefix()
    assert (msg.method, msg.msg_class) == (Method.BINDING, MessageClass.REQUEST)
    for k in (key, other_key):
        assert verify_signed_check(data, k) == (
            msg.verify_fingerprint() and msg.verify_integrity(k)
        )


@FAST
@given(data=st.binary(max_size=120), tail=st.booleans())
def test_signed_check_prefix_only_accepts_what_decode_walks_the_same_way(
    data: bytes, tail: bool
) -> None:
    if tail:  # give random bytes a check's header and trailer
        body = data[: len(data) // 4 * 4]
        data = (
            b"\x00\x01" + (len(body) + 32).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12)
            + body + b"\x00\x08\x00\x14" + bytes(20) + b"\x80\x28\x00\x04" + bytes(4)
        )  # fmt: skip
    prefix = signed_check_prefix(data)
    if prefix is None:
        return
    try:
        msg = Message.decode(data)
    except DecodeError:
        return
    assert msg.signed_prefix() in (None, prefix)


@FAST
@given(
    tid=st.binary(min_size=12, max_size=12),
    attrs=check_attrs,
    key=keys,
    other_key=keys,
    source=st.tuples(ipv4, st.integers(0, 0xFFFF)),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=2),
    other_tid=st.binary(min_size=12, max_size=12),
)
def test_the_check_answerer_is_prefix_verify_and_binding_success(
    tid: bytes,
    attrs: list[Any],
    key: bytes,
    other_key: bytes,
    source: tuple[str, int],
    flips: list[tuple[int, int]],
    other_tid: bytes,
) -> None:
    try:
        made = Message(Method.BINDING, MessageClass.REQUEST, tid, attrs).encode(
            key=key, fingerprint=True
        )
    except LocalProtocolError:
        return
    if signed_check_prefix(made) is None:
        return  # not a check's shape: nothing would remember it
    answerer = CheckAnswerer(key, len(made), source)
    # another check of the same shape (new transaction id), then corrupted anywhere
    data = made[:8] + other_tid + made[20:]
    for at, mask in flips:
        at %= len(data)
        data = data[:at] + bytes((data[at] ^ mask,)) + data[at + 1 :]
    if data[20 : len(data) - 28] != made[20 : len(made) - 28]:
        return  # the caller finds an answerer by those bytes: not this one
    for k, a in ((key, answerer), (other_key, CheckAnswerer(other_key, len(made), source))):
        expected = (
            binding_success(data[8:20], source, k)
            if signed_check_prefix(data) is not None and verify_signed_check(data, k)
            else None
        )
        assert a.answer(data) == expected


def test_the_check_answerer_refuses_what_it_cannot_answer() -> None:
    with pytest.raises(ValueError):
        CheckAnswerer(L_KEY, 100, ("::1", 5))  # IPv6: the general way
    with pytest.raises(ValueError):
        CheckAnswerer(L_KEY, 30, ("127.0.0.1", 5))  # too short for a check
    with pytest.raises(LocalProtocolError):
        CheckAnswerer(L_KEY, 100, ("127.0.0.1", 70000))


# --------------------------------------------------------------------------- the agent

LOCAL: Address = ("127.0.0.1", 40000)
PEER: Address = ("127.0.0.1", 40001)
OTHER: Address = ("127.0.0.1", 40002)
L_UFRAG, L_PWD = "8hhY", "asd88fgpdd777uzjYhagZg"
R_UFRAG, R_PWD = "Ycb4", "Hq7sLw0bqT3YcKQdWmXn9aZp"
L_KEY = short_term_key(L_PWD)
PEER_TIE = 0x932FF9B151263B36
T0 = 100.0


def _rng(seed: int) -> Any:
    counter = [seed]

    def rng(n: int) -> bytes:
        counter[0] += 1
        return (counter[0].to_bytes(8, "big") * (n // 8 + 1))[:n]

    return rng


def _agent(setup: str, controlling: bool) -> IceAgent:
    """A deterministic agent: ``new`` (no remote credentials yet), ``checking`` (remote
    credentials and the peer's host candidate, checks started), ``half`` (the same, with a
    valid pair from the peer's answer, not nominated yet) or ``connected`` (COMPLETED with
    the peer in memory), controlling or controlled; ``lite`` is controlled."""
    agent = IceAgent(
        controlling=controlling and setup != "lite",
        lite=setup == "lite",
        rng=_rng(7),
        local_ufrag=L_UFRAG,
        local_pwd=L_PWD,
        tie_breaker=0x7000_0000_0000_0000,
    )
    agent.add_local_candidate(make_candidate(CandidateType.HOST, LOCAL), LOCAL)
    if setup == "new":
        return agent
    agent.set_remote_credentials(R_UFRAG, R_PWD)
    agent.add_remote_candidate(make_candidate(CandidateType.HOST, PEER))
    agent.start(T0 - 1.0)
    if setup not in ("connected", "half"):
        return agent
    peer = IceAgent(
        controlling=not controlling,
        rng=_rng(11),
        local_ufrag=R_UFRAG,
        local_pwd=R_PWD,
        tie_breaker=PEER_TIE,
    )
    peer.add_local_candidate(make_candidate(CandidateType.HOST, PEER), PEER)
    peer.set_remote_credentials(L_UFRAG, L_PWD)
    peer.add_remote_candidate(make_candidate(CandidateType.HOST, LOCAL))
    peer.start(T0 - 1.0)
    t = T0 - 1.0
    while t < T0 and not (agent.state is IceState.COMPLETED and peer.state is IceState.COMPLETED):
        for tx in agent.datagrams_to_send(t):
            peer.receive_datagram(tx.data, LOCAL, PEER, t)
        for tx in peer.datagrams_to_send(t):
            agent.receive_datagram(tx.data, PEER, LOCAL, t)
            if setup == "half" and agent.valid_pairs:
                return agent
        t += 0.005
        for a in (agent, peer):
            deadline = a.next_timer()
            if deadline is not None and deadline <= t:
                a.handle_timer(t)
    assert agent.state is IceState.COMPLETED
    agent.datagrams_to_send(T0)
    while agent.next_event() is not None:
        pass
    return agent


def _snapshot(agent: IceAgent) -> object:
    return (
        agent.state,
        agent.controlling,
        agent.tie_breaker,
        agent.dropped,
        tuple(agent.remote_candidates),
        tuple(agent.local_candidates(advertised_only=False)),
        tuple(
            (
                p.local,
                p.remote,
                p.base,
                p.state,
                p.nominated,
                p.valid,
                p.use_candidate,
                p.nominate_on_success,
                p.last_sent,
            )
            for p in agent.pairs
        ),
        tuple((p.local, p.remote, p.nominated, p.last_sent) for p in agent.valid_pairs),
        tuple((c, p.local, p.remote, p.last_sent) for c, p in agent.selected_pairs.items()),
        tuple(p.remote for p in agent.checklist.triggered),
        len(agent._pending),
        agent.next_timer(),
    )


def _slow(agent: IceAgent) -> IceAgent:
    agent._fast_check = lambda *args: False  # type: ignore[method-assign]
    return agent


def _feed_twins(
    twins: tuple[IceAgent, IceAgent],
    data: bytes | None,
    source: Any,
    local: Any,
    now: float,
    why: object = None,
) -> None:
    """Give ``data`` (None: nothing) to both twins, then take their output and events: they
    must return, send, emit and hold the same."""
    results = []
    for agent in twins:
        handled = agent.receive_datagram(data, source, local, now) if data is not None else None
        sent = agent.datagrams_to_send(now)
        events = []
        while (event := agent.next_event()) is not None:
            events.append(event)
        results.append((handled, sent, events, _snapshot(agent)))
    assert results[0] == results[1], why


# One datagram of a program: which check, its transaction id, where it comes from and
# arrives, and an optional corruption.
ROLES = ("controlling", "controlled", "none", "both")
# Weighted towards the plain checks of a peer, the fast path's case.
datagrams = st.tuples(
    st.sampled_from(ROLES[:2] * 3 + ROLES),
    st.sampled_from([PEER_TIE, PEER_TIE, 1, 2**64 - 1]),  # the tie-breaker the request carries
    st.sampled_from([False, False, False, True]),  # USE-CANDIDATE
    st.sampled_from(["good"] * 6 + ["bad-key", "bad-ufrag", "no-colon", "other-remote"]),
    st.sampled_from(["none"] * 6 + ["unknown", "software", "no-priority"]),
    st.integers(0, 3),  # transaction id (few: retransmissions)
    st.sampled_from([PEER, PEER, PEER, OTHER]),
    st.sampled_from([LOCAL, LOCAL, LOCAL, None, ("127.0.0.1", 1)]),
    st.one_of(*[st.none()] * 4, st.tuples(st.integers(0, 200), st.integers(1, 255))),
    st.sampled_from([0.0, 0.0, 0.01, 0.6]),  # time before it
)


def _request(spec: tuple[Any, ...]) -> tuple[bytes, Address, Address | None, float]:
    role, tie, use, cred, extra, tid, source, local, flip, step = spec
    user = {
        "good": f"{L_UFRAG}:{R_UFRAG}",
        "bad-key": f"{L_UFRAG}:{R_UFRAG}",
        "bad-ufrag": f"XxXx:{R_UFRAG}",
        "no-colon": L_UFRAG,
        "other-remote": f"{L_UFRAG}:ZzZz",
    }[cred]
    attrs: list[Any] = [Username(user)]
    if extra != "no-priority":
        attrs.append(Priority(0x6E7F1EFF))
    if role in ("controlling", "both"):
        attrs.append(IceControlling(tie))
    if role in ("controlled", "both"):
        attrs.append(IceControlled(tie))
    if use:
        attrs.append(UseCandidate())
    if extra == "unknown":
        attrs.append(RawAttribute(0x7F00, b"xyz"))
    elif extra == "software":
        attrs.append(Software("x"))
    key = L_KEY if cred != "bad-key" else b"wrong-password-wrong-pw"
    data = _check(b"tid-" + tid.to_bytes(8, "big"), attrs, key)
    if flip is not None:
        at = flip[0] % len(data)
        data = data[:at] + bytes((data[at] ^ flip[1],)) + data[at + 1 :]
    return data, source, local, step


@settings(deadline=None, max_examples=200)
@given(
    setup=st.sampled_from(["connected", "connected", "checking", "half", "new", "lite"]),
    controlling=st.booleans(),
    program=st.lists(datagrams, min_size=1, max_size=12),
)
def test_the_agent_fast_path_changes_nothing_but_speed(
    setup: str, controlling: bool, program: list[tuple[Any, ...]]
) -> None:
    fast, slow = _agent(setup, controlling), _slow(_agent(setup, controlling))
    assert _snapshot(fast) == _snapshot(slow)
    now = T0
    for spec in program:
        data, source, local, step = _request(spec)
        now += step
        for agent in (fast, slow):
            deadline = agent.next_timer()
            if deadline is not None and deadline <= now:
                agent.handle_timer(now)
        for _ in range(2):  # the first teaches the shape, the second may take the fast path
            _feed_twins((fast, slow), data, source, local, now, spec)


ACTIONS = (
    "restart",
    "remote-credentials",
    "remote-other",
    "remote-peer-srflx",
    "better-local",
    "new-base",
    "close",
    "timer",
    "consent-lost",
)


def _act(agent: IceAgent, action: str, now: float) -> float:
    """Do ``action`` to ``agent`` (ignoring what the agent refuses in its state); returns the
    new time."""
    second: Address = ("127.0.0.1", 40010)
    try:
        if action == "restart":
            agent.restart(now)
        elif action == "remote-credentials":
            agent.set_remote_credentials(R_UFRAG, R_PWD)
        elif action == "remote-other":
            agent.add_remote_candidate(make_candidate(CandidateType.HOST, OTHER))
        elif action == "remote-peer-srflx":
            agent.add_remote_candidate(
                make_candidate(CandidateType.SRFLX, PEER, related=OTHER, local_preference=1)
            )
        elif action == "better-local":
            agent.add_local_candidate(
                make_candidate(CandidateType.HOST, LOCAL, local_preference=65535), LOCAL
            )
        elif action == "new-base":
            agent.add_local_candidate(make_candidate(CandidateType.HOST, second), second)
        elif action == "close":
            agent.close(now)
    except LocalProtocolError:
        pass
    if action in ("timer", "consent-lost"):
        now += 5.0 if action == "timer" else 31.0
        deadline = agent.next_timer()
        if deadline is not None and deadline <= now:
            agent.handle_timer(now)
    return now


@settings(deadline=None, max_examples=150)
@given(
    controlling=st.booleans(),
    program=st.lists(
        st.one_of(datagrams, datagrams, datagrams, st.sampled_from(ACTIONS)),
        min_size=1,
        max_size=16,
    ),
)
def test_remembered_checks_follow_every_change_of_the_agent(
    controlling: bool, program: list[Any]
) -> None:
    """The checks ``_fast_check`` remembers as needing nothing but an answer: twin agents,
    one without the fast path, through checks (each sent three times, so that the third
    may be answered from memory) and the calls that change what such a check may skip:
    restart, credentials, candidates, close, consent lost."""
    fast, slow = _agent("connected", controlling), _slow(_agent("connected", controlling))
    now = T0
    for step in program:
        exchanges: list[tuple[bytes | None, Any, Any]]
        if isinstance(step, str):
            times = {_act(agent, step, now) for agent in (fast, slow)}
            assert len(times) == 1
            now = times.pop()
            exchanges = [(None, None, None)]
        else:
            data, source, local, dt = _request(step)
            now += dt
            exchanges = [(data, source, local)] * 3
        for data, source, local in exchanges:
            _feed_twins((fast, slow), data, source, local, now, step)
            assert not fast._hot or fast.state is IceState.COMPLETED


@pytest.mark.parametrize("change", ["new-base", "role-conflict", "remote-other", "restart"])
def test_a_change_between_remembered_checks_is_seen_as_the_general_path_sees_it(
    change: str,
) -> None:
    """Checks from memory, a change, the same checks again: twin agents (one without the
    fast path) stay the same. ``new-base``: a second base makes a check that names no local
    address ambiguous (dropped); ``role-conflict``: a check saying ICE-CONTROLLED with a
    lower tie-breaker makes the agent controlling, so the peer's ICE-CONTROLLING checks
    are conflicts again."""
    fast, slow = _agent("connected", False), _slow(_agent("connected", False))
    attrs = [Username(f"{L_UFRAG}:{R_UFRAG}"), Priority(5), IceControlling(PEER_TIE)]
    local = None if change == "new-base" else LOCAL
    now = T0

    def exchange(data: bytes) -> None:
        _feed_twins((fast, slow), data, PEER, local, now)

    for _ in range(3):
        exchange(_check(os.urandom(12), attrs, L_KEY))
    assert fast._hot
    now += 0.1
    if change == "role-conflict":
        conflict = [Username(f"{L_UFRAG}:{R_UFRAG}"), Priority(5), IceControlled(1)]
        exchange(_check(os.urandom(12), conflict, L_KEY))
        assert fast.controlling
    else:
        for agent in (fast, slow):
            _act(agent, change, now)
    assert not fast._hot
    for _ in range(3):
        now += 0.01
        exchange(_check(os.urandom(12), attrs, L_KEY))


def test_a_remembered_check_is_answered_without_the_shape_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The third check of a connected peer is answered from what the second one left in
    ``_hot``: neither ``signed_check_prefix`` nor ``binding_success`` runs for it, and the
    answer is the general one."""
    agent = _agent("connected", False)
    attrs = [Username(f"{L_UFRAG}:{R_UFRAG}"), Priority(5), IceControlling(PEER_TIE)]
    checks = [_check(os.urandom(12), attrs, L_KEY) for _ in range(3)]
    for data in checks[:2]:
        assert agent.receive_datagram(data, PEER, LOCAL, T0)
    assert len(agent._hot) == 1
    agent.datagrams_to_send(T0)
    expected = binding_success(checks[2][8:20], PEER, L_KEY)

    def unused(*args: Any) -> Any:
        raise AssertionError("the general fast path ran")

    monkeypatch.setattr("anchor_ice.agent.signed_check_prefix", unused)
    monkeypatch.setattr("anchor_ice.agent.binding_success", unused)
    pair = agent.selected_pair
    assert pair is not None
    assert agent.receive_datagram(checks[2], PEER, LOCAL, T0 + 1.0)
    assert [(t.data, t.addr, t.local) for t in agent.datagrams_to_send(T0 + 1.0)] == [
        (expected, PEER, LOCAL)
    ]
    assert pair.last_sent == T0 + 1.0
    # a corrupted one is not answered from memory (the general path then drops it)
    monkeypatch.undo()
    bad = checks[2][:-1] + bytes((checks[2][-1] ^ 1,))
    dropped = agent.dropped
    assert agent.receive_datagram(bad, PEER, LOCAL, T0 + 1.0)
    assert agent.dropped == dropped + 1 and agent.datagrams_to_send(T0 + 1.0) == []
    # anything that changes what it may skip forgets it
    agent.add_remote_candidate(make_candidate(CandidateType.HOST, OTHER))
    assert not agent._hot


def test_the_fast_path_runs_for_the_checks_of_a_connected_peer() -> None:
    agent = _agent("connected", False)
    attrs = [Username(f"{L_UFRAG}:{R_UFRAG}"), Priority(5), IceControlling(PEER_TIE)]
    first, second = (_check(os.urandom(12), attrs, L_KEY) for _ in range(2))
    assert not agent._fast_check(first, PEER, LOCAL, T0)  # shape not known yet
    assert agent.receive_datagram(first, PEER, LOCAL, T0)
    assert agent._fast_check(second, PEER, LOCAL, T0)
    answers = agent.datagrams_to_send(T0)
    assert [(t.addr, t.local) for t in answers] == [(PEER, LOCAL), (PEER, LOCAL)]
    response = Message.decode(answers[1].data)
    assert response.transaction_id == second[8:20]
    assert response.verify_fingerprint() and response.verify_integrity(L_KEY)
    assert response.get(XorMappedAddress) == XorMappedAddress(*PEER)
    # a corrupted copy is not taken by the fast path, and the general path drops it
    bad = second[:-1] + bytes((second[-1] ^ 1,))
    assert not agent._fast_check(bad, PEER, LOCAL, T0)
    dropped = agent.dropped
    assert agent.receive_datagram(bad, PEER, LOCAL, T0)
    assert agent.dropped == dropped + 1 and agent.datagrams_to_send(T0) == []


# --------------------------------------------------------------------------- fuzz corpus


class _Recorder(IceAgent):
    """Logs everything the fuzz harness sees of the agent."""

    log: list[object] = []

    def receive_datagram(
        self, data: bytes, addr: Address, local: Address | None, now: float
    ) -> bool:
        handled = super().receive_datagram(data, addr, local, now)
        self.log.append(("rx", handled, fuzz.ice._snapshot(self), self.dropped))
        return handled

    def datagrams_to_send(self, now: float) -> list[Any]:
        sent = super().datagrams_to_send(now)
        self.log.append(("tx", sent))
        return sent

    def next_event(self) -> Any:
        event = super().next_event()
        self.log.append(("event", event))
        return event


def _replay(data: bytes) -> tuple[list[object], str]:
    _Recorder.log = []
    try:
        fuzz.ice.ice_agent(data)
        outcome = "ok"
    except Exception as exc:  # a harness violation must be the same on both paths
        outcome = f"{type(exc).__name__}: {exc}"
    return _Recorder.log, outcome


def test_the_ice_corpus_runs_the_same_with_and_without_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = sorted(p for p in CORPUS.iterdir() if p.is_file())
    assert files
    monkeypatch.setattr(fuzz.ice, "IceAgent", _Recorder)
    taken = [0]
    fast_check = IceAgent._fast_check

    def counting(self: IceAgent, *args: Any) -> bool:
        done = fast_check(self, *args)
        taken[0] += done
        return done

    for path in files:
        data = path.read_bytes()
        monkeypatch.setattr(_Recorder, "_fast_check", counting)
        fast = _replay(data)
        monkeypatch.setattr(_Recorder, "_fast_check", lambda self, *args: False)
        slow = _replay(data)
        assert fast == slow, path.name
    assert taken[0] > 0  # the corpus did exercise the fast path


# --------------------------------------------------------------------------- the benchmark


def test_the_checks_benchmark_drives_the_agent_and_its_answers_verify() -> None:
    import asyncio

    from benchmarks.checks import PASSWORD, AgentResponder, requests

    class Sink:
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, Address]] = []

        def sendto(self, data: bytes, addr: Address) -> None:
            self.sent.append((data, addr))

        def get_extra_info(self, name: str) -> Any:
            return LOCAL

    async def run() -> tuple[AgentResponder, Sink]:
        responder = AgentResponder(PEER)
        responder.batched = True
        sink = Sink()
        responder.connection_made(sink)
        for request in requests(3):
            responder.datagram_received(request, PEER)
        responder.flush()
        responder.close()
        return responder, sink

    responder, sink = asyncio.run(run())
    assert responder.agent is not None and responder.agent.state is IceState.COMPLETED
    assert len(sink.sent) == 3 and {addr for _, addr in sink.sent} == {PEER}
    for data, _ in sink.sent:
        answer = Message.decode(data)
        assert answer.msg_class is MessageClass.SUCCESS
        assert answer.verify_fingerprint() and answer.verify_integrity(PASSWORD)
        assert answer.get(XorMappedAddress) == XorMappedAddress(*PEER)


# --------------------------------------------------------------------------- the request side


def _general_check(
    tid: Any, username: Any, priority: Any, controlling: Any, tie: Any, key: Any, use: Any
) -> bytes:
    attrs: list[Any] = [
        Username(username),
        Priority(priority),
        IceControlling(tie) if controlling else IceControlled(tie),
    ]
    if use:
        attrs.append(UseCandidate())
    return Message(Method.BINDING, MessageClass.REQUEST, tid, attrs).encode(
        key=key, fingerprint=True
    )


ufrags = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(min_size=150, max_size=200),  # up to 800 bytes of UTF-8: past USERNAME's 512
    st.sampled_from(["Ycb4:8hhY", "a:b", "", "\ud800:x"]),  # "\ud800": no UTF-8
)


@FAST
@given(
    tid=tids,
    ufrag=ufrags,
    priority=st.one_of(st.integers(0, 2**32 - 1), st.integers(-3, 2**32 + 3), st.booleans()),
    controlling=st.sampled_from([True, False, 0, 1]),
    tie=st.one_of(st.integers(0, 2**64 - 1), st.integers(-3, 2**64 + 3), st.booleans()),
    key=st.one_of(keys, st.just(short_term_key("asd88fgpdd777uzjYhagZg")), odd_keys),
    use=st.sampled_from([False, True, 0, 1]),
)
def test_binding_request_is_the_general_encoding(
    tid: bytes, ufrag: str, priority: int, controlling: bool, tie: int, key: bytes, use: bool
) -> None:
    slow = _outcome(lambda: _general_check(tid, ufrag, priority, controlling, tie, key, use))
    message_module._REQUESTS.clear()
    for _ in range(2):  # cold, then from the table of request parts
        fast = _outcome(
            lambda: message_module.binding_request(
                tid, ufrag, priority, controlling, tie, key, use
            )
        )
        assert fast == slow
    if slow[0] == "ok" and type(key) is bytes:
        msg = Message.decode(slow[1])  # type: ignore[arg-type]
        assert msg.verify_fingerprint() and msg.verify_integrity(key)


def test_binding_request_tells_look_alike_values_apart() -> None:
    # True == 1 and they hash alike, so (.., True, ..) finds the entry of (.., 1, ..) in the
    # table; the exact types decide, and the general path answers for the others.
    tid, key = bytes(12), b"k" * 16
    for first, second in ((1, True), (0, False)):
        message_module._REQUESTS.clear()
        for priority in (first, second):
            assert message_module.binding_request(
                tid, "a:b", priority, True, 5, key
            ) == _general_check(tid, "a:b", priority, True, 5, key, False)
        for tie in (first, second):
            assert message_module.binding_request(
                tid, "a:b", 7, True, tie, key
            ) == _general_check(tid, "a:b", 7, True, tie, key, False)


@pytest.mark.parametrize("controlling", [True, False])
@pytest.mark.parametrize("setup", ["checking", "connected"])
def test_the_agent_sends_checks_as_a_message_would_encode_them(
    setup: str, controlling: bool
) -> None:
    agent = _agent(setup, controlling)
    sent = [tx.data for tx in agent.datagrams_to_send(T0)]
    for _ in range(40):  # checks, retransmissions, then consent checks on a connected pair
        now = agent.next_timer()
        if now is None:
            break
        agent.handle_timer(now)
        sent += [tx.data for tx in agent.datagrams_to_send(now)]
    checks = [msg for msg in map(Message.decode, sent) if msg.is_request]
    assert checks
    key = short_term_key(R_PWD)
    for data, msg in ((m.raw, m) for m in checks):
        assert msg.verify_fingerprint() and msg.verify_integrity(key)
        assert data == Message(
            Method.BINDING, MessageClass.REQUEST, msg.transaction_id, msg.attributes
        ).encode(key=key, fingerprint=True)
        assert msg.get(Username) == Username(f"{R_UFRAG}:{L_UFRAG}")
        role = msg.get(IceControlling) if controlling else msg.get(IceControlled)
        assert role is not None and role.value == 0x7000_0000_0000_0000


def test_the_codec_benchmark_reads_checks_as_decode_and_verify_do() -> None:
    import zlib

    from benchmarks.codec import PASSWORD, TIE_BREAKER, CheckReader, _same_work

    _same_work(bytes(range(12)))
    reader = CheckReader(PASSWORD)
    for i in range(3):  # decoded, then twice from the table
        tid = bytes((i,)) * 12
        data = message_module.binding_request(tid, "x:y", 9, True, TIE_BREAKER, PASSWORD)
        assert reader.read(data) == ("x:y", 9, TIE_BREAKER)
        bad = data[:-9] + bytes((data[-9] ^ 0x80,)) + data[-8:-4]
        bad += (zlib.crc32(bad[:-4]) ^ 0x5354554E).to_bytes(4, "big")
        with pytest.raises(AssertionError):
            reader.read(bad)
    with pytest.raises(AssertionError):
        CheckReader(b"another key").read(data)


# --------------------------------------------------------------------------- per-source caches


def test_binding_success_stays_the_general_encoding_when_its_cache_empties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(message_module, "_CACHE_SIZE", 3)
    message_module._SUCCESS_PARTS.clear()
    for i in range(20):
        key = b"k%d" % (i % 4)
        address = (f"10.0.{i % 5}.1", 1000 + i % 7)
        tid = os.urandom(12)
        general = Message(
            Method.BINDING, MessageClass.SUCCESS, tid, [XorMappedAddress(*address)]
        ).encode(key=key, fingerprint=True)
        assert binding_success(tid, address, key) == general
        assert len(message_module._SUCCESS_PARTS) <= 3
    message_module._SUCCESS_PARTS.clear()


def test_the_fast_path_follows_local_candidates_that_change_between_checks() -> None:
    """The fast path remembers which local candidate a base maps to: a candidate replaced
    by a higher-priority one, or a new base, must be seen as the general path sees it."""
    fast, slow = _agent("connected", False), _slow(_agent("connected", False))
    attrs = [Username(f"{L_UFRAG}:{R_UFRAG}"), Priority(5), IceControlling(PEER_TIE)]
    now = T0

    def exchange(source: Address, local: Address | None) -> None:
        nonlocal now
        now += 0.01
        _feed_twins((fast, slow), _check(os.urandom(12), attrs, L_KEY), source, local, now)

    for _ in range(3):
        exchange(PEER, LOCAL)
    better = make_candidate(CandidateType.HOST, LOCAL, local_preference=65535)
    for agent in (fast, slow):
        agent.add_local_candidate(better, LOCAL)
    for source in (PEER, OTHER, PEER):
        exchange(source, LOCAL)
    second: Address = ("127.0.0.1", 40010)
    for agent in (fast, slow):
        agent.add_local_candidate(make_candidate(CandidateType.HOST, second), second)
    for local in (None, second, LOCAL, None):
        exchange(PEER, local)
