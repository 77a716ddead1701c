"""The one error hierarchy of Anchor (docs/design.md "Errors").

``AnchorError`` is the root. Decoding untrusted bytes raises only :class:`DecodeError`
(alias :data:`StunDecodeError`); misuse of an API raises :class:`LocalProtocolError` and
leaves state unchanged. Timeouts and error responses reach sans-I/O users as events; the
asyncio adapters raise :class:`TransactionTimeout` and :class:`StunErrorResponse`.
"""

from __future__ import annotations

__all__ = [
    "AllocationError",
    "AnchorError",
    "DecodeError",
    "DestinationUnreachable",
    "LocalProtocolError",
    "StreamCorrupted",
    "StunDecodeError",
    "StunError",
    "StunErrorResponse",
    "StunIntegrityError",
    "TransactionTimeout",
    "TurnError",
    "error_text",
]


def error_text(code: int, reason: str) -> str:
    """An error response in one line: ``"401 Unauthenticated"`` (RFC 8489 §14.8: the code and
    its reason phrase), the code once, also when ``reason`` already starts with it (the
    cores' reasons may carry it: "401 Unauthenticated: wrong username or password")."""
    reason = reason.strip()
    if reason == str(code) or reason.startswith(f"{code} "):
        return reason
    return f"{code} {reason}".strip()


class AnchorError(Exception):
    """Root of every error Anchor raises on purpose."""


class LocalProtocolError(AnchorError):
    """The caller misused an API (a bad argument, a call in the wrong state)."""


class StunError(AnchorError):
    """Anything that went wrong at the STUN layer (RFC 8489)."""


class DecodeError(StunError):
    """Bytes that are not a well-formed STUN message (or attribute, or frame).

    ``field`` names what failed to parse; ``transaction_id`` is set when the header was
    readable, so that a server can still answer 400 Bad Request (RFC 8489 §6.3.1.1).
    """

    def __init__(
        self, message: str, *, field: str = "", transaction_id: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.transaction_id = transaction_id


StunDecodeError = DecodeError


class StreamCorrupted(DecodeError):
    """A stream carried bytes that are no frame (:class:`~anchor_stun.framing.StreamFramer`):
    the connection must be closed, but ``frames``, the whole frames that arrived before the
    junk in the same read, are still good and should be handled first."""

    def __init__(self, message: str, *, field: str = "", frames: list[bytes]) -> None:
        super().__init__(message, field=field)
        self.frames = frames
        """Whole frames that preceded the junk, in order."""


class StunIntegrityError(StunError):
    """MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT did not verify (RFC 8489 §14.5-§14.7)."""


class TransactionTimeout(StunError):
    """A client transaction got no response within Ti / Rc retransmissions (RFC 8489 §6.2)."""


class DestinationUnreachable(StunError, ConnectionError):
    """The socket reported the destination unreachable (an ICMP error, RFC 8489 §6.2.1
    leaves its handling to the client): the transaction ends at once instead of after its
    retransmissions. The message names the address."""


class StunErrorResponse(StunError):
    """The server answered with an error response; ``code`` and ``reason`` from ERROR-CODE."""

    def __init__(self, code: int, reason: str = "", response: object = None) -> None:
        super().__init__(error_text(code, reason))
        self.code = code
        self.reason = reason
        self.response = response
        """The decoded error response (a ``Message``), when there is one."""


class TurnError(AnchorError):
    """Anything that went wrong at the TURN layer (RFC 8656)."""


class AllocationError(TurnError):
    """An Allocate, Refresh, CreatePermission or ChannelBind failed; ``code`` is the STUN
    error code (403, 437, 441, 442, 486, 508, ...) or 0 when no usable response came."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(error_text(code, reason) if code else reason or "no response")
        self.code = code
        self.reason = reason
