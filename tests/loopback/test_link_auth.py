"""Authenticated links (issue 16) end to end on loopback: pinned identities, a man-in-the-middle
rendezvous, impostors, replays, trust on first use.

The endpoints run the real handshake over an in-process hub; the man in the middle is a hub
that rewrites what it forwards, with an identity of its own and the Noise library in hand: it
runs one handshake with each side, as a compromised rendezvous could. What must hold: both
pinned sides fail with PeerAuthenticationFailed, send raises PeerAuthenticationError, nothing is
delivered, and nothing the fixture saw holds the application's bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from anchor_link.aio.endpoint import LinkEndpoint
from anchor_link.aio.signal import Envelope, InProcessSignalling
from anchor_link.handshake import LinkHandshake, link_prologue
from anchor_link.identity import Identity, IdentityError
from anchor_link.state import (
    LinkFailed,
    LinkFormed,
    PeerAuthenticationError,
    PeerAuthenticationFailed,
)

LOOPBACK = "127.0.0.1"
SECRET = b"the launch code is 0000 " + os.urandom(16).hex().encode()
T = TypeVar("T")

pytestmark = pytest.mark.timeout(90)


def run(coro: Awaitable[T], timeout: float = 45.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


RECEIVED: dict[int, list[bytes]] = {}


def endpoint(name: str, hub: InProcessSignalling, **options: Any) -> LinkEndpoint:
    """An endpoint on loopback host candidates; what it receives goes to ``received(it)``
    when ``collect=True``."""
    options.setdefault("form_timeout", 8.0)
    inbox: list[bytes] | None = None
    if options.pop("collect", False):
        inbox = []
        options["on_message"] = lambda _peer, data: inbox.append(data)
    ep = LinkEndpoint(
        name, hub, policy="standard", host_ips=[LOOPBACK], idle_timeout=1.0, **options
    )
    if inbox is not None:
        RECEIVED[id(ep)] = inbox
    return ep


def received(ep: LinkEndpoint) -> list[bytes]:
    return RECEIVED[id(ep)]


class TappedHub(InProcessSignalling):
    """An in-process hub that records every body it forwards and may rewrite it
    (``rewrite(sender, peer, body) -> body | None``; None drops it)."""

    def __init__(
        self, rewrite: Callable[[str, str, dict[str, Any]], dict[str, Any] | None] | None = None
    ) -> None:
        super().__init__()
        self.capture: list[tuple[str, str, dict[str, Any]]] = []
        self.rewrite = rewrite

    def _deliver(self, sender: str, peer: str, text: str) -> None:
        body = json.loads(text)
        self.capture.append((sender, peer, body))
        if self.rewrite is not None:
            changed = self.rewrite(sender, peer, body)
            if changed is None:
                return
            text = json.dumps(changed)
        super()._deliver(sender, peer, text)

    def inject(self, sender: str, peer: str, body: dict[str, Any]) -> None:
        """Deliver ``body`` to ``peer`` as if ``sender`` had published it."""
        self._boxes[peer]._put(Envelope(sender, body))

    def holds(self, data: bytes) -> bool:
        """Whether ``data`` appears anywhere in what the hub saw (text, or base64 fields)."""
        blob = json.dumps(self.capture).encode()
        if data in blob:
            return True
        for _s, _p, body in self.capture:
            for value in body.values():
                if isinstance(value, str):
                    try:
                        if data in base64.b64decode(value, validate=True):
                            return True
                    except ValueError:
                        continue
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class Mitm:
    """A rendezvous that runs its own Noise handshake with each side under ``identity``:
    to A it answers as B, to B it offers as A, passing the ICE descriptions through so that
    ICE itself would work. It also keeps every payload it could decrypt."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.toward_a: LinkHandshake | None = None  # MITM as responder to A
        self.toward_b: LinkHandshake | None = None  # MITM as initiator to B
        self.seen_payloads: list[bytes] = []

    def __call__(self, sender: str, peer: str, body: dict[str, Any]) -> dict[str, Any] | None:
        kind = body.get("type")
        link = str(body.get("link"))
        prologue = link_prologue(link, "a", "b")
        if kind == "offer" and sender == "a":
            self.toward_a = LinkHandshake(self.identity, initiator=False, prologue=prologue)
            description = self.toward_a.read_message(_unb64(body["noise"]))
            self.seen_payloads.append(description)
            self.toward_b = LinkHandshake(self.identity, initiator=True, prologue=prologue)
            return {**body, "noise": _b64(self.toward_b.write_message(description))}
        if kind == "answer" and sender == "b":
            assert self.toward_a is not None and self.toward_b is not None
            description = self.toward_b.read_message(_unb64(body["noise"]))
            self.seen_payloads.append(description)
            return {**body, "noise": _b64(self.toward_a.write_message(description))}
        if kind == "confirm" and sender == "a":
            assert self.toward_a is not None and self.toward_b is not None
            self.toward_a.read_message(_unb64(body["noise"]))
            return {**body, "noise": _b64(self.toward_b.write_message(b""))}
        return body


def test_mitm_rendezvous_swapping_keys_fails_both_pinned_sides_and_learns_nothing() -> None:
    async def main() -> None:
        ida, idb = Identity.generate(), Identity.generate()
        mitm = Mitm(Identity.generate())
        hub = TappedHub(mitm)
        a = endpoint("a", hub, identity=ida, trusted_peers={"b": idb.public_text})
        b = endpoint("b", hub, identity=idb, trusted_peers={"a": ida.public_text}, collect=True)
        async with a, b:
            with pytest.raises(PeerAuthenticationError, match="authentication"):
                await a.send("b", SECRET)
            failed_a = await a.wait_for(PeerAuthenticationFailed, "b", timeout=10)
            failed_b = await b.wait_for(PeerAuthenticationFailed, "a", timeout=10)
            assert failed_a.expected == idb.public_text
            assert failed_a.presented == mitm.identity.public_text
            assert "authentication" in failed_b.reason
            await asyncio.sleep(0.3)
            assert not [e for e in a.history + b.history if isinstance(e, LinkFormed)]
            assert received(b) == []
        assert not hub.holds(SECRET)
        assert all(SECRET not in payload for payload in mitm.seen_payloads)
        assert any(body.get("type") == "reject" and body.get("auth") for _s, _p, body in hub.capture)

    run(main())


def test_a_description_changed_on_the_way_fails_the_handshake_on_both_sides() -> None:
    def swap_candidate(sender: str, peer: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("type") == "offer":
            raw = bytearray(_unb64(body["noise"]))
            payload = json.loads(bytes(raw[32:]))
            payload["ufrag"] = "evil" + payload["ufrag"][4:]  # the offer is in clear: edit it
            return {**body, "noise": _b64(bytes(raw[:32]) + json.dumps(payload).encode())}
        return body

    async def main() -> None:
        hub = TappedHub(swap_candidate)
        a, b = endpoint("a", hub), endpoint("b", hub)
        async with a, b:
            with pytest.raises(PeerAuthenticationError, match="did not authenticate"):
                await a.send("b", SECRET)
            await b.wait_for(PeerAuthenticationFailed, "a", timeout=10)
        assert not hub.holds(SECRET)

    run(main())


def test_pinned_peers_link_and_report_their_identities() -> None:
    async def main() -> None:
        hub = InProcessSignalling()
        ida, idb = Identity.generate(), Identity.generate()
        a = endpoint("a", hub, identity=ida, trusted_peers={"b": idb.public_text})
        b = endpoint("b", hub, identity=idb)  # no trust configured: unverified, still links
        async with a, b:
            await a.send("b", b"hello")
            assert await asyncio.wait_for(b.recv(), 10) == ("a", b"hello")
            formed_a = await a.wait_for(LinkFormed, "b")
            formed_b = await b.wait_for(LinkFormed, "a")
            assert formed_a.peer_identity == idb.public_text and formed_a.trust == "pinned"
            assert formed_b.peer_identity == ida.public_text and formed_b.trust == "unverified"
            assert formed_a.sealed and formed_b.sealed

    run(main())


def test_an_impostor_holding_the_name_gets_no_plaintext_and_the_sender_fails() -> None:
    async def main() -> None:
        hub = TappedHub()
        real_b = Identity.generate()
        a = endpoint("a", hub, trusted_peers={"b": real_b.public_text})
        impostor = endpoint("b", hub, collect=True)  # holds "b" first, with its own key
        async with a, impostor:
            with pytest.raises(PeerAuthenticationError) as caught:
                await a.send("b", SECRET)
            assert "authentication" in str(caught.value)
            failed = await a.wait_for(PeerAuthenticationFailed, "b")
            assert failed.expected == real_b.public_text
            assert failed.presented == impostor.identity.public_text
            await impostor.wait_for(LinkFailed, "a", timeout=10)
        assert received(impostor) == [] and not hub.holds(SECRET)
        assert not [e for e in impostor.history if isinstance(e, LinkFormed)]

    run(main())


def test_an_impostor_sending_as_a_pinned_name_is_refused_by_the_receiver() -> None:
    async def main() -> None:
        hub = InProcessSignalling()
        real_a = Identity.generate()
        b = endpoint("b", hub, trusted_peers={"a": real_a.public_text}, collect=True)
        impostor = endpoint("a", hub)
        async with b, impostor:
            with pytest.raises(PeerAuthenticationError, match="refused the handshake"):
                await impostor.send("b", b"let me in")
            failed = await b.wait_for(PeerAuthenticationFailed, "a")
            assert failed.presented == impostor.identity.public_text
            assert received(b) == []

    run(main())


def test_a_replayed_offer_is_refused_and_forms_no_link() -> None:
    async def main() -> None:
        hub = TappedHub()
        a, b = endpoint("a", hub), endpoint("b", hub)
        async with a, b:
            await a.send("b", b"one")
            assert await asyncio.wait_for(b.recv(), 10) == ("a", b"one")
            offer = next(body for s, _p, body in hub.capture if body.get("type") == "offer")
            formed = len([e for e in b.history if isinstance(e, LinkFormed)])
            hub.inject("a", "b", offer)  # the same offer again, as a rendezvous could
            await asyncio.sleep(0.5)
            assert b.replays_refused == 1
            assert len([e for e in b.history if isinstance(e, LinkFormed)]) == formed
        # A fresh endpoint for "b" (nothing remembered): the replay gets an answer, but
        # nobody can send the confirm, so no link forms.
        hub2 = TappedHub()
        fresh_b = endpoint("b", hub2, form_timeout=1.5)
        async with fresh_b:
            hub2.inject("a", "b", offer)
            failed = await fresh_b.wait_for(LinkFailed, "a", timeout=10)
            assert "timed out" in failed.reason
            assert not [e for e in fresh_b.history if isinstance(e, LinkFormed)]

    run(main())


def test_known_peers_file_pins_on_first_use_and_refuses_a_changed_key(tmp_path: Path) -> None:
    async def main() -> None:
        known = tmp_path / "known_peers"
        hub = InProcessSignalling()
        a = endpoint("a", hub, known_peers=known)
        b = endpoint("b", hub)
        async with a, b:
            await a.send("b", b"first")
            assert (await a.wait_for(LinkFormed, "b")).trust == "new"
            assert b.identity.public_text in known.read_text()
        hub2 = InProcessSignalling()
        a2 = endpoint("a", hub2, known_peers=known)
        other_b = endpoint("b", hub2, collect=True)  # same name, another key
        async with a2, other_b:
            with pytest.raises(PeerAuthenticationError, match="HAS CHANGED"):
                await a2.send("b", SECRET)
            assert received(other_b) == []
        assert known.read_text().count("\n") == 1

    run(main())


def test_an_endpoint_takes_its_identity_as_a_key_file_path(tmp_path: Path) -> None:
    """What build item 1 asks of the Python API: ``identity=`` takes an identity object or
    the path of a key file (``anchor keygen``), as text or a Path; the key in the file is
    the one the peer sees proven. A file others may read is refused."""
    saved = Identity.generate()
    path = tmp_path / "a.key"
    saved.save(path)

    async def main() -> None:
        hub = InProcessSignalling()
        a = endpoint("a", hub, identity=str(path))
        b = endpoint("b", hub, trusted_peers={"a": saved.public_text}, collect=True)
        assert a.identity == saved and endpoint("c", hub, identity=path).identity == saved
        async with a, b:
            await a.send("b", b"from the key file")
            formed = await b.wait_for(LinkFormed, "a")
            assert formed.peer_identity == saved.public_text and formed.trust == "pinned"
            await asyncio.sleep(0.2)
            assert received(b) == [b"from the key file"]

    run(main())
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        endpoint("a", InProcessSignalling(), identity=path)
