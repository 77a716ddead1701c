"""Helpers shared by the subcommands of the ``anchor`` command."""

from __future__ import annotations

import socket

__all__ = ["SOFTWARE", "UsageError", "free_loopback_port"]

SOFTWARE = "anchor 0.1"


class UsageError(Exception):
    """A mistake on the command line or in its inputs: reported as one line, exit 2."""


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP at the time of the call."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if _port_free(port):
            return port
