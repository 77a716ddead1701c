"""A libnice ICE peer in its own process, for the Anchor interop tests.

Run by the *system* Python with GObject introspection (``/usr/bin/python3``, packages
gir1.2-nice-0.1, python3-gi, libnice10), never by the test's interpreter: it imports nothing
from Anchor. It is the libnice counterpart of ``anchor ice`` and speaks the same way:

    /usr/bin/python3 libnice_peer.py (--controlling|--controlled) [--aggressive]
        [--host-ip IP]... [--turn IP:PORT --user NAME:PASSWORD] [--timeout S]

1. Gathers (``add_local_address`` for each ``--host-ip``: libnice leaves loopback out
   otherwise), prints ``generate_local_sdp()`` then one empty line, and flushes.
2. Reads the peer's description from stdin up to an empty line (or end of input) and gives it
   to ``parse_remote_sdp`` (then ``peer_candidate_gathering_done``).
3. On READY the controlling side sends ``b"ping"`` (again every 0.5 s until the echo comes
   back); every datagram received is printed as ``RECV <repr>``; the controlled side answers
   each with ``b"echo:" + data`` and stops 1 s after the last one.

Other lines on stdout: ``READY``, ``SELECTED <local foundation> <remote foundation>``
(from the ``new-selected-pair`` signal), ``FAILED``, and last ``DONE ok`` or
``DONE failed <why>``. Exit status 0 on success.

Nomination: regular (``NICE_AGENT_OPTION_REGULAR_NOMINATION``) unless ``--aggressive``;
the mode is fixed when the agent is made. Consent freshness (RFC 7675) is on.

The libnice traps of docs/peers.md are worked around with ctypes:
``nice_agent_attach_recv`` (missing from the typelib; without a receive callback libnice
reads nothing from its sockets) and ``nice_agent_send`` (GI's ``send`` takes text only).
Candidates are exchanged as SDP text, never read from ``Nice.Candidate`` fields.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import threading

import gi

gi.require_version("Nice", "0.1")
from gi.repository import GLib, Nice  # noqa: E402

PING = b"ping"
ECHO = b"echo:"
PING_INTERVAL_MS = 500
LINGER_MS = 1000

RecvFunc = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,  # NiceAgent *
    ctypes.c_uint,  # stream id
    ctypes.c_uint,  # component id
    ctypes.c_uint,  # length
    ctypes.c_void_p,  # gchar *buf
    ctypes.c_void_p,  # user data
)


def _capsule_pointer(obj: object) -> int:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return int(get(obj.__gpointer__, None))  # type: ignore[attr-defined]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.controlling = bool(args.controlling)
        self.loop = GLib.MainLoop()
        self.context = GLib.MainContext.default()
        options = Nice.AgentOption.CONSENT_FRESHNESS | Nice.AgentOption.ICE_TRICKLE
        if not args.aggressive:
            options |= Nice.AgentOption.REGULAR_NOMINATION
        self.agent = Nice.Agent.new_full(self.context, Nice.Compatibility.RFC5245, options)
        self.agent.set_property("controlling-mode", self.controlling)
        self.agent.set_property("ice-tcp", False)
        self.agent.set_property("ice-udp", True)
        self.agent.set_property("upnp", False)
        for ip in args.host_ip:
            address = Nice.Address.new()
            if not address.set_from_string(ip):
                raise SystemExit(f"libnice_peer: bad --host-ip {ip!r}")
            self.agent.add_local_address(address)
        self.stream = self.agent.add_stream(1)
        self.agent.set_port_range(self.stream, 1, 0, 0)
        if args.turn:
            host, _, port = args.turn.rpartition(":")
            name, _, password = (args.user or ":").partition(":")
            self.agent.set_relay_info(
                self.stream, 1, host, int(port), name, password, Nice.RelayType.TURN_UDP
            )
        self.libnice = ctypes.CDLL("libnice.so.10")
        self.libnice.nice_agent_attach_recv.argtypes = [
            ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, RecvFunc,
            ctypes.c_void_p,
        ]  # fmt: skip
        self.libnice.nice_agent_attach_recv.restype = ctypes.c_int
        self.libnice.nice_agent_send.argtypes = [
            ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_char_p,
        ]  # fmt: skip
        self.libnice.nice_agent_send.restype = ctypes.c_int
        self.agent_ptr = _capsule_pointer(self.agent)
        glib = ctypes.CDLL("libglib-2.0.so.0")
        glib.g_main_context_default.restype = ctypes.c_void_p
        self.context_ptr = glib.g_main_context_default()  # the agent's context (the default)
        self.recv_cb = RecvFunc(self._on_recv)  # kept referenced for the agent's lifetime
        ok = self.libnice.nice_agent_attach_recv(
            self.agent_ptr, self.stream, 1, self.context_ptr, self.recv_cb, None
        )
        if not ok:
            raise SystemExit("libnice_peer: nice_agent_attach_recv failed")
        self.agent.connect("candidate-gathering-done", self._on_gathered)
        self.agent.connect("component-state-changed", self._on_state)
        self.agent.connect("new-selected-pair", self._on_selected)
        self.ready = False
        self.echoed = False
        self.received = 0
        self.result: str | None = None
        self.linger: int | None = None

    # ------------------------------------------------------------------ steps

    def run(self) -> int:
        GLib.timeout_add(int(self.args.timeout * 1000), self._on_timeout)
        if not self.agent.gather_candidates(self.stream):
            say("DONE failed gather_candidates returned FALSE")
            return 1
        self.loop.run()
        self.agent.remove_stream(self.stream)
        self.agent.close_async(None, None)
        ok = self.result == "ok"
        say("DONE ok" if ok else f"DONE failed {self.result}")
        return 0 if ok else 1

    def finish(self, result: str) -> None:
        if self.result is None:
            self.result = result
            self.loop.quit()

    def _on_gathered(self, agent: Nice.Agent, stream: int) -> None:
        sdp = agent.generate_local_sdp()
        for line in sdp.splitlines():
            if line.strip():
                say(line.strip())
        say("")
        threading.Thread(target=self._read_stdin, daemon=True).start()

    def _read_stdin(self) -> None:
        lines: list[str] = []
        for raw in sys.stdin:
            line = raw.strip()
            if not line:
                if lines:
                    break
                continue
            lines.append(line)
        GLib.idle_add(self._on_remote, "\n".join(lines) + "\n")

    def _on_remote(self, text: str) -> bool:
        if not text.strip():
            self.finish("no peer description on stdin")
            return False
        added = self.agent.parse_remote_sdp(text)
        sys.stderr.write(f"libnice_peer: parse_remote_sdp -> {added}\n")
        if added < 0:
            self.finish(f"parse_remote_sdp failed ({added})")
            return False
        self.agent.peer_candidate_gathering_done(self.stream)
        return False

    def _on_state(self, agent: Nice.Agent, stream: int, component: int, state: int) -> None:
        if state == Nice.ComponentState.READY and not self.ready:
            self.ready = True
            say("READY")
            if self.controlling:
                self._ping()
                GLib.timeout_add(PING_INTERVAL_MS, self._ping)
            else:
                self._restart_linger(int(self.args.timeout * 1000))
        elif state == Nice.ComponentState.FAILED:
            say("FAILED")
            self.finish("component failed")

    def _on_selected(self, agent: Nice.Agent, stream: int, component: int,
                     local: str, remote: str) -> None:
        say(f"SELECTED {local} {remote}")

    def _ping(self) -> bool:
        if self.echoed or self.result is not None:
            return False
        self.send(PING)
        return True

    def send(self, data: bytes) -> None:
        sent = self.libnice.nice_agent_send(self.agent_ptr, self.stream, 1, len(data), data)
        if sent != len(data):
            sys.stderr.write(f"libnice_peer: nice_agent_send returned {sent}\n")

    def _on_recv(self, agent: int, stream: int, component: int, length: int, buf: int,
                 data: int) -> None:
        payload = ctypes.string_at(buf, length)
        self.received += 1
        say(f"RECV {payload!r}")
        if self.controlling:
            if payload == ECHO + PING:
                self.echoed = True
                self.finish("ok")
        else:
            self.send(ECHO + payload)
            self._restart_linger(LINGER_MS)

    def _restart_linger(self, ms: int) -> None:
        if self.linger is not None:
            GLib.source_remove(self.linger)
        self.linger = GLib.timeout_add(ms, self._on_linger)

    def _on_linger(self) -> bool:
        self.linger = None
        self.finish("ok" if self.received else "no datagram received")
        return False

    def _on_timeout(self) -> bool:
        self.finish("timeout" + ("" if self.ready else " before READY"))
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--controlling", action="store_true")
    role.add_argument("--controlled", action="store_true")
    parser.add_argument("--aggressive", action="store_true")
    parser.add_argument("--host-ip", action="append", default=[])
    parser.add_argument("--turn", metavar="IP:PORT")
    parser.add_argument("--user", metavar="NAME:PASSWORD")
    parser.add_argument("--timeout", type=float, default=20.0)
    return Peer(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
