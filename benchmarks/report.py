"""``anchor bench``: run the selected metrics and print a table, or JSON with ``--json``.

Pending metrics (not implemented yet) are named on stderr, one line each, and never get a
number. Exit status: 0 when every metric asked for ran; 1 when a metric named explicitly is
pending or a benchmark could not run (a missing baseline, a responder that answered wrongly,
a load generator that died: one line on stderr, and no row). ``all`` runs what exists and
names the rest on stderr, with status 0.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from . import REGISTRY, Result, names_of, pending, run, target_of


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def print_table(results: list[Result], quick: bool) -> None:
    """The rich table of the results, with each row's target and whether it is met."""
    from rich.console import Console
    from rich.table import Table

    title = f"anchor bench{' --quick' if quick else ''}: medians, ratio = anchor / baseline"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("anchor", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("vs")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    for row in results:
        target = target_of(row)
        if target is None:
            goal = ""
        elif target.met(row):
            goal = f"{target.describe(row['unit'])} [green]met[/]"
        else:
            goal = f"{target.describe(row['unit'])} [red]short[/]"
        table.add_row(
            row["metric"],
            f"{_fmt(row['anchor'])} {row['unit']}",
            f"{_fmt(row['baseline'])} {row['unit']}",
            row["baseline_name"],
            f"{row['ratio']:.2f}x",
            goal,
        )
    Console().print(table)


def main(selection: Sequence[str], *, as_json: bool, quick: bool) -> int:
    """Entry point of ``anchor bench [METRIC]... [--json] [--quick]``; returns the exit status."""
    try:
        names = names_of(selection)
    except KeyError as exc:
        print(f"anchor bench: unknown metric {exc.args[0]!r}", file=sys.stderr)
        return 2
    status = 0
    waiting = pending(names)
    for name in waiting:
        print(
            f"anchor bench: {name}: not implemented yet, no figure "
            f"({REGISTRY[name].what})",
            file=sys.stderr,
        )
    if waiting and "all" not in selection:
        status = 1
    results: list[Result] = []
    for name in names:
        if name in waiting:
            continue
        if not as_json:
            print(f"anchor bench: running {name}{' (quick)' if quick else ''}...", file=sys.stderr)
        try:
            results.extend(run([name], quick))
        except ImportError as exc:
            print(f"anchor bench: {name}: cannot run its baseline: {exc}", file=sys.stderr)
            status = 1
        except (AssertionError, OSError, RuntimeError, TimeoutError) as exc:
            # A responder that answered wrongly, a load generator that died: no number.
            print(f"anchor bench: {name}: failed: {exc!r}", file=sys.stderr)
            status = 1
    if as_json:
        out: list[dict[str, Any]] = results
        print(json.dumps(out))
    elif results:
        print_table(results, quick)
    return status
