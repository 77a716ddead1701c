"""Probes of ``anchor check``: the peer policy: loopback, unspecified and private peers.

Registered in report order when :mod:`anchor_turn.aio.check` imports this module."""

from __future__ import annotations

from collections.abc import Sequence

from anchor_stun.attributes import XorPeerAddress
from anchor_stun.message import Method
from anchor_turn.aio.check.plumbing import CheckContext, _code, _describe, _probe
from anchor_turn.check import Level, Verdict

__all__: list[str] = []

async def _peer_policy(ctx: CheckContext, ips: Sequence[str], what: str) -> Verdict:
    alloc = await ctx.allocate()
    accepted, refused = [], []
    for ip in ips:
        response = await alloc.turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(ip, 9)])
        if _code(response) == 0:
            accepted.append(ip)
        else:
            refused.append(f"{ip} {_describe(response)}")
    if accepted:
        return Verdict.finding(
            f"{what} accepted ({', '.join(accepted)}): clients can relay to them through the "
            "server (CVE-2020-26262 class); refuse them in production"
        )
    return Verdict.passed(f"refused: {'; '.join(refused)}")


@_probe(
    "turn.peer-loopback",
    "Loopback peers are refused (CreatePermission for 127.0.0.1)",
    "RFC 8656 §10.2, §21.2.2; CVE-2020-26262",
    Level.SHOULD,
)
async def _probe_peer_loopback(ctx: CheckContext) -> Verdict:
    return await _peer_policy(ctx, ["127.0.0.1"], "loopback peers")


@_probe(
    "turn.peer-unspecified",
    "The unspecified address 0.0.0.0 (which reaches the server's own host) is refused as a peer",
    "RFC 8656 §10.2, §21.2.2; CVE-2020-26262",
    Level.SHOULD,
)
async def _probe_peer_unspecified(ctx: CheckContext) -> Verdict:
    return await _peer_policy(ctx, ["0.0.0.0"], "the unspecified address")


@_probe(
    "turn.peer-private",
    "Private and link-local peers (RFC 1918, RFC 3927) are refused",
    "RFC 8656 §10.2, §21.2.2",
    Level.SHOULD,
)
async def _probe_peer_private(ctx: CheckContext) -> Verdict:
    return await _peer_policy(
        ctx, ["10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254"], "private peers"
    )
