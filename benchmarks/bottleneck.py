"""The ``channel`` rows through a real bottleneck (issue 17 item 7): root only.

``anchor bench channel`` run as root adds two rows, measured in the NAT lab's network
namespaces (``conformance/natlab``, the set-up of ``conformance/test_natlab_bottleneck.py``'s
shared-bottleneck test): natA's WAN egress is a token bucket (``tc qdisc ... tbf rate 20mbit
burst 32kbit limit 60000``, a queue of about 24 ms), both NATs full cone. In a router, not in
hostA's own egress, where the kernel's TCP would see its own qdisc push back before any loss
(TCP small queues), which no Internet bottleneck does. Taking turns on that bottleneck, alone
each time:

- ``anchor``: ``anchor pipe`` on hostA and hostB (the default policy: a server-reflexive pair
  through both NATs, through ``anchor serve --signal`` in ``pub``), :data:`SIZE` bytes from
  hostA to hostB, timed from when the sending pipe is handed them until the receiver wrote
  them all;
- ``kernel TCP``: one TCP bulk flow (Python sockets, CUBIC, Linux's default controller) from
  hostA to a sink in ``pub`` for :data:`TCP_SECONDS` s.

Rows: each one's goodput (Mbit/s; target: the link >= 0.9x the kernel's TCP on the same
bottleneck) and the share of the packets offered to the bottleneck that it dropped (the
qdisc's counters; target: the link <= 5 %, must-show 1 of issue 17). The kernel's TCP is the
baseline of both. Without root, or without the lab's tools, there are no such rows and one
line on stderr says why; nothing else changes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import Result, result

ROOT = Path(__file__).resolve().parent.parent
RATE = "20mbit"
QUEUE = 60_000
SIZE = 10_000_000
"""Bytes the link carries (quick: a quarter)."""
TCP_SECONDS = 6.0
"""Seconds of the kernel TCP flow (quick: 3)."""
TCP_PORT = 5202
TOOLS = ("ip", "tc", "nft", "conntrack")

_SINK = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); total = 0; first = None
while data := c.recv(1 << 16):
    if first is None:
        first = time.monotonic()
    total += len(data)
print(f"{total} {time.monotonic() - first}", flush=True)
"""
_SOURCE = """
import socket, sys, time
c = socket.socket()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
c.connect((sys.argv[1], int(sys.argv[2])))
block = bytes(1 << 16); end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(block)
c.close()
"""


def unavailable() -> str | None:
    """Why the rows cannot be measured here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)}"
    return None


def _counters(lab: Any) -> tuple[int, int]:
    out = subprocess.run(
        lab.argv("natA", ["tc", "-s", "qdisc", "show", "dev", "wan"]),
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)", out)
    if match is None:
        raise RuntimeError(f"no qdisc counters: {out}")
    return int(match.group(1)), int(match.group(2))


def _tcp(lab: Any, server: str, seconds: float) -> tuple[float, float]:
    """(goodput Mbit/s, drop rate) of one kernel TCP flow alone on the bottleneck."""
    sink = lab.popen("pub", [sys.executable, "-c", _SINK, server, str(TCP_PORT)],
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "listening"
        before = _counters(lab)
        source = lab.popen("hostA", [sys.executable, "-c", _SOURCE, server,
                                     str(TCP_PORT), str(seconds)])  # fmt: skip
        source.wait(timeout=seconds + 20)
        out, _ = sink.communicate(timeout=20)
        sent, dropped = (a - b for a, b in zip(_counters(lab), before, strict=True))
        total, elapsed = out.split()
        return int(total) * 8 / float(elapsed) / 1e6, dropped / max(1, sent + dropped)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait(timeout=5)


def _link(lab: Any, size: int) -> tuple[float, float]:
    """(goodput Mbit/s, drop rate) of ``size`` bytes through ``anchor pipe`` on the
    bottleneck."""
    from natlab.links import LivePipe  # type: ignore[import-not-found]

    data = os.urandom(size)
    b = LivePipe(lab, "hostB", "B", "A", idle=300.0)
    a = None
    try:
        time.sleep(0.5)  # B subscribes first
        a = LivePipe(lab, "hostA", "A", "B", idle=300.0)
        a.write(b"x")
        b.wait_size(1, timeout=20)
        before = _counters(lab)
        start = time.monotonic()
        a.write(data)
        done = b.wait_size(1 + size, timeout=120)
        sent, dropped = (x - y for x, y in zip(_counters(lab), before, strict=True))
        if b.output != b"x" + data:
            raise RuntimeError("the link did not deliver the data intact")
        return size * 8 / (done - start) / 1e6, dropped / max(1, sent + dropped)
    finally:
        for pipe in (a, b):
            if pipe is not None:
                pipe.stop()


def measure(quick: bool) -> list[Result]:
    """The two bottleneck rows (module docstring), or none (with a line on stderr)."""
    why = unavailable()
    if why is not None:
        print(f"anchor bench: channel: the bottleneck rows {why}: no figure", file=sys.stderr)
        return []
    sys.path.insert(0, str(ROOT / "conformance"))
    from natlab import SERVER_IP, NatKind, NatLab  # type: ignore[import-not-found]
    from natlab.links import serve_args

    size, seconds = (SIZE // 4, TCP_SECONDS / 2) if quick else (SIZE, TCP_SECONDS)
    with tempfile.TemporaryDirectory(prefix="anchor-bench-lab-") as workdir:
        lab = NatLab(Path(workdir))
        lab.build()
        try:
            lab.start_anchor_serve(serve_args())
            lab.set_nat("natA", NatKind.FULL_CONE)
            lab.set_nat("natB", NatKind.FULL_CONE)
            subprocess.run(
                lab.argv("natA", ["tc", "qdisc", "replace", "dev", "wan", "root", "tbf",
                                  "rate", RATE, "burst", "32kbit", "limit", str(QUEUE)]),
                check=True, timeout=10,
            )  # fmt: skip
            tcp_mbps, tcp_drops = _tcp(lab, SERVER_IP, seconds)
            link_mbps, link_drops = _link(lab, size)
        finally:
            lab.teardown()
    where = f"{RATE} tbf bottleneck in a router, {QUEUE}-byte queue, network namespaces"
    return [
        result("channel", "Mbit/s", link_mbps, tcp_mbps,
               f"bottleneck: kernel TCP (cubic) alone on the same {where}; anchor: "
               f"anchor pipe, {size / 1e6:g} MB"),
        result("channel", "% dropped", 100 * link_drops, 100 * tcp_drops,
               f"drops: kernel TCP's share of packets dropped at the same {where}"),
    ]  # fmt: skip
