"""The reconciler's use cases, for the CLI and the worker: dry run (the plan), one pass, and the running loop.

`chatbridge reconcile --dry-run` reads each chat from the backend and prints the plan without changing anything;
`--once` applies one pass; without either it runs `ReconcilerWorker` until stopped. `chatbridge run` starts a
`ReconcilerWorker` beside the Kafka consumer, on the same application, in a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chatbridge.application import ChatBridge
from chatbridge.backends.matrix import MatrixBackend
from chatbridge.backends.port import BackendError, BackendUnavailable, ChatBackend
from chatbridge.backends.settings import MatrixSettings, ReconcilerSettings
from chatbridge.bootstrap import Store
from chatbridge.domain.aggregates import ChatGroup
from chatbridge.domain.lifecycle import Phase
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.reconciler.loop import PassReport, Reconciler, StatusListener
from chatbridge.reconciler.plan import Step, plan

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_backend(settings: MatrixSettings | None = None) -> MatrixBackend:
    """The Matrix backend from `CHATBRIDGE_MATRIX_…` (raises ValueError when no token is configured)."""
    return MatrixBackend.from_settings(settings or MatrixSettings())


def desired_rows(store: Store) -> list[DesiredChat]:
    """The projection brought up to date, then its rows: what the reconciler works from."""
    store.projection.catch_up()
    return store.projection.view.desired_chats()


@dataclass(frozen=True)
class ChatPlan:
    org: str
    event_id: str
    generation: int
    phase: Phase
    steps: list[Step]
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "org": self.org,
            "event_id": self.event_id,
            "generation": self.generation,
            "phase": str(self.phase),
            "steps": [step.as_json() for step in self.steps],
        }
        if self.error is not None:
            document["error"] = self.error
        return document


def dry_run(app: ChatBridge, rows: list[DesiredChat], backend: ChatBackend, now: datetime) -> list[ChatPlan]:
    """The plan of every chat at `now`, read from the backend, changing nothing (`terraform plan`)."""
    plans = []
    for desired in rows:
        phase = desired.phase(now)
        if phase == Phase.DELETED:
            chat: ChatGroup = app.repository.get(ChatGroup.create_id(desired.org, desired.event_id))
            if desired.generation in chat.chats_deleted:
                continue  # deleted, confirmed and recorded
        try:
            actual = backend.get_chat(desired.org, desired.event_id, desired.generation)
        except BackendUnavailable:
            raise  # the backend is down: no use asking it about every other chat
        except BackendError as error:
            plans.append(ChatPlan(desired.org, desired.event_id, desired.generation, phase, [], str(error)))
            continue
        steps = plan(desired, actual, now, backend)
        plans.append(ChatPlan(desired.org, desired.event_id, desired.generation, phase, steps))
    return plans


def pass_document(report: PassReport, now: datetime) -> dict[str, Any]:
    """What one pass did, for `reconcile --once --json`: counts, each chat's applied steps, parked chats."""
    return {
        "now": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **report.summary(),
        "chats": [
            {
                "org": o.org,
                "event_id": o.event_id,
                "generation": o.generation,
                "phase": str(o.phase),
                "applied": [step.as_json() for step in o.applied],
                "pending": o.pending,
                **({"error": o.error} if o.error else {}),
            }
            for o in report.outcomes
        ],
        "parked": [{"org": k[0], "event_id": k[1], "error": e} for k, e in sorted(report.parked.items())],
    }


def plan_document(plans: list[ChatPlan], now: datetime) -> dict[str, Any]:
    changing = [p for p in plans if p.steps or p.error]
    return {
        "now": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "chats": [p.as_json() for p in changing],
        "changes": sum(len(p.steps) for p in plans),
        "errors": sum(1 for p in plans if p.error),
        "unchanged": len(plans) - len(changing),
    }


def render_plan(plans: list[ChatPlan]) -> str:
    """The plan as text, one block per chat that changes, like `terraform plan`."""
    lines: list[str] = []
    for chat_plan in plans:
        if not chat_plan.steps and not chat_plan.error:
            continue
        lines.append(f"chat {chat_plan.org}/{chat_plan.event_id} (generation {chat_plan.generation}, "
                     f"{chat_plan.phase})")  # fmt: skip
        lines.extend(f"  {step.describe()}" for step in chat_plan.steps)
        if chat_plan.error:
            lines.append(f"  ! cannot read the chat: {chat_plan.error}")
        lines.append("")
    steps = sum(len(p.steps) for p in plans)
    chats = sum(1 for p in plans if p.steps)
    lines.append(
        f"Plan: {steps} changes in {chats} chats." if steps else "No changes. The chats match the desired state."
    )
    return "\n".join(lines)


def reconcile_once(
    store: Store,
    backend: ChatBackend,
    now: datetime,
    settings: ReconcilerSettings | None = None,
    on_change: StatusListener | None = None,
) -> PassReport:
    """One pass over every chat that needs a look at `now` (all of them: a fresh reconciler remembers nothing)."""
    reconciler = Reconciler(store.app, backend, settings, on_change=on_change)
    try:
        return reconciler.pass_once(desired_rows(store), now)
    finally:
        reconciler.close()


class ReconcilerWorker:
    """The reconciler running until stopped: each round reads the desired rows, starts the chats that need a
    look (without waiting for chats still in flight), and sleeps until the next deadline, retry or `interval`.

    For `chatbridge run`: `ReconcilerWorker(app, backend, rows).run(stop_event)` in a thread beside the consumer,
    where `rows` returns the desired rows (e.g. `store.projection.view.desired_chats`, if the consumer thread keeps
    the projection caught up; or `lambda: desired_rows(store)` when nothing else folds it).
    """

    def __init__(
        self,
        app: ChatBridge,
        backend: ChatBackend,
        rows: Callable[[], list[DesiredChat]],
        settings: ReconcilerSettings | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        on_change: StatusListener | None = None,
    ):
        self.settings = settings or ReconcilerSettings()
        self.reconciler = Reconciler(app, backend, self.settings, on_change=on_change)
        self.rows = rows
        self.clock = clock
        self._wake = threading.Event()

    def nudge(self) -> None:
        """Look again now (new desired state was folded, or the worker is stopping), not after the sleep."""
        self._wake.set()

    def round(self) -> float:
        """One round; returns the seconds to sleep before the next."""
        rows = self.rows()
        now = self.clock()
        self.reconciler.submit(rows, now)
        wake = self.reconciler.next_wake(rows, now)
        if wake is None:
            return self.settings.interval
        return min(self.settings.interval, max(0.05, (wake - now).total_seconds()))

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    delay = self.round()
                except Exception:  # the store may be busy or briefly unavailable: try again next round
                    log.exception("reconciler round failed")
                    delay = self.settings.interval
                self._wake.wait(delay)
                self._wake.clear()
        finally:
            self.reconciler.close()
