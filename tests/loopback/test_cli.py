"""The `anchor` command line against its own server, over real loopback sockets."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import anchor_json, anchor_serve, free_port, run_anchor


def test_serve_and_stun_over_udp_tcp_tls_with_nat(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    port = free_port("both")
    tls_port = free_port("both")
    with anchor_serve(
        "--listen", f"127.0.0.1:{port}", "--alt-ip", "127.0.0.2", "--tcp",
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-listen", f"127.0.0.1:{tls_port}",
        expect=6,
    ) as lines:
        assert f"listening udp 127.0.0.1:{port}" in lines
        assert f"listening udp 127.0.0.2:{port + 1}" in lines
        assert f"listening tcp 127.0.0.1:{port}" in lines
        assert f"listening tls 127.0.0.1:{tls_port}" in lines
        udp = anchor_json("stun", f"127.0.0.1:{port}", "--nat")
        assert udp["mapped"].startswith("127.0.0.1:") and udp["rtt_ms"] >= 0
        assert udp["nat"] == {"mapping": "endpoint-independent",
                              "filtering": "endpoint-independent"}
        tcp = anchor_json("stun", f"127.0.0.1:{port}", "--transport", "tcp")
        assert tcp["mapped"].startswith("127.0.0.1:") and "nat" not in tcp
        tls = anchor_json("stun", f"127.0.0.1:{tls_port}", "--transport", "tls",
                          "--ca-file", str(cert))
        assert tls["mapped"].startswith("127.0.0.1:")
        untrusted = run_anchor("stun", f"127.0.0.1:{tls_port}", "--transport", "tls")
        assert untrusted.returncode != 0 and "Traceback" not in untrusted.stderr
        assert "certificate" in untrusted.stderr.lower()


def test_user_mistakes_are_one_line_errors() -> None:
    for args in (["stun", "127.0.0.1:99999"], ["stun", "[::1"], ["stun", "127.0.0.1", "--nat",
                 "--transport", "tcp"], ["serve", "--listen", "127.0.0.1:x"],
                 ["serve", "--tls-cert", "/nonexistent"]):
        result = run_anchor(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    refused = run_anchor("stun", "no-such-host.invalid")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


def test_stun_to_a_closed_port_fails_at_once_naming_the_address() -> None:
    """Not the 39.5 s of RFC 8489 retransmissions: the ICMP error ends it (the test's own
    timeout, far below 39.5 s, is what would catch a regression)."""
    port = free_port("both")
    for transport in ("udp", "tcp"):
        result = run_anchor("stun", f"127.0.0.1:{port}", "--transport", transport, timeout=20)
        assert result.returncode == 1, result.stderr
        assert f"127.0.0.1:{port} unreachable" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_stun_timeout_option() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = run_anchor("stun", f"127.0.0.1:{port}", "--timeout", "0.5", timeout=20)
    assert result.returncode == 1 and "within 0.5 s" in result.stderr, result.stderr
    bad = run_anchor("stun", "127.0.0.1", "--timeout", "-1")
    assert bad.returncode == 2 and "--timeout" in bad.stderr


def test_turn_uri_mistakes_are_one_line_usage_errors(tmp_path: Path) -> None:
    """--turn takes RFC 7065 URIs on ice, pipe and demo: a bad one, DTLS, a missing --user or
    an unreadable --ca-file is one line on stderr and exit 2, before anything is started."""
    pipe = ["pipe", "--signal", "ws://127.0.0.1:9", "--name", "a", "--peer", "b"]
    ice = ["ice", "--controlling", "--host-ip", "127.0.0.1"]
    for base in (pipe, ice, ["demo"]):
        for extra, words in (
            (["--turn", "turns:127.0.0.1?transport=udp", "--user", "a:b"], "DTLS"),
            (["--turn", "turn://127.0.0.1:3478", "--user", "a:b"], "turn URI"),
            (["--turn", "turn:127.0.0.1?transport=sctp", "--user", "a:b"], "transport"),
            (["--turn", "turns:127.0.0.1"], "--user"),
            (["--turn", "turns:127.0.0.1", "--user", "a:b", "--ca-file",
              str(tmp_path / "missing.pem")], "ca-file"),
        ):
            result = run_anchor(*base, *extra)
            assert result.returncode == 2, (base, extra, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert words.lower() in lines[0].lower(), (extra, lines)


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    result = run_anchor("--version")
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"anchor {version('anchor-nat')}"
