"""Candidate priorities, pair priorities, foundations and SDP lines (RFC 8445 §5.1, RFC 8839)."""

import pytest

from anchor_ice.candidate import (
    Candidate,
    CandidateError,
    CandidateType,
    candidate_priority,
    compute_foundation,
    make_candidate,
    pair_priority,
)


def test_priority_formula() -> None:
    # RFC 8445 §5.1.2.1 with the recommended type preferences, component 1.
    assert candidate_priority("host") == (126 << 24) + (65535 << 8) + 255 == 2130706431
    assert candidate_priority("srflx") == 1694498815
    assert candidate_priority("prflx") == 1862270975
    assert candidate_priority("relay", component=2) == (65535 << 8) + 254


def test_pair_priority_formula() -> None:
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    assert pair_priority(5, 5) == (5 << 32) + 10


def test_foundation_groups_like_the_rfc() -> None:
    a = compute_foundation("srflx", "10.0.0.1", "udp", "192.0.2.1")
    assert a == compute_foundation("srflx", "10.0.0.1", "UDP", "192.0.2.1")
    assert a != compute_foundation("srflx", "10.0.0.1", "udp", "192.0.2.2")
    assert a != compute_foundation("host", "10.0.0.1", "udp")


def test_sdp_round_trip_with_related_address_and_extensions() -> None:
    line = ("a=candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx "
            "raddr 10.0.0.2 rport 61665 generation 0 ufrag abcd network-cost 999")
    cand = Candidate.from_sdp(line)
    assert cand.type is CandidateType.SRFLX and cand.address == ("203.0.113.7", 61665)
    assert (cand.related_ip, cand.related_port) == ("10.0.0.2", 61665)
    assert cand.extensions == (("generation", "0"), ("ufrag", "abcd"), ("network-cost", "999"))
    assert Candidate.from_sdp(cand.to_sdp()) == cand
    assert cand.to_sdp().startswith("candidate:842163049 1 UDP 1677729535")


def test_libnice_and_tcp_lines() -> None:
    nice = Candidate.from_sdp("a=candidate:1 1 UDP 2015363327 127.0.0.1 47251 typ host")
    assert nice.is_host and nice.transport == "udp" and nice.family == 4
    tcp = Candidate.from_sdp("candidate:2 1 TCP 1015021823 ::1 9 typ host tcptype active")
    assert tcp.tcptype == "active" and tcp.transport == "tcp" and tcp.family == 6
    mdns = Candidate.from_sdp("candidate:3 1 udp 2113937151 f00.local 5000 typ host")
    assert mdns.is_mdns and mdns.family == 0


@pytest.mark.parametrize("bad", [
    "candidate:1 1 udp 1 127.0.0.1 5000",
    "candidate:1 1 udp 1 127.0.0.1 5000 type host",
    "candidate:1 1 udp x 127.0.0.1 5000 typ host",
    "candidate:1 0 udp 1 127.0.0.1 5000 typ host",
    "candidate:1 1 udp 1 127.0.0.1 70000 typ host",
    "candidate:1 1 udp 1 127.0.0.1 5000 typ bogus",
    "candidate:1 1 udp 1 127.0.0.1 5000 typ srflx raddr",
    "candidate:1 1 udp 1 127.0.0.1 5000 typ srflx rport x",
    "a=ice-ufrag:abcd",
    "candidate:1 1 udp 1 127.0.0.1 5000 typ srflx rport \u00b2",
    "candidate:1 1 udp \u0665 127.0.0.1 5000 typ host",
])
def test_malformed_lines_raise_candidate_error(bad: str) -> None:
    with pytest.raises(CandidateError):
        Candidate.from_sdp(bad)


def test_make_candidate_fills_priority_and_foundation() -> None:
    relay = make_candidate("relay", ("192.0.2.9", 50000), base=("10.0.0.2", 4000),
                           related=("203.0.113.7", 61665), server_ip="192.0.2.9")
    assert relay.priority == candidate_priority("relay")
    assert relay.foundation == compute_foundation("relay", "10.0.0.2", "udp", "192.0.2.9")
    assert relay.related_ip == "203.0.113.7"
