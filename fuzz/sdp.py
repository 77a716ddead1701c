"""Harness of the signalling parsers: ``Candidate.from_sdp`` (RFC 8839 §5.1) and
``anchor_ice.sdp.parse`` (RFC 8839, RFC 8840).

Contracts checked: both raise only :class:`DecodeError` (``CandidateError``, ``SdpError``);
what they accept can be written back (``to_sdp`` / ``to_text`` never raise on a parsed
value) and reads back as the same candidate / the same description.
"""

from __future__ import annotations

from anchor_ice.candidate import Candidate
from anchor_ice.sdp import IceDescription, parse
from anchor_stun.errors import DecodeError

from .common import Reader, Violation, check


def _same(a: IceDescription, b: IceDescription) -> bool:
    return (
        a.ufrag == b.ufrag
        and a.pwd == b.pwd
        and tuple(a.candidates) == tuple(b.candidates)
        and a.ice_options == b.ice_options
        and a.lite == b.lite
        and a.end_of_candidates == b.end_of_candidates
        and a.pacing == b.pacing
        and a.media == b.media
        and a.default_destination == b.default_destination
    )


def sdp(data: bytes) -> None:
    """The first byte picks the parser (and the media section); the rest is the text, decoded
    as UTF-8 with ``surrogateescape`` so that any byte string is some text."""
    r = Reader(data)
    flags = r.byte()
    text = r.rest().decode("utf-8", "surrogateescape")
    if flags & 1:
        try:
            cand = Candidate.from_sdp(text)
        except DecodeError:
            return
        line = cand.to_sdp()
        back = Candidate.from_sdp(line)
        check(back == cand, f"candidate round trip: {cand!r} -> {line!r} -> {back!r}")
        check(Candidate.from_sdp("a=" + line) == cand, "a= prefix changes the candidate")
        _ = cand.family, cand.is_mdns, cand.address, cand.is_host
        return
    try:
        desc = parse(text, media_index=(flags >> 1) & 3)
    except DecodeError:
        return
    for eol in ("\n", "\r\n"):
        out = desc.to_text(eol)
        try:
            again = parse(out)
        except DecodeError as exc:
            raise Violation(f"parse() refuses what to_text() wrote: {exc}\n{out}") from exc
        check(_same(again, desc), f"description round trip:\n{desc!r}\n{again!r}")
