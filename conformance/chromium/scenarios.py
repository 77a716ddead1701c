"""The Chromium scenarios, run inside the loopback-only namespace by :mod:`chromium.inside`.

Each is ``async def scenario(workdir, **params) -> dict`` (JSON-able): it starts what it
needs (a TURN server, Chromium, Anchor's agent), stops each by PID in a ``finally``, and
returns what it observed; the assertions live in ``conformance/test_chromium.py``.

- ``relay(server="anchor"|"coturn")``: two RTCPeerConnections in one page, relay only,
  through ``anchor serve`` (with ``--metrics``, scraped while the connections are up) or
  coturn (``-v``, whose log is read instead); data channel messages both ways; getStats'
  selected pairs.
- ``channels(pairs=10)``: ``pairs`` such relay-only pairs through a default ``anchor serve``,
  all kept open, Chromium's TURN traffic passing through a :class:`~chromium.turn_tap.TurnTap`
  that records every ChannelBind request (its channel number) and response.
- ``ice(anchor_role="controlled"|"controlling", setup=...)``: Chromium against Anchor's
  :class:`~anchor_ice.agent.IceAgent` over :class:`~chromium.agent_udp.AgentEndpoint`.
  Controlled: Chromium offers, Anchor answers with its credentials, its host candidate and a
  fingerprint (DTLS never completes: expected). Controlling: LinkEndpoint offers, Chromium
  answers. Either way it waits for Chromium's ``iceConnectionState`` to be connected, for the
  agent's :class:`~anchor_ice.events.IceConnected`, and, with ``wait_dtls``, for a DTLS
  record on the application path.
- ``aiortc(offerer="chromium"|"aiortc")``: aiortc on Anchor's ICE (``install_aioice()``)
  against a Chromium data channel that echoes; what aiortc received, the pair Anchor's agent
  selected, Chromium's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import IO, Any

from peers import free_port, start_coturn

from anchor_ice.agent import IceAgent
from anchor_ice.candidate import CandidateType
from anchor_ice.events import IceConnected, IceFailed, RemoteCandidateLearned
from anchor_ice.sdp import IceDescription
from chromium.agent_udp import AgentEndpoint, candidate_json
from chromium.browser import Chromium
from chromium.turn_tap import TurnTap

__all__ = ["SCENARIOS", "answer_sdp", "fingerprint", "offer_sdp"]

LOOPBACK = "127.0.0.1"
USER, PASSWORD, REALM = "alice", "secret", "example.org"


def _log(*parts: object) -> None:
    print(f"[{time.monotonic():.3f}]", *parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- TURN servers


class _AnchorServe:
    """``anchor serve`` with TURN and ``--metrics``, stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port("udp")
        self.metrics_port = free_port("tcp")
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.err: IO[str] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        argv = [
            sys.executable, "-m", "anchor_cli", "serve",
            "--listen", f"{LOOPBACK}:{self.port}", "--user", f"{USER}:{PASSWORD}",
            "--realm", REALM, "--allow-loopback-peers",
            "--metrics", f"{LOOPBACK}:{self.metrics_port}",
        ]  # fmt: skip
        self.err = open(self.workdir / "anchor-serve.log", "w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err, text=True
        )
        stdout = self.proc.stdout
        assert stdout is not None
        async with asyncio.timeout(timeout):
            while not any(line.startswith("metrics http ") for line in self.lines):
                line = await asyncio.to_thread(stdout.readline)
                if not line:
                    raise RuntimeError(f"anchor serve exited early ({self.proc.wait()})")
                self.lines.append(line.strip())

    def scrape(self) -> dict[str, float]:
        """The Prometheus text at /metrics as {name{labels}: value}."""
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        if proc.stdout is not None:
            proc.stdout.close()
        if self.err is not None:
            self.err.close()
        return proc.returncode


_COTURN_SUCCESS = re.compile(r"incoming packet (\w+) processed, success")


def _coturn_counts(log: str) -> dict[str, int]:
    """How many requests of each method coturn's ``-v`` log says succeeded."""
    counts: dict[str, int] = {}
    for method in _COTURN_SUCCESS.findall(log):
        counts[method] = counts.get(method, 0) + 1
    return counts


async def _with_chromium(
    workdir: Path, body: Callable[[Chromium], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Start Chromium, open the page, run ``body``, stop Chromium by PID whatever happens."""
    browser = Chromium(workdir / "chromium")
    try:
        await browser.start()
        await browser.open_page()
        _log("chromium up in", browser.started_in, "s, pid", browser.pid)
        result = await body(browser)
        result["chromium_start_s"] = round(browser.started_in or 0.0, 3)
        result["chromium_pid"] = browser.pid
        return result
    finally:
        status = await browser.stop()
        _log("chromium stopped:", status)


# ----------------------------------------------------------------------------- relay


async def relay(workdir: Path, server: str = "anchor", messages: int = 5) -> dict[str, Any]:
    """Two relay-only peer connections through ``server``'s TURN (see the module docstring)."""
    result: dict[str, Any] = {"server": server}
    anchor: _AnchorServe | None = None
    coturn = None
    try:
        if server == "anchor":
            anchor = _AnchorServe(workdir)
            await anchor.start()
            port = anchor.port
            result["serve_lines"] = anchor.lines
            result["metrics_before"] = anchor.scrape()
        else:
            coturn = await asyncio.to_thread(
                start_coturn, workdir / "coturn", tls=False, extra_args=["-v"]
            )
            port = coturn.port
        result["server_port"] = port
        turn = {
            "urls": f"turn:{LOOPBACK}:{port}?transport=udp",
            "username": USER,
            "credential": PASSWORD,
        }

        async def body(browser: Chromium) -> dict[str, Any]:
            assert browser.cdp is not None
            cdp = browser.cdp
            began = time.monotonic()
            pcs: dict[str, Any] = await cdp.evaluate(
                f"anchor.relayPair({_js(turn)}, {messages}, 15000)"
            )
            pcs["connect_s"] = round(time.monotonic() - began, 3)
            # Scrape while both connections (and so their allocations) are alive.
            if anchor is not None:
                pcs["metrics"] = anchor.scrape()
            await cdp.evaluate("anchor.closeAll()")
            # Closing a peer connection releases its allocation (Refresh, LIFETIME 0):
            # give Chromium a moment to send those before it is stopped.
            closed = time.monotonic()
            while time.monotonic() - closed < 3.0:
                if anchor is not None:
                    pcs["metrics_after_close"] = anchor.scrape()
                    if pcs["metrics_after_close"].get("anchor_turn_allocations") == 0:
                        break
                elif coturn is not None and _coturn_counts(coturn.log()).get("REFRESH", 0) >= 2:
                    break
                await asyncio.sleep(0.05)
            pcs["release_s"] = round(time.monotonic() - closed, 3)
            return pcs

        result.update(await _with_chromium(workdir, body))
    finally:
        if anchor is not None:
            result["serve_exit"] = await anchor.stop()
        if coturn is not None:
            coturn.stop()
            result["coturn_counts"] = _coturn_counts(coturn.log())
    return result


# ----------------------------------------------------------------------------- channels


async def channels(workdir: Path, pairs: int = 10, messages: int = 2) -> dict[str, Any]:
    """``pairs`` relay-only pairs of peer connections, one after the other and all kept open,
    through a default ``anchor serve`` reached via a :class:`~chromium.turn_tap.TurnTap`
    that records every ChannelBind request and response on the wire (issue 18)."""
    result: dict[str, Any] = {"pairs": pairs}
    anchor = _AnchorServe(workdir)
    tap: TurnTap | None = None
    try:
        await anchor.start()
        result["serve_lines"] = anchor.lines
        tap = TurnTap((LOOPBACK, anchor.port))
        tap_addr = await tap.start(LOOPBACK)
        turn = {
            "urls": f"turn:{LOOPBACK}:{tap_addr[1]}?transport=udp",
            "username": USER,
            "credential": PASSWORD,
        }

        async def body(browser: Chromium) -> dict[str, Any]:
            assert browser.cdp is not None
            cdp = browser.cdp
            runs = []
            for i in range(pairs):
                run = await cdp.evaluate(f"anchor.relayPair({_js(turn)}, {messages}, 15000, 'p{i}-')")
                runs.append({
                    key: run[key] for key in ("received_a", "received_b", "pair_a", "pair_b")
                })  # fmt: skip
            out: dict[str, Any] = {"runs": runs, "metrics": anchor.scrape()}
            await cdp.evaluate("anchor.closeAll()")
            return out

        result.update(await _with_chromium(workdir, body))
    finally:
        if tap is not None:
            _log("turn tap:", tap.messages, "ChannelBinds:", len(tap.channel_binds))
            result["channel_binds"] = tap.channel_binds
            result["tap_messages"] = tap.messages
            tap.close()
        result["serve_exit"] = await anchor.stop()
    return result


def _js(value: Any) -> str:
    """``value`` as a JavaScript literal."""
    return json.dumps(value)


# ----------------------------------------------------------------------------- ICE


def fingerprint(rng: Callable[[int], bytes] = os.urandom) -> str:
    """A well-formed ``a=fingerprint:sha-256`` value: 32 random bytes in colon-hex
    (RFC 8122 §5). No certificate has it: DTLS cannot complete, which is not tested here."""
    return "sha-256 " + ":".join(f"{b:02X}" for b in rng(32))


def _mid(sdp: str) -> str:
    found = re.search(r"^a=mid:(\S+)", sdp, re.MULTILINE)
    return found.group(1) if found else "0"


def _session(agent: IceAgent, endpoint: AgentEndpoint, setup: str, mid: str) -> str:
    """The SDP of a data-channel-only session with Anchor's ICE attributes (RFC 8839) and a
    fingerprint (RFC 8122); ``setup`` is RFC 4145's actpass / active / passive."""
    candidate = endpoint.host_candidate()
    lines = [
        "v=0",
        f"o=- {int.from_bytes(os.urandom(6), 'big')} 2 IN IP4 {LOOPBACK}",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {mid}",
        f"m=application {candidate.port} UDP/DTLS/SCTP webrtc-datachannel",
        f"c=IN IP4 {candidate.ip}",
        f"a=ice-ufrag:{agent.local_ufrag}",
        f"a=ice-pwd:{agent.local_pwd}",
        f"a=fingerprint:{fingerprint()}",
        f"a=setup:{setup}",
        f"a=mid:{mid}",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        f"a={candidate.to_sdp()}",
        "a=end-of-candidates",
    ]
    return "\r\n".join(lines) + "\r\n"


def answer_sdp(agent: IceAgent, endpoint: AgentEndpoint, offer: str, setup: str) -> str:
    """Anchor's answer to Chromium's offer."""
    return _session(agent, endpoint, setup, _mid(offer))


def offer_sdp(agent: IceAgent, endpoint: AgentEndpoint) -> str:
    """Anchor's offer (``a=setup:actpass``, RFC 5763 §5)."""
    return _session(agent, endpoint, "actpass", "0")


def _dtls(endpoint: AgentEndpoint) -> bool:
    return any(d.data[:1] and 20 <= d.data[0] <= 63 for d in endpoint.app)


async def ice(
    workdir: Path,
    anchor_role: str = "controlled",
    setup: str = "passive",
    wait_dtls: bool = False,
    timeout: float = 10.0,
    end_of_candidates: bool = False,
) -> dict[str, Any]:
    """Chromium against Anchor's ICE agent (see the module docstring). With
    ``end_of_candidates`` the agent is told that Chromium has no more candidates (as a
    trickle application would on Chromium's null candidate) right after its (empty) list."""
    controlling = anchor_role == "controlling"
    agent = IceAgent(controlling=controlling, checking_timeout=timeout * 2)
    endpoint = AgentEndpoint(agent)
    await endpoint.open()
    result: dict[str, Any] = {
        "anchor_role": anchor_role,
        "anchor_local": list(endpoint.local),
        "anchor_ufrag": agent.local_ufrag,
        "anchor_pwd": agent.local_pwd,
    }

    async def body(browser: Chromium) -> dict[str, Any]:
        assert browser.cdp is not None
        cdp = browser.cdp
        out: dict[str, Any] = {}
        began = time.monotonic()
        if controlling:
            local_sdp = offer_sdp(agent, endpoint)
            made = await cdp.evaluate(f"anchor.answerOffer('c', {_js(local_sdp)}, 3000)")
            remote_sdp = made["sdp"]
        else:
            made = await cdp.evaluate("anchor.makeOffer('c', 3000)")
            remote_sdp = made["sdp"]
            local_sdp = answer_sdp(agent, endpoint, remote_sdp, setup)
        out["chromium_gathering_complete"] = made["gathering_complete"]
        remote = IceDescription.parse(remote_sdp)
        out["chromium_candidates"] = [candidate_json(c) for c in remote.candidates]
        agent.set_remote_credentials(remote.ufrag, remote.pwd)
        for candidate in remote.candidates:
            agent.add_remote_candidate(candidate)
        if end_of_candidates:
            agent.add_remote_candidate(None)
        endpoint.start()
        if not controlling:
            await cdp.evaluate(f"anchor.acceptAnswer('c', {_js(local_sdp)})")
        out["local_sdp"] = local_sdp
        out["remote_sdp"] = remote_sdp
        signalled = time.monotonic()
        try:
            reached = await cdp.evaluate(f"anchor.iceConnected('c', {int(timeout * 1000)})")
            out["chromium_connected_ms"] = round((time.monotonic() - signalled) * 1000, 1)
            out["chromium_ice"] = reached["state"]
        except Exception as exc:
            out["chromium_ice_error"] = str(exc)
        await endpoint.wait_for(
            lambda: any(isinstance(e, IceConnected | IceFailed) for _, e in endpoint.events),
            timeout,
        )
        out["agent_connected"] = any(isinstance(e, IceConnected) for _, e in endpoint.events)
        out["agent_connected_ms"] = round((time.monotonic() - signalled) * 1000, 1)
        if wait_dtls:
            out["dtls_seen"] = await endpoint.wait_for(lambda: _dtls(endpoint), timeout)
        else:
            # A little time for Chromium's checks to keep coming (consent, nomination).
            await asyncio.sleep(0.3)
        out["elapsed_ms"] = round((time.monotonic() - began) * 1000, 1)
        out["chromium_report"] = await cdp.evaluate("anchor.report('c')")
        await cdp.evaluate("anchor.closeAll()")
        return out

    try:
        result.update(await _with_chromium(workdir, body))
    finally:
        selected = agent.selected_pair
        result["agent_state"] = agent.state.value
        result["agent_role"] = agent.role.value
        result["agent_dropped"] = agent.dropped
        result["agent_selected"] = (
            {
                "local": candidate_json(selected.local),
                "remote": candidate_json(selected.remote),
            }
            if selected is not None
            else None
        )
        result["agent_remote_candidates"] = [candidate_json(c) for c in agent.remote_candidates]
        result["agent_events"] = endpoint.events_json()
        result["learned_prflx"] = [
            candidate_json(e.candidate)
            for _, e in endpoint.events
            if isinstance(e, RemoteCandidateLearned) and e.candidate.type is CandidateType.PRFLX
        ]
        result["datagrams"] = [d.to_json() for d in endpoint.log]
        result["app"] = [d.to_json() for d in endpoint.app]
        endpoint.close()
    return result


# ----------------------------------------------------------------------------- aiortc


async def aiortc(
    workdir: Path, offerer: str = "chromium", messages: int = 20, timeout: float = 15.0
) -> dict[str, Any]:
    """aiortc on Anchor (``install_aioice()`` with no option, before aiortc is imported)
    against Chromium's RTCDataChannel: ``offerer`` ("chromium" or "aiortc") offers, the other
    answers; aiortc sends ``messages`` messages on the data channel and Chromium echoes each.
    The namespace has only loopback: the layer gathers there (aioice would gather nothing)."""
    from anchor_ice.compat import install_aioice

    install_aioice()
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    opened = asyncio.Event()
    echoes: list[str] = []
    done = asyncio.Event()
    channels: list[Any] = []

    def use(channel: Any) -> None:
        channels.append(channel)

        @channel.on("message")
        def on_message(message: str) -> None:
            echoes.append(message)
            if len(echoes) == messages:
                done.set()

        if channel.readyState == "open":
            opened.set()
        channel.on("open", opened.set)

    async def body(browser: Chromium) -> dict[str, Any]:
        assert browser.cdp is not None
        cdp = browser.cdp
        out: dict[str, Any] = {"offerer": offerer}
        began = time.monotonic()
        if offerer == "aiortc":
            use(pc.createDataChannel("anchor"))
            await pc.setLocalDescription(await pc.createOffer())
            made = await cdp.evaluate(
                f"anchor.answerEcho('c', {_js(pc.localDescription.sdp)}, 3000)"
            )
            await pc.setRemoteDescription(RTCSessionDescription(made["sdp"], "answer"))
        else:
            pc.on("datachannel", use)
            made = await cdp.evaluate("anchor.offerEcho('c', 3000)")
            await pc.setRemoteDescription(RTCSessionDescription(made["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await cdp.evaluate(f"anchor.acceptAnswer('c', {_js(pc.localDescription.sdp)})")
        out["chromium_sdp"] = made["sdp"]
        out["aiortc_sdp"] = pc.localDescription.sdp
        await asyncio.wait_for(opened.wait(), timeout)
        out["open_ms"] = round((time.monotonic() - began) * 1000, 1)
        for i in range(messages):
            channels[0].send(f"message {i}")
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            out["echo_timeout"] = True
        out["echoes"] = echoes
        out["chromium_report"] = await cdp.evaluate("anchor.report('c')")
        await cdp.evaluate("anchor.closeAll()")
        return out

    result: dict[str, Any] = {}
    try:
        result.update(await _with_chromium(workdir, body))
    finally:
        sctp = pc.sctp
        connection = sctp.transport.transport._connection if sctp is not None else None
        anchor = getattr(connection, "anchor", None)
        selected = anchor.selected_pair if anchor is not None else None
        result["layer"] = anchor is not None
        result["aiortc_role"] = (
            None if connection is None
            else "controlling" if connection.ice_controlling else "controlled"
        )  # fmt: skip
        result["anchor_selected"] = (
            {"local": candidate_json(selected.local), "remote": candidate_json(selected.remote)}
            if selected is not None
            else None
        )
        await pc.close()
    return result


SCENARIOS: dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]] = {
    "relay": relay,
    "channels": channels,
    "ice": ice,
    "aiortc": aiortc,
}
"""Scenario name -> coroutine function."""
