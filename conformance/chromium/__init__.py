"""Chromium as a real WebRTC peer for the conformance tests (issue 10).

Chromium only ever runs inside a fresh loopback-only network namespace (docs/peers.md).
Modules:

- :mod:`chromium.netns` (outside): ``unshare --net --pid --fork --kill-child`` a scenario,
  read its JSON result, check no process is left in its namespace.
- :mod:`chromium.inside` (inside, PID 1): bring ``lo`` up, run the scenario, print the result.
- :mod:`chromium.scenarios` (inside): the TURN and ICE scenarios.
- :mod:`chromium.browser` (inside): start/stop Chromium by PID, drive it over the DevTools
  protocol (``websockets``); ``page.js`` holds the page's WebRTC helpers.
- :mod:`chromium.agent_udp` (inside): a tiny asyncio UDP adapter around Anchor's IceAgent.
"""
