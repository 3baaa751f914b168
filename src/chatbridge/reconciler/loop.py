"""One chat's reconciliation (`Reconciler.reconcile` → `ChatOutcome`: what was applied, the error, and when to
look again), and the one-shot pass over many chats. The running controller that decides which chat is due lives
apart, in `controller`. Level-triggered, like a Kubernetes controller.

Each pass takes the desired rows (the projection) and picks the chats that need a look: *dirty* (the row or its
phase at `now` differs from what was last brought about — which also covers *due* chats, whose phase changed by the
clock alone at `next_due`), chats with persons still *pending* (no account yet), and every chat on a slow periodic
*resync* (drift made by hand). For each it reads the actual chat from the backend, plans (`plan.plan`), applies
the steps one by one and records each confirmed step as an outcome event on the chat's aggregate — so the audit
sees who got or lost access and when, and a crash in the middle loses nothing: the next pass reads the backend
again and plans only what is left.

A chat whose steps fail waits with exponential backoff and jitter (its own, never the others'); after
`park_after` failures in a row it is parked with its last error for `park_for`. Chats are reconciled by a bounded
thread pool, so one slow chat (a long purge) does not hold the rest. What the loop remembers (fingerprints,
backoff, pending) lives in memory: after a restart every chat is read once more, which reads but changes nothing
where nothing drifted.

Deletion is gated (`knowledge`): a chat is deleted only from complete knowledge of the input. While its deletion
waits, the chat is locked read-only instead, its other steps and all other chats go on, and it is looked at again
whenever the gate learns more. A generation the backend confirmed deleted stays deleted: it is never created again,
whatever the desired rows say later.

Logs name chats by org and event id and count persons; they never name a person or an account.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from eventsourcing.persistence import IntegrityError

from chatbridge.application import IntakeApplication
from chatbridge.backends.port import (
    TENANT_FIELDS,
    ActualChat,
    AddOutcome,
    BackendError,
    BackendUnavailable,
    ChatBackend,
)
from chatbridge.domain.aggregates import ChatGroup, Organisation
from chatbridge.domain.lifecycle import MEMBER_PHASES, Phase
from chatbridge.projections.desired_state import ChatKey, DesiredChat
from chatbridge.reconciler.knowledge import CompleteInput, DeletionGate, Wait
from chatbridge.reconciler.naming import RoomNaming, configured_naming
from chatbridge.reconciler.plan import Step, StepKind, apply, hold_deletion, plan
from chatbridge.reconciler.settings import ReconcilerSettings

log = logging.getLogger(__name__)
WAITING_RECHECK = timedelta(seconds=30)  # a held deletion is looked at again this often (the gate may have learnt)
RESYNC_JITTER = 0.1  # a resync comes up to this share of the resync period early


@dataclass(slots=True)
class ChatState:
    """What the loop remembers about one chat between passes."""

    fingerprint: tuple[DesiredChat, Phase] | None = None  # the desired row and phase last brought about
    checked_at: datetime | None = None
    failures: int = 0
    retry_at: datetime | None = None
    parked: bool = False
    last_error: str | None = None
    pending: dict[str, str] = field(default_factory=dict)  # person → why they are not in the chat (never logged)
    chat_id: str | None = None
    generation: int | None = None  # the generation `chat_id` belongs to
    members_synced: int = 0
    phase: Phase | None = None  # the phase brought about at the backend
    waiting: Wait | None = None  # why a deletion of this chat (any generation) waits for complete input
    waiting_known: datetime | None = None  # the gate's knowledge when it last waited: looked at again once it moves
    deletion_wanted: dict[int, datetime] = field(default_factory=dict)  # earlier generation → first seen to go
    stays_deleted: bool = False  # the desired generation was confirmed deleted: never created again

    def known_chat(self, generation: int) -> str | None:
        """The backend's id of this generation's chat, when this reconciler brought it about before."""
        return self.chat_id if self.generation == generation else None


@dataclass(frozen=True, slots=True)
class ChatOutcome:
    """One chat's reconciliation in one pass."""

    org: str
    event_id: str
    generation: int
    phase: Phase
    applied: list[Step]
    pending: int
    error: str | None = None
    waiting: Wait | None = None  # a deletion held back until the input is complete
    pending_reasons: dict[str, str] = field(default_factory=dict)  # person → reason (never logged or printed)
    requeue_at: datetime | None = None  # when to look again by the clock (None: only when its row changes)


@dataclass(frozen=True)
class DryRunPlan:
    """One generation of a chat as the dry run shows it: the steps the pass would take, and what it would not."""

    org: str
    event_id: str
    generation: int
    phase: Phase
    steps: list[Step]
    error: str | None = None
    waiting: Wait | None = None  # the deletion this pass would hold back, and why
    note: str | None = None
    pending: dict[str, str] = field(default_factory=dict)  # account to add → why it would stay pending

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "org": self.org,
            "event_id": self.event_id,
            "generation": self.generation,
            "phase": str(self.phase),
            "steps": [
                {**step.as_json(), "pending": self.pending[step.user_id]}
                if step.kind == StepKind.ADD_MEMBER and step.user_id in self.pending
                else step.as_json()
                for step in self.steps
            ],
        }
        if self.pending:
            document["pending"] = len(self.pending)
        if self.waiting is not None:
            document["waiting"] = {"kind": str(StepKind.DELETE_CHAT), **self.waiting.as_json()}
        if self.note is not None:
            document["note"] = self.note
        if self.error is not None:
            document["error"] = self.error
        return document

    @property
    def changes(self) -> int:
        """Steps that would change something (an add that would stay pending does not)."""
        return sum(1 for step in self.steps if not (step.kind == StepKind.ADD_MEMBER and step.user_id in self.pending))

    @property
    def shown(self) -> bool:
        return bool(self.steps or self.error or self.waiting or self.note)


@dataclass
class Walk:
    """What walking one chat's generations found: the current one as it is after the steps, and what waits."""

    actual: ActualChat | None = None
    waits: list[Wait] = field(default_factory=list)
    stays_deleted: bool = False
    done_generations: list[int] = field(default_factory=list)  # earlier generations recorded deleted


Change = Callable[[ChatGroup], bool]
"""One outcome to record on a chat's aggregate: records it and says whether it did."""


class Steps(Protocol):
    """Where a walk's plan goes: applied and recorded (the pass), or only noted (the dry run)."""

    def tenant(self, org: str) -> None: ...

    def generation(
        self,
        desired: DesiredChat,
        generation: int,
        actual: ActualChat | None,
        steps: list[Step],
        *,
        wait: Wait | None = None,
        note: str | None = None,
        known: str | None = None,
    ) -> ActualChat | None: ...

    def vanished(self, desired: DesiredChat, generation: int, chat_id: str) -> None: ...


@dataclass
class PassReport:
    considered: int = 0
    outcomes: list[ChatOutcome] = field(default_factory=list)
    parked: dict[ChatKey, str] = field(default_factory=dict)  # chats parked after this pass, with their errors

    @property
    def steps(self) -> int:
        return sum(len(o.applied) for o in self.outcomes)

    @property
    def failed(self) -> list[ChatOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    @property
    def pending(self) -> int:
        return sum(o.pending for o in self.outcomes)

    @property
    def waiting(self) -> list[ChatOutcome]:
        return [o for o in self.outcomes if o.waiting is not None]

    def pending_by_reason(self) -> dict[str, int]:
        """Persons left pending in this pass, counted by reason: what an operator acts on, naming no one."""
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            for reason in outcome.pending_reasons.values():
                counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, Any]:
        return {
            "considered": self.considered,
            "reconciled": len(self.outcomes),
            "steps": self.steps,
            "failed": len(self.failed),
            "pending": self.pending,
            "deletions_waiting": len(self.waiting),
        }


StatusListener = Callable[[DesiredChat, ChatState, datetime], None]


class Reconciler:
    """Reconciles desired rows with a chat backend and records the outcomes on the aggregates."""

    def __init__(
        self,
        app: IntakeApplication,
        backend: ChatBackend,
        settings: ReconcilerSettings | None = None,
        *,
        on_change: StatusListener | None = None,
        jitter: Callable[[], float] = random.random,
        gate: DeletionGate | None = None,
        naming: RoomNaming | None = None,
    ):
        self.app = app
        self.backend = backend
        self.settings = settings or ReconcilerSettings()
        self.naming = naming or configured_naming()
        self.on_change = on_change
        self.gate: DeletionGate = gate or CompleteInput()
        self._jitter = jitter
        self.states: dict[ChatKey, ChatState] = {}
        self._lock = threading.Lock()
        self._org_locks: dict[str, threading.Lock] = {}
        self._in_flight: set[ChatKey] = set()
        self._pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="reconcile")
        # one chat's membership steps, run side by side up to the same bound (a new 200-member chat would take a
        # join's latency 200 times in a row); a pool apart from the chats' so that a chat never waits on itself
        self._steps = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="reconcile-step")

    def abandon(self, cut_after: float) -> None:
        """The process stops: calls at the backend start and retry no more, and those in flight are cut after
        `cut_after` seconds. Their chats fail like any chat whose backend did not answer — a step is recorded only
        once the backend confirmed it — and are looked at again by the next start."""
        self.backend.abandon(cut_after)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._steps.shutdown(wait=True)

    # -- which chats -----------------------------------------------------------------------------------------

    def needs_look(self, desired: DesiredChat, now: datetime) -> bool:
        state = self.states.get((desired.org, desired.event_id))
        if state is None:
            return True
        if state.retry_at is not None and now < state.retry_at:
            return False
        if state.waiting is not None and self.gate.known_at != state.waiting_known:
            return True  # the gate learnt more: the held deletion may go now
        if state.fingerprint != (desired, desired.phase(now)):
            return True  # dirty, or due: the phase moved with the clock
        assert state.checked_at is not None
        if state.pending and now - state.checked_at >= self.settings.pending_retry:
            return True
        return state.phase != Phase.DELETED and now - state.checked_at >= self.settings.resync

    def waiting(self) -> dict[ChatKey, Wait]:
        """The chats whose deletion waits for complete input, with why."""
        with self._lock:
            return {key: state.waiting for key, state in self.states.items() if state.waiting is not None}

    def parked(self) -> dict[ChatKey, str]:
        with self._lock:
            return {key: state.last_error or "" for key, state in self.states.items() if state.parked}

    def next_wake(self, rows: list[DesiredChat], now: datetime) -> datetime | None:
        """The earliest moment after `now` a chat needs a look by the clock alone (for the caller's sleep)."""
        moments: list[datetime | None] = [d.next_due for d in rows]
        with self._lock:
            states = list(self.states.values())
        for state in states:
            moments.append(state.retry_at)
            if state.pending and state.checked_at is not None:
                moments.append(state.checked_at + self.settings.pending_retry)
        return min((m for m in moments if m is not None and m > now), default=None)

    # -- passes ----------------------------------------------------------------------------------------------

    def pass_once(self, rows: list[DesiredChat], now: datetime) -> PassReport:
        """Reconcile every chat that needs a look at `now`, with bounded concurrency; waits for all of them.

        Submitted a slice at a time: a future per chat of a large installation at once would hold more memory than
        the chats' rows themselves."""
        report = PassReport(considered=len(rows))
        step = 64 * self.settings.concurrency
        for start in range(0, len(rows), step):
            report.outcomes.extend(future.result() for future in self.submit(rows[start : start + step], now))
        report.parked = self.parked()
        return report

    def submit(self, rows: list[DesiredChat], now: datetime) -> list[Future[ChatOutcome]]:
        """Start reconciling the chats that need a look and are not being reconciled already."""
        futures = []
        for desired in rows:
            key = (desired.org, desired.event_id)
            with self._lock:
                if key in self._in_flight or not self.needs_look(desired, now):
                    continue
                self._in_flight.add(key)
                self.states.setdefault(key, ChatState())  # created here, under the lock, never by the workers
            futures.append(self._pool.submit(self._reconcile_guarded, desired, now))
        return futures

    def _reconcile_guarded(self, desired: DesiredChat, now: datetime) -> ChatOutcome:
        try:
            return self.reconcile(desired, now)
        finally:
            with self._lock:
                self._in_flight.discard((desired.org, desired.event_id))

    # -- one chat --------------------------------------------------------------------------------------------

    def reconcile(self, desired: DesiredChat, now: datetime) -> ChatOutcome:
        """Read, plan, apply, record — for one chat. Never raises: a failure backs this chat off."""
        key = (desired.org, desired.event_id)
        state = self.states.setdefault(key, ChatState())
        phase = desired.phase(now)
        live = LiveSteps(self, desired, now)
        before = (state.phase, state.chat_id, state.members_synced, dict(state.pending))
        first_seen = state.deletion_wanted.setdefault
        try:
            walk = self.walk(desired, now, live, known=state.known_chat(desired.generation),
                             deletion_seen=lambda generation: first_seen(generation, now))  # fmt: skip
        except Exception as error:  # a bug or a refusal in one chat must not stop the others
            self._failed(key, state, error, now)
            log.warning("chat %s/%s: %s", *key, state.last_error)
            return ChatOutcome(*key, desired.generation, phase, live.applied, len(live.pending), state.last_error,
                               pending_reasons=dict(live.pending), requeue_at=state.retry_at)  # fmt: skip
        for generation in walk.done_generations:
            state.deletion_wanted.pop(generation, None)
        if walk.stays_deleted and not state.stays_deleted:
            log.warning("chat %s/%s: generation %d was confirmed deleted; it stays deleted (not created again)",
                        *key, desired.generation)  # fmt: skip
        state.stays_deleted = walk.stays_deleted
        self._note_waiting(key, state, walk.waits[0] if walk.waits else None)
        state.fingerprint = (desired, phase)
        state.checked_at = now
        state.failures, state.retry_at, state.parked, state.last_error = 0, None, False, None
        state.pending = dict(live.pending)
        actual = walk.actual
        # what is brought about: a chat whose deletion waits is read-only, not deleted (status, overdue metric)
        if walk.stays_deleted:
            state.phase = Phase.DELETED
        else:
            state.phase = Phase.READ_ONLY if phase == Phase.DELETED and actual is not None else phase
        state.chat_id = actual.chat_id if actual is not None else None
        state.generation = desired.generation
        state.members_synced = len(actual.members) if actual is not None else 0
        if live.applied:
            log.info("chat %s/%s: %d steps applied, %d pending", *key, len(live.applied), len(live.pending))
        if self.on_change is not None and before != (state.phase, state.chat_id, state.members_synced, state.pending):
            self.on_change(desired, state, now)
        requeue_at = self.requeue_at(desired, state, now)
        return ChatOutcome(*key, desired.generation, phase, live.applied, len(live.pending), waiting=state.waiting,
                           pending_reasons=dict(live.pending), requeue_at=requeue_at)  # fmt: skip

    def requeue_at(self, desired: DesiredChat, state: ChatState, now: datetime) -> datetime | None:
        """When to look at a chat again after a good look at `now` (the controller's `RequeueAfter`): the earliest
        of its next deadline, its pending persons' retry, a held deletion's recheck and its resync (up to a tenth
        early at random, so that chats looked at together do not all come back together). None: never by the
        clock — a deleted chat; a change of its row brings it back."""
        moments = [d for d in (desired.read_only_at, desired.delete_at) if d is not None and d > now]
        if state.pending:
            moments.append(now + self.settings.pending_retry)
        if state.waiting is not None:
            moments.append(now + WAITING_RECHECK)
        if state.phase != Phase.DELETED:
            moments.append(now + self.settings.resync * (1 - RESYNC_JITTER * self._jitter()))
        return min(moments, default=None)

    def walk(
        self,
        desired: DesiredChat,
        now: datetime,
        steps: Steps,
        *,
        known: str | None = None,
        deletion_seen: Callable[[int], datetime] | None = None,
    ) -> Walk:
        """Every generation of one chat, read from the backend, planned, and handed to `steps` — which applies and
        records them (`LiveSteps`, the pass) or only notes them (`PlannedSteps`, the dry run): one walk for both,
        so the dry run shows what the pass does, earlier generations' deletions included.

        `known` is the chat's id at the backend when the caller remembers it: then an unchanged chat costs one read.
        `deletion_seen(generation)` stands for the deadline of an earlier generation (not in the row: it holds the
        latest generation's) — the moment it was first seen to go, the safe side; by default `now`."""
        org, event_id, generation = desired.org, desired.event_id, desired.generation
        phase = desired.phase(now)
        walk = Walk()
        chat: ChatGroup | None = None
        if generation > 1 or phase == Phase.DELETED or known is None:
            chat = self._chat_group(desired)
            known = chat.backend_chats.get(generation)
        if chat is not None and generation > 1:
            for earlier in sorted(chat.backend_chats):
                if earlier >= generation or earlier in chat.chats_deleted:
                    walk.done_generations.append(earlier)
                    continue
                wait = self.gate.check(deletion_seen(earlier) if deletion_seen else now)
                if wait is not None:
                    walk.waits.append(wait)
                    steps.generation(desired, earlier, None, hold_deletion(None, [Step(StepKind.DELETE_CHAT)]),
                                     wait=wait, note="an earlier generation")  # fmt: skip
                    continue
                gone = self.backend.get_chat(org, event_id, earlier, chat.backend_chats[earlier])
                if gone is None:
                    steps.vanished(desired, earlier, chat.backend_chats[earlier])
                else:
                    steps.generation(desired, earlier, gone, [Step(StepKind.DELETE_CHAT)], note="an earlier generation")
        if chat is not None and phase == Phase.DELETED and generation in chat.chats_deleted:
            return walk  # its deletion is confirmed and recorded: no need to ask the backend again
        actual = self.backend.get_chat(org, event_id, generation, known)
        if actual is None and phase in MEMBER_PHASES:
            # gone at the backend: created again while its phase wants it (drift) — unless the backend confirmed
            # deleting this generation: what the backend did cannot be undone, it stays deleted
            chat = chat or self._chat_group(desired)
            if generation in chat.chats_deleted:
                walk.stays_deleted = True
                steps.generation(desired, generation, None, [],
                                 note="confirmed deleted at the backend: stays deleted, not created again")  # fmt: skip
                return walk
        if phase in MEMBER_PHASES:  # the tenant first: a chat lives in it
            steps.tenant(org)
        planned = plan(desired, actual, now, self.backend, self.naming)
        wait = None
        if any(step.kind == StepKind.DELETE_CHAT for step in planned):
            wait = self.gate.check(desired.delete_at)
            if wait is not None:
                planned = hold_deletion(actual, planned)
                walk.waits.append(wait)
        walk.actual = steps.generation(desired, generation, actual, planned, wait=wait, known=known)
        return walk

    def _note_waiting(self, key: ChatKey, state: ChatState, wait: Wait | None) -> None:
        """Remember (and log, once per change) why a deletion waits; the chat is looked at again as the gate learns."""
        if wait is not None and (state.waiting is None or state.waiting.lag.keys() != wait.lag.keys()):
            log.info("chat %s/%s: deletion %s", *key, wait.reason)
        elif wait is None and state.waiting is not None:
            log.info("chat %s/%s: deletion no longer waits: the input is complete", *key)
        state.waiting = wait
        state.waiting_known = self.gate.known_at

    def _failed(self, key: ChatKey, state: ChatState, error: Exception, now: datetime) -> None:
        """The backend's refusal (a `BackendError` that is not `BackendUnavailable`) is terminal: the chat is parked
        at once, retrying soon would not help. Anything else — the backend unavailable, the store busy, a bug —
        backs the chat off and parks it after `park_after` failures in a row."""
        state.failures += 1
        state.fingerprint = None
        if isinstance(error, BackendError):
            state.last_error = str(error)  # the adapters' messages name the operation, never a person or account
        else:  # an unexpected error's text may hold anything (a user id in a KeyError): its type only, and the
            state.last_error = f"unexpected {type(error).__name__}"  # traceback at DEBUG for the developer
            log.debug("chat %s/%s failed", *key, exc_info=error)
        terminal = isinstance(error, BackendError) and not isinstance(error, BackendUnavailable)
        if terminal or state.failures >= self.settings.park_after:
            state.parked = True
            state.retry_at = now + self.settings.park_for
            log.error("chat %s/%s parked after %d failures: %s", *key, state.failures, state.last_error)
            return
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (state.failures - 1))
        state.retry_at = now + ceiling / 2 + ceiling / 2 * self._jitter()

    def _ensure_tenant(self, org: str, now: datetime) -> str:
        """The organisation's tenant, provisioned with exactly the contract's fields (recorded as a transfer)."""
        with self._lock:
            org_lock = self._org_locks.setdefault(org, threading.Lock())
        with org_lock:
            organisation: Organisation = self.app.repository.get(Organisation.create_id(org))
            fields = {k: v for k, v in (organisation.tenant or {}).items() if k in TENANT_FIELDS}
            if organisation.tenant_id is not None and organisation.tenant_transferred == fields:
                return organisation.tenant_id
            tenant = self.backend.ensure_tenant(org, fields)
            for attempt in range(5):
                try:
                    organisation.record_tenant_provisioned(now, tenant.tenant_id, tenant.transferred)
                    self.app.save(organisation)
                    return tenant.tenant_id
                except IntegrityError:  # the consumer recorded a message meanwhile: reload and record again
                    if attempt == 4:  # the transfer is not on record: fail the step, the chat is tried again
                        raise
                    organisation = self.app.repository.get(Organisation.create_id(org))
            raise AssertionError("unreachable")

    def _chat_group(self, desired: DesiredChat) -> ChatGroup:
        return self.app.repository.get(ChatGroup.create_id(desired.org, desired.event_id))  # type: ignore[no-any-return]

    def _record(self, desired: DesiredChat, changes: list[Change]) -> None:
        """Record confirmed outcomes on the chat's aggregate in one save; a concurrent write by the consumer is
        retried. A change returns False when it has nothing to record on the aggregate as it stands."""
        for attempt in range(5):
            chat = self._chat_group(desired)
            recorded = [change(chat) for change in changes]
            if not any(recorded):
                return
            try:
                self.app.save(chat)
                return
            except IntegrityError:
                if attempt == 4:
                    raise


MEMBERSHIP = (StepKind.ADD_MEMBER, StepKind.REMOVE_MEMBER)
BATCH = 64  # membership steps recorded together: a crash loses at most this many records (the next pass reads them)


class LiveSteps:
    """Applies a walk's steps at the backend and records each confirmed one on the chat's aggregate."""

    def __init__(self, reconciler: Reconciler, desired: DesiredChat, now: datetime):
        self.r = reconciler
        self.backend = reconciler.backend
        self.desired = desired
        self.now = now
        self.applied: list[Step] = []
        self.pending: dict[str, str] = {}

    def tenant(self, org: str) -> None:
        self.r._ensure_tenant(org, self.now)

    def vanished(self, desired: DesiredChat, generation: int, chat_id: str) -> None:
        record = {"chat_id": chat_id, "status": "not found"}
        self.r._record(desired, [lambda chat: _did(chat.record_chat_deleted(generation, self.now, record))])

    def generation(
        self,
        desired: DesiredChat,
        generation: int,
        actual: ActualChat | None,
        steps: list[Step],
        *,
        wait: Wait | None = None,
        note: str | None = None,
        known: str | None = None,
    ) -> ActualChat | None:
        index = 0
        while index < len(steps):
            step = steps[index]
            if step.kind in MEMBERSHIP:
                batch = [step]
                while index + len(batch) < len(steps) and len(batch) < BATCH:
                    following = steps[index + len(batch)]
                    if following.kind != step.kind:
                        break
                    batch.append(following)
                assert actual is not None
                actual = self._membership(generation, actual, batch)
                index += len(batch)
                continue
            actual = self._one(generation, actual, step, known)
            index += 1
        return actual

    def _one(self, generation: int, actual: ActualChat | None, step: Step, known: str | None) -> ActualChat | None:
        desired, now, backend = self.desired, self.now, self.backend
        org, event_id = desired.org, desired.event_id
        if step.kind == StepKind.CREATE_CHAT:
            tenant_id = self.r._ensure_tenant(org, now)
            created = backend.create_chat(org, event_id, generation, tenant_id, step.labels)
            changes: list[Change] = []
            if known is not None and known != created.chat_id:  # the chat vanished at the backend (deleted by hand)
                changes.append(_lost_access(generation, now))
                changes.append(lambda chat: _did(chat.record_drift_repaired(
                    generation, "chat gone at the backend: created again", now)))  # fmt: skip
            changes.append(lambda chat: _did(chat.record_chat_created(generation, created.chat_id, now)))
            self.r._record(desired, changes)
            self.applied.append(step)
            return created
        if step.kind == StepKind.DELETE_CHAT:
            assert actual is not None
            record = backend.delete_chat(actual.chat_id).as_record()
            self.r._record(desired, [lambda chat: _did(chat.record_chat_deleted(generation, now, record))])
            self.applied.append(step)
            return None
        assert actual is not None
        chat_id = actual.chat_id
        if step.kind in (StepKind.SET_NAME, StepKind.SET_TOPIC, StepKind.SET_ORDER):
            actual = self._label(actual, step)  # event data, not access: nothing for the audit
        elif step.kind == StepKind.JOIN_BRIDGE:
            backend.join_bridge(chat_id)
            self.r._record(desired, [lambda chat: _did(chat.record_drift_repaired(
                generation, "bridge not in the chat: rejoined", now))])  # fmt: skip
            actual = replace(actual, bridge_joined=True)
        elif step.kind == StepKind.RESTORE_RIGHTS:
            backend.set_read_only(chat_id, bool(step.value))
            self.r._record(desired, [lambda chat: _did(chat.record_drift_repaired(
                generation, "rights in the chat changed by hand: restored", now))])  # fmt: skip
            actual = replace(actual, levels_as_set=True)
        elif step.kind == StepKind.SET_MODERATOR:
            user, person, value = step.user_id or "", step.person_id, bool(step.value)
            backend.set_moderator(chat_id, user, value)
            self.r._record(desired, [lambda chat: _did(chat.record_moderator(generation, person, value, now))])
            moderators = set(actual.moderators)
            (moderators.add if value else moderators.discard)(user)
            actual = replace(actual, moderators=frozenset(moderators))
        elif step.kind == StepKind.SET_READ_ONLY:
            backend.set_read_only(chat_id, bool(step.value))
            if step.value:
                self.r._record(desired, [lambda chat: _did(chat.record_read_only(generation, now))])
            else:
                self.r._record(desired, [lambda chat: _did(chat.record_reopened(generation, now))])
            actual = replace(actual, read_only=bool(step.value), levels_as_set=True)
        else:  # pragma: no cover
            raise AssertionError(step.kind)
        self.applied.append(step)
        return actual

    def _label(self, actual: ActualChat, step: Step) -> ActualChat:
        text = step.text or ""
        if step.kind == StepKind.SET_NAME:
            self.backend.set_name(actual.chat_id, text)
            return replace(actual, name=text)
        if step.kind == StepKind.SET_TOPIC:
            self.backend.set_topic(actual.chat_id, text)
            return replace(actual, topic=text)
        self.backend.set_order(actual.chat_id, self.r._ensure_tenant(self.desired.org, self.now), text)
        return replace(actual, order=text)

    def _membership(self, generation: int, actual: ActualChat, batch: list[Step]) -> ActualChat:
        """Adds (or removes) side by side, recorded together. A person whose add fails stays pending with the
        reason — the look-up or join refused for them, not for the chat — and the other steps go on; the backend
        unavailable fails the chat after what was confirmed is recorded."""
        chat_id, now = actual.chat_id, self.now

        def one(step: Step) -> AddOutcome | str | None:
            if step.kind == StepKind.REMOVE_MEMBER:
                self.backend.remove_member(chat_id, step.user_id or "")
                return None
            try:
                return self.backend.add_member(chat_id, step.user_id or "")
            except BackendUnavailable:
                raise
            except BackendError as error:
                return str(error)  # names the operation, never the person

        if len(batch) == 1:
            futures = None
            results: list[AddOutcome | str | None | BaseException] = []
            try:
                results.append(one(batch[0]))
            except Exception as error:
                results.append(error)
        else:
            futures = [self.r._steps.submit(one, step) for step in batch]
            results = [future.exception() or future.result() for future in futures]
        members = set(actual.members)
        changes: list[Change] = []
        failure: BaseException | None = None
        for step, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            user, person = step.user_id or "", step.person_id
            if step.kind == StepKind.REMOVE_MEMBER:
                members.discard(user)
                changes.append(_access(ChatGroup.record_access_revoked, generation, person, now))
            elif not isinstance(result, AddOutcome) or result.pending:  # a text: the join refused for this person
                self.pending[person or user] = result.reason if isinstance(result, AddOutcome) else str(result)
                if person is not None:  # a member who lost their account (deactivated) lost access
                    changes.append(_lost_access(generation, now, person))
                continue
            else:
                members.add(user)
                changes.append(_access(ChatGroup.record_access_granted, generation, person, now))
            self.applied.append(step)
        if changes:
            self.r._record(self.desired, changes)
        if failure is not None:
            raise failure
        return replace(actual, members=frozenset(members))


def _did(_: None) -> bool:
    return True


def _access(record: Callable[..., None], generation: int, person: str | None, now: datetime) -> Change:
    def change(chat: ChatGroup) -> bool:
        record(chat, generation, person, now)
        return True

    return change


def _lost_access(generation: int, now: datetime, person: str | None = None) -> Change:
    """Access the backend ended by itself (the chat deleted by hand, an account deactivated), on the record."""

    def change(chat: ChatGroup) -> bool:
        persons = sorted(chat.access) if person is None else [person] if person in chat.access else []
        for lost in persons:
            chat.record_access_revoked(generation, lost, now)
        return bool(persons)

    return change


class PlannedSteps:
    """Notes a walk's steps as the dry run's plans, changing nothing; adds are checked for accounts (a read)."""

    def __init__(self, backend: ChatBackend, now: datetime):
        self.backend = backend
        self.now = now
        self.plans: list[DryRunPlan] = []

    def tenant(self, org: str) -> None:
        pass

    def vanished(self, desired: DesiredChat, generation: int, chat_id: str) -> None:
        note = "an earlier generation, gone at the backend: recorded deleted"
        self.plans.append(DryRunPlan(desired.org, desired.event_id, generation, Phase.DELETED, [], note=note))

    def generation(
        self,
        desired: DesiredChat,
        generation: int,
        actual: ActualChat | None,
        steps: list[Step],
        *,
        wait: Wait | None = None,
        note: str | None = None,
        known: str | None = None,
    ) -> ActualChat | None:
        phase = desired.phase(self.now) if generation == desired.generation else Phase.DELETED
        pending = {}
        for step in steps:
            if step.kind == StepKind.ADD_MEMBER and step.user_id is not None:
                problem = self.backend.account(step.user_id)
                if problem is not None:
                    pending[step.user_id] = problem.reason
        self.plans.append(DryRunPlan(desired.org, desired.event_id, generation, phase, steps, waiting=wait, note=note,
                                   pending=pending))  # fmt: skip
        return apply(actual, steps)
