"""TURN URIs (RFC 7065 §3.1) and TurnServerConfig.from_uri."""

from __future__ import annotations

import pytest

from anchor_ice.aio.gather import TurnServerConfig
from anchor_stun.errors import LocalProtocolError
from anchor_turn.uri import TurnUri, parse_turn_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("turn:example.org", TurnUri("example.org", 3478, "udp")),
        ("turn:example.org:3479", TurnUri("example.org", 3479, "udp")),
        ("turn:192.0.2.1:3478?transport=udp", TurnUri("192.0.2.1", 3478, "udp")),
        ("turn:192.0.2.1:3478?transport=tcp", TurnUri("192.0.2.1", 3478, "tcp")),
        ("TURN:192.0.2.1?Transport=TCP", TurnUri("192.0.2.1", 3478, "tcp")),
        ("turns:example.org", TurnUri("example.org", 5349, "tls")),
        ("turns:example.org:443", TurnUri("example.org", 443, "tls")),
        ("turns:example.org:443?transport=tcp", TurnUri("example.org", 443, "tls")),
        ("turn:[2001:db8::1]:3478?transport=tcp", TurnUri("2001:db8::1", 3478, "tcp")),
        ("turns:[2001:db8::1]", TurnUri("2001:db8::1", 5349, "tls")),
        ("192.0.2.1:3478", TurnUri("192.0.2.1", 3478, "udp")),  # no scheme: UDP
        ("example.org", TurnUri("example.org", 3478, "udp")),
    ],
)
def test_rfc7065_uris(uri: str, expected: TurnUri) -> None:
    assert parse_turn_uri(uri) == expected
    # the canonical text form parses back to the same server
    assert parse_turn_uri(str(expected)) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "turns:example.org?transport=udp",  # DTLS (RFC 7350): not spoken
        "turn:example.org?transport=sctp",
        "turn:example.org?foo=bar",
        "turn://example.org:3478",
        "stun:example.org",
        "turn:",
        "turn:example.org:0",
        "turn:example.org:70000",
        "turn:2001:db8::1",  # an IPv6 literal needs brackets
        "turn:[2001:db8::1",
        "turn:user@example.org",
    ],
)
def test_bad_uris_are_refused_with_a_reason(uri: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_turn_uri(uri)
    assert str(info.value)


def test_turn_server_config_from_uri() -> None:
    tcp = TurnServerConfig.from_uri("turn:198.51.100.7:3478?transport=tcp", "alice", "secret")
    assert tcp == TurnServerConfig(("198.51.100.7", 3478), "alice", "secret", "tcp")
    assert tcp.uri == "turn:198.51.100.7:3478?transport=tcp"
    tls = TurnServerConfig.from_uri("turns:turn.example.org", "alice", "secret")
    assert (tls.address, tls.transport) == (("turn.example.org", 5349), "tls")
    udp = TurnServerConfig.from_uri("198.51.100.7:3478", "alice", "secret")
    assert udp.transport == "udp" and udp.uri == "turn:198.51.100.7:3478"


def test_a_turn_server_config_does_not_print_its_password() -> None:
    """Configurations end up in logs and tracebacks: their repr leaves the password out."""
    from anchor_ice import TurnServerConfig

    config = TurnServerConfig.from_uri("turns:127.0.0.1:5349", "alice", "s3cret-pw")
    assert "s3cret-pw" not in repr(config) and "s3cret-pw" not in str(config)
    assert config.password == "s3cret-pw"
