"""Connectivity checks, built, read and answered through one path each (issue 19).

The agent answers a check through one path, :meth:`IceAgent.receive_datagram`; what it
remembers to make that path fast (the attributes of the check shapes it has read, the
routes of requests that needed nothing but their answer, the base of each local address,
the key's HMAC states and encoded attributes) lives in objects the agent owns and is keyed
by everything it depends on. These tests hold that through the public surface:

* :class:`~anchor_stun.check.CheckKey` builds the bytes ``Message.encode`` builds, and
  verifies what ``Message.decode`` + the verify methods accept (random, corrupted and
  look-alike inputs, more distinct values than its tables hold);
* :class:`~anchor_stun.check.CheckReader` says what a fresh decode says;
* ``anchor_stun.message`` and ``anchor_stun.check`` keep no module-level mutable state;
* an agent's answer to a datagram is a function of what the datagram says, never of the
  checks it has seen before: an agent fed a program of checks (and restarts, candidates,
  close, timers, consent loss) behaves exactly like one fed the same checks made unique
  (a SOFTWARE attribute with a counter, which no table or route can hold);
* the benchmarks drive the same objects the agent uses.
"""

from __future__ import annotations

import ipaddress
import os
import types
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_ice.agent import IceAgent, IceState
from anchor_ice.candidate import CandidateType, make_candidate
from anchor_ice.events import RemoteCandidateLearned
from anchor_stun import attributes as attributes_module
from anchor_stun import check as check_module
from anchor_stun import message as message_module
from anchor_stun.attributes import (
    ErrorCodeAttribute,
    IceControlled,
    IceControlling,
    Priority,
    RawAttribute,
    Software,
    UseCandidate,
    Username,
    XorMappedAddress,
    pack_ip,
)
from anchor_stun.check import TABLE_SIZE, CheckKey, CheckReader
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address
from anchor_stun.integrity import short_term_key
from anchor_stun.message import (
    HEADS,
    HmacKey,
    Message,
    MessageClass,
    Method,
    encode_attributes,
    encode_type,
    fingerprint_matches,
    fingerprint_value_matches,
    integrity_matches,
    seal,
    signed_check_prefix,
)

FAST = settings(deadline=None, max_examples=200)


def _outcome(call: Any) -> tuple[str, object]:
    try:
        return "ok", call()
    except (LocalProtocolError, TypeError) as exc:
        return type(exc).__name__, str(exc)


def _check(tid: bytes, attrs: list[Any], key: bytes, fingerprint: bool = True) -> bytes:
    return Message(Method.BINDING, MessageClass.REQUEST, tid, attrs).encode(
        key=key, fingerprint=fingerprint
    )


# --------------------------------------------------------------------------- no module state


@pytest.mark.parametrize("module", [attributes_module, message_module, check_module])
def test_the_codec_modules_keep_no_mutable_state(module: types.ModuleType) -> None:
    """No module-level cache: every global is a constant (immutable mapping or set, tuple,
    bytes, number, string), a class, a function or an imported module."""
    imported = [
        vars(other)
        for other in vars(module).values()
        if isinstance(other, types.ModuleType) and other.__name__.startswith("anchor_stun")
    ] + [vars(attributes_module), vars(message_module)]
    for name, value in vars(module).items():
        if name.startswith("__") or any(
            other is not vars(module) and other.get(name) is value for other in imported
        ):
            continue  # dunder, or another module's name imported here
        assert not isinstance(value, (dict, list, set, bytearray)), name
        assert not hasattr(value, "cache_info"), name  # functools.lru_cache / cache


@FAST
@given(
    text=st.one_of(
        st.ip_addresses().map(str),
        st.lists(st.integers(0, 300).map(str), min_size=3, max_size=5).map(".".join),
        st.lists(st.text("0123456789٣", max_size=4), min_size=4, max_size=4).map(".".join),
        st.sampled_from(["01.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "::ffff:1.2.3.4", "", "1..2.3"]),
        st.text(max_size=20),
    )
)
def test_pack_ip_reads_addresses_as_ipaddress_does(text: str) -> None:
    """pack_ip (a direct read of dotted quads, nothing remembered) says what ipaddress says."""
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        with pytest.raises(LocalProtocolError):
            pack_ip(text)
        return
    assert pack_ip(text) == (1 if parsed.version == 4 else 2, parsed.packed)


# --------------------------------------------------------------------------- CheckKey

ipv4 = st.ip_addresses(v=4).map(str)
ips = st.one_of(
    ipv4,
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["not-an-ip", "", "1.2.3", "::ffff:1.2.3.4", "01.2.3.4"]),
)
ports = st.one_of(st.integers(0, 0xFFFF), st.integers(-5, 0x1_0005), st.just(True))
keys = st.binary(min_size=0, max_size=80)
tids = st.one_of(st.binary(min_size=12, max_size=12), st.binary(max_size=16))


@FAST
@given(ip=ips, port=ports, key=keys, tid=tids)
def test_the_answer_to_a_check_is_the_general_encoding(
    ip: str, port: int, key: bytes, tid: bytes
) -> None:
    general = _outcome(
        lambda: Message(
            Method.BINDING, MessageClass.SUCCESS, tid, [XorMappedAddress(ip, port)]
        ).encode(key=key, fingerprint=True)
    )
    check_key = CheckKey(key)
    for _ in range(2):  # first built, then from the key's table of addresses
        assert _outcome(lambda: check_key.success(tid, (ip, port))) == general


def test_the_answer_stays_the_general_encoding_past_the_table_size() -> None:
    key = CheckKey(b"k" * 16)
    for i in range(TABLE_SIZE * 2 + 3):
        address = (f"10.0.{i % 251}.{i // 251 + 1}", 1000 + i % 7)
        tid = os.urandom(12)
        general = Message(
            Method.BINDING, MessageClass.SUCCESS, tid, [XorMappedAddress(*address)]
        ).encode(key=key.key, fingerprint=True)
        assert key.success(tid, address) == general


def test_a_key_signs_every_shape_as_its_bytes_do_past_its_table_size() -> None:
    """seal with an HmacKey (its signed headers remembered by message type and length)
    gives the bytes of the same key as bytes, for more shapes than the key remembers, in
    an order that comes back to shapes it forgot; and those messages verify."""
    raw_key = os.urandom(20)
    key = HmacKey(raw_key)
    shapes = [
        (encode_type(method, klass), length)
        for length in range(0, 4 * (HEADS + 8), 4)
        for method, klass in ((Method.BINDING, MessageClass.REQUEST), (0x003, 0b10))
    ]
    for msg_type, length in shapes + shapes[::-1] + shapes[:5]:
        tid = os.urandom(12)
        value = os.urandom(length - 4) if length else b""
        body = encode_attributes([RawAttribute(0x8022, value)], tid) if length else b""
        signed = seal(msg_type, tid, body, key, None, 32, True)
        assert signed == seal(msg_type, tid, body, raw_key, None, 32, True)
        assert integrity_matches(signed, len(signed) - 32, key)
        assert integrity_matches(signed, len(signed) - 32, raw_key)
        assert fingerprint_matches(signed, len(signed) - 8)
        assert not integrity_matches(signed, len(signed) - 32, HmacKey(raw_key + b"!"))


messages = st.lists(
    st.tuples(
        st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011]),  # message type
        st.integers(0, 6).map(lambda n: 4 * n),  # attribute bytes before MESSAGE-INTEGRITY
        st.sampled_from([0, 0, 0, 8, -4]),  # header length off by
        st.sampled_from([b"\x21\x12\xa4\x42"] * 3 + [b"\x00\x00\x00\x00"]),  # cookie
        st.sampled_from([None, None, 0, 3, 20]),  # a byte flipped in MI (or the body)
        st.sampled_from([None, None, 0, 4]),  # a byte flipped in the FINGERPRINT TLV
        st.sampled_from([0, 0, 0, -4, 4]),  # MESSAGE-INTEGRITY offset told off by
    ),
    min_size=1,
    max_size=12,
)


@FAST
@given(messages=messages, raw_key=st.binary(min_size=1, max_size=70))
def test_an_hmac_key_checks_the_trailer_as_its_bytes_do(
    messages: list[tuple[int, int, int, bytes, int | None, int | None, int]], raw_key: bytes
) -> None:
    """integrity_matches with an HmacKey (HmacKey.mac_matches: signed headers remembered by
    the first 8 bytes as they arrived, with the offset) says what the key as bytes says,
    whatever the header, cookie, offset or corruption, one message after another with the
    same key; so does mac_matches given those 8 bytes. fingerprint_value_matches says what
    fingerprint_matches says of a message whose header covers its FINGERPRINT."""
    key = HmacKey(raw_key)
    for msg_type, length, off, cookie, mi_flip, fp_flip, at_off in messages:
        tid = os.urandom(12)
        body = encode_attributes([RawAttribute(0x8022, os.urandom(length - 4))], tid) if (
            length
        ) else b""
        data = bytearray(seal(msg_type, tid, body, raw_key, None, 32, True))
        data[2:4] = (len(data) - 20 + off).to_bytes(2, "big")
        data[4:8] = cookie
        if mi_flip is not None:
            data[len(data) - 28 + mi_flip - 4] ^= 0x40
        if fp_flip is not None:
            data[len(data) - 8 + fp_flip] ^= 0x01
        raw = bytes(data)
        at = len(raw) - 32 + at_off
        general = integrity_matches(raw, at, raw_key)
        assert integrity_matches(raw, at, key) == general
        assert key.mac_matches(raw, at, raw[:8]) == general
        fp_at = len(raw) - 8
        if off == 0:
            expected = raw[fp_at : fp_at + 4] == b"\x80\x28\x00\x04" and int.from_bytes(
                raw[-4:], "big"
            ) == zlib.crc32(raw[:fp_at]) ^ 0x5354554E  # RFC 8489 §14.7
            assert fingerprint_value_matches(raw, fp_at) == expected
            assert fingerprint_matches(raw, fp_at) == expected
        if off == 0 and cookie[0] == 0x21 and mi_flip is None and at_off == 0:
            assert general  # (the test's messages do get verified)


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
    key=st.one_of(keys, st.just(short_term_key("asd88fgpdd777uzjYhagZg"))),
    use=st.sampled_from([False, True, 0, 1]),
)
def test_a_check_is_the_general_encoding(
    tid: bytes, ufrag: str, priority: int, controlling: bool, tie: int, key: bytes, use: bool
) -> None:
    general = _outcome(lambda: _general_check(tid, ufrag, priority, controlling, tie, key, use))
    check_key = CheckKey(key)
    for _ in range(2):  # first built, then from the key's table of requests
        built = _outcome(lambda: check_key.request(tid, ufrag, priority, controlling, tie, use))
        assert built == general
    if general[0] == "ok":
        msg = Message.decode(general[1])  # type: ignore[arg-type]
        assert msg.verify_fingerprint() and msg.verify_integrity(key)


def test_a_check_tells_look_alike_values_apart() -> None:
    # True == 1 and they hash alike; the exact types decide which table entry applies
    tid, key = bytes(12), CheckKey(b"k" * 16)
    for first, second in ((1, True), (0, False)):
        for priority in (first, second):
            assert key.request(tid, "a:b", priority, True, 5) == _general_check(
                tid, "a:b", priority, True, 5, key.key, False
            )
        for tie in (first, second):
            assert key.request(tid, "a:b", 7, True, tie) == _general_check(
                tid, "a:b", 7, True, tie, key.key, False
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
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=2),
    other_tid=st.binary(min_size=12, max_size=12),
)
def test_reading_a_check_is_decoding_and_verifying_it(
    tid: bytes,
    attrs: list[Any],
    key: bytes,
    other_key: bytes,
    flips: list[tuple[int, int]],
    other_tid: bytes,
) -> None:
    """A reader that has read one check, given another of the same shape (new transaction
    id), corrupted anywhere: what it says, and what the key verifies, is what a decode
    says and verifies."""
    try:
        made = _check(tid, attrs, key)
    except LocalProtocolError:
        return
    reader = CheckReader()
    try:
        reader.remember(Message.decode(made))
    except DecodeError:
        return
    data = made[:8] + other_tid + made[20:]
    for at, mask in flips:
        at %= len(data)
        data = data[:at] + bytes((data[at] ^ mask,)) + data[at + 1 :]
    try:
        msg: Message | None = Message.decode(data)
    except DecodeError:
        msg = None
    known = reader.known(data)
    if known is None:
        return
    assert msg is not None and msg.method == Method.BINDING and msg.is_request
    assert (msg.integrity_at, msg.fingerprint_at) == (len(data) - 32, len(data) - 8)
    fresh = CheckReader().remember(msg)
    fields = ("username", "priority", "controlling", "controlled", "use_candidate", "unknown")
    assert [getattr(known, f) for f in fields] == [getattr(fresh, f) for f in fields]
    assert (known.ufrag, known.remote_ufrag) == (fresh.ufrag, fresh.remote_ufrag)
    for k in (key, other_key):
        assert CheckKey(k).verify(data, len(data) - 32, len(data) - 8) == (
            msg.verify_fingerprint() and msg.verify_integrity(k)
        )


@FAST
@given(data=st.binary(max_size=120), tail=st.booleans())
def test_the_reader_knows_only_what_decodes_the_same_way(data: bytes, tail: bool) -> None:
    if tail:  # give random bytes a check's header and trailer
        body = data[: len(data) // 4 * 4]
        data = (
            b"\x00\x01" + (len(body) + 32).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12)
            + body + b"\x00\x08\x00\x14" + bytes(20) + b"\x80\x28\x00\x04" + bytes(4)
        )  # fmt: skip
    reader = CheckReader()
    try:
        msg = Message.decode(data)
    except DecodeError:
        assert reader.known(data) is None
        return
    if msg.is_request and msg.method == Method.BINDING:
        reader.remember(msg)
    known = reader.known(data)
    if known is not None:
        assert signed_check_prefix(data) == msg.signed_prefix() is not None
        assert known.head == data[:8]


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
    """Everything the public surface shows of an agent."""
    return (
        agent.state,
        agent.controlling,
        agent.tie_breaker,
        agent.dropped,
        agent.failure_reason,
        agent.remote_ufrag,
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
        agent.next_timer(),
    )


def _feed(agent: IceAgent, data: bytes | None, source: Any, local: Any, now: float) -> object:
    handled = agent.receive_datagram(data, source, local, now) if data is not None else None
    sent = [(Message.decode(t.data), t.addr, t.local) for t in agent.datagrams_to_send(now)]
    # answers compared by what they say (the checks of the two agents differ in SOFTWARE)
    said = [
        (m.msg_class, m.transaction_id, m.attributes if m.is_response else None, addr, local)
        for m, addr, local in sent
    ]
    events = []
    while (event := agent.next_event()) is not None:
        events.append(event)
    return handled, said, events, _snapshot(agent)


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


def _request(spec: tuple[Any, ...], unique: int | None) -> tuple[bytes, Address, Any, float]:
    """The datagram of ``spec``; with ``unique``, the same request made unlike any other by
    a SOFTWARE attribute (ignored by ICE, never remembered)."""
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
    if unique is not None:
        attrs.append(Software(f"unique {unique}"))
    key = L_KEY if cred != "bad-key" else b"wrong-password-wrong-pw"
    data = _check(b"tid-" + tid.to_bytes(8, "big"), attrs, key)
    if flip is not None:  # a corruption of what the datagram says, the same for both
        kind = flip[0] % 3
        if kind == 0:  # FINGERPRINT
            data = data[:-1] + bytes((data[-1] ^ flip[1],))
        elif kind == 1:  # MESSAGE-INTEGRITY, under a right FINGERPRINT
            data = data[:-9] + bytes((data[-9] ^ flip[1],)) + data[-8:-4]
            data += (zlib.crc32(data[:-4]) ^ 0x5354554E).to_bytes(4, "big")
        else:  # not a STUN message any more
            data = bytes((data[0] ^ 0xC0,)) + data[1:]
    return data, source, local, step


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


class _Twins:
    """Two agents of the same setup: ``seen`` gets the program's datagrams as they are,
    ``fresh`` the same requests each made unique."""

    def __init__(self, setup: str, controlling: bool) -> None:
        self.seen = _agent(setup, controlling)
        self.fresh = _agent(setup, controlling)
        self.count = 0
        assert _snapshot(self.seen) == _snapshot(self.fresh)

    def request(self, spec: tuple[Any, ...], now: float, why: object) -> None:
        self.count += 1
        data, source, local, _ = _request(spec, None)
        unique, _, _, _ = _request(spec, self.count)
        seen = _feed(self.seen, data, source, local, now)
        fresh = _feed(self.fresh, unique, source, local, now)
        assert seen == fresh, why

    def act(self, action: str, now: float) -> float:
        times = {_act(agent, action, now) for agent in (self.seen, self.fresh)}
        assert len(times) == 1
        now = times.pop()
        assert _feed(self.seen, None, None, None, now) == _feed(
            self.fresh, None, None, None, now
        ), action
        return now


@settings(deadline=None, max_examples=150)
@given(
    setup=st.sampled_from(["connected", "connected", "checking", "half", "new", "lite"]),
    controlling=st.booleans(),
    program=st.lists(
        st.one_of(datagrams, datagrams, datagrams, st.sampled_from(ACTIONS)),
        min_size=1,
        max_size=16,
    ),
)
def test_an_answer_depends_on_the_datagram_not_on_the_checks_seen_before(
    setup: str, controlling: bool, program: list[Any]
) -> None:
    twins = _Twins(setup, controlling)
    now = T0
    for step in program:
        if isinstance(step, str):
            now = twins.act(step, now)
            continue
        now += step[-1]
        for agent in (twins.seen, twins.fresh):
            deadline = agent.next_timer()
            if deadline is not None and deadline <= now:
                agent.handle_timer(now)
        for _ in range(3):  # the first teaches the shape, the next ones may find it known
            twins.request(step, now, step)


GOOD = ("controlling", PEER_TIE, False, "good", "none", 0, PEER, LOCAL, None, 0.0)


@pytest.mark.parametrize(
    "change",
    ["new-base", "role-conflict", "remote-other", "restart", "better-local", "close",
     "consent-lost", "new-source"],
)  # fmt: skip
def test_a_change_between_repeated_checks_is_seen(change: str) -> None:
    """Checks the agent has answered before, a change, the same checks again: the agent
    behaves as one that never saw them. ``new-base``: a second base makes a check that
    names no local address ambiguous (dropped); ``role-conflict``: a check saying
    ICE-CONTROLLED with a lower tie-breaker makes the agent controlling, so the peer's
    ICE-CONTROLLING checks are conflicts (487) from then on."""
    twins = _Twins("connected", False)
    spec = GOOD if change != "new-base" else (*GOOD[:7], None, *GOOD[8:])
    now = T0
    for i in range(3):
        twins.request((*spec[:5], i, *spec[6:]), now, "before")
    now += 0.1
    if change == "role-conflict":
        conflict = ("controlled", 1, *spec[2:])
        twins.request(conflict, now, change)
        assert twins.seen.controlling
    elif change == "new-source":
        twins.request((*spec[:6], OTHER, *spec[7:]), now, change)
    else:
        now = twins.act(change, now)
    for i in range(3):
        now += 0.01
        twins.request((*spec[:5], i + 3, *spec[6:]), now, "after")


def test_repeated_checks_of_a_connected_peer_are_answered_and_stamp_the_pair() -> None:
    agent = _agent("connected", False)
    now = T0
    for i in range(5):
        now += 0.01
        data, source, local, _ = _request((*GOOD[:5], i, *GOOD[6:]), None)
        assert agent.receive_datagram(data, source, local, now)
        (answer,) = agent.datagrams_to_send(now)
        msg = Message.decode(answer.data)
        assert msg.msg_class is MessageClass.SUCCESS and msg.transaction_id == data[8:20]
        assert msg.verify_fingerprint() and msg.verify_integrity(L_KEY)
        assert msg.get(XorMappedAddress) == XorMappedAddress(*PEER)
        assert (answer.addr, answer.local) == (PEER, LOCAL)
        pair = agent.selected_pair
        assert pair is not None and pair.last_sent == now
    assert agent.state is IceState.COMPLETED and agent.next_event() is None
    # a new source is learned once (RFC 8445 §7.3.1.3), then only answered
    learned = []
    for i in range(3):
        data, _, _, _ = _request((*GOOD[:5], i, *GOOD[6:]), None)
        agent.receive_datagram(data, OTHER, LOCAL, now)
        assert len(agent.datagrams_to_send(now)) == 1
        while (event := agent.next_event()) is not None:
            learned.append(event)
    assert [type(e) for e in learned] == [RemoteCandidateLearned]
    # a wrong key after good checks of the same shape: 401, every time
    for i in range(2):
        spec = (*GOOD[:3], "bad-key", *GOOD[4:5], i, *GOOD[6:])
        data, source, local, _ = _request(spec, None)
        agent.receive_datagram(data, source, local, now)
        (answer,) = agent.datagrams_to_send(now)
        error = Message.decode(answer.data).get(ErrorCodeAttribute)
        assert error is not None and error.code == 401


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


# --------------------------------------------------------------------------- the benchmarks


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


def test_the_codec_benchmark_reads_checks_as_decode_and_verify_do() -> None:
    from benchmarks.codec import PASSWORD, TIE_BREAKER, CheckReader, _same_work

    _same_work(bytes(range(12)))
    reader = CheckReader(CheckKey(PASSWORD))
    key = CheckKey(PASSWORD)
    for i in range(3):  # decoded, then twice from the table
        tid = bytes((i,)) * 12
        data = key.request(tid, "x:y", 9, True, TIE_BREAKER)
        assert reader.read(data) == ("x:y", 9, TIE_BREAKER)
        bad = data[:-9] + bytes((data[-9] ^ 0x80,)) + data[-8:-4]
        bad += (zlib.crc32(bad[:-4]) ^ 0x5354554E).to_bytes(4, "big")
        with pytest.raises(AssertionError):
            reader.read(bad)
    with pytest.raises(AssertionError):
        CheckReader(CheckKey(b"another key")).read(data)
