"""A fleet sharing state in Redis (issue 21), over loopback: each test starts its own
redis-server (no persistence) on a free port and stops it by PID. Two `anchor serve --redis`
with --user-quota 1 share the quota; Redis stopped: relaying goes on, a new allocation gets
an error response, and after Redis returns allocations succeed again; users and REST secrets
added with coturn's turnadmin work unchanged; two rendezvous instances on one Redis carry an
`anchor pipe` link between them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchor_stun.errors import AllocationError
from anchor_stun.integrity import turn_rest_password
from anchor_turn import TurnConnection
from tests.helpers import ANCHOR, LOOPBACK, anchor_serve, free_port, require_program

pytestmark = [pytest.mark.timeout(120)]
USER = ("alice", "wonderland")


class RedisServer:
    """A redis-server of the test's own on 127.0.0.1:port, started and stopped by PID."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        server = require_program("redis-server", "redis-server")
        # --dir: whatever it writes (it should write nothing) goes to the test's own folder
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(host=LOOPBACK, port=self.port)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port("tcp"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def _echo_through(conn: TurnConnection, peer: tuple[str, int], data: bytes) -> None:
    conn.send(data, peer)
    got, source = await asyncio.wait_for(conn.recv(), 5)
    assert (got, source) == (data, peer)


def test_two_servers_share_the_user_quota_and_survive_redis_going_away(
    redis_server: RedisServer,
) -> None:
    first, second = free_port(), free_port()
    common = ("--user", ":".join(USER), "--allow-loopback-peers", "--redis", redis_server.url,
              "--user-quota", "1")  # fmt: skip
    with anchor_serve("--listen", f"{LOOPBACK}:{first}", *common), anchor_serve(
        "--listen", f"{LOOPBACK}:{second}", *common
    ):

        async def main() -> None:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(LOOPBACK, 0))
            peer = transport.get_extra_info("sockname")[:2]
            held = await TurnConnection.connect((LOOPBACK, first), *USER)
            await held.allocate()
            other = await TurnConnection.connect((LOOPBACK, second), *USER)
            with pytest.raises(AllocationError) as refused:
                await other.allocate()
            assert refused.value.code == 486  # the first server holds alice's one allocation
            await other.close()
            await held.release()
            await held.close()
            relaying = await TurnConnection.connect((LOOPBACK, second), *USER)
            await relaying.allocate()  # released on the first: the second may allocate
            await relaying.create_permission(peer[0])
            await _echo_through(relaying, peer, b"before")

            redis_server.stop()
            await _echo_through(relaying, peer, b"while Redis is away")  # relaying goes on
            late = await TurnConnection.connect((LOOPBACK, first), *USER)
            with pytest.raises(AllocationError) as unavailable:
                await asyncio.wait_for(late.allocate(), 2)  # an answer, not a hang
            assert unavailable.value.code == 508
            await late.close()

            redis_server.start()  # an empty Redis on the same port: the servers reconnect
            deadline = loop.time() + 15
            while True:
                again = await TurnConnection.connect((LOOPBACK, first), *USER)
                try:
                    await asyncio.wait_for(again.allocate(), 2)
                    break
                except AllocationError as exc:
                    # 508 until the server retries Redis; 486 until the second server's
                    # renewal has put alice's held allocation back into the new Redis.
                    assert exc.code in (486, 508) and loop.time() < deadline, exc
                    await again.close()
                    await asyncio.sleep(0.3)
            await again.close()
            await _echo_through(relaying, peer, b"after")
            await relaying.close()
            transport.close()

        asyncio.run(main())


def test_two_servers_share_the_total_quota(redis_server: RedisServer) -> None:
    """--total-quota is the fleet's with --redis: one allocation held on the first server,
    by alice, makes the second answer bob 486; released, bob allocates on the second."""
    first, second = free_port(), free_port()
    common = ("--user", ":".join(USER), "--user", "bob:builder", "--redis", redis_server.url,
              "--total-quota", "1", "--user-quota", "1")  # fmt: skip
    with anchor_serve("--listen", f"{LOOPBACK}:{first}", *common), anchor_serve(
        "--listen", f"{LOOPBACK}:{second}", *common
    ):

        async def main() -> None:
            held = await TurnConnection.connect((LOOPBACK, first), *USER)
            await held.allocate()
            other = await TurnConnection.connect((LOOPBACK, second), "bob", "builder")
            with pytest.raises(AllocationError) as refused:
                await other.allocate()
            assert refused.value.code == 486  # the fleet holds its one allocation
            await other.close()
            await held.release()
            await held.close()
            async with await TurnConnection.connect((LOOPBACK, second), "bob", "builder") as bob:
                await bob.allocate()

        asyncio.run(main())


def test_users_and_secrets_added_with_turnadmin_work_unchanged(redis_server: RedisServer) -> None:
    require_program("turnadmin", "coturn")
    connection = f"ip={LOOPBACK} port={redis_server.port} dbname=0"
    for args in (["-a", "-u", "bob", "-r", "anchor", "-p", "hunter2"],
                 ["-s", "logen", "-r", "anchor"],
                 ["-s", "rotated", "-r", "anchor"]):  # fmt: skip  (two secrets: either works)
        result = subprocess.run(["turnadmin", *args, "-N", connection], capture_output=True,
                                timeout=30, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
    port = free_port()
    with anchor_serve("--listen", f"{LOOPBACK}:{port}", "--realm", "anchor",
                      "--redis", redis_server.url):  # fmt: skip
        rest_user = f"{int(time.time()) + 3600}:carol"

        async def main() -> None:
            for user, password in (("bob", "hunter2"),
                                   (rest_user, turn_rest_password("logen", rest_user)),
                                   (rest_user, turn_rest_password("rotated", rest_user))):  # fmt: skip
                async with await TurnConnection.connect((LOOPBACK, port), user, password) as conn:
                    await conn.allocate()
            for user, password in (("bob", "nope"),
                                   (rest_user, turn_rest_password("unknown", rest_user))):  # fmt: skip
                with pytest.raises(AllocationError) as wrong:
                    async with await TurnConnection.connect((LOOPBACK, port), user, password) as c:
                        await c.allocate()
                assert wrong.value.code == 401

        asyncio.run(main())


def test_pipes_on_two_rendezvous_instances_link_through_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    turn, sig_a, sig_b = free_port("both"), free_port("both"), free_port("both")
    data = os.urandom(20_000)
    (tmp_path / "in").write_bytes(data)
    common = ("--redis", redis_server.url, "--allow-loopback-peers")
    with anchor_serve("--listen", f"{LOOPBACK}:{turn}", "--user", "alice:secret",
                      "--signal", f"{LOOPBACK}:{sig_a}", *common, expect=2), anchor_serve(
        "--listen", f"{LOOPBACK}:{free_port('both')}", "--user", "alice:secret",
        "--signal", f"{LOOPBACK}:{sig_b}", *common, expect=2,
    ):  # fmt: skip
        shared = ["--turn", f"{LOOPBACK}:{turn}", "--user", "alice:secret",
                  "--host-ip", LOOPBACK, "--idle", "0.5"]  # fmt: skip
        receiver = subprocess.Popen(
            [*ANCHOR, "pipe", "--name", "B", "--peer", "A",
             "--signal", f"ws://{LOOPBACK}:{sig_b}", *shared],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            time.sleep(1.0)  # let B subscribe before A's offer
            with open(tmp_path / "in", "rb") as stdin:
                sender = subprocess.run(
                    [*ANCHOR, "pipe", "--name", "A", "--peer", "B",
                     "--signal", f"ws://{LOOPBACK}:{sig_a}", *shared],
                    stdin=stdin, capture_output=True, timeout=60, check=False,
                )  # fmt: skip
            out, err = receiver.communicate(timeout=30)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()
        assert sender.returncode == 0, sender.stderr
        assert receiver.returncode == 0, err
        assert out == data


def test_a_redis_that_cannot_be_reached_is_said_at_start_and_a_bad_url_is_refused() -> None:
    """An operator learns at start, not at the first Allocate, that Redis is not there (the
    server serves all the same and reconnects by itself); a database that is not a number
    is refused instead of silently becoming database 0."""
    closed = free_port("tcp")  # nothing listens there
    listen = f"{LOOPBACK}:{free_port()}"
    common = ("--listen", listen, "--user", ":".join(USER))
    with anchor_serve(*common, "--redis", f"redis://{LOOPBACK}:{closed}/0") as lines:
        proc = lines.process
        os.kill(proc.pid, 15)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert "Redis unavailable" in err, err
    bad = subprocess.run(
        [*ANCHOR, "serve", *common, "--redis", f"redis://{LOOPBACK}:{closed}/x"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2, bad
    assert "database after the port must be a number" in bad.stderr, bad.stderr
