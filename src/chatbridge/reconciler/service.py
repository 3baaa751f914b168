"""The reconciler's use cases, for the CLI and the worker: dry run (the plan), one pass, and the running loop.

`chatbridge reconcile --dry-run` reads each chat from the backend and prints the plan without changing anything;
`--once` applies one pass; without either it runs `ReconcilerWorker` until stopped. `chatbridge run` starts a
`ReconcilerWorker` beside the Kafka consumer, on the same application, in a thread of its own.

Each pass first surveys the deletion gate (`knowledge`: the input's end offsets against the stored positions),
then reads the desired rows — in that order, so that the rows reflect at least what the gate counted as stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chatbridge.application import IntakeApplication
from chatbridge.backends.port import BackendError, BackendUnavailable, ChatBackend
from chatbridge.journal.intake import partition_source
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.projections.store import Store
from chatbridge.reconciler.controller import Controller
from chatbridge.reconciler.knowledge import CompleteInput, DeletionGate, EndOffsets, KnowledgeGate, Partition
from chatbridge.reconciler.loop import DryRunPlan, PassReport, PlannedSteps, Reconciler, StatusListener
from chatbridge.reconciler.naming import RoomNaming, configured_naming
from chatbridge.reconciler.plan import Step, StepKind
from chatbridge.reconciler.settings import ReconcilerSettings

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def desired_rows(store: Store) -> list[DesiredChat]:
    """The projection brought up to date, then its rows: what the reconciler works from."""
    store.projection.catch_up()
    return store.projection.view.desired_chats()


class StoreKnowledge:
    """The deletion gate's view of the store: stored positions, the log's head, and how far the rows are folded.

    `fold` brings the projection up to the log's head: at once in a one-shot pass (the default), or — in the
    worker, where the consumer thread owns the projection — by asking that thread, which folds after its next poll.
    """

    def __init__(self, store: Store, fold: Callable[[], None] | None = None):
        self.store = store
        self.fold = fold or store.projection.catch_up

    def position(self, partition: Partition) -> int:
        return self.store.app.position(partition_source(*partition))

    def log_head(self) -> int:
        return self.store.app.recorder.max_notification_id() or 0

    def folded_to(self, at_least: int) -> int:
        position = self.store.projection.position()
        if position < at_least:
            self.fold()
            position = self.store.projection.position()
        return position


def deletion_gate(store: Store, read_ends: EndOffsets | None, fold: Callable[[], None] | None = None) -> DeletionGate:
    """The gate for the input: Kafka (`read_ends` reads its end offsets), or None: the store is the whole input."""
    if read_ends is None:
        return CompleteInput()
    return KnowledgeGate(read_ends, StoreKnowledge(store, fold))


def dry_run(
    app: IntakeApplication,
    rows: list[DesiredChat],
    backend: ChatBackend,
    now: datetime,
    gate: DeletionGate | None = None,
    naming: RoomNaming | None = None,
) -> list[DryRunPlan]:
    """The plan of every chat at `now`, for every generation, read from the backend, changing nothing (`terraform
    plan`): the pass's own walk (`Reconciler.walk`) with steps that are only noted. With `gate` (surveyed at `now`
    before `rows` were read) deletions it holds back show as waiting; adds of persons who would stay pending show
    why."""
    reconciler = Reconciler(app, backend, ReconcilerSettings(concurrency=1), gate=gate or CompleteInput(),
                            naming=naming or configured_naming())  # fmt: skip
    noted = PlannedSteps(backend, now)
    try:
        for desired in rows:
            try:
                reconciler.walk(desired, now, noted)
            except BackendUnavailable:
                raise  # the backend is down: no use asking it about every other chat
            except BackendError as error:
                noted.plans.append(DryRunPlan(desired.org, desired.event_id, desired.generation, desired.phase(now), [],
                                            str(error)))  # fmt: skip
    finally:
        reconciler.close()
    return noted.plans


def pass_document(report: PassReport, now: datetime) -> dict[str, Any]:
    """What one pass did, for `reconcile --once --json`: counts, each chat's applied steps and held-back
    deletion, parked chats."""
    return {
        "now": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **report.summary(),
        "pending_by_reason": report.pending_by_reason(),
        "chats": [
            {
                "org": o.org,
                "event_id": o.event_id,
                "generation": o.generation,
                "phase": str(o.phase),
                "applied": [step.as_json() for step in o.applied],
                "pending": o.pending,
                **({"pending_reasons": _reasons(o.pending_reasons)} if o.pending_reasons else {}),
                **({"waiting": {"kind": "delete_chat", **o.waiting.as_json()}} if o.waiting else {}),
                **({"error": o.error} if o.error else {}),
            }
            for o in report.outcomes
        ],
        "parked": [{"org": k[0], "event_id": k[1], "error": e} for k, e in sorted(report.parked.items())],
    }


def _reasons(pending: dict[str, str]) -> dict[str, int]:
    """Pending persons counted by reason: what an operator acts on, naming no one."""
    counts: dict[str, int] = {}
    for reason in pending.values():
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def plan_document(plans: list[DryRunPlan], now: datetime) -> dict[str, Any]:
    shown = [p for p in plans if p.shown]
    pending = {(p.org, p.event_id, user): reason for p in plans for user, reason in p.pending.items()}
    return {
        "now": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "chats": [p.as_json() for p in shown],
        "changes": sum(p.changes for p in plans),
        "pending": _reasons({"/".join(key): reason for key, reason in pending.items()}),
        "waiting": sum(1 for p in plans if p.waiting),
        "errors": sum(1 for p in plans if p.error),
        "unchanged": len(plans) - len(shown),
    }


def render_plan(plans: list[DryRunPlan]) -> str:
    """The plan as text, one block per chat that changes, like `terraform plan`."""
    lines: list[str] = []
    for chat_plan in plans:
        if not chat_plan.shown:
            continue
        note = f", {chat_plan.note}" if chat_plan.note else ""
        lines.append(f"chat {chat_plan.org}/{chat_plan.event_id} (generation {chat_plan.generation}, "
                     f"{chat_plan.phase}{note})")  # fmt: skip
        for step in chat_plan.steps:
            reason = chat_plan.pending.get(step.user_id or "") if step.kind == StepKind.ADD_MEMBER else None
            lines.append(f"  {step.describe()}" + (f" (stays pending: {reason})" if reason else ""))
        if chat_plan.waiting:
            lines.append(f"  … {Step(StepKind.DELETE_CHAT).describe()[2:]}: {chat_plan.waiting.reason}")
        if chat_plan.error:
            lines.append(f"  ! cannot read the chat: {chat_plan.error}")
        lines.append("")
    steps = sum(p.changes for p in plans)
    chats = sum(1 for p in plans if p.changes)
    lines.append(
        f"Plan: {steps} changes in {chats} chats." if steps else "No changes. The chats match the desired state."
    )
    pending = sum(len(p.pending) for p in plans)
    if pending:
        lines.append(f"{pending} persons stay pending (their reasons above): adding them would change nothing now.")
    waiting = sum(1 for p in plans if p.waiting)
    if waiting:
        lines.append(f"{waiting} deletions wait for complete input (see above); the other steps go on.")
    return "\n".join(lines)


def reconcile_once(
    store: Store,
    backend: ChatBackend,
    now: datetime,
    settings: ReconcilerSettings | None = None,
    on_change: StatusListener | None = None,
    gate: DeletionGate | None = None,
) -> PassReport:
    """One pass over every chat that needs a look at `now` (all of them: a fresh reconciler remembers nothing)."""
    reconciler = Reconciler(store.app, backend, settings, on_change=on_change, gate=gate)
    try:
        reconciler.gate.survey(now)  # before the rows: they must reflect what the gate counts as stored
        return reconciler.pass_once(desired_rows(store), now)
    finally:
        reconciler.close()


class ReconcilerWorker:
    """The reconciler running until stopped: a `Controller` whose queue says which chats are due.

    The desired rows are read again only when they may have changed — the worker was nudged (the consumer folded a
    batch), `version` (the projection's position) moved, or `rows_every` passed as a safety net (ownership moved on
    a rebalance, the audit writer halted) — and only then compared with what the controller holds. `observe` (the
    metrics) sees the rows held whenever they were read or a chat was looked at. Otherwise a round starts the chats that
    are due and sleeps until the next one is, or `interval`: many chats with nothing due cost nothing.

    For `chatbridge run`: `ReconcilerWorker(app, backend, rows).run(stop_event)` in a thread beside the consumer,
    where `rows` returns the desired rows (e.g. `store.projection.view.desired_chats`, if the consumer thread keeps
    the projection caught up; or `lambda: desired_rows(store)` when nothing else folds it).
    """

    def __init__(
        self,
        app: IntakeApplication,
        backend: ChatBackend,
        rows: Callable[[], list[DesiredChat]],
        settings: ReconcilerSettings | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        on_change: StatusListener | None = None,
        gate: DeletionGate | None = None,
        version: Callable[[], int] | None = None,
        rows_every: float = 15.0,
        observe: Callable[[list[DesiredChat], datetime], None] | None = None,
    ):
        self.settings = settings or ReconcilerSettings()
        self.reconciler = Reconciler(app, backend, self.settings, on_change=on_change, gate=gate)
        self.controller = Controller(self.reconciler, on_done=self.nudge_due)
        self.rows = rows
        self.clock = clock
        self.version = version
        self.rows_every = rows_every
        self._wake = threading.Event()
        self._nudged = True  # the first round reads the rows
        self._seen_version: int | None = None
        self._rows_read_at: float | None = None
        self.observe = observe  # told the rows and the clock whenever rows were read or chats were looked at
        self._looked = False

    def nudge(self) -> None:
        """Look again now (new desired state was folded, or the worker is stopping), not after the sleep."""
        self._nudged = True
        self._wake.set()

    def nudge_due(self) -> None:
        """A chat finished: another may start (or be due again) without waiting for the sleep."""
        self._looked = True
        self._wake.set()

    def _rows_may_have_moved(self) -> bool:
        if self._nudged or self._rows_read_at is None or self.version is None:
            return True
        if time.monotonic() - self._rows_read_at >= self.rows_every:
            return True
        return self.version() != self._seen_version

    def round(self) -> float:
        """One round; returns the seconds to sleep before the next."""
        now = self.clock()
        fresh = self._rows_may_have_moved()
        wake = self.controller.next_wake()
        if fresh or (wake is not None and wake <= now):
            self.reconciler.gate.survey(now)  # before the rows: they must reflect what the gate counts as stored
        rows = None
        if fresh:
            self._nudged = False
            self._seen_version = self.version() if self.version is not None else None
            self._rows_read_at = time.monotonic()
            rows = self.rows()
            self.controller.offer(rows, now)
        if self.observe is not None and (rows is not None or self._looked):
            self._looked = False
            self.observe(rows if rows is not None else self.controller.rows(), now)
        self.controller.start_due(now)
        wake = self.controller.next_wake()
        if wake is None:
            return self.settings.interval
        return min(self.settings.interval, max(0.05, (wake - now).total_seconds()))

    def run(self, stop: threading.Event, *, cut_after: float = 10.0) -> None:
        """Rounds until `stop` is set. From that moment calls at the backend start and retry no more, and those in
        flight are cut after `cut_after` seconds (`Reconciler.abandon`); returns once the chats in flight ended."""

        def on_stop() -> None:
            stop.wait()
            self.reconciler.abandon(cut_after)
            self.nudge()  # out of the sleep between rounds at once

        threading.Thread(target=on_stop, name="reconciler-stop", daemon=True).start()
        try:
            while not stop.is_set():
                try:
                    delay = self.round()
                except Exception:  # the store may be busy or briefly unavailable: try again next round
                    log.exception("reconciler round failed")
                    self._nudged = True
                    delay = self.settings.interval
                self._wake.wait(delay)
                self._wake.clear()
        finally:
            self.reconciler.close()
