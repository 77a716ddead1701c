"""Two aiortc peers in one process, one data channel, over loopback: on aioice or on Anchor.

``python -m benchmarks.aiortc_peers --ice anchor|aioice [--policy P] [--turn IP:PORT --user
NAME:PASSWORD] [--messages N] [--runs R]`` prints one JSON object per run:

    {"ice": "anchor", "connection_class": "aioice.ice.Connection",
     "anchor": true, "selected_pair": {"local": {"type", "address"}, "remote": {...}},
     "peers": [{"selected_pair", "nominated": [[local type, remote type]...],
                "advertised": [candidate types signalled]} for the offerer, the answerer],
     "open_ms": ..., "messages": N, "in_order": true, "messages_per_s": ...}

``--size N`` sends N-byte binary messages instead of short strings (the ``link`` row of
``anchor bench``, :mod:`benchmarks.link`).

(``anchor``, ``selected_pair`` and ``peers`` describe Anchor's connection under each peer:
false, null and empty records on aioice).

``--ice anchor`` calls :func:`anchor_ice.compat.install_aioice` (with the policy and host
candidates on 127.0.0.1) before importing aiortc; ``--ice aioice`` uses the real aioice,
made to gather on 127.0.0.1 only (it leaves loopback out by itself). Either way aiortc gets
no ICE server but the ``--turn`` one (``RTCConfiguration(iceServers=[])``: its default is a
public STUN server), so nothing leaves 127.0.0.1. The run happens in a process of its own
because aiortc binds ``aioice``'s names when it is first imported.

One sample: the offerer creates the data channel, the offer and answer are exchanged
(gathering included), the clock runs from the first setLocalDescription to the channel's
``open`` (``open_ms``); then N messages go from the offerer to the answerer, each checked
in order, timed from the first send to the last arrival (``messages_per_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

LOOPBACK = "127.0.0.1"


def _install(ice: str, policy: str | None) -> None:
    if ice == "anchor":
        from anchor_ice.compat import install_aioice

        install_aioice(policy=policy, host_ips=[LOOPBACK])
    else:
        import aioice.ice

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [LOOPBACK]  # type: ignore[assignment]


def _pair_info(pair: Any) -> dict[str, Any] | None:
    if pair is None:
        return None
    return {
        side: {"type": str(candidate.type), "address": list(candidate.address)}
        for side, candidate in (("local", pair.local), ("remote", pair.remote))
    }


def _anchor_record(peer: Any) -> dict[str, Any]:
    """What Anchor's connection under one peer did (empty on aioice)."""
    sctp = peer.sctp
    assert sctp is not None
    connection = sctp.transport.transport._connection
    anchor = getattr(connection, "anchor", None)
    if anchor is None:
        return {}
    return {
        "selected_pair": _pair_info(anchor.selected_pair),
        "nominated": [[str(p.local.type), str(p.remote.type)] for p in anchor.nominated_pairs],
        "advertised": sorted({str(c.type) for c in anchor.local_candidates}),
    }


def _messages(count: int, size: int | None) -> list[str] | list[bytes]:
    """The messages of a run: ``"message i"`` strings, or ``size``-byte binary messages
    (the index in their first 4 bytes) for the ``link`` row."""
    if size is None:
        return [f"message {i}" for i in range(count)]
    return [i.to_bytes(4, "big") + bytes(size - 4) for i in range(count)]


async def _run(
    ice: str,
    messages: int,
    turn: str | None,
    user: str | None,
    timeout: float,
    size: int | None = None,
) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

    servers = []
    if turn is not None:
        name, _, password = (user or ":").partition(":")
        servers.append(RTCIceServer(f"turn:{turn}", username=name, credential=password))
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=servers))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=servers))
    received: list[Any] = []
    payloads = _messages(messages, size)
    opened = asyncio.Event()
    done = asyncio.Event()
    try:
        channel = offerer.createDataChannel("anchor")

        @answerer.on("datachannel")
        def on_datachannel(remote: Any) -> None:
            @remote.on("message")
            def on_message(message: str | bytes) -> None:
                received.append(message)
                if len(received) == messages:
                    done.set()

        @channel.on("open")
        def on_open() -> None:
            opened.set()

        start = time.perf_counter()
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await asyncio.wait_for(opened.wait(), timeout)
        open_s = time.perf_counter() - start
        start = time.perf_counter()
        for payload in payloads:
            channel.send(payload)
        await asyncio.wait_for(done.wait(), timeout)
        transfer_s = time.perf_counter() - start
        sctp = offerer.sctp
        assert sctp is not None
        connection = sctp.transport.transport._connection
        offer_side, answer_side = _anchor_record(offerer), _anchor_record(answerer)
        return {
            "ice": ice,
            "connection_class": f"{type(connection).__module__}.{type(connection).__name__}",
            "anchor": bool(offer_side),
            "selected_pair": offer_side.get("selected_pair"),
            "peers": [offer_side, answer_side],
            "open_ms": round(open_s * 1000, 3),
            "messages": len(received),
            "in_order": received == payloads,
            "messages_per_s": round(messages / transfer_s, 1),
        }
    finally:
        await offerer.close()
        await answerer.close()


def sample(
    ice: str, messages: int, timeout: float = 60.0, size: int | None = None
) -> dict[str, Any]:
    """One run of the two peers on ``ice`` in a process of its own (its JSON object)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.aiortc_peers", "--ice", ice,
         "--messages", str(messages), *(["--size", str(size)] if size else [])],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"aiortc on {ice} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if result["messages"] != messages or not result["in_order"]:
        raise AssertionError(f"aiortc on {ice} lost or reordered messages: {result}")
    if (ice == "anchor") != result["anchor"]:
        raise AssertionError(f"aiortc ran on the wrong ICE: {result}")
    return result


def measure(quick: bool) -> list[dict[str, Any]]:
    """``anchor bench aiortc``: aiortc's data channel on Anchor (through the compat layer)
    and on aioice, runs alternating (a process each): median open time (ms) and median
    messages per second."""
    from importlib.metadata import version

    from . import result, rotation

    repeats, messages = (3, 500) if quick else (9, 2000)
    names = ["anchor", "aioice"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i in range(repeats):
        for name in rotation(names, i):
            runs[name].append(sample(name, messages))

    def median(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[name])

    baseline = f"aiortc {version('aiortc')} on aioice {version('aioice')}"
    return [
        result("aiortc", "ms", median("anchor", "open_ms"), median("aioice", "open_ms"),
               f"open: {baseline}; data channel open, gathering included (Anchor: Ta 50 ms, "
               f"no a=ice-pacing from aiortc)"),
        result("aiortc", "msg/s", median("anchor", "messages_per_s"),
               median("aioice", "messages_per_s"),
               f"rate: {baseline}; {messages} messages over the open channel"),
    ]  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aiortc_peers")
    parser.add_argument("--ice", choices=["anchor", "aioice"], default="anchor")
    parser.add_argument("--policy", choices=["standard", "gateway", "relay"])
    parser.add_argument("--turn", help="IP:PORT of a TURN server on loopback")
    parser.add_argument("--user", help="NAME:PASSWORD for --turn")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, help="binary messages of this many bytes")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    _install(args.ice, args.policy)
    for _ in range(args.runs):
        result = asyncio.run(
            _run(args.ice, args.messages, args.turn, args.user, args.timeout, args.size)
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
