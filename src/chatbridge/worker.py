"""`chatbridge run`: the background worker operators deploy — Kafka intake, the projection, the reconciler.

One process per replica; several replicas in one consumer group share the partitions (see docs/operations.md).
With `http` it serves /healthz, /readyz and /metrics (`observability`). Stops cleanly on SIGTERM/SIGINT within
`CHATBRIDGE_SHUTDOWN_TIMEOUT` (`Settings.shutdown_timeout`), whatever the chat backend does: the batch in hand is
stored and committed and the consumer leaves the group, while the reconciler starts and retries no call at the
backend any more and cuts those still in flight after half the timeout (`ReconcilerWorker.run`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

from kafka.errors import KafkaError
from prometheus_client import Gauge

from chatbridge.backends.port import ChatBackend
from chatbridge.consumers.kafka import EndOffsetReader, IntakeCounts, KafkaIngestor
from chatbridge.journal.chain import Guard
from chatbridge.observability import Check, HealthServer, InstrumentedBackend, Metrics
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.projections.store import Store
from chatbridge.reconciler.knowledge import KnowledgeGate
from chatbridge.reconciler.loop import StatusListener
from chatbridge.reconciler.service import ReconcilerWorker, deletion_gate, utc_now
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings

log = logging.getLogger(__name__)

FOLD_INTERVAL = 1.0  # seconds between projection folds while records stream in
STALE_POLL = 60.0  # seconds without a successful poll after which the broker counts as unreachable (/readyz)
HUNG_LOOP = 300.0  # seconds without any poll after which the worker counts as hung (/healthz)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (the orchestrator) and SIGINT (Ctrl-C) ask the worker to finish its batch and leave."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: finishing the batch in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@dataclass
class ReconcilerParts:
    """The reconciler's part of the worker: the chat backend, its options, and where status documents go."""

    backend: ChatBackend
    options: ReconcilerSettings
    status: StatusListener | None = None
    probe: Check | None = None  # None when the backend answers, else why not (for /readyz)
    closing: tuple[Any, ...] = ()  # what else to close with the backend (the status producer)

    def close(self, timeout: float = 10) -> None:
        """Close the backend (calls still in flight are cut), then the rest, each given up to `timeout` seconds."""
        self.backend.close()
        for resource in self.closing:
            resource.close(timeout=timeout)


def run_worker(
    store: Store,
    settings: Settings,
    stop: threading.Event,
    *,
    idle_stop: float | None = None,
    on_batch: Callable[[IntakeCounts], None] | None = None,
    chat_sync: ReconcilerParts | None = None,
    metrics: Metrics | None = None,
    http: tuple[str, int] | None = None,
) -> IntakeCounts:
    """Consume the input topics into the store until `stop` is set, folding the projection as records arrive, and
    — with `chat_sync` — reconcile the chats this replica owns in a thread beside the consumer. With `http`
    (host, port) serve /healthz, /readyz and /metrics while it runs."""
    metrics = metrics or Metrics()
    ingestor: KafkaIngestor
    reconciler: ReconcilerWorker | None = None
    folded_at, unfolded = time.monotonic(), 0
    polled_at = [time.monotonic()]
    fold_wanted = threading.Event()  # the deletion gate asks for the rows to reflect the whole log (see knowledge)

    def after_poll(handled: int) -> None:
        # Fold at most once a second while full batches stream in, and at once when a poll took all there was
        # (the topics are quiet or trickle: a change is then folded and reconciled without waiting for an empty
        # poll's timeout). Folding after every batch of a backlog would cost more than the intake itself.
        nonlocal folded_at, unfolded
        polled_at[0] = time.monotonic()
        unfolded += handled
        caught_up = handled < settings.batch_size
        if fold_wanted.is_set() or (unfolded and (caught_up or time.monotonic() - folded_at >= FOLD_INTERVAL)):
            fold_wanted.clear()
            store.projection.catch_up()
            folded_at, unfolded = time.monotonic(), 0
            if reconciler is not None:
                reconciler.nudge()
            else:
                metrics.observe_chats(store.projection.view.desired_chats(), utc_now(), None)
        metrics.observe_intake(ingestor.counts.by_topic)
        metrics.observe_lag(ingestor.lag())
        if on_batch and handled:
            on_batch(ingestor.counts)

    def owned_rows() -> list[DesiredChat]:
        if audit is not None and audit.halted:  # no step at the backend whose proof could not be stored
            return []
        ownership = ingestor.ownership  # one read: the consumer thread replaces it on a rebalance
        return [row for row in store.projection.view.desired_chats() if ownership.owns(row.org, row.event_id)]

    def observe_reconciler(worker: ReconcilerWorker, rows: list[DesiredChat], now: datetime) -> None:
        states = dict(worker.reconciler.states)
        metrics.observe_chats(rows, now, {key: state.phase for key, state in states.items()})
        metrics.parked.set(sum(1 for state in states.values() if state.parked))
        metrics.observe_pending(reason for state in states.values() for reason in state.pending.values())
        gate = worker.reconciler.gate
        lag = gate.lag() if isinstance(gate, KnowledgeGate) else {}
        metrics.observe_gate(sum(1 for state in states.values() if state.waiting), lag, gate.known_at)

    joined = _join_group(lambda: KafkaIngestor.in_group(store.app, settings, after_poll=after_poll), settings, stop,
                         idle_stop)  # fmt: skip
    if joined is None:
        return IntakeCounts()  # stopped, or idle for --exit-when-idle, before the broker answered
    ingestor = joined
    audit = _watch_audit_writer(store, metrics)
    thread = None
    backend: InstrumentedBackend | None = None
    end_offsets: EndOffsetReader | None = None
    if chat_sync is not None:
        backend = InstrumentedBackend(chat_sync.backend, metrics)
        # the input is Kafka: deletions wait for the store to hold it (all replicas' positions) past the deadline
        end_offsets = EndOffsetReader(settings)
        reconciler = ReconcilerWorker(
            store.app,
            backend,
            owned_rows,
            chat_sync.options,
            on_change=chat_sync.status,  # type: ignore[arg-type]
            gate=deletion_gate(store, end_offsets, fold=fold_wanted.set),
            version=store.projection.position,  # the rows are read again when the fold (any replica's) moved
            observe=lambda rows, now: observe_reconciler(reconciler, rows, now),  # type: ignore[arg-type]
        )
        thread = threading.Thread(target=reconciler.run, args=(stop,), name="reconciler", daemon=True,
                                  kwargs={"cut_after": settings.shutdown_timeout / 2})  # fmt: skip

    def alive() -> bool:
        reconciling = thread is None or thread.is_alive() or stop.is_set()
        return reconciling and time.monotonic() - polled_at[0] < HUNG_LOOP

    server = None
    if http is not None:
        server = HealthServer(metrics, *http, alive=alive, checks=_readiness(store, ingestor, polled_at, chat_sync,
                                                                             backend, audit),
                              notes={"deletions": _deletions_note(reconciler)} if reconciler else None)  # fmt: skip
        server.start()
    if thread is not None:
        thread.start()
    try:
        counts = ingestor.run(stop, idle_stop=idle_stop)
        store.projection.catch_up()
    finally:
        stop.set()
        if reconciler is not None and thread is not None:
            reconciler.nudge()
            thread.join(timeout=settings.shutdown_timeout)  # it ends half of it after `stop` at the latest
            if thread.is_alive():
                log.warning("the reconciler did not stop within %.0f s", settings.shutdown_timeout)
        if end_offsets is not None:
            end_offsets.close()
        if server is not None:
            server.stop()
    return counts


def _watch_audit_writer(store: Store, metrics: Metrics) -> Guard | None:
    """A halted audit writer shows as a metric (and in /readyz)."""
    guard = store.app.audit_guard
    if guard is None:
        return None
    try:
        halted = Gauge(
            "chatbridge_audit_chain_halted", "1 when the store's audit log disagrees with the signed checkpoints "
            "and storing stopped.", registry=metrics.registry,
        )  # fmt: skip
    except ValueError:  # the same metrics served a worker before: the gauge is there
        return guard
    halted.set_function(lambda: 1.0 if guard.halted else 0.0)
    return guard


BACKOFF_LIMIT = 30.0  # seconds between attempts to reach the broker, at most


def _join_group(
    join: Callable[[], KafkaIngestor], settings: Settings, stop: threading.Event, idle_stop: float | None
) -> KafkaIngestor | None:
    """Join the consumer group, waiting with back-off while the broker does not answer: a worker started before
    its broker (or during an outage) waits for it rather than dying with a traceback. None when `stop` is set
    (SIGTERM) or `idle_stop` seconds pass first — no record came, so the worker was idle all along."""
    started, delay = time.monotonic(), 1.0
    while not stop.is_set():
        try:
            return join()
        except KafkaError as error:
            waited = time.monotonic() - started
            if idle_stop is not None and waited >= idle_stop:
                log.warning("Kafka at %s never answered in %.0f s idle limit; stopping",
                            settings.kafka_bootstrap_servers, idle_stop)  # fmt: skip
                return None
            pause = delay if idle_stop is None else min(delay, idle_stop - waited)
            log.warning("Kafka at %s does not answer (%s); trying again in %.0f s",
                        settings.kafka_bootstrap_servers, type(error).__name__, pause)  # fmt: skip
            stop.wait(pause)
            delay = min(delay * 2, BACKOFF_LIMIT)
    return None


def _deletions_note(worker: ReconcilerWorker) -> Check:
    """/readyz's note on deletions held back until the input is complete: how many, and the first one's reason."""

    def note() -> str | None:
        waiting = worker.reconciler.waiting()
        if not waiting:
            return None
        (org, event_id), wait = sorted(waiting.items())[0]
        more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
        return f"{len(waiting)} chat deletions wait; {org}/{event_id}{more} {wait.reason}"

    return note


def _readiness(
    store: Store,
    ingestor: KafkaIngestor,
    polled_at: list[float],
    chat_sync: ReconcilerParts | None,
    backend: InstrumentedBackend | None,
    audit: Guard | None = None,
) -> dict[str, Check]:
    """/readyz: the broker answered a poll lately, the store answers, partitions are assigned, the backend answers."""

    def broker() -> str | None:
        silent = time.monotonic() - polled_at[0]
        return f"no successful poll for {silent:.0f}s" if silent > STALE_POLL else None

    def partitions() -> str | None:
        return None if ingestor.assigned else "no input partitions assigned to this replica"

    def database() -> str | None:
        store.app.position("readyz")  # one query; raises when the store does not answer
        if audit is not None and audit.halted:  # the log disagrees with the signed checkpoints (audit.chain)
            return f"storing stopped: {audit.halted}"
        return None

    checks: dict[str, Check] = {"broker": broker, "store": database, "partitions": partitions}
    if chat_sync is not None:

        def chat_backend() -> str | None:
            failed_at = backend.last_unavailable if backend is not None else None
            if failed_at is not None and time.monotonic() - failed_at < STALE_POLL:
                return "the chat backend did not answer a recent step"
            return chat_sync.probe() if chat_sync.probe is not None else None

        checks["backend"] = chat_backend
    return checks
