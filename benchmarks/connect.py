"""``connect``: ICE connect time on loopback, host candidates, regular nomination.

Two peers in this process, one event loop, both gathering host candidates on 127.0.0.1 only:
an Anchor :class:`~anchor_ice.aio.connection.Connection` pair with ``policy="standard"``
(:class:`~anchor_ice.nominator.StandardNominator`, RFC 8445 §8.1.1 regular nomination), and an
aioice ``Connection`` pair. One sample: both sides have gathered; the clock starts; each side
is given the other's credentials and candidates (then end-of-candidates) and both
``connect()`` calls run together; the clock stops when both have returned (each side has a
selected pair). Gathering and closing are outside the timed part. Samples of the three
configurations (two Anchor rows, below, and aioice) alternate, the medians are reported, and every sample checks that the pair selected on both
sides is the host pair on 127.0.0.1.

Pacing (RFC 8445 §14.2). An agent sends at most one new check per Ta: the controlling side's
first check goes at once, and the check that carries USE-CANDIDATE (regular nomination
repeats the check of the valid pair, §8.1.1, through the triggered-check queue, so it waits
its Ta like any check) one Ta later. So a connect on a perfect path takes Ta plus a round
trip plus the processing, whatever the implementation costs. Ta is the higher of the two
agents' proposals, a peer that proposes none counting as the default 50 ms, and "MUST NOT"
go below 5 ms (§14.2). Anchor proposes 5 ms (``Connection.local_ta``, ``a=ice-pacing``).
aioice paces its own checks with a fixed ``asyncio.sleep(0.02)`` (20 ms, not configurable)
and sends its nomination as soon as a check succeeds. So two Anchor rows, both with
``Connection``'s default settings:

* ``anchor``: the signalling carries what aioice's does (credentials, candidates,
  end-of-candidates), no Ta proposal: Ta is RFC 8445's default, 50 ms;
* ``anchor_floor``: the signalling also carries each side's Ta proposal (``remote_ta =
  peer.local_ta``, what ``a=ice-pacing`` carries): Ta = 5 ms, the lowest RFC 8445 permits
  (the Ta = 1 ms row this replaces was below it).

Each sample checks the Ta the agents used (``agent.effective_ta``). The 5 ms floor is for
all agents of a process taken together (one pacer per process by default,
:mod:`anchor_ice.aio.pacing`); here the two agents stand for two hosts, so each gets a
:class:`~anchor_ice.aio.pacing.TransactionPacer` of its own (``pacer=``), and they are paced
each on its own (the controlled side's first check leaves at the same moment as the
controlling side's). The loop wakes timers with 1 ms granularity (epoll), so the nominating
check leaves up to about 1 ms after its Ta.

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

from anchor_ice.agent import TA, TA_MIN
from anchor_ice.aio.connection import Connection
from anchor_ice.aio.pacing import TransactionPacer
from anchor_ice.candidate import CandidateType

from . import Result, result, rotation

LOOPBACK = "127.0.0.1"
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


async def _exchange(a: Any, b: Any, ta: bool = False) -> None:
    """The signalling, both ways: credentials, candidates, end-of-candidates; with ``ta``
    also each side's Ta proposal (Anchor only: ``a=ice-pacing``)."""
    for src, dst in ((a, b), (b, a)):
        dst.remote_username = src.local_username
        dst.remote_password = src.local_password
        if ta:
            dst.remote_ta = src.local_ta
        for candidate in src.local_candidates:
            await dst.add_remote_candidate(candidate)
        await dst.add_remote_candidate(None)


async def anchor_sample(signal_ta: bool = False) -> float:
    """Seconds for one Anchor pair with default settings to connect; ``signal_ta``: the
    signalling carries the Ta proposals (see the module docstring)."""
    # Two hosts modelled in one process: a pacer each (RFC 8445 §14.2 is per host).
    a = Connection(True, host_ips=[LOOPBACK], policy="standard", pacer=TransactionPacer())
    b = Connection(False, host_ips=[LOOPBACK], policy="standard", pacer=TransactionPacer())
    try:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        start = time.perf_counter()
        await _exchange(a, b, ta=signal_ta)
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), TIMEOUT)
        elapsed = time.perf_counter() - start
        expected_ta = TA_MIN if signal_ta else TA
        for side in (a, b):
            if side.agent.effective_ta != expected_ta:
                raise AssertionError(f"anchor paced at Ta {side.agent.effective_ta}")
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
    "anchor_floor": lambda: anchor_sample(signal_ta=True),
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
    """Median connect time in ms: Anchor (no Ta signalled: 50 ms; then both proposals
    signalled: 5 ms, the RFC 8445 floor) vs aioice."""
    samples = run_samples(quick)
    ms = {name: 1000 * statistics.median(values) for name, values in samples.items()}
    baseline = f"aioice {version('aioice')} Connection (its fixed 20 ms pacing)"
    return [
        result(
            "connect",
            "ms",
            ms["anchor"],
            ms["aioice"],
            f"{baseline}; anchor defaults, no Ta signalled: Ta 50 ms (RFC 8445 default)",
        ),
        result(
            "connect",
            "ms",
            ms["anchor_floor"],
            ms["aioice"],
            f"{baseline}; anchor defaults, Ta proposals signalled (a=ice-pacing): "
            f"Ta {TA_MIN * 1000:g} ms (RFC 8445 floor)",
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
