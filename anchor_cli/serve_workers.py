"""``anchor serve --workers N``: one supervisor and N worker processes sharing the listeners.

Theory of operation
-------------------
One Python process relays as much as one core can; ``--workers N`` (``auto``: one per CPU
this process may run on) runs N of them on the same addresses. The process started by the
command becomes the **supervisor**; it serves no STUN/TURN itself:

* It draws one nonce secret (32 bytes, ``os.urandom``) and starts N workers, each
  ``python -m anchor_cli.serve_workers`` with one JSON line on its standard input: the
  command's options, its index, the secret (so a NONCE one worker issued verifies on any
  other, :class:`~anchor_turn.server.TurnServer` ``nonce_secret``), its share of the relay
  port range (``--min-port``..``--max-port`` cut in N consecutive slices: no two workers
  can pick the same relayed port) and the supervisor's own ports to refuse as peers.
* Every worker opens every listener (UDP, TCP, TLS) with ``SO_REUSEPORT``; the kernel
  spreads clients among them by the hash of the 4-tuple, so a client's datagrams and
  connections always reach the worker holding its allocation while the set of workers is
  unchanged. Without ``--redis`` each worker has its own per-user quota and a share of
  ``--total-quota``; with it the quotas are shared (:mod:`anchor_turn.aio.redis_store`).
* Metrics: with ``--metrics`` the supervisor owns a temporary directory (created at start,
  removed at exit) given to the workers as ``PROMETHEUS_MULTIPROC_DIR``; each worker copies
  its counters and gauges there every :data:`MIRROR_INTERVAL` seconds
  (:class:`MultiprocessMirror`, prometheus-client's multiprocess mode: counters are summed
  over every worker that ever ran, gauges over the live ones), and the supervisor serves
  them all at one ``/metrics`` with ``anchor_workers`` (alive), ``anchor_worker_restarts``
  and, per worker, ``anchor_worker_allocations{worker=...}`` and
  ``anchor_worker_allocations_created{worker=...}``. The rendezvous (``--signal``) also runs
  in the supervisor: one process holds the names.
* A worker prints its ``listening`` lines, then ``ready``; the supervisor prints the first
  worker's lines once all are ready. A worker that exits unasked is restarted with the same
  index, secret and ports (after a pause that doubles while it keeps failing, up to
  :data:`MAX_RESTART_DELAY` seconds); its dead process's live gauges are dropped.
* SIGTERM or SIGINT: the supervisor passes SIGTERM to every worker (each drains for
  ``--drain`` seconds and closes), waits for them all, kills any left after the drain
  plus :data:`STOP_GRACE` seconds, removes the metrics directory and exits 0. A worker whose
  supervisor is gone sees its standard input close and stops too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from anchor_cli.serve import (
    OPTIONS,
    ServeConfig,
    ServeError,
    build_config,
    start_side_services,
)
from anchor_cli.serve_log import configure_logging, log_event, report_error
from anchor_stun.events import Address

__all__ = [
    "MAX_RESTART_DELAY",
    "MIRROR_INTERVAL",
    "STOP_GRACE",
    "MultiprocessMirror",
    "WorkerRole",
    "run_supervisor",
    "split_ports",
    "worker_main",
]

MIRROR_INTERVAL = 0.5
"""Seconds between two copies of a worker's counters into the multiprocess files."""
MAX_RESTART_DELAY = 5.0
"""Longest pause before restarting a worker that keeps failing."""
STOP_GRACE = 10.0
"""Seconds a worker has, beyond ``--drain``, to exit after SIGTERM before it is killed."""
_PER_WORKER = {
    "anchor_turn_allocations": "anchor_worker_allocations",
    "anchor_turn_allocations_created": "anchor_worker_allocations_created",
}


def split_ports(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """``low``..``high`` cut in ``count`` consecutive slices (the last one takes the rest);
    raises :class:`ServeError` when a slice would hold fewer than 2 ports (EVEN-PORT)."""
    span = (high - low + 1) // count
    if span < 2:
        raise ServeError(
            f"--min-port {low} .. --max-port {high} is too small for {count} workers"
        )
    return [
        (low + i * span, high if i == count - 1 else low + (i + 1) * span - 1)
        for i in range(count)
    ]


# ----------------------------------------------------------------------------- workers


class MultiprocessMirror:
    """Copies what a collector reports into prometheus-client's multiprocess files
    (``PROMETHEUS_MULTIPROC_DIR``, set before prometheus-client is imported): counters by
    their increase since the last copy, gauges as values (``livesum``: summed over the live
    workers). The families of :data:`_PER_WORKER` are also copied with a ``worker`` label,
    under their per-worker names."""

    def __init__(self, collector: Any, worker: int) -> None:
        self.collector = collector
        """What is copied (a prometheus-client collector)."""
        self.worker = str(worker)
        """This worker's index, the ``worker`` label."""
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def _metric(self, kind: str, name: str, doc: str, labels: Sequence[str]) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            from prometheus_client import Counter, Gauge

            if kind == "counter":
                metric = Counter(name, doc, list(labels), registry=None)
            else:
                metric = Gauge(name, doc, list(labels), registry=None,
                               multiprocess_mode="livesum")  # fmt: skip
            self._metrics[name] = metric
        return metric

    def _set(self, kind: str, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        metric = self._metric(kind, name, doc, sorted(labels))
        child = metric.labels(**labels) if labels else metric
        if kind == "counter":
            key = (name, tuple(sorted(labels.items())))
            delta = value - self._last.get(key, 0.0)
            if delta > 0:
                child.inc(delta)
                self._last[key] = value
        else:
            child.set(value)

    def sync(self) -> None:
        """Copy the collector's current values."""
        for family in self.collector.collect():
            kind = "counter" if family.type == "counter" else "gauge"
            for sample in family.samples:
                if kind == "counter" and not sample.name.endswith("_total"):
                    continue
                labels = dict(sample.labels)
                self._set(kind, family.name, family.documentation, labels, sample.value)
                per_worker = _PER_WORKER.get(family.name)
                if per_worker is not None:
                    self._set(kind, per_worker, f"{family.documentation}, per worker",
                              {**labels, "worker": self.worker}, sample.value)  # fmt: skip


class WorkerRole:
    """What makes ``anchor serve`` a worker of a supervisor: its index among ``count``, the
    shared nonce secret, the supervisor's ports to refuse as peers, and whether to mirror
    metrics. :meth:`start` watches standard input (closed: the supervisor is gone, stop) and
    starts the mirror; :meth:`ready` tells the supervisor the listeners are open."""

    def __init__(
        self,
        index: int,
        count: int,
        nonce_secret: bytes,
        protect: Sequence[Address] = (),
        metrics: bool = False,
    ) -> None:
        self.index = index
        """This worker's index (0 .. count-1)."""
        self.count = count
        """How many workers the supervisor runs."""
        self.nonce_secret = nonce_secret
        """The key of the nonces, the same in every worker."""
        self.protect: tuple[Address, ...] = tuple(protect)
        """The supervisor's own addresses (metrics, rendezvous): never peers."""
        self.metrics = metrics
        """Whether to copy the counters into the multiprocess files."""
        self._mirror: MultiprocessMirror | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, stop: asyncio.Event, collector: Any) -> None:
        """Stop on end of standard input; mirror ``collector`` when metrics are on."""
        loop = asyncio.get_running_loop()
        self._loop = loop

        def readable() -> None:
            try:
                data = os.read(0, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(0)
                stop.set()

        os.set_blocking(0, False)
        loop.add_reader(0, readable)
        if self.metrics:
            self._mirror = MultiprocessMirror(collector, self.index)
            self._task = loop.create_task(self._mirror_loop())

    async def _mirror_loop(self) -> None:
        assert self._mirror is not None
        while True:
            self._mirror.sync()
            await asyncio.sleep(MIRROR_INTERVAL)

    def ready(self) -> None:
        """Tell the supervisor that every listener is open."""
        print("ready", flush=True)

    def close(self) -> None:
        """Stop watching and mirroring (one last copy first)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(0)
        if self._task is not None:
            self._task.cancel()
        if self._mirror is not None:
            with contextlib.suppress(Exception):
                self._mirror.sync()


def _worker_config(spec: dict[str, Any]) -> ServeConfig:
    args = argparse.Namespace(**spec["args"])
    cfg = build_config(args)
    count = int(spec["count"])
    cfg.workers = 1
    cfg.metrics = None
    cfg.signal = None
    cfg.min_port, cfg.max_port = (int(p) for p in spec["ports"])
    if cfg.total_quota is not None and cfg.redis is None:
        cfg.total_quota = max(1, -(-cfg.total_quota // count))  # this worker's share
    return cfg


def worker_main() -> int:
    """Entry point of a worker process: one JSON line on standard input, then serve."""
    from anchor_cli.serve import _serve as serve

    try:
        spec = json.loads(sys.stdin.buffer.readline() or b"{}")
        cfg = _worker_config(spec)
        configure_logging(cfg.log_format, worker=int(spec["index"]))
        role = WorkerRole(
            int(spec["index"]),
            int(spec["count"]),
            bytes.fromhex(spec["secret"]),
            [(str(ip), int(port)) for ip, port in spec["protect"]],
            bool(spec["metrics"]),
        )
        asyncio.run(serve(cfg, str(spec.get("software", "anchor")), role))
    except ServeError as exc:
        report_error(f"anchor serve: {exc}")
        return 2
    except KeyboardInterrupt:
        return 0
    except (KeyError, ValueError, TypeError) as exc:
        report_error(f"anchor serve worker: bad start-up line: {exc}")
        return 2
    return 0


# ----------------------------------------------------------------------------- supervisor


class _Worker:
    """One worker slot: its process (replaced on restart) and what it printed."""

    def __init__(self, index: int, ports: tuple[int, int]) -> None:
        self.index = index
        self.ports = ports
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.lines: list[str] = []
        self.restarts = 0
        self.delay = 0.1


class _Supervisor:
    def __init__(self, cfg: ServeConfig, args: argparse.Namespace, software: str) -> None:
        self.cfg = cfg
        self.software = software
        self.args = {o.dest: getattr(args, o.dest, None) for o in OPTIONS}
        self.args["config"] = getattr(args, "config", None)
        self.secret = os.urandom(32)
        self.workers = [
            _Worker(i, ports)
            for i, ports in enumerate(split_ports(cfg.min_port, cfg.max_port, cfg.workers))
        ]
        self.protect: list[Address] = []
        self.metrics_dir: str | None = None
        self.stopping = False

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        else:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    async def spawn(self, worker: _Worker) -> None:
        """Start ``worker``'s process and wait for its ``ready`` line; raises ServeError when
        it exits first."""
        spec = {
            "args": self.args,
            "index": worker.index,
            "count": len(self.workers),
            "secret": self.secret.hex(),
            "ports": list(worker.ports),
            "protect": [list(a) for a in self.protect],
            "metrics": self.metrics_dir is not None,
            "software": self.software,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "anchor_cli.serve_workers",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=self.env(),
        )  # fmt: skip
        worker.process = process
        worker.ready = False
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(spec).encode() + b"\n")
        await process.stdin.drain()
        lines: list[str] = []
        while True:
            raw = await process.stdout.readline()
            if not raw:
                code = await process.wait()
                raise ServeError(f"worker {worker.index} exited with {code} before it was ready")
            line = raw.decode(errors="replace").strip()
            if line == "ready":
                break
            lines.append(line)
        worker.lines = lines
        worker.ready = True
        asyncio.get_running_loop().create_task(self._drain_stdout(process))

    @staticmethod
    async def _drain_stdout(process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        with contextlib.suppress(Exception):
            while await process.stdout.readline():
                pass

    async def watch(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits while the supervisor is not stopping."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            process = worker.process
            assert process is not None
            started = loop.time()
            code = await process.wait()
            if self.stopping:
                return
            self._dead(process.pid)
            worker.restarts += 1
            log_event("worker-restarting", f"anchor serve: worker {worker.index} (pid "
                      f"{process.pid}) exited with {code}; restarting", logging.WARNING,
                      worker=worker.index, pid=process.pid, status=code)  # fmt: skip
            worker.delay = 0.1 if loop.time() - started > 10 else min(
                MAX_RESTART_DELAY, worker.delay * 2
            )
            await asyncio.sleep(worker.delay)
            if self.stopping:
                return
            try:
                await self.spawn(worker)
            except ServeError as exc:
                log_event("worker-failed", f"anchor serve: {exc}", logging.ERROR,
                          worker=worker.index)  # fmt: skip

    def _dead(self, pid: int) -> None:
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def alive(self) -> int:
        return sum(
            1
            for w in self.workers
            if w.ready and w.process is not None and w.process.returncode is None
        )

    async def stop_workers(self) -> None:
        self.stopping = True
        processes = [w.process for w in self.workers if w.process is not None]
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        grace = self.cfg.drain + STOP_GRACE
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            if process.stdin is not None:
                process.stdin.close()

    def collector(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        supervisor = self

        class _Collector:
            def collect(self) -> Iterator[Any]:
                yield GaugeMetricFamily(
                    "anchor_workers", "worker processes serving", value=supervisor.alive()
                )
                yield CounterMetricFamily(
                    "anchor_worker_restarts", "worker processes restarted after they exited",
                    value=sum(w.restarts for w in supervisor.workers),
                )

        return _Collector()


async def _supervise(sup: _Supervisor) -> None:
    cfg = sup.cfg
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    closers: list[Any] = []
    waiters: list[Any] = []
    lines: list[str] = []
    watchers: list[asyncio.Task[None]] = []
    try:
        collectors: tuple[Any, ...] = ()
        if cfg.metrics is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            assert sup.metrics_dir is not None
            collectors = (
                MultiProcessCollector(None, path=sup.metrics_dir),  # type: ignore[no-untyped-call]
                sup.collector(),
            )
        await start_side_services(cfg, collectors, closers, waiters, lines, sup.protect.extend)
        await asyncio.gather(*(sup.spawn(w) for w in sup.workers))
        for line in [*sup.workers[0].lines, *lines]:
            print(line, flush=True)
        log_event("started", f"supervising {len(sup.workers)} workers",
                  workers=[w.process.pid for w in sup.workers if w.process is not None])  # fmt: skip
        watchers = [loop.create_task(sup.watch(w)) for w in sup.workers]
        await stop.wait()
        log_event("stopping", "stopping the workers", workers=sup.alive())
    finally:
        await sup.stop_workers()
        for task in watchers:
            task.cancel()
        for close in closers:
            close()
        for wait in waiters:
            await wait()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log_event("stopped", "stopped")


def run_supervisor(cfg: ServeConfig, args: argparse.Namespace, software: str) -> int:
    """Run ``anchor serve --workers N`` (N > 1) as the supervisor; the exit status."""
    for ip, port in [*cfg.listen, *([cfg.tls_address] if cfg.tls_address else [])]:
        if port == 0:
            raise ServeError(f"--workers needs concrete ports, not {ip}:0")
    sup = _Supervisor(cfg, args, software)
    if cfg.metrics is not None:
        sup.metrics_dir = tempfile.mkdtemp(prefix="anchor-metrics-")
    try:
        asyncio.run(_supervise(sup))
    finally:
        if sup.metrics_dir is not None:
            shutil.rmtree(sup.metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
