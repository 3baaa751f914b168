"""The intake use case: validated HiOrg messages → facts on the aggregates, one transaction per batch.

`IntakeApplication.ingest` is the single path by which messages enter the store, whatever their source: `chatbridge
ingest FILE`, the Kafka consumer, and `simulate` (in memory) all call it. One batch is one transaction holding
the new events, the intake ledger rows (applied / ignored / duplicate / rejected) and the source's tracking
position, so a batch is applied completely or not at all, and a source re-read from an earlier position changes
nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.domain import Aggregate, DomainEvent
from eventsourcing.persistence import Mapper, Notification, ProcessRecorder, StoredEvent, Tracking
from eventsourcing.popo import POPOFactory
from eventsourcing.projection import EventSourcedProjection

from chatbridge.domain.aggregates import ChatGroup, Organisation, Person, event_class
from chatbridge.domain.messages import (
    EventCancelled,
    EventDeleted,
    EventUpserted,
    Message,
    OrganisationChatDisabled,
    OrganisationChatEnabled,
    PersonStatusChanged,
    Rejection,
    StaffingChanged,
)
from chatbridge.journal.chain import Guard, Sink
from chatbridge.journal.erasures import ErasureLog
from chatbridge.journal.intake import (
    APPLIED,
    DUPLICATE,
    IGNORED,
    REJECTED,
    IntakeLedger,
    IntakeRecord,
    POPOIntakeRecorder,
)
from chatbridge.journal.keys import AuditKeys
from chatbridge.journal.sealing import MemoryKeyTable, PersonKeys, PersonSealingMapper, Pseudonym, SQLKeyTable

# The process recorder that also writes the intake ledger, per persistence module.
INTAKE_RECORDERS = {
    "eventsourcing.sqlite": "chatbridge.journal.intake:SQLiteIntakeRecorder",
    "eventsourcing.postgres": "chatbridge.journal.intake:PostgresIntakeRecorder",
}


def _private_sqlite_files(env: dict[str, str]) -> None:
    """The SQLite store holds every person's key beside the ciphertext it opens: readable by its owner only. The
    file is made 0600 before SQLite opens it (SQLite gives its WAL and SHM files the database file's mode), and a
    store made more open by an earlier release is closed down, its WAL and SHM too."""
    if env.get("CHATBRIDGE_PERSISTENCE_MODULE", env.get("PERSISTENCE_MODULE")) != "eventsourcing.sqlite":
        return
    name = env.get("CHATBRIDGE_SQLITE_DBNAME", env.get("SQLITE_DBNAME", ""))
    if not name or name.startswith("file:") or ":memory:" in name:
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):  # not there, or another user's file: SQLite says so when it opens it
            path = name + suffix
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)


@dataclass(frozen=True)
class Received:
    """One record read from a source, already validated."""

    position: int
    parsed: Message | Rejection


class _UnitOfWork:
    """The aggregates one batch touches, loaded once, their new events collected message by message.

    Collecting after each message (not per aggregate at the end) keeps the notification log in message order
    across aggregates — the projection's settling and generation rules depend on that order.

    Loading is batched: one query gives the stored version of every aggregate the batch names (`prefetch`), so an
    aggregate that does not exist costs no query, and a cached one that is up to date is copied from the cache
    without the repository's per-aggregate fast-forward query. Anything else goes through `repository.get`.
    """

    def __init__(self, app: IntakeApplication, processing_event: ProcessingEvent[UUID]):
        self.app = app
        self._app = app
        self._processing_event = processing_event
        self._loaded: dict[UUID, Aggregate | None] = {}
        self._touched: list[Aggregate] = []
        self._stored: dict[UUID, int] | None = None
        self._prefetched: set[UUID] = set()

    def prefetch(self, aggregate_ids: set[UUID], stored: dict[UUID, int]) -> None:
        """`stored`: the stored version of each of `aggregate_ids` that has events (`IntakeLedger.look_up`)."""
        self._stored = stored
        self._prefetched = aggregate_ids

    def get(self, aggregate_id: UUID) -> Any:
        if aggregate_id not in self._loaded:
            self._loaded[aggregate_id] = self._load(aggregate_id)
        aggregate = self._loaded[aggregate_id]
        if aggregate is not None:
            self._touched.append(aggregate)
        return aggregate

    def _load(self, aggregate_id: UUID) -> Aggregate | None:
        if self._stored is not None and aggregate_id in self._prefetched:
            version = self._stored.get(aggregate_id)
            if version is None:
                return None  # nothing stored under this id
            cache = self._app.repository.cache
            if cache is not None:
                try:
                    cached = cache.get(aggregate_id)
                except KeyError:
                    cached = None
                if cached is not None and cached.version == version:
                    return cast(
                        Aggregate, deepcopy(cached)
                    )  # a copy: a failed batch must leave the cached one untouched
        try:
            return cast(Aggregate, self._app.repository.get(aggregate_id))
        except AggregateNotFoundError:
            return None

    def add(self, aggregate: Aggregate) -> None:
        self._loaded[aggregate.id] = aggregate
        self._touched.append(aggregate)

    def collect(self, **kwargs: Any) -> None:
        """Move the new events of the aggregates touched since the last call into the batch, in order.

        What `ProcessingEvent.collect_events` does, without its isinstance checks against runtime Protocols
        (a third of the intake's time in the profile): everything touched here is an `Aggregate`.
        """
        processing_event = self._processing_event
        for aggregate in self._touched:
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        processing_event.saved_kwargs.update(kwargs)
        self._touched = []


@dataclass
class _Batch:
    source: str
    records: Sequence[Received]
    outcomes: list[IntakeRecord] = field(default_factory=list)
    forgotten: list[tuple[str, str]] = field(default_factory=list)  # (org, person_id): erasures, done once stored
    aggregates: dict[UUID, Any] = field(default_factory=dict)  # as saved, for the cache once committed
    named: dict[str, datetime] = field(default_factory=dict)  # pseudonym → the latest chat fact naming them


class IntakeApplication(EventSourcedProjection[UUID]):
    """chatbridge's event-sourced application: the aggregates, the intake ledger, source positions.

    It is the library's `EventSourcedProjection` of the outside world: `process_event` records a batch's new
    events together with a tracking position of its source, the library's public path for exactly-once effect.
    """

    name = "ChatBridge"  # the library names the tables after it (chatbridge_events, …): kept for existing stores
    env = {"AGGREGATE_CACHE_MAXSIZE": "5000"}

    def __init__(
        self,
        env: Any = None,
        keys: AuditKeys | None = None,
        checkpoint_sinks: Sequence[Sink] = (),
        erasure_log: ErasureLog | None = None,
    ):
        # the audit's keys (journal.keys): checkpoint signing, and the persons' pseudonyms; the sinks are where
        # signed checkpoints are published outside the store, and the erasure log every destroyed key is recorded
        # in outside it (bootstrap chooses them)
        self.keys = keys or AuditKeys.ephemeral()
        _private_sqlite_files(env or {})
        super().__init__(env)
        table: Any = MemoryKeyTable()
        if hasattr(self.recorder, "datastore"):
            table = SQLKeyTable(self.recorder.datastore, getattr(self.recorder, "placeholder", "?"))
            table.create_table()
            self.recorder.chain_guard = Guard(self.keys.signing_key, checkpoint_sinks)  # type: ignore[attr-defined]
            self.recorder.create_chain_tables()  # type: ignore[attr-defined]
        self.persons = PersonKeys(self.keys.pseudonym_key, table, erasure_log=erasure_log)
        mapper = cast(PersonSealingMapper, self.mapper)
        mapper.persons = self.persons
        mapper.first_event = self._first_event

    @property
    def audit_guard(self) -> Guard | None:
        """The writer of the audit's chain (None in memory): where checkpoints go, and whether storing stopped."""
        return cast(Guard | None, getattr(self.recorder, "chain_guard", None))

    def close(self) -> None:
        guard = self.audit_guard
        if guard is not None:
            guard.close()
        super().close()

    def construct_mapper(self) -> Mapper[UUID]:
        # persons' ids are sealed with their own keys (crypto-shredding, audit.shredding)
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=PersonSealingMapper)

    def _first_event(self, originator_id: UUID) -> StoredEvent | None:
        events = self.recorder.select_events(originator_id, lte=1)
        return events[0] if events else None

    def construct_recorder(self) -> ProcessRecorder:
        if isinstance(self.factory, POPOFactory):  # the in-memory factory takes no recorder topic
            return POPOIntakeRecorder()
        module = self.env.get("PERSISTENCE_MODULE") or ""
        if not self.env.get("PROCESS_RECORDER_TOPIC") and module in INTAKE_RECORDERS:
            self.env["PROCESS_RECORDER_TOPIC"] = INTAKE_RECORDERS[module]
        return self.factory.process_recorder()

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """The library's `save`, collecting events without its `isinstance` checks against runtime-checkable
        Protocols (about a fifth of saving a batch of events in the raw-store profile): an `Aggregate` gives its new
        events, a domain event is taken as it is, and anything else goes through the library's own collecting."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, Aggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            elif isinstance(obj, DomainEvent):
                processing_event.events.append(obj)
            elif obj is not None:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # type: ignore[arg-type]  # the library's deprecated hook, as `save`
        return recordings

    def _record(self, processing_event: ProcessingEvent[UUID]) -> Any:
        # the keys of every person the events name, in one transaction before they are sealed one by one; a batch of
        # the intake (`intake=`) had them prepared from its messages already (`ingest`)
        if "intake" not in processing_event.saved_kwargs:
            cast(PersonSealingMapper, self.mapper).prepare(processing_event.events)
        return super()._record(processing_event)

    @property
    def ledger(self) -> IntakeLedger:
        return cast(IntakeLedger, self.recorder)

    def notifications(self, page_size: int = 1000) -> Iterator[Notification]:
        """Every stored event record, in notification-log order, read a page at a time (audit, verification)."""
        position = 0
        while page := self.recorder.select_notifications(start=position, limit=page_size, inclusive_of_start=False):
            yield from page
            position = page[-1].id

    def position(self, source: str) -> int:
        """The last position of `source` stored (0 if none): the next read starts after it."""
        return cast(ProcessRecorder, self.recorder).max_tracking_id(source) or 0

    def ingest(self, source: str, batch: Sequence[Received]) -> list[IntakeRecord]:
        """Apply a batch of records from one source in one transaction; returns what became of each."""
        if not batch:
            return []
        processing = _Batch(source, batch)
        self.persons.prepare(_persons_named(batch))  # their keys in one transaction, not one per new person
        try:
            self.process_event(processing, Tracking(source, batch[-1].position))  # type: ignore[arg-type]
        except BaseException:
            for org, person_id in processing.forgotten:  # nothing was stored: nor were the erasures
                self.persons.abandon_erasure(org, person_id)
            raise
        for org, person_id in processing.forgotten:  # deleted persons: their keys go once their facts are stored
            self.persons.erase_planned(org, person_id)
        if processing.named and not getattr(self.recorder, "records_named", False):  # in memory: after storing
            self.persons.table.note_named(processing.named)
        self._cache_saved(processing.aggregates)
        return processing.outcomes

    def _cache_saved(self, aggregates: dict[UUID, Any]) -> None:
        """Keep the aggregates just committed in the repository's cache, so the next batch needs no fast-forward
        query for them (the library caches saved aggregates only when fast-forwarding is off)."""
        cache = self.repository.cache
        if cache is not None:
            for aggregate_id, aggregate in aggregates.items():
                cache.put(aggregate_id, aggregate)

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """The library's name for the hook that turns one input (here: a batch of messages) into new events; not
        the lifecycle `Policy` (FULL_USE and VIEW) of `domain.lifecycle`."""
        batch = cast(_Batch, domain_event)
        unit = _UnitOfWork(self, processing_event)
        valid = [r.parsed for r in batch.records if not isinstance(r.parsed, Rejection)]
        aggregate_ids = {_aggregate_id(m, self.persons.pseudonym) for m in valid}
        seen, stored = self.ledger.look_up((m.id for m in valid), aggregate_ids)
        unit.prefetch(aggregate_ids, stored)
        outcomes = batch.outcomes
        for record in batch.records:
            message = record.parsed
            if isinstance(message, Rejection):
                outcomes.append(IntakeRecord(batch.source, record.position, REJECTED, None, message.reason))
                continue
            if message.id in seen:
                outcomes.append(IntakeRecord(batch.source, record.position, DUPLICATE, message.id))
                continue
            seen.add(message.id)
            if isinstance(message, PersonStatusChanged) and message.data.status == "deleted":
                batch.forgotten.append((message.org, message.data.person_id))  # before its handler plans the erasure
            outcome = _HANDLERS[type(message)](message, unit)
            outcomes.append(IntakeRecord(batch.source, record.position, outcome, message.id))
            unit.collect()
        # when each person was last named in a chat fact, stored with the facts (`journal.intake`)
        batch.named = self.persons.named_pseudonyms(_times_named(batch.records, outcomes))
        unit.collect(intake=outcomes, named=batch.named)
        batch.aggregates = processing_event.aggregates


# One handler per message type: decide applied or ignored, and record the facts. ---------------------------------

# The facts most messages become, recorded with the aggregate's `trigger_event` and exactly the event's fields: the
# same event object the decorated command (`ChatGroup.change_staffing`, …) makes and applies, without the decorator's
# matching of arguments to parameters, which was ~40 % of a command's time (commands ~15 % of the intake's).
_STAFFING_CHANGED = event_class(ChatGroup, "StaffingChanged")
_EVENT_RECORDED = event_class(ChatGroup, "EventRecorded")
_CANCELLED = event_class(ChatGroup, "Cancelled")
_STATUS_CHANGED = event_class(Person, "StatusChanged")

# uuid5 of the same few keys, message after message: remembered
_chat_group_id = lru_cache(maxsize=65536)(ChatGroup.create_id)
_organisation_id = lru_cache(maxsize=4096)(Organisation.create_id)
_person_id = lru_cache(maxsize=65536)(Person.create_id)


def _aggregate_id(message: Message, pseudonym: Callable[[str, str], str]) -> UUID:
    """The aggregate a message is about (each handler below touches exactly this one): a person's by their
    pseudonym, as `_person_status_changed` names it."""
    if isinstance(message, OrganisationChatEnabled | OrganisationChatDisabled):
        return _organisation_id(message.org)
    if isinstance(message, PersonStatusChanged):
        return _person_id(message.org, pseudonym(message.org, message.data.person_id))
    return _chat_group_id(message.org, message.data.event_id)


def _organisation(message: OrganisationChatEnabled | OrganisationChatDisabled, unit: _UnitOfWork) -> Organisation:
    organisation = unit.get(_organisation_id(message.org))
    if organisation is None:
        organisation = Organisation(message.org, message.id, message.occurred_at)
        unit.add(organisation)
    return cast(Organisation, organisation)


def _chat_enabled(message: OrganisationChatEnabled, unit: _UnitOfWork) -> str:
    tenant = message.data.model_dump(mode="json")  # exactly the contract's fields: extras were dropped on parsing
    _organisation(message, unit).enable_chat(message.id, message.occurred_at, tenant)
    return APPLIED


def _chat_disabled(message: OrganisationChatDisabled, unit: _UnitOfWork) -> str:
    _organisation(message, unit).disable_chat(message.id, message.occurred_at)
    return APPLIED


def _person_status_changed(message: PersonStatusChanged, unit: _UnitOfWork) -> str:
    persons, person_id = unit.app.persons, message.data.person_id
    pseudonym = persons.pseudonym(message.org, person_id)
    deleted = message.data.status == "deleted"
    person = unit.get(_person_id(message.org, pseudonym))  # never the HiOrg id: nothing may link back
    if person is None:  # (a person first named by their own deletion is erased by it: registered by pseudonym)
        named = Pseudonym(pseudonym) if deleted else person_id
        person = Person(message.org, pseudonym, named, message.id, message.occurred_at)
        unit.add(person)
    person.trigger_event(_STATUS_CHANGED, message_id=message.id, occurred_at=message.occurred_at,
                         status=message.data.status)  # fmt: skip
    if deleted:  # crypto-shredding: this batch is sealed knowing it, the keys go once it is stored
        named_again = persons.named_after(message.org, person_id, message.occurred_at)
        key_version = persons.plan_erasure(message.org, person_id, message.occurred_at)
        person.forget(pseudonym, message.occurred_at, "person deleted", key_version)
        if named_again is not None:  # an earlier batch named the new person the deletion is followed by
            person.name_again(person_id, named_again)
    return APPLIED


def _live_chat(org: str, event_id: str, unit: _UnitOfWork) -> ChatGroup | None:
    """The event's chat group, or None when messages about the event are to be ignored."""
    chat = cast(ChatGroup | None, unit.get(_chat_group_id(org, event_id)))
    return None if chat is None or chat.is_deleted else chat


def _on_live_chat(message: EventCancelled | EventDeleted | StaffingChanged, unit: _UnitOfWork,
                  change: Callable[[ChatGroup], None]) -> str:  # fmt: skip
    """Apply `change` to the event's chat group; ignored if the event never had chat or was deleted."""
    chat = _live_chat(message.org, message.data.event_id, unit)
    if chat is None:
        return IGNORED
    change(chat)
    return APPLIED


def _event_upserted(message: EventUpserted, unit: _UnitOfWork) -> str:
    data = message.data
    staff: dict[str, str] | None = None
    if data.staff is not None:  # "removed" in a full record means: not staffed
        staff = {s.person_id: s.status for s in data.staff if s.status != "removed"}
    chat_id = _chat_group_id(message.org, data.event_id)
    if unit.get(chat_id) is None:
        if not data.chat_enabled:
            return IGNORED  # never had chat: not stored (data minimisation)
        unit.add(
            ChatGroup(
                message.org, data.event_id, message.id, message.occurred_at,
                data.title, data.start, data.end, data.responsible, staff,
            )
        )  # fmt: skip
        return APPLIED
    chat = _live_chat(message.org, data.event_id, unit)
    if chat is None:
        return IGNORED
    chat.trigger_event(
        _EVENT_RECORDED, message_id=message.id, occurred_at=message.occurred_at, title=data.title, start=data.start,
        end=data.end, responsible=data.responsible, chat_enabled=data.chat_enabled, staff=staff,
    )  # fmt: skip
    return APPLIED


def _event_cancelled(message: EventCancelled, unit: _UnitOfWork) -> str:
    return _on_live_chat(
        message,
        unit,
        lambda chat: chat.trigger_event(_CANCELLED, message_id=message.id, occurred_at=message.occurred_at),
    )


def _event_deleted(message: EventDeleted, unit: _UnitOfWork) -> str:
    return _on_live_chat(message, unit, lambda chat: chat.delete(message.id, message.occurred_at))


def _staffing_changed(message: StaffingChanged, unit: _UnitOfWork) -> str:
    data = message.data
    return _on_live_chat(
        message,
        unit,
        lambda chat: chat.trigger_event(
            _STAFFING_CHANGED,
            message_id=message.id,
            occurred_at=message.occurred_at,
            person_id=data.person_id,
            status=data.status,
        ),
    )


def _chat_persons(message: Message | Rejection) -> list[str]:
    """The persons a message names as an event's staff or responsible (the facts that name persons in chats)."""
    if isinstance(message, EventUpserted):
        data = message.data
        return [s.person_id for s in data.staff or ()] + ([data.responsible] if data.responsible else [])
    if isinstance(message, StaffingChanged):
        return [message.data.person_id]
    return []


def _persons_named(batch: Sequence[Received]) -> set[tuple[str, str]]:
    """(org, person_id) of every person the batch's messages name: their events will be sealed with their keys."""
    named: set[tuple[str, str]] = set()
    for record in batch:
        message = record.parsed
        if isinstance(message, PersonStatusChanged):
            named.add((message.org, message.data.person_id))
        elif isinstance(message, EventUpserted | StaffingChanged):
            named.update((message.org, person_id) for person_id in _chat_persons(message))
    return named


def _times_named(batch: Sequence[Received], outcomes: Sequence[IntakeRecord]) -> dict[tuple[str, str], datetime]:
    """(org, person_id) → the latest `occurred_at` of a stored chat fact naming the person."""
    named: dict[tuple[str, str], datetime] = {}
    for record, outcome in zip(batch, outcomes, strict=True):
        message = record.parsed
        if outcome.outcome != APPLIED or not isinstance(message, EventUpserted | StaffingChanged):
            continue
        for person_id in _chat_persons(message):
            key = (message.org, person_id)
            named[key] = max(named.get(key, message.occurred_at), message.occurred_at)
    return named


_HANDLERS: dict[type, Callable[[Any, _UnitOfWork], str]] = {
    OrganisationChatEnabled: _chat_enabled,
    OrganisationChatDisabled: _chat_disabled,
    PersonStatusChanged: _person_status_changed,
    EventUpserted: _event_upserted,
    EventCancelled: _event_cancelled,
    EventDeleted: _event_deleted,
    StaffingChanged: _staffing_changed,
}
