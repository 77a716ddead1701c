"""What every harness shares: a reader that turns fuzz bytes into choices, the violation
error, and a few fixed values (keys, addresses) the harnesses agree on."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class Violation(AssertionError):
    """A harness found a broken contract: an invariant the code under test promises."""


def check(condition: object, message: str) -> None:
    """Raise :class:`Violation` with ``message`` unless ``condition`` holds (``assert``
    would vanish under ``python -O``)."""
    if not condition:
        raise Violation(message)


def corrupt(message: bytes, r: Reader) -> bytes:
    """``message`` (a signed STUN message) with one byte changed between the header and the
    end of its integrity attribute, so that the integrity check must fail. (A change inside
    a final FINGERPRINT would not do: turning its type into an unknown one leaves a message
    whose integrity still verifies.)"""
    end = len(message)
    if end >= 28 and message[end - 8 : end - 4] == b"\x80\x28\x00\x04":
        end -= 8
    at = 20 + r.u16() % max(1, end - 20)
    return message[:at] + bytes((message[at] ^ (r.byte() | 1),)) + message[at + 1 :]


class Reader:
    """Consumes fuzz bytes as a stream of choices. Reading past the end yields zeros (and
    empty byte strings), so every input, even the empty one, is a complete program."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def left(self) -> int:
        """Bytes not consumed yet."""
        return len(self._data) - self._pos

    def byte(self) -> int:
        """One byte, 0 past the end."""
        if self._pos >= len(self._data):
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value

    def u16(self) -> int:
        """A big-endian 16-bit integer (missing bytes are zeros)."""
        value: int = _U16.unpack(self.take(2).ljust(2, b"\x00"))[0]
        return value

    def u32(self) -> int:
        """A big-endian 32-bit integer (missing bytes are zeros)."""
        value: int = _U32.unpack(self.take(4).ljust(4, b"\x00"))[0]
        return value

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes."""
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def chunk(self) -> bytes:
        """A length-prefixed byte string: one length byte (0-254), or 255 then a 16-bit
        length for longer ones."""
        n = self.byte()
        if n == 255:
            n = self.u16()
        return self.take(n)

    def rest(self) -> bytes:
        """Everything not consumed yet."""
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options``, chosen by the next byte."""
        return options[self.byte() % len(options)]

    def pick_or(self, options: Sequence[T], other: Callable[[], T]) -> T:
        """One of ``options``, or ``other()`` (which reads further) for the extra choice."""
        index = self.byte() % (len(options) + 1)
        return options[index] if index < len(options) else other()
