"""The registry of harnesses: name -> ``harness(data: bytes) -> None``.

The name is also the directory of the harness's corpus, ``fuzz/corpus/<name>/``.
"""

from __future__ import annotations

from collections.abc import Callable

from . import channel, handshake, ice, sdp, stun, turn

HARNESSES: dict[str, Callable[[bytes], None]] = {
    "stun_decode": stun.stun_decode,
    "channeldata": stun.channeldata_framer,
    "stun_server": stun.stun_server,
    "turn_server": turn.turn_server,
    "channel": channel.channel,
    "sdp": sdp.sdp,
    "ice_agent": ice.ice_agent,
    "handshake": handshake.handshake,
}
"""Every harness, in the order ``scripts/fuzz`` runs them."""
