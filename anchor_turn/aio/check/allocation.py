"""Probes of ``anchor check``: Allocate, Refresh, lifetimes, CreatePermission, ChannelBind.

Registered in report order when :mod:`anchor_turn.aio.check` imports this module."""

from __future__ import annotations

from anchor_stun.aio.net import format_address
from anchor_stun.attributes import (
    ChannelNumber,
    Lifetime,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from anchor_stun.events import Address
from anchor_stun.message import Message, Method
from anchor_turn.aio.check.plumbing import (
    DEFAULT_LIFETIME,
    FIRST_CHANNEL,
    MAX_LIFETIME,
    CheckContext,
    ProbeFailed,
    ProbeSkipped,
    _Allocation,
    _code,
    _describe,
    _mapped_ok,
    _probe,
)
from anchor_turn.check import Level, Verdict

__all__: list[str] = []

@_probe(
    "turn.allocate",
    "An authenticated Allocate succeeds with XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS and LIFETIME",
    "RFC 8656 §7.2, §7.3",
    Level.MUST,
)
async def _probe_allocate(ctx: CheckContext) -> Verdict:
    turn, response = await ctx.try_allocate()
    code = _code(response)
    if code == 401:
        return Verdict.failed(
            "the credentials were refused (401): check --user / --static-auth-secret"
        )
    if code != 0:
        return Verdict.failed(f"answered {_describe(response)}")
    relayed = response.get(XorRelayedAddress)
    mapped = response.get(XorMappedAddress)
    lifetime = response.get(Lifetime)
    missing = [
        name
        for name, attr in (
            ("XOR-RELAYED-ADDRESS", relayed),
            ("XOR-MAPPED-ADDRESS", mapped),
            ("LIFETIME", lifetime),
        )
        if attr is None
    ]
    if missing:
        return Verdict.failed(f"success without {', '.join(missing)}")
    assert relayed is not None and mapped is not None and lifetime is not None
    wrong = _mapped_ok(turn.link, mapped.address)
    if wrong:
        return Verdict.failed(wrong)
    return Verdict.passed(
        f"relayed {format_address(relayed.address)}, mapped {format_address(mapped.address)}, "
        f"lifetime {lifetime.value} s, key {turn.algorithm}"
    )


@_probe(
    "turn.response-integrity",
    "Success responses to authenticated requests carry a valid MESSAGE-INTEGRITY(-SHA256)",
    "RFC 8489 §9.2.4",
    Level.MUST,
)
async def _probe_response_integrity(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    if not alloc.turn.authentic(alloc.response):
        return Verdict.failed("the Allocate success response is not signed with the user's key")
    refresh = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    if _code(refresh) == 0 and not alloc.turn.authentic(refresh):
        return Verdict.failed("the Refresh success response is not signed with the user's key")
    return Verdict.passed(f"Allocate and Refresh responses signed ({alloc.turn.algorithm} key)")


@_probe(
    "turn.refresh",
    "A Refresh of a live allocation succeeds with LIFETIME",
    "RFC 8656 §8.2",
    Level.MUST,
)
async def _probe_refresh(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    response = await alloc.turn.request(Method.REFRESH, [Lifetime(DEFAULT_LIFETIME)])
    if _code(response) != 0:
        return Verdict.failed(f"answered {_describe(response)}")
    lifetime = response.get(Lifetime)
    if lifetime is None:
        return Verdict.failed("success without LIFETIME")
    return Verdict.passed(f"asked {DEFAULT_LIFETIME} s, granted {lifetime.value} s")


@_probe(
    "turn.lifetime",
    f"Requested lifetimes are clamped: never below the default {DEFAULT_LIFETIME} s, "
    f"at most {MAX_LIFETIME} s",
    "RFC 8656 §7.2",
    Level.SHOULD,
)
async def _probe_lifetime(ctx: CheckContext) -> Verdict:
    granted: dict[int, int] = {}
    for asked in (1, 999999):
        alloc = await ctx.allocate(lifetime=asked)
        if alloc.lifetime is None:
            return Verdict.failed(f"asked {asked} s: success without LIFETIME")
        granted[asked] = alloc.lifetime
    low, high = granted[1], granted[999999]
    detail = f"asked 1 s: granted {low} s; asked 999999 s: granted {high} s"
    problems = []
    if low < DEFAULT_LIFETIME:
        problems.append(f"below the default {DEFAULT_LIFETIME} s")
    if high > MAX_LIFETIME:
        problems.append(f"above the RECOMMENDED maximum {MAX_LIFETIME} s")
    if high < low:
        problems.append("the longer request got the shorter lifetime")
    if problems:
        return Verdict.failed(f"{detail} ({'; '.join(problems)})")
    return Verdict.passed(detail)


async def _permitted_peer(
    ctx: CheckContext, alloc: _Allocation, *, own_probe: bool = False
) -> tuple[Address, str]:
    """A peer the server installs a permission for: the data peer, else the documentation
    address. Returns it and a note on the refused ones. Unless ``own_probe`` (the
    create-permission probe), anything but 403 skips the calling probe."""
    refused: list[str] = []
    for peer in await ctx.peer_candidates():
        response = await alloc.turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(*peer)])
        code = _code(response)
        if code == 0:
            note = f" ({'; '.join(refused)})" if refused else ""
            return peer, note
        if code == 403:
            refused.append(f"{peer[0]} refused with 403")
            continue
        text = f"CreatePermission for {peer[0]} answered {_describe(response)}"
        raise ProbeFailed(text) if own_probe else ProbeSkipped(f"{text}; see turn.create-permission")
    raise ProbeSkipped(
        f"every peer was refused ({'; '.join(refused)}): give --peer with an address the "
        "server accepts"
    )


@_probe(
    "turn.create-permission",
    "CreatePermission for a peer succeeds",
    "RFC 8656 §10.2",
    Level.MUST,
)
async def _probe_create_permission(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, note = await _permitted_peer(ctx, alloc, own_probe=True)
    return Verdict.passed(f"permission for {peer[0]}{note}")


async def _bind(alloc: _Allocation, channel: int, peer: Address) -> Message:
    return await alloc.turn.request(
        Method.CHANNEL_BIND, [ChannelNumber(channel), XorPeerAddress(*peer)]
    )


@_probe(
    "turn.channel-bind",
    "ChannelBind of channel 0x4000 to a peer succeeds",
    "RFC 8656 §12.2",
    Level.MUST,
)
async def _probe_channel_bind(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, note = await _permitted_peer(ctx, alloc)
    response = await _bind(alloc, FIRST_CHANNEL, peer)
    if _code(response) != 0:
        return Verdict.failed(f"answered {_describe(response)}")
    return Verdict.passed(f"channel {FIRST_CHANNEL:#06x} bound to {format_address(peer)}{note}")


@_probe(
    "turn.channel-bind-invalid",
    "ChannelBind of channel 0x3FFF (below the channel range) is refused with 400",
    "RFC 8656 §12.2",
    Level.MUST,
)
async def _probe_channel_bind_invalid(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, _ = await _permitted_peer(ctx, alloc)
    response = await _bind(alloc, 0x3FFF, peer)
    code = _code(response)
    if code == 0:
        return Verdict.failed("channel 0x3fff was bound")
    if code != 400:
        return Verdict.failed(f"answered {_describe(response)}, expected 400")
    return Verdict.passed("channel 0x3fff refused with 400")


@_probe(
    "turn.channel-bind-range",
    "ChannelBind of channel 0x5000 (RFC 5766's range, reserved since RFC 8656) is refused "
    "with 400",
    "RFC 8656 §12, §12.2",
    Level.SHOULD,
)
async def _probe_channel_bind_range(ctx: CheckContext) -> Verdict:
    alloc = await ctx.allocate()
    peer, _ = await _permitted_peer(ctx, alloc)
    response = await _bind(alloc, 0x5000, peer)
    code = _code(response)
    if code == 0:
        return Verdict.finding(
            "channel 0x5000 was bound: the server keeps RFC 5766's channel range 0x4000-0x7FFF "
            "(RFC 8656 narrowed it to 0x4FFF; a compatibility choice)"
        )
    if code != 400:
        return Verdict.failed(f"answered {_describe(response)}, expected 400")
    return Verdict.passed("channel 0x5000 refused with 400")
