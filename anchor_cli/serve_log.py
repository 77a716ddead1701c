"""What ``anchor serve`` logs on stderr: plain text (the default) or JSON lines
(``--log-format json``, issue 21).

Theory of operation
-------------------
Everything ``anchor serve`` reports on stderr goes through :mod:`logging`: its own events
(:func:`log_event`: started, stopping, stopped, a worker restarted, a mistake), the TURN
events of ``--verbose`` (:func:`turn_event`) and the warnings of the adapters
(``anchor_turn.aio.server``, ``anchor_turn.aio.redis_store``, ``anchor_stun.aio.streams``,
``anchor_cli.redis_router``: a relay IP that cannot be bound, Redis unavailable, descriptors
running out...), which name their event and fields with ``extra={"event": ..., "fields":
{...}}``.

* ``text`` changes nothing: no handler is installed, so warnings reach stderr as their bare
  message (logging's last-resort handler) and ``--verbose`` prints ``event <repr>`` lines,
  as before.
* ``json`` installs one handler on the root logger, :class:`JsonLineFormatter`: one JSON
  object per line, ``{"time", "level", "logger", "event", "message", "fields"}``. ``time``
  is RFC 3339 UTC with milliseconds, ``level`` lowercase (``info``, ``warning``,
  ``error``...), ``event`` a kebab-case name (``allocation-created``, ``redis-unavailable``;
  ``log`` for a record that names none), ``fields`` an object (addresses as ``"ip:port"``,
  a traceback as ``exception``), with the process's own fields (``pid``; ``worker`` in a
  worker of ``--workers``). Python warnings and uncaught exceptions become such lines too, so
  every line of stderr parses. Standard output is unchanged (the ``listening`` lines are a
  contract of their own).

A systemd unit and log collection: docs/serve.md "Running under systemd".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
import types
from typing import Any

from anchor_stun.aio.net import format_address

__all__ = [
    "LOG_FORMATS",
    "JsonLineFormatter",
    "configure_logging",
    "event_fields",
    "log_event",
    "report_error",
    "turn_event",
]

LOG_FORMATS = ("text", "json")
"""Values of ``--log-format``."""

_log = logging.getLogger("anchor_cli.serve")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it: an address as ``"ip:port"``, tuples as lists, bytes by
    their length, anything else unknown as its ``str``."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        if isinstance(value[1], int) and not isinstance(value[1], bool):
            return format_address((value[0], value[1]))
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (RFC 3339, UTC, milliseconds),
    ``level``, ``logger``, ``event``, ``message`` and ``fields`` (the record's ``fields``
    extra, ``static`` fields such as the worker index, and ``exception`` with a traceback)."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})
        """Fields every line carries (``pid``, ``worker``)."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line of ``record`` (no trailing newline)."""
        fields = dict(self.static)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.update(extra)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": str(getattr(record, "event", "log")),
            "message": record.getMessage(),
            "fields": _plain(fields),
        }
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: str | None, *, worker: int | None = None) -> None:
    """Set up stderr for ``log_format`` (``text`` or None: leave logging as it is; ``json``:
    :class:`JsonLineFormatter` on the root logger at INFO, Python warnings and uncaught
    exceptions through it). ``worker`` is the index of a ``--workers`` worker process."""
    if log_format != "json":
        return
    static: dict[str, Any] = {"pid": os.getpid()}
    if worker is not None:
        static["worker"] = worker
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _json_mode() -> bool:
    """Whether :func:`configure_logging` installed the JSON handler (the root logger's state
    is the only record of it)."""
    return any(isinstance(h.formatter, JsonLineFormatter) for h in logging.getLogger().handlers)


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    _log.critical(
        "uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb), extra={"event": "crash"}
    )


def log_event(event: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event of ``anchor serve`` (``event`` in kebab case, ``message`` for people,
    ``fields`` for machines). In text mode only WARNING and above reach stderr (as
    ``message``), as before ``--log-format`` existed."""
    _log.log(level, "%s", message, extra={"event": event, "fields": fields})


def event_fields(event: object) -> dict[str, Any]:
    """The fields of a dataclass event (a :class:`~anchor_turn.server.TurnServerEvent`), JSON
    ready: addresses as ``"ip:port"``, tuples as lists."""
    if not dataclasses.is_dataclass(event):
        return {}
    return {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}


def turn_event(event: object) -> None:
    """``--verbose``: one TURN server event on stderr (``event <repr>`` in text mode; in
    JSON, ``allocation-created`` and its fields for an ``AllocationCreatedEvent``)."""
    if not _json_mode():
        print(f"event {event}", file=sys.stderr, flush=True)
        return
    name = type(event).__name__.removesuffix("Event")
    log_event(_CAMEL.sub("-", name).lower(), f"{event}", **event_fields(event))


def report_error(message: str) -> None:
    """A mistake that ends ``anchor serve`` (exit status 2): ``message`` as one line on
    stderr, a JSON ``error`` event in JSON mode."""
    if _json_mode():
        log_event("error", message, logging.ERROR)
    else:
        print(message, file=sys.stderr, flush=True)
