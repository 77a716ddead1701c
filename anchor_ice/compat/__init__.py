"""anchor_ice.compat: drop-in layers over Anchor's ICE for code written for other libraries.

:mod:`anchor_ice.compat.aioice` has aioice's public surface (``Candidate``, ``Connection``,
``ConnectionClosed``, ``TransportPolicy``) over Anchor's :class:`~anchor_ice.Connection`;
:func:`install_aioice` makes ``import aioice`` resolve to it, so that aiortc (which does its
ICE through aioice) runs on Anchor's ICE (RFC 8445 regular nomination, RFC 7675 consent,
the gateway policy)::

    from anchor_ice.compat import install_aioice
    install_aioice(policy="gateway")      # before aiortc is imported
    from aiortc import RTCPeerConnection  # its ICE is now Anchor's

Everything in ``__all__`` is re-exported here.
"""

from __future__ import annotations

import inspect
import sys
from types import MappingProxyType, ModuleType
from typing import Any

from anchor_ice.aio.connection import Connection as AnchorConnection
from anchor_ice.aio.connection import make_nominator
from anchor_ice.compat import aioice
from anchor_ice.compat.aioice import (
    Candidate,
    CandidateValueError,
    Connection,
    ConnectionClosed,
    ConnectionEvent,
    LocalValueError,
    TransportPolicy,
    UnsupportedOption,
)
from anchor_stun.errors import LocalProtocolError

__all__ = [
    "AIOICE_MODULES",
    "ANCHOR_OPTIONS",
    "Candidate",
    "CandidateValueError",
    "Connection",
    "ConnectionClosed",
    "ConnectionEvent",
    "LocalValueError",
    "TransportPolicy",
    "UnsupportedOption",
    "aioice",
    "install_aioice",
    "uninstall_aioice",
]

AIOICE_MODULES = ("aioice", "aioice.ice", "aioice.candidate")
"""The modules :func:`install_aioice` puts in ``sys.modules`` (aiortc imports ``aioice``)."""

_SHARED = {"ice_controlling", "components", "stun_server", "turn_server", "turn_username",
           "turn_password", "turn_transport", "turn_ssl", "use_ipv4", "use_ipv6",
           "local_username", "local_password"}
ANCHOR_OPTIONS = frozenset(
    name for name, parameter in inspect.signature(AnchorConnection).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in _SHARED
)
"""The Anchor-only keyword arguments :func:`install_aioice` accepts as defaults."""

_PREVIOUS = "__anchor_previous_modules__"
_AIORTC_ICE = "aiortc.rtcicetransport"


def install_aioice(policy: str | None = None, **options: Any) -> ModuleType:
    """Make ``import aioice`` (and ``aioice.ice``, ``aioice.candidate``) resolve to
    :mod:`anchor_ice.compat.aioice`; call it before importing aiortc. Returns the
    ``aioice`` module installed.

    ``policy`` (``"standard"``, ``"gateway"`` or ``"relay"``) and ``options`` (Anchor-only
    keyword arguments of :class:`~anchor_ice.Connection`, :data:`ANCHOR_OPTIONS`:
    ``nominator``, ``host_ips``, ``include_loopback``, ``port_range``, ``ta``...) become the
    defaults of every ``Connection`` made through that module, so of every ICE connection
    aiortc creates; an application's ``TransportPolicy.RELAY`` still means ``"relay"``.

    Calling it again replaces the defaults, also for an aiortc imported after an earlier
    call. An aiortc imported before any call keeps the real aioice: that is a
    :class:`~anchor_stun.errors.LocalProtocolError`. :func:`uninstall_aioice` undoes it.
    """
    unknown = sorted(set(options) - ANCHOR_OPTIONS)
    if unknown:
        raise LocalProtocolError(
            f"install_aioice() takes Anchor's options {sorted(ANCHOR_OPTIONS)}, not {unknown}"
        )
    defaults = dict(options)
    if policy is not None:
        make_nominator(policy)  # a LocalProtocolError for an unknown policy
        defaults["policy"] = policy
    configured = type(
        "Connection",
        (Connection,),
        {
            "options": MappingProxyType(defaults),
            "__module__": "aioice.ice",
            "__doc__": Connection.__doc__,
        },
    )
    aiortc_ice = sys.modules.get(_AIORTC_ICE)
    if aiortc_ice is not None:
        current = getattr(aiortc_ice, "Connection", None)
        if not (isinstance(current, type) and issubclass(current, Connection)):
            raise LocalProtocolError(
                "aiortc was imported before install_aioice(): call it first, so that aiortc "
                "imports Anchor's aioice layer"
            )
    names = {
        "Candidate": Candidate,
        "Connection": configured,
        "ConnectionClosed": ConnectionClosed,
        "ConnectionEvent": ConnectionEvent,
        "TransportPolicy": TransportPolicy,
    }
    root = ModuleType("aioice", aioice.__doc__)
    ice = ModuleType("aioice.ice", "aioice.ice over Anchor (Connection and its events).")
    candidate = ModuleType("aioice.candidate", "aioice.candidate over Anchor (Candidate).")
    for module in (root, ice):
        module.__dict__.update(names)
    candidate.Candidate = Candidate  # type: ignore[attr-defined]
    root.__dict__.update(
        __all__=["Candidate", "Connection", "ConnectionClosed", "TransportPolicy"],
        __version__=aioice.__version__,
        ice=ice,
        candidate=candidate,
    )
    previous = sys.modules.get("aioice")
    if previous is not None and hasattr(previous, _PREVIOUS):
        saved = getattr(previous, _PREVIOUS)  # keep what was there before the first call
    else:
        saved = {name: sys.modules.get(name) for name in AIOICE_MODULES}
    setattr(root, _PREVIOUS, saved)
    for name, module in zip(AIOICE_MODULES, (root, ice, candidate), strict=True):
        sys.modules[name] = module
    if aiortc_ice is not None:
        aiortc_ice.Connection = configured  # type: ignore[attr-defined]
    return root


def uninstall_aioice() -> bool:
    """Undo :func:`install_aioice`: ``import aioice`` finds what it found before (the real
    aioice, if installed). An aiortc imported meanwhile keeps Anchor's layer. Returns False
    when the layer was not installed."""
    current = sys.modules.get("aioice")
    if current is None or not hasattr(current, _PREVIOUS):
        return False
    saved: dict[str, ModuleType | None] = getattr(current, _PREVIOUS)
    for name in AIOICE_MODULES:
        module = saved.get(name)
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    return True
