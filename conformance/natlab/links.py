"""Run ``anchor pipe`` pairs between hostA and hostB of the NAT lab (issue 7, must-shows 2-5).

:func:`pipe_pair` starts the receiver (hostB, stdin empty) and then the sender (hostA, stdin
``data``) as subprocesses inside the host namespaces, both subscribed to the rendezvous of the
``anchor serve --signal`` in ``pub``; it waits (bounded) for both to exit, kills them by PID on
a timeout, and returns their output with every ``link formed`` line parsed.

:class:`LivePipe` keeps one ``anchor pipe`` running with its stdin open, for tests that act
on a link while it lives (write now, flush a NAT, write again later), following its stderr
line by line.

:func:`join_hosts` puts both hosts on one extra LAN segment (a veth between them), for the
nomination-policy comparison.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from .lab import ANCHOR, NatLab, _kill_pids, _run
from .topology import ANCHOR_PORT, NATS, SERVER_IP

__all__ = [
    "DIRECT_TYPES",
    "SHARED_IPS",
    "SIGNAL_PORT",
    "TURN_USER",
    "Formed",
    "LivePipe",
    "PipeRun",
    "default_servers",
    "join_hosts",
    "parse_formed",
    "pipe_pair",
    "serve_args",
]

SIGNAL_PORT = 8765
"""Port of the WebSocket rendezvous of ``anchor serve --signal`` in ``pub``."""
TURN_USER = "alice:secret"
"""TURN credentials ``anchor serve`` accepts in the link tests."""
SHARED_SEGMENT = "198.51.100.0/26"
"""The spare /26 used for the shared LAN segment of :func:`join_hosts`."""
SHARED_IPS = {"hostA": "198.51.100.1", "hostB": "198.51.100.2"}
"""Each host's address on the shared segment."""
DIRECT_TYPES = {"srflx", "prflx"}
"""Candidate types of a pair that goes straight through the NATs (no relay, no host)."""

_FORMED = re.compile(
    r"link formed with (\S+) in (\d+) ms: (\w+) ([\d.]+):(\d+) <-> (\w+) ([\d.]+):(\d+)"
    r"(?: \(relay over (\w+)\))?"
)
_MOVED = re.compile(
    r"link with (\S+) moved in (\d+) ms: (\w+) ([\d.]+):(\d+) <-> (\w+) ([\d.]+):(\d+)"
    r"(?: \(relay over (\w+)\))?"
)
_FIRST_SENT = re.compile(r"first message to \S+ sent at monotonic ([\d.]+) s")
_FIRST_RECEIVED = re.compile(r"first message from \S+ received at monotonic ([\d.]+) s")


def serve_args() -> list[str]:
    """Extra ``anchor serve`` arguments: TURN on, rendezvous on, lab peers allowed."""
    return [
        "--user", TURN_USER,
        "--signal", f"{SERVER_IP}:{SIGNAL_PORT}",
        "--allow-peer", "203.0.113.0/24",
    ]  # fmt: skip


@dataclass(frozen=True)
class Formed:
    """One ``anchor pipe -v`` "link formed" line: the selected pair as that side sees it."""

    peer: str
    ms: int
    local_type: str
    local: tuple[str, int]
    remote_type: str
    remote: tuple[str, int]
    relay_transport: str | None = None
    """How the local relayed candidate's TURN server is reached (udp, tcp, tls), if relayed."""

    @property
    def types(self) -> tuple[str, str]:
        return (self.local_type, self.remote_type)


@dataclass
class PipeRun:
    """Outcome of one sender/receiver pair."""

    sender_rc: int | None
    receiver_rc: int | None
    received: bytes
    sender_log: str
    receiver_log: str
    elapsed: float
    timed_out: bool = False
    sender_formed: list[Formed] = field(default_factory=list)
    receiver_formed: list[Formed] = field(default_factory=list)
    sender_moved: list[Formed] = field(default_factory=list)
    """Every "link ... moved" line of the sender (renomination to a better pair)."""
    receiver_moved: list[Formed] = field(default_factory=list)

    @property
    def first_message_ms(self) -> float | None:
        """Milliseconds from the sender's first send to the receiver's first message (both
        stamped on the machine's monotonic clock, which the namespaces share), or None."""
        sent = _FIRST_SENT.search(self.sender_log)
        received = _FIRST_RECEIVED.search(self.receiver_log)
        if sent is None or received is None:
            return None
        return (float(received[1]) - float(sent[1])) * 1000

    def final(self, sender: bool = True) -> Formed | None:
        """The pair that side's link ended on: the last move, else the formed pair."""
        pairs = (
            [*self.sender_formed, *self.sender_moved]
            if sender
            else [*self.receiver_formed, *self.receiver_moved]
        )
        return pairs[-1] if pairs else None

    def describe(self) -> str:
        return (
            f"sender rc {self.sender_rc}, receiver rc {self.receiver_rc}, "
            f"timed out {self.timed_out}, {len(self.received)} bytes received in "
            f"{self.elapsed:.1f} s\n--- sender (hostA) stderr:\n{self.sender_log[-2000:]}"
            f"\n--- receiver (hostB) stderr:\n{self.receiver_log[-2000:]}"
        )


def parse_formed(log: str, *, moved: bool = False) -> list[Formed]:
    """Every "link formed" line of an ``anchor pipe -v`` stderr (``moved``: every "link ...
    moved" line, the pair a link moved to, with the milliseconds of the move)."""
    return [
        Formed(m[1], int(m[2]), m[3], (m[4], int(m[5])), m[6], (m[7], int(m[8])), m[9])
        for m in (_MOVED if moved else _FORMED).finditer(log)
    ]


def default_servers() -> list[str]:
    """``anchor pipe``'s server options in the lab: the rendezvous, STUN and TURN (UDP) of
    ``anchor serve`` in ``pub``."""
    return [
        "--signal", f"ws://{SERVER_IP}:{SIGNAL_PORT}",
        "--stun", f"{SERVER_IP}:{ANCHOR_PORT}",
        "--turn", f"{SERVER_IP}:{ANCHOR_PORT}", "--user", TURN_USER,
    ]  # fmt: skip


def pipe_argv(
    name: str,
    peer: str,
    extra: Sequence[str] = (),
    *,
    idle: float = 2.0,
    servers: Sequence[str] | None = None,
) -> list[str]:
    """``anchor pipe`` from ``name`` to ``peer`` (``-v``) through ``servers`` (its
    ``--signal``/``--stun``/``--turn`` options; default :func:`default_servers`)."""
    return [
        *ANCHOR, "pipe",
        *(default_servers() if servers is None else servers),
        "--name", name, "--peer", peer,
        "--idle", f"{idle:g}", "-v", *extra,
    ]  # fmt: skip


def pipe_pair(
    lab: NatLab,
    data: bytes,
    *,
    extra: Sequence[str] = (),
    extra_a: Sequence[str] = (),
    extra_b: Sequence[str] = (),
    idle: float = 2.0,
    timeout: float = 25.0,
    stagger: float = 0.5,
    servers_a: Sequence[str] | None = None,
    servers_b: Sequence[str] | None = None,
) -> PipeRun:
    """hostA (name ``A``) sends ``data`` to hostB (name ``B``) over a link; both stopped by PID
    after ``timeout`` s at most. ``servers_a``/``servers_b``: each side's server options
    (:func:`pipe_argv`)."""
    started = time.monotonic()
    receiver = lab.popen(
        "hostB", pipe_argv("B", "A", [*extra, *extra_b], idle=idle, servers=servers_b),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(stagger)  # let B subscribe first (the offer would otherwise race it)
    sender = lab.popen(
        "hostA", pipe_argv("A", "B", [*extra, *extra_a], idle=idle, servers=servers_a),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    both = (sender, receiver)

    def drain(proc: subprocess.Popen[bytes], data: bytes | None) -> tuple[bytes, bytes, bool]:
        try:
            out, err = proc.communicate(data, timeout=timeout)
            return out, err, False
        except subprocess.TimeoutExpired:
            _kill_pids([p.pid for p in both if p.poll() is None], grace=1.0)
            out, err = proc.communicate(timeout=5)  # what was read so far, and the rest
            return out, err, True

    # Both at once: the receiver's stdout is read while the sender still runs, so that its
    # output does not pile up in the receiver's memory.
    with ThreadPoolExecutor(max_workers=2) as pool:
        s_future = pool.submit(drain, sender, data)
        r_future = pool.submit(drain, receiver, None)
        _, s_err, s_late = s_future.result()
        r_out, r_err, r_late = r_future.result()
    timed_out = s_late or r_late
    s_log, r_log = s_err.decode(errors="replace"), r_err.decode(errors="replace")
    return PipeRun(
        sender.returncode, receiver.returncode, r_out, s_log, r_log,
        time.monotonic() - started, timed_out, parse_formed(s_log), parse_formed(r_log),
        parse_formed(s_log, moved=True), parse_formed(r_log, moved=True),
    )  # fmt: skip


def join_hosts(lab: NatLab) -> None:
    """Put hostA and hostB on one more LAN segment (198.51.100.0/26, .1 and .2), a veth
    between them; each NAT routes that /26 back to its own host, so STUN and TURN from the
    shared address still work through the NAT. Undone only by tearing the lab down."""
    a, b = lab.ns("hostA"), lab.ns("hostB")
    _run(["ip", "-n", a, "link", "add", "name", "shared", "type", "veth",
          "peer", "name", "shared", "netns", b])  # fmt: skip
    for role in ("hostA", "hostB"):
        ip = ["ip", "-n", lab.ns(role)]
        _run([*ip, "addr", "add", f"{SHARED_IPS[role]}/26", "dev", "shared"])
        _run([*ip, "link", "set", "shared", "up"])
    for nat in NATS.values():
        _run(["ip", "-n", lab.ns(nat.name), "route", "add", SHARED_SEGMENT, "via", nat.host_ip])


class LivePipe:
    """One ``anchor pipe -v`` in a lab host, stdin kept open: :meth:`write` sends, stdout and
    stderr are collected by two reader threads, stderr lines with the time they came.
    Stopped by PID with :meth:`stop` (and by the lab's teardown)."""

    def __init__(
        self,
        lab: NatLab,
        role: str,
        name: str,
        peer: str,
        *,
        idle: float,
        extra: Sequence[str] = (),
    ) -> None:
        self.proc = lab.popen(
            role, pipe_argv(name, peer, extra, idle=idle),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._lock = threading.Condition()
        self._lines: list[tuple[float, str]] = []
        self._out = bytearray()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for target, stream in ((self._read_out, self.proc.stdout),
                               (self._read_err, self.proc.stderr)):  # fmt: skip
            threading.Thread(target=target, args=(stream,), daemon=True).start()

    def _read_out(self, stream: IO[bytes]) -> None:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            with self._lock:
                self._out += chunk
                self._lock.notify_all()

    def _read_err(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._lock:
                self._lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))
                self._lock.notify_all()

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the pipe's stdin (one message)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_line(self, pattern: str, timeout: float, *, after: int = 0) -> tuple[float, str]:
        """The first stderr line from index ``after`` on that matches ``pattern``, and when it
        came; ``AssertionError`` (with the log) when none does within ``timeout`` s."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                for when, line in self._lines[after:]:
                    if regex.search(line):
                        return when, line
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no line matching {pattern!r}\n{self.log()}")
                self._lock.wait(min(left, 0.2))

    def wait_output(self, data: bytes, timeout: float) -> None:
        """Wait until stdout is exactly ``data`` (AssertionError with the log otherwise)."""
        end = time.monotonic() + timeout
        with self._lock:
            while bytes(self._out) != data:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"stdout {bytes(self._out)!r}, expected {data!r}\n{self.log()}"
                    )
                self._lock.wait(min(left, 0.2))

    def wait_size(self, size: int, timeout: float) -> float:
        """Wait until stdout holds ``size`` bytes; when it did (AssertionError otherwise)."""
        end = time.monotonic() + timeout
        with self._lock:
            while len(self._out) < size:
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and len(self._out) < size):
                    raise AssertionError(f"stdout {len(self._out)} of {size} bytes\n{self.log()}")
                self._lock.wait(min(left, 0.2))
            return time.monotonic()

    @property
    def output(self) -> bytes:
        """stdout so far."""
        with self._lock:
            return bytes(self._out)

    @property
    def line_count(self) -> int:
        """stderr lines so far (an ``after`` for :meth:`wait_line`)."""
        with self._lock:
            return len(self._lines)

    def formed(self) -> list[Formed]:
        """Every "link formed" line so far."""
        return parse_formed(self.log())

    def log(self) -> str:
        """stderr so far."""
        with self._lock:
            return "\n".join(line for _, line in self._lines)

    def stop(self) -> None:
        """Stop the process by PID."""
        if self.proc.poll() is None:
            _kill_pids([self.proc.pid], grace=1.0)
        self.proc.wait(timeout=5)
