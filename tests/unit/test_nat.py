"""RFC 5780 NAT discovery against an in-memory RFC 5780 server behind a simulated NAT.

The server answers on its four addresses (two IPs x two ports) and honours CHANGE-REQUEST;
the NAT maps (endpoint-independent, address-dependent, address-and-port-dependent, or not at
all) and filters inbound packets by dropping them. The clock is a literal number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from anchor_stun.attributes import (
    ChangeRequest,
    OtherAddress,
    ResponseOrigin,
    Software,
    XorMappedAddress,
)
from anchor_stun.errors import LocalProtocolError
from anchor_stun.events import Address, StunEvent
from anchor_stun.message import Message
from anchor_stun.nat import (
    Behavior,
    NatDiscovery,
    NatDiscoveryCompleted,
    NatDiscoveryFailed,
    NatFailure,
)

PRIMARY_IP, ALT_IP = "198.51.100.1", "198.51.100.2"
PRIMARY_PORT, ALT_PORT = 3478, 3479
SERVER: Address = (PRIMARY_IP, PRIMARY_PORT)
OTHER: Address = (ALT_IP, ALT_PORT)
LOCAL: Address = ("10.0.0.2", 5000)
PUBLIC_IP = "203.0.113.7"

EIM = EIF = Behavior.ENDPOINT_INDEPENDENT
ADM = ADF = Behavior.ADDRESS_DEPENDENT
APDM = APDF = Behavior.ADDRESS_AND_PORT_DEPENDENT


# --------------------------------------------------------------------------- the lab


def _flip_ip(ip: str) -> str:
    return ALT_IP if ip == PRIMARY_IP else PRIMARY_IP


def _flip_port(port: int) -> int:
    return ALT_PORT if port == PRIMARY_PORT else PRIMARY_PORT


@dataclass
class Server:
    """An RFC 5780 server listening on {PRIMARY_IP, ALT_IP} x {PRIMARY_PORT, ALT_PORT}."""

    other_address: bool = True
    """Send OTHER-ADDRESS (False: a plain RFC 8489 server)."""
    honor_change: bool = True
    """Answer from the address CHANGE-REQUEST asks for (False: always from where it arrived)."""
    reject_change: bool = False
    """Answer a CHANGE-REQUEST with 420 Unknown Attribute."""
    other_ip: str | None = None
    """OTHER-ADDRESS IP to advertise instead of the real alternate one."""
    reachable: Callable[[Address], bool] = lambda addr: True
    """Which of its addresses receive anything."""
    refused: Callable[[Address], bool] = lambda addr: False
    """Which of its addresses are closed ports: the client's socket reports them unreachable
    (an ICMP port unreachable, ``ECONNREFUSED``) instead of anything arriving."""
    requests: list[tuple[Address, ChangeRequest | None, Message]] = field(default_factory=list)

    def handle(self, data: bytes, src: Address, dst: Address) -> tuple[bytes, Address] | None:
        """(response bytes, address it is sent from) for a request from ``src`` to ``dst``."""
        if not self.reachable(dst):
            return None
        request = Message.decode(data)
        change = request.get(ChangeRequest)
        self.requests.append((dst, change, request))
        if change is not None and self.reject_change:
            return request.error_response(420).encode(), dst
        ip, port = dst
        if change is not None and self.honor_change:
            ip = _flip_ip(ip) if change.change_ip else ip
            port = _flip_port(port) if change.change_port else port
        attributes = [XorMappedAddress(*src), ResponseOrigin(ip, port)]
        if self.other_address:
            attributes.append(OtherAddress(self.other_ip or _flip_ip(dst[0]), _flip_port(dst[1])))
        return request.response(attributes).encode(), (ip, port)


@dataclass
class Nat:
    """A NAT (``mapping`` set) or a firewall (``mapping`` None) in front of the client."""

    mapping: Behavior | None
    filtering: Behavior | None
    next_port: int = 40000
    ports: dict[object, int] = field(default_factory=dict)
    internal: dict[Address, Address] = field(default_factory=dict)
    sent_to: dict[Address, set[Address]] = field(default_factory=dict)

    def outbound(self, src: Address, dst: Address) -> Address:
        """The public source address of a packet from ``src`` to ``dst`` (RFC 4787 §4.1)."""
        if self.mapping is None:
            public = src
        else:
            key: object = {
                EIM: src,
                ADM: (src, dst[0]),
                APDM: (src, dst),
            }[self.mapping]
            if key not in self.ports:
                self.ports[key] = self.next_port
                self.next_port += 1
            public = (PUBLIC_IP, self.ports[key])
        self.internal[public] = src
        self.sent_to.setdefault(public, set()).add(dst)
        return public

    def inbound(self, src: Address, dst: Address) -> Address | None:
        """The internal destination of a packet from ``src`` to ``dst``, or None when the
        filter drops it (RFC 4787 §5)."""
        internal = self.internal.get(dst)
        if internal is None:
            return None
        sent = self.sent_to[dst]
        if self.filtering == ADF and src[0] not in {ip for ip, _ in sent}:
            return None
        if self.filtering == APDF and src not in sent:
            return None
        return internal


@dataclass
class Lab:
    """One client socket at LOCAL, an optional NAT, and the server; delivery is instant."""

    nat: Nat | None
    server: Server = field(default_factory=Server)
    lose_first: int = 0
    """How many client datagrams to lose before delivering any."""

    def run(self, discovery: NatDiscovery, now: float = 0.0) -> tuple[StunEvent, float]:
        """Drive ``discovery`` to its end; returns its one event and the time it ended."""
        for _ in range(1000):
            out = discovery.datagrams_to_send(now)
            for transmit in out:
                self._deliver(discovery, transmit.data, transmit.addr, now)
            if out:
                continue
            if discovery.done:
                break
            deadline = discovery.next_timer()
            assert deadline is not None and deadline >= now
            now = deadline
            discovery.handle_timer(now)
        event = discovery.next_event()
        assert event is not None
        assert discovery.next_event() is None
        assert discovery.next_timer() is None
        return event, now

    def _deliver(self, discovery: NatDiscovery, data: bytes, dst: Address, now: float) -> None:
        if self.lose_first > 0:
            self.lose_first -= 1
            return
        if self.server.refused(dst):
            discovery.destination_unreachable(dst, now, reason="Connection refused")
            return
        src = self.nat.outbound(LOCAL, dst) if self.nat is not None else LOCAL
        answer = self.server.handle(data, src, dst)
        if answer is None:
            return
        response, origin = answer
        to = self.nat.inbound(origin, src) if self.nat is not None else src
        if to is None:
            return
        assert to == LOCAL
        discovery.receive_datagram(response, origin, now)

    def destinations(self) -> list[tuple[Address, ChangeRequest | None]]:
        return [(dst, change) for dst, change, _ in self.server.requests]


def counter_rng() -> Callable[[int], bytes]:
    """Transaction ids 1, 2, 3... so tests are deterministic."""
    state = [0]

    def rng(n: int) -> bytes:
        state[0] += 1
        return state[0].to_bytes(n, "big")

    return rng


def discover(lab: Lab, *, now: float = 0.0, **kwargs: object) -> tuple[StunEvent, float]:
    discovery = NatDiscovery(SERVER, now, rng=counter_rng(), **kwargs)  # type: ignore[arg-type]
    return lab.run(discovery, now)


# --------------------------------------------------------------------------- classification


# Filtering verdicts arrive at: EIF at once; ADF when filtering test II times out (sends at
# 0, 0.5, 1.5, final wait 4 * 0.5 -> 3.5); APDF when test III times out too (3.5 + 3.5).
FILTER_DONE_AT = {EIF: 0.0, ADF: 3.5, APDF: 7.0}


@pytest.mark.parametrize("filtering", [EIF, ADF, APDF])
@pytest.mark.parametrize("mapping", [EIM, ADM, APDM])
def test_every_nat_combination(mapping: Behavior, filtering: Behavior) -> None:
    lab = Lab(Nat(mapping, filtering))
    event, end = discover(lab, local=LOCAL)
    assert event == NatDiscoveryCompleted(
        mapped=(PUBLIC_IP, 40000),
        other_address=OTHER,
        mapping=mapping,
        filtering=filtering,
    )
    assert type(event.mapping) is str and type(event.filtering) is str  # plain, for JSON
    assert end == FILTER_DONE_AT[filtering]
    filter_tests = [
        (SERVER, ChangeRequest(change_ip=True, change_port=True)),
        *([(SERVER, ChangeRequest(change_port=True))] if filtering != EIF else []),
    ]
    mapping_tests = [
        ((ALT_IP, PRIMARY_PORT), None),
        *([(OTHER, None)] if mapping != EIM else []),
    ]
    # filtering copies are retransmitted into the filter; count distinct tests
    seen = list(dict.fromkeys((d, c) for d, c in lab.destinations()))
    assert seen == [(SERVER, None), *filter_tests, *mapping_tests]


def test_retransmitted_filtering_tests() -> None:
    lab = Lab(Nat(EIM, APDF))
    discover(lab)
    change_both = ChangeRequest(change_ip=True, change_port=True)
    change_port = ChangeRequest(change_port=True)
    assert [c for _, c in lab.destinations()] == [
        None,
        change_both,
        change_both,
        change_both,
        change_port,
        change_port,
        change_port,
        None,
    ]


def test_filtering_before_mapping_matters() -> None:
    """An address-dependent filter: the mapping tests would open it for the alternate IP,
    so they must come after the filtering tests (RFC 5780 §4.4: tests sensitive to state)."""
    lab = Lab(Nat(APDM, ADF))
    event, _ = discover(lab)
    assert isinstance(event, NatDiscoveryCompleted)
    assert (event.mapping, event.filtering) == (APDM, ADF)
    assert lab.nat is not None
    assert lab.nat.next_port == 40003  # test I, mapping test II, mapping test III


def test_no_nat() -> None:
    lab = Lab(None)
    event, end = discover(lab, local=LOCAL)
    assert event == NatDiscoveryCompleted(LOCAL, OTHER, EIM, EIF)
    assert end == 0.0
    # mapped == local: mapping tests II and III are not needed (RFC 5780 §4.3)
    assert lab.destinations() == [
        (SERVER, None),
        (SERVER, ChangeRequest(change_ip=True, change_port=True)),
    ]


def test_no_nat_without_local_runs_the_mapping_tests() -> None:
    lab = Lab(None)
    event, _ = discover(lab)
    assert event == NatDiscoveryCompleted(LOCAL, OTHER, EIM, EIF)
    assert ((ALT_IP, PRIMARY_PORT), None) in lab.destinations()


@pytest.mark.parametrize("filtering", [EIF, ADF, APDF])
def test_firewall_without_nat(filtering: Behavior) -> None:
    lab = Lab(Nat(None, filtering))
    event, end = discover(lab, local=LOCAL)
    assert event == NatDiscoveryCompleted(LOCAL, OTHER, EIM, filtering)
    assert end == FILTER_DONE_AT[filtering]


def test_local_given_behind_a_nat() -> None:
    lab = Lab(Nat(ADM, EIF))
    event, _ = discover(lab, local=LOCAL)
    assert isinstance(event, NatDiscoveryCompleted) and event.mapping == ADM


def test_ipv4_mapped_local_address_compares_equal() -> None:
    lab = Lab(None)
    event, _ = discover(lab, local=("::ffff:10.0.0.2", 5000))
    assert isinstance(event, NatDiscoveryCompleted)
    assert len(lab.destinations()) == 2  # recognised as not NATed


# --------------------------------------------------------------------------- budgets and ids


def test_custom_filtering_budget() -> None:
    lab = Lab(Nat(EIM, APDF))
    event, end = discover(lab, filter_rc=1, filter_rm=2)
    assert isinstance(event, NatDiscoveryCompleted) and event.filtering == APDF
    assert end == 2.0  # each filtering test: one send, verdict 2 * 0.5 later


def test_custom_rto_scales_everything() -> None:
    lab = Lab(Nat(EIM, APDF))
    _, end = discover(lab, rto=0.1)
    assert end == pytest.approx(1.4)  # 2 x (0, 0.1, 0.3; verdict 0.3 + 0.4)


def test_lost_first_request_is_retransmitted() -> None:
    lab = Lab(Nat(EIM, EIF), lose_first=1)
    event, end = discover(lab)
    assert isinstance(event, NatDiscoveryCompleted)
    assert end == 0.5


def test_start_time_is_honoured() -> None:
    lab = Lab(Nat(EIM, ADF))
    _, end = discover(lab, now=100.0)
    assert end == 103.5


def test_transaction_ids_come_from_rng() -> None:
    lab = Lab(Nat(APDM, EIF))
    discover(lab)
    ids = [request.transaction_id for _, _, request in lab.server.requests]
    assert ids == [i.to_bytes(12, "big") for i in (1, 2, 3, 4)]


def test_bad_rng_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        NatDiscovery(SERVER, 0.0, rng=lambda n: b"short")


def test_software_attribute() -> None:
    lab = Lab(Nat(EIM, EIF))
    discover(lab, software="anchor test")
    for _, _, request in lab.server.requests:
        assert request.get(Software) == Software("anchor test")


def test_requests_go_to_the_right_addresses() -> None:
    discovery = NatDiscovery(SERVER, 0.0, rng=counter_rng())
    [transmit] = discovery.datagrams_to_send(0.0)
    assert transmit.addr == SERVER
    assert transmit.local is None
    assert discovery.next_timer() == 0.5
    discovery.handle_timer(0.2)  # early: nothing
    assert discovery.datagrams_to_send(0.2) == []


# --------------------------------------------------------------------------- failures


def test_server_without_other_address() -> None:
    lab = Lab(Nat(EIM, EIF), Server(other_address=False))
    event, end = discover(lab)
    assert isinstance(event, NatDiscoveryFailed)
    assert "OTHER-ADDRESS" in event.reason and "RFC 5780" in event.reason
    assert f"{PRIMARY_IP}:{PRIMARY_PORT}" in event.reason
    assert (event.cause, event.address) == (NatFailure.UNSUPPORTED, SERVER)
    assert event.mapped == (PUBLIC_IP, 40000)
    assert end == 0.0
    assert len(lab.destinations()) == 1


def test_server_unreachable() -> None:
    lab = Lab(Nat(EIM, EIF), Server(reachable=lambda addr: False))
    event, end = discover(lab)
    assert event == NatDiscoveryFailed(
        "test I (binding to the primary address): no response from 198.51.100.1:3478",
        cause=NatFailure.NO_RESPONSE,
        address=SERVER,
    )
    assert end == 39.5


def test_alternate_address_unreachable() -> None:
    lab = Lab(Nat(EIM, APDF), Server(reachable=lambda addr: addr[0] == PRIMARY_IP))
    event, end = discover(lab)
    assert isinstance(event, NatDiscoveryFailed)
    assert event.reason == (
        "mapping test II (alternate IP, primary port): no response from 198.51.100.2:3478"
    )
    assert (event.cause, event.address) == (NatFailure.NO_RESPONSE, (ALT_IP, PRIMARY_PORT))
    assert event.mapped == (PUBLIC_IP, 40000)
    assert end == 7.0 + 39.5


def test_server_ignoring_change_request() -> None:
    lab = Lab(Nat(EIM, EIF), Server(honor_change=False))
    event, _ = discover(lab)
    assert isinstance(event, NatDiscoveryFailed)
    assert "ignores CHANGE-REQUEST" in event.reason
    assert event.cause == NatFailure.UNSUPPORTED
    assert f"{PRIMARY_IP}:{PRIMARY_PORT}" in event.reason


def test_server_rejecting_change_request() -> None:
    lab = Lab(Nat(EIM, EIF), Server(reject_change=True))
    event, _ = discover(lab)
    assert event == NatDiscoveryFailed(
        "filtering test II (change IP and port): error response 420 Unknown Attribute"
        " from 198.51.100.1:3478",
        (PUBLIC_IP, 40000),
        cause=NatFailure.ERROR_RESPONSE,
        address=SERVER,
    )


def test_other_address_with_the_same_ip() -> None:
    lab = Lab(Nat(EIM, EIF), Server(other_ip=PRIMARY_IP))
    event, _ = discover(lab)
    assert isinstance(event, NatDiscoveryFailed)
    assert "two IP addresses" in event.reason
    assert event.cause == NatFailure.UNSUPPORTED


def test_response_without_mapped_address() -> None:
    discovery = NatDiscovery(SERVER, 0.0, rng=counter_rng())
    [transmit] = discovery.datagrams_to_send(0.0)
    response = Message.decode(transmit.data).response([OtherAddress(*OTHER)])
    assert discovery.receive_datagram(response.encode(), SERVER, 0.1)
    event = discovery.next_event()
    assert isinstance(event, NatDiscoveryFailed)
    assert "XOR-MAPPED-ADDRESS" in event.reason and f"{PRIMARY_IP}:{PRIMARY_PORT}" in event.reason
    assert event.cause == NatFailure.BAD_RESPONSE


def test_garbage_and_strays_are_dropped() -> None:
    discovery = NatDiscovery(SERVER, 0.0, rng=counter_rng())
    [transmit] = discovery.datagrams_to_send(0.0)
    request = Message.decode(transmit.data)
    stray = Message(request.method, request.msg_class, b"\xee" * 12).response(
        [XorMappedAddress(*LOCAL), OtherAddress(*OTHER)]
    )
    assert not discovery.receive_datagram(b"\x17\x03\x03 not stun", SERVER, 0.1)
    assert not discovery.receive_datagram(stray.encode(), SERVER, 0.1)
    assert discovery.dropped == 2
    assert discovery.next_event() is None
    assert not discovery.done
    assert discovery.next_timer() == 0.5


def test_late_answers_after_the_end_are_dropped() -> None:
    lab = Lab(Nat(EIM, EIF), Server(other_address=False))
    discovery = NatDiscovery(SERVER, 0.0, rng=counter_rng())
    [transmit] = discovery.datagrams_to_send(0.0)
    lab.run(discovery)  # the first copy was never delivered; the lab answers the retransmission
    answer = lab.server.handle(transmit.data, (PUBLIC_IP, 40000), SERVER)
    assert answer is not None
    assert not discovery.receive_datagram(answer[0], SERVER, 1.0)
    assert discovery.next_event() is None


# --------------------------------------------------------------------------- ICMP errors


def test_a_refused_primary_ends_test_i_at_once_naming_it() -> None:
    """The socket reports the primary address unreachable after test I's first send: no
    retransmission, no 39.5 s wait; the failure names the address and the error."""
    discovery = NatDiscovery(SERVER, 0.0, rng=counter_rng())
    assert len(discovery.datagrams_to_send(0.0)) == 1
    assert discovery.destination_unreachable(SERVER, 0.01, reason="Connection refused")
    assert discovery.next_event() == NatDiscoveryFailed(
        "test I (binding to the primary address): 198.51.100.1:3478 unreachable"
        " (Connection refused)",
        cause=NatFailure.UNREACHABLE,
        address=SERVER,
    )
    assert discovery.done and discovery.next_timer() is None
    discovery.handle_timer(0.5)
    assert discovery.datagrams_to_send(0.5) == []
    assert discovery.next_event() is None


def test_a_refused_alternate_address_ends_the_mapping_test_at_once() -> None:
    """Mapping test II goes to (alternate IP, primary port), where nobody listens: the
    failure names that address, at the time of its send (0.0), not 39.5 s later."""
    lab = Lab(Nat(EIM, EIF), Server(refused=lambda addr: addr == (ALT_IP, PRIMARY_PORT)))
    event, end = discover(lab, local=LOCAL)
    assert event == NatDiscoveryFailed(
        "mapping test II (alternate IP, primary port): 198.51.100.2:3478 unreachable"
        " (Connection refused)",
        (PUBLIC_IP, 40000),
        cause=NatFailure.UNREACHABLE,
        address=(ALT_IP, PRIMARY_PORT),
    )
    assert end == 0.0


def test_a_refused_primary_during_a_filtering_test_is_a_failure_not_silence() -> None:
    """Silence is a filtering result; a destination reported unreachable is not silent."""
    answered = iter([False])  # test I gets through, then the primary port is closed
    lab = Lab(Nat(EIM, APDF), Server(refused=lambda addr: next(answered, True)))
    event, end = discover(lab)
    assert isinstance(event, NatDiscoveryFailed)
    assert event.reason == (
        "filtering test II (change IP and port): 198.51.100.1:3478 unreachable"
        " (Connection refused)"
    )
    assert (event.cause, event.address, event.mapped) == (
        NatFailure.UNREACHABLE, SERVER, (PUBLIC_IP, 40000)
    )
    assert end == 0.0


def test_unreachable_reports_about_other_addresses_change_nothing() -> None:
    discovery = NatDiscovery(SERVER, 0.0, rng=counter_rng())
    discovery.datagrams_to_send(0.0)
    assert not discovery.destination_unreachable(OTHER, 0.1)
    assert not discovery.destination_unreachable((PRIMARY_IP, ALT_PORT), 0.1)
    for junk in (None, (), ("x",), (PRIMARY_IP, "port"), 42):
        assert not discovery.destination_unreachable(junk, 0.1)  # type: ignore[arg-type]
    assert discovery.next_event() is None and not discovery.done
    assert discovery.next_timer() == 0.5
    # the same address in another text form is the same destination
    assert discovery.destination_unreachable(("::ffff:198.51.100.1", PRIMARY_PORT), 0.2)
    event = discovery.next_event()
    assert isinstance(event, NatDiscoveryFailed) and event.cause == NatFailure.UNREACHABLE
    assert event.reason.endswith(": 198.51.100.1:3478 unreachable")
    # after the end: nothing more
    assert not discovery.destination_unreachable(SERVER, 0.3)
    assert discovery.next_event() is None


def test_an_unreachable_report_after_completion_is_ignored() -> None:
    discovery = NatDiscovery(SERVER, 0.0, rng=counter_rng(), local=LOCAL)
    event, _ = Lab(None).run(discovery)
    assert isinstance(event, NatDiscoveryCompleted)
    assert not discovery.destination_unreachable(SERVER, 1.0)
    assert discovery.next_event() is None and discovery.result == event
