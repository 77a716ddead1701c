"""The asyncio ICE connection: :class:`Connection`, shaped like aioice's (RFC 8445).

Theory of operation
-------------------
:class:`Connection` is an adapter: it owns sockets, the loop and the clock, and only pumps
bytes, time and events through the sans-I/O :class:`~anchor_ice.agent.IceAgent`.

* **Gathering.** :meth:`Connection.gather_candidates` runs one
  :class:`~anchor_ice.aio.gather.Gatherer` per component (host, server-reflexive and relayed
  candidates). Each candidate goes to the agent with its base as soon as it is found, then
  the socket or relay that carries it (:meth:`Gatherer.endpoint`) gets this connection's
  handler; datagrams that arrived earlier wait in the gatherer's backlog and are delivered
  then, in order, so a fast peer's checks are not lost.
* **Sending.** The agent's :class:`~anchor_stun.events.Transmit` names the base it leaves
  from: a host socket address (``GatheredSocket.send``) or a relayed address
  (``RelayEndpoint.send``: a Send indication, the TURN permission for the peer's IP created
  first, RFC 8656 §9, and the datagrams held until it exists). Permissions are also asked for
  every remote candidate's IP as soon as it is known, so that the peer's checks to our relayed
  candidates get through the relay before our own first check to that IP. Once a pair on a
  relayed base is selected, a channel is bound to its remote candidate (RFC 8656 §12), and
  its data goes as ChannelData from then on.
* **ICMP errors.** A host socket that reports a check's destination unreachable (the
  gatherer reads the error queue, :meth:`GatheredSocket.set_unreachable_handler`) tells the
  agent (:meth:`~anchor_ice.agent.IceAgent.destination_unreachable`): a closed port
  (``ECONNREFUSED``) fails the checks that went there at once, and the failure reason names
  the address (RFC 8445 §7.2.5.2.2).
* **Data.** Datagrams that are not STUN wait for :meth:`Connection.recvfrom`, or go at once
  to a handler (:meth:`Connection.set_data_handler`; :meth:`Connection.set_data_batch_handler`
  takes those that arrived together in one call, as the ephemeral link does).
  :meth:`Connection.send_datagrams` sends several at once, as one segmented send where the
  OS offers it.
* **Receiving (RFC 7983 demultiplexing).** TURN traffic never reaches this class (the
  gatherer's sockets route it to the allocations; relayed data comes back out with the
  peer's address and the relayed address as ``local``). Of what is left, a datagram whose
  first byte is 0-3 is STUN and goes to the agent (dropped if it is not an ICE Binding
  message); anything else is application data, delivered to :meth:`recv` only when it came
  on the 5-tuple of a selected pair (the previous one too during an ICE restart), else of a
  valid or checklist pair (RFC 8445 §12.2: an agent must be prepared to receive data on any
  candidate pair; a peer nominating aggressively may send before our own check on the pair
  succeeded). Other datagrams are dropped and counted in :attr:`dropped`.
* **Time.** A :class:`~anchor_stun.aio.net.CorePump` drives the agent with ``loop.time()``:
  after every input it sends the output and hands out the events at once, handles a timer
  that is already due right away, and keeps one timer handle armed at
  ``agent.next_timer()``. The loop wakes timers with about 1 ms granularity (epoll), so a
  paced check leaves up to about 1 ms after its Ta.
* **Life cycle.** ``gather_candidates`` -> signal ``local_candidates``, ``local_username``
  and ``local_password``; set ``remote_username`` / ``remote_password`` and
  ``add_remote_candidate`` (None: end-of-candidates) -> ``connect`` (raises
  :class:`IceFailedError`) -> ``send`` / ``recv`` -> ``close`` (closes every socket and
  releases every TURN allocation, Refresh with LIFETIME 0). An ICE restart (RFC 8445 §9):
  both sides call :meth:`restart`, exchange the new credentials and candidates as at first,
  and call :meth:`connect` again; data keeps flowing on the previous pair until the new one
  is selected.
* **Trickle (RFC 8838).** :meth:`Connection.start_gathering` returns once the host
  candidates are known and gathers the rest in the background; the candidate handler
  (:meth:`Connection.set_candidate_handler`) hears of each candidate to signal as it is found,
  then of end-of-candidates (None). Checks may start (:meth:`connect`) before gathering
  completes: the agent pairs each new local or remote candidate as it comes, and a peer's
  early checks wait in the gatherer's backlog. :meth:`gather_candidates` waits for the end.

Policies: ``policy="standard"`` (the default here, RFC 8445 regular nomination of the best
valid pair), ``"gateway"`` (docs/design.md: never a host pair; host candidates are not
advertised), ``"relay"`` (relayed local candidates only), or any object implementing the
:class:`~anchor_ice.nominator.Nominator` protocol as ``nominator=``.

From aioice to Anchor
---------------------
====================================================  ==========================================
aioice                                                Anchor (``anchor_ice.aio.connection``)
====================================================  ==========================================
``aioice.Connection(ice_controlling=True)``           ``Connection(ice_controlling=True)``
``conn.ice_controlling = False`` (before connect)      same
``components=2``                                      ``components=2``
``stun_server=("host", 3478)``                        same; or ``"host:3478"``, or a list
``turn_server=..., turn_username=, turn_password=``   same; or ``turn_servers=[TurnServerConfig]``
``turn_transport="tcp"``, ``turn_ssl=True``           same (TURN over TCP / TLS, RFC 8656 §3.1);
                                                      or ``TurnServerConfig.from_uri("turns:...")``
``use_ipv4=`` / ``use_ipv6=``                         same; plus ``host_ips=[...]``,
                                                      ``include_loopback=``, ``interfaces=``,
                                                      ``port_range=``
``transport_policy=TransportPolicy.RELAY``            ``policy="relay"``
(nothing)                                             ``policy="gateway"`` / ``nominator=...``
``local_username=``, ``local_password=``              same
``await conn.gather_candidates()``                    same
``conn.local_candidates`` (aioice ``Candidate``)      same (``anchor_ice.candidate.Candidate``;
                                                      ``c.to_sdp()`` is ``"candidate:..."``)
``conn.local_username`` / ``conn.local_password``     same
``conn.remote_username = u``                          same
``conn.remote_password = p``                          same
``await conn.add_remote_candidate(c)``                same; ``c`` a ``Candidate`` or its SDP
                                                      text (with or without ``candidate:``,
                                                      so ``aioice_candidate.to_sdp()`` works)
``await conn.add_remote_candidate(None)``             same (end-of-candidates)
``conn.remote_candidates``                            same
``await conn.connect()``                              same; raises ``IceFailedError`` (a
                                                      ``ConnectionError``, as aioice's)
``await conn.send(data)``                             same
``await conn.sendto(data, component)``                same
``await conn.recv()``                                 same
``await conn.recvfrom()`` -> (data, component)        same
``await conn.close()``                                same; also releases TURN allocations
``conn._nominated[1]`` (private)                      ``conn.selected_pair`` (a ``PairInfo``)
(no ICE restart)                                      ``await conn.restart()``, exchange, then
                                                      ``await conn.connect()``
(fixed 20 ms pacing, nothing signalled)               ``conn.local_ta``; ``conn.remote_ta = t``
                                                      (Ta proposals, ``a=ice-pacing``: Ta is
                                                      50 ms unless both sides propose less)
``aioice.Candidate.from_sdp(s)``                      ``Candidate.from_sdp("candidate:" + s)``
``await conn.get_event()`` (ConnectionClosed)         ``await conn.wait_ended()`` (reason|None)
====================================================  ==========================================

A drop-in with aioice's exact names (``Candidate.host``, ``get_event()``, ``TransportPolicy``)
is :mod:`anchor_ice.compat.aioice`; ``anchor_ice.compat.install_aioice()`` makes ``import
aioice`` resolve to it (aiortc then runs on this class).

Differences worth knowing: application data whose first byte is 0-3 is taken for STUN
(RFC 7983) and never delivered; gathering gives up on a STUN/TURN server after
``gather_timeout`` seconds (5 by default) instead of hanging; data is only accepted from an
5-tuple of a candidate pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import os
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from anchor_ice.agent import (
    CHECKING_TIMEOUT,
    PROPOSED_TA,
    IceAgent,
    IceState,
    check_ice_string,
)
from anchor_ice.aio.gather import (
    DEFAULT_RELEASE_TIMEOUT,
    DEFAULT_SERVER_TIMEOUT,
    DEFAULT_TA,
    GatheredSocket,
    Gatherer,
    GatherFailure,
    RelayEndpoint,
    TurnServerConfig,
    UnreachableHandler,
    check_port_range,
    host_addresses,
    turn_server_configs,
)
from anchor_ice.aio.pacing import TransactionPacer, shared_pacer
from anchor_ice.candidate import Candidate, check_candidate
from anchor_ice.events import (
    ConsentLost,
    IceConnected,
    IceFailed,
    PairInfo,
    PairNominated,
    RestartCompleted,
)
from anchor_ice.nominator import GatewayNominator, Nominator, RelayOnly, StandardNominator
from anchor_stun.address import ip_address_list, option_mapping, seconds
from anchor_stun.aio.net import CorePump, TransportName, call_user, credential, server_list
from anchor_stun.errors import AnchorError, LocalProtocolError
from anchor_stun.events import Address, StunEvent, Transmit

__all__ = [
    "MAX_QUEUED",
    "POLICIES",
    "SOFTWARE",
    "Connection",
    "IceError",
    "IceFailedError",
    "IceNotConnectedError",
    "Policy",
    "make_nominator",
]

SOFTWARE = "anchor 0.1"
MAX_QUEUED = 4096
_STUN_HEADER = 20
_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
_REQUESTS_REMEMBERED = 1024  # transaction ids whose first transmission was paced
"""Received application datagrams kept for :meth:`Connection.recv`; more are dropped."""

Policy = Literal["gateway", "standard", "relay"]
POLICIES: tuple[Policy, ...] = ("gateway", "standard", "relay")


class IceError(AnchorError):
    """Anything that went wrong in an ICE connection (RFC 8445)."""


class IceFailedError(IceError, ConnectionError):
    """ICE processing failed: no pair could be selected (RFC 8445 §7.2.5.4, §8.1.2), or
    consent was lost (RFC 7675). ``reason`` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"ICE failed: {reason}")
        self.reason = reason


class IceNotConnectedError(IceError, ConnectionError):
    """No selected pair to carry data: not connected yet, failed, or closed."""


def make_nominator(policy: str) -> Nominator:
    """The nominator of a policy name: ``gateway``, ``standard`` or ``relay``."""
    if policy == "gateway":
        return GatewayNominator()
    if policy == "standard":
        return StandardNominator()
    if policy == "relay":
        return RelayOnly()
    raise LocalProtocolError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")


_AGENT_SET = frozenset(
    {"controlling", "rng", "local_ufrag", "local_pwd", "components", "ta", "nominator",
     "aggressive", "checking_timeout"}
)
"""The :class:`IceAgent` arguments a :class:`Connection` sets from its own."""


def _agent_options(options: object) -> dict[str, Any]:
    """``agent_options`` checked where they enter: a mapping of :class:`IceAgent` keyword
    arguments the connection does not set itself (their values are checked by the agent,
    built next)."""
    accepted = set(inspect.signature(IceAgent).parameters) - _AGENT_SET
    return option_mapping(options, "agent_options", accepted, "{'check_rc': 3}")


def _as_candidate(candidate: object) -> Candidate:
    """A candidate given as a :class:`Candidate` (checked) or as its SDP text (parsed:
    :class:`~anchor_ice.candidate.CandidateError` for a malformed line)."""
    if isinstance(candidate, str):
        return Candidate.from_sdp(candidate)
    return check_candidate(candidate)


class Connection:
    """An ICE connection for one data stream (RFC 8445), with aioice's surface.

    See the module docstring for the life cycle and the aioice mapping. Keyword arguments:

    * ``components``: number of components (RFC 8445 §4).
    * ``stun_server``: ``(host, port)``, ``"host[:port]"`` or a list of them.
    * ``turn_server`` with ``turn_username`` / ``turn_password``, and/or ``turn_servers``
      (a list of :class:`~anchor_ice.aio.gather.TurnServerConfig`, each over UDP, TCP or
      TLS, RFC 8656 §3.1; ``TurnServerConfig.from_uri`` reads RFC 7065 URIs).
      ``turn_transport`` (``"udp"`` or ``"tcp"``) and ``turn_ssl`` (TLS, with
      ``turn_ssl_context``) apply to ``turn_server``, as in aioice.
    * ``policy``: ``"standard"``, ``"gateway"`` or ``"relay"``; ``nominator`` overrides it.
    * ``host_ips``: the addresses to gather host candidates on, best first (loopback allowed
      when named); otherwise :func:`~anchor_ice.aio.gather.host_addresses` with ``interfaces``,
      ``use_ipv4`` / ``use_ipv6`` and ``include_loopback``.
    * ``port_range``: ``(min, max)`` local ports, inclusive.
    * ``ta``: this side's Ta proposal for checks, seconds (RFC 8445 §14.2; Anchor's 5 ms by
      default): signal :attr:`local_ta` (``a=ice-pacing``) and set the peer's as
      :attr:`remote_ta`; checks are paced at the higher of the two, RFC 8445's 50 ms while
      the peer's is unknown (:attr:`~anchor_ice.agent.IceAgent.effective_ta`). Given, it
      also paces gathering (otherwise 50 ms).
    * ``aggressive``: controlling only, USE-CANDIDATE on every check (RFC 5245).
    * ``checking_timeout``: seconds of checks before :meth:`connect` fails (RFC 8863).
    * ``gather_timeout``: seconds each STUN/TURN server gets; ``release_timeout``: seconds
      :meth:`close` waits for the allocations' release answers.
    * ``local_username`` / ``local_password``: credentials (drawn at random otherwise).
    * ``agent_options``: more keyword arguments for :class:`~anchor_ice.agent.IceAgent`.
    * ``pacer``: the :class:`~anchor_ice.aio.pacing.TransactionPacer` that spaces the new
      STUN requests (gathering's and the checks') of this connection and every other sharing
      it 5 ms apart (RFC 8445 §14.2); default: the one of the event loop, shared by all its connections
      (:func:`~anchor_ice.aio.pacing.shared_pacer`); :data:`~anchor_ice.aio.pacing.UNPACED`
      opts out (labs).
    """

    def __init__(
        self,
        ice_controlling: bool,
        *,
        components: int = 1,
        stun_server: Any = None,
        turn_server: Any = None,
        turn_username: str | None = None,
        turn_password: str | None = None,
        turn_servers: Iterable[TurnServerConfig | tuple[Any, ...]] = (),
        turn_transport: str = "udp",
        turn_ssl: bool = False,
        turn_ssl_context: Any = None,
        policy: Policy | str = "standard",
        nominator: Nominator | None = None,
        host_ips: Iterable[str] | None = None,
        include_loopback: bool = False,
        interfaces: Iterable[str] | None = None,
        use_ipv4: bool = True,
        use_ipv6: bool = True,
        port_range: tuple[int, int] | None = None,
        ta: float | None = None,
        aggressive: bool = False,
        checking_timeout: float | None = CHECKING_TIMEOUT,
        gather_timeout: float = DEFAULT_SERVER_TIMEOUT,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        local_username: str | None = None,
        local_password: str | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        agent_options: Mapping[str, Any] | None = None,
        pacer: TransactionPacer | None = None,
    ) -> None:
        host_ip_list = ip_address_list(host_ips, "host_ips")
        if interfaces is not None and (
            isinstance(interfaces, str | bytes)
            or not isinstance(interfaces, Iterable)
            or not all(isinstance(name, str) for name in interfaces)
        ):
            raise LocalProtocolError(
                f"interfaces must be a list of interface names or patterns (['eth*']), not"
                f" {interfaces!r}"
            )
        if ta is not None:
            seconds(ta, "ta")
        seconds(gather_timeout, "gather_timeout")
        seconds(release_timeout, "release_timeout", zero=True)
        for value, what, minimum in (
            (local_username, "local_username", 4), (local_password, "local_password", 22)
        ):
            if value is not None:
                check_ice_string(value, minimum, what)
        agent_settings = _agent_options(agent_options)
        if pacer is not None and not isinstance(pacer, TransactionPacer):
            raise LocalProtocolError(
                f"pacer must be a TransactionPacer or None, not {type(pacer).__name__}"
            )
        if not use_ipv4 and not use_ipv6:
            raise LocalProtocolError("use_ipv4 and use_ipv6 cannot both be False")
        stun_servers = server_list(stun_server, "stun_server")
        turns = turn_server_configs(turn_servers)
        if turn_transport not in ("udp", "tcp"):
            raise LocalProtocolError(
                f"turn_transport must be 'udp' or 'tcp', not {turn_transport!r}"
            )
        if turn_ssl_context is not None and not isinstance(turn_ssl_context, ssl.SSLContext):
            raise LocalProtocolError(
                "turn_ssl_context must be an ssl.SSLContext or None, not"
                f" {type(turn_ssl_context).__name__}"
            )
        if turn_ssl and turn_transport != "tcp":
            raise LocalProtocolError("turn_ssl needs turn_transport='tcp' (TLS runs over TCP)")
        transport: TransportName = "tls" if turn_ssl else "udp" if turn_transport == "udp" else "tcp"
        for address in server_list(turn_server, "turn_server"):
            if turn_username is None or turn_password is None:
                raise LocalProtocolError("turn_server needs turn_username and turn_password")
            credential(turn_username, "turn_username")
            credential(turn_password, "turn_password")
            turns.append(TurnServerConfig(address, turn_username, turn_password, transport,
                                          ssl_context=turn_ssl_context))
        if nominator is None and policy == "relay" and not turns:
            raise LocalProtocolError(
                "policy='relay' needs a TURN server (turn_server= or turn_servers=): without"
                " one there is no relayed candidate to offer"
            )
        self._nominator = nominator if nominator is not None else make_nominator(policy)
        self._agent = IceAgent(
            controlling=ice_controlling,
            rng=rng,
            local_ufrag=local_username,
            local_pwd=local_password,
            components=components,
            ta=PROPOSED_TA if ta is None else ta,
            nominator=self._nominator,
            aggressive=aggressive,
            checking_timeout=checking_timeout,
            **agent_settings,
        )
        self.components = components
        """Number of components of the stream."""
        self.stun_servers: list[Address] = stun_servers
        """STUN servers to gather server-reflexive candidates from."""
        self.turn_servers: list[TurnServerConfig] = turns
        """TURN servers to gather relayed candidates from."""
        self._host_ips = host_ip_list
        self._include_loopback = include_loopback
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._families = tuple(f for f, on in ((4, use_ipv4), (6, use_ipv6)) if on)
        self._port_range = check_port_range(port_range)
        self._gather_ta = DEFAULT_TA if ta is None else ta
        self._gather_timeout = gather_timeout
        self._release_timeout = release_timeout
        self._rng = rng

        self._remote_username: str | None = None
        self._remote_password: str | None = None
        self._gatherers: list[Gatherer] = []
        self._policy_failures: list[GatherFailure] = []
        self._endpoints: dict[Address, GatheredSocket | RelayEndpoint] = {}
        self._permitted: set[tuple[Address, str]] = set()
        self._channels: set[tuple[Address, Address]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump_: CorePump | None = None
        self._pacer = pacer  # None: the loop's shared pacer, found at the first request
        self._requests_sent: OrderedDict[bytes, None] = OrderedDict()  # transaction ids
        self._waiters: set[asyncio.Future[None]] = set()
        self._queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        self._data_handler: Callable[[list[bytes], int], None] | None = None
        self._pair_handler: Callable[[PairInfo], None] | None = None
        self._session: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._gathered = False
        self._gather_task: asyncio.Task[None] | None = None
        self._hosts_known: asyncio.Event | None = None
        self._candidate_handler: Callable[[Candidate | None], None] | None = None
        self._signalled: set[str] = set()
        self._closed = False
        self._failure: str | None = None
        self.nominated_pairs: list[PairInfo] = []
        """Every pair nominated so far (RFC 8445 §8.1.1), in order (a record for tests
        and logs: the gateway policy never puts a host pair here)."""
        self.dropped = 0
        """Datagrams ignored: STUN that is not ICE, data from a 5-tuple not validated."""
        self.send_errors = 0
        """Datagrams that could not be sent (socket closed, allocation gone)."""

    # ------------------------------------------------------------------ properties

    @property
    def agent(self) -> IceAgent:
        """The sans-I/O agent (read it; drive it only through this class)."""
        return self._agent

    @property
    def ice_controlling(self) -> bool:
        """True in the controlling role (it can change on a role conflict, RFC 8445 §7.3.1.1).
        Settable until :meth:`connect` is called (RFC 8445 §6.1.1: the signalling decides
        the role, which an offer/answer user may learn after creating the connection);
        later, :class:`~anchor_stun.errors.LocalProtocolError`."""
        return self._agent.controlling

    @ice_controlling.setter
    def ice_controlling(self, value: bool) -> None:
        self._check_open()
        self._agent.set_role(bool(value))

    @property
    def state(self) -> IceState:
        """The agent's state."""
        return self._agent.state

    @property
    def local_username(self) -> str:
        """The local ufrag to signal (RFC 8445 §5.3); new after :meth:`restart`."""
        return self._agent.local_ufrag

    @property
    def local_password(self) -> str:
        """The local password to signal (RFC 8445 §5.3); new after :meth:`restart`."""
        return self._agent.local_pwd

    @property
    def remote_username(self) -> str | None:
        """The peer's ufrag; set it (and :attr:`remote_password`) from its signalling."""
        return self._remote_username

    @remote_username.setter
    def remote_username(self, value: str | None) -> None:
        self._remote_username = value
        self._push_credentials()

    @property
    def remote_password(self) -> str | None:
        """The peer's password; set it (and :attr:`remote_username`) from its signalling."""
        return self._remote_password

    @remote_password.setter
    def remote_password(self, value: str | None) -> None:
        self._remote_password = value
        self._push_credentials()

    @property
    def local_ta(self) -> float:
        """This side's Ta proposal, seconds: signal it (``a=ice-pacing`` in milliseconds,
        RFC 8839 §5.5) with the credentials."""
        return self._agent.ta

    @property
    def local_pacing(self) -> int:
        """:attr:`local_ta` as it is signalled: whole milliseconds, at least 1
        (``a=ice-pacing``, RFC 8839 §5.5)."""
        return max(1, round(self._agent.ta * 1000))

    @property
    def remote_ta(self) -> float | None:
        """The peer's Ta proposal, seconds, or None (it proposed none: RFC 8445's default
        50 ms stands for it); set it from its signalling (RFC 8445 §14.2)."""
        return self._agent.remote_ta

    @remote_ta.setter
    def remote_ta(self, value: float | None) -> None:
        self._agent.set_remote_ta(value)
        self._pump()

    @property
    def renomination(self) -> bool:
        """True when both sides agreed on renomination (:mod:`anchor_ice.agent`,
        "Renomination"): the selected pair may later move to a better one. Set it from the
        signalling, before :meth:`connect`, only when the peer signalled it too."""
        return self._agent.renomination

    @renomination.setter
    def renomination(self, value: bool) -> None:
        self._agent.renomination = value

    def set_pair_handler(self, handler: Callable[[PairInfo], None] | None) -> None:
        """Call ``handler(pair)`` whenever a component's selected pair changes once
        connected (renomination): data goes on the new pair from then on, and what still
        arrives on the previous one is delivered too. None: no more calls."""
        self._pair_handler = handler

    @property
    def local_candidates(self) -> list[Candidate]:
        """The candidates to signal: those the policy advertises (a gateway policy hides
        host candidates), learned peer-reflexive ones excluded."""
        return self._agent.local_candidates()

    @property
    def remote_candidates(self) -> list[Candidate]:
        """Remote candidates, signalled and learned (peer-reflexive)."""
        return self._agent.remote_candidates

    @property
    def selected_pair(self) -> PairInfo | None:
        """The pair component 1's data goes on (the previous one during a restart)."""
        pair = self._agent.selected_pair
        return pair.info() if pair is not None else None

    @property
    def selected_pairs(self) -> dict[int, PairInfo]:
        """The pair each component's data goes on."""
        return {c: p.info() for c, p in self._agent.selected_pairs.items()}

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def failure_reason(self) -> str | None:
        """Why ICE failed, once it did."""
        return self._failure

    @property
    def gather_failures(self) -> list[GatherFailure]:
        """What gathering gave up on (a server that did not answer or refused, a host
        address that could not be bound), and, once gathering is complete, a policy that
        can offer none of the candidates (kind ``"policy"``: "no candidate to offer under
        the gateway policy ...", with the way out; :meth:`connect` then fails with it)."""
        return [*(f for g in self._gatherers for f in g.failures), *self._policy_failures]

    def open_sockets(self) -> int:
        """Host sockets still open (0 after :meth:`close`)."""
        return sum(g.open_sockets() for g in self._gatherers)

    def relays(self) -> list[RelayEndpoint]:
        """The TURN allocations that exist now."""
        return [r for g in self._gatherers for s in g.sockets for r in s.relays]

    # ------------------------------------------------------------------ gathering

    async def gather_candidates(self) -> None:
        """Gather host, server-reflexive and relayed candidates for every component
        (RFC 8445 §5.1.1); returns once every server answered or was given up. Raises
        OSError when no host address could be bound. Calling it again does nothing (it waits
        for the gathering :meth:`start_gathering` began, if any)."""
        await self.start_gathering()
        assert self._gather_task is not None
        await asyncio.shield(self._gather_task)

    async def start_gathering(self) -> None:
        """Start gathering in the background (trickle ICE, RFC 8838 §4): returns once the
        host sockets are bound and their candidates known, while the server-reflexive and
        relayed ones are still being gathered. Signal :attr:`local_candidates` now and each
        later one as the candidate handler (:meth:`set_candidate_handler`) hears of it;
        :meth:`connect` may run meanwhile (pairs are formed as candidates come). Raises
        OSError when no host address could be bound. Calling it again does nothing."""
        self._check_open()
        if self._gather_task is None:
            self._hosts_known = asyncio.Event()
            task = asyncio.get_running_loop().create_task(self._gather())
            self._gather_task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        assert self._hosts_known is not None
        hosts = asyncio.ensure_future(self._hosts_known.wait())
        try:
            await asyncio.wait({hosts, self._gather_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hosts.cancel()
        if self._gather_task.done() and not self._hosts_known.is_set():
            self._gather_task.result()  # raises why the host sockets could not be bound
            self._check_open()

    @property
    def gathering_complete(self) -> bool:
        """True once local gathering is complete (RFC 8838 end-of-candidates): every server
        answered or was given up."""
        return self._gathered

    def set_candidate_handler(self, handler: Callable[[Candidate | None], None] | None) -> None:
        """Call ``handler(candidate)`` for every local candidate to signal (as
        :attr:`local_candidates`: the policy's advertised ones) as soon as gathering finds
        it (each once; the host candidates too when the handler is set before
        :meth:`start_gathering`), then ``handler(None)`` once gathering is complete
        (end-of-candidates, RFC 8838 §8.2). Candidates found before the handler was set are
        in :attr:`local_candidates` and are not repeated. None: no more calls."""
        self._candidate_handler = handler

    async def _gather(self) -> None:
        """The gathering task of :meth:`start_gathering`."""
        if self._host_ips is not None:
            ips = self._host_ips
        else:
            ips = host_addresses(
                interfaces=self._interfaces,
                families=self._families,
                include_loopback=self._include_loopback,
            )
        self._gatherers = [
            Gatherer(
                ips,
                stun_servers=self.stun_servers,
                turn_servers=self.turn_servers,
                component=component,
                port_range=self._port_range,
                timeout=self._gather_timeout,
                release_timeout=self._release_timeout,
                ta=self._gather_ta,
                software=SOFTWARE,
                rng=self._rng,
                pacer=self._process_pacer(),
            )
            for component in range(1, self.components + 1)
        ]
        try:
            await asyncio.gather(*(g.start() for g in self._gatherers))  # the host sockets
            for gatherer in self._gatherers:
                for candidate in gatherer.candidates:
                    self._take(gatherer, candidate)
            self._announce()
            assert self._hosts_known is not None
            self._hosts_known.set()
            await asyncio.gather(*(self._gather_one(g) for g in self._gatherers))
        except BaseException:
            await asyncio.gather(*(g.close() for g in self._gatherers))
            raise
        self._gathered = True
        if not self._closed:
            for component in range(1, self.components + 1):
                nothing = self._agent.nothing_to_offer(component)
                if nothing is not None:
                    if self.components > 1:
                        nothing = f"component {component}: {nothing}"
                    self._policy_failures.append(GatherFailure("policy", None, None, nothing))
            self._agent.end_of_local_candidates()
            self._pump()
            if self._candidate_handler is not None:
                call_user("candidate handler", self._candidate_handler, None)

    async def _gather_one(self, gatherer: Gatherer) -> None:
        async for item in gatherer.gather():
            if self._closed:
                return
            if not isinstance(item, Candidate):
                continue
            self._take(gatherer, item)
            self._pump()
            self._announce()

    def _take(self, gatherer: Gatherer, item: Candidate) -> None:
        """A gathered candidate into the agent, its socket or relay to this connection."""
        base = gatherer.base_of(item)
        self._agent.add_local_candidate(item, base)
        if base not in self._endpoints:
            endpoint = gatherer.endpoint(base)
            self._endpoints[base] = endpoint
            endpoint.set_batch_handler(self._handler(base))
            if isinstance(endpoint, GatheredSocket):
                endpoint.set_unreachable_handler(self._unreachable_handler(base))
            if isinstance(endpoint, RelayEndpoint):
                for remote in self._agent.remote_candidates:
                    self._permit(endpoint, remote.ip)

    def _announce(self) -> None:
        """Advertised local candidates not signalled yet to the candidate handler."""
        for candidate in self._agent.local_candidates():
            text = candidate.to_sdp()
            if text in self._signalled:
                continue
            self._signalled.add(text)
            if self._candidate_handler is not None:
                call_user("candidate handler", self._candidate_handler, candidate)

    # ------------------------------------------------------------------ signalling

    def _push_credentials(self) -> None:
        ufrag, pwd = self._remote_username, self._remote_password
        if ufrag is None or pwd is None or self._closed:
            return
        if self._agent.remote_ufrag == ufrag:
            return
        self._agent.set_remote_credentials(ufrag, pwd)
        self._pump()

    async def add_remote_candidate(self, candidate: Candidate | str | None) -> None:
        """Add a candidate the peer signalled (a :class:`Candidate` or its ``candidate:``
        SDP text); None means end-of-candidates (RFC 8838). Non-UDP candidates and those
        whose address is a name (mDNS ``.local``, another FQDN: Anchor resolves no candidate
        name, and such a candidate never pairs, RFC 8445 §6.1.2.2) are ignored."""
        self._check_open()
        if candidate is None:
            self._agent.add_remote_candidate(None)
            self._pump()
            return
        cand = _as_candidate(candidate)
        if cand.transport.lower() != "udp" or cand.family == 0:
            return
        self._agent.add_remote_candidate(cand)
        for endpoint in self._endpoints.values():
            if isinstance(endpoint, RelayEndpoint):
                self._permit(endpoint, cand.ip)
        self._pump()

    def _permit(self, relay: RelayEndpoint, ip: str) -> None:
        """Ask the relay for a permission for a remote IP of its family (RFC 8656 §9)."""
        try:
            relayed = relay.relayed
        except LocalProtocolError:
            return
        if (":" in ip) != (":" in relayed[0]) or (relayed, ip) in self._permitted:
            return
        self._permitted.add((relayed, ip))

        self._in_background(relay.create_permission(ip))

    def _bind_channel(self, pair: PairInfo) -> None:
        """RFC 8656 §12: a selected pair whose base is a relayed address carries its data as
        ChannelData (4 bytes of header) rather than as Send and Data indications (36 bytes,
        and a STUN message built and parsed per datagram), as pion and libjuice do: bind a
        channel to the remote candidate, in the background. Until it is bound, and should
        binding fail, indications carry the data."""
        relay = self._endpoints.get(pair.base)
        peer = pair.remote.address
        if not isinstance(relay, RelayEndpoint) or (pair.base, peer) in self._channels:
            return
        self._channels.add((pair.base, peer))

        self._in_background(relay.bind_channel(peer))

    def _in_background(self, request: Awaitable[object]) -> None:
        """Run a TURN request for the connection without waiting for it: a failure is no
        error of the connection (data then goes the slower way, or not at all); the task is
        cancelled on close."""

        async def run() -> None:
            with contextlib.suppress(AnchorError, OSError):
                await request

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> None:
        """Run connectivity checks until every component has a selected pair (RFC 8445
        §8.1); after :meth:`restart`, until the new checks selected new pairs. Needs the
        remote credentials. Raises :class:`IceFailedError` when ICE fails."""
        self._check_open()
        if self._remote_username is None or self._remote_password is None:
            raise LocalProtocolError("set remote_username and remote_password before connect()")
        if self._failure is not None:
            raise IceFailedError(self._failure)
        session = self._session_future()
        if self._agent.state is IceState.NEW:
            self._agent.start(self._loop_time())
        self._pump()
        if not session.done():
            # a waiter of its own, woken with the session (cancelling this call leaves the
            # session alone; one loop iteration fewer than asyncio.shield)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)
        session.result()  # raises when ICE failed or the connection was closed

    async def restart(self) -> None:
        """ICE restart (RFC 8445 §9): new local credentials (read :attr:`local_username`
        and :attr:`local_password`), the remote credentials and candidates forgotten. Signal
        the new credentials and :attr:`local_candidates`, set the peer's new ones, then call
        :meth:`connect`. Data keeps flowing on the current pair meanwhile."""
        self._check_open()
        self._agent.restart(self._loop_time())
        self._remote_username = None
        self._remote_password = None
        self._failure = None
        if self._session is not None and self._session.done():
            self._session = None
        self._pump()

    def _session_future(self) -> asyncio.Future[None]:
        if self._session is None:
            self._session = asyncio.get_running_loop().create_future()
            state = self._agent.state
            if state in (IceState.CONNECTED, IceState.COMPLETED):
                self._session.set_result(None)
        return self._session

    # ------------------------------------------------------------------ data

    async def send(self, data: bytes) -> None:
        """Send a datagram on component 1."""
        await self.sendto(data, 1)

    async def sendto(self, data: bytes, component: int) -> None:
        """Send a datagram on ``component``'s selected pair. Raises
        :class:`IceNotConnectedError` when there is none (or consent was lost)."""
        self.send_datagrams((data,), component)

    def send_datagrams(self, datagrams: Sequence[bytes], component: int = 1) -> None:
        """Send datagrams on ``component``'s selected pair, in order, at once: the pair is
        looked up once (:meth:`~anchor_ice.agent.IceAgent.data_route`), and from a host
        socket a run of equal-size datagrams leaves with one system call where the OS
        offers segmentation (:mod:`anchor_stun.aio.udp`). Raises
        :class:`IceNotConnectedError` when there is no pair (or consent was lost); a datagram
        the socket refuses is counted in :attr:`send_errors`. :meth:`sendto` is this with
        one datagram (a coroutine, as aioice's is)."""
        if self._closed:
            raise IceNotConnectedError("the connection is closed")
        route = self._agent.data_route(component, self._loop_time())
        if route is None:
            raise IceNotConnectedError(f"no selected pair on component {component}")
        addr, local = route
        endpoint = self._endpoints.get(local)
        if endpoint is None:
            if len(self._endpoints) != 1:
                self.send_errors += len(datagrams)
                return
            endpoint = next(iter(self._endpoints.values()))
        try:
            endpoint.send_many(datagrams, addr)
        except (LocalProtocolError, OSError):
            self.send_errors += len(datagrams)

    def set_data_handler(self, handler: Callable[[bytes, int], None] | None) -> None:
        """Take the application's datagrams with ``handler(data, component)``, called as each
        one arrives (no queue, no task switch), instead of through :meth:`recvfrom`; the ones
        already waiting are handed over first, in order. :meth:`recvfrom` then only reports
        the end (closed or failed). None: back to :meth:`recvfrom`. An exception from the
        handler goes to the loop's exception handler; the datagram is lost."""
        if handler is None:
            self.set_data_batch_handler(None)
            return

        def each(datagrams: list[bytes], component: int) -> None:
            for data in datagrams:
                call_user("the data handler of an ICE connection", handler, data, component)

        self.set_data_batch_handler(each)

    def set_data_batch_handler(self, handler: Callable[[list[bytes], int], None] | None) -> None:
        """:meth:`set_data_handler` with ``handler(datagrams, component)``: the datagrams of
        one component that arrived together (one wake-up of a socket), in order, in one call.
        An exception from the handler goes to the loop's exception handler; those datagrams
        are lost."""
        self._data_handler = handler
        if handler is None:
            return
        ended = False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                ended = True
            elif self._data_handler is handler:
                self._deliver(handler, [item[0]], item[1])
        if ended:
            self._queue.put_nowait(None)

    @staticmethod
    def _deliver(
        handler: Callable[[list[bytes], int], None], datagrams: list[bytes], component: int
    ) -> None:
        call_user("the data handler of an ICE connection", handler, datagrams, component)

    async def recv(self) -> bytes:
        """The next datagram received on any component."""
        data, _ = await self.recvfrom()
        return data

    async def recvfrom(self) -> tuple[bytes, int]:
        """The next datagram and the component it came on. Raises
        :class:`IceNotConnectedError` once closed (or :class:`IceFailedError` once failed)
        and every received datagram was read."""
        if self._queue.empty() and (self._closed or self._failure is not None):
            self._raise_done()
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake the other readers too
            self._raise_done()
        assert item is not None
        return item

    def _raise_done(self) -> None:
        if self._failure is not None:
            raise IceFailedError(self._failure)
        raise IceNotConnectedError("the connection is closed")

    async def wait_ended(self) -> str | None:
        """Wait until the connection ends: ICE failed, say consent was lost (RFC 7675 §5.1),
        or :meth:`close` was called. Returns why it failed, or None when it was closed
        without failing. Any number of waiters; cancelling one leaves the others alone."""
        if not self._closed and self._failure is None:
            if self._ended is None or self._ended.done():
                self._ended = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._ended)
        return self._failure

    def _end(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Stop ICE, release every TURN allocation (Refresh with LIFETIME 0, RFC 8656 §8.1)
        and close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._agent.close(self._loop_time())
        if self._pump_ is not None:
            self._pump_.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(g.close() for g in self._gatherers))
        self._endpoints.clear()
        if self._session is not None and not self._session.done():
            self._session.set_exception(IceNotConnectedError("the connection was closed"))
            self._session.exception()  # mark it retrieved: no "never retrieved" warning
        self._wake()
        self._end()
        self._queue.put_nowait(None)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise IceNotConnectedError("the connection is closed")

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def _pump(self) -> None:
        if self._closed:
            return
        if self._pump_ is None:
            self._pump_ = CorePump(self._agent, self._send_transmit, self._event)
        self._pump_.pump()

    def _wake(self) -> None:
        """Wake every :meth:`connect` waiting for the session to be decided."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _handler(self, local: Address) -> Callable[[list[tuple[bytes, Address]]], None]:
        def handler(batch: list[tuple[bytes, Address]]) -> None:
            self._received(batch, local)

        return handler

    def _unreachable_handler(self, local: Address) -> UnreachableHandler:
        def handler(addr: Address, error: OSError) -> None:
            if self._closed:
                return
            reason = error.strerror or os.strerror(error.errno or 0)
            # RFC 8445 §7.2.5.2.2: a hard ICMP error (port unreachable, prohibited) fails
            # the checks to addr now; a soft one (no route) is only remembered
            hard = error.errno == errno.ECONNREFUSED
            if self._agent.destination_unreachable(
                addr, local, self._loop_time(), reason=reason, hard=hard
            ):
                self._pump()

        return handler

    def _send_transmit(self, transmit: Transmit) -> None:
        """Send the agent's datagram; the first transmission of a new STUN request waits for
        its slot of the pacer (RFC 8445 §14.2, :mod:`anchor_ice.aio.pacing`)."""
        data = transmit.data
        if (
            len(data) >= _STUN_HEADER
            and data[0] < 4
            and data[0] & 0x01 == 0
            and data[1] & 0x10 == 0  # class bits C1 C0 = 00: a request (RFC 8489 §5)
            and data[4:8] == _MAGIC_COOKIE
        ):
            tid = data[8:20]
            if tid not in self._requests_sent:
                self._requests_sent[tid] = None
                if len(self._requests_sent) > _REQUESTS_REMEMBERED:
                    self._requests_sent.popitem(last=False)
                self._process_pacer().submit(lambda: self._send_paced(transmit))
                return
        self._send_now(transmit)

    def _process_pacer(self) -> TransactionPacer:
        """The pacer of this connection's new STUN transactions, gathering's and the
        agent's: ``pacer=`` or the loop's shared one (RFC 8445 §14.2)."""
        pacer = self._pacer
        if pacer is None:
            pacer = self._pacer = shared_pacer()
        return pacer

    def _send_paced(self, transmit: Transmit) -> None:
        if not self._closed:
            self._send_now(transmit)

    def _send_now(self, transmit: Transmit) -> None:
        local = transmit.local
        endpoint = self._endpoints.get(local) if local is not None else None
        if endpoint is None:
            if len(self._endpoints) == 1:
                endpoint = next(iter(self._endpoints.values()))
            else:
                self.send_errors += 1
                return
        try:
            endpoint.send(transmit.data, transmit.addr)
        except (LocalProtocolError, OSError):
            self.send_errors += 1

    def _received(self, batch: list[tuple[bytes, Address]], local: Address) -> None:
        """The datagrams that arrived together on the socket (or relay) ``local``: STUN to
        the agent one by one, data to the application, in runs of one component."""
        if self._closed:
            return
        run: list[bytes] = []  # data of run_component, not delivered yet
        run_component = 0
        source: Address | None = None  # the address the last data came from, and its component
        component: int | None = None
        for data, addr in batch:
            if data and data[0] < 4:  # RFC 7983 §7: 0-3 is STUN
                if run:
                    self._data(run, run_component)
                    run = []
                if self._agent.receive_datagram(data, addr, local, self._loop_time()):
                    self._pump()
                else:
                    self.dropped += 1
                if self._closed:
                    return
                source = None  # the pairs may have changed
                continue
            if addr != source:
                source, component = addr, self._component_of(local, addr)
            if component is None:
                self.dropped += 1
                continue
            if component != run_component and run:
                self._data(run, run_component)
                run = []
            run_component = component
            run.append(data)
        if run:
            self._data(run, run_component)

    def _data(self, datagrams: list[bytes], component: int) -> None:
        handler = self._data_handler
        if handler is not None:
            self._deliver(handler, datagrams, component)
            return
        for data in datagrams:
            if self._queue.qsize() >= MAX_QUEUED:
                self.dropped += 1
            else:
                self._queue.put_nowait((data, component))

    def _component_of(self, local: Address, addr: Address) -> int | None:
        """The component whose selected pair is the 5-tuple (local, addr), else whose valid
        or checklist pair is (RFC 8445 §12.2: data may come on any candidate pair, say from
        a peer nominating aggressively before our own check on the pair succeeded)."""
        for component, pair in self._agent.selected_pairs.items():
            if pair.base == local and pair.remote.address == addr:
                return component
        for pairs in (self._agent.valid_pairs, self._agent.pairs):
            for pair in pairs:
                if pair.base == local and pair.remote.address == addr:
                    return pair.component
        return None

    def _event(self, event: StunEvent) -> None:
        if isinstance(event, PairNominated):
            self.nominated_pairs.append(event.pair)
            if event.selected:
                self._bind_channel(event.pair)
                if self._pair_handler is not None:
                    call_user("the pair handler of an ICE connection", self._pair_handler,
                              event.pair)  # fmt: skip
        elif isinstance(event, IceConnected | RestartCompleted):
            if self._session is not None and not self._session.done():
                self._session.set_result(None)
            self._wake()
        elif isinstance(event, IceFailed):
            reason = event.reason
            if self._policy_failures:  # nothing to offer: say what gathering gave up on first
                reason = "; ".join([*(str(f) for g in self._gatherers for f in g.failures), reason])
            self._failure = reason
            if self._session is not None and not self._session.done():
                self._session.set_exception(IceFailedError(reason))
                self._session.exception()  # mark it retrieved: connect() may not be waiting
            self._wake()
            self._end()
            self._queue.put_nowait(None)
        elif isinstance(event, ConsentLost):
            pass  # IceFailed follows

    def __repr__(self) -> str:
        role = "controlling" if self.ice_controlling else "controlled"
        return f"<Connection {role} {self.state.value}>"
