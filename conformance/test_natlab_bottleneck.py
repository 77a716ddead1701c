"""The reliable channel through a 20 Mbit/s bottleneck (issue 17, must-show 1).

hostA and hostB share one more LAN segment (:func:`natlab.links.join_hosts`); hostA's egress
on it is a token bucket (``tc qdisc ... tbf rate 20mbit``, a queue of 60,000 bytes, about
24 ms at that rate: what the issue measured with). ``anchor pipe --policy standard
--host-ip SHARED`` on both hosts links on the host pair of that segment (through ``anchor
serve --signal`` in ``pub``), so every frame from A to B crosses the bottleneck. A first
message forms the link; then 10 MB go through it, timed from when A is handed them until B
has written them all. What must hold: goodput >= 18 Mbit/s and at most 5 % of the packets
offered to the bottleneck dropped there (its qdisc counters): congestion control fills the
link without overrunning its queue. (Before congestion control: 16.8-17.5 Mbit/s and 40 %
dropped.)
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from natlab import NatKind, NatLab
from natlab.fixtures import natlab, report
from natlab.links import SHARED_IPS, LivePipe, join_hosts, serve_args

__all__ = ["natlab"]  # the module fixture, imported so pytest finds it here

ANCHOR_SERVE_ARGS = serve_args()
"""Read by the ``natlab`` fixture: TURN users and the rendezvous on ``anchor serve``."""

RATE = "20mbit"
QUEUE = 60_000  # bytes the tbf holds before it drops
SIZE = 10_000_000
IDLE = 300.0  # far beyond the test: idleness never ends the link here


def _qdisc_counters(lab: NatLab) -> tuple[int, int]:
    """(packets sent, packets dropped) of hostA's qdisc on the shared segment."""
    out = subprocess.run(
        lab.argv("hostA", ["tc", "-s", "qdisc", "show", "dev", "shared"]),
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


def test_ten_megabytes_through_a_20_mbit_bottleneck(
    natlab: NatLab, request: pytest.FixtureRequest
) -> None:
    if "shared" not in natlab.kinds:
        join_hosts(natlab)
        natlab.kinds["shared"] = NatKind.PORT_RESTRICTED_CONE  # marker only (see test_natlab_link)
    subprocess.run(
        natlab.argv("hostA", ["tc", "qdisc", "replace", "dev", "shared", "root", "tbf",
                              "rate", RATE, "burst", "32kbit", "limit", str(QUEUE)]),
        check=True, timeout=10,
    )  # fmt: skip
    data = os.urandom(SIZE)
    extra = ["--policy", "standard"]
    b = LivePipe(natlab, "hostB", "B", "A", idle=IDLE,
                 extra=[*extra, "--host-ip", SHARED_IPS["hostB"]])  # fmt: skip
    a: LivePipe | None = None
    try:
        time.sleep(0.5)  # B subscribes first
        a = LivePipe(natlab, "hostA", "A", "B", idle=IDLE,
                     extra=[*extra, "--host-ip", SHARED_IPS["hostA"]])  # fmt: skip
        a.write(b"x")
        b.wait_size(1, timeout=20)
        (formed,) = a.formed()
        assert formed.types == ("host", "host"), a.log()
        assert formed.local[0] == SHARED_IPS["hostA"], formed
        sent_before, dropped_before = _qdisc_counters(natlab)
        start = time.monotonic()
        a.write(data)
        done = b.wait_size(1 + SIZE, timeout=60)
        sent, dropped = _qdisc_counters(natlab)
        sent, dropped = sent - sent_before, dropped - dropped_before
        assert b.output == b"x" + data
        seconds = done - start
        goodput = SIZE * 8 / seconds / 1e6
        drop_rate = dropped / (sent + dropped)
        report(
            request.config,
            f"natlab bottleneck {RATE}: 10 MB in {seconds:.2f} s, goodput {goodput:.1f} "
            f"Mbit/s, {dropped} of {sent + dropped} packets dropped at the bottleneck "
            f"({drop_rate:.1%})",
        )
        assert drop_rate <= 0.05, f"{drop_rate:.1%} dropped at the bottleneck"
        assert goodput >= 18.0, f"{goodput:.1f} Mbit/s"
    finally:
        for pipe in (a, b):
            if pipe is not None:
                pipe.stop()
        subprocess.run(
            natlab.argv("hostA", ["tc", "qdisc", "del", "dev", "shared", "root"]),
            check=False, timeout=10,
        )  # fmt: skip
