"""Loopback tests of the asyncio ICE connection (anchor_ice.aio.connection) and of ``anchor ice``.

What this proves, over real UDP sockets on 127.0.0.1 (no other peer program):

- Two :class:`Connection`\\ s with the standard policy connect on a host pair and carry data
  both ways (and on two components).
- The gateway policy with Anchor's TURN server (in-process, loopback peers allowed) ends on
  a relay pair: on loopback every direct pair is a host pair, and no host pair is ever
  nominated; host candidates are not advertised.
- close() leaves no socket open and no allocation on the server.
- An ICE restart on a live connection keeps delivering data: a stream of numbered datagrams
  sent every 10 ms through the whole restart arrives complete and in order, both ways.
- Failure is an IceFailedError (a ConnectionError, as aioice raises); sending before
  connecting is an IceNotConnectedError; recv after close raises.
- Two ``anchor ice`` processes wired together through pipes (each one's SDP block copied to
  the other's stdin) connect and echo; user mistakes are one line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from anchor_ice.aio.connection import (
    Connection,
    IceFailedError,
    IceNotConnectedError,
)
from anchor_ice.aio.gather import TurnServerConfig
from anchor_ice.candidate import CandidateType
from anchor_ice.nominator import GatewayNominator
from anchor_turn.aio.server import TurnServerRunner, loopback_runner
from anchor_turn.server import TurnServer
from tests.helpers import ANCHOR, free_port

LOOPBACK = "127.0.0.1"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def exchange(a: Connection, b: Connection) -> None:
    """The signalling: each side's credentials and candidates to the other."""
    for src, dst in ((a, b), (b, a)):
        dst.remote_username = src.local_username
        dst.remote_password = src.local_password
        for candidate in src.local_candidates:
            await dst.add_remote_candidate(candidate)
        await dst.add_remote_candidate(None)


async def connect(a: Connection, b: Connection, timeout: float = 10.0) -> float:
    """Gather, exchange, connect both; returns the seconds connect() took."""
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    await exchange(a, b)
    start = time.monotonic()
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), timeout)
    return time.monotonic() - start


async def ping_pong(a: Connection, b: Connection, component: int = 1) -> None:
    await a.sendto(b"ping", component)
    assert await asyncio.wait_for(b.recvfrom(), 2) == (b"ping", component)
    await b.sendto(b"pong", component)
    assert await asyncio.wait_for(a.recvfrom(), 2) == (b"pong", component)


@asynccontextmanager
async def turn_server() -> AsyncIterator[tuple[TurnServer, TurnServerRunner, TurnServerConfig]]:
    """Anchor's TURN server in this loop on loopback (alice:secret, loopback peers allowed)."""
    port = free_port("both")
    runner = loopback_runner(port, {"alice": "secret"}, "example.org", LOOPBACK)
    core = runner.core
    await runner.start()
    try:
        yield core, runner, TurnServerConfig((LOOPBACK, port), "alice", "secret")
    finally:
        runner.close()
        await runner.wait_closed()


# --------------------------------------------------------------------------- standard


def test_standard_policy_connects_on_a_host_pair_with_data_both_ways() -> None:
    async def main() -> None:
        a = Connection(True, host_ips=[LOOPBACK])
        b = Connection(False, host_ips=[LOOPBACK])
        try:
            took = await connect(a, b)
            assert took < 5.0
            for conn in (a, b):
                pair = conn.selected_pair
                assert pair is not None
                assert pair.local.type is CandidateType.HOST
                assert pair.remote.type is CandidateType.HOST
            assert a.selected_pair is not None and b.selected_pair is not None
            assert a.selected_pair.local.address == b.selected_pair.remote.address
            assert a.state.value in ("connected", "completed")
            await ping_pong(a, b)
            # data from a 5-tuple that is no candidate pair is dropped (RFC 7983 demux: data)
            loop = asyncio.get_running_loop()
            intruder, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0)
            )
            dropped = a.dropped
            intruder.sendto(b"intruder", a.selected_pair.local.address)
            intruder.close()
            for _ in range(100):
                if a.dropped > dropped:
                    break
                await asyncio.sleep(0.01)
            assert a.dropped == dropped + 1
            for i in range(20):
                await b.send(b"n%d" % i)
            assert [await asyncio.wait_for(a.recv(), 2) for _ in range(20)] == [
                b"n%d" % i for i in range(20)
            ]
        finally:
            await a.close()
            await b.close()
        assert a.open_sockets() == 0 and b.open_sockets() == 0

    run(main())


def test_two_components() -> None:
    async def main() -> None:
        a = Connection(True, components=2, host_ips=[LOOPBACK])
        b = Connection(False, components=2, host_ips=[LOOPBACK])
        try:
            await connect(a, b)
            assert sorted(a.selected_pairs) == [1, 2]
            ports = {p.local.port for p in a.selected_pairs.values()}
            assert len(ports) == 2  # one socket per component
            await ping_pong(a, b, 1)
            await ping_pong(a, b, 2)
        finally:
            await a.close()
            await b.close()
        assert a.open_sockets() == 0 and b.open_sockets() == 0

    run(main())


def test_remote_candidates_as_sdp_text() -> None:
    """add_remote_candidate takes aioice's form (no ``candidate:`` prefix) and ours."""

    async def main() -> None:
        a = Connection(True, host_ips=[LOOPBACK])
        b = Connection(False, host_ips=[LOOPBACK])
        try:
            await asyncio.gather(a.gather_candidates(), b.gather_candidates())
            b.remote_username, b.remote_password = a.local_username, a.local_password
            a.remote_username, a.remote_password = b.local_username, b.local_password
            for c in a.local_candidates:
                await b.add_remote_candidate(c.to_sdp().removeprefix("candidate:"))
            for c in b.local_candidates:
                await a.add_remote_candidate("a=" + c.to_sdp())
            await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
            await ping_pong(a, b)
        finally:
            await a.close()
            await b.close()

    run(main())


# --------------------------------------------------------------------------- gateway + TURN


def test_gateway_policy_with_anchor_turn_ends_on_a_relay_pair_and_releases() -> None:
    async def main() -> None:
        async with turn_server() as (core, _runner, turn):
            a = Connection(
                True, host_ips=[LOOPBACK], turn_servers=[turn],
                nominator=GatewayNominator(grace=0.3),
            )  # fmt: skip
            b = Connection(
                False, host_ips=[LOOPBACK], turn_servers=[turn],
                nominator=GatewayNominator(grace=0.3),
            )  # fmt: skip
            try:
                await asyncio.gather(a.gather_candidates(), b.gather_candidates())
                assert core.stats.allocations == 2
                for conn in (a, b):
                    types = {c.type for c in conn.local_candidates}
                    assert types == {CandidateType.RELAY}  # host never advertised
                await exchange(a, b)
                await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
                for conn in (a, b):
                    pair = conn.selected_pair
                    assert pair is not None
                    assert pair.local.type is CandidateType.RELAY
                    assert pair.remote.type is CandidateType.RELAY
                    assert conn.nominated_pairs
                    for nominated in conn.nominated_pairs:
                        assert CandidateType.HOST not in (nominated.local.type, nominated.remote.type)
                        assert nominated.local.type is CandidateType.RELAY
                await ping_pong(a, b)
                assert len(a.relays()) == 1
                # RFC 8656 §12: the selected relayed pair's data goes as ChannelData, on a
                # channel each side bound to the other's relayed address
                for _ in range(100):
                    if core.stats.channels == 2:
                        break
                    await asyncio.sleep(0.01)
                assert core.stats.channels == 2
                for conn, other in ((a, b), (b, a)):
                    (relay,) = conn.relays()
                    assert other.selected_pair is not None
                    assert list(relay.client.channels.values()) == [
                        other.selected_pair.local.address
                    ]
                await ping_pong(a, b)
            finally:
                await a.close()
                await b.close()
            assert a.open_sockets() == 0 and b.open_sockets() == 0
            assert core.stats.allocations == 0  # released with Refresh(LIFETIME 0)
            assert core.stats.allocations_deleted == 2

    run(main())


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_relay_policy_links_through_turn_over_a_stream_only(
    tls_files: tuple[Path, Path], transport: str
) -> None:
    """A network that lets no UDP reach the TURN server: both sides reach it only over TCP
    (``turn_transport="tcp"``, aioice's names) or TLS (``turn_ssl``); the only relayed
    candidates are those of the stream allocations, the pair is relay to relay, and data
    goes both ways over the streams (ChannelData once bound, padded, RFC 8656 §12.5)."""

    async def main() -> None:
        port, tls_port = free_port("both"), free_port("tcp")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(*tls_files)
        runner = loopback_runner(port, {"alice": "secret"}, "example.org", LOOPBACK,
                                 tcp_port=port, tls_port=tls_port, tls_context=server_context)
        await runner.start()
        core = runner.core
        client_context = ssl.create_default_context(cafile=str(tls_files[0]))
        server = (LOOPBACK, tls_port if transport == "tls" else port)

        def make(controlling: bool) -> Connection:
            return Connection(
                controlling, host_ips=[LOOPBACK], policy="relay", turn_server=server,
                turn_username="alice", turn_password="secret", turn_transport="tcp",
                turn_ssl=transport == "tls", turn_ssl_context=client_context,
            )  # fmt: skip

        a, b = make(True), make(False)
        try:
            await asyncio.gather(a.gather_candidates(), b.gather_candidates())
            for conn in (a, b):
                relayed = [c for c in conn.local_candidates if c.type is CandidateType.RELAY]
                assert len(relayed) == 1 and not conn.gather_failures
                (relay,) = conn.relays()
                assert relay.transport == transport  # no UDP allocation at all
            assert core.stats.allocations == 2
            await exchange(a, b)
            await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
            for conn in (a, b):
                pair = conn.selected_pair
                assert pair is not None
                assert (pair.local.type, pair.remote.type) == (CandidateType.RELAY,) * 2
            for i in range(30):
                await a.send(b"m%d" % i)
            assert [await asyncio.wait_for(b.recv(), 3) for _ in range(30)] == [
                b"m%d" % i for i in range(30)
            ]
            await ping_pong(a, b)
            for _ in range(100):
                if core.stats.channels == 2:
                    break
                await asyncio.sleep(0.01)
            assert core.stats.channels == 2
            await ping_pong(a, b)
        finally:
            await a.close()
            await b.close()
            runner.close()
            await runner.wait_closed()
        assert a.open_sockets() == 0 and b.open_sockets() == 0
        assert core.stats.allocations == 0

    run(main())


def test_close_leaves_no_socket_and_no_allocation_even_unconnected() -> None:
    async def main() -> None:
        async with turn_server() as (core, _runner, turn):
            conn = Connection(True, host_ips=[LOOPBACK], turn_servers=[turn], policy="standard")
            await conn.gather_candidates()
            types = sorted(str(c.type) for c in conn.local_candidates)
            assert types == ["host", "relay"]  # the srflx equals the host: redundant
            assert core.stats.allocations == 1 and conn.open_sockets() == 1
            await conn.close()
            await conn.close()  # idempotent
            assert conn.open_sockets() == 0
            assert core.stats.allocations == 0

    run(main())


# --------------------------------------------------------------------------- restart


def test_ice_restart_on_a_live_connection_keeps_delivering_data() -> None:
    async def main() -> None:
        a = Connection(True, host_ips=[LOOPBACK])
        b = Connection(False, host_ips=[LOOPBACK])
        try:
            await connect(a, b)
            old = (a.local_username, b.local_username)
            stop = asyncio.Event()

            async def stream(src: Connection, tag: bytes) -> int:
                n = 0
                while not stop.is_set():
                    await src.send(tag + b"%d" % n)
                    n += 1
                    await asyncio.sleep(0.01)
                return n

            async def collect(dst: Connection, count: asyncio.Future[int]) -> list[bytes]:
                got: list[bytes] = []
                while not count.done() or len(got) < count.result():
                    try:
                        got.append(await asyncio.wait_for(dst.recv(), 0.5))
                    except TimeoutError:
                        if count.done():
                            break
                return got

            sent_ab = asyncio.ensure_future(stream(a, b"a"))
            sent_ba = asyncio.ensure_future(stream(b, b"b"))
            got_b = asyncio.ensure_future(collect(b, sent_ab))
            got_a = asyncio.ensure_future(collect(a, sent_ba))
            await asyncio.sleep(0.1)
            await a.restart()
            await b.restart()
            assert (a.local_username, b.local_username) != old
            await asyncio.sleep(0.2)  # data flows on the previous pair meanwhile
            await exchange(a, b)
            await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
            await asyncio.sleep(0.2)
            stop.set()
            n_ab, n_ba = await sent_ab, await sent_ba
            assert n_ab > 30 and n_ba > 30
            assert await got_b == [b"a%d" % i for i in range(n_ab)]
            assert await got_a == [b"b%d" % i for i in range(n_ba)]
            assert a.selected_pair is not None
            await ping_pong(a, b)
        finally:
            await a.close()
            await b.close()

    run(main())


# --------------------------------------------------------------------------- errors


def test_failure_is_an_ice_failed_error() -> None:
    async def main() -> None:
        conn = Connection(
            True, host_ips=[LOOPBACK],
            agent_options={"check_rto": 0.05, "check_rc": 2, "check_rm": 2},
        )  # fmt: skip
        try:
            await conn.gather_candidates()
            with pytest.raises(IceNotConnectedError):
                await conn.send(b"too early")
            conn.remote_username = "peer"
            conn.remote_password = "p" * 22
            # a candidate nobody answers on, then end-of-candidates: every pair fails
            await conn.add_remote_candidate(
                f"candidate:1 1 udp 2130706431 {LOOPBACK} {free_port('both')} typ host"
            )
            await conn.add_remote_candidate(None)
            with pytest.raises(IceFailedError) as info:
                await conn.connect()
            assert isinstance(info.value, ConnectionError)  # aioice raises ConnectionError
            assert "failed" in info.value.reason
            with pytest.raises(IceFailedError):
                await conn.recv()
        finally:
            await conn.close()
        with pytest.raises(IceNotConnectedError):
            await conn.send(b"closed")

    run(main())


def test_a_data_handler_takes_datagrams_as_they_arrive_then_recv_reports_the_end() -> None:
    """``set_data_handler``: datagrams that waited for ``recvfrom`` are handed over first, in
    order, then each one as it arrives (synchronously, from the socket's callback); a
    handler that raises loses its datagram to the loop's exception handler, not the next
    ones; ``recv`` then only reports the end."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        a = Connection(True, host_ips=[LOOPBACK])
        b = Connection(False, host_ips=[LOOPBACK])
        got: list[tuple[bytes, int]] = []
        try:
            await connect(a, b)
            for i in range(3):
                await b.send(b"early %d" % i)
            for _ in range(100):  # all three waiting in a's queue
                if a._queue.qsize() == 3:
                    break
                await asyncio.sleep(0.01)

            def handler(data: bytes, component: int) -> None:
                if data == b"bad":
                    raise ValueError("a bug in the handler")
                got.append((data, component))

            a.set_data_handler(handler)
            assert got == [(b"early %d" % i, 1) for i in range(3)]
            for data in (b"late 0", b"bad", b"late 1"):
                await b.send(data)
            for _ in range(100):
                if len(got) == 5:
                    break
                await asyncio.sleep(0.01)
            assert got[3:] == [(b"late 0", 1), (b"late 1", 1)]
            assert [type(e.get("exception")) for e in errors] == [ValueError]
            waiter = asyncio.ensure_future(a.recv())
            await asyncio.sleep(0.05)
            assert not waiter.done()  # data no longer comes this way
            await a.close()
            with pytest.raises(IceNotConnectedError):
                await waiter
            a.set_data_handler(None)  # back to recv: still the end
            with pytest.raises(IceNotConnectedError):
                await a.recv()
        finally:
            await a.close()
            await b.close()

    run(main())


def test_send_datagrams_and_a_batch_handler_move_runs_of_datagrams_in_order() -> None:
    """``send_datagrams`` sends a list at once (runs of equal size as one segmented send on
    Linux); the peer's ``set_data_batch_handler`` gets every datagram, in order, in lists of
    those that arrived together, with the component; ``sendto`` is the same with one."""

    async def main() -> None:
        a = Connection(True, host_ips=[LOOPBACK])
        b = Connection(False, host_ips=[LOOPBACK])
        calls: list[tuple[list[bytes], int]] = []
        try:
            await connect(a, b)
            b.set_data_batch_handler(lambda datagrams, component: calls.append((datagrams, component)))
            datagrams = [bytes([200, i]) * 600 for i in range(40)] + [b"\xc8 short", b"\xc8"]
            a.send_datagrams(datagrams)
            await a.sendto(b"\xc8 last", 1)
            expected = [*datagrams, b"\xc8 last"]
            for _ in range(200):
                if sum(len(batch) for batch, _ in calls) >= len(expected):
                    break
                await asyncio.sleep(0.01)
            assert [data for batch, _ in calls for data in batch] == expected
            assert {component for _, component in calls} == {1}
            assert len(calls) < len(expected)  # several at a time
            await b.close()
            with pytest.raises(IceNotConnectedError):
                b.send_datagrams([b"\xc8 closed"])
        finally:
            await a.close()
            await b.close()

    run(main())


def test_recv_after_close_raises() -> None:
    async def main() -> None:
        conn = Connection(False, host_ips=[LOOPBACK])
        await conn.gather_candidates()
        waiter = asyncio.ensure_future(conn.recv())
        await asyncio.sleep(0)
        await conn.close()
        with pytest.raises(IceNotConnectedError):
            await waiter
        with pytest.raises(IceNotConnectedError):
            await conn.recv()

    run(main())


# --------------------------------------------------------------------------- anchor ice


def _read_block(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    """Lines of the SDP block a process prints, up to its empty line."""
    assert proc.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"exited before its description: {err}")
        if not line.strip():
            return lines
        lines.append(line.rstrip("\n"))
    raise AssertionError("no description in time")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def wire(
    argv_a: list[str], argv_b: list[str], timeout: float = 30.0
) -> tuple[tuple[int, str, str], tuple[int, str, str], list[str], list[str]]:
    """Start two peers, copy each one's SDP block to the other's stdin, wait for both."""
    procs = [
        subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for argv in (argv_a, argv_b)
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        blocks = [_read_block(p, deadline) for p in procs]
        for proc, block in zip(procs, reversed(blocks), strict=True):
            assert proc.stdin is not None
            proc.stdin.write("\n".join(block) + "\n\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
        return results[0], results[1], blocks[0], blocks[1]
    finally:
        for proc in procs:
            _stop(proc)


def test_two_anchor_ice_processes_wired_through_pipes_connect_and_echo() -> None:
    start = time.monotonic()
    common = ["ice", "--host-ip", LOOPBACK, "--json", "--timeout", "20"]
    (code_a, out_a, err_a), (code_b, out_b, err_b), block_a, block_b = wire(
        [*ANCHOR, *common, "--controlling"], [*ANCHOR, *common, "--controlled"]
    )
    assert code_a == 0, err_a
    assert code_b == 0, err_b
    assert block_a[0] == "a=ice-pacing:5"  # Anchor's Ta proposal, 5 ms (RFC 8839 §5.5)
    assert block_a[1].startswith("m=") and block_a[2].startswith("c=IN IP4 ")
    assert any(line.startswith("a=ice-ufrag:") for line in block_a)
    assert any(line.startswith("a=candidate:") for line in block_b)
    assert "RECV b'echo:ping'" in out_a.splitlines()
    assert "RECV b'ping'" in out_b.splitlines()
    summary_a = json.loads(out_a.strip().splitlines()[-1])
    summary_b = json.loads(out_b.strip().splitlines()[-1])
    for summary in (summary_a, summary_b):
        assert summary["state"] == "connected"
        assert summary["received"] >= 1
        assert summary["connect_ms"] < 5000
        assert summary["selected_pair"]["local"]["type"] == "host"
        assert summary["selected_pair"]["remote"]["type"] == "host"
    assert (
        summary_a["selected_pair"]["local"]["address"]
        == summary_b["selected_pair"]["remote"]["address"]
    )
    assert time.monotonic() - start < 20


def test_anchor_ice_user_mistakes_are_one_line() -> None:
    result = subprocess.run(
        [*ANCHOR, "ice", "--controlling", "--turn", "127.0.0.1:3478"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["anchor ice: --turn needs --user NAME:PASSWORD"]
    result = subprocess.run(
        [*ANCHOR, "ice", "--controlled", "--host-ip", LOOPBACK, "--json", "--timeout", "10"],
        input="m=- 9 ICE/SDP\na=ice-ufrag:abcd\n\n",
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "bad peer description" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["state"] == "failed"
    result = subprocess.run(
        [*ANCHOR, "ice", "--controlling"], capture_output=True, text=True, timeout=30,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1  # gathered on the interfaces (or none), then no description
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
