"""NAT behaviour discovery with STUN (RFC 5780 §4.3, §4.4), sans-I/O.

Theory of operation
-------------------
:class:`NatDiscovery` classifies the NAT (or firewall) between one local UDP socket and an
RFC 5780 server in RFC 4787 terms: its *mapping* behaviour (does the public address depend on
where we send?) and its *filtering* behaviour (who may send back through that mapping?). It is
a small state machine driving a :class:`~anchor_stun.transaction.StunClient`, with the driver
surface of every Anchor core; all tests go out of the same local socket, as the asyncio
adapter has just one.

The tests run in this order, one transaction at a time::

    TEST_I      Binding to the primary address             -> mapped address, OTHER-ADDRESS
    FILTER_II   CHANGE-REQUEST(ip, port) to the primary    answer -> endpoint-independent
    FILTER_III  CHANGE-REQUEST(port) to the primary        answer -> address-dependent,
                                                           silence -> address-and-port-dependent
    MAP_II      Binding to (alternate IP, primary port)    same mapping as I -> endpoint-independent
    MAP_III     Binding to (alternate IP, alternate port)  same as II -> address-dependent,
                                                           else -> address-and-port-dependent

Filtering goes first on purpose. The filtering tests are "sensitive to prior state on the
NAT" (RFC 5780 §4.4): once MAP_II and MAP_III have sent packets to the alternate IP, an
address-dependent or address-and-port-dependent filter would let the answers of FILTER_II and
FILTER_III through, and every NAT would look endpoint-independent. Before the mapping tests,
the only hole in the filter is the one TEST_I punched towards the primary address.

Silence is a result for FILTER_II and FILTER_III, not a failure, so those two use a short
retransmission budget (``filter_rc`` sends and a final
wait of ``filter_rm * rto``: by default sends at 0, 0.5 and 1.5 s and a verdict at 3.5 s).
Their answers must come from where CHANGE-REQUEST said (the source address the adapter saw);
an answer from anywhere else means the server ignored CHANGE-REQUEST and ends discovery with
:class:`NatDiscoveryFailed`, since it would otherwise pass for an endpoint-independent filter.

When ``local`` is given and TEST_I's mapped address equals it, there is no NAT: the mapping
is endpoint-independent and MAP_II / MAP_III are skipped (RFC 5780 §4.3). The filtering tests
still run: a firewall without a NAT filters too.

A server that answers TEST_I without OTHER-ADDRESS does not support RFC 5780 (§4.3, §4.4):
discovery then ends with :class:`NatDiscoveryFailed` (carrying the mapped address it did
learn) rather than a result with "unknown" behaviours, so that
:attr:`NatDiscoveryCompleted.mapping` and ``filtering`` always hold one of the three RFC 4787
terms. So do: no answer to TEST_I, MAP_II or MAP_III; any error response; a response without
a mapped address; an OTHER-ADDRESS whose IP is the primary one (the mapping and filtering
tests need two IPs). The event's :attr:`~NatDiscoveryFailed.cause` says which kind of
failure it was (:class:`NatFailure`), its ``address`` where the failed test went, and its
``reason`` names that address.

ICMP errors. The adapter's socket cannot be connected (the tests go to the primary and the
alternate addresses), so the adapter reads ICMP errors with the destination they are about
(:mod:`anchor_stun.aio.icmp`) and feeds them to :meth:`NatDiscovery.destination_unreachable`:
when the test in flight went there, discovery ends at once with
``cause=NatFailure.UNREACHABLE`` instead of after its retransmissions (RFC 8489 §6.2.1 leaves
ICMP to the client; RFC 1122 §4.1.3.3). That holds for the filtering tests too: their
silence is a result, but a destination reported unreachable did not stay silent, it is gone.

Transaction ids come from the injected ``rng(12)``.
"""

from __future__ import annotations

import ipaddress
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum, auto

from anchor_stun.address import DEFAULT_PORT, count, seconds, server_address, software_value
from anchor_stun.attributes import (
    ChangeRequest,
    MappedAddress,
    OtherAddress,
    Software,
    XorMappedAddress,
)
from anchor_stun.errors import LocalProtocolError, error_text
from anchor_stun.events import Address, StunEvent, Transmit, format_address
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.transaction import (
    RC,
    RM,
    RTO_INITIAL,
    ClientTransaction,
    StunClient,
    TransactionFailed,
    TransactionSucceeded,
    TransactionTimedOut,
)

__all__ = [
    "FILTER_RC",
    "FILTER_RM",
    "Behavior",
    "NatDiscovery",
    "NatDiscoveryCompleted",
    "NatDiscoveryFailed",
    "NatFailure",
]

FILTER_RC = 3  # sends of a filtering test; silence is a result there (RFC 5780 §4.4)
FILTER_RM = 4  # final wait of a filtering test, in multiples of RTO


class Behavior(StrEnum):
    """NAT mapping and filtering behaviours, named as in RFC 4787 §4.1 and §5."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class NatFailure(StrEnum):
    """Why NAT discovery failed (:attr:`NatDiscoveryFailed.cause`)."""

    NO_RESPONSE = "no-response"
    """A test that must be answered was not (RFC 8489 §6.2.1: its retransmissions ran out)."""
    UNREACHABLE = "unreachable"
    """The socket reported the test's destination unreachable (an ICMP error)."""
    ERROR_RESPONSE = "error-response"
    """The server answered a test with an error response (RFC 8489 §6.3.4)."""
    BAD_RESPONSE = "bad-response"
    """A success response without a mapped address (RFC 8489 §14.2)."""
    UNSUPPORTED = "unsupported"
    """The server cannot run RFC 5780's tests: no OTHER-ADDRESS, an OTHER-ADDRESS with its
    own IP, or CHANGE-REQUEST ignored (RFC 5780 §4.1)."""


@dataclass(frozen=True, slots=True)
class NatDiscoveryCompleted(StunEvent):
    """Both behaviours were determined (RFC 5780 §4.3, §4.4)."""

    mapped: Address
    """The server-reflexive address test I saw (XOR-MAPPED-ADDRESS)."""
    other_address: Address | None
    """The server's OTHER-ADDRESS (alternate IP and port, RFC 5780 §7.4)."""
    mapping: str
    """Mapping behaviour: one of the :class:`Behavior` values (RFC 4787 §4.1)."""
    filtering: str
    """Filtering behaviour: one of the :class:`Behavior` values (RFC 4787 §5)."""


@dataclass(frozen=True, slots=True)
class NatDiscoveryFailed(StunEvent):
    """Discovery could not finish (RFC 5780 §4): no answer, an error, or no RFC 5780 support."""

    reason: str
    """One human-readable line saying which test failed, why, and the address concerned."""
    mapped: Address | None = None
    """The server-reflexive address, when test I succeeded before the failure."""
    cause: str = field(kw_only=True)
    """The kind of failure: one of the :class:`NatFailure` values."""
    address: Address = field(kw_only=True)
    """Where the test that failed was sent: the primary address, or for the mapping tests
    the alternate IP with the primary or alternate port (RFC 5780 §4.3)."""


class _State(Enum):
    """Which test is in flight (see the module docstring for the order)."""

    TEST_I = auto()
    FILTER_II = auto()
    FILTER_III = auto()
    MAP_II = auto()
    MAP_III = auto()
    DONE = auto()


_TEST_NAMES = {
    _State.TEST_I: "test I (binding to the primary address)",
    _State.FILTER_II: "filtering test II (change IP and port)",
    _State.FILTER_III: "filtering test III (change port)",
    _State.MAP_II: "mapping test II (alternate IP, primary port)",
    _State.MAP_III: "mapping test III (alternate IP and port)",
}


def _normalize(ip: str) -> str:
    """Canonical text of an IP (IPv4-mapped IPv6 as IPv4), to compare addresses."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _same(a: Address, b: Address) -> bool:
    """True when two transport addresses are the same, whatever their text form."""
    return a[1] == b[1] and _normalize(a[0]) == _normalize(b[0])


def _mapped_address(response: Message) -> Address | None:
    """XOR-MAPPED-ADDRESS, or the legacy MAPPED-ADDRESS, of a Binding response."""
    xor = response.get(XorMappedAddress)
    if xor is not None:
        return xor.address
    legacy = response.get(MappedAddress)
    return legacy.address if legacy is not None else None


class NatDiscovery:
    """RFC 5780 §4.3 mapping and §4.4 filtering discovery against ``server``, sans-I/O.

    Test I is queued at ``now``. Drive it like any core: send :meth:`datagrams_to_send`, feed
    every datagram the socket receives to :meth:`receive_datagram`, call :meth:`handle_timer`
    at :meth:`next_timer`, and read one :class:`NatDiscoveryCompleted` or
    :class:`NatDiscoveryFailed` from :meth:`next_event`. ``server`` is ``(ip, port)`` or
    ``"ip:port"`` (an IP literal: a core resolves nothing). ``local`` is the socket's own
    address, used to detect the no-NAT case. ``rto``/``rc``/``rm`` set the budget of test I
    and the mapping tests; ``filter_rc``/``filter_rm`` the shorter one of the filtering tests.
    """

    def __init__(
        self,
        server: Address | str,
        now: float,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        local: Address | None = None,
        rto: float = RTO_INITIAL,
        rc: int = RC,
        rm: int = RM,
        filter_rc: int = FILTER_RC,
        filter_rm: int = FILTER_RM,
        software: str | None = None,
    ) -> None:
        server = server_address(server, "server", DEFAULT_PORT, ip_only=True)
        if local is not None:
            local = server_address(local, "local", None, ip_only=True, zero=True)
        seconds(rto, "rto")
        for value, what in ((rc, "rc"), (rm, "rm"), (filter_rc, "filter_rc"), (filter_rm, "filter_rm")):
            count(value, what)
        if isinstance(now, bool) or not isinstance(now, int | float):
            raise LocalProtocolError(f"now must be a time in seconds, not {now!r}")
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        software_value(software)
        self.server = server
        """The server's primary address (RFC 5780 §4.1)."""
        self.local = local
        """The local socket's address, when known."""
        self.mapped: Address | None = None
        """The mapped address from test I, once known."""
        self.other_address: Address | None = None
        """The server's OTHER-ADDRESS from test I, once known."""
        self.mapping: Behavior | None = None
        """The mapping behaviour, once determined."""
        self.filtering: Behavior | None = None
        """The filtering behaviour, once determined."""
        self.result: StunEvent | None = None
        """The final event once :attr:`done`, else None."""
        self._rng = rng
        self._rto = rto
        self._rc = rc
        self._rm = rm
        self._filter_rc = filter_rc
        self._filter_rm = filter_rm
        self._software = software
        self._client = StunClient(rto=rto, rc=rc, rm=rm)
        self._events: deque[StunEvent] = deque()
        self._state = _State.TEST_I
        self._tid = b""
        self._dest: Address = server  # where the test in flight went
        self._expected_source: Address | None = None
        self._map_ii: Address | None = None
        # One handler per state: what a transaction's outcome means there.
        self._handlers: dict[_State, Callable[[StunEvent, float], None]] = {
            _State.TEST_I: self._after_test_i,
            _State.FILTER_II: self._after_filter_ii,
            _State.FILTER_III: self._after_filter_iii,
            _State.MAP_II: self._after_map_ii,
            _State.MAP_III: self._after_map_iii,
        }
        self._send(server, None, now)

    # ------------------------------------------------------------------ properties

    @property
    def done(self) -> bool:
        """True once the final event was emitted."""
        return self._state is _State.DONE

    @property
    def dropped(self) -> int:
        """Datagrams ignored so far (not answers to the test in flight)."""
        return self._client.dropped

    # ------------------------------------------------------------------ driver surface

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """Requests due, all from the one local socket (RFC 5780 §4)."""
        return self._client.datagrams_to_send(now)

    def next_timer(self) -> float | None:
        """The next retransmission or verdict deadline, or None once done."""
        return None if self.done else self._client.next_timer()

    def handle_timer(self, now: float) -> None:
        """Retransmit, or treat a silent test as its RFC 5780 outcome; early calls do nothing."""
        self._client.handle_timer(now)
        self._pump(now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> bool:
        """Feed a datagram from the socket. True when it answered the test in flight;
        anything else is dropped and counted, never raised."""
        consumed = self._client.receive_datagram(data, addr, now)
        self._pump(now)
        return consumed

    def destination_unreachable(
        self, addr: Address, now: float, *, reason: str = ""
    ) -> bool:
        """The socket reported an ICMP error for a datagram it sent to ``addr`` (the adapter
        reads it from the socket's error queue, RFC 1122 §4.1.3.3; RFC 8489 §6.2.1 leaves
        ICMP handling to the client). When the test in flight went to ``addr``, it ends now,
        without its retransmissions, and so does discovery: :class:`NatDiscoveryFailed` with
        ``cause`` :attr:`NatFailure.UNREACHABLE` and a reason naming the address and, in
        parentheses, ``reason`` (the error's text: ``test I (binding to the primary address):
        192.0.2.1:3478 unreachable (Connection refused)``). Returns whether it did; an error
        about any other address (an earlier test's), or one after the end, changes nothing.
        Never raises."""
        if self._state is _State.DONE:
            return False
        try:
            target = (str(addr[0]), int(addr[1]))
        except (TypeError, ValueError, IndexError):
            return False
        if not _same(target, self._dest):
            return False
        self._client.cancel(self._tid)
        why = f" ({reason})" if reason else ""
        self._fail(
            NatFailure.UNREACHABLE,
            f"{_TEST_NAMES[self._state]}: {format_address(self._dest)} unreachable{why}",
        )
        self._pump(now)
        return True

    def next_event(self) -> StunEvent | None:
        """:class:`NatDiscoveryCompleted` or :class:`NatDiscoveryFailed`, once; else None."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ internals

    def _send(
        self, addr: Address, change: ChangeRequest | None, now: float, *, filtering: bool = False
    ) -> None:
        tid = self._rng(12)
        if len(tid) != 12:
            raise LocalProtocolError(f"rng(12) returned {len(tid)} bytes")
        request = Message(Method.BINDING, MessageClass.REQUEST, tid)
        if change is not None:
            request.add(change)
        if self._software is not None:
            request.add(Software(self._software))
        transaction = ClientTransaction(
            request.encode(),
            addr,
            now,
            rto=self._rto,
            rc=self._filter_rc if filtering else self._rc,
            rm=self._filter_rm if filtering else self._rm,
        )
        self._tid = self._client.start_transaction(transaction)
        self._dest = addr

    def _pump(self, now: float) -> None:
        while (event := self._client.next_event()) is not None:
            if self._state is _State.DONE or getattr(event, "transaction_id", None) != self._tid:
                continue
            self._handlers[self._state](event, now)

    def _fail(self, cause: NatFailure, reason: str) -> None:
        self._finish(
            NatDiscoveryFailed(reason, self.mapped, cause=cause.value, address=self._dest)
        )

    def _finish(self, event: StunEvent) -> None:
        self._state = _State.DONE
        self.result = event
        self._events.append(event)

    def _unexpected(self, event: StunEvent) -> None:
        """Fail for a timeout or error response of a test that must be answered."""
        name = _TEST_NAMES[self._state]
        if isinstance(event, TransactionFailed):
            self._fail(
                NatFailure.ERROR_RESPONSE,
                f"{name}: error response {error_text(event.code, event.reason)} "
                f"from {format_address(event.addr)}",
            )
        else:
            self._fail(
                NatFailure.NO_RESPONSE, f"{name}: no response from {format_address(self._dest)}"
            )

    def _success_mapped(self, event: StunEvent) -> Address | None:
        """The mapped address of a success response; fails discovery and returns None else."""
        if not isinstance(event, TransactionSucceeded):
            self._unexpected(event)
            return None
        mapped = _mapped_address(event.response)
        if mapped is None:
            self._fail(
                NatFailure.BAD_RESPONSE,
                f"{_TEST_NAMES[self._state]}: response without XOR-MAPPED-ADDRESS from "
                f"{format_address(self._dest)}",
            )
        return mapped

    def _start_filter(self, state: _State, change: ChangeRequest, now: float) -> None:
        assert self.other_address is not None
        self._state = state
        self._expected_source = (
            self.other_address[0] if change.change_ip else self.server[0],
            self.other_address[1] if change.change_port else self.server[1],
        )
        self._send(self.server, change, now, filtering=True)

    def _filtered(self, event: StunEvent, answered: Behavior, now: float) -> bool:
        """Handle a filtering test's answer; True when it yielded ``answered``."""
        if isinstance(event, TransactionTimedOut):
            return False
        if isinstance(event, TransactionSucceeded):
            assert self._expected_source is not None
            if not _same(event.addr, self._expected_source):
                host, port = event.addr
                self._fail(
                    NatFailure.UNSUPPORTED,
                    f"{_TEST_NAMES[self._state]}: the answer came from "
                    f"{format_address((host, port))}, not "
                    f"{format_address(self._expected_source)}: the server ignores CHANGE-REQUEST",
                )
                return True
            self.filtering = answered
            self._start_mapping(now)
            return True
        self._unexpected(event)
        return True

    def _start_mapping(self, now: float) -> None:
        assert self.mapped is not None and self.other_address is not None
        if self.local is not None and _same(self.mapped, self.local):
            # RFC 5780 §4.3: not NATed, so the mapping is endpoint-independent.
            self._complete(Behavior.ENDPOINT_INDEPENDENT)
            return
        self._state = _State.MAP_II
        self._send((self.other_address[0], self.server[1]), None, now)

    def _complete(self, mapping: Behavior) -> None:
        assert self.mapped is not None and self.filtering is not None
        self.mapping = mapping
        self._finish(
            NatDiscoveryCompleted(
                self.mapped, self.other_address, mapping.value, self.filtering.value
            )
        )

    # ------------------------------------------------------------------ per-state outcomes

    def _after_test_i(self, event: StunEvent, now: float) -> None:
        mapped = self._success_mapped(event)
        if mapped is None:
            return
        assert isinstance(event, TransactionSucceeded)
        self.mapped = mapped
        other = event.response.get(OtherAddress)
        if other is None:
            self._fail(
                NatFailure.UNSUPPORTED,
                f"the server {format_address(self.server)} does not support RFC 5780: its "
                "Binding response has no OTHER-ADDRESS",
            )
            return
        self.other_address = other.address
        if _normalize(other.ip) == _normalize(self.server[0]):
            self._fail(
                NatFailure.UNSUPPORTED,
                f"OTHER-ADDRESS {format_address(other.address)} has the server's own IP: "
                "RFC 5780 discovery needs a server with two IP addresses",
            )
            return
        self._start_filter(_State.FILTER_II, ChangeRequest(change_ip=True, change_port=True), now)

    def _after_filter_ii(self, event: StunEvent, now: float) -> None:
        if not self._filtered(event, Behavior.ENDPOINT_INDEPENDENT, now):
            self._start_filter(_State.FILTER_III, ChangeRequest(change_port=True), now)

    def _after_filter_iii(self, event: StunEvent, now: float) -> None:
        if not self._filtered(event, Behavior.ADDRESS_DEPENDENT, now):
            self.filtering = Behavior.ADDRESS_AND_PORT_DEPENDENT
            self._start_mapping(now)

    def _after_map_ii(self, event: StunEvent, now: float) -> None:
        mapped = self._success_mapped(event)
        if mapped is None:
            return
        assert self.mapped is not None and self.other_address is not None
        if _same(mapped, self.mapped):
            self._complete(Behavior.ENDPOINT_INDEPENDENT)
            return
        self._map_ii = mapped
        self._state = _State.MAP_III
        self._send(self.other_address, None, now)

    def _after_map_iii(self, event: StunEvent, now: float) -> None:
        mapped = self._success_mapped(event)
        if mapped is None:
            return
        assert self._map_ii is not None
        if _same(mapped, self._map_ii):
            self._complete(Behavior.ADDRESS_DEPENDENT)
        else:
            self._complete(Behavior.ADDRESS_AND_PORT_DEPENDENT)
