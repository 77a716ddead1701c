"""Candidate gathering (RFC 8445 §5.1.1): host addresses, and real gathering on loopback."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import ifaddr
import pytest

from anchor_ice.aio import gather
from anchor_ice.aio.gather import (
    SOCKET_RCVBUF,
    EndOfCandidates,
    GatheredSocket,
    Gatherer,
    RelayEndpoint,
    TurnServerConfig,
    host_addresses,
)
from anchor_ice.candidate import Candidate, CandidateType
from anchor_stun.aio.net import StunServerRunner
from anchor_stun.errors import LocalProtocolError
from anchor_stun.server import StunServer
from anchor_turn.aio.server import loopback_runner
from anchor_turn.server import TurnServer
from tests.helpers import free_port, free_port_block, require_program

LOOPBACK = "127.0.0.1"


def _has_loopback_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- host addresses


def _v6(ip: str, scope: int = 0) -> tuple[str, int, int]:
    return (ip, 0, scope)


FAKE_ADAPTERS = [
    ifaddr.Adapter("lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo"), ifaddr.IP(_v6("::1"), 128, "lo")], 1),
    ifaddr.Adapter(
        "eth0",
        "eth0",
        [
            ifaddr.IP("192.0.2.2", 24, "eth0"),
            ifaddr.IP(_v6("2001:db8::2"), 64, "eth0"),
            ifaddr.IP(_v6("fe80::fc:ff:fe00:1", 2), 64, "eth0"),
            ifaddr.IP("169.254.10.20", 16, "eth0"),
        ],
        2,
    ),
    ifaddr.Adapter(
        "wlan0",
        "Wireless",
        [
            ifaddr.IP("198.51.100.5", 24, "wlan0"),
            ifaddr.IP(_v6("2001:db8:1::5"), 64, "wlan0"),
            ifaddr.IP("192.0.2.2", 24, "wlan0"),  # the same IP again: deduplicated
        ],
        3,
    ),
    ifaddr.Adapter(
        "docker0",
        "docker0",
        [
            ifaddr.IP("172.17.0.1", 16, "docker0"),
            ifaddr.IP(_v6("fec0::1"), 64, "docker0"),  # site-local: MUST NOT (RFC 8445 §5.1.1.1)
            ifaddr.IP(_v6("::ffff:192.0.2.9"), 96, "docker0"),  # IPv4-mapped: SHOULD NOT
            ifaddr.IP(_v6("::192.0.2.10"), 96, "docker0"),  # IPv4-compatible: MUST NOT
            ifaddr.IP("0.0.0.0", 0, "docker0"),
            ifaddr.IP("224.0.0.1", 4, "docker0"),
            ifaddr.IP("not-an-ip", 0, "docker0"),
        ],
        4,
    ),
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket options")
@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_gathered_sockets_never_fragment(ip: str) -> None:
    """DF on every datagram an ICE socket sends (RFC 8085 §3.2): path MTU discovery "do"
    (IP_MTU_DISCOVER / IPV6_MTU_DISCOVER = 2, <linux/in.h>, <linux/in6.h>)."""
    try:
        sock = gather._bind_socket(ip, None, lambda n: bytes(n))
    except OSError:
        pytest.skip(f"no {ip} here")
    with sock:
        if ip == "::1":
            assert sock.getsockopt(socket.IPPROTO_IPV6, 23) == 2
        else:
            assert sock.getsockopt(socket.IPPROTO_IP, 10) == 2


def test_host_addresses_defaults() -> None:
    # IPv4 first, then IPv6; adapter order within a family; no loopback, no link-local
    assert host_addresses(adapters=FAKE_ADAPTERS) == [
        "192.0.2.2",
        "198.51.100.5",
        "172.17.0.1",
        "2001:db8::2",
        "2001:db8:1::5",
    ]


def test_host_addresses_interface_filter() -> None:
    assert host_addresses(adapters=FAKE_ADAPTERS, interfaces=["wlan0"]) == [
        "198.51.100.5",
        "192.0.2.2",
        "2001:db8:1::5",
    ]
    # patterns, nice names, and the order of the patterns is the preference order
    assert host_addresses(adapters=FAKE_ADAPTERS, interfaces=["Wireless", "eth*"]) == [
        "198.51.100.5",
        "192.0.2.2",
        "2001:db8:1::5",
        "2001:db8::2",
    ]
    assert host_addresses(adapters=FAKE_ADAPTERS, interfaces=["nope"]) == []
    assert host_addresses(adapters=FAKE_ADAPTERS, interfaces=[]) == []


def test_host_addresses_families() -> None:
    assert host_addresses(adapters=FAKE_ADAPTERS, families=(6,)) == ["2001:db8::2", "2001:db8:1::5"]
    assert host_addresses(adapters=FAKE_ADAPTERS, families=(4,), interfaces=["eth0"]) == [
        "192.0.2.2"
    ]
    both = host_addresses(adapters=FAKE_ADAPTERS, families=(6, 4), interfaces=["eth0"])
    assert both == ["2001:db8::2", "192.0.2.2"]
    for bad in [(), (5,), (4, 7)]:
        with pytest.raises(LocalProtocolError):
            host_addresses(adapters=FAKE_ADAPTERS, families=bad)
    with pytest.raises(LocalProtocolError):
        host_addresses(adapters=FAKE_ADAPTERS, interfaces="eth0")


def test_host_addresses_loopback_and_link_local() -> None:
    with_lo = host_addresses(adapters=FAKE_ADAPTERS, include_loopback=True)
    assert with_lo[0] == "127.0.0.1" and "::1" in with_lo
    assert host_addresses(adapters=FAKE_ADAPTERS, include_loopback=True, interfaces=["lo"]) == [
        "127.0.0.1",
        "::1",
    ]
    link = host_addresses(adapters=FAKE_ADAPTERS, include_link_local=True, interfaces=["eth0"])
    # a link-local IPv6 address keeps its zone: it cannot be bound without one
    assert link == ["192.0.2.2", "169.254.10.20", "2001:db8::2", "fe80::fc:ff:fe00:1%eth0"]


def test_host_addresses_of_this_machine() -> None:
    found = host_addresses(include_loopback=True)
    assert found == host_addresses(include_loopback=True)  # deterministic
    assert len(found) == len(set(found))
    assert "127.0.0.1" in found
    assert "127.0.0.1" not in host_addresses()


# ----------------------------------------------------------------------------- servers


@asynccontextmanager
async def stun_server() -> AsyncIterator[tuple[str, int]]:
    runner = StunServerRunner(StunServer(primary=(LOOPBACK, free_port("both"))))
    await runner.start()
    try:
        yield runner.listeners[0][1]
    finally:
        runner.close()


@asynccontextmanager
async def stream_turn_server(
    tls_files: tuple[Path, Path],
) -> AsyncIterator[tuple[TurnServer, dict[str, tuple[str, int]]]]:
    """Anchor's TURN server on loopback over UDP, TCP and TLS (alice:secret); yields the core
    and the address of each listener."""
    port, tls_port = free_port("both"), free_port("tcp")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    runner = loopback_runner(port, {"alice": "secret"}, "example.org", LOOPBACK,
                             tcp_port=port, tls_port=tls_port, tls_context=context)
    await runner.start()
    try:
        yield runner.core, {kind: addr for kind, addr in runner.listeners}
    finally:
        runner.close()


def client_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    """Trusts the test's self-signed certificate (and nothing else)."""
    return ssl.create_default_context(cafile=str(tls_files[0]))


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, int]]:
    """A UDP socket that reads everything and never answers."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0)
    )
    try:
        sockname = transport.get_extra_info("sockname")
        yield (str(sockname[0]), int(sockname[1]))
    finally:
        transport.close()


@asynccontextmanager
async def turn_server() -> AsyncIterator[tuple[TurnServer, tuple[str, int]]]:
    """Anchor's TURN server on loopback (alice:secret, realm example.org)."""
    port = free_port("both")
    runner = loopback_runner(port, {"alice": "secret"}, "example.org", LOOPBACK)
    core = runner.core
    await runner.start()
    try:
        yield core, (LOOPBACK, port)
    finally:
        runner.close()


class _DelayProxy(asyncio.DatagramProtocol):
    """Forwards datagrams between one client and a server, each way ``delay`` seconds late."""

    def __init__(self, server: tuple[str, int], delay: float) -> None:
        self.server = server
        self.delay = delay
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None
        self.client: tuple[str, int] | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        if addr == self.server:
            if self.front is not None and self.client is not None:
                loop.call_later(self.delay, self.front.sendto, data, self.client)
        else:
            self.client = (addr[0], addr[1])
            if self.back is not None:
                loop.call_later(self.delay, self.back.sendto, data, self.server)


@asynccontextmanager
async def delay_proxy(server: tuple[str, int], delay: float) -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    proxy = _DelayProxy(server, delay)
    front, _ = await loop.create_datagram_endpoint(lambda: proxy, local_addr=(LOOPBACK, 0))
    back, _ = await loop.create_datagram_endpoint(lambda: proxy, local_addr=(LOOPBACK, 0))
    proxy.front, proxy.back = front, back
    try:
        sockname = front.get_extra_info("sockname")
        yield (str(sockname[0]), int(sockname[1]))
    finally:
        front.close()
        back.close()


async def _collect(gatherer: Gatherer) -> tuple[list[Candidate], EndOfCandidates]:
    found: list[Candidate] = []
    async for item in gatherer.gather():
        if isinstance(item, EndOfCandidates):
            return found, item
        found.append(item)
    raise AssertionError("the stream ended without its end marker")


def _fd_closed(sock: GatheredSocket) -> bool:
    raw = sock.transport.get_extra_info("socket")
    return raw is None or raw.fileno() == -1


# ----------------------------------------------------------------------------- gathering


def test_host_candidate_and_redundant_srflx_on_loopback() -> None:
    async def main() -> None:
        async with stun_server() as stun:
            addresses = host_addresses(include_loopback=True, families=(4,), interfaces=["lo"])
            assert addresses == [LOOPBACK]
            gatherer = Gatherer(addresses, stun_servers=[stun], timeout=2.0)
            try:
                found, end = await _collect(gatherer)
                assert end.failures == ()
                (host,) = found  # the srflx equals the host address and base: removed
                assert host.type is CandidateType.HOST and host.ip == LOOPBACK
                assert gatherer.redundant == 1
                assert gatherer.complete
                (sock,) = gatherer.sockets
                assert sock.local == host.address
                assert gatherer.base_of(host) == host.address
                assert gatherer.endpoint(host.address) is sock
                # the socket is really bound there
                assert sock.transport.get_extra_info("sockname")[:2] == host.address
                # a second stream replays everything
                again = [item async for item in gatherer.gather()]
                assert again == [host, end]
                assert await gatherer.gather_all() == [host]
            finally:
                await gatherer.close()

    asyncio.run(main())


def test_srflx_found_through_binding() -> None:
    """The Binding transaction itself: the mapped address of a loopback socket is itself."""

    async def main() -> None:
        async with stun_server() as stun:
            sock = await GatheredSocket.bind(LOOPBACK)
            try:
                assert await sock.binding(stun, software="anchor-test") == sock.local
            finally:
                await sock.close()
            assert sock.closed and _fd_closed(sock)

    asyncio.run(main())


def test_a_socket_reads_every_waiting_datagram_in_one_wake_up() -> None:
    """Datagrams that arrived together are handed over together: the first time the handler
    sees any, it has seen all ten (asyncio's datagram transport reads one per wake-up)."""

    async def main() -> None:
        sock = await GatheredSocket.bind(LOOPBACK)
        got: list[bytes] = []
        sock.set_handler(lambda data, addr: got.append(data))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(10):
                sender.sendto(b"d%d" % i, sock.local)
            for _ in range(50):
                if got:
                    break
                await asyncio.sleep(0)
            assert got == [b"d%d" % i for i in range(10)]
        finally:
            sender.close()
            await sock.close()
        assert sock.closed and _fd_closed(sock)

    asyncio.run(main())


def test_a_loop_without_add_reader_gets_asyncio_s_datagram_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the loop cannot watch a socket (a proactor loop raises NotImplementedError from
    ``add_reader``), the socket is read by asyncio's own transport, and works the same."""

    def no_reader(*args: Any) -> None:
        raise NotImplementedError

    async def main() -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "add_reader", no_reader)
        sock = await GatheredSocket.bind(LOOPBACK)
        monkeypatch.undo()
        assert not isinstance(sock.transport, gather._DrainingTransport)
        got: list[tuple[bytes, Any]] = []
        sock.set_handler(lambda data, addr: got.append((data, addr)))
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LOOPBACK, 0))
        peer.settimeout(2.0)
        try:
            peer.sendto(b"ping", sock.local)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
            assert got == [(b"ping", peer.getsockname())]
            sock.send(b"pong", peer.getsockname())
            assert peer.recv(100) == b"pong"
        finally:
            peer.close()
            await sock.close()
        assert sock.closed and _fd_closed(sock)

    asyncio.run(main())


class _FullSendBuffer(socket.socket):
    """A UDP socket whose kernel send buffer is full for the next ``full`` sends."""

    full = 0
    sent: list[bytes]

    def sendto(self, data: Any, *args: Any) -> int:  # type: ignore[override]
        if self.full > 0:
            self.full -= 1
            raise BlockingIOError(errno.EAGAIN, "full")
        self.sent.append(bytes(data))
        return int(super().sendto(data, *args))


def test_sends_wait_in_order_while_the_send_buffer_is_full_and_beyond_a_bound_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gather, "MAX_SEND_BUFFER", 5)

    async def main() -> None:
        raw = _FullSendBuffer(socket.AF_INET, socket.SOCK_DGRAM)
        raw.setblocking(False)
        raw.bind((LOOPBACK, 0))
        raw.sent = []
        raw.full = 1
        protocol = gather._Protocol()
        transport = gather._DrainingTransport(raw, protocol)
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((LOOPBACK, 0))
        receiver.settimeout(2.0)
        try:
            for i in range(8):  # the first meets a full buffer: it and 4 more wait, 3 dropped
                transport.sendto(b"m%d" % i, receiver.getsockname())
            assert raw.sent == [] and transport.dropped == 3
            for _ in range(50):  # writable again: the waiting ones leave, in order
                if len(raw.sent) == 5:
                    break
                await asyncio.sleep(0.01)
            assert raw.sent == [b"m%d" % i for i in range(5)]
            assert [receiver.recv(100) for _ in range(5)] == raw.sent
            transport.sendto(b"after", receiver.getsockname())  # direct again
            assert receiver.recv(100) == b"after"
        finally:
            receiver.close()
            transport.close()
            await asyncio.wait_for(protocol.lost, 1.0)
        assert raw.fileno() == -1

    asyncio.run(main())


def test_silent_stun_server_times_out_without_hanging() -> None:
    async def main() -> None:
        async with stun_server() as good, silent_server() as silent:
            gatherer = Gatherer(
                [LOOPBACK], stun_servers=[silent, good, ("127.0.0.1", 9)], timeout=0.4
            )
            started = time.monotonic()
            try:
                found, end = await asyncio.wait_for(_collect(gatherer), 10)
            finally:
                await gatherer.close()
            elapsed = time.monotonic() - started
            assert elapsed < 2.0, elapsed
            assert [c.type for c in found] == [CandidateType.HOST]
            assert {f.server for f in end.failures} == {silent, ("127.0.0.1", 9)}
            reasons = {f.server: f.reason for f in end.failures if f.kind == "stun"}
            assert "no answer" in reasons[silent]
            # the closed port answers with an ICMP error: named, not waited out
            assert reasons[("127.0.0.1", 9)] == "127.0.0.1:9 unreachable (Connection refused)"
            assert end.failures == tuple(gatherer.failures)

    asyncio.run(main())


def test_unresolvable_server_is_a_failure() -> None:
    async def main() -> None:
        gatherer = Gatherer([LOOPBACK], stun_servers=[("name.invalid", 3478)], timeout=3.0)
        try:
            found, end = await asyncio.wait_for(_collect(gatherer), 10)
        finally:
            await gatherer.close()
        assert len(found) == 1
        (failure,) = end.failures
        assert failure.kind == "stun" and failure.server == ("name.invalid", 3478)

    asyncio.run(main())


def test_port_range_is_honoured() -> None:
    async def main() -> None:
        low = free_port_block(4)
        gatherer = Gatherer([LOOPBACK, "127.0.0.2"], port_range=(low, low + 3))
        try:
            found = await gatherer.gather_all()
        finally:
            await gatherer.close()
        assert [c.ip for c in found] == [LOOPBACK, "127.0.0.2"]
        assert all(low <= c.port <= low + 3 for c in found)
        # distinct local preferences, the first host address preferred (RFC 8445 §5.1.2.1)
        assert found[0].priority > found[1].priority

        # a range whose every port is taken: that address is given up, with a clear error
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind((LOOPBACK, low))
        try:
            busy = Gatherer([LOOPBACK], port_range=(low, low))
            with pytest.raises(OSError, match="no host address could be bound"):
                await busy.start()
            (failure,) = busy.failures
            assert failure.kind == "host" and failure.base == (LOOPBACK, 0)
            await busy.close()
            # another address still works
            partly = Gatherer([LOOPBACK, "127.0.0.2"], port_range=(low, low))
            try:
                (cand,) = await partly.gather_all()
                assert cand.address == ("127.0.0.2", low)
                assert [f.kind for f in partly.failures] == ["host"]
            finally:
                await partly.close()
        finally:
            taken.close()

    asyncio.run(main())


def test_close_leaves_no_socket_open() -> None:
    async def main() -> None:
        async with silent_server() as silent:
            gatherer = Gatherer([LOOPBACK, "127.0.0.2"], stun_servers=[silent], timeout=30)
            await gatherer.start()  # the STUN transactions are still running
            sockets = gatherer.sockets
            assert gatherer.open_sockets() == 2
            await asyncio.wait_for(gatherer.close(), 5)
            assert gatherer.open_sockets() == 0
            assert all(s.closed and _fd_closed(s) for s in sockets)
            # the very same ports can be bound again (no SO_REUSEADDR)
            for sock in sockets:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(sock.local)
            await gatherer.close()  # idempotent
            with pytest.raises(LocalProtocolError):
                sockets[0].send(b"x", silent)
            with pytest.raises(LocalProtocolError):
                await gatherer.start()

    asyncio.run(main())


def test_socket_handover_handlers_and_backlog() -> None:
    """The ICE connection takes the socket over by setting a handler; what arrived before
    waits in the backlog; gathering transactions still reach their core."""

    async def main() -> None:
        async with stun_server() as stun:
            gatherer = Gatherer([LOOPBACK], stun_servers=[stun])
            peer = await GatheredSocket.bind(LOOPBACK)
            try:
                (host,) = await gatherer.gather_all()
                sock = gatherer.endpoint(gatherer.base_of(host))
                assert isinstance(sock, GatheredSocket)
                peer.send(b"early-1", host.address)
                peer.send(b"early-2", host.address)
                await asyncio.sleep(0.05)
                got: list[tuple[bytes, tuple[str, int]]] = []
                sock.set_handler(lambda data, addr: got.append((data, addr)))
                assert got == [(b"early-1", peer.local), (b"early-2", peer.local)]
                peer.send(b"live", host.address)
                # a Binding on the same socket while the handler is in place
                assert await sock.binding(stun) == sock.local
                await asyncio.sleep(0.05)
                assert got[-1] == (b"live", peer.local)
                assert len(got) == 3  # the Binding response did not reach the handler
                # and the other way round
                back: list[bytes] = []
                peer.set_handler(lambda data, addr: back.append(data))
                sock.send(b"reply", peer.local)
                await asyncio.sleep(0.05)
                assert back == [b"reply"]
                # a failing handler does not break the socket
                errors: list[dict[str, Any]] = []
                asyncio.get_running_loop().set_exception_handler(
                    lambda loop, context: errors.append(context)
                )
                def broken(data: bytes, addr: tuple[str, int]) -> None:
                    raise ZeroDivisionError

                sock.set_handler(broken)
                peer.send(b"boom", host.address)
                await asyncio.sleep(0.05)
                assert errors and isinstance(errors[0]["exception"], ZeroDivisionError)
            finally:
                await gatherer.close()
                await peer.close()

    asyncio.run(main())


def test_detach_hands_the_sockets_over() -> None:
    async def main() -> None:
        gatherer = Gatherer([LOOPBACK])
        await gatherer.gather_all()
        sockets = gatherer.detach()
        await gatherer.close()
        assert gatherer.open_sockets() == 1 and not sockets[0].closed
        await sockets[0].close()
        assert gatherer.open_sockets() == 0

    asyncio.run(main())


def test_no_host_address() -> None:
    async def main() -> None:
        with pytest.raises(OSError, match="no host address"):
            await Gatherer([]).start()
        with pytest.raises(LocalProtocolError):
            Gatherer(LOOPBACK)
        with pytest.raises(LocalProtocolError):
            Gatherer([LOOPBACK], port_range=(10, 5))
        with pytest.raises(LocalProtocolError):
            TurnServerConfig((LOOPBACK, 3478), "a", "b", transport="sctp")  # type: ignore[arg-type]

    asyncio.run(main())


@pytest.mark.skipif(not _has_loopback_v6(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback() -> None:
    async def main() -> None:
        runner = StunServerRunner(StunServer(primary=("::1", free_port("both"))))
        await runner.start()
        try:
            stun = runner.listeners[0][1]
            # the IPv4 socket skips the IPv6 server (and the other way round)
            gatherer = Gatherer([LOOPBACK, "::1"], stun_servers=[stun, (LOOPBACK, 9)], timeout=0.3)
            try:
                found, end = await _collect(gatherer)
            finally:
                await gatherer.close()
            assert [c.ip for c in found] == [LOOPBACK, "::1"]
            assert gatherer.redundant == 1
            assert [f.base for f in end.failures] == [(LOOPBACK, found[0].port)]
        finally:
            runner.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------- relays


def test_relay_candidate_from_anchor_turn_server() -> None:
    async def main() -> None:
        async with turn_server() as (core, address), stun_server() as stun:
            gatherer = Gatherer(
                [LOOPBACK],
                stun_servers=[stun],
                turn_servers=[TurnServerConfig(address, "alice", "secret")],
                timeout=3.0,
            )
            try:
                found, end = await _collect(gatherer)
                assert end.failures == ()
                host, relay = found
                assert host.type is CandidateType.HOST
                assert relay.type is CandidateType.RELAY and relay.ip == LOOPBACK
                # relay related address = mapped address (here: the host address itself)
                assert (relay.related_ip, relay.related_port) == host.address
                # srflx from STUN and from TURN's XOR-MAPPED-ADDRESS: both redundant
                assert gatherer.redundant == 2
                assert relay.priority < host.priority
                assert gatherer.base_of(relay) == relay.address
                endpoint = gatherer.endpoint(relay.address)
                assert isinstance(endpoint, RelayEndpoint)
                assert endpoint.relayed == relay.address and endpoint.mapped == host.address
                assert endpoint.socket is gatherer.endpoint(host.address)
                assert endpoint.socket.relays == [endpoint]
                assert core.allocation_count() == 1
            finally:
                await gatherer.close()
            assert core.allocation_count() == 0  # released (Refresh LIFETIME 0)
            assert gatherer.open_sockets() == 0

    asyncio.run(main())


def test_relay_carries_data_both_ways() -> None:
    """What the ICE connection does with a relayed candidate: send to a peer through it
    (the permission is created on first use) and receive from the peer."""

    async def main() -> None:
        async with turn_server() as (_, address):
            gatherer = Gatherer([LOOPBACK], turn_servers=[TurnServerConfig(address, "alice", "secret")])
            peer = await GatheredSocket.bind("127.0.0.2")
            try:
                found = await gatherer.gather_all()
                relay_cand = next(c for c in found if c.type is CandidateType.RELAY)
                relay = gatherer.endpoint(relay_cand.address)
                assert isinstance(relay, RelayEndpoint)
                at_peer: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
                peer.set_handler(lambda data, addr: at_peer.put_nowait((data, addr)))
                for n in range(3):
                    relay.send(b"ping %d" % n, peer.local)
                for n in range(3):
                    data, addr = await asyncio.wait_for(at_peer.get(), 3)
                    assert data == b"ping %d" % n and addr == relay_cand.address
                at_relay: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
                peer.send(b"pong", relay_cand.address)
                await asyncio.sleep(0.05)
                relay.set_handler(lambda data, addr: at_relay.put_nowait((data, addr)))
                assert await asyncio.wait_for(at_relay.get(), 3) == (b"pong", peer.local)
                # with a channel the same works (ChannelData, RFC 8656 §12)
                await relay.bind_channel(peer.local)
                relay.send(b"via channel", peer.local)
                assert (await asyncio.wait_for(at_peer.get(), 3))[0] == b"via channel"
                peer.send(b"back via channel", relay_cand.address)
                assert (await asyncio.wait_for(at_relay.get(), 3))[0] == b"back via channel"
            finally:
                await gatherer.close()
                await peer.close()
            with pytest.raises(LocalProtocolError):
                relay.send(b"late", peer.local)

    asyncio.run(main())


def test_relays_over_udp_tcp_and_tls(tls_files: tuple[Path, Path]) -> None:
    """RFC 8656 §3.1: the client reaches the server over UDP, TCP or TLS; the relayed address
    is UDP every time. One relayed candidate per transport, all allocations started together;
    local preferences UDP > TCP > TLS (RFC 8445 §5.1.2.1); only the UDP allocation's mapped
    address can be a (UDP) server-reflexive candidate; foundations differ per transport
    (RFC 8445 §5.1.1.3)."""

    async def main() -> None:
        async with stream_turn_server(tls_files) as (core, listeners):
            context = client_context(tls_files)
            configs = [
                TurnServerConfig(listeners["tls"], "alice", "secret", "tls", ssl_context=context),
                TurnServerConfig(listeners["tcp"], "alice", "secret", "tcp"),
                TurnServerConfig(listeners["udp"], "alice", "secret"),
            ]
            gatherer = Gatherer([LOOPBACK], turn_servers=configs, timeout=5.0)
            try:
                found, end = await _collect(gatherer)
                assert end.failures == ()
                relays = [c for c in found if c.type is CandidateType.RELAY]
                assert len(relays) == 3 and all(c.transport == "udp" for c in relays)
                by_transport = {}
                for cand in relays:
                    endpoint = gatherer.endpoint(cand.address)
                    assert isinstance(endpoint, RelayEndpoint)
                    by_transport[endpoint.transport] = cand
                udp, tcp, tls = by_transport["udp"], by_transport["tcp"], by_transport["tls"]
                assert udp.priority > tcp.priority > tls.priority
                assert len({udp.foundation, tcp.foundation, tls.foundation}) == 3
                assert [c.type for c in found].count(CandidateType.SRFLX) == 0  # = host here
                assert gatherer.redundant == 1  # the UDP allocation's mapped address only
                assert core.allocation_count() == 3
                sock = gatherer.sockets[0]
                assert {r.transport for r in sock.relays} == {"udp", "tcp", "tls"}
                tcp_relay = gatherer.endpoint(tcp.address)
                assert isinstance(tcp_relay, RelayEndpoint)
                assert tcp_relay.turn.local[0] == LOOPBACK  # left from the host address
            finally:
                await gatherer.close()
            assert core.allocation_count() == 0  # each released (Refresh LIFETIME 0)
            assert gatherer.open_sockets() == 0

    asyncio.run(main())


def test_allocations_over_every_transport_start_together_and_none_waits() -> None:
    """Issue 18 item 1: allocations over every configured transport start together and none
    waits for another. Two "TURN servers" that read and never answer, one over TCP and one
    over UDP, come first in the list, a real server over UDP last: the real server's relayed
    candidate arrives, and both silent servers receive their Allocate, while the gathering's
    30 s timeout is far from over (gathering one server after another would hold each
    behind the 30 s of the one before it)."""

    async def main() -> None:
        tcp_received = asyncio.Event()
        udp_received = asyncio.Event()

        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(4096):
                tcp_received.set()
            writer.close()

        class Deaf(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                udp_received.set()

        loop = asyncio.get_running_loop()
        silent_tcp = await asyncio.start_server(hang, LOOPBACK, 0)
        silent_udp, _ = await loop.create_datagram_endpoint(Deaf, local_addr=(LOOPBACK, 0))
        try:
            async with turn_server() as (core, udp_address):
                configs = [
                    TurnServerConfig(silent_tcp.sockets[0].getsockname()[:2], "alice", "x", "tcp"),
                    TurnServerConfig(silent_udp.get_extra_info("sockname")[:2], "alice", "x"),
                    TurnServerConfig(udp_address, "alice", "secret"),
                ]
                gatherer = Gatherer([LOOPBACK], turn_servers=configs, timeout=30.0)
                try:
                    relay = None
                    async with asyncio.timeout(10):
                        async for item in gatherer.gather():
                            assert not isinstance(item, EndOfCandidates), item
                            if item.type is CandidateType.RELAY:
                                relay = item
                                break
                        await tcp_received.wait()
                        await udp_received.wait()
                    assert relay is not None
                    endpoint = gatherer.endpoint(relay.address)
                    assert isinstance(endpoint, RelayEndpoint) and endpoint.transport == "udp"
                    assert endpoint.server == udp_address
                    assert core.allocation_count() == 1
                finally:
                    await gatherer.close()
                assert core.allocation_count() == 0
        finally:
            silent_tcp.close()
            await silent_tcp.wait_closed()
            silent_udp.close()

    asyncio.run(main())


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_relay_over_a_stream_carries_data_both_ways(
    tls_files: tuple[Path, Path], transport: str
) -> None:
    """Data through a TCP/TLS allocation travels over its stream: Send and Data indications,
    then ChannelData padded to 4 bytes (RFC 8656 §12.5), in both directions."""

    async def main() -> None:
        async with stream_turn_server(tls_files) as (core, listeners):
            config = TurnServerConfig(listeners[transport], "alice", "secret", transport,  # type: ignore[arg-type]
                                      ssl_context=client_context(tls_files))
            gatherer = Gatherer([LOOPBACK], turn_servers=[config])
            peer = await GatheredSocket.bind("127.0.0.2")
            try:
                found = await gatherer.gather_all()
                relay_cand = next(c for c in found if c.type is CandidateType.RELAY)
                relay = gatherer.endpoint(relay_cand.address)
                assert isinstance(relay, RelayEndpoint) and relay.transport == transport
                at_peer: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
                peer.set_handler(lambda data, addr: at_peer.put_nowait((data, addr)))
                for n in range(3):
                    relay.send(b"ping %d" % n, peer.local)
                for n in range(3):
                    assert await asyncio.wait_for(at_peer.get(), 3) == (
                        b"ping %d" % n, relay_cand.address)
                at_relay: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
                relay.set_handler(lambda data, addr: at_relay.put_nowait((data, addr)))
                peer.send(b"pong", relay_cand.address)
                assert await asyncio.wait_for(at_relay.get(), 3) == (b"pong", peer.local)
                await relay.bind_channel(peer.local)
                for size in (1, 2, 3, 4, 5):  # every padding length
                    relay.send(b"c" * size, peer.local)
                    assert (await asyncio.wait_for(at_peer.get(), 3))[0] == b"c" * size
                    peer.send(b"d" * size, relay_cand.address)
                    assert (await asyncio.wait_for(at_relay.get(), 3))[0] == b"d" * size
                assert relay.client.dropped == 0
            finally:
                await gatherer.close()
                await peer.close()
            assert core.allocation_count() == 0

    asyncio.run(main())


def test_tls_relay_verifies_the_server(tls_files: tuple[Path, Path]) -> None:
    """Without the certificate's CA, a TLS allocation fails (a gather failure, not a hang)."""

    async def main() -> None:
        async with stream_turn_server(tls_files) as (core, listeners):
            config = TurnServerConfig(listeners["tls"], "alice", "secret", "tls",
                                      ssl_context=ssl.create_default_context())
            gatherer = Gatherer([LOOPBACK], turn_servers=[config], timeout=3)
            try:
                found, end = await asyncio.wait_for(_collect(gatherer), 10)
            finally:
                await gatherer.close()
            assert [c.type for c in found] == [CandidateType.HOST]
            (failure,) = end.failures
            assert failure.kind == "turn" and "certificate" in failure.reason.lower()
            assert core.allocation_count() == 0

    asyncio.run(main())


def test_wrong_turn_password_is_a_failure() -> None:
    async def main() -> None:
        async with turn_server() as (core, address):
            gatherer = Gatherer(
                [LOOPBACK], turn_servers=[TurnServerConfig(address, "alice", "wrong")], timeout=3
            )
            try:
                found, end = await asyncio.wait_for(_collect(gatherer), 10)
            finally:
                await gatherer.close()
            assert [c.type for c in found] == [CandidateType.HOST]
            (failure,) = end.failures
            assert failure.kind == "turn" and "401" in failure.reason
            assert core.allocation_count() == 0

    asyncio.run(main())


def test_silent_turn_server_times_out() -> None:
    async def main() -> None:
        async with silent_server() as silent:
            gatherer = Gatherer(
                [LOOPBACK], turn_servers=[TurnServerConfig(silent, "alice", "secret")], timeout=0.3
            )
            started = time.monotonic()
            try:
                found, end = await asyncio.wait_for(_collect(gatherer), 10)
            finally:
                await asyncio.wait_for(gatherer.close(), 5)
            # nothing came back, so nothing can exist to release: close() does not wait
            assert time.monotonic() - started < 1
            assert len(found) == 1 and "no allocation within" in end.failures[0].reason

    asyncio.run(main())


def test_late_allocation_is_released() -> None:
    """An allocation whose answer comes after the timeout is released once it exists."""

    async def main() -> None:
        async with turn_server() as (core, address), delay_proxy(address, 0.15) as slow:
            gatherer = Gatherer(
                [LOOPBACK],
                turn_servers=[TurnServerConfig(slow, "alice", "secret")],
                # the 401 is back after 0.3 s, the Allocate's success after 0.6 s
                timeout=0.45,
                release_timeout=3,
            )
            try:
                found, end = await asyncio.wait_for(_collect(gatherer), 10)
                assert len(found) == 1 and end.failures[0].kind == "turn"
                for _ in range(100):  # the allocation comes into existence late...
                    if core.allocation_count():
                        break
                    await asyncio.sleep(0.02)
                assert core.allocation_count() == 1
                for _ in range(100):  # ...and is released by itself
                    if not core.allocation_count():
                        break
                    await asyncio.sleep(0.02)
                assert core.allocation_count() == 0
                assert gatherer.sockets[0].relays == []
            finally:
                await gatherer.close()

    asyncio.run(main())


def test_close_during_allocation_releases_it() -> None:
    async def main() -> None:
        async with turn_server() as (core, address), delay_proxy(address, 0.2) as slow:
            gatherer = Gatherer(
                [LOOPBACK],
                turn_servers=[TurnServerConfig(slow, "alice", "secret")],
                timeout=10,
                release_timeout=3,
            )
            await gatherer.start()
            await asyncio.sleep(0.5)  # the signed Allocate is on its way
            seen: list[int] = []

            async def watch() -> None:
                while True:
                    seen.append(core.allocation_count())
                    await asyncio.sleep(0.01)

            watcher = asyncio.get_running_loop().create_task(watch())
            await gatherer.close()
            watcher.cancel()
            assert max(seen) == 1  # it came into existence while closing...
            assert core.allocation_count() == 0  # ...and close() released it
            assert gatherer.open_sockets() == 0

    asyncio.run(main())


def test_relay_candidate_from_coturn(tmp_path: Path) -> None:
    require_program("turnserver", "coturn")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conformance"))
    try:
        from peers import start_coturn  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    coturn = start_coturn(tmp_path, tls=False)
    try:

        async def main() -> None:
            gatherer = Gatherer(
                [LOOPBACK],
                stun_servers=[coturn.udp],
                turn_servers=[TurnServerConfig(coturn.udp, coturn.username, coturn.password)],
                timeout=3.0,
            )
            peer = await GatheredSocket.bind(LOOPBACK)
            try:
                found, end = await _collect(gatherer)
                assert end.failures == ()
                host, relay = found
                assert relay.type is CandidateType.RELAY
                assert coturn.min_port <= relay.port <= coturn.max_port
                assert (relay.related_ip, relay.related_port) == host.address
                assert gatherer.redundant == 2
                endpoint = gatherer.endpoint(relay.address)
                assert isinstance(endpoint, RelayEndpoint)
                got: asyncio.Queue[bytes] = asyncio.Queue()
                peer.set_handler(lambda data, addr: got.put_nowait(data))
                endpoint.send(b"hello through coturn", peer.local)
                assert await asyncio.wait_for(got.get(), 3) == b"hello through coturn"
            finally:
                await gatherer.close()
                await peer.close()
            assert gatherer.open_sockets() == 0

        asyncio.run(main())
    finally:
        coturn.stop()


def test_gathered_sockets_ask_for_a_large_receive_buffer() -> None:
    """A link's channel sends a window of frames at once: with the kernel's default buffer
    (~212 KB, ~90 datagrams of 1.2 KB) a burst through a relay overflowed the receiving
    socket. Linux reports twice what it granted, capped at net.core.rmem_max."""

    async def main() -> int:
        gatherer = Gatherer(host_ips=[LOOPBACK])
        try:
            await gatherer.gather_all()
            sock = gatherer.sockets[0]._transport.get_extra_info("socket")
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        finally:
            await gatherer.close()

    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    assert asyncio.run(main()) >= 2 * min(SOCKET_RCVBUF, rmem_max)
