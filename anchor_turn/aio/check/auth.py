"""Probes of ``anchor check``: long-term credentials: the 401 challenge, PASSWORD-ALGORITHMS, nonces.

Registered in report order when :mod:`anchor_turn.aio.check` imports this module."""

from __future__ import annotations

from anchor_stun.attributes import (
    Lifetime,
    Nonce,
    PasswordAlgorithmId,
    PasswordAlgorithms,
    Realm,
    RequestedTransport,
    TransportProtocol,
)
from anchor_stun.integrity import (
    CredentialsRejected,
    LongTermCredentials,
    SecurityFeatures,
    nonce_features,
)
from anchor_stun.message import Message, Method
from anchor_turn.aio.check.plumbing import (
    _ALGORITHM_NAMES,
    CheckContext,
    ProbeSkipped,
    _code,
    _describe,
    _probe,
    _request,
    _transact,
    _Turn,
)
from anchor_turn.check import Level, Verdict

__all__: list[str] = []

@_probe(
    "turn.auth-challenge",
    "An Allocate without credentials is refused with 401 carrying REALM and NONCE",
    "RFC 8489 §9.2.4, RFC 8656 §7.2",
    Level.MUST,
)
async def _probe_auth_challenge(ctx: CheckContext) -> Verdict:
    link = await ctx.link()
    request = _request(Method.ALLOCATE, RequestedTransport(TransportProtocol.UDP))
    reply = await _transact(link, request, "Allocate")
    msg = reply.message
    code = _code(msg)
    if code == 0:
        release = _request(Method.REFRESH, Lifetime(0))
        await link.transact(release.encode(fingerprint=True), timeout=1.0)
        return Verdict.failed("allocated without any credentials")
    if code != 401:
        return Verdict.failed(f"answered {_describe(msg)}, expected 401")
    realm, nonce = msg.get(Realm), msg.get(Nonce)
    missing = [n for n, a in (("REALM", realm), ("NONCE", nonce)) if a is None]
    if missing:
        return Verdict.failed(f"401 without {' and '.join(missing)}")
    assert realm is not None
    return Verdict.passed(f"401 with REALM {realm.value!r} and a NONCE")


async def _challenge(ctx: CheckContext) -> Message:
    link = await ctx.link()
    request = _request(Method.ALLOCATE, RequestedTransport(TransportProtocol.UDP))
    msg = (await _transact(link, request, "Allocate")).message
    if _code(msg) != 401 or msg.get(Realm) is None or msg.get(Nonce) is None:
        raise ProbeSkipped(f"no 401 challenge to work from ({_describe(msg)}); "
                           "see turn.auth-challenge")
    return msg


@_probe(
    "turn.password-algorithms",
    "SHA-256 long-term keys are offered (nonce cookie and PASSWORD-ALGORITHMS)",
    "RFC 8489 §9.2.1, §9.2.4, §14.11",
    Level.INFO,
)
async def _probe_password_algorithms(ctx: CheckContext) -> Verdict:
    msg = await _challenge(ctx)
    nonce = msg.get(Nonce)
    assert nonce is not None
    features = nonce_features(nonce.value)
    offered = msg.get(PasswordAlgorithms)
    announced = features is not None and SecurityFeatures.PASSWORD_ALGORITHMS in features
    names = (
        ", ".join(_ALGORITHM_NAMES.get(a, f"{a:#x}") for a in offered.ids) if offered else ""
    )
    if not announced:
        if offered is not None:
            return Verdict.finding(
                f"PASSWORD-ALGORITHMS ({names}) without the nonce cookie bit: clients must "
                "ignore it, so MD5 only"
            )
        return Verdict.finding("not offered: MD5 only (no nonce cookie, no PASSWORD-ALGORITHMS)")
    if offered is None:
        return Verdict.finding(
            "the nonce cookie announces password algorithms but no PASSWORD-ALGORITHMS "
            "came with it: RFC 8489 clients must refuse this as a bid-down"
        )
    if PasswordAlgorithmId.SHA256 not in offered.ids:
        return Verdict.finding(f"SHA-256 not offered (PASSWORD-ALGORITHMS: {names})")
    if ctx.config.username is None:
        return Verdict.passed(f"SHA-256 offered (PASSWORD-ALGORITHMS: {names})")
    turn, response = await ctx.try_allocate()
    if _code(response) == 401:
        raise ProbeSkipped(
            f"SHA-256 offered ({names}); the credentials were refused (401), see turn.allocate"
        )
    if _code(response) != 0 or turn.credentials.algorithm != PasswordAlgorithmId.SHA256:
        return Verdict.failed(
            f"SHA-256 offered ({names}), but an Allocate signed with it got {_describe(response)}"
        )
    return Verdict.passed(f"SHA-256 offered ({names}) and accepted")


@_probe(
    "turn.wrong-password",
    "A request signed with a wrong password is refused with 401",
    "RFC 8489 §9.2.4",
    Level.MUST,
)
async def _probe_wrong_password(ctx: CheckContext) -> Verdict:
    username = ctx.config.username or "anchor-check"
    password = (ctx.config.password or "") + "-wrong"
    link = await ctx.link()
    turn = _Turn(link, LongTermCredentials(username, password))
    response = await turn.request(
        Method.ALLOCATE, [RequestedTransport(TransportProtocol.UDP)], retry_stale=False
    )
    code = _code(response)
    if code == 0:
        ctx.track(turn, response)
        return Verdict.failed(f"allocated with a wrong password for {username!r}")
    if turn.challenge is None:
        return Verdict.skipped(f"no 401 challenge to start from ({_describe(response)})")
    if code != 401:
        return Verdict.failed(f"answered {_describe(response)} to a wrong password, expected 401")
    return Verdict.passed(f"401 for {username!r} with a wrong password")


def _forge(nonce: str) -> str:
    """``nonce`` with its last characters changed, each within its class (digit, letter)."""
    head, tail = nonce[:-4], nonce[-4:]
    out = []
    for char in tail:
        if char.isdigit():
            out.append(str((int(char) + 1) % 10))
        elif "a" <= char <= "z":
            out.append(chr((ord(char) - 97 + 1) % 26 + 97))
        elif "A" <= char <= "Z":
            out.append(chr((ord(char) - 65 + 1) % 26 + 65))
        else:
            out.append(char)
    forged = head + "".join(out)
    return forged if forged != nonce else nonce + "x"


@_probe(
    "turn.stale-nonce",
    "A correctly signed request with a nonce the server did not issue gets 438 with a new "
    "NONCE, which then works",
    "RFC 8489 §9.2.4, §9.2.5",
    Level.MUST,
)
async def _probe_stale_nonce(ctx: CheckContext) -> Verdict:
    creds = ctx.credentials()
    link = await ctx.link()
    turn = _Turn(link, creds)
    allocate = [RequestedTransport(TransportProtocol.UDP)]
    first = await _transact(link, _request(Method.ALLOCATE, *allocate), "Allocate")
    if _code(first.message) != 401:
        raise ProbeSkipped(f"no 401 challenge ({_describe(first.message)})")
    try:
        creds.challenge(first.message)
    except CredentialsRejected as exc:
        raise ProbeSkipped(f"cannot use the 401 challenge: {exc}") from None
    assert creds.nonce is not None
    issued = creds.nonce
    forged = _forge(issued)
    creds.nonce = forged
    reply = await _transact(link, creds.sign(_request(Method.ALLOCATE, *allocate)), "Allocate")
    msg = reply.message
    code = _code(msg)
    if code == 0:
        ctx.track(turn, msg)
        return Verdict.failed("allocated with a forged nonce")
    if code == 401:
        creds.nonce = issued  # were the credentials good? (integrity is checked before nonces)
        check = await _transact(link, creds.sign(_request(Method.ALLOCATE, *allocate)), "Allocate")
        if _code(check.message) == 401:
            raise ProbeSkipped("the server refused the credentials (401); see turn.allocate")
        if _code(check.message) == 0:
            ctx.track(turn, check.message)
        return Verdict.failed("answered 401 to a forged nonce with valid credentials, expected 438")
    if code != 438:
        return Verdict.failed(f"answered {_describe(msg)} to a forged nonce, expected 438")
    fresh = msg.get(Nonce)
    if fresh is None or msg.get(Realm) is None:
        return Verdict.failed("438 without NONCE and REALM")
    if fresh.value == forged:
        return Verdict.failed("438 repeating the forged nonce")
    try:
        creds.challenge(msg)
    except CredentialsRejected as exc:
        return Verdict.failed(f"438 cannot be followed: {exc}")
    retry = await _transact(link, creds.sign(_request(Method.ALLOCATE, *allocate)), "Allocate")
    if _code(retry.message) != 0:
        return Verdict.failed(f"the new nonce did not work: {_describe(retry.message)}")
    ctx.track(turn, retry.message)
    return Verdict.passed("438 with a new NONCE; the Allocate succeeded with it")
