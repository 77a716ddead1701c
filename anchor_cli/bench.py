"""``anchor bench``: the benchmarks of the repository's ``benchmarks/`` folder.

The benchmarks drive Anchor's packages from outside and compare them with baselines (aioice,
coturn, raw UDP) that a user of the toolkit does not need, so they are not part of the wheel:
``anchor bench`` runs ``python -m benchmarks`` from the checkout this package was installed
from (``pip install -e .``), and says what to do when there is none.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["add_parser", "checkout_root", "main"]

METRICS = "codec, checks, connect, relay, channel, scale, link, aiortc"


def checkout_root() -> Path | None:
    """The repository this package runs from, when it has its ``benchmarks/`` folder."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "benchmarks" / "__main__.py").is_file() else None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``anchor bench [METRIC]... [--json] [--quick]``."""
    bench = sub.add_parser(
        "bench",
        help="run the benchmarks against their baselines (from a checkout)",
        description="Runs each benchmark with its baseline in the same run and prints a "
        "table of medians and ratios (anchor / baseline); --json prints a list of "
        '{"metric", "unit", "anchor", "baseline", "baseline_name", "ratio"}. '
        f"Metrics: {METRICS}, or all (the default). The benchmarks live in the "
        "repository's benchmarks/ folder: run anchor bench from a checkout installed with "
        "pip install -e .",
    )
    bench.add_argument("metric", nargs="*", default=["all"], metavar="METRIC")
    bench.add_argument("--json", action="store_true", help="print one JSON list")
    bench.add_argument("--quick", action="store_true", help="a short run (seconds)")


def main(args: argparse.Namespace) -> int:
    """Runs ``python -m benchmarks`` in the checkout; returns its exit status."""
    root = checkout_root()
    if root is None:
        print(
            "anchor bench: the benchmarks are not installed with the package; clone the "
            "repository and run `pip install -e .[test]` there, then `anchor bench`",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    argv = [*args.metric, *(["--json"] if args.json else []), *(["--quick"] if args.quick else [])]
    return subprocess.run([sys.executable, "-m", "benchmarks", *argv], env=env).returncode
