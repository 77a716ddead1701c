"""A host whose network lets out only TCP 443 and 5349 still forms links, through TURN over
TCP and TLS (issue 18, must-show 1).

natA becomes a restrictive firewall besides its NAT (:meth:`natlab.NatLab.set_block`): it
forwards no UDP at all, either way, and from hostA's LAN only TCP to ports 443 and 5349 (a
corporate or public Wi-Fi network). Every server hostA needs is therefore on one of those:

- ``anchor serve`` ("edge", 203.0.113.1): TURN over TCP on 443 and over TLS on 5349
  (``--tcp --tls-cert --tls-key``), its relayed addresses UDP on 203.0.113.1 as usual;
- coturn (203.0.113.2): TURN over TCP on 443, its TLS listener on 5349;
- the rendezvous: the edge's ``--signal`` on port 443 of a third ``pub`` address,
  203.0.113.3, over wss (the edge has a certificate, so its rendezvous is TLS too).

The certificate is made by the test (``cryptography``), self-signed, with the three server
addresses as subjectAltName; both pipes trust it with ``--ca-file``. hostA runs ``anchor pipe
--turn turns:IP:5349 --ca-file CERT --user N:P`` (or ``turn:IP:443?transport=tcp``) and no
STUN; hostB, behind a port-restricted cone with UDP allowed, uses the lab's ``anchor serve``
for STUN only. The link must form on hostA's relayed candidate, reached over the expected
transport (the ``(relay over tls)`` of ``anchor pipe -v``), and carry every message. Before
each link, a STUN Binding from hostA must go unanswered and be counted by the firewall's drop
rule, or the test would prove nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from natlab import SERVER_ALT_IP, SERVER_IP, NatKind, NatLab
from natlab.fixtures import natlab, report
from natlab.lab import ANCHOR, _run
from natlab.links import TURN_USER, PipeRun, pipe_pair
from natlab.topology import ANCHOR_PORT
from peers import PeerProcess, make_self_signed_cert, require_peer, tcp_ping, wait_until_ready

__all__ = ["natlab"]  # the module fixture, imported so pytest finds it here

SIGNAL_IP = "203.0.113.3"
"""A third ``pub`` address, for the rendezvous on port 443."""
HTTPS, TURNS = 443, 5349
"""The only TCP ports natA lets out (RFC 8656 §3.1: 5349 is TURN over TLS's default)."""
ALLOWED = (HTTPS, TURNS)
EDGE_RELAY_PORTS = ("50000", "50999")
COTURN_RELAY_PORTS = ("49408", "49663")
SERVERS = {"anchor": SERVER_IP, "coturn": SERVER_ALT_IP}
"""Where each TURN server listens on 443 (TCP) and 5349 (TLS)."""


class Edge:
    """The servers reachable from behind the firewall, and the certificate they share."""

    def __init__(self, cert: Path, anchor: PeerProcess, coturn: PeerProcess) -> None:
        self.cert = cert
        self.anchor = anchor
        self.coturn = coturn

    def turn_uri(self, server: str, transport: str) -> str:
        """The RFC 7065 URI of ``server``'s TURN over ``transport`` (``tcp`` or ``tls``)."""
        ip = SERVERS[server]
        return f"turns:{ip}:{TURNS}" if transport == "tls" else f"turn:{ip}:{HTTPS}?transport=tcp"

    def signal(self) -> list[str]:
        """The rendezvous options of both pipes (wss on 443, our certificate trusted)."""
        return ["--signal", f"wss://{SIGNAL_IP}:{HTTPS}", "--ca-file", str(self.cert)]


def _printed(process: PeerProcess, line: str) -> bool:
    return line in process.log().splitlines()


def _tcp_ready(lab: NatLab, addr: tuple[str, int]) -> bool:
    return lab.in_netns("pub", lambda: tcp_ping(addr))


@pytest.fixture(scope="module")
def edge(natlab: NatLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """The edge ``anchor serve`` and coturn on 443/5349 (module docstring); stopped by the
    lab's teardown."""
    coturn_bin = require_peer("turnserver")
    workdir = tmp_path_factory.mktemp("edge")
    _run(["ip", "-n", natlab.ns("pub"), "addr", "add", f"{SIGNAL_IP}/32", "dev", "lo"])
    cert, key = make_self_signed_cert(workdir, (SERVER_IP, SERVER_ALT_IP, SIGNAL_IP))
    anchor = natlab.start("pub", "anchor-edge", [
        *ANCHOR, "serve", "--listen", f"{SERVER_IP}:{HTTPS}", "--tcp",
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-listen", f"{SERVER_IP}:{TURNS}",
        "--user", TURN_USER, "--allow-peer", "203.0.113.0/24",
        "--min-port", EDGE_RELAY_PORTS[0], "--max-port", EDGE_RELAY_PORTS[1],
        "--signal", f"{SIGNAL_IP}:{HTTPS}",
    ])  # fmt: skip
    wanted = [f"listening tcp {SERVER_IP}:{HTTPS}", f"listening tls {SERVER_IP}:{TURNS}",
              f"listening wss {SIGNAL_IP}:{HTTPS}"]  # fmt: skip
    checks: list[tuple[str, Callable[[], bool]]] = [
        (line, functools.partial(_printed, anchor, line)) for line in wanted
    ]
    wait_until_ready(anchor, checks)
    state = workdir / "coturn"
    state.mkdir()
    coturn = natlab.start("pub", "coturn-edge", [
        coturn_bin, "-n", "--listening-ip", SERVER_ALT_IP, "--relay-ip", SERVER_ALT_IP,
        "--listening-port", str(HTTPS), "--tls-listening-port", str(TURNS),
        "--cert", str(cert), "--pkey", str(key),
        "--min-port", COTURN_RELAY_PORTS[0], "--max-port", COTURN_RELAY_PORTS[1],
        "--lt-cred-mech", "--user", TURN_USER, "--realm", "example.org",
        "--no-cli", "--no-dtls", "--log-file", "stdout", "--simple-log",
        "--pidfile", str(state / "turnserver.pid"), "--userdb", str(state / "turndb"),
    ])  # fmt: skip
    wait_until_ready(coturn, [
        (f"tcp {SERVER_ALT_IP}:{port}", functools.partial(_tcp_ready, natlab, (SERVER_ALT_IP, port)))
        for port in ALLOWED
    ])  # fmt: skip
    yield Edge(cert, anchor, coturn)


def _payload(n: int = 20) -> bytes:
    return b"".join(b"message %05d\n" % i for i in range(n))


@pytest.mark.parametrize("transport", ["tls", "tcp"])
@pytest.mark.parametrize("server", ["anchor", "coturn"])
def test_link_forms_through_turn_over_tcp_and_tls_when_udp_is_blocked(
    natlab: NatLab, edge: Edge, server: str, transport: str, request: pytest.FixtureRequest
) -> None:
    natlab.set_nat("natA", NatKind.PORT_RESTRICTED_CONE)
    natlab.set_nat("natB", NatKind.PORT_RESTRICTED_CONE)
    natlab.set_block("natA", ALLOWED)
    try:
        # The block holds: hostA's STUN over UDP gets nowhere, dropped by the firewall.
        assert not natlab.stun_ping("hostA", (SERVER_IP, ANCHOR_PORT))
        assert natlab.block_drops("natA") >= 1
        data = _payload()
        run = pipe_pair(
            natlab, data,
            servers_a=[*edge.signal(), "--turn", edge.turn_uri(server, transport),
                       "--user", TURN_USER],
            servers_b=[*edge.signal(), "--stun", f"{SERVER_IP}:{ANCHOR_PORT}"],
        )  # fmt: skip
        drops = natlab.block_drops("natA")  # the ping's, and any UDP hostA tried
    finally:
        natlab.set_block("natA", None)
    _check(run, data, SERVERS[server], transport)
    (a,) = run.sender_formed
    report(
        request.config,
        f"natlab link UDP blocked, {server} TURN over {transport}: {a.local_type}<->"
        f"{a.remote_type} (relay over {a.relay_transport}) in {a.ms} ms; {drops} packets "
        f"dropped at natA; run {run.elapsed:.2f} s",
    )


def _check(run: PipeRun, data: bytes, relay_ip: str, transport: str) -> None:
    assert not run.timed_out and run.sender_rc == 0 and run.receiver_rc == 0, run.describe()
    assert run.received == data, run.describe()
    (a,), (b,) = run.sender_formed, run.receiver_formed
    assert a.local_type == "relay" and a.local[0] == relay_ip, run.describe()
    assert a.relay_transport == transport, run.describe()
    assert b.remote == a.local and b.local == a.remote, run.describe()
    assert b.remote_type == "relay" and "host" not in (*a.types, *b.types), run.describe()
