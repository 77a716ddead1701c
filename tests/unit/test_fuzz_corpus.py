"""Replay the fuzz corpus (fuzz/corpus/<harness>/*) through the harness functions.

Every file is a regression test: the seeds, the inputs the fuzzer kept for their coverage and
the inputs that once crashed a harness (``crash-*`` until fixed, then renamed
``regress-*``). The harnesses are plain functions (fuzz/harnesses.py); atheris is not needed.
One test per harness keeps the report short; a failure names the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.harnesses import HARNESSES

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"


def _files(name: str) -> list[Path]:
    directory = CORPUS / name
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def test_every_corpus_directory_has_a_harness() -> None:
    dirs = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert dirs <= set(HARNESSES), f"corpus without harness: {sorted(dirs - set(HARNESSES))}"


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_corpus_replays_cleanly(name: str) -> None:
    files = _files(name)
    assert files, f"fuzz/corpus/{name} has no inputs (python -m fuzz.seeds writes the seeds)"
    harness = HARNESSES[name]
    for path in files:
        try:
            harness(path.read_bytes())
        except Exception as exc:
            pytest.fail(f"{path.relative_to(CORPUS.parent.parent)}: {type(exc).__name__}: {exc}")


def test_harnesses_accept_empty_and_tiny_inputs() -> None:
    for harness in HARNESSES.values():
        for data in (b"", b"\x00", b"\xff" * 3, bytes(range(256))):
            harness(data)
