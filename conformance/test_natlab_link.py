"""Ephemeral links between hostA and hostB behind real kernel NATs (issue 7, must-shows 2-5).

Each case sets both routers' NAT kinds (rule swap + conntrack flush, as the STUN tests do),
then runs ``anchor pipe`` in hostB (receiver, stdin empty) and hostA (sender) as subprocesses
in their namespaces, through ``anchor serve`` in ``pub`` (STUN + TURN + ``--signal``
rendezvous). ``-v`` makes each side print the selected pair ("link formed ... TYPE IP:PORT
<-> TYPE IP:PORT"), which the tests check; the data must arrive at hostB byte for byte.

- must-show 2: cone <-> cone forms on a srflx/prflx pair whose addresses are the NATs' WAN
  addresses (never relay, never host);
- must-show 3: port-restricted cone <-> symmetric and symmetric <-> symmetric fall back to a
  relay pair (``anchor serve``'s relayed address on one side); no host pair in any case;
  (full cone <-> symmetric legitimately punches through: a direct pair, not relay);
- must-show 4: both hosts also on one shared LAN segment: ``--policy standard`` picks the host
  pair there, ``--policy gateway`` does not;
- must-show 5: 5 % random loss on natA's LAN -> WAN forward path: every message arrives once,
  in order.
"""

from __future__ import annotations

import pytest
from natlab import NATS, SERVER_IP, NatKind, NatLab
from natlab.fixtures import natlab, report
from natlab.links import (
    DIRECT_TYPES,
    SHARED_IPS,
    Formed,
    PipeRun,
    join_hosts,
    pipe_pair,
    serve_args,
)

__all__ = ["natlab"]  # the module fixture, imported so pytest finds it here

ANCHOR_SERVE_ARGS = serve_args()
"""Read by the ``natlab`` fixture: TURN users and the rendezvous on ``anchor serve``."""

FR, RC, PR, SY = (NatKind.FULL_CONE, NatKind.RESTRICTED_CONE,
                  NatKind.PORT_RESTRICTED_CONE, NatKind.SYMMETRIC)  # fmt: skip
WAN = {NATS["natA"].wan_ip, NATS["natB"].wan_ip}
DIRECT = DIRECT_TYPES


def _set(lab: NatLab, kind_a: NatKind, kind_b: NatKind) -> None:
    lab.set_nat("natA", kind_a)
    lab.set_nat("natB", kind_b)


def _payload(n: int = 20) -> bytes:
    return b"".join(b"message %05d\n" % i for i in range(n))


def _check_delivery(run: PipeRun, data: bytes) -> None:
    assert not run.timed_out and run.sender_rc == 0 and run.receiver_rc == 0, run.describe()
    assert run.received == data, run.describe()
    assert run.sender_formed and run.receiver_formed, f"no link formed\n{run.describe()}"


def _all_formed(run: PipeRun) -> list[Formed]:
    return [*run.sender_formed, *run.receiver_formed]


def _no_host(run: PipeRun) -> None:
    for formed in _all_formed(run):
        assert "host" not in formed.types, f"host pair nominated: {formed}\n{run.describe()}"


def _timing(request: pytest.FixtureRequest, label: str, run: PipeRun) -> None:
    pairs = ", ".join(
        f"{f.local_type}<->{f.remote_type}"
        + (f" (relay over {f.relay_transport})" if f.relay_transport else "")
        + f" in {f.ms} ms"
        for f in run.sender_formed
    )
    report(request.config, f"natlab link {label}: {pairs}; run {run.elapsed:.2f} s")


@pytest.mark.parametrize(("kind_a", "kind_b"), [(FR, FR), (PR, PR), (RC, PR)], ids=str)
def test_cone_to_cone_forms_on_reflexive_pair_of_wan_addresses(
    natlab: NatLab, kind_a: NatKind, kind_b: NatKind, request: pytest.FixtureRequest
) -> None:
    _set(natlab, kind_a, kind_b)
    data = _payload()
    run = pipe_pair(natlab, data)
    _check_delivery(run, data)
    _no_host(run)
    for formed in _all_formed(run):
        assert set(formed.types) <= DIRECT, f"not a reflexive pair: {formed}\n{run.describe()}"
        assert {formed.local[0], formed.remote[0]} == WAN, (
            f"selected pair not on the NATs' WAN addresses {sorted(WAN)}: {formed}"
        )
    # Both sides agree on the pair (mirror images).
    (a,), (b,) = run.sender_formed, run.receiver_formed
    assert (a.local, a.remote) == (b.remote, b.local), run.describe()
    assert a.local[0] == natlab.wan_ip("hostA") and b.local[0] == natlab.wan_ip("hostB")
    _timing(request, f"{kind_a} <-> {kind_b}", run)


@pytest.mark.parametrize(("kind_a", "kind_b"), [(PR, SY), (SY, PR), (SY, SY)], ids=str)
def test_symmetric_falls_back_to_relay(
    natlab: NatLab, kind_a: NatKind, kind_b: NatKind, request: pytest.FixtureRequest
) -> None:
    _set(natlab, kind_a, kind_b)
    data = _payload()
    run = pipe_pair(natlab, data)
    _check_delivery(run, data)
    _no_host(run)
    for formed in _all_formed(run):
        assert "relay" in formed.types, f"not a relay pair: {formed}\n{run.describe()}"
        relay = formed.local if formed.local_type == "relay" else formed.remote
        assert relay[0] == SERVER_IP, f"relayed address not anchor serve's: {formed}"
    _timing(request, f"{kind_a} <-> {kind_b}", run)


def test_full_cone_to_symmetric_punches_through(
    natlab: NatLab, request: pytest.FixtureRequest
) -> None:
    """Endpoint-independent filtering admits the symmetric side's new mapping: a direct
    (prflx) pair, still on WAN addresses, never host."""
    _set(natlab, SY, FR)
    data = _payload()
    run = pipe_pair(natlab, data)
    _check_delivery(run, data)
    _no_host(run)
    for formed in _all_formed(run):
        assert set(formed.types) <= DIRECT | {"relay"}, run.describe()
    _timing(request, "symmetric <-> full-cone", run)


def test_loss_on_forward_path_every_message_once_in_order(
    natlab: NatLab, request: pytest.FixtureRequest
) -> None:
    _set(natlab, PR, PR)
    natlab.set_loss("natA", outbound=5)
    try:
        # 400 numbered messages of 1000 bytes, one per read (--chunk): ~400 datagrams out
        data = b"".join((b"message %05d " % i).ljust(999, b".") + b"\n" for i in range(400))
        run = pipe_pair(natlab, data, extra_a=["--chunk", "1000"], timeout=40)
        drops = natlab.loss_drops("natA")
    finally:
        natlab.set_loss("natA", 0, 0)
    _check_delivery(run, data)
    assert drops > 0, "the loss rule dropped nothing: the test proved nothing"
    _timing(request, f"5 % loss natA LAN->WAN, 400 messages, {drops} packets dropped", run)


@pytest.mark.parametrize("policy", ["standard", "gateway"])
def test_policy_on_a_shared_lan_segment(
    natlab: NatLab, policy: str, request: pytest.FixtureRequest
) -> None:
    """Both hosts also on one LAN segment: standard nominates the host pair on it, gateway
    never a host pair (its pair goes through the NATs' WAN addresses)."""
    if "shared" not in natlab.kinds:  # once per lab; the extra segment stays
        join_hosts(natlab)
        natlab.kinds["shared"] = PR  # marker only
    _set(natlab, PR, PR)
    data = _payload()
    extra_a = ["--host-ip", SHARED_IPS["hostA"]]
    extra_b = ["--host-ip", SHARED_IPS["hostB"]]
    run = pipe_pair(natlab, data, extra=["--policy", policy], extra_a=extra_a, extra_b=extra_b)
    _check_delivery(run, data)
    (a,), (b,) = run.sender_formed, run.receiver_formed
    assert (a.local, a.remote) == (b.remote, b.local), run.describe()
    if policy == "standard":
        assert a.types == ("host", "host"), run.describe()
        assert (a.local[0], a.remote[0]) == (SHARED_IPS["hostA"], SHARED_IPS["hostB"])
    else:
        _no_host(run)
        assert {a.local[0], a.remote[0]} <= WAN | {SERVER_IP}, run.describe()
    _timing(request, f"shared LAN, policy {policy}", run)
