"""Harness of the reliable datagram channel's receive path (anchor_link.reliable), plain and
sealed (anchor_link.seal).

The first byte picks a mode, sealing and a small or default configuration:

- *injection*: one channel that already has data in flight receives what the fuzzer makes:
  raw datagrams, frames with a valid crc32c (sealed by the peer's key when sealing is on, so
  they reach the frame parser), replays, and meanwhile sends, closes and lets time pass;
- *network*: two channels joined by a network the fuzzer controls (deliver in any order,
  drop, duplicate, corrupt a byte; with sealing also inject raw bytes), then a healing phase
  that delivers everything.

Contracts checked: ``receive_datagram``, ``datagrams_to_send``, ``handle_timer`` never raise
(``send`` only raises :class:`ReliableChannelError`); every frame sent fits ``mtu`` and starts with a
byte in 192-255; the receive buffer stays within ``receive_window`` frames and a partial
message within ``max_message`` (what a peer can make us hold); after ``handle_timer(now)`` the
next deadline is in the future; in network mode each side receives exactly a prefix of what
the other sent, in order, and after healing all of it unless a side gave up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import crc32c

from anchor_link.reliable import (
    FIRST_BYTE_MIN,
    PLAIN_FIRST_BYTE,
    CloseReason,
    MessageReceived,
    ReliableChannel,
    ReliableChannelError,
    ReliableClosed,
    ReliableEvent,
)
from anchor_link.seal import Sealer

from .common import Reader, check

T0 = 100.0
_KEYS = [bytes([i]) * 32 for i in (1, 2, 3, 4)]
_STEPS = (0.001, 0.05, 0.2, 1.0, 3.0, 30.0, 61.0)


def _sealers() -> tuple[Sealer, Sealer]:
    """Two sealers that talk to each other (a sends with key 1, b receives with it)."""
    a = Sealer(_KEYS[0], _KEYS[1], _KEYS[2], _KEYS[3])
    b = Sealer(_KEYS[2], _KEYS[3], _KEYS[0], _KEYS[1])
    return a, b


def _rng(n: int) -> bytes:
    return bytes((0xC7 + i) & 0xFF for i in range(n))


@dataclass
class _Config:
    mtu: int
    send_window: int
    receive_window: int
    max_message: int

    def channel(self, seal: Sealer | None, now: float) -> ReliableChannel:
        return ReliableChannel(
            mtu=self.mtu,
            send_window=self.send_window,
            receive_window=self.receive_window,
            max_message=self.max_message,
            seal=seal,
            rng=_rng,
            now=now,
        )


_SMALL = _Config(mtu=100, send_window=16, receive_window=16, max_message=600)
_DEFAULT = _Config(mtu=1200, send_window=128, receive_window=256, max_message=65536)


def _audit(ch: ReliableChannel, cfg: _Config, out: list[bytes]) -> None:
    for frame in out:
        check(len(frame) <= cfg.mtu, f"{len(frame)}-byte frame, mtu {cfg.mtu}")
        check(frame[0] >= FIRST_BYTE_MIN, f"frame starts with {frame[0]:#x}")
    check(len(ch._rcv_buf) <= cfg.receive_window, f"{len(ch._rcv_buf)} frames buffered")
    check(ch._partial_size <= cfg.max_message, "partial message above max_message")
    fin = ch._fin_seq is not None  # the FIN may take the window one past (channel.py)
    check(len(ch._out) <= cfg.send_window + fin, "more frames kept than the send window")
    stats = ch.stats
    for name in ("frames_received", "duplicates", "dropped_invalid", "dropped_crc"):
        check(getattr(stats, name) >= 0, f"negative {name}")


def _events(ch: ReliableChannel, received: list[bytes], closed: list[ReliableClosed]) -> None:
    while (event := ch.next_event()) is not None:
        check(isinstance(event, ReliableEvent), f"not a ReliableEvent: {event!r}")
        if isinstance(event, MessageReceived):
            received.append(event.data)
        elif isinstance(event, ReliableClosed):
            closed.append(event)
            check(len(closed) == 1, "ReliableClosed reported twice")


def _timer(ch: ReliableChannel, now: float) -> None:
    ch.handle_timer(now)
    deadline = ch.next_timer()
    check(deadline is None or deadline > now, f"next_timer {deadline} <= now {now} after handling")


def _try_send(ch: ReliableChannel, data: bytes, now: float) -> bool:
    try:
        ch.send(data, now)
    except ReliableChannelError:
        return False
    return True


# --------------------------------------------------------------------------- injection


def _injection(r: Reader, cfg: _Config, sealed: bool) -> None:
    now = T0
    peer, mine = _sealers() if sealed else (None, None)
    rx = cfg.channel(mine, now)
    for size in (5, cfg.mtu * 2, 0):  # data in flight, so that ACKs have something to say
        _try_send(rx, bytes(size), now)
    _audit(rx, cfg, rx.datagrams_to_send(now))
    history: list[bytes] = []
    received: list[bytes] = []
    closed: list[ReliableClosed] = []
    for _ in range(64):
        if not r.left:
            break
        op = r.byte() % 7
        if op == 0:
            wire = r.chunk()
            history.append(wire)
            rx.receive_datagram(wire, now)
        elif op == 1:  # a frame with a valid crc (and seal): it reaches the parser
            first = max(FIRST_BYTE_MIN, r.byte()) if sealed else PLAIN_FIRST_BYTE
            frame = bytes((first,)) + r.chunk()
            frame += crc32c.crc32c(frame).to_bytes(4, "little")
            wire = peer.seal(first, frame[1:]) if peer is not None else frame
            history.append(wire)
            rx.receive_datagram(wire, now)
        elif op == 2:
            if history:
                rx.receive_datagram(history[r.byte() % len(history)], now)
        elif op == 3:
            now += r.pick(_STEPS)
            _timer(rx, now)
        elif op == 4:
            _try_send(rx, r.chunk(), now)
        elif op == 5:
            rx.close(now)
        else:
            rx.receive_datagram(b"", now)
        _audit(rx, cfg, rx.datagrams_to_send(now))
        _events(rx, received, closed)


# --------------------------------------------------------------------------- network


@dataclass
class _Side:
    channel: ReliableChannel
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    closed: list[ReliableClosed] = field(default_factory=list)
    wire: list[bytes] = field(default_factory=list)  # datagrams on their way to this side


def _network(r: Reader, cfg: _Config, sealed: bool) -> None:
    now = T0
    seal_a, seal_b = _sealers() if sealed else (None, None)
    a = _Side(cfg.channel(seal_a, now))
    b = _Side(cfg.channel(seal_b, now))
    sides = (a, b)

    def pump() -> None:
        for src, dst in ((a, b), (b, a)):
            out = src.channel.datagrams_to_send(now)
            _audit(src.channel, cfg, out)
            dst.wire.extend(out)
            _events(src.channel, src.received, src.closed)

    def deliver(dst: _Side, index: int, keep: bool = False) -> None:
        if dst.wire:
            index %= len(dst.wire)
            data = dst.wire[index] if keep else dst.wire.pop(index)
            dst.channel.receive_datagram(data, now)

    for _ in range(96):
        if not r.left:
            break
        op = r.byte() % 10
        side = sides[op & 1]
        if op < 2:
            data = r.chunk() * (r.byte() % 8 + 1)
            if _try_send(side.channel, data, now):
                side.sent.append(data)
        elif op < 4:
            deliver(side, r.byte())
        elif op < 6:
            if side.wire:
                side.wire.pop(r.byte() % len(side.wire))
        elif op == 6:
            deliver(side, r.byte(), keep=True)  # duplicate
        elif op == 7:
            now += r.pick(_STEPS)
            for s in sides:
                _timer(s.channel, now)
        elif op == 8:
            sides[r.byte() & 1].channel.close(now)
        else:  # corrupt one byte of a datagram in flight (or, sealed, inject raw bytes)
            target = sides[r.byte() & 1]
            if sealed and r.byte() & 1:
                target.channel.receive_datagram(bytes((0xC0 | r.byte(),)) + r.chunk(), now)
            elif target.wire:
                data = target.wire[r.byte() % len(target.wire)]
                at = r.u16() % len(data)
                bad = data[:at] + bytes((data[at] ^ (r.byte() | 1),)) + data[at + 1 :]
                target.channel.receive_datagram(bad, now)
        pump()
        for src, dst in ((a, b), (b, a)):
            n = len(dst.received)
            check(dst.received == src.sent[:n], "messages lost, duplicated, altered or reordered")

    # Heal: deliver everything, let timers run, until all is acknowledged or a side gives up.
    for _ in range(400):
        while a.wire or b.wire:
            for dst in sides:
                while dst.wire:
                    dst.channel.receive_datagram(dst.wire.pop(0), now)
            pump()
        done = all(len(d.received) == len(s.sent) for s, d in ((a, b), (b, a)))
        idle = all(s.channel.in_flight == 0 for s in sides)
        if done and idle:
            break
        deadlines = [t for t in (s.channel.next_timer() for s in sides) if t is not None]
        if not deadlines:
            break
        now = max(now, min(deadlines))
        for s in sides:
            _timer(s.channel, now)
        pump()
    gave_up = any(c.reason == CloseReason.UNREACHABLE for s in sides for c in s.closed)
    for src, dst in ((a, b), (b, a)):
        check(dst.received == src.sent[: len(dst.received)], "not a prefix after healing")
        if not gave_up:
            check(len(dst.received) == len(src.sent), "messages never delivered after healing")


def channel(data: bytes) -> None:
    """Run one injection or network program (module docstring)."""
    r = Reader(data)
    mode = r.byte()
    cfg = _SMALL if mode & 4 else _DEFAULT
    if mode & 1:
        _network(r, cfg, sealed=bool(mode & 2))
    else:
        _injection(r, cfg, sealed=bool(mode & 2))
