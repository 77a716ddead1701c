"""coturn's `turnutils_uclient` against `anchor serve` (issue 4, "must show" 2).

`anchor serve` runs with static users, a REST API shared secret and loopback peers allowed;
a `turnutils_peer` echoes on loopback. Each uclient run allocates (by default uclient also
makes an RTCP allocation through EVEN-PORT + RESERVATION-TOKEN), creates
permissions, sends `-n` messages from `-m` clients through the relay and counts the echoes.
uclient exits 0 even at 100 % loss (docs/peers.md), so its line "Total lost packets 0 ("
is what is asserted. Over UDP and TCP, with channels (ChannelData) and with Send
indications (`-s`), with static credentials and with the REST API (`-W`), and client to
client through two allocations (`-y`).

uclient draws channel numbers at random from RFC 5766's 0x4000-0x7FFF, which RFC 8656
narrowed to 0x4000-0x4FFF. A default ``anchor serve`` accepts the wider range (issue 18: a
TURN server that browsers and uclient use must accept what they send), so every mode runs
against the server as a new user would start it; with ``--strict-channels`` most of
uclient's ChannelBinds get 400 (asserted below, so the option keeps its meaning).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from peers import PeerProcess, free_port, free_port_block, require_peer, start_process, tcp_ping

from tests.helpers import anchor_serve

USER, PASSWORD = "alice", "secret"
SECRET = "north-wind"
REALM = "example.org"
LOST = re.compile(r"Total lost packets (\d+) \(")
MESSAGES, CLIENTS = 20, 3


@dataclass
class Served:
    """An `anchor serve` process with TURN on, and an echo peer."""

    port: int
    peer_port: int


@pytest.fixture(scope="module")
def peer_program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`turnutils_peer` echoing UDP on 127.0.0.1, stopped by PID."""
    program = require_peer("turnutils_peer")
    port = free_port("udp")
    log = tmp_path_factory.mktemp("peer") / "turnutils_peer.log"
    peer: PeerProcess = start_process("turnutils_peer", [program, "-L", "127.0.0.1",
                                                          "-p", str(port)], log)
    try:
        yield port
    finally:
        peer.stop()


def _serve_args(port: int, *extra: str) -> list[str]:
    relay = free_port_block(400, "udp")
    return [
        "--listen", f"127.0.0.1:{port}", "--tcp", "--realm", REALM,
        "--user", f"{USER}:{PASSWORD}", "--static-auth-secret", SECRET,
        "--allow-loopback-peers", "--relay-ip", "127.0.0.1",
        "--min-port", str(relay), "--max-port", str(relay + 399), *extra,
    ]


@pytest.fixture(scope="module")
def served(peer_program: int) -> Iterator[Served]:
    """`anchor serve` (UDP + TCP, static users + REST secret), stopped by PID at the end."""
    require_peer("turnutils_uclient")
    port = free_port("both")
    with anchor_serve(*_serve_args(port), expect=2):
        assert tcp_ping(("127.0.0.1", port))
        yield Served(port, peer_program)


def uclient(port: int, *args: str, timeout: float = 90) -> str:
    """Run turnutils_uclient against 127.0.0.1:``port``; its whole output."""
    program = require_peer("turnutils_uclient")
    result = subprocess.run(
        [program, "-p", str(port), *args, "127.0.0.1"],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    return result.stdout + result.stderr


def lost_packets(output: str) -> int:
    """The number on uclient's "Total lost packets N (" line."""
    match = LOST.search(output)
    assert match is not None, f"no 'Total lost packets' line in uclient output:\n{output}"
    return int(match.group(1))


CREDENTIALS = {
    "static": ["-u", USER, "-w", PASSWORD],
    "rest": ["-u", "uclient", "-W", SECRET],
}


@pytest.mark.parametrize("auth", ["static", "rest"])
@pytest.mark.parametrize("method", ["channel", "send"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_uclient_to_echo_peer_loses_nothing(
    served: Served, transport: str, method: str, auth: str
) -> None:
    args = [*CREDENTIALS[auth], "-e", "127.0.0.1", "-r", str(served.peer_port),
            "-n", str(MESSAGES), "-m", str(CLIENTS), "-l", "120"]
    if transport == "tcp":
        args.append("-t")
    if method == "send":
        args.append("-s")
    output = uclient(served.port, *args)
    assert "Cannot complete Allocation" not in output, output
    assert "error" not in output.lower(), output
    assert lost_packets(output) == 0, output


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_uclient_client_to_client_loses_nothing(served: Served, transport: str) -> None:
    args = [*CREDENTIALS["static"], "-y", "-n", str(MESSAGES), "-m", "2"]
    if transport == "tcp":
        args.append("-t")
    output = uclient(served.port, *args)
    assert "error" not in output.lower(), output
    assert lost_packets(output) == 0, output


def test_uclient_wrong_password_is_refused(served: Served) -> None:
    output = uclient(served.port, "-u", USER, "-w", "wrong", "-e", "127.0.0.1",
                     "-r", str(served.peer_port), "-n", "2", timeout=60)
    assert "Cannot complete Allocation" in output, output


def test_uclient_channel_binds_all_succeed(served: Served) -> None:
    """uclient's default mode (channels, 0x4000-0x7FFF at random) against a default server:
    8 clients' binds, none refused, nothing lost."""
    output = uclient(served.port, *CREDENTIALS["static"], "-e", "127.0.0.1",
                     "-r", str(served.peer_port), "-n", "4", "-m", "8", "-c")
    assert "channel bind: error" not in output, output
    assert lost_packets(output) == 0, output


def test_strict_channels_refuse_uclient_channels_with_400(peer_program: int) -> None:
    """``--strict-channels``: RFC 8656 §12's range only, uclient's high numbers get 400."""
    port = free_port("both")
    with anchor_serve(*_serve_args(port, "--strict-channels"), expect=2):
        outputs = [
            uclient(port, *CREDENTIALS["static"], "-e", "127.0.0.1", "-r", str(peer_program),
                    "-n", "2", "-m", "4", "-c")
            for _ in range(2)
        ]
    # 8 random channel numbers from 0x4000-0x7FFF: all under 0x5000 has odds 4**-8.
    assert any("channel bind: error 400" in out for out in outputs), outputs
