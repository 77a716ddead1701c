"""``TurnConnection`` (anchor_turn.aio.client) and ``anchor turn`` over real loopback sockets,
against Anchor's own TURN server (``TurnServerRunner``) started in the test's event loop.

The protocol logic is tested with a fake clock in test_turn_client.py; these tests prove the
adapter: sockets and framing over UDP, TCP and TLS, IPv6 and dual allocation, waiting for the
core's events, the timer that drives automatic refreshes, 438 retries, release (the server core
then counts no allocation), a lost connection, and an ICMP-refused server failing fast.
The same adapter against coturn: conformance/test_turn_coturn.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from anchor_cli import turn as turn_cli
from anchor_cli.main import build_parser
from anchor_stun.attributes import Family
from anchor_stun.errors import AllocationError, TurnError
from anchor_stun.events import Address
from anchor_stun.message import Message, MessageClass
from anchor_stun.server import StunServer
from anchor_turn.aio.client import TurnConnection
from anchor_turn.aio.server import TurnServerRunner, UdpRelayAllocator
from anchor_turn.auth import StaticUsers
from anchor_turn.client import TurnState
from anchor_turn.events import AllocationRefreshed, TurnEvent
from anchor_turn.server import TurnServer
from tests.helpers import free_port

REALM = "example.org"
USER, PASSWORD = "alice", "secret"
TRANSPORTS = ("udp", "tcp", "tls")


def _has_loopback_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_v6 = pytest.mark.skipif(not _has_loopback_v6(), reason="no IPv6 loopback here")


class Server:
    """A running TurnServerRunner and where it listens."""

    def __init__(self, runner: TurnServerRunner, port: int, tls_port: int, v6_port: int | None):
        self.runner = runner
        self.core: TurnServer = runner.core
        self.port = port
        self.tls_port = tls_port
        self.v6_port = v6_port

    def address(self, transport: str) -> Address:
        return ("127.0.0.1", self.tls_port if transport == "tls" else self.port)


@asynccontextmanager
async def turn_server(
    tls_files: tuple[Path, Path], *, v6: bool = False, **core_options: Any
) -> AsyncIterator[Server]:
    """Anchor's TURN server on loopback: UDP+TCP on one port, TLS on another, (::1 UDP)."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port, tls_port = free_port("both"), free_port("both")
    v6_port = free_port("both") if v6 else None
    relay_ips = ["127.0.0.1", "::1"] if v6 else ["127.0.0.1"]
    core = TurnServer(
        realm=REALM,
        auth=StaticUsers({USER: PASSWORD}, realm=REALM),
        relay=UdpRelayAllocator(relay_ips),
        stun=StunServer(primary=("127.0.0.1", port)),
        allow_loopback_peers=True,
        **core_options,
    )
    runner = TurnServerRunner(
        core,
        udp=[("::1", v6_port)] if v6_port else [],
        tcp=[("127.0.0.1", port)],
        tls=[("127.0.0.1", tls_port)],
        tls_context=context,
    )
    await runner.start()
    try:
        yield Server(runner, port, tls_port, v6_port)
    finally:
        runner.close()
        await runner.wait_closed()
    assert runner.open_sockets() == 0


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, Address]] = []
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen.append((data, (str(addr[0]), int(addr[1]))))
        self.transport.sendto(data, addr)


@asynccontextmanager
async def echo_peer(ip: str = "127.0.0.1") -> AsyncIterator[tuple[Address, _Echo]]:
    """A UDP echo peer on loopback: (its address, its protocol with what it saw)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Echo, local_addr=(ip, 0))
    sock = transport.get_extra_info("sockname")
    try:
        yield (str(sock[0]), int(sock[1])), protocol
    finally:
        transport.close()


async def connect(
    server: Server, transport: str, tls_files: tuple[Path, Path], **kwargs: Any
) -> TurnConnection:
    context = None
    if transport == "tls":
        context = ssl.create_default_context(cafile=str(tls_files[0]))
    return await TurnConnection.connect(
        server.address(transport),
        USER,
        kwargs.pop("password", PASSWORD),
        transport,  # type: ignore[arg-type]
        ssl_context=context,
        **kwargs,
    )


async def echo_of(conn: TurnConnection, payload: bytes, timeout: float = 2.0) -> Any:
    """The next DataReceived carrying ``payload``."""
    while True:
        event = await asyncio.wait_for(conn.recv_event(), timeout)
        if event.data == payload:
            return event


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_allocate_send_channel_refresh_release(
    tls_files: tuple[Path, Path], transport: str
) -> None:
    async def main() -> None:
        async with turn_server(tls_files) as server, echo_peer() as (peer, echo):
            async with await connect(server, transport, tls_files) as conn:
                created = await conn.allocate()
                relayed = created.relayed
                assert conn.relayed == relayed and created.mapped == conn.local
                # one shape (issue 23 item 6): the first address, and all of them
                assert conn.relayed_addresses == created.relayed_addresses == (relayed,)
                assert server.core.allocation_count() == 1
                assert server.core.relayed_addresses() == [relayed]

                await conn.create_permission(peer[0])
                conn.send(b"indication", peer)
                event = await echo_of(conn, b"indication")
                assert event.channel is None and event.peer == peer
                assert (b"indication", relayed) in echo.seen

                number = await conn.bind_channel(peer)
                conn.send(b"odd-sized data", peer)  # 14 bytes: padded over TCP/TLS
                event = await echo_of(conn, b"odd-sized data")
                assert event.channel == number and event.peer == peer

                assert await conn.refresh() == created.lifetime
            assert conn.state is TurnState.RELEASED
            assert server.core.allocation_count() == 0  # released, not left to expire

    run(main())


@needs_v6
def test_ipv6_allocation_and_dual_allocation_on_loopback(tls_files: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with turn_server(tls_files, v6=True) as server:
            assert server.v6_port is not None
            async with echo_peer("::1") as (peer6, _), echo_peer() as (peer4, _):
                # over IPv6 to the server, an IPv6 relay (REQUESTED-ADDRESS-FAMILY)
                async with await TurnConnection.connect(
                    ("::1", server.v6_port), USER, PASSWORD, family=Family.IPV6
                ) as conn:
                    created = await conn.allocate()
                    assert created.relayed[0] == "::1" and created.mapped == conn.local
                    await conn.create_permission("::1")
                    conn.send(b"six", peer6)
                    assert (await echo_of(conn, b"six")).peer == peer6
                # dual allocation (ADDITIONAL-ADDRESS-FAMILY): one relay per family
                async with await connect(
                    server, "udp", tls_files, additional_family=Family.IPV6
                ) as conn:
                    created = await conn.allocate()
                    assert sorted(ip for ip, _ in created.relayed_addresses) == ["127.0.0.1", "::1"]
                    assert conn.relayed_addresses == created.relayed_addresses
                    assert conn.relayed == created.relayed == created.relayed_addresses[0]
                    await conn.create_permission("127.0.0.1", "::1")
                    await conn.bind_channel(peer6)
                    conn.send(b"four", peer4)
                    conn.send(b"six", peer6)
                    assert (await echo_of(conn, b"four")).peer == peer4
                    assert (await echo_of(conn, b"six")).channel is not None
            assert server.core.allocation_count() == 0

    run(main())


def test_automatic_refresh_is_driven_by_the_core_timer(tls_files: tuple[Path, Path]) -> None:
    """A 1-second allocation is refreshed at half its lifetime without anyone asking."""

    async def main() -> None:
        events: list[TurnEvent] = []
        async with turn_server(tls_files, default_lifetime=1, max_lifetime=1) as server:
            async with await connect(server, "udp", tls_files, on_event=events.append) as conn:
                created = await conn.allocate()
                assert created.lifetime == 1
                start = time.monotonic()
                while not any(isinstance(e, AllocationRefreshed) for e in events):
                    assert time.monotonic() - start < 2, events
                    await asyncio.sleep(0.05)
                # not at once: at half the lifetime (a busy machine can only make it later;
                # that it came early enough shows below, the allocation outliving 1 s)
                assert time.monotonic() - start > 0.3
                await asyncio.sleep(0.8)  # past the original expiry: still alive
                assert conn.state is TurnState.ALLOCATED
                assert server.core.allocation_count() == 1

    run(main())


@pytest.mark.parametrize("transport", ("udp", "tcp"))
def test_stale_nonce_is_retried(
    tls_files: tuple[Path, Path], transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with turn_server(tls_files, nonce_lifetime=0.3) as server:
            async with await connect(server, transport, tls_files) as conn:
                codes: list[int] = []
                receive = conn.client.receive_datagram

                def spy(data: bytes, addr: Address, now: float) -> None:
                    msg = Message.decode(data)
                    if msg.msg_class == MessageClass.ERROR and msg.error is not None:
                        codes.append(msg.error.code)
                    receive(data, addr, now)

                monkeypatch.setattr(conn.client, "receive_datagram", spy)
                await conn.allocate()
                await asyncio.sleep(0.5)
                assert await conn.refresh() > 0
                assert codes == [401, 438]

    run(main())


def test_refresh_with_lifetime_zero_releases(tls_files: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with turn_server(tls_files) as server:
            async with await connect(server, "udp", tls_files) as conn:
                await conn.allocate()
                assert await conn.refresh(0) == 0
                assert conn.state is TurnState.RELEASED
                assert server.core.allocation_count() == 0
                with pytest.raises(AllocationError):
                    conn.send(b"too late", ("127.0.0.1", 9))

    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_password_is_allocation_error_401(
    tls_files: tuple[Path, Path], transport: str
) -> None:
    async def main() -> None:
        async with turn_server(tls_files) as server:
            async with await connect(server, transport, tls_files, password="nope") as conn:
                with pytest.raises(AllocationError) as caught:
                    await conn.allocate()
                assert caught.value.code == 401 and conn.state is TurnState.FAILED

    run(main())


def test_lost_connection_fails_waiters_and_ends_receiving(tls_files: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with turn_server(tls_files) as server:
            conn = await connect(server, "tcp", tls_files)
            await conn.allocate()
            receiving = asyncio.ensure_future(conn.recv())
            await asyncio.sleep(0.05)
            server.runner.close()  # the server goes away: the TCP connection is reset
            with pytest.raises(TurnError):
                await asyncio.wait_for(receiving, 2)
            with pytest.raises(AllocationError):
                await conn.refresh()
            start = time.monotonic()
            await conn.close()  # nothing to release over a dead connection: no waiting
            assert time.monotonic() - start < 2.5 and conn.closed  # release_timeout is 5 s
            assert [item async for item in conn] == []

    run(main())


def test_unreachable_server_fails_fast_over_udp() -> None:
    """Nobody listens: the ICMP port unreachable ends the Allocate at once (not after 39.5 s)."""

    async def main() -> None:
        start = time.monotonic()
        async with await TurnConnection.connect(
            ("127.0.0.1", free_port("both")), USER, PASSWORD
        ) as conn:
            with pytest.raises(AllocationError) as caught:
                await conn.allocate()
        assert caught.value.code == 0 and "unreachable" in caught.value.reason
        assert time.monotonic() - start < 2

    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_anchor_turn_run_echoes_through_anchor_server(
    tls_files: tuple[Path, Path], transport: str
) -> None:
    """The code behind ``anchor turn`` (turn_cli.run), in-process against Anchor's server."""

    async def main() -> None:
        async with turn_server(tls_files) as server, echo_peer() as (peer, echo):
            host, port = server.address(transport)
            argv = ["turn", f"{host}:{port}", "--user", f"{USER}:{PASSWORD}",
                    "--transport", transport, "--peer", f"{peer[0]}:{peer[1]}", "--json",
                    "--ca-file", str(tls_files[0])]  # fmt: skip
            out, echoes = await turn_cli.run(build_parser().parse_args(argv))
            assert set(out) == {"relayed", "mapped", "lifetime", "echo"}
            assert out["echo"] is True
            assert [e.path for e in echoes] == ["send-indication", "channel-data"]
            assert echoes[0].channel is None and echoes[1].channel is not None
            assert len(echo.seen) == 2
            assert server.core.allocation_count() == 0

    run(main())
