"""Harness of the ICE agent's receive path (anchor_ice.agent.IceAgent).

A fresh agent (controlling or controlled, full or lite, remote credentials known or not) with
a host, a server-reflexive and a relayed local candidate and a few remote candidates runs a
program of operations: raw datagrams; Binding requests the harness signs with the agent's
password (valid USERNAME, PRIORITY, role attribute, optionally USE-CANDIDATE, plus attributes
the fuzzer writes); answers to the checks the agent sent (success with any XOR-MAPPED-ADDRESS,
or an error such as 487) signed with the remote password; the same with one byte corrupted;
time; new remote candidates; data on the selected pair.

Contracts checked: ``receive_datagram`` never raises and returns a bool; ``datagrams_to_send``
and ``handle_timer`` never raise; every datagram leaves from a local base; a check (a Binding
request) goes only to a signalled remote candidate or to the source of an authenticated
request (no reflection to addresses an attacker names); input whose integrity does not verify
(raw bytes, corrupted requests or responses) changes no pair, candidate, role or state
(issue 9: "checks with wrong credentials get 401 and change nothing; responses with bad
integrity are ignored").
"""

from __future__ import annotations

from anchor_ice.agent import IceAgent
from anchor_ice.candidate import Candidate, CandidateType, make_candidate
from anchor_ice.nominator import GatewayNominator, RelayOnly
from anchor_stun.attributes import (
    ErrorCodeAttribute,
    IceControlled,
    IceControlling,
    Priority,
    RawAttribute,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.integrity import short_term_key
from anchor_stun.message import Message, MessageClass, Method

from .common import Reader, Violation, check, corrupt

LOCAL_UFRAG, LOCAL_PWD = "LoCa", "localpasswordlocalpass00"
REMOTE_UFRAG, REMOTE_PWD = "ReMo", "remotepasswordremotepw11"
LOCAL_KEY = short_term_key(LOCAL_PWD)
REMOTE_KEY = short_term_key(REMOTE_PWD)
HOST: Address = ("192.0.2.10", 5000)
SRFLX: Address = ("203.0.113.7", 6000)
RELAYED: Address = ("198.51.100.1", 50000)
BASES = (HOST, RELAYED)
REMOTES: tuple[Address, ...] = (
    ("192.0.2.20", 7000),
    ("203.0.113.20", 7001),
    ("2001:db8::20", 7002),
    ("198.51.100.30", 7003),
)
SOURCES: tuple[Address, ...] = (
    *REMOTES,
    ("203.0.113.99", 9999),  # nobody signalled this one
    ("::ffff:192.0.2.20", 7000),
    ("127.0.0.1", 1),
)
T0 = 50.0
_STEPS = (0.005, 0.05, 0.5, 2.5, 5.0, 15.0, 31.0, 40.0)
_ERRORS = (487, 401, 400, 420, 500)


def _rng(n: int) -> bytes:
    return bytes((0x5A + 3 * i) & 0xFF for i in range(n))


def _candidate(
    kind: CandidateType, address: Address, base: Address, component: int = 1
) -> Candidate:
    related = base if kind is not CandidateType.HOST else None
    return make_candidate(kind, address, base=base, related=related, component=component)


def _snapshot(agent: IceAgent) -> object:
    return (
        agent.state,
        agent.controlling,
        agent.tie_breaker,
        tuple(agent.remote_candidates),
        tuple(agent.local_candidates(advertised_only=False)),
        tuple((p.local, p.remote, p.base, p.state, p.nominated, p.valid) for p in agent.pairs),
        tuple((p.local, p.remote) for p in agent.valid_pairs),
        tuple((c, p.local, p.remote) for c, p in agent.selected_pairs.items()),
    )


def _request(r: Reader, tid: bytes, controlling: bool, good_user: bool) -> bytes:
    attrs = [
        Username(f"{LOCAL_UFRAG}:{REMOTE_UFRAG}" if good_user else f"XxXx:{REMOTE_UFRAG}"),
        Priority(r.u32() or 1),
    ]
    role = r.byte()
    if role & 1:
        attrs.append(IceControlling(r.u32()) if controlling else IceControlled(r.u32()))
    if role & 2:
        attrs.append(UseCandidate())
    if role & 4:
        attrs.append(
            RawAttribute(r.pick((0x0024, 0x0025, 0x8029, 0x802A, 0x0030, 0xC00)), r.chunk())
        )
    return Message(Method.BINDING, MessageClass.REQUEST, tid, attrs).encode(
        key=LOCAL_KEY, fingerprint=not role & 8
    )


def _answer(r: Reader, check_tx: Transmit) -> tuple[bytes, Address, Address]:
    """An answer to one of the agent's checks: from its destination (or elsewhere), to the
    base it left from (or the other one), success or error, signed with the remote key."""
    tid = check_tx.data[8:20]
    how = r.byte()
    if how & 1:
        code = r.pick(_ERRORS)
        attrs: list[object] = [ErrorCodeAttribute(code, "x")]
        klass = MessageClass.ERROR
    else:
        mapped = r.pick((*SOURCES, SRFLX, HOST, ("203.0.113.7", 6001)))
        attrs = [XorMappedAddress(*mapped)]
        klass = MessageClass.SUCCESS
    data = Message(Method.BINDING, klass, tid, attrs).encode(  # type: ignore[arg-type]
        key=REMOTE_KEY, fingerprint=True
    )
    source = check_tx.addr if not how & 2 else r.pick(SOURCES)
    base = check_tx.local if not how & 4 else r.pick(BASES)
    assert base is not None
    return data, source, base


def ice_agent(data: bytes) -> None:
    """Run one program against a fresh agent (module docstring)."""
    r = Reader(data)
    config = r.byte()
    controlling = bool(config & 1)
    lite = bool(config & 2) and not controlling
    nominator = (None, GatewayNominator(), RelayOnly(), None)[(config >> 4) & 3]
    components = 2 if config & 0x40 else 1
    try:
        agent = IceAgent(
            controlling=controlling,
            lite=lite,
            aggressive=bool(config & 4),
            rng=_rng,
            local_ufrag=LOCAL_UFRAG,
            local_pwd=LOCAL_PWD,
            tie_breaker=0x1234567890ABCDEF,
            nominator=nominator,
            components=components,
        )
    except LocalProtocolError:
        return
    for component in range(1, components + 1):
        for kind, address, base in (
            (CandidateType.HOST, HOST, HOST),
            (CandidateType.SRFLX, SRFLX, HOST),
            (CandidateType.RELAY, RELAYED, RELAYED),
        ):
            agent.add_local_candidate(_candidate(kind, address, base, component), base)
        for address, kind in zip(
            REMOTES[:2], (CandidateType.HOST, CandidateType.SRFLX), strict=True
        ):
            agent.add_remote_candidate(_candidate(kind, address, address, component))
    if not config & 8:
        agent.set_remote_credentials(REMOTE_UFRAG, REMOTE_PWD)
    now = T0
    agent.start(now)

    known: set[Address] = set(REMOTES[:2])  # where checks may go
    heard: set[Address] = set()  # sources of datagrams (answers may go there)
    checks: list[Transmit] = []
    tid = 0

    def collect() -> None:
        for out in agent.datagrams_to_send(now):
            check(out.local in BASES, f"datagram from {out.local}, not a base")
            if out.data[:1] in (b"\x00", b"\x01"):
                try:
                    msg = Message.decode(out.data)
                except DecodeError as exc:
                    raise Violation(f"agent sent undecodable STUN: {exc}") from exc
                if msg.msg_class is MessageClass.REQUEST:
                    check(out.addr in known, f"check to {out.addr}, which nobody signalled")
                    checks.append(out)
                elif msg.is_response:
                    check(out.addr in heard, f"answer to {out.addr}, which sent nothing")

    collect()
    for _ in range(48):
        if not r.left:
            break
        op = r.byte() % 9
        before = None
        if op == 0:  # raw bytes
            source, base = r.pick(SOURCES), r.pick(BASES)
            payload = r.chunk()
            before = _snapshot(agent)
            heard.add(source)
            check(isinstance(agent.receive_datagram(payload, source, base, now), bool), "bool")
        elif op in (1, 2):  # a signed check from the peer, or the same corrupted
            tid += 1
            source, base = r.pick(SOURCES), r.pick(BASES)
            good_user = bool(r.byte() & 0x7F)
            request = _request(r, b"rq" + tid.to_bytes(10, "big"), not controlling, good_user)
            heard.add(source)
            if op == 2 or not good_user:
                if op == 2:
                    request = corrupt(request, r)
                before = _snapshot(agent)
            else:
                known.add(source)  # an authenticated source: a peer-reflexive candidate
            agent.receive_datagram(request, source, base, now)
        elif op in (3, 4):  # an answer to a check, or the same corrupted
            if not checks:
                continue
            answer, source, base = _answer(r, checks[r.byte() % len(checks)])
            heard.add(source)
            if op == 4:
                answer = corrupt(answer, r)
                before = _snapshot(agent)
            agent.receive_datagram(answer, source, base, now)
        elif op == 5:
            now += r.pick(_STEPS)
            agent.handle_timer(now)
        elif op == 6:
            pick = r.byte()
            if pick & 0x80:
                agent.add_remote_candidate(None)
            else:
                address = REMOTES[pick % len(REMOTES)]
                kind = (CandidateType.HOST, CandidateType.SRFLX, CandidateType.RELAY)[pick % 3]
                known.add(address)
                agent.add_remote_candidate(_candidate(kind, address, address))
        elif op == 7:
            choice = r.byte()
            if choice == 0xFF:  # ICE restart (RFC 8445 §9): new local credentials
                agent.restart(now)
            elif config & 8 and choice & 1:
                try:
                    agent.set_remote_credentials(REMOTE_UFRAG, REMOTE_PWD)
                except LocalProtocolError:  # after a restart: the peer restarted too
                    pass
            else:
                sent = agent.send(r.chunk(), now)
                if sent is not None:
                    check(sent.local in BASES, f"data from {sent.local}")
        else:  # a Binding indication (keepalive) from anywhere
            source = r.pick(SOURCES)
            heard.add(source)
            keepalive = Message(Method.BINDING, MessageClass.INDICATION, b"k" * 12)
            agent.receive_datagram(keepalive.encode(fingerprint=True), source, r.pick(BASES), now)
        if before is not None:
            check(
                _snapshot(agent) == before, f"operation {op} without valid integrity changed state"
            )
        collect()
        while agent.next_event() is not None:
            pass


def seeds() -> list[bytes]:
    """Seed programs (fuzz.seeds): connect as either role, with and without the remote
    credentials up front, lite, a role conflict, corrupted input."""
    prio = (0x6E0001FF).to_bytes(4, "big")
    tie = (0x01020304).to_bytes(4, "big")
    answer_ok = b"\x03\x00\x00\x07"  # answer check 0: success, mapped = SRFLX
    check_in = b"\x01\x00\x00\x01" + prio + b"\x03" + tie  # from REMOTES[0] to HOST, USE-CANDIDATE
    wait = b"\x05\x03"
    send = b"\x07\x00\x04data"
    restart = b"\x07\xff"
    return [
        b"\x41" + answer_ok + wait + answer_ok + wait + b"\x03\x01\x00\x07" + wait + send,
        b"\x11" + answer_ok + wait * 3 + answer_ok + send,
        b"\x21" + answer_ok + wait * 3 + send,
        b"\x01" + answer_ok + wait + send + restart + wait + answer_ok + send,
        b"\x01" + answer_ok + wait + answer_ok + wait + send + wait * 4,
        b"\x00" + check_in + answer_ok + wait + send + b"\x05\x06" * 3,
        b"\x08" + check_in + b"\x07\x01" + wait + answer_ok + send,
        b"\x02" + check_in + send + b"\x08\x00\x00" + b"\x05\x05",
        b"\x01" + b"\x01\x01\x00\x01" + prio + b"\x01" + tie + b"\x03\x00\x01\x00" + wait,
        b"\x05"
        + b"\x02\x00\x00\x01"
        + prio
        + b"\x03"
        + tie
        + b"\x00\x10\x01"
        + b"\x04\x00\x00\x00\x18\x01"
        + b"\x06\x02"
        + b"\x06\x80"
        + wait,
        b"\x01" + b"\x00\x04\x00" + b"\x10" + bytes(16) + wait + b"\x08\x04\x01",
    ]
