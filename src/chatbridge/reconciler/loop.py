"""The reconcile loop: level-triggered, like a Kubernetes controller.

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
from datetime import datetime
from typing import Any

from eventsourcing.persistence import IntegrityError

from chatbridge.application import ChatBridge
from chatbridge.backends.matrix import TENANT_FIELDS
from chatbridge.backends.port import ActualChat, AddOutcome, BackendError, ChatBackend
from chatbridge.backends.settings import ReconcilerSettings
from chatbridge.domain.aggregates import ChatGroup, Organisation
from chatbridge.domain.lifecycle import MEMBER_PHASES, Phase
from chatbridge.projections.desired_state import ChatKey, DesiredChat
from chatbridge.reconciler.knowledge import CompleteInput, DeletionGate, Wait
from chatbridge.reconciler.naming import RoomNaming, configured_naming
from chatbridge.reconciler.plan import Step, StepKind, hold_deletion, plan

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ChatState:
    """What the loop remembers about one chat between passes."""

    fingerprint: tuple[DesiredChat, Phase] | None = None  # the desired row and phase last brought about
    checked_at: datetime | None = None
    failures: int = 0
    retry_at: datetime | None = None
    parked: bool = False
    last_error: str | None = None
    pending: frozenset[str] = frozenset()  # persons without a usable account (never logged)
    chat_id: str | None = None
    members_synced: int = 0
    phase: Phase | None = None  # the phase brought about at the backend
    waiting: Wait | None = None  # why a deletion of this chat (any generation) waits for complete input
    waiting_known: datetime | None = None  # the gate's knowledge when it last waited: looked at again once it moves
    deletion_wanted: dict[int, datetime] = field(default_factory=dict)  # earlier generation → first seen to go
    stays_deleted: bool = False  # the desired generation was confirmed deleted: never created again


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
        app: ChatBridge,
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

    def close(self) -> None:
        self._pool.shutdown(wait=True)

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
        applied: list[Step] = []
        pending: set[str] = set()
        waits: list[Wait] = []
        before = (state.phase, state.chat_id, state.members_synced, state.pending)
        stays_deleted = False
        try:
            self._delete_earlier_generations(desired, state, now, waits)
            if phase == Phase.DELETED and desired.generation in self._chat_group(desired).chats_deleted:
                actual = None  # its deletion is confirmed and recorded: no need to ask the backend again
            else:
                actual = self.backend.get_chat(*key, desired.generation)
            if actual is None and phase in MEMBER_PHASES:
                # gone at the backend: recreated while its phase wants it (drift) — unless the backend confirmed
                # deleting this generation: what the backend did cannot be undone, it stays deleted
                stays_deleted = desired.generation in self._chat_group(desired).chats_deleted
            if phase in MEMBER_PHASES and not stays_deleted:  # the tenant first: a chat lives in it
                self._ensure_tenant(desired.org, now)
            steps = [] if stays_deleted else plan(desired, actual, now, self.backend, self.naming)
            if any(step.kind == StepKind.DELETE_CHAT for step in steps):
                wait = self.gate.check(desired.delete_at)
                if wait is not None:
                    steps = hold_deletion(actual, steps)
                    waits.append(wait)
            actual = self._apply(desired, actual, steps, now, applied, pending)
        except Exception as error:  # a bug or a refusal in one chat must not stop the others
            self._failed(key, state, error, now)
            log.warning("chat %s/%s: %s", *key, state.last_error)
            return ChatOutcome(*key, desired.generation, phase, applied, len(pending), state.last_error)
        if stays_deleted and not state.stays_deleted:
            log.warning("chat %s/%s: generation %d was confirmed deleted; it stays deleted (not created again)",
                        *key, desired.generation)  # fmt: skip
        state.stays_deleted = stays_deleted
        self._note_waiting(key, state, waits[0] if waits else None)
        state.fingerprint = (desired, phase)
        state.checked_at = now
        state.failures, state.retry_at, state.parked, state.last_error = 0, None, False, None
        state.pending = frozenset(pending)
        # what is brought about: a chat whose deletion waits is read-only, not deleted (status, overdue metric)
        if stays_deleted:
            state.phase = Phase.DELETED
        else:
            state.phase = Phase.READ_ONLY if phase == Phase.DELETED and actual is not None else phase
        state.chat_id = actual.chat_id if actual is not None else None
        state.members_synced = len(actual.members) if actual is not None else 0
        if applied:
            log.info("chat %s/%s: %d steps applied, %d pending", *key, len(applied), len(pending))
        if self.on_change is not None and before != (state.phase, state.chat_id, state.members_synced, state.pending):
            self.on_change(desired, state, now)
        return ChatOutcome(*key, desired.generation, phase, applied, len(pending), waiting=state.waiting)

    def _note_waiting(self, key: ChatKey, state: ChatState, wait: Wait | None) -> None:
        """Remember (and log, once per change) why a deletion waits; the chat is looked at again as the gate learns."""
        if wait is not None and (state.waiting is None or state.waiting.lag.keys() != wait.lag.keys()):
            log.info("chat %s/%s: deletion %s", *key, wait.reason)
        elif wait is None and state.waiting is not None:
            log.info("chat %s/%s: deletion no longer waits: the input is complete", *key)
        state.waiting = wait
        state.waiting_known = self.gate.known_at

    def _failed(self, key: ChatKey, state: ChatState, error: Exception, now: datetime) -> None:
        state.failures += 1
        state.fingerprint = None
        if isinstance(error, BackendError):
            state.last_error = str(error)  # the adapters' messages name the operation, never a person or account
        else:  # an unexpected error's text may hold anything (a user id in a KeyError): its type only, and the
            state.last_error = f"unexpected {type(error).__name__}"  # traceback at DEBUG for the developer
            log.debug("chat %s/%s failed", *key, exc_info=error)
        if state.failures >= self.settings.park_after:
            state.parked = True
            state.retry_at = now + self.settings.park_for
            log.error("chat %s/%s parked after %d failures: %s", *key, state.failures, state.last_error)
            return
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (state.failures - 1))
        state.retry_at = now + ceiling / 2 + ceiling / 2 * self._jitter()

    def _apply(
        self,
        desired: DesiredChat,
        actual: ActualChat | None,
        steps: list[Step],
        now: datetime,
        applied: list[Step],
        pending: set[str],
    ) -> ActualChat | None:
        org, event_id, generation = desired.org, desired.event_id, desired.generation
        for step in steps:
            if step.kind == StepKind.CREATE_CHAT:
                tenant_id = self._ensure_tenant(org, now)
                actual = self.backend.create_chat(org, event_id, generation, tenant_id, step.labels)
                chat_id = actual.chat_id
                self._record(desired, ChatGroup.record_chat_created, generation, chat_id, now)
                applied.append(step)
                continue
            assert actual is not None
            chat_id = actual.chat_id
            if step.kind in (StepKind.SET_NAME, StepKind.SET_TOPIC, StepKind.SET_ORDER):
                actual = self._label(org, actual, step, now)  # event data, not access: nothing for the audit
                applied.append(step)
                continue
            members, moderators, read_only = set(actual.members), set(actual.moderators), actual.read_only
            user, person = step.user_id or "", step.person_id
            if step.kind == StepKind.ADD_MEMBER:
                outcome = self.backend.add_member(chat_id, user)
                if outcome == AddOutcome.PENDING:
                    pending.add(person or user)
                    continue
                members.add(user)
                self._record(desired, ChatGroup.record_access_granted, generation, person, now)
            elif step.kind == StepKind.REMOVE_MEMBER:
                self.backend.remove_member(chat_id, user)
                members.discard(user)
                self._record(desired, ChatGroup.record_access_revoked, generation, person, now)
            elif step.kind == StepKind.SET_MODERATOR:
                self.backend.set_moderator(chat_id, user, bool(step.value))
                (moderators.add if step.value else moderators.discard)(user)
                self._record(desired, ChatGroup.record_moderator, generation, person, bool(step.value), now)
            elif step.kind == StepKind.SET_READ_ONLY:
                self.backend.set_read_only(chat_id, bool(step.value))
                read_only = bool(step.value)
                if read_only:
                    self._record(desired, ChatGroup.record_read_only, generation, now)
                else:
                    self._record(desired, ChatGroup.record_reopened, generation, now)
            elif step.kind == StepKind.DELETE_CHAT:
                deletion = self.backend.delete_chat(chat_id)
                record = deletion.as_record()
                self._record(desired, ChatGroup.record_chat_deleted, generation, now, record)
                applied.append(step)
                actual = None
                continue
            applied.append(step)
            actual = replace(actual, members=frozenset(members), moderators=frozenset(moderators), read_only=read_only)
        return actual

    def _label(self, org: str, actual: ActualChat, step: Step, now: datetime) -> ActualChat:
        text = step.text or ""
        if step.kind == StepKind.SET_NAME:
            self.backend.set_name(actual.chat_id, text)
            return replace(actual, name=text)
        if step.kind == StepKind.SET_TOPIC:
            self.backend.set_topic(actual.chat_id, text)
            return replace(actual, topic=text)
        self.backend.set_order(actual.chat_id, self._ensure_tenant(org, now), text)
        return replace(actual, order=text)

    def _delete_earlier_generations(
        self, desired: DesiredChat, state: ChatState, now: datetime, waits: list[Wait]
    ) -> None:
        """A new generation is a new chat: an earlier one the backend still has (a missed deletion) goes now —
        once the gate allows it. Its deadline is not in the desired row (that is the latest generation's), so the
        moment this reconciler first saw it must go stands for it (later than the true one: the safe side)."""
        if desired.generation == 1:
            return
        chat = self._chat_group(desired)
        for generation in sorted(chat.backend_chats):
            if generation >= desired.generation or generation in chat.chats_deleted:
                state.deletion_wanted.pop(generation, None)
                continue
            wait = self.gate.check(state.deletion_wanted.setdefault(generation, now))
            if wait is not None:
                waits.append(wait)
                continue
            actual = self.backend.get_chat(desired.org, desired.event_id, generation)
            if actual is not None:
                record = self.backend.delete_chat(actual.chat_id).as_record()
            else:
                record = {"chat_id": chat.backend_chats[generation], "status": "not found"}
            self._record(desired, ChatGroup.record_chat_deleted, generation, now, record)

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

    def _record(self, desired: DesiredChat, change: Callable[..., None], *args: Any) -> None:
        """Record one confirmed outcome on the chat's aggregate; a concurrent write by the consumer is retried."""
        for attempt in range(5):
            chat = self._chat_group(desired)
            change(chat, *args)
            try:
                self.app.save(chat)
                return
            except IntegrityError:
                if attempt == 4:
                    raise
