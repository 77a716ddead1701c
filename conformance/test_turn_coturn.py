"""Anchor's TURN client (``TurnConnection`` and ``anchor turn``) against coturn 4.6 (issue 4,
must-show 1). Every coturn is started by the tests on free loopback ports with
``--allow-loopback-peers``; the peer is a tiny asyncio UDP echo server in the test.

What this proves, over UDP, TCP and TLS:

- Allocate (401 challenge, then signed) gives a relayed address in coturn's relay range and the
  client's own address as the mapped one; CreatePermission succeeds.
- A datagram sent by Send indication reaches the peer from the relayed address and its echo comes
  back in a Data indication; after ChannelBind the same goes as ChannelData (padded to 4 bytes over
  TCP/TLS; the test looks at the bytes on the wire) and comes back as ChannelData.
- Refresh works (with and without LIFETIME); a 438 Stale Nonce (coturn with ``--stale-nonce=2``)
  is answered by a retry with the new nonce, invisibly to the caller.
- ``close()`` releases the allocation: coturn logs the Refresh with lifetime 0 and deletes the
  session, and over UDP a new Allocate from the very same 5-tuple succeeds (coturn answers 437
  while an allocation holds it).
- A wrong password raises AllocationError(401); 300 Try Alternate is followed to the alternate
  server.
- ``anchor turn ... --peer ... --json`` prints ``"echo": true``; a wrong password is one line on
  stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from peers import Coturn, start_coturn, tls_client_context

from anchor_stun.errors import AllocationError
from anchor_stun.events import Address, Transmit
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn.aio.client import TurnConnection
from anchor_turn.client import TurnState

pytestmark = pytest.mark.peer("coturn")

TRANSPORTS = ("udp", "tcp", "tls")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def verbose_coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """A coturn with ``-v`` (per-session log lines) and nonces that go stale after 2 s."""
    server = start_coturn(
        tmp_path_factory.mktemp("coturn-verbose"), extra_args=["-v", "--stale-nonce=2"]
    )
    try:
        yield server
    finally:
        server.stop()


class _Echo(asyncio.DatagramProtocol):
    """A UDP echo peer that remembers who sent what."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, Address]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.seen.append((data, (str(addr[0]), int(addr[1]))))
        self.transport.sendto(data, addr)


@asynccontextmanager
async def echo_peer() -> AsyncIterator[tuple[Address, _Echo]]:
    """A loopback UDP echo server for the duration of the block: (its address, its protocol)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("sockname")
    try:
        yield (str(sock[0]), int(sock[1])), protocol
    finally:
        transport.close()


class Wire:
    """Records every frame the core sends to and receives from the server."""

    def __init__(self, conn: TurnConnection, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        client = conn.client
        send, receive = client.datagrams_to_send, client.receive_datagram

        def datagrams_to_send(now: float) -> list[Transmit]:
            out = send(now)
            self.sent.extend(t.data for t in out)
            return out

        def receive_datagram(data: bytes, addr: Address, now: float) -> None:
            self.received.append(bytes(data))
            receive(data, addr, now)

        monkeypatch.setattr(client, "datagrams_to_send", datagrams_to_send)
        monkeypatch.setattr(client, "receive_datagram", receive_datagram)

    def error_codes(self) -> list[int]:
        """ERROR-CODE of every error response received."""
        codes = []
        for raw in self.received:
            if raw[0] < 0x40:
                msg = Message.decode(raw)
                if msg.msg_class == MessageClass.ERROR and msg.error is not None:
                    codes.append(msg.error.code)
        return codes

    def send_indications(self) -> list[bytes]:
        """The Send indications sent."""
        return [
            raw
            for raw in self.sent
            if raw[0] < 0x40
            and Message.decode(raw).method == Method.SEND
            and Message.decode(raw).msg_class == MessageClass.INDICATION
        ]

    def channel_data(self) -> list[bytes]:
        """The ChannelData messages sent."""
        return [raw for raw in self.sent if 0x40 <= raw[0] <= 0x4F]


def server_of(coturn: Coturn, transport: str) -> Address:
    """The coturn listening address for a transport."""
    return coturn.tls if transport == "tls" else coturn.udp


def context_of(coturn: Coturn, transport: str) -> ssl.SSLContext | None:
    """A TLS client context trusting coturn's self-signed certificate (TLS only)."""
    if transport != "tls":
        return None
    assert coturn.cert is not None
    return tls_client_context(coturn.cert)


async def connect(coturn: Coturn, transport: str, **kwargs: Any) -> TurnConnection:
    """A TurnConnection to coturn as alice:secret."""
    return await TurnConnection.connect(
        server_of(coturn, transport),
        kwargs.pop("username", coturn.username),
        kwargs.pop("password", coturn.password),
        transport,  # type: ignore[arg-type]
        ssl_context=kwargs.pop("ssl_context", context_of(coturn, transport)),
        **kwargs,
    )


def run(coro: Any, timeout: float = 30) -> Any:
    """Run a coroutine in a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def echo_of(conn: TurnConnection, payload: bytes, timeout: float = 2.0) -> Any:
    """The next DataReceived carrying ``payload``."""
    while True:
        event = await asyncio.wait_for(conn.recv_event(), timeout)
        if event.data == payload:
            return event


async def deleted_session(coturn: Coturn, client: Address, timeout: float = 5.0) -> list[str]:
    """The log lines of ``client``'s session once coturn has logged its deletion (over UDP that
    happens on coturn's next 1-second tick after the release)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = session_lines(coturn, client)
        if any(": delete:" in line for line in lines):
            return lines
        assert time.monotonic() < deadline, f"coturn did not delete the session: {lines}"
        await asyncio.sleep(0.1)


def session_lines(coturn: Coturn, client: Address) -> list[str]:
    """coturn's log lines of the session whose client transport address is ``client``."""
    log = coturn.log()
    ids = set(re.findall(rf"session (\d+): .*remote {re.escape(client[0])}:{client[1]}\b", log))
    return [line for line in log.splitlines() if any(f"session {sid}:" in line for sid in ids)]


# --------------------------------------------------------------------------- the client


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_allocate_permission_send_channel_refresh_release(
    coturn: Coturn, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with echo_peer() as (peer, echo):
            conn = await connect(coturn, transport)
            wire = Wire(conn, monkeypatch)
            async with conn:
                created = await conn.allocate()
                relayed = created.relayed
                assert relayed[0] == "127.0.0.1"
                assert coturn.min_port <= relayed[1] <= coturn.max_port
                assert created.mapped == conn.local  # loopback: no NAT in between
                assert created.lifetime == 600 == conn.lifetime
                assert 401 in wire.error_codes()  # the challenge came first (RFC 8489 §9.2)

                await conn.create_permission(peer[0])
                assert peer[0] in conn.client.permissions

                # Send indication out, Data indication back (RFC 8656 §11)
                first = b"via Send indication"
                conn.send(first, peer)
                event = await echo_of(conn, first)
                assert event.peer == peer and event.channel is None
                assert (first, relayed) in echo.seen  # the peer saw the relayed address
                assert len(wire.send_indications()) == 1 and not wire.channel_data()

                # ChannelData both ways after ChannelBind (RFC 8656 §12); 13 bytes: padded
                number = await conn.bind_channel(peer)
                assert 0x4000 <= number <= 0x4FFF and conn.client.channels == {number: peer}
                second = b"ChannelData!!"
                conn.send(second, peer)
                event = await echo_of(conn, second)
                assert event.peer == peer and event.channel == number
                assert (second, relayed) in echo.seen
                (frame,) = wire.channel_data()
                assert frame[:4] == number.to_bytes(2, "big") + len(second).to_bytes(2, "big")
                assert len(frame) == (16 + 4 if transport != "udp" else 13 + 4)
                assert len(wire.send_indications()) == 1  # nothing else went as Send

                # the receive-side helpers: recv() and async iteration
                conn.send(b"third", peer)
                assert await asyncio.wait_for(conn.recv(), 2) == (b"third", peer)
                conn.send(b"fourth", peer)
                async for data, source in conn:
                    assert (data, source) == (b"fourth", peer)
                    break

                assert await conn.refresh() == 600
                assert await conn.refresh(lifetime=1200) == 1200  # coturn: 600 s at least
                assert conn.client.lifetime == 1200
            assert conn.state is TurnState.RELEASED and conn.closed
            # the release was answered with success, not abandoned (RFC 8656 §8.3)
            refreshes = [Message.decode(raw) for raw in wire.received if raw[0] < 0x40]
            assert refreshes[-1].method == Method.REFRESH
            assert refreshes[-1].msg_class == MessageClass.SUCCESS

    run(main())


def test_data_callback_receives_instead_of_the_queue(coturn: Coturn) -> None:
    async def main() -> None:
        got: list[tuple[bytes, Address]] = []
        async with echo_peer() as (peer, _):
            async with await connect(
                coturn, "udp", on_data=lambda d, p: got.append((d, p))
            ) as conn:
                await conn.allocate()
                await conn.bind_channel(peer)
                for i in range(5):
                    conn.send(b"n%d" % i, peer)
                for _ in range(100):
                    if len(got) == 5:
                        break
                    await asyncio.sleep(0.01)
        assert got == [(b"n%d" % i, peer) for i in range(5)]

    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_password_raises_allocation_error_401(coturn: Coturn, transport: str) -> None:
    async def main() -> None:
        async with await connect(coturn, transport, password="not-the-secret") as conn:
            with pytest.raises(AllocationError) as caught:
                await conn.allocate()
            assert caught.value.code == 401
            assert conn.state is TurnState.FAILED

    run(main())


def test_unreachable_server_fails_fast_over_udp() -> None:
    """Nobody listens: the ICMP port unreachable ends the Allocate at once, not after 39.5 s."""
    from peers import free_port

    async def main() -> None:
        start = time.monotonic()
        async with await TurnConnection.connect(
            ("127.0.0.1", free_port("udp")), "alice", "secret"
        ) as conn:
            with pytest.raises(AllocationError) as caught:
                await conn.allocate()
        assert caught.value.code == 0 and "unreachable" in caught.value.reason
        assert time.monotonic() - start < 2

    run(main())


def test_stale_nonce_438_is_retried_with_the_new_nonce(
    verbose_coturn: Coturn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UDP and TCP side by side (the wait for the nonce to go stale is the slow part)."""

    async def one(transport: str, peer: Address) -> Address:
        async with await connect(verbose_coturn, transport) as conn:
            wire = Wire(conn, monkeypatch)
            await conn.allocate()
            deadline = time.monotonic() + 8
            while 438 not in wire.error_codes():  # the nonce lives 2 s (coturn ticks 1 s)
                assert time.monotonic() < deadline, wire.error_codes()
                await asyncio.sleep(0.5)
                assert await conn.refresh() == 600  # a 438 in there is invisible here
            # and the new nonce serves the next requests
            await conn.create_permission(peer[0])
            conn.send(b"after 438 " + transport.encode(), peer)
            assert (await echo_of(conn, b"after 438 " + transport.encode())).peer == peer
            local = conn.local
        assert conn.state is TurnState.RELEASED
        return local

    async def main() -> None:
        async with echo_peer() as (peer, _):
            locals_ = await asyncio.gather(one("udp", peer), one("tcp", peer))
        for local in locals_:
            lines = await deleted_session(verbose_coturn, local)
            assert any("error 438" in line for line in lines), lines

    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_release_leaves_no_allocation_behind(verbose_coturn: Coturn, transport: str) -> None:
    async def main() -> None:
        async with echo_peer() as (peer, _):
            conn = await connect(verbose_coturn, transport)
            await conn.allocate()
            await conn.bind_channel(peer)
            local = conn.local
            await conn.close()
        assert conn.state is TurnState.RELEASED

        if transport == "udp":
            # Over UDP nothing else ends the allocation: coturn answers 437 to an Allocate from
            # the same 5-tuple while one exists (RFC 8656 §7.2), so success proves it is gone.
            mismatches = 0
            deadline = time.monotonic() + 5
            while True:
                again = await connect(verbose_coturn, "udp", local=local)
                try:
                    created = await again.allocate()
                    assert created.mapped == local
                    break
                except AllocationError as exc:
                    assert exc.code == 437, exc
                    mismatches += 1
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                finally:
                    await again.close()

        # coturn's own account: the Refresh with lifetime 0, then the session deleted
        lines = await deleted_session(verbose_coturn, local)
        released = [
            i for i, line in enumerate(lines) if "refreshed" in line and "lifetime=0" in line
        ]
        closed = [i for i, line in enumerate(lines) if "closed (2nd stage)" in line]
        assert released and closed and released[0] < closed[0], lines

    run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_try_alternate_300_is_followed(coturn: Coturn, tmp_path: Path, transport: str) -> None:
    assert coturn.cert is not None and coturn.key is not None
    redirector = start_coturn(
        tmp_path / "redirector",
        extra_args=[
            "-v",
            "--alternate-server", f"127.0.0.1:{coturn.port}",
            "--tls-alternate-server", f"127.0.0.1:{coturn.tls_port}",
            # the same certificate as the target, so that one trust anchor serves both
            "--cert", str(coturn.cert), "--pkey", str(coturn.key),
        ],
    )  # fmt: skip
    try:

        async def main() -> None:
            async with await connect(
                redirector, transport, ssl_context=context_of(coturn, transport)
            ) as conn:
                created = await conn.allocate()
                assert conn.redirects == [server_of(redirector, transport)]
                assert conn.server == server_of(coturn, transport)
                assert coturn.min_port <= created.relayed[1] <= coturn.max_port

        run(main())
        assert "error 300" in redirector.log()
    finally:
        redirector.stop()


# --------------------------------------------------------------------------- anchor turn


async def _anchor_turn(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "anchor_cli", "turn", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_anchor_turn_cli_echoes_through_coturn(coturn: Coturn, transport: str) -> None:
    async def main() -> None:
        async with echo_peer() as (peer, echo):
            host, port = server_of(coturn, transport)
            extra = ["--ca-file", str(coturn.cert)] if transport == "tls" else []
            code, out, err = await _anchor_turn(
                f"{host}:{port}", "--user", f"{coturn.username}:{coturn.password}",
                "--transport", transport, "--peer", f"{peer[0]}:{peer[1]}", "--json", *extra,
            )  # fmt: skip
            assert code == 0, err
            result = json.loads(out.strip().splitlines()[-1])
            assert set(result) == {"relayed", "mapped", "lifetime", "echo"}
            assert result["echo"] is True and result["lifetime"] == 600
            relayed_ip, relayed_port = result["relayed"].rsplit(":", 1)
            assert coturn.min_port <= int(relayed_port) <= coturn.max_port
            assert result["mapped"].startswith("127.0.0.1:")
            # one datagram by Send indication, one by ChannelData, both from the relay
            assert {addr for _, addr in echo.seen} == {(relayed_ip, int(relayed_port))}
            assert len(echo.seen) >= 2

    run(main(), timeout=90)


def test_anchor_turn_cli_user_mistakes(coturn: Coturn) -> None:
    async def main() -> None:
        server = f"{coturn.host}:{coturn.port}"
        code, out, err = await _anchor_turn(server, "--user", "alice:wrong", "--json")
        assert code == 1 and out == ""
        assert len(err.strip().splitlines()) == 1 and "401" in err and "Traceback" not in err
        for args in (["--user", "alice"], ["--user", "alice:secret", "--peer", "127.0.0.1"]):
            code, out, err = await _anchor_turn(server, *args)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert "Traceback" not in err

    run(main(), timeout=90)
