"""JSON objects from untrusted bytes, bounded before they are parsed.

The rendezvous, its clients and the link endpoint read JSON written by parties they do not
trust (a rendezvous client, the rendezvous itself, a peer). ``json.loads`` recurses once per
nesting level, so a frame of 60,000 ``[`` raises ``RecursionError`` (not a ``ValueError``)
after a long walk. :func:`loads_object` refuses such input before parsing: at most
:data:`MAX_CONTAINERS` arrays and objects in all (which bounds the nesting), and the size the
caller allows; anything else that is not one JSON object is a ``ValueError``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_CONTAINERS", "loads_object"]

MAX_CONTAINERS = 256
"""The most arrays and objects one message may hold (a link description holds a handful: a
candidate list and the objects around it)."""


def loads_object(raw: str | bytes, *, max_size: int, what: str = "message") -> dict[str, Any]:
    """The JSON object in ``raw``; ``ValueError`` naming ``what`` when it is larger than
    ``max_size`` bytes, holds more than :data:`MAX_CONTAINERS` arrays and objects, is not
    UTF-8 or JSON, or is not an object."""
    if len(raw) > max_size:
        raise ValueError(f"{what} larger than {max_size} bytes")
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if text.count("[") + text.count("{") > MAX_CONTAINERS:
        raise ValueError(f"{what} holds more than {MAX_CONTAINERS} arrays and objects")
    try:
        value = json.loads(text)
    except RecursionError:  # unreachable within MAX_CONTAINERS; kept a ValueError anyway
        raise ValueError(f"{what} nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value
