"""A STUN query (RFC 8489 §3): one Binding request to a STUN server, and the address it saw.

Self-contained: the script starts Anchor's STUN server on 127.0.0.1 (an ephemeral port) in
its own event loop, asks it once with :func:`anchor_stun.binding_request`, and stops it.
Against a real server, only the last part is needed::

    result = await binding_request("stun.example.org:3478")

Run: ``python examples/stun_query.py``. Exit 0 and ``mapped 127.0.0.1:PORT ...`` on success.
"""

from __future__ import annotations

import asyncio
import sys

from anchor_stun import (
    AnchorError,
    StunServer,
    StunServerRunner,
    binding_request,
    format_address,
)

LOOPBACK = "127.0.0.1"


async def main() -> None:
    # The server: a sans-I/O core (StunServer) served by an asyncio runner on UDP.
    runner = StunServerRunner(StunServer(primary=(LOOPBACK, 0), software="anchor example"))
    await runner.start()
    try:
        _, server = runner.listeners[0]  # ("udp", (ip, port)) with the port the kernel chose
        print(f"STUN server on udp {format_address(server)}")
        # The client: one Binding transaction, bounded to 5 s (the RFC's own limit is 39.5 s).
        result = await binding_request(server, "udp", timeout=5.0)
        if result.mapped != result.local:
            raise SystemExit(f"error: on loopback the mapped address should be ours: {result}")
        print(
            f"mapped {format_address(result.mapped)} "
            f"(sent from {format_address(result.local)}, rtt {result.rtt * 1000:.2f} ms)"
        )
    finally:
        runner.close()
        await runner.wait_closed()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (AnchorError, OSError) as exc:
        sys.exit(f"error: {exc}")
