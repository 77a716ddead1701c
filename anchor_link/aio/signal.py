"""Signalling for the ephemeral link: how two :class:`~anchor_link.aio.endpoint.LinkEndpoint` endpoints
exchange their descriptions (the link's handshake messages, which carry the ICE credentials
and candidates).

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

      client -> server   {"op": "hello", "name": NAME, "noise": B64}     -> e
      server -> client   {"op": "challenge", "noise": B64}                <- e, ee
      client -> server   {"op": "prove", "noise": B64}                    -> s, se
      server -> client   {"op": "welcome", "identity": "anchor1:..."}
                         | {"op": "error", "reason": ...} (then closes)
      client -> server   {"op": "send", "to": PEER, "body": {...}}
      server -> PEER     {"op": "message", "from": NAME, "body": {...}}
      server -> client   {"op": "unreachable", "to": PEER}        PEER is not connected
      server -> client   {"op": "error", "reason": ...}            a frame it refused

  **Who holds a name.** Before it may hold a name a connection proves possession of its
  identity key (:class:`~anchor_link.identity.Identity`) over a fresh challenge: the three
  ``noise`` messages are ``Noise_XN_25519_ChaChaPoly_SHA256``
  (:func:`anchor_link.handshake.rendezvous_handshake`): the server's ephemeral key, new for every
  connection, is the challenge, and the client's static key is proven by a Diffie-Hellman with
  it, under a prologue that binds the name asked for. A name is bound to the key that holds
  it: while it is held, a hello for it with another key is refused (the holder keeps it
  whatever its network does); a hello with the same key is its holder coming back (a NAT that
  forgot the mapping, a server restart): the new connection takes the name and the old one is
  dropped. The client reconnects that way by itself, for up to ``reconnect_timeout`` seconds,
  pinging every :data:`PING_INTERVAL` seconds to notice a dead connection. Descriptions the
  server forwarded into the dead connection are lost; a description published meanwhile waits
  for the new connection.

  **Bounds** (:class:`RendezvousServer` arguments): an optional allow-list of identities that
  may connect; a connection that has not proven its key within ``auth_timeout`` seconds of
  accept (its WebSocket handshake included) is closed; at most ``max_per_source``
  connections per source address and ``max_connections`` in all, admitted at accept time:
  at either bound the oldest connection that holds no name is evicted to make room, else
  the new one is refused (a source whose connections all hold names gets one more, refused
  with a reason after its hello, so its client reads why); frames larger than
  :data:`MAX_BODY` close the connection (RFC 6455 §7.4.1 code 1009); more than ``rate``
  frames a second (with a burst of twice that) are refused with an error; a frame that is
  not JSON (read by :func:`~anchor_link.wirejson.loads_object`, bounded before parsing), not
  a known operation, or addressed to an invalid name gets a short error reply that echoes
  nothing of it. Nothing waits for a slow reader: once :data:`QUEUE_LIMIT` bytes wait to be
  written to a connection (a holder that does not read), the frames for it are dropped and
  their senders told, and a connection's unhandled frames stop its reading after
  :data:`RECEIVE_QUEUE` (the kernel's buffers hold the rest), so what a connection costs is
  bounded whatever its peers send. After a wave of closes the memory they held is handed
  back (:func:`~anchor_stun.aio.streams.release_memory`). Every connection shed is counted
  in :attr:`RendezvousServer.shed`, every frame not forwarded in
  :attr:`RendezvousServer.dropped` (``anchor serve``'s ``/metrics``). Every other
  connection carries on.

  **Several instances** (``router``, a :class:`RendezvousRouter`): a description for a name
  nobody holds on this instance is handed to the router, which carries it to the instance
  holding the name (``anchor serve --signal ... --redis URL`` uses Redis pub/sub,
  ``anchor_cli.redis_router``), and frames routed from other instances are delivered to the
  local holder. The instance tells the router each name it takes and gives up. A name is
  bound to its key on each instance; across instances the router only carries frames. With a TLS context the
  server speaks ``wss://`` (``anchor serve --signal ... --tls-cert F --tls-key F``); clients
  verify it (``ca_file`` / ``anchor pipe --ca-file``).

  The server keeps nothing else: no history, no rooms. It forwards descriptions only, never
  application data, so it is not a relay. It is not trusted with the links either: the
  descriptions carry the link's own end-to-end handshake (:mod:`anchor_link.handshake`), so a
  rendezvous that lies about who is who can drop or delay a link, not read or join it
  (docs/threat-model.md).
"""


from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from anchor_link.handshake import HandshakeFailed, NoiseHandshake, rendezvous_handshake
from anchor_link.identity import (
    PUBLIC_KEY_SIZE,
    Identity,
    IdentityError,
    format_public,
    parse_public,
)
from anchor_link.wirejson import loads_object
from anchor_stun.aio.net import port_number, positive_timeout
from anchor_stun.aio.streams import release_memory
from anchor_stun.errors import AnchorError, LocalProtocolError
from anchor_stun.events import Address

__all__ = [
    "AUTH_TIMEOUT",
    "FRAME_DROP_REASONS",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_NAME",
    "MAX_PER_SOURCE",
    "PING_INTERVAL",
    "QUEUE_LIMIT",
    "RATE",
    "RECEIVE_QUEUE",
    "RECONNECT_TIMEOUT",
    "RENDEZVOUS_SHED_REASONS",
    "TRIM_AFTER",
    "TRIM_DELAY",
    "UNREACHABLE",
    "Envelope",
    "InProcessSignalling",
    "Mailbox",
    "RendezvousRouter",
    "RendezvousServer",
    "Signalling",
    "SignallingClosed",
    "SignallingError",
    "WebSocketSignalling",
    "check_name",
    "check_signalling",
    "serve_rendezvous",
]

_SSL_CONTEXT = ssl.SSLContext  # RendezvousServer's argument ``ssl`` hides the module

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
AUTH_TIMEOUT = 5.0
"""Seconds a connection has to open its WebSocket and prove its key before it is closed."""
MAX_PER_SOURCE = 32
"""Connections the rendezvous accepts from one source address at a time."""
RATE = 50.0
"""Frames a second one connection may send (with a burst of twice as many)."""
MAX_CONNECTIONS = 1024
"""Connections the rendezvous holds at a time in all (WebSocket handshakes included)."""
QUEUE_LIMIT = 4 * MAX_BODY
"""Bytes waiting to be written to one connection beyond which frames for it are dropped: a
holder that does not read costs the server this much, and its senders are never held up."""
RECEIVE_QUEUE = 4
"""Frames received from one connection and not handled yet beyond which the server stops
reading it (websockets' ``max_queue``): the kernel's buffers hold the rest."""
RENDEZVOUS_SHED_REASONS = (
    "per_source",
    "total",
    "evicted",
    "auth_timeout",
    "hello_refused",
    "frame_size",
)
"""Why the rendezvous closed a connection: a source over its share, the server at its total
(refused, or an older connection holding no name evicted to make room), no proof within the
deadline, a hello refused (malformed, a bad name or proof, a name held by another key, not
allowed), a frame over :data:`MAX_BODY` (RFC 6455 §7.4.1 code 1009)."""
FRAME_DROP_REASONS = ("rate", "malformed", "holder_busy")
"""Why the rendezvous did not forward a frame: over the connection's rate, not a well-formed
``send``, or its holder does not read (:data:`QUEUE_LIMIT` bytes already wait for it)."""
TRIM_AFTER = 32
"""Connections closed after which freed memory is handed back (after :data:`TRIM_DELAY`)."""
TRIM_DELAY = 1.0
"""Seconds from the close that reached :data:`TRIM_AFTER` to the hand-back (the wave of
closes it belongs to is over by then)."""
_MESSAGE_TOO_BIG = 1009  # RFC 6455 §7.4.1


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

    async def open(self, name: str, identity: Identity | None = None) -> Mailbox:
        """Subscribe ``name``, proving ``identity`` where the signalling asks for a proof;
        raises :class:`SignallingError` when it is taken or invalid."""
        ...


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= MAX_NAME and name.isprintable()


def _check_name(name: object) -> None:
    if not _valid_name(name):
        shown = repr(name)
        shown = shown if len(shown) <= MAX_NAME + 2 else shown[:MAX_NAME] + "..."
        raise SignallingError(f"a name is 1 to {MAX_NAME} printable characters: {shown}")


def check_name(name: object, what: str = "name") -> str:
    """An endpoint's name on the signalling checked where it enters: 1 to :data:`MAX_NAME`
    printable characters, else :class:`LocalProtocolError` naming ``what``."""
    try:
        _check_name(name)
    except SignallingError as exc:
        raise LocalProtocolError(f"{what}: {exc}") from None
    return str(name)


def check_signalling(signalling: object, what: str = "signalling") -> None:
    """A :class:`Signalling` checked where it enters: an object with an ``open(name,
    identity)`` coroutine method, else :class:`LocalProtocolError` naming ``what`` and the
    forms (a URL text says to wrap it in :class:`WebSocketSignalling`)."""
    if callable(getattr(signalling, "open", None)):
        return
    hint = (
        f" (for a rendezvous URL: WebSocketSignalling({signalling!r}))"
        if isinstance(signalling, str) and signalling.startswith(("ws://", "wss://"))
        else ""
    )
    raise LocalProtocolError(
        f"{what} must be a Signalling (InProcessSignalling(), WebSocketSignalling(url)), not"
        f" {type(signalling).__name__}{hint}"
    )


def _check_url(url: object) -> None:
    """A rendezvous URL checked where it enters: ``ws://host[:port][/path]`` or ``wss://...``
    (RFC 6455 §3), else :class:`LocalProtocolError` naming ``url``."""
    forms = "url must be 'ws://host:port' or 'wss://host:port'"
    if not isinstance(url, str):
        raise LocalProtocolError(f"{forms}, not {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise LocalProtocolError(f"{forms}, not {url!r} ({exc})") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.fragment:
        raise LocalProtocolError(f"{forms}, not {url!r}")


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

    async def open(self, name: str, identity: Identity | None = None) -> Mailbox:
        """Subscribe ``name`` (refused while another mailbox holds it; in one process there is
        nobody to prove ``identity`` to)."""
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
    configure both). ``identity`` is proven to the server (module docstring; the endpoint
    passes its own to :meth:`open`; without either a new one is made). For ``wss://``,
    ``ca_file`` names the CA bundle to verify the server with (default: the system's). A lost
    connection is re-established for up to ``reconnect_timeout`` seconds. The arguments are
    checked here, before any connection (:class:`~anchor_stun.errors.LocalProtocolError`
    naming the argument and its accepted forms)."""

    def __init__(
        self,
        url: str,
        name: str | None = None,
        *,
        identity: Identity | None = None,
        ca_file: str | None = None,
        open_timeout: float = 10.0,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> None:
        _check_url(url)
        if name is not None:
            check_name(name)
        if identity is not None and not isinstance(identity, Identity):
            raise LocalProtocolError(
                f"identity must be an Identity (Identity.generate(), load_identity(path)),"
                f" not {type(identity).__name__}"
            )
        if ca_file is not None and not isinstance(ca_file, str | os.PathLike):
            raise LocalProtocolError(
                f"ca_file must be the path of a CA bundle, not {type(ca_file).__name__}"
            )
        positive_timeout(open_timeout, "open_timeout")
        if (
            isinstance(reconnect_timeout, bool)
            or not isinstance(reconnect_timeout, int | float)
            or not reconnect_timeout >= 0
        ):
            raise LocalProtocolError(
                "reconnect_timeout must be a number of seconds >= 0 (0: never reconnect),"
                f" not {reconnect_timeout!r}"
            )
        self.url = url
        """The rendezvous URL (``ws://`` or ``wss://``)."""
        self.name = name
        """The name this signalling is meant for, or None for any."""
        self.identity = identity
        """The identity proven to the server (None: the endpoint's, or a new one)."""
        self.open_timeout = open_timeout
        """Seconds to connect and be welcomed."""
        self.reconnect_timeout = reconnect_timeout
        """Seconds a mailbox keeps trying to reconnect after losing its connection."""
        self._ssl: ssl.SSLContext | None = None
        if url.startswith("wss://"):
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise SignallingError(f"ca_file {ca_file}: not a usable CA bundle ({exc})") from None

    async def open(self, name: str, identity: Identity | None = None) -> Mailbox:
        """Connect to the rendezvous, prove the identity and claim ``name``. Raises
        :class:`SignallingError` when the server cannot be reached or refuses."""
        _check_name(name)
        if self.name is not None and name != self.name:
            raise SignallingError(f"this signalling is for {self.name!r}, not {name!r}")
        identity = identity or self.identity or Identity.generate()
        ws = await self._connect(name, identity)
        return _WebSocketMailbox(self, ws, name, identity)

    async def _connect(self, name: str, identity: Identity) -> ClientConnection:
        """One connection, welcomed under ``name`` once ``identity`` is proven."""
        handshake = rendezvous_handshake(identity, client=True, name=name)
        try:
            async with asyncio.timeout(self.open_timeout):
                ws = await connect(
                    self.url, proxy=None, compression=None, max_size=MAX_BODY + 1024,
                    open_timeout=self.open_timeout, ping_interval=PING_INTERVAL,
                    ping_timeout=PING_INTERVAL, ssl=self._ssl,
                )  # fmt: skip
                try:
                    hello = {"op": "hello", "name": name, "noise": _b64(handshake.write_message())}
                    await ws.send(json.dumps(hello))
                    answer = _json(await ws.recv())
                    if answer.get("op") == "challenge":
                        handshake.read_message(_unb64(answer.get("noise")))
                        prove = {"op": "prove", "noise": _b64(handshake.write_message())}
                        await ws.send(json.dumps(prove))
                        answer = _json(await ws.recv())
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError:
            raise SignallingError(f"rendezvous {self.url} did not answer") from None
        except HandshakeFailed as exc:
            raise _Refused(f"rendezvous {self.url}: challenge failed: {exc}") from None
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed, ValueError) as exc:
            raise SignallingError(f"cannot reach rendezvous {self.url}: {exc}") from None
        if not isinstance(answer, dict) or answer.get("op") != "welcome":
            reason = answer.get("reason") if isinstance(answer, dict) else None
            await ws.close()
            raise _Refused(f"rendezvous refused {name!r}: {reason or answer!r}")
        return ws


class _WebSocketMailbox:
    def __init__(
        self, signalling: WebSocketSignalling, ws: ClientConnection, name: str, identity: Identity
    ) -> None:
        self._signalling = signalling
        self._ws = ws
        self._name = name
        self._identity = identity
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
        """Reconnect, proving the key again, with backoff, for up to ``reconnect_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._signalling.reconnect_timeout
        delay = 0.05
        while not self._closed:
            try:
                ws = await self._signalling._connect(self._name, self._identity)
            except SignallingError as exc:
                if isinstance(exc, _Refused) or loop.time() + delay > deadline:
                    raise SignallingClosed(f"rendezvous connection lost: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if self._closed:
                await ws.close()
                break
            self._ws = ws
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
                msg = _json(raw)
            except ValueError:
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


class _Refusal(Exception):
    """The server closes this connection (reason in the message; ``reason`` is the counter,
    one of :data:`RENDEZVOUS_SHED_REASONS`)."""

    def __init__(self, message: str, reason: str = "hello_refused") -> None:
        super().__init__(message)
        self.reason = reason


class RendezvousRouter(Protocol):
    """Carries rendezvous frames between instances of :class:`RendezvousServer` (module
    docstring, "Several instances")."""

    async def start(self, deliver: Callable[[str, str], Awaitable[None]]) -> None:
        """Begin; ``deliver(name, frame)`` hands a frame routed from another instance to the
        local holder of ``name`` (a JSON ``message`` frame, as sent to clients)."""
        ...

    async def claim(self, name: str) -> None:
        """``name`` is held on this instance now: route its frames here."""
        ...

    async def release(self, name: str) -> None:
        """``name`` is no longer held on this instance."""
        ...

    async def route(self, name: str, frame: str) -> bool:
        """Send ``frame`` to the instance holding ``name``; False when none does."""
        ...


class RendezvousServer:
    """The WebSocket rendezvous: forwards descriptions between named connections whose keys it
    verified (module docstring). ``await start()``, then :attr:`address`; ``close()`` and
    ``await wait_closed()``.

    ``ssl``: a server TLS context (``wss://``); ``allowed``: the public identities that may
    connect (None: any); ``auth_timeout``, ``max_per_source``, ``max_connections``, ``rate``:
    the bounds of the module docstring; ``router``: a :class:`RendezvousRouter` to names held
    on other instances. ``port`` 0 takes any free port. The arguments are checked here, before
    any socket (:class:`~anchor_stun.errors.LocalProtocolError` naming the argument)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: ssl.SSLContext | None = None,
        allowed: Iterable[str | bytes] | None = None,
        auth_timeout: float = AUTH_TIMEOUT,
        max_per_source: int = MAX_PER_SOURCE,
        max_connections: int = MAX_CONNECTIONS,
        rate: float = RATE,
        router: RendezvousRouter | None = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise LocalProtocolError(
                f"host must be an IP address or host name to listen on ('0.0.0.0', '::',"
                f" '127.0.0.1'), not {host!r}"
            )
        port = port_number(port, "port", zero=True)
        if ssl is not None and not isinstance(ssl, _SSL_CONTEXT):
            raise LocalProtocolError(
                f"ssl must be a server ssl.SSLContext, not {type(ssl).__name__}"
            )
        positive_timeout(auth_timeout, "auth_timeout")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise LocalProtocolError(
                f"rate must be a positive number of frames a second, not {rate!r}"
            )
        if isinstance(max_per_source, bool) or not isinstance(max_per_source, int) or (
            max_per_source < 1
        ):
            raise LocalProtocolError(
                f"max_per_source must be a positive number of connections, not {max_per_source!r}"
            )
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or (
            max_connections < 1
        ):
            raise LocalProtocolError(
                f"max_connections must be a positive number of connections,"
                f" not {max_connections!r}"
            )
        methods = ("start", "claim", "release", "route")
        if router is not None and not all(callable(getattr(router, m, None)) for m in methods):
            raise LocalProtocolError(
                "router must implement RendezvousRouter (start, claim, release, route),"
                f" not {type(router).__name__}"
            )
        self.host = host
        self.router = router
        """Carries frames to and from other instances, or None."""
        self.port = port
        self._ssl = ssl
        self._allowed: set[bytes] | None = None
        if allowed is not None:
            if isinstance(allowed, str | bytes | bytearray):
                raise LocalProtocolError(
                    "allowed must be a list of public identities ('anchor1:...'), not one"
                )
            self._allowed = set()
            for i, key in enumerate(allowed):
                try:
                    if isinstance(key, bytes | bytearray):
                        if len(key) != PUBLIC_KEY_SIZE:
                            raise IdentityError(f"a raw key is {PUBLIC_KEY_SIZE} bytes")
                        self._allowed.add(bytes(key))
                    else:
                        self._allowed.add(parse_public(key))
                except IdentityError as exc:
                    raise LocalProtocolError(
                        f"allowed[{i}] must be a public identity ('anchor1:...'): {exc}"
                    ) from None
        self.auth_timeout = auth_timeout
        """Seconds from accept for a connection to prove its key."""
        self.max_per_source = max_per_source
        """Connections at a time from one source address."""
        self.max_connections = max_connections
        """Connections at a time in all (WebSocket handshakes included)."""
        self.rate = rate
        """Frames a second per connection (burst: twice as many)."""
        self._server: Server | None = None
        self._names: dict[str, tuple[ServerConnection, bytes]] = {}
        self._held: dict[ServerConnection, _Held] = {}
        """Every admitted connection, oldest first."""
        self._sources: dict[str, dict[ServerConnection, None]] = {}
        self._closed_since_trim = 0
        self._trim: asyncio.TimerHandle | None = None
        self.forwarded = 0
        """Descriptions forwarded so far."""
        self.resumed = 0
        """Names taken over by their holder's key on a new connection."""
        self.shed: dict[str, int] = dict.fromkeys(RENDEZVOUS_SHED_REASONS, 0)
        """Connections closed by the server, by reason (:data:`RENDEZVOUS_SHED_REASONS`)."""
        self.dropped: dict[str, int] = dict.fromkeys(FRAME_DROP_REASONS, 0)
        """Frames not forwarded, by reason (:data:`FRAME_DROP_REASONS`)."""

    @property
    def refused(self) -> int:
        """Connections closed before holding a name (bad proof, name held, limits, timeout)."""
        return sum(n for reason, n in self.shed.items() if reason != "frame_size")

    @property
    def frames_refused(self) -> int:
        """Frames answered with an error (malformed, unknown, over the rate, a holder that
        does not read)."""
        return sum(self.dropped.values())

    def connections(self) -> int:
        """Connections held now (WebSocket handshakes and unproven ones included)."""
        return len(self._held)

    @property
    def address(self) -> Address:
        """The bound (ip, port)."""
        if self._server is None or not self._server.sockets:
            raise SignallingError("rendezvous not started")
        sockname = self._server.sockets[0].getsockname()
        return (str(sockname[0]), int(sockname[1]))

    @property
    def url(self) -> str:
        """``ws://ip:port`` (``wss://`` with TLS) for clients."""
        host, port = self.address
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def names(self) -> list[str]:
        """Names connected now."""
        return list(self._names)

    def holder(self, name: str) -> str | None:
        """The public identity holding ``name``, or None."""
        held = self._names.get(name)
        return format_public(held[1]) if held is not None else None

    async def start(self) -> Address:
        """Listen; raises OSError when the address cannot be bound."""
        # No open_timeout: the deadline of each connection (_expire) runs from accept and
        # covers the WebSocket handshake; TLS handshakes (before accept reaches us) get
        # their own.
        tls: dict[str, Any] = {}
        if self._ssl is not None:
            tls = {"ssl": self._ssl, "ssl_handshake_timeout": self.auth_timeout}
        self._server = await serve(
            self._handle, self.host, self.port, compression=None, max_size=MAX_BODY + 1024,
            max_queue=RECEIVE_QUEUE, write_limit=QUEUE_LIMIT + 2 * MAX_BODY,
            open_timeout=None, create_connection=self._connection_type(), **tls,
        )  # fmt: skip
        if self.router is not None:
            await self.router.start(self._deliver_routed)
        return self.address

    def _connection_type(self) -> type[ServerConnection]:
        """The websockets connection class, told of accepts and closes (admission)."""
        rendezvous = self

        class _Admitted(ServerConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                rendezvous._admit(self)

            def connection_lost(self, exc: Exception | None) -> None:
                super().connection_lost(exc)
                rendezvous._release(self)

        return _Admitted

    # ------------------------------------------------------------------ admission

    def _admit(self, ws: ServerConnection) -> None:
        """At accept time (module docstring, "Bounds"): a source at its share, or the server
        at its total, makes room by closing its oldest connection that holds no name, else
        the new one is refused; a source whose connections all hold names gets one more,
        refused with a reason after its hello (its client reads why)."""
        transport = ws.transport
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        held = self._held
        loop = asyncio.get_running_loop()
        entry = _Held(source, loop.time())
        mine = self._sources.get(source)
        if mine is not None and len(mine) >= self.max_per_source:
            victim = next((c for c in mine if not held[c].proven), None)
            if victim is None:
                entry.crowded = True
            else:
                self._shed(victim, "per_source")
        if len(held) >= self.max_connections:
            victim = next((c for c, e in held.items() if not e.proven), None)
            if victim is None:
                self.shed["total"] += 1
                transport.abort()
                return
            self._shed(victim, "evicted")
        held[ws] = entry
        self._sources.setdefault(source, {})[ws] = None
        entry.deadline = loop.call_at(entry.opened + self.auth_timeout, self._expire, ws)

    def _expire(self, ws: ServerConnection) -> None:
        """The deadline: a connection that has not proven its key since accept is closed."""
        entry = self._held.get(ws)
        if entry is not None and not entry.proven and not entry.refused:
            self._shed(ws, "auth_timeout")

    def _shed(self, ws: ServerConnection, reason: str) -> None:
        """Count and abort a connection (nothing is owed to it), forgetting it at once."""
        self.shed[reason] += 1
        self._release(ws)
        ws.transport.abort()

    def _release(self, ws: ServerConnection) -> None:
        """Forget a connection (closed, shed); after many closes, hand freed memory back."""
        entry = self._held.pop(ws, None)
        if entry is None:
            return
        if entry.deadline is not None:
            entry.deadline.cancel()
        mine = self._sources.get(entry.source)
        if mine is not None:
            mine.pop(ws, None)
            if not mine:
                del self._sources[entry.source]
        self._closed_since_trim += 1
        if self._closed_since_trim >= TRIM_AFTER and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._release_memory)

    def _release_memory(self) -> None:
        """After a wave of closes (module docstring, "Bounds"): glibc keeps the freed frame
        buffers of the connections in the heap; hand them back."""
        self._trim = None
        self._closed_since_trim = 0
        release_memory()

    async def _queue(self, ws: ServerConnection, text: str) -> bool:
        """Send ``text`` to ``ws`` unless :data:`QUEUE_LIMIT` bytes already wait to be
        written to it (a peer that does not read): never waits for it to read."""
        transport = ws.transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() + len(text) > QUEUE_LIMIT
        ):
            return False
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True

    # ------------------------------------------------------------------ connections

    async def _deliver_routed(self, name: str, frame: str) -> None:
        """A frame another instance routed here: to the local holder of ``name``."""
        held = self._names.get(name)
        if held is not None:
            if await self._queue(held[0], frame):
                self.forwarded += 1
            else:
                self.dropped["holder_busy"] += 1

    def open_sockets(self) -> int:
        """Listening sockets and client connections still open."""
        if self._server is None:
            return 0
        listening = len(self._server.sockets) if self._server.is_serving() else 0
        return listening + len(self._server.connections)

    def close(self) -> None:
        """Stop listening and close every client connection."""
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Wait until everything is closed."""
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        entry = self._held.get(ws)
        if entry is None:  # shed between its handshake and now
            return
        name: str | None = None
        try:
            name, key = await self._authenticate(ws, entry.source if entry.crowded else None)
            held = self._names.get(name)
            if held is not None:
                if held[1] != key:
                    raise _Refusal(f"name {name!r} is taken (held by another identity)")
                self.resumed += 1  # its holder, back on a new connection
                if held[0].transport is not None:
                    held[0].transport.abort()
            entry.proven = True
            if entry.deadline is not None:
                entry.deadline.cancel()
                entry.deadline = None
            self._names[name] = (ws, key)
            if self.router is not None:
                await self.router.claim(name)
            await ws.send(json.dumps({"op": "welcome", "identity": format_public(key)}))
            await self._forward(ws, name)
        except _Refusal as exc:
            self.shed[exc.reason] += 1
            entry.refused = True
            if entry.deadline is not None:
                entry.deadline.cancel()
            await self._queue(ws, json.dumps({"op": "error", "reason": str(exc)}))
            ws.transport.close()  # the error first, then the end (no closing handshake to wait for)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == _MESSAGE_TOO_BIG:
                self.shed["frame_size"] += 1
        finally:
            held = self._names.get(name) if name is not None else None
            if held is not None and held[0] is ws:
                del self._names[name]  # type: ignore[arg-type]
                if self.router is not None:
                    with contextlib.suppress(Exception):
                        await self.router.release(name)  # type: ignore[arg-type]

    async def _authenticate(self, ws: ServerConnection, crowded: str | None) -> tuple[str, bytes]:
        """hello / challenge / prove (module docstring): the name and the proven key. Every
        refusal answers the hello (``crowded``: the source address with too many
        connections), so the client reads why; no refusal echoes what the client sent."""
        hello = await self._receive(ws, "expected hello")
        if crowded is not None:
            raise _Refusal(f"too many connections from {crowded}", "per_source")
        name = hello.get("name")
        if hello.get("op") != "hello" or not isinstance(name, str):
            raise _Refusal("expected hello")
        if not _valid_name(name):
            raise _Refusal(f"a name is 1 to {MAX_NAME} printable characters")
        handshake: NoiseHandshake = rendezvous_handshake(None, client=False, name=name)
        try:
            handshake.read_message(_unb64(hello.get("noise")))
            challenge = {"op": "challenge", "noise": _b64(handshake.write_message())}
            await ws.send(json.dumps(challenge))
            prove = await self._receive(ws, "expected prove")
            if prove.get("op") != "prove":
                raise _Refusal("expected prove")
            handshake.read_message(_unb64(prove.get("noise")))
        except HandshakeFailed as exc:
            raise _Refusal(f"identity not proven: {exc}") from None
        key = handshake.remote_static
        if key is None or not handshake.complete:
            raise _Refusal("identity not proven")
        if self._allowed is not None and key not in self._allowed:
            raise _Refusal(f"{format_public(key)} is not allowed here")
        return name, key

    @staticmethod
    async def _receive(ws: ServerConnection, expected: str) -> dict[str, Any]:
        """The next frame as a JSON object; a :class:`_Refusal` when it is not one."""
        try:
            return _json(await ws.recv())
        except ValueError as exc:
            raise _Refusal(f"{expected}: {exc}") from None

    async def _forward(self, ws: ServerConnection, name: str) -> None:
        """Forward the connection's ``send`` frames until it closes; refuse bad frames, and
        drop frames for a holder that does not read (module docstring, "Bounds")."""
        loop = asyncio.get_running_loop()
        tokens, last = 2 * self.rate, loop.time()
        async for raw in ws:
            now = loop.time()
            tokens = min(2 * self.rate, tokens + (now - last) * self.rate)
            last = now
            if tokens < 1:
                await self._refuse_frame(ws, "rate", "rate limit: frame dropped")
                continue
            tokens -= 1
            try:
                msg = _json(raw)
            except ValueError:
                await self._refuse_frame(ws, "malformed", "not a JSON object")
                continue
            to, body = msg.get("to"), msg.get("body")
            if (
                msg.get("op") != "send"
                or not isinstance(to, str)
                or not _valid_name(to)
                or not isinstance(body, dict)
            ):
                await self._refuse_frame(ws, "malformed", "unknown or malformed op")
                continue
            held = self._names.get(to)
            out = {"op": "message", "from": name, "body": body}
            if held is None:
                if self.router is not None and await self.router.route(
                    to, json.dumps(out, separators=(",", ":"))
                ):
                    self.forwarded += 1
                    continue
                await self._queue(ws, json.dumps({"op": UNREACHABLE, "to": to}))
                continue
            if await self._queue(held[0], json.dumps(out, separators=(",", ":"))):
                self.forwarded += 1
            else:
                await self._refuse_frame(ws, "holder_busy", f"{to} is not reading: frame dropped")

    async def _refuse_frame(self, ws: ServerConnection, reason: str, text: str) -> None:
        """Count a frame not forwarded and tell its sender (unless it does not read either)."""
        self.dropped[reason] += 1
        await self._queue(ws, json.dumps({"op": "error", "reason": text}))


@dataclass(slots=True)
class _Held:
    """What the rendezvous knows of one admitted connection."""

    source: str
    opened: float
    proven: bool = False
    """Whether it holds a name (proven connections are never evicted)."""
    crowded: bool = False
    """Admitted beyond its source's share: refused with a reason after its hello."""
    refused: bool = False
    """Refused (and counted): closing."""
    deadline: asyncio.TimerHandle | None = None


def _json(raw: str | bytes) -> dict[str, Any]:
    """A JSON object from a frame, bounded before parsing (ValueError otherwise)."""
    return loads_object(raw, max_size=MAX_BODY + 1024, what="frame")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    """A base64 field; :class:`HandshakeFailed` when it is not one."""
    if not isinstance(text, str) or len(text) > 4096:
        raise HandshakeFailed("missing or oversized handshake message")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeFailed("malformed handshake message") from None


async def serve_rendezvous(host: str, port: int, **options: Any) -> RendezvousServer:
    """Start a :class:`RendezvousServer` on ``host:port`` (port 0: any free port); ``options``
    go to its constructor."""
    server = RendezvousServer(host, port, **options)
    await server.start()
    return server
