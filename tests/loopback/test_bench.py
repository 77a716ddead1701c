"""``anchor bench``: the shape of its JSON (never its speed), its honesty about pending
metrics, and the fast paths of the codec that the benchmarks measure, against the slow
reference they replace."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import benchmarks
from anchor_stun.attributes import (
    IceControlled,
    IceControlling,
    Priority,
    Software,
    UseCandidate,
    Username,
    XorMappedAddress,
    XorPeerAddress,
)
from anchor_stun.message import HmacKey, Message, MessageClass, Method
from benchmarks import link
from benchmarks.checks import AioiceResponder, AnchorResponder, requests
from benchmarks.codec import PASSWORD
from tests.helpers import run_anchor


def _check_rows(rows: Any) -> list[dict[str, Any]]:
    assert isinstance(rows, list) and rows
    for row in rows:
        assert isinstance(row, dict)
        assert tuple(row) == benchmarks.RESULT_KEYS
        assert isinstance(row["metric"], str) and isinstance(row["unit"], str)
        assert isinstance(row["baseline_name"], str) and row["baseline_name"]
        for key in ("anchor", "baseline", "ratio"):
            assert isinstance(row[key], (int, float)) and not isinstance(row[key], bool)
            assert math.isfinite(row[key]) and row[key] > 0
        assert math.isclose(row["ratio"], row["anchor"] / row["baseline"], rel_tol=1e-9)
    return list(rows)


def test_codec_quick_json_shape() -> None:
    result = run_anchor("bench", "codec", "--quick", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = _check_rows(json.loads(result.stdout))
    assert [row["metric"] for row in rows] == ["codec"]
    assert rows[0]["baseline_name"].startswith("aioice")


def test_pending_metric_gets_no_number() -> None:
    waiting = [m.name for m in benchmarks.REGISTRY.values() if m.module is None]
    if not waiting:
        return  # every metric is implemented: nothing pending to check
    result = run_anchor("bench", waiting[0], "--json", timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stdout) == []
    assert "not implemented yet" in result.stderr


def test_unknown_metric_is_a_usage_error() -> None:
    result = run_anchor("bench", "nonsense")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_registry_names_every_metric_of_the_contract() -> None:
    assert list(benchmarks.REGISTRY) == [
        "codec", "checks", "connect", "relay", "channel", "scale", "link", "aiortc"
    ]
    assert benchmarks.names_of(["all"]) == list(benchmarks.REGISTRY)


def test_interleave_rotates_and_takes_medians() -> None:
    calls: list[str] = []
    values = {"a": iter([9.0, 1.0, 2.0, 3.0]), "b": iter([9.0, 10.0, 30.0, 20.0])}

    def sampler(name: str) -> object:
        def sample() -> float:
            calls.append(name)
            return next(values[name])

        return sample

    medians = benchmarks.interleave({"a": sampler("a"), "b": sampler("b")}, 3)  # type: ignore[dict-item]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert medians == {"a": 2.0, "b": 20.0}


# --------------------------------------------------------------------------- responders


class _Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append((data, addr))


def test_both_responders_answer_a_check_correctly() -> None:
    request = requests(1)[0]
    for cls in (AnchorResponder, AioiceResponder):
        sink = _Sink()
        responder = cls()
        responder.connection_made(sink)  # type: ignore[arg-type]
        responder.datagram_received(request, ("127.0.0.1", 40000))
        responder.datagram_received(request[:-1] + b"\x00", ("127.0.0.1", 40000))  # bad FP
        assert len(sink.sent) == 1, cls.__name__
        response = Message.decode(sink.sent[0][0])
        assert response.msg_class is MessageClass.SUCCESS
        assert response.transaction_id == request[8:20]
        assert response.verify_fingerprint() and response.verify_integrity(PASSWORD)
        assert response.get(XorMappedAddress) == XorMappedAddress("127.0.0.1", 40000)


# --------------------------------------------------------------------------- fast paths

FAST = settings(deadline=None, max_examples=200)


@FAST
@given(key=st.binary(max_size=150), data=st.binary(max_size=300))
def test_hmac_key_states_match_hmac_digest(key: bytes, data: bytes) -> None:
    hmac_key = HmacKey(key)
    for _ in range(2):  # the precomputed states are copied, never consumed
        assert hmac_key.sha1(data) == hmac.digest(key, data, "sha1")
        assert hmac_key.sha256(data) == hmac.digest(key, data, "sha256")
    message = Message(Method.BINDING, MessageClass.REQUEST, bytes(12), [Software("x")])
    signed = message.encode(key=key, key_sha256=key, fingerprint=True)
    assert message.encode(key=hmac_key, key_sha256=hmac_key, fingerprint=True) == signed
    decoded = Message.decode(signed)
    assert decoded.verify_integrity(hmac_key) and decoded.verify_integrity_sha256(hmac_key)


def _fields(msg: Message) -> tuple[object, ...]:
    return (
        msg.method,
        msg.msg_class,
        msg.transaction_id,
        msg.attributes,
        msg.integrity,
        msg.integrity_sha256,
        msg.fingerprint,
        msg.raw,
        msg.pad_byte,
        msg._mi_at,
        msg._mi256_at,
        msg._fp_at,
    )


check_attributes = st.lists(
    st.one_of(
        st.text(min_size=1, max_size=40).map(Username),
        st.integers(0, 2**32 - 1).map(Priority),
        st.integers(0, 2**64 - 1).map(IceControlling),
        st.integers(0, 2**64 - 1).map(IceControlled),
        st.just(UseCandidate()),
        st.text(max_size=20).map(Software),
        st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 0xFFFF)).map(
            lambda a: XorPeerAddress(*a)
        ),
    ),
    max_size=5,
)


@FAST
@given(
    attrs=check_attributes,
    key=st.one_of(st.none(), st.binary(min_size=1, max_size=32)),
    fingerprint=st.booleans(),
    tids=st.lists(st.binary(min_size=12, max_size=12), min_size=2, max_size=2),
)
def test_decode_is_a_function_of_the_bytes(
    attrs: list[object], key: bytes | None, fingerprint: bool, tids: list[bytes]
) -> None:
    for klass in (MessageClass.REQUEST, MessageClass.SUCCESS):
        datas = [
            Message(Method.BINDING, klass, tid, list(attrs)).encode(  # type: ignore[arg-type]
                key=key, fingerprint=fingerprint
            )
            for tid in tids
        ]
        first = [_fields(Message.decode(data)) for data in datas]
        assert [_fields(Message.decode(data)) for data in datas * 2] == first * 2
        decoded = Message.decode(datas[0])
        assert decoded.attributes is not Message.decode(datas[0]).attributes  # not shared


@FAST
@given(ip=st.ip_addresses(v=4).map(str), port=st.integers(0, 0xFFFF))
def test_xor_address_fast_path_matches_the_rfc_formula(ip: str, port: int) -> None:
    tid = os.urandom(12)
    value = XorMappedAddress(ip, port).encode_value(tid)
    packed = bytes(int(part) for part in ip.split("."))
    cookie = bytes.fromhex("2112a442")
    expected = (
        b"\x00\x01"
        + (port ^ 0x2112).to_bytes(2, "big")
        + bytes(a ^ b for a, b in zip(packed, cookie, strict=True))
    )
    assert value == expected
    assert XorMappedAddress.decode_value(value, tid) == XorMappedAddress(ip, port)


# --------------------------------------------------------------------------- new metrics


def test_every_metric_is_implemented_and_every_row_kind_has_a_target() -> None:
    assert benchmarks.pending(["all"]) == []

    def row(metric: str, name: str, unit: str = "x") -> dict[str, Any]:
        return benchmarks.result(metric, unit, 1.0, 2.0, name)

    from benchmarks import channel, scale

    stats = {
        n: {"alloc_us": 1.0, "expire_us": 1.0, "kb_per_alloc": 2.0, "rss_mb": 30.0,
            "heap_kb_per_alloc": 1.5}
        for n in scale.SIZES
    }
    links = {n: {"cpu_ms": 3.0, "kb_per_link": 100.0} for n in scale.LINK_SIZES}
    runs = {
        n: [{"goodput": 1e6, "srtt": 0.001}]
        for n in ("raw", "raw_offload", "anchor", "anchor_loss")
    }
    rows = [*scale.rows(stats), *scale.link_rows(links), *channel.rows("asyncio", runs)]
    rows.append(row("connect", "aioice 0.13.0 Connection; anchor at Ta 50 ms", "ms"))
    rows.append(row("relay", "coturn 4.6.1, same load generator"))
    rows.append(row("aiortc", "open: aiortc 1.16.0 on aioice 0.13.0; data channel open", "ms"))
    rows.append(row("aiortc", "rate: aiortc 1.16.0 on aioice 0.13.0; 500 messages", "msg/s"))
    rows.append(row("link", "aiortc 1.16.0 RTCDataChannel (DTLS + SCTP on aioice)", "msg/s"))
    rows.append(row("channel", "bottleneck: kernel TCP (cubic) alone on the same", "Mbit/s"))
    rows.append(row("channel", "drops: kernel TCP's share of packets dropped", "% dropped"))
    for item in _check_rows(rows):  # every row has its target, reference rows excepted
        reference = "for reference" in item["baseline_name"]
        assert (benchmarks.target_of(item) is None) == reference, item
    assert [r["unit"] for r in scale.rows(stats)] == ["µs/alloc", "µs/alloc", "KB/alloc", "MB"]
    rss = scale.rows(stats)[-1]
    assert benchmarks.target_of(rss) == benchmarks.Target(300.0, False, on="anchor")
    assert benchmarks.target_of(rss).met(rss)  # type: ignore[union-attr]


def test_connect_quick_json_shape() -> None:
    result = run_anchor("bench", "connect", "--quick", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = _check_rows(json.loads(result.stdout))
    assert [row["metric"] for row in rows] == ["connect", "connect"]
    assert all(row["unit"] == "ms" and row["baseline_name"].startswith("aioice") for row in rows)
    assert "Ta 50 ms" in rows[0]["baseline_name"] and "Ta 5 ms" in rows[1]["baseline_name"]


def test_aiortc_quick_json_shape() -> None:
    """aiortc's data channel on Anchor (through anchor_ice.compat) and on aioice: each sample
    checks the messages arrived in order and which ICE carried them."""
    result = run_anchor("bench", "aiortc", "--quick", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _check_rows(json.loads(result.stdout))
    assert [(row["metric"], row["unit"]) for row in rows] == [("aiortc", "ms"), ("aiortc", "msg/s")]
    assert all(benchmarks.target_of(row) is not None for row in rows)
    assert all(row["anchor"] > 0 and row["baseline"] > 0 for row in rows)


def test_channel_samples_deliver_and_the_lossy_adapter_drops() -> None:
    from benchmarks import channel

    async def samples() -> list[dict[str, float]]:
        return [
            await channel.raw_sample(0.05),
            await channel.anchor_sample(0.05),
            await channel.anchor_sample(0.1, channel.LOSS, seed=3),
        ]

    import asyncio

    raw, clean, lossy = asyncio.run(samples())
    assert raw["goodput"] > 0 and clean["goodput"] > 0 and lossy["goodput"] > 0
    # Nothing is lost on a clean path, so nothing is found lost; a retransmission there can
    # only be a timer's (a tail-loss probe or an RTO), which a loop stalled by a busy
    # machine may fire: seen once in a CI run.
    assert clean["dropped"] == 0 and clean["fast_retransmits"] == 0
    assert clean["retransmissions"] == 0 or clean["probes"] + clean["timeouts"] > 0
    assert lossy["dropped"] > 0 and lossy["retransmissions"] >= lossy["dropped"] * 0.5


def test_relay_allocation_through_anchor_serve_echoes(tmp_path: Any) -> None:
    import socket

    from benchmarks import relay

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(5.0)
    server, port = relay.start_anchor(tmp_path)
    try:
        allocation = relay.Allocation(port, echo.getsockname()[1])
        try:
            frame = relay.channel_frames(1)[0]
            allocation.sock.send(frame)
            data, addr = echo.recvfrom(2048)  # the payload, from the relayed address
            assert data == frame[4:]
            echo.sendto(data, addr)
            allocation.sock.settimeout(5.0)
            assert allocation.sock.recv(2048) == frame  # back as ChannelData on 0x4000
        finally:
            allocation.close()
    finally:
        server.stop()
        echo.close()
    assert server.popen.returncode is not None


def test_relay_worker_rows_shape() -> None:
    """``anchor bench relay``'s --workers rows: against coturn and --workers 1, per second and
    per server CPU-second (the shape only; the figures are in benchmarks/README.md)."""
    from benchmarks import relay

    out = {
        "medians": {"workers-1": 50_000.0, "workers-2": 55_000.0, "coturn": 80_000.0},
        "per_cpu_second": {"workers-1": 110_000.0, "workers-2": 120_000.0, "coturn": 230_000.0},
    }
    rows = _check_rows(relay.worker_rows(out, "coturn 4.6.1"))
    assert [(r["metric"], r["unit"]) for r in rows] == [
        ("relay", "pkt/s"), ("relay", "pkt/CPU-s"), ("relay", "pkt/s"), ("relay", "pkt/CPU-s")
    ]  # fmt: skip
    assert [r["baseline"] for r in rows] == [80_000.0, 230_000.0, 50_000.0, 110_000.0]
    assert all(r["anchor"] in (55_000.0, 120_000.0) for r in rows)
    assert all("--workers 2" in r["baseline_name"] for r in rows)
    assert [benchmarks.target_of(r) is not None for r in rows] == [True, True, False, False]


def test_relay_workers_2_flows_land_on_both_workers(tmp_path: Any) -> None:
    """The --workers rows' set-up for real: anchor serve --workers 2, one allocation per worker
    (told apart by their relayed ports' slices), both echo, and the server's CPU time counts
    the workers' (its process tree)."""
    import contextlib

    from benchmarks import relay

    with contextlib.ExitStack() as stack:
        _, peer_port = relay._start_echo(stack)
        server, port = relay.start_anchor(tmp_path, workers=2)
        stack.callback(server.stop)
        flows = relay._spread_allocations(stack, server, port, peer_port, workers=2)
        half = relay.RELAY_PORTS // 2
        slices = sorted((a.relayed[1] - server.relay_base) // half for a in flows)
        assert slices == [0, 1]
        for allocation in flows:
            allocation.check_echo()
        # The workers (children of the supervisor) started Python each: their CPU counts.
        assert relay.tree_cpu_seconds(server.pid) > relay.cpu_seconds(server.pid)
    assert server.popen.returncode is not None


def test_scale_child_counts_allocations_and_releases_them() -> None:
    from benchmarks import scale

    out = scale.run_child(100)
    assert out["count"] == 100
    assert out["rss_after"] >= out["rss_before"] > 0
    assert out["allocate_s"] > 0 and out["expire_s"] > 0
    assert out["heap_after"] == out["heap_before"] == 0  # not traced
    traced = scale.run_child(100, kind="turn-heap")
    assert traced["count"] == 100
    # the server's state for 100 allocations is on the heap (a few hundred bytes each)
    assert traced["heap_after"] - traced["heap_before"] > 100 * 200


def test_scale_link_child_forms_and_dissolves_links() -> None:
    from benchmarks import scale

    if not scale.link_available():
        return  # no anchor_link.aio.endpoint yet: the links part reports itself pending
    out = scale.run_child(5, kind="link")
    assert out["count"] == 5
    assert out["rss_open"] > 0 and out["form_cpu_s"] > 0 and out["dissolve_cpu_s"] > 0


def test_the_link_benchmark_delivers_every_message_sealed_and_plain() -> None:
    """``python -m benchmarks.link``: its run completes only once the receiver saw every
    message (shape and completion, not speed)."""
    for seal, relay in ((True, False), (False, False), (True, True)):
        out = asyncio.run(link.one_run(seal, messages=50, relay=relay))
        assert set(out) == {"msg_per_s", "mb_per_s", "cpu_us_per_msg"}
        assert all(value > 0 for value in out.values())


def test_the_loss_row_compares_with_the_tcp_friendly_rate() -> None:
    """Issue 17: the 5 % loss row's baseline is RFC 5348 §3.1's rate (b = 1, no timeout
    term) at the lossy runs' own SRTT, s / (R sqrt(2p/3)), not the clean figure."""
    from benchmarks import channel

    assert channel.tcp_friendly_rate(0.001, 0.05, 1190) == pytest.approx(
        1190 / (0.001 * (2 * 0.05 / 3) ** 0.5)
    )
    runs = {
        "raw": [{"goodput": 4e6, "srtt": 0.0}],
        "raw_offload": [{"goodput": 8e6, "srtt": 0.0}],
        "anchor": [{"goodput": 2e6, "srtt": 0.0005}],
        "anchor_loss": [{"goodput": 3e6, "srtt": 0.002}, {"goodput": 3e6, "srtt": 0.001}],
    }
    clean, reference, lossy = channel.rows("asyncio", runs)
    assert clean["ratio"] == 0.5
    assert reference["ratio"] == 0.25 and benchmarks.target_of(reference) is None
    friendly = statistics.median(channel.tcp_friendly_rate(r) for r in (0.002, 0.001)) / 1e6
    assert lossy["baseline"] == pytest.approx(friendly)
    assert benchmarks.target_of(lossy) == benchmarks.Target(0.5)
