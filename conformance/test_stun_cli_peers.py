"""`anchor stun` / `anchor serve` against coturn's programs, judged by tshark (issue 3).

- `anchor stun` and the library get the right mapped address from coturn over UDP, TCP and
  TLS, and classify coturn's RFC 5780 service on 127.0.0.1 + 127.0.0.2 as endpoint-
  independent mapping and filtering.
- coturn's `turnutils_stunclient` (plain and RFC 5780 mode) succeeds against `anchor serve`.
- tshark decodes every message of those exchanges as clean STUN with good FINGERPRINTs.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

from peers import (
    Coturn,
    TsharkCapture,
    free_port_block,
    require_peer,
    stun_packets,
    stun_problems,
)

from anchor_stun.aio.net import binding_request
from tests.helpers import anchor_json, anchor_serve

CRC_GOOD = "1"


def _assert_clean(pcap: Path, port: int, *, minimum: int) -> list[dict[str, list[str]]]:
    packets = [p for p in stun_packets(pcap, port) if p.get("stun.type")]
    assert len(packets) >= minimum, f"only {len(packets)} STUN packets captured"
    for packet in packets:
        assert stun_problems(packet) == [], packet
    return packets


def test_anchor_stun_against_coturn_udp_tcp_tls(coturn: Coturn) -> None:
    assert coturn.cert is not None and coturn.tls_port is not None
    for transport, port, extra in (
        ("udp", coturn.port, []),
        ("tcp", coturn.port, []),
        ("tls", coturn.tls_port, ["--ca-file", str(coturn.cert)]),
    ):
        out = anchor_json("stun", f"127.0.0.1:{port}", "--transport", transport, *extra)
        ip, _, mapped_port = out["mapped"].rpartition(":")
        assert ip == "127.0.0.1" and 0 < int(mapped_port) < 65536, (transport, out)
        assert out["rtt_ms"] >= 0

    async def library() -> None:
        import ssl

        for transport, port in (("udp", coturn.port), ("tcp", coturn.port)):
            result = await binding_request(("127.0.0.1", port), transport)  # type: ignore[arg-type]
            assert result.mapped == result.local, transport
        context = ssl.create_default_context(cafile=str(coturn.cert))
        result = await binding_request(("127.0.0.1", coturn.tls_port), "tls", ssl_context=context)
        assert result.mapped == result.local

    asyncio.run(library())


def test_nat_discovery_against_coturn_rfc5780(
    coturn_5780: Coturn, tshark_capture: Callable[[str], TsharkCapture]
) -> None:
    port = coturn_5780.port
    capture = tshark_capture(f"udp port {port} or udp port {port + 1}")
    out = anchor_json("stun", f"127.0.0.1:{port}", "--nat")
    assert out["nat"] == {"mapping": "endpoint-independent", "filtering": "endpoint-independent"}
    pcap = capture.stop()
    _assert_clean(pcap, port, minimum=2)


def test_turnutils_stunclient_against_anchor_serve(
    tmp_path: Path, tshark_capture: Callable[[str], TsharkCapture]
) -> None:
    client = require_peer("turnutils_stunclient")
    port = free_port_block(2, "both", ("127.0.0.1", "127.0.0.2"))
    capture = tshark_capture(f"udp portrange {port}-{port + 1}")
    with anchor_serve("--listen", f"127.0.0.1:{port}", "--alt-ip", "127.0.0.2", expect=4):
        plain = subprocess.run(
            ["timeout", "20", client, "-p", str(port), "127.0.0.1"],
            capture_output=True, text=True, check=False,
        )
        assert plain.returncode == 0, plain.stderr
        assert "UDP reflexive addr: 127.0.0.1:" in plain.stdout
        # RFC 5780 mode: OTHER-ADDRESS and RESPONSE-ORIGIN as coturn's own client reads them.
        assert f"Other addr: : 127.0.0.2:{port + 1}" in plain.stdout
        assert f"Response origin: : 127.0.0.2:{port + 1}" in plain.stdout  # change IP+port
    pcap = capture.stop()
    packets = _assert_clean(pcap, port, minimum=4)
    assert any(CRC_GOOD in p.get("stun.att.crc32.status", []) for p in packets)
