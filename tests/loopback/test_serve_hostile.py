"""Hostile clients against `anchor serve` (issue 24), over loopback, each attack against a
server of its own started as a subprocess with its file-descriptor limit lowered to 1,024
(a common service default; ``preexec_fn`` sets soft and hard, so the server cannot raise it).

Each test reproduces one finding of the issue and asserts the bound: while the attack runs,
a legitimate UDP Allocate and a TCP Binding are still answered; the shed connections and
requests are counted in ``/metrics``; the server's stderr holds no traceback; where the
attack made the server hold memory, its resident size comes back within 20 % of what it
was before the attack once the attackers leave. Counts and durations are bounded (the
deadlines are shortened with the server's own flags so that each test takes seconds).
"""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anchor_stun.attributes import (
    ChannelNumber,
    Data,
    Lifetime,
    RawAttribute,
    RequestedTransport,
    XorPeerAddress,
    XorRelayedAddress,
)
from anchor_stun.integrity import LongTermCredentials
from anchor_stun.message import Message, MessageClass, Method
from anchor_turn.aio.server import host_addresses
from tests.helpers import ANCHOR, free_port

FD_LIMIT = 1024
USERS = ("alice:secret", "bob:hunter2")
TIMEOUT = 2.0
"""Seconds a legitimate client waits for an answer during an attack."""


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture(autouse=True, scope="module")
def _room_for_attackers() -> Iterator[None]:
    """The attacking side (this process) needs more descriptors than the server has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class Server:
    """A running `anchor serve` and what the tests need of it."""

    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    stderr: Path
    tls_port: int | None = None
    lines: list[str] = field(default_factory=list)

    def rss(self) -> int:
        """Resident set size of the server, bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value}."""
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        body = b"".join(chunks).split(b"\r\n\r\n", 1)[1].decode()
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    *extra: str,
    tls: tuple[Path, Path] | None = None,
    listen: str = "127.0.0.1",
    turn: bool = True,
) -> Iterator[Server]:
    port = free_port("both")
    metrics_port = free_port("tcp")
    args = [
        *ANCHOR, "serve", "--listen", f"{listen}:{port}", "--tcp",
        "--metrics", f"127.0.0.1:{metrics_port}",
        "--first-request-timeout", "2", "--partial-frame-timeout", "2", "--idle-timeout", "5",
        "--relay-ip", "127.0.0.1",
    ]  # fmt: skip
    for user in USERS if turn else ():
        args += ["--user", user]
    tls_port = None
    if tls is not None:
        tls_port = free_port("tcp")
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        args += ["--tls-listen", f"127.0.0.1:{tls_port}"]
    with tempfile.NamedTemporaryFile("w+", suffix=".stderr", delete=False) as err:
        stderr = Path(err.name)
    with stderr.open("w") as err_file:
        proc = subprocess.Popen(
            [*args, *extra],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            preexec_fn=_limit_fds,
        )
    server = Server(proc, port, metrics_port, stderr, tls_port)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while True:  # the listening lines, then the metrics line
            line = proc.stdout.readline()
            assert line, f"anchor serve exited: {server.errors()}"
            assert time.monotonic() < deadline
            if line.startswith("listening "):
                server.lines.append(line.strip())
            if line.startswith("metrics http "):
                break
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors = server.errors()
        stderr.unlink()
    assert "Traceback" not in errors, errors[-3000:]
    assert proc.returncode == 0, errors[-3000:]


# --------------------------------------------------------------------------- clients


def _tid(n: list[int] = [0]) -> bytes:  # noqa: B006 - a counter shared by the module's clients
    n[0] += 1
    return n[0].to_bytes(12, "big")


class TurnClient:
    """A UDP (or TCP) TURN client speaking raw STUN through the codec."""

    def __init__(self, server: Server, user: str = "bob", password: str = "hunter2", *,
                 tcp: bool = False, source: str = "127.0.0.1") -> None:  # fmt: skip
        self.server = server
        self.creds = LongTermCredentials(user, password)
        self.tcp = tcp
        if tcp:
            self.sock = socket.create_connection(
                ("127.0.0.1", server.port), timeout=TIMEOUT, source_address=(source, 0)
            )
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((source, 0))
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(("127.0.0.1", server.port))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.send(data) if not self.tcp else self.sock.sendall(data)

    def receive(self) -> Message:
        if not self.tcp:
            return Message.decode(self.sock.recv(65536))
        head = _recv_exact(self.sock, 20)
        length = struct.unpack_from("!H", head, 2)[0]
        return Message.decode(head + _recv_exact(self.sock, length))

    def exchange(self, data: bytes) -> Message:
        self.send(data)
        return self.receive()

    def signed(self, method: int, *attrs: object) -> bytes:
        if not self.creds.ready:
            first = Message(Method.ALLOCATE, MessageClass.REQUEST, _tid(), [RequestedTransport()])
            self.creds.challenge(self.exchange(first.encode(fingerprint=True)))
        return self.creds.sign(Message(method, MessageClass.REQUEST, _tid(), list(attrs)))  # type: ignore[arg-type]

    def request(self, method: int, *attrs: object) -> Message:
        resp = self.exchange(self.signed(method, *attrs))
        if resp.error is not None and resp.error.code == 438:
            self.creds.challenge(resp)
            resp = self.exchange(self.signed(method, *attrs))
        return resp

    def allocate(self) -> Message:
        return self.request(Method.ALLOCATE, RequestedTransport())


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return bytes(out)


def code(msg: Message) -> int | None:
    return msg.error.code if msg.error is not None else None


def binding() -> bytes:
    return Message(Method.BINDING, MessageClass.REQUEST, _tid()).encode(fingerprint=True)


def legitimate_clients_are_served(server: Server, turn: bool = True) -> None:
    """A UDP Allocate (a user of its own; a UDP Binding without TURN) and a TCP Binding
    from other sources are answered."""
    if turn:
        client = TurnClient(server, source="127.0.0.250")
        try:
            resp = client.allocate()
            assert code(resp) is None and resp.get(XorRelayedAddress) is not None, resp
            assert code(client.request(Method.REFRESH, Lifetime(0))) is None
        finally:
            client.close()
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.250", 0))
            udp.settimeout(TIMEOUT)
            udp.sendto(binding(), ("127.0.0.1", server.port))
            assert udp.recv(2048)[:2] == b"\x01\x01"
    with socket.create_connection(
        ("127.0.0.1", server.port), timeout=TIMEOUT, source_address=("127.0.0.251", 0)
    ) as sock:
        sock.sendall(binding())
        head = _recv_exact(sock, 20)
        assert head[:2] == b"\x01\x01"  # Binding success


def settle(server: Server, predicate: object, timeout: float = 15.0) -> dict[str, float]:
    """Poll /metrics until ``predicate(metrics)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = server.metrics()
        if predicate(metrics):  # type: ignore[operator]
            return metrics
        assert time.monotonic() < deadline, metrics
        time.sleep(0.25)


def shed(metrics: dict[str, float], reason: str) -> float:
    return metrics.get(f'anchor_stream_shed_total{{reason="{reason}"}}', 0.0)


# --------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("turn", [True, False], ids=["turn", "stun-only"])
def test_idle_tcp_connections_are_bounded_and_time_out(turn: bool) -> None:
    """Finding 1: 1,100 idle TCP connections from 11 loopback addresses against a server
    with 1,024 descriptors. The per-source and total bounds shed the excess (evicting the
    oldest connection that never sent a request), the legitimate clients are answered
    during the attack, and the idle ones are closed after the first-request deadline."""
    with serve(turn=turn) as server:
        attackers: list[socket.socket] = []
        try:
            for i in range(1100):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((f"127.0.9.{i % 11 + 1}", 0))
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", server.port))
                attackers.append(sock)
            metrics = settle(server, lambda m: shed(m, "evicted") > 0)
            legitimate_clients_are_served(server, turn)
            assert metrics["anchor_stream_connections"] <= 360
            # Past the deadline every attacker is gone, by itself.
            metrics = settle(server, lambda m: m["anchor_stream_connections"] == 0)
            assert shed(metrics, "first_request_timeout") > 0
            legitimate_clients_are_served(server, turn)
        finally:
            for sock in attackers:
                sock.close()
        # One source alone cannot hold more than its share.
        one: list[socket.socket] = []
        try:
            for _ in range(200):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.8.1", 0))
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", server.port))
                one.append(sock)
            metrics = settle(server, lambda m: shed(m, "per_source") >= 72)
            assert metrics["anchor_stream_connections"] <= 128
            legitimate_clients_are_served(server, turn)
            # Even from the attackers' own address, a client that asks at once is served:
            # it takes the place of the oldest idle connection of that address.
            with socket.create_connection(
                ("127.0.0.1", server.port), timeout=TIMEOUT, source_address=("127.0.8.1", 0)
            ) as sock:
                sock.sendall(binding())
                assert _recv_exact(sock, 20)[:2] == b"\x01\x01"
        finally:
            for sock in one:
                sock.close()


def test_one_user_cannot_take_every_allocation() -> None:
    """Finding 2: one user asks for 200 allocations; the default quotas (from the 1,024
    descriptors: 300 in all, a quarter of that per user) answer 486 beyond 75, and another
    user still allocates. (The flood comes from ten /24s: unsigned answers, the 401 each new
    5-tuple needs first, are rate-limited per source prefix.)"""
    with serve() as server:
        flood = [
            TurnClient(server, "alice", "secret", source=f"127.4.{i % 10}.1") for i in range(200)
        ]
        try:
            codes = [code(c.allocate()) for c in flood]
            assert codes.count(None) == 75 and codes.count(486) == 125, codes
            metrics = server.metrics()
            assert metrics["anchor_turn_allocations"] == 75
            legitimate_clients_are_served(server)
        finally:
            for client in flood:
                client.close()


def test_a_replayed_allocate_from_another_port_gets_438_and_no_allocation() -> None:
    """Finding 2 (must-show 2): a captured signed Allocate replayed byte for byte from 200
    other source ports of the same IP, and over TCP, gets 438 and allocates nothing."""
    with serve() as server:
        victim = TurnClient(server, "alice", "secret")
        captured = victim.signed(Method.ALLOCATE, RequestedTransport())
        assert code(victim.exchange(captured)) is None
        replayers = []
        try:
            for _ in range(200):
                replayer = TurnClient(server)
                replayers.append(replayer)
                replayer.send(captured)
            time.sleep(0.5)
            answers = []
            for replayer in replayers:
                replayer.sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answers.append(code(Message.decode(replayer.sock.recv(2048))))
            # Every answer is 438; past the per-prefix budget of unsigned answers the rest
            # get none, which allocates nothing either.
            assert answers.count(438) == len(answers) >= 40, answers
            over_tcp = TurnClient(server, tcp=True)
            replayers.append(over_tcp)
            assert code(over_tcp.exchange(captured)) == 438
            metrics = server.metrics()
            assert metrics["anchor_turn_allocations"] == 1
            assert metrics["anchor_turn_allocations_created_total"] == 1
        finally:
            victim.close()
            for replayer in replayers:
                replayer.close()


def test_tls_sessions_are_bounded_and_their_memory_released(tls_files: tuple[Path, Path]) -> None:
    """Finding 3: 300 idle handshaked TLS sessions from 3 addresses, then closed. They hold
    slots like any connection and go at the first-request deadline; the server's resident
    size comes back within 20 % of what it was before."""
    with serve(tls=tls_files) as server:
        assert server.tls_port is not None
        context = ssl.create_default_context(cafile=str(tls_files[0]))
        warm = context.wrap_socket(
            socket.create_connection(("127.0.0.1", server.tls_port), timeout=5),
            server_hostname="127.0.0.1",
        )
        warm.sendall(binding())
        assert _recv_exact(warm, 20)[:2] == b"\x01\x01"
        warm.close()
        time.sleep(1.0)
        before = server.rss()
        sessions = []
        try:
            for i in range(300):
                raw = socket.create_connection(
                    ("127.0.0.1", server.tls_port),
                    timeout=5,
                    source_address=(f"127.0.7.{i % 3 + 1}", 0),
                )
                sessions.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
            during = server.rss()
            legitimate_clients_are_served(server)
        finally:
            for tls in sessions:
                with contextlib.suppress(OSError):
                    tls.close()
        settle(server, lambda m: m["anchor_stream_connections"] == 0)
        time.sleep(1.5)  # a sweep after the closes hands the memory back
        after = server.rss()
        assert during > before
        assert after <= before * 1.2, (before, during, after)


def test_partial_frames_are_bounded_in_time() -> None:
    """Finding 4: 100 connections each holding a 65,004-byte partial ChannelData frame
    are closed at the partial-frame deadline; the resident size comes back."""
    with serve() as server:
        legitimate_clients_are_served(server)
        time.sleep(0.5)
        before = server.rss()
        partial = struct.pack("!HH", 0x4000, 65500) + bytes(65000)
        holders = []
        try:
            for i in range(100):
                sock = socket.create_connection(
                    ("127.0.0.1", server.port),
                    timeout=5,
                    source_address=(f"127.0.6.{i % 2 + 1}", 0),
                )
                sock.sendall(partial)
                holders.append(sock)
            legitimate_clients_are_served(server)
            metrics = settle(server, lambda m: m["anchor_stream_connections"] == 0)
            assert (
                shed(metrics, "partial_frame_timeout") + shed(metrics, "first_request_timeout")
                >= 100
            )
        finally:
            for sock in holders:
                sock.close()
        time.sleep(1.5)
        assert server.rss() <= before * 1.2


def test_pipelined_requests_over_tcp_cannot_starve_udp() -> None:
    """Finding 4: 20 connections pipelining 2,000 Bindings each. The per-connection request
    rate drops the excess (counted) and pauses their reading; UDP is answered meanwhile."""
    with serve() as server:
        pipes = []
        try:
            burst = b"".join(binding() for _ in range(2000))
            for i in range(20):
                sock = socket.create_connection(
                    ("127.0.0.1", server.port), timeout=5, source_address=(f"127.0.5.{i + 1}", 0)
                )
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.send(burst)
                pipes.append(sock)
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.settimeout(TIMEOUT)
            with udp:
                for _ in range(5):
                    udp.sendto(binding(), ("127.0.0.1", server.port))
                    assert udp.recv(2048)[:2] == b"\x01\x01"
            legitimate_clients_are_served(server)
            metrics = settle(server, lambda m: shed(m, "request_rate") > 0)
            assert shed(metrics, "request_rate") > 0
        finally:
            for sock in pipes:
                sock.close()


def test_wildcard_listener_refuses_relaying_to_itself() -> None:
    """Finding 5 (must-show 3): with a wildcard listener and every peer allowed by the
    filter, a permission, a ChannelBind and a Send to any address of the host on the
    server's ports are refused; a Binding sent through the relay to the listener never
    comes back (the relay loop of the issue)."""
    with serve("--allow-peer", "0.0.0.0/0", "--allow-peer", "::/0", listen="0.0.0.0") as server:
        client = TurnClient(server)
        try:
            assert code(client.allocate()) is None
            ours = [ip for ip in host_addresses() if ":" not in ip] + ["127.0.0.1", "127.3.2.1"]
            selves = [(ip, server.port) for ip in ours] + [("127.0.0.1", server.metrics_port)]
            for n, (ip, port) in enumerate(selves):
                peer = XorPeerAddress(ip, port)
                assert code(client.request(Method.CREATE_PERMISSION, peer)) == 403, peer
                bind = client.request(Method.CHANNEL_BIND, ChannelNumber(0x4000 + n), peer)
                assert code(bind) == 403, peer
            # Relay to relay (another port of the host) stays allowed.
            other_port = XorPeerAddress("127.0.0.1", 9)
            assert code(client.request(Method.CREATE_PERMISSION, other_port)) is None
            loop = Message(
                Method.SEND,
                MessageClass.INDICATION,
                _tid(),
                [XorPeerAddress("127.0.0.1", server.port), Data(binding())],
            )
            client.send(loop.encode(fingerprint=True))
            client.sock.settimeout(1.0)
            with pytest.raises(TimeoutError):
                client.receive()
            assert server.metrics()["anchor_turn_allocations"] == 1
        finally:
            client.close()


def _reflect(server: Server, request: bytes, prefix: str, per_source: int) -> tuple[int, int, int]:
    """``per_source`` copies of ``request`` from each of the 256 addresses of ``prefix``.0/24
    (Linux routes all of 127/8 to the loopback); returns (bytes sent, bytes answered,
    answers)."""
    sockets = []
    try:
        for host in range(256):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"{prefix}.{host}", 0))
            sock.setblocking(False)
            sockets.append(sock)
        sent = 0
        for _ in range(per_source):
            for sock in sockets:
                sock.sendto(request, ("127.0.0.1", server.port))
                sent += len(request)
        time.sleep(1.0)
        received = answers = 0
        for sock in sockets:
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                received += len(data)
                answers += 1
        return sent, received, answers
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("turn", [True, False], ids=["turn", "stun-only"])
def test_unauthenticated_amplification_is_at_most_3x_per_prefix(turn: bool) -> None:
    """Finding 6 (must-show 4): every kind of unsigned answer (401, 438, 420, Binding with
    OTHER-ADDRESS with --alt-ip) sent for requests from 256 addresses of one /24: the bytes
    answered are at most 3 times the bytes received, and the whole /24 gets what one source
    would (the burst of 50 and 20 a second, not 256 times that). STUN-only mode too."""
    with serve("--alt-ip", "127.0.0.2", turn=turn) as server:
        kinds = {
            "binding": Message(Method.BINDING, MessageClass.REQUEST, _tid()).encode(),
            "420": Message(
                Method.BINDING, MessageClass.REQUEST, _tid(), [RawAttribute(0x0030, b"")]
            ).encode(),
        }
        if turn:
            kinds["401"] = Message(Method.ALLOCATE, MessageClass.REQUEST, _tid()).encode()
            elsewhere = TurnClient(server)  # a nonce issued to another 5-tuple: 438
            kinds["438"] = elsewhere.signed(Method.ALLOCATE, RequestedTransport())
            elsewhere.close()
        for n, (kind, request) in enumerate(kinds.items()):
            sent, received, answers = _reflect(server, request, f"127.1.{2 + n}", 8)
            assert 0 < answers <= 50 + 20 * 3, (kind, answers)
            assert received <= 3 * sent, (kind, received / sent)
        metrics = server.metrics()
        limited = metrics.get("anchor_stun_rate_limited_total", 0.0) + metrics.get(
            "anchor_turn_rate_limited_total", 0.0
        )
        assert limited > 0  # (the kernel may drop some of the flood before the server reads)
        legitimate_clients_are_served(server) if turn else None
