"""``anchor serve --log-format json``: every line on stderr is one JSON object with ``time``,
``level``, ``logger``, ``event``, ``message`` and ``fields`` (issue 21, item 4).

Against real processes on loopback: a TURN server with ``--verbose`` serving ``anchor turn
--peer`` (its start, the allocation's events, its stop after SIGTERM), a server whose Redis
is unreachable (the warning), a mistake on the command line (the error, exit 2). Plus the
formatter and the TURN event names on their own."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anchor_cli.main import build_parser
from anchor_cli.serve import build_config
from anchor_cli.serve_log import JsonLineFormatter, event_fields
from anchor_cli.serve_workers import STOP_GRACE
from anchor_turn.server import AllocationCreatedEvent
from tests.helpers import ANCHOR, LOOPBACK, free_port, run_anchor

KEYS = {"time", "level", "logger", "event", "message", "fields"}


def _parse(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON, each checked for the fields every line carries."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)  # every line parses
        assert set(record) == KEYS, line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert isinstance(record["fields"], dict) and isinstance(record["event"], str), line
        stamp = datetime.datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == datetime.timedelta(0)
        assert record["fields"]["pid"] > 0
        records.append(record)
    return records


class _Server:
    """``anchor serve ARGS`` with stdout read until ``expect`` listening lines and stderr in
    a file; :meth:`stop` sends SIGTERM and returns stderr's records."""

    def __init__(self, tmp: Path, *args: str, expect: int = 1) -> None:
        self.err_path = tmp / f"serve-{free_port()}.err"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [*ANCHOR, "serve", *args], stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        listening = 0
        while listening < expect:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"anchor serve exited: {self.err_path.read_text()}")
            listening += line.startswith("listening ")

    def stop(self) -> list[dict[str, Any]]:
        os.kill(self.proc.pid, signal.SIGTERM)
        assert self.proc.wait(timeout=15) == 0
        return _parse(self.err_path.read_text())


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A UDP echo peer on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            sock.sendto(data, source)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield sock.getsockname()
    stop.set()
    thread.join(2)
    sock.close()


def test_turn_server_events_are_json_lines(tmp_path: Path, echo: tuple[str, int]) -> None:
    port = free_port()
    server = _Server(
        tmp_path, "--listen", f"{LOOPBACK}:{port}", "--user", "alice:secret",
        "--allow-loopback-peers", "--verbose", "--log-format", "json",
    )  # fmt: skip
    result = run_anchor(
        "turn", f"{LOOPBACK}:{port}", "--user", "alice:secret", "--peer",
        f"{echo[0]}:{echo[1]}", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    records = server.stop()
    events = [r["event"] for r in records]
    assert events[0] == "started" and events[-2:] == ["stopping", "stopped"], events
    assert records[0]["fields"]["listeners"] == [f"udp {LOOPBACK}:{port}"]
    for name in ("allocation-created", "permission-created", "channel-bound",
                 "allocation-deleted"):  # fmt: skip
        assert name in events, events
    created = next(r for r in records if r["event"] == "allocation-created")
    assert created["level"] == "info" and created["logger"] == "anchor_cli.serve"
    assert created["fields"]["username"] == "alice"
    assert created["fields"]["relayed_addresses"] == [out["relayed"]]
    assert created["fields"]["client"] == out["mapped"]
    bound = next(r for r in records if r["event"] == "channel-bound")
    assert bound["fields"]["peer"] == f"{echo[0]}:{echo[1]}"
    assert records[-2]["fields"]["allocations"] == 0


def test_warning_of_an_adapter_is_a_json_line(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    port, closed = free_port(), free_port("tcp")
    server = _Server(
        tmp_path, "--listen", f"{LOOPBACK}:{port}", "--user", "alice:secret",
        "--redis", f"redis://{LOOPBACK}:{closed}/0", "--log-format", "json",
    )  # fmt: skip
    result = run_anchor("turn", f"{LOOPBACK}:{port}", "--user", "alice:secret", "--json")
    assert result.returncode == 1  # the shared quota cannot be checked: an error response
    records = server.stop()
    warnings = [r for r in records if r["event"] == "redis-unavailable"]
    assert warnings, records
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["logger"] == "anchor_turn.aio.redis_store"
    assert warnings[0]["fields"]["error"] and warnings[0]["fields"]["failures"] >= 1


def test_a_mistake_is_a_json_error_line() -> None:
    result = run_anchor("serve", "--listen", "not-an-address", "--log-format", "json")
    assert result.returncode == 2
    (record,) = _parse(result.stderr)
    assert record["event"] == "error" and record["level"] == "error"
    assert record["message"].startswith("anchor serve: ") and "not-an-address" in record["message"]


def test_text_is_the_default_and_an_unknown_format_is_a_mistake() -> None:
    result = run_anchor("serve", "--listen", "not-an-address")
    assert result.returncode == 2 and result.stderr.startswith("anchor serve: ")
    result = run_anchor("serve", "--log-format", "xml")
    assert result.returncode == 2
    assert result.stderr.strip() == "anchor serve: --log-format must be one of text, json, not 'xml'"


def test_formatter_fields_exception_and_event_names() -> None:
    formatter = JsonLineFormatter({"pid": 7, "worker": 1})
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "a %s", ("b",), sys.exc_info())
    record.event = "thing-happened"
    record.fields = {"where": ("192.0.2.1", 3478), "many": (("::1", 1),), "blob": b"abc"}
    line = formatter.format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "a b" and parsed["event"] == "thing-happened"
    fields = parsed["fields"]
    assert fields["pid"] == 7 and fields["worker"] == 1
    assert fields["where"] == "192.0.2.1:3478" and fields["many"] == ["[::1]:1"]
    assert fields["blob"] == {"bytes": 3}
    assert "ValueError: boom" in fields["exception"]
    plain = json.loads(formatter.format(logging.LogRecord("y", logging.INFO, "", 1, "m", (), None)))
    assert plain["event"] == "log" and plain["level"] == "info"
    event = AllocationCreatedEvent(
        client=("192.0.2.9", 5000), local=("192.0.2.1", 3478), transport="udp",
        username="u", relayed_addresses=(("192.0.2.1", 50000),), lifetime=600,
    )  # fmt: skip
    assert event_fields(event) == {
        "client": "192.0.2.9:5000", "local": "192.0.2.1:3478", "transport": "udp",
        "username": "u", "relayed_addresses": ["192.0.2.1:50000"], "lifetime": 600,
    }  # fmt: skip


def _documented_unit() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "serve.md").read_text()
    match = re.search(r"## Running under systemd.*?```ini\n(.*?)```", text, re.S)
    assert match is not None, "docs/serve.md has no systemd unit"
    return match.group(1)


def test_documented_systemd_unit(tmp_path: Path) -> None:
    """The unit in docs/serve.md: what the issue asks of it, its ExecStart a valid ``anchor
    serve`` command line, and ``systemd-analyze verify`` without a complaint."""
    unit = _documented_unit()
    keys = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )  # fmt: skip
    assert keys["Restart"] == "on-failure" and int(keys["LimitNOFILE"]) >= 65536
    assert keys.get("DynamicUser") == "yes" or "User" in keys
    assert keys["KillMode"] == "mixed"
    argv = shlex.split(keys["ExecStart"])
    assert argv[1] == "serve"
    args = build_parser().parse_args(argv[1:])
    cfg = build_config(args)
    assert cfg.log_format == "json" and cfg.drain > 0 and cfg.alternates
    assert float(keys["TimeoutStopSec"]) > cfg.drain + STOP_GRACE
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze (Debian package systemd) is not installed")
    path = tmp_path / "anchor-serve.service"
    # verify wants an executable that exists; the command line was checked above.
    path.write_text(unit.replace(argv[0], sys.executable, 1))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(path) not in result.stderr, result.stderr  # "Unknown key", "Failed to parse"
