"""``python -m benchmarks [METRIC]... [--json] [--quick]``: what ``anchor bench`` runs.

The benchmarks drive the installed packages from outside; they live in the repository (not
in the wheel), so ``anchor bench`` runs this module from a checkout.
"""

from __future__ import annotations

import argparse
import sys

from . import REGISTRY
from .report import main


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anchor bench")
    parser.add_argument("metric", nargs="*", default=["all"], choices=[*REGISTRY, "all"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(sys.argv[1:])
    sys.exit(main(args.metric or ["all"], as_json=args.json, quick=args.quick))
