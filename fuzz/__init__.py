"""Coverage-guided fuzzing of Anchor's parsers and sans-I/O cores (issue 9).

Each harness in :mod:`fuzz.harnesses` is a plain function ``harness(data: bytes) -> None``:
it feeds the bytes to one part of Anchor and lets an exception escape only when that part
broke its contract (an exception other than the project's typed errors, or a violated
invariant, raised as :class:`fuzz.common.Violation`). The functions import nothing from
atheris, so ``tests/unit/test_fuzz_corpus.py`` replays ``fuzz/corpus/<harness>/*`` through them
as plain regression tests; ``python -m fuzz.run <harness>`` puts them under atheris
(libFuzzer), and ``scripts/fuzz`` runs them all.
"""
