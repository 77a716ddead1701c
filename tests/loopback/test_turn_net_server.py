"""TurnServerRunner and `anchor serve` with TURN, over real loopback sockets.

A :class:`~anchor_turn.client.TurnClient` is driven by hand over a real UDP socket or TCP
connection against a :class:`~anchor_turn.aio.server.TurnServerRunner` started in-process,
with a UDP echo peer on loopback (``allow_loopback_peers``): allocate, permission, Send
indication -> Data indication, ChannelBind, ChannelData both ways; IPv6 and dual relays on
::1; EVEN-PORT with a reservation; metrics scraped over HTTP; the TOML config file; and
``open_sockets() == 0`` after every close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from anchor_cli.main import build_parser
from anchor_cli.serve import (
    MetricsExporter,
    ServeError,
    _stats_collector,
    build_config,
    default_relay_ips,
)
from anchor_stun.attributes import Family, XorMappedAddress
from anchor_stun.framing import StreamFramer
from anchor_stun.integrity import turn_rest_password
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.server import StunServer
from anchor_turn.aio.server import (
    TurnServerRunner,
    UdpRelayAllocator,
    canonical_address,
    dont_fragment_supported,
)
from anchor_turn.auth import StaticUsers
from anchor_turn.client import TurnClient
from anchor_turn.events import (
    AllocationCreated,
    AllocationFailed,
    AllocationReleased,
    ChannelBindFailed,
    ChannelBound,
    DataReceived,
    PermissionCreated,
    PermissionFailed,
    TurnEvent,
)
from anchor_turn.server import TurnServer
from tests.helpers import anchor_json, anchor_serve, free_port, run_anchor

REALM = "example.org"
USERS = {"alice": "secret"}
E = TypeVar("E", bound=TurnEvent)
FAILURES = (AllocationFailed, PermissionFailed, ChannelBindFailed)


def _has_loopback_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_V6 = _has_loopback_v6()


# --------------------------------------------------------------------------- helpers


class EchoPeer:
    """A UDP peer that sends every datagram back where it came from."""

    def __init__(self, ip: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = canonical_address(self.sock.getsockname())
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._ready)

    def _ready(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                data, addr = self.sock.recvfrom(65535)
                self.received.append((data, canonical_address(addr)))
                self.sock.sendto(data, addr)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class Client:
    """A TurnClient driven by hand over a real UDP socket or TCP connection."""

    def __init__(
        self, server: tuple[str, int], transport: str = "udp", **options: Any
    ) -> None:
        self.server = server
        self.transport = transport
        self.options = options
        self.options.setdefault("rto", 0.1)
        self.turn = TurnClient(
            server,
            options.pop("username", "alice"),
            options.pop("password", "secret"),
            transport=transport,  # type: ignore[arg-type]
            **self.options,
        )
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[TurnEvent] = asyncio.Queue()
        self.framer = StreamFramer(channel_data=True)
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        if transport == "udp":
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.bind((server[0], 0))
        else:
            self.sock = socket.create_connection(server, timeout=2)
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._ready)
        self._timer: asyncio.TimerHandle | None = None

    def now(self) -> float:
        return self.loop.time()

    def pump(self) -> None:
        for transmit in self.turn.datagrams_to_send(self.now()):
            if self.transport == "udp":
                self.sock.sendto(transmit.data, transmit.addr)
            else:
                self.sock.sendall(transmit.data)
        while (event := self.turn.next_event()) is not None:
            self.events.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.turn.next_timer()
        self._timer = None if deadline is None else self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.turn.handle_timer(self.now())
        self.pump()

    def _ready(self) -> None:
        try:
            if self.transport == "udp":
                data, addr = self.sock.recvfrom(65535)
                self.turn.receive_datagram(data, canonical_address(addr), self.now())
            else:
                chunk = self.sock.recv(65535)
                if not chunk:
                    self.loop.remove_reader(self.sock.fileno())
                    return
                for frame in self.framer.feed(chunk):
                    self.turn.receive_datagram(frame, self.server, self.now())
        except BlockingIOError:
            return
        self.pump()

    async def expect(self, kind: type[E], timeout: float = 5.0) -> E:
        """The next event, which must be of ``kind``."""
        event = await asyncio.wait_for(self.events.get(), timeout)
        assert isinstance(event, kind), event
        return event

    async def allocate(self) -> AllocationCreated:
        self.turn.allocate(self.now())
        self.pump()
        return await self.expect(AllocationCreated)

    async def echo(self, data: bytes, peer: tuple[str, int]) -> DataReceived:
        self.turn.send(data, peer, self.now())
        self.pump()
        got = await self.expect(DataReceived)
        assert got.data == data and got.peer == peer
        return got

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def make_core(
    port: int,
    relay_ips: tuple[str, ...] = ("127.0.0.1",),
    **options: Any,
) -> TurnServer:
    allocator = UdpRelayAllocator(relay_ips, min_port=20000, max_port=32000)
    families = tuple(Family(f) for f in allocator.families)
    return TurnServer(
        realm=REALM,
        auth=StaticUsers(USERS, realm=REALM),
        relay=allocator,
        stun=StunServer(primary=("127.0.0.1", port)),
        allow_loopback_peers=True,
        address_families=families,
        **options,
    )


@contextlib.asynccontextmanager
async def serving(
    relay_ips: tuple[str, ...] = ("127.0.0.1",), **options: Any
) -> AsyncIterator[tuple[TurnServerRunner, tuple[str, int]]]:
    port = free_port("both")
    runner = TurnServerRunner(make_core(port, relay_ips, **options), tcp=[("127.0.0.1", port)])
    await runner.start()
    try:
        yield runner, ("127.0.0.1", port)
    finally:
        runner.close()
        await runner.wait_closed()
        assert runner.open_sockets() == 0


async def round_trip(client: Client, peer: EchoPeer) -> None:
    """Permission, Send -> Data indication, ChannelBind, ChannelData -> ChannelData."""
    created = await client.allocate()
    assert created.relayed_addresses and created.mapped is not None
    relayed = created.relayed
    client.turn.create_permission([peer.address[0]], client.now())
    client.pump()
    await client.expect(PermissionCreated)
    got = await client.echo(b"by send indication", peer.address)
    assert got.channel is None
    assert peer.received[-1] == (b"by send indication", relayed)
    number = client.turn.bind_channel(peer.address, client.now())
    client.pump()
    await client.expect(ChannelBound)
    got = await client.echo(b"by channel data", peer.address)
    assert got.channel == number
    assert peer.received[-1] == (b"by channel data", relayed)
    for size in (0, 1, 2, 3, 1200):
        payload = os.urandom(size)
        assert (await client.echo(payload, peer.address)).data == payload


def run(coro: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


# --------------------------------------------------------------------------- runner


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_allocate_permission_send_data_channel_round_trip(transport: str) -> None:
    async def main() -> None:
        async with serving() as (runner, server):
            peer = EchoPeer()
            client = Client(server, transport)
            try:
                await round_trip(client, peer)
                stats = runner.core.stats
                assert stats.allocations == 1 and stats.permissions == 1 and stats.channels == 1
                assert stats.to_peer_packets == stats.to_client_packets == 7
                assert runner.allocator.open_sockets() == 1
                client.turn.release(client.now())
                client.pump()
                await client.expect(AllocationReleased)
                assert runner.core.allocation_count() == 0
                assert runner.allocator.open_sockets() == 0
            finally:
                client.close()
                peer.close()

    run(main)


def test_data_sent_just_before_release_still_reaches_the_peer() -> None:
    """Send indications and the Refresh LIFETIME 0 that follows them arrive in one read
    batch: releasing the relay must not drop what the client had already sent."""

    async def main() -> None:
        async with serving() as (runner, server):
            peer = EchoPeer()
            client = Client(server)
            try:
                await client.allocate()
                client.turn.create_permission([peer.address[0]], client.now())
                client.pump()
                await client.expect(PermissionCreated)
                for i in range(20):
                    client.turn.send(b"last words %d" % i, peer.address, client.now())
                client.turn.release(client.now())
                client.pump()
                await client.expect(AllocationReleased)
                for _ in range(100):
                    if len(peer.received) >= 20:
                        break
                    await asyncio.sleep(0.01)
                assert [d for d, _ in peer.received] == [b"last words %d" % i for i in range(20)]
                assert runner.core.allocation_count() == 0
            finally:
                client.close()
                peer.close()
        # serving() asserts that every socket, the released relay included, is closed

    run(main)


def test_tcp_connection_close_ends_the_allocation() -> None:
    async def main() -> None:
        async with serving() as (runner, server):
            client = Client(server, "tcp")
            try:
                await client.allocate()
                assert runner.core.allocation_count() == 1
                assert runner.allocator.open_sockets() == 1
            finally:
                client.close()
            for _ in range(100):
                if runner.core.allocation_count() == 0:
                    break
                await asyncio.sleep(0.01)
            assert runner.core.allocation_count() == 0
            assert runner.allocator.open_sockets() == 0
            assert runner.core.stats.allocations_deleted == 1

    run(main)


def test_a_request_followed_by_junk_in_one_tcp_read_is_answered_before_the_close() -> None:
    """Bytes that are no frame close the connection, but the request that came before them
    in the same segment was accepted and is answered (nothing already accepted is lost)."""

    async def main() -> None:
        async with serving() as (_, server):
            reader, writer = await asyncio.open_connection(*server)
            try:
                request = Message(Method.BINDING, MessageClass.REQUEST, b"j" * 12, [])
                writer.write(request.encode(fingerprint=True) + b"\xff" * 24)
                await writer.drain()
                header = await asyncio.wait_for(reader.readexactly(20), 5)
                length = int.from_bytes(header[2:4], "big")
                answer = Message.decode(header + await reader.readexactly(length))
                assert answer.msg_class is MessageClass.SUCCESS
                assert answer.transaction_id == b"j" * 12
                assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
            finally:
                writer.close()

    run(main)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_binding_is_answered_on_the_turn_ports(transport: str) -> None:
    async def main() -> None:
        async with serving() as (_, server):
            request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12)).encode()
            if transport == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind(("127.0.0.1", 0))
                    sock.setblocking(False)
                    loop = asyncio.get_running_loop()
                    await loop.sock_sendto(sock, request, server)
                    data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 3)
                    local = sock.getsockname()
            else:
                reader, writer = await asyncio.open_connection(*server)
                writer.write(request)
                head = await asyncio.wait_for(reader.readexactly(20), 3)
                data = head + await reader.readexactly(int.from_bytes(head[2:4], "big"))
                local = writer.get_extra_info("sockname")
                writer.close()
                await writer.wait_closed()
            response = Message.decode(data)
            assert response.msg_class == MessageClass.SUCCESS
            mapped = response.get(XorMappedAddress)
            assert mapped is not None and mapped.address == local

    run(main)


def test_wrong_password_gets_no_allocation() -> None:
    async def main() -> None:
        async with serving() as (runner, server):
            client = Client(server, password="wrong")
            try:
                client.turn.allocate(client.now())
                client.pump()
                failed = await client.expect(AllocationFailed)
                assert failed.code == 401
                assert runner.core.stats.auth_failures >= 1
                assert runner.allocator.open_sockets() == 0
            finally:
                client.close()

    run(main)


@pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback")
def test_ipv6_relay_on_loopback_and_dual_allocation() -> None:
    async def main() -> None:
        async with serving(("127.0.0.1", "::1")) as (runner, server):
            peer6 = EchoPeer("::1")
            peer4 = EchoPeer()
            v6 = Client(server, family=Family.IPV6)
            dual = Client(server, additional_family=Family.IPV6)
            try:
                created = await v6.allocate()
                assert [a[0] for a in created.relayed_addresses] == ["::1"]
                v6.turn.create_permission(["::1"], v6.now())
                v6.pump()
                await v6.expect(PermissionCreated)
                await v6.echo(b"over an IPv6 relay", peer6.address)
                v6.turn.bind_channel(peer6.address, v6.now())
                v6.pump()
                await v6.expect(ChannelBound)
                got = await v6.echo(b"channel over IPv6", peer6.address)
                assert got.channel is not None
                assert peer6.received[-1][1] == created.relayed

                both = await dual.allocate()
                assert sorted(a[0] for a in both.relayed_addresses) == ["127.0.0.1", "::1"]
                dual.turn.create_permission(["127.0.0.1", "::1"], dual.now())
                dual.pump()
                await dual.expect(PermissionCreated)
                await dual.echo(b"dual v4", peer4.address)
                await dual.echo(b"dual v6", peer6.address)
                assert runner.allocator.open_sockets() == 3
            finally:
                v6.close()
                dual.close()
                peer6.close()
                peer4.close()

    run(main)


def test_even_port_reservation_token() -> None:
    async def main() -> None:
        async with serving() as (runner, server):
            first = Client(server, even_port=True)
            try:
                created = await first.allocate()
                port = created.relayed[1]
                assert port % 2 == 0
                token = first.turn.reserved_token
                assert token is not None and len(token) == 8
                assert runner.allocator.open_sockets() == 2  # N and the reserved N+1
                second = Client(server, reservation_token=token)
                try:
                    reserved = await second.allocate()
                    assert reserved.relayed_addresses == (("127.0.0.1", port + 1),)
                    assert runner.allocator.open_sockets() == 2
                finally:
                    second.close()
                third = Client(server, reservation_token=token)  # a token serves once
                try:
                    third.turn.allocate(third.now())
                    third.pump()
                    failed = await third.expect(AllocationFailed)
                    assert failed.code == 508
                finally:
                    third.close()
            finally:
                first.close()

    run(main)


def test_reservation_expires() -> None:
    async def main() -> None:
        port = free_port("both")
        core = make_core(port)
        assert isinstance(core.relay, UdpRelayAllocator)
        core.relay.reservation_lifetime = 0.05
        runner = TurnServerRunner(core)
        await runner.start()
        client = Client(("127.0.0.1", port), even_port=True)
        try:
            await client.allocate()
            assert runner.allocator.open_sockets() == 2
            await asyncio.sleep(0.2)
            assert runner.allocator.open_sockets() == 1
        finally:
            client.close()
            runner.close()
            await runner.wait_closed()
        assert runner.open_sockets() == 0

    run(main)


def test_relay_port_range_is_respected_and_exhaustion_is_508() -> None:
    async def main() -> None:
        port = free_port("both")
        base = free_port("both")
        allocator = UdpRelayAllocator(["127.0.0.1"], min_port=base, max_port=base)
        core = TurnServer(
            realm=REALM,
            auth=StaticUsers(USERS, realm=REALM),
            relay=allocator,
            stun=StunServer(primary=("127.0.0.1", port)),
            address_families=(Family.IPV4,),
        )
        runner = TurnServerRunner(core)
        await runner.start()
        one, two = Client(("127.0.0.1", port)), Client(("127.0.0.1", port))
        try:
            assert (await one.allocate()).relayed_addresses == (("127.0.0.1", base),)
            two.turn.allocate(two.now())
            two.pump()
            assert (await two.expect(AllocationFailed)).code == 508
        finally:
            one.close()
            two.close()
            runner.close()
            await runner.wait_closed()
        assert runner.open_sockets() == 0

    run(main)


def test_canonical_addresses() -> None:
    assert canonical_address(("127.0.0.1", 5)) == ("127.0.0.1", 5)
    assert canonical_address(("::ffff:127.0.0.1", 5, 0, 0)) == ("::ffff:7f00:1", 5)
    assert canonical_address(("fe80::1%lo", 7, 0, 1)) == ("fe80::1", 7)
    assert canonical_address(("2001:DB8:0:0::1", 9, 3, 0)) == ("2001:db8::1", 9)


def test_runner_needs_a_socket_allocator() -> None:
    class Fake:
        def allocate(self, *args: Any) -> None:
            return None

        def release(self, addr: Any) -> None:
            pass

    core = TurnServer(realm=REALM, auth=StaticUsers(USERS, realm=REALM), relay=Fake())
    with pytest.raises(Exception, match="UdpRelayAllocator"):
        TurnServerRunner(core)
    with pytest.raises(Exception, match="relay IP"):
        UdpRelayAllocator(["0.0.0.0"])


# --------------------------------------------------------------------------- DONT-FRAGMENT

IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_WANT, IP_PMTUDISC_DO = 10, 0, 1, 2  # Linux
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux options")


def fragmentation_mode(sock: socket.socket) -> int:
    """IP_MTU_DISCOVER of an IPv4 socket (IP_PMTUDISC_DO: DF 1), IPV6_DONTFRAG of an IPv6 one."""
    if sock.family == socket.AF_INET6:
        return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG)
    return sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER)


class ModeRecorder:
    """Stands in for a relay socket in the allocator: reads the socket's fragmentation mode
    back from the kernel at every ``sendto`` (what that datagram left with) and counts the
    ``setsockopt`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.modes: list[int] = []
        self.switches = 0

    def sendto(self, data: bytes, addr: Any) -> int:
        self.modes.append(fragmentation_mode(self.sock))
        return self.sock.sendto(data, addr)

    def setsockopt(self, *args: Any) -> None:
        self.switches += 1
        self.sock.setsockopt(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def record_relay(runner: TurnServerRunner, relayed: tuple[str, int]) -> ModeRecorder:
    recorder = ModeRecorder(runner.allocator.sockets[relayed])
    runner.allocator.sockets[relayed] = recorder  # type: ignore[assignment]
    return recorder


async def bound_channel(client: Client, peer: tuple[str, int]) -> None:
    client.turn.bind_channel(peer, client.now())
    client.pump()
    await client.expect(ChannelBound)


async def permitted(client: Client, ip: str) -> None:
    client.turn.create_permission([ip], client.now())
    client.pump()
    await client.expect(PermissionCreated)


@linux_only
def test_send_indication_with_dont_fragment_sets_df_on_the_relay_socket() -> None:
    """RFC 8656 §11.2, §14: IP_PMTUDISC_DO when the datagram of a Send indication carrying
    DONT-FRAGMENT leaves, IP_PMTUDISC_DONT (DF 0) for ChannelData and from the start; one
    setsockopt per change of mode, none while it stays."""

    async def main() -> None:
        async with serving() as (runner, server):
            peer = EchoPeer()
            client = Client(server, dont_fragment=True)
            try:
                assert dont_fragment_supported(Family.IPV4)
                assert runner.allocator.dont_fragment and runner.core.dont_fragment
                relayed = (await client.allocate()).relayed
                sock = runner.allocator.sockets[relayed]
                assert fragmentation_mode(sock) == IP_PMTUDISC_DONT  # not Linux's WANT
                recorder = record_relay(runner, relayed)
                await permitted(client, peer.address[0])
                for i in range(2):  # one batch, both with DONT-FRAGMENT: one switch
                    client.turn.send(b"df %d" % i, peer.address, client.now())
                client.pump()
                for _ in range(2):
                    await client.expect(DataReceived)
                assert [d for d, _ in peer.received] == [b"df 0", b"df 1"]
                assert recorder.modes == [IP_PMTUDISC_DO] * 2 and recorder.switches == 1
                assert runner.allocator.dont_fragment_sockets == {recorder}
                await bound_channel(client, peer.address)
                await client.echo(b"by channel", peer.address)
                await client.echo(b"by channel again", peer.address)
                assert recorder.modes[2:] == [IP_PMTUDISC_DONT] * 2 and recorder.switches == 2
                assert fragmentation_mode(sock) == IP_PMTUDISC_DONT
                assert runner.allocator.dont_fragment_sockets == set()
                assert runner.core.stats.to_peer_dont_fragment == 2
                assert runner.send_errors == 0
            finally:
                client.close()
                peer.close()

    run(main)


def _raw_udp_socket() -> socket.socket | None:
    """A raw socket that gets a copy of every UDP/IPv4 packet the host receives, IP header
    included (None without CAP_NET_RAW)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except OSError:
        return None
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # other programs' loopback traffic must not crowd it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def _df_bits(raw: socket.socket, src: tuple[str, int], dst: tuple[str, int]) -> dict[bytes, bool]:
    """payload -> DF bit of the UDP/IPv4 packets from ``src`` to ``dst`` queued on ``raw``."""
    seen: dict[bytes, bool] = {}
    with contextlib.suppress(BlockingIOError):
        while True:
            packet = raw.recv(65535)
            header = (packet[0] & 0x0F) * 4
            ports = (
                int.from_bytes(packet[header : header + 2], "big"),
                int.from_bytes(packet[header + 2 : header + 4], "big"),
            )
            if (socket.inet_ntoa(packet[12:16]), ports[0]) == src and (
                socket.inet_ntoa(packet[16:20]),
                ports[1],
            ) == dst:
                seen[packet[header + 8 :]] = bool(packet[6] & 0x40)
    return seen


@linux_only
def test_df_bit_on_the_wire_needs_cap_net_raw() -> None:
    """The IPv4 header of what the relay sent, read with a raw socket: DF 1 for the Send
    indication with DONT-FRAGMENT, 0 for ChannelData (RFC 8656 §14)."""
    raw = _raw_udp_socket()
    if raw is None:
        pytest.skip("a raw socket needs CAP_NET_RAW")

    async def main() -> None:
        async with serving() as (_runner, server):
            peer = EchoPeer()
            client = Client(server, dont_fragment=True)
            try:
                relayed = (await client.allocate()).relayed
                await permitted(client, peer.address[0])
                _df_bits(raw, relayed, peer.address)  # nothing of ours yet: drain
                await client.echo(b"wire: send indication", peer.address)
                sent = _df_bits(raw, relayed, peer.address)
                await bound_channel(client, peer.address)
                await client.echo(b"wire: channel data", peer.address)
                sent.update(_df_bits(raw, relayed, peer.address))
            finally:
                client.close()
                peer.close()
        assert sent == {b"wire: send indication": True, b"wire: channel data": False}

    try:
        run(main)
    finally:
        raw.close()


@linux_only
@pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback")
def test_ipv6_relay_forbids_fragmentation_for_dont_fragment_over_tcp() -> None:
    """TCP-to-UDP over an IPv6 relay (RFC 8656 §15, not ignored as §13 would over UDP): a
    65,544-byte IPv6 packet does not fit lo's 65,536-byte MTU. Sent for a Send indication with
    DONT-FRAGMENT (IPV6_DONTFRAG 1) the kernel refuses it (EMSGSIZE) and the peer gets
    nothing; the same payload as ChannelData (IPV6_DONTFRAG 0) is fragmented and arrives."""

    async def main() -> None:
        async with serving(("127.0.0.1", "::1")) as (runner, server):
            peer = EchoPeer("::1")
            client = Client(server, "tcp", family=Family.IPV6, dont_fragment=True)
            big = os.urandom(65496)
            try:
                relayed = (await client.allocate()).relayed
                assert relayed[0] == "::1"
                recorder = record_relay(runner, relayed)
                await permitted(client, "::1")
                client.turn.send(big, peer.address, client.now())
                client.pump()
                for _ in range(500):
                    if runner.send_errors:
                        break
                    await asyncio.sleep(0.01)
                assert runner.send_errors == 1 and recorder.modes == [1]
                await client.echo(b"small enough", peer.address)
                assert recorder.modes == [1, 1] and recorder.switches == 1
                await bound_channel(client, peer.address)
                assert (await client.echo(big, peer.address)).data == big
                assert recorder.modes[2] == 0 and recorder.switches == 2
                assert [d for d, _ in peer.received] == [b"small enough", big]
            finally:
                client.close()
                peer.close()

    run(main)


def test_without_the_socket_options_dont_fragment_gets_420_and_the_client_retries() -> None:
    """RFC 8656 §7.2 step 4: where the relay cannot forbid fragmentation the runner clears
    the core's capability; DONT-FRAGMENT in an Allocate is then answered 420, the client
    retries without it, and the relay sockets are left in the kernel's mode."""

    async def main() -> None:
        port = free_port("both")
        allocator = UdpRelayAllocator(
            ["127.0.0.1"], min_port=20000, max_port=32000, dont_fragment=False
        )
        core = TurnServer(
            realm=REALM,
            auth=StaticUsers(USERS, realm=REALM),
            relay=allocator,
            stun=StunServer(primary=("127.0.0.1", port)),
            allow_loopback_peers=True,
            address_families=(Family.IPV4,),
        )
        assert core.dont_fragment
        runner = TurnServerRunner(core)
        assert core.dont_fragment is False
        await runner.start()
        peer = EchoPeer()
        client = Client(("127.0.0.1", port), dont_fragment=True)
        try:
            relayed = (await client.allocate()).relayed
            assert core.stats.errors_sent == 2  # the 401 challenge, then the 420
            if sys.platform.startswith("linux"):
                sock = allocator.sockets[relayed]
                assert fragmentation_mode(sock) == IP_PMTUDISC_WANT  # untouched
            await permitted(client, peer.address[0])
            await client.echo(b"without DF", peer.address)
            assert core.stats.to_peer_dont_fragment == 0
        finally:
            client.close()
            peer.close()
            runner.close()
            await runner.wait_closed()
        assert runner.open_sockets() == 0

    run(main)


# --------------------------------------------------------------------------- metrics


def test_metrics_scrape() -> None:
    async def main() -> None:
        async with serving() as (runner, server):
            exporter = MetricsExporter(
                _stats_collector(lambda: runner.core, lambda: [runner.core.stun.stats],
                                 lambda: runner)
            )
            address = await exporter.start(("127.0.0.1", 0))
            peer = EchoPeer()
            client = Client(server)
            bad = Client(server, password="wrong")
            try:
                await round_trip(client, peer)
                bad.turn.allocate(bad.now())
                bad.pump()
                await bad.expect(AllocationFailed)
                url = f"http://127.0.0.1:{address[1]}/metrics"
                text = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(url, timeout=5).read().decode()
                )
                lines = set(text.splitlines())
                assert "anchor_turn_allocations 1.0" in lines
                assert "anchor_turn_permissions 1.0" in lines
                assert "anchor_turn_channels 1.0" in lines
                assert "anchor_turn_allocations_created_total 1.0" in lines
                assert 'anchor_turn_relayed_packets_total{direction="to_peer"} 7.0' in lines
                assert 'anchor_turn_relayed_packets_total{direction="to_client"} 7.0' in lines
                sent = len(b"by send indication") + len(b"by channel data") + 1206
                assert f'anchor_turn_relayed_bytes_total{{direction="to_peer"}} {sent}.0' in lines
                assert "anchor_turn_auth_failures_total 1.0" in lines
                missing = f"http://127.0.0.1:{address[1]}/nothing"
                with pytest.raises(urllib.error.HTTPError):
                    await asyncio.to_thread(lambda: urllib.request.urlopen(missing, timeout=5))
            finally:
                client.close()
                bad.close()
                peer.close()
                exporter.close()
                await exporter.wait_closed()
            assert exporter.open_sockets() == 0

    run(main)


# --------------------------------------------------------------------------- configuration


def _parse(*argv: str) -> Any:
    return build_parser().parse_args(["serve", *argv])


def test_config_file_fills_options_and_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        'listen = ["127.0.0.1:4000", "127.0.0.2:4000"]\n'
        'realm = "from-file"\n'
        "user = { alice = \"secret\", bob = \"pw\" }\n"
        "allow-loopback-peers = true\n"
        "min_port = 30000\n"
        "max-port = 30100\n"
        'relay-ip = "127.0.0.1"\n'
        "tcp = true\n"
        'metrics = "127.0.0.1:9999"\n'
    )
    cfg = build_config(_parse("--config", str(config), "--realm", "from-cli",
                              "--max-port", "30200"))
    assert cfg.listen == [("127.0.0.1", 4000), ("127.0.0.2", 4000)]
    assert cfg.realm == "from-cli" and cfg.max_port == 30200 and cfg.min_port == 30000
    assert cfg.users == {"alice": "secret", "bob": "pw"} and cfg.turn
    assert cfg.allow_loopback_peers and cfg.tcp and cfg.relay_ips == ["127.0.0.1"]
    assert cfg.metrics == ("127.0.0.1", 9999)
    cli = build_config(_parse("--config", str(config), "--listen", "127.0.0.1:5000"))
    assert cli.listen == [("127.0.0.1", 5000)]

    for text, message in (
        ("nonsense = 1\n", "unknown option"),
        ("tcp = 'yes'\n", "true or false"),
        ("min-port = 'x'\n", "number"),
        ("listen = [1]\n", "list of strings"),
        ("listen = [\n", "not valid TOML"),
    ):
        config.write_text(text)
        with pytest.raises(ServeError, match=message):
            build_config(_parse("--config", str(config)))
    with pytest.raises(ServeError, match="cannot read config"):
        build_config(_parse("--config", str(tmp_path / "missing.toml")))


def test_config_defaults_and_mistakes() -> None:
    cfg = build_config(_parse())
    assert cfg.listen == [("0.0.0.0", 3478)] and not cfg.turn and cfg.relay_ips == []
    turn = build_config(_parse("--listen", "127.0.0.1:3478", "--static-auth-secret", "s"))
    assert turn.turn and turn.relay_ips[0] == "127.0.0.1"
    assert ("::1" in turn.relay_ips) == HAS_V6
    assert default_relay_ips([("127.0.0.1", 1), ("::1", 1)]) == ["127.0.0.1", "::1"]
    for argv, message in (
        (["--user", "nopassword"], "NAME:PASSWORD"),
        (["--min-port", "5000", "--max-port", "4000"], "above"),
        (["--min-port", "x"], "integer"),
        (["--relay-ip", "host.example"], "not an IP"),
        (["--add-user", "a:b"], "need --users-db"),
        (["--alt-port", "5"], "needs --alt-ip"),
        (["--allow-peer", "10.0.0.0/33"], "not a network"),
        (["--metrics", "127.0.0.1"], "needs a port"),
    ):
        with pytest.raises(ServeError, match=message):
            build_config(_parse(*argv))


# --------------------------------------------------------------------------- anchor serve


async def _allocate_and_echo(server: tuple[str, int], transport: str = "udp", **kw: Any) -> None:
    peer = EchoPeer()
    client = Client(server, transport, **kw)
    try:
        await round_trip(client, peer)
    finally:
        client.close()
        peer.close()


def test_anchor_serve_turn_with_config_and_metrics(tmp_path: Path) -> None:
    port, metrics = free_port("both"), free_port("both")
    config = tmp_path / "serve.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\n'
        f'realm = "{REALM}"\n'
        'user = ["alice:secret"]\n'
        "allow_loopback_peers = true\n"
        "tcp = true\n"
        f'metrics = "127.0.0.1:{metrics}"\n'
    )
    with anchor_serve("--config", str(config), expect=2) as lines:
        assert lines == [f"listening udp 127.0.0.1:{port}", f"listening tcp 127.0.0.1:{port}"]
        asyncio.run(_allocate_and_echo(("127.0.0.1", port)))
        asyncio.run(_allocate_and_echo(("127.0.0.1", port), "tcp"))
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read()
        assert b"anchor_turn_allocations_created_total 2.0" in text
        assert b'anchor_turn_relayed_packets_total{direction="to_client"} 14.0' in text


def test_anchor_serve_users_db_and_rest_secret(tmp_path: Path) -> None:
    db = tmp_path / "users.sqlite"
    added = run_anchor("serve", "--users-db", str(db), "--realm", REALM,
                       "--add-user", "carol:pw1", "--add-user", "dave:pw2")
    assert added.returncode == 0, added.stderr
    assert "added carol" in added.stdout
    listed = run_anchor("serve", "--users-db", str(db), "--list-users")
    assert listed.stdout.split() == ["carol", REALM, "dave", REALM]
    removed = run_anchor("serve", "--users-db", str(db), "--realm", REALM,
                         "--remove-user", "dave")
    assert "removed dave" in removed.stdout
    assert b"pw1" not in db.read_bytes()  # keys, never passwords

    port = free_port("both")
    with anchor_serve("--listen", f"127.0.0.1:{port}", "--realm", REALM, "--users-db", str(db),
                      "--static-auth-secret", "sharedsecret", "--allow-loopback-peers"):
        server = ("127.0.0.1", port)
        asyncio.run(_allocate_and_echo(server, username="carol", password="pw1"))
        rest_user = "4102444800:erin"  # year 2100
        asyncio.run(_allocate_and_echo(server, username=rest_user,
                                       password=turn_rest_password("sharedsecret", rest_user)))

        async def refused() -> None:
            for user, password in (("dave", "pw2"), ("1000:old", turn_rest_password(
                    "sharedsecret", "1000:old"))):
                client = Client(server, username=user, password=password)
                try:
                    client.turn.allocate(client.now())
                    client.pump()
                    assert (await client.expect(AllocationFailed)).code == 401
                finally:
                    client.close()

        asyncio.run(refused())


def test_anchor_serve_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    port = free_port("both")
    for args in (
        ["--user", "alice"],
        ["--listen", "127.0.0.1:x", "--user", "a:b"],
        ["--relay-ip", "0.0.0.0", "--user", "a:b", "--listen", f"127.0.0.1:{port}"],
        ["--config", str(tmp_path / "missing.toml")],
        ["--add-user", "a:b"],
    ):
        result = run_anchor("serve", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("anchor serve: ") and "Traceback" not in result.stderr
    help_text = run_anchor("serve", "--help").stdout
    for flag in ("--users-db", "--add-user", "--static-auth-secret", "--metrics", "--config",
                 "--relay-ip", "--min-port", "--strict-channels", "--rfc5766-channels"):
        assert flag in help_text
    assert "no effect" in help_text  # --rfc5766-channels is kept as a no-op alias


def test_anchor_serve_turn_with_rfc5780_and_sigint() -> None:
    port = free_port("both")
    with anchor_serve("--listen", f"127.0.0.1:{port}", "--alt-ip", "127.0.0.2",
                      "--user", "alice:secret", "--realm", REALM, "--allow-loopback-peers",
                      expect=4) as lines:
        assert f"listening udp 127.0.0.2:{port + 1}" in lines
        out = anchor_json("stun", f"127.0.0.1:{port}", "--nat")
        assert out["nat"] == {"mapping": "endpoint-independent",
                              "filtering": "endpoint-independent"}
        asyncio.run(_allocate_and_echo(("127.0.0.1", port)))

    port = free_port("both")
    proc = subprocess.Popen(
        [sys.executable, "-m", "anchor_cli", "serve", "--listen", f"127.0.0.1:{port}",
         "--user", "alice:secret"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening udp")
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
