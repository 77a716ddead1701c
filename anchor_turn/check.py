"""The ``anchor check`` report model: probes, levels, results, the verdict (sans-I/O).

Theory of operation
-------------------
``anchor check`` points a battery of *probes* at a STUN/TURN server. A probe is a small async
function (in :mod:`anchor_turn.aio.check`, which owns the sockets) described by a
:class:`ProbeInfo`: an id such as ``turn.allocation-mismatch``, the requirement it tests in one
sentence, the RFC section, and how strong the requirement is (:class:`Level`: the RFC's MUST,
SHOULD, or INFO for facts worth knowing). Running it yields a :class:`Verdict`; the runner
pairs both into a :class:`ProbeResult`.

Results (:class:`Outcome`):

- ``pass``: the server did what the requirement says;
- ``fail``: it did not (only a failed MUST makes the check fail, see :func:`check_passed`);
- ``skip``: the probe could not run (no credentials, no peer, RFC 5780 not offered, ...);
- ``finding``: not a conformance failure but something an operator should know: a real
  choice the RFCs leave open (SHA-256 not offered) or a security exposure (loopback or
  private peers accepted, the CVE-2020-26262 class).

The JSON form of a result is exactly ``{"id", "requirement", "rfc", "level", "result",
"detail"}`` (docs/design.md "The command line"); :func:`summary` counts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from anchor_stun.integrity import turn_rest_password

__all__ = [
    "Group",
    "Level",
    "Outcome",
    "ProbeInfo",
    "ProbeResult",
    "Verdict",
    "check_passed",
    "rest_credentials",
    "summary",
    "untested_areas",
]

Group = Literal["stun", "turn"]
"""Which part of a server a probe tests: the STUN Binding usage, or TURN (``--only``)."""


class Level(StrEnum):
    """How strong the requirement a probe tests is (RFC 2119 keywords, plus INFO)."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    INFO = "INFO"


class Outcome(StrEnum):
    """What a probe found (see the module docstring)."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    FINDING = "finding"


@dataclass(frozen=True, slots=True)
class ProbeInfo:
    """What a probe tests."""

    id: str
    """Stable identifier, ``stun.*`` or ``turn.*``."""
    requirement: str
    """The requirement in one sentence."""
    rfc: str
    """Where the requirement is written, e.g. ``RFC 8656 §7.2``."""
    level: Level
    """MUST, SHOULD or INFO."""
    group: Group
    """``stun`` or ``turn`` (selected by ``--only``)."""
    slow: bool = False
    """Runs only with ``--slow`` (waits for a timer of the server, minutes)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of running one probe and a one-line explanation."""

    outcome: Outcome
    """pass, fail, skip or finding."""
    detail: str
    """What was sent and what came back, in a few words."""

    @classmethod
    def passed(cls, detail: str) -> Verdict:
        """A ``pass`` verdict."""
        return cls(Outcome.PASS, detail)

    @classmethod
    def failed(cls, detail: str) -> Verdict:
        """A ``fail`` verdict."""
        return cls(Outcome.FAIL, detail)

    @classmethod
    def skipped(cls, detail: str) -> Verdict:
        """A ``skip`` verdict."""
        return cls(Outcome.SKIP, detail)

    @classmethod
    def finding(cls, detail: str) -> Verdict:
        """A ``finding`` verdict."""
        return cls(Outcome.FINDING, detail)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One line of the report: the probe, its verdict and how long it took."""

    info: ProbeInfo
    """The probe."""
    outcome: Outcome
    """Its result."""
    detail: str
    """Its explanation."""
    seconds: float = 0.0
    """Wall-clock time the probe took."""

    @property
    def id(self) -> str:
        """The probe id."""
        return self.info.id

    @property
    def failed_must(self) -> bool:
        """True for a MUST probe that failed: this makes the whole check fail."""
        return self.info.level is Level.MUST and self.outcome is Outcome.FAIL

    def to_json(self) -> dict[str, str]:
        """The contract's JSON object: id, requirement, rfc, level, result, detail."""
        return {
            "id": self.info.id,
            "requirement": self.info.requirement,
            "rfc": self.info.rfc,
            "level": self.info.level.value,
            "result": self.outcome.value,
            "detail": self.detail,
        }


def check_passed(results: Iterable[ProbeResult]) -> bool:
    """True when no MUST probe failed (exit status 0). A skipped MUST does not fail the
    check: it was not tested (the detail says why, e.g. no credentials were given)."""
    return not any(r.failed_must for r in results)


def untested_areas(results: Iterable[ProbeResult]) -> dict[str, str]:
    """The areas (``stun``, ``turn``) that were run but not really tested: most of their MUST
    probes were skipped (TURN without credentials: only the probes that need no allocation
    ran). Maps each to the reason most of its skipped probes give."""
    reasons: dict[str, list[str]] = {}
    must: dict[str, int] = {}
    for result in results:
        if result.info.level is not Level.MUST:
            continue
        group = result.info.group
        must[group] = must.get(group, 0) + 1
        if result.outcome is Outcome.SKIP:
            reasons.setdefault(group, []).append(result.detail)
    return {
        group: max(set(details), key=details.count)
        for group, details in reasons.items()
        if 2 * len(details) > must[group]
    }


def summary(results: Iterable[ProbeResult]) -> Mapping[str, int]:
    """Counts by outcome, plus ``must_failed`` and ``total``."""
    counts = {o.value: 0 for o in Outcome}
    counts["must_failed"] = 0
    counts["total"] = 0
    for result in results:
        counts[result.outcome.value] += 1
        counts["total"] += 1
        if result.failed_must:
            counts["must_failed"] += 1
    return counts


def rest_credentials(
    secret: str, now: float, *, user: str = "anchor-check", ttl: int = 86400
) -> tuple[str, str]:
    """Username and password of the TURN REST API scheme (coturn's ``--static-auth-secret``):
    ``EXPIRY:user`` valid ``ttl`` seconds from ``now`` (Unix time), and
    ``base64(HMAC-SHA1(secret, username))``."""
    username = f"{int(now) + ttl}:{user}"
    return username, turn_rest_password(secret, username)
