"""``codec``: build, parse and verify a connectivity check, Anchor vs aioice's stun module.

One operation = build a Binding request carrying USERNAME, PRIORITY, ICE-CONTROLLING,
MESSAGE-INTEGRITY (short-term key, RFC 8489 §9.1) and FINGERPRINT from its values, encode
it, parse the bytes and verify FINGERPRINT and MESSAGE-INTEGRITY, as the two ends of a
connectivity check do (RFC 8445 §7.1-§7.3). Both sides get the same work: each operation
has a fresh transaction id, the attribute values are those of one candidate pair (as in a
real check list), and before measuring the module checks that both sides produce the same
bytes and accept each other's.

Anchor's side is what the ICE agent runs for that job, with the objects it owns:
:meth:`anchor_stun.check.CheckKey.request` is how ``IceAgent._request`` builds a check, and
:class:`CheckReader` is the sequence the agent's responder
(``anchor_ice.responder.Responder.receive``) runs on one it has no route for
(:meth:`anchor_stun.check.CheckReader.known`, else ``Message.decode`` and
:meth:`~anchor_stun.check.CheckReader.remember`; then FINGERPRINT and MESSAGE-INTEGRITY at
their offsets). (A repeat that has a route skips the reading: the ``checks`` row.)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import zlib
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from anchor_stun.attributes import IceControlling, Priority, Username
from anchor_stun.check import CheckKey
from anchor_stun.check import CheckReader as AgentReader
from anchor_stun.message import Message, MessageClass, Method

from . import Result, interleave, rate, result

USERNAME = "Ycb4:8hhY"  # remote ufrag ":" local ufrag (RFC 8445 §7.2.2)
PASSWORD = b"asd88fgpdd777uzjYhagZg"  # 22 characters, the minimum ice-pwd (RFC 8839 §5.4)
PRIORITY = 0x6E7F1EFF
TIE_BREAKER = 0x932FF9B151263B36


Check = tuple[bytes, str, int]
"""Transaction id, USERNAME and PRIORITY of one check."""


def _checks(count: int, pairs: int) -> list[Check]:
    """``count`` checks over ``pairs`` candidate pairs (each its USERNAME and PRIORITY)."""
    names = [USERNAME if i == 0 else f"{i:x}:8hhY" for i in range(pairs)]
    return [
        (os.urandom(12), names[i % pairs], (PRIORITY + i % pairs) & 0xFFFF_FFFF)
        for i in range(count)
    ]


Values = tuple[str, int, int]
"""USERNAME, PRIORITY and ICE-CONTROLLING of a parsed check."""


class CheckReader:
    """Parse and verify a check the way the agent's responder does (one without a route,
    ``anchor_ice.responder``): the attributes
    of a check already read come from the agent's :class:`anchor_stun.check.CheckReader`
    (at most 256 shapes), anything else is decoded and remembered; then FINGERPRINT and
    MESSAGE-INTEGRITY are verified with the agent's :class:`~anchor_stun.check.CheckKey`."""

    def __init__(self, key: CheckKey) -> None:
        self.key = key
        self.reader = AgentReader()

    def read(self, data: bytes) -> Values:
        """The check's values; AssertionError when it does not verify."""
        found = self.reader.known(data)
        if found is not None:
            size = len(data)
            at, fp_at = size - 32, size - 8
        else:
            msg = Message.decode(data)
            found = self.reader.remember(msg)
            at, fp_at = msg.integrity_at, msg.fingerprint_at
        if fp_at < 0 or not self.key.verify(data, at, fp_at):
            raise AssertionError("anchor rejected a request")
        if found.username is None or found.priority is None or found.controlling is None:
            raise AssertionError("anchor parsed a request without its attributes")
        return (found.username, found.priority, found.controlling)


def _anchor_loop(checks: list[Check]) -> Callable[[int], None]:
    key = CheckKey(PASSWORD)  # the agent's remote key (builds) and the peer's local key
    build = key.request
    read = CheckReader(CheckKey(PASSWORD)).read

    def ops(count: int) -> None:
        for tid, username, priority in checks[:count]:
            read(build(tid, username, priority, True, TIE_BREAKER))

    return ops


def _aioice_build(
    stun: Any,
    tid: bytes,
    with_fingerprint: bool,
    username: str = USERNAME,
    priority: int = PRIORITY,
) -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=tid)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = priority
    msg.attributes["ICE-CONTROLLING"] = TIE_BREAKER
    msg.add_message_integrity(PASSWORD)
    if with_fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def _aioice_loop(checks: list[Check]) -> Callable[[int], None]:
    from aioice import stun

    # aioice >= 0.10 adds FINGERPRINT inside add_message_integrity() and parses with
    # parse_message(data) + check_message_integrity(key); older ones need add_fingerprint()
    # and take parse_message(data, integrity_key=key). Give each version the least work.
    probe = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=bytes(12))
    probe.add_message_integrity(PASSWORD)
    with_fingerprint = "FINGERPRINT" not in probe.attributes
    key_in_parse = "integrity_key" in inspect.signature(stun.parse_message).parameters
    build = _aioice_build
    parse: Any = stun.parse_message

    if key_in_parse:

        def ops(count: int) -> None:
            for tid, username, priority in checks[:count]:
                parse(
                    build(stun, tid, with_fingerprint, username, priority), integrity_key=PASSWORD
                )

    else:

        def ops(count: int) -> None:
            for tid, username, priority in checks[:count]:
                msg = parse(build(stun, tid, with_fingerprint, username, priority))
                if not msg.check_message_integrity(PASSWORD):
                    raise AssertionError("aioice rejected its own request")

    return ops


def _same_work(tid: bytes) -> None:
    """Both codecs produce the same bytes (Anchor's builder those of a Message), and each
    accepts the other's."""
    from aioice import stun

    ours = CheckKey(PASSWORD).request(tid, USERNAME, PRIORITY, True, TIE_BREAKER)
    general = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        tid,
        [Username(USERNAME), Priority(PRIORITY), IceControlling(TIE_BREAKER)],
    ).encode(key=PASSWORD, fingerprint=True)
    if ours != general:
        raise AssertionError("CheckKey.request and Message.encode differ")
    probe = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=tid)
    probe.add_message_integrity(PASSWORD)
    theirs = _aioice_build(stun, tid, "FINGERPRINT" not in probe.attributes)
    if ours != theirs:
        raise AssertionError("anchor and aioice encode the check differently")
    reader = CheckReader(CheckKey(PASSWORD))
    for _ in range(2):  # decoded, then from the table
        if reader.read(theirs) != (USERNAME, PRIORITY, TIE_BREAKER):
            raise AssertionError("anchor parses aioice's request differently")
    # a wrong MESSAGE-INTEGRITY under a right FINGERPRINT, on the fast path's table
    forged = theirs[:-9] + bytes((theirs[-9] ^ 1,)) + theirs[-8:-4]
    forged += (zlib.crc32(forged[:-4]) ^ 0x5354554E).to_bytes(4, "big")
    try:
        reader.read(forged)
    except AssertionError:
        pass
    else:
        raise AssertionError("anchor accepts a request with a wrong MESSAGE-INTEGRITY")
    if "integrity_key" in inspect.signature(stun.parse_message).parameters:
        stun.parse_message(ours, integrity_key=PASSWORD)  # raises when it rejects it
    elif not stun.parse_message(ours).check_message_integrity(PASSWORD):
        raise AssertionError("aioice rejects anchor's request")


def measure(quick: bool, pairs: int = 1) -> list[Result]:
    """ops/s of Anchor and of aioice, medians of interleaved repeats.

    ``pairs`` candidate pairs take turns (1: the checks of one pair, as the issue states
    it; a number as large as the sample, every check from a new pair, which no cache helps).
    """
    # Many short samples, alternating, share the noise of a busy machine better than a few
    # long ones.
    count, repeats = (500, 15) if quick else (2_000, 51)
    checks = _checks(count, pairs)
    _same_work(checks[0][0])
    anchor_ops, aioice_ops = _anchor_loop(checks), _aioice_loop(checks)
    medians = interleave(
        {
            "anchor": lambda: rate(anchor_ops, count),
            "aioice": lambda: rate(aioice_ops, count),
        },
        repeats,
    )
    return [
        result(
            "codec",
            "ops/s",
            medians["anchor"],
            medians["aioice"],
            f"aioice {version('aioice')} stun",
        )
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.codec [--quick] [--pairs N]``: the result rows as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.codec")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=1, help="candidate pairs taking turns")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.quick, max(1, args.pairs))))


if __name__ == "__main__":
    main()
