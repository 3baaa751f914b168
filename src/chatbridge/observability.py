"""What `chatbridge run` tells its orchestrator and its monitoring: /healthz, /readyz and /metrics on one port.

- `/healthz` (liveness): 200 while the worker's threads are alive. An orchestrator restarts the process otherwise.
- `/readyz` (readiness): 200 when the broker answered a poll recently, the store answers a query, the chat backend
  answers, and this replica owns partitions; otherwise 503 with the failing checks in a JSON body. Its `notes` say
  what waits without making the replica unready: `deletions` names chat deletions held back until the input is
  complete (reconciler.knowledge), with the partitions that lag and by how much.
- `/metrics`: Prometheus text format (names below, all prefixed `chatbridge_`).

The metrics are fed from the worker's threads: intake counts and consumer lag after every poll (consumer thread),
chats by phase, parked chats, the oldest overdue deadline and the deletion gate (deletions waiting, the store's lag
behind the gate's last reading, up to when the input is known complete) every reconcile round (reconciler thread),
and every
backend step through `InstrumentedBackend` (the reconciler's pool). Labels carry topics, partitions, phases and step
kinds — never an org, an event or a person, so the number of series stays small and holds no personal data.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from chatbridge.backends.port import AddOutcome, BackendUnavailable, ChatBackend
from chatbridge.domain.lifecycle import Phase
from chatbridge.projections.desired_state import DesiredChat

log = logging.getLogger(__name__)

STEP_KINDS = ("create_chat", "add_member", "remove_member", "set_moderator", "set_read_only", "delete_chat",
              "set_name", "set_topic", "set_order", "join_bridge")  # fmt: skip
READS = ("get_chat", "ensure_tenant", "account")


class Metrics:
    """The worker's metrics, in a registry of their own (one per worker, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, …
        PlatformCollector(registry=r)
        self.records = Counter(
            "chatbridge_records", "Input records by topic and outcome (applied, ignored, duplicate, rejected).",
            ["topic", "outcome"], registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "chatbridge_consumer_lag", "Records on the broker not yet stored, per assigned partition.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.partitions = Gauge("chatbridge_partitions_assigned", "Input partitions this replica owns.", registry=r)
        self.last_poll = Gauge(
            "chatbridge_last_poll_timestamp_seconds", "When the consumer last polled the broker successfully.",
            registry=r,
        )  # fmt: skip
        self.steps = Counter(
            "chatbridge_reconcile_steps", "Steps at the chat backend, by kind and outcome (ok, pending, failed).",
            ["kind", "outcome"], registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "chatbridge_reconcile_step_seconds", "How long one step at the chat backend took.", ["kind"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )  # fmt: skip
        self.reads = Counter(
            "chatbridge_backend_reads", "Reads of the chat backend (get_chat, ensure_tenant), by outcome.",
            ["operation", "outcome"], registry=r,
        )  # fmt: skip
        self.parked = Gauge("chatbridge_parked_chats", "Chats parked after repeated failures.", registry=r)
        self.members_pending = Gauge(
            "chatbridge_members_pending", "Persons not yet added to their chat, by reason (no account yet, …).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.chats = Gauge("chatbridge_chats", "Chats this replica owns, by phase now.", ["phase"], registry=r)
        self.overdue = Gauge(
            "chatbridge_oldest_overdue_seconds",
            "Age of the oldest deadline (read-only or deletion) passed but not yet brought about at the backend.",
            registry=r,
        )
        self.deletions_waiting = Gauge(
            "chatbridge_deletions_waiting",
            "Chats whose deletion waits until the store holds the input up to end offsets read after the deadline.",
            registry=r,
        )
        self.gate_lag = Gauge(
            "chatbridge_deletion_gate_lag",
            "Records the store lacks behind the end offsets the deletion gate read last, per input partition.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.known_complete = Gauge(
            "chatbridge_input_complete_until_timestamp_seconds",
            "The reconciler's time up to which the store holds all input (deletions with deadlines up to it may go).",
            registry=r,
        )
        for phase in Phase:
            self.chats.labels(phase=str(phase))
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    # -- intake (consumer thread) ----------------------------------------------------------------------------

    def observe_intake(self, by_topic: Mapping[tuple[str, str], int]) -> None:
        """Bring the counters up to the worker's running totals per (topic, outcome)."""
        with self._lock:
            for key, total in by_topic.items():
                seen = self._seen.get(key, 0)
                if total > seen:
                    self.records.labels(topic=key[0], outcome=key[1]).inc(total - seen)
                    self._seen[key] = total

    def observe_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        self.lag.clear()
        for (topic, partition), behind in lag.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(behind)
        self.partitions.set(len(lag))
        self.last_poll.set(time.time())

    # -- chats (reconciler thread) ---------------------------------------------------------------------------

    def observe_chats(
        self, rows: Iterable[DesiredChat], now: datetime, brought_about: Mapping[Any, Phase | None] | None
    ) -> None:
        """Chats by phase, and the oldest deadline passed that the reconciler has not brought about yet (given
        `brought_about`, the phase it last brought about per chat)."""
        counts = dict.fromkeys((str(p) for p in Phase), 0)
        oldest = 0.0
        for row in rows:
            phase = row.phase(now)
            counts[str(phase)] += 1
            deadline = _deadline_of(row, phase)
            if brought_about is None or deadline is None:
                continue  # without a reconciler in this process nothing is brought about here
            if brought_about.get((row.org, row.event_id)) != phase:
                oldest = max(oldest, (now - deadline).total_seconds())
        for phase_name, count in counts.items():
            self.chats.labels(phase=phase_name).set(count)
        self.overdue.set(oldest)

    def observe_pending(self, reasons: Iterable[str]) -> None:
        """Pending persons of the chats this replica reconciles, counted by reason (naming no one)."""
        counts: dict[str, int] = {}
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
        self.members_pending.clear()
        for reason, count in counts.items():
            self.members_pending.labels(reason=reason).set(count)

    def observe_gate(self, waiting: int, lag: Mapping[tuple[str, int], int], known_at: datetime | None) -> None:
        """The deletion gate: chats waiting, the lag behind its last reading, and up to when the input is known."""
        self.deletions_waiting.set(waiting)
        self.gate_lag.clear()
        for (topic, partition), behind in lag.items():
            self.gate_lag.labels(topic=topic, partition=str(partition)).set(behind)
        if known_at is not None and known_at.year < 9999:  # the store as the whole input knows no bound
            self.known_complete.set(known_at.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _deadline_of(row: DesiredChat, phase: Phase) -> datetime | None:
    """The deadline that put the chat into `phase` by the clock (None for phases no deadline brings)."""
    if phase == Phase.DELETED and not row.deleted:
        return row.delete_at
    if phase == Phase.READ_ONLY:
        return row.read_only_at
    return None


class InstrumentedBackend:
    """The chat backend with every step counted and timed; otherwise the backend itself (same port)."""

    def __init__(self, backend: ChatBackend, metrics: Metrics):
        self._backend = backend
        self._metrics = metrics
        self.last_unavailable: float | None = None  # when the backend last failed to answer (monotonic)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._backend, name)
        if name not in STEP_KINDS and name not in READS:
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = attribute(*args, **kwargs)
            except Exception as error:
                if isinstance(error, BackendUnavailable):
                    self.last_unavailable = time.monotonic()
                self._count(name, "failed", started)
                raise
            self._count(name, "pending" if isinstance(result, AddOutcome) and result.pending else "ok", started)
            return result

        return timed

    def _count(self, name: str, outcome: str, started: float) -> None:
        if name in READS:
            self._metrics.reads.labels(operation=name, outcome=outcome).inc()
            return
        self._metrics.steps.labels(kind=name, outcome=outcome).inc()
        self._metrics.step_seconds.labels(kind=name).observe(time.perf_counter() - started)


Check = Callable[[], str | None]
"""A readiness check: None when fine, else one line saying what is wrong."""


class HealthServer:
    """/healthz, /readyz and /metrics on `host:port` (port 0: any free port, see `port`), in a daemon thread."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        *,
        alive: Callable[[], bool] = lambda: True,
        checks: Mapping[str, Check] | None = None,
        notes: Mapping[str, Check] | None = None,
    ):
        self.metrics = metrics
        self.alive = alive
        self.checks = dict(checks or {})
        self.notes = dict(notes or {})  # said in /readyz's body, never failing it
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server.alive()
                    self._json(200 if ok else 503, {"status": "ok" if ok else "failing"})
                elif path == "/readyz":
                    failing, notes = server.readiness(), server.noted()
                    body: dict[str, Any] = {"status": "failing" if failing else "ok", "checks": {
                        name: failing.get(name, "ok") for name in server.checks}}  # fmt: skip
                    if notes:
                        body["notes"] = notes
                    self._json(503 if failing else 200, body)
                else:
                    self._json(404, {"error": "not found", "paths": ["/healthz", "/readyz", "/metrics"]})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode() + b"\n", "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # probes every few seconds would drown the worker's own lines

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def readiness(self) -> dict[str, str]:
        """The failing checks, each with its reason (empty: ready)."""
        failing = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as error:  # a check that breaks is a failing check, never a failing probe
                problem = f"check failed: {type(error).__name__}"
            if problem:
                failing[name] = problem
        return failing

    def noted(self) -> dict[str, str]:
        """What the notes say (empty: nothing to say)."""
        said = {}
        for name, note in self.notes.items():
            try:
                text = note()
            except Exception as error:
                text = f"note failed: {type(error).__name__}"
            if text:
                said[name] = text
        return said

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("serving /healthz, /readyz and /metrics on port %d", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
