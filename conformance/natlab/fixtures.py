"""The ``natlab`` pytest fixture: the lab built once, servers running, always torn down.

Not root (``ip netns`` needs CAP_SYS_ADMIN), or a tool missing: the tests are skipped with a
clear message, except under ``CI=true`` (CI is root), where that is a failure.

The fixture is module-scoped: a session-scoped one would stay up, and be timed, until the
whole session ends, through every unrelated test after it. Building costs under a second, so
each lab test module gets its own lab. At teardown it prints one timing line (lab up, tests,
lab down, and the running total over every lab module so far) and fails if that total exceeds
:data:`BUDGET` seconds (issue 7, must-show 7).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.helpers import in_ci

from .lab import NatLab

__all__ = ["BUDGET", "TOOLS", "natlab", "report", "require_lab"]

BUDGET = 300.0
"""Lab up + every lab test + lab down must stay under this many seconds: a guard on the
suite's length (it must stay under 15 minutes on 2 cores), not a speed claim. 180 s until
the lab gained the blocked-network, bottleneck and renomination modules (about 120 s more
on a loaded machine)."""

_spent: list[float] = []  # seconds of each lab module so far (up + tests + down)

TOOLS = {"ip": "iproute2", "nft": "nftables", "conntrack": "conntrack", "turnserver": "coturn"}
"""Programs the lab drives, and the Debian package of each."""


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(f"{message} (CI=true: the NAT lab must run in CI)", pytrace=False)
    pytest.skip(message)


def require_lab() -> None:
    """Skip (or fail under CI) unless the NAT lab can run here: root and its tools."""
    if os.geteuid() != 0:
        _unavailable(
            "NAT lab needs root (CAP_SYS_ADMIN for `ip netns`); run the suite as root, "
            "as ./scripts/test does in CI"
        )
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items()
               if shutil.which(tool) is None]  # fmt: skip
    if missing:
        _unavailable(f"NAT lab tools missing: {', '.join(missing)}")


def report(config: pytest.Config, line: str) -> None:
    """Write ``line`` to the terminal now, past pytest's output capture (timings, issue 7)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:  # pragma: no cover - terminal plugin disabled
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line(line)


@pytest.fixture(scope="module")
def natlab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatLab]:
    """The NAT lab with ``anchor serve`` and coturn running in ``pub``; NATs start as
    port-restricted cone (natA) and symmetric (natB); tests set the kinds they need."""
    require_lab()
    began = time.monotonic()
    lab = NatLab(tmp_path_factory.mktemp("natlab"))
    lab.build()
    try:
        servers = time.monotonic()
        # A test module may set ANCHOR_SERVE_ARGS (e.g. TURN users and --signal for links).
        lab.start_anchor_serve(getattr(request.module, "ANCHOR_SERVE_ARGS", ()))
        lab.start_coturn()
        lab.timings["servers"] = time.monotonic() - servers
    except BaseException:
        lab.teardown()
        raise
    up = time.monotonic() - began
    ready = time.monotonic()
    try:
        yield lab
    finally:
        tests = time.monotonic() - ready
        lab.teardown()
        total = time.monotonic() - began
        _spent.append(total)
        report(
            request.config,
            f"\nnatlab {request.node.name}: up {up:.2f} s (namespaces {lab.timings['build']:.2f} "
            f"s, servers {lab.timings['servers']:.2f} s), tests {tests:.2f} s, down "
            f"{lab.timings['teardown']:.2f} s; {total:.2f} s, all lab modules so far "
            f"{sum(_spent):.2f} s (budget {BUDGET:.0f} s)",
        )
    assert sum(_spent) < BUDGET, (
        f"NAT lab up + tests + down took {sum(_spent):.1f} s in all (budget {BUDGET:.0f} s)"
    )
