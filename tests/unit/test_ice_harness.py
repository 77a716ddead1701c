"""An in-memory network for ICE agent tests, and tests of the network itself.

Agents are attached as :class:`Endpoint` objects: a host address (the base of the host
candidate), optionally a NAT in front of it and a relayed address (a TURN allocation that
needs no permissions). :func:`transfer` moves what two agents want to send, through the
network, at one instant of a fake clock; :func:`run` drives timers and deliveries until a
deadline. The network can drop, reorder, duplicate and delay packets, and NATs rewrite
source addresses (endpoint-independent mapping; endpoint-independent or address-dependent
filtering, RFC 4787 terms). No sockets, no event loop, no real time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from anchor_ice.agent import IceAgent
from anchor_ice.candidate import Candidate, CandidateType, make_candidate
from anchor_ice.nominator import GatewayNominator, Nominator, StandardNominator
from anchor_stun.events import Address, Transmit
from anchor_stun.message import Message, is_stun


def seeded(seed: int) -> Callable[[int], bytes]:
    """A deterministic rng for agents."""
    generator = random.Random(seed)
    return generator.randbytes


@dataclass
class Nat:
    """A NAT with endpoint-independent mapping (RFC 4787 §4.1)."""

    public_ip: str
    filtering: str = "endpoint-independent"  # or "address-dependent"
    next_port: int = 40000
    mapping: dict[Address, Address] = field(default_factory=dict)
    reverse: dict[Address, Address] = field(default_factory=dict)
    contacted: dict[Address, set[str]] = field(default_factory=dict)

    def outbound(self, internal: Address, destination: Address) -> Address:
        public = self.mapping.get(internal)
        if public is None:
            public = (self.public_ip, self.next_port)
            self.next_port += 1
            self.mapping[internal] = public
            self.reverse[public] = internal
        self.contacted.setdefault(internal, set()).add(destination[0])
        return public

    def inbound(self, public: Address, source: Address) -> Address | None:
        internal = self.reverse.get(public)
        if internal is None:
            return None
        if self.filtering == "address-dependent" and source[0] not in self.contacted[internal]:
            return None
        return internal


@dataclass(eq=False)
class Endpoint:
    """An agent on the in-memory network."""

    agent: IceAgent
    host: Address
    nat: Nat | None = None
    relay: Address | None = None
    received: list[bytes] = field(default_factory=list)
    events: list[object] = field(default_factory=list)

    def drain_events(self) -> list[object]:
        while (event := self.agent.next_event()) is not None:
            self.events.append(event)
        return self.events


@dataclass
class Packet:
    deliver_at: float
    destination: Endpoint
    data: bytes
    source: Address
    local: Address
    sent_to: Address


class Network:
    """Routes Transmits between endpoints; see the module docstring."""

    def __init__(
        self,
        *,
        latency: float | Callable[[Address, Address], float] = 0.0,
        drop: Callable[[Packet], bool] | None = None,
        duplicate: Callable[[Packet], bool] | None = None,
        reorder: bool = False,
    ) -> None:
        self.endpoints: list[Endpoint] = []
        self.latency = latency
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self.queue: list[Packet] = []
        self.log: list[Packet] = []
        """Every packet that entered the network (before drop), in order."""
        self.blackholed: list[Transmit] = []

    def add(
        self,
        agent: IceAgent,
        host: Address,
        *,
        nat: Nat | None = None,
        relay: Address | None = None,
    ) -> Endpoint:
        endpoint = Endpoint(agent, host, nat, relay)
        self.endpoints.append(endpoint)
        return endpoint

    def _source(self, sender: Endpoint, transmit: Transmit) -> Address:
        if transmit.local == sender.relay and sender.relay is not None:
            return sender.relay
        assert transmit.local == sender.host, f"unknown base {transmit.local}"
        if sender.nat is not None and not self._same_lan(sender, transmit.addr):
            return sender.nat.outbound(sender.host, transmit.addr)
        return sender.host

    def _same_lan(self, sender: Endpoint, destination: Address) -> bool:
        return any(
            e.host == destination and e.nat is not None and e.nat is sender.nat
            for e in self.endpoints
        )

    def _route(self, source: Address, destination: Address, sender: Endpoint
               ) -> tuple[Endpoint, Address] | None:
        for endpoint in self.endpoints:
            if endpoint.relay is not None and endpoint.relay == destination:
                return endpoint, endpoint.relay
        for endpoint in self.endpoints:
            if endpoint.nat is not None and endpoint.nat.public_ip == destination[0]:
                internal = endpoint.nat.inbound(destination, source)
                if internal == endpoint.host:
                    return endpoint, endpoint.host
            if endpoint.host == destination and (
                endpoint.nat is None or endpoint.nat is sender.nat
            ):
                return endpoint, endpoint.host
        return None

    def _delay(self, source: Address, destination: Address) -> float:
        if callable(self.latency):
            return self.latency(source, destination)
        return self.latency

    def _endpoint_for(self, sender: Endpoint, local: Address | None) -> Endpoint:
        """The endpoint of the same agent that owns the base ``local`` (an agent with several
        components has one endpoint per socket)."""
        for endpoint in self.endpoints:
            if endpoint.agent is sender.agent and local in (endpoint.host, endpoint.relay):
                return endpoint
        return sender

    def send(self, sender: Endpoint, transmit: Transmit, now: float) -> None:
        sender = self._endpoint_for(sender, transmit.local)
        source = self._source(sender, transmit)
        route = self._route(source, transmit.addr, sender)
        if route is None:
            self.blackholed.append(transmit)
            return
        destination, local = route
        packet = Packet(
            now + self._delay(source, transmit.addr), destination, transmit.data, source, local,
            transmit.addr,
        )
        self.log.append(packet)
        if self.drop is not None and self.drop(packet):
            return
        self.queue.append(packet)
        if self.duplicate is not None and self.duplicate(packet):
            self.queue.append(packet)

    def due(self, now: float) -> list[Packet]:
        ready = [p for p in self.queue if p.deliver_at <= now]
        self.queue = [p for p in self.queue if p.deliver_at > now]
        if self.reorder:
            ready.reverse()
        return ready

    def next_delivery(self) -> float | None:
        return min((p.deliver_at for p in self.queue), default=None)


def deliver(packet: Packet, now: float) -> None:
    endpoint = packet.destination
    if not endpoint.agent.receive_datagram(packet.data, packet.source, packet.local, now):
        endpoint.received.append(packet.data)


def transfer(a: Endpoint, b: Endpoint, now: float, net: Network) -> int:
    """Send what ``a`` and ``b`` have queued at ``now`` and deliver what is due; returns the
    number of packets delivered."""
    for endpoint in (a, b):
        for transmit in endpoint.agent.datagrams_to_send(now):
            net.send(endpoint, transmit, now)
    packets = net.due(now)
    for packet in packets:
        deliver(packet, now)
    return len(packets)


def run(a: Endpoint, b: Endpoint, net: Network, now: float, until: float) -> float:
    """Drive both agents on a fake clock from ``now`` until nothing is due before ``until``;
    returns the clock."""
    for _ in range(200_000):
        while transfer(a, b, now, net):
            pass
        a.drain_events()
        b.drain_events()
        times = [t for t in (a.agent.next_timer(), b.agent.next_timer(), net.next_delivery())
                 if t is not None]
        if not times:
            return now
        t = min(times)
        if t > until:
            return now
        now = max(now, t)
        for endpoint in (a, b):
            timer = endpoint.agent.next_timer()
            if timer is not None and timer <= now:
                endpoint.agent.handle_timer(now)
    raise AssertionError("the agents never went quiet")


def host(ip: str, port: int, component: int = 1) -> Candidate:
    return make_candidate(CandidateType.HOST, (ip, port), component=component)


def srflx(ip: str, port: int, base: Address, component: int = 1) -> Candidate:
    return make_candidate(
        CandidateType.SRFLX, (ip, port), base=base, related=base, component=component,
        server_ip="192.0.2.100",
    )


def relay(ip: str, port: int, mapped: Address, component: int = 1) -> Candidate:
    return make_candidate(
        CandidateType.RELAY, (ip, port), related=mapped, component=component,
        server_ip=ip,
    )


def exchange(a: Endpoint, b: Endpoint, *, end: bool = True) -> None:
    """Signal credentials and advertised candidates both ways."""
    a.agent.set_remote_credentials(b.agent.local_ufrag, b.agent.local_pwd)
    b.agent.set_remote_credentials(a.agent.local_ufrag, a.agent.local_pwd)
    for x, y in ((a, b), (b, a)):
        for candidate in x.agent.local_candidates():
            y.agent.add_remote_candidate(candidate)
        if end:
            y.agent.add_remote_candidate(None)


def pair_of_agents(
    *,
    nominator_a: Nominator | None = None,
    nominator_b: Nominator | None = None,
    **kwargs: object,
) -> tuple[IceAgent, IceAgent]:
    a = IceAgent(controlling=True, rng=seeded(1), nominator=nominator_a, **kwargs)  # type: ignore[arg-type]
    b = IceAgent(controlling=False, rng=seeded(2), nominator=nominator_b, **kwargs)  # type: ignore[arg-type]
    return a, b


def loopback_pair(**kwargs: object) -> tuple[Endpoint, Endpoint, Network]:
    """Two agents with one host candidate each on 10.0.0.1 / 10.0.0.2, no NAT."""
    a, b = pair_of_agents(**kwargs)  # type: ignore[arg-type]
    net = Network()
    ea = net.add(a, ("10.0.0.1", 5000))
    eb = net.add(b, ("10.0.0.2", 6000))
    a.add_local_candidate(host("10.0.0.1", 5000), ("10.0.0.1", 5000))
    b.add_local_candidate(host("10.0.0.2", 6000), ("10.0.0.2", 6000))
    return ea, eb, net


def decode(data: bytes) -> Message:
    assert is_stun(data)
    return Message.decode(data)


# ------------------------------------------------------------------------- tests of the harness


def test_nat_maps_and_filters() -> None:
    nat = Nat("203.0.113.1", filtering="address-dependent")
    public = nat.outbound(("10.0.0.1", 5000), ("198.51.100.1", 7))
    assert public == ("203.0.113.1", 40000)
    assert nat.outbound(("10.0.0.1", 5000), ("198.51.100.2", 9)) == public  # EIM
    assert nat.inbound(public, ("198.51.100.1", 1234)) == ("10.0.0.1", 5000)
    assert nat.inbound(public, ("198.51.100.3", 7)) is None  # address-dependent filtering
    assert nat.inbound(("203.0.113.1", 40001), ("198.51.100.1", 7)) is None


def test_network_routes_through_nat_and_relay() -> None:
    a, b = pair_of_agents()
    net = Network()
    nat = Nat("203.0.113.1")
    ea = net.add(a, ("10.0.0.1", 5000), nat=nat, relay=("192.0.2.50", 50000))
    eb = net.add(b, ("198.51.100.2", 6000))
    net.send(ea, Transmit(b"x", ("198.51.100.2", 6000), ("10.0.0.1", 5000)), 0.0)
    net.send(ea, Transmit(b"y", ("198.51.100.2", 6000), ("192.0.2.50", 50000)), 0.0)
    net.send(eb, Transmit(b"z", ("203.0.113.1", 40000), ("198.51.100.2", 6000)), 0.0)
    net.send(eb, Transmit(b"w", ("10.0.0.1", 5000), ("198.51.100.2", 6000)), 0.0)
    packets = net.due(0.0)
    assert [(p.data, p.source, p.local) for p in packets] == [
        (b"x", ("203.0.113.1", 40000), ("198.51.100.2", 6000)),
        (b"y", ("192.0.2.50", 50000), ("198.51.100.2", 6000)),
        (b"z", ("198.51.100.2", 6000), ("10.0.0.1", 5000)),
    ]
    assert net.blackholed == [Transmit(b"w", ("10.0.0.1", 5000), ("198.51.100.2", 6000))]


def test_default_nominators() -> None:
    assert isinstance(IceAgent(controlling=True, rng=seeded(0)).nominator, StandardNominator)
    assert GatewayNominator().grace == 2.0
