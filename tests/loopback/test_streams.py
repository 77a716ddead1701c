"""anchor_stun.aio.streams: the sizing of the bounds from the descriptor limit, and the loop
exception handler that turns accept() failures for lack of descriptors into a counter and
one warning (issue 24). The bounds themselves are exercised against `anchor serve` in
tests/loopback/test_serve_hostile.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
from pathlib import Path

import pytest

from anchor_stun.aio.net import StunServerRunner
from anchor_stun.aio.streams import (
    FD_RESERVE,
    LoopErrorFilter,
    StreamGuard,
    raise_nofile_limit,
    resource_budget,
)
from anchor_stun.framing import StreamFramer
from anchor_stun.message import Message, MessageClass, Method
from anchor_stun.server import StunServer
from tests.helpers import free_port


def test_resource_budget_leaves_room_for_everything_else() -> None:
    for nofile in (256, 1024, 4096, 65536, 1 << 20):
        connections, allocations = resource_budget(nofile)
        # connections + two relay sockets per (dual-stack) allocation + the reserve fit
        assert connections + 2 * allocations + FD_RESERVE <= nofile
        assert connections > 0 and allocations > 0
    assert resource_budget(1024) == (360, 300)


def test_raise_nofile_limit_reaches_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        assert raise_nofile_limit() == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_failures_are_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    """What asyncio reports when accept() fails with EMFILE (it retries a second later by
    itself): 1,000 of them give one warning, no traceback, and a count of 1,000."""
    loop = asyncio.new_event_loop()
    try:
        handler = LoopErrorFilter(interval=60.0)
        handler.install(loop)
        with caplog.at_level(logging.DEBUG):
            for _ in range(1000):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
        assert handler.resource_errors == 1000
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and warnings[0].exc_info is None
        assert "Traceback" not in caplog.text
        # Other errors still reach the default handler, at most ``burst`` per interval.
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            for _ in range(50):
                loop.call_exception_handler({"message": "something else"})
        assert len(caplog.records) == handler.burst
        assert handler.suppressed == 50 - handler.burst
    finally:
        loop.close()


def test_guard_without_a_limit_sizes_itself_from_the_descriptors() -> None:
    async def main() -> None:
        guard = StreamGuard()
        guard.start(asyncio.get_running_loop())
        try:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            assert guard.max_connections == resource_budget(soft)[0]
        finally:
            guard.close()

    asyncio.run(main())


def test_a_request_right_behind_the_tls_finished_is_answered(tls_files: tuple[Path, Path]) -> None:
    """A TLS 1.3 client may send its first request in the same segment as its Finished (a
    TurnConnection does, about half the time on loopback): the TLS layer hands the request
    over before ``start_tls`` has returned the transport. It must be answered, not lost (it
    was, and gathering over TLS then waited out its 5 s)."""
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    port = free_port("tcp")
    request = Message(Method.BINDING, MessageClass.REQUEST, b"\x01" * 12).encode()

    def client() -> Message:
        ctx = ssl.create_default_context(cafile=str(cert))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    incoming.write(sock.recv(65536))
            tls.write(request)
            sock.sendall(outgoing.read())  # the Finished and the request in one segment
            framer = StreamFramer()
            while True:
                try:
                    frames = framer.feed(tls.read(65536))
                except ssl.SSLWantReadError:
                    incoming.write(sock.recv(65536))
                    continue
                if frames:
                    return Message.decode(frames[0])

    async def main() -> Message:
        runner = StunServerRunner(StunServer(primary=("127.0.0.1", free_port("udp"))))
        await runner.start(tls_context=server_ctx, tls_address=("127.0.0.1", port))
        try:
            return await asyncio.to_thread(client)
        finally:
            runner.close()

    answer = asyncio.run(asyncio.wait_for(main(), 10))
    assert answer.transaction_id == b"\x01" * 12 and answer.msg_class is MessageClass.SUCCESS
