"""``anchor demo``: an ephemeral link between two processes, formed, used and dissolved.

Theory of operation
-------------------
:func:`run_demo` (the ``anchor demo`` process) starts, all on 127.0.0.1:

1. Anchor's STUN/TURN server in-process (:class:`~anchor_turn.aio.server.TurnServerRunner`,
   one user with a random name and password made for this run, loopback peers allowed: on
   loopback the relayed peer is 127.0.0.1 too);
2. a WebSocket rendezvous (:class:`~anchor_link.aio.signal.RendezvousServer`);
3. two peer processes, ``python -m anchor_cli.demo peer`` (``a`` sends, ``b`` echoes), each
   an :class:`~anchor_link.aio.endpoint.LinkEndpoint` told its settings by one JSON line on stdin.

When both peers are subscribed to the rendezvous, ``a`` sends :data:`MESSAGE_SIZES` (one
message of each size, up to 64 KiB) to ``b``: the first send forms the link (gather, offer and
answer through the rendezvous, ICE, the sealed channel); ``b`` echoes every message and ``a``
compares each echo with what it sent. Then nobody sends: after ``--idle`` seconds (2 by
default, so that the demo takes seconds; :class:`~anchor_link.aio.endpoint.LinkEndpoint` defaults to 30)
the link dissolves on both sides: the channel's close handshake, a short draining period
(:mod:`anchor_link.state`; about 1.2 s on loopback), then the TURN allocation is released
and the sockets closed. Under the gateway policy the link ends on a relay pair: on loopback
the STUN server sees no NAT, so no server-reflexive candidate is kept (it equals the host
candidate, RFC 8445 §5.1.3) and no srflx/prflx pair can ever appear; the
:class:`~anchor_ice.nominator.GatewayNominator` sees that once gathering is complete and takes
the relay pair without waiting its 2 s grace period (forming takes about 0.2 s).

What the summary reports is measured, not assumed:

- ``selected_pair``, ``formed_ms``: from ``a``'s :class:`~anchor_link.state.LinkFormed`.
  Under the default gateway policy every direct pair on loopback is a host pair, so the link
  ends on relay/relay; ``--policy standard`` shows the host pair it would take otherwise.
- ``messages``, ``bytes``: what ``a`` sent; ``lost``: messages whose echo did not come back
  byte for byte.
- ``dissolved``: both peers reported :class:`~anchor_link.state.LinkDissolved` (``reason``
  says which side went idle first: "idle" there, "closed by peer" on the other).
- ``allocations_left``: the TURN server's ``allocation_count()`` once both peers reported
  dissolution, while the peer processes are still running (so the allocations were released
  by the peers' Refresh with LIFETIME 0, not by a process exit or expiry);
  ``allocations_released`` counts those deletions.
- ``sockets_left``: socket file descriptors of each peer process (``/proc/self/fd`` entries
  that are ``socket:[inode]``, classified as udp, tcp or unix with ``/proc/self/net/*``)
  after dissolution, minus the same count taken after the peer subscribed to the rendezvous
  and before the first send, summed per kind over both peers (a kind that went down counts
  0). The baseline holds the rendezvous WebSocket (one tcp socket, the signalling
  subscription, which stays) and the event loop's self-pipe (a unix socketpair); it holds no
  udp socket. ``tasks_left`` is the same difference for ``asyncio.all_tasks()``.

Timestamps of the timeline are ``time.monotonic()`` read in each process (CLOCK_MONOTONIC is
one clock for the whole machine on Linux), relative to the demo's start.
"""


from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from anchor_link.aio.endpoint import LinkEndpoint
from anchor_link.aio.signal import RendezvousServer, WebSocketSignalling
from anchor_link.identity import Identity
from anchor_link.state import LinkDissolved, LinkEvent, LinkFailed, LinkFormed
from anchor_stun.aio.net import format_address
from anchor_stun.errors import AnchorError
from anchor_turn.aio.server import loopback_runner

__all__ = [
    "DEFAULT_DEMO_IDLE",
    "MESSAGE_SIZES",
    "DemoError",
    "count_sockets",
    "print_demo",
    "run_demo",
]

LOOPBACK = "127.0.0.1"
DEFAULT_DEMO_IDLE = 2.0
"""``--idle`` default: short, so that the demo shows a dissolution within seconds."""
MESSAGE_SIZES: tuple[int, ...] = (
    1, 64, 512, 1166, 1167, 4096, 16384, 32768, 61440, 65536, 100, 5,
)  # fmt: skip
"""One message of each size (1166 bytes fill one sealed frame; 61440 is 60 KiB)."""
PEER_TIMEOUT = 60.0
"""Seconds a peer process may take for its whole part (beyond the idle timeout)."""


class DemoError(AnchorError):
    """The demo could not run to its end (a peer failed, or something timed out)."""


# --------------------------------------------------------------------------- measuring


def count_sockets() -> dict[str, int]:
    """Socket file descriptors of this process by kind: ``udp``, ``tcp``, ``unix`` and
    ``other``, and their ``total`` (Linux: ``/proc/self/fd`` and ``/proc/self/net``)."""
    inodes: list[str] = []
    fd_dir = "/proc/self/fd"
    for entry in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(os.path.join(fd_dir, entry))
            if target.startswith("socket:["):
                inodes.append(target[8:-1])
    kinds: dict[str, str] = {}
    for kind, tables in (("udp", ("udp", "udp6")), ("tcp", ("tcp", "tcp6")), ("unix", ("unix",))):
        for table in tables:
            with contextlib.suppress(OSError), open(f"/proc/self/net/{table}") as f:
                header = f.readline().split()
                column = header.index("Inode") if kind == "unix" else 9
                for line in f:
                    fields = line.split()
                    if len(fields) > column:
                        kinds[fields[column]] = kind
    counts = {"udp": 0, "tcp": 0, "unix": 0, "other": 0}
    for inode in inodes:
        counts[kinds.get(inode, "other")] += 1
    counts["total"] = len(inodes)
    return counts


def _tasks() -> int:
    return len(asyncio.all_tasks())


# --------------------------------------------------------------------------- the peer process


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"t": time.monotonic(), "event": event, **fields}), flush=True)


def _event_fields(event: LinkEvent) -> dict[str, Any]:
    if isinstance(event, LinkFormed):
        return {
            "local": {"type": str(event.local_type), "address": format_address(event.local_address)},
            "remote": {
                "type": str(event.remote_type), "address": format_address(event.remote_address),
            },
            "formed_ms": round(event.formed_ms, 1),
            "offerer": event.offerer,
            "sealed": event.sealed,
            "peer_identity": event.peer_identity,
            "trust": event.trust,
        }  # fmt: skip
    if isinstance(event, LinkDissolved):
        return {
            "reason": event.reason, "clean": event.clean,
            "messages_sent": event.messages_sent, "messages_received": event.messages_received,
            "bytes_sent": event.bytes_sent, "bytes_received": event.bytes_received,
            "closing_ms": round(event.closing_seconds * 1000, 1),
        }  # fmt: skip
    if isinstance(event, LinkFailed):
        return {"reason": event.reason}
    return {}


async def _peer(config: dict[str, Any], stdin: asyncio.StreamReader) -> None:
    from anchor_cli.common import turn_servers

    name, peer = str(config["name"]), str(config["peer"])
    turn = config["turn"]

    def on_event(event: LinkEvent) -> None:
        _emit(type(event).__name__, peer=event.peer, **_event_fields(event))

    identity = Identity.from_private_bytes(base64.b64decode(str(config["identity"])))
    anchor = LinkEndpoint(
        name,
        WebSocketSignalling(str(config["signal"])),
        identity=identity,
        trusted_peers={str(k): str(v) for k, v in dict(config["trust"]).items()},
        stun=str(config["stun"]),
        turn=turn_servers(turn["uris"], turn["users"], ca_file=turn.get("ca_file"),
                          insecure=bool(turn.get("insecure"))),
        policy=str(config["policy"]),
        idle_timeout=float(config["idle"]),
        host_ips=[LOOPBACK],
        on_event=on_event,
    )
    await anchor.start()
    sockets_before, tasks_before = count_sockets(), _tasks()
    _emit("ready", sockets=sockets_before, tasks=tasks_before)
    matched = sent = sent_bytes = 0
    echo_task: asyncio.Task[None] | None = None
    if config["role"] == "sender":
        if (await stdin.readline()).strip() != b"go":
            return
        sizes = [int(s) for s in config["sizes"]]
        payloads = [os.urandom(size) for size in sizes]
        _emit("sending", messages=len(payloads), bytes=sum(sizes))
        for payload in payloads:
            await anchor.send(peer, payload)
            sent += 1
            sent_bytes += len(payload)
        _emit("sent", messages=sent, bytes=sent_bytes)
        for payload in payloads:
            try:
                _, echoed = await asyncio.wait_for(anchor.recv(), 10.0)
            except TimeoutError:
                break
            matched += echoed == payload
        _emit("echoed", matched=matched, lost=sent - matched)
    else:

        async def echo() -> None:
            async for source, data in anchor:
                await anchor.send(source, data)

        echo_task = asyncio.get_running_loop().create_task(echo())
    dissolved = await anchor.wait_for(LinkDissolved, peer, timeout=PEER_TIMEOUT)
    await asyncio.sleep(0)  # let the link's last task finish its step
    extra_tasks = 1 if echo_task is not None else 0  # the echo loop is the demo's, not the link's
    _emit(
        "report",
        sockets=count_sockets(), sockets_before=sockets_before,
        tasks=_tasks() - extra_tasks, tasks_before=tasks_before,
        relays=anchor.relays(), links=anchor.active_peers(),
        sent=sent, bytes=sent_bytes, matched=matched,
        received=dissolved.messages_received, reason=dissolved.reason,
    )  # fmt: skip
    await stdin.read()  # until the demo closes our stdin
    await anchor.close()
    if echo_task is not None:
        echo_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await echo_task


async def _peer_main() -> int:
    stdin = await _stdin_reader()
    line = await stdin.readline()
    try:
        config = json.loads(line)
        await asyncio.wait_for(_peer(config, stdin), PEER_TIMEOUT + float(config["idle"]) * 3)
    except (AnchorError, OSError, TimeoutError, ValueError, KeyError) as exc:
        _emit("error", reason=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


# --------------------------------------------------------------------------- the demo


@dataclass
class _PeerProc:
    name: str
    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: bytes = b""


@dataclass
class _Timeline:
    start: float
    rows: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, who: str, text: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        self.rows.append(((at - self.start) * 1000, who, text))


def _describe(who: str, event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "ready":
        s = event["sockets"]
        return (
            f"subscribed to the rendezvous; sockets: {s['udp']} udp, {s['tcp']} tcp, "
            f"{s['unix']} unix (baseline)"
        )
    if kind == "sending":
        return f"send {event['messages']} messages ({event['bytes']} bytes) to the peer: no link yet"
    if kind == "LinkFormed":
        role = "offerer, ICE controlling" if event["offerer"] else "answerer, ICE controlled"
        return (
            f"link formed in {event['formed_ms']:.0f} ms ({role}): "
            f"{event['local']['type']} {event['local']['address']} <-> "
            f"{event['remote']['type']} {event['remote']['address']}"
            + (", sealed" if event["sealed"] else "")
            + f"; the peer proved {event['peer_identity']} ({event['trust']})"
        )
    if kind == "sent":
        return f"{event['messages']} messages queued on the link"
    if kind == "echoed":
        return f"{event['matched']} echoes came back intact, {event['lost']} lost"
    if kind == "LinkDissolved":
        handshake = "close handshake and draining" if event["clean"] else "close timed out"
        return (
            f"link dissolved ({event['reason']}; {handshake} took {event['closing_ms']:.0f} ms): "
            f"{event['messages_sent']} sent, {event['messages_received']} received; TURN "
            "allocation released, sockets closed"
        )
    if kind == "LinkFailed":
        return f"link failed: {event['reason']}"
    if kind == "report":
        s, b = event["sockets"], event["sockets_before"]
        return (
            f"after dissolution: sockets {s['udp']} udp, {s['tcp']} tcp, {s['unix']} unix "
            f"(baseline {b['udp']}/{b['tcp']}/{b['unix']}), tasks {event['tasks']} "
            f"(baseline {event['tasks_before']}), TURN allocations held {event['relays']}"
        )
    if kind == "error":
        return f"error: {event['reason']}"
    return None


async def _read_peer(peer: _PeerProc, timeline: _Timeline, changed: asyncio.Event) -> None:
    assert peer.proc.stdout is not None
    while line := await peer.proc.stdout.readline():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        peer.events.append(event)
        text = _describe(peer.name, event)
        if text is not None:
            timeline.add(peer.name, text, float(event.get("t", time.monotonic())))
        changed.set()
    changed.set()


def _find(peer: _PeerProc, kind: str) -> dict[str, Any] | None:
    return next((e for e in peer.events if e.get("event") == kind), None)


async def _until(
    peers: Sequence[_PeerProc], kind: str, changed: asyncio.Event, timeout: float
) -> list[dict[str, Any]]:
    async def wait() -> list[dict[str, Any]]:
        while True:
            found = [_find(p, kind) for p in peers]
            if all(f is not None for f in found):
                return [f for f in found if f is not None]
            for p in peers:
                error = _find(p, "error")
                if error is not None:
                    raise DemoError(f"peer {p.name}: {error['reason']}")
                if p.proc.returncode is not None or p.proc.stdout is None or (
                    p.proc.stdout.at_eof()
                ):
                    err = p.stderr.decode(errors="replace").strip().splitlines()
                    raise DemoError(
                        f"peer {p.name} exited before {kind!r}" + (f": {err[-1]}" if err else "")
                    )
            changed.clear()
            await changed.wait()

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        raise DemoError(f"timed out waiting for {kind!r} from the peers") from None


async def run_demo(
    policy: str = "gateway",
    idle: float = DEFAULT_DEMO_IDLE,
    turn: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary (``timeline`` holds the rows for the table).
    ``turn``: the peers' TURN servers instead of the embedded one, ``{"uris": [...],
    "users": ["NAME:PASSWORD", ...], "ca_file": ..., "insecure": ...}`` (as ``--turn``,
    ``--user``, ``--ca-file``, ``--insecure``); ``allocations_left`` then counts what the
    peers still hold after dissolution, the embedded server seeing none of it."""
    from anchor_cli.common import free_loopback_port

    timeline = _Timeline(time.monotonic())
    port = free_loopback_port()
    user, password = f"demo-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    runner = loopback_runner(port, {user: password}, "anchor-demo", LOOPBACK)
    core = runner.core
    rendezvous = RendezvousServer(LOOPBACK, 0)
    peers: list[_PeerProc] = []
    readers: list[asyncio.Task[None]] = []
    changed = asyncio.Event()
    try:
        await runner.start()
        timeline.add("server", f"STUN/TURN server listening on udp {LOOPBACK}:{port} "
                     f"(user {user}, loopback peers allowed)")  # fmt: skip
        await rendezvous.start()
        timeline.add("server", f"rendezvous listening on {rendezvous.url}")
        base = {
            "signal": rendezvous.url, "stun": f"{LOOPBACK}:{port}", "policy": policy,
            "idle": idle, "sizes": list(MESSAGE_SIZES),
            "turn": turn or {"uris": [f"turn:{LOOPBACK}:{port}"], "users": [f"{user}:{password}"]},
        }  # fmt: skip
        # Each peer gets an identity made here and pins the other's (issue 16): the demo's
        # link is authenticated both ways with no set-up.
        identities = {"a": Identity.generate(), "b": Identity.generate()}
        if turn:
            timeline.add("server", "the peers relay through " + ", ".join(turn["uris"]))
        for name, other, role in (("a", "b", "sender"), ("b", "a", "echo")):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "anchor_cli.demo", "peer",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            peer = _PeerProc(name, proc)
            peers.append(peer)
            timeline.add(name, f"peer process started (pid {proc.pid}, role {role})")
            assert proc.stdin is not None
            config = {
                **base, "name": name, "peer": other, "role": role,
                "identity": base64.b64encode(identities[name].private_bytes()).decode(),
                "trust": {other: identities[other].public_text},
            }  # fmt: skip
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            readers.append(asyncio.get_running_loop().create_task(
                _read_peer(peer, timeline, changed)))  # fmt: skip
            readers.append(asyncio.get_running_loop().create_task(_drain_stderr(peer)))
        await _until(peers, "ready", changed, 30)
        sender = peers[0]
        assert sender.proc.stdin is not None
        sender.proc.stdin.write(b"go\n")
        reports = await _until(peers, "report", changed, PEER_TIMEOUT + idle * 3)
        if turn:  # an outside server: the peers' own count
            allocations_left = sum(int(report["relays"]) for report in reports)
            timeline.add("server", f"TURN allocations the peers still hold: {allocations_left}")
        else:
            allocations_left = core.allocation_count()
            timeline.add("server", f"TURN allocations alive: {allocations_left} "
                         f"(created {core.stats.allocations_created}, released by the peers "
                         f"{core.stats.allocations_deleted}, expired {core.stats.allocations_expired})")  # fmt: skip
        for peer in peers:
            assert peer.proc.stdin is not None
            peer.proc.stdin.close()
        for peer in peers:
            try:
                code = await asyncio.wait_for(peer.proc.wait(), 15)
            except TimeoutError:
                raise DemoError(f"peer {peer.name} did not exit") from None
            timeline.add(peer.name, f"peer process exited ({code})")
        formed = _find(sender, "LinkFormed")
        dissolved = [_find(p, "LinkDissolved") for p in peers]
        echoed = _find(sender, "echoed")
        sockets_left = tasks_left = 0
        for report in reports:
            after, before = report["sockets"], report["sockets_before"]
            sockets_left += sum(max(0, after[k] - before[k]) for k in ("udp", "tcp", "unix", "other"))
            tasks_left += max(0, report["tasks"] - report["tasks_before"])
        messages = reports[0]["sent"]
        summary: dict[str, Any] = {
            "selected_pair": {"local": formed["local"], "remote": formed["remote"]}
            if formed else None,
            "formed_ms": formed["formed_ms"] if formed else None,
            "messages": messages,
            "bytes": reports[0]["bytes"],
            "lost": messages - (echoed["matched"] if echoed else 0),
            "dissolved": all(d is not None for d in dissolved),
            "allocations_left": allocations_left,
            "sockets_left": sockets_left,
            "tasks_left": tasks_left,
            "allocations_released": core.stats.allocations_deleted,
            "reasons": {p.name: (d or {}).get("reason") for p, d in zip(peers, dissolved, strict=True)},
            "policy": policy,
            "idle_s": idle,
            "sealed": bool(formed and formed["sealed"]),
            "authenticated": bool(formed and formed["trust"] == "pinned"),
        }  # fmt: skip
    finally:
        for peer in peers:
            if peer.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    peer.proc.kill()
                await peer.proc.wait()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        rendezvous.close()
        await rendezvous.wait_closed()
        runner.close()
        await runner.wait_closed()
    timeline.rows.sort(key=lambda row: row[0])
    summary["timeline"] = [
        {"ms": round(at, 1), "who": who, "event": text} for at, who, text in timeline.rows
    ]
    return summary


async def _drain_stderr(peer: _PeerProc) -> None:
    assert peer.proc.stderr is not None
    peer.stderr = await peer.proc.stderr.read()


def print_demo(summary: dict[str, Any]) -> None:
    """The timeline and the summary as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"anchor demo: an ephemeral link ({summary['policy']} policy, "
                  f"idle {summary['idle_s']:g} s)")  # fmt: skip
    table.add_column("ms", justify="right")
    table.add_column("who")
    table.add_column("event")
    for row in summary["timeline"]:
        table.add_row(f"{row['ms']:.1f}", row["who"], row["event"])
    console.print(table)
    pair = summary["selected_pair"]
    result = Table(title="summary (measured)", show_header=False)
    result.add_column("what")
    result.add_column("value")
    if pair:
        result.add_row("selected pair", f"{pair['local']['type']} <-> {pair['remote']['type']}")
    result.add_row("formed in", f"{summary['formed_ms']} ms")
    if summary["policy"] == "gateway":
        result.add_row("", "the gateway policy takes a relay pair: no srflx/prflx pair can "
                       "appear on loopback (the STUN server sees no NAT)")  # fmt: skip
    result.add_row("messages / bytes", f"{summary['messages']} / {summary['bytes']}")
    result.add_row("lost", str(summary["lost"]))
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["reasons"].items())
    result.add_row("dissolved", f"{summary['dissolved']} ({reasons})")
    result.add_row("TURN allocations left", str(summary["allocations_left"]))
    result.add_row("sockets left", str(summary["sockets_left"]))
    result.add_row("link tasks left", str(summary["tasks_left"]))
    console.print(result)


def main(args: argparse.Namespace) -> int:
    """``anchor demo``: run, then print the tables or the JSON object."""
    from anchor_cli.common import UsageError, turn_servers

    if not 0 < args.idle <= 600:
        raise UsageError("--idle must be in (0, 600] seconds")
    turn = None
    if args.turn or args.user or args.ca_file or args.insecure:
        turn_servers(args.turn, args.user, ca_file=args.ca_file, insecure=args.insecure)  # check
        turn = {"uris": list(args.turn), "users": list(args.user), "ca_file": args.ca_file,
                "insecure": bool(args.insecure)}  # fmt: skip
    summary = asyncio.run(run_demo(args.policy, args.idle, turn))
    if args.json:
        out = {k: v for k, v in summary.items() if k != "timeline"}
        print(json.dumps(out))
    else:
        print_demo(summary)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["peer"]:
        sys.exit(asyncio.run(_peer_main()))
    sys.exit("usage: python -m anchor_cli.demo peer  (started by `anchor demo`)")
