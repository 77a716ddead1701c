"""``checks``: an authenticated Binding responder on one core, over loopback UDP.

Three responders run in this process, one at a time, each on its own UDP socket read by the
same event loop in the same way. By default (``--io drain``) a readiness callback
(``loop.add_reader``) drains the non-blocking socket with ``sock.recvfrom`` (up to
:attr:`DrainingEndpoint.BATCH` datagrams per wake-up) and answers with ``sock.sendto``, for all
three alike; ``--io protocol`` uses ``loop.create_datagram_endpoint`` and a
``DatagramProtocol`` instead, again for all three. uvloop's loop when it is installed, else
asyncio's:

``anchor``
    Anchor's ICE agent (:class:`anchor_ice.agent.IceAgent`) answering connectivity checks
    on the selected pair of a connected session: every datagram goes to
    ``receive_datagram(data, addr, local, now)``, and what ``datagrams_to_send(now)`` returns
    goes back out, events are drained and the agent's timer armed, as
    :class:`anchor_stun.aio.net.CorePump` does (once per drained batch; once per datagram with
    ``--io protocol``). Before each run the agent connects to the load generator's address
    in memory (a peer agent, both with their defaults), so the load's checks are those of
    the controlling peer on the selected pair (RFC 8445 §7.3, RFC 7675): decode,
    FINGERPRINT, the key from the local ufrag in USERNAME, MESSAGE-INTEGRITY, the role and
    nomination rules, and a success with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and
    FINGERPRINT.
``aioice``
    The same checks answered with ``aioice.stun`` (parse_message checks FINGERPRINT itself):
    decode, FINGERPRINT, key from the ufrag, MESSAGE-INTEGRITY, success response.
``echo``
    ``sendto(data, addr)``: the ceiling any responder on this loop can reach.

``python -m benchmarks.checks --stand-in`` adds a fourth, ``codec``: the responder this
benchmark used before the agent existed (:class:`AnchorResponder`, the aioice responder's
steps written with ``anchor_stun``'s codec), to show what the agent's logic costs.

The load comes from a separate process (:mod:`benchmarks.loadgen`, stdlib only), pinned to
another core than the responders' where the system allows, that keeps a bounded window of
requests outstanding and counts the answers per second on its side;
every run is bounded in time and count, and the process exits on its own. The responders
are measured in rotating order, several times, and the medians reported. Before measuring,
each responder is checked once: its answer to a real request must verify.
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
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from anchor_ice.agent import IceAgent, IceState
from anchor_ice.candidate import CandidateType, make_candidate
from anchor_stun.attributes import IceControlling, Priority, Username, XorMappedAddress
from anchor_stun.errors import DecodeError
from anchor_stun.events import Address
from anchor_stun.message import Message, MessageClass, Method

from . import Result, result, rotation
from .codec import PASSWORD, PRIORITY, TIE_BREAKER

LOCAL_UFRAG = "8hhY"
"""The responder's ufrag: requests carry USERNAME "8hhY:Ycb4" (RFC 8445 §7.2.2)."""
USERNAME = f"{LOCAL_UFRAG}:Ycb4"
PASSWORDS = {LOCAL_UFRAG: PASSWORD}
"""Local ufrag -> short-term key (RFC 8489 §9.1.1), the responder's credentials."""

REMOTE_UFRAG = "Ycb4"
REMOTE_PWD = "Hq7sLw0bqT3YcKQdWmXn9aZp"
"""The load's side of the session (the controlling peer's credentials, RFC 8445 §5.3)."""

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


def connected_agent(local: Address, peer: Address, now: float) -> IceAgent:
    """A controlled :class:`IceAgent` with a host candidate at ``local``, COMPLETED on the
    pair (``local``, ``peer``) with a controlling peer agent at ``peer`` whose credentials
    and tie-breaker are those of the load's checks. Both run with their defaults; the
    session is formed in memory (no socket), on a simulated clock that ends at ``now``, so
    that the agent can go on with the real monotonic clock."""
    agent = IceAgent(controlling=False, local_ufrag=LOCAL_UFRAG, local_pwd=PASSWORD.decode())
    other = IceAgent(
        controlling=True,
        local_ufrag=REMOTE_UFRAG,
        local_pwd=REMOTE_PWD,
        tie_breaker=TIE_BREAKER,
    )
    agent.add_local_candidate(make_candidate(CandidateType.HOST, local), local)
    other.add_local_candidate(make_candidate(CandidateType.HOST, peer), peer)
    agent.set_remote_credentials(REMOTE_UFRAG, REMOTE_PWD)
    other.set_remote_credentials(LOCAL_UFRAG, PASSWORD.decode())
    for a, b in ((agent, other), (other, agent)):
        for candidate in a.local_candidates():
            b.add_remote_candidate(candidate)
        b.add_remote_candidate(None)
    step = 0.002
    t = now - 1.0
    agent.start(t)
    other.start(t)
    while t <= now:
        for transmit in agent.datagrams_to_send(t):
            other.receive_datagram(transmit.data, local, peer, t)
        for transmit in other.datagrams_to_send(t):
            agent.receive_datagram(transmit.data, peer, local, t)
        for a in (agent, other):
            while a.next_event() is not None:
                pass
        if (
            agent.state is IceState.COMPLETED
            and other.state is IceState.COMPLETED
            and not agent.datagrams_to_send(t)
            and not other.datagrams_to_send(t)
        ):
            break
        t += step
        for a in (agent, other):
            deadline = a.next_timer()
            if deadline is not None and deadline <= t:
                a.handle_timer(t)
    pair = agent.selected_pair
    if agent.state is not IceState.COMPLETED or pair is None or pair.remote.address != peer:
        raise AssertionError(f"the benchmark's ICE session did not form: {agent.state}")
    return agent


class AgentResponder:
    """Anchor's ICE agent answering checks (see the module docstring): datagrams go to
    ``receive_datagram``, the answers from ``datagrams_to_send`` straight to the socket."""

    def __init__(self, peer: Address) -> None:
        self.peer = peer
        self.batched = False
        """True when the transport calls :meth:`flush` after each batch of datagrams."""
        self.agent: IceAgent | None = None
        self.transport: Any = None
        self._local: Address = ("127.0.0.1", 0)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self._local = local = (host, port)
        self.agent = connected_agent(self._local, self.peer, self._loop.time())
        self.flush()
        if self.batched:  # the same call, with the lookups done once
            receive, clock = self.agent.receive_datagram, self._loop.time

            def datagram_received(data: bytes, addr: Any) -> None:
                receive(data, addr, local, clock())

            self.datagram_received = datagram_received  # type: ignore[method-assign]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.agent.receive_datagram(data, addr, self._local, self._loop.time())  # type: ignore[union-attr]
        if not self.batched:
            self.flush()

    def flush(self) -> None:
        """Send what the agent has to send, hand out its events, arm its timer."""
        agent = self.agent
        assert agent is not None
        sendto = self.transport.sendto
        for transmit in agent.datagrams_to_send(self._loop.time()):
            sendto(transmit.data, transmit.addr)
        while agent.next_event() is not None:
            pass
        deadline = agent.next_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else self._loop.call_at(deadline, self._fire)
            self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self.agent.handle_timer(self._loop.time())  # type: ignore[union-attr]
        self.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def error_received(self, exc: Exception) -> None:
        pass


class AnchorResponder(asyncio.DatagramProtocol):
    """The codec stand-in: the aioice responder's steps written with anchor_stun's codec
    (decode, FINGERPRINT, key from the ufrag, MESSAGE-INTEGRITY, success), no ICE agent."""

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
    draining up to BATCH datagrams per wakeup, and answers with ``sock.sendto``. A protocol
    with a ``flush()`` method (a sans-I/O core's adapter) is flushed once per wake-up."""

    BATCH = 64

    def __init__(self, protocol: Any, sock: Any) -> None:
        self.protocol = protocol
        self.sock = sock
        self.dropped = 0
        self._flush = getattr(protocol, "flush", None)
        if self._flush is not None:
            protocol.batched = True
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
                break
            received(data, addr)
        if self._flush is not None:
            self._flush()

    def get_extra_info(self, name: str) -> Any:
        return self.sock.getsockname() if name == "sockname" else None

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        close = getattr(self.protocol, "close", None)
        if close is not None:
            close()


RESPONDERS: dict[str, Callable[[Address], Any]] = {
    "anchor": AgentResponder,
    "aioice": lambda peer: AioiceResponder(),
    "echo": lambda peer: EchoResponder(),
}
"""The responders of the result rows, each made for the load generator's address."""
STAND_IN: dict[str, Callable[[Address], Any]] = {"codec": lambda peer: AnchorResponder()}
"""The extra responder of ``--stand-in``."""
EXPECT = {"anchor": _SUCCESS, "codec": _SUCCESS, "aioice": _SUCCESS, "echo": _REQUEST}


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
    transport, probe = await loop.create_datagram_endpoint(_Probe, remote_addr=("127.0.0.1", port))
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

    def __init__(self, process: asyncio.subprocess.Process, address: Address) -> None:
        self.process = process
        self.address = address
        """The generator's socket: every request of every run comes from there."""

    @classmethod
    async def start(cls) -> _LoadGenerator:
        script = Path(__file__).with_name("loadgen.py")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30.0)
            port = int(json.loads(line)["port"])
        except BaseException:
            process.kill()
            await process.wait()
            raise
        return cls(process, ("127.0.0.1", port))

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


async def _listen(name: str, io: str, peer: Address) -> Any:
    """A fresh ``name`` responder on 127.0.0.1, port chosen by the system, that will be
    loaded from ``peer``."""
    factory = RESPONDERS.get(name) or STAND_IN[name]
    if io == "drain":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        return DrainingEndpoint(factory(peer), sock)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: factory(peer), local_addr=("127.0.0.1", 0)
    )
    return transport


async def _sample(
    generator: _LoadGenerator,
    name: str,
    io: str,
    settings: dict[str, Any],
    check: bytes | None,
) -> dict[str, Any]:
    """One timed run of the load generator against a fresh ``name`` responder. Adds
    ``responder_cpu``: the CPU time this process used during the run, per second of it
    (near 1.0: the responder's core was saturated, so ``rate`` is its own limit)."""
    transport = await _listen(name, io, generator.address)
    try:
        port = transport.get_extra_info("sockname")[1]
        if check is not None:
            await _check_responder(name, port, check)
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        run = await generator.ask(
            {"cmd": "run", "port": port, "expect": EXPECT[name].hex(), **settings},
            timeout=settings["seconds"] + 30.0,
        )
        run["responder_cpu"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
        return run
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
    quick: bool, io: str, stand_in: bool = False
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
        names = [*RESPONDERS, *(STAND_IN if stand_in else ())]
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


def _run(
    quick: bool, io: str, stand_in: bool = False
) -> tuple[str, dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Measure on a new event loop: uvloop's when it is installed, else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found]

        loop, loop_name = uvloop.new_event_loop(), "uvloop"
    except ImportError:
        loop, loop_name = asyncio.new_event_loop(), "asyncio"
    try:
        medians, runs = loop.run_until_complete(_measure(quick, io, stand_in))
    finally:
        loop.close()
    return loop_name, medians, runs


IO_STYLES = {
    "protocol": ", DatagramProtocol",
    "drain": ", drained reads",
}
"""How the responders read: ``drain`` (the default) = a readiness callback that reads the
socket until it is empty (the "direct socket reads" of issue 8), ``protocol`` =
loop.create_datagram_endpoint (what aioice uses). All of them always use the same one."""


def measure(quick: bool, io: str = "drain") -> list[Result]:
    """Requests answered per second: Anchor vs aioice, and Anchor vs the raw echo."""
    loop_name, medians, _ = _run(quick, io)
    style = f"{loop_name}{IO_STYLES[io]}"
    return [
        result(
            "checks",
            "req/s",
            medians["anchor"],
            medians["aioice"],
            f"aioice {version('aioice')} responder ({style}); anchor = IceAgent",
        ),
        result(
            "checks",
            "req/s",
            medians["anchor"],
            medians["echo"],
            f"echo, raw UDP ({style}): the ceiling",
        ),
    ]


class _Sink:
    """A transport that keeps nothing: what a responder sends, without a socket."""

    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent += 1

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "sockname" else None


def alone(count: int = 10_000, repeats: int = 15) -> dict[str, float]:
    """Microseconds of each responder's own work per request, without socket or loop:
    the same requests handed to ``datagram_received`` in batches of :data:`WINDOW` (the
    agent flushed once per batch, as with ``--io drain``). ``repeats`` samples of
    ``count`` requests, the responders in rotating order; medians."""
    peer: Address = ("127.0.0.1", 40001)
    batch = requests(4096)
    names = ["anchor", "codec", "aioice"]
    count -= count % WINDOW

    async def build(name: str) -> tuple[Any, _Sink]:
        responder = (RESPONDERS.get(name) or STAND_IN[name])(peer)
        if hasattr(responder, "flush"):
            responder.batched = True
        sink = _Sink()
        responder.connection_made(sink)
        return responder, sink

    def sample(responder: Any) -> float:
        received = responder.datagram_received
        flush = getattr(responder, "flush", None)
        start = time.perf_counter()
        for i in range(0, count, WINDOW):
            for j in range(i, i + WINDOW):
                received(batch[j & 4095], peer)
            if flush is not None:
                flush()
        return (time.perf_counter() - start) / count * 1e6

    loop = asyncio.new_event_loop()
    try:
        built = {name: loop.run_until_complete(build(name)) for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(repeats):
            for name in rotation(names, i):
                gc.collect()
                times[name].append(sample(built[name][0]))
        for name, (responder, sink) in built.items():
            if sink.sent != repeats * count:
                raise AssertionError(f"{name} answered {sink.sent} of {repeats * count}")
            if hasattr(responder, "close"):
                responder.close()
        return {name: statistics.median(values) for name, values in times.items()}
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.checks [--quick] [--io drain|protocol] [--stand-in] [--alone]``:
    medians and every run (rate, loss, the load generator's and the responder's CPU shares,
    requests per CPU-second) as JSON; ``--alone``: each responder's own microseconds per
    request, without socket."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checks")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--io", choices=sorted(IO_STYLES), default="drain")
    parser.add_argument(
        "--stand-in", action="store_true", help="also the codec-only responder ('codec')"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="only each responder's own work per request, no socket (microseconds)",
    )
    args = parser.parse_args(argv)
    if args.alone:
        print(json.dumps({"us_per_request": alone()}, indent=1))
        return
    loop_name, medians, runs = _run(args.quick, args.io, args.stand_in)
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
    if "codec" in medians:
        ratios["codec_vs_aioice"] = medians["codec"] / medians["aioice"]
        ratios["codec_vs_echo"] = medians["codec"] / medians["echo"]
        ratios["anchor_vs_codec"] = medians["anchor"] / medians["codec"]
    cpu = {
        name: {
            "loadgen": statistics.median(r["cpu"] for r in runs[name]),
            "responder": statistics.median(r["responder_cpu"] for r in runs[name]),
        }
        for name in runs
    }
    # Requests answered per CPU-second of this process (the responder's loop): what each
    # responder costs whether or not another process took its core for a while (the
    # figure a busy shared machine disturbs least), and, for the echo, its true cost when
    # the load generator, not the echo, set the pace.
    per_cpu = {
        name: statistics.median(r["rate"] / r["responder_cpu"] for r in runs[name]) for name in runs
    }
    out = {
        "loop": loop_name,
        "io": args.io,
        "medians": medians,
        "ratios": ratios,
        "paired_ratios": paired,
        "cpu_medians": cpu,
        "per_cpu_second": per_cpu,
        "per_cpu_second_ratios": {
            f"vs_{other}": per_cpu["anchor"] / per_cpu[other] for other in ("aioice", "echo")
        },
        "runs": runs,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
