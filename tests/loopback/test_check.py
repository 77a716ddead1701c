"""``anchor check``: the report model, the probes against servers started here, the command.

Servers, all on loopback and started by the tests:

- the Anchor TURN core served in-process by :class:`TurnServerRunner` (loopback peers
  allowed), configured right or deliberately wrong (lifetimes, permission lifetime);
- :class:`BrokenStun`, a small UDP responder that answers every request with a success and
  can be told to skip FINGERPRINT checks, to ignore unknown comprehension-required
  attributes, or to claim RFC 5780 without honouring it: the check must name exactly the
  requirements it breaks;
- ``anchor serve`` as a subprocess, for the command line (JSON shape, exit status).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from anchor_stun.attributes import (
    Family,
    OtherAddress,
    UnknownAttributes,
    XorMappedAddress,
)
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.message import Message, MessageClass
from anchor_stun.server import StunServer
from anchor_turn.aio.check import (
    PROBES,
    CheckConfig,
    CheckError,
    probe_ids,
    run_check,
    select_probes,
)
from anchor_turn.aio.server import TurnServerRunner, UdpRelayAllocator
from anchor_turn.auth import StaticUsers
from anchor_turn.check import (
    Level,
    Outcome,
    ProbeInfo,
    ProbeResult,
    check_passed,
    rest_credentials,
    summary,
)
from anchor_turn.server import TurnServer
from tests.helpers import anchor_serve, free_port, run_anchor

REALM = "example.org"
USER, PASSWORD = "alice", "secret"
JSON_KEYS = {"id", "requirement", "rfc", "level", "result", "detail"}

#: What the issue asks the battery to cover, at least.
REQUIRED_PROBES = {
    "stun.binding",
    "stun.binding-fingerprint",
    "stun.unknown-required",
    "stun.bad-fingerprint",
    "stun.rfc5780",
    "stun.rfc5780-change-request",
    "turn.auth-challenge",
    "turn.wrong-password",
    "turn.stale-nonce",
    "turn.password-algorithms",
    "turn.allocate",
    "turn.refresh",
    "turn.lifetime",
    "turn.create-permission",
    "turn.channel-bind",
    "turn.channel-bind-invalid",
    "turn.send-data",
    "turn.channel-data",
    "turn.permission-expiry",
    "turn.allocation-mismatch",
    "turn.unsupported-transport",
    "turn.release",
    "turn.peer-loopback",
}


def failed(results: list[ProbeResult]) -> set[str]:
    return {r.id for r in results if r.outcome is Outcome.FAIL}


def by_id(results: list[ProbeResult]) -> dict[str, ProbeResult]:
    return {r.id: r for r in results}


# --------------------------------------------------------------------------- model


def _result(level: Level, outcome: Outcome) -> ProbeResult:
    return ProbeResult(ProbeInfo("turn.x", "req", "RFC 8656 §1", level, "turn"), outcome, "d")


def test_json_shape_is_the_contract() -> None:
    data = _result(Level.MUST, Outcome.PASS).to_json()
    assert data == {
        "id": "turn.x",
        "requirement": "req",
        "rfc": "RFC 8656 §1",
        "level": "MUST",
        "result": "pass",
        "detail": "d",
    }


def test_only_a_failed_must_fails_the_check() -> None:
    assert check_passed([_result(Level.MUST, Outcome.PASS), _result(Level.MUST, Outcome.SKIP)])
    assert check_passed([_result(Level.SHOULD, Outcome.FAIL), _result(Level.INFO, Outcome.FAIL)])
    assert check_passed([_result(Level.SHOULD, Outcome.FINDING)])
    assert not check_passed([_result(Level.MUST, Outcome.FAIL), _result(Level.MUST, Outcome.PASS)])
    counts = summary([_result(Level.MUST, Outcome.FAIL), _result(Level.INFO, Outcome.FINDING)])
    assert counts["fail"] == 1 and counts["finding"] == 1 and counts["must_failed"] == 1
    assert counts["total"] == 2


def test_rest_credentials_follow_coturn_scheme() -> None:
    username, password = rest_credentials("s3cret", 1_700_000_000.5, ttl=60)
    assert username == "1700000060:anchor-check"
    mac = hmac.digest(b"s3cret", username.encode(), "sha1")
    assert password == base64.b64encode(mac).decode()


def test_probe_registry() -> None:
    ids = probe_ids()
    assert len(ids) == len(set(ids)), "probe ids are unique"
    assert REQUIRED_PROBES <= set(ids)
    for probe in PROBES:
        assert probe.info.id.startswith(f"{probe.info.group}.")
        assert probe.info.rfc.startswith("RFC")
        assert probe.info.requirement and probe.info.level in Level
    assert all(p.info.group == "stun" for p in select_probes("stun"))
    assert all(p.info.group == "turn" for p in select_probes("turn"))
    assert [p.info.id for p in select_probes(ids=["turn.release"])] == ["turn.release"]
    with pytest.raises(ValueError):
        select_probes(ids=["no.such-probe"])
    assert [p.info.id for p in PROBES if p.info.slow] == ["turn.permission-expiry"]


# --------------------------------------------------------------------------- servers


def _core(port: int, **options: Any) -> TurnServer:
    allocator = UdpRelayAllocator(["127.0.0.1"], min_port=20000, max_port=32000)
    return TurnServer(
        realm=REALM,
        auth=StaticUsers({USER: PASSWORD}, realm=REALM),
        relay=allocator,
        stun=StunServer(primary=("127.0.0.1", port)),
        address_families=(Family.IPV4,),
        **{"allow_loopback_peers": True, **options},
    )


@contextlib.asynccontextmanager
async def anchor_turn(**options: Any) -> AsyncIterator[tuple[str, int]]:
    """The Anchor TURN core on a loopback port (UDP and TCP), in-process."""
    port = free_port("both")
    runner = TurnServerRunner(_core(port, **options), tcp=[("127.0.0.1", port)])
    await runner.start()
    try:
        yield ("127.0.0.1", port)
    finally:
        runner.close()
        await runner.wait_closed()


class BrokenStun:
    """A UDP responder that answers every STUN request with a success carrying
    XOR-MAPPED-ADDRESS and FINGERPRINT, in a thread. By default it checks nothing;
    ``check_fingerprint`` makes it drop requests whose FINGERPRINT does not verify,
    ``reject_unknown`` answer 420 to unknown comprehension-required attributes, and
    ``claim_5780`` add an OTHER-ADDRESS it does not serve (no RESPONSE-ORIGIN, and
    CHANGE-REQUEST is ignored)."""

    def __init__(
        self,
        *,
        check_fingerprint: bool = False,
        reject_unknown: bool = False,
        claim_5780: bool = False,
    ) -> None:
        self.check_fingerprint = check_fingerprint
        self.reject_unknown = reject_unknown
        self.claim_5780 = claim_5780
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address: tuple[str, int] = self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> BrokenStun:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            answer = self._answer(data, addr)
            if answer is not None:
                self.sock.sendto(answer, addr)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        try:
            msg = Message.decode(data)
        except DecodeError:
            return None
        if msg.msg_class != MessageClass.REQUEST:
            return None
        if self.check_fingerprint and msg.fingerprint is not None and not msg.verify_fingerprint():
            return None
        unknown = msg.unknown_required()
        if self.reject_unknown and unknown:
            response = msg.error_response(420, attributes=[UnknownAttributes(tuple(unknown))])
            return response.encode(fingerprint=True)
        response = msg.response([XorMappedAddress(addr[0], addr[1])])
        if self.claim_5780:
            response.add(OtherAddress("127.0.0.2", self.address[1] + 1))
        return response.encode(fingerprint=True)


@contextlib.contextmanager
def broken_stun(**flags: bool) -> Iterator[tuple[str, int]]:
    with BrokenStun(**flags) as server:
        yield server.address


def _config(server: tuple[str, int], **options: Any) -> CheckConfig:
    options.setdefault("username", USER)
    options.setdefault("password", PASSWORD)
    return CheckConfig(server, **options)


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_every_must_passes_against_the_anchor_core(transport: str) -> None:
    async def main() -> list[ProbeResult]:
        async with anchor_turn() as server:
            return await run_check(_config(server, transport=transport))

    results = asyncio.run(main())
    assert failed(results) == set(), [r.to_json() for r in results if r.outcome is Outcome.FAIL]
    assert check_passed(results)
    got = by_id(results)
    assert got["turn.peer-loopback"].outcome is Outcome.FINDING  # allowed here, and said so
    assert got["turn.peer-private"].outcome is Outcome.PASS
    assert got["turn.password-algorithms"].outcome is Outcome.PASS  # SHA-256 offered
    assert "SHA-256" in got["turn.allocate"].detail
    assert got["turn.send-data"].outcome is Outcome.PASS
    assert got["turn.channel-data"].outcome is Outcome.PASS
    assert got["turn.permission-expiry"].outcome is Outcome.SKIP  # not --slow
    assert got["stun.rfc5780"].outcome is Outcome.FINDING
    for result in results:
        assert set(result.to_json()) == JSON_KEYS
        assert result.seconds < 5


def test_without_credentials_turn_probes_skip_but_auth_probes_run() -> None:
    async def main() -> list[ProbeResult]:
        async with anchor_turn() as server:
            return await run_check(CheckConfig(server))

    got = by_id(asyncio.run(main()))
    assert got["turn.auth-challenge"].outcome is Outcome.PASS
    assert got["turn.wrong-password"].outcome is Outcome.PASS
    assert got["turn.allocate"].outcome is Outcome.SKIP
    assert "--user" in got["turn.allocate"].detail
    assert not failed(list(got.values()))


def test_wrong_credentials_fail_allocate_and_skip_the_rest() -> None:
    async def main() -> list[ProbeResult]:
        async with anchor_turn() as server:
            return await run_check(_config(server, password="not-the-password", only="turn"))

    results = asyncio.run(main())
    assert failed(results) == {"turn.allocate"}
    got = by_id(results)
    assert "401" in got["turn.allocate"].detail
    assert got["turn.refresh"].outcome is Outcome.SKIP
    assert got["turn.wrong-password"].outcome is Outcome.PASS


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, {"stun.unknown-required", "stun.bad-fingerprint"}),
        ({"reject_unknown": True}, {"stun.bad-fingerprint"}),
        ({"check_fingerprint": True}, {"stun.unknown-required"}),
        ({"check_fingerprint": True, "reject_unknown": True}, set()),
        (
            {"check_fingerprint": True, "reject_unknown": True, "claim_5780": True},
            {"stun.rfc5780-response-origin", "stun.rfc5780-change-request"},
        ),
    ],
)
def test_a_broken_stun_server_fails_exactly_the_broken_requirements(
    flags: dict[str, bool], expected: set[str]
) -> None:
    with broken_stun(**flags) as server:
        results = asyncio.run(run_check(CheckConfig(server, only="stun", quiet=0.3)))
    assert failed(results) == expected, [r.to_json() for r in results]
    assert check_passed(results) == (not expected)
    assert all(r.info.group == "stun" for r in results)


def test_a_lifetime_policy_outside_the_rfc_fails_a_should_only() -> None:
    async def main() -> list[ProbeResult]:
        async with anchor_turn(default_lifetime=60, max_lifetime=7200) as server:
            return await run_check(_config(server), ids=["turn.allocate", "turn.lifetime"])

    results = asyncio.run(main())
    assert failed(results) == {"turn.lifetime"}
    detail = by_id(results)["turn.lifetime"].detail
    assert "granted 60 s" in detail and "granted 7200 s" in detail
    assert check_passed(results)  # a SHOULD does not fail the check


class _DropsDontFragmentSends(TurnServer):
    """Accepts DONT-FRAGMENT in an Allocate but drops the Send indications carrying it."""

    def _relay_to_peer(self, *args: Any) -> None:
        if not args[-1]:
            super()._relay_to_peer(*args)


class _RefusesDontFragmentWrongly(TurnServer):
    """Answers 420 to DONT-FRAGMENT without listing it (it names another type)."""

    def _unknown(self, msg: Message) -> list[int]:
        return [0x7FF0 if t == 0x001A else t for t in super()._unknown(msg)]


@pytest.mark.parametrize(
    ("options", "cls", "outcome", "words"),
    [
        ({}, TurnServer, Outcome.PASS, "supported"),  # Linux: the relay sets DF
        ({"dont_fragment": False}, TurnServer, Outcome.PASS, "not supported: 420"),
        ({}, _DropsDontFragmentSends, Outcome.FAIL, "carrying it: the peer never received"),
        ({"dont_fragment": False}, _RefusesDontFragmentWrongly, Outcome.FAIL, "listed: 0x7ff0"),
    ],
)
def test_dont_fragment_supported_or_refused_as_unknown(
    options: dict[str, Any], cls: type[TurnServer], outcome: Outcome, words: str
) -> None:
    """RFC 8656 §7.2 step 4: success or 420 listing DONT-FRAGMENT are both compliant; a
    server that accepts it must then relay the Send indications carrying it (§11.2)."""

    async def main() -> list[ProbeResult]:
        port = free_port("both")
        allocator = UdpRelayAllocator(
            ["127.0.0.1"], min_port=20000, max_port=32000, **options
        )
        core = cls(
            realm=REALM,
            auth=StaticUsers({USER: PASSWORD}, realm=REALM),
            relay=allocator,
            stun=StunServer(primary=("127.0.0.1", port)),
            address_families=(Family.IPV4,),
            allow_loopback_peers=True,
        )
        runner = TurnServerRunner(core)
        await runner.start()
        try:
            return await run_check(_config(server=("127.0.0.1", port)), ids=["turn.dont-fragment"])
        finally:
            runner.close()
            await runner.wait_closed()

    (result,) = asyncio.run(main())
    assert result.info.level is Level.MUST
    assert result.outcome is outcome and words in result.detail, result.detail
    if outcome is Outcome.PASS and not options:
        assert "was relayed and echoed" in result.detail


@pytest.mark.parametrize(("strict", "outcome"), [(False, Outcome.FINDING), (True, Outcome.PASS)])
def test_the_rfc5766_channel_range_is_a_finding(strict: bool, outcome: Outcome) -> None:
    """The server's default (RFC 5766's 0x4000-0x7FFF) is reported as a finding about the
    server, not as a failed MUST; ``strict_channels`` passes the SHOULD."""

    async def main() -> list[ProbeResult]:
        async with anchor_turn(strict_channels=strict) as server:
            return await run_check(
                _config(server), ids=["turn.channel-bind-invalid", "turn.channel-bind-range"]
            )

    results = asyncio.run(main())
    got = by_id(results)
    assert got["turn.channel-bind-invalid"].outcome is Outcome.PASS
    assert got["turn.channel-bind-range"].outcome is outcome
    assert got["turn.channel-bind-range"].info.level is Level.SHOULD
    assert check_passed(results)


def test_loopback_peers_refused_by_default() -> None:
    async def main() -> list[ProbeResult]:
        async with anchor_turn(allow_loopback_peers=False) as server:
            return await run_check(_config(server, only="turn"))

    results = asyncio.run(main())
    got = by_id(results)
    assert got["turn.peer-loopback"].outcome is Outcome.PASS
    assert "403" in got["turn.peer-loopback"].detail
    # the loopback echo is refused: round trips are skipped, permission probes fall back
    assert got["turn.send-data"].outcome is Outcome.SKIP
    assert got["turn.create-permission"].outcome is Outcome.PASS
    assert "192.0.2.1" in got["turn.create-permission"].detail
    assert not failed(results)


@pytest.mark.parametrize(("server_lifetime", "outcome"), [(1.0, Outcome.PASS), (600, Outcome.FAIL)])
def test_permission_expiry_with_slow(server_lifetime: float, outcome: Outcome) -> None:
    """A 1 s permission lifetime on both sides stands for RFC 8656's 300 s; a server whose
    permissions outlive it is caught."""

    async def main() -> list[ProbeResult]:
        async with anchor_turn(permission_lifetime=server_lifetime) as server:
            config = _config(server, slow=True, permission_lifetime=1.0)
            return await run_check(config, ids=["turn.permission-expiry"])

    (result,) = asyncio.run(main())
    assert result.outcome is outcome, result.detail


def test_unreachable_server_is_a_check_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        silent = sock.getsockname()  # bound but never answering
        with pytest.raises(CheckError, match="no answer"):
            asyncio.run(run_check(CheckConfig(silent, timeout=0.3)))


def test_a_closed_port_ends_the_check_at_once_naming_it() -> None:
    """Issue 23 item 2: the ICMP port unreachable of the server's host ends the check's first
    transaction at once (the timeout here is 30 s, the RFC's retransmissions 39.5 s), and the
    error says unreachable, not "no answer"; the command line says so in one line."""
    closed = free_port("udp")
    with pytest.raises(CheckError, match=f"127.0.0.1:{closed} unreachable"):
        asyncio.run(asyncio.wait_for(run_check(CheckConfig(("127.0.0.1", closed), timeout=30)), 10))
    result = run_anchor("check", f"127.0.0.1:{closed}", "--timeout", "30", timeout=10)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"anchor check: 127.0.0.1:{closed} unreachable (Connection refused) over udp"
    ]


def test_check_config_reads_ip_port_text_and_refuses_what_it_cannot_use() -> None:
    """"ip:port" is an address, never a sequence of characters (the issue 23 bug: host "1",
    port "2"); the rest is refused where it enters, naming the field."""
    assert CheckConfig("127.0.0.1:45678").server == ("127.0.0.1", 45678)  # type: ignore[arg-type]
    assert CheckConfig(("::1", 3478), peer="[::1]:7").peer == ("::1", 7)  # type: ignore[arg-type]
    for options, names in (
        ({"server": ("127.0.0.1", 0)}, "CheckConfig server"),
        ({"server": "localhost:3478"}, "CheckConfig server must be an IP address"),
        ({"peer": ("127.0.0.1", "7")}, "CheckConfig peer"),
        ({"transport": "quic"}, "CheckConfig transport"),
        ({"username": "alice"}, "CheckConfig username and password"),
        ({"username": "", "password": "p"}, "CheckConfig username"),
        ({"only": "ice"}, "CheckConfig only"),
        ({"timeout": 0}, "CheckConfig timeout"),
    ):
        options.setdefault("server", ("127.0.0.1", 3478))
        with pytest.raises(LocalProtocolError, match=re.escape(names)):
            CheckConfig(**options)
    with pytest.raises(TypeError, match="CheckConfig"):
        asyncio.run(run_check("127.0.0.1:3478"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- command line


def test_cli_json_against_anchor_serve() -> None:
    port = free_port("both")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--realm", REALM, "--user", f"{USER}:{PASSWORD}",
        "--allow-loopback-peers",
    ):  # fmt: skip
        result = run_anchor("check", f"127.0.0.1:{port}", "--user", f"{USER}:{PASSWORD}", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(rows, list) and len(rows) == len(PROBES)
    assert all(set(row) == JSON_KEYS for row in rows)
    assert [row["id"] for row in rows] == probe_ids()
    assert all(row["result"] != "fail" for row in rows if row["level"] == "MUST")


def test_cli_exit_status_and_report_against_a_broken_server() -> None:
    with broken_stun() as server:
        where = f"{server[0]}:{server[1]}"
        as_json = run_anchor("check", where, "--only", "stun", "--json")
        text = run_anchor("check", where, "--only", "stun")
    assert as_json.returncode == 1, as_json.stderr
    rows = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert {row["id"] for row in rows if row["result"] == "fail"} == {
        "stun.unknown-required",
        "stun.bad-fingerprint",
    }
    assert all(row["id"].startswith("stun.") for row in rows)
    assert text.returncode == 1
    assert "stun.bad-fingerprint" in text.stdout and "FAIL" in text.stdout
    assert "Traceback" not in text.stderr


def test_cli_mistakes_are_one_line() -> None:
    bad_user = run_anchor("check", "127.0.0.1:3478", "--user", "nopassword")
    assert bad_user.returncode == 2
    assert bad_user.stderr.strip().splitlines() == ["anchor check: --user must be NAME:PASSWORD"]
    bad_address = run_anchor("check", "127.0.0.1:notaport")
    assert bad_address.returncode == 2 and len(bad_address.stderr.strip().splitlines()) == 1
    both = run_anchor("check", "127.0.0.1:3478", "--user", "a:b", "--static-auth-secret", "s")
    assert both.returncode == 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        silent = run_anchor("check", f"127.0.0.1:{port}", "--timeout", "0.3")
    assert silent.returncode == 1
    assert silent.stderr.strip().splitlines() == [
        f"anchor check: no answer from 127.0.0.1:{port} over udp within 0.3 s"
    ]



def test_cli_without_credentials_says_turn_was_not_tested_within_80_columns() -> None:
    """No credentials: the report and the exit status (3) say TURN was not tested; the same
    server with ``--only stun`` passes (0). At 80 columns no line is longer and every
    requirement's words are whole (wrapped at word boundaries, never mid-word)."""
    port = free_port("both")
    with anchor_serve("--listen", f"127.0.0.1:{port}", "--realm", REALM,
                      "--user", f"{USER}:{PASSWORD}"):  # fmt: skip
        text = run_anchor("check", f"127.0.0.1:{port}")
        stun_only = run_anchor("check", f"127.0.0.1:{port}", "--only", "stun")
    assert text.returncode == 3, text.stdout + text.stderr
    assert stun_only.returncode == 0, stun_only.stdout
    assert "NOT TESTED: TURN (needs credentials" in " ".join(text.stdout.split())
    lines = text.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    words = set(" ".join(lines).split())
    for probe in PROBES:
        assert set(probe.info.requirement.split()) <= words, probe.info.id
    # and --help says what the distinct status means
    usage = " ".join(run_anchor("check", "--help").stdout.split())
    assert "3 when an area could not be tested" in usage, usage
