"""Pictures of ``anchor bench --json`` output: PNG plots for the documentation (issue 20).

``python -m benchmarks.plots BENCH.json [--out DIR] [--when TEXT] [--machine TEXT]`` reads a
list of result rows (docs/design.md "The command line": ``metric``, ``unit``, ``anchor``,
``baseline``, ``baseline_name``, ``ratio``) and writes two PNGs into ``DIR`` (default
``docs/img``):

- ``bench-ratios.png``: every row with a ratio target (:data:`benchmarks.TARGETS`), its
  ratio Anchor / baseline as a bar, the target as a tick, green when met; rows whose target
  bounds Anchor's own figure (connect in ms, RSS in MB) are drawn on the second picture;
- ``bench-rows.png``: one panel per row, Anchor's figure beside its baseline's in the row's
  unit, the ratio and the target in the panel's title.

Both titles carry when the figures were measured (``--when``; default: the JSON file's
modification time, UTC) and on what (``--machine``; default: this machine's cores, CPU
model, architecture and Python), since only ratios compare across machines
(benchmarks/README.md). Needs matplotlib (the ``plot`` extra); the Agg backend, no display.

The committed pictures come from ``anchor bench all --json > docs/img/bench-all.json``
followed by ``python -m benchmarks.plots docs/img/bench-all.json --when ... --machine ...``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import RESULT_KEYS, Result, target_of

__all__ = ["describe_machine", "load_rows", "main", "plot_ratios", "plot_rows"]

MET, SHORT, NONE = "#2e7d32", "#c62828", "#607d8b"
"""Bar colours: target met, target short, no target."""
BASELINE = "#b0bec5"


def describe_machine() -> str:
    """This machine in one line: cores, CPU model, architecture, CPython version."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    return (
        f"{cores} cores, {model}, {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def load_rows(path: Path) -> list[Result]:
    """The rows of an ``anchor bench --json`` file; raises ValueError when it is not one."""
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: not a non-empty list of result rows")
    for row in rows:
        if not isinstance(row, dict) or set(row) != set(RESULT_KEYS):
            raise ValueError(f"{path}: not a result row: {row!r}")
    return rows


def _label(row: Result, width: int = 44) -> str:
    """Row name for an axis: the metric and its baseline name, on at most two lines."""
    text = f"{row['metric']}: {row['baseline_name']}"
    return textwrap.fill(textwrap.shorten(text, 2 * width - 4, placeholder="…"), width)


def _colour(row: Result) -> str:
    target = target_of(row)
    if target is None:
        return NONE
    return MET if target.met(row) else SHORT


def _title(what: str, when: str, machine: str) -> str:
    return f"{what}\nmeasured {when}\non {machine}"


def plot_ratios(rows: Sequence[Result], out: Path, when: str, machine: str) -> Path:
    """``bench-ratios.png``: the ratio of every row whose target bounds a ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if (t := target_of(r)) is not None and t.on == "ratio"]
    if not chosen:
        raise ValueError("no row with a ratio target")
    fig, ax = plt.subplots(figsize=(11, 0.62 * len(chosen) + 2.2))
    ys = list(range(len(chosen)))[::-1]
    ratios = [float(r["ratio"]) for r in chosen]
    ax.barh(ys, ratios, color=[_colour(r) for r in chosen], height=0.6)
    for y, row in zip(ys, chosen, strict=True):
        target = target_of(row)
        assert target is not None
        ax.plot([target.value] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.annotate(
            f"{float(row['ratio']):.2f}x ({target.describe(str(row['unit']))})",
            (max(float(row["ratio"]), target.value), y), xytext=(6, 0), textcoords="offset points",
            va="center", fontsize=8,
        )  # fmt: skip
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(ys, [_label(r) for r in chosen], fontsize=7.5)
    ax.set_xlabel("ratio Anchor / baseline (black tick: target; green met, red short)")
    ax.set_xlim(0, max(max(ratios), max(target_of(r).value for r in chosen)) * 1.35)  # type: ignore[union-attr]
    ax.set_title(_title("anchor bench: ratios against the baselines", when, machine), fontsize=9)
    fig.tight_layout()
    path = out / "bench-ratios.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rows(rows: Sequence[Result], out: Path, when: str, machine: str) -> Path:
    """``bench-rows.png``: every row's two figures side by side, in its unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    lines = (len(rows) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(4.4 * columns, 3.3 * lines + 1.0))
    flat: list[Any] = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, row in zip(flat, rows, strict=False):
        values = [float(row["anchor"]), float(row["baseline"])]
        baseline = textwrap.fill(
            textwrap.shorten(str(row["baseline_name"]), 84, placeholder="…"), 44
        )
        bars = ax.bar(["Anchor", "baseline"], values, color=[_colour(row), BASELINE])
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 1000 else f"{v:.3g}" for v in values],
                     fontsize=7)  # fmt: skip
        ax.set_ylabel(str(row["unit"]), fontsize=8)
        target = target_of(row)
        goal = f", target {target.describe(str(row['unit']))}" if target else ""
        ax.set_title(
            f"{row['metric']}: {float(row['ratio']):.2f}x{goal}\nvs {baseline}", fontsize=7
        )
        ax.tick_params(labelsize=7)
        ax.margins(y=0.18)
    for ax in flat[len(rows) :]:
        ax.set_visible(False)
    fig.suptitle(_title("anchor bench: every row, Anchor and its baseline", when, machine),
                 fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path = out / "bench-rows.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__)
    parser.add_argument("json", type=Path, help="output of anchor bench --json")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="directory")
    parser.add_argument("--when", help="when the figures were measured (default: file time)")
    parser.add_argument("--machine", help="what they were measured on (default: this one)")
    args = parser.parse_args(argv)
    try:
        rows = load_rows(args.json)
        when = args.when or datetime.datetime.fromtimestamp(
            args.json.stat().st_mtime, datetime.UTC
        ).strftime("%Y-%m-%d %H:%M UTC")
        machine = args.machine or describe_machine()
        args.out.mkdir(parents=True, exist_ok=True)
        for path in (plot_ratios(rows, args.out, when, machine),
                     plot_rows(rows, args.out, when, machine)):  # fmt: skip
            print(path)
    except ImportError as exc:
        print(f"benchmarks.plots: matplotlib is needed (pip install -e '.[plot]'): {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    except (OSError, ValueError) as exc:
        print(f"benchmarks.plots: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
