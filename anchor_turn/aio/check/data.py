"""Probes of ``anchor check``: relayed data: Send/Data, ChannelData, permissions on the data path.

Registered in report order when :mod:`anchor_turn.aio.check` imports this module."""

from __future__ import annotations

import asyncio
import os

from anchor_stun.aio.net import format_address
from anchor_stun.attributes import Attribute, Data, XorPeerAddress
from anchor_stun.events import Address
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn.aio.check.allocation import _bind
from anchor_turn.aio.check.plumbing import (
    FIRST_CHANNEL,
    CheckContext,
    Inbound,
    ProbeSkipped,
    _Allocation,
    _code,
    _describe,
    _probe,
    _tid,
)
from anchor_turn.check import Level, Verdict

__all__: list[str] = []

async def _data_allocation(ctx: CheckContext) -> tuple[_Allocation, Address]:
    """An allocation with a permission for the data peer (skips when refused)."""
    peer = await ctx.data_peer()
    alloc = await ctx.allocate()
    response = await alloc.turn.request(Method.CREATE_PERMISSION, [XorPeerAddress(*peer)])
    if _code(response) != 0:
        raise ProbeSkipped(
            f"the server refuses the data peer {peer[0]} ({_describe(response)}): give --peer "
            "with an address it accepts"
        )
    return alloc, peer


def _payload(what: str) -> bytes:
    return f"anchor check {what} ".encode() + os.urandom(6).hex().encode()


async def _relay_source(ctx: CheckContext, payload: bytes, alloc: _Allocation) -> str | None:
    """With the loopback echo: why the datagram did not reach the peer from the relayed
    address, or None when it did (or there is no way to tell)."""
    echo = await ctx.local_echo()
    if echo is None:
        return None
    source = echo.source_of(payload)
    if source is None:
        return "the peer never received the datagram"
    if source != alloc.relayed:
        return (
            f"the peer received it from {format_address(source)}, not from the relayed "
            f"address {format_address(alloc.relayed)}"
        )
    return None


@_probe(
    "turn.send-data",
    "A Send indication reaches the peer from the relayed address; the peer's answer comes "
    "back in a Data indication",
    "RFC 8656 §11.2, §11.3",
    Level.MUST,
)
async def _probe_send_data(ctx: CheckContext) -> Verdict:
    alloc, peer = await _data_allocation(ctx)
    wrong = await _send_round_trip(ctx, alloc, peer, _payload("send"))
    if wrong:
        return Verdict.failed(wrong)
    return Verdict.passed(f"echo from {format_address(peer)} came back in a Data indication")


async def _send_round_trip(
    ctx: CheckContext, alloc: _Allocation, peer: Address, payload: bytes, *extra: Attribute
) -> str | None:
    """A Send indication (with ``extra`` attributes) to the echo ``peer``, up to three times;
    why its echo did not come back from the peer in a Data indication, or None when it did."""
    indication = Message(
        Method.SEND,
        MessageClass.INDICATION,
        _tid(),
        [XorPeerAddress(*peer), Data(payload), *extra],
    ).encode(fingerprint=True)

    def is_echo(item: Inbound) -> bool:
        msg = item.message
        if msg is None or msg.method != Method.DATA or msg.msg_class != MessageClass.INDICATION:
            return False
        data = msg.get(Data)
        return data is not None and data.value == payload

    item = await alloc.link.send_until(indication, is_echo, ctx.config.timeout)
    wrong = await _relay_source(ctx, payload, alloc)
    if wrong:
        return wrong
    if item is None or item.message is None:
        return f"no Data indication with the echo from {format_address(peer)}"
    origin = item.message.get(XorPeerAddress)
    if origin is None or origin.address != peer:
        shown = format_address(origin.address) if origin else "none"
        return f"Data indication with XOR-PEER-ADDRESS {shown}, expected {format_address(peer)}"
    return None


@_probe(
    "turn.channel-data",
    "ChannelData on a bound channel reaches the peer; its answer comes back as ChannelData "
    "on the same channel",
    "RFC 8656 §12.5-§12.7",
    Level.MUST,
)
async def _probe_channel_data(ctx: CheckContext) -> Verdict:
    alloc, peer = await _data_allocation(ctx)
    channel = FIRST_CHANNEL + 1
    response = await _bind(alloc, channel, peer)
    if _code(response) != 0:
        raise ProbeSkipped(f"ChannelBind answered {_describe(response)}; see turn.channel-bind")
    payload = _payload("channel")
    frame = alloc.link.channel_data(channel, payload)

    def is_echo(item: Inbound) -> bool:
        if item.channel is not None:
            return item.data == payload
        data = item.message.get(Data) if item.message is not None else None
        return data is not None and data.value == payload

    item = await alloc.link.send_until(frame, is_echo, ctx.config.timeout)
    wrong = await _relay_source(ctx, payload, alloc)
    if wrong:
        return Verdict.failed(wrong)
    if item is None:
        return Verdict.failed(f"no echo from {format_address(peer)} on channel {channel:#06x}")
    if item.channel is None:
        return Verdict.failed("the echo came back in a Data indication although a channel "
                              "is bound to the peer (RFC 8656 §12.5: MUST use ChannelData)")
    if item.channel != channel:
        return Verdict.failed(f"the echo came back on channel {item.channel:#06x}, "
                              f"expected {channel:#06x}")
    return Verdict.passed(f"echo came back on channel {channel:#06x}")


async def _not_relayed(
    ctx: CheckContext, alloc: _Allocation, peer: Address, payload: bytes
) -> str | None:
    """Send ``payload`` to ``peer`` in a Send indication (and, with the loopback echo, from
    the peer to the relayed address); why it was relayed, or None when it was not."""
    indication = Message(
        Method.SEND, MessageClass.INDICATION, _tid(), [XorPeerAddress(*peer), Data(payload)]
    ).encode(fingerprint=True)
    alloc.link.send(indication)
    echo = await ctx.local_echo()
    inbound = payload + b" inbound"
    if echo is not None:
        echo.sendto(inbound, alloc.relayed)

    def relayed(item: Inbound) -> bool:
        data = item.data
        if item.message is not None:
            attr = item.message.get(Data)
            data = attr.value if attr is not None else b""
        return data in (payload, inbound)

    item = await alloc.link.receive_matching(relayed, ctx.quiet)
    if echo is not None and echo.source_of(payload) is not None:
        return "the Send indication reached the peer"
    if item is not None:
        return "data from the peer was relayed to the client"
    return None


@_probe(
    "turn.no-permission",
    "Without a permission, data is not relayed (neither the client's Send nor the peer's "
    "datagrams)",
    "RFC 8656 §9, §11.2",
    Level.MUST,
)
async def _probe_no_permission(ctx: CheckContext) -> Verdict:
    peer = await ctx.data_peer()
    alloc = await ctx.allocate()
    wrong = await _not_relayed(ctx, alloc, peer, _payload("no-permission"))
    if wrong:
        return Verdict.failed(f"no permission for {peer[0]}, yet {wrong}")
    both = "either way" if await ctx.local_echo() is not None else "(no echo came back)"
    return Verdict.passed(f"nothing relayed {both} within {ctx.quiet:g} s")


@_probe(
    "turn.permission-expiry",
    "A permission expires after 300 s without a refresh: data is no longer relayed",
    "RFC 8656 §9",
    Level.MUST,
    slow=True,
)
async def _probe_permission_expiry(ctx: CheckContext) -> Verdict:
    alloc, peer = await _data_allocation(ctx)
    loop = asyncio.get_running_loop()
    installed = loop.time()
    payload = _payload("before-expiry")
    indication = Message(
        Method.SEND, MessageClass.INDICATION, _tid(), [XorPeerAddress(*peer), Data(payload)]
    ).encode(fingerprint=True)

    def is_echo(item: Inbound) -> bool:
        attr = item.message.get(Data) if item.message is not None else None
        return attr is not None and attr.value == payload

    item = await alloc.link.send_until(indication, is_echo, ctx.config.timeout)
    if item is None:
        raise ProbeSkipped("data does not flow even with a fresh permission; see turn.send-data")
    lifetime = ctx.config.permission_lifetime
    margin = max(1.0, 0.05 * lifetime)
    await asyncio.sleep(max(0.0, installed + lifetime + margin - loop.time()))
    wrong = await _not_relayed(ctx, alloc, peer, _payload("after-expiry"))
    waited = loop.time() - installed
    if wrong:
        return Verdict.failed(f"{waited:.0f} s after the permission was installed, {wrong}")
    return Verdict.passed(f"relayed at first, nothing relayed {waited:.0f} s later")
