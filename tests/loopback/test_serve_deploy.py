"""What deployments set on day one, through `anchor serve` over loopback (issue 21):
--external-ip, --alternate-server, --max-bps, --denied-peer-ip, --no-udp / --no-tcp."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from typing import Any

import pytest

from anchor_stun.errors import AllocationError
from anchor_turn import TurnConnection
from tests.helpers import anchor_serve, free_port, run_anchor, scrape

USER = ("alice", "wonderland")


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1


def test_external_ip_max_bps_and_denied_peers_through_anchor_serve() -> None:
    port, metrics = free_port(), free_port("tcp")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--user", ":".join(USER), "--allow-loopback-peers",
        "--external-ip", "203.0.113.50/127.0.0.1", "--max-bps", "20000",
        "--denied-peer-ip", "127.0.0.8-127.0.0.9", "--metrics", f"127.0.0.1:{metrics}",
    ):  # fmt: skip

        async def main() -> None:
            loop = asyncio.get_running_loop()
            transport, peer = await loop.create_datagram_endpoint(
                _Echo, local_addr=("127.0.0.1", 0)
            )
            peer_addr = transport.get_extra_info("sockname")[:2]
            async with await TurnConnection.connect(("127.0.0.1", port), *USER) as conn:
                created = await conn.allocate()
                # XOR-RELAYED-ADDRESS names the public side of the 1:1 NAT (coturn's -X).
                assert created.relayed[0] == "203.0.113.50"
                with pytest.raises(AllocationError) as refused:
                    await conn.create_permission("127.0.0.9")
                assert refused.value.code == 403
                await conn.bind_channel(peer_addr)
                for _ in range(300):  # 300 kB at once: over 20 kB/s after a 64 kB burst
                    conn.send(b"x" * 1000, peer_addr)
                    await asyncio.sleep(0)
                await asyncio.sleep(0.5)
            transport.close()
            assert 0 < peer.received < 300

        asyncio.run(main())
        values = scrape(metrics)
        assert values["anchor_turn_bandwidth_dropped_total"] > 0


def test_alternate_server_redirects_clients_to_the_other_server() -> None:
    first, second, metrics = free_port(), free_port(), free_port("tcp")
    common = ("--user", ":".join(USER), "--allow-loopback-peers")
    with anchor_serve("--listen", f"127.0.0.1:{first}", *common), anchor_serve(
        "--listen", f"127.0.0.1:{second}", *common, "--metrics", f"127.0.0.1:{metrics}",
        "--alternate-server", f"127.0.0.1:{first}", "--alternate-above", "0",
    ):  # fmt: skip

        async def main() -> None:
            async with await TurnConnection.connect(("127.0.0.1", second), *USER) as conn:
                await conn.allocate()
                assert conn.redirects == [("127.0.0.1", second)]
                assert conn.server == ("127.0.0.1", first)

        asyncio.run(main())
        assert scrape(metrics)["anchor_turn_redirected_total"] == 1


def test_no_udp_and_no_tcp_choose_the_listeners() -> None:
    port = free_port("both")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--user", ":".join(USER), "--tcp", "--no-udp"
    ) as lines:
        assert lines == [f"listening tcp 127.0.0.1:{port}"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))  # nothing holds the UDP port
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--user", ":".join(USER), "--tcp", "--no-tcp"
    ) as lines:
        assert lines == [f"listening udp 127.0.0.1:{port}"]
    for args in (["--no-udp", "--user", "a:b"], ["--max-bps", "10"],
                 ["--alternate-above", "1", "--user", "a:b"],
                 ["--denied-peer-ip", "1.2.3", "--user", "a:b"]):  # fmt: skip
        result = run_anchor("serve", "--listen", f"127.0.0.1:{port}", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def _next_event(server: subprocess.Popen[str], name: str) -> dict[str, Any]:
    """The next JSON log line of ``server``'s stderr whose event is ``name``."""
    assert server.stderr is not None
    while line := server.stderr.readline():
        record = json.loads(line)
        if record.get("event") == name:
            return dict(record["fields"])
    raise AssertionError(f"anchor serve exited before logging {name!r}")


def test_drain_redirects_new_allocations_and_waits_for_the_held_ones() -> None:
    """``--drain``: after SIGTERM the server answers new Allocates with 300 Try Alternate
    (RFC 8489 §10), keeps relaying for the allocations it holds, and exits 0 as soon as the
    last of them ends, long before its drain deadline."""
    first, second = free_port(), free_port()
    common = ("--user", ":".join(USER), "--allow-loopback-peers")
    with anchor_serve("--listen", f"127.0.0.1:{first}", *common), anchor_serve(
        "--listen", f"127.0.0.1:{second}", *common, "--drain", "120",
        "--log-format", "json", "--alternate-server", f"127.0.0.1:{first}",
    ) as draining:  # fmt: skip
        server = draining.process

        async def main() -> None:
            loop = asyncio.get_running_loop()
            transport, peer = await loop.create_datagram_endpoint(
                _Echo, local_addr=("127.0.0.1", 0)
            )
            peer_addr = transport.get_extra_info("sockname")[:2]
            held = await TurnConnection.connect(("127.0.0.1", second), *USER)
            try:
                await _hold_through_the_drain(held, peer, peer_addr)
            finally:
                await held.close()
                transport.close()

        async def _hold_through_the_drain(
            held: TurnConnection, peer: _Echo, peer_addr: tuple[str, int]
        ) -> None:
            await held.allocate()
            assert held.redirects == []  # not draining yet: no redirect
            await held.create_permission(peer_addr[0])
            server.send_signal(signal.SIGTERM)
            stopping = await asyncio.to_thread(_next_event, server, "stopping")
            assert stopping["allocations"] == 1 and stopping["drain"] == 120
            async with await TurnConnection.connect(("127.0.0.1", second), *USER) as late:
                await late.allocate()
                assert late.redirects == [("127.0.0.1", second)]
                assert late.server == ("127.0.0.1", first)
            assert server.poll() is None  # still draining: one allocation held
            held.send(b"still relayed", peer_addr)
            for _ in range(100):
                if peer.received:
                    break
                await asyncio.sleep(0.05)
            assert peer.received == 1

        asyncio.run(main())
        assert server.wait(timeout=30) == 0  # the drain ended with the last allocation
