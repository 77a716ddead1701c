"""Fixtures for the conformance tests: real peers, started here, on loopback only.

A test that needs a peer either uses one of the fixtures below or carries
``@pytest.mark.peer("coturn" | "tshark" | "aioice" | "aiortc")``; a missing peer skips it on a
developer's machine and fails it when ``CI=true`` (see ``peers.require_peer``).

Fixtures:

- ``coturn``: one ``turnserver -n`` for the session: UDP+TCP on one port, TLS on another
  (self-signed certificate made here), long-term credentials alice:secret in realm
  example.org, loopback peers allowed, its own relay port range. Stopped by PID.
- ``coturn_5780``: the same in RFC 5780 mode on 127.0.0.1 and 127.0.0.2, PORT and PORT+1.
- ``tshark_capture``: a factory; ``tshark_capture("udp port 1234")`` starts a capture on
  ``lo`` into the test's temporary directory and returns a started ``TsharkCapture``;
  call ``.stop()`` to get the pcap (or let the fixture stop it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import (
    Coturn,
    TsharkCapture,
    free_port,
    require_peer,
    require_peer_mark,
    start_coturn,
)

__all__ = ["free_port", "require_peer"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``pytest conformance --server HOST:PORT [--user NAME:PASSWORD] ...`` runs the
    ``anchor check`` probes against an external server too (conformance/test_check.py)."""
    group = parser.getgroup("anchor check", "anchor check probes against an external server")
    group.addoption("--server", metavar="HOST:PORT", help="STUN/TURN server to check")
    group.addoption("--user", metavar="NAME:PASSWORD", help="its long-term credentials")
    group.addoption("--static-auth-secret", metavar="S", help="or its TURN REST API secret")
    group.addoption("--server-transport", choices=("udp", "tcp", "tls"), default="udp")
    group.addoption("--peer", metavar="IP:PORT", help="UDP echo peer for the round trips")
    group.addoption("--server-insecure", action="store_true", help="do not verify its TLS")
    group.addoption("--check-slow", action="store_true", help="also the ~5 minute probes")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Enforce ``@pytest.mark.peer(name)``: skip, or fail under CI, when the peer is missing."""
    for mark in item.iter_markers(name="peer"):
        for name in mark.args:
            require_peer_mark(name)


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """A coturn for the whole session (UDP, TCP and TLS; long-term credentials)."""
    server = start_coturn(tmp_path_factory.mktemp("coturn"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def coturn_5780(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """A coturn serving RFC 5780 on 127.0.0.1:PORT and 127.0.0.2:PORT+1."""
    server = start_coturn(tmp_path_factory.mktemp("coturn5780"), rfc5780=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tshark_capture(tmp_path: Path) -> Iterator[Callable[[str], TsharkCapture]]:
    """Factory of started captures on ``lo``; every one still running is stopped at teardown."""
    captures: list[TsharkCapture] = []

    def start(capture_filter: str, name: str = "capture") -> TsharkCapture:
        capture = TsharkCapture(tmp_path / f"{name}-{len(captures)}.pcapng", capture_filter)
        captures.append(capture)
        return capture.start()

    try:
        yield start
    finally:
        for capture in captures:
            capture.close()


@pytest.fixture(scope="session", autouse=True)
def _config_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``anchor pipe`` without ``--identity`` makes the user's default identity on first use
    (in ``$XDG_CONFIG_HOME/anchor``): here a directory of the session's own, never the real
    user's."""
    import os

    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
