"""A NAT forgets the mapping of a live link (issue 7, must-show 6).

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
3. the next send forms a new link (a new mapping at natA) and delivers.

Both pipes run with a long idle timeout, so only the flush can end the first link. In its
own module: the 30 s of consent dominate it, and the lab budget (``natlab.fixtures.BUDGET``)
is shared with the other lab modules.
"""

from __future__ import annotations

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


def test_flushed_mapping_consent_lost_reported_and_link_reforms_on_next_send(
    natlab: NatLab, request: pytest.FixtureRequest
) -> None:
    natlab.set_nat("natA", NatKind.SYMMETRIC)
    natlab.set_nat("natB", NatKind.FULL_CONE)
    b = LivePipe(natlab, "hostB", "B", "A", idle=IDLE)
    a: LivePipe | None = None
    try:
        time.sleep(0.5)  # B subscribes first
        a = LivePipe(natlab, "hostA", "A", "B", idle=IDLE)
        a.write(b"one\n")
        b.wait_output(b"one\n", timeout=20)
        a.wait_line(FORMED, timeout=10)
        (first,) = a.formed()
        assert set(first.types) <= DIRECT_TYPES, f"not a direct pair: {first}\n{a.log()}"
        assert first.local[0] == NATS["natA"].wan_ip, first
        a_lines, b_lines = a.line_count, b.line_count

        time.sleep(2.0)  # a few consent rounds on the direct pair
        natlab.flush_conntrack("natA")
        flushed = time.monotonic()

        when_b, line_b = b.wait_line(DISSOLVED, timeout=CONSENT_TIMEOUT + 10, after=b_lines)
        assert "consent lost" in line_b, line_b
        # 30 s after the last answered check, which came before the flush; SLACK covers the
        # pipe's event loop and the stderr line reaching this process.
        assert when_b - flushed <= CONSENT_TIMEOUT + SLACK, (
            f"consent lost {when_b - flushed:.1f} s after the flush (RFC 7675: 30 s)"
        )
        when_a, line_a = a.wait_line(DISSOLVED, timeout=10, after=a_lines)
        assert "closed by peer: transport lost: consent lost" in line_a, line_a

        a.write(b"two\n")
        b.wait_output(b"one\ntwo\n", timeout=20)
        a.wait_line(FORMED, timeout=10, after=a_lines)
        second = a.formed()[-1]
        assert len(a.formed()) == 2 and len(b.formed()) == 2, f"{a.log()}\n{b.log()}"
        assert "host" not in second.types, second
        # natA really forgot: the new link's hostA side is a new public port.
        if second.local[0] == NATS["natA"].wan_ip:
            assert second.local[1] != first.local[1], (first, second)
        report(
            request.config,
            f"natlab flush: hostB reported consent lost {when_b - flushed:.1f} s after the "
            f"flush, hostA {when_a - flushed:.1f} s; re-formed {second.local_type}<->"
            f"{second.remote_type} in {second.ms} ms",
        )
    finally:
        for pipe in (a, b):
            if pipe is not None:
                pipe.stop()
