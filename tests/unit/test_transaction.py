"""STUN client transactions (RFC 8489 §6.2): retransmission schedule, matching, results.

No sockets, no event loop: the clock is a literal number moved by the test.
"""

from __future__ import annotations

import pytest

from anchor_stun.attributes import ErrorCodeAttribute, XorMappedAddress
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.transaction import (
    RC,
    RM,
    RTO_INITIAL,
    TI_RELIABLE,
    ClientTransaction,
    StunClient,
    TransactionFailed,
    TransactionSucceeded,
    TransactionTimedOut,
)

SERVER: Address = ("192.0.2.1", 3478)
OTHER: Address = ("192.0.2.2", 3479)
MAPPED: Address = ("203.0.113.5", 40000)
TID = bytes(range(12))
TID2 = bytes(range(12, 24))


def request(tid: bytes = TID, method: int = Method.BINDING) -> Message:
    return Message(method, MessageClass.REQUEST, tid)


def success(tid: bytes = TID, method: int = Method.BINDING) -> Message:
    return request(tid, method).response([XorMappedAddress(*MAPPED)])


def drive(client: StunClient | ClientTransaction, until: float) -> list[float]:
    """Run the timers up to ``until``; return the times at which datagrams went out."""
    sends: list[float] = []
    now = 0.0
    sends.extend(now for _ in client.datagrams_to_send(now))
    while (deadline := client.next_timer()) is not None and deadline <= until:
        now = deadline
        client.handle_timer(now)
        sends.extend(now for _ in client.datagrams_to_send(now))
    return sends


# --------------------------------------------------------------------------- constants


def test_rfc_constants() -> None:
    assert RTO_INITIAL == 0.5
    assert RC == 7
    assert RM == 16
    assert TI_RELIABLE == 39.5


# --------------------------------------------------------------------------- schedule


def test_udp_send_times_and_timeout() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0)
    assert tx.transaction_id == TID
    sends: list[float] = []
    timers: list[float] = []
    now = 0.0
    for _ in range(20):
        sends.extend(now for _ in tx.datagrams_to_send(now))
        deadline = tx.next_timer()
        if deadline is None:
            break
        timers.append(deadline)
        now = deadline
        tx.handle_timer(now)
    assert sends == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert timers == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 39.5]
    assert tx.done
    assert tx.result == TransactionTimedOut(TID)
    assert tx.next_timer() is None
    assert tx.datagrams_to_send(100.0) == []


def test_udp_schedule_through_client() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert drive(client, 39.0) == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert client.next_timer() == 39.5
    assert client.next_event() is None
    client.handle_timer(39.4999)
    assert client.next_event() is None
    client.handle_timer(39.5)
    assert client.next_event() == TransactionTimedOut(TID)
    assert client.next_event() is None
    assert client.next_timer() is None
    assert len(client) == 0


def test_every_copy_is_the_request() -> None:
    data = request().encode()
    client = StunClient()
    client.send_request(data, SERVER, 0.0)
    assert client.datagrams_to_send(0.0) == [Transmit(data, SERVER, None)]
    assert client.datagrams_to_send(0.0) == []
    client.handle_timer(0.5)
    assert client.datagrams_to_send(0.5) == [Transmit(data, SERVER, None)]


def test_reliable_sends_once_and_times_out_at_ti() -> None:
    client = StunClient(reliable=True)
    client.send_request(request().encode(), SERVER, 10.0)
    assert len(client.datagrams_to_send(10.0)) == 1
    assert client.next_timer() == 49.5
    client.handle_timer(49.0)
    assert client.datagrams_to_send(49.0) == []
    assert client.next_event() is None
    client.handle_timer(49.5)
    assert client.datagrams_to_send(49.5) == []
    assert client.next_event() == TransactionTimedOut(TID)


def test_reliable_custom_ti() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0, reliable=True, ti=5.0)
    assert len(tx.datagrams_to_send(0.0)) == 1
    assert tx.next_timer() == 5.0
    tx.handle_timer(5.0)
    assert tx.result == TransactionTimedOut(TID)


def test_configurable_rto_rc_rm() -> None:
    client = StunClient(rto=0.25, rc=3, rm=4)
    client.send_request(request().encode(), SERVER, 0.0)
    assert drive(client, 1.7) == [0, 0.25, 0.75]
    assert client.next_timer() == 1.75  # last send at 0.75, then Rm * RTO = 4 * 0.25
    client.handle_timer(1.75)
    assert client.next_event() == TransactionTimedOut(TID)


def test_single_send_budget() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 2.0, rc=1, rm=2, rto=1.0)
    assert len(tx.datagrams_to_send(2.0)) == 1
    assert tx.next_timer() == 4.0


def test_timeout_deadline_after_rc_sends() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0, rto=1.0, rc=2, rm=3)
    assert tx.next_timer() == 1.0
    tx.handle_timer(1.0)
    assert tx.next_timer() == 4.0  # last send at 1.0 + 3 * 1.0
    tx.handle_timer(4.0)
    assert tx.result == TransactionTimedOut(TID)


def test_early_handle_timer_does_nothing() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0)
    assert len(tx.datagrams_to_send(0.0)) == 1
    tx.handle_timer(0.0)
    tx.handle_timer(0.49)
    assert tx.datagrams_to_send(0.49) == []
    assert tx.next_timer() == 0.5
    assert tx.retransmissions == 0
    assert not tx.done


def test_late_timer_shifts_the_schedule() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0)
    tx.datagrams_to_send(0.0)
    tx.handle_timer(0.7)  # the event loop woke up late
    assert len(tx.datagrams_to_send(0.7)) == 1
    assert tx.next_timer() == pytest.approx(1.7)


def test_two_timers_before_collecting_queue_two_copies() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0)
    tx.handle_timer(0.5)
    assert len(tx.datagrams_to_send(0.5)) == 2


# --------------------------------------------------------------------------- responses


def test_success_response() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 1.0)
    client.datagrams_to_send(1.0)
    response = success()
    assert client.receive_datagram(response.encode(), SERVER, 1.25)
    event = client.next_event()
    assert isinstance(event, TransactionSucceeded)
    assert event.transaction_id == TID
    assert event.addr == SERVER
    assert event.rtt == 0.25
    assert event.retransmissions == 0
    assert event.response.get(XorMappedAddress) == XorMappedAddress(*MAPPED)
    assert client.next_timer() is None
    assert client.next_event() is None


def test_error_response_is_failed_with_code() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    error = request().error_response(401, "Unauthenticated")
    assert client.receive_datagram(error.encode(), SERVER, 0.1)
    event = client.next_event()
    assert isinstance(event, TransactionFailed)
    assert (event.transaction_id, event.code, event.reason) == (TID, 401, "Unauthenticated")
    assert event.response.error == ErrorCodeAttribute(401, "Unauthenticated")
    assert client.next_timer() is None


def test_retransmission_then_late_response() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert drive(client, 1.5) == [0, 0.5, 1.5]
    assert client.next_timer() == 3.5
    assert client.receive_datagram(success().encode(), SERVER, 2.0)
    event = client.next_event()
    assert isinstance(event, TransactionSucceeded)
    assert event.rtt == 2.0  # measured from the first send
    assert event.retransmissions == 2  # so the sample is ambiguous (Karn)
    assert client.next_timer() is None
    # the answer to another copy arrives: the transaction is gone, it is dropped
    assert not client.receive_datagram(success().encode(), SERVER, 2.1)
    assert client.dropped == 1
    assert client.next_event() is None


def test_response_from_another_address_matches() -> None:
    # RFC 5780 CHANGE-REQUEST: the answer comes from the alternate address.
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert client.receive_datagram(success().encode(), OTHER, 0.1)
    event = client.next_event()
    assert isinstance(event, TransactionSucceeded)
    assert event.addr == OTHER


def test_matching_by_transaction_id_among_many() -> None:
    client = StunClient()
    assert client.send_request(request(TID).encode(), SERVER, 0.0) == TID
    assert client.send_request(request(TID2).encode(), OTHER, 0.0) == TID2
    assert [t.addr for t in client.datagrams_to_send(0.0)] == [SERVER, OTHER]
    assert len(client) == 2 and TID in client and TID2 in client
    assert client.receive_datagram(success(TID2).encode(), OTHER, 0.2)
    event = client.next_event()
    assert isinstance(event, TransactionSucceeded) and event.transaction_id == TID2
    assert TID in client and TID2 not in client
    assert client.next_timer() == 0.5
    client.handle_timer(0.5)
    assert [t.addr for t in client.datagrams_to_send(0.5)] == [SERVER]


def test_receive_message_for_decoded_callers() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert client.receive_message(success(), SERVER, 0.1)
    assert isinstance(client.next_event(), TransactionSucceeded)
    assert not client.receive_message(success(), SERVER, 0.2)
    assert client.dropped == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"hello world, this is not STUN at all",
        b"\xff" * 40,
        success().encode()[:-4],  # truncated: length field no longer matches
        success().encode()[:20] + b"\x00\x20\x00\x08\x00\x01",  # attribute overruns
    ],
)
def test_garbage_is_dropped_and_counted(data: bytes) -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert not client.receive_datagram(data, SERVER, 0.1)
    assert client.dropped == 1
    assert client.next_event() is None
    assert client.next_timer() == 0.5


def test_bad_attribute_with_known_tid_is_dropped() -> None:
    # A well-framed response whose XOR-MAPPED-ADDRESS has an unknown family.
    head = success().encode()[:20]
    body = b"\x00\x20\x00\x08\x00\x07\x00\x00\x01\x02\x03\x04"
    data = head[:2] + len(body).to_bytes(2, "big") + head[4:] + body
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert not client.receive_datagram(data, SERVER, 0.1)
    assert client.dropped == 1
    assert TID in client


def test_unknown_transaction_id_is_dropped_and_counted() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert not client.receive_datagram(success(TID2).encode(), SERVER, 0.1)
    assert not client.receive_datagram(success(TID2).encode(), SERVER, 0.2)
    assert client.dropped == 2
    assert client.next_event() is None
    assert TID in client


def test_non_response_with_our_id_is_dropped() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    # our own request reflected back, and an indication with the same id
    indication = Message(Method.BINDING, MessageClass.INDICATION, TID)
    assert not client.receive_datagram(request().encode(), SERVER, 0.1)
    assert not client.receive_datagram(indication.encode(), SERVER, 0.1)
    assert client.dropped == 2
    assert TID in client


def test_response_of_another_method_is_dropped() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert not client.receive_datagram(success(method=Method.ALLOCATE).encode(), SERVER, 0.1)
    assert client.dropped == 1
    assert TID in client


def test_error_response_without_error_code_is_dropped() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    bare = Message(Method.BINDING, MessageClass.ERROR, TID)
    assert not client.receive_datagram(bare.encode(), SERVER, 0.1)
    assert client.dropped == 1
    assert TID in client


def test_response_after_timeout_is_dropped() -> None:
    client = StunClient(rc=1, rm=1)
    client.send_request(request().encode(), SERVER, 0.0)
    client.handle_timer(0.5)
    assert client.next_event() == TransactionTimedOut(TID)
    assert not client.receive_datagram(success().encode(), SERVER, 0.6)
    assert client.dropped == 1
    assert client.next_event() is None


# --------------------------------------------------------------------------- API misuse


def test_duplicate_transaction_id_is_refused() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    with pytest.raises(LocalProtocolError):
        client.send_request(request().encode(), OTHER, 0.0)
    assert [t.addr for t in client.datagrams_to_send(0.0)] == [SERVER]


def test_id_can_be_reused_once_finished() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    client.receive_datagram(success().encode(), SERVER, 0.1)
    assert client.send_request(request().encode(), SERVER, 0.2) == TID


@pytest.mark.parametrize(
    "data",
    [
        success().encode(),
        request().error_response(400).encode(),
        Message(Method.BINDING, MessageClass.INDICATION, TID).encode(),
        b"not stun",
        b"\x00" * 20,  # no magic cookie
        request().encode() + b"\x00\x00\x00\x00",  # length field does not match
    ],
)
def test_non_request_data_is_refused(data: bytes) -> None:
    client = StunClient()
    with pytest.raises(LocalProtocolError):
        client.send_request(data, SERVER, 0.0)
    assert len(client) == 0
    assert client.datagrams_to_send(0.0) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"rto": 0.0}, {"rto": -1.0}, {"rc": 0}, {"rm": 0}, {"ti": 0.0}],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        ClientTransaction(request().encode(), SERVER, 0.0, **kwargs)  # type: ignore[arg-type]


def test_response_fed_to_the_wrong_transaction() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0)
    with pytest.raises(LocalProtocolError):
        tx.receive_response(success(TID2), SERVER, 0.1)
    assert not tx.done


def test_transaction_ignores_responses_once_done() -> None:
    tx = ClientTransaction(request().encode(), SERVER, 0.0)
    assert tx.receive_response(success(), SERVER, 0.1)
    first = tx.result
    assert not tx.receive_response(request().error_response(500), SERVER, 0.2)
    assert tx.result is first
    tx.handle_timer(100.0)
    assert tx.result is first


def test_start_transaction_with_own_budget() -> None:
    client = StunClient()
    client.start_transaction(ClientTransaction(request().encode(), SERVER, 0.0, rc=2, rm=2))
    assert drive(client, 100.0) == [0, 0.5]
    assert client.next_event() == TransactionTimedOut(TID)
    done = ClientTransaction(request().encode(), SERVER, 0.0)
    done.receive_response(success(), SERVER, 0.1)
    with pytest.raises(LocalProtocolError):
        client.start_transaction(done)


def test_cancel() -> None:
    client = StunClient()
    client.send_request(request().encode(), SERVER, 0.0)
    assert client.cancel(TID)
    assert not client.cancel(TID)
    assert client.datagrams_to_send(0.0) == []
    assert client.next_timer() is None
    client.handle_timer(100.0)
    assert client.next_event() is None
    assert not client.receive_datagram(success().encode(), SERVER, 0.1)
    assert client.dropped == 1
