"""``anchor check`` from Python: the conformance probes against a STUN/TURN server.

Self-contained: the script starts Anchor's own TURN server on 127.0.0.1 (one user,
loopback peers allowed) and runs every probe of ``anchor check`` against it with
:func:`anchor_turn.run_check`, printing one line per probe. An operator runs the same
probes against any server (coturn, say) from the command line::

    anchor check turn.example.org:3478 --user alice:secret [--json]

Exit status as the command's: 0 when no MUST failed (:func:`anchor_turn.check_passed`).
The embedded server allows loopback peers (the probes' echo peer is on loopback), so the
report has one *finding*, as it would for a production server configured that way.

Run: ``python examples/anchor_check.py``. Exit 0 and ``N probes: ... no MUST failed``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections import Counter

from anchor_stun import AnchorError
from anchor_turn import CheckConfig, ProbeResult, check_passed, loopback_runner, run_check

LOOPBACK = "127.0.0.1"
USER, PASSWORD, REALM = "alice", "correct horse battery staple", "example.org"


def free_udp_port() -> int:
    """A UDP port free on loopback now (the TURN server needs a concrete one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def show(result: ProbeResult) -> None:
    print(f"{result.outcome.value:8} {result.info.level.value:6} {result.id:40} {result.info.rfc}")


async def main() -> int:
    port = free_udp_port()
    server = loopback_runner(port, {USER: PASSWORD}, REALM)
    await server.start()
    try:
        config = CheckConfig(server=(LOOPBACK, port), username=USER, password=PASSWORD)
        results = await run_check(config, on_result=show)
    finally:
        server.close()
        await server.wait_closed()
    for result in results:
        if result.outcome.value in ("fail", "finding"):
            print(f"{result.outcome.value} {result.id}: {result.detail}")
    counts = Counter(r.outcome.value for r in results)
    verdict = "no MUST failed" if check_passed(results) else "a MUST failed"
    print(f"{len(results)} probes: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
          + f"; {verdict}")  # fmt: skip
    return 0 if check_passed(results) else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except (AnchorError, OSError, TimeoutError) as exc:
        sys.exit(f"error: {exc!r}")
