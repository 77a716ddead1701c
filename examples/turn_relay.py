"""A TURN allocation relaying to a peer (RFC 8656): allocate, permit, send, bind a channel.

Self-contained: the script starts Anchor's TURN server on 127.0.0.1 (one user, loopback
peers allowed, as for a test: a production server refuses loopback peers with 403) and a UDP
echo peer, then with :class:`anchor_turn.TurnConnection`:

1. allocates a relayed address (the first Allocate is answered 401; the client retries with
   the long-term credentials, RFC 8489 §9.2);
2. installs a permission for the peer's IP (RFC 8656 §9) and sends through a Send
   indication (§11); the echo comes back as a Data indication;
3. binds a channel (§12) and sends again, now as ChannelData;
4. leaves the ``async with`` block, which releases the allocation (Refresh, LIFETIME 0).

Run: ``python examples/turn_relay.py``. Exit 0 and ``relayed ... echo ok`` on success.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

from anchor_stun import AnchorError, format_address
from anchor_turn import TurnConnection, loopback_runner

LOOPBACK = "127.0.0.1"
USER, PASSWORD, REALM = "alice", "correct horse battery staple", "example.org"


def free_udp_port() -> int:
    """A UDP port free on loopback now (the TURN server needs a concrete one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Echo(asyncio.DatagramProtocol):
    """The peer: sends every datagram back where it came from, and remembers who sent it."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sources.append((str(addr[0]), int(addr[1])))
        self.transport.sendto(b"echo: " + data, addr)


async def main() -> None:
    loop = asyncio.get_running_loop()
    port = free_udp_port()
    server = loopback_runner(port, {USER: PASSWORD}, REALM)
    await server.start()
    echo_transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=(LOOPBACK, 0))
    peer = echo_transport.get_extra_info("sockname")[:2]
    try:
        async with await TurnConnection.connect((LOOPBACK, port), USER, PASSWORD) as turn:
            created = await turn.allocate()
            relayed = created.relayed  # the first (relayed_addresses: two for a dual allocation)
            print(f"allocated {format_address(relayed)} for {created.lifetime} s")
            await turn.create_permission(peer[0])
            turn.send(b"hello through a Send indication", peer)
            data, source = await asyncio.wait_for(turn.recv(), 5)
            print(f"from {format_address(source)}: {data.decode()}")

            channel = await turn.bind_channel(peer)
            turn.send(b"hello through ChannelData", peer)
            data, source = await asyncio.wait_for(turn.recv(), 5)
            print(f"channel {channel:#06x}, from {format_address(source)}: {data.decode()}")

            if set(echo.sources) != {relayed}:
                raise SystemExit(f"error: the peer saw {echo.sources}, not the relayed address")
        if server.core.allocation_count() != 0:
            raise SystemExit("error: the allocation was not released")
        print(
            f"relayed {format_address(relayed)} -> peer {format_address(peer)}: echo ok, released"
        )
    finally:
        echo_transport.close()
        server.close()
        await server.wait_closed()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (AnchorError, OSError, TimeoutError) as exc:
        sys.exit(f"error: {exc!r}")
