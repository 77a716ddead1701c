"""Run a scenario inside a fresh loopback-only network namespace, and prove it is gone after.

How it works (the outside half; :mod:`chromium.inside` is the inside half):

1. :func:`run_scenario` starts, by PID, in its own session::

       unshare --net --pid --fork --mount-proc --kill-child -- \
           python -m chromium.inside SCENARIO PARAMS DIR

   ``--net`` gives the child a new network namespace, which holds nothing but a ``lo`` that
   is down; ``--pid --fork`` makes the child PID 1 of a new PID namespace, so when it exits,
   however it exits, the kernel kills every process left in that namespace (Chromium, its
   zygote and renderers, ``anchor serve``, coturn) before ``unshare`` returns;
   ``--mount-proc`` gives it a ``/proc`` of its own (in a private mount namespace), so that
   PIDs read there are the namespace's (Chromium adjusts its renderers' OOM scores by PID);
   ``--kill-child`` sends SIGKILL to that PID 1 when ``unshare`` itself dies (the test killed
   it on a timeout), and ``unshare`` gets SIGKILL when the test process dies
   (``PR_SET_PDEATHSIG``).
2. Inside, :mod:`chromium.inside` brings ``lo`` up (``ip link set lo up``), checks that
   ``lo`` is the only interface, runs the scenario (which starts the servers, Chromium and
   Anchor's agent there and stops each by PID) and prints one line ``RESULT {json}`` with
   what it saw, including the inode of its network namespace.
3. Back outside, :class:`NamespaceRun` carries that result; :func:`namespace_processes`
   scans ``/proc/*/ns/net`` for processes still in that namespace: a test asserts there are
   none (the namespace is gone: nothing refers to it any more).

The whole exchange with Chromium (CDP websocket, STUN checks, TURN) therefore stays on the
namespace's own ``lo``: Chromium never sees the machine's real interfaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "OUTER_NETNS_ENV",
    "RESULT_PREFIX",
    "NamespaceRun",
    "ScenarioFailed",
    "namespace_processes",
    "netns_inode",
    "run_scenario",
    "unshare_binary",
]

RESULT_PREFIX = "RESULT "
"""Prefix of the one stdout line carrying a scenario's JSON result."""

OUTER_NETNS_ENV = "ANCHOR_OUTER_NETNS"
"""Environment variable telling the inside the caller's network namespace inode."""

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

CONFORMANCE = Path(__file__).resolve().parent.parent
REPO = CONFORMANCE.parent


def unshare_binary() -> str | None:
    """``unshare`` (util-linux), or None."""
    return shutil.which("unshare")


def netns_inode(pid: int | str = "self") -> int:
    """Inode of the network namespace of ``pid`` (its identity, as ``ip netns identify``)."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def namespace_processes(inode: int) -> list[int]:
    """PIDs (as seen from here) of every process whose network namespace has ``inode``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if netns_inode(entry) == inode:
                found.append(int(entry))
    return found


class ScenarioFailed(AssertionError):
    """The scenario inside the namespace failed, timed out, or printed no result."""


@dataclass
class NamespaceRun:
    """What one scenario run in its namespace produced."""

    scenario: str
    result: dict[str, Any]
    """The scenario's JSON result (see :mod:`chromium.scenarios`)."""
    elapsed: float
    """Seconds from starting ``unshare`` to its exit, Chromium start-up included."""
    unshare_pid: int
    """PID of the ``unshare`` process the run was started (and would be stopped) by."""
    outer_netns: int
    """Inode of the test's own network namespace."""
    stderr: str
    """What the inside printed on stderr (its log)."""

    @property
    def netns(self) -> int:
        """Inode of the namespace the scenario ran in."""
        return int(self.result["namespace"]["netns"])

    def left_behind(self, wait: float = 5.0) -> list[int]:
        """Processes still in the scenario's namespace, after up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            pids = namespace_processes(self.netns)
            if not pids or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent (the test) dies (PR_SET_PDEATHSIG),
    so that even a killed test run leaves no namespace behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _children(pid: int) -> list[int]:
    """PIDs of the children of ``pid`` (``/proc/PID/task/PID/children``)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _stop(proc: subprocess.Popen[str], wait: float = 10.0) -> None:
    """SIGKILL ``unshare`` by PID: ``--kill-child`` takes the namespace's PID 1 with it,
    and the kernel then every process of that PID namespace. Returns once no process is
    left in the scenario's network namespace (or after ``wait`` seconds)."""
    outer = netns_inode()
    inodes = set()
    for child in _children(proc.pid):
        with contextlib.suppress(OSError):
            inodes.add(netns_inode(child))
    inodes.discard(outer)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(wait)
    deadline = time.monotonic() + wait
    while any(namespace_processes(inode) for inode in inodes) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_scenario(
    scenario: str, params: dict[str, Any], workdir: Path, *, timeout: float = 90.0
) -> NamespaceRun:
    """Run ``scenario`` (a name of :data:`chromium.scenarios.SCENARIOS`) with ``params``
    inside a new loopback-only network + PID namespace; its files go to ``workdir``.

    Raises :class:`ScenarioFailed` with the inside's log when it fails, times out (then it
    is killed by PID, and its namespace with it) or prints no result."""
    unshare = unshare_binary()
    if unshare is None:
        raise ScenarioFailed("unshare (util-linux) is missing")
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(CONFORMANCE), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env[OUTER_NETNS_ENV] = str(netns_inode())
    argv = [
        unshare, "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "--",
        sys.executable, "-m", "chromium.inside", scenario, json.dumps(params), str(workdir),
    ]  # fmt: skip
    err_path = workdir / "inside.log"
    began = time.monotonic()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=str(REPO),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise ScenarioFailed(
                f"{scenario}: no result within {timeout} s (killed by PID {proc.pid}); "
                f"log:\n{err_path.read_text(errors='replace')[-6000:]}"
            ) from None
        except BaseException:
            _stop(proc)
            raise
    elapsed = time.monotonic() - began
    stderr = err_path.read_text(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise ScenarioFailed(
            f"{scenario}: exit status {proc.returncode}, "
            f"{'a' if lines else 'no'} result; stdout:\n{stdout[-3000:]}\nlog:\n{stderr[-6000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return NamespaceRun(
        scenario=scenario,
        result=result,
        elapsed=elapsed,
        unshare_pid=proc.pid,
        outer_netns=netns_inode(),
        stderr=stderr,
    )
