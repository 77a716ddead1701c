"""ICE through a TURN relay: coturn (``turnserver``) and Anchor's own ``anchor serve``.

On loopback every direct pair is a host pair (docs/design.md "Definitions"), so:

- two :class:`~anchor_ice.aio.connection.Connection`\\ s with the gateway policy (GatewayNominator)
  advertise only their relayed candidates, check relay to relay through the server, and end
  on a relay pair; no host pair is ever nominated, data flows both ways through the relay;
- with the standard policy (StandardNominator) and the same servers, they end on the host
  pair (the highest-priority valid pair, RFC 8445 §8.1.1), relayed candidates notwithstanding;
- two ``anchor ice --policy gateway --turn ... --user ...`` processes wired through pipes
  connect on a relay pair and echo.

Each server is a separate process started by the test (coturn by the session fixture of
conftest.py, ``anchor serve`` per test), on free loopback ports, stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import TypeVar

import pytest
from peers import Coturn, free_port, make_self_signed_cert

from anchor_ice.aio.connection import Connection
from anchor_ice.aio.gather import TurnServerConfig
from anchor_ice.candidate import CandidateType
from anchor_ice.nominator import GatewayNominator, StandardNominator
from anchor_stun.aio.net import format_address
from tests.helpers import ANCHOR, anchor_serve
from tests.loopback.test_ice_net import connect, wire

LOOPBACK = "127.0.0.1"
T = TypeVar("T")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def anchor_turn() -> Iterator[TurnServerConfig]:
    """``anchor serve`` with TURN on (alice:secret), loopback peers allowed."""
    port = free_port("udp")
    with anchor_serve(
        "--listen", f"{LOOPBACK}:{port}", "--user", "alice:secret", "--realm", "example.org",
        "--allow-loopback-peers",
    ):  # fmt: skip
        yield TurnServerConfig((LOOPBACK, port), "alice", "secret")


@pytest.fixture(params=["coturn", "anchor-serve"])
def turn(request: pytest.FixtureRequest) -> TurnServerConfig:
    """Each TURN server in turn."""
    if request.param == "coturn":
        server: Coturn = request.getfixturevalue("coturn")
        return TurnServerConfig(server.udp, server.username, server.password)
    config: TurnServerConfig = request.getfixturevalue("anchor_turn")
    return config


async def _pair(turn: TurnServerConfig, gateway: bool) -> tuple[Connection, Connection, float]:
    def make(controlling: bool) -> Connection:
        nominator = GatewayNominator(grace=0.3) if gateway else StandardNominator()
        return Connection(
            controlling, host_ips=[LOOPBACK], turn_servers=[turn], nominator=nominator
        )

    a, b = make(True), make(False)
    took = await connect(a, b)
    return a, b, took


async def _data(a: Connection, b: Connection) -> None:
    await a.send(b"through")
    assert await asyncio.wait_for(b.recv(), 3) == b"through"
    await b.send(b"and back")
    assert await asyncio.wait_for(a.recv(), 3) == b"and back"


def test_gateway_policy_ends_on_a_relay_pair(turn: TurnServerConfig) -> None:
    async def main() -> float:
        a, b, took = await _pair(turn, gateway=True)
        try:
            for conn in (a, b):
                assert {c.type for c in conn.local_candidates} == {CandidateType.RELAY}
                pair = conn.selected_pair
                assert pair is not None
                assert (pair.local.type, pair.remote.type) == (
                    CandidateType.RELAY, CandidateType.RELAY,
                )  # fmt: skip
                assert conn.nominated_pairs
                for nominated in conn.nominated_pairs:
                    assert CandidateType.HOST not in (nominated.local.type, nominated.remote.type)
            assert a.selected_pair is not None and b.selected_pair is not None
            assert a.selected_pair.local.address == b.selected_pair.remote.address
            await _data(a, b)
        finally:
            await a.close()
            await b.close()
        assert a.open_sockets() == 0 and b.open_sockets() == 0
        return took

    took = asyncio.run(asyncio.wait_for(main(), 60))
    assert took < 10


def test_standard_policy_ends_on_a_host_pair(turn: TurnServerConfig) -> None:
    async def main() -> None:
        a, b, _ = await _pair(turn, gateway=False)
        try:
            for conn in (a, b):
                types = {c.type for c in conn.local_candidates}
                assert CandidateType.RELAY in types and CandidateType.HOST in types
                pair = conn.selected_pair
                assert pair is not None
                assert (pair.local.type, pair.remote.type) == (
                    CandidateType.HOST, CandidateType.HOST,
                )  # fmt: skip
            await _data(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_anchor_ice_gateway_through_turn(turn: TurnServerConfig) -> None:
    common = ["ice", "--policy", "gateway", "--host-ip", LOOPBACK,
              "--turn", format_address(turn.address), "--user", f"{turn.username}:{turn.password}",
              "--json", "--timeout", "25"]  # fmt: skip
    start = time.monotonic()
    (code_a, out_a, err_a), (code_b, out_b, err_b), block_a, block_b = wire(
        [*ANCHOR, *common, "--controlling"], [*ANCHOR, *common, "--controlled"], timeout=40
    )
    assert code_a == 0, err_a
    assert code_b == 0, err_b
    for block in (block_a, block_b):
        candidates = [line for line in block if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay" in line for line in candidates)
    assert "RECV b'echo:ping'" in out_a.splitlines()
    assert "RECV b'ping'" in out_b.splitlines()
    for out in (out_a, out_b):
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["state"] == "connected"
        assert summary["selected_pair"]["local"]["type"] == "relay"
        assert summary["selected_pair"]["remote"]["type"] == "relay"
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------- TURN over TCP and TLS (issue 18)


@pytest.fixture(scope="module")
def stream_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """``anchor serve`` with UDP, TCP (``--tcp``) and TLS (``--tls-cert/--tls-key``, a
    self-signed certificate made here with ``cryptography``) listeners; yields the URIs of
    its TCP and TLS listeners and the certificate."""
    workdir = tmp_path_factory.mktemp("serve-tls")
    cert, key = make_self_signed_cert(workdir)
    port, tls_port = free_port("both"), free_port("tcp")
    with anchor_serve(
        "--listen", f"{LOOPBACK}:{port}", "--tcp", "--tls-cert", str(cert), "--tls-key", str(key),
        "--tls-listen", f"{LOOPBACK}:{tls_port}", "--user", "alice:secret",
        "--realm", "example.org", "--allow-loopback-peers", expect=3,
    ):  # fmt: skip
        yield {"tcp": f"turn:{LOOPBACK}:{port}?transport=tcp",
               "tls": f"turns:{LOOPBACK}:{tls_port}", "cert": cert}  # fmt: skip


def _stream_configs(server: str, transport: str, request: pytest.FixtureRequest
                    ) -> TurnServerConfig:
    if server == "coturn":
        coturn: Coturn = request.getfixturevalue("coturn")
        assert coturn.cert is not None
        host, port = coturn.tls if transport == "tls" else coturn.tcp
        uri = f"turns:{host}:{port}" if transport == "tls" else f"turn:{host}:{port}?transport=tcp"
        cert = coturn.cert
        user, password = coturn.username, coturn.password
    else:
        served = request.getfixturevalue("stream_served")
        uri, cert = str(served[transport]), served["cert"]
        user, password = "alice", "secret"
    context = ssl.create_default_context(cafile=str(cert))
    return TurnServerConfig.from_uri(uri, user, password, ssl_context=context)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("server", ["anchor-serve", "coturn"])
def test_link_through_turn_over_a_stream_only(
    request: pytest.FixtureRequest, server: str, transport: str
) -> None:
    """RFC 8656 §3.1 / RFC 7065: both sides reach the TURN server only over TCP or TLS (no
    UDP relay candidate exists), form a relay/relay pair and carry data both ways: what a
    network that blocks UDP allows."""
    turn = _stream_configs(server, transport, request)

    async def main() -> None:
        def make(controlling: bool) -> Connection:
            return Connection(controlling, host_ips=[LOOPBACK], turn_servers=[turn],
                              policy="relay")  # fmt: skip

        a, b = make(True), make(False)
        try:
            await connect(a, b)
            for conn in (a, b):
                assert not conn.gather_failures, conn.gather_failures
                relays = conn.relays()
                assert [r.transport for r in relays] == [transport]  # and no UDP relay
                pair = conn.selected_pair
                assert pair is not None
                assert (pair.local.type, pair.remote.type) == (CandidateType.RELAY,) * 2
            await _data(a, b)
            for i in range(20):
                await a.send(b"burst %d" % i)
            got = [await asyncio.wait_for(b.recv(), 3) for _ in range(20)]
            assert got == [b"burst %d" % i for i in range(20)]
        finally:
            await a.close()
            await b.close()
        assert a.open_sockets() == 0 and b.open_sockets() == 0

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("trust", ["ca-file", "insecure"])
def test_anchor_ice_through_turns_with_ca_file(
    stream_served: dict[str, object], trust: str
) -> None:
    """``anchor ice --turn turns:IP:PORT --ca-file CERT --user N:P`` (or ``--insecure``
    instead of ``--ca-file``: the certificate is not verified): both processes relay over
    TLS only, connect relay to relay and echo."""
    verify = ["--ca-file", str(stream_served["cert"])] if trust == "ca-file" else ["--insecure"]
    common = ["ice", "--policy", "relay", "--host-ip", LOOPBACK,
              "--turn", str(stream_served["tls"]), *verify,
              "--user", "alice:secret", "--json", "--timeout", "25"]  # fmt: skip
    (code_a, out_a, err_a), (code_b, out_b, err_b), block_a, block_b = wire(
        [*ANCHOR, *common, "--controlling"], [*ANCHOR, *common, "--controlled"], timeout=40
    )
    assert code_a == 0, err_a
    assert code_b == 0, err_b
    for block in (block_a, block_b):
        candidates = [line for line in block if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay" in line and " UDP " in line.upper()
                                  for line in candidates)  # fmt: skip
    assert "RECV b'echo:ping'" in out_a.splitlines()
    for out in (out_a, out_b):
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["state"] == "connected"
        assert summary["selected_pair"]["local"]["type"] == "relay"


def test_anchor_ice_refuses_an_unverified_turns_server(stream_served: dict[str, object]) -> None:
    """Without --ca-file the self-signed server is not trusted: the relay fails (no
    candidate under the relay policy), with a one-line reason naming the certificate."""
    result = subprocess.run(
        [*ANCHOR, "ice", "--controlling", "--policy", "relay", "--host-ip", LOOPBACK,
         "--turn", str(stream_served["tls"]), "--user", "alice:secret", "--timeout", "10"],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "certificate" in result.stderr.lower() and "Traceback" not in result.stderr


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_anchor_demo_through_an_outside_turn_server(
    stream_served: dict[str, object], transport: str
) -> None:
    """``anchor demo --policy relay --turn URI --user N:P [--ca-file F]``: the peers relay
    through ``anchor serve`` over TCP or TLS; nothing lost, everything released."""
    args = ["demo", "--policy", "relay", "--json", "--turn", str(stream_served[transport]),
            "--user", "alice:secret"]  # fmt: skip
    if transport == "tls":
        args += ["--ca-file", str(stream_served["cert"])]
    result = subprocess.run([*ANCHOR, *args], capture_output=True, text=True, timeout=90,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["selected_pair"]["local"]["type"] == "relay"
    assert summary["lost"] == 0 and summary["dissolved"] is True
    assert summary["allocations_left"] == 0 and summary["sockets_left"] == 0
