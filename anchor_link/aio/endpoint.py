"""The ephemeral link endpoint: :class:`LinkEndpoint` (docs/design.md "What Anchor is").

Theory of operation
-------------------
``link = LinkEndpoint(name, signalling, turn=[...])`` is one endpoint, known to its peers by
``name`` on a :mod:`~anchor_link.aio.signal` signalling. ``await link.send(peer, data)`` delivers
one message to ``peer``, forming a link first if there is none:

1. **Gather** (:class:`~anchor_ice.aio.connection.Connection`): host, server-reflexive and relayed
   candidates; under the default ``policy="gateway"`` host candidates are not advertised.
   Gathering runs alongside steps 2 and 3 (trickle ICE, RFC 8838, below): the offer goes out as
   soon as the host sockets are bound, with whatever candidates are known then (under the
   gateway policy possibly none), and the checks start before gathering completes.
2. **Signal and authenticate**: an offer goes to the peer through the signalling, an answer
   comes back, then a confirm and an accept. The first three are the messages of the link's
   Noise XX handshake (:mod:`anchor_link.handshake`), whose payloads are the two sides' ICE
   descriptions (ufrag, password, candidates, channel settings): both endpoints prove their
   :class:`~anchor_link.identity.Identity` with fresh ephemeral keys, and a description changed
   on the way fails the handshake. The peer's proven identity is checked against
   ``trusted_peers`` and the known-peers file (:mod:`anchor_link.trust`); a peer that does not
   authenticate fails the link on both sides with
   :class:`~anchor_link.state.PeerAuthenticationFailed` (``send`` raises
   :class:`~anchor_link.state.PeerAuthenticationError`), and no application byte goes out
   before it did.
3. **ICE** with the offerer controlling and the policy's nominator
   (:class:`~anchor_ice.nominator.GatewayNominator` by default: a srflx/prflx pair, else a
   relay pair, never a host pair). Both descriptions say ``"renomination": true``, so the
   agents renominate (:mod:`anchor_ice.agent`, "Renomination"): a relay pair is taken as
   soon as it is valid when no gateway pair is (the first message does not wait for the
   gateway nominator's 2 s grace), and the link moves to a gateway pair when one validates
   later (:class:`~anchor_link.state.LinkMoved`). The channel is path-agnostic (its frames
   carry their own sequence numbers) and data from the previous pair is still received, so
   the move loses, duplicates or reorders no message. Never a host pair under the gateway
   policy, first or later.
4. **Channel**: a :class:`~anchor_link.reliable.ReliableChannel` over the selected pair, with a
   :class:`~anchor_link.seal.Sealer` keyed by this link's handshake; both sides use the smaller of
   their ``max_message`` and ``mtu``.

While the link is open, sends reuse it. When no application datagram has been sent or
received for ``idle_timeout`` (docs/design.md "Idle": channel ACKs and ICE consent checks do not
count) it **dissolves**: the channel's FIN handshake, a short draining period (about 1.2 s
on loopback, :mod:`anchor_link.state`), then the connection is closed, which releases
the TURN allocation (Refresh with LIFETIME 0) and closes every socket; the link's tasks end.
Only then is :class:`~anchor_link.state.LinkDissolved` reported. A later
send forms a new link, with new candidates, credentials and keys.

The receiving side forms its end when the offer arrives: the signalling subscription is the
only thing an idle endpoint keeps (a queue in the in-process hub, or one WebSocket
connection to the rendezvous), never a socket the peer could reach.

Receiving: ``async for peer, data in link`` (or ``await link.recv()``), or ``on_message=``.
Life-cycle events (:class:`LinkFormed`, :class:`LinkDissolved`, :class:`LinkFailed`) go to
``on_event=``, to :attr:`LinkEndpoint.history`, and can be awaited with :meth:`LinkEndpoint.wait_for`.

The decisions and deadlines of one link live in the sans-I/O
:class:`~anchor_link.state.LinkMachine`; this module only does the I/O around it. Each
link runs three tasks: formation (gather, signal, connect; ends once open), a reader
(datagrams from the connection into the machine) and a driver (the machine's output, events
and timer; it also tears the link down).

Descriptions (JSON objects on the signalling; ``v`` is :data:`DESCRIPTION_VERSION`)::

    {"type": "offer", "v": 4, "link": LINK_ID, "noise": BASE64}     -> e           (offerer)
    {"type": "answer", "v": 4, "link": LINK_ID, "noise": BASE64}    <- e, ee, s, es
    {"type": "confirm", "v": 4, "link": LINK_ID, "noise": BASE64}   -> s, se
    {"type": "accept", "v": 4, "link": LINK_ID, "mac": BASE64}      key confirmation
    {"type": "candidates", "v": 4, "link": LINK_ID, "seq": N, "box": BASE64}   trickled
    {"type": "reject", "link": LINK_ID, "reason": ..., "auth": true|false}   cannot go on
    {"type": "bye", "link": LINK_ID, "reason": ...}        the link broke on this side

``noise`` is a Noise handshake message (standard base64); the payload of the offer's (in
clear) and of the answer's (encrypted) is the side's ICE description, a JSON object::

    {"session": HEX, "ufrag": ..., "pwd": ..., "candidates": ["candidate:...", ...], "end": false,
     "seal": true, "mtu": 1200, "max_message": 65536, "pacing": 5, "renomination": true}

**Trickle** (RFC 8838). ``candidates`` are those gathered when the description was written;
``end`` is true when gathering was complete by then (end-of-candidates, RFC 8838 §8.2; the
receiver then calls ``add_remote_candidate(None)``). The confirm's payload (encrypted) is
``{"candidates": [...], "end": bool}``: the offerer's candidates gathered since its offer.
Every later candidate of either side goes, once that side's handshake is complete, in a
``candidates`` message whose ``box`` is the same JSON object sealed with ChaCha20-Poly1305
under a key derived from the handshake with a label of its own
(:class:`~anchor_link.handshake.TrickleBox`; never a key of the channel's frames), ``seq`` its
nonce. Candidates never travel unauthenticated after the offer (whose clear payload the
handshake authenticates): a rendezvous cannot inject an address to steer the checks. A
``candidates`` message that does not open (changed on the way, forged, or replayed: each
``seq`` opens once) is dropped and counted in :attr:`LinkEndpoint.trickle_refused`; one that
arrives before this side has the keys waits (up to :data:`MAX_TRICKLE_QUEUED`). A link fails
with "no candidate to offer" only once gathering completed without any.

The answerer sends its accept once the confirm proved the offerer's identity and that identity
passed its trust checks; the offerer opens its channel only once the accept verified, so a
link opens on both sides or on neither. A ``reject`` with ``"auth": true`` says the sender
refused the other's identity or handshake: the receiver fails with
:class:`~anchor_link.state.PeerAuthenticationFailed` too (a rendezvous can always drop a link;
it cannot make one open). An offer whose ephemeral key was seen before (a replay) is dropped.

``renomination`` says the side's ICE agent renominates (step 3); a side that does not say
so (an older peer) gets RFC 8445 regular nomination.

``pacing`` is the side's Ta proposal in milliseconds (``a=ice-pacing``, RFC 8839 §5.5):
checks are paced at the higher of the two proposals, RFC 8445's 50 ms when a side sends
none (an older peer).

``LINK_ID`` (16 hex digits, new for every link) ties the messages of one link together and is
bound into the handshake's prologue with both names. Frames are sealed when both sides say
``"seal": true``; a side that requires sealing refuses a peer that does not (``seal=False``, for
measurements, still authenticates both sides but leaves the frames in clear).

A link that breaks rather than dissolving cleanly (consent lost, say because a NAT forgot
the mapping: RFC 7675 gives up after 30 s without a consent response) tells the peer with a
``bye``, so that the peer's end, whose own consent checks may still be answered, dissolves
too instead of sending into the void until its consent runs out as well. The next send from
either side forms a new link.

Across links (:mod:`anchor_link.delivery`): every message carries a 4-byte sequence number of
this endpoint's outbox for the peer, whose session goes in the description (``"session"``).
A message accepted by ``send`` stays in the outbox until the channel reports it acknowledged.
When a link breaks with messages still unacknowledged, the endpoint forms a new link to the
peer at once (retrying every few seconds) and queues them on it first, in order, numbers
unchanged; the peer drops those it had delivered already (their ACK was lost with the link),
so every message arrives exactly once, in order. If no link can be formed within
``delivery_timeout`` (60 s by default) of the break, they are given up:
:class:`~anchor_link.delivery.MessagesUndelivered` (to ``on_event``, :attr:`LinkEndpoint.history`,
``wait_for``) names exactly those messages, and its ``error`` is the typed
:class:`~anchor_link.delivery.UndeliveredMessages`. Closing the endpoint gives up whatever
its close handshakes could not deliver the same way.

Crossing offers (both sides send first at the same moment): the offer of the endpoint whose
name sorts first wins; the other abandons its own and answers. A send waiting on the
abandoned link carries on on the new one.
"""


from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import json
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, TypeVar

from anchor_ice.aio.connection import (
    POLICIES,
    Connection,
    IceError,
    IceFailedError,
    make_nominator,
)
from anchor_ice.aio.gather import TurnServerConfig, turn_server_configs
from anchor_ice.candidate import Candidate
from anchor_ice.events import PairInfo
from anchor_ice.nominator import Nominator, StandardNominator
from anchor_link.aio.signal import (
    MAX_BODY,
    UNREACHABLE,
    Mailbox,
    Signalling,
    SignallingClosed,
    SignallingError,
    check_name,
    check_signalling,
)
from anchor_link.delivery import (
    MESSAGE_HEADER,
    Inbox,
    MessagesUndelivered,
    Outbox,
    UndeliveredMessages,
)
from anchor_link.handshake import HandshakeFailed, LinkHandshake, TrickleBox, link_prologue
from anchor_link.identity import Identity, format_public, load_identity
from anchor_link.reliable import (
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MTU,
    FIRST_BYTE_MIN,
    MessageTooLarge,
    ReliableChannel,
)
from anchor_link.state import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_FORM_TIMEOUT,
    DissolveReason,
    LinkClosed,
    LinkDissolved,
    LinkError,
    LinkEvent,
    LinkFailed,
    LinkFormationFailed,
    LinkFormed,
    LinkMachine,
    LinkMessage,
    LinkMoved,
    LinkState,
    LinkWritable,
    PeerAuthenticationError,
    PeerAuthenticationFailed,
)
from anchor_link.trust import PeerKeyMismatch, TrustPolicy
from anchor_link.wirejson import loads_object
from anchor_stun.address import count, ip_address_list, option_mapping, seconds
from anchor_stun.aio.net import server_list
from anchor_stun.errors import AnchorError, LocalProtocolError
from anchor_stun.events import Address

__all__ = [
    "DEFAULT_DELIVERY_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DESCRIPTION_VERSION",
    "HISTORY_LIMIT",
    "DissolveReason",
    "LinkClosed",
    "LinkDissolved",
    "LinkEndpoint",
    "LinkError",
    "LinkEvent",
    "LinkFailed",
    "LinkFormationFailed",
    "LinkFormed",
    "LinkMoved",
    "LinkState",
    "MessagesUndelivered",
    "PeerAuthenticationError",
    "PeerAuthenticationFailed",
    "UndeliveredMessages",
]

DEFAULT_IDLE_TIMEOUT = 30.0
"""docs/design.md "Idle": seconds without an application datagram before a link dissolves."""
BYE_TIMEOUT = 2.0
"""Seconds a broken link waits to hand its ``bye`` to the signalling before giving up."""
HISTORY_LIMIT = 1024
"""Life-cycle events :attr:`LinkEndpoint.history` keeps: the latest ones (about two per link),
so that a long-running endpoint's memory does not grow with the links it formed."""
DESCRIPTION_VERSION = 5
"""``v`` of the descriptions this module sends (2: the Noise handshake; 3: the channel's
frame format with a receive window in every ACK; 4: trickled candidates, RFC 8838; 5: every
message carries its sequence number, and the description its outbox session,
:mod:`anchor_link.delivery`)."""
DEFAULT_DELIVERY_TIMEOUT = 60.0
"""Seconds messages carried from a broken link wait for a new link to their peer before the
endpoint gives them up (:class:`MessagesUndelivered`)."""
INBOX_LIMIT = 4096
"""Peers whose delivered sequence numbers an endpoint remembers (the least recently used
are forgotten first; :mod:`anchor_link.delivery`)."""
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
"""Seconds between attempts to form a link for carried messages (the last one repeats)."""
REPLAY_MEMORY = 4096
"""Offers (by their ephemeral key) an endpoint remembers to refuse a replay of."""
MAX_TRICKLE_QUEUED = 64
"""``candidates`` messages a link keeps until it can open them; more are dropped."""

E = TypeVar("E", bound=LinkEvent)


class _Superseded(Exception):
    """The link a send waited on was replaced by another one to the same peer."""


class _FormError(Exception):
    """Forming cannot go on (reason in the message)."""


class _AuthError(Exception):
    """The peer did not authenticate (reason in the message)."""

    def __init__(self, reason: str, expected: bytes | None = None, presented: bytes | None = None):
        super().__init__(reason)
        self.expected = format_public(expected) if expected is not None else None
        self.presented = format_public(presented) if presented is not None else None


class _Link:
    """One link's I/O state around its :class:`LinkMachine`."""

    def __init__(self, peer: str, link_id: str, machine: LinkMachine) -> None:
        loop = asyncio.get_running_loop()
        self.peer = peer
        self.id = link_id
        self.machine = machine
        self.conn: Connection | None = None
        self.handshake: LinkHandshake | None = None
        self.answer: asyncio.Future[dict[str, Any]] = loop.create_future()
        # the offerer's answer; the answerer's confirm
        self.accept: asyncio.Future[dict[str, Any]] = loop.create_future()
        # the offerer's accept
        self.opened: asyncio.Future[None] = loop.create_future()
        self.writable = asyncio.Event()
        self.done = asyncio.Event()
        self.wake = asyncio.Event()
        self.max_message = 0
        self.peer_identity: str | None = None
        self.trust = "unverified"
        self.superseded = False
        self.peer_gone = False
        self.peer_session: str | None = None  # the peer's outbox session (description)
        self.acked = 0  # the channel's messages_acked already taken from the outbox
        self.final_event: LinkEvent | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # trickle (RFC 8838): local candidates not signalled yet, the peer's sealed ones
        self.local_pending: list[str] = []
        self.local_count = 0
        self.local_end = False
        self.end_signalled = False
        self.remote_trickle: deque[dict[str, Any]] = deque()
        self.box: TrickleBox | None = None
        self.trickle_wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def kick(self) -> None:
        self.wake.set()

    def arm(self, deadline: float | None) -> None:
        """Wake the driver at ``deadline`` (None: no timer). A timer that fires no later is
        kept: the driver's early wake-up only re-arms (the machine ignores an early
        ``handle_timer``), which costs less than a new timer handle for every frame, whose
        retransmission deadline moves with each one sent or acknowledged."""
        if deadline is None:
            self.disarm()
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        self.disarm()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self.wake.set()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None


_CONNECTION_SET = frozenset(
    {"ice_controlling", "stun_server", "turn_servers", "nominator", "host_ips",
     "include_loopback", "rng"}
)
"""The :class:`Connection` arguments an endpoint sets from its own."""


def _zero_rng(n: int) -> bytes:
    return bytes(n)


def _connection_options(
    options: object, stun: list[Address], turn: list[TurnServerConfig]
) -> dict[str, Any]:
    """``connection_options`` checked where they enter: a mapping of the
    :class:`Connection` arguments the endpoint leaves open, with values a connection accepts
    (a connection is built and dropped to check them: a plain object until it gathers; its
    random credentials come from a stand-in, so the endpoint's ``rng`` is not drawn from)."""
    accepted = set(inspect.signature(Connection).parameters) - _CONNECTION_SET
    checked = option_mapping(options, "connection_options", accepted, "{'gather_timeout': 5}")
    if not checked:
        return checked
    try:
        Connection(
            True, stun_server=stun, turn_servers=turn, nominator=StandardNominator(),
            rng=_zero_rng, **checked,
        )
    except LocalProtocolError as exc:
        raise LocalProtocolError(f"connection_options: {exc}") from None
    return checked


class LinkEndpoint:
    """An ephemeral-link endpoint named ``name`` on ``signalling`` (module docstring).

    Keyword arguments:

    - ``stun``: STUN server(s) for server-reflexive candidates: ``"host:port"``,
      ``(host, port)`` or a list of them;
    - ``turn``: TURN servers (:class:`~anchor_ice.aio.gather.TurnServerConfig`) for relayed
      candidates;
    - ``policy``: ``"gateway"`` (default: never a host pair), ``"standard"`` (RFC 8445
      regular nomination, host pairs allowed) or ``"relay"``; ``nominator`` overrides it;
    - ``idle_timeout``: seconds without an application datagram before a link dissolves
      (default 30);
    - ``identity``: this endpoint's :class:`~anchor_link.identity.Identity`, or the path of
      its identity file (``anchor keygen``); default: a new identity made for this endpoint
      object (links are still authenticated and encrypted, but nobody can pin it);
    - ``trusted_peers``: ``{peer name: public identity}`` (``"anchor1:..."`` or 32 bytes): a
      peer must prove its pinned key (:mod:`anchor_link.trust`);
    - ``known_peers``: path of a known-peers file for trust on first use (opt-in);
    - ``seal``: seal the channel's frames (default True; both sides must agree);
    - ``host_ips`` / ``include_loopback``: which addresses to gather host candidates on (as
      :class:`~anchor_ice.aio.connection.Connection`; tests pass ``host_ips=["127.0.0.1"]``);
    - ``form_timeout``: seconds a link may take to form (default 30);
    - ``close_timeout``: seconds the close handshake may take (default 5);
    - ``mtu``, ``max_message``: channel frame size and largest message (1200, 65536);
    - ``on_message(peer, data)``: called for every message instead of queueing it for
      ``async for`` / :meth:`recv`;
    - ``on_event(event)``: called for every :class:`LinkFormed`, :class:`LinkDissolved` and
      :class:`LinkFailed`;
    - ``connection_options``: more keyword arguments for every
      :class:`~anchor_ice.aio.connection.Connection` (``gather_timeout``, ``port_range``...);
    - ``delivery_timeout``: seconds messages carried from a broken link wait for a new link
      to their peer before :class:`MessagesUndelivered` gives them up (default 60);
    - ``rng``: random bytes (link ids, handshake ephemeral keys, ICE credentials, outbox
      sessions).
    """

    def __init__(
        self,
        name: str,
        signalling: Signalling,
        *,
        stun: Any = None,
        turn: Iterable[TurnServerConfig | tuple[Any, ...]] = (),
        policy: str = "gateway",
        nominator: Nominator | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        seal: bool = True,
        identity: Identity | str | os.PathLike[str] | None = None,
        trusted_peers: Mapping[str, str | bytes] | None = None,
        known_peers: str | os.PathLike[str] | None = None,
        host_ips: Iterable[str] | None = None,
        include_loopback: bool = False,
        form_timeout: float = DEFAULT_FORM_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        mtu: int = DEFAULT_MTU,
        max_message: int = DEFAULT_MAX_MESSAGE,
        on_message: Callable[[str, bytes], None] | None = None,
        on_event: Callable[[LinkEvent], None] | None = None,
        connection_options: Mapping[str, Any] | None = None,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        # Every argument is checked here, not inside a link's task (where a mistake would
        # surface late, as a failed link): LocalProtocolError naming it, nothing sent.
        check_name(name, "name")
        check_signalling(signalling, "signalling")
        if policy not in POLICIES:
            raise LocalProtocolError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if nominator is not None and not isinstance(nominator, Nominator):
            raise LocalProtocolError(
                "nominator must be a Nominator (GatewayNominator(), StandardNominator(),"
                f" RelayOnly()...), not {type(nominator).__name__}"
            )
        for value, what in (
            (idle_timeout, "idle_timeout"), (form_timeout, "form_timeout"),
            (close_timeout, "close_timeout"), (delivery_timeout, "delivery_timeout"),
        ):
            seconds(value, what)
        host_ip_list = ip_address_list(host_ips, "host_ips")
        # One tuple or "host:port" form for every address, (host, port, username, password)
        # accepted for a TURN server.
        stun_servers = server_list(stun, "stun")
        turn_servers = turn_server_configs(turn, "turn")
        if nominator is None and policy == "relay" and not turn_servers:
            raise LocalProtocolError(
                "policy='relay' needs a TURN server (turn=[...]): without one there is no"
                " relayed candidate to offer"
            )
        if identity is not None and not isinstance(identity, Identity | str | os.PathLike):
            raise LocalProtocolError(
                "identity must be an Identity, the path of an identity file (anchor keygen) or"
                f" None, not {type(identity).__name__}"
            )
        count(max_message, "max_message", 0)
        # The channel settings, once, now, rather than at every link.
        ReliableChannel(mtu=mtu, max_message=max_message + MESSAGE_HEADER)
        for callback, what in ((on_message, "on_message"), (on_event, "on_event")):
            if callback is not None and not callable(callback):
                raise LocalProtocolError(f"{what} must be a function or None, not {callback!r}")
        if not callable(rng):
            raise LocalProtocolError(f"rng must be a function rng(n) -> n random bytes, not {rng!r}")
        options = _connection_options(connection_options, stun_servers, turn_servers)
        self.name = name
        """This endpoint's name on the signalling."""
        self.policy = policy
        """The nomination policy name."""
        self.idle_timeout = idle_timeout
        """Seconds without an application datagram before a link dissolves."""
        self.seal = seal
        """Whether frames are sealed."""
        if identity is None:
            identity = Identity.generate(rng)
        elif not isinstance(identity, Identity):
            identity = load_identity(identity)
        self.identity: Identity = identity
        """This endpoint's identity, proven on every link."""
        self.trust = TrustPolicy(trusted_peers, known_peers)
        """Which peer identities are accepted (:class:`~anchor_link.trust.TrustPolicy`)."""
        self._offers_seen: OrderedDict[bytes, None] = OrderedDict()
        self._signalling = signalling
        self._stun = stun_servers
        self._turn = turn_servers
        self._nominator = nominator if nominator is not None else make_nominator(policy)
        self._host_ips = host_ip_list
        self._include_loopback = include_loopback
        self._form_timeout = form_timeout
        self._close_timeout = close_timeout
        self._mtu = mtu
        self._max_message = max_message
        self._on_message = on_message
        self._on_event = on_event
        self._connection_options = options
        self._rng = rng
        self._mailbox: Mailbox | None = None
        self._listener: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._links: dict[str, _Link] = {}
        self._delivery_timeout = delivery_timeout
        # Per peer: messages numbered across links, and what each peer delivered here.
        self._outboxes: dict[str, Outbox] = {}
        self._inboxes: OrderedDict[str, Inbox] = OrderedDict()
        self._redeliveries: dict[str, asyncio.Task[None]] = {}
        self._undelivered_deadline: dict[str, float] = {}
        # Messages not read yet, with their link (its channel's window holds them); None: closed.
        self._messages: deque[tuple[str, bytes, _Link] | None] = deque()
        self._message_ready: asyncio.Event | None = None
        self._history_changed: asyncio.Event | None = None
        self._closed = False
        self.history: deque[LinkEvent] = deque(maxlen=HISTORY_LIMIT)
        """The latest :data:`HISTORY_LIMIT` :class:`LinkFormed`, :class:`LinkDissolved` and
        :class:`LinkFailed` events, oldest first (two or so per link; older ones are
        dropped)."""
        self.events_recorded = 0
        """Life-cycle events recorded so far, those dropped from :attr:`history` included."""
        self.links_formed = 0
        """Links formed so far."""
        self.signalling_dropped = 0
        """Descriptions received that could not be used (malformed)."""
        self.replays_refused = 0
        """Offers dropped because their handshake message was seen before (a replay)."""
        self.trickle_refused = 0
        """Trickled ``candidates`` messages that did not open: changed on the way, replayed
        or forged (module docstring, "Trickle")."""

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Subscribe to the signalling (the only thing an idle endpoint listens on). Called
        by :meth:`send` and ``async with``; raises
        :class:`~anchor_link.aio.signal.SignallingError` when the name cannot be had."""
        if self._closed:
            raise LinkClosed("this endpoint is closed")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._mailbox is not None:
                return
            self._mailbox = await self._signalling.open(self.name, self.identity)
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(self._mailbox), name=f"anchor {self.name}: signalling"
            )

    async def close(self) -> None:
        """Close every link (the close handshake for open ones, bounded by
        ``close_timeout``), unsubscribe from the signalling and end ``async for``.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        links = list(self._links.values())
        for link in links:
            link.machine.close(loop.time())
            link.kick()
        if links:
            waits = [loop.create_task(link.done.wait()) for link in links]
            _, pending = await asyncio.wait(waits, timeout=self._close_timeout + 5.0)
            for task in pending:
                task.cancel()
            for link in links:
                if not link.done.is_set():
                    link.machine.abort("endpoint closed", loop.time())
                    link.kick()
                    await link.done.wait()
        redeliveries = [t for t in self._redeliveries.values() if not t.done()]
        for redelivery in redeliveries:
            redelivery.cancel()
        if redeliveries:
            await asyncio.gather(*redeliveries, return_exceptions=True)
        for peer in list(self._outboxes):
            self._give_up(peer, "the endpoint was closed")
        if self._mailbox is not None:
            with contextlib.suppress(SignallingError):
                await self._mailbox.close()
        self._messages.append(None)
        self._notify_message()

    async def __aenter__(self) -> LinkEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ sending

    async def send(self, peer: str, data: bytes) -> None:
        """Deliver one message (up to ``max_message`` bytes) to ``peer``, forming a link
        first when there is none. Returns once the message is queued on the link's channel,
        behind any carried from a broken link: it is then delivered exactly once, on this link
        or the next ones, or named by :class:`MessagesUndelivered` after ``delivery_timeout``
        without a link (module docstring, "Across links"). Raises
        :class:`LinkFormationFailed` when the link cannot be formed (the message was not
        accepted), :class:`LinkClosed` once this endpoint is closed."""
        if peer == self.name:
            raise LocalProtocolError("cannot link to ourselves")
        data = bytes(data)
        if len(data) > self._max_message:
            raise MessageTooLarge(f"message of {len(data)} bytes exceeds {self._max_message}")
        if self._mailbox is None:
            await self.start()
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise LinkClosed("this endpoint is closed")
            link = self._links.get(peer)
            if link is None:
                link = self._new_link(peer, None)
            opened = link.opened
            try:
                if opened.done():
                    opened.result()  # raises as awaiting it would
                else:
                    await asyncio.shield(opened)
            except _Superseded:
                continue
            except LinkFormationFailed:
                if self._closed:
                    raise LinkClosed("this endpoint is closed") from None
                raise
            machine = link.machine
            outbox = self._outbox(peer)
            if machine.state is LinkState.OPEN and outbox.link is link:
                if len(data) > link.max_message:
                    raise MessageTooLarge(
                        f"message of {len(data)} bytes exceeds the link's {link.max_message}"
                    )
                size = len(data) + MESSAGE_HEADER
                # Messages carried from a broken link go first (anchor_link.delivery).
                if (not outbox.unsent or self._pump(link)) and machine.can_send(size):
                    machine.send(outbox.accept(data), loop.time())
                    link.kick()
                    return
                link.writable.clear()
                if self._pump(link) and machine.can_send(size):
                    continue
                await link.writable.wait()
                continue
            await link.done.wait()  # closing: let it dissolve, then form a new link

    def _outbox(self, peer: str) -> Outbox:
        outbox = self._outboxes.get(peer)
        if outbox is None:
            outbox = self._outboxes[peer] = Outbox(self._rng(8).hex())
        return outbox

    def _pump(self, link: _Link) -> bool:
        """Queue carried messages on ``link`` while its channel takes them; True when none
        is left waiting (a new message may follow)."""
        outbox = self._outboxes.get(link.peer)
        if outbox is None or outbox.link is not link:
            return False
        machine = link.machine
        now = asyncio.get_running_loop().time()
        queued = False
        while outbox.unsent:
            framed = outbox.next_unsent()
            if not machine.can_send(len(framed)):
                break
            machine.send(framed, now)
            outbox.mark_queued()
            queued = True
        if queued:
            link.kick()
        return not outbox.unsent

    def _take_acks(self, link: _Link) -> None:
        """Messages the link's channel reports acknowledged leave its peer's outbox."""
        channel = link.machine.channel
        outbox = self._outboxes.get(link.peer)
        if channel is None or outbox is None or outbox.link is not link:
            return
        acked = channel.messages_acked
        if acked > link.acked:
            outbox.acknowledged(acked - link.acked)
            link.acked = acked
            self._undelivered_deadline.pop(link.peer, None)  # progress: a new deadline later

    def _carry(self, link: _Link) -> None:
        """``link`` is gone: its unacknowledged messages wait for the next link to the peer,
        formed now (module docstring, "Across links"); or, once the endpoint is closed, are
        given up."""
        peer = link.peer
        outbox = self._outboxes.get(peer)
        if outbox is None:
            return
        outbox.detach(link)
        if not outbox.pending:
            if peer not in self._links:
                del self._outboxes[peer]  # nothing to carry: the next link starts a session
            return
        if self._closed:
            self._give_up(peer, "the endpoint was closed")
            return
        loop = asyncio.get_running_loop()
        self._undelivered_deadline.setdefault(peer, loop.time() + self._delivery_timeout)
        task = self._redeliveries.get(peer)
        if task is None or task.done():
            self._redeliveries[peer] = loop.create_task(
                self._redeliver(peer), name=f"anchor {self.name}->{peer}: redeliver"
            )

    async def _redeliver(self, peer: str) -> None:
        """Form a link to ``peer`` for the messages carried from a broken one, retrying until
        the deadline; then give them up."""
        loop = asyncio.get_running_loop()
        reason = "no link could be formed"
        for attempt in range(1 << 30):
            outbox = self._outboxes.get(peer)
            deadline = self._undelivered_deadline.get(peer)
            if outbox is None or not outbox.pending or outbox.link is not None:
                return  # delivered, or a link took them
            if deadline is None:
                return
            if self._closed:
                self._give_up(peer, "the endpoint was closed")
                return
            left = deadline - loop.time()
            if left <= 0:
                self._give_up(peer, reason)
                return
            link = self._links.get(peer)
            if link is None:
                link = self._new_link(peer, None)
            try:
                await asyncio.wait_for(asyncio.shield(link.opened), left)
                return  # open: the link took the carried messages (_form)
            except _Superseded:
                continue
            except LinkFormationFailed as exc:
                reason = exc.reason
            except TimeoutError:
                continue  # the deadline passed: given up above
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))

    def _give_up(self, peer: str, reason: str) -> None:
        outbox = self._outboxes.pop(peer, None)
        self._undelivered_deadline.pop(peer, None)
        if outbox is None or not outbox.pending:
            return
        messages, numbers = outbox.fail()
        self._record(MessagesUndelivered(peer, reason, messages, numbers))

    # ------------------------------------------------------------------ receiving

    async def recv(self) -> tuple[str, bytes]:
        """The next message: ``(peer, data)``. Raises :class:`LinkClosed` once the endpoint
        is closed and every message was read. (Not with ``on_message=``.)"""
        if self._message_ready is None:
            self._message_ready = asyncio.Event()
        while not self._messages:
            if self._closed:
                raise LinkClosed("this endpoint is closed")
            self._message_ready.clear()
            await self._message_ready.wait()
        item = self._messages[0]
        if item is None:
            raise LinkClosed("this endpoint is closed")
        self._messages.popleft()
        peer, data, link = item
        if link.machine.release(1, asyncio.get_running_loop().time()):
            link.kick()  # a window update is owed
        return peer, data

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, bytes]]:
        while True:
            try:
                yield await self.recv()
            except LinkClosed:
                return

    def _notify_message(self) -> None:
        if self._message_ready is not None:
            self._message_ready.set()

    # ------------------------------------------------------------------ introspection

    def link_state(self, peer: str) -> LinkState | None:
        """The state of the link to ``peer``, or None when there is none."""
        link = self._links.get(peer)
        return link.machine.state if link is not None else None

    def pending(self, peer: str | None = None) -> int:
        """Messages accepted by :meth:`send` (to ``peer``, or to anyone) and not acknowledged
        yet: in flight on a link, or carried from a broken one to the next (module
        docstring, "Across links")."""
        if peer is not None:
            outbox = self._outboxes.get(peer)
            return outbox.pending if outbox is not None else 0
        return sum(outbox.pending for outbox in self._outboxes.values())

    def active_peers(self) -> list[str]:
        """Peers with a link (forming, open or closing)."""
        return list(self._links)

    def open_sockets(self) -> int:
        """Sockets the links hold now (0 when no link exists)."""
        return sum(link.conn.open_sockets() for link in self._links.values() if link.conn)

    def relays(self) -> int:
        """TURN allocations the links hold now."""
        return sum(len(link.conn.relays()) for link in self._links.values() if link.conn)

    async def wait_for(
        self,
        kind: type[E],
        peer: str | None = None,
        *,
        count: int = 1,
        timeout: float | None = None,
        after: int = 0,
    ) -> E:
        """The ``count``-th event of type ``kind`` (for ``peer``, if given) in
        :attr:`history` among those recorded after the first ``after`` (pass
        :attr:`events_recorded` to wait for the next one), waiting for it; raises TimeoutError
        after ``timeout`` seconds. Events dropped from the bounded history are not counted."""

        def found() -> E | None:
            first = self.events_recorded - len(self.history)  # the number of history[0]
            skip = max(0, after - first)
            seen = [
                e
                for i, e in enumerate(self.history)
                if i >= skip and isinstance(e, kind) and peer in (None, e.peer)
            ]
            return seen[count - 1] if len(seen) >= count else None

        async def wait() -> E:
            while (event := found()) is None:
                if self._history_changed is None:
                    self._history_changed = asyncio.Event()
                self._history_changed.clear()
                await self._history_changed.wait()
            return event

        return await asyncio.wait_for(wait(), timeout)

    def _record(self, event: LinkEvent) -> None:
        self.history.append(event)
        self.events_recorded += 1
        if self._history_changed is not None:
            self._history_changed.set()
        if self._on_event is not None:
            self._on_event(event)

    # ------------------------------------------------------------------ links

    def _new_link(self, peer: str, offer: dict[str, Any] | None) -> _Link:
        loop = asyncio.get_running_loop()
        link_id = str(offer["link"]) if offer is not None else self._rng(8).hex()
        machine = LinkMachine(
            peer, offerer=offer is None, now=loop.time(),
            form_timeout=self._form_timeout, close_timeout=self._close_timeout,
        )  # fmt: skip
        link = _Link(peer, link_id, machine)
        self._links[peer] = link
        tag = f"anchor {self.name}->{peer} {link_id[:6]}"
        link.tasks["form"] = loop.create_task(self._form(link, offer), name=f"{tag}: form")
        link.tasks["drive"] = loop.create_task(self._drive(link), name=f"{tag}: drive")
        return link

    def _connection(self, controlling: bool) -> Connection:
        return Connection(
            controlling,
            stun_server=self._stun,
            turn_servers=self._turn,
            nominator=self._nominator,
            host_ips=self._host_ips,
            include_loopback=self._include_loopback,
            rng=self._rng,
            **self._connection_options,
        )

    def _payload(self, link: _Link, conn: Connection) -> bytes:
        """This side's ICE description: the payload of its handshake message, with the
        candidates gathered so far (the rest trickle, module docstring)."""
        description = {
            "session": self._outbox(link.peer).session,
            "ufrag": conn.local_username,
            "pwd": conn.local_password,
            **self._take_local(link),
            "seal": self.seal,
            "mtu": self._mtu,
            "max_message": self._max_message,
            "pacing": conn.local_pacing,
            "renomination": True,
        }
        return json.dumps(description, separators=(",", ":")).encode()

    @staticmethod
    def _take_local(link: _Link) -> dict[str, Any]:
        """The local candidates not signalled yet, and end-of-candidates once gathering is
        complete (RFC 8838 §8.2): ``{"candidates": [...], "end": bool}``."""
        candidates, link.local_pending = link.local_pending, []
        end = link.local_end and not link.end_signalled
        link.end_signalled = link.end_signalled or end
        return {"candidates": candidates, "end": end}

    @staticmethod
    def _local_candidate(link: _Link, candidate: Candidate | None) -> None:
        """The connection's candidate handler: a candidate to signal, None at the end."""
        if candidate is None:
            link.local_end = True
        else:
            link.local_pending.append(candidate.to_sdp())
            link.local_count += 1
        link.trickle_wake.set()

    async def _gathering(self, link: _Link, conn: Connection) -> None:
        """Gathering to its end, concurrently with the handshake and the checks; a link
        with no candidate to offer at all fails (and tells the peer)."""
        loop = asyncio.get_running_loop()
        try:
            await conn.gather_candidates()
        except (AnchorError, OSError) as exc:
            reason = f"gathering failed: {type(exc).__name__}: {exc}"
        else:
            if link.local_count:
                return
            # what gathering gave up on, then the policy's "no candidate to offer" and its
            # way out (Connection.gather_failures ends with it)
            failures = [str(f) for f in conn.gather_failures]
            if not any(f.kind == "policy" for f in conn.gather_failures):
                failures.append(f"no candidate to offer under the {self.policy} policy")
            reason = "; ".join(failures)
        if link.machine.state is LinkState.FORMING:
            link.machine.fail(reason, loop.time())
            link.kick()
            await self._reject(link, reason, auth=False)

    async def _trickle(self, link: _Link, conn: Connection) -> None:
        """After the handshake: this side's later candidates out, sealed, as they are found;
        the peer's sealed ones in (module docstring, "Trickle")."""
        mailbox, box = self._mailbox, link.box
        assert mailbox is not None and box is not None
        while True:
            if link.local_pending or (link.local_end and not link.end_signalled):
                later = json.dumps(self._take_local(link), separators=(",", ":")).encode()
                with contextlib.suppress(SignallingError, HandshakeFailed):
                    # HandshakeFailed: out of sequence numbers (MAX_TRICKLE_MESSAGES)
                    seq, sealed = box.seal(later)
                    message = self._message(link, "candidates", seq=seq, box=_b64(sealed))
                    await mailbox.publish(link.peer, message)
            while link.remote_trickle:
                received = link.remote_trickle.popleft()
                try:
                    payload = box.open(received.get("seq"), _field(received, "box"))
                except HandshakeFailed:
                    self.trickle_refused += 1  # changed on the way, replayed or forged
                    continue
                try:
                    await self._add_candidates(conn, _description(payload))
                except _FormError:
                    self.signalling_dropped += 1
                except AnchorError:  # the connection is closing: the link ends anyway
                    return
            link.trickle_wake.clear()
            if link.local_pending or link.remote_trickle:
                continue
            await link.trickle_wake.wait()

    @staticmethod
    async def _add_candidates(conn: Connection, body: Mapping[str, Any]) -> None:
        """The peer's candidates (and its end-of-candidates) into the connection."""
        candidates = body.get("candidates")
        if not isinstance(candidates, list):
            raise _FormError("malformed candidates from the peer")
        for text in candidates:
            if not isinstance(text, str):
                continue
            with contextlib.suppress(AnchorError, ValueError):
                await conn.add_remote_candidate(text)
        if body.get("end") is True:
            await conn.add_remote_candidate(None)  # end-of-candidates (RFC 8838 §13)

    def _start_trickle(self, link: _Link, conn: Connection, handshake: LinkHandshake) -> None:
        """The handshake is complete: later candidates go sealed from now on."""
        link.box = handshake.trickle_box()
        link.tasks["trickle"] = asyncio.get_running_loop().create_task(
            self._trickle(link, conn), name=f"anchor {self.name}->{link.peer}: trickle"
        )

    def _message(self, link: _Link, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "v": DESCRIPTION_VERSION, "link": link.id, **fields}

    def _handshake(self, link: _Link, offerer: str, answerer: str) -> LinkHandshake:
        link.handshake = LinkHandshake(
            self.identity,
            initiator=link.machine.offerer,
            prologue=link_prologue(link.id, offerer, answerer),
            rng=self._rng,
        )
        return link.handshake

    def _verify_peer(self, link: _Link, handshake: LinkHandshake) -> None:
        """The peer's proven identity against the trust policy (raises :class:`_AuthError`)."""
        presented = handshake.remote_static
        assert presented is not None
        try:
            link.trust = str(self.trust.verify(link.peer, presented))
        except PeerKeyMismatch as exc:
            raise _AuthError(str(exc), exc.expected, exc.presented) from None
        except LinkError as exc:  # an unreadable known-peers file: fail closed
            raise _AuthError(f"cannot check {link.peer!r}'s identity: {exc}") from None
        link.peer_identity = format_public(presented)

    async def _form(self, link: _Link, offer: dict[str, Any] | None) -> None:
        """Gather, run the handshake over the signalling, connect, open the channel; failures
        go to the machine (module docstring)."""
        loop = asyncio.get_running_loop()
        machine = link.machine
        try:
            assert self._mailbox is not None
            mailbox = self._mailbox
            if offer is None:
                handshake = self._handshake(link, self.name, link.peer)
                remote_offer = None
            else:
                handshake = self._handshake(link, link.peer, self.name)
                try:
                    remote_offer = _description(handshake.read_message(_noise(offer)))
                except HandshakeFailed as exc:
                    raise _FormError(f"unusable offer: {exc}") from None
            conn = link.conn = self._connection(controlling=offer is None)
            # Trickle (RFC 8838): gathering goes on while the handshake runs and the checks
            # start; the description carries the candidates known when it is written.
            conn.set_candidate_handler(lambda candidate: self._local_candidate(link, candidate))
            await conn.start_gathering()
            link.tasks["gather"] = loop.create_task(
                self._gathering(link, conn), name=f"anchor {self.name}->{link.peer}: gather"
            )
            if remote_offer is None:
                # offerer: -> e (our description); <- e, ee, s, es; -> s, se (later candidates)
                noise = handshake.write_message(self._payload(link, conn))
                await mailbox.publish(link.peer, self._message(link, "offer", noise=_b64(noise)))
                answer = await link.answer
                try:
                    remote = _description(handshake.read_message(_noise(answer)))
                except HandshakeFailed as exc:
                    raise _AuthError(f"the answer did not authenticate ({exc})") from None
                self._verify_peer(link, handshake)
                mtu, max_message = await self._apply(conn, remote, link)
                later = json.dumps(self._take_local(link), separators=(",", ":")).encode()
                confirm = handshake.write_message(later)
                await mailbox.publish(link.peer, self._message(link, "confirm", noise=_b64(confirm)))
                self._start_trickle(link, conn, handshake)
            else:
                # answerer: <- e, ee, s, es (our description); -> s, se; <- accept
                mtu, max_message = await self._apply(conn, remote_offer, link)
                noise = handshake.write_message(self._payload(link, conn))
                await mailbox.publish(link.peer, self._message(link, "answer", noise=_b64(noise)))
                confirm_body = await link.answer
                try:
                    later = handshake.read_message(_noise(confirm_body))
                except HandshakeFailed as exc:
                    raise _AuthError(f"the confirm did not authenticate ({exc})") from None
                self._verify_peer(link, handshake)
                await self._add_candidates(conn, _description(later))
                self._start_trickle(link, conn, handshake)
                accept = self._message(link, "accept", mac=_b64(handshake.accept_message()))
                await mailbox.publish(link.peer, accept)
            await conn.connect()
            if remote_offer is None:
                # key confirmation: the answerer accepted our identity (module docstring)
                accepted = await link.accept
                try:
                    handshake.check_accept(_field(accepted, "mac"))
                except HandshakeFailed as exc:
                    raise _AuthError(f"the accept did not authenticate ({exc})") from None
            pair = conn.selected_pair
            if pair is None:
                raise _FormError("ICE connected without a selected pair")
            sealer = handshake.sealer() if self.seal else None
            now = loop.time()
            # Messages read with recv() hold their frames of the receive window until they are
            # read: a reader that falls behind makes the peer wait (flow control), and what
            # waits for it is bounded by the window. on_message reads each at once.
            channel = ReliableChannel(
                mtu=mtu, max_message=max_message + MESSAGE_HEADER, idle_timeout=self.idle_timeout,
                seal=sealer, rng=self._rng, now=now,
                manual_release=self._on_message is None,
            )  # fmt: skip
            link.max_message = max_message
            machine.formed(
                pair, channel, now, sealed=sealer is not None,
                peer_identity=link.peer_identity, trust=link.trust,
                relay_transport=_relay_transport(conn, pair),
            )  # fmt: skip
            if machine.state is LinkState.OPEN:
                conn.set_pair_handler(lambda moved: self._moved(link, moved))
                if conn.selected_pair != pair:  # renominated meanwhile
                    self._moved(link, conn.selected_pair)
                assert link.peer_session is not None
                self._inbox(link.peer).begin(link.peer_session)
                self._outbox(link.peer).attach(link)
                self._pump(link)  # messages carried from a broken link go first
                # datagrams straight into the machine, those that arrived together at once
                conn.set_data_batch_handler(
                    lambda datagrams, _component: self._frames_in(link, datagrams)
                )
                link.tasks["read"] = loop.create_task(
                    self._read(link, conn), name=f"anchor {self.name}->{link.peer}: read"
                )
        except asyncio.CancelledError:
            raise
        except IceFailedError as exc:
            machine.fail(f"ICE failed: {exc.reason}", loop.time())
        except _AuthError as exc:
            reason = f"peer authentication failed: {exc}"
            machine.authentication_failed(reason, expected=exc.expected, presented=exc.presented)
            await self._reject(link, reason, auth=True)
        except _FormError as exc:
            machine.fail(str(exc), loop.time())
            if offer is not None:
                # Tell the offerer now rather than let it wait for its form_timeout.
                await self._reject(link, str(exc), auth=False)
        except (AnchorError, OSError) as exc:
            machine.fail(f"{type(exc).__name__}: {exc}", loop.time())
        finally:
            link.kick()

    async def _reject(self, link: _Link, reason: str, *, auth: bool) -> None:
        """Tell the peer this side cannot go on with the link (best effort)."""
        if self._mailbox is None:
            return
        reject = {"type": "reject", "link": link.id, "reason": reason[:300], "auth": auth}
        with contextlib.suppress(SignallingError):
            await self._mailbox.publish(link.peer, reject)

    async def _apply(
        self, conn: Connection, remote: Mapping[str, Any], link: _Link
    ) -> tuple[int, int]:
        """Give the peer's ICE description to the connection; returns the link's mtu and
        max_message (of the application's messages; the channel's are a header longer)."""
        session = remote.get("session")
        if not isinstance(session, str) or not 1 <= len(session) <= 64:
            raise _FormError("malformed description from the peer (session)")
        link.peer_session = session
        ufrag, pwd, candidates = remote.get("ufrag"), remote.get("pwd"), remote.get("candidates")
        if not isinstance(ufrag, str) or not isinstance(pwd, str) or not isinstance(
            candidates, list
        ):
            raise _FormError("malformed description from the peer")
        mtu, max_message = remote.get("mtu"), remote.get("max_message")
        if not isinstance(mtu, int) or not isinstance(max_message, int):
            raise _FormError("malformed description from the peer (mtu, max_message)")
        mtu, max_message = min(mtu, self._mtu), min(max_message, self._max_message)
        try:
            ReliableChannel(mtu=mtu, max_message=max_message + MESSAGE_HEADER)
        except LocalProtocolError as exc:
            raise _FormError(f"the peer's channel settings do not fit: {exc}") from None
        sealed = remote.get("seal")
        if self.seal and sealed is not True:
            raise _FormError("the peer does not seal its frames and this endpoint requires it")
        if not self.seal and sealed is not False:
            raise _FormError("the peer seals its frames and this endpoint does not")
        pacing = remote.get("pacing")
        if isinstance(pacing, int) and not isinstance(pacing, bool) and 1 <= pacing <= 60_000:
            conn.remote_ta = pacing / 1000  # otherwise none: RFC 8445's 50 ms stands for it
        # Renomination only between two Anchor endpoints that both say so (module docstring).
        conn.renomination = remote.get("renomination") is True
        conn.remote_username = ufrag
        conn.remote_password = pwd
        await self._add_candidates(conn, remote)  # the rest trickle
        return mtu, max_message

    async def _read(self, link: _Link, conn: Connection) -> None:
        """The end of the connection (closed, failed) into the machine. Its datagrams reach
        the machine through the connection's data handler as they arrive; one that still
        comes this way (none should) is taken the same way."""
        loop = asyncio.get_running_loop()
        machine = link.machine
        try:
            while True:
                self._frames_in(link, [await conn.recv()])
        except IceFailedError as exc:
            machine.fail(exc.reason, loop.time())
        except IceError as exc:
            machine.fail(str(exc), loop.time())
        link.kick()

    @staticmethod
    def _moved(link: _Link, pair: PairInfo | None) -> None:
        """ICE moved the link to a better pair (renomination): frames go on it from now on."""
        if pair is None or link.conn is None:
            return
        loop = asyncio.get_running_loop()
        link.machine.moved(pair, loop.time(), relay_transport=_relay_transport(link.conn, pair))
        link.kick()

    @staticmethod
    def _frames_in(link: _Link, datagrams: list[bytes]) -> None:
        """Datagrams of the selected pair that arrived together into the machine, those that
        are channel frames (:func:`~anchor_link.reliable.is_reliable_frame`), in one call."""
        frames = [data for data in datagrams if data and data[0] >= FIRST_BYTE_MIN]
        if frames:
            link.machine.receive_datagrams(frames, asyncio.get_running_loop().time())
            link.kick()

    async def _drive(self, link: _Link) -> None:
        """The machine's output, events and timer; then the teardown."""
        loop = asyncio.get_running_loop()
        machine = link.machine
        try:
            while True:
                now = loop.time()
                machine.handle_timer(now)
                frames = machine.datagrams_to_send(now)
                if frames and link.conn is not None:
                    try:
                        link.conn.send_datagrams(frames)
                    except IceError as exc:
                        machine.fail(str(exc), now)
                inbox: Inbox | None = None
                while (event := machine.next_event()) is not None:
                    if type(event) is LinkMessage:
                        if inbox is None:
                            inbox = self._inbox(link.peer)
                        self._deliver_message(link, inbox, event)
                    else:
                        self._dispatch(link, event)
                self._take_acks(link)
                if machine.final:
                    break
                link.arm(machine.next_timer())
                await link.wake.wait()
                link.wake.clear()
        finally:
            await self._release(link)

    def _inbox(self, peer: str) -> Inbox:
        inbox = self._inboxes.get(peer)
        if inbox is None:
            inbox = self._inboxes[peer] = Inbox()
            if len(self._inboxes) > INBOX_LIMIT:
                self._inboxes.popitem(last=False)
        else:
            self._inboxes.move_to_end(peer)
        return inbox

    def _deliver_message(self, link: _Link, inbox: Inbox, event: LinkMessage) -> None:
        """A message of the link to the application, unless ``inbox`` (the peer's) had it."""
        data = inbox.accept(event.data)
        if data is None:  # delivered before, on a link that broke before its ACK
            if self._on_message is None and link.machine.release(
                1, asyncio.get_running_loop().time()
            ):
                link.kick()
            return
        if self._on_message is not None:
            self._on_message(event.peer, data)
        else:
            self._messages.append((event.peer, data, link))
            self._notify_message()

    def _dispatch(self, link: _Link, event: LinkEvent) -> None:
        """The machine's events other than messages (:meth:`_deliver_message`)."""
        if isinstance(event, LinkWritable):
            self._pump(link)
            link.writable.set()
        elif isinstance(event, LinkFormed):
            self.links_formed += 1
            self._record(event)
            if not link.opened.done():
                link.opened.set_result(None)
        elif isinstance(event, LinkMoved):
            self._record(event)
        elif isinstance(event, LinkDissolved | LinkFailed):
            link.final_event = event

    async def _release(self, link: _Link) -> None:
        """Everything of a finished link: its tasks, its timer, its connection (TURN
        allocation released with LIFETIME 0, sockets closed); then its event."""
        link.disarm()
        current = asyncio.current_task()
        others = [t for t in link.tasks.values() if t is not current and not t.done()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        await self._say_bye(link)
        if link.conn is not None:
            await link.conn.close()
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
        self._take_acks(link)
        self._carry(link)
        event = link.final_event
        if not link.opened.done():
            if link.superseded:
                link.opened.set_exception(_Superseded())
            else:
                reason = event.reason if isinstance(event, LinkFailed) else "closed"
                error = (
                    PeerAuthenticationError
                    if isinstance(event, PeerAuthenticationFailed)
                    else LinkFormationFailed
                )
                link.opened.set_exception(error(link.peer, reason))
            link.opened.exception()  # retrieved: nobody may be waiting
        if event is not None:
            self._record(event)
        link.writable.set()
        link.done.set()

    async def _say_bye(self, link: _Link) -> None:
        """Tell the peer a link broke on this side (module docstring), best effort."""
        event = link.final_event
        if (
            not isinstance(event, LinkDissolved)
            or event.clean
            or link.superseded
            or link.peer_gone
            or self._mailbox is None
            or not event.reason.startswith((DissolveReason.TRANSPORT, DissolveReason.UNREACHABLE))
        ):
            return
        bye = {"type": "bye", "link": link.id, "reason": event.reason[:200]}
        with contextlib.suppress(SignallingError, TimeoutError):
            await asyncio.wait_for(self._mailbox.publish(link.peer, bye), BYE_TIMEOUT)

    # ------------------------------------------------------------------ signalling

    async def _listen(self, mailbox: Mailbox) -> None:
        while True:
            try:
                envelope = await mailbox.receive()
            except SignallingClosed:
                return
            try:
                self._on_envelope(envelope.sender, envelope.body)
            except (AnchorError, ValueError, TypeError, KeyError):
                self.signalling_dropped += 1  # a malformed description must not stop us

    def _on_envelope(self, peer: str, body: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        kind = body.get("type")
        link = self._links.get(peer)
        if kind == UNREACHABLE:
            if link is not None and link.machine.offerer and not link.answer.done():
                link.machine.fail(f"{peer!r} is not on the signalling", loop.time())
                link.kick()
        elif kind == "reject":
            if (
                link is not None
                and body.get("link") == link.id
                and link.machine.state is LinkState.FORMING
            ):
                reason = str(body.get("reason", ""))[:300]
                if body.get("auth") is True:
                    link.machine.authentication_failed(
                        f"peer authentication failed: {peer!r} refused the handshake: {reason}"
                    )
                else:
                    link.machine.fail(f"{peer!r} refused the offer: {reason}", loop.time())
                link.kick()
        elif kind == "bye":
            if link is not None and body.get("link") == link.id:
                reason = str(body.get("reason", ""))[:200]
                link.peer_gone = True
                link.machine.abort(f"{DissolveReason.PEER}: {reason}", loop.time())
                link.kick()
        elif kind == "candidates":
            if link is None or body.get("link") != link.id:
                return
            if len(link.remote_trickle) >= MAX_TRICKLE_QUEUED:
                self.signalling_dropped += 1
                return
            link.remote_trickle.append(body)  # opened by the trickle task, once it has keys
            link.trickle_wake.set()
        elif kind in ("answer", "confirm", "accept"):
            if link is None or body.get("link") != link.id:
                return
            offerer = link.machine.offerer
            if kind == "accept":
                future = link.accept if offerer else None
            else:
                future = link.answer if offerer == (kind == "answer") else None
            if future is not None and not future.done():
                future.set_result(body)
        elif kind == "offer" and isinstance(body.get("link"), str) and not self._closed:
            if body.get("v") != DESCRIPTION_VERSION:
                self.signalling_dropped += 1  # another version of the protocol: no link
                return
            ephemeral = _noise(body)[:32]
            if ephemeral in self._offers_seen:
                self.replays_refused += 1  # a replay (or a duplicate): nobody could complete it
                return
            self._offers_seen[ephemeral] = None
            if len(self._offers_seen) > REPLAY_MEMORY:
                self._offers_seen.popitem(last=False)
            if link is not None:
                crossing = link.machine.offerer and not link.answer.done()
                if crossing and self.name < peer:
                    return  # our offer wins; the peer answers it
                reason = (
                    "offers crossed; answering the peer's"
                    if crossing
                    else "replaced by a new offer from the peer"
                )
                link.superseded = True
                link.machine.abort(reason, loop.time())
                link.kick()
            self._new_link(peer, body)

    def __repr__(self) -> str:
        return f"<LinkEndpoint {self.name!r} links={sorted(self._links)}>"


def _relay_transport(conn: Connection, pair: PairInfo) -> str | None:
    """How the TURN server of the pair's relayed local candidate is reached, else None."""
    return next(  # only a relayed candidate has a relayed address
        (r.turn.transport for r in conn.relays() if r.relayed == pair.local.address), None
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _field(body: Mapping[str, Any], key: str) -> bytes:
    """A base64 field of a signalling message (raises :class:`HandshakeFailed` if it is not)."""
    text = body.get(key)
    if not isinstance(text, str) or len(text) > 4 * 65536:
        raise HandshakeFailed(f"no {key!r} in the peer's message")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeFailed(f"malformed {key!r} in the peer's message") from None


def _noise(body: Mapping[str, Any]) -> bytes:
    """The Noise handshake message of an offer, answer or confirm."""
    return _field(body, "noise")


def _description(payload: bytes) -> dict[str, Any]:
    """An ICE description from a handshake payload (raises :class:`_FormError`)."""
    try:
        return loads_object(payload, max_size=MAX_BODY, what="description")
    except ValueError as exc:
        raise _FormError(f"malformed description from the peer: {exc}") from None


def __getattr__(name: str) -> Any:
    """``Anchor``, the endpoint's name before 0.2: a deprecated alias of :class:`LinkEndpoint`
    (the name is the project's and the command's, not the endpoint's). Removed after 0.2."""
    if name == "Anchor":
        import warnings

        warnings.warn(
            "anchor_link.aio.endpoint.Anchor is deprecated: use LinkEndpoint",
            DeprecationWarning,
            stacklevel=2,
        )
        return LinkEndpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
