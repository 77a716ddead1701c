"""Run the `anchor` command in tests: start servers, wait for their "listening" lines, stop them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

ANCHOR = [sys.executable, "-m", "anchor_ice.cli"]


def run_anchor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `anchor ARGS...` to completion and return its result (text mode)."""
    return subprocess.run(
        [*ANCHOR, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def anchor_json(*args: str, timeout: float = 60) -> Any:
    """Run `anchor ARGS... --json`, assert it exits 0, and parse its last stdout line."""
    result = run_anchor(*args, "--json", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def anchor_serve(*args: str, expect: int = 1, timeout: float = 20) -> Iterator[list[str]]:
    """Start `anchor serve ARGS...`, wait for ``expect`` "listening" lines, yield them, and
    stop the server by PID with SIGTERM (asserting a clean exit 0)."""
    proc = subprocess.Popen(
        [*ANCHOR, "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        while len(lines) < expect:
            if time.monotonic() > deadline:
                raise TimeoutError(f"anchor serve did not get ready: {lines}")
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"anchor serve exited early ({proc.wait()}): {err}")
            if line.startswith("listening "):
                lines.append(line.strip())
        yield lines
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            assert code == 0, f"anchor serve exited {code}"
