"""``scale``: memory and time per TURN allocation at 100, 1,000 and 10,000 allocations.

What is measured. The TURN server core (:class:`~anchor_turn.server.TurnServer`, sans-I/O)
is driven directly, in a fresh Python process per size, with a fake
:class:`~anchor_turn.server.RelayAllocator` that hands out relayed addresses without binding
sockets (so the figures hold the server's state and not the kernel's sockets; a real
``anchor serve`` also holds one UDP socket per allocation, and 10,000 of them need
``ulimit -n`` above 10,000 and a relay port range that large). N clients, each its own
5-tuple (distinct client IPs in 127.0.0.0/8: only strings, nothing is sent anywhere), each a
:class:`~anchor_turn.client.TurnClient` that allocates with long-term credentials the way a
real client does (unsigned Allocate, 401 with NONCE and PASSWORD-ALGORITHMS, signed Allocate,
success; RFC 8656 §7, RFC 8489 §9.2). Timed per size:

* **allocate**: the server's own time (``receive_datagram`` + ``datagrams_to_send``) for the
  N allocations, excluding the clients' work; the client objects are dropped once allocated;
* **memory**: the process RSS (``VmRSS`` of ``/proc/self/status``) after the N allocations,
  and its growth over the same process before them, per allocation; and, in a run of its
  own (``--child turn-heap N``, whose times are not used), the growth of the Python heap as
  ``tracemalloc`` counts it, per allocation. The per-item comparison uses the heap: the RSS
  growth of 1,000 allocations is held down by the memory the allocator already had free
  when the count started (about 0.6 MB of pools that imports left free), which 10,000
  allocations outgrow, so RSS per item read 1.0 KB at 1,000 and 1.65 KB at 10,000 for the
  same state;
* **expire**: ``handle_timer`` at the end of the lifetime, which releases all N allocations
  (and their relayed addresses), the server's time; ``allocation_count()`` must then be 0.

Sizes run in rotating order, each in its own process, repeated; medians per size. The
rows compare each size with the smallest one, per item (flat = the same cost per allocation
at every size), and the RSS at 10,000 allocations with the 300 MB target.

**Ephemeral links** (issue 8: "100 / 1,000 links formed and dissolved"), when
``anchor_link.aio.endpoint`` is there: in a fresh process per size, one endpoint ``a`` and N peer
endpoints on one in-process signalling hub (:class:`~anchor_link.aio.signal.InProcessSignalling`),
policy ``standard`` on 127.0.0.1 host candidates (no TURN server: the link machinery itself
— gathering, signalling, ICE, the sealed channel, the dissolve — without allocations), idle
timeout :data:`LINK_IDLE` s; each endpoint stands for a host and has its own ICE
transaction pacer (RFC 8445 §14.2: ``a``'s N links share one, checks 5 ms apart at most).
``a`` sends one 100-byte message to each peer, all at once;
once every link is formed and every message delivered the RSS is read (all N links open,
both ends in this process); then every link dissolves on its own after the idle timeout
(FIN handshake, sockets closed: ``open_sockets()`` must be 0 on every endpoint). Reported
per link: the CPU time (``time.process_time``) of forming and of dissolving, both ends,
the idle wait excluded by construction (nothing runs then), and the RSS growth. When the
module is missing, or its surface differs from what this code expects, that part gives no
figure and says why on stderr.

``python -m benchmarks.scale --plot FILE.png`` draws the curves (more sizes) with
matplotlib, when it is installed.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import Result, result, rotation

SIZES = (100, 1_000, 10_000)
LINK_SIZES = (100, 1_000)
LINK_IDLE = 0.5
"""Idle timeout of the benchmark's links, seconds."""
PLOT_SIZES = (100, 300, 1_000, 3_000, 10_000, 30_000)
USER, PASSWORD, REALM = "bench", "bench-secret", "anchor.bench"
LISTENER = ("127.0.0.1", 3478)
RELAY_IP = "127.0.0.1"
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


def rss_bytes() -> int:
    """The resident set size of this process (VmRSS), bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


class FakeRelays:
    """A RelayAllocator that hands out (127.0.0.x, port) addresses without sockets."""

    def __init__(self) -> None:
        self.next = 0
        self.in_use: set[tuple[str, int]] = set()

    def allocate(
        self, family: int, even_port: bool, reserve_next: bool, token: bytes | None, now: float
    ) -> tuple[tuple[str, int], bytes | None] | None:
        if family != 1 or token is not None or reserve_next:
            return None
        n = self.next
        self.next += 1
        addr = (f"127.0.{1 + n // 16384}.1", 49152 + n % 16384)
        self.in_use.add(addr)
        return addr, None

    def release(self, addr: tuple[str, int]) -> None:
        self.in_use.discard(addr)


def _client_ip(i: int) -> str:
    return f"127.{1 + (i >> 16) % 254}.{(i >> 8) & 255}.{i & 255}"


def turn_child(count: int, traced: bool = False) -> dict[str, float]:
    """In this (fresh) process: ``count`` allocations on one TurnServer core; ``traced``:
    with ``tracemalloc`` on (its heap figures are filled, its times are slower)."""
    import tracemalloc

    from anchor_turn.auth import StaticUsers
    from anchor_turn.client import TurnClient
    from anchor_turn.events import AllocationCreated
    from anchor_turn.server import TurnServer

    relays = FakeRelays()
    server = TurnServer(
        realm=REALM,
        auth=StaticUsers({USER: PASSWORD}, realm=REALM),
        relay=relays,
        address_families=(1,),
        # every client logs in at the same instant, 256 per /24: the per-prefix budget of
        # unsigned answers would refuse most 401s; what is measured is the allocation state
        unauthenticated_rate=None,
    )
    now = 1000.0
    clock = time.perf_counter
    if traced:
        tracemalloc.start()
    gc.collect()
    heap_before = tracemalloc.get_traced_memory()[0] if traced else 0
    rss_before = rss_bytes()
    served = 0.0
    receive, output = server.receive_datagram, server.datagrams_to_send
    for i in range(count):
        addr = (_client_ip(i), 40000 + i % 20000)
        client = TurnClient(LISTENER, USER, PASSWORD)
        client.allocate(now)
        created = False
        for _ in range(4):  # unsigned Allocate, 401, signed Allocate, success
            requests = client.datagrams_to_send(now)
            start = clock()
            for transmit in requests:
                receive(transmit.data, addr, LISTENER, now)
            answers = output(now)
            served += clock() - start
            for answer in answers:
                client.receive_datagram(answer.data, LISTENER, now)
            while (event := client.next_event()) is not None:
                created = created or isinstance(event, AllocationCreated)
            if created:
                break
        if not created:
            raise AssertionError(f"allocation {i} failed")
        while server.next_event() is not None:
            pass
    del client
    if server.allocation_count() != count:
        raise AssertionError(f"{server.allocation_count()} allocations, not {count}")
    gc.collect()
    rss_after = rss_bytes()
    heap_after = tracemalloc.get_traced_memory()[0] if traced else 0
    deadline = server.next_timer()
    start = clock()
    server.handle_timer(now + 24 * 3600.0)
    server.datagrams_to_send(now)
    expired = clock() - start
    if server.allocation_count() != 0 or relays.in_use:
        raise AssertionError("allocations left after their lifetime")
    return {
        "count": count,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "heap_before": heap_before,
        "heap_after": heap_after,
        "allocate_s": served,
        "expire_s": expired,
        "first_deadline": deadline or 0.0,
    }


def link_child(count: int) -> dict[str, float]:
    """In this (fresh) process: ``count`` ephemeral links formed and dissolved."""
    import asyncio

    from anchor_ice.aio.pacing import TransactionPacer
    from anchor_link.aio.endpoint import LinkDissolved, LinkEndpoint, LinkFailed, LinkFormed
    from anchor_link.aio.signal import InProcessSignalling

    async def run() -> dict[str, float]:
        hub = InProcessSignalling()
        delivered = [0]

        def on_message(peer: str, data: bytes) -> None:
            delivered[0] += 1

        options: dict[str, Any] = {
            "policy": "standard",
            "host_ips": ["127.0.0.1"],
            "idle_timeout": LINK_IDLE,
        }

        # N + 1 hosts modelled in one process: each endpoint its own ICE transaction pacer
        # (RFC 8445 §14.2 limits a host's agents together: a's N links share one).
        def host() -> dict[str, Any]:
            return {"connection_options": {"pacer": TransactionPacer()}}

        a = LinkEndpoint("a", hub, **options, **host())
        peers = [
            LinkEndpoint(f"b{i}", hub, on_message=on_message, **options, **host())
            for i in range(count)
        ]
        try:
            await a.start()
            for peer in peers:
                await peer.start()
            gc.collect()
            rss_before = rss_bytes()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(a.send(f"b{i}", bytes(100)) for i in range(count))), 120.0
            )
            await a.wait_for(LinkFormed, count=count, timeout=120.0)
            deadline = time.monotonic() + 60.0
            while delivered[0] < count:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{delivered[0]} of {count} messages delivered")
                await asyncio.sleep(0.002)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            gc.collect()
            rss_open = rss_bytes()
            await a.wait_for(LinkDissolved, count=count, timeout=120.0)
            for peer in peers:
                await peer.wait_for(LinkDissolved, count=1, timeout=60.0)
            cpu2, wall2 = time.process_time(), time.perf_counter()
            failed = [e for e in a.history if isinstance(e, LinkFailed)]
            sockets = a.open_sockets() + sum(peer.open_sockets() for peer in peers)
            if failed or sockets:
                raise AssertionError(f"{len(failed)} links failed, {sockets} sockets left")
        finally:
            await a.close()
            for peer in peers:
                await peer.close()
        return {
            "count": count,
            "rss_before": rss_before,
            "rss_open": rss_open,
            "form_cpu_s": cpu1 - cpu0,
            "form_wall_s": wall1 - wall0,
            "dissolve_cpu_s": cpu2 - cpu1,
            "dissolve_wall_s": wall2 - wall1,
        }

    return asyncio.run(run())


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


def run_child(count: int, timeout: float = 300.0, kind: str = "turn") -> dict[str, float]:
    """One size in a fresh process (``python -m benchmarks.scale --child KIND N``, KIND
    ``turn``, ``turn-heap`` or ``link``)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", "--child", kind, str(count)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"scale child ({count} allocations) took over {timeout:g} s") from None
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"scale child ({count} allocations) failed: {tail}")
    answer: dict[str, float] = json.loads(out.stdout)
    return answer


def run_sizes(
    sizes: Sequence[int], repeats: int, kind: str = "turn"
) -> dict[int, list[dict[str, float]]]:
    """Every run of every size, sizes in rotating order."""
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for i in range(repeats):
        for n in rotation(list(sizes), i):
            runs[n].append(run_child(n, kind=kind))
    return runs


def summarize(
    runs: dict[int, list[dict[str, float]]],
    heap: dict[int, list[dict[str, float]]] | None = None,
) -> dict[int, dict[str, float]]:
    """Medians per size: µs per allocation, µs per expiry, KB of RSS per allocation, RSS in
    MB; and KB of Python heap per allocation of the traced runs ``heap`` where given."""
    out: dict[int, dict[str, float]] = {}
    for n, items in runs.items():
        out[n] = {
            "alloc_us": statistics.median(r["allocate_s"] / n * 1e6 for r in items),
            "expire_us": statistics.median(r["expire_s"] / n * 1e6 for r in items),
            "kb_per_alloc": statistics.median(
                (r["rss_after"] - r["rss_before"]) / n / 1024 for r in items
            ),
            "rss_mb": statistics.median(r["rss_after"] / 1e6 for r in items),
        }
        if heap is not None and heap.get(n):
            out[n]["heap_kb_per_alloc"] = statistics.median(
                (r["heap_after"] - r["heap_before"]) / n / 1024 for r in heap[n]
            )
    return out


def summarize_links(runs: dict[int, list[dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Medians per size: CPU ms per link formed, dissolved, both; KB of RSS per open link."""
    out: dict[int, dict[str, float]] = {}
    for n, items in runs.items():
        out[n] = {
            "form_ms": statistics.median(r["form_cpu_s"] / n * 1e3 for r in items),
            "dissolve_ms": statistics.median(r["dissolve_cpu_s"] / n * 1e3 for r in items),
            "cpu_ms": statistics.median(
                (r["form_cpu_s"] + r["dissolve_cpu_s"]) / n * 1e3 for r in items
            ),
            "kb_per_link": statistics.median(
                (r["rss_open"] - r["rss_before"]) / n / 1024 for r in items
            ),
            "rss_mb": statistics.median(r["rss_open"] / 1e6 for r in items),
        }
    return out


def link_rows(stats: dict[int, dict[str, float]]) -> list[Result]:
    """The result rows of the links part (per link at 1,000 vs at 100)."""
    small, large = LINK_SIZES
    return [
        result(
            "scale",
            "ms/link",
            stats[large]["cpu_ms"],
            stats[small]["cpu_ms"],
            f"per-item at {small:,} links: CPU to form + dissolve, at {large:,}",
        ),
        result(
            "scale",
            "KB/link",
            stats[large]["kb_per_link"],
            stats[small]["kb_per_link"],
            f"per-item at {small:,} links: RSS growth (both ends), at {large:,}",
        ),
    ]


def link_available() -> bool:
    """Whether ``anchor_link.aio.endpoint`` exists (the links part of this metric)."""
    return importlib.util.find_spec("anchor_link.aio.endpoint") is not None


def rows(stats: dict[int, dict[str, float]]) -> list[Result]:
    """The result rows of per-size medians (:func:`summarize` of :data:`SIZES`)."""
    small, middle, large = SIZES
    out = [
        result(
            "scale",
            "µs/alloc",
            stats[n]["alloc_us"],
            stats[small]["alloc_us"],
            f"per-item at {small:,} allocations: allocate, at {n:,}",
        )
        for n in (middle, large)
    ]
    # The memory per item: the Python heap (tracemalloc, module docstring), compared with
    # 1,000 allocations (what 100 add is within the allocator's granularity).
    out.append(
        result(
            "scale",
            "KB/alloc",
            stats[large]["heap_kb_per_alloc"],
            stats[middle]["heap_kb_per_alloc"],
            f"per-item at {middle:,} allocations: Python heap growth (tracemalloc), at "
            f"{large:,}",
        )
    )
    out.append(
        result(
            "scale",
            "MB",
            stats[large]["rss_mb"],
            stats[small]["rss_mb"],
            f"RSS at {small:,} allocations (whole process): RSS at {large:,}",
        )
    )
    return out


def measure(quick: bool) -> list[Result]:
    """Per-item cost at each size vs the smallest, and the RSS at the largest."""
    repeats = 1 if quick else 3
    out = rows(summarize(run_sizes(SIZES, repeats), run_sizes(SIZES[1:], repeats, "turn-heap")))
    if not link_available():
        print(
            "anchor bench: scale: 100 / 1,000 ephemeral links formed and dissolved: not "
            "implemented yet (no anchor_link.aio.endpoint), no figure",
            file=sys.stderr,
        )
        return out
    try:
        out.extend(link_rows(summarize_links(run_sizes(LINK_SIZES, repeats, "link"))))
    except (RuntimeError, OSError) as exc:
        print(f"anchor bench: scale: links: could not run, no figure ({exc})", file=sys.stderr)
    return out


def plot(
    path: Path,
    stats: dict[int, dict[str, float]],
    links: dict[int, dict[str, float]] | None = None,
) -> None:
    """The scale curves as a PNG (matplotlib): per-allocation time, memory, and per-link
    costs when ``links`` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if links else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    sizes = sorted(stats)
    left, middle = axes[0], axes[1]
    left.plot(sizes, [stats[n]["alloc_us"] for n in sizes], "o-", label="allocate (server)")
    left.plot(sizes, [stats[n]["expire_us"] for n in sizes], "s-", label="expire (server)")
    left.set_xscale("log")
    left.set_xlabel("TURN allocations")
    left.set_ylabel("µs per allocation")
    left.set_ylim(bottom=0)
    left.set_title("TurnServer core: time per allocation")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    middle.plot(sizes, [stats[n]["rss_mb"] for n in sizes], "o-", label="process RSS, MB")
    middle.plot(
        sizes,
        [stats[n]["kb_per_alloc"] for n in sizes],
        "s-",
        label="RSS growth per allocation, KB",
    )
    middle.axhline(300, color="red", linestyle="--", linewidth=1, label="300 MB target")
    middle.set_xscale("log")
    middle.set_yscale("log")
    middle.set_xlabel("TURN allocations")
    middle.set_title("TurnServer core: memory")
    middle.grid(True, which="both", alpha=0.3)
    middle.legend(fontsize="small")
    if links:
        right = axes[2]
        counts = sorted(links)
        right.plot(counts, [links[n]["form_ms"] for n in counts], "o-", label="form, CPU ms")
        right.plot(
            counts, [links[n]["dissolve_ms"] for n in counts], "s-", label="dissolve, CPU ms"
        )
        right.plot(
            counts, [links[n]["kb_per_link"] / 100 for n in counts], "^-", label="RSS, 100 KB"
        )
        right.set_xscale("log")
        right.set_ylim(bottom=0)
        right.set_xlabel("ephemeral links at once (both ends)")
        right.set_ylabel("per link")
        right.set_title("anchor_link.aio.endpoint: cost per link")
        right.grid(True, which="both", alpha=0.3)
        right.legend(fontsize="small")
    fig.suptitle("anchor bench scale: medians per size, each size in a fresh process")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.scale [--quick] [--sizes N,...] [--repeats R] [--plot FILE]``:
    medians per size and every run as JSON; ``--child turn N`` is the per-size process."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help="comma-separated allocation counts")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the curves")
    parser.add_argument("--links", action="store_true", help="the ephemeral links part")
    args = parser.parse_args(argv)
    if args.child:
        kind, count = args.child[0], int(args.child[1])
        if kind == "link":
            print(json.dumps(link_child(count)))
        else:
            print(json.dumps(turn_child(count, traced=kind == "turn-heap")))
        return
    repeats = args.repeats or (1 if args.quick else 3)
    if args.links:
        sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else LINK_SIZES
        runs = run_sizes(sizes, repeats, "link")
        links = summarize_links(runs)
        print(json.dumps({"medians": links, "runs": runs}, indent=1))
        return
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    else:
        sizes = PLOT_SIZES if args.plot else SIZES
    runs = run_sizes(sizes, repeats)
    stats = summarize(runs)
    links = None
    if args.plot and link_available():
        links = summarize_links(run_sizes((100, 300, 1_000), repeats, "link"))
    print(json.dumps({"medians": stats, "links": links, "runs": runs}, indent=1))
    if args.plot:
        try:
            plot(args.plot, stats, links)
        except ImportError:
            print("matplotlib is not installed: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
