"""Run ``anchor serve`` from a TOML configuration, use it, stop it.

Starts ``anchor serve --config examples/anchor-serve.toml`` (the file beside this script)
as a child process, with ``--listen`` on a free loopback port (the command line wins over
the file, option by option), and waits for its ``listening udp|tcp IP:PORT`` lines. Then:

- a STUN Binding request over UDP and over TCP (:func:`anchor_stun.binding_request`);
- a TURN allocation over TCP with the user the file declares (:class:`anchor_turn.TurnConnection`),
  released when done;
- SIGTERM, after which ``anchor serve`` exits 0.

Run: ``python examples/serve_with_config.py``. Exit 0 and ``anchor serve ... stopped: exit 0``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import tomllib
from pathlib import Path

from anchor_stun import AnchorError, binding_request, format_address
from anchor_turn import TurnConnection

LOOPBACK = "127.0.0.1"
CONFIG = Path(__file__).with_name("anchor-serve.toml")


def free_port() -> int:
    """A port free on loopback for both UDP and TCP now (the file asks for TCP too)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise OSError("no free port on loopback")


async def main() -> None:
    config = tomllib.loads(CONFIG.read_text())
    user, password = next(iter(config["user"].items()))
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "anchor_cli", "serve",
        "--config", str(CONFIG), "--listen", f"{LOOPBACK}:{port}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert server.stdout is not None
    try:
        listening: dict[str, str] = {}
        while set(listening) != {"udp", "tcp"}:
            line = (await asyncio.wait_for(server.stdout.readline(), 20)).decode()
            if not line:
                raise SystemExit("error: anchor serve exited before listening")
            print(line.strip())
            words = line.split()
            if words[:1] == ["listening"]:
                listening[words[1]] = words[2]
        for transport in ("udp", "tcp"):
            result = await binding_request((LOOPBACK, port), transport, timeout=5)
            print(f"stun over {transport}: mapped {format_address(result.mapped)}")
        async with await TurnConnection.connect((LOOPBACK, port), user, password, "tcp") as turn:
            created = await turn.allocate()
            print(f"turn over tcp as {user}: relayed {format_address(created.relayed)}")
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)  # what systemd's stop does
        try:
            status = await asyncio.wait_for(server.wait(), 20)
        except TimeoutError:
            server.kill()
            raise
    if status != 0:
        raise SystemExit(f"error: anchor serve exited {status}")
    print(f"anchor serve --config {CONFIG.name} stopped: exit 0")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (AnchorError, OSError, TimeoutError) as exc:
        sys.exit(f"error: {exc!r}")
