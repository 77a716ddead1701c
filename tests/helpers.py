"""Shared helpers of the test suites: free ports, and running the `anchor` command (start
servers, wait for their "listening" lines, stop them by PID)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import pytest

ANCHOR = [sys.executable, "-m", "anchor_cli"]
LOOPBACK = "127.0.0.1"


def in_ci() -> bool:
    """True when running under CI (``CI`` set to anything but empty/0/false/no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_peer(message: str) -> NoReturn:
    """A peer the test needs is missing: skip on a developer's machine, fail under CI."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing peer is a failure)", pytrace=False)
    pytest.skip(message)


def require_program(name: str, package: str) -> str:
    """Full path of the program ``name`` (from the Debian package ``package``), or
    :func:`missing_peer`."""
    path = shutil.which(name)
    if path is None:
        missing_peer(f"{name} not found on PATH; install the Debian package {package!r} "
                     "(scripts/test does it when run as root)")  # fmt: skip
    return path


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _bind(kind: str, host: str, port: int) -> socket.socket:
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    sock = socket.socket(_family(host), sock_type)
    try:
        if kind == "tcp":
            # Let a port that just left TIME_WAIT count as free, as coturn's own bind does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _kinds(kind: str) -> tuple[str, ...]:
    if kind not in ("udp", "tcp", "both"):
        raise ValueError(f"kind must be 'udp', 'tcp' or 'both', not {kind!r}")
    return ("udp", "tcp") if kind == "both" else (kind,)


def free_port(kind: str = "udp", host: str = LOOPBACK) -> int:
    """A port on ``host`` free for ``kind`` ("udp", "tcp", or "both" for the same number)."""
    kinds = _kinds(kind)
    for _ in range(200):
        first = _bind(kinds[0], host, 0)
        port: int = first.getsockname()[1]
        others: list[socket.socket] = []
        try:
            for other in kinds[1:]:
                others.append(_bind(other, host, port))
        except OSError:
            continue
        finally:
            first.close()
            for sock in others:
                sock.close()
        return port
    raise RuntimeError(f"no free {kind} port on {host}")


def free_port_block(count: int, kind: str = "udp", hosts: Sequence[str] = (LOOPBACK,)) -> int:
    """First port of ``count`` consecutive ports free for ``kind`` on every one of ``hosts``.

    Blocks are picked below Linux's ephemeral range (32768-60999), so that a port handed out
    by ``bind(0)`` elsewhere in the suite never lands in one.
    """
    kinds = _kinds(kind)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32700 - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for host in hosts:
                    for k in kinds:
                        socks.append(_bind(k, host, port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError(f"no block of {count} free {kind} ports on {hosts}")


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


class ServeLines(list[str]):
    """The "listening" lines of a running `anchor serve`, with its process (``process``)."""

    process: subprocess.Popen[str]


@contextlib.contextmanager
def anchor_serve(*args: str, expect: int = 1, timeout: float = 20) -> Iterator[ServeLines]:
    """Start `anchor serve ARGS...`, wait for ``expect`` "listening" lines, yield them, and
    stop the server by PID with SIGTERM (asserting a clean exit 0) unless it has exited."""
    proc = subprocess.Popen(
        [*ANCHOR, "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines = ServeLines()
    lines.process = proc
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


def scrape(port: int, host: str = LOOPBACK) -> dict[str, float]:
    """GET http://HOST:PORT/metrics of `anchor serve --metrics` as {'name{labels}': value}."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    body = b"".join(chunks).split(b"\r\n\r\n", 1)[1].decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
