"""``anchor serve --external-ip PUBLIC/PRIVATE`` behind a 1:1 NAT: a client outside is given
the public relayed address and relays through it (issue 21, must-show 4).

The lab gains a server host ``srv`` (198.51.100.194) behind ``natS``, a 1:1 NAT whose public
address is 203.0.113.194 (:meth:`natlab.NatLab.add_server_nat`): a cloud instance with a
private address. ``anchor serve`` runs in ``srv`` on the private address with
``--external-ip 203.0.113.194/198.51.100.194``; ``pub`` has no route to the private address,
so only the public one reaches it. From hostA (behind natA), ``anchor turn --peer`` allocates
on 203.0.113.194:3478 over UDP and over TCP and echoes through a UDP echo peer in ``pub``
(by Send indication and by ChannelData). The test asserts:

- XOR-RELAYED-ADDRESS names the public address (RFC 8656 §7.2), and the echo peer saw the
  datagrams come from exactly that address and port: what a peer learns through signalling is
  what it sends to;
- XOR-MAPPED-ADDRESS is hostA's address as the public side sees it (natA's WAN address);
- both echoes came back through the relay;
- the private address is unreachable from outside (a STUN Binding to it goes unanswered), or
  the test would prove nothing.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator

import pytest
from natlab import NatLab
from natlab.fixtures import natlab
from natlab.lab import ANCHOR
from natlab.links import TURN_USER
from natlab.topology import ANCHOR_PORT, SERVER_IP
from peers import wait_until_ready

__all__ = ["natlab"]  # the module fixture, imported so pytest finds it here

RELAY_PORTS = (51000, 51099)
"""Relay range of the server behind the 1:1 NAT."""
ECHO = (SERVER_IP, 7)
"""The UDP echo peer, in ``pub`` (RFC 862's port)."""


class EchoPeer:
    """A UDP echo in ``pub`` that records the source of every datagram it echoes."""

    def __init__(self, lab: NatLab) -> None:
        self.sock = lab.socket("pub")
        self.sock.bind(ECHO)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self.sources: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._run, name="echo-peer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.sources.append(source)
            self.sock.sendto(data, source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def behind_nat(natlab: NatLab) -> Iterator[tuple[str, str]]:
    """``anchor serve --external-ip PUBLIC/PRIVATE`` in ``srv``; yields (public, private)."""
    public, private = natlab.add_server_nat()
    server = natlab.start("srv", "anchor-serve-1to1", [
        *ANCHOR, "serve", "--listen", f"{private}:{ANCHOR_PORT}", "--tcp",
        "--user", TURN_USER, "--allow-peer", "203.0.113.0/24",
        "--external-ip", f"{public}/{private}",
        "--min-port", str(RELAY_PORTS[0]), "--max-port", str(RELAY_PORTS[1]),
    ])  # fmt: skip
    wanted = [f"listening udp {private}:{ANCHOR_PORT}", f"listening tcp {private}:{ANCHOR_PORT}"]
    wait_until_ready(server, [
        (line, functools.partial(lambda line: line in server.log().splitlines(), line))
        for line in wanted
    ])  # fmt: skip
    yield public, private


@pytest.fixture
def echo(natlab: NatLab) -> Iterator[EchoPeer]:
    peer = EchoPeer(natlab)
    yield peer
    peer.close()


def test_private_address_is_unreachable_from_outside(
    natlab: NatLab, behind_nat: tuple[str, str]
) -> None:
    public, private = behind_nat
    assert natlab.stun_ping("hostA", (public, ANCHOR_PORT), timeout=2)
    assert not natlab.stun_ping("hostA", (private, ANCHOR_PORT))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_client_outside_gets_and_relays_through_the_public_address(
    natlab: NatLab, behind_nat: tuple[str, str], echo: EchoPeer, transport: str
) -> None:
    public, _ = behind_nat
    result = natlab.exec("hostA", [
        *ANCHOR, "turn", f"{public}:{ANCHOR_PORT}", "--user", TURN_USER,
        "--transport", transport, "--peer", f"{ECHO[0]}:{ECHO[1]}", "--json",
    ], timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    relayed_ip, _, relayed_port = out["relayed"].rpartition(":")
    assert relayed_ip == public, f"XOR-RELAYED-ADDRESS {out['relayed']} is not the public side"
    assert RELAY_PORTS[0] <= int(relayed_port) <= RELAY_PORTS[1]
    assert out["mapped"].rpartition(":")[0] == natlab.wan_ip("hostA")
    assert out["echo"] is True, out
    # The peer saw the relay at the advertised address, port included (Send and ChannelData).
    assert set(echo.sources) == {(public, int(relayed_port))}, echo.sources
