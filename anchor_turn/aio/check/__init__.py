"""The probes of ``anchor check`` (RFC 8489, 5780, 8656), grouped by area.

:mod:`~anchor_turn.aio.check.plumbing` holds what every probe shares (the link to the server,
TURN sessions, the echo peer, the context, the registry and the runner); each area module
registers its probes with it, and this package imports them in report order: ``stun``,
``auth``, ``allocation``, ``data``, ``refusals``, ``peers``.
"""

from __future__ import annotations

# The areas register their probes as they are imported: this order is the report's.
# isort: off
from anchor_turn.aio.check import stun  # noqa: F401
from anchor_turn.aio.check import auth  # noqa: F401
from anchor_turn.aio.check import allocation  # noqa: F401
from anchor_turn.aio.check import data  # noqa: F401
from anchor_turn.aio.check import refusals  # noqa: F401
from anchor_turn.aio.check import peers  # noqa: F401

# isort: on
from anchor_turn.aio.check.plumbing import (
    DOCUMENTATION_PEER,
    PROBES,
    CheckConfig,
    CheckContext,
    CheckError,
    Probe,
    ProbeFailed,
    ProbeSkipped,
    probe_ids,
    run_check,
    run_probe,
    select_probes,
)

__all__ = [
    "DOCUMENTATION_PEER",
    "PROBES",
    "CheckConfig",
    "CheckContext",
    "CheckError",
    "Probe",
    "ProbeFailed",
    "ProbeSkipped",
    "probe_ids",
    "run_check",
    "run_probe",
    "select_probes",
]
