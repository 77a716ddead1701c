"""``checks``: an authenticated Binding responder on one core, over loopback UDP.

Three responders run in this process, one at a time, each on its own UDP socket read by the
same event loop in the same way (``loop.create_datagram_endpoint`` + a ``DatagramProtocol``;
``python -m benchmarks.checks --io drain`` reads the socket straight from a readiness
callback instead, for all three), uvloop's loop when it is installed, else asyncio's:

``anchor``
    What an ICE agent does with a connectivity check (RFC 8445 §7.3): decode the request,
    check FINGERPRINT, find the short-term key from the local ufrag in USERNAME, check
    MESSAGE-INTEGRITY, answer a success response carrying XOR-MAPPED-ADDRESS,
    MESSAGE-INTEGRITY and FINGERPRINT, all with ``anchor_stun``'s codec.
``aioice``
    The same steps with ``aioice.stun`` (parse_message checks FINGERPRINT itself).
``echo``
    ``sendto(data, addr)``: the ceiling any responder on this loop can reach.

The load comes from a separate process (:mod:`benchmarks.loadgen`, stdlib only), pinned to
another core than the responders' where the system allows, that keeps a bounded window of
requests outstanding and counts the answers per second on its side;
every run is bounded in time and count, and the process exits on its own. The three
responders are measured in rotating order, several times, and the medians reported. Before
measuring, each responder is checked once: its answer to a real request must verify.

Until ``anchor_ice`` has its agent, the Anchor responder here is a stand-in built from the
codec; when the agent lands this benchmark should drive the agent's receive path instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
import statistics
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from anchor_stun.attributes import IceControlling, Priority, Username, XorMappedAddress
from anchor_stun.errors import DecodeError
from anchor_stun.message import Message, MessageClass, Method

from . import Result, result, rotation
from .codec import PASSWORD, PRIORITY, TIE_BREAKER

LOCAL_UFRAG = "8hhY"
"""The responder's ufrag: requests carry USERNAME "8hhY:Ycb4" (RFC 8445 §7.2.2)."""
USERNAME = f"{LOCAL_UFRAG}:Ycb4"
PASSWORDS = {LOCAL_UFRAG: PASSWORD}
"""Local ufrag -> short-term key (RFC 8489 §9.1.1), the responder's credentials."""

WINDOW = 32
"""Requests the load generator keeps outstanding."""

_SUCCESS = b"\x01\x01"  # Binding success response
_REQUEST = b"\x00\x01"  # Binding request (what the echo sends back)


def requests(count: int) -> list[bytes]:
    """``count`` connectivity checks with distinct transaction ids."""
    attrs = [Username(USERNAME), Priority(PRIORITY), IceControlling(TIE_BREAKER)]
    return [
        Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), list(attrs)).encode(
            key=PASSWORD, fingerprint=True
        )
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------- responders


class AnchorResponder(asyncio.DatagramProtocol):
    """Answers authenticated Binding requests with anchor_stun (see the module docstring)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            request = _decode(data)
        except DecodeError:
            return
        if (
            request.msg_class is not _REQUEST_CLASS
            or request.method != _BINDING
            or not request.verify_fingerprint()
        ):
            return
        username = request.get(Username)
        if username is None:
            return
        key = PASSWORDS.get(username.value.partition(":")[0])
        if key is None or not request.verify_integrity(key):
            return
        response = Message(
            _BINDING, _SUCCESS_CLASS, request.transaction_id, [XorMappedAddress(*addr[:2])]
        )
        self.transport.sendto(response.encode(key=key, fingerprint=True), addr)  # type: ignore[union-attr]


_decode = Message.decode
_BINDING = Method.BINDING
_REQUEST_CLASS = MessageClass.REQUEST
_SUCCESS_CLASS = MessageClass.SUCCESS


class AioiceResponder(asyncio.DatagramProtocol):
    """The same responder written with aioice's stun module."""

    def __init__(self) -> None:
        from aioice import stun

        self.stun = stun
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        stun = self.stun
        try:
            request = stun.parse_message(data)  # checks FINGERPRINT when present
        except ValueError:
            return
        if (
            request.message_class != stun.Class.REQUEST
            or request.message_method != stun.Method.BINDING
            or "FINGERPRINT" not in request.attributes
        ):
            return
        username = request.attributes.get("USERNAME")
        if username is None:
            return
        key = PASSWORDS.get(username.partition(":")[0])
        if key is None or not request.check_message_integrity(key):
            return
        response = stun.Message(
            stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        response.add_message_integrity(key)
        if "FINGERPRINT" not in response.attributes:  # aioice < 0.10
            response.add_fingerprint()
        self.transport.sendto(bytes(response), addr)  # type: ignore[union-attr]


class EchoResponder(asyncio.DatagramProtocol):
    """Sends every datagram back: the ceiling."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)  # type: ignore[union-attr]


class DrainingEndpoint:
    """Reads a non-blocking UDP socket straight from the loop's readiness callback,
    draining up to BATCH datagrams per wakeup, and answers with ``sock.sendto``."""

    BATCH = 64

    def __init__(self, protocol: Any, sock: Any) -> None:
        self.protocol = protocol
        self.sock = sock
        self.dropped = 0
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._readable)
        protocol.connection_made(self)

    def sendto(self, data: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:
            self.dropped += 1

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        received = self.protocol.datagram_received
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            received(data, addr)

    def get_extra_info(self, name: str) -> Any:
        return self.sock.getsockname() if name == "sockname" else None

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


RESPONDERS: dict[str, type[asyncio.DatagramProtocol]] = {
    "anchor": AnchorResponder,
    "aioice": AioiceResponder,
    "echo": EchoResponder,
}
EXPECT = {"anchor": _SUCCESS, "aioice": _SUCCESS, "echo": _REQUEST}


# ---------------------------------------------------------------------------- driving


class _Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)


async def _check_responder(name: str, port: int, request: bytes) -> None:
    """One request from this process; the answer must be right before anything is timed."""
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(
        _Probe, remote_addr=("127.0.0.1", port)
    )
    try:
        transport.sendto(request)
        answer = await asyncio.wait_for(probe.answer, 2.0)
        local = transport.get_extra_info("sockname")
    finally:
        transport.close()
    if name == "echo":
        if answer != request:
            raise AssertionError("the echo responder changed the datagram")
        return
    response = Message.decode(answer)
    mapped = response.get(XorMappedAddress)
    if not (
        response.msg_class is MessageClass.SUCCESS
        and response.transaction_id == request[8:20]
        and response.verify_fingerprint()
        and response.verify_integrity(PASSWORD)
        and mapped is not None
        and mapped.address == (local[0], local[1])
    ):
        raise AssertionError(f"the {name} responder gave a wrong answer: {response}")


class _LoadGenerator:
    """The load generator process and its command pipe."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> _LoadGenerator:
        script = Path(__file__).with_name("loadgen.py")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write((json.dumps(command) + "\n").encode())
        await stdin.drain()
        line = await asyncio.wait_for(stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the load generator exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer

    async def close(self) -> None:
        process = self.process
        if process.returncode is None:
            with contextlib.suppress(Exception):
                assert process.stdin is not None
                process.stdin.write(b'{"cmd": "quit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _listen(name: str, io: str) -> Any:
    """A fresh ``name`` responder on 127.0.0.1, port chosen by the system."""
    if io == "drain":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        return DrainingEndpoint(RESPONDERS[name](), sock)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        RESPONDERS[name], local_addr=("127.0.0.1", 0)
    )
    return transport


async def _sample(
    generator: _LoadGenerator,
    name: str,
    io: str,
    settings: dict[str, Any],
    check: bytes | None,
) -> dict[str, Any]:
    """One timed run of the load generator against a fresh ``name`` responder."""
    transport = await _listen(name, io)
    try:
        port = transport.get_extra_info("sockname")[1]
        if check is not None:
            await _check_responder(name, port, check)
        gc.collect()
        return await generator.ask(
            {"cmd": "run", "port": port, "expect": EXPECT[name].hex(), **settings},
            timeout=settings["seconds"] + 30.0,
        )
    finally:
        transport.close()


def _pin(generator_pid: int) -> set[int] | None:
    """Put the responders (this process) and the load generator on two different cores, so
    that the load never competes with the responder for its core ("on one core"). Returns
    the previous affinity of this process, to restore; None when there is nothing to pin."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    previous = os.sched_getaffinity(0)
    if len(previous) < 2:
        return None
    first, second = sorted(previous)[:2]
    os.sched_setaffinity(0, {first})
    os.sched_setaffinity(generator_pid, {second})
    return previous


async def _measure(
    quick: bool, io: str
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    repeats = 5 if quick else 15
    settings = {
        "window": WINDOW,
        "seconds": 0.2 if quick else 0.5,
        "max": 2_000_000,
        "warmup": 500,
    }
    generator = await _LoadGenerator.start()
    cores = _pin(generator.process.pid)
    try:
        batch = requests(4096)
        await generator.ask(
            {"cmd": "load", "requests": [base64.b64encode(r).decode() for r in batch]},
            timeout=30.0,
        )
        names = list(RESPONDERS)
        for name in names:  # check each answer, and warm up
            await _sample(generator, name, io, settings, check=batch[0])
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for i in range(repeats):
            for name in rotation(names, i):
                runs[name].append(await _sample(generator, name, io, settings, None))
    finally:
        await generator.close()
        if cores is not None:
            os.sched_setaffinity(0, cores)
    medians = {name: statistics.median(r["rate"] for r in runs[name]) for name in names}
    return medians, runs


def _run(quick: bool, io: str) -> tuple[str, dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Measure on a new event loop: uvloop's when it is installed, else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found]

        loop, loop_name = uvloop.new_event_loop(), "uvloop"
    except ImportError:
        loop, loop_name = asyncio.new_event_loop(), "asyncio"
    try:
        medians, runs = loop.run_until_complete(_measure(quick, io))
    finally:
        loop.close()
    return loop_name, medians, runs


IO_STYLES = {
    "protocol": "",
    "drain": ", drained reads",
}
"""How the three responders read: ``protocol`` = loop.create_datagram_endpoint (what
anchor_stun.net and aioice use), ``drain`` = a readiness callback that reads the socket until
it is empty (the "direct socket reads" of issue 8). All three always use the same one."""


def measure(quick: bool, io: str = "protocol") -> list[Result]:
    """Requests answered per second: Anchor vs aioice, and Anchor vs the raw echo."""
    loop_name, medians, _ = _run(quick, io)
    style = f"{loop_name}{IO_STYLES[io]}"
    return [
        result(
            "checks",
            "req/s",
            medians["anchor"],
            medians["aioice"],
            f"aioice {version('aioice')} responder ({style})",
        ),
        result(
            "checks",
            "req/s",
            medians["anchor"],
            medians["echo"],
            f"echo, raw UDP ({style}): the ceiling",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.checks [--quick] [--io protocol|drain]``: medians and every
    run (rate, loss, and the load generator's own CPU share) as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--io", choices=sorted(IO_STYLES), default="protocol")
    args = parser.parse_args(argv)
    loop_name, medians, runs = _run(args.quick, args.io)
    ratios = {
        "vs_aioice": medians["anchor"] / medians["aioice"],
        "vs_echo": medians["anchor"] / medians["echo"],
    }
    # The same ratios taken round by round (the three runs of a round are back to back),
    # then the median: less sensitive to a machine whose load changes during the run.
    paired = {
        f"vs_{other}": statistics.median(
            a["rate"] / b["rate"] for a, b in zip(runs["anchor"], runs[other], strict=True)
        )
        for other in ("aioice", "echo")
    }
    out = {
        "loop": loop_name,
        "io": args.io,
        "medians": medians,
        "ratios": ratios,
        "paired_ratios": paired,
        "runs": runs,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
