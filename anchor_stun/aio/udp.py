"""Batched UDP socket I/O: several datagrams per system call where the OS offers it.

Theory of operation
-------------------
A UDP application pays the kernel once per datagram: one ``sendto`` and one ``recvfrom``
each, about a microsecond apiece on loopback, which is more than a pure-Python protocol
core spends on a frame. :class:`UdpBatchIO` wraps one non-blocking UDP socket and moves a
batch of datagrams with as few calls as the platform allows, without changing what goes on
the wire:

- **Sending** (:meth:`UdpBatchIO.send`): datagrams go out in order. On Linux (4.18 and
  later) a run of consecutive datagrams of one size to one address (the last of the run may
  be shorter) leaves as one ``sendmsg`` with a ``UDP_SEGMENT`` control message: generic
  segmentation offload (GSO), which QUIC stacks use for the same reason. The kernel, or the
  network card, cuts the buffer into exactly the datagrams that separate sends would have
  made, each with its own UDP and IP header; a receiver cannot tell the difference. A run
  holds at most :data:`MAX_SEGMENTS` datagrams and :data:`MAX_SEGMENTED_BYTES` bytes.
  Anything else (a lone datagram, a run of one, a platform without ``UDP_SEGMENT``) is sent
  with ``sendto`` / ``send``, the portable case. A segmented send that the kernel refuses
  for a reason other than a full buffer (a device that cannot segment or checksum, a kernel
  that rejects the size) turns segmentation off for the socket, and the run goes again one
  datagram at a time: there is one send path, which segments when the OS offers it.
- **Receiving** (:meth:`UdpBatchIO.receive`): on Linux (5.0 and later) the socket asks for
  ``UDP_GRO``: the kernel may then hand over several datagrams of one flow, all of one size
  but the last, as one buffer, with that size in a control message (on loopback it does so
  exactly for what a segmented send sent). They are cut apart again here, so the caller gets
  the same datagrams, in the same order, as separate reads would give, for one read.
  Elsewhere every read is one datagram, as before.

Errors are those of the socket: :meth:`UdpBatchIO.send` says how many datagrams the kernel
took and which error (``EAGAIN`` aside) refused the next one, and the caller decides (queue
the rest for writability, report an ICMP error, drop); :meth:`UdpBatchIO.receive` returns the
error that ended a batch, if any. Nothing here knows a protocol.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MAX_SEGMENTED_BYTES",
    "MAX_SEGMENTS",
    "READ_SIZE",
    "UdpBatchIO",
]

_SOL_UDP = getattr(socket, "SOL_UDP", 17)
# Python 3.11 names neither; the values are those of <linux/udp.h>.
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_UDP_GRO = getattr(socket, "UDP_GRO", 104)
_MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
_MSG_CTRUNC = getattr(socket, "MSG_CTRUNC", 0x08)
_SEGMENT_SIZE = struct.Struct("=H")  # the UDP_SEGMENT control message: a u16
_GRO_SIZE = struct.Struct("=i")  # the UDP_GRO control message: an int
_ANCILLARY = 4 * socket.CMSG_SPACE(_GRO_SIZE.size)  # UDP_GRO's, and room for others

MAX_SEGMENTS = 64
"""Datagrams in one segmented send at most (the kernel's UDP_MAX_SEGMENTS before 6.9)."""
MAX_SEGMENTED_BYTES = 65507
"""Bytes in one segmented send at most: the largest UDP payload over IPv4."""
READ_SIZE = 65536
"""Bytes asked of each read: a whole coalesced buffer (the kernel coalesces at most 64 KiB)."""
_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def _supports_segmentation(sock: socket.socket) -> bool:
    """Whether the kernel knows ``UDP_SEGMENT`` for this socket (Linux 4.18 and later)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.getsockopt(_SOL_UDP, _UDP_SEGMENT)
    except OSError:
        return False
    return True


def _enable_coalescing(sock: socket.socket) -> bool:
    """Ask the kernel for ``UDP_GRO`` reads (Linux 5.0 and later); whether it agreed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
    except OSError:
        return False
    return True


class UdpBatchIO:
    """Batched sends and reads on one non-blocking UDP socket (module docstring). The
    caller keeps owning the socket (and closes it); this object only moves datagrams.

    ``segment`` / ``coalesce``: use ``UDP_SEGMENT`` sends / ``UDP_GRO`` reads when the OS
    offers them (default: both)."""

    __slots__ = ("_sock", "coalescing", "segmenting", "truncated")

    def __init__(
        self, sock: socket.socket, *, segment: bool = True, coalesce: bool = True
    ) -> None:
        self._sock = sock
        self.segmenting = segment and _supports_segmentation(sock)
        """Whether runs of equal-size datagrams leave as one segmented send (``UDP_SEGMENT``);
        turned off for good when the kernel refuses one."""
        self.coalescing = coalesce and _enable_coalescing(sock)
        """Whether the kernel may hand over several datagrams in one read (``UDP_GRO``)."""
        self.truncated = 0
        """Reads dropped because they or their control messages did not fit (none should)."""

    def send(
        self, datagrams: Sequence[bytes], addr: Any = None, start: int = 0
    ) -> tuple[int, OSError | None]:
        """Send ``datagrams[start:]``, in order, to ``addr`` (None: the connected peer).
        Returns ``(sent, error)``: the kernel took ``datagrams[start:sent]``; when ``sent``
        is short of the end, ``error`` is None if its buffer is full (``EAGAIN``: wait until
        the socket is writable) and otherwise the error that refused ``datagrams[sent]``
        (say an ICMP error reported on this send). Runs of equal-size datagrams go out as
        one segmented send where the OS offers it (module docstring)."""
        sock = self._sock
        count = len(datagrams)
        i = start
        while i < count:
            data = datagrams[i]
            size = len(data)
            end = i + 1
            if self.segmenting and size:
                # The run: datagrams of this size, and one shorter (not empty) one to close it.
                limit = min(count, i + MAX_SEGMENTS, i + MAX_SEGMENTED_BYTES // size)
                while end < limit and len(datagrams[end]) == size:
                    end += 1
                if end < limit and 0 < len(datagrams[end]) < size:
                    end += 1
            try:
                if end - i > 1:
                    control = [(_SOL_UDP, _UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
                    run = datagrams[i:end]
                    if addr is None:
                        sock.sendmsg(run, control)
                    else:
                        sock.sendmsg(run, control, 0, addr)
                elif addr is None:
                    sock.send(data)
                else:
                    sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return i, None
            except OSError as exc:
                if exc.errno in _RETRY:
                    return i, None
                if end - i > 1 and exc.errno in (errno.EINVAL, errno.EIO, errno.EOPNOTSUPP):
                    self.segmenting = False  # not for this socket: one at a time from now on
                    continue
                return i, exc
            i = end
        return i, None

    def receive(self, out: list[tuple[bytes, Any]], reads: int) -> OSError | None:
        """Append to ``out`` the datagrams of up to ``reads`` reads, each ``(data, addr)``,
        in arrival order (a coalesced read gives several, cut apart). Stops early when
        nothing is left (``EAGAIN``) and returns None, or at another error, which it
        returns (say an ICMP error reported on the socket)."""
        sock = self._sock
        if not self.coalescing:
            recvfrom = sock.recvfrom
            for _ in range(reads):
                try:
                    out.append(recvfrom(READ_SIZE))
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError as exc:
                    return exc
            return None
        recvmsg = sock.recvmsg
        for _ in range(reads):
            try:
                data, ancillary, flags, addr = recvmsg(READ_SIZE, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                return exc
            if flags & (_MSG_TRUNC | _MSG_CTRUNC):
                self.truncated += 1  # cut short, or its segment size may be missing: lost
                continue
            segment = 0
            for level, kind, value in ancillary:
                if level == _SOL_UDP and kind == _UDP_GRO and len(value) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(value)[0]
            if 0 < segment < len(data):
                out.extend([(data[j : j + segment], addr) for j in range(0, len(data), segment)])
            else:
                out.append((data, addr))
        return None
