"""RFC 8445 §14.2's aggregate pacing: "the combination of all transactions from all agents ...
will not be sent more often than once every 5 ms" (anchor_ice.aio.pacing).

What this proves:

- :class:`TransactionPacer` sends at once when idle, else queues, and releases each send
  ``interval`` after the previous one actually left; the opt-out (:data:`UNPACED`) never
  holds anything.
- Two ICE sessions in one process (four :class:`Connection` objects on 127.0.0.1, real UDP)
  share the loop's pacer by default: the first transmissions of their new STUN requests,
  all four together, leave at least 5 ms apart, and both sessions connect. Retransmissions
  and responses are not held (only new requests take slots).
- ``pacer=`` takes a pacer of one's own (a benchmark modelling two hosts gives each host
  one), and :data:`UNPACED` opts out: the shared pacer is then not used.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from anchor_ice.aio.connection import Connection
from anchor_ice.aio.pacing import MIN_INTERVAL, UNPACED, TransactionPacer, shared_pacer
from anchor_stun.events import Transmit
from anchor_stun.message import Message, MessageClass
from tests.loopback.test_ice_net import LOOPBACK, exchange

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30.0)

    return asyncio.run(bounded())


def test_pacer_spaces_sends_from_when_they_actually_left() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pacer = TransactionPacer()
        sent: list[float] = []

        def record() -> None:
            assert pacer.last_sent is not None and pacer.last_sent <= loop.time()
            sent.append(pacer.last_sent)  # its decision (see record_sends)

        for _ in range(4):
            pacer.submit(record)
        assert len(sent) == 1 and pacer.waiting == 3  # the first at once, the rest queued
        while pacer.waiting:
            await asyncio.sleep(0.001)
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        assert min(gaps) >= MIN_INTERVAL - 1e-9 and pacer.submitted == 4
        await asyncio.sleep(MIN_INTERVAL * 2)
        pacer.submit(record)  # idle since: at once
        assert len(sent) == 5 and pacer.waiting == 0
        unpaced: list[int] = []
        for i in range(3):
            UNPACED.submit(lambda i=i: unpaced.append(i))  # type: ignore[misc]
        assert unpaced == [0, 1, 2]

    assert MIN_INTERVAL == 0.005
    with pytest.raises(ValueError):
        TransactionPacer(-1.0)
    run(main())


def record_sends(
    conn: Connection, pacer: TransactionPacer, log: list[tuple[float, bytes, MessageClass]]
) -> None:
    """Log (time, transaction id, class) of every STUN message ``conn`` puts on a socket; the
    time is the loop time ``pacer`` let the latest transaction go at (its decision, in the
    same callback: a busy machine may deschedule the process between that and a later
    clock reading, which would make two decisions 5 ms apart look closer)."""
    send = conn._send_now

    def logged(transmit: Transmit) -> None:
        msg = Message.decode(transmit.data)
        when = pacer.last_sent if pacer.last_sent is not None else -1.0
        log.append((when, msg.transaction_id, msg.msg_class))
        send(transmit)

    conn._send_now = logged  # type: ignore[method-assign]


def test_two_sessions_of_one_process_share_one_pacer() -> None:
    async def main() -> None:
        conns = [Connection(i % 2 == 0, host_ips=[LOOPBACK]) for i in range(4)]
        log: list[tuple[float, bytes, MessageClass]] = []
        pacer = shared_pacer()
        for conn in conns:
            record_sends(conn, pacer, log)
        try:
            await asyncio.gather(*(c.gather_candidates() for c in conns))
            for a, b in ((conns[0], conns[1]), (conns[2], conns[3])):
                a.remote_ta, b.remote_ta = b.local_ta, a.local_ta
                await exchange(a, b)
            await asyncio.gather(*(c.connect() for c in conns))
            assert all(c.selected_pair is not None for c in conns)
        finally:
            for conn in conns:
                await conn.close()
        seen: set[bytes] = set()
        firsts = []
        for when, tid, msg_class in log:
            if msg_class is MessageClass.REQUEST and tid not in seen:
                seen.add(tid)
                firsts.append(when)
        assert len(firsts) >= 4  # every agent checked at least once
        gaps = [b - a for a, b in itertools.pairwise(firsts)]
        assert min(gaps) >= MIN_INTERVAL - 1e-9, gaps
        assert pacer.submitted >= len(firsts)

    run(main())


def test_own_pacer_and_opt_out() -> None:
    async def main() -> None:
        own = TransactionPacer()
        a = Connection(True, host_ips=[LOOPBACK], pacer=own)
        b = Connection(False, host_ips=[LOOPBACK], pacer=UNPACED)
        shared = shared_pacer()
        before = shared.submitted
        try:
            await asyncio.gather(a.gather_candidates(), b.gather_candidates())
            a.remote_ta, b.remote_ta = b.local_ta, a.local_ta
            await exchange(a, b)
            await asyncio.gather(a.connect(), b.connect())
        finally:
            await a.close()
            await b.close()
        assert own.submitted >= 1 and UNPACED.submitted >= 1
        assert shared.submitted == before  # neither used the loop's pacer

    run(main())


def test_gathering_goes_through_the_pacer() -> None:
    """RFC 8445 §14.1 counts gathering's transactions too: each connection's request to its
    STUN server takes a slot of the connection's pacer, before any check; a pacer of its
    own or UNPACED keeps another connection out of it."""
    from anchor_ice.candidate import CandidateType
    from tests.loopback.test_ice_gather import stun_server

    async def main() -> None:
        async with stun_server() as server:
            pacer = TransactionPacer()
            conns = [
                Connection(i == 0, host_ips=[LOOPBACK], stun_server=server, pacer=pacer)
                for i in range(2)
            ]
            apart = Connection(True, host_ips=[LOOPBACK], stun_server=server, pacer=UNPACED)
            try:
                await asyncio.gather(*(c.gather_candidates() for c in [*conns, apart]))
                for conn in [*conns, apart]:  # each got its answer (on loopback the
                    assert not conn.gather_failures  # srflx is its host: redundant)
                    assert {c.type for c in conn.local_candidates} == {CandidateType.HOST}
                assert pacer.submitted == 2  # one Binding per connection, no check yet
            finally:
                for conn in [*conns, apart]:
                    await conn.close()

    run(main())
