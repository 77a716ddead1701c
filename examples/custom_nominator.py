"""A custom nominator: which valid pair an ICE agent nominates, and when (RFC 8445 §8.1.1).

RFC 8445 leaves the controlling agent two choices: when to stop checking (the stopping
criterion) and which valid pair to nominate (the evaluation criterion). Anchor puts both
behind the :class:`anchor_ice.Nominator` protocol, four methods:

- ``advertise(candidate)``: is this local candidate signalled to the peer (and checked from)?
- ``choose(view, now)``: controlling side, the valid pair to nominate now, or None to wait;
- ``next_timer(view)``: when ``choose`` should run again even if nothing happens;
- ``accept(pair, view)``: controlled side, whether to accept the peer's nomination (False
  answers 400, RFC 8445 §7.3.1.5).

``PinnedFastest`` below keeps a link on one network (say a VPN's addresses) and picks, among
the valid pairs there, the one with the lowest measured round-trip time, once every check
has finished or ``patience`` seconds after the first valid pair. Both sides use it.

Self-contained, on loopback: each side has host candidates on 127.0.0.1, 127.0.0.2 and
127.0.0.3, and the nominator pins the link to 127.0.0.2/31 (.2 and .3: four pairs to choose
from, .1 never advertised). Run: ``python examples/custom_nominator.py``. Exit 0 and
``nominated 127.0.0.x:... <-> 127.0.0.y:... (rtt ...): data ok`` on success.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys

from anchor_ice import (
    Candidate,
    CandidatePair,
    Connection,
    IceError,
    NominationView,
    Nominator,
)
from anchor_stun import AnchorError, format_address


class PinnedFastest:
    """Only candidates inside ``network``; of their valid pairs, the lowest RTT."""

    def __init__(self, network: str, patience: float = 0.5) -> None:
        self.network = ipaddress.ip_network(network)
        self.patience = patience

    def _inside(self, candidate: Candidate) -> bool:
        return ipaddress.ip_address(candidate.ip) in self.network

    def advertise(self, candidate: Candidate) -> bool:
        return self._inside(candidate)

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        pairs = [p for p in view.valid_pairs if self._inside(p.local) and self._inside(p.remote)]
        if not pairs:
            return None
        waited = view.first_valid_at is not None and now >= view.first_valid_at + self.patience
        if view.pending_pairs and not waited:
            return None  # checks still running: a faster pair may yet come
        return min(pairs, key=lambda p: p.rtt if p.rtt is not None else float("inf"))

    def next_timer(self, view: NominationView) -> float | None:
        if view.first_valid_at is None:
            return None  # nothing valid yet: the next check result will call choose()
        return view.first_valid_at + self.patience

    def accept(self, pair: CandidatePair, view: NominationView) -> bool:
        return self._inside(pair.local) and self._inside(pair.remote)


async def main() -> None:
    pinned = {"127.0.0.2", "127.0.0.3"}
    nominator = PinnedFastest("127.0.0.2/31")
    assert isinstance(nominator, Nominator)  # the protocol is runtime-checkable
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    a = Connection(ice_controlling=True, host_ips=hosts, nominator=nominator)
    b = Connection(ice_controlling=False, host_ips=hosts, nominator=nominator)
    async with a, b:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        for src, dst in ((a, b), (b, a)):
            dst.remote_username, dst.remote_password = src.local_username, src.local_password
            dst.remote_ta = src.local_ta
            for candidate in src.local_candidates:  # only what advertise() let through
                await dst.add_remote_candidate(candidate)
            await dst.add_remote_candidate(None)
        print(f"advertised by a: {[format_address(c.address) for c in a.local_candidates]}")
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)

        pair = a.selected_pair
        assert pair is not None and b.selected_pair is not None
        for ip in (pair.local.ip, pair.remote.ip, b.selected_pair.local.ip):
            if ip not in pinned:
                raise SystemExit(f"error: the link left the pinned network: {pair}")
        await a.send(b"over the pinned network")
        if await asyncio.wait_for(b.recv(), 5) != b"over the pinned network":
            raise SystemExit("error: data did not arrive")
        rtt = f"{pair.rtt * 1000:.2f} ms" if pair.rtt is not None else "unmeasured"
        print(
            f"nominated {format_address(pair.local_address)} <-> "
            f"{format_address(pair.remote.address)} (rtt {rtt}): data ok"
        )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (AnchorError, IceError, OSError, TimeoutError) as exc:
        sys.exit(f"error: {exc!r}")
