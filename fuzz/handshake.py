"""Harness of the link's Noise handshake (anchor_link.handshake) and of the JSON the
rendezvous and the endpoint read from untrusted parties (anchor_link.wirejson).

The first byte picks a mode:

- *responder*: a responder reads fuzz bytes as the offer, writes its answer, and reads fuzz
  bytes as the confirm;
- *initiator*: an initiator writes its offer and reads fuzz bytes as the answer;
- *tamper*: a genuine handshake between two fixed identities, one of its messages changed
  (a byte flipped, cut, or extended) before the other side reads it;
- *rendezvous*: the rendezvous server's side of the identity proof reads fuzz bytes as the
  hello and the prove;
- *json*: :func:`~anchor_link.wirejson.loads_object` on the bytes.

Contracts checked: only :class:`~anchor_link.handshake.HandshakeFailed` escapes the
handshake (also from the write after a fuzz-made message: a peer's ephemeral key on a
low-order point makes an all-zero DH, which the library refuses) (``ValueError`` from the JSON reader); fuzz bytes never complete a handshake in
which they had to prove a key (a confirm, an answer, a prove: nobody but the key's holder can
make them), so they never yield a peer identity or channel keys; a tampered answer, confirm
or prove always fails, while the untouched handshake completes with both sides holding the
same keys.
"""

from __future__ import annotations

from collections.abc import Callable

from anchor_link.handshake import (
    HandshakeFailed,
    LinkHandshake,
    NoiseHandshake,
    link_prologue,
    rendezvous_handshake,
)
from anchor_link.identity import Identity
from anchor_link.wirejson import loads_object

from .common import Reader, check

_ALICE = Identity.from_private_bytes(bytes(range(1, 33)))
_BOB = Identity.from_private_bytes(bytes(range(33, 65)))
_PROLOGUE = link_prologue("00112233aabbccdd", "alice", "bob")


def _rng(seed: int) -> Callable[[int], bytes]:
    def rng(n: int) -> bytes:
        return bytes((seed + 7 * i) & 0xFF for i in range(n))

    return rng


def _pair() -> tuple[LinkHandshake, LinkHandshake]:
    a = LinkHandshake(_ALICE, initiator=True, prologue=_PROLOGUE, rng=_rng(3))
    b = LinkHandshake(_BOB, initiator=False, prologue=_PROLOGUE, rng=_rng(5))
    return a, b


def _read_fails(side: NoiseHandshake, message: bytes) -> bool:
    try:
        side.read_message(message)
    except HandshakeFailed:
        check(side.failed, "a failed read leaves the handshake usable")
        return True
    return False


def _responder(r: Reader) -> None:
    _, b = _pair()
    if _read_fails(b, r.chunk()):
        return
    try:
        b.write_message(b"answer")  # any 32+ bytes are a well-formed first XX message: e
    except HandshakeFailed:
        return  # an e the curve refuses (a low-order point: all-zero DH, RFC 7748 §6.1)
    check(_read_fails(b, r.chunk()), "fuzz bytes proved a static key in the confirm")
    check(b.remote_static is None and not b.complete, "a failed confirm yielded an identity")


def _initiator(r: Reader) -> None:
    a, _ = _pair()
    a.write_message(b"offer")
    check(_read_fails(a, r.chunk()), "fuzz bytes made a valid answer")
    check(a.remote_static is None, "a failed answer yielded an identity")


def _tamper(r: Reader) -> None:
    a, b = _pair()
    which = r.byte() % 3

    def deliver(reader: LinkHandshake, message: bytes, index: int) -> bool:
        if index != which:
            reader.read_message(message)
            return True
        how = r.byte() % 3
        if how == 0:
            at = r.u16() % len(message)
            bad = message[:at] + bytes((message[at] ^ (r.byte() | 1),)) + message[at + 1 :]
        elif how == 1:
            bad = message[: r.u16() % len(message)]
        else:
            bad = message + r.chunk() + b"\x00"
        failed = _read_fails(reader, bad)
        if index == 0:
            # The offer's e is not authenticated by itself: a changed key or payload only
            # shows when the answer (made for the changed offer) reaches the initiator.
            return not failed
        check(failed, f"a tampered message {index} was accepted")
        return False

    offer = a.write_message(b'{"ufrag": "a"}')
    if not deliver(b, offer, 0):
        return
    answer = b.write_message(b'{"ufrag": "b"}')
    if which == 0:
        check(_read_fails(a, answer), "an answer to a tampered offer was accepted")
        return
    if not deliver(a, answer, 1):
        return
    confirm = a.write_message()
    if not deliver(b, confirm, 2):
        return
    check(a.complete and b.complete, "the untouched handshake did not complete")
    check(a.split_keys() == b.split_keys(), "the two sides hold different keys")
    check(a.remote_static == _BOB.public and b.remote_static == _ALICE.public,
          "a side proved the wrong identity")  # fmt: skip
    a.check_accept(b.accept_message())


def _rendezvous(r: Reader) -> None:
    server = rendezvous_handshake(None, client=False, name="fuzz")
    if _read_fails(server, r.chunk()):
        return
    try:
        server.write_message()
    except HandshakeFailed:
        return  # a low-order e
    check(_read_fails(server, r.chunk()), "fuzz bytes proved a key to the rendezvous")
    check(server.remote_static is None, "a failed prove yielded an identity")


def _json(r: Reader) -> None:
    data = r.rest()
    try:
        value = loads_object(data, max_size=4096)
    except ValueError:
        return
    check(isinstance(value, dict), "loads_object returned something else than an object")


_MODES = (_responder, _initiator, _tamper, _rendezvous, _json)


def handshake(data: bytes) -> None:
    """Run one mode on ``data`` (module docstring)."""
    r = Reader(data)
    _MODES[r.byte() % len(_MODES)](r)
