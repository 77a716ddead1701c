"""Messages outlive a broken link (issue 17 item 4; anchor_link.delivery).

What this proves:

- :class:`Outbox` / :class:`Inbox` (sans-I/O): numbering from 1, 32-bit wrapping on the wire,
  pending until acknowledged in order, every pending message carried to the next link before
  any newer one with its number unchanged, duplicates dropped by the receiver, a new session
  starting the numbering again, and :meth:`Outbox.fail` naming exactly what was pending.
- Two :class:`LinkEndpoint` on loopback (real sockets, ``policy="standard"``): a link broken
  mid-transfer (the sender's ICE connection closed under it, as a NAT that forgets the mapping
  does) is formed again and every one of 300 accepted messages arrives exactly once, in
  order; a peer that never returns (it left the signalling and its sockets are gone, as a
  crashed process's are) gets :class:`MessagesUndelivered` after ``delivery_timeout``,
  naming exactly the messages sent after it vanished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from anchor_link.aio.endpoint import LinkEndpoint
from anchor_link.aio.signal import InProcessSignalling
from anchor_link.delivery import (
    MESSAGE_HEADER,
    Inbox,
    MessagesUndelivered,
    Outbox,
    UndeliveredMessages,
)
from anchor_link.state import LinkDissolved, LinkFailed

T = TypeVar("T")
pytestmark = pytest.mark.timeout(90)


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# --------------------------------------------------------------------------- sans-I/O


def test_outbox_numbers_keeps_until_acknowledged_and_carries_in_order() -> None:
    out = Outbox("s1")
    link1, link2 = object(), object()
    out.attach(link1)
    framed = [out.accept(f"m{i}".encode()) for i in range(1, 6)]
    assert [f[:MESSAGE_HEADER] for f in framed] == [i.to_bytes(4, "big") for i in range(1, 6)]
    assert framed[0][MESSAGE_HEADER:] == b"m1"
    assert (out.pending, out.unsent) == (5, 0)
    out.acknowledged(2)  # m1, m2 delivered
    assert out.pending == 3
    out.detach(link2)  # not the current link: nothing changes
    assert out.unsent == 0
    out.detach(link1)  # the link broke: m3..m5 wait for the next
    assert (out.pending, out.unsent, out.link) == (3, 3, None)
    out.attach(link2)
    with pytest.raises(ValueError):
        out.accept(b"m6")  # carried messages go first
    carried = []
    while out.unsent:
        carried.append(out.next_unsent())
        out.mark_queued()
    assert carried == framed[2:]  # same numbers, same order
    assert out.accept(b"m6")[:MESSAGE_HEADER] == (6).to_bytes(4, "big")
    out.acknowledged(1)
    messages, numbers = out.fail()
    assert messages == (b"m4", b"m5", b"m6") and numbers == (4, 5, 6)
    assert out.pending == 0


def test_inbox_drops_duplicates_unwraps_and_restarts_with_a_new_session() -> None:
    inbox = Inbox()
    inbox.begin("s1")
    out = Outbox("s1")
    out.attach(1)
    first = [out.accept(bytes([i])) for i in range(3)]
    assert [inbox.accept(f) for f in first] == [b"\x00", b"\x01", b"\x02"]
    # The link broke before the ACK of the last two: they come again, and are dropped.
    assert inbox.accept(first[1]) is None and inbox.accept(first[2]) is None
    assert inbox.duplicates == 2 and inbox.highest == 3
    assert inbox.accept(b"\x00\x00") is None  # too short for a header
    # Wrapping: numbers past 2**32 unwrap next to the highest delivered.
    inbox.highest = (1 << 32) - 1
    assert inbox.accept((0).to_bytes(4, "big") + b"x") == b"x"
    assert inbox.highest == 1 << 32
    assert inbox.accept(((1 << 32) - 1).to_bytes(4, "big") + b"old") is None
    # Same session again: nothing resets. A new session (the peer restarted): from 1.
    inbox.begin("s1")
    assert inbox.highest == 1 << 32
    inbox.begin("s2")
    assert inbox.highest == 0 and inbox.accept((1).to_bytes(4, "big") + b"y") == b"y"


def test_undelivered_error_names_the_messages() -> None:
    event = MessagesUndelivered("b", "b is not on the signalling", (b"x", b"y"), (7, 8))
    error = event.error
    assert isinstance(error, UndeliveredMessages)
    assert (error.peer, error.messages, error.sequence_numbers) == ("b", (b"x", b"y"), (7, 8))
    assert "2 message(s) to 'b' undelivered (numbers 7-8)" in str(error)


# --------------------------------------------------------------------------- loopback

OPTIONS: dict[str, Any] = {
    "policy": "standard",
    "host_ips": ["127.0.0.1"],
    "idle_timeout": 60.0,
    "connection_options": {"agent_options": {"consent_interval": 0.3, "consent_timeout": 1.5}},
}


def test_a_link_broken_mid_transfer_reforms_and_delivers_every_message_once_in_order() -> None:
    async def main() -> None:
        hub = InProcessSignalling()
        got: list[bytes] = []
        halfway = asyncio.Event()

        def on_message(peer: str, data: bytes) -> None:
            got.append(data)
            if len(got) == 100:
                halfway.set()

        a = LinkEndpoint("a", hub, **OPTIONS)
        b = LinkEndpoint("b", hub, on_message=on_message, **OPTIONS)
        messages = [i.to_bytes(4, "big") * 250 for i in range(300)]
        await a.start()
        await b.start()
        try:

            async def feed() -> None:
                for message in messages:
                    await a.send("b", message)

            feeding = asyncio.get_running_loop().create_task(feed())
            await asyncio.wait_for(halfway.wait(), 20)
            link = a._links["b"]
            pending = a._outboxes["b"].pending
            assert link.conn is not None
            await link.conn.close()  # break the link under the transfer
            broken = await a.wait_for(LinkDissolved, "b", timeout=10)
            assert broken.reason.startswith("transport lost") and not broken.clean
            await asyncio.wait_for(feeding, 30)
            while len(got) < len(messages):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more, no duplicate, arrives late
            assert got == messages  # every accepted message once, in order
            assert pending > 0  # messages were in flight when it broke: they were carried
            assert a.links_formed == 2 and b.links_formed == 2
            assert a._outboxes["b"].pending == 0
            assert not [e for e in a.history if isinstance(e, MessagesUndelivered)]
        finally:
            await a.close()
            await b.close()

    run(main())


def test_a_peer_that_never_returns_gets_the_undelivered_messages_named() -> None:
    async def main() -> None:
        hub = InProcessSignalling()
        got: list[bytes] = []
        a = LinkEndpoint("a", hub, delivery_timeout=2.0, **OPTIONS)
        b = LinkEndpoint("b", hub, on_message=lambda p, d: got.append(d), **OPTIONS)
        await a.start()
        await b.start()
        try:
            first = [b"m%d" % i for i in range(5)]
            for message in first:
                await a.send("b", message)
            while len(got) < 5 or a._outboxes["b"].pending:
                await asyncio.sleep(0.02)
            # b vanishes as a crashed process does: off the signalling, its sockets gone.
            assert b._mailbox is not None
            await b._mailbox.close()
            conn = b._links["a"].conn
            assert conn is not None
            await conn.close()
            later = [b"m%d" % i for i in range(5, 10)]
            for message in later:
                await a.send("b", message)  # accepted: the link is still open on a's side
            failed = await a.wait_for(MessagesUndelivered, "b", timeout=20)
            assert failed.messages == tuple(later)
            assert failed.sequence_numbers == (6, 7, 8, 9, 10)
            assert "not on the signalling" in failed.reason
            assert got == first
            error = failed.error
            assert error.messages == tuple(later)
            # The link itself broke first (consent), then re-formation failed until the
            # deadline: no message is left pending, no task keeps trying.
            assert any(isinstance(e, LinkDissolved | LinkFailed) for e in a.history)
            assert "b" not in a._outboxes and not a.active_peers()
        finally:
            await a.close()
            await b.close()

    run(main())
