"""Sans-I/O STUN server core: the Binding usage (RFC 8489) and NAT behavior discovery
(RFC 5780).

Theory of operation
-------------------
:class:`StunServer` is fed datagrams with ``receive_datagram(data, addr, local, now)`` and
hands back what to send with ``datagrams_to_send(now)``; each :class:`Transmit` names the
local address it must leave from. It never touches a socket or a clock, never raises on
bad network input (it drops and counts in :attr:`StunServer.stats`) and keeps no state per
client, so there are no timers.

Addresses. With ``primary`` only, the server is a plain RFC 8489 Binding server on one
address. With ``other = (alt_ip, alt_port)`` it serves RFC 5780 too and owns four addresses
(:meth:`StunServer.local_addresses`): A1:P1, A1:P2, A2:P1, A2:P2. The adapter listens on all
four, passes the one a datagram arrived on as ``local`` (Da:Dp) and sends each Transmit from
``Transmit.local``. A ``local`` outside those four (say a TLS listener on 5349) is served as
by a single-address server: no RFC 5780 attributes, 420 to CHANGE-REQUEST.

Streams. A message read from a TCP or TLS connection is passed to ``handle(...,
stream=True)``: its response can only go back on that connection, so it is served as by a
single-address server and RESPONSE-PORT is refused with 420 as well.

Processing a datagram (RFC 8489 §6.3, in this order):

1. Decode (§5). Not STUN, or bytes whose header cannot be read: drop. A header that is
   readable but the rest malformed (the codec's ``DecodeError`` carries the transaction id)
   and whose class is request: 400 Bad Request. Anything else malformed: drop.
2. FINGERPRINT (§14.7): present but not verifying, or not last: silently discard.
3. Class (§6.3.2-§6.3.4): responses are dropped (a server has no client transactions);
   a Binding indication is a keepalive and is absorbed silently; any other indication,
   or one with unknown comprehension-required attributes, is dropped.
4. Method: a request for a method other than Binding gets 400 Bad Request.
5. Authentication (§9) would come here; this core has none (see "Extension point").
6. Unknown comprehension-required attributes (§6.3.1): 420 with UNKNOWN-ATTRIBUTES.
   CHANGE-REQUEST counts as unknown when there is no alternate address (RFC 5780 §6),
   RESPONSE-PORT on a stream (RFC 5780 §5: support is optional).
7. RFC 5780 §6.1: PADDING together with RESPONSE-PORT is 400; RESPONSE-PORT 0 is 400
   (no datagram can be sent to port 0).
8. Success response (§6.3.1.1), attributes in this order: XOR-MAPPED-ADDRESS (the source
   address), then with an alternate address MAPPED-ADDRESS, RESPONSE-ORIGIN and
   OTHER-ADDRESS (RFC 5780 §6.1), SOFTWARE, PADDING (when asked), FINGERPRINT last. It is
   sent from the local address Table 1 of RFC 5780 §6.1 picks for the CHANGE-REQUEST flags,
   to the source address, or to (source ip, RESPONSE-PORT) when that attribute is present.

Error responses carry ERROR-CODE, UNKNOWN-ATTRIBUTES (420 only), SOFTWARE and FINGERPRINT,
leave from the address the request arrived on and go back to its source: neither
CHANGE-REQUEST nor RESPONSE-PORT is honoured for a rejected request, and the RFC 5780
address attributes are only added to success responses. FINGERPRINT is added to every
response when ``fingerprint=True``, and to the responses of requests that carried one
otherwise (RFC 8489 §7).

Speed. There is one path: every message is read by :meth:`Message.decode` and the rules
above applied to what it says. A success response is then written from bytes the server
keeps: per local address the attributes after the reflexive ones (RESPONSE-ORIGIN,
OTHER-ADDRESS and SOFTWARE, for each address RFC 5780 §6.1 may answer from), and a bounded
table of the IPv4 (XOR-)MAPPED-ADDRESS bytes of each source (they do not depend on the
transaction id, RFC 8489 §14.2). Error responses go through :meth:`Message.encode`.

Decisions where the RFCs leave a choice
---------------------------------------
- MAPPED-ADDRESS is sent only in RFC 5780 mode, where §6.1 requires it. A plain RFC 8489
  server sends XOR-MAPPED-ADDRESS only: the clients that need MAPPED-ADDRESS are RFC 3489
  ones, and those lack the magic cookie, which the codec rejects.
- An IPv4-mapped IPv6 source (``::ffff:a.b.c.d``, seen on dual-stack sockets) is reported as
  the IPv4 address it maps.
- RESPONSE-PORT and PADDING are honoured with or without an alternate address (RFC 5780 §5
  allows servers with one address to support them), over UDP only, and RESPONSE-PORT only
  to the source IP (§7.5). An answer is charged to the source's prefix whatever port it
  goes to: with a :class:`~anchor_stun.budget.AnswerBudget` (``anchor serve`` always has
  one) a source over its budget gets no answer at all, on no port, and no answer is more
  than the budget's factor (3) times what the prefix sent beyond a small allowance.
- PADDING in the response is ``mtu`` bytes rounded up to a multiple of 4 (RFC 5780 §7.6),
  but never longer than the request's own PADDING (a client padding to its MTU, as §5 says
  it SHOULD, gets the full length back; a small spoofed request cannot buy a large
  reflected response) nor so long that the IP datagram would pass 64K.
- CHANGE-REQUEST with neither flag set is a CHANGE-REQUEST: 420 without an alternate
  address (RFC 5780 §6 says "any Request with a CHANGE-REQUEST attribute").

Extension point
---------------
Short-term or long-term authentication (RFC 8489 §9) belongs between steps 4 and 6 of
:meth:`StunServer._process`: an ``authenticate`` callable taking the decoded request and
the source address, returning an error response (401, 438 ...) or the key with which to
sign the success response (which :meth:`StunServer._success` would then pass to
:func:`~anchor_stun.message.seal`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from anchor_stun.address import DEFAULT_PORT, server_address
from anchor_stun.attributes import (
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    Attribute,
    AttrType,
    ChangeRequest,
    ErrorCode,
    Family,
    OtherAddress,
    Padding,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    pack_ip,
    unpack_ip,
)
from anchor_stun.budget import AnswerBudget
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address, Transmit
from anchor_stun.message import (
    HEADER_SIZE,
    Message,
    MessageClass,
    Method,
    decode_type,
    encode_type,
    seal,
)

__all__ = ["DEFAULT_MTU", "ServerStats", "StunServer"]

DEFAULT_MTU = 1500
"""PADDING length used for responses, before the anti-amplification cap (RFC 5780 §7.6)."""

_MAX_PADDED_MESSAGE = 0xFFFF - 40 - 8  # RFC 5780 §7.6: the IP datagram stays under 64K
_ADDR_CACHE_SIZE = 4096  # IPv4 sources whose (XOR-)MAPPED-ADDRESS bytes are kept

_BINDING_SUCCESS = encode_type(Method.BINDING, MessageClass.SUCCESS)
_TL = struct.Struct("!HH")
_ADDR4_TLV = struct.Struct("!HHxBH4s")
_ADDR6_TLV = struct.Struct("!HHxBH16s")
_COOKIE_PORT = MAGIC_COOKIE >> 16
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

_PADDING = int(AttrType.PADDING)
_XMA = int(AttrType.XOR_MAPPED_ADDRESS)
_MA = int(AttrType.MAPPED_ADDRESS)
_CHANGE_REQUEST = int(AttrType.CHANGE_REQUEST)
_RESPONSE_PORT = int(AttrType.RESPONSE_PORT)
_IPV4 = int(Family.IPV4)
_IPV6 = int(Family.IPV6)


@dataclass(slots=True)
class ServerStats:
    """Counters of what :class:`StunServer` did with the datagrams it was given.

    ``received`` counts every datagram; each one then lands in exactly one other counter.
    """

    received: int = 0
    """Datagrams handed to the server."""
    answered: int = 0
    """Binding requests answered with a success response (RFC 8489 §6.3.1.1)."""
    errors_sent: int = 0
    """Requests answered with an error response: 400, 420 (RFC 8489 §6.3.1)."""
    indications: int = 0
    """Binding indications absorbed without an answer (keepalives, RFC 8489 §6.3.2)."""
    dropped_malformed: int = 0
    """Datagrams that are not STUN, or malformed STUN that cannot be answered (§6.3)."""
    dropped_fingerprint: int = 0
    """Messages whose FINGERPRINT did not verify or was not last (RFC 8489 §14.7)."""
    rate_limited: int = 0
    """Answers not sent over UDP: the source's prefix was over its :class:`AnswerBudget`
    (counted once the request was processed, besides ``answered`` or ``errors_sent``)."""
    dropped_ignored: int = 0
    """Well-formed messages a server does not act on: responses, indications other than
    Binding, indications with unknown comprehension-required attributes (§6.3.2-§6.3.4)."""


def _reflexive(ip: str) -> tuple[str, int, bytes]:
    """(text, family, packed) of a source IP as reported to the client; an IPv4-mapped IPv6
    address is reported as IPv4. Raises LocalProtocolError when ``ip`` is not an IP."""
    family, packed = pack_ip(ip)
    if family == Family.IPV6 and packed[:12] == _V4_MAPPED_PREFIX:
        packed = packed[12:]
        return unpack_ip(Family.IPV4, packed), _IPV4, packed
    return ip, int(family), packed


def _xor_bytes(data: bytes, key: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def _check_address(what: str, address: object) -> tuple[Address, int]:
    """A listener's address: ``(ip, port)`` or ``"ip:port"`` (port 0: any free port), an IP
    literal (a core resolves nothing); its family."""
    checked = server_address(address, what, DEFAULT_PORT, ip_only=True, zero=True)
    family, _ = pack_ip(checked[0])
    return checked, int(family)


class StunServer:
    """Sans-I/O STUN Binding server (RFC 8489 §6.3) with NAT behavior discovery
    (RFC 5780 §6) when an alternate address is configured.

    ``primary`` is the (ip, port) of the main listener (or the text ``"ip:port"``,
    ``"[v6]:port"``; an IP literal, port 0 for any free port). ``other`` = (alt_ip, alt_port)
    (the same forms) enables RFC 5780: the server then owns the four addresses of :meth:`local_addresses`,
    which must be specific addresses of one family with two different IPs and two different
    ports (RFC 5780 §6). ``software`` is sent in SOFTWARE (RFC 8489 §14.14), ``None`` for
    none. ``fingerprint`` adds FINGERPRINT to every response (RFC 8489 §14.7); responses to
    requests carrying FINGERPRINT get one regardless. ``mtu`` is the PADDING length of
    responses to requests with PADDING (RFC 5780 §7.6). ``budget`` bounds what a source
    prefix is answered over UDP (:mod:`anchor_stun.budget`). Raises :class:`LocalProtocolError`
    on a bad configuration.
    """

    def __init__(
        self,
        *,
        primary: Address | str,
        other: Address | str | None = None,
        software: str | None = "anchor",
        fingerprint: bool = True,
        mtu: int = DEFAULT_MTU,
        budget: AnswerBudget | None = None,
    ) -> None:
        (ip, port), family = _check_address("primary", primary)
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 0 <= mtu <= 0xFFFF:
            raise LocalProtocolError(f"mtu must be a number of bytes 0-65535, not {mtu!r}")
        if software is not None and not isinstance(software, str):
            raise LocalProtocolError(
                f"software must be a string (the SOFTWARE attribute) or None, not {software!r}"
            )
        if budget is not None and not isinstance(budget, AnswerBudget):
            raise LocalProtocolError(
                f"budget must be an AnswerBudget or None, not {type(budget).__name__}"
            )
        software_attrs: list[Attribute] = []
        software_tlv = b""
        if software is not None:
            sw = Software(software)
            software_attrs = [sw]
            try:
                software_tlv = _tlv(sw)
            except UnicodeError as exc:
                raise LocalProtocolError(f"software is not valid text: {exc}") from None
            except LocalProtocolError as exc:
                raise LocalProtocolError(f"software: {exc}") from None

        self.primary: Address = (ip, port)
        """The (ip, port) of the main listener."""
        self.other: Address | None = None
        """(alt_ip, alt_port) when RFC 5780 is served, else None."""
        self.software = software
        """Value of the SOFTWARE attribute of responses, or None (RFC 8489 §14.14)."""
        self.fingerprint = fingerprint
        """Whether every response carries FINGERPRINT (RFC 8489 §14.7)."""
        self.mtu = mtu
        """PADDING length of padded responses, before the cap (RFC 5780 §7.6)."""
        self.stats = ServerStats()
        """Counters of received, answered and dropped datagrams."""
        self.budget = budget
        """The per-prefix budget of answers over UDP (:mod:`anchor_stun.budget`), or None
        for none. A TURN core installs its own here."""

        self._software_attrs = software_attrs
        self._software_tlv = software_tlv
        self._padding_length = (mtu + 3) & ~3
        self._queue: list[Transmit] = []
        self._v4_cache: dict[Address, tuple[bytes, bytes]] = {}
        # RFC 5780 mode: for each owned address Da:Dp, the address a response leaves from
        # for each (change_ip, change_port), OTHER-ADDRESS (Ca:Cp) and the precomputed
        # RESPONSE-ORIGIN + OTHER-ADDRESS + SOFTWARE bytes of an unchanged response.
        self._locals: dict[Address, _Local] = {}
        self._addresses: list[Address] = [self.primary]

        if other is not None:
            (alt_ip, alt_port), alt_family = _check_address("other", other)
            if alt_family != family:
                raise LocalProtocolError("primary and other must be of the same family")
            if ipaddress.ip_address(ip) == ipaddress.ip_address(alt_ip):
                raise LocalProtocolError("RFC 5780 needs two different IP addresses")
            if (
                ipaddress.ip_address(ip).is_unspecified
                or ipaddress.ip_address(alt_ip).is_unspecified
            ):
                raise LocalProtocolError("RFC 5780 needs specific addresses, not a wildcard")
            if port == alt_port or port == 0 or alt_port == 0:
                raise LocalProtocolError("RFC 5780 needs two different, non-zero ports")
            self.other = (alt_ip, alt_port)
            ips, ports = (ip, alt_ip), (port, alt_port)
            self._addresses = [(a, p) for a in ips for p in ports]
            for i in (0, 1):
                for j in (0, 1):
                    da, ca, dp, cp = ips[i], ips[1 - i], ports[j], ports[1 - j]
                    here = (da, dp)
                    change = {
                        (False, False): here,
                        (True, False): (ca, dp),
                        (False, True): (da, cp),
                        (True, True): (ca, cp),
                    }
                    other_tlv = _tlv(OtherAddress(ca, cp))
                    tails = {
                        source: b"".join((_tlv(ResponseOrigin(*source)), other_tlv, software_tlv))
                        for source in change.values()
                    }
                    self._locals[here] = _Local(here, OtherAddress(ca, cp), change, tails)

    # ------------------------------------------------------------------ driver surface

    def local_addresses(self) -> list[Address]:
        """The addresses the adapter must listen on: ``primary`` alone, or with RFC 5780
        (RFC 5780 §6) A1:P1, A1:P2, A2:P1, A2:P2 where ``primary`` = A1:P1 and
        ``other`` = A2:P2."""
        return list(self._addresses)

    def receive_datagram(self, data: bytes, addr: Address, local: Address, now: float) -> None:
        """Feed one datagram from ``addr`` that arrived on ``local`` (RFC 8489 §6.3).

        Never raises on bad network input: what cannot be answered is dropped and counted
        in :attr:`stats`. A ``local`` that is not one of :meth:`local_addresses` (another
        listener of the adapter) is served as a plain RFC 8489 server would serve it.
        """
        transmit = self.handle(data, addr, local, now)
        if transmit is not None:
            self._queue.append(transmit)

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        """The responses produced since the last call, in order; each one must be sent to
        ``Transmit.addr`` from ``Transmit.local`` (RFC 8489 §6.3.1.2, RFC 5780 §6.1)."""
        queue, self._queue = self._queue, []
        return queue

    # ------------------------------------------------------------------ processing

    def handle(
        self, data: bytes, addr: Address, local: Address, now: float, *, stream: bool = False
    ) -> Transmit | None:
        """Process one message and return the response to send, or None (RFC 8489 §6.3).

        The hot path behind :meth:`receive_datagram`, usable directly by a driver that
        sends at once. Same contract: never raises on bad network input.

        ``stream=True`` says the message came over a TCP or TLS connection (RFC 8489 §6.2.2),
        where the response can only go back on that connection: the request is then served
        as by a single-address RFC 8489 server, and CHANGE-REQUEST and RESPONSE-PORT, which
        cannot be honoured there, get 420 (RFC 5780 §5 tells clients to expect it).

        Over UDP, with a :attr:`budget`, an answer the source's prefix cannot afford is not
        sent (counted in ``stats.rate_limited``), wherever RESPONSE-PORT would have sent it.
        """
        out = self._handle(data, addr, local, stream)
        budget = self.budget
        if out is None or budget is None or stream:
            return out
        if budget.charge(addr[0], len(data), len(out.data), now):
            return out
        self.stats.rate_limited += 1
        return None

    def _handle(self, data: bytes, addr: Address, local: Address, stream: bool) -> Transmit | None:
        """:meth:`handle` before the budget: decode, then :meth:`_process`."""
        stats = self.stats
        stats.received += 1
        here = None if stream else self._locals.get(local)
        try:
            msg = Message.decode(data)
        except DecodeError as exc:
            # RFC 8489 §6.3.1.1: a request we can name (readable header) gets 400.
            tid = exc.transaction_id
            if tid is None or len(data) < HEADER_SIZE:
                stats.dropped_malformed += 1
                return None
            method, klass = decode_type(((data[0] << 8) | data[1]) & 0x3FFF)
            if klass != MessageClass.REQUEST:
                stats.dropped_malformed += 1
                return None
            request = Message(method, klass, bytes(tid))
            return self._error(request, ErrorCode.BAD_REQUEST, addr, local, self.fingerprint)
        return self._process(msg, addr, local, here, stream)

    def _address_tlvs(self, addr: Address, tid: bytes) -> tuple[bytes, bytes]:
        """The XOR-MAPPED-ADDRESS and MAPPED-ADDRESS TLVs of ``addr`` (an IPv4-mapped IPv6
        source as IPv4); IPv4 ones are remembered, since they do not depend on the
        transaction id (RFC 8489 §14.2)."""
        port = addr[1]
        _, family, packed = _reflexive(addr[0])
        if family == _IPV4:
            tlvs = (
                _ADDR4_TLV.pack(
                    _XMA, 8, _IPV4, port ^ _COOKIE_PORT, _xor_bytes(packed, MAGIC_COOKIE_BYTES)
                ),
                _ADDR4_TLV.pack(_MA, 8, _IPV4, port, packed),
            )
            cache = self._v4_cache
            if len(cache) >= _ADDR_CACHE_SIZE:
                cache.clear()
            cache[addr] = tlvs
            return tlvs
        return (
            _ADDR6_TLV.pack(
                _XMA, 20, _IPV6, port ^ _COOKIE_PORT, _xor_bytes(packed, MAGIC_COOKIE_BYTES + tid)
            ),
            _ADDR6_TLV.pack(_MA, 20, _IPV6, port, packed),
        )

    def _process(
        self, msg: Message, addr: Address, local: Address, here: _Local | None, stream: bool
    ) -> Transmit | None:
        """Steps 2-8 of the module docstring on a decoded message; ``here`` is the RFC 5780
        record of ``local`` (None without an alternate address, for an address that is not
        one of the four, and on a stream)."""
        stats = self.stats
        has_fp = msg.fingerprint is not None
        if has_fp and not msg.verify_fingerprint():
            stats.dropped_fingerprint += 1
            return None
        klass = msg.msg_class
        if klass != MessageClass.REQUEST:
            if (
                klass == MessageClass.INDICATION
                and msg.method == Method.BINDING
                and not msg.unknown_required()
            ):
                stats.indications += 1  # a keepalive (RFC 8489 §6.3.2)
            else:
                stats.dropped_ignored += 1
            return None
        fingerprint = has_fp or self.fingerprint
        if msg.method != Method.BINDING:
            return self._error(msg, ErrorCode.BAD_REQUEST, addr, local, fingerprint)
        # RFC 8489 §9: authentication checks would go here (see "Extension point").
        unknown = msg.unknown_required()
        change = msg.get(ChangeRequest)
        response_port = msg.get(ResponsePort)
        if change is not None and here is None:
            unknown.append(_CHANGE_REQUEST)  # RFC 5780 §6: no alternate address
        if response_port is not None and stream:
            unknown.append(_RESPONSE_PORT)  # RFC 5780 §5: support is optional
        if unknown:
            types = tuple(dict.fromkeys(unknown))
            return self._error(
                msg,
                ErrorCode.UNKNOWN_ATTRIBUTE,
                addr,
                local,
                fingerprint,
                UnknownAttributes(types),
            )
        padding = msg.get(Padding)
        if response_port is not None and (padding is not None or response_port.value == 0):
            return self._error(msg, ErrorCode.BAD_REQUEST, addr, local, fingerprint)

        # RFC 8489 §6.3.1.1 and RFC 5780 §6.1: the success response.
        source = local
        if here is not None and change is not None:
            source = here.change[(change.change_ip, change.change_port)]
        destination = addr if response_port is None else (addr[0], response_port.value)
        stats.answered += 1
        return Transmit(
            self._success(msg.transaction_id, addr, source, here, padding, fingerprint),
            destination,
            source,
        )

    def _success(
        self,
        tid: bytes,
        addr: Address,
        source: Address,
        here: _Local | None,
        padding: Padding | None,
        fingerprint: bool,
    ) -> bytes:
        """The Binding success response to ``addr`` sent from ``source`` (RFC 8489 §6.3.1.1,
        RFC 5780 §6.1): XOR-MAPPED-ADDRESS, then with ``here`` MAPPED-ADDRESS, RESPONSE-ORIGIN
        and OTHER-ADDRESS, SOFTWARE, PADDING when the request had some, FINGERPRINT as
        asked."""
        tlvs = self._v4_cache.get(addr)
        if tlvs is None:
            tlvs = self._address_tlvs(addr, tid)
        if here is None:
            body = tlvs[0] + self._software_tlv
        else:
            body = b"".join((tlvs[0], tlvs[1], here.tails[source]))
        if padding is not None:
            # RFC 5780 §7.6: the MTU rounded up to 4, but no longer than the request's
            # PADDING (no amplification) nor past a 64K IP datagram.
            unpadded = HEADER_SIZE + len(body) + 4 + (8 if fingerprint else 0)
            length = min(
                self._padding_length,
                (len(padding.value) + 3) & ~3,
                max(0, _MAX_PADDED_MESSAGE - unpadded) & ~3,
            )
            body += _TL.pack(_PADDING, length) + bytes(length)
        return seal(_BINDING_SUCCESS, tid, body, fingerprint=fingerprint)

    def _error(
        self,
        request: Message,
        code: ErrorCode,
        addr: Address,
        local: Address,
        fingerprint: bool,
        *extra: Attribute,
    ) -> Transmit:
        """An error response (RFC 8489 §6.3.1.1) sent back where the request came from."""
        attrs: list[Attribute] = [*extra, *self._software_attrs]
        response = request.error_response(int(code), code.reason, attrs)
        self.stats.errors_sent += 1
        return Transmit(response.encode(fingerprint=fingerprint), addr, local)


@dataclass(frozen=True, slots=True)
class _Local:
    """What the server knows about one of its RFC 5780 addresses (Da:Dp)."""

    address: Address
    other_address: OtherAddress
    change: dict[tuple[bool, bool], Address]
    """The address an answer leaves from, by CHANGE-REQUEST's (change IP, change port)."""
    tails: dict[Address, bytes]
    """RESPONSE-ORIGIN, OTHER-ADDRESS and SOFTWARE of an answer, by the address it leaves
    from."""


def _tlv(attribute: Attribute) -> bytes:
    """The TLV bytes (padded) of an attribute that does not depend on the transaction id."""
    return Message(0, MessageClass.REQUEST, bytes(12), [attribute]).encode()[HEADER_SIZE:]
