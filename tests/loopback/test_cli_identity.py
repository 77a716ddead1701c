"""``anchor keygen`` and ``anchor pipe --identity/--trust/--known-peers`` over
``anchor serve --signal`` (issue 16), as a user runs them."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from anchor_link.identity import load_identity, parse_public
from tests.helpers import ANCHOR, run_anchor
from tests.loopback.test_link import pipe_server

pytestmark = pytest.mark.timeout(120)


def keygen(path: Path) -> str:
    result = run_anchor("keygen", "--out", str(path))
    assert result.returncode == 0, result.stderr
    public = result.stdout.strip().splitlines()[-1]
    parse_public(public)
    return public


def test_keygen_writes_a_private_file_prints_the_public_identity_and_never_overwrites(
    tmp_path: Path,
) -> None:
    path = tmp_path / "me.key"
    public = keygen(path)
    assert public.startswith("anchor1:")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).public_text == public
    before = path.read_bytes()
    again = run_anchor("keygen", "--out", str(path))
    assert again.returncode != 0 and "not overwriting" in again.stderr
    assert again.stdout == "" and path.read_bytes() == before


def _pipes(
    tmp_path: Path, common: list[str], a_args: list[str], b_args: list[str], data: bytes
) -> tuple[subprocess.CompletedProcess[bytes], int, bytes, bytes]:
    """B receives (stdin empty), A sends ``data``; returns A's result, B's status, stdout and
    stderr."""
    (tmp_path / "in").write_bytes(data)
    receiver = subprocess.Popen(
        [*ANCHOR, "pipe", "--name", "B", "--peer", "A", *b_args, *common],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # let B subscribe before A's offer
        with open(tmp_path / "in", "rb") as stdin:
            sender = subprocess.run(
                [*ANCHOR, "pipe", "--name", "A", "--peer", "B", *a_args, *common],
                stdin=stdin, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        out, err = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return sender, receiver.returncode, out, err


def test_pinned_pipes_link_and_a_wrong_pin_fails_naming_authentication(tmp_path: Path) -> None:
    key_a, key_b, key_m = tmp_path / "a.key", tmp_path / "b.key", tmp_path / "m.key"
    pub_a, pub_b, pub_m = keygen(key_a), keygen(key_b), keygen(key_m)
    data = os.urandom(50_000)
    with pipe_server() as common:
        sender, status, out, err = _pipes(
            tmp_path, common,
            ["--identity", str(key_a), "--trust", f"B={pub_b}"],
            ["--identity", str(key_b), "--trust", f"A={pub_a}"],
            data,
        )  # fmt: skip
        assert sender.returncode == 0, sender.stderr
        assert status == 0, err
        assert out == data
        assert b"unverified" not in sender.stderr + err
        # B is someone else now: A, pinning the real B, fails and delivers nothing.
        secret = b"for the real B only " + os.urandom(8).hex().encode()
        sender, status, out, err = _pipes(
            tmp_path, common,
            ["--identity", str(key_a), "--trust", f"B={pub_b}"],
            ["--identity", str(key_m)],
            secret,
        )  # fmt: skip
        assert sender.returncode != 0
        assert b"authentication" in sender.stderr, sender.stderr
        assert pub_m.encode() in sender.stderr  # it says what the impostor proved
        assert b"Traceback" not in sender.stderr
        assert out == b"" and status != 0 and b"authentication" in err


def test_without_trust_the_link_forms_and_stderr_says_unverified(tmp_path: Path) -> None:
    known = tmp_path / "known_peers"
    data = b"hello, unverified world\n"
    with pipe_server() as common:
        sender, status, out, err = _pipes(
            tmp_path, common, ["--known-peers", str(known)], [], data
        )  # fmt: skip
    assert sender.returncode == 0, sender.stderr
    assert status == 0 and out == data
    assert b"A is unverified: it proved anchor1:" in err
    assert b"added to" in sender.stderr and known.read_text().endswith(" B\n")
    # No --identity: the default identity, made on first use in the config dir, said so.
    default = Path(os.environ["XDG_CONFIG_HOME"]) / "anchor" / "identity"
    assert default.exists() and stat.S_IMODE(default.stat().st_mode) == 0o600
