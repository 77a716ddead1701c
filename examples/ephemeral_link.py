"""An ephemeral link between two processes: formed on the first send, dissolved when idle.

Self-contained, on 127.0.0.1. This process starts Anchor's STUN/TURN server and a WebSocket
rendezvous (the signalling: what ``anchor serve --signal`` runs), then a second process
(this same script with ``--peer``) holding the endpoint ``bob``, which echoes what it gets.
Here ``alice`` sends a few messages to ``bob``:

1. the first :meth:`anchor_link.LinkEndpoint.send` forms a link: gathering, an offer and an
   answer through the rendezvous, ICE with the default gateway policy (never a host pair:
   on loopback, where every direct pair is a host pair, that means relay/relay), and a
   reliable channel sealed with keys made for this link only;
2. later sends and bob's echoes reuse the link;
3. after ``IDLE`` seconds without a message both ends dissolve it: close handshake, TURN
   allocations released, sockets closed. Only the signalling subscription stays.

Run: ``python examples/ephemeral_link.py``. Exit 0 and ``link formed on relay/relay ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from anchor_ice import TurnServerConfig
from anchor_link import (
    LinkDissolved,
    LinkEndpoint,
    LinkFormed,
    RendezvousServer,
    WebSocketSignalling,
)
from anchor_stun import AnchorError
from anchor_turn import loopback_runner

LOOPBACK = "127.0.0.1"
USER, PASSWORD, REALM = "alice", "correct horse battery staple", "example.org"
IDLE = 1.0
"""Seconds without a message before the link dissolves (LinkEndpoint's default is 30)."""
MESSAGES = [b"hello", b"x" * 1500, bytes(range(256)) * 200, b"bye"]
"""A short one, one over a datagram's size, one of 51,200 bytes, and a last one."""


def free_udp_port() -> int:
    """A UDP port free on loopback now (the TURN server needs a concrete one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def endpoint(name: str, signal_url: str, turn_port: int) -> LinkEndpoint:
    """One endpoint, configured as both sides are: our STUN/TURN server, loopback hosts."""
    return LinkEndpoint(
        name,
        WebSocketSignalling(signal_url),
        stun=f"{LOOPBACK}:{turn_port}",
        turn=[TurnServerConfig((LOOPBACK, turn_port), USER, PASSWORD)],
        idle_timeout=IDLE,
        host_ips=[LOOPBACK],  # gather on loopback only (the default: every interface)
    )


async def bob(signal_url: str, turn_port: int) -> None:
    """The second process: echo every message, then wait for the link to dissolve."""
    async with endpoint("bob", signal_url, turn_port) as link:
        print("ready", flush=True)  # subscribed: alice may send now
        echoed = 0
        async for peer, data in link:
            await link.send(peer, data)
            echoed += 1
            if echoed == len(MESSAGES):
                break
        dissolved = await link.wait_for(LinkDissolved, timeout=IDLE + 15)
        if link.open_sockets() or link.relays():
            raise SystemExit("bob: error: sockets or allocations left after dissolving")
        print(f"bob: echoed {echoed}, dissolved ({dissolved.reason})", flush=True)


async def alice() -> None:
    """This process: the servers, the second process, and alice's sends."""
    turn_port = free_udp_port()
    server = loopback_runner(turn_port, {USER: PASSWORD}, REALM)
    await server.start()
    rendezvous = RendezvousServer(LOOPBACK, 0)
    await rendezvous.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--peer", rendezvous.url, str(turn_port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    try:
        if (await asyncio.wait_for(child.stdout.readline(), 20)).strip() != b"ready":
            raise SystemExit("error: the peer process did not start")
        async with endpoint("alice", rendezvous.url, turn_port) as link:
            for message in MESSAGES:
                await link.send("bob", message)
            for message in MESSAGES:
                peer, data = await asyncio.wait_for(link.recv(), 10)
                if (peer, data) != ("bob", message):
                    raise SystemExit(f"error: echo of {len(message)} bytes did not match")
            formed = await link.wait_for(LinkFormed, "bob", timeout=5)
            print(
                f"alice: formed on {formed.local_type}/{formed.remote_type} in "
                f"{formed.formed_ms:.0f} ms, sealed={formed.sealed}; {len(MESSAGES)} echoes ok"
            )
            dissolved = await link.wait_for(LinkDissolved, "bob", timeout=IDLE + 15)
            print(f"alice: dissolved ({dissolved.reason}) after {IDLE:g} s idle")
            sockets, relays = link.open_sockets(), link.relays()
        print((await asyncio.wait_for(child.stdout.readline(), 20)).decode().strip())
        if await asyncio.wait_for(child.wait(), 20) != 0:
            raise SystemExit("error: the peer process failed")
        allocations = server.core.allocation_count()
        if sockets or relays or allocations:
            raise SystemExit(f"error: left {sockets} sockets, {allocations} allocations")
        print(
            f"link formed on {formed.local_type}/{formed.remote_type}, "
            f"{len(MESSAGES)} messages echoed, dissolved: 0 allocations, 0 sockets left"
        )
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        rendezvous.close()
        await rendezvous.wait_closed()
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", nargs=2, metavar=("SIGNAL_URL", "TURN_PORT"),
                        help="run as the second process (started by the first)")  # fmt: skip
    args = parser.parse_args()
    if args.peer:
        asyncio.run(bob(args.peer[0], int(args.peer[1])))
    else:
        asyncio.run(alice())


if __name__ == "__main__":
    try:
        main()
    except (AnchorError, OSError, TimeoutError) as exc:
        sys.exit(f"error: {exc!r}")
