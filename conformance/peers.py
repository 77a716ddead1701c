"""Real peers for the conformance tests: find them, start them on loopback, stop them by PID.

Every server a test starts gets free loopback ports, its own files under the test's
temporary directory, and is stopped by its PID (SIGTERM, then SIGKILL). Nothing here
sends a packet outside 127.0.0.0/8 or ::1.

- :func:`require_peer` / :func:`require_module`: a missing peer skips the test on a
  developer's machine and fails it under ``CI=true``.
- :func:`free_port`, :func:`free_port_block`: ports nobody listens on.
- :func:`start_coturn`: ``turnserver -n`` with long-term credentials (alice:secret),
  UDP + TCP + TLS, optionally RFC 5780 (two addresses), ready once a STUN Binding is answered.
- :class:`TsharkCapture` and :func:`stun_packets`: capture on ``lo`` and let tshark, an
  independent decoder, judge what went over the wire (see docs/peers.md).
- :func:`stun_request_udp`, :func:`stun_request_stream`: one STUN transaction over a real
  socket, built and parsed with anchor_stun.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from anchor_stun.attributes import Attribute
from anchor_stun.message import HEADER_SIZE, Message, MessageClass, Method
from tests.helpers import _family, free_port, free_port_block
from tests.helpers import missing_peer as _missing

LOOPBACK = "127.0.0.1"
LOOPBACK_ALT = "127.0.0.2"  # RFC 5780 alternate address; needs no set-up on Linux

#: Debian packages that provide each peer program (scripts/test installs them).
PEER_PACKAGES = {
    "turnserver": "coturn",
    "turnutils_uclient": "coturn",
    "turnutils_stunclient": "coturn",
    "turnutils_peer": "coturn",
    "turnutils_natdiscovery": "coturn",
    "tshark": "tshark",
    "openssl": "openssl",
}

#: Peer names accepted by ``@pytest.mark.peer(name)`` and the program or module behind each.
PEER_MARKS = {
    "coturn": ("program", "turnserver"),
    "tshark": ("program", "tshark"),
    "aioice": ("module", "aioice"),
    "aiortc": ("module", "aiortc"),
}


# --------------------------------------------------------------------------- presence


def require_peer(name: str) -> str:
    """Full path of the peer program ``name``; skip the test if it is missing, or fail under CI."""
    path = shutil.which(name)
    if path is None:
        package = PEER_PACKAGES.get(name, name)
        _missing(
            f"peer program {name!r} not found on PATH; install the Debian package "
            f"{package!r} (scripts/test does it when run as root)"
        )
        raise AssertionError("unreachable")  # pragma: no cover
    return path


def require_module(name: str) -> ModuleType:
    """Import the peer library ``name``; skip if it is missing, or fail under CI."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"peer library {name!r} cannot be imported ({exc}); pip install -e '.[test]'")
        raise AssertionError("unreachable") from exc  # pragma: no cover


def require_peer_mark(name: str) -> None:
    """Check the peer named by a ``@pytest.mark.peer(name)`` marker."""
    try:
        kind, target = PEER_MARKS[name]
    except KeyError:
        raise pytest.UsageError(
            f"unknown peer {name!r} in @pytest.mark.peer; known: {sorted(PEER_MARKS)}"
        ) from None
    if kind == "program":
        require_peer(target)
    else:
        require_module(target)


# --------------------------------------------------------------------------- ports




# --------------------------------------------------------------------------- processes


@dataclass
class PeerProcess:
    """A peer program started by a test; its output goes to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The PID the process is stopped by."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM by PID, SIGKILL after ``grace`` seconds; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def start_process(name: str, argv: list[str], log_path: Path) -> PeerProcess:
    """Start ``argv`` with stdout+stderr to ``log_path`` and no stdin."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return PeerProcess(name, argv, log_path, proc)


# --------------------------------------------------------------------------- STUN over sockets


def transaction_id() -> bytes:
    """A fresh random 96-bit transaction id (RFC 8489 §5)."""
    return os.urandom(12)


def binding_request(*attributes: Attribute) -> Message:
    """A Binding request with a fresh transaction id."""
    return Message(Method.BINDING, MessageClass.REQUEST, transaction_id(), list(attributes))


def stun_request_udp(
    sock: socket.socket,
    data: bytes,
    addr: tuple[str, int],
    *,
    timeout: float = 1.0,
    tries: int = 5,
) -> tuple[Message, tuple[str, int]]:
    """Send ``data`` (a STUN request) on UDP and return the response with the same
    transaction id, and where it came from. Retransmits like RFC 8489 §6.2.1, loosely."""
    tid = data[8:20]
    sock.settimeout(timeout)
    for _ in range(tries):
        sock.sendto(data, addr)
        try:
            while True:
                reply, source = sock.recvfrom(65535)
                if reply[8:20] == tid:
                    return Message.decode(reply), source[:2]
        except TimeoutError:
            continue
    raise TimeoutError(f"no STUN response from {addr} after {tries} tries")


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from a stream socket."""
    parts: list[bytes] = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("peer closed the stream")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def recv_stun_stream(sock: socket.socket) -> bytes:
    """One STUN message from a TCP/TLS stream (framed by its own length, RFC 8489 §6.2.2)."""
    head = recv_exact(sock, HEADER_SIZE)
    length = int.from_bytes(head[2:4], "big")
    return head + recv_exact(sock, length)


def stun_request_stream(sock: socket.socket, data: bytes, *, timeout: float = 5.0) -> Message:
    """Send a STUN request on a connected TCP/TLS socket and return the decoded response."""
    sock.settimeout(timeout)
    sock.sendall(data)
    while True:
        reply = recv_stun_stream(sock)
        if reply[8:20] == data[8:20]:
            return Message.decode(reply)


def stun_ping(addr: tuple[str, int]) -> bool:
    """True when a STUN Binding request to ``addr`` over UDP is answered within ~0.3 s."""
    with socket.socket(_family(addr[0]), socket.SOCK_DGRAM) as sock:
        try:
            stun_request_udp(sock, binding_request().encode(), addr, timeout=0.3, tries=1)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return True


def tcp_ping(addr: tuple[str, int]) -> bool:
    """True when a TCP connection to ``addr`` is accepted."""
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_ready(
    process: PeerProcess, checks: Sequence[tuple[str, Callable[[], bool]]], deadline: float = 20.0
) -> None:
    """Poll ``checks`` (pairs of description and zero-argument callable) until all pass.

    Raises with the process log when the process exits or the deadline passes; the
    deadline only bounds a hang, nothing is asserted about how long start-up takes."""
    end = time.monotonic() + deadline
    pending = list(checks)
    while pending:
        if not process.running():
            raise RuntimeError(
                f"{process.name} exited with {process.proc.returncode} before it was ready\n"
                f"argv: {process.argv}\n--- log ---\n{process.log()}"
            )
        pending = [(what, check) for what, check in pending if not check()]
        if pending and time.monotonic() > end:
            process.stop()
            raise RuntimeError(
                f"{process.name} not ready ({', '.join(w for w, _ in pending)}) after "
                f"{deadline} s\nargv: {process.argv}\n--- log ---\n{process.log()}"
            )
        if pending:
            time.sleep(0.05)


# --------------------------------------------------------------------------- TLS material


def make_self_signed_cert(directory: Path, hosts: Sequence[str] = (LOOPBACK,)) -> tuple[Path, Path]:
    """A throwaway self-signed certificate (and its key) for ``hosts`` and ``localhost``,
    written to ``directory/cert.pem`` and ``directory/key.pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    alt_names += [x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls_client_context(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only ``cafile`` and checks the host name."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = True
    return ctx


# --------------------------------------------------------------------------- coturn


@dataclass
class Coturn:
    """A running coturn (``turnserver -n``) with long-term credentials, on loopback."""

    process: PeerProcess
    host: str
    port: int
    """UDP and TCP listening port."""
    tls_port: int | None
    realm: str
    username: str
    password: str
    cert: Path | None
    key: Path | None
    min_port: int
    max_port: int
    """Relay port range (inclusive)."""
    alt_host: str | None = None
    alt_port: int | None = None
    """RFC 5780 alternate address and port (``coturn_5780`` only)."""
    workdir: Path = field(default_factory=Path)

    @property
    def pid(self) -> int:
        """PID of the turnserver process."""
        return self.process.pid

    @property
    def udp(self) -> tuple[str, int]:
        """The UDP listening address."""
        return (self.host, self.port)

    @property
    def tcp(self) -> tuple[str, int]:
        """The TCP listening address."""
        return (self.host, self.port)

    @property
    def tls(self) -> tuple[str, int]:
        """The TLS listening address."""
        if self.tls_port is None:
            raise RuntimeError("this coturn has no TLS listener")
        return (self.host, self.tls_port)

    def long_term_key(self) -> bytes:
        """MD5(username ":" realm ":" password), the RFC 8489 §9.2.2 key for MESSAGE-INTEGRITY."""
        return hashlib.md5(f"{self.username}:{self.realm}:{self.password}".encode()).digest()

    def log(self) -> str:
        """coturn's log so far."""
        return self.process.log()

    def stop(self) -> int:
        """Stop it by PID."""
        return self.process.stop()


def start_coturn(
    workdir: Path,
    *,
    host: str = LOOPBACK,
    tls: bool = True,
    rfc5780: bool = False,
    username: str = "alice",
    password: str = "secret",
    realm: str = "example.org",
    relay_ports: int = 64,
    extra_args: Sequence[str] = (),
) -> Coturn:
    """Start ``turnserver -n`` on free loopback ports and wait until it answers STUN.

    It listens and relays on ``host`` (127.0.0.1 or ::1). With ``rfc5780`` it listens on
    127.0.0.1 and 127.0.0.2, on PORT and PORT+1 (RFC 5780 §4.4); TLS is then left off.
    The caller stops it (``Coturn.stop``)."""
    binary = require_peer("turnserver")
    workdir.mkdir(parents=True, exist_ok=True)
    if rfc5780:
        host = LOOPBACK
    hosts = (LOOPBACK, LOOPBACK_ALT) if rfc5780 else (host,)
    if rfc5780:
        port = free_port_block(2, "both", hosts)
    else:
        port = free_port("both", host)
    min_port = free_port_block(relay_ports, "udp", (host,))
    max_port = min_port + relay_ports - 1
    argv = [binary, "-n"]
    for ip in hosts:
        argv += ["--listening-ip", ip]
    argv += [
        "--relay-ip", host,
        "--listening-port", str(port),
        "--lt-cred-mech",
        "--user", f"{username}:{password}",
        "--realm", realm,
        "--allow-loopback-peers",
        "--no-cli",
        "--no-dtls",
        "--log-file", "stdout",
        "--simple-log",
        "--min-port", str(min_port),
        "--max-port", str(max_port),
        "--pidfile", str(workdir / "turnserver.pid"),
        "--userdb", str(workdir / "turndb"),
    ]  # fmt: skip
    cert = key = None
    tls_port = None
    alt_port = None
    if rfc5780:
        alt_port = port + 1
        argv += ["--alt-listening-port", str(alt_port), "--no-tls"]
    if tls and not rfc5780:
        cert, key = make_self_signed_cert(workdir, (host,))
        tls_port = free_port("tcp", host)
        argv += ["--tls-listening-port", str(tls_port), "--cert", str(cert), "--pkey", str(key)]
    elif not rfc5780:
        argv += ["--no-tls"]
    argv += list(extra_args)
    process = start_process("turnserver", argv, workdir / "turnserver.log")
    server = Coturn(
        process=process,
        host=host,
        port=port,
        tls_port=tls_port,
        realm=realm,
        username=username,
        password=password,
        cert=cert,
        key=key,
        min_port=min_port,
        max_port=max_port,
        alt_host=LOOPBACK_ALT if rfc5780 else None,
        alt_port=alt_port,
        workdir=workdir,
    )
    checks: list[tuple[str, Callable[[], bool]]] = [
        (f"STUN on udp {host}:{port}", lambda: stun_ping((host, port))),
        (f"tcp {host}:{port}", lambda: tcp_ping((host, port))),
    ]
    if tls_port is not None:
        checks.append((f"tls {host}:{tls_port}", lambda: tcp_ping((host, tls_port))))
    if rfc5780:
        assert alt_port is not None
        checks.append(
            (f"STUN on udp {LOOPBACK_ALT}:{alt_port}", lambda: stun_ping((LOOPBACK_ALT, alt_port)))
        )
    try:
        wait_until_ready(process, checks)
    except BaseException:
        process.stop()
        raise
    return server


# --------------------------------------------------------------------------- tshark

#: Fields :func:`stun_packets` asks for by default (meanings in docs/peers.md).
STUN_FIELDS = (
    "frame.number",
    "udp.srcport",
    "udp.dstport",
    "tcp.srcport",
    "tcp.dstport",
    "stun.type",
    "stun.length",
    "stun.att.type",
    "stun.att.crc32.status",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
    "stun.wrong_msglen",
    "stun.unknown_attribute",
)

#: Expert-info severities as tshark prints them (epan/proto.h PI_* values).
EXPERT_COMMENT = 0x00100000
EXPERT_CHAT = 0x00200000
EXPERT_NOTE = 0x00400000
EXPERT_WARN = 0x00600000
EXPERT_ERROR = 0x00800000

#: FINGERPRINT verification status values of ``stun.att.crc32.status``.
CRC_BAD, CRC_GOOD, CRC_UNVERIFIED, CRC_NOT_PRESENT = "0", "1", "2", "3"


class TsharkCapture:
    """``tshark -i lo -f FILTER -w FILE`` running until :meth:`stop`.

    tshark buffers the file it writes, so readiness and completeness are proved with probe
    datagrams instead of sleeps: tshark is also asked to print each captured packet's UDP
    payload (``-P -l -T fields``), :meth:`barrier` sends a unique probe to a port of its own
    (included in the capture filter) and waits until tshark prints it. Packets sent before a
    barrier are captured once it returns; :meth:`stop` runs one, then stops tshark by PID,
    which flushes the file.
    """

    def __init__(self, pcap: Path, capture_filter: str, interface: str = "lo") -> None:
        self.pcap = pcap
        self.capture_filter = capture_filter
        self.interface = interface
        self.probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.probe.bind((LOOPBACK, 0))
        self.probe_port: int = self.probe.getsockname()[1]
        self._printed: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_path = pcap.with_suffix(".tshark.log")

    def start(self) -> TsharkCapture:
        """Start tshark and return once it is capturing."""
        binary = require_peer("tshark")
        self.pcap.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "-i", self.interface,
            "-f", f"({self.capture_filter}) or (udp port {self.probe_port})",
            "-w", str(self.pcap),
            "-P", "-l", "-T", "fields", "-e", "udp.payload",
        ]  # fmt: skip
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self._reader = threading.Thread(target=self._read, name="tshark-stdout", daemon=True)
        self._reader.start()
        try:
            self.barrier()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def pid(self) -> int:
        """PID of tshark."""
        assert self.proc is not None
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._printed.append(line.strip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def barrier(self, deadline: float = 30.0) -> None:
        """Return once tshark has captured everything sent on loopback before this call."""
        assert self.proc is not None
        token = f"anchor-probe-{uuid.uuid4().hex}".encode()
        wanted = token.hex()
        end = time.monotonic() + deadline
        with self._cond:
            while True:
                if any(wanted in line for line in self._printed):
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"tshark exited with {self.proc.returncode}: {self._stderr()}"
                    )
                if time.monotonic() > end:
                    raise RuntimeError(f"tshark did not capture its probe: {self._stderr()}")
                # Until tshark is capturing, probes are lost: resend until one shows up.
                self.probe.sendto(token, (LOOPBACK, self.probe_port))
                self._cond.wait(0.25)

    def _stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop tshark by PID without waiting for a barrier (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)
        self.probe.close()

    def stop(self) -> Path:
        """Wait for everything sent so far to be captured, stop tshark by PID, return the file."""
        if self.proc is not None and self.proc.poll() is None:
            self.barrier()
        self.close()
        if not self.pcap.exists():
            raise RuntimeError(f"tshark wrote no capture file: {self._stderr()}")
        return self.pcap

    def __enter__(self) -> TsharkCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.stop()
        else:
            self.close()


@contextlib.contextmanager
def tshark_capture(pcap: Path, capture_filter: str) -> Iterator[TsharkCapture]:
    """Context manager form of :class:`TsharkCapture`."""
    with TsharkCapture(pcap, capture_filter) as capture:
        yield capture


def tshark_fields(
    pcap: Path,
    fields: Sequence[str],
    *,
    display_filter: str | None = None,
    decode_as: Sequence[str] = (),
) -> list[dict[str, list[str]]]:
    """``tshark -r pcap -T fields``: one dict per packet, each field a list of its occurrences
    (an absent field is an empty list)."""
    binary = require_peer("tshark")
    argv = [binary, "-r", str(pcap), "-n"]
    for rule in decode_as:
        argv += ["-d", rule]
    if display_filter:
        argv += ["-Y", display_filter]
    argv += ["-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=\x1f"]
    for name in fields:
        argv += ["-e", name]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"tshark -r failed ({result.returncode}): {result.stderr}")
    packets = []
    for line in result.stdout.splitlines():
        values = line.split("\t")
        values += [""] * (len(fields) - len(values))
        packets.append(
            {
                name: [v for v in value.split("\x1f") if v]
                for name, value in zip(fields, values, strict=True)
            }
        )
    return packets


def stun_packets(
    pcap: Path,
    port: int,
    *,
    transport: str = "udp",
    fields: Sequence[str] = STUN_FIELDS,
) -> list[dict[str, list[str]]]:
    """Every packet to or from ``port`` in the capture, decoded with STUN forced on that port
    (``-d udp.port==PORT,stun``), with ``fields``. A packet that tshark could not decode as
    STUN has an empty ``stun.type``."""
    fields = tuple(fields) if "stun.type" in fields else (*fields, "stun.type")
    return tshark_fields(
        pcap,
        fields,
        display_filter=f"{transport}.port=={port}",
        decode_as=[f"{transport}.port=={port},stun"],
    )


def stun_problems(packet: dict[str, list[str]]) -> list[str]:
    """What tshark found wrong with one decoded packet (empty when it is clean STUN)."""
    problems = []
    if not packet.get("stun.type"):
        problems.append("not decoded as STUN")
    if packet.get("_ws.malformed"):
        problems.append("malformed")
    severities = [int(s, 0) for s in packet.get("_ws.expert.severity", [])]
    if any(s >= EXPERT_WARN for s in severities):
        problems.append(f"expert info: {packet.get('_ws.expert.message')}")
    if packet.get("stun.wrong_msglen"):
        problems.append("wrong message length")
    if CRC_BAD in packet.get("stun.att.crc32.status", []):
        problems.append("bad FINGERPRINT")
    return problems
