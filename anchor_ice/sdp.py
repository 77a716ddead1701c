"""The ICE parts of a session description: write and read them (RFC 8839, RFC 8840).

Theory of operation
-------------------
An :class:`IceDescription` is what one ICE agent tells the other about one data stream:
its credentials (``ice-ufrag`` / ``ice-pwd``, RFC 8839 §5.4), its candidates (``candidate``,
RFC 8839 §5.1), its ICE extensions (``ice-options``, RFC 8839 §5.6), whether it is a lite
implementation (``ice-lite``, RFC 8839 §5.3), its pacing (``ice-pacing``, RFC 8839 §5.5),
whether it has sent every candidate (``end-of-candidates``, RFC 8840) and the default
destination carried by the ``m=`` and ``c=`` lines (RFC 8839 §4.2.1.2).

:meth:`IceDescription.to_lines` writes the lines ``anchor ice`` prints; the caller joins them
with ``"\\n"`` (libnice splits its input on ``"\\n"`` only, so a ``"\\r"`` would end up in the
password)::

    a=ice-lite                      (only for a lite agent: a session-level attribute)
    a=ice-pacing:50                 (only when set: a session-level attribute)
    m=- 50112 ICE/SDP               (the shape of libnice's generate_local_sdp())
    c=IN IP4 203.0.113.7
    a=ice-ufrag:Fw2R
    a=ice-pwd:0Ea5aGCj3Q8tFJ1wQxqgLh
    a=ice-options:trickle ice2      (only when there are options)
    a=candidate:...                 (one per candidate)
    a=end-of-candidates             (only once gathering is complete)

:func:`parse` reads that, libnice's ``nice_agent_generate_local_sdp()`` output (``m=- PORT
ICE/SDP``, ``c=IN IP4 ...`` even for an IPv6 address, ``a=ice-ufrag:``, ``a=ice-pwd:``,
``a=candidate:...``, optionally ``a=rtcp:``) and a browser's complete offer or answer. It
follows SDP's two levels (RFC 8866 §5): attributes before the first ``m=`` line are
session-level; ``ice-ufrag``, ``ice-pwd`` and ``ice-options`` found there apply unless the
chosen media section has its own (RFC 8839 §5.4, §5.6). Candidates and ``end-of-candidates``
are taken from the chosen media section (the first by default: with BUNDLE it is the one
that carries the transport). Text without any ``m=`` line is read as one media section, so a
bare list of ``a=`` lines works too, and so do bare ``candidate:...`` lines (what a browser's
``RTCIceCandidate.candidate`` holds). Unknown lines (``v=``, ``o=``, ``a=fingerprint``,
``a=group``, ``a=rtpmap`` ...) are ignored.

Errors: credentials that break RFC 8839 §5.4 (``ice-ufrag`` 4-256 and ``ice-pwd`` 22-256
``ice-char``\\ s: ALPHA / DIGIT / ``+`` / ``/``), missing credentials, malformed ``m=``,
``c=`` or ``ice-pacing`` lines and repeated attributes raise :class:`SdpError`; a malformed
candidate line raises :class:`~anchor_ice.candidate.CandidateError`. Both are
:class:`~anchor_stun.errors.DecodeError`\\ s, with ``field`` naming what failed. Building an
:class:`IceDescription` with bad values is API misuse and raises
:class:`~anchor_stun.errors.LocalProtocolError`.

Decision where the RFCs leave a choice: ``ice-options`` tokens are accepted when they are
any run of visible characters (RFC 8839 §5.6 says ``ice-char``, but old Chrome sent
``google-ice``); they are options a peer may ignore, so refusing a whole description for one
would help nobody.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from anchor_ice.candidate import COMPONENT_RTP, Candidate, CandidateError, CandidateType
from anchor_stun.errors import DecodeError, LocalProtocolError
from anchor_stun.events import Address

__all__ = [
    "DISCARD_PORT",
    "PWD_MAX",
    "PWD_MIN",
    "UFRAG_MAX",
    "UFRAG_MIN",
    "UNSPECIFIED_ADDRESS",
    "IceDescription",
    "SdpError",
    "parse",
    "validate_pwd",
    "validate_ufrag",
]

UFRAG_MIN, UFRAG_MAX = 4, 256  # RFC 8839 §5.4: ice-ufrag is 4-256 ice-chars
PWD_MIN, PWD_MAX = 22, 256  # RFC 8839 §5.4: ice-pwd is 22-256 ice-chars
DISCARD_PORT = 9  # RFC 8840: the m= port when there is no candidate yet
UNSPECIFIED_ADDRESS = "0.0.0.0"  # RFC 8840: the c= address when there is no candidate yet

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # RFC 8839 §5.1: ice-char = ALPHA / DIGIT / "+" / "/"
_TOKEN = re.compile(r"[!-~]+")  # visible ASCII, no space
_DIGITS = re.compile(r"[0-9]{1,10}")
_DEFAULT_ORDER = (  # RFC 8839 §4.2.1.2: relayed, then server-reflexive, then host
    CandidateType.RELAY,
    CandidateType.SRFLX,
    CandidateType.PRFLX,
    CandidateType.HOST,
)


class SdpError(DecodeError):
    """ICE lines of a session description that break RFC 8839 §5 (bad or missing
    ``ice-ufrag`` / ``ice-pwd``, a malformed ``m=``, ``c=`` or ``ice-pacing`` line...)."""


def _credential(what: str, value: str, low: int, high: int) -> str | None:
    """Why ``value`` is not a valid ufrag / pwd (RFC 8839 §5.4), or None."""
    if not low <= len(value) <= high:
        return f"{what} must be {low}-{high} characters, got {len(value)}"
    if not _ICE_CHARS.fullmatch(value):
        return f"{what} may only hold ALPHA / DIGIT / '+' / '/' (ice-char), got {value!r}"
    return None


def validate_ufrag(ufrag: str) -> str:
    """Return ``ufrag`` if it is 4-256 ice-chars (RFC 8839 §5.4); else raise
    :class:`SdpError` (``field="ice-ufrag"``)."""
    why = _credential("ice-ufrag", ufrag, UFRAG_MIN, UFRAG_MAX)
    if why is not None:
        raise SdpError(why, field="ice-ufrag")
    return ufrag


def validate_pwd(pwd: str) -> str:
    """Return ``pwd`` if it is 22-256 ice-chars (RFC 8839 §5.4); else raise
    :class:`SdpError` (``field="ice-pwd"``)."""
    why = _credential("ice-pwd", pwd, PWD_MIN, PWD_MAX)
    if why is not None:
        raise SdpError(why, field="ice-pwd")
    return pwd


def _address_type(address: str) -> str:
    """``IP6`` for an IPv6 address, else ``IP4`` (RFC 8866 §5.7; names count as IP4)."""
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"


@dataclass(frozen=True, slots=True)
class IceDescription:
    """The ICE attributes of one data stream in a session description (RFC 8839 §5).

    ``port`` and ``address`` are the default destination written in the ``m=`` and ``c=``
    lines; None means "derive it" (see :attr:`default_destination`). ``candidates`` may be
    any sequence; it is stored as a tuple.
    """

    ufrag: str
    """Username fragment, 4-256 ice-chars (``a=ice-ufrag``, RFC 8839 §5.4)."""
    pwd: str
    """Password, 22-256 ice-chars (``a=ice-pwd``, RFC 8839 §5.4)."""
    candidates: Sequence[Candidate] = ()
    """The candidates, in the order written (``a=candidate``, RFC 8839 §5.1)."""
    ice_options: tuple[str, ...] = ()
    """ICE extensions, e.g. ``("trickle", "ice2")`` (``a=ice-options``, RFC 8839 §5.6)."""
    lite: bool = False
    """The agent is a lite implementation (``a=ice-lite``, RFC 8839 §5.3)."""
    end_of_candidates: bool = False
    """No more candidates will follow (``a=end-of-candidates``, RFC 8840)."""
    port: int | None = None
    """The ``m=`` line's port; None: the default candidate's (RFC 8839 §4.2.1.2)."""
    address: str | None = None
    """The ``c=`` line's address; None: the default candidate's (RFC 8839 §4.2.1.2)."""
    media: str = "-"
    """The ``m=`` line's media token (libnice writes its stream name or ``-``)."""
    pacing: int | None = field(default=None)
    """Ta in milliseconds the agent paces its checks with (``a=ice-pacing``, RFC 8839 §5.5)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "ice_options", tuple(self.ice_options))
        for why in (
            _credential("ice-ufrag", self.ufrag, UFRAG_MIN, UFRAG_MAX),
            _credential("ice-pwd", self.pwd, PWD_MIN, PWD_MAX),
        ):
            if why is not None:
                raise LocalProtocolError(why)
        for option in self.ice_options:
            if not _TOKEN.fullmatch(option):
                raise LocalProtocolError(f"ice-options token {option!r} is not a token")
        if self.port is not None and not 0 <= self.port <= 0xFFFF:
            raise LocalProtocolError(f"port {self.port} out of range")
        if self.address is not None and not _TOKEN.fullmatch(self.address):
            raise LocalProtocolError(f"address {self.address!r} is not a token")
        if not _TOKEN.fullmatch(self.media):
            raise LocalProtocolError(f"media {self.media!r} is not a token")
        if self.pacing is not None and not 0 < self.pacing <= 0xFFFFFFFF:
            raise LocalProtocolError(f"ice-pacing {self.pacing} out of range")
        for cand in self.candidates:
            if not isinstance(cand, Candidate):
                raise LocalProtocolError(f"not a Candidate: {cand!r}")

    # ------------------------------------------------------------------ default destination

    def default_candidate(self) -> Candidate | None:
        """The candidate of component 1 most likely to work: relayed, else server- or
        peer-reflexive, else host, the highest priority within a type (RFC 8839 §4.2.1.2).
        None when there is none."""
        rank = {kind: i for i, kind in enumerate(_DEFAULT_ORDER)}
        first = [c for c in self.candidates if c.component == COMPONENT_RTP]
        if not first:
            return None
        return min(first, key=lambda c: (rank[c.type], -c.priority))

    @property
    def default_destination(self) -> Address:
        """(address, port) for the ``c=`` and ``m=`` lines: the explicit values, else the
        default candidate's, else ``0.0.0.0`` and the discard port 9 (RFC 8840)."""
        default = self.default_candidate()
        address = self.address
        if address is None:
            address = default.ip if default is not None else UNSPECIFIED_ADDRESS
        port = self.port
        if port is None:
            port = default.port if default is not None else DISCARD_PORT
        return (address, port)

    # ------------------------------------------------------------------ writing

    def to_lines(self) -> list[str]:
        """The SDP lines, without line terminators, in the order shown in the module
        docstring (RFC 8839 §5, RFC 8840)."""
        address, port = self.default_destination
        lines: list[str] = []
        if self.lite:
            lines.append("a=ice-lite")
        if self.pacing is not None:
            lines.append(f"a=ice-pacing:{self.pacing}")
        lines.append(f"m={self.media} {port} ICE/SDP")
        lines.append(f"c=IN {_address_type(address)} {address}")
        lines.append(f"a=ice-ufrag:{self.ufrag}")
        lines.append(f"a=ice-pwd:{self.pwd}")
        if self.ice_options:
            lines.append("a=ice-options:" + " ".join(self.ice_options))
        lines.extend("a=" + cand.to_sdp() for cand in self.candidates)
        if self.end_of_candidates:
            lines.append("a=end-of-candidates")
        return lines

    def to_text(self, eol: str = "\n") -> str:
        """:meth:`to_lines` joined, each line ended by ``eol`` (``"\\r\\n"`` for a full SDP
        body, RFC 8866 §5; the default ``"\\n"`` is what libnice reads)."""
        return "".join(line + eol for line in self.to_lines())

    # ------------------------------------------------------------------ reading

    @classmethod
    def parse(cls, text: str, *, media_index: int = 0) -> IceDescription:
        """Same as the module-level :func:`parse`."""
        return parse(text, media_index=media_index)


# ---------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Level:
    """ICE attributes found at the session level or in one media section."""

    ufrag: str | None = None
    pwd: str | None = None
    options: tuple[str, ...] | None = None
    lite: bool = False
    pacing: int | None = None
    end_of_candidates: bool = False
    candidates: list[Candidate] = field(default_factory=list)
    address: str | None = None
    port: int | None = None
    media: str = "-"


def _once(name: str, current: object, value: object) -> None:
    """A repeated attribute must repeat the same value."""
    if current is not None and current != value:
        raise SdpError(f"conflicting a={name} lines in one section", field=name)


def _parse_m(value: str) -> _Level:
    """``m=<media> <port>[/<count>] <proto> <fmt> ...`` (RFC 8866 §5.14)."""
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line: {value!r}", field="m")
    port_text = parts[1].split("/", 1)[0]
    if not _DIGITS.fullmatch(port_text) or int(port_text) > 0xFFFF:
        raise SdpError(f"bad port in m= line: {value!r}", field="m")
    return _Level(port=int(port_text), media=parts[0])


def _parse_c(value: str) -> str:
    """``c=IN <IP4|IP6> <address>[/ttl[/count]]`` (RFC 8866 §5.7); the address."""
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN":
        raise SdpError(f"malformed c= line: {value!r}", field="c")
    return parts[2].split("/", 1)[0]


def _parse_attribute(level: _Level, attribute: str) -> None:
    """One ``a=`` value (without ``a=``) into ``level``; unknown attributes are ignored."""
    name, _, value = attribute.partition(":")
    value = value.strip()
    if name == "candidate":
        try:
            level.candidates.append(Candidate.from_sdp(attribute))
        except ValueError as exc:  # CandidateError is not one; this guards int() quirks
            raise CandidateError(f"malformed candidate line: {exc}", field="candidate") from None
    elif name == "ice-ufrag":
        _once(name, level.ufrag, value)
        level.ufrag = validate_ufrag(value)
    elif name == "ice-pwd":
        _once(name, level.pwd, value)
        level.pwd = validate_pwd(value)
    elif name == "ice-options":
        options = tuple(value.split())
        if not options or not all(_TOKEN.fullmatch(option) for option in options):
            raise SdpError(f"bad a=ice-options value {value!r}", field=name)
        _once(name, level.options, options)
        level.options = options
    elif name == "ice-lite":
        level.lite = True
    elif name == "ice-pacing":
        if not _DIGITS.fullmatch(value) or not 0 < int(value) <= 0xFFFFFFFF:
            raise SdpError(f"bad a=ice-pacing value {value!r}", field=name)
        _once(name, level.pacing, int(value))
        level.pacing = int(value)
    elif name == "end-of-candidates":
        level.end_of_candidates = True


def parse(text: str, *, media_index: int = 0) -> IceDescription:
    """Read the ICE description of one data stream from SDP text (see the module docstring
    for what is accepted). ``media_index`` picks the media section (0: the first).

    Raises :class:`SdpError` for bad or missing credentials and malformed lines, and
    :class:`~anchor_ice.candidate.CandidateError` for a malformed candidate line.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be SDP text (str), not {type(text).__name__}")
    if isinstance(media_index, bool) or not isinstance(media_index, int) or media_index < 0:
        raise TypeError(f"media_index must be an int >= 0, not {media_index!r}")
    session = _Level()
    sections: list[_Level] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("m="):
            sections.append(_parse_m(line[2:]))
            continue
        level = sections[-1] if sections else session
        if line.startswith("c="):
            level.address = _parse_c(line[2:])
        elif line.startswith("a="):
            _parse_attribute(level, line[2:])
        elif line.startswith("candidate:"):
            _parse_attribute(level, line)
    if sections:
        if not 0 <= media_index < len(sections):
            raise SdpError(
                f"no media section {media_index}: the text has {len(sections)}", field="m"
            )
        media = sections[media_index]
        candidates = media.candidates
    else:
        if media_index != 0:
            raise SdpError(f"no media section {media_index}: the text has none", field="m")
        media = _Level(media="-")
        candidates = session.candidates
    ufrag = media.ufrag or session.ufrag
    pwd = media.pwd or session.pwd
    if ufrag is None:
        raise SdpError("no a=ice-ufrag line", field="ice-ufrag")
    if pwd is None:
        raise SdpError("no a=ice-pwd line", field="ice-pwd")
    options = media.options if media.options is not None else session.options
    try:
        return IceDescription(
            ufrag=ufrag,
            pwd=pwd,
            candidates=tuple(candidates),
            ice_options=options or (),
            lite=session.lite or media.lite,
            end_of_candidates=media.end_of_candidates or session.end_of_candidates,
            port=media.port,
            address=media.address or session.address,
            media=media.media,
            pacing=session.pacing if session.pacing is not None else media.pacing,
        )
    except LocalProtocolError as exc:  # a value no check above caught (non-ASCII ...)
        raise SdpError(str(exc), field="sdp") from None
