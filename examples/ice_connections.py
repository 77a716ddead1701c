"""Two ICE ``Connection`` objects exchanging data (RFC 8445), the way aioice users know.

Self-contained, on 127.0.0.1, no server needed: host candidates only, the standard policy
(RFC 8445 regular nomination of the best valid pair). The "signalling" is a function that
copies each side's credentials and candidates to the other; in an application they travel
through whatever channel it has (SDP offer/answer, a WebSocket...), for instance as the
``candidate:`` lines of :meth:`anchor_ice.Candidate.to_sdp`.

Run: ``python examples/ice_connections.py``. Exit 0 and ``connected on host/host ...``.
"""

from __future__ import annotations

import asyncio
import sys

from anchor_ice import Connection, IceError
from anchor_stun import AnchorError, format_address

LOOPBACK = "127.0.0.1"


async def signal(a: Connection, b: Connection) -> None:
    """What an offer/answer carries: ufrag, password, candidates, end-of-candidates."""
    for src, dst in ((a, b), (b, a)):
        dst.remote_username = src.local_username
        dst.remote_password = src.local_password
        for candidate in src.local_candidates:
            await dst.add_remote_candidate(candidate.to_sdp())  # SDP text works, as a Candidate
        await dst.add_remote_candidate(None)  # end-of-candidates (RFC 8838)
        # Both sides propose a Ta (a=ice-pacing): checks then go every 5 ms, not 50 ms.
        dst.remote_ta = src.local_ta


async def main() -> None:
    offerer = Connection(ice_controlling=True, host_ips=[LOOPBACK])
    answerer = Connection(ice_controlling=False, host_ips=[LOOPBACK])
    async with offerer, answerer:  # closing both: sockets closed, allocations released
        await asyncio.gather(offerer.gather_candidates(), answerer.gather_candidates())
        for candidate in offerer.local_candidates:
            print(f"offerer  {candidate.to_sdp()}")
        await signal(offerer, answerer)
        await asyncio.wait_for(asyncio.gather(offerer.connect(), answerer.connect()), 10)

        pair = offerer.selected_pair
        assert pair is not None
        await offerer.send(b"ping")
        got = await asyncio.wait_for(answerer.recv(), 5)
        await answerer.send(got.replace(b"i", b"o"))
        back = await asyncio.wait_for(offerer.recv(), 5)
        if (got, back) != (b"ping", b"pong"):
            raise SystemExit(f"error: exchanged {got!r} and {back!r}")
        print(
            f"connected on {pair.local_type}/{pair.remote_type} "
            f"{format_address(pair.local_address)} <-> {format_address(pair.remote.address)}: "
            f"ping -> pong ok"
        )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (AnchorError, IceError, OSError, TimeoutError) as exc:
        sys.exit(f"error: {exc!r}")
