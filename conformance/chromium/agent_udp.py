"""A minimal asyncio UDP adapter around Anchor's sans-I/O :class:`~anchor_ice.agent.IceAgent`.

It deliberately does not use ``anchor_ice.aio.connection``: the Chromium tests look at the agent core
itself, with one socket and everything recorded. Every datagram that arrives is offered to
``IceAgent.receive_datagram``; when that returns False (not an ICE Binding message, RFC 7983
demultiplexing) the datagram goes to the application path, :attr:`AgentEndpoint.app`, as an
application using the agent would get it. Both directions of STUN are decoded here, with
their attribute types in wire order, so the tests can say what Chromium's checks held and
what Anchor answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anchor_ice.agent import IceAgent
from anchor_ice.candidate import Candidate, CandidateType, make_candidate
from anchor_ice.events import IceEvent, PairInfo
from anchor_stun.attributes import Username
from anchor_stun.errors import DecodeError
from anchor_stun.events import Address, Transmit
from anchor_stun.message import Message, is_stun
from anchor_turn.channeldata import is_channel_data

__all__ = ["AgentEndpoint", "Datagram", "candidate_json", "pair_json", "stun_summary"]

_TLV = struct.Struct("!HH")


def _attribute_types(data: bytes) -> list[int]:
    """Attribute types of a STUN message in wire order, read from the TLVs themselves
    (MESSAGE-INTEGRITY and FINGERPRINT included, unknown types included)."""
    types = []
    pos, end = 20, min(len(data), 20 + int.from_bytes(data[2:4], "big"))
    while pos + 4 <= end:
        kind, length = _TLV.unpack_from(data, pos)
        types.append(kind)
        pos += 4 + length + (-length & 3)
    return types


def stun_summary(data: bytes) -> dict[str, Any] | None:
    """Method, class, attribute types (and error code) of a STUN message, else None."""
    if not is_stun(data):
        return None
    try:
        msg = Message.decode(data)
    except DecodeError as exc:
        return {"undecodable": str(exc)}
    error = msg.error
    username = msg.get(Username)
    return {
        "method": int(msg.method),
        "class": msg.msg_class.name.lower(),
        "transaction_id": msg.transaction_id.hex(),
        "attributes": _attribute_types(data),
        "username": username.value if username is not None else None,
        "error": error.code if error is not None else None,
    }


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    """A candidate as JSON."""
    return {
        "type": str(candidate.type),
        "address": [candidate.ip, candidate.port],
        "priority": candidate.priority,
    }


def pair_json(pair: PairInfo) -> dict[str, Any]:
    """A pair snapshot as JSON."""
    return {
        "component": pair.component,
        "local": candidate_json(pair.local),
        "remote": candidate_json(pair.remote),
        "base": list(pair.base),
    }


def _event_json(event: IceEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"event": type(event).__name__}
    for name in getattr(event, "__slots__", ()):
        value = getattr(event, name)
        if isinstance(value, PairInfo):
            value = pair_json(value)
        elif isinstance(value, Candidate):
            value = candidate_json(value)
        elif isinstance(value, tuple):
            value = [pair_json(v) if isinstance(v, PairInfo) else repr(v) for v in value]
        out[name] = value
    return out


@dataclass
class Datagram:
    """One datagram in or out of the endpoint."""

    at: float
    """Seconds since the endpoint opened."""
    direction: str
    """"in" or "out"."""
    peer: Address
    data: bytes
    handled: bool | None = None
    """For "in": what ``receive_datagram`` returned (None for "out")."""
    stun: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        """As JSON (the first 32 bytes in hex, the length)."""
        return {
            "at": round(self.at, 4),
            "direction": self.direction,
            "peer": list(self.peer),
            "length": len(self.data),
            "head": self.data[:32].hex(),
            "first_byte": self.data[0] if self.data else None,
            "handled": self.handled,
            "is_stun": is_stun(self.data),
            "is_channel_data": is_channel_data(self.data),
            "stun": self.stun,
        }


class AgentEndpoint(asyncio.DatagramProtocol):
    """One UDP socket on ``host`` carrying one :class:`IceAgent` (component 1)."""

    def __init__(self, agent: IceAgent, host: str = "127.0.0.1") -> None:
        self.agent = agent
        self.host = host
        self.local: Address = (host, 0)
        self.log: list[Datagram] = []
        """Every datagram in and out, in order."""
        self.app: list[Datagram] = []
        """Datagrams ``receive_datagram`` declined: the application path."""
        self.events: list[tuple[float, IceEvent]] = []
        """The agent's events with their times (seconds since open)."""
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.time()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> Address:
        """Bind the socket and add the host candidate; returns the local address."""
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, 0)
        )
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])
        self.agent.add_local_candidate(make_candidate(CandidateType.HOST, self.local), self.local)
        return self.local

    def host_candidate(self) -> Candidate:
        """The host candidate to signal."""
        return self.agent.local_candidates()[0]

    def start(self) -> None:
        """Start the agent's checks now."""
        self.agent.start(self._loop.time())
        self.pump()

    def close(self) -> None:
        """Close the agent and the socket."""
        if self._timer is not None:
            self._timer.cancel()
        self.agent.close(self._loop.time())
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def now(self) -> float:
        """Seconds since the endpoint opened."""
        return self._loop.time() - self._opened

    # ------------------------------------------------------------------ pumping

    def datagram_received(self, data: bytes, addr: Any) -> None:
        peer = (addr[0], addr[1])
        handled = self.agent.receive_datagram(data, peer, self.local, self._loop.time())
        record = Datagram(self.now(), "in", peer, bytes(data), handled, stun_summary(data))
        self.log.append(record)
        if not handled:
            self.app.append(record)
        self.pump()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a closed port: the checks' own timeouts deal with it

    def _send(self, transmit: Transmit) -> None:
        if self._transport is None:
            return
        self._transport.sendto(transmit.data, transmit.addr)
        self.log.append(
            Datagram(self.now(), "out", transmit.addr, transmit.data, None,
                     stun_summary(transmit.data))
        )  # fmt: skip

    def pump(self) -> None:
        """Send what is due, collect events, re-arm the timer."""
        agent = self.agent
        now = self._loop.time()
        for transmit in agent.datagrams_to_send(now):
            self._send(transmit)
        while (event := agent.next_event()) is not None:
            self.events.append((self.now(), event))
            self._changed.set()
        deadline = agent.next_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else self._loop.call_at(deadline, self._fire)
            self._timer_at = deadline
        self._changed.set()

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.agent.handle_timer(self._loop.time())
        self.pump()

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``condition()`` holds (checked after every datagram, timer or event);
        False when ``timeout`` passed first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
                return True
        return condition()

    # ------------------------------------------------------------------ reports

    def events_json(self) -> list[dict[str, Any]]:
        """The agent's events as JSON, with their times."""
        return [{"at": round(at, 4), **_event_json(event)} for at, event in self.events]

    def event_names(self) -> list[str]:
        """Names of the agent's events, in order."""
        return [type(event).__name__ for _, event in self.events]
