"""A NAT forgets the mapping of a live link (issue 7, must-show 6; issue 17, must-show 4).

natA is symmetric (``masquerade fully-random``: a new 5-tuple gets a random public port),
natB full cone: hostA's link to hostB forms on a direct pair (hostA's mapping as a prflx
candidate at hostB). Then natA's conntrack table is flushed mid-link: the mapping is gone,
hostA's next packets leave from a new random port, and hostB's packets to the old one are
dropped at natA. What must follow:

1. hostB's consent checks (RFC 7675) go unanswered and its link reports consent lost within
   30 s of the flush;
2. hostA's end, whose own consent checks hostB still answers (they reach hostB from the new
   mapping), is told with a ``bye`` on the signalling and reports the link gone too; its
   rendezvous connection, also cut by the flush, came back on its own;
3. the data hostA accepted while the link was broken (a stream written from before the flush
   until after it) is carried to a new link (a new mapping at natA), formed at once without
   a new send: hostB's output is every byte written, exactly once, in order.

Meanwhile a second pair (A2 on hostA, C on hostB) shows a peer that never returns: C's pipe
is killed (SIGKILL) once what A2 sent first was delivered, and A2 then accepts more. A2's
link loses consent 30 s later, re-formation fails (C is off the rendezvous) until
``--delivery-timeout`` (3 s), and A2's pipe names exactly the bytes of its input that were
not delivered. (Concurrently with the first pair, in the same 30 s: the lab's time budget.)

Both pipes run with a long idle timeout, so only the flush can end the first link. In its
own module: the 30 s of consent dominate it, and the lab budget (``natlab.fixtures.BUDGET``)
is shared with the other lab modules.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from natlab import NATS, NatKind, NatLab
from natlab.fixtures import natlab, report
from natlab.links import DIRECT_TYPES, LivePipe, serve_args

__all__ = ["natlab"]  # the module fixture, imported so pytest finds it here

ANCHOR_SERVE_ARGS = serve_args()
"""Read by the ``natlab`` fixture: TURN users and the rendezvous on ``anchor serve``."""

CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1: consent expires 30 s after the last response
SLACK = 0.5
IDLE = 300.0
"""The pipes' idle timeout: far beyond the test, so idleness never ends a link here."""
FORMED = r"link formed with"
DISSOLVED = r"link with \w+ dissolved \((.*)\)"
UNDELIVERED = r"(\d+) bytes of input undelivered to C \(bytes (\d+)-(\d+) of stdin"
STREAM = [b"%07d\n" % i * 125 for i in range(100)]  # 100 writes of 1,000 bytes
STREAM_GAP = 0.05  # seconds between writes: 5 s of stream


def test_flushed_mapping_consent_lost_reported_and_carried_data_delivered_once(
    natlab: NatLab, request: pytest.FixtureRequest
) -> None:
    natlab.set_nat("natA", NatKind.SYMMETRIC)
    natlab.set_nat("natB", NatKind.FULL_CONE)
    b = LivePipe(natlab, "hostB", "B", "A", idle=IDLE)
    c = LivePipe(natlab, "hostB", "C", "A2", idle=IDLE)
    a: LivePipe | None = None
    a2: LivePipe | None = None
    try:
        time.sleep(0.5)  # B and C subscribe first
        a = LivePipe(natlab, "hostA", "A", "B", idle=IDLE)
        a2 = LivePipe(natlab, "hostA", "A2", "C", idle=IDLE, extra=["--delivery-timeout", "3"])
        a.write(b"one\n")
        a2.write(b"one\n")
        b.wait_output(b"one\n", timeout=20)
        c.wait_output(b"one\n", timeout=20)
        a2.wait_line(FORMED, timeout=10)
        a2_lines = a2.line_count
        a.wait_line(FORMED, timeout=10)
        (first,) = a.formed()
        assert set(first.types) <= DIRECT_TYPES, f"not a direct pair: {first}\n{a.log()}"
        assert first.local[0] == NATS["natA"].wan_ip, first
        a_lines, b_lines = a.line_count, b.line_count

        pipe = a

        def feed() -> None:  # the stream: 1 s before the flush until 4 s after it
            for chunk in STREAM:
                pipe.write(chunk)
                time.sleep(STREAM_GAP)

        feeder = threading.Thread(target=feed, daemon=True)
        time.sleep(0.5)  # C's acknowledgement is back: "one" delivered, and known to be
        c.proc.kill()  # a peer that never returns
        killed = time.monotonic()
        for chunk in (b"two\n", b"three\n"):
            a2.write(chunk)  # accepted: A2's link is open until its consent runs out
            time.sleep(0.2)
        time.sleep(0.3)  # a few consent rounds on the direct pair
        feeder.start()
        time.sleep(1.0)
        natlab.flush_conntrack("natA")
        flushed = time.monotonic()
        feeder.join(timeout=30)
        assert not feeder.is_alive()

        when_b, line_b = b.wait_line(DISSOLVED, timeout=CONSENT_TIMEOUT + 10, after=b_lines)
        assert "consent lost" in line_b, line_b
        # 30 s after the last answered check, which came before the flush; SLACK covers the
        # pipe's event loop and the stderr line reaching this process.
        assert when_b - flushed <= CONSENT_TIMEOUT + SLACK, (
            f"consent lost {when_b - flushed:.1f} s after the flush (RFC 7675: 30 s)"
        )
        when_a, line_a = a.wait_line(DISSOLVED, timeout=10, after=a_lines)
        assert "closed by peer: transport lost: consent lost" in line_a, line_a

        everything = b"one\n" + b"".join(STREAM)
        b.wait_size(len(everything), timeout=20)
        time.sleep(0.5)  # nothing more arrives: no duplicate
        assert b.output == everything  # every accepted byte once, in order
        a.wait_line(FORMED, timeout=10, after=a_lines)
        second = a.formed()[-1]
        assert len(a.formed()) == 2 and len(b.formed()) == 2, f"{a.log()}\n{b.log()}"
        assert "host" not in second.types, second
        # natA really forgot: the new link's hostA side is a new public port.
        if second.local[0] == NATS["natA"].wan_ip:
            assert second.local[1] != first.local[1], (first, second)

        # The peer that never returned: exactly what A2 sent after C vanished, bytes 4-14.
        when_c, line = a2.wait_line(UNDELIVERED, timeout=CONSENT_TIMEOUT + 20, after=a2_lines)
        match = re.search(UNDELIVERED, line)
        assert match, line
        assert tuple(int(g) for g in match.groups()) == (10, 4, 14), line
        assert "not on the signalling" in line, line
        assert c.output == b"one\n"
        report(
            request.config,
            f"natlab flush: hostB reported consent lost {when_b - flushed:.1f} s after the "
            f"flush, hostA {when_a - flushed:.1f} s; re-formed {second.local_type}<->"
            f"{second.remote_type} in {second.ms} ms; {len(everything)} bytes delivered "
            f"once, in order; the killed peer's 10 bytes named undelivered "
            f"{when_c - killed:.1f} s after the kill",
        )
    finally:
        for p in (a, b, a2, c):
            if p is not None:
                p.stop()
