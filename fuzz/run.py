#!/usr/bin/env python3
"""Run one harness under atheris (libFuzzer): ``python -m fuzz.run NAME [libFuzzer flags]``.

The harness name can also come from ``ANCHOR_FUZZ_HARNESS``: libFuzzer re-executes this
file for ``-merge=1`` with its own arguments only, and the variable carries the name over.
Only Anchor's packages and the harnesses are instrumented for coverage.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # executed as a file (libFuzzer's -merge child)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # type: ignore[import-untyped]

_ENV = "ANCHOR_FUZZ_HARNESS"


def main() -> None:
    args = list(sys.argv)
    if len(args) > 1 and not args[1].startswith("-") and not os.path.isdir(args[1]):
        os.environ[_ENV] = args.pop(1)
    name = os.environ.get(_ENV, "")
    with atheris.instrument_imports(include=["anchor_stun", "anchor_turn", "anchor_ice", "fuzz"]):
        from fuzz.harnesses import HARNESSES
    if name not in HARNESSES:
        sys.exit(f"fuzz.run: unknown harness {name!r}; one of: {', '.join(HARNESSES)}")
    args[0] = os.path.abspath(__file__)
    atheris.Setup(args, HARNESSES[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
