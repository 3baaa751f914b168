"""`chatbridge run`: the background worker operators deploy — Kafka intake, the projection, the reconciler.

One process per replica; several replicas in one consumer group share the partitions (see docs/operations.md).
With `http` it serves /healthz, /readyz and /metrics (`observability`). Stops cleanly on SIGTERM/SIGINT within
`CHATBRIDGE_SHUTDOWN_TIMEOUT` (`Settings.shutdown_timeout`), whatever the chat backend does: the batch in hand is
stored and committed and the consumer leaves the group, while the reconciler starts and retries no call at the
backend any more and cuts those still in flight after half the timeout (`ReconcilerWorker.run`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any, Protocol

from kafka.errors import KafkaError
from prometheus_client import Gauge

from chatbridge.backends.port import ChatBackend
from chatbridge.consumers.kafka import EndOffsetReader, IntakeCounts, KafkaIngestor
from chatbridge.journal.chain import Guard
from chatbridge.logs import configure as configure_logs
from chatbridge.observability import Check, HealthServer, InstrumentedBackend, Metrics
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.projections.store import Store
from chatbridge.reconciler.knowledge import KnowledgeGate
from chatbridge.reconciler.loop import StatusListener
from chatbridge.reconciler.service import ReconcilerWorker, deletion_gate, utc_now
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings

log = logging.getLogger(__name__)

FOLD_INTERVAL = 1.0  # seconds between projection folds in the consumer's thread while records stream in
FOLD_RESTARTS = 3  # fold processes that may die one after another, none folding, before /healthz fails
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


class Folding(Protocol):
    """How the worker keeps the desired-state projection folded behind its intake (`fold_beside_intake`)."""

    def stored(self, handled: int) -> None:
        """The consumer stored `handled` records of a poll (0: the poll was empty)."""

    def request(self) -> None:
        """Fold what is stored now, soon, without waiting for it (the deletion gate asks so)."""

    def finish(self, timeout: float | None = None) -> None:
        """The last fold: everything stored so far, waited for (up to `timeout` seconds)."""

    def close(self, timeout: float) -> None:
        """Stop folding, within `timeout` seconds."""

    def healthy(self) -> bool:
        """False once the fold cannot go on (for /healthz)."""


def fold_beside_intake(
    store: Store, settings: Settings, on_folded: Callable[[], None] | None = None
) -> FoldInLine | FoldBeside:
    """The fold the worker and the intake bench use: in a process of its own beside the intake when the store can
    be opened again from another process (`Store.reopen`), else in the consumer's thread. `on_folded` runs after
    each fold (in another thread of this process when the fold runs beside)."""
    if store.reopen is None:
        return FoldInLine(store, settings.batch_size, on_folded)
    return FoldBeside(store, store.reopen, settings, on_folded)


class FoldInLine:
    """The fold in the consumer's thread, between polls: for stores that live in this process only (in memory).

    At most once a second while full batches stream in, and at once when a poll took all there was (the topics are
    quiet or trickle: a change is then folded and reconciled without waiting for an empty poll's timeout). Folding
    after every batch of a backlog would cost more than the intake itself.
    """

    def __init__(self, store: Store, batch_size: int, on_folded: Callable[[], None] | None = None):
        self.store, self.batch_size, self.on_folded = store, batch_size, on_folded
        self.folded_at, self.unfolded = time.monotonic(), 0
        self.wanted = threading.Event()

    def stored(self, handled: int) -> None:
        self.unfolded += handled
        caught_up = handled < self.batch_size
        if self.wanted.is_set() or (
            self.unfolded and (caught_up or time.monotonic() - self.folded_at >= FOLD_INTERVAL)
        ):
            self.wanted.clear()
            self.store.projection.catch_up()
            self.folded_at, self.unfolded = time.monotonic(), 0
            if self.on_folded is not None:
                self.on_folded()

    def request(self) -> None:
        self.wanted.set()  # folded after the consumer's next poll

    def finish(self, timeout: float | None = None) -> None:
        self.store.projection.catch_up()

    def close(self, timeout: float) -> None:
        pass

    def healthy(self) -> bool:
        return True


class FoldBeside:
    """The fold in a process of its own, on another core than the intake: it folds whenever the intake stored more.

    The child opens the same store (`Store.reopen`: the settings, keys from the key file or the environment as
    here) and waits for a signal — no poll interval: a change to a quiet topic is folded as soon as it is stored.
    While it folds, the signals coalesce, so a backlog is folded in pages as large as the fold's pace makes them.
    Everything the in-line fold guaranteed holds: `catch_up` takes the same exclusive lock (replicas, `state`), the
    position is read from the database, and a fold the deletion gate asks for starts after it asked. SQLite's two
    writers (events here, rows there) take turns on the write lock within the store's busy timeout.

    Signals are single bytes on a pipe (`_SIGNALS`), written without blocking: no lock or semaphore is shared with
    a process that may be killed holding it. The child answers, after each fold, how many requests it had read
    before the fold began. A child that dies is started again, and says so in one log line; after `FOLD_RESTARTS`
    deaths in a row without a fold between them, /healthz fails and the last fold runs in this process.
    """

    def __init__(
        self,
        store: Store,
        reopen: Callable[[], Store],
        settings: Settings,
        on_folded: Callable[[], None] | None = None,
    ):
        self.store, self.reopen, self.on_folded = store, reopen, on_folded
        self.logging = (settings.log_format, settings.log_level)
        self.batch_size = settings.batch_size
        self._context = multiprocessing.get_context("spawn")
        self._changed = threading.Condition()  # guards the child's generation and its counts
        self._writing = threading.Lock()  # a signal is never written to a pipe closed meanwhile (its number reused)
        self._backlog = False  # full batches signalled, and no "at once" since
        self._generation = 0  # one per child started
        self._asked = 0  # requests written to the current child
        self._done = 0  # of those, how many a finished fold began after
        self._deaths = 0
        self._given_up = False
        self._closing = False
        self._begin()
        store.leave_checkpoints()  # the child's commits copy the WAL into the database file, on the other core
        self._watcher = threading.Thread(target=self._watch, name="fold-watcher", daemon=True)
        self._watcher.start()

    def _begin(self) -> None:
        """Start a child; requests written from now on are counted for it (waiting callers ask it again)."""
        process, signals, results = self._start()
        with self._changed, self._writing:
            self._process, self._signals, self._results = process, signals, results
            self._generation += 1
            self._asked = self._done = 0
            self._changed.notify_all()

    def _start(self) -> tuple[Any, Connection, Connection]:
        signals_in, signals = self._context.Pipe(duplex=False)
        results, results_out = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=fold_process, name="chatbridge-fold", daemon=True,
            args=(self.reopen, self.logging, signals_in, results_out),
        )  # fmt: skip
        process.start()
        signals_in.close()  # the child holds the reading end: this process's end closing tells it the worker is gone
        results_out.close()  # and the writing end of the answers: its death shows as their end
        os.set_blocking(signals.fileno(), False)
        return process, signals, results

    def _signal(self, byte: bytes) -> bool:
        """Write one signal; False when it could not be (the child is gone, or has not read for very long)."""
        with self._writing:
            try:
                return os.write(self._signals.fileno(), byte) == 1
            except OSError:  # BlockingIOError: 64 KiB of signals unread, it is woken anyway; else it is gone
                return False

    def stored(self, handled: int) -> None:
        """A full batch: more is coming (a backlog); fewer, or an empty poll after a backlog: the poll took all
        there was, fold at once."""
        if handled >= self.batch_size:
            self._backlog = True
            self._signal(_MORE)
        elif handled or self._backlog:
            self._backlog = False
            self._signal(_NOW)

    def _ask(self) -> tuple[int, int]:
        """A request to the current child: (its generation, the request's number; one it cannot reach when the
        request could not be written: the caller waits for the next child, or its timeout)."""
        with self._changed:
            if not self._signal(_ASK):
                return self._generation, self._asked + 1
            self._asked += 1
            return self._generation, self._asked

    def request(self) -> None:
        self._ask()

    def finish(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        generation, asked = self._ask()
        with self._changed:
            while not self._given_up:
                if self._generation != generation:  # the child died and another started: ask that one
                    generation, asked = self._ask()
                    continue
                if self._done >= asked:
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    log.warning("the projection was not folded to the end within %.0f s; the next start folds the "
                                "rest", timeout)  # fmt: skip
                    return
                self._changed.wait(left)
        self.store.projection.catch_up()  # given up on the child: here, where a failure raises to the caller

    def healthy(self) -> bool:
        return not self._given_up

    def close(self, timeout: float) -> None:
        """The child stops between pages (what it folded since its last write is folded again at the next start),
        else it is terminated.

        Only the watcher thread reaps the child: two threads waiting for one process race, and the loser sees a
        reaped child as alive (its `waitpid` fails) — a false "did not stop" and a signal to a pid that may be
        reused by then. So this waits for the watcher, which ends once the child is gone."""
        self._closing = True
        self._signal(_STOP)
        self._watcher.join(timeout)
        if self._watcher.is_alive():
            log.warning("the fold process did not stop within %.0f s; terminating it", timeout)
            self._process.terminate()  # a transaction cut short rolls back; the lock goes with the process
            self._watcher.join(1.0)
            if self._watcher.is_alive():
                self._process.kill()
                self._watcher.join(1.0)
        with self._writing:
            self._signals.close()

    def _watch(self) -> None:
        """Hand each fold's answer to the waiting callers and `on_folded`; notice the child's death."""
        while True:
            process, results = self._process, self._results
            ready = wait([results, process.sentinel])
            answers, ended = [], False
            try:
                while results.poll():
                    answers.append(results.recv())
            except (EOFError, OSError):
                ended = True  # the child is gone
            if answers:
                with self._changed:
                    self._done = max(self._done, *answers)
                    self._deaths = 0
                    self._changed.notify_all()
                if self.on_folded is not None:
                    self.on_folded()
            if not ended and process.sentinel not in ready:
                continue
            process.join()
            results.close()
            if self._closing:
                return
            with self._writing:
                self._signals.close()
            self._deaths += 1
            if self._deaths > FOLD_RESTARTS:
                log.error("the projection's fold process exited (code %s) %d times in a row without folding; "
                          "/healthz fails", process.exitcode, self._deaths)  # fmt: skip
                with self._changed:
                    self._given_up = True
                    self._changed.notify_all()
                return
            log.error("the projection's fold process exited (code %s); starting it again", process.exitcode)
            self._begin()


# The signals to the fold process, one byte each.
_MORE = b"."  # the intake stored a full batch: more is coming
_NOW = b"!"  # the intake stored all there was: fold at once
_ASK = b"?"  # a caller asks for a fold that begins after it asked (counted)
_STOP = b"x"  # the worker stops


class _Stopping(Exception):
    """The worker asked the fold process to stop, or is gone: it leaves between two pages; the rows of the
    catch-up it leaves unwritten are folded again at the next start."""


def fold_process(
    reopen: Callable[[], Store], logging_options: tuple[Any, str], signals: Connection, results: Connection
) -> None:
    """The fold process: fold whenever signalled, answer how many requests it had read before each fold, until
    asked to stop or its parent is gone (the signals' pipe ends). Ctrl-C reaches the whole process group; the
    parent decides when this one ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logs(*logging_options)
    source = signals.fileno()
    os.set_blocking(source, False)
    store = reopen()
    asked, pending, urgent, folded_at = 0, True, True, 0.0  # a first fold at once: what was stored before it
    stopping = False

    def read(timeout: float | None) -> None:
        nonlocal asked, pending, urgent, stopping
        if not wait([source], timeout):
            return
        try:
            received = os.read(source, 65536)
        except BlockingIOError:
            return
        if not received or _STOP in received:
            stopping = True  # asked to, or the worker is gone (its end of the pipe closed)
        asked += received.count(_ASK)
        pending = True
        urgent = urgent or _NOW in received or _ASK in received

    def between_pages(_done: int, _total: int) -> None:
        read(0)
        if stopping:
            raise _Stopping

    try:
        while not stopping:
            if not pending:
                read(None)
                continue
            # full batches streaming in (a backlog): a bite at most once per FOLD_INTERVAL, as the in-line fold
            # took them (each catch-up writes the rows it changed, so more bites cost more), unless the topics
            # went quiet or a caller waits for the fold
            while not urgent and not stopping and (pause := folded_at + FOLD_INTERVAL - time.monotonic()) > 0:
                read(pause)
            if stopping:
                break
            begun_after, pending, urgent, folded_at = asked, False, False, time.monotonic()
            store.projection.catch_up(between_pages)
            try:
                results.send(begun_after)
            except OSError:  # the worker is gone
                break
    except _Stopping:
        pass
    finally:
        store.close()
        results.close()


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
    polled_at = [time.monotonic()]

    def folded() -> None:
        if reconciler is not None:
            reconciler.nudge()
        else:
            metrics.observe_chats(store.projection.view.desired_chats(), utc_now(), None)

    def after_poll(handled: int) -> None:
        polled_at[0] = time.monotonic()
        folding.stored(handled)
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
            gate=deletion_gate(store, end_offsets, fold=lambda: folding.request()),  # the rows to reflect the whole log
            version=store.projection.position,  # the rows are read again when the fold (any replica's) moved
            observe=lambda rows, now: observe_reconciler(reconciler, rows, now),  # type: ignore[arg-type]
        )
        thread = threading.Thread(target=reconciler.run, args=(stop,), name="reconciler", daemon=True,
                                  kwargs={"cut_after": settings.shutdown_timeout / 2})  # fmt: skip

    def alive() -> bool:
        reconciling = thread is None or thread.is_alive() or stop.is_set()
        return reconciling and folding.healthy() and time.monotonic() - polled_at[0] < HUNG_LOOP

    server = None
    folding = fold_beside_intake(store, settings, folded)
    ends_by = None
    try:
        if http is not None:
            server = HealthServer(metrics, *http, alive=alive, checks=_readiness(store, ingestor, polled_at,
                                                                                 chat_sync, backend, audit),
                                  notes={"deletions": _deletions_note(reconciler)} if reconciler else None)  # fmt: skip
            server.start()
        if thread is not None:
            thread.start()
        counts = ingestor.run(stop, idle_stop=idle_stop)
        # idle (--exit-when-idle): everything stored is folded before the worker returns; stopped by a signal:
        # as much as half the shutdown timeout allows (the next start folds the rest)
        ends_by = time.monotonic() + settings.shutdown_timeout
        folding.finish(timeout=settings.shutdown_timeout / 2 if stop.is_set() else None)
    finally:
        stop.set()
        ends_by = ends_by or time.monotonic() + settings.shutdown_timeout
        if reconciler is not None and thread is not None and thread.ident is not None:
            reconciler.nudge()
            thread.join(timeout=settings.shutdown_timeout)  # it ends half of it after `stop` at the latest
            if thread.is_alive():
                log.warning("the reconciler did not stop within %.0f s", settings.shutdown_timeout)
        folding.close(timeout=max(1.0, ends_by - time.monotonic()))
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
