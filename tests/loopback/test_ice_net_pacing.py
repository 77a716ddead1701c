"""The Ta proposals and the end of local gathering through the asyncio Connection, over
real UDP on 127.0.0.1: ``local_ta`` / ``remote_ta`` set the pacing both agents use (RFC 8445
§14.2), the nominating check of a lone pair never leaves before one Ta after the first check,
and a gateway connection whose only non-host candidates are relayed nominates its relay pair
without waiting for the grace period (here an hour: connecting at all shows it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from anchor_ice.agent import TA, TA_MIN
from anchor_ice.aio.connection import Connection
from anchor_ice.aio.pacing import TransactionPacer
from anchor_ice.candidate import CandidateType
from anchor_ice.checklist import CandidatePair
from anchor_ice.nominator import GatewayNominator, NominationView, gateway_pair_possible
from anchor_stun.attributes import UseCandidate
from anchor_stun.events import Transmit
from anchor_stun.message import Message, MessageClass
from tests.loopback.test_ice_net import LOOPBACK, exchange, turn_server

T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30.0)

    return asyncio.run(bounded())


def record_requests(conn: Connection, log: list[tuple[float, Message]]) -> None:
    """Log (time, message) of every new Binding request ``conn`` sends (the first send of
    each transaction). The time is the loop time the agent decided to send it at (its last
    check's ``now``, what it paces by), not when the adapter got to the socket: between the
    two a busy machine may deschedule the process (seen in CI: a first check sent 0.1 ms
    after its decision made two decisions 5 ms apart look 4.9 ms apart)."""
    send = conn._send_transmit
    seen: set[bytes] = set()

    def logged(transmit: Transmit) -> None:
        msg = Message.decode(transmit.data)
        if msg.msg_class is MessageClass.REQUEST and msg.transaction_id not in seen:
            seen.add(msg.transaction_id)
            decided = conn.agent._last_check_at
            assert decided is not None and decided <= asyncio.get_running_loop().time()
            log.append((decided, msg))
        send(transmit)

    conn._send_transmit = logged  # type: ignore[method-assign]


@pytest.mark.parametrize("signal_ta", [True, False])
def test_ta_proposals_set_the_pacing_of_both_agents(signal_ta: bool) -> None:
    async def main() -> None:
        # Two hosts modelled in one process: each its own aggregate pacer (RFC 8445 §14.2 is
        # per host), so that only the agents' own Ta paces what is measured here.
        a = Connection(True, host_ips=[LOOPBACK], pacer=TransactionPacer())
        b = Connection(False, host_ips=[LOOPBACK], pacer=TransactionPacer())
        log: list[tuple[float, Message]] = []
        record_requests(a, log)
        try:
            await asyncio.gather(a.gather_candidates(), b.gather_candidates())
            assert a.local_ta == b.local_ta == TA_MIN and a.remote_ta is None
            if signal_ta:
                a.remote_ta, b.remote_ta = b.local_ta, a.local_ta
            await exchange(a, b)
            await asyncio.gather(a.connect(), b.connect())
            ta = TA_MIN if signal_ta else TA
            assert a.agent.effective_ta == b.agent.effective_ta == ta
            (first, _), (nominated, msg) = log
            assert msg.get(UseCandidate) is not None
            assert nominated - first >= ta  # RFC 8445 §6.1.4.2: one Ta, never less
            pair = a.selected_pair
            assert pair is not None and pair.local_type is CandidateType.HOST
        finally:
            await a.close()
            await b.close()

    run(main())


def test_a_higher_proposal_wins() -> None:
    async def main() -> None:
        a = Connection(True, host_ips=[LOOPBACK], ta=0.02)
        b = Connection(False, host_ips=[LOOPBACK])
        try:
            b.remote_ta = a.local_ta
            a.remote_ta = b.local_ta
            assert a.agent.effective_ta == b.agent.effective_ta == 0.02
        finally:
            await a.close()
            await b.close()

    run(main())


class Recording(GatewayNominator):
    """A GatewayNominator that keeps the views it chose a pair from."""

    def __init__(self, grace: float) -> None:
        super().__init__(grace=grace)
        self.chosen: list[NominationView] = []

    def choose(self, view: NominationView, now: float) -> CandidatePair | None:
        pair = super().choose(view, now)
        if pair is not None:
            self.chosen.append(view)
        return pair


def test_gateway_relay_pair_without_the_grace_period_once_gathering_is_complete() -> None:
    async def main() -> None:
        nominator = Recording(grace=3600.0)
        async with turn_server() as (_core, _runner, turn):
            a = Connection(True, host_ips=[LOOPBACK], turn_servers=[turn], nominator=nominator)
            b = Connection(
                False, host_ips=[LOOPBACK], turn_servers=[turn], nominator=GatewayNominator()
            )
            try:
                await asyncio.gather(a.gather_candidates(), b.gather_candidates())
                await exchange(a, b)
                await asyncio.gather(a.connect(), b.connect())
                pair = a.selected_pair
                assert pair is not None
                assert pair.local_type is pair.remote_type is CandidateType.RELAY
                (view,) = nominator.chosen
                assert view.local_complete and not gateway_pair_possible(view)
            finally:
                await a.close()
                await b.close()

    run(main())
