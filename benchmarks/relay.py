"""``relay``: ChannelData packets relayed per second by ``anchor serve``, vs coturn.

Set-up, all on 127.0.0.1, every process started here and stopped here by its PID:

* a UDP **echo peer** (``python -m benchmarks.relay echo``, standard library only): sends
  every datagram back to where it came from;
* the two **servers**, both running for the whole measurement: ``anchor serve --user ...
  --allow-loopback-peers`` (the product's command, :class:`~anchor_turn.aio.server.
  TurnServerRunner`) and coturn (``turnserver -n --lt-cred-mech --allow-loopback-peers``,
  UDP only), each on free ports with its own small relay port range;
* one **allocation per server**, made by this process over a plain UDP socket with
  :class:`~anchor_turn.client.TurnClient` (long-term credentials, RFC 8656 §7), with a
  channel (0x4000) bound to the echo peer (§12); one ChannelData frame is sent through each
  and its echo checked before anything is timed;
* the **load generator** (``python -m benchmarks.relay generate``, standard library only), a
  separate process that inherits both allocated sockets (``pass_fds``): per run it keeps a
  bounded window of ChannelData frames (100-byte payloads, RFC 8656 §12.4) in flight on one
  of them and counts the echoes per second. Path of one packet: generator -> server
  (ChannelData) -> relayed address -> echo peer -> relayed address -> server -> generator
  (ChannelData): the server relays two datagrams per echo, and the row counts echoes.

The generator and the peer are the same for both servers; runs alternate (anchor, coturn,
coturn, anchor, ...), each bounded in time after a warm-up, and the medians are reported.
Placement is left to the kernel: three busy processes (server, generator, echo peer) share
the machine's cores, the same way for both servers (coturn runs its default relay threads).
``python -m benchmarks.relay --pin`` puts the servers on the first core and the generator
and the echo peer on the second instead; on two cores the load side then sets the pace
for both servers. Each run also reports the CPU share of the generator, of the echo peer
and of the server (all its threads): ``rate / server_cpu`` is what the server relays per
CPU-second, a figure that does not depend on who set the pace.

``--workers`` rows (issue 21, :func:`run_worker_samples`, :func:`worker_rows`): ``anchor serve
--workers 2`` against ``--workers 1`` and coturn, each carrying :data:`FLOWS` allocations
driven at once by as many generator processes; for ``--workers 2`` one allocation per worker
(the relayed port's slice of the range tells which worker holds it). The server's CPU time
is its process tree's (:func:`tree_cpu_seconds`: the supervisor and its workers).

Everything stops by itself: runs are bounded in seconds, the generator and the echo peer
exit when their stdin closes or after :data:`IDLE_EXIT` idle seconds, and the servers are
stopped with SIGTERM (then SIGKILL) in a ``finally``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import Result, result, rotation

LOOPBACK = "127.0.0.1"
USER, PASSWORD, REALM = "bench", "bench-secret", "anchor.bench"
CHANNEL = 0x4000
PAYLOAD = 100
"""Bytes of application data per ChannelData frame (issue 8)."""
WINDOW = 128
"""ChannelData frames the generator keeps in flight (with 32, the generator and the echo
peer, not the servers, set the pace: neither server got past half a core)."""
STALL = 0.05
"""Seconds without an echo after which the frames in flight count as lost."""
MAX_SECONDS = 30.0
"""Upper bound of one run, whatever it asks for."""
IDLE_EXIT = 120.0
"""The generator and the echo peer exit when nothing comes for this long."""
RELAY_PORTS = 16
"""Size of each server's relay port range."""
FLOWS = 2
"""Allocations loaded at once in the ``--workers`` rows, one per worker of ``--workers 2``
(each by its own generator process)."""

_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


# ============================================================ child processes (stdlib only)


def echo_main() -> None:
    """``python -m benchmarks.relay echo``: the UDP echo peer (see the module docstring)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    sys.stdout.write(json.dumps({"port": sock.getsockname()[1]}) + "\n")
    sys.stdout.flush()
    recvfrom, sendto = sock.recvfrom, sock.sendto
    stdin = sys.stdin
    while True:
        ready, _, _ = select.select([sock, stdin], [], [], IDLE_EXIT)
        if not ready or (stdin in ready and not stdin.readline()):
            return
        if sock not in ready:
            continue
        for _ in range(256):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            with contextlib.suppress(BlockingIOError, InterruptedError):
                sendto(data, addr)


def blast(
    sock: socket.socket, frames: list[bytes], window: int, seconds: float, warmup: int
) -> dict[str, float]:
    """Keep ``window`` frames in flight on the connected ``sock``; after ``warmup`` echoes,
    count echoes (ChannelData of :data:`CHANNEL`) for ``seconds``."""
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while True:  # late echoes of the previous run
            sock.recv(65535)
    sock.settimeout(STALL)
    send, recv = sock.send, sock.recv
    expect = frames[0][:2]
    count = len(frames)
    index = sent = 0
    for _ in range(window):
        send(frames[index])
        index = (index + 1) % count
        sent += 1
    outstanding = window
    answered = lost = bad = 0
    seconds = min(seconds, MAX_SECONDS)
    start = time.perf_counter()
    hard_stop = start + seconds + 10.0
    deadline = 0.0
    cpu = time.process_time()
    warm = max(warmup, 1)
    while True:
        try:
            data = recv(65535)
        except TimeoutError:
            lost += outstanding
            now = time.perf_counter()
            if (deadline and now >= deadline) or now >= hard_stop:
                break
            for _ in range(window):
                send(frames[index])
                index = (index + 1) % count
                sent += 1
            outstanding = window
            continue
        if outstanding:
            outstanding -= 1
        if warm:
            warm -= 1
            if not warm:
                start = time.perf_counter()
                cpu = time.process_time()
                deadline = start + seconds
        elif data[:2] == expect:
            answered += 1
            if not answered & 127 and time.perf_counter() >= deadline:
                break
        else:
            bad += 1
        if outstanding < window:
            send(frames[index])
            index = (index + 1) % count
            sent += 1
            outstanding += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return {
        "answered": answered,
        "elapsed": elapsed,
        "rate": answered / elapsed if elapsed > 0 else 0.0,
        "lost": lost,
        "bad": bad,
        "sent": sent,
        "cpu": cpu / elapsed if elapsed > 0 else 0.0,
    }


def generate_main() -> None:
    """``python -m benchmarks.relay generate``: JSON commands on stdin, one answer each.

    ``{"cmd": "run", "fd": N, "frames": [base64...], "window": W, "seconds": S,
    "warmup": K}`` runs :func:`blast` on the inherited, connected socket ``N``;
    ``{"cmd": "quit"}``, the end of stdin or :data:`IDLE_EXIT` idle seconds: exit.
    """
    stdin = sys.stdin
    while True:
        ready, _, _ = select.select([stdin], [], [], IDLE_EXIT)
        if not ready:
            return
        line = stdin.readline()
        if not line:
            return
        command = json.loads(line)
        if command.get("cmd") == "quit":
            return
        if command.get("cmd") == "run":
            sock = socket.socket(fileno=os.dup(int(command["fd"])))
            try:
                answer: dict[str, Any] = dict(
                    blast(
                        sock,
                        [base64.b64decode(f) for f in command["frames"]],
                        int(command["window"]),
                        float(command["seconds"]),
                        int(command["warmup"]),
                    )
                )
            finally:
                sock.close()
        else:
            answer = {"error": f"unknown command {command.get('cmd')!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


# ============================================================ the benchmark process


def channel_frames(count: int = 64) -> list[bytes]:
    """ChannelData frames on :data:`CHANNEL` with distinct 100-byte payloads."""
    header = struct.Struct("!HH")
    return [
        header.pack(CHANNEL, PAYLOAD) + (i.to_bytes(4, "big") * (PAYLOAD // 4))
        for i in range(count)
    ]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _free_udp_block(size: int) -> int:
    """The first of ``size`` consecutive UDP ports free on 127.0.0.1 right now."""
    for _ in range(200):
        base = _free_udp_port()
        if base + size > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free UDP ports on 127.0.0.1")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


class _Process:
    """A child process, stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], **options: Any) -> None:
        self.name = name
        self.popen = subprocess.Popen(argv, start_new_session=True, **options)
        self.relay_base = 0
        """First port of a server's relay range (set by :func:`start_anchor`)."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        popen = self.popen
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(popen.pid, signal.SIGKILL)
                popen.wait(5.0)
        for stream in (popen.stdout, popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _stun_ping(port: int) -> bool:
    from anchor_stun.message import Message, MessageClass, Method

    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), []).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(request, (LOOPBACK, port))
            return sock.recv(2048)[8:20] == request[8:20]
        except OSError:
            return False


def _wait_ready(process: _Process, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early ({process.popen.returncode})")
        if _stun_ping(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not answer STUN on 127.0.0.1:{port}")


def start_anchor(workdir: Path, workers: int = 1) -> tuple[_Process, int]:
    """``anchor serve`` on a free loopback port (``--workers N`` beyond 1); returns it and
    the port, once every worker is ready (the supervisor prints ``listening`` only then)."""
    port = _free_udp_port()
    relay = _free_udp_block(RELAY_PORTS)
    argv = [
        sys.executable, "-m", "anchor_cli", "serve",
        "--listen", f"{LOOPBACK}:{port}",
        "--relay-ip", LOOPBACK,
        "--min-port", str(relay), "--max-port", str(relay + RELAY_PORTS - 1),
        "--realm", REALM, "--user", f"{USER}:{PASSWORD}",
        "--allow-loopback-peers",
        *(["--workers", str(workers)] if workers > 1 else []),
    ]  # fmt: skip
    log_path = workdir / f"anchor-serve-{port}.log"
    log = open(log_path, "w")
    process = _Process(
        "anchor serve", argv, stdout=log, stderr=subprocess.STDOUT, env=_child_env(),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    process.relay_base = relay
    _wait_ready(process, port)
    # A client hashed to a worker not listening yet would move once it is (SO_REUSEPORT).
    deadline = time.monotonic() + 30.0
    while f"listening udp {LOOPBACK}:{port}" not in log_path.read_text():
        if process.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"anchor serve --workers {workers} did not get ready")
        time.sleep(0.05)
    return process, port


def start_coturn(workdir: Path) -> tuple[_Process, int]:
    """coturn (``turnserver``) on a free loopback port, UDP only; returns it and the port."""
    binary = shutil.which("turnserver")
    if binary is None:
        raise ImportError("coturn's turnserver is not installed (apt-get install coturn)")
    port = _free_udp_port()
    relay = _free_udp_block(RELAY_PORTS)
    argv = [
        binary, "-n",
        "--listening-ip", LOOPBACK, "--relay-ip", LOOPBACK,
        "--listening-port", str(port),
        "--min-port", str(relay), "--max-port", str(relay + RELAY_PORTS - 1),
        "--lt-cred-mech", "--user", f"{USER}:{PASSWORD}", "--realm", REALM,
        "--allow-loopback-peers",
        "--no-cli", "--no-tcp", "--no-tls", "--no-dtls",
        "--log-file", "stdout", "--simple-log",
        "--pidfile", str(workdir / "turnserver.pid"),
        "--userdb", str(workdir / "turndb"),
    ]  # fmt: skip
    log = open(workdir / "turnserver.log", "w")
    process = _Process(
        "turnserver", argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    log.close()
    _wait_ready(process, port)
    return process, port


def coturn_version() -> str:
    """``coturn X.Y.Z`` from ``turnserver --version``, or ``coturn``."""
    binary = shutil.which("turnserver")
    if binary is None:
        return "coturn"
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "coturn"
    text = (out.stdout + out.stderr).strip().splitlines()
    return f"coturn {text[-1].strip()}" if text else "coturn"


class Allocation:
    """One allocation with a channel to the echo peer, made over a blocking UDP socket by
    pumping :class:`~anchor_turn.client.TurnClient` by hand."""

    def __init__(self, server_port: int, peer_port: int, timeout: float = 10.0) -> None:
        from anchor_turn.client import TurnClient
        from anchor_turn.events import (
            AllocationCreated,
            AllocationFailed,
            ChannelBindFailed,
            ChannelBound,
        )

        self.server = (LOOPBACK, server_port)
        self.peer = (LOOPBACK, peer_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((LOOPBACK, 0))
        self.sock.connect(self.server)
        self.client = TurnClient(self.server, USER, PASSWORD)
        self.relayed: tuple[str, int] = ("", 0)
        """The relayed transport address (XOR-RELAYED-ADDRESS)."""
        self.client.allocate(time.monotonic())
        deadline = time.monotonic() + timeout
        bound = False
        while not bound:
            self._pump()
            while (event := self.client.next_event()) is not None:
                if isinstance(event, AllocationCreated):
                    self.relayed = event.relayed
                    self.client.bind_channel(self.peer, time.monotonic(), CHANNEL)
                elif isinstance(event, ChannelBound):
                    bound = True
                elif isinstance(event, AllocationFailed | ChannelBindFailed):
                    self.close()
                    raise RuntimeError(f"TURN on 127.0.0.1:{server_port}: {event}")
            if bound:
                break
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"TURN on 127.0.0.1:{server_port}: no channel in time")
            self._receive(0.05)

    def _pump(self) -> None:
        now = time.monotonic()
        timer = self.client.next_timer()
        if timer is not None and timer <= now:
            self.client.handle_timer(now)
        for transmit in self.client.datagrams_to_send(now):
            self.sock.send(transmit.data)

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65535)
        except TimeoutError:
            return
        self.client.receive_datagram(data, self.server, time.monotonic())

    def check_echo(self) -> None:
        """One frame through the relay and back, unchanged, before anything is timed."""
        frame = channel_frames(1)[0]
        self.sock.settimeout(2.0)
        for _ in range(5):
            self.sock.send(frame)
            try:
                if self.sock.recv(65535)[: len(frame)] == frame:
                    return
            except TimeoutError:
                continue
        raise AssertionError(f"no echo through the relay on 127.0.0.1:{self.server[1]}")

    def close(self) -> None:
        """Release the allocation (best effort: one Refresh with LIFETIME 0) and close."""
        with contextlib.suppress(Exception):
            self.client.release(time.monotonic())
            self._pump()
        self.sock.close()


class _Generator:
    def __init__(self, fds: list[int]) -> None:
        self.process = _Process(
            "load generator",
            [sys.executable, "-m", "benchmarks.relay", "generate"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=fds,
            env=_child_env(),
        )

    def run(self, fd: int, settings: dict[str, Any]) -> dict[str, Any]:
        self.start(fd, settings)
        return self.finish(settings)

    def start(self, fd: int, settings: dict[str, Any]) -> None:
        popen = self.process.popen
        assert popen.stdin is not None
        popen.stdin.write(json.dumps({"cmd": "run", "fd": fd, **settings}) + "\n")
        popen.stdin.flush()

    def finish(self, settings: dict[str, Any]) -> dict[str, Any]:
        popen = self.process.popen
        assert popen.stdout is not None
        ready, _, _ = select.select([popen.stdout], [], [], settings["seconds"] + 30.0)
        line = popen.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError("the load generator died or hung")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer


def _pin(servers: list[int], load: list[int]) -> bool:
    """Servers (every thread) on the first core, the load on the second. False if not
    possible (fewer than two cores, or no sched_setaffinity)."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return False
    for pid in servers:
        for tid in _threads(pid):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, {cores[0]})
    for pid in load:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cores[1]})
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its threads so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` and of every process descended from it (the workers of
    ``anchor serve --workers N``), read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
        todo.extend(children.get(current, []))
    return total


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


@contextlib.contextmanager
def _testbed() -> Iterator[dict[str, Any]]:
    """Echo peer, both servers, both allocations; everything stopped on the way out."""
    stack = contextlib.ExitStack()
    with stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="anchor-relay-")))
        echo, peer_port = _start_echo(stack)
        servers: dict[str, _Process] = {}
        allocations: dict[str, Allocation] = {}
        for name, start in (("anchor", start_anchor), ("coturn", start_coturn)):
            process, port = start(workdir)
            stack.callback(process.stop)
            servers[name] = process
            allocation = Allocation(port, peer_port)
            stack.callback(allocation.close)
            allocation.check_echo()
            allocations[name] = allocation
        yield {"echo": echo, "servers": servers, "allocations": allocations}


def run_samples(quick: bool, pin: bool = False, window: int = WINDOW) -> dict[str, Any]:
    """Every run of both servers (see the module docstring)."""
    repeats = 5 if quick else 15
    settings = {
        "frames": [base64.b64encode(f).decode() for f in channel_frames()],
        "window": window,
        "seconds": 0.25 if quick else 0.6,
        "warmup": 500,
    }
    with _testbed() as bed:
        allocations: dict[str, Allocation] = bed["allocations"]
        fds = [a.sock.fileno() for a in allocations.values()]
        generator = _Generator(fds)
        try:
            pinned = pin and _pin(
                [p.pid for p in bed["servers"].values()],
                [generator.process.pid, bed["echo"].pid],
            )
            names = list(allocations)
            for name in names:  # warm up
                generator.run(allocations[name].sock.fileno(), settings)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for i in range(repeats):
                for name in rotation(names, i):
                    pid, echo_pid = bed["servers"][name].pid, bed["echo"].pid
                    cpu, echo_cpu = cpu_seconds(pid), cpu_seconds(echo_pid)
                    start = time.perf_counter()
                    run = generator.run(allocations[name].sock.fileno(), settings)
                    # CPU shares over the whole run, warm-up included (a server with several
                    # threads can pass 1.0).
                    elapsed = time.perf_counter() - start
                    run["server_cpu"] = (cpu_seconds(pid) - cpu) / elapsed
                    run["echo_cpu"] = (cpu_seconds(echo_pid) - echo_cpu) / elapsed
                    runs[name].append(run)
        finally:
            generator.process.stop()
    medians = {name: statistics.median(r["rate"] for r in runs[name]) for name in runs}
    return {"pinned": pinned, "medians": medians, "runs": runs}


def _start_echo(stack: contextlib.ExitStack) -> tuple[_Process, int]:
    echo = _Process(
        "echo peer",
        [sys.executable, "-m", "benchmarks.relay", "echo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    stack.callback(echo.stop)
    assert echo.popen.stdout is not None
    ready, _, _ = select.select([echo.popen.stdout], [], [], 15.0)
    line = echo.popen.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError("the echo peer did not start")
    return echo, int(json.loads(line)["port"])


def _spread_allocations(
    stack: contextlib.ExitStack, server: _Process, port: int, peer_port: int, workers: int
) -> list[Allocation]:
    """:data:`FLOWS` allocations on the server at ``port``, one per worker when it has
    several: anchor serve --workers cuts the relay port range in consecutive slices, so the
    relayed port tells which worker holds an allocation; new client sockets (new 4-tuples,
    hashed anew by SO_REUSEPORT) are tried until each of the first FLOWS slices has one."""
    slice_size = RELAY_PORTS // workers
    kept: dict[int, Allocation] = {}
    for _ in range(64):
        allocation = Allocation(port, peer_port)
        key = len(kept) if workers == 1 else (allocation.relayed[1] - server.relay_base) // slice_size
        if key in kept or key >= FLOWS:
            allocation.close()
            continue
        stack.callback(allocation.close)
        allocation.check_echo()
        kept[key] = allocation
        if len(kept) == FLOWS:
            return list(kept.values())
    raise RuntimeError(f"could not spread {FLOWS} allocations over {workers} workers")


@contextlib.contextmanager
def _workers_testbed() -> Iterator[dict[str, Any]]:
    """Echo peer, anchor serve --workers 1 and 2, coturn, :data:`FLOWS` allocations each."""
    stack = contextlib.ExitStack()
    with stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="anchor-relay-")))
        echo, peer_port = _start_echo(stack)
        servers: dict[str, _Process] = {}
        flows: dict[str, list[Allocation]] = {}
        starts: dict[str, Callable[[Path], tuple[_Process, int]]] = {
            "workers-1": start_anchor,
            "workers-2": functools.partial(start_anchor, workers=2),
            "coturn": start_coturn,
        }
        for name, start in starts.items():
            process, port = start(workdir)
            stack.callback(process.stop)
            servers[name] = process
            workers = 2 if name == "workers-2" else 1
            flows[name] = _spread_allocations(stack, process, port, peer_port, workers)
        yield {"echo": echo, "servers": servers, "flows": flows}


def run_worker_samples(quick: bool, window: int = WINDOW) -> dict[str, Any]:
    """Runs of anchor serve --workers 2, --workers 1 and coturn, each loaded by
    :data:`FLOWS` generator processes at once (one allocation each, spread over the
    workers), interleaved; per run the echoes per second summed over the flows and the CPU
    share of the server's whole process tree (supervisor and workers)."""
    repeats = 5 if quick else 15
    settings = {
        "frames": [base64.b64encode(f).decode() for f in channel_frames()],
        "window": window,
        "seconds": 0.25 if quick else 0.6,
        "warmup": 500,
    }
    with _workers_testbed() as bed:
        flows: dict[str, list[Allocation]] = bed["flows"]
        fds = [a.sock.fileno() for group in flows.values() for a in group]
        generators = [_Generator(fds) for _ in range(FLOWS)]
        try:
            names = list(flows)

            def one(name: str) -> dict[str, float]:
                pid = bed["servers"][name].pid
                cpu, start = tree_cpu_seconds(pid), time.perf_counter()
                for generator, allocation in zip(generators, flows[name], strict=True):
                    generator.start(allocation.sock.fileno(), settings)
                answers = [generator.finish(settings) for generator in generators]
                elapsed = time.perf_counter() - start
                return {
                    "rate": sum(a["rate"] for a in answers),
                    "lost": sum(a["lost"] for a in answers),
                    "server_cpu": (tree_cpu_seconds(pid) - cpu) / elapsed,
                }

            for name in names:  # warm up
                one(name)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            for i in range(repeats):
                for name in rotation(names, i):
                    runs[name].append(one(name))
        finally:
            for generator in generators:
                generator.process.stop()
    return {
        "medians": {n: statistics.median(r["rate"] for r in runs[n]) for n in runs},
        "per_cpu_second": {
            n: statistics.median(r["rate"] / r["server_cpu"] for r in runs[n] if r["server_cpu"] > 0)
            for n in runs
        },
        "runs": runs,
    }


def worker_rows(out: dict[str, Any], coturn: str) -> list[Result]:
    """The rows of ``--workers 2``: against coturn and against ``--workers 1``, in echoes per
    second and per server CPU-second (the load shares the cores, so the second is the
    server's own figure)."""
    rate, per_cpu = out["medians"], out["per_cpu_second"]
    load = f"{FLOWS} flows, one per worker"
    return [
        result("relay", "pkt/s", rate["workers-2"], rate["coturn"],
               f"{coturn}; anchor serve --workers 2, {load}"),
        result("relay", "pkt/CPU-s", per_cpu["workers-2"], per_cpu["coturn"],
               f"{coturn}, per server CPU-second; anchor serve --workers 2, {load}"),
        result("relay", "pkt/s", rate["workers-2"], rate["workers-1"],
               f"workers-1: anchor serve --workers 1 vs --workers 2, {load}"),
        result("relay", "pkt/CPU-s", per_cpu["workers-2"], per_cpu["workers-1"],
               f"workers-1: per server CPU-second, --workers 1 vs --workers 2, {load}"),
    ]  # fmt: skip


def measure(quick: bool) -> list[Result]:
    """Echoes per second through ``anchor serve`` and through coturn, medians; then
    ``--workers 2`` against coturn and ``--workers 1`` (:func:`worker_rows`)."""
    out = run_samples(quick)
    medians = out["medians"]
    where = "servers pinned to their own core" if out["pinned"] else "placement by the kernel"
    coturn = coturn_version()
    return [
        result(
            "relay",
            "pkt/s",
            medians["anchor"],
            medians["coturn"],
            f"{coturn}, same load generator ({where})",
        ),
        *worker_rows(run_worker_samples(quick), coturn),
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.relay [--quick] [--pin] [--window N]``: medians, ratio, the
    relay rate per server CPU-second, and every run as JSON (rate, loss, CPU shares);
    ``echo`` and ``generate`` are the child processes' modes."""
    if argv is None:
        argv = sys.argv[1:]
    if argv == ["echo"]:
        echo_main()
        return
    if argv == ["generate"]:
        generate_main()
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pin", action="store_true", help="servers on core 0, load on core 1")
    parser.add_argument("--window", type=int, default=WINDOW, help="frames in flight")
    args = parser.parse_args(argv)
    out = run_samples(args.quick, pin=args.pin, window=args.window)
    out["ratio"] = out["medians"]["anchor"] / out["medians"]["coturn"]
    out["per_cpu_second"] = {
        name: statistics.median(r["rate"] / r["server_cpu"] for r in runs if r["server_cpu"] > 0)
        for name, runs in out["runs"].items()
    }
    out["per_cpu_ratio"] = out["per_cpu_second"]["anchor"] / out["per_cpu_second"]["coturn"]
    out["coturn"] = coturn_version()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
