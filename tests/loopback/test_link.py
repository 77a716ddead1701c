"""The ephemeral link: its sans-I/O state machine, the signalling, and the asyncio endpoint
(:class:`anchor_link.aio.endpoint.LinkEndpoint`) on loopback; ``anchor demo --json`` and ``anchor pipe``.

What this proves:

- :class:`LinkMachine` (fake clock, channels joined in memory): formed -> open -> idle at
  exactly ``idle_timeout`` after the last message -> close handshake -> draining for three
  RTOs -> dissolved on both sides ("idle" here, "closed by peer" there); a FIN retransmitted
  while draining is acknowledged again; the form and close deadlines; no send unless open.
- Signalling: the in-process hub and the WebSocket rendezvous forward descriptions with the
  sender stamped by the signalling, refuse a taken name, and report an unreachable peer.
- Two :class:`LinkEndpoint` endpoints through Anchor's TURN server (in this process, loopback peers
  allowed) with the gateway policy: the link forms on the first send, its selected pair is
  relay/relay (on loopback every direct pair is a host pair), several messages (one of 60 KiB,
  one of 64 KiB) arrive intact and in order both ways on the one link; after the idle timeout
  it dissolves, and then this process has exactly the socket file descriptors and the asyncio
  tasks it had before the first send (counted: ``/proc/self/fd`` entries ``socket:[...]``,
  ``asyncio.all_tasks()``), the TURN server has no allocation (``allocation_count()``, and its
  deletions count the two Refresh LIFETIME 0); the next send forms a new link, which dissolves
  the same way. With the standard policy the link is a host pair, for contrast.
- Crossing first sends form one link; a peer missing from the signalling fails the send fast.
- ``anchor demo --json`` (a subprocess) reports a non-host pair, lost 0, dissolved true,
  allocations_left 0, sockets_left 0; ``anchor pipe`` carries 200 kB through
  ``anchor serve --signal``; into a stdout nobody reads for a while it holds the sender back
  (flow control) over one healthy link, in bounded memory, dropping nothing beyond its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from anchor_ice.aio.gather import TurnServerConfig
from anchor_ice.candidate import Candidate, CandidateType
from anchor_ice.events import PairInfo
from anchor_ice.nominator import GatewayNominator
from anchor_link.aio.endpoint import HISTORY_LIMIT, LinkEndpoint, LinkFormationFailed
from anchor_link.aio.signal import (
    UNREACHABLE,
    InProcessSignalling,
    RendezvousServer,
    SignallingError,
    WebSocketSignalling,
)
from anchor_link.identity import Identity
from anchor_link.reliable import ReliableChannel
from anchor_link.state import (
    LinkClosed,
    LinkDissolved,
    LinkFailed,
    LinkFormed,
    LinkMachine,
    LinkMessage,
    LinkState,
)
from anchor_turn.aio.server import loopback_runner
from anchor_turn.server import TurnServer
from tests.helpers import ANCHOR, anchor_json, anchor_serve, free_port

LOOPBACK = "127.0.0.1"
IDLE = 0.5
T = TypeVar("T")

pytestmark = pytest.mark.timeout(90)


def run(coro: Awaitable[T], timeout: float = 45.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def socket_fds() -> set[int]:
    """File descriptors of this process that are sockets (``/proc/self/fd``)."""
    out = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}").startswith("socket:"):
                out.add(int(entry))
        except OSError:
            continue
    return out


def other_tasks() -> set[asyncio.Task[Any]]:
    """asyncio tasks alive now, the caller's own excluded."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


# --------------------------------------------------------------------------- sans-I/O machine


def _pair() -> PairInfo:
    local = Candidate("1", 1, "udp", 16777215, "192.0.2.1", 40000, CandidateType.RELAY,
                      "198.51.100.1", 5000)  # fmt: skip
    remote = Candidate("2", 1, "udp", 16777215, "192.0.2.1", 40002, CandidateType.RELAY,
                       "198.51.100.2", 6000)  # fmt: skip
    return PairInfo(1, local, remote, local.address, 1)


def _transfer(src: LinkMachine, dst: LinkMachine, now: float) -> int:
    frames = src.datagrams_to_send(now)
    for frame in frames:
        dst.receive_datagram(frame, now)
    return len(frames)


def _events(machine: LinkMachine) -> list[Any]:
    out = []
    while (event := machine.next_event()) is not None:
        out.append(event)
    return out


def _formed_pair(now: float, idle: float = 1.0) -> tuple[LinkMachine, LinkMachine]:
    a = LinkMachine("b", offerer=True, now=0.0, form_timeout=10, close_timeout=3)
    b = LinkMachine("a", offerer=False, now=0.1, form_timeout=10, close_timeout=3)
    for machine in (a, b):
        channel = ReliableChannel(idle_timeout=idle, now=now)
        machine.formed(_pair(), channel, now, sealed=False)
    return a, b


def test_machine_forms_carries_goes_idle_and_dissolves_on_both_sides() -> None:
    a, b = _formed_pair(now=0.25)
    formed = _events(a)
    assert formed == [
        LinkFormed("b", CandidateType.RELAY, ("192.0.2.1", 40000), CandidateType.RELAY,
                   ("192.0.2.1", 40002), formed_ms=250.0, offerer=True, sealed=False)
    ]  # fmt: skip
    assert a.state is LinkState.OPEN and b.state is LinkState.OPEN
    _events(b)
    a.send(b"hello", 1.0)
    a.send(bytes(5000), 1.0)
    _transfer(a, b, 1.0)
    _transfer(b, a, 1.0)  # the ACK: not activity
    assert [e.data for e in _events(b) if isinstance(e, LinkMessage)] == [b"hello", bytes(5000)]
    assert a.next_timer() == 2.0 and b.next_timer() == 2.0  # idle: exactly 1 s after the data
    a.handle_timer(1.999)
    assert a.state is LinkState.OPEN
    a.handle_timer(2.0)
    assert a.state is LinkState.CLOSING and b.state is LinkState.OPEN
    _transfer(a, b, 2.01)  # a's FIN
    assert b.state is LinkState.CLOSING  # the peer's FIN closes this side too
    _transfer(b, a, 2.02)  # ACK + b's FIN: a's handshake is done
    _transfer(a, b, 2.03)  # ACK of b's FIN: b's too
    assert a.state is LinkState.DRAINING and b.state is LinkState.DRAINING
    assert a.channel is not None and b.channel is not None
    rto_a, rto_b = a.channel.stats.rto, b.channel.stats.rto
    a_drained = 2.02 + max(3 * rto_a, 1.0 + rto_a)  # RFC 9000 §10.2, and RTO_INITIAL + RTO
    b_drained = 2.03 + max(3 * rto_b, 1.0 + rto_b)
    assert a.next_timer() == pytest.approx(a_drained)
    assert not [e for e in _events(a) if isinstance(e, LinkDissolved)]
    a.handle_timer(a_drained - 0.001)
    assert a.state is LinkState.DRAINING
    a.handle_timer(a_drained)
    b.handle_timer(b_drained)
    assert a.final and b.final
    (da,) = [e for e in _events(a) if isinstance(e, LinkDissolved)]
    (db,) = [e for e in _events(b) if isinstance(e, LinkDissolved)]
    assert (da.reason, da.clean, da.messages_sent, da.bytes_sent) == ("idle", True, 2, 5005)
    assert (db.reason, db.clean, db.messages_received) == ("closed by peer", True, 2)
    assert da.open_seconds == pytest.approx(a_drained - 0.25)
    assert a.next_timer() is None
    with pytest.raises(LinkClosed):
        a.send(b"late", 3.0)


def test_machine_draining_acknowledges_a_retransmitted_fin_after_a_lost_last_ack() -> None:
    a, b = _formed_pair(now=0.0, idle=1.0)
    a.send(b"x", 0.5)
    _transfer(a, b, 0.5)
    _transfer(b, a, 0.5)
    a.handle_timer(1.5)  # a idle: FIN
    _transfer(a, b, 1.5)  # b: ACK + its FIN
    _transfer(b, a, 1.5)
    assert a.state is LinkState.DRAINING
    assert a.datagrams_to_send(1.5)  # the last ACK ... lost
    assert b.state is LinkState.CLOSING
    b.handle_timer(1.5)  # b's own idle deadline: ignored, it is closing already
    retransmit = 2.5  # b's FIN went out at 1.5; b never had an RTT sample: RTO_INITIAL 1 s
    assert b.next_timer() == retransmit
    assert a.channel is not None
    assert a.next_timer() == pytest.approx(1.5 + 1.0 + a.channel.stats.rto)  # RTO_INITIAL + RTO
    b.handle_timer(retransmit)  # b's FIN again
    _transfer(b, a, retransmit)  # a, still draining, acknowledges it again
    _transfer(a, b, retransmit)
    assert b.state is LinkState.DRAINING
    for machine in (a, b):
        deadline = machine.next_timer()
        assert deadline is not None
        machine.handle_timer(deadline)
        (event,) = [e for e in _events(machine) if isinstance(e, LinkDissolved)]
        assert event.clean


def test_machine_form_timeout_and_close_timeout() -> None:
    forming = LinkMachine("p", offerer=True, now=10.0, form_timeout=5.0)
    assert forming.next_timer() == 15.0
    with pytest.raises(LinkClosed):
        forming.send(b"x", 11.0)
    forming.handle_timer(14.999)
    assert forming.state is LinkState.FORMING
    forming.handle_timer(15.0)
    assert forming.state is LinkState.FAILED
    assert _events(forming) == [LinkFailed("p", "timed out while forming")]

    a, _silent = _formed_pair(now=0.0, idle=1.0)
    _events(a)
    a.handle_timer(1.0)  # idle: FIN sent, the peer never answers
    assert a.state is LinkState.CLOSING
    assert a.datagrams_to_send(1.0)
    deadline = a.next_timer()
    assert deadline is not None and deadline <= 4.0  # close_timeout 3 s (or an RTO before it)
    a.handle_timer(4.0)
    assert a.final
    (event,) = _events(a)
    assert isinstance(event, LinkDissolved) and event.reason == "idle" and not event.clean


def test_machine_transport_loss_and_abort() -> None:
    a, b = _formed_pair(now=0.0)
    a.fail("consent lost", 0.5)
    assert a.state is LinkState.DISSOLVED
    assert [e.reason for e in _events(a) if isinstance(e, LinkDissolved)] == [
        "transport lost: consent lost"
    ]
    b.abort("replaced by a new offer from the peer", 0.5)
    assert [e.reason for e in _events(b) if isinstance(e, LinkDissolved)] == [
        "replaced by a new offer from the peer"
    ]
    forming = LinkMachine("p", offerer=False, now=0.0)
    forming.close(0.1)
    assert _events(forming) == [LinkFailed("p", "closed before it formed")]


# --------------------------------------------------------------------------- signalling


def test_in_process_signalling_stamps_senders_and_reports_unreachable() -> None:
    async def main() -> None:
        hub = InProcessSignalling()
        a, b = await hub.open("a"), await hub.open("b")
        with pytest.raises(SignallingError):
            await hub.open("a")
        await a.publish("b", {"type": "offer", "x": [1, 2]})
        envelope = await b.receive()
        assert (envelope.sender, envelope.body) == ("a", {"type": "offer", "x": [1, 2]})
        await a.publish("nobody", {"type": "offer"})
        envelope = await a.receive()
        assert (envelope.sender, envelope.body) == ("nobody", {"type": UNREACHABLE})
        await b.close()
        assert hub.names() == ["a"]
        await a.close()

    run(main())


@asynccontextmanager
async def rendezvous() -> AsyncIterator[RendezvousServer]:
    """A WebSocket rendezvous on a free loopback port, closed (and waited for) on exit."""
    server = RendezvousServer(LOOPBACK, 0)
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


def test_websocket_rendezvous_forwards_refuses_taken_names_and_reports_unreachable() -> None:
    async def main() -> None:
        async with rendezvous() as server:
            signalling = WebSocketSignalling(server.url)
            a, b = await signalling.open("a"), await signalling.open("b")
            with pytest.raises(SignallingError, match="taken"):
                await signalling.open("a")
            await a.publish("b", {"type": "offer", "n": 1})
            envelope = await asyncio.wait_for(b.receive(), 5)
            assert (envelope.sender, envelope.body) == ("a", {"type": "offer", "n": 1})
            await b.publish("ghost", {"type": "answer"})
            envelope = await asyncio.wait_for(b.receive(), 5)
            assert (envelope.sender, envelope.body) == ("ghost", {"type": UNREACHABLE})
            await a.close()
            await b.close()
            for _ in range(50):
                if not server.names():
                    break
                await asyncio.sleep(0.02)
            assert server.names() == []
        assert server.open_sockets() == 0
        with pytest.raises(SignallingError):
            await WebSocketSignalling(server.url, open_timeout=2).open("late")

    run(main())


# --------------------------------------------------------------------------- the endpoint


@asynccontextmanager
async def turn_server() -> AsyncIterator[tuple[TurnServer, TurnServerConfig]]:
    """Anchor's TURN server in this loop on loopback (alice:secret, loopback peers allowed)."""
    port = free_port("both")
    runner = loopback_runner(port, {"alice": "secret"}, "example.org", LOOPBACK)
    core = runner.core
    await runner.start()
    try:
        yield core, TurnServerConfig((LOOPBACK, port), "alice", "secret")
    finally:
        runner.close()
        await runner.wait_closed()


def endpoints(
    turn: TurnServerConfig, policy: str = "gateway", **options: Any
) -> tuple[LinkEndpoint, LinkEndpoint]:
    hub = InProcessSignalling()
    kwargs: dict[str, Any] = {
        "stun": turn.address, "turn": [turn], "policy": policy, "idle_timeout": IDLE,
        "host_ips": [LOOPBACK], **options,
    }  # fmt: skip
    if policy == "gateway":
        kwargs.setdefault("nominator", GatewayNominator(grace=0.3))
    return LinkEndpoint("a", hub, **kwargs), LinkEndpoint("b", hub, **kwargs)


MESSAGES = [b"first", os.urandom(1200), os.urandom(60 * 1024), b"", os.urandom(65536), b"last"]


async def exchange_and_dissolve(
    a: LinkEndpoint, b: LinkEndpoint, allocations: Callable[[], int | Awaitable[int]], round_: int
) -> LinkFormed:
    """One link's life: form on a's first send, data both ways, dissolution; returns a's
    LinkFormed. ``allocations()`` is the TURN server's allocation count (or a coroutine that
    returns it)."""
    fds_before, tasks_before = socket_fds(), other_tasks()
    started = time.monotonic()
    for message in MESSAGES:
        await a.send("b", message)
    for message in MESSAGES:
        assert await asyncio.wait_for(b.recv(), 10) == ("a", message)
    last_data = time.monotonic()  # every later activity (b's send, a's receipt) is after it
    await b.send("a", b"reply")
    assert await asyncio.wait_for(a.recv(), 10) == ("b", b"reply")
    assert a.links_formed == b.links_formed == round_  # one link carried everything
    formed = await a.wait_for(LinkFormed, "b", count=round_)
    assert formed.offerer and formed.formed_ms < (last_data - started) * 1000
    answered = await b.wait_for(LinkFormed, "a", count=round_)
    assert not answered.offerer and formed.sealed and answered.sealed
    assert a.link_state("b") is LinkState.OPEN
    assert len(socket_fds()) > len(fds_before) and a.open_sockets() > 0

    dissolved = await a.wait_for(LinkDissolved, "b", count=round_, timeout=IDLE + 10)
    other = await b.wait_for(LinkDissolved, "a", count=round_, timeout=10)
    assert time.monotonic() - last_data >= IDLE  # not before the idle timeout
    assert {dissolved.reason, other.reason} <= {"idle", "closed by peer"}
    assert dissolved.clean and other.clean
    assert dissolved.messages_sent == len(MESSAGES) and other.messages_received == len(MESSAGES)
    await asyncio.sleep(0)  # the driver tasks finish the step that reported the event
    # Nothing of the link is left: sockets, tasks, allocations.
    assert socket_fds() == fds_before
    assert other_tasks() == tasks_before
    left = allocations()
    assert (await left if inspect.isawaitable(left) else left) == 0
    assert a.active_peers() == [] and b.active_peers() == []
    assert a.open_sockets() == 0 and a.relays() == 0
    return formed


def test_gateway_link_forms_on_send_is_relayed_dissolves_when_idle_and_reforms() -> None:
    async def main() -> None:
        async with turn_server() as (core, turn):
            a, b = endpoints(turn)
            await a.start()
            await b.start()
            try:
                assert a.active_peers() == [] and core.allocation_count() == 0
                for round_ in (1, 2):
                    formed = await exchange_and_dissolve(a, b, core.allocation_count, round_)
                    assert formed.local_type is CandidateType.RELAY
                    assert formed.remote_type is CandidateType.RELAY
                    assert formed.relay_transport == "udp"  # how the relay is reached
                # Two links, two allocations each released with Refresh LIFETIME 0.
                assert core.stats.allocations_created == 4
                assert core.stats.allocations_deleted == 4
                assert core.stats.allocations_expired == 0
            finally:
                await a.close()
                await b.close()
            assert not [e for e in a.history + b.history if isinstance(e, LinkFailed)]

    run(main())


def test_standard_policy_links_on_a_host_pair_and_dissolves_the_same_way() -> None:
    async def main() -> None:
        async with turn_server() as (core, turn):
            a, b = endpoints(turn, policy="standard")
            await a.start()
            await b.start()
            try:
                formed = await exchange_and_dissolve(a, b, core.allocation_count, 1)
                assert formed.local_type is CandidateType.HOST
                assert formed.remote_type is CandidateType.HOST
                assert formed.relay_transport is None
                assert core.stats.allocations_deleted == 2  # gathered, unused, released
            finally:
                await a.close()
                await b.close()

    run(main())


def test_crossing_first_sends_form_one_link() -> None:
    async def main() -> None:
        async with turn_server() as (_core, turn):
            a, b = endpoints(turn)
            await a.start()
            await b.start()
            try:
                await asyncio.gather(a.send("b", b"from a"), b.send("a", b"from b"))
                assert await asyncio.wait_for(b.recv(), 10) == ("a", b"from a")
                assert await asyncio.wait_for(a.recv(), 10) == ("b", b"from b")
                assert a.links_formed == b.links_formed == 1
                # "a" sorts first: its offer won, b abandoned its own.
                assert (await a.wait_for(LinkFormed, "b")).offerer
                assert not (await b.wait_for(LinkFormed, "a")).offerer
            finally:
                await a.close()
                await b.close()

    run(main())


def test_a_reader_that_falls_behind_makes_the_sender_wait_without_retransmissions() -> None:
    """Flow control through the endpoint: messages read with recv() hold their frames of the
    channel's receive window until read, so a receiver that does not read stops the sender
    at its window (at most 256 frames wait for it, nothing dropped or retransmitted for lack
    of buffer, and the idle timeout does not dissolve a link whose peer is only held back);
    once it reads, everything arrives, in order."""

    async def main() -> None:
        async with turn_server() as (_core, turn):
            a, b = endpoints(turn, policy="standard")
            await a.start()
            await b.start()
            messages = [i.to_bytes(4, "big") * 250 for i in range(600)]  # one frame each

            async def send_all() -> None:
                for m in messages:
                    await a.send("b", m)

            sender = asyncio.get_running_loop().create_task(send_all())
            try:
                await asyncio.sleep(3 * IDLE + 1.0)  # b does not read
                assert not sender.done()  # held back by b's window
                channel_a = a._links["b"].machine.channel
                assert channel_a is not None
                channel_b = b._links["a"].machine.channel
                assert channel_b is not None
                s = channel_a.stats
                # Nothing dropped for lack of buffer, nothing found lost; a retransmission
                # could only be a tail-loss probe on a loaded machine (PTO is 2 SRTT, about
                # 2 ms here), which b counts as a duplicate.
                assert channel_b.stats.dropped_window == 0 and s.fast_retransmits == 0
                assert s.timeouts == 0 and s.retransmissions == s.probes
                assert s.peer_window == 0
                assert 0 < len(b._messages) <= 256  # the receive window
                assert a.link_state("b") is LinkState.OPEN
                got = [(await asyncio.wait_for(b.recv(), 10))[1] for _ in messages]
                assert got == messages
                await asyncio.wait_for(sender, 10)
                s = channel_a.stats
                assert channel_b.stats.dropped_window == 0 and s.fast_retransmits == 0
                assert s.timeouts == 0 and s.retransmissions == s.probes
                assert a.links_formed == b.links_formed == 1
            finally:
                sender.cancel()
                await a.close()
                await b.close()

    run(main())


def test_history_is_bounded_and_wait_for_can_wait_for_the_next_event() -> None:
    """A long-running endpoint keeps the latest HISTORY_LIMIT life-cycle events, not one per
    link for ever; ``after=events_recorded`` waits for the next one."""

    async def main() -> None:
        endpoint = LinkEndpoint("x", InProcessSignalling())
        for i in range(HISTORY_LIMIT + 10):
            endpoint._record(LinkFailed(f"p{i}", "test"))
        assert len(endpoint.history) == HISTORY_LIMIT
        assert endpoint.events_recorded == HISTORY_LIMIT + 10
        assert endpoint.history[0] == LinkFailed("p10", "test")
        assert (await endpoint.wait_for(LinkFailed, count=2)).peer == "p11"
        waiter = asyncio.ensure_future(
            endpoint.wait_for(LinkFailed, after=endpoint.events_recorded, timeout=5)
        )
        await asyncio.sleep(0)
        assert not waiter.done()
        endpoint._record(LinkFailed("next", "test"))
        assert (await waiter).peer == "next"

    run(main())


def test_send_to_a_peer_missing_from_the_signalling_fails_fast() -> None:
    async def main() -> None:
        async with turn_server() as (core, turn):
            a, _b = endpoints(turn)
            fds_before = socket_fds()
            started = time.monotonic()
            with pytest.raises(LinkFormationFailed, match="not on the signalling"):
                await a.send("b", b"anyone?")
            assert time.monotonic() - started < 5
            failed = await a.wait_for(LinkFailed, "b")
            assert "not on the signalling" in failed.reason
            assert a.active_peers() == [] and core.allocation_count() == 0
            assert socket_fds() == fds_before
            await a.close()
            with pytest.raises(LinkClosed):
                await a.send("b", b"closed")

    run(main())


def test_a_peer_that_cannot_answer_rejects_the_offer_at_once() -> None:
    async def main() -> None:
        async with turn_server() as (core, turn):
            hub = InProcessSignalling()
            options: dict[str, Any] = {"turn": [turn], "policy": "relay", "host_ips": [LOOPBACK]}
            a = LinkEndpoint("a", hub, seal=True, **options)
            b = LinkEndpoint("b", hub, seal=False, **options)
            await b.start()
            started = time.monotonic()
            with pytest.raises(LinkFormationFailed, match=r"refused the offer: the peer seals"):
                await a.send("b", b"sealed?")
            assert time.monotonic() - started < 5
            await b.wait_for(LinkFailed, "a", timeout=5)
            assert a.active_peers() == [] and b.active_peers() == []
            assert core.allocation_count() == 0
            await a.close()
            await b.close()

    run(main())


# --------------------------------------------------------------------------- command line


def test_anchor_demo_json_reports_a_relayed_link_that_left_nothing() -> None:
    started = time.monotonic()
    out = anchor_json("demo", timeout=90)
    took = time.monotonic() - started
    pair = out["selected_pair"]
    assert pair["local"]["type"] != "host" and pair["remote"]["type"] != "host"
    assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay")
    assert out["formed_ms"] > 0 and out["messages"] > 0 and out["bytes"] > 60 * 1024
    assert out["lost"] == 0
    assert out["dissolved"] is True
    assert out["allocations_left"] == 0 and out["allocations_released"] == 2
    assert out["sockets_left"] == 0 and out["tasks_left"] == 0
    assert took < 60


@contextlib.contextmanager
def pipe_server() -> Iterator[list[str]]:
    """``anchor serve`` with TURN and the rendezvous on loopback; yields the ``anchor pipe``
    arguments both sides share (idle 0.5 s)."""
    port, signal_port = free_port("both"), free_port("both")
    with anchor_serve(
        "--listen", f"{LOOPBACK}:{port}", "--user", "alice:secret", "--allow-loopback-peers",
        "--signal", f"{LOOPBACK}:{signal_port}", expect=2,
    ) as lines:  # fmt: skip
        assert f"listening ws {LOOPBACK}:{signal_port}" in lines
        yield [
            "--signal", f"ws://{LOOPBACK}:{signal_port}", "--turn", f"{LOOPBACK}:{port}",
            "--user", "alice:secret", "--host-ip", LOOPBACK, "--idle", "0.5",
        ]  # fmt: skip


def test_anchor_pipe_carries_stdin_through_anchor_serve_signal(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    (tmp_path / "in").write_bytes(data)
    with pipe_server() as common:
        with open(tmp_path / "out", "wb") as out:
            receiver = subprocess.Popen(
                [*ANCHOR, "pipe", "--name", "B", "--peer", "A", "-v", *common],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                time.sleep(1.0)  # let B subscribe before A's offer
                with open(tmp_path / "in", "rb") as stdin:
                    sender = subprocess.run(
                        [*ANCHOR, "pipe", "--name", "A", "--peer", "B", "-v", *common],
                        stdin=stdin, capture_output=True, timeout=60, check=False,
                    )  # fmt: skip
                _, err = receiver.communicate(timeout=30)
            finally:
                if receiver.poll() is None:
                    receiver.kill()
                    receiver.wait()
        assert sender.returncode == 0, sender.stderr
        assert receiver.returncode == 0, err
        assert b"link formed with B" in sender.stderr and b"(relay over udp)" in sender.stderr
        assert b"dissolved" in err
    assert (tmp_path / "out").read_bytes() == data


def test_a_link_that_breaks_on_one_side_says_bye_and_the_next_send_forms_a_new_one() -> None:
    """A link whose transport breaks on one side only (here: a's connection closed under it,
    as a NAT that forgot the mapping does to consent) tells the peer with a ``bye``: b's end
    dissolves at once instead of when its own consent runs out (30 s), and the next send
    forms a new link."""

    async def main() -> None:
        async with turn_server() as (_core, turn):
            a, b = endpoints(turn, policy="standard", idle_timeout=60.0)
            await a.start()
            await b.start()
            try:
                await a.send("b", b"one")
                assert await asyncio.wait_for(b.recv(), 10) == ("a", b"one")
                conn = a._links["b"].conn  # the link's ICE connection: break it
                other = b._links["a"].conn
                assert conn is not None and other is not None
                # The descriptions carried both Ta proposals ("pacing"): checks at 5 ms.
                assert conn.remote_ta == other.remote_ta == 0.005
                await conn.close()
                broken = await a.wait_for(LinkDissolved, "b", timeout=10)
                assert broken.reason.startswith("transport lost") and not broken.clean
                told = await b.wait_for(LinkDissolved, "a", timeout=10)  # consent: 30 s
                assert told.reason == f"closed by peer: {broken.reason}"
                assert a.active_peers() == [] and b.active_peers() == []
                await a.send("b", b"two")
                assert await asyncio.wait_for(b.recv(), 10) == ("a", b"two")
                assert a.links_formed == b.links_formed == 2
            finally:
                await a.close()
                await b.close()

    run(main())


def test_websocket_mailbox_comes_back_after_its_connection_dies_and_keeps_its_name() -> None:
    async def main() -> None:
        async with rendezvous() as server:
            signalling = WebSocketSignalling(server.url)
            a, b = await signalling.open("a"), await signalling.open("b")
            # a's connection dies under it (what a NAT that drops the mapping does).
            transport = a._ws.transport  # type: ignore[attr-defined]
            transport.abort()
            receiving = asyncio.ensure_future(a.receive())  # notices, reconnects, waits
            for _ in range(500):
                if a.reconnects:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
            await a.publish("b", {"type": "offer", "n": 1})
            envelope = await asyncio.wait_for(b.receive(), 10)
            assert (envelope.sender, envelope.body) == ("a", {"type": "offer", "n": 1})
            assert a.reconnects == 1  # type: ignore[attr-defined]
            assert sorted(server.names()) == ["a", "b"]
            await b.publish("a", {"type": "answer"})
            envelope = await asyncio.wait_for(receiving, 10)
            assert (envelope.sender, envelope.body) == ("b", {"type": "answer"})
            # The name is still a's: no other key gets it, however quickly it asks.
            with pytest.raises(SignallingError, match="taken"):
                await signalling.open("a")
            with pytest.raises(SignallingError, match="taken"):
                await signalling._connect("a", Identity.generate())
            assert server.holder("a") == a._identity.public_text  # type: ignore[attr-defined]
            # a's key takes the name over from a live connection by proving itself (on
            # loopback the server saw the reset above, so this is the first takeover).
            ws = await signalling._connect("a", a._identity)  # type: ignore[attr-defined]
            assert server.resumed == 1
            await ws.close()
            await a.close()
            await b.close()

    run(main())


PIPE_DISSOLVED = re.compile(
    rb"link with \w+ dissolved \(([^)]*)\): (\d+) frames retransmitted, (\d+) dropped beyond "
    rb"the receive window"
)
"""``anchor pipe -v``'s line when a link dissolves: reason, frames retransmitted, frames
dropped beyond the receive window."""


def _rss_bytes(pid: int) -> int:
    """A process's resident set size (``VmRSS`` in ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_anchor_pipe_keeps_its_link_healthy_while_nobody_reads_its_stdout(tmp_path: Path) -> None:
    """The receiver's stdout is a pipe nobody reads for a while (12 idle timeouts): 1 MB
    cannot fit in it, nor in the receiver's window, so the sender waits for the reader (flow
    control). Meanwhile the receiver's event loop keeps answering (a blocking write would
    stop it: no ACKs, the sender's link would end "peer unreachable"), and neither side's
    idle timeout dissolves a link whose sender is only held back. Then everything is read,
    whole, over the one link, which ends idle, cleanly."""
    data = os.urandom(1_000_000)
    (tmp_path / "in").write_bytes(data)
    with pipe_server() as common:
        receiver = subprocess.Popen(
            [*ANCHOR, "pipe", "--name", "B", "--peer", "A", "-v", *common],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        sender: subprocess.Popen[bytes] | None = None
        try:
            time.sleep(1.0)  # let B subscribe before A's offer
            with open(tmp_path / "in", "rb") as stdin:
                sender = subprocess.Popen(
                    [*ANCHOR, "pipe", "--name", "A", "--peer", "B", "-v", *common],
                    stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
            time.sleep(12 * 0.5)  # nobody reads B's stdout
            assert sender.poll() is None and receiver.poll() is None  # A waits for the reader
            out, err = receiver.communicate(timeout=60)
            _, sender_err = sender.communicate(timeout=30)
        finally:
            for process in (receiver, sender):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
    assert sender.returncode == 0, sender_err
    assert receiver.returncode == 0, err
    assert out == data
    # One link all along, which ended idle (not "peer unreachable", not a new link formed).
    assert sender_err.count(b"link formed with B") == 1, sender_err
    assert [m[1] for m in PIPE_DISSOLVED.finditer(sender_err)] == [b"idle"], sender_err


def test_anchor_pipe_into_a_slow_stdout_holds_the_sender_back_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """Issue 17 build item 2, must-show 3: 64 MiB piped into a receiver whose stdout nobody
    reads for 8 s. The receiver takes a message off the link only once stdout has taken the
    one before, and the channel's receive window holds the rest: the sender waits (it is
    still running when the reading starts), the receiver's memory stays far below the data
    (it grows by less than a quarter of it, where taking everything in would cost all of
    it), and no frame is dropped beyond the receive window (so none is retransmitted for
    lack of buffer). Then everything is read, identical, and both sides exit 0."""
    size = 64 << 20
    data = os.urandom(size)
    (tmp_path / "in").write_bytes(data)
    with pipe_server() as common:
        args = [*common, "--policy", "standard", "-v"]  # a host pair: no relay to load the CPU
        receiver = subprocess.Popen(
            [*ANCHOR, "pipe", "--name", "B", "--peer", "A", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        sender: subprocess.Popen[bytes] | None = None
        try:
            time.sleep(1.0)  # let B subscribe before A's offer
            assert receiver.poll() is None
            at_start = _rss_bytes(receiver.pid)
            with open(tmp_path / "in", "rb") as stdin:
                sender = subprocess.Popen(
                    [*ANCHOR, "pipe", "--name", "A", "--peer", "B", *args],
                    stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
            peak = at_start
            hold_until = time.monotonic() + 8.0  # nobody reads B's stdout meanwhile
            while time.monotonic() < hold_until:
                peak = max(peak, _rss_bytes(receiver.pid))
                time.sleep(0.05)
            growth = peak - at_start
            assert growth < size // 4, f"receiver RSS grew by {growth / 2**20:.1f} MiB, held"
            assert sender.poll() is None, "the sender finished although nobody read"
            assert receiver.poll() is None
            out, err = receiver.communicate(timeout=300)
            _, sender_err = sender.communicate(timeout=60)
        finally:
            for process in (receiver, sender):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
    assert sender.returncode == 0, sender_err
    assert receiver.returncode == 0, err
    assert len(out) == size and out == data
    received = [(m[1], int(m[2]), int(m[3])) for m in PIPE_DISSOLVED.finditer(err)]
    assert len(received) == 1, err
    assert received[0][2] == 0, f"receiver dropped frames beyond its window: {err!r}"


def test_rendezvous_binds_a_name_to_its_key_and_only_that_key_takes_it_back() -> None:
    """A holder whose close never reached the server (its NAT forgot the mapping, its FIN was
    lost) keeps its name against everyone else, deaf or not (issue 16: no ping takeover); the
    same key, proven again on a new connection, takes it back at once."""

    async def main() -> None:
        async with rendezvous() as server:
            signalling = WebSocketSignalling(server.url, reconnect_timeout=0.1)
            holder_key = Identity.generate()
            gone = await signalling.open("gone", holder_key)
            gone._ws.transport.pause_reading()  # type: ignore[attr-defined]  # deaf from now on
            with pytest.raises(SignallingError, match="taken"):
                await signalling.open("gone", Identity.generate())  # another key: never
            newcomer = await signalling.open("gone", holder_key)  # its own key: at once
            assert server.resumed == 1 and server.holder("gone") == holder_key.public_text
            other = await signalling.open("other")
            await other.publish("gone", {"type": "offer"})
            envelope = await asyncio.wait_for(newcomer.receive(), 5)
            assert (envelope.sender, envelope.body) == ("other", {"type": "offer"})
            for mailbox in (newcomer, other):
                await mailbox.close()
            gone._ws.transport.abort()  # type: ignore[attr-defined]  # (deaf: no close handshake)
            await gone.close()

    run(main())


def test_anchor_pipe_says_so_when_stdout_never_takes_the_rest(tmp_path: Path) -> None:
    """What is still waiting for stdout once the link is gone is written before exit, but a
    reader that takes nothing for --flush-timeout seconds does not make the pipe lose it
    quietly: exit 1, with the bytes it could not write named on stderr. (200 KB: more than
    the OS pipe and the transport's buffer take, less than the receive window holds.)"""
    data = os.urandom(200_000)
    (tmp_path / "in").write_bytes(data)
    read_end, write_end = os.pipe()  # the test never reads it until the receiver has exited
    with pipe_server() as common:
        args = [*common, "--policy", "standard", "--idle", "0.5"]
        receiver = subprocess.Popen(
            [*ANCHOR, "pipe", "--name", "B", "--peer", "A", *args, "--flush-timeout", "1"],
            stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(write_end)
        try:
            time.sleep(1.0)  # let B subscribe before A's offer
            with open(tmp_path / "in", "rb") as stdin:
                sender = subprocess.run(
                    [*ANCHOR, "pipe", "--name", "A", "--peer", "B", *args],
                    stdin=stdin, capture_output=True, timeout=60,
                )  # fmt: skip
            _, err = receiver.communicate(timeout=60)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()
            os.close(read_end)
    assert sender.returncode == 0, sender.stderr
    assert receiver.returncode == 1, err
    assert re.search(rb"stdout took nothing for 1 s: the last \d+ bytes received were not "
                     rb"written", err), err  # fmt: skip
