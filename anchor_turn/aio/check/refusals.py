"""Probes of ``anchor check``: refusals and release: no allocation, mismatch, transports, DONT-FRAGMENT, release.

Registered in report order when :mod:`anchor_turn.aio.check` imports this module."""

from __future__ import annotations

import asyncio

from anchor_stun.attributes import (
    Attribute,
    AttrType,
    ChannelNumber,
    DontFragment,
    Lifetime,
    RequestedTransport,
    TransportProtocol,
    UnknownAttributes,
    XorPeerAddress,
)
from anchor_stun.integrity import CredentialsRejected
from anchor_stun.message import Message, Method
from anchor_turn.aio.check.data import _payload, _send_round_trip
from anchor_turn.aio.check.plumbing import (
    DEFAULT_LIFETIME,
    DOCUMENTATION_PEER,
    FIRST_CHANNEL,
    RELEASE_WAIT,
    UNSUPPORTED_PROTOCOL,
    CheckContext,
    ProbeFailed,
    ProbeSkipped,
    _Allocation,
    _code,
    _describe,
    _name,
    _probe,
    _request,
    _transact,
    _Turn,
)
from anchor_turn.check import Level, Verdict

__all__: list[str] = []

@_probe(
    "turn.no-allocation",
    "Refresh, CreatePermission and ChannelBind on a 5-tuple without an allocation get 437",
    "RFC 8656 §5",
    Level.MUST,
)
async def _probe_no_allocation(ctx: CheckContext) -> Verdict:
    peer = XorPeerAddress(*DOCUMENTATION_PEER)
    requests: list[tuple[int, list[Attribute]]] = [
        (Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)]),
        (Method.CREATE_PERMISSION, [peer]),
        (Method.CHANNEL_BIND, [ChannelNumber(FIRST_CHANNEL), peer]),
    ]
    answers, wrong = [], []
    for method, attrs in requests:
        turn = _Turn(await ctx.link(), ctx.credentials())
        await _challenge_on(turn)
        response = await turn.request(method, attrs)
        code = _code(response)
        if code == 0:
            ctx.track(turn, response)  # a server that allocated on the fly: release it
        if code == 401:
            raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
        answers.append(f"{_name(method)} {_describe(response)}")
        if code != 437:
            wrong.append(f"{_name(method)} answered {_describe(response)}")
    if wrong:
        return Verdict.failed(f"{'; '.join(wrong)} (expected 437)")
    return Verdict.passed("437 to " + ", ".join(_name(m) for m, _ in requests))


@_probe(
    "turn.allocation-mismatch",
    "A second Allocate on a 5-tuple that has an allocation is refused with 437",
    "RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_allocation_mismatch(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    response = await alloc.turn.request(
        Method.ALLOCATE, [RequestedTransport(TransportProtocol.UDP)]
    )
    code = _code(response)
    if code == 0:
        return Verdict.failed("a second Allocate (new transaction) on the same 5-tuple succeeded")
    if code != 437:
        return Verdict.failed(f"answered {_describe(response)}, expected 437")
    return Verdict.passed("437 to a second Allocate on the same 5-tuple")


@_probe(
    "turn.missing-transport",
    "An Allocate without REQUESTED-TRANSPORT is refused with 400",
    "RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_missing_transport(ctx: CheckContext) -> Verdict:
    turn = _Turn(await ctx.link(), ctx.credentials())
    await _challenge_on(turn)  # a complete Allocate draws the 401; the signed one lacks it
    response = await turn.request(Method.ALLOCATE, [])
    return _expect_refusal(ctx, turn, response, 400, "an Allocate without REQUESTED-TRANSPORT")


async def _challenge_on(turn: _Turn) -> None:
    """Take the 401 challenge on ``turn``'s link with a well-formed unsigned Allocate, so
    that the malformed request of a probe goes out signed (skips the probe if impossible)."""
    if turn.credentials.ready:
        return
    msg = (
        await _transact(
            turn.link,
            _request(Method.ALLOCATE, RequestedTransport(TransportProtocol.UDP)),
            "Allocate",
        )
    ).message
    if _code(msg) != 401:
        raise ProbeSkipped(f"no 401 challenge ({_describe(msg)}); see turn.auth-challenge")
    turn.challenge = msg
    try:
        turn.credentials.challenge(msg)
    except CredentialsRejected as exc:
        raise ProbeSkipped(f"cannot use the 401 challenge: {exc}") from None


def _expect_refusal(
    ctx: CheckContext, turn: _Turn, response: Message, expected: int, what: str
) -> Verdict:
    code = _code(response)
    if code == 0:
        ctx.track(turn, response)
        return Verdict.failed(f"{what} succeeded")
    if code == 401:
        raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
    if code != expected:
        return Verdict.failed(f"{what} answered {_describe(response)}, expected {expected}")
    return Verdict.passed(f"{expected} to {what}")


@_probe(
    "turn.unsupported-transport",
    f"An Allocate for a transport the server does not relay (protocol {UNSUPPORTED_PROTOCOL}) "
    "is refused with 442",
    "RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_unsupported_transport(ctx: CheckContext) -> Verdict:
    turn = _Turn(await ctx.link(), ctx.credentials())
    await _challenge_on(turn)
    response = await turn.request(Method.ALLOCATE, [RequestedTransport(UNSUPPORTED_PROTOCOL)])
    return _expect_refusal(
        ctx, turn, response, 442, f"REQUESTED-TRANSPORT {UNSUPPORTED_PROTOCOL}"
    )


@_probe(
    "turn.dont-fragment",
    "An Allocate with DONT-FRAGMENT succeeds, or is refused with 420 listing it (the server "
    "cannot set DF); when it succeeds, a Send indication carrying it is relayed",
    "RFC 8656 §7.2, §11.2",
    Level.MUST,
)
async def _probe_dont_fragment(ctx: CheckContext) -> Verdict:
    turn = _Turn(await ctx.link(), ctx.credentials())
    response = await turn.request(
        Method.ALLOCATE, [RequestedTransport(TransportProtocol.UDP), DontFragment()]
    )
    code = _code(response)
    if code == 401:
        raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
    if code == 420:
        unknown = response.get(UnknownAttributes)
        if unknown is None or AttrType.DONT_FRAGMENT not in unknown.types:
            listed = ", ".join(f"{t:#06x}" for t in unknown.types) if unknown else "none"
            return Verdict.failed(
                f"420 without UNKNOWN-ATTRIBUTES listing DONT-FRAGMENT (0x001a) (listed: {listed})"
            )
        return Verdict.passed(
            "not supported: 420 with UNKNOWN-ATTRIBUTES DONT-FRAGMENT (0x001a); clients retry "
            "without it (§7.4)"
        )
    if code != 0:
        return Verdict.failed(
            f"answered {_describe(response)}, expected success or 420 listing DONT-FRAGMENT"
        )
    alloc = ctx.track(turn, response)
    supported = "supported: the Allocate with DONT-FRAGMENT succeeded"
    try:
        peer = await ctx.data_peer()
    except ProbeSkipped as exc:
        return Verdict.passed(f"{supported} (Send indication not tried: {exc.detail})")
    permission = await turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(*peer)])
    if _code(permission) != 0 or not alloc.relayed[0]:
        return Verdict.passed(
            f"{supported} (Send indication not tried: CreatePermission for {peer[0]} "
            f"answered {_describe(permission)})"
        )
    wrong = await _send_round_trip(ctx, alloc, peer, _payload("dont-fragment"), DontFragment())
    if wrong:
        return Verdict.failed(f"{supported}, but a Send indication carrying it: {wrong}")
    return Verdict.passed(f"{supported}; a Send indication carrying it was relayed and echoed")


async def _release(alloc: _Allocation) -> Verdict | None:
    """Refresh with LIFETIME 0; a failing verdict when that is not a success."""
    response = await alloc.turn.request(Method.REFRESH, [Lifetime(0)])
    if _code(response) != 0:
        return Verdict.failed(f"Refresh with LIFETIME 0 answered {_describe(response)}")
    alloc.released = True
    return None


@_probe(
    "turn.release",
    f"Refresh with LIFETIME 0 deletes the allocation: within {RELEASE_WAIT:g} s, requests on "
    "the 5-tuple get 437",
    "RFC 8656 §8.2, §5",
    Level.MUST,
)
async def _probe_release(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    failed = await _release(alloc)
    if failed is not None:
        return failed
    loop = asyncio.get_running_loop()
    released = loop.time()
    # CreatePermission, unlike Refresh, cannot extend the allocation's life while it is
    # being deleted: poll with it until it fails (437, RFC 8656 §5; turn.no-allocation
    # checks the code).
    probe = [XorPeerAddress(*DOCUMENTATION_PEER)]
    while True:
        if alloc.link.closed:
            return Verdict.passed(f"released; then {alloc.link.closed}")
        try:
            response = await alloc.turn.request(Method.CREATE_PERMISSION, probe)
        except ProbeFailed:
            if alloc.link.closed:
                return Verdict.passed(f"released; then {alloc.link.closed}")
            raise
        waited = loop.time() - released
        if _code(response) != 0:
            break
        if waited > RELEASE_WAIT:
            return Verdict.failed(
                f"{waited:.1f} s after the release, CreatePermission still succeeds: the "
                "allocation lives on"
            )
        await asyncio.sleep(0.25)
    after = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    if _code(after) == 0:
        alloc.released = False
        return Verdict.failed("a Refresh after the deletion succeeded: the allocation came back")
    if _code(after) != 437:
        return Verdict.failed(
            f"a Refresh after the release answered {_describe(after)}, expected 437"
        )
    when = "at once" if waited < 0.1 else f"{waited:.1f} s later"
    return Verdict.passed(f"released; gone {when} (a Refresh then got 437)")


@_probe(
    "turn.release-immediate",
    "The deletion is immediate: a Refresh right after the release gets 437 instead of "
    "reviving the allocation",
    "RFC 8656 §8.2",
    Level.SHOULD,
)
async def _probe_release_immediate(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    failed = await _release(alloc)
    if failed is not None:
        return failed
    if alloc.link.closed:
        return Verdict.passed(f"released ({alloc.link.closed})")
    after = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    code = _code(after)
    if code == 0:
        alloc.released = False
        return Verdict.finding(
            "deletion is deferred: a Refresh right after the release succeeded and the "
            "allocation lived on"
        )
    if code != 437:
        return Verdict.failed(f"a Refresh right after the release answered {_describe(after)}, "
                              "expected 437")
    return Verdict.passed("a Refresh right after the release got 437")
