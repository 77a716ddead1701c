"""The ``anchor check`` probes as the conformance suite (issue 11).

The body of every test here is a probe of :mod:`anchor_turn.aio.check`, the very function
``anchor check`` runs, so the command and the suite cannot drift apart. One test per probe and
server (``test_coturn[turn.allocate]``, ...):

1. coturn started by the tests (``--allow-loopback-peers``, a loopback echo as the peer): every
   MUST passes, except the deviations listed in :data:`COTURN_DEVIATIONS`, which are asserted
   to still fail exactly as documented (a coturn that fixes them makes the test say so); its
   real choices (MD5 only, RFC 5766 channel numbers, loopback and private peers allowed,
   deferred deletion) come out as findings, never as failures;
2. ``anchor serve`` with TURN, RFC 5780 and loopback peers allowed: every MUST passes;
3. coturn started without ``--allow-loopback-peers``: loopback peers reported refused; with it,
   reported as a security finding;
4. ``pytest conformance --server HOST:PORT [--user NAME:PASSWORD | --static-auth-secret S]
   [--server-transport udp|tcp|tls] [--peer IP:PORT]`` runs the probes against an external
   server (skipped unless ``--server`` is given): its MUST probes must not fail; the verdict of
   every probe is printed (``-s`` or ``-rA`` shows it).

RFC 5780 probes run against coturn in its RFC 5780 mode too, aimed at 127.0.0.1 (the primary
address: coturn answers requests to its second listening IP with an OTHER-ADDRESS on that same
IP, which the check reports).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peers
import pytest
from peers import LOOPBACK, Coturn, start_coturn, tls_client_context

from anchor_stun.aio.net import DEFAULT_PORT, DEFAULT_TLS_PORT, parse_address, resolve
from anchor_turn.aio.check import PROBES, CheckConfig, run_check
from anchor_turn.check import Level, Outcome, ProbeResult, check_passed, rest_credentials
from tests.helpers import anchor_serve, free_port

ALL_IDS = [p.info.id for p in PROBES]
LEVELS = {p.info.id: p.info.level for p in PROBES}

COTURN_DEVIATIONS = {
    # RFC 8656 §7.2 (and RFC 5766 §6.2): a REQUESTED-TRANSPORT the server does not support
    # gets 442. coturn 4.6 answers 400 "Transport field missed or wrong" to any protocol
    # other than UDP and TCP (442 only when UDP or TCP relaying is disabled by its config).
    # In its source (src/server/ns_turn_server.c, handle_turn_allocate) the attribute loop
    # does set 442 for an unknown protocol, but leaves `transport` at 0, and the check after
    # the loop (`if (!transport) 400 "Transport field missed or wrong"`) overwrites it.
    "turn.unsupported-transport": "answered 400 Transport field missed or wrong",
    # RFC 8656 §5: any request but Allocate on a 5-tuple without an allocation MUST get 437.
    # coturn answers Refresh with 437 but CreatePermission and ChannelBind with 400: their
    # handlers (handle_turn_create_permission, handle_turn_channel_bind) only work inside
    # `if (is_allocation_valid(a))`; without an allocation they set no error code and build
    # no response, which the dispatcher answers with a generic 400.
    "turn.no-allocation": "CreatePermission answered 400 Bad Request",
}
"""MUST probes coturn 4.6 fails, and the words of the failure (see the final report)."""

COTURN_CHOICES = {
    "stun.rfc5780": Outcome.FINDING,  # started without an alternate address
    "turn.password-algorithms": Outcome.FINDING,  # MD5 only
    "turn.channel-bind-range": Outcome.FINDING,  # keeps RFC 5766's 0x4000-0x7FFF
    "turn.release-immediate": Outcome.FINDING,  # deletes at its next 1 s tick
    "turn.peer-loopback": Outcome.FINDING,  # --allow-loopback-peers
    "turn.peer-unspecified": Outcome.PASS,  # 0.0.0.0 refused (CVE-2020-26262 fixed)
    "turn.peer-private": Outcome.FINDING,  # no denied-peer-ip configured
    "turn.lifetime": Outcome.PASS,
}
"""Outcomes expected of coturn's non-MUST probes."""

ANCHOR_CHOICES = {
    "stun.rfc5780": Outcome.PASS,
    "turn.password-algorithms": Outcome.PASS,
    "turn.channel-bind-range": Outcome.FINDING,  # RFC 5766's range by default (--strict-channels)
    "turn.release-immediate": Outcome.PASS,
    "turn.peer-loopback": Outcome.FINDING,  # --allow-loopback-peers
    "turn.peer-unspecified": Outcome.PASS,
    "turn.peer-private": Outcome.PASS,
    "turn.lifetime": Outcome.PASS,
}
"""Outcomes expected of ``anchor serve``'s non-MUST probes."""

DONT_FRAGMENT_SUPPORTED = (
    "supported: the Allocate with DONT-FRAGMENT succeeded; a Send indication carrying it was "
    "relayed"
)
"""turn.dont-fragment is a MUST that two answers meet (RFC 8656 §7.2 step 4): success, or 420
listing DONT-FRAGMENT. coturn 4.6 and ``anchor serve`` on Linux both support it."""

NOT_OFFERED_5780 = {"stun.rfc5780-response-origin", "stun.rfc5780-change-request"}
SLOW = {p.info.id for p in PROBES if p.info.slow}


def _check(config: CheckConfig, probe_id: str | None = None) -> list[ProbeResult]:
    return asyncio.run(run_check(config, ids=None if probe_id is None else [probe_id]))


def _one(config: CheckConfig, probe_id: str) -> ProbeResult:
    (result,) = _check(config, probe_id)
    return result


def _assert_must(result: ProbeResult, deviations: dict[str, str]) -> None:
    """A MUST probe passes (or is skipped for a stated reason), unless it is a documented
    deviation, which must still fail with the documented words."""
    if result.id in deviations:
        assert result.outcome is Outcome.FAIL, (
            f"{result.id} no longer fails ({result.outcome}: {result.detail}): the server "
            "fixed a documented deviation; update the list"
        )
        assert deviations[result.id] in result.detail, result.detail
        return
    assert result.outcome is not Outcome.FAIL, f"{result.id}: {result.detail}"


def _coturn_config(server: Coturn, transport: str = "udp", **options: Any) -> CheckConfig:
    context: ssl.SSLContext | None = None
    address = (LOOPBACK, server.port)
    if transport == "tls":
        assert server.cert is not None
        context = tls_client_context(server.cert)
        address = server.tls
    return CheckConfig(
        address,
        transport,  # type: ignore[arg-type]
        server.username,
        server.password,
        ssl_context=context,
        server_hostname=LOOPBACK,
        **options,
    )


# --------------------------------------------------------------------------- coturn


@pytest.mark.peer("coturn")
@pytest.mark.parametrize("probe_id", ALL_IDS)
def test_coturn(coturn: Coturn, probe_id: str) -> None:
    result = _one(_coturn_config(coturn), probe_id)
    if LEVELS[probe_id] is Level.MUST:
        _assert_must(result, COTURN_DEVIATIONS)
        if result.outcome is Outcome.SKIP:
            assert probe_id in NOT_OFFERED_5780 | SLOW, result.detail
        if probe_id == "turn.dont-fragment":
            assert DONT_FRAGMENT_SUPPORTED in result.detail
    else:
        assert result.outcome is COTURN_CHOICES[probe_id], result.detail


@pytest.mark.peer("coturn")
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_coturn_streams(coturn: Coturn, transport: str) -> None:
    """The whole battery in one run over TCP and TLS (each probe on its own connection)."""
    start = time.monotonic()
    results = _check(_coturn_config(coturn, transport))
    assert time.monotonic() - start < 15
    for result in results:
        if result.info.level is Level.MUST:
            _assert_must(result, COTURN_DEVIATIONS)
    assert {r.id for r in results if r.outcome is Outcome.FAIL} == set(COTURN_DEVIATIONS)
    assert not check_passed(results)  # the deviations are MUSTs: `anchor check` exits 1


@pytest.mark.peer("coturn")
@pytest.mark.parametrize("probe_id", sorted(n for n in ALL_IDS if n.startswith("stun.")))
def test_coturn_rfc5780(coturn_5780: Coturn, probe_id: str) -> None:
    result = _one(_coturn_config(coturn_5780), probe_id)
    assert result.outcome is Outcome.PASS, result.detail


@pytest.fixture(scope="module")
def coturn_strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn as a production server runs: without ``--allow-loopback-peers``
    (``start_coturn`` always passes it; the flag is dropped on the way to the process)."""
    real = peers.start_process

    def without_loopback(name: str, argv: list[str], log_path: Path) -> peers.PeerProcess:
        return real(name, [a for a in argv if a != "--allow-loopback-peers"], log_path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peers, "start_process", without_loopback)
        server = start_coturn(tmp_path_factory.mktemp("coturn-strict"), tls=False)
    assert "--allow-loopback-peers" not in server.process.argv
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.peer("coturn")
def test_coturn_without_allow_loopback_peers_refuses_them(coturn_strict: Coturn) -> None:
    results = _check(_coturn_config(coturn_strict, only="turn"))
    got = {r.id: r for r in results}
    loopback = got["turn.peer-loopback"]
    assert loopback.outcome is Outcome.PASS, loopback.detail
    assert "refused: 127.0.0.1 403" in loopback.detail
    # the loopback echo is refused: round trips are skipped and say why; permission and
    # channel probes fall back to the documentation address
    for probe_id in ("turn.send-data", "turn.channel-data"):
        assert got[probe_id].outcome is Outcome.SKIP
        assert "refuses the data peer 127.0.0.1" in got[probe_id].detail
    assert got["turn.create-permission"].outcome is Outcome.PASS
    assert "192.0.2.1" in got["turn.create-permission"].detail
    for result in results:
        if result.info.level is Level.MUST:
            _assert_must(result, COTURN_DEVIATIONS)


@pytest.mark.peer("coturn")
def test_coturn_with_allow_loopback_peers_is_a_security_finding(coturn: Coturn) -> None:
    result = _one(_coturn_config(coturn), "turn.peer-loopback")
    assert result.outcome is Outcome.FINDING
    assert "CVE-2020-26262" in result.detail and "127.0.0.1" in result.detail


@pytest.mark.peer("coturn")
def test_coturn_rest_api_credentials(tmp_path: Path) -> None:
    """--static-auth-secret: the check makes coturn's REST API credentials itself."""
    server = start_coturn(
        tmp_path / "coturn-rest", tls=False,
        extra_args=["--use-auth-secret", "--static-auth-secret=restsecret"],
    )  # fmt: skip
    try:
        username, password = rest_credentials("restsecret", time.time())
        config = CheckConfig((LOOPBACK, server.port), username=username, password=password)
        results = _check(config)
    finally:
        server.stop()
    got = {r.id: r for r in results}
    assert got["turn.allocate"].outcome is Outcome.PASS, got["turn.allocate"].detail
    assert got["turn.send-data"].outcome is Outcome.PASS, got["turn.send-data"].detail
    for result in results:
        if result.info.level is Level.MUST:
            _assert_must(result, COTURN_DEVIATIONS)


# --------------------------------------------------------------------------- anchor serve


@pytest.fixture(scope="module")
def anchor_served() -> Iterator[tuple[str, int]]:
    """``anchor serve`` with TURN (alice:secret), TCP, RFC 5780 on 127.0.0.2, loopback peers."""
    port = free_port("both")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--alt-ip", "127.0.0.2", "--tcp",
        "--realm", "example.org", "--user", "alice:secret", "--allow-loopback-peers",
        expect=5,
    ):  # fmt: skip
        yield (LOOPBACK, port)


@pytest.mark.parametrize("probe_id", ALL_IDS)
def test_anchor_serve(anchor_served: tuple[str, int], probe_id: str) -> None:
    result = _one(CheckConfig(anchor_served, username="alice", password="secret"), probe_id)
    if LEVELS[probe_id] is Level.MUST:
        _assert_must(result, {})
        if result.outcome is Outcome.SKIP:
            assert probe_id in SLOW, result.detail
        if probe_id == "turn.dont-fragment" and sys.platform.startswith("linux"):
            assert DONT_FRAGMENT_SUPPORTED in result.detail
    else:
        assert result.outcome is ANCHOR_CHOICES[probe_id], result.detail


def test_anchor_serve_over_tcp(anchor_served: tuple[str, int]) -> None:
    results = _check(CheckConfig(anchor_served, "tcp", "alice", "secret"))
    assert check_passed(results), [r.to_json() for r in results if r.outcome is Outcome.FAIL]


# --------------------------------------------------------------------------- external server


def _external(pytestconfig: pytest.Config) -> CheckConfig:
    text = pytestconfig.getoption("--server")
    if not text:
        pytest.skip("no external server: pytest conformance --server HOST:PORT [--user ...]")
    transport = pytestconfig.getoption("--server-transport")
    host, port = parse_address(text, DEFAULT_TLS_PORT if transport == "tls" else DEFAULT_PORT)
    server = asyncio.run(resolve(host, port))
    username = password = None
    user = pytestconfig.getoption("--user")
    secret = pytestconfig.getoption("--static-auth-secret")
    if user:
        username, _, password = user.partition(":")
    elif secret:
        username, password = rest_credentials(secret, time.time())
    peer_text = pytestconfig.getoption("--peer")
    context: ssl.SSLContext | None = None
    if transport == "tls":
        context = ssl.create_default_context()
        if pytestconfig.getoption("--server-insecure"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return CheckConfig(
        server,
        transport,
        username,
        password,
        peer=parse_address(peer_text) if peer_text else None,
        slow=bool(pytestconfig.getoption("--check-slow")),
        ssl_context=context,
        server_hostname=host,
    )


@pytest.mark.parametrize("probe_id", ALL_IDS)
def test_external_server(pytestconfig: pytest.Config, probe_id: str) -> None:
    result = _one(_external(pytestconfig), probe_id)
    print(f"{result.id}: {result.info.level} {result.outcome}: {result.detail}")
    if result.outcome is Outcome.SKIP:
        pytest.skip(f"{result.id}: {result.detail}")
    if result.info.level is Level.MUST:
        assert result.outcome is not Outcome.FAIL, f"{result.id}: {result.detail}"
