"""``connect``: ICE connect time on loopback, host candidates, regular nomination.

Two peers in this process, one event loop, both gathering host candidates on 127.0.0.1 only:
an Anchor :class:`~anchor_ice.net.Connection` pair with ``policy="standard"``
(:class:`~anchor_ice.nominator.StandardNominator`, RFC 8445 §8.1.1 regular nomination), and an
aioice ``Connection`` pair. One sample: both sides have gathered; the clock starts; each side
is given the other's credentials and candidates (then end-of-candidates) and both
``connect()`` calls run together; the clock stops when both have returned (each side has a
selected pair). Gathering and closing are outside the timed part. Samples of the two pairs
alternate, the medians are reported, and every sample checks that the pair selected on both
sides is the host pair on 127.0.0.1.

Pacing (RFC 8445 §14.2). Checks leave at most one per Ta, 50 ms by default: the controlling
side's first check goes at once, and the check that carries USE-CANDIDATE (regular
nomination, the check of the valid pair repeated) goes one Ta later. So with the defaults a
connect on a perfect path takes Ta plus the processing, whatever the implementation costs;
§14.2 lets an agent use another Ta "based on the characteristics of the associated data".
aioice paces its own checks with a fixed ``asyncio.sleep(0.02)`` (20 ms, not configurable)
and sends its nomination as soon as a check succeeds. So two rows:

* ``anchor (Ta 50 ms default)`` vs aioice's defaults;
* ``anchor (Ta 1 ms)``, labelled as such, vs the same aioice figure: the connect time left
  when pacing hardly counts, i.e. Anchor's own processing (1 ms of it is the pacing).

aioice leaves 127.0.0.1 out of its host addresses; this module replaces
``aioice.ice.get_host_addresses`` in its own process so that it gathers on 127.0.0.1 only,
and nothing leaves the loopback interface.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from anchor_ice.candidate import CandidateType
from anchor_ice.net import Connection

from . import Result, result, rotation

LOOPBACK = "127.0.0.1"
DEFAULT_TA = None
"""Use the agent's default Ta (50 ms, RFC 8445 §14.2)."""
SMALL_TA = 0.001
"""The labelled second row: Ta = 1 ms."""
TIMEOUT = 10.0
"""Seconds one connect may take before the sample fails."""

Sampler = Callable[[], Awaitable[float]]


def _aioice() -> Any:
    """aioice, made to gather on 127.0.0.1 only (in this process)."""
    import aioice
    import aioice.ice

    def loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return [LOOPBACK]

    aioice.ice.get_host_addresses = loopback_only
    return aioice


async def _exchange(a: Any, b: Any) -> None:
    """The signalling, both ways: credentials, candidates, end-of-candidates."""
    for src, dst in ((a, b), (b, a)):
        dst.remote_username = src.local_username
        dst.remote_password = src.local_password
        for candidate in src.local_candidates:
            await dst.add_remote_candidate(candidate)
        await dst.add_remote_candidate(None)


async def anchor_sample(ta: float | None = DEFAULT_TA) -> float:
    """Seconds for one Anchor pair to connect (see the module docstring)."""
    options: dict[str, Any] = {} if ta is None else {"ta": ta}
    a = Connection(True, host_ips=[LOOPBACK], policy="standard", **options)
    b = Connection(False, host_ips=[LOOPBACK], policy="standard", **options)
    try:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        start = time.perf_counter()
        await _exchange(a, b)
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), TIMEOUT)
        elapsed = time.perf_counter() - start
        for side in (a, b):
            pair = side.selected_pair
            if (
                pair is None
                or pair.local.type is not CandidateType.HOST
                or pair.remote.type is not CandidateType.HOST
                or pair.local.ip != LOOPBACK
            ):
                raise AssertionError(f"anchor selected an unexpected pair: {pair}")
    finally:
        await asyncio.gather(a.close(), b.close())
    return elapsed


async def aioice_sample() -> float:
    """Seconds for one aioice pair to connect."""
    aioice = _aioice()
    a = aioice.Connection(ice_controlling=True)
    b = aioice.Connection(ice_controlling=False)
    try:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        start = time.perf_counter()
        await _exchange(a, b)
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), TIMEOUT)
        elapsed = time.perf_counter() - start
        for side in (a, b):
            nominated = side._nominated.get(1)  # aioice has no public selected pair
            if nominated is None or nominated.local_candidate.host != LOOPBACK:
                raise AssertionError("aioice selected an unexpected pair")
    finally:
        await asyncio.gather(a.close(), b.close())
    return elapsed


SAMPLERS: dict[str, Sampler] = {
    "anchor": anchor_sample,
    "anchor_small_ta": lambda: anchor_sample(SMALL_TA),
    "aioice": aioice_sample,
}


async def _measure(repeats: int) -> dict[str, list[float]]:
    names = list(SAMPLERS)
    for name in names:  # warm up (imports, first sockets)
        await SAMPLERS[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in rotation(names, i):
            gc.collect()
            samples[name].append(await SAMPLERS[name]())
    return samples


def run_samples(quick: bool) -> dict[str, list[float]]:
    """Every sample, in seconds, of each pair (a fresh event loop, asyncio's)."""
    repeats = 7 if quick else 31
    return asyncio.run(_measure(repeats))


def measure(quick: bool) -> list[Result]:
    """Median connect time in ms: Anchor (default Ta, then Ta 1 ms) vs aioice."""
    samples = run_samples(quick)
    ms = {name: 1000 * statistics.median(values) for name, values in samples.items()}
    baseline = f"aioice {version('aioice')} Connection (its fixed 20 ms pacing)"
    return [
        result("connect", "ms", ms["anchor"], ms["aioice"], f"{baseline}; anchor at Ta 50 ms"),
        result(
            "connect",
            "ms",
            ms["anchor_small_ta"],
            ms["aioice"],
            f"{baseline}; anchor at Ta {SMALL_TA * 1000:g} ms",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.connect [--quick]``: medians, quartiles and every sample (ms)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connect")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    samples = run_samples(args.quick)
    out = {
        name: {
            "median_ms": 1000 * statistics.median(values),
            "quartiles_ms": [1000 * q for q in statistics.quantiles(values, n=4)],
            "samples_ms": [round(1000 * v, 3) for v in values],
        }
        for name, values in samples.items()
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
