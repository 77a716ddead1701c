"""ICE attributes of session descriptions: our lines, libnice's, a browser's (RFC 8839, 8840)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_ice.candidate import Candidate, CandidateError, CandidateType, make_candidate
from anchor_ice.sdp import IceDescription, SdpError, parse, validate_pwd, validate_ufrag
from anchor_stun.errors import DecodeError, LocalProtocolError

UFRAG = "Fw2R"
PWD = "0Ea5aGCj3Q8tFJ1wQxqgLh"


def _candidates() -> list[Candidate]:
    host = make_candidate("host", ("192.0.2.2", 47877))
    srflx = make_candidate(
        "srflx", ("203.0.113.7", 61000), base=host.address, related=host.address,
        server_ip="198.51.100.1",
    )
    relay = make_candidate(
        "relay", ("198.51.100.9", 50112), base=("198.51.100.9", 50112), related=srflx.address,
        server_ip="198.51.100.9",
    )
    return [host, srflx, relay]


# ----------------------------------------------------------------------------- our format


def test_our_lines_and_their_round_trip() -> None:
    host, srflx, relay = _candidates()
    desc = IceDescription(UFRAG, PWD, [host, srflx, relay], ice_options=("trickle", "ice2"))
    lines = desc.to_lines()
    assert lines == [
        "m=- 50112 ICE/SDP",  # RFC 8839 §4.2.1.2: the relayed candidate is the default
        "c=IN IP4 198.51.100.9",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        "a=ice-options:trickle ice2",
        "a=" + host.to_sdp(),
        "a=" + srflx.to_sdp(),
        "a=" + relay.to_sdp(),
    ]
    assert desc.to_text() == "\n".join(lines) + "\n"
    assert desc.candidates == (host, srflx, relay)  # stored as a tuple
    parsed = parse(desc.to_text())
    assert parsed == dataclasses.replace(desc, port=50112, address="198.51.100.9")
    assert parse(desc.to_text("\r\n")) == parsed  # CRLF, as in a full SDP body
    assert IceDescription.parse(desc.to_text()) == parsed


def test_default_destination() -> None:
    host, srflx, relay = _candidates()
    assert IceDescription(UFRAG, PWD, [host]).default_destination == ("192.0.2.2", 47877)
    assert IceDescription(UFRAG, PWD, [host, srflx]).default_destination == srflx.address
    # no candidate yet (trickle): 0.0.0.0 and the discard port (RFC 8840)
    empty = IceDescription(UFRAG, PWD)
    assert empty.default_destination == ("0.0.0.0", 9)
    assert empty.to_lines()[:2] == ["m=- 9 ICE/SDP", "c=IN IP4 0.0.0.0"]
    # explicit values win; IPv6 gets an IP6 c= line
    v6 = IceDescription(UFRAG, PWD, [relay], port=4000, address="2001:db8::1")
    assert v6.to_lines()[:2] == ["m=- 4000 ICE/SDP", "c=IN IP6 2001:db8::1"]
    # only component 1 counts
    rtcp = dataclasses.replace(host, component=2)
    assert IceDescription(UFRAG, PWD, [rtcp]).default_candidate() is None


def test_ice_lite_pacing_and_end_of_candidates() -> None:
    (host, *_) = _candidates()
    desc = IceDescription(UFRAG, PWD, [host], lite=True, end_of_candidates=True, pacing=20)
    lines = desc.to_lines()
    # ice-lite and ice-pacing are session-level (RFC 8839 §5.3, §5.5): before the m= line
    assert lines[:3] == ["a=ice-lite", "a=ice-pacing:20", "m=- 47877 ICE/SDP"]
    assert lines[-1] == "a=end-of-candidates"
    parsed = parse(desc.to_text())
    assert parsed.lite and parsed.end_of_candidates and parsed.pacing == 20
    assert parsed.candidates == (host,)
    plain = parse(IceDescription(UFRAG, PWD, [host]).to_text())
    assert not plain.lite and not plain.end_of_candidates and plain.pacing is None


def test_end_of_candidates_alone_after_trickling() -> None:
    # RFC 8838: the last trickled "candidate" is only the end marker
    text = f"a=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\na=end-of-candidates\n"
    desc = parse(text)
    assert desc.end_of_candidates and desc.candidates == ()
    assert desc.port is None and desc.address is None


def test_bare_lines_without_m_line() -> None:
    # what a browser's RTCIceCandidate.candidate holds, pasted under the credentials
    text = (
        f"a=ice-ufrag:{UFRAG}\n"
        f"a=ice-pwd:{PWD}\n"
        "candidate:1 1 udp 2122260223 192.0.2.2 5000 typ host\n"
        "a=candidate:2 1 udp 1686052607 203.0.113.7 5001 typ srflx raddr 192.0.2.2 rport 5000\n"
    )
    desc = parse(text)
    assert [c.type for c in desc.candidates] == [CandidateType.HOST, CandidateType.SRFLX]


# ----------------------------------------------------------------------------- libnice

# nice_agent_generate_local_sdp() of libnice 0.1.21 (RFC5245 compatibility, regular
# nomination) on a machine with eth0 = 192.0.2.2/24, fd00::2/64, fe80::fc:ff:fe00:1/64.
# libnice writes "c=IN IP4" whatever the family and ends every line with "\n".
LIBNICE_HOSTS = (
    "m=- 47877 ICE/SDP\n"
    "c=IN IP4 192.0.2.2\n"
    "a=ice-ufrag:QDu6\n"
    "a=ice-pwd:/tv9O410j46ykywQJt3wy1\n"
    "a=candidate:1 1 UDP 2015363327 192.0.2.2 47877 typ host\n"
    "a=candidate:2 1 UDP 2015363583 fd00::2 60359 typ host\n"
    "a=candidate:3 1 UDP 2015363839 fe80::fc:ff:fe00:1 48214 typ host\n"
)
# The same with two components (RTP and RTCP): the second port goes into a=rtcp.
LIBNICE_TWO_COMPONENTS = (
    "m=- 40153 ICE/SDP\n"
    "c=IN IP4 127.0.0.1\n"
    "a=rtcp:45740\n"
    "a=ice-ufrag:dZ5H\n"
    "a=ice-pwd:6HOzIXhqFybWl09VuTXWaS\n"
    "a=candidate:1 1 UDP 2015364095 127.0.0.1 40153 typ host\n"
    "a=candidate:1 2 UDP 2015364094 127.0.0.1 45740 typ host\n"
)
# Gathering on loopback with a coturn relay (set_relay_info): the relayed candidate is the
# default one, its raddr/rport is the host base.
LIBNICE_RELAY = (
    "m=- 50814 ICE/SDP\n"
    "c=IN IP4 127.0.0.1\n"
    "a=ice-ufrag:KihH\n"
    "a=ice-pwd:Rd+0UwaTYC+5EtzagdGodD\n"
    "a=candidate:1 1 UDP 2015364095 127.0.0.1 46776 typ host\n"
    "a=candidate:3 1 UDP 505414655 127.0.0.1 50814 typ relay raddr 127.0.0.1 rport 46776\n"
)


def test_libnice_generate_local_sdp() -> None:
    desc = parse(LIBNICE_HOSTS)
    assert (desc.ufrag, desc.pwd) == ("QDu6", "/tv9O410j46ykywQJt3wy1")
    assert (desc.media, desc.port, desc.address) == ("-", 47877, "192.0.2.2")
    assert [(c.ip, c.port, c.priority) for c in desc.candidates] == [
        ("192.0.2.2", 47877, 2015363327),
        ("fd00::2", 60359, 2015363583),
        ("fe80::fc:ff:fe00:1", 48214, 2015363839),
    ]
    assert all(c.is_host and c.transport == "udp" for c in desc.candidates)
    assert [c.foundation for c in desc.candidates] == ["1", "2", "3"]
    assert desc.ice_options == () and not desc.lite and not desc.end_of_candidates


def test_libnice_two_components_and_relay() -> None:
    two = parse(LIBNICE_TWO_COMPONENTS)
    assert [(c.component, c.port) for c in two.candidates] == [(1, 40153), (2, 45740)]
    relay = parse(LIBNICE_RELAY)
    host, relayed = relay.candidates
    assert relayed.type is CandidateType.RELAY and relayed.priority == 505414655
    assert (relayed.related_ip, relayed.related_port) == host.address
    assert relay.default_candidate() == relayed
    assert relay.port == relayed.port


def test_our_output_has_libnice_shape() -> None:
    """What libnice's parse_remote_sdp needs: an m= line first (before any ice-ufrag, ice-pwd
    or candidate line), "\\n" line ends, "a=candidate:" lines (with "a=")."""
    desc = IceDescription(UFRAG, PWD, _candidates())
    text = desc.to_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("m=- ") and lines[0].endswith(" ICE/SDP")
    assert lines[1].startswith("c=IN IP4 ")
    assert all(line.startswith("a=candidate:") for line in lines[4:])


# ----------------------------------------------------------------------------- browsers

FINGERPRINT = (
    "sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:"
    "2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F"
)
CHROME_OFFER = "\r\n".join([
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1 2",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 5f3c2a1e",
    "m=audio 54321 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 203.0.113.7",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:3348477562 1 udp 2122260223 192.168.1.23 54320 typ host generation 0 "
    "network-id 1 network-cost 10",
    "a=candidate:559267639 1 udp 2122129151 fd00::23 54322 typ host generation 0 "
    "network-id 2 network-cost 10",
    "a=candidate:842163049 1 udp 1686052607 203.0.113.7 54321 typ srflx raddr 192.168.1.23 "
    "rport 54320 generation 0 network-id 1 network-cost 10",
    "a=candidate:4233069003 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active "
    "generation 0 network-id 1 network-cost 10",
    "a=ice-ufrag:EsAw",
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
    "a=ice-options:trickle",
    f"a=fingerprint:{FINGERPRINT}",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:5f3c2a1e 7e4b2ba5-7c8c-4b1d-a4e8-d6b1f2a3c8e9",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=ssrc:3735928559 cname:y0b8Dkq3Vv3YqK8n",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:EsAw",
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
    "a=ice-options:trickle",
    f"a=fingerprint:{FINGERPRINT}",
    "a=setup:actpass",
    "a=mid:1",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:Zx9q",
    "a=ice-pwd:Kk2mN8pQ4rS6tU0vW2xY4zA6",
    "a=ice-options:trickle",
    f"a=fingerprint:{FINGERPRINT}",
    "a=setup:actpass",
    "a=mid:2",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
    "",
])


def test_chrome_offer_first_media_section() -> None:
    desc = parse(CHROME_OFFER)
    assert (desc.ufrag, desc.pwd) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1")
    assert desc.ice_options == ("trickle",)
    assert (desc.media, desc.port, desc.address) == ("audio", 54321, "203.0.113.7")
    assert len(desc.candidates) == 4
    host, host6, srflx, tcp = desc.candidates
    assert host.extensions == (("generation", "0"), ("network-id", "1"), ("network-cost", "10"))
    assert host6.family == 6
    assert srflx.type is CandidateType.SRFLX and srflx.related_port == 54320
    assert tcp.transport == "tcp" and tcp.tcptype == "active" and tcp.port == 9
    assert not desc.lite and not desc.end_of_candidates


def test_chrome_offer_other_sections() -> None:
    video = parse(CHROME_OFFER, media_index=1)
    assert video.media == "video" and video.candidates == () and video.port == 9
    data = parse(CHROME_OFFER, media_index=2)
    assert (data.ufrag, data.pwd) == ("Zx9q", "Kk2mN8pQ4rS6tU0vW2xY4zA6")
    assert (data.media, data.address) == ("application", "0.0.0.0")
    with pytest.raises(SdpError) as info:
        parse(CHROME_OFFER, media_index=3)
    assert info.value.field == "m"


# Firefox-style: session-level ice-options and fingerprint; an older style also puts
# the credentials at session level; the media section has ended its candidates.
FIREFOX_OFFER = "\r\n".join([
    "v=0",
    "o=mozilla...THIS_IS_SDPARTA-99.0 6342345271846093436 0 IN IP4 0.0.0.0",
    "s=-",
    "t=0 0",
    f"a=fingerprint:{FINGERPRINT}",
    "a=group:BUNDLE 0",
    "a=ice-options:trickle",
    "a=ice-ufrag:e4c3b1b2",
    "a=ice-pwd:6d6c2b5e3d1e5fdb8d7a09c3b0f2a1e4",
    "a=msid-semantic:WMS *",
    "m=application 52123 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 198.51.100.20",
    "a=candidate:0 1 UDP 2122252543 10.0.0.2 52122 typ host",
    "a=candidate:1 1 UDP 1686052863 198.51.100.20 52123 typ srflx raddr 10.0.0.2 rport 52122",
    "a=sendrecv",
    "a=end-of-candidates",
    "a=mid:0",
    "a=setup:actpass",
    "a=sctp-port:5000",
    "",
])


def test_session_level_credentials_and_options() -> None:
    desc = parse(FIREFOX_OFFER)
    assert (desc.ufrag, desc.pwd) == ("e4c3b1b2", "6d6c2b5e3d1e5fdb8d7a09c3b0f2a1e4")
    assert desc.ice_options == ("trickle",)
    assert desc.end_of_candidates
    assert [c.port for c in desc.candidates] == [52122, 52123]
    # media-level values win over session-level ones (RFC 8839 §5.4)
    overridden = FIREFOX_OFFER.replace("a=mid:0", "a=mid:0\r\na=ice-ufrag:MEDIA")
    assert parse(overridden).ufrag == "MEDIA"


def test_session_level_ice_lite() -> None:
    text = CHROME_OFFER.replace("t=0 0\r\n", "t=0 0\r\na=ice-lite\r\n")
    assert parse(text).lite
    assert not parse(CHROME_OFFER).lite


def test_offer_without_candidates() -> None:
    # Chromium in a loopback-only namespace offers no candidate at all (INTEROP.md)
    text = "\r\n".join(
        line for line in CHROME_OFFER.split("\r\n") if not line.startswith("a=candidate:")
    )
    desc = parse(text)
    assert desc.candidates == () and desc.ufrag == "EsAw"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("ufrag", "pwd", "field"),
    [
        ("abc", PWD, "ice-ufrag"),  # too short: 4-256 (RFC 8839 §5.4)
        ("a" * 257, PWD, "ice-ufrag"),
        ("ab-c", PWD, "ice-ufrag"),  # "-" is not an ice-char
        ("abcé", PWD, "ice-ufrag"),
        (UFRAG, "x" * 21, "ice-pwd"),  # too short: 22-256
        (UFRAG, "x" * 257, "ice-pwd"),
        (UFRAG, "x" * 21 + "=", "ice-pwd"),
    ],
)
def test_invalid_credentials(ufrag: str, pwd: str, field: str) -> None:
    text = f"m=- 9 ICE/SDP\nc=IN IP4 0.0.0.0\na=ice-ufrag:{ufrag}\na=ice-pwd:{pwd}\n"
    with pytest.raises(SdpError) as info:
        parse(text)
    assert info.value.field == field
    assert isinstance(info.value, DecodeError)
    with pytest.raises(LocalProtocolError):
        IceDescription(ufrag, pwd)


def test_credential_limits_accepted() -> None:
    assert validate_ufrag("a+/9") == "a+/9"
    assert validate_ufrag("a" * 256) == "a" * 256
    assert validate_pwd("x" * 22) == "x" * 22
    assert validate_pwd("x" * 256) == "x" * 256
    with pytest.raises(SdpError):
        validate_pwd("")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (f"m=- 9 ICE/SDP\na=ice-pwd:{PWD}\n", "ice-ufrag"),  # missing
        (f"m=- 9 ICE/SDP\na=ice-ufrag:{UFRAG}\n", "ice-pwd"),
        (f"m=- x ICE/SDP\na=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\n", "m"),
        (f"m=- 70000 ICE/SDP\na=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\n", "m"),
        (f"m=-\na=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\n", "m"),
        (f"m=- 9 ICE/SDP\nc=IN\na=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\n", "c"),
        (f"a=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\na=ice-pacing:fast\n", "ice-pacing"),
        (f"a=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\na=ice-pacing:0\n", "ice-pacing"),
        (f"a=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\na=ice-options:\n", "ice-options"),
        (f"a=ice-ufrag:{UFRAG}\na=ice-ufrag:Other\na=ice-pwd:{PWD}\n", "ice-ufrag"),
        (f"m=- 9 ICE/SDP\na=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\nm=- 9 ICE/SDP\n", None),
    ],
)
def test_malformed_lines(text: str, field: str | None) -> None:
    if field is None:  # the second section has no credentials at all
        with pytest.raises(SdpError):
            parse(text, media_index=1)
        assert parse(text).ufrag == UFRAG
        return
    with pytest.raises(SdpError) as info:
        parse(text)
    assert info.value.field == field


@pytest.mark.parametrize(
    "line",
    [
        "a=candidate:1 1 udp 2122260223 192.0.2.2 5000",  # no typ
        "a=candidate:1 1 udp 2122260223 192.0.2.2 5000 typ bogus",
        "a=candidate:1 1 udp high 192.0.2.2 5000 typ host",
        "a=candidate:1 1 udp 1 192.0.2.2 5000 typ host raddr",
        "a=candidate:1 1 udp 1 192.0.2.2 5000 typ srflx raddr 10.0.0.1 rport ²",
    ],
)
def test_bad_candidate_lines(line: str) -> None:
    text = f"m=- 9 ICE/SDP\na=ice-ufrag:{UFRAG}\na=ice-pwd:{PWD}\n{line}\n"
    with pytest.raises(CandidateError):
        parse(text)


def test_constructor_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        IceDescription(UFRAG, PWD, port=70000)
    with pytest.raises(LocalProtocolError):
        IceDescription(UFRAG, PWD, ice_options=("two words",))
    with pytest.raises(LocalProtocolError):
        IceDescription(UFRAG, PWD, pacing=0)
    with pytest.raises(LocalProtocolError):
        IceDescription(UFRAG, PWD, ["candidate:1 1 udp 1 1.2.3.4 5 typ host"])  # type: ignore[list-item]


def test_unknown_and_odd_lines_are_ignored() -> None:
    text = (
        "\n\n   \n"
        "x=whatever\n"
        "m=- 9 ICE/SDP\n"
        f"a=ice-ufrag:{UFRAG}\n"
        f"a=ice-pwd:{PWD}\n"
        "a=remote-candidates:1 192.0.2.1 5000\n"
        "a=ice-mismatch\n"
        "a=unknown-attribute:with:colons\n"
        "garbage line\n"
    )
    desc = parse(text)
    assert desc.candidates == () and desc.port == 9


# ----------------------------------------------------------------------------- properties

_ICE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._"
_tokens = st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12)
_ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
_ports = st.integers(0, 65535)


@st.composite
def _candidate(draw: st.DrawFn) -> Candidate:
    transport = draw(st.sampled_from(["udp", "tcp"]))
    return Candidate(
        foundation=draw(st.text(alphabet=_ICE_CHARS, min_size=1, max_size=32)),
        component=draw(st.integers(1, 256)),
        transport=transport,
        priority=draw(st.integers(1, 2**32 - 1)),
        ip=draw(_ips),
        port=draw(_ports),
        type=draw(st.sampled_from(list(CandidateType))),
        related_ip=draw(st.none() | _ips),
        related_port=draw(st.none() | _ports),
        tcptype=draw(st.none() | st.sampled_from(["active", "passive", "so"]))
        if transport == "tcp" else None,
        extensions=tuple(draw(st.lists(
            st.tuples(_tokens.filter(lambda n: n not in ("raddr", "rport", "tcptype")), _tokens),
            max_size=3,
        ))),
    )


_descriptions = st.builds(
    IceDescription,
    ufrag=st.text(alphabet=_ICE_CHARS, min_size=4, max_size=256),
    pwd=st.text(alphabet=_ICE_CHARS, min_size=22, max_size=256),
    candidates=st.lists(_candidate(), max_size=6),
    ice_options=st.lists(_tokens, max_size=3).map(tuple),
    lite=st.booleans(),
    end_of_candidates=st.booleans(),
    port=st.none() | _ports,
    address=st.none() | _ips,
    media=st.sampled_from(["-", "audio", "application"]),
    pacing=st.none() | st.integers(1, 10_000),
)


@settings(max_examples=300, deadline=None)
@given(_descriptions)
def test_round_trip_property(desc: IceDescription) -> None:
    address, port = desc.default_destination
    expected = dataclasses.replace(desc, port=port, address=address)
    assert parse(desc.to_text()) == expected
    assert parse(desc.to_text("\r\n")) == expected
    assert parse(expected.to_text()) == expected
