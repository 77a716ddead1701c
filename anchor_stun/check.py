"""Connectivity checks: Binding requests signed with a short-term key (RFC 8445 §7.1-§7.3).

Theory of operation
-------------------
A connectivity check is a Binding request carrying USERNAME, PRIORITY, ICE-CONTROLLING or
ICE-CONTROLLED, maybe USE-CANDIDATE, then MESSAGE-INTEGRITY keyed with a short-term key
(RFC 8489 §9.1) and FINGERPRINT; its answer is a Binding success carrying XOR-MAPPED-ADDRESS,
MESSAGE-INTEGRITY and FINGERPRINT. An ICE agent sends and answers the same few of them again
and again (a check list, consent freshness every few seconds, RFC 7675), so two objects
remember, for the agent that owns them, what does not change from one check to the next:

* :class:`CheckKey`, one per short-term key: the key's HMAC states (:class:`HmacKey`), the
  encoded attributes of the requests it signs by their values (:meth:`CheckKey.request`), and
  the encoded XOR-MAPPED-ADDRESS of the answers it signs by IPv4 address
  (:meth:`CheckKey.success`). Both tables are keyed by everything their bytes depend on, so
  they never need clearing; a new key (an ICE restart) is a new object.
* :class:`CheckReader`, one per agent: what the attributes of a check say
  (:class:`CheckAttributes`), by the bytes that said it. A check whose attributes before
  MESSAGE-INTEGRITY are bytes already decoded is not decoded again; anything else is decoded
  by :meth:`Message.decode` and then remembered (:meth:`CheckReader.remember`).

Nothing here encodes or verifies on its own: the bytes are those of
:func:`~anchor_stun.message.encode_attributes` and
:meth:`~anchor_stun.message.HmacKey.seal_fingerprinted` (what
:func:`~anchor_stun.message.seal` does for a key of this kind), and verification is
:func:`~anchor_stun.message.fingerprint_matches` and
:meth:`~anchor_stun.message.HmacKey.mac_matches` (what
:func:`~anchor_stun.message.integrity_matches` does for it), as for every message. Tables are
bounded (:data:`TABLE_SIZE`, emptied when full).
"""

from __future__ import annotations

from dataclasses import dataclass

from anchor_stun.attributes import (
    Attribute,
    IceControlled,
    IceControlling,
    Priority,
    RawAttribute,
    UseCandidate,
    Username,
    XorMappedAddress,
    xor_mapped_tlv_v4,
)
from anchor_stun.errors import LocalProtocolError
from anchor_stun.message import (
    HEADER_SIZE,
    HmacKey,
    Message,
    MessageClass,
    Method,
    encode_attributes,
    encode_type,
    fingerprint_matches,
    signed_check_prefix,
)

__all__ = ["TABLE_SIZE", "CheckAttributes", "CheckKey", "CheckReader"]

TABLE_SIZE = 256
"""Entries of each table of a :class:`CheckKey` or :class:`CheckReader` (emptied when full)."""

_REQUEST = encode_type(Method.BINDING, MessageClass.REQUEST)
_SUCCESS = encode_type(Method.BINDING, MessageClass.SUCCESS)
_NO_TID = bytes(12)
_FP_TL = b"\x80\x28\x00\x04"
"""FINGERPRINT's type and length (RFC 8489 §14.7)."""


class CheckKey(HmacKey):
    """A short-term key (RFC 8489 §9.1) that signs and verifies connectivity checks and their
    answers (RFC 8445 §7.2.2, §7.3.1.2), remembering what they repeat (see the module)."""

    __slots__ = ("_answers", "_requests")

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self._requests: dict[tuple[str, int, bool, int, bool], bytes] = {}
        self._answers: dict[tuple[str, int], bytes] = {}

    def request(
        self,
        transaction_id: bytes,
        username: str,
        priority: int,
        controlling: bool,
        tie_breaker: int,
        use_candidate: bool = False,
    ) -> bytes:
        """A connectivity check (RFC 8445 §7.1, §7.2.2): the bytes of
        ``Message(BINDING, REQUEST, transaction_id, [Username(username), Priority(priority),
        IceControlling(tie_breaker) if controlling else IceControlled(tie_breaker)]
        + ([UseCandidate()] if use_candidate else [])).encode(key=self, fingerprint=True)``,
        raising what that raises."""
        if len(transaction_id) != 12:
            raise LocalProtocolError("transaction id must be 12 bytes")
        values = (username, priority, controlling, tie_breaker, use_candidate)
        exact = (
            type(username) is str
            and type(priority) is int
            and type(controlling) is bool
            and type(tie_breaker) is int
            and type(use_candidate) is bool
        )  # True == 1 and 1.0 == 1 as keys, but they do not encode alike
        body = self._requests.get(values) if exact else None
        if body is None:
            attributes: list[Attribute] = [
                Username(username),
                Priority(priority),
                IceControlling(tie_breaker) if controlling else IceControlled(tie_breaker),
            ]
            if use_candidate:
                attributes.append(UseCandidate())
            body = encode_attributes(attributes, _NO_TID)  # none depends on the id
            if exact:
                if len(self._requests) >= TABLE_SIZE:
                    self._requests.clear()
                self._requests[values] = body
        return self.seal_fingerprinted(_REQUEST, transaction_id, body)

    def success(self, transaction_id: bytes, address: tuple[str, int]) -> bytes:
        """The answer to a check from ``address`` (RFC 8445 §7.3.1.2): the bytes of
        ``Message(BINDING, SUCCESS, transaction_id, [XorMappedAddress(*address)])
        .encode(key=self, fingerprint=True)``, raising what that raises."""
        ip, port = address[0], address[1]
        exact = type(port) is int and type(ip) is str
        # (an address the table holds is a (str, int) tuple: only such keys are stored)
        body = (
            self._answers.get(address if type(address) is tuple else (ip, port)) if exact else None
        )
        if body is None:
            if len(transaction_id) != 12:  # (seal checks it too; this comes first)
                raise LocalProtocolError("transaction id must be 12 bytes")
            # an IPv4 XOR-MAPPED-ADDRESS does not depend on the transaction id (RFC 8489 §14.2)
            body = xor_mapped_tlv_v4(ip, port) if exact else None
            if body is None:
                body = encode_attributes([XorMappedAddress(ip, port)], transaction_id)
            else:
                if len(self._answers) >= TABLE_SIZE:
                    self._answers.clear()
                self._answers[(ip, port)] = body
        return self.seal_fingerprinted(_SUCCESS, transaction_id, body)

    def verify(self, data: bytes, integrity_at: int, fingerprint_at: int) -> bool:
        """True when the message ``data`` has MESSAGE-INTEGRITY at ``integrity_at`` that
        verifies with this key (RFC 8489 §14.5) and, when ``fingerprint_at`` is not -1, a
        FINGERPRINT there that verifies (§14.7)."""
        if fingerprint_at >= 0 and not fingerprint_matches(data, fingerprint_at):
            return False
        return integrity_at >= HEADER_SIZE and self.mac_matches(data, integrity_at)


@dataclass(frozen=True, slots=True, eq=False)
class CheckAttributes:
    """What the attributes of a Binding request say to an ICE agent (RFC 8445 §7.3): the
    first USERNAME, PRIORITY, ICE-CONTROLLING and ICE-CONTROLLED, USE-CANDIDATE, and the
    unknown comprehension-required types (RFC 8489 §6.3.1.1). Compared by identity: a
    :class:`CheckReader` gives one object per shape."""

    username: str | None
    """USERNAME, or None."""
    priority: int | None
    """PRIORITY, or None."""
    controlling: int | None
    """The tie-breaker of ICE-CONTROLLING, or None."""
    controlled: int | None
    """The tie-breaker of ICE-CONTROLLED, or None."""
    use_candidate: bool
    """True when USE-CANDIDATE is present."""
    unknown: tuple[int, ...]
    """Unknown comprehension-required attribute types, for a 420."""
    head: bytes
    """The first 8 bytes of a check of this shape (type, length, cookie); empty when the
    attributes were not remembered."""
    ufrag: str | None
    """The receiver's ufrag: what precedes the colon of USERNAME (RFC 8445 §7.2.2), or None
    without USERNAME or colon."""
    remote_ufrag: str
    """The sender's ufrag: what follows the colon (empty without one)."""


class CheckReader:
    """The Binding requests one agent receives, read once per shape (see the module)."""

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: dict[bytes, CheckAttributes] = {}

    def known(self, data: bytes) -> CheckAttributes | None:
        """The attributes of ``data`` when it has the shape of a check (a Binding request
        ending in MESSAGE-INTEGRITY then FINGERPRINT, :func:`signed_check_prefix`) whose
        attributes before MESSAGE-INTEGRITY were remembered; else None (decode it). The
        integrity attributes are then at ``len(data) - 32`` and ``len(data) - 8``."""
        if type(data) is not bytes:
            return None
        size = len(data)
        # the table's keys end with MESSAGE-INTEGRITY's type and length; the header holds
        # the length, so equal keys and heads mean the same size and the same attributes
        found = self._table.get(data[HEADER_SIZE : size - 28])
        if found is None or data[:8] != found.head or data[size - 8 : size - 4] != _FP_TL:
            return None
        return found

    def remember(self, message: Message) -> CheckAttributes:
        """What the decoded request ``message`` says; remembered by its bytes when it has
        the shape of a check and only attributes that do not depend on the transaction id."""
        username: str | None = None
        priority: int | None = None
        controlling: int | None = None
        controlled: int | None = None
        use_candidate = False
        unknown: list[int] = []
        remembered = True
        for attr in message.attributes:
            if type(attr) is Username:
                if username is None:
                    username = attr.value
            elif type(attr) is Priority:
                if priority is None:
                    priority = attr.value
            elif type(attr) is IceControlling:
                if controlling is None:
                    controlling = attr.value
            elif type(attr) is IceControlled:
                if controlled is None:
                    controlled = attr.value
            elif type(attr) is UseCandidate:
                use_candidate = True
            elif type(attr) is RawAttribute:
                if attr.type < 0x8000:
                    unknown.append(attr.type)
            else:
                remembered = False
        raw = message.raw
        prefix = message.signed_prefix() if remembered else None
        head = raw[:8] if prefix is not None and signed_check_prefix(raw) == prefix else b""
        ufrag: str | None = None
        remote_ufrag = ""
        if username is not None:
            local_part, colon, remote_ufrag = username.partition(":")
            ufrag = local_part if colon else None
        found = CheckAttributes(
            username,
            priority,
            controlling,
            controlled,
            use_candidate,
            tuple(unknown),
            head,
            ufrag,
            remote_ufrag,
        )
        if head:
            table = self._table
            if len(table) >= TABLE_SIZE:
                table.clear()
            table[raw[HEADER_SIZE : len(raw) - 28]] = found
        return found
