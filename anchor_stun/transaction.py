"""STUN client transactions: retransmission and response matching (RFC 8489 §6.2, §6.3.3-§6.3.4).

Theory of operation
-------------------
A :class:`ClientTransaction` owns one encoded request and decides when it goes on the wire.
It never reads a clock: every method that depends on time takes ``now`` (monotonic seconds),
and :meth:`~ClientTransaction.next_timer` tells the caller the absolute deadline at which it
wants :meth:`~ClientTransaction.handle_timer` called. An early call does nothing.

Over UDP (RFC 8489 §6.2.1) the request is sent at once, then retransmitted ``Rc - 1`` times,
the interval starting at ``RTO`` and doubling each time; after the last send the client waits
``Rm * RTO`` more and gives up. With the defaults (RTO 0.5 s, Rc 7, Rm 16) and a caller that
handles each timer on time, the sends happen at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s and
the transaction times out at 39.5 s. Each interval is counted from the moment the previous
copy was actually queued (the ``now`` of that ``handle_timer`` call), so a late timer delays
the rest of the schedule rather than bunching retransmissions together.

Over TCP or TLS (RFC 8489 §6.2.2) the transport retransmits, so the request is sent once and
the transaction times out ``Ti`` (39.5 s) later.

A response ends the transaction (RFC 8489 §6.3.3, §6.3.4): a success response yields
:class:`TransactionSucceeded`, an error response :class:`TransactionFailed` with the code and
reason from ERROR-CODE; running out of time yields :class:`TransactionTimedOut`. A response
whose method differs from the request's, or an error response without ERROR-CODE, is
malformed (RFC 8489 §6.3) and ignored: the transaction keeps waiting.

:class:`StunClient` runs many transactions at once, behind the same driver surface as every
Anchor core (``receive_datagram``, ``datagrams_to_send``, ``next_timer``, ``handle_timer``,
``next_event``). It matches responses by transaction id only: responses to an RFC 5780
CHANGE-REQUEST legitimately come from another address. Bytes that do not decode, and responses
whose transaction id is not (or no longer) pending, are dropped and counted in
:attr:`StunClient.dropped`; network input never raises.

Round-trip time is measured from the first send even when the request was retransmitted. Per
Karn's algorithm such a sample is ambiguous (the response may answer any copy), so
:class:`TransactionSucceeded` also reports how many retransmissions preceded the response;
an RTO estimator should skip samples with ``retransmissions > 0``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

from anchor_stun.address import count, seconds, server_address
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address, StunEvent, Transmit
from anchor_stun.message import HEADER_SIZE, Message, MessageClass, decode_type, is_stun

__all__ = [
    "RC",
    "RM",
    "RTO_INITIAL",
    "TI_RELIABLE",
    "ClientTransaction",
    "StunClient",
    "TransactionFailed",
    "TransactionSucceeded",
    "TransactionTimedOut",
]

RTO_INITIAL = 0.5  # RFC 8489 §6.2.1: initial retransmission timeout, seconds
RC = 7  # RFC 8489 §6.2.1: number of sends over UDP (the first one included)
RM = 16  # RFC 8489 §6.2.1: the final wait is Rm * RTO after the last send
TI_RELIABLE = 39.5  # RFC 8489 §6.2.2: transaction timeout over TCP/TLS, seconds


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TransactionSucceeded(StunEvent):
    """A success response ended the transaction (RFC 8489 §6.3.3)."""

    transaction_id: bytes
    """The 12-byte transaction id of the request and response."""
    response: Message
    """The decoded success response."""
    addr: Address
    """The address the response came from (not necessarily the one the request went to)."""
    rtt: float
    """Seconds from the first send of the request to the response (see ``retransmissions``)."""
    retransmissions: int = 0
    """Copies sent after the first; when > 0 ``rtt`` is ambiguous (Karn's algorithm)."""


@dataclass(frozen=True, slots=True)
class TransactionFailed(StunEvent):
    """An error response ended the transaction (RFC 8489 §6.3.4)."""

    transaction_id: bytes
    """The 12-byte transaction id of the request and response."""
    response: Message
    """The decoded error response (it may carry attributes a retry needs: NONCE, REALM...)."""
    code: int
    """The ERROR-CODE number, 300-699 (RFC 8489 §14.8)."""
    reason: str
    """The ERROR-CODE reason phrase, as the server sent it."""
    addr: Address = ("", 0)
    """The address the response came from."""
    rtt: float = 0.0
    """Seconds from the first send of the request to the response."""


@dataclass(frozen=True, slots=True)
class TransactionTimedOut(StunEvent):
    """No response arrived within Rc sends and Rm * RTO, or Ti (RFC 8489 §6.2.1, §6.2.2)."""

    transaction_id: bytes
    """The 12-byte transaction id of the request that went unanswered."""


# --------------------------------------------------------------------------- one transaction


class _State(Enum):
    """Life cycle of a client transaction."""

    WAITING = auto()  # sent at least once, no final response yet
    SUCCEEDED = auto()
    FAILED = auto()
    TIMED_OUT = auto()


def _request_method(data: bytes) -> int:
    """The method of an encoded STUN request; LocalProtocolError for anything else."""
    if not is_stun(data):
        raise LocalProtocolError("not a STUN message (short, bad first bits or magic cookie)")
    method, klass = decode_type(int.from_bytes(data[:2], "big"))
    if klass != MessageClass.REQUEST:
        raise LocalProtocolError(f"a client transaction carries a request, not {klass.name}")
    if len(data) != HEADER_SIZE + int.from_bytes(data[2:4], "big"):
        raise LocalProtocolError("the message length field does not match the data")
    return method


def _check_timers(rto: object, rc: object, rm: object, ti: object) -> None:
    """The retransmission parameters of RFC 8489 §6.2.1/§6.2.2 checked where they enter
    (:class:`LocalProtocolError` naming the one that is wrong)."""
    seconds(rto, "rto")
    count(rc, "rc")
    count(rm, "rm")
    seconds(ti, "ti")


class ClientTransaction:
    """One STUN request and its retransmission schedule (RFC 8489 §6.2).

    ``data`` is the encoded request (integrity and fingerprint already added); the transaction
    id is read from it. The first send is queued at ``now``. ``reliable`` selects the TCP/TLS
    rules of §6.2.2 (one send, timeout ``ti``) instead of the UDP rules of §6.2.1 (``rc`` sends,
    interval ``rto`` doubling, final wait ``rm * rto``).
    """

    def __init__(
        self,
        data: bytes,
        addr: Address,
        now: float,
        *,
        reliable: bool = False,
        rto: float = RTO_INITIAL,
        rc: int = RC,
        rm: int = RM,
        ti: float = TI_RELIABLE,
    ) -> None:
        try:
            data = bytes(data)
            self._method = _request_method(data)
        except (TypeError, LocalProtocolError) as exc:
            raise LocalProtocolError(f"data must be an encoded STUN request: {exc}") from None
        try:  # the checks of a hot path; a failure is explained below
            good = (
                rto > 0 and rc >= 1 and rm >= 1 and ti > 0
                and type(addr) is tuple and len(addr) >= 2
                and type(addr[0]) is str and type(addr[1]) is int
            )
        except TypeError:
            good = False
        if not good:  # raises, naming the argument, unless it is only of another shape
            _check_timers(rto, rc, rm, ti)
            server_address(addr, "addr", None)
        self.transaction_id: bytes = data[8:20]
        """The 12-byte transaction id, read from the request (RFC 8489 §5)."""
        self.data = data
        """The encoded request, sent as is on every (re)transmission."""
        self.addr = addr
        """Where the request goes."""
        self.reliable = reliable
        """True over TCP/TLS (RFC 8489 §6.2.2): no retransmissions, timeout ``ti``."""
        self.result: StunEvent | None = None
        """The final event once :attr:`done`, else None."""
        self._rto = rto
        self._rc = rc
        self._rm = rm
        self._state = _State.WAITING
        self._first_sent = now
        self._sends = 1
        self._pending = 1  # copies queued, not yet returned by datagrams_to_send
        self._interval = rto
        self._next_send: float | None = None
        self._deadline = 0.0
        if reliable:
            self._deadline = now + ti
        else:
            self._schedule_after_send(now)

    # ------------------------------------------------------------------ properties

    @property
    def done(self) -> bool:
        """True once a response arrived or the transaction timed out."""
        return self._state is not _State.WAITING

    @property
    def retransmissions(self) -> int:
        """How many copies were sent after the first one so far."""
        return self._sends - 1

    # ------------------------------------------------------------------ driver surface

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """The copies of the request due since the last call (RFC 8489 §6.2.1)."""
        if self._pending == 0 or self.done:
            self._pending = 0
            return []
        out = [Transmit(self.data, self.addr)] * self._pending
        self._pending = 0
        return out

    def next_timer(self) -> float | None:
        """Absolute time of the next retransmission or of the timeout; None once done."""
        if self.done:
            return None
        if self._next_send is not None:
            return self._next_send
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit or time out when ``now`` reached :meth:`next_timer`; earlier, do nothing."""
        if self.done:
            return
        if self._next_send is not None:
            if now < self._next_send:
                return
            self._sends += 1
            self._pending += 1
            self._interval *= 2
            self._schedule_after_send(now)
        elif now >= self._deadline:
            self._state = _State.TIMED_OUT
            self.result = TransactionTimedOut(self.transaction_id)

    def receive_response(self, message: Message, addr: Address, now: float) -> bool:
        """Feed a decoded response with this transaction's id (RFC 8489 §6.3.3, §6.3.4).

        Returns True when it ended the transaction (see :attr:`result`). Returns False, changing
        nothing, when the transaction is already done, or the message is not a response, has
        another method, or is an error response without ERROR-CODE (malformed, RFC 8489 §6.3).
        Raises LocalProtocolError when the transaction id is not this transaction's.
        """
        if message.transaction_id != self.transaction_id:
            raise LocalProtocolError("response fed to the wrong transaction")
        if self.done or not message.is_response or message.method != self._method:
            return False
        if message.msg_class == MessageClass.SUCCESS:
            self._state = _State.SUCCEEDED
            self.result = TransactionSucceeded(
                self.transaction_id,
                message,
                addr,
                now - self._first_sent,
                self.retransmissions,
            )
            return True
        error = message.error
        if error is None:
            return False
        self._state = _State.FAILED
        self.result = TransactionFailed(
            self.transaction_id, message, error.code, error.reason, addr, now - self._first_sent
        )
        return True

    # ------------------------------------------------------------------ internals

    def _schedule_after_send(self, sent_at: float) -> None:
        """After a UDP send at ``sent_at``: the next retransmission, or the final wait."""
        if self._sends < self._rc:
            self._next_send = sent_at + self._interval
        else:
            self._next_send = None
            self._deadline = sent_at + self._rm * self._rto


# --------------------------------------------------------------------------- many transactions


class StunClient:
    """Concurrent STUN client transactions behind one driver surface (RFC 8489 §6.2, §6.3).

    The transport parameters given here apply to :meth:`send_request`; a caller that needs
    another budget for one request builds its own :class:`ClientTransaction` and hands it to
    :meth:`start_transaction`. Results come out of :meth:`next_event` as
    :class:`TransactionSucceeded`, :class:`TransactionFailed` or :class:`TransactionTimedOut`.
    """

    def __init__(
        self,
        *,
        reliable: bool = False,
        rto: float = RTO_INITIAL,
        rc: int = RC,
        rm: int = RM,
        ti: float = TI_RELIABLE,
    ) -> None:
        _check_timers(rto, rc, rm, ti)
        self.reliable = reliable
        """True over TCP/TLS (RFC 8489 §6.2.2)."""
        self.rto = rto
        """Initial retransmission timeout for new requests, seconds (RFC 8489 §6.2.1)."""
        self.rc = rc
        """Number of sends over UDP for new requests (RFC 8489 §6.2.1)."""
        self.rm = rm
        """Final wait of new requests, in multiples of ``rto`` (RFC 8489 §6.2.1)."""
        self.ti = ti
        """Timeout of new requests over TCP/TLS, seconds (RFC 8489 §6.2.2)."""
        self.dropped = 0
        """Datagrams and messages ignored: undecodable, unknown or finished transaction id,
        not a response, wrong method, error response without ERROR-CODE."""
        self._transactions: dict[bytes, ClientTransaction] = {}
        self._events: deque[StunEvent] = deque()

    def __len__(self) -> int:
        """The number of pending transactions."""
        return len(self._transactions)

    def __contains__(self, transaction_id: object) -> bool:
        """True when a transaction with this id is pending."""
        return transaction_id in self._transactions

    # ------------------------------------------------------------------ requests

    def send_request(self, data: bytes, addr: Address, now: float) -> bytes:
        """Start a transaction for the encoded request ``data`` to ``addr``; its first copy is
        queued at once. Returns the transaction id. Raises LocalProtocolError (and starts
        nothing) when ``data`` is not a STUN request or its id is already pending."""
        transaction = ClientTransaction(
            data,
            addr,
            now,
            reliable=self.reliable,
            rto=self.rto,
            rc=self.rc,
            rm=self.rm,
            ti=self.ti,
        )
        return self.start_transaction(transaction)

    def start_transaction(self, transaction: ClientTransaction) -> bytes:
        """Track a transaction built by the caller (for its own rto/rc/rm/ti); returns its id.
        Raises LocalProtocolError when its id is already pending or it is already done."""
        tid = transaction.transaction_id
        if tid in self._transactions:
            raise LocalProtocolError(f"transaction id {tid.hex()} is already pending")
        if transaction.done:
            raise LocalProtocolError("the transaction is already done")
        self._transactions[tid] = transaction
        return tid

    def cancel(self, transaction_id: bytes) -> bool:
        """Forget a pending transaction without an event. Returns False when it was not
        pending (unknown, or already finished: its event may still be queued)."""
        return self._transactions.pop(transaction_id, None) is not None

    # ------------------------------------------------------------------ input

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> bool:
        """Feed a datagram (or a framed message over TCP). True when it was a response that
        ended one of our transactions; anything else is dropped and counted, never raised."""
        if not is_stun(data) or bytes(data[8:20]) not in self._transactions:
            self.dropped += 1
            return False
        try:
            message = Message.decode(data)
        except DecodeError:
            self.dropped += 1
            return False
        return self.receive_message(message, addr, now)

    def receive_message(self, msg: Message, addr: Address, now: float) -> bool:
        """Like :meth:`receive_datagram` for a caller that already decoded the message."""
        transaction = self._transactions.get(msg.transaction_id)
        if transaction is None or not transaction.receive_response(msg, addr, now):
            self.dropped += 1
            return False
        self._finish(transaction)
        return True

    # ------------------------------------------------------------------ output and time

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """Every request copy due, in the order the transactions were started."""
        out: list[Transmit] = []
        for transaction in self._transactions.values():
            out.extend(transaction.datagrams_to_send(now))
        return out

    def next_timer(self) -> float | None:
        """The earliest deadline of any pending transaction, or None when there is none."""
        deadlines = [
            t for t in (tr.next_timer() for tr in self._transactions.values()) if t is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Retransmit and time out whatever is due at ``now``; an early call does nothing."""
        for transaction in list(self._transactions.values()):
            transaction.handle_timer(now)
            if transaction.done:
                self._finish(transaction)

    def next_event(self) -> StunEvent | None:
        """The oldest result not yet returned, or None."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ internals

    def _finish(self, transaction: ClientTransaction) -> None:
        del self._transactions[transaction.transaction_id]
        assert transaction.result is not None
        self._events.append(transaction.result)
