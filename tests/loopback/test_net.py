"""The asyncio adapters over real loopback sockets: UDP, TCP, TLS and RFC 5780."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from anchor_stun.aio.net import (
    CorePump,
    StunServerRunner,
    StunTransport,
    binding_request,
    discover_nat,
    format_address,
    parse_address,
)
from anchor_stun.attributes import RawAttribute, Software, UnknownAttributes
from anchor_stun.errors import StunErrorResponse
from anchor_stun.events import Transmit
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.server import StunServer
from tests.helpers import free_port


def _has_loopback_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


async def _serve(
    primary: tuple[str, int],
    other: tuple[str, int] | None = None,
    tls: ssl.SSLContext | None = None,
) -> StunServerRunner:
    runner = StunServerRunner(StunServer(primary=primary, other=other))
    await runner.start(tcp=True, tls_context=tls, tls_address=(primary[0], primary[1] + 2))
    return runner


def test_binding_over_udp_tcp_and_tls(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files

    async def main() -> None:
        port = free_port("both")
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        runner = await _serve(("127.0.0.1", port), tls=server_ctx)
        try:
            kinds = {kind for kind, _ in runner.listeners}
            assert kinds == {"udp", "tcp", "tls"}
            udp = await binding_request(("127.0.0.1", port))
            assert udp.mapped == udp.local and udp.local[0] == "127.0.0.1"
            tcp = await binding_request(("127.0.0.1", port), "tcp")
            assert tcp.mapped == tcp.local
            client_ctx = ssl.create_default_context(cafile=str(cert))
            tls = await binding_request(("127.0.0.1", port + 2), "tls", ssl_context=client_ctx)
            assert tls.mapped == tls.local
            assert tls.response.verify_fingerprint()
        finally:
            runner.close()
            await runner.wait_closed()
        assert runner.open_sockets() == 0

    asyncio.run(main())


@pytest.mark.skipif(not _has_loopback_v6(), reason="no IPv6 loopback on this machine")
def test_binding_over_ipv6_loopback() -> None:
    async def main() -> None:
        runner = StunServerRunner(StunServer(primary=("::1", free_port("both"))))
        await runner.start()
        try:
            result = await binding_request(runner.listeners[0][1])
            assert result.mapped == result.local and result.mapped[0] == "::1"
        finally:
            runner.close()

    asyncio.run(main())


def test_error_response_raises_with_code() -> None:
    async def main() -> None:
        port = free_port("both")
        runner = await _serve(("127.0.0.1", port))
        conn = await StunTransport.connect(("127.0.0.1", port))
        try:
            request = Message(Method.BINDING, MessageClass.REQUEST, b"u" * 12)
            request.add(RawAttribute(0x7F01, b"????")).add(Software("t"))
            with pytest.raises(StunErrorResponse) as caught:
                await conn.request(request.encode(fingerprint=True))
            assert caught.value.code == 420
            assert isinstance(caught.value.response, Message)
            assert caught.value.response.get(UnknownAttributes) == UnknownAttributes((0x7F01,))
        finally:
            conn.close()
            runner.close()

    asyncio.run(main())


def test_nat_discovery_against_rfc5780_server_on_two_loopback_addresses() -> None:
    async def main() -> None:
        port = free_port("both")
        runner = StunServerRunner(
            StunServer(primary=("127.0.0.1", port), other=("127.0.0.2", port + 1))
        )
        await runner.start()
        try:
            assert len(runner.listeners) == 4
            result = await discover_nat(("127.0.0.1", port))
            assert result.other_address == ("127.0.0.2", port + 1)
            assert result.mapping == "endpoint-independent"
            assert result.filtering == "endpoint-independent"
        finally:
            runner.close()

    asyncio.run(main())


def test_address_parsing_and_formatting() -> None:
    assert parse_address("1.2.3.4:5") == ("1.2.3.4", 5)
    assert parse_address("[::1]:3478") == ("::1", 3478)
    assert parse_address("::1", 3478) == ("::1", 3478)
    assert parse_address("example.org", 3478) == ("example.org", 3478)
    for bad in ("1.2.3.4:0", "1.2.3.4:x", "[::1", ":5"):
        with pytest.raises(ValueError):
            parse_address(bad, 3478)
    assert format_address(("::1", 5)) == "[::1]:5" and format_address(("1.2.3.4", 5)) == "1.2.3.4:5"


class _Core:
    """A sans-I/O core that records what the pump asks of it."""

    def __init__(self) -> None:
        self.out: list[Transmit] = []
        self.events: list[object] = []
        self.deadline: float | None = None
        self.timer_asks = 0
        self.fired: list[float] = []

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> object | None:
        return self.events.pop(0) if self.events else None

    def next_timer(self) -> float | None:
        self.timer_asks += 1
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)


def test_core_pump_flush_sends_and_hands_out_events_but_leaves_the_timer() -> None:
    """``flush`` is ``pump`` without the timer: for inputs that cannot bring the core's
    deadline earlier. The timer armed by the last ``pump`` still fires."""

    async def main() -> None:
        core = _Core()
        sent: list[Transmit] = []
        seen: list[object] = []
        pump = CorePump(core, sent.append, seen.append)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        core.deadline = loop.time() + 0.05
        pump.pump()
        assert core.timer_asks == 1
        core.out.append(Transmit(b"data", ("127.0.0.1", 9)))
        core.events.append("delivered")
        core.deadline += 10.0  # moved later by the input: the armed timer fires early
        pump.flush()
        assert sent == [Transmit(b"data", ("127.0.0.1", 9))] and seen == ["delivered"]
        assert core.timer_asks == 1
        await asyncio.sleep(0.1)
        assert len(core.fired) == 1  # the early wake-up: the core ignores it and re-arms
        assert core.timer_asks == 2
        pump.close()

    asyncio.run(main())


def test_binding_to_a_closed_port_fails_at_once_naming_the_address() -> None:
    """The ICMP port-unreachable of a connected UDP socket (and the refused TCP connection)
    end the transaction with DestinationUnreachable instead of 39.5 s of retransmissions.
    The bound on the wait is the transaction's RTO, not the clock: the first retransmission
    (0.5 s) never goes out."""
    from anchor_stun.errors import DestinationUnreachable

    async def main() -> None:
        port = free_port("both")
        for transport in ("udp", "tcp"):
            with pytest.raises(DestinationUnreachable, match=f"127.0.0.1:{port} unreachable"):
                await binding_request(f"127.0.0.1:{port}", transport)  # type: ignore[arg-type]

    asyncio.run(main())


def test_binding_request_takes_text_or_tuple_and_names_bad_arguments() -> None:
    from anchor_stun.errors import LocalProtocolError, TransactionTimeout

    async def main() -> None:
        port = free_port("udp")
        runner = await _serve(("127.0.0.1", port))
        try:
            text = await binding_request(f"127.0.0.1:{port}")
            pair = await binding_request(("127.0.0.1", port))
            assert text.mapped[0] == pair.mapped[0] == "127.0.0.1"
        finally:
            runner.close()
        for bad in ("127.0.0.1:0", "127.0.0.1:x", ("127.0.0.1", "3478"), ("", 3478), 3478,
                    ("127.0.0.1", 70000)):  # fmt: skip
            with pytest.raises(LocalProtocolError, match="server must be"):
                await binding_request(bad)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError, match="timeout"):
            await binding_request(("127.0.0.1", port), timeout=0)
        # a socket that swallows the request: the caller's timeout, not the RFC's 39.5 s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            with pytest.raises(TransactionTimeout, match=r"within 0\.3 s"):
                await binding_request(silent.getsockname(), timeout=0.3)

    asyncio.run(main())
