"""Signalling for the ephemeral link: how two :class:`~anchor_link.aio.endpoint.LinkEndpoint` endpoints
exchange their descriptions (ICE credentials, candidates, sealing keys).

Theory of operation
-------------------
Signalling is pluggable. A :class:`Signalling` is a factory of mailboxes:
``await signalling.open(name)`` subscribes ``name`` and returns a :class:`Mailbox`, through
which the endpoint publishes a description (a JSON object) to a peer name and receives the
descriptions addressed to it, each in an :class:`Envelope` whose ``sender`` is stamped by the
signalling itself (a peer cannot claim another's name). A description that cannot be
delivered because nobody holds the peer's name comes back as an envelope from that peer whose
body is ``{"type": "unreachable"}`` (:data:`UNREACHABLE`).

The subscription is the only thing an idle endpoint keeps open, and it is not a socket to the
peer: with :class:`InProcessSignalling` it is a queue in a hub object; with
:class:`WebSocketSignalling` one TCP connection to the rendezvous server.

Two implementations:

- :class:`InProcessSignalling`: a hub shared by endpoints in one process (tests; the
  in-process link). Bodies go through ``json.dumps``/``json.loads`` as on the wire.
- :class:`WebSocketSignalling` with the rendezvous server :class:`RendezvousServer`
  (``anchor serve --signal IP:PORT``, or :func:`serve_rendezvous`): endpoints on different
  processes or machines. One WebSocket connection per endpoint (RFC 6455, the ``websockets``
  package); every message is one JSON text frame::

      client -> server   {"op": "hello", "name": NAME}            first, once
      server -> client   {"op": "welcome"} | {"op": "error", "reason": ...} (then closes)
      client -> server   {"op": "send", "to": PEER, "body": {...}}
      server -> PEER     {"op": "message", "from": NAME, "body": {...}}
      server -> client   {"op": "unreachable", "to": PEER}        PEER is not connected

  A name is held by one connection at a time (a second hello for it is refused while the
  holder answers a ping within :data:`HOLDER_PING_TIMEOUT`; a holder that does not is
  dropped) and freed when that connection closes. The welcome carries a resume token (``{"op": "welcome",
  "resume": TOKEN}``): a hello for a held name with that token (``{"op": "hello", "name":
  NAME, "resume": TOKEN}``) takes the name over, and the old connection is dropped. The
  client uses it to come back when its connection dies under it (a NAT that forgot the
  mapping, a server restart): it pings every :data:`PING_INTERVAL` seconds, and when the
  connection is lost it reconnects with the token, retrying for up to ``reconnect_timeout``
  seconds before the mailbox reports :class:`SignallingClosed`. Descriptions the server
  forwarded into the dead connection are lost; a description published meanwhile waits for
  the new connection. The server keeps nothing else: no history, no rooms. It
  forwards descriptions only, never application data, so it is not a relay. It does not
  authenticate anybody: a description carries the peer's sealing key, bound to its ICE
  credentials (:func:`anchor_link.seal.ice_context`), but a rendezvous that lies about who is
  who can still pose as the peer. Run it where you trust it, or behind TLS and access
  control of your own (``wss://`` URLs are accepted by the client).
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from anchor_stun.errors import AnchorError
from anchor_stun.events import Address

__all__ = [
    "HOLDER_PING_TIMEOUT",
    "MAX_BODY",
    "MAX_NAME",
    "PING_INTERVAL",
    "RECONNECT_TIMEOUT",
    "UNREACHABLE",
    "Envelope",
    "InProcessSignalling",
    "Mailbox",
    "RendezvousServer",
    "Signalling",
    "SignallingClosed",
    "SignallingError",
    "WebSocketSignalling",
    "serve_rendezvous",
]

UNREACHABLE = "unreachable"
"""``body["type"]`` of the envelope that says a description could not be delivered."""
MAX_NAME = 64
"""Longest endpoint name, in characters."""
MAX_BODY = 64 * 1024
"""Largest description, in bytes of JSON (a description is a few hundred bytes)."""
PING_INTERVAL = 5.0
"""Seconds between the WebSocket client's keepalive pings; a dead connection is noticed
within about twice that (a reset answers the next ping, or the ping goes unanswered)."""
RECONNECT_TIMEOUT = 30.0
"""Default seconds a WebSocket mailbox keeps trying to come back after losing its connection."""
HOLDER_PING_TIMEOUT = 1.0
"""Seconds the rendezvous waits for the pong of a name's holder when another connection asks
for that name: a holder that does not answer is dropped and the name given to the newcomer."""


class SignallingError(AnchorError):
    """The signalling refused something (a name taken, a malformed body) or failed."""


class SignallingClosed(SignallingError):
    """The mailbox is closed (by its owner, or the rendezvous connection was lost)."""


class _Refused(SignallingError):
    """The rendezvous answered the hello with an error (name taken, invalid)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A description received, with the sender's name as the signalling knows it."""

    sender: str
    """Name of the endpoint that published it (stamped by the signalling)."""
    body: dict[str, Any]
    """The description (a JSON object)."""


class Mailbox(Protocol):
    """One endpoint's subscription to a :class:`Signalling`."""

    @property
    def name(self) -> str:
        """The name descriptions are addressed to."""
        ...

    async def publish(self, peer: str, body: Mapping[str, Any]) -> None:
        """Send a description to ``peer`` (an :data:`UNREACHABLE` envelope comes back if
        nobody holds that name). Raises :class:`SignallingClosed` once closed."""
        ...

    async def receive(self) -> Envelope:
        """The next description addressed to us. Raises :class:`SignallingClosed` once
        closed."""
        ...

    async def close(self) -> None:
        """Unsubscribe; the name becomes free. Idempotent."""
        ...


class Signalling(Protocol):
    """A way for endpoints to find each other by name."""

    async def open(self, name: str) -> Mailbox:
        """Subscribe ``name``; raises :class:`SignallingError` when it is taken or invalid."""
        ...


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise SignallingError(f"a name is 1 to {MAX_NAME} printable characters: {name!r}")


def _encode_body(body: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(dict(body), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SignallingError(f"description is not JSON: {exc}") from None
    if len(text.encode()) > MAX_BODY:
        raise SignallingError(f"description larger than {MAX_BODY} bytes")
    return text


# --------------------------------------------------------------------------- in-process


class InProcessSignalling:
    """A hub for endpoints in one process: ``hub = InProcessSignalling()`` and give the same
    hub to every :class:`~anchor_link.aio.endpoint.LinkEndpoint`."""

    def __init__(self) -> None:
        self._boxes: dict[str, _InProcessMailbox] = {}
        self.delivered = 0
        """Descriptions delivered so far."""

    async def open(self, name: str) -> Mailbox:
        """Subscribe ``name`` (refused while another mailbox holds it)."""
        _check_name(name)
        if name in self._boxes:
            raise SignallingError(f"name {name!r} is taken")
        box = _InProcessMailbox(self, name)
        self._boxes[name] = box
        return box

    def names(self) -> list[str]:
        """Names subscribed now."""
        return list(self._boxes)

    def _deliver(self, sender: str, peer: str, text: str) -> None:
        box = self._boxes.get(peer)
        if box is None:
            self._boxes[sender]._put(Envelope(peer, {"type": UNREACHABLE}))
            return
        self.delivered += 1
        box._put(Envelope(sender, json.loads(text)))

    def _remove(self, box: _InProcessMailbox) -> None:
        if self._boxes.get(box.name) is box:
            del self._boxes[box.name]


class _InProcessMailbox:
    def __init__(self, hub: InProcessSignalling, name: str) -> None:
        self._hub = hub
        self._name = name
        self._queue: asyncio.Queue[Envelope | None] = asyncio.Queue()
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    def _put(self, envelope: Envelope) -> None:
        if not self._closed:
            self._queue.put_nowait(envelope)

    async def publish(self, peer: str, body: Mapping[str, Any]) -> None:
        if self._closed:
            raise SignallingClosed("mailbox closed")
        _check_name(peer)
        self._hub._deliver(self._name, peer, _encode_body(body))

    async def receive(self) -> Envelope:
        if self._closed and self._queue.empty():
            raise SignallingClosed("mailbox closed")
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise SignallingClosed("mailbox closed")
        return item

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._remove(self)
            self._queue.put_nowait(None)


# --------------------------------------------------------------------------- WebSocket client


class WebSocketSignalling:
    """Signalling through a rendezvous server: ``WebSocketSignalling("ws://host:port")``.
    ``name``, when given, is the only name :meth:`open` accepts (a guard for callers that
    configure both). A lost connection is re-established for up to ``reconnect_timeout``
    seconds (module docstring)."""

    def __init__(
        self,
        url: str,
        name: str | None = None,
        *,
        open_timeout: float = 10.0,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        """The rendezvous URL (``ws://`` or ``wss://``)."""
        self.name = name
        """The name this signalling is meant for, or None for any."""
        self.open_timeout = open_timeout
        """Seconds to connect and be welcomed."""
        self.reconnect_timeout = reconnect_timeout
        """Seconds a mailbox keeps trying to reconnect after losing its connection."""

    async def open(self, name: str) -> Mailbox:
        """Connect to the rendezvous and claim ``name``. Raises :class:`SignallingError`
        when the server cannot be reached or refuses the name."""
        _check_name(name)
        if self.name is not None and name != self.name:
            raise SignallingError(f"this signalling is for {self.name!r}, not {name!r}")
        ws, token = await self._connect(name, None)
        return _WebSocketMailbox(self, ws, name, token)

    async def _connect(self, name: str, resume: str | None) -> tuple[ClientConnection, str]:
        """One connection, welcomed under ``name`` (taking it over with ``resume``)."""
        hello: dict[str, str] = {"op": "hello", "name": name}
        if resume is not None:
            hello["resume"] = resume
        try:
            async with asyncio.timeout(self.open_timeout):
                ws = await connect(
                    self.url, proxy=None, compression=None, max_size=MAX_BODY + 1024,
                    open_timeout=self.open_timeout, ping_interval=PING_INTERVAL,
                    ping_timeout=PING_INTERVAL,
                )  # fmt: skip
                try:
                    await ws.send(json.dumps(hello))
                    answer = json.loads(await ws.recv())
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError:
            raise SignallingError(f"rendezvous {self.url} did not answer") from None
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed, ValueError) as exc:
            raise SignallingError(f"cannot reach rendezvous {self.url}: {exc}") from None
        if not isinstance(answer, dict) or answer.get("op") != "welcome":
            reason = answer.get("reason") if isinstance(answer, dict) else None
            await ws.close()
            raise _Refused(f"rendezvous refused {name!r}: {reason or answer!r}")
        token = answer.get("resume")
        return ws, token if isinstance(token, str) else ""


class _WebSocketMailbox:
    def __init__(
        self, signalling: WebSocketSignalling, ws: ClientConnection, name: str, token: str
    ) -> None:
        self._signalling = signalling
        self._ws = ws
        self._name = name
        self._token = token
        self._closed = False
        self._reconnecting: asyncio.Task[ClientConnection] | None = None
        self.reconnects = 0
        """Times the connection was lost and re-established."""

    @property
    def name(self) -> str:
        return self._name

    async def _connection(self, lost: ClientConnection) -> ClientConnection:
        """A live connection after ``lost`` died: the current one if it is newer, else a
        reconnection (one at a time, shared by publish and receive)."""
        if self._ws is not lost:
            return self._ws
        if self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())
        task = self._reconnecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._reconnecting is task:
                self._reconnecting = None

    async def _reconnect(self) -> ClientConnection:
        """Reconnect with the resume token, with backoff, for up to ``reconnect_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._signalling.reconnect_timeout
        delay = 0.05
        while not self._closed:
            try:
                ws, token = await self._signalling._connect(self._name, self._token or None)
            except SignallingError as exc:
                if isinstance(exc, _Refused) or loop.time() + delay > deadline:
                    raise SignallingClosed(f"rendezvous connection lost: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if self._closed:
                await ws.close()
                break
            self._ws, self._token = ws, token or self._token
            self.reconnects += 1
            return ws
        raise SignallingClosed("mailbox closed")

    async def publish(self, peer: str, body: Mapping[str, Any]) -> None:
        if self._closed:
            raise SignallingClosed("mailbox closed")
        _check_name(peer)
        text = _encode_body(body)
        frame = '{"op":"send","to":' + json.dumps(peer) + ',"body":' + text + "}"
        ws = self._ws
        try:
            await ws.send(frame)
            return
        except ConnectionClosed:
            pass
        ws = await self._connection(ws)
        try:
            await ws.send(frame)
        except ConnectionClosed:
            raise SignallingClosed("rendezvous connection lost") from None

    async def receive(self) -> Envelope:
        while True:
            if self._closed:
                raise SignallingClosed("mailbox closed")
            ws = self._ws
            try:
                raw = await ws.recv()
            except ConnectionClosed:
                if self._closed:
                    raise SignallingClosed("mailbox closed") from None
                await self._connection(ws)
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            op = msg.get("op")
            if op == "message" and isinstance(msg.get("from"), str) and isinstance(
                msg.get("body"), dict
            ):
                return Envelope(msg["from"], msg["body"])
            if op == UNREACHABLE and isinstance(msg.get("to"), str):
                return Envelope(msg["to"], {"type": UNREACHABLE})

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._reconnecting is not None:
                self._reconnecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, SignallingError):
                    await self._reconnecting
                self._reconnecting = None
            await self._ws.close()

    def socket_fileno(self) -> int:
        """File descriptor of the rendezvous connection (-1 once closed)."""
        transport = self._ws.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return -1 if sock is None else int(sock.fileno())


# --------------------------------------------------------------------------- rendezvous server


class RendezvousServer:
    """The WebSocket rendezvous: forwards descriptions between named connections (module
    docstring). ``await start()``, then :attr:`address`; ``close()`` and
    ``await wait_closed()``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: Server | None = None
        self._names: dict[str, ServerConnection] = {}
        self._tokens: dict[str, str] = {}
        self.forwarded = 0
        """Descriptions forwarded so far."""
        self.resumed = 0
        """Names taken over by a reconnecting holder (hello with its resume token)."""

    @property
    def address(self) -> Address:
        """The bound (ip, port)."""
        if self._server is None or not self._server.sockets:
            raise SignallingError("rendezvous not started")
        sockname = self._server.sockets[0].getsockname()
        return (str(sockname[0]), int(sockname[1]))

    @property
    def url(self) -> str:
        """``ws://ip:port`` for clients."""
        host, port = self.address
        return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"

    def names(self) -> list[str]:
        """Names connected now."""
        return list(self._names)

    async def start(self) -> Address:
        """Listen; raises OSError when the address cannot be bound."""
        self._server = await serve(
            self._handle, self.host, self.port, compression=None, max_size=MAX_BODY + 1024,
        )  # fmt: skip
        return self.address

    def open_sockets(self) -> int:
        """Listening sockets and client connections still open."""
        if self._server is None:
            return 0
        listening = len(self._server.sockets) if self._server.is_serving() else 0
        return listening + len(self._server.connections)

    def close(self) -> None:
        """Stop listening and close every client connection."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Wait until everything is closed."""
        if self._server is not None:
            await self._server.wait_closed()

    async def _alive(self, holder: ServerConnection) -> bool:
        """Whether the holder of a name answers a ping within :data:`HOLDER_PING_TIMEOUT`:
        a holder that went away without its close reaching us (a NAT that forgot the
        mapping, a lost FIN) must not keep its name until keepalive finds out."""
        try:
            pong = await holder.ping()
            await asyncio.wait_for(pong, HOLDER_PING_TIMEOUT)
        except (ConnectionClosed, TimeoutError):
            return False
        return True

    async def _handle(self, ws: ServerConnection) -> None:
        name: str | None = None
        try:
            hello = json.loads(await ws.recv())
            candidate = hello.get("name") if isinstance(hello, dict) else None
            if not isinstance(hello, dict) or hello.get("op") != "hello" or not isinstance(
                candidate, str
            ):
                await ws.send(json.dumps({"op": "error", "reason": "expected hello"}))
                return
            try:
                _check_name(candidate)
            except SignallingError as exc:
                await ws.send(json.dumps({"op": "error", "reason": str(exc)}))
                return
            old = self._names.get(candidate)
            token = self._tokens.get(candidate)
            resuming = False
            if old is not None:
                resume = hello.get("resume")
                resuming = (
                    isinstance(resume, str)
                    and token is not None
                    and secrets.compare_digest(resume, token)
                )
                alive = not resuming and await self._alive(old)
                holder = self._names.get(candidate)
                if alive or holder not in (old, None):  # (another newcomer got it meanwhile)
                    reason = f"name {candidate!r} is taken"
                    await ws.send(json.dumps({"op": "error", "reason": reason}))
                    return
                if resuming:
                    self.resumed += 1  # its holder came back on a new connection
                if holder is old and old.transport is not None:
                    old.transport.abort()  # dead or dying: the name goes to the newcomer
            if not resuming or token is None:
                token = secrets.token_urlsafe(16)
            name = candidate
            self._names[name] = ws
            self._tokens[name] = token
            await ws.send(json.dumps({"op": "welcome", "resume": token}))
            async for raw in ws:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    msg = json.loads(raw)
                    to, body = msg.get("to"), msg.get("body")
                    if msg.get("op") != "send" or not isinstance(to, str) or not isinstance(
                        body, dict
                    ):
                        continue
                    target = self._names.get(to)
                    if target is None:
                        await ws.send(json.dumps({"op": UNREACHABLE, "to": to}))
                        continue
                    out = {"op": "message", "from": name, "body": body}
                    with contextlib.suppress(ConnectionClosed):
                        await target.send(json.dumps(out, separators=(",", ":")))
                        self.forwarded += 1
        except (ConnectionClosed, ValueError):
            pass
        finally:
            if name is not None and self._names.get(name) is ws:
                del self._names[name]
                del self._tokens[name]


async def serve_rendezvous(host: str, port: int) -> RendezvousServer:
    """Start a :class:`RendezvousServer` on ``host:port`` (port 0: any free port)."""
    server = RendezvousServer(host, port)
    await server.start()
    return server
