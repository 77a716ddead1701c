"""UDP request/response load generator, run as a separate process by the benchmarks.

Standard library only, so that it can be started as ``python loadgen.py`` from any
environment. At start it binds one UDP socket on 127.0.0.1 (kept for the life of the
process, so that the responder can know its peer before a run) and prints
``{"port": P}``. Then it reads one JSON command per line on stdin and answers one JSON line
on stdout:

``{"cmd": "load", "requests": [base64, ...]}``
    The datagrams to send, cycled through in order. Answer ``{"ok": true}``.
``{"cmd": "run", "port": P, "window": W, "seconds": S, "max": N, "warmup": K,
"expect": "0101"}``
    Blast ``127.0.0.1:P`` keeping at most ``W`` requests outstanding: each response
    received releases the next request. The first ``K`` responses warm up; then responses
    are counted until ``S`` seconds have passed or ``N`` were counted. A response whose
    first two bytes are not ``expect`` (hex) counts as bad, except a Binding request when
    responses are expected: that is the responder's own check (an ICE agent's consent
    check, RFC 7675), counted in ``ignored`` and left unanswered. When nothing arrives
    for :data:`STALL` seconds the outstanding requests count as lost and a new window is
    sent. Answer ``{"answered", "elapsed", "rate", "lost", "bad", "ignored", "sent",
    "cpu"}`` where ``cpu`` is the share of one core the generator itself used while
    counting: near 1.0 it was the bottleneck, and the rate is a lower bound of what the
    responder can do.
``{"cmd": "quit"}``, or the end of stdin
    Exit.

The socket is non-blocking and read with plain ``recv`` calls, waiting in ``select`` only
when nothing is there: a socket with a timeout would poll before every ``send`` and
``recv``, doubling the system calls per request and making the generator, not the
responder, the bottleneck of the fastest responders.

It stops by itself: every run is bounded by ``seconds`` (and at most :data:`MAX_SECONDS`),
and the process exits when no command comes for :data:`IDLE_EXIT` seconds.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import sys
import time

STALL = 0.05
"""Seconds without a response after which the outstanding requests count as lost."""
MAX_SECONDS = 30.0
"""Upper bound of one run, whatever it asks for."""
IDLE_EXIT = 120.0
"""The process exits when no command arrives for this long."""
_BINDING_REQUEST = b"\x00\x01"


def open_socket() -> socket.socket:
    """The generator's socket: 127.0.0.1, a port chosen by the system, non-blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _flush(sock: socket.socket) -> None:
    """Drop whatever is queued (late answers of a previous run)."""
    while True:
        try:
            sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return


def blast(
    sock: socket.socket,
    port: int,
    requests: list[bytes],
    window: int,
    seconds: float,
    max_count: int,
    warmup: int,
    expect: bytes,
) -> dict[str, float]:
    """One run against 127.0.0.1:``port`` (see the module docstring)."""
    sock.connect(("127.0.0.1", port))
    _flush(sock)
    send, recv = sock.send, sock.recv
    wait = select.select
    readers = [sock]
    ignore = _BINDING_REQUEST if expect != _BINDING_REQUEST else None
    count = len(requests)
    index = sent = 0
    for _ in range(window):
        send(requests[index])
        index = (index + 1) % count
        sent += 1
    outstanding = window
    answered = lost = bad = ignored = 0
    seconds = min(seconds, MAX_SECONDS)
    start = time.perf_counter()
    hard_stop = start + seconds + warmup * 0.001 + 5.0
    deadline = 0.0
    cpu = time.process_time()
    warm = max(warmup, 1)
    while True:
        try:
            data = recv(4096)
        except (BlockingIOError, InterruptedError):
            if wait(readers, (), (), STALL)[0]:
                continue
            lost += outstanding
            now = time.perf_counter()
            if (deadline and now >= deadline) or now >= hard_stop:
                break
            for _ in range(window):
                send(requests[index])
                index = (index + 1) % count
                sent += 1
            outstanding = window
            continue
        head = data[:2]
        if head != expect and head == ignore:
            ignored += 1
            continue
        if outstanding:
            outstanding -= 1
        if warm:
            warm -= 1
            if not warm:
                start = time.perf_counter()
                cpu = time.process_time()
                deadline = start + seconds
        elif head == expect:
            answered += 1
            if answered >= max_count:
                break
            if not answered & 127 and time.perf_counter() >= deadline:
                break
        else:
            bad += 1
        if outstanding < window:  # late answers to requests counted lost add none
            send(requests[index])
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
        "ignored": ignored,
        "sent": sent,
        "cpu": cpu / elapsed if elapsed > 0 else 0.0,
    }


def main() -> None:
    """Serve commands from stdin until "quit", end of input, or IDLE_EXIT seconds idle."""
    requests: list[bytes] = []
    stdin = sys.stdin
    sock = open_socket()
    try:
        sys.stdout.write(json.dumps({"port": sock.getsockname()[1]}) + "\n")
        sys.stdout.flush()
        while True:
            ready, _, _ = select.select([stdin], [], [], IDLE_EXIT)
            if not ready:
                return
            line = stdin.readline()
            if not line:
                return
            command = json.loads(line)
            kind = command.get("cmd")
            if kind == "quit":
                return
            if kind == "load":
                requests = [base64.b64decode(r) for r in command["requests"]]
                answer: dict[str, object] = {"ok": True}
            elif kind == "run":
                answer = dict(
                    blast(
                        sock,
                        int(command["port"]),
                        requests,
                        int(command["window"]),
                        float(command["seconds"]),
                        int(command["max"]),
                        int(command["warmup"]),
                        bytes.fromhex(command["expect"]),
                    )
                )
            else:
                answer = {"error": f"unknown command {kind!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        sock.close()


if __name__ == "__main__":
    main()
