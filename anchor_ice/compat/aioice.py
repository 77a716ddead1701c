"""``anchor_ice.compat.aioice``: aioice's public names over Anchor's ICE, importable as such
(``from anchor_ice.compat.aioice import Connection``); :func:`anchor_ice.compat.install_aioice`
makes ``import aioice`` resolve to the same names. The code is in
:mod:`anchor_ice.aio.compat` (the asyncio adapters live in ``aio/``)."""

from __future__ import annotations

from anchor_ice.aio.compat import (
    AIOICE_VERSION,
    Candidate,
    CandidateValueError,
    Connection,
    ConnectionClosed,
    ConnectionEvent,
    LocalValueError,
    TransportPolicy,
    UnsupportedOption,
)

__all__ = [
    "Candidate",
    "CandidateValueError",
    "Connection",
    "ConnectionClosed",
    "ConnectionEvent",
    "LocalValueError",
    "TransportPolicy",
    "UnsupportedOption",
    "__version__",
]

__version__ = AIOICE_VERSION
"""The aioice release whose public surface this reproduces."""
