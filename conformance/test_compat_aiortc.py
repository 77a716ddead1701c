"""aiortc (1.16) on Anchor's ICE through anchor_ice.compat.install_aioice(), over loopback.

What this proves, each run in a Python process of its own (``python -m
benchmarks.aiortc_peers``: aiortc binds aioice's names when first imported) with ICE servers
only on 127.0.0.1 and host candidates on 127.0.0.1 only, so nothing leaves loopback:

- Two RTCPeerConnections in one process, with ``install_aioice()`` called before aiortc is
  imported: the data channel opens and 1,000 messages arrive in order; the ICE connection
  under the offerer's RTCIceTransport is the compat layer's, and the pair it selected is
  Anchor's (``Connection.anchor.selected_pair``), host to host on 127.0.0.1.
- With ``install_aioice(policy="gateway")`` and Anchor's TURN server on loopback (the
  application only names it in RTCConfiguration, as a browser app would): both peers advertise
  no host candidate, nominate no host pair, and select relay to relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from anchor_turn.aio.server import loopback_runner
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

pytestmark = [pytest.mark.peer("aiortc"), pytest.mark.timeout(120)]


async def aiortc_peers(*args: str) -> dict[str, Any]:
    """Run the two aiortc peers in a process of their own; their one JSON line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.aiortc_peers", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-4000:]
    (line,) = out.decode().splitlines()
    result: dict[str, Any] = json.loads(line)
    return result


def test_two_aiortc_peers_on_anchor_open_a_data_channel_and_deliver_1000_in_order() -> None:
    result = asyncio.run(aiortc_peers("--ice", "anchor", "--messages", "1000"))
    assert result["anchor"] is True  # the RTCIceTransport's connection is the compat layer's
    assert result["connection_class"] == "aioice.ice.Connection"  # what aiortc imported
    assert result["messages"] == 1000 and result["in_order"] is True
    for peer in result["peers"]:
        pair = peer["selected_pair"]
        assert pair is not None  # Anchor's agent selected it
        assert pair["local"]["type"] == pair["remote"]["type"] == "host"
        assert pair["local"]["address"][0] == pair["remote"]["address"][0] == LOOPBACK
        assert peer["nominated"], "Anchor's regular nomination nominated the pair"


def test_gateway_policy_through_the_layer_with_turn_on_loopback_is_relay_to_relay() -> None:
    async def main() -> dict[str, Any]:
        port = free_port()
        runner = loopback_runner(port, {"alice": "secret"}, "anchor")
        await runner.start()
        try:
            return await aiortc_peers(
                "--ice", "anchor", "--policy", "gateway", "--messages", "200",
                "--turn", f"{LOOPBACK}:{port}", "--user", "alice:secret",
            )  # fmt: skip
        finally:
            runner.close()

    result = asyncio.run(main())
    assert result["messages"] == 200 and result["in_order"] is True
    for peer in result["peers"]:
        assert "host" not in peer["advertised"]
        assert peer["nominated"] and all("host" not in pair for pair in peer["nominated"])
        pair = peer["selected_pair"]
        assert pair["local"]["type"] == pair["remote"]["type"] == "relay"
