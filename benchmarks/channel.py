"""``channel``: goodput of the reliable channel, clean and at 5 % loss, vs raw UDP.

Two endpoints in this process, one event loop (asyncio's, or uvloop's when installed), each
on its own connected UDP socket on 127.0.0.1, read from the loop's readiness callback
(``loop.add_reader``), with buffers of :data:`RCVBUF` bytes on both sides of every pair. One sample is a fresh pair of sockets:
the sender writes messages of :data:`MESSAGE` bytes as fast as it is allowed to, and the
receiver counts the message bytes delivered to it, whole and in order, over a bounded time
after a warm-up. Four senders take turns:

``anchor``
    Two :class:`~anchor_link.reliable.ReliableChannel` endpoints with their defaults (MTU
    1200, send window 128 frames, RACK-TLP loss recovery over SACK, RFC 6298 RTO with
    ``rto_min`` 0.2 s behind it, NewReno congestion control and pacing), pumped by a minimal
    adapter: the datagrams of a batch go to ``receive_datagrams`` in one call, then events are
    read (the message bytes counted once per batch), ``datagrams_to_send`` is sent and one
    ``loop.call_at`` timer follows ``next_timer()``. The sender refills its window whenever
    :class:`~anchor_link.reliable.SendWindowOpen` says there is room. Each message is
    :data:`MESSAGE` = 1,190 bytes, one full frame of the default MTU. The sockets do their
    I/O as a link's ICE sockets do, through the product's
    :class:`~anchor_stun.aio.udp.UdpBatchIO`: on Linux a run of equal-size frames leaves as
    one segmented send (``UDP_SEGMENT``, generic segmentation offload, as QUIC stacks do) and
    the receiver's reads may bring several at once (``UDP_GRO``); the datagrams on the wire
    are the same.
``anchor at 5 % loss``
    The same, with the sender's adapter dropping each outgoing frame with probability 0.05
    (``random.Random`` seeded per sample, so every sample drops the same frames); the core is
    not told. The receiver's ACKs are not dropped. Since the channel has congestion control
    (RFC 8085 §3.1), random loss is a congestion signal to it: it backs off as NewReno does,
    so this row measures that, not only the cost of recovery.
``raw``
    Raw asyncio UDP, as a plain application would do it: the sender ``send``\\ s
    :data:`MESSAGE`-byte datagrams, one call each, and the receiver counts them, once per batch
    read (``_Socket``: readiness-callback reads, one ``recv`` per datagram, one send loop per
    batch; no segmentation offload). Flow control costs
    nothing here: the sender keeps at most :data:`RAW_WINDOW` datagrams unaccounted for (sent
    and not yet seen by the receiver, whose counter it reads in memory), the same number of
    frames as the channel's window.
    This is what moving the same bytes costs the loop and the kernel one datagram per call,
    the way an application without offloads pays it.
``raw_offload``
    The same raw sender and receiver on the channel's sockets (``_BatchedSocket``, the
    product's :class:`~anchor_stun.aio.udp.UdpBatchIO`): what the same bytes cost with the
    offloads the channel gets. A reference row without a target: since the channel moved to
    segmented sends it is the fair measure of the channel's own cost per frame, which the
    ``raw`` row no longer isolates (the channel's I/O is cheaper than the plain sender's).

Rows: Anchor clean vs raw (target >= 0.5x) and Anchor at 5 % loss vs the TCP-friendly rate
at that loss and the lossy runs' own smoothed RTT (RFC 5348 §3.1: s / (R sqrt(2p/3)); target
>= 0.5x). The loss row used to compare with Anchor clean (>= 0.7x), which only a channel
without congestion control can meet: random loss is a congestion signal to this one (RFC
8085 §3.1), whose rate at 5 % loss is bounded by the TCP-friendly rate (about 5.5 frames per
round trip), not by the loop's cost, so the clean figure is no longer its yardstick. What
the row now checks is that recovery does not stall the channel below what a TCP-friendly
flow gets (RACK-TLP, no timeouts). Anchor clean vs ``raw_offload``: for reference, no
target. Samples rotate through the four, and medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from anchor_link.reliable import (
    MessageReceived,
    ReliableChannel,
    ReliableClosed,
    SendWindowOpen,
)
from anchor_stun.aio.udp import UdpBatchIO

from . import Result, result, rotation

LOOPBACK = "127.0.0.1"
MESSAGE = 1190
"""Bytes per message: one full frame at the default MTU (1200 - 10 bytes of framing)."""
RAW_WINDOW = 128
"""Datagrams the raw sender keeps unaccounted for: the channel's default send window."""
LOSS = 0.05
"""Probability that the lossy sender's adapter drops a frame."""
RCVBUF = 1 << 22
"""SO_RCVBUF of every socket (the kernel caps it at net.core.rmem_max)."""
WARMUP = 0.05
"""Seconds of traffic before counting starts."""
READ_BATCH = 64
"""Datagrams read per wake-up of a socket before the output is flushed."""
STALL = 0.05
"""Raw only: seconds without a datagram after which those unaccounted for count as lost."""


def _now() -> float:
    return asyncio.get_running_loop().time()


class _Socket:
    """One endpoint's non-blocking UDP socket, read straight from the loop's readiness
    callback: up to :data:`READ_BATCH` datagrams per wake-up go to ``on_batch`` as one list
    (what :class:`~anchor_turn.aio.server.TurnServerRunner` does; asyncio's
    ``DatagramProtocol`` reads one datagram per wake-up). Sends are direct ``send`` calls;
    a datagram the kernel does not take at once is dropped and counted, as UDP may be."""

    def __init__(self, sock: socket.socket, on_batch: Callable[[list[bytes]], None]) -> None:
        self.sock = sock
        self.on_batch = on_batch
        self.send_dropped = 0
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recv = self.sock.recv
        batch = []
        for _ in range(READ_BATCH):
            try:
                batch.append(recv(65535))
            except (BlockingIOError, InterruptedError):
                break
        if batch:
            self.on_batch(batch)

    def sendto(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.send_dropped += 1

    def send_all(self, datagrams: list[bytes]) -> None:
        """``sendto`` of each datagram, in one loop."""
        send = self.sock.send
        for data in datagrams:
            try:
                send(data)
            except (BlockingIOError, InterruptedError):
                self.send_dropped += 1

    def send_copies(self, data: bytes, count: int) -> None:
        """``sendto`` of the same datagram ``count`` times, in one loop."""
        send = self.sock.send
        for _ in range(count):
            try:
                send(data)
            except (BlockingIOError, InterruptedError):
                self.send_dropped += 1

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class _BatchedSocket(_Socket):
    """The channel's socket: the same, with the product's batched UDP I/O
    (:class:`~anchor_stun.aio.udp.UdpBatchIO`, what a link's ICE sockets use): runs of
    equal-size frames leave as one segmented send (``UDP_SEGMENT``) and coalesced reads
    (``UDP_GRO``) are cut apart again, where the OS offers them; one datagram per call
    elsewhere."""

    def __init__(self, sock: socket.socket, on_batch: Callable[[list[bytes]], None]) -> None:
        self.io = UdpBatchIO(sock)
        super().__init__(sock, on_batch)

    def _readable(self) -> None:
        batch: list[tuple[bytes, Any]] = []
        self.io.receive(batch, READ_BATCH)
        if batch:
            self.on_batch([data for data, _ in batch])

    def send_copies(self, data: bytes, count: int) -> None:
        self.send_all([data] * count)

    def send_all(self, datagrams: list[bytes]) -> None:
        sent = 0
        while sent < len(datagrams):
            sent, _ = self.io.send(datagrams, None, sent)
            if sent < len(datagrams):
                self.send_dropped += 1  # full (EAGAIN) or refused: that one is lost
                sent += 1


async def _socket_pair(
    on_a: Callable[[list[bytes]], None],
    on_b: Callable[[list[bytes]], None],
    kind: type[_Socket] = _Socket,
) -> tuple[_Socket, _Socket]:
    """Two connected UDP endpoints on 127.0.0.1 with big receive buffers, of ``kind``."""
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        socks.append(sock)
    socks[0].connect(socks[1].getsockname())
    socks[1].connect(socks[0].getsockname())
    return kind(socks[0], on_a), kind(socks[1], on_b)


class _Counter:
    """Bytes delivered to the receiver, counted between ``start`` and ``stop``."""

    def __init__(self, seconds: float) -> None:
        self.bytes = 0
        self.start: float | None = None
        self.end: float | None = None
        self.seconds = seconds
        self.done = asyncio.get_running_loop().create_future()

    def add(self, size: int, now: float) -> None:
        if self.start is None:
            return
        self.bytes += size
        if now - self.start >= self.seconds and not self.done.done():
            self.end = now
            self.done.set_result(None)

    def begin(self, now: float) -> None:
        self.start = now

    def goodput(self) -> float:
        assert self.start is not None and self.end is not None
        return self.bytes / (self.end - self.start)


class _ChannelEndpoint:
    """A minimal adapter of one ReliableChannel on one socket (see the module docstring)."""

    def __init__(
        self,
        channel: ReliableChannel,
        on_message: Callable[[int, float], None] | None = None,
        on_writable: Callable[[], None] | None = None,
        drop: Callable[[], bool] | None = None,
    ) -> None:
        self.channel = channel
        self.on_message = on_message
        self.on_writable = on_writable
        self.drop = drop
        self.transport: _Socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.dropped = 0
        self.closed: ReliableClosed | None = None

    def received(self, batch: list[bytes]) -> None:
        now = _now()
        self.channel.receive_datagrams(batch, now)
        self.flush(now)

    def flush(self, now: float) -> None:
        channel = self.channel
        received = 0  # message bytes, handed to on_message once per flush
        writable = False
        next_event = channel.next_event
        while (event := next_event()) is not None:
            if type(event) is MessageReceived:
                received += len(event.data)
            elif isinstance(event, SendWindowOpen):
                writable = True
            elif isinstance(event, ReliableClosed):
                self.closed = event
        if received and self.on_message is not None:
            self.on_message(received, now)
        if writable and self.on_writable is not None:
            self.on_writable()
        transport = self.transport
        assert transport is not None
        frames = channel.datagrams_to_send(now)
        drop = self.drop
        if drop is not None:
            kept = [frame for frame in frames if not drop()]
            self.dropped += len(frames) - len(kept)
            frames = kept
        transport.send_all(frames)
        self._arm(channel.next_timer())

    def _arm(self, deadline: float | None) -> None:
        # A timer already armed at or before the deadline stays: firing early is harmless
        # (handle_timer does nothing early, and _fire re-arms), and it spares the loop's heap
        # a cancelled handle per flush (the RTO deadline moves with every ACK).
        if deadline is None or (self.timer_at is not None and self.timer_at <= deadline):
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self.timer = self.timer_at = None
        now = _now()
        channel = self.channel
        deadline = channel.next_timer()
        if deadline is not None and deadline <= now:
            channel.handle_timer(now)
        self.flush(now)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()


async def anchor_sample(
    seconds: float, loss: float = 0.0, seed: int = 1, **options: Any
) -> dict[str, float]:
    """Goodput (bytes/s) of one ReliableChannel pair over loopback UDP; ``options`` go to
    both channels (the rows use the defaults)."""
    counter = _Counter(seconds)
    message = bytes(range(256)) * (MESSAGE // 256) + bytes(MESSAGE % 256)
    rng = random.Random(seed)
    sender = _ChannelEndpoint(
        ReliableChannel(now=_now(), **options),
        drop=(lambda: rng.random() < loss) if loss else None,
    )
    receiver = _ChannelEndpoint(ReliableChannel(now=_now(), **options), on_message=counter.add)

    def fill() -> None:
        channel = sender.channel
        send = channel.send
        now = _now()
        while count := channel.writable_bytes // MESSAGE:
            for _ in range(count):
                send(message, now)
        channel.can_send(MESSAGE)  # says no: arms SendWindowOpen

    sender.on_writable = fill
    ta, tb = await _socket_pair(sender.received, receiver.received, _BatchedSocket)
    sender.transport, receiver.transport = ta, tb
    try:
        fill()
        sender.flush(_now())
        await asyncio.sleep(WARMUP)
        counter.begin(_now())
        await asyncio.wait_for(counter.done, seconds + 30.0)
        stats = sender.channel.stats
    finally:
        sender.close()
        receiver.close()
    return {
        "goodput": counter.goodput(),
        "dropped": sender.dropped,
        "retransmissions": stats.retransmissions,
        "fast_retransmits": stats.fast_retransmits,
        "probes": stats.probes,
        "timeouts": stats.timeouts,
        "frames_sent": stats.frames_sent,
        "srtt": stats.srtt or 0.0,
        "congestion_events": stats.congestion_events,
    }


async def raw_sample(seconds: float, kind: type[_Socket] = _Socket) -> dict[str, float]:
    """Goodput (bytes/s) of raw asyncio UDP datagrams of the same size, through sockets of
    ``kind`` (:class:`_BatchedSocket`: with the channel's offloads, the reference row)."""
    counter = _Counter(seconds)
    message = bytes(range(256)) * (MESSAGE // 256) + bytes(MESSAGE % 256)
    state = {"sent": 0, "received": 0, "lost": 0}
    loop = asyncio.get_running_loop()
    transports: list[_Socket] = []

    def top_up() -> None:
        count = RAW_WINDOW - (state["sent"] - state["received"] - state["lost"])
        if count > 0:
            transports[0].send_copies(message, count)
            state["sent"] += count

    last = [loop.time()]

    def on_receive(batch: list[bytes]) -> None:
        now = loop.time()
        last[0] = now
        state["received"] += len(batch)
        counter.add(sum(map(len, batch)), now)
        top_up()

    def watchdog() -> None:
        if counter.done.done():
            return
        if loop.time() - last[0] > STALL:
            state["lost"] = state["sent"] - state["received"]
            top_up()
        loop.call_later(STALL, watchdog)

    ta, tb = await _socket_pair(lambda batch: None, on_receive, kind)
    transports[:] = [ta, tb]
    try:
        top_up()
        loop.call_later(STALL, watchdog)
        await asyncio.sleep(WARMUP)
        counter.begin(loop.time())
        await asyncio.wait_for(counter.done, seconds + 30.0)
    finally:
        ta.close()
        tb.close()
    return {"goodput": counter.goodput(), "lost": state["lost"], "sent": state["sent"]}


async def _measure(quick: bool) -> dict[str, list[dict[str, float]]]:
    repeats = 5 if quick else 15
    seconds = 0.3 if quick else 1.0
    seeds = iter(range(1, 10_000))
    samplers: dict[str, Callable[[], Any]] = {
        "raw": lambda: raw_sample(seconds),
        "raw_offload": lambda: raw_sample(seconds, _BatchedSocket),
        "anchor": lambda: anchor_sample(seconds),
        "anchor_loss": lambda: anchor_sample(seconds, LOSS, next(seeds)),
    }
    names = list(samplers)
    for name in names:
        await samplers[name]()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for i in range(repeats):
        for name in rotation(names, i):
            gc.collect()
            runs[name].append(await samplers[name]())
    return runs


def run_samples(quick: bool) -> tuple[str, dict[str, list[dict[str, float]]]]:
    """Every sample, on a new event loop: uvloop's when installed, else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found]

        loop, loop_name = uvloop.new_event_loop(), "uvloop"
    except ImportError:
        loop, loop_name = asyncio.new_event_loop(), "asyncio"
    try:
        return loop_name, loop.run_until_complete(_measure(quick))
    finally:
        loop.close()


def tcp_friendly_rate(srtt: float, loss: float = LOSS, size: int = MESSAGE) -> float:
    """Bytes per second of a TCP-friendly flow (RFC 5348 §3.1's throughput equation with
    b = 1 and without its timeout term, the Mathis et al. formula): s / (R sqrt(2p/3))."""
    return size / (srtt * (2 * loss / 3) ** 0.5) if srtt > 0 else float("nan")


def rows(loop_name: str, runs: dict[str, list[dict[str, float]]]) -> list[Result]:
    """The result rows of a set of samples (medians, MB/s)."""
    mb = {n: statistics.median(r["goodput"] for r in runs[n]) / 1e6 for n in runs}
    friendly = statistics.median(tcp_friendly_rate(r["srtt"]) for r in runs["anchor_loss"]) / 1e6
    return [
        result(
            "channel",
            "MB/s",
            mb["anchor"],
            mb["raw"],
            f"raw UDP send/recv ({loop_name}, {MESSAGE}-byte datagrams): clean",
        ),
        result(
            "channel",
            "MB/s",
            mb["anchor"],
            mb["raw_offload"],
            f"offloaded raw UDP ({loop_name}, the channel's UdpBatchIO: UDP_SEGMENT sends,"
            f" UDP_GRO reads where the OS offers them), for reference: clean",
        ),
        result(
            "channel",
            "MB/s",
            mb["anchor_loss"],
            friendly,
            f"TCP-friendly rate at {LOSS:.0%} loss, s / (R sqrt(2p/3)) with the lossy runs' "
            f"own SRTT (RFC 5348 §3.1): at {LOSS:.0%} loss",
        ),
    ]


def measure(quick: bool) -> list[Result]:
    """Goodput in MB/s: clean vs raw UDP, and at 5 % loss vs the TCP-friendly rate; as
    root, the bottleneck rows too (:mod:`benchmarks.bottleneck`)."""
    from . import bottleneck

    return [*rows(*run_samples(quick)), *bottleneck.measure(quick)]


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.channel [--quick]``: medians, ratios and every sample."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.channel")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    loop_name, runs = run_samples(args.quick)
    mb = {n: statistics.median(r["goodput"] for r in runs[n]) / 1e6 for n in runs}
    out = {
        "loop": loop_name,
        "median_MBps": mb,
        "ratios": {
            "clean_vs_raw": mb["anchor"] / mb["raw"],
            "clean_vs_offloaded_raw": mb["anchor"] / mb["raw_offload"],
            "loss_vs_clean": mb["anchor_loss"] / mb["anchor"],
            "loss_vs_tcp_friendly": rows(loop_name, runs)[2]["ratio"],
        },
        "seconds": time.perf_counter() - start,
        "runs": runs,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
