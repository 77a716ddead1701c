"""Probes of ``anchor check``: STUN Binding, FINGERPRINT, unknown attributes, RFC 5780.

Registered in report order when :mod:`anchor_turn.aio.check` imports this module."""

from __future__ import annotations

from anchor_stun.aio.net import format_address
from anchor_stun.attributes import (
    Attribute,
    ChangeRequest,
    OtherAddress,
    RawAttribute,
    ResponseOrigin,
    UnknownAttributes,
    XorMappedAddress,
)
from anchor_stun.message import MessageClass, Method
from anchor_turn.aio.check.plumbing import (
    UNKNOWN_OPTIONAL,
    UNKNOWN_REQUIRED,
    CheckContext,
    ProbeFailed,
    ProbeSkipped,
    Reply,
    _code,
    _describe,
    _mapped_ok,
    _probe,
    _request,
    _transact,
)
from anchor_turn.check import Level, Verdict

__all__: list[str] = []

async def _binding(ctx: CheckContext, *attrs: Attribute, fingerprint: bool = True) -> Reply:
    link = await ctx.link()
    msg = _request(Method.BINDING, *attrs)
    return await _transact(link, msg.encode(fingerprint=fingerprint), "Binding")


def _binding_success(reply: Reply) -> XorMappedAddress:
    msg = reply.message
    if msg.msg_class != MessageClass.SUCCESS or msg.method != Method.BINDING:
        raise ProbeFailed(f"answered {_describe(msg)}")
    mapped = msg.get(XorMappedAddress)
    if mapped is None:
        raise ProbeFailed("success response without XOR-MAPPED-ADDRESS")
    return mapped


@_probe(
    "stun.binding",
    "A Binding request is answered with a success response carrying XOR-MAPPED-ADDRESS",
    "RFC 8489 §6.3.1.1, §14.2",
    Level.MUST,
)
async def _probe_binding(ctx: CheckContext) -> Verdict:
    link = await ctx.link()
    reply = await _transact(link, _request(Method.BINDING).encode(), "Binding")
    mapped = _binding_success(reply)
    wrong = _mapped_ok(link, mapped.address)
    if wrong:
        return Verdict.failed(wrong)
    return Verdict.passed(
        f"mapped {format_address(mapped.address)}, {reply.rtt * 1000:.1f} ms (no FINGERPRINT)"
    )


@_probe(
    "stun.binding-fingerprint",
    "A Binding request with FINGERPRINT is answered; a FINGERPRINT in the response verifies",
    "RFC 8489 §14.7",
    Level.MUST,
)
async def _probe_binding_fingerprint(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx)
    mapped = _binding_success(reply)
    msg = reply.message
    if msg.fingerprint is None:
        return Verdict.passed(
            f"mapped {format_address(mapped.address)}; the response has no FINGERPRINT"
        )
    if not msg.verify_fingerprint():
        return Verdict.failed("the response's FINGERPRINT does not verify")
    return Verdict.passed(
        f"mapped {format_address(mapped.address)}; the response's FINGERPRINT verifies"
    )


@_probe(
    "stun.unknown-required",
    "A request with an unknown comprehension-required attribute gets 420 with "
    "UNKNOWN-ATTRIBUTES listing it",
    "RFC 8489 §6.3.1, §14.13",
    Level.MUST,
)
async def _probe_unknown_required(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx, RawAttribute(UNKNOWN_REQUIRED, b"\x00\x00\x00\x00"))
    msg = reply.message
    code = _code(msg)
    if code == 0:
        return Verdict.failed(
            f"answered success: the unknown comprehension-required attribute "
            f"{UNKNOWN_REQUIRED:#06x} was ignored"
        )
    if code != 420:
        return Verdict.failed(f"answered {_describe(msg)}, expected 420")
    unknown = msg.get(UnknownAttributes)
    if unknown is None or UNKNOWN_REQUIRED not in unknown.types:
        listed = ", ".join(f"{t:#06x}" for t in unknown.types) if unknown else "none"
        return Verdict.failed(f"420 without UNKNOWN-ATTRIBUTES listing {UNKNOWN_REQUIRED:#06x} "
                              f"(listed: {listed})")
    return Verdict.passed(f"420 with UNKNOWN-ATTRIBUTES {UNKNOWN_REQUIRED:#06x}")


@_probe(
    "stun.unknown-optional",
    "An unknown comprehension-optional attribute is ignored: the request succeeds",
    "RFC 8489 §14, §6.3.1",
    Level.MUST,
)
async def _probe_unknown_optional(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx, RawAttribute(UNKNOWN_OPTIONAL, b"\x00\x00\x00\x00"))
    if _code(reply.message) != 0:
        return Verdict.failed(
            f"answered {_describe(reply.message)} to a request with the unknown "
            f"comprehension-optional attribute {UNKNOWN_OPTIONAL:#06x}"
        )
    _binding_success(reply)
    return Verdict.passed(f"success despite {UNKNOWN_OPTIONAL:#06x}")


@_probe(
    "stun.bad-fingerprint",
    "A request whose FINGERPRINT does not verify is silently discarded",
    "RFC 8489 §6.3, §14.7",
    Level.MUST,
)
async def _probe_bad_fingerprint(ctx: CheckContext) -> Verdict:
    link = await ctx.link()
    good = _request(Method.BINDING).encode(fingerprint=True)
    bad = good[:-1] + bytes((good[-1] ^ 0x01,))
    quiet = ctx.quiet
    reply = await link.transact(bad, timeout=quiet)
    if reply is not None:
        return Verdict.failed(
            f"answered ({_describe(reply.message)}) a request whose FINGERPRINT does not verify"
        )
    if link.closed:
        return Verdict.passed(f"no answer ({link.closed})")
    after = await link.transact(_request(Method.BINDING).encode(fingerprint=True))
    if after is None:
        return Verdict.failed(
            "no answer, but no answer to a valid Binding right after either: "
            "cannot tell a discard from an outage"
        )
    return Verdict.passed(f"no answer within {quiet:g} s; a valid Binding right after was answered")


async def _rfc5780(ctx: CheckContext) -> tuple[Reply, OtherAddress]:
    reply = await _binding(ctx)
    _binding_success(reply)
    other = reply.message.get(OtherAddress)
    if other is None:
        raise ProbeSkipped("RFC 5780 is not offered (no OTHER-ADDRESS); see stun.rfc5780")
    return reply, other


@_probe(
    "stun.rfc5780",
    "RFC 5780 NAT behaviour discovery is offered: the Binding response carries OTHER-ADDRESS",
    "RFC 5780 §6.1",
    Level.INFO,
)
async def _probe_rfc5780(ctx: CheckContext) -> Verdict:
    reply = await _binding(ctx)
    _binding_success(reply)
    other = reply.message.get(OtherAddress)
    if other is None:
        return Verdict.finding("not offered: no OTHER-ADDRESS in the Binding response")
    return Verdict.passed(f"offered: OTHER-ADDRESS {format_address(other.address)}")


@_probe(
    "stun.rfc5780-response-origin",
    "A server offering RFC 5780 adds RESPONSE-ORIGIN: the address the response was sent from",
    "RFC 5780 §6.1, §7.3",
    Level.MUST,
)
async def _probe_response_origin(ctx: CheckContext) -> Verdict:
    reply, _ = await _rfc5780(ctx)
    origin = reply.message.get(ResponseOrigin)
    if origin is None:
        return Verdict.failed("OTHER-ADDRESS without RESPONSE-ORIGIN")
    if ctx.config.transport == "udp" and origin.address != reply.source:
        return Verdict.failed(
            f"RESPONSE-ORIGIN {format_address(origin.address)}, but the response came from "
            f"{format_address(reply.source)}"
        )
    return Verdict.passed(f"RESPONSE-ORIGIN {format_address(origin.address)}")


@_probe(
    "stun.rfc5780-change-request",
    "CHANGE-REQUEST is honoured: the response leaves from the other IP and/or port",
    "RFC 5780 §6.1, §7.2",
    Level.MUST,
)
async def _probe_change_request(ctx: CheckContext) -> Verdict:
    reply, other = await _rfc5780(ctx)
    if ctx.config.transport != "udp":
        raise ProbeSkipped("CHANGE-REQUEST is a UDP mechanism (RFC 5780 §6.1); use --transport udp")
    primary = reply.source
    shared = [n for n, same in (("IP", other.ip == primary[0]), ("port", other.port == primary[1]))
              if same]
    if shared:
        return Verdict.failed(
            f"OTHER-ADDRESS {format_address(other.address)} has the {' and '.join(shared)} of "
            f"the address that answered ({format_address(primary)}): no change of "
            f"{' or '.join(shared)} is possible"
        )
    cases = (
        (ChangeRequest(change_ip=True, change_port=True), other.address, "IP and port"),
        (ChangeRequest(change_port=True), (primary[0], other.port), "port"),
        (ChangeRequest(change_ip=True), (other.ip, primary[1]), "IP"),
    )
    done = []
    for attr, expected, what in cases:
        answer = await _binding(ctx, attr)
        if _code(answer.message) != 0:
            return Verdict.failed(f"change {what}: answered {_describe(answer.message)}")
        if answer.source != expected:
            return Verdict.failed(
                f"change {what}: answered from {format_address(answer.source)}, expected "
                f"{format_address(expected)}"
            )
        done.append(f"{what} -> {format_address(answer.source)}")
    return Verdict.passed("; ".join(done))
