"""The inside half of :mod:`chromium.netns`: ``python -m chromium.inside SCENARIO PARAMS DIR``.

Runs as PID 1 of the fresh network + PID namespace ``unshare`` made. It refuses to go on
unless it is in another network namespace than its caller's and ``lo`` is its only interface,
brings ``lo`` up, runs the scenario on one asyncio loop, and prints ``RESULT {json}``: the
scenario's result plus ``namespace`` (the inodes and the interfaces seen). Diagnostics go
to stderr. Exit status 0 when the scenario returned, 1 when it raised.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from chromium.netns import OUTER_NETNS_ENV, RESULT_PREFIX, netns_inode


def _enter() -> dict[str, Any]:
    """Check the namespace is a new, empty one and bring its loopback up."""
    here = netns_inode()
    if str(here) == os.environ.get(OUTER_NETNS_ENV):
        raise SystemExit("refusing to run: still in the caller's network namespace")
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise SystemExit(f"not a loopback-only network namespace: interfaces {interfaces}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    # PID 1 ignores signals it has no handler for: let SIGTERM stop it like any process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return {
        "netns": here,
        "pidns": os.stat("/proc/self/ns/pid").st_ino,
        "pid": os.getpid(),
        "interfaces": interfaces,
    }


def main(argv: list[str]) -> int:
    """Entry point (see the module docstring)."""
    from chromium.scenarios import SCENARIOS

    name, params_text, workdir = argv
    began = time.monotonic()
    namespace = _enter()
    scenario = SCENARIOS[name]
    params: dict[str, Any] = json.loads(params_text)
    try:
        result: dict[str, Any] = asyncio.run(scenario(Path(workdir), **params))
    except BaseException:
        traceback.print_exc()
        return 1
    result["namespace"] = namespace
    result["inside_s"] = round(time.monotonic() - began, 3)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
