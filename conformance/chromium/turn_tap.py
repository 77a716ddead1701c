"""A recording UDP relay between Chromium and a TURN server, inside the scenario's namespace.

Chromium is given the tap's address as its TURN server; the tap forwards every datagram
unchanged to the real server, from one upstream socket per Chromium socket (the server keys
an allocation by its 5-tuple, RFC 8656 §2.2, so each client must keep one of its own), and
every answer back. On the way it decodes the STUN messages (RFC 8489) it forwards and keeps
the ChannelBind requests (their CHANNEL-NUMBER, RFC 8656 §12) and every response to one, so
that a test can count ChannelBind error responses on the wire without asking the server.
ChannelData and everything else pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from anchor_stun.attributes import ChannelNumber
from anchor_stun.errors import DecodeError
from anchor_stun.events import Address
from anchor_stun.message import Message, MessageClass, Method, is_stun

__all__ = ["TurnTap"]


class _Upstream(asyncio.DatagramProtocol):
    """One Chromium socket's connection to the server: answers go back to that socket."""

    def __init__(self, tap: TurnTap, client: Address) -> None:
        self.tap = tap
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.tap.record("to_client", data)
        if self.tap.listener is not None:
            self.tap.listener.sendto(data, self.client)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, tap: TurnTap) -> None:
        self.tap = tap

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.tap.from_client(data, addr)


class TurnTap:
    """Forward UDP between TURN clients and ``server``, recording ChannelBind exchanges."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self.listener: asyncio.DatagramTransport | None = None
        self.address: Address | None = None
        """Where clients send (the tap's listening address), after :meth:`start`."""
        self.channel_binds: list[dict[str, Any]] = []
        """Every ChannelBind request and response, in wire order: direction, class,
        transaction id, channel number (requests) and error code (error responses)."""
        self.messages: dict[str, int] = {}
        """How many STUN messages of each "METHOD class" went through."""
        self._upstreams: dict[Address, _Upstream] = {}
        self._pending: dict[Address, list[bytes]] = {}

    async def start(self, host: str = "127.0.0.1") -> Address:
        """Listen on ``host`` (a free port); returns the address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=(host, 0)
        )
        self.listener = transport
        self.address = transport.get_extra_info("sockname")[:2]
        return self.address

    def from_client(self, data: bytes, client: Address) -> None:
        self.record("to_server", data)
        upstream = self._upstreams.get(client)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.sendto(data)
            return
        pending = self._pending.setdefault(client, [])
        pending.append(data)
        if len(pending) == 1:  # first datagram of this client: open its upstream socket
            asyncio.get_running_loop().create_task(self._open(client))

    async def _open(self, client: Address) -> None:
        loop = asyncio.get_running_loop()
        upstream = _Upstream(self, client)
        await loop.create_datagram_endpoint(lambda: upstream, remote_addr=self.server)
        self._upstreams[client] = upstream
        assert upstream.transport is not None
        for data in self._pending.pop(client, []):
            upstream.transport.sendto(data)

    def record(self, direction: str, data: bytes) -> None:
        """Count a forwarded STUN message; keep it when it is a ChannelBind one."""
        if not is_stun(data):
            return
        try:
            msg = Message.decode(data)
        except DecodeError:
            return
        try:
            method = Method(msg.method).name
        except ValueError:  # a method this codec does not name
            method = f"{int(msg.method):#05x}"
        key = f"{method} {MessageClass(msg.msg_class).name.lower()}"
        self.messages[key] = self.messages.get(key, 0) + 1
        if msg.method != Method.CHANNEL_BIND:
            return
        number = msg.get(ChannelNumber)
        error = msg.error
        self.channel_binds.append({
            "direction": direction,
            "class": MessageClass(msg.msg_class).name.lower(),
            "transaction_id": msg.transaction_id.hex(),
            "channel": number.value if number is not None else None,
            "error": error.code if error is not None else None,
        })  # fmt: skip

    def close(self) -> None:
        """Close every socket of the tap."""
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        if self.listener is not None:
            with contextlib.suppress(Exception):
                self.listener.close()
