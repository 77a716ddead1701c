"""`NatLab`: build the lab's namespaces, run things inside them, tear everything down.

Theory of operation
-------------------
:meth:`NatLab.build` creates five network namespaces (roles ``pub``, ``natA``, ``natB``,
``hostA``, ``hostB``; real names ``anchorlab<PID>.<N>-<role>`` so that labs never collide and
a crashed run's leftovers are recognisable), wires them with veth pairs created directly inside
the namespaces (nothing is ever added to the machine's own namespace), gives them the addresses
and routes of :mod:`natlab.topology`, turns on forwarding in the routers and loads a NAT kind
into each router with ``nft -f``. Processes are started inside a namespace with
``ip netns exec NS ARGV`` (which execs ARGV, so the PID we hold is the program's own).

:meth:`NatLab.teardown` always runs to the end, whatever fails: it stops every process the lab
started by PID (SIGTERM, then SIGKILL), then any process still inside a lab namespace (``ip
netns pids``; children of ours), then deletes the namespaces (which deletes their veths and
nftables rules), and finally checks that none is left. It raises only after all of that.

Build takes ~0.3 s, teardown well under 0.1 s, a NAT kind swap a few milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from peers import (
    PeerProcess,
    binding_request,
    start_process,
    stun_request_udp,
    wait_until_ready,
)

from .topology import (
    ANCHOR_ALT_PORT,
    ANCHOR_PORT,
    BLOCK_TABLE,
    COTURN_ALT_PORT,
    COTURN_PORT,
    HOSTS,
    LINKS,
    LOSS_TABLE,
    NAMESPACES,
    NATS,
    SERVER_ALT_IP,
    SERVER_IP,
    SERVER_NAT,
    SERVER_NAT_LINKS,
    SERVER_NAT_ROLES,
    Link,
    NatKind,
    block_ruleset,
    loss_ruleset,
    nat_ruleset,
    one_to_one_ruleset,
)

__all__ = ["ANCHOR", "LabError", "NatLab"]

T = TypeVar("T")

ANCHOR = [sys.executable, "-m", "anchor_cli"]
"""The ``anchor`` command, with the Python running the tests."""

NETNS_DIR = Path("/run/netns")
_NAME = re.compile(r"^anchorlab(\d+)\.(\d+)-")
_CLONE_NEWNET = 0x40000000
_counter = itertools.count(1)


class LabError(RuntimeError):
    """A lab command failed (its argv, exit status and output are in the message)."""


def _run(argv: Sequence[str], *, timeout: float = 20, stdin: str | None = None) -> str:
    result = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise LabError(
            f"{' '.join(argv)} exited {result.returncode}: {(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids: Sequence[int], grace: float = 2.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` s, SIGKILL whatever is still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.02)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _printed(process: PeerProcess, line: str) -> bool:
    return line in process.log().splitlines()


def _netns_pids(name: str) -> list[int]:
    result = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10, check=False
    )
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def lab_namespaces() -> list[str]:
    """Names of every NAT lab namespace on the machine (ours and other runs')."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if _NAME.match(n))


def remove_stale_labs() -> list[str]:
    """Delete lab namespaces left by runs whose process is gone (a crash or SIGKILL).

    Only names this module makes are touched; a live run's lab is left alone."""
    removed = []
    for name in lab_namespaces():
        match = _NAME.match(name)
        assert match is not None
        if _alive(int(match.group(1))):
            continue
        _kill_pids(_netns_pids(name))
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False, timeout=10)
        removed.append(name)
    return removed


DIRECT_TABLE = "anchor_direct"
"""nftables table of ``pub`` that cuts the direct path (:meth:`NatLab.set_direct_block`)."""


class NatLab:
    """The NAT lab: five namespaces, two NAT routers, one host behind each, servers in ``pub``.

    ``workdir`` receives the servers' logs. Use :meth:`build` and :meth:`teardown` (or the
    context manager); :meth:`exec` and :meth:`popen` run commands in a namespace by role.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        """Where logs and server state files go."""
        self.prefix = f"anchorlab{os.getpid()}.{next(_counter)}-"
        """Prefix of this lab's namespace names."""
        self.kinds: dict[str, NatKind] = {}
        """The NAT kind currently loaded in each router."""
        self.timings: dict[str, float] = {}
        """Seconds spent in ``build``, ``servers`` and ``teardown``."""
        self._created: list[str] = []
        self._processes: list[PeerProcess] = []
        self._popens: list[subprocess.Popen[Any]] = []
        self.anchor: PeerProcess | None = None
        """The ``anchor serve`` process in ``pub``, once started."""
        self.coturn: PeerProcess | None = None
        """The coturn process in ``pub``, once started."""

    # ------------------------------------------------------------------ names

    def ns(self, role: str) -> str:
        """The namespace name of a lab role (``pub``, ``natA``, ``hostB``...)."""
        if role not in NAMESPACES and role not in SERVER_NAT_ROLES:
            roles = (*NAMESPACES, *SERVER_NAT_ROLES)
            raise ValueError(f"unknown lab namespace {role!r}; roles are {roles}")
        return self.prefix + role

    @staticmethod
    def wan_ip(role: str) -> str:
        """The public address of the NAT in front of host ``role`` (or of NAT ``role``)."""
        nat = HOSTS[role] if role in HOSTS else NATS[role]
        return nat.wan_ip

    @staticmethod
    def host_ip(role: str) -> str:
        """The LAN address of host ``role``."""
        return HOSTS[role].host_ip

    # ------------------------------------------------------------------ running things

    def argv(self, role: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside namespace ``role``."""
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def exec(
        self, role: str, argv: Sequence[str], *, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``role`` to completion (text mode, output captured). A run that
        outlives ``timeout`` is killed and raises ``subprocess.TimeoutExpired``."""
        return subprocess.run(
            self.argv(role, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, role: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``role`` (``subprocess.Popen`` keywords pass through); the
        lab stops it by PID at teardown if it is still running."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(role, argv), **kwargs)
        self._popens.append(proc)
        return proc

    def start(self, role: str, name: str, argv: Sequence[str]) -> PeerProcess:
        """Start a long-running ``argv`` inside ``role`` with its output in ``workdir/NAME.log``;
        stopped by PID at teardown."""
        process = start_process(name, self.argv(role, argv), self.workdir / f"{name}.log")
        self._processes.append(process)
        return process

    def in_netns(self, role: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` in a thread that has entered namespace ``role``: sockets it creates live
        there for good, whichever thread uses them later."""
        box: dict[str, Any] = {}
        libc = ctypes.CDLL(None, use_errno=True)

        def enter() -> None:
            try:
                fd = os.open(NETNS_DIR / self.ns(role), os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.ns(role)}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=enter, name=f"netns-{role}")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        value: T = box["value"]
        return value

    def socket(
        self,
        role: str,
        family: socket.AddressFamily = socket.AF_INET,
        kind: socket.SocketKind = socket.SOCK_DGRAM,
    ) -> socket.socket:
        """A new socket inside namespace ``role`` (usable from this process directly)."""
        return self.in_netns(role, lambda: socket.socket(family, kind))

    def stun_ping(self, role: str, addr: tuple[str, int], timeout: float = 0.3) -> bool:
        """True when a STUN Binding sent from inside ``role`` to ``addr`` is answered."""
        with self.socket(role) as sock:
            try:
                stun_request_udp(sock, binding_request().encode(), addr, timeout=timeout, tries=1)
            except (TimeoutError, ConnectionRefusedError):
                return False
        return True

    # ------------------------------------------------------------------ NAT behaviour

    def set_nat(self, nat: str, kind: NatKind) -> None:
        """Give router ``nat`` the behaviour ``kind`` (atomic rule swap) and forget every
        mapping it had (conntrack flush), so that earlier tests leave nothing behind."""
        self._nft(nat, nat_ruleset(kind, NATS[nat].host_ip))
        self.flush_conntrack(nat)
        self.kinds[nat] = kind

    def set_loss(self, nat: str, outbound: int = 0, inbound: int = 0) -> None:
        """Drop ``outbound`` % of the packets router ``nat`` forwards LAN -> WAN and
        ``inbound`` % WAN -> LAN, at random (nft ``numgen``); 0, 0 turns loss off."""
        self._nft(nat, loss_ruleset(outbound, inbound))

    def loss_drops(self, nat: str) -> int:
        """Packets the loss rules of router ``nat`` dropped since the last :meth:`set_loss`
        (both directions; 0 when no loss is set)."""
        return self._counted(nat, LOSS_TABLE)

    def set_block(self, nat: str, tcp_ports: tuple[int, ...] | None) -> None:
        """Make router ``nat`` forward no UDP and, from its LAN, TCP only to ``tcp_ports``
        (:func:`natlab.topology.block_ruleset`); None lifts the block."""
        self._nft(nat, block_ruleset(tcp_ports))

    def set_direct_block(self, on: bool) -> None:
        """Make ``pub`` drop the UDP it forwards between natA's and natB's WAN addresses (the
        direct path between the hosts, both ways; traffic to and from the servers passes),
        or forward it again (``on`` False). An nftables table in ``pub`` (this kernel has no
        netem to delay it instead)."""
        a, b = NATS["natA"].wan_ip, NATS["natB"].wan_ip
        lines = [f"table ip {DIRECT_TABLE} {{}}", f"delete table ip {DIRECT_TABLE}"]
        if on:
            lines += [
                f"table ip {DIRECT_TABLE} {{",
                "  chain forward {",
                "    type filter hook forward priority -10; policy accept;",
                f"    ip saddr {a} ip daddr {b} udp dport 1-65535 counter drop",
                f"    ip saddr {b} ip daddr {a} udp dport 1-65535 counter drop",
                "  }",
                "}",
            ]
        _run(self.argv("pub", ["nft", "-f", "-"]), stdin="\n".join(lines) + "\n")

    def block_drops(self, nat: str) -> int:
        """Packets the block of router ``nat`` dropped since :meth:`set_block` (0 without)."""
        return self._counted(nat, BLOCK_TABLE)

    def _counted(self, nat: str, table: str) -> int:
        """The sum of the counters in nftables ``table`` of router ``nat`` (0 without it)."""
        if nat not in NATS:
            raise ValueError(f"{nat!r} is not a NAT router; routers are {sorted(NATS)}")
        result = subprocess.run(
            self.argv(nat, ["nft", "list", "table", "ip", table]),
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if result.returncode != 0:  # no such table
            return 0
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", result.stdout))

    def flush_conntrack(self, nat: str) -> None:
        """Forget every mapping of router ``nat`` (``conntrack -F``)."""
        if nat not in NATS:
            raise ValueError(f"{nat!r} is not a NAT router; routers are {sorted(NATS)}")
        # conntrack -F exits 0 and prints the count on stderr; an empty table is fine too.
        _run(self.argv(nat, ["conntrack", "-F"]))

    def _nft(self, nat: str, script: str) -> None:
        if nat not in NATS:
            raise ValueError(f"{nat!r} is not a NAT router; routers are {sorted(NATS)}")
        _run(self.argv(nat, ["nft", "-f", "-"]), stdin=script)

    # ------------------------------------------------------------------ build / teardown

    def build(self, kind_a: NatKind = NatKind.PORT_RESTRICTED_CONE,
              kind_b: NatKind = NatKind.SYMMETRIC) -> None:  # fmt: skip
        """Create the namespaces, links, addresses, routes and NAT rules (no servers yet).

        On failure everything created so far is torn down before the error propagates."""
        start = time.monotonic()
        try:
            remove_stale_labs()
            for role in NAMESPACES:
                self._add_namespace(role)
            pub = ["ip", "-n", self.ns("pub")]
            for server_ip in (SERVER_IP, SERVER_ALT_IP):
                _run([*pub, "addr", "add", f"{server_ip}/32", "dev", "lo"])
            for link in LINKS:
                self._link(link)
            # pub has no default route: lab traffic cannot leave the lab.
            for nat in NATS.values():
                _run(["ip", "-n", self.ns(nat.name), "route", "add", "default",
                      "via", nat.upstream_ip])  # fmt: skip
                _run(["ip", "-n", self.ns(nat.host), "route", "add", "default", "via", nat.lan_ip])
            for role in ("pub", *NATS):
                _run(self.argv(role, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
            self.set_nat("natA", kind_a)
            self.set_nat("natB", kind_b)
        except BaseException:
            self.teardown()
            raise
        self.timings["build"] = time.monotonic() - start

    def _add_namespace(self, role: str) -> None:
        _run(["ip", "netns", "add", self.ns(role)])
        self._created.append(self.ns(role))
        _run(["ip", "-n", self.ns(role), "link", "set", "lo", "up"])
        # IPv4 only: no link-local chatter, no DAD, nothing routable in v6 at all.
        _run(self.argv(role, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                              "net.ipv6.conf.default.disable_ipv6=1"]))  # fmt: skip

    def _link(self, link: Link) -> None:
        # veth created directly inside the namespaces ("name" is required: docs/peers.md)
        _run(["ip", "-n", self.ns(link.left), "link", "add", "name", link.left_if,
              "type", "veth", "peer", "name", link.right_if,
              "netns", self.ns(link.right)])  # fmt: skip
        for role, ifname, cidr in (
            (link.left, link.left_if, link.left_cidr),
            (link.right, link.right_if, link.right_cidr),
        ):
            ip = ["ip", "-n", self.ns(role)]
            _run([*ip, "addr", "add", cidr, "dev", ifname])
            _run([*ip, "link", "set", ifname, "up"])

    def add_server_nat(self) -> tuple[str, str]:
        """Add a server host ``srv`` behind a 1:1 NAT router ``natS`` hanging off ``pub``
        (:data:`natlab.topology.SERVER_NAT`: a cloud instance with a private address and a
        public one, issue 21); returns ``(public IP, private IP)``. ``pub`` has no route to
        the private address: only the public one reaches ``srv``. Torn down with the lab."""
        nat = SERVER_NAT
        for role in SERVER_NAT_ROLES:
            self._add_namespace(role)
        for link in SERVER_NAT_LINKS:
            self._link(link)
        _run(["ip", "-n", self.ns(nat.name), "route", "add", "default", "via", nat.upstream_ip])
        _run(["ip", "-n", self.ns(nat.host), "route", "add", "default", "via", nat.lan_ip])
        _run(self.argv(nat.name, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        _run(self.argv(nat.name, ["nft", "-f", "-"]),
             stdin=one_to_one_ruleset(nat.wan_ip, nat.host_ip))  # fmt: skip
        return nat.wan_ip, nat.host_ip

    def start_anchor_serve(
        self, extra_args: Sequence[str] = (), deadline: float = 20
    ) -> PeerProcess:
        """``anchor serve --listen 203.0.113.1:3478 --alt-ip 203.0.113.2 EXTRA...`` in ``pub``,
        returned once it printed its four RFC 5780 "listening udp" lines."""
        argv = [*ANCHOR, "serve", "--listen", f"{SERVER_IP}:{ANCHOR_PORT}",
                "--alt-ip", SERVER_ALT_IP, *extra_args]  # fmt: skip
        process = self.start("pub", "anchor-serve", argv)
        wanted = [
            f"listening udp {ip}:{port}"
            for ip in (SERVER_IP, SERVER_ALT_IP)
            for port in (ANCHOR_PORT, ANCHOR_ALT_PORT)
        ]
        printed = functools.partial(_printed, process)
        checks = [(line, functools.partial(printed, line)) for line in wanted]
        wait_until_ready(process, checks, deadline)
        self.anchor = process
        return process

    def start_coturn(
        self,
        extra_args: Sequence[str] = (),
        *,
        user: str = "alice:secret",
        realm: str = "example.org",
        deadline: float = 20,
    ) -> PeerProcess:
        """coturn in ``pub`` with RFC 5780 on 203.0.113.1 and 203.0.113.2, ports 3490/3491,
        relaying on 203.0.113.1 with long-term credentials ``user`` in ``realm``; returned once
        a STUN Binding to each of its addresses is answered."""
        state = self.workdir / "coturn"
        state.mkdir(parents=True, exist_ok=True)
        argv = [
            "turnserver", "-n",
            "--listening-ip", SERVER_IP, "--listening-ip", SERVER_ALT_IP,
            "--listening-port", str(COTURN_PORT), "--alt-listening-port", str(COTURN_ALT_PORT),
            "--relay-ip", SERVER_IP, "--min-port", "49152", "--max-port", "49407",
            "--lt-cred-mech", "--user", user, "--realm", realm,
            "--no-cli", "--no-tls", "--no-dtls",
            "--log-file", "stdout", "--simple-log",
            "--pidfile", str(state / "turnserver.pid"), "--userdb", str(state / "turndb"),
            *extra_args,
        ]  # fmt: skip
        process = self.start("pub", "coturn", argv)
        checks: list[tuple[str, Callable[[], bool]]] = [
            (f"STUN on udp {ip}:{port}", functools.partial(self.stun_ping, "pub", (ip, port)))
            for ip, port in ((SERVER_IP, COTURN_PORT), (SERVER_ALT_IP, COTURN_ALT_PORT))
        ]
        wait_until_ready(process, checks, deadline)
        self.coturn = process
        return process

    def teardown(self) -> None:
        """Stop everything the lab started and delete its namespaces; always runs to the end,
        then raises :class:`LabError` if anything is left behind."""
        start = time.monotonic()
        problems: list[str] = []
        for process in reversed(self._processes):
            try:
                process.stop(grace=3)
            except Exception as exc:  # keep going: the namespaces must go
                problems.append(f"stopping {process.name} (pid {process.pid}): {exc}")
        popens = [p for p in self._popens if p.poll() is None]
        _kill_pids([p.pid for p in popens])
        for proc in popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
        for name in reversed(self._created):
            # Processes still inside were started by ours (all of the lab is ours).
            _kill_pids(_netns_pids(name))
            result = subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                problems.append(f"ip netns del {name}: {result.stderr.strip()}")
        left = [n for n in lab_namespaces() if n.startswith(self.prefix)]
        if left:
            problems.append(f"namespaces left behind: {left}")
        alive = [p.pid for p in self._processes if p.running()]
        alive += [p.pid for p in self._popens if p.poll() is None]
        if alive:
            problems.append(f"processes left running: {alive}")
        self._created.clear()
        self.timings["teardown"] = time.monotonic() - start
        if problems:
            raise LabError("NAT lab teardown: " + "; ".join(problems))

    def __enter__(self) -> NatLab:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()
