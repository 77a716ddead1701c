"""`anchor stun --nat` behind real kernel NATs (issue 7, must-show 1; timing: must-show 7).

For each NAT kind of the lab (full cone, restricted cone, port-restricted cone, symmetric),
both routers get that kind (a rule swap, not a rebuild) and, all at once:

- from hostA and from hostB, ``anchor stun 203.0.113.1:PORT --nat --json`` against
  ``anchor serve`` (3478) and against coturn (3490) must report the kind's RFC 4787 mapping
  and filtering, and a mapped IP equal to the WAN address of the host's own NAT;
- from each host, coturn's ``turnutils_natdiscovery`` against coturn must report the same:
  an independent witness that the lab builds the NAT it claims (so that agreement proves
  Anchor right, not Anchor and the lab wrong together).

The filtering tests wait out silence (RFC 5780 §4.4), so a kind whose filtering is address-
and-port-dependent takes ~7 s; everything runs concurrently per kind.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from natlab import ANCHOR, ANCHOR_PORT, COTURN_PORT, HOSTS, NATS, SERVER_IP, NatKind, NatLab
from natlab.fixtures import natlab, report

__all__ = ["natlab"]  # the module fixture, imported so pytest finds it here

SERVERS = {"anchor serve": ANCHOR_PORT, "coturn": COTURN_PORT}
PROBE_TIMEOUT = 40.0  # anchor stun --nat needs ~7.5 s at most here; this only bounds a hang

_NATDISCOVERY = {
    "Endpoint Independent": "endpoint-independent",
    "Address Dependent": "address-dependent",
    "Address and Port Dependent": "address-and-port-dependent",
}


@dataclass(frozen=True)
class Probe:
    """One classification run inside a host namespace."""

    host: str
    tool: str
    server: str
    argv: list[str]


def _probes() -> list[Probe]:
    probes = []
    for host in HOSTS:
        for server, port in SERVERS.items():
            argv = [*ANCHOR, "stun", f"{SERVER_IP}:{port}", "--nat", "--json"]
            probes.append(Probe(host, "anchor stun", server, argv))
        argv = ["turnutils_natdiscovery", "-m", "-f", "-p", str(COTURN_PORT), SERVER_IP]
        probes.append(Probe(host, "turnutils_natdiscovery", "coturn", argv))
    return probes


def _anchor_result(stdout: str) -> tuple[str, str, str]:
    out = json.loads(stdout.strip().splitlines()[-1])
    return out["mapped"].rpartition(":")[0], out["nat"]["mapping"], out["nat"]["filtering"]


def _natdiscovery_result(stdout: str) -> tuple[str, str, str]:
    mapping = re.search(r"NAT with (.+?) Mapping!", stdout)
    filtering = re.search(r"NAT with (.+?) Filtering!", stdout)
    reflexive = re.search(r"UDP reflexive addr: ([\d.]+):\d+", stdout)
    if mapping is None or filtering is None:
        raise ValueError("no 'NAT with ... Mapping/Filtering!' lines")
    return (
        reflexive.group(1) if reflexive else "",
        _NATDISCOVERY.get(mapping.group(1), mapping.group(1)),
        _NATDISCOVERY.get(filtering.group(1), filtering.group(1)),
    )


def _check(lab: NatLab, probe: Probe, kind: NatKind) -> str | None:
    """Run one probe; None when it found ``kind`` behind the right WAN address, else why not."""
    result = lab.exec(probe.host, probe.argv, timeout=PROBE_TIMEOUT)
    where = f"{probe.host} ({kind}) {probe.tool} -> {probe.server}"
    if result.returncode != 0:
        return f"{where}: exit {result.returncode}: {result.stderr.strip()[-500:]}"
    parse = _anchor_result if probe.tool == "anchor stun" else _natdiscovery_result
    try:
        mapped_ip, mapping, filtering = parse(result.stdout)
    except (ValueError, KeyError, IndexError) as exc:
        return f"{where}: unreadable output ({exc}): {result.stdout[-500:]!r}"
    wanted = (kind.mapping.value, kind.filtering.value)
    problems = []
    if (mapping, filtering) != wanted:
        problems.append(
            f"mapping/filtering {mapping}/{filtering}, expected {wanted[0]}/{wanted[1]}"
        )
    wan = lab.wan_ip(probe.host)
    if mapped_ip and mapped_ip != wan:  # natdiscovery may not print it; anchor always does
        problems.append(f"mapped IP {mapped_ip}, expected the NAT's WAN address {wan}")
    if probe.tool == "anchor stun" and not mapped_ip:
        problems.append("no mapped address")
    return f"{where}: {'; '.join(problems)}" if problems else None


@pytest.mark.parametrize("kind", list(NatKind), ids=str)
def test_stun_nat_discovery_behind_each_nat_kind(
    natlab: NatLab, kind: NatKind, request: pytest.FixtureRequest
) -> None:
    started = time.monotonic()
    for nat in NATS:
        natlab.set_nat(nat, kind)
    swapped = time.monotonic() - started
    probes = _probes()
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        outcomes = list(pool.map(lambda p: _check(natlab, p, kind), probes))
    elapsed = time.monotonic() - started
    report(
        request.config,
        f"natlab {kind}: rules swapped in {swapped * 1000:.0f} ms, {len(probes)} "
        f"classifications in {elapsed:.2f} s",
    )
    failures = [o for o in outcomes if o is not None]
    assert not failures, "\n".join(failures)


def test_lab_is_sealed_and_routers_drop_unsolicited(natlab: NatLab) -> None:
    """The lab's own rules, checked without sending anything outside it: no namespace has a
    route out of the lab or a link to the machine's namespace, and a NAT router drops
    unsolicited packets, to itself and towards its host, until the host sends first."""
    for role in ("pub", *NATS, *HOSTS):
        links = natlab.exec(role, ["ip", "-o", "link", "show"]).stdout
        names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
        assert all(n in ("lo", "linkA", "linkB", "wan", "lan", "eth0") for n in names), names
    pub_routes = natlab.exec("pub", ["ip", "route", "show"]).stdout
    assert "default" not in pub_routes, pub_routes
    # A route lookup only (no packet): 192.0.2.1 is on this machine's uplink, outside the lab.
    lookup = natlab.exec("pub", ["ip", "route", "get", "192.0.2.1"])
    assert lookup.returncode != 0 and "unreachable" in lookup.stderr, lookup

    natlab.set_nat("natA", NatKind.PORT_RESTRICTED_CONE)
    with natlab.socket("hostA") as host, natlab.socket("pub") as remote:
        host.bind(("0.0.0.0", 0))
        port = host.getsockname()[1]
        host.settimeout(0.3)
        remote.bind((SERVER_IP, 0))
        remote.settimeout(0.3)
        wan = (natlab.wan_ip("hostA"), port)
        remote.sendto(b"unsolicited", wan)
        with pytest.raises(TimeoutError):
            host.recvfrom(100)
        # The router itself neither answers nor rejects (no ICMP port unreachable, which a
        # connected UDP socket would raise as ConnectionRefusedError).
        with natlab.socket("pub") as prober:
            prober.settimeout(0.3)
            prober.connect((natlab.wan_ip("hostA"), 9))
            prober.send(b"to the router")
            with pytest.raises(TimeoutError):
                prober.recv(100)
        # The negative results are not vacuous: once the host sends, replies get through.
        host.sendto(b"hello", remote.getsockname())
        data, source = remote.recvfrom(100)
        assert (data, source) == (b"hello", wan)  # masquerade kept the port
        remote.sendto(b"reply", wan)
        assert host.recvfrom(100) == (b"reply", remote.getsockname())


def test_loss_rule_drops_its_share(natlab: NatLab) -> None:
    """The statistic loss option later tests use (no netem on this kernel): 5 % set on
    natA's forward path drops roughly 5 % of hostA's datagrams, and 0 % drops none."""
    natlab.set_nat("natA", NatKind.PORT_RESTRICTED_CONE)
    sent = 2000

    def delivered() -> int:
        count = 0
        with natlab.socket("hostA") as host, natlab.socket("pub") as remote:
            remote.bind((SERVER_IP, 0))
            remote.settimeout(0.05)  # veth delivery is immediate: silence means the batch is in
            for batch in range(0, sent, 100):  # batches stay far below the receive buffer
                for i in range(batch, batch + 100):
                    host.sendto(i.to_bytes(2, "big"), remote.getsockname())
                try:
                    while True:
                        remote.recvfrom(10)
                        count += 1
                except TimeoutError:
                    pass
        return count

    try:
        natlab.set_loss("natA", outbound=5)
        lost = sent - delivered()
    finally:
        natlab.set_loss("natA")
    assert 0.02 * sent < lost < 0.09 * sent, f"{lost} of {sent} lost at 5 %"
    assert delivered() == sent
