"""The intake ledger: what became of every record read, written in the same transaction as its events.

Each record read from a source (a JSONL file or a Kafka partition) ends as exactly one of `applied`,
`ignored` (an event without chat), `duplicate` (a message id seen before) or `rejected` (broke the contract).
The ledger is kept beside the event store's tables and written by the event store's own transaction (the
recorders below take an `intake=` keyword through `Application.save`), so a crash can never store a message's
events without its ledger row or the other way round. It answers three questions: has this message id been
processed (idempotency), the counts `state` prints, and where each rejected record was.

The recorder classes are chosen by `bootstrap` through the library's `PROCESS_RECORDER_TOPIC` setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.popo import POPOProcessRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder
from psycopg.sql import SQL, Composed, Identifier

from chatbridge.journal import chain, sealing
from chatbridge.journal.sql import Placeholders, insert_rows

APPLIED, IGNORED, DUPLICATE, REJECTED = "applied", "ignored", "duplicate", "rejected"


_KAFKA = "kafka:"


def partition_source(topic: str, partition: int) -> str:
    """The source name under which a Kafka partition's position and ledger rows are stored."""
    return f"{_KAFKA}{topic}:{partition}"


def parse_partition_source(source: str) -> tuple[str, int] | None:
    """(topic, partition) of a Kafka source name; None for other sources (files)."""
    if not source.startswith(_KAFKA):
        return None
    topic, _, partition = source[len(_KAFKA) :].rpartition(":")
    return topic, int(partition)


@dataclass(frozen=True)
class IntakeRecord:
    source: str  # "file:/path/messages.jsonl", or "kafka:{topic}:{partition}"
    position: int  # the line number (from 1), or the Kafka offset + 1 (the next offset to read)
    outcome: str
    message_id: str | None = None  # None for rejected records: their id is not remembered
    reason: str | None = None


@dataclass(frozen=True)
class IntakeSummary:
    ignored: int
    duplicates: int
    rejected: list[IntakeRecord]


_Known = tuple[set[str], dict[UUID, int]]  # message ids stored already, and aggregates' stored versions


class IntakeLedger(Protocol):
    def look_up(self, message_ids: Iterable[str], originator_ids: Iterable[UUID]) -> _Known: ...
    def intake_summary(self) -> IntakeSummary: ...
    def is_empty(self) -> bool: ...


def _remembered(record: IntakeRecord) -> bool:
    return record.outcome in (APPLIED, IGNORED)


class _IntakeTable(Placeholders):
    """The ledger's SQL, written once for SQLite and PostgreSQL (`?` placeholders; psycopg takes `%s`)."""

    placeholder = "?"
    records_named = True  # writes `named=` (pseudonym → when last named) with the events: `_write_named`
    CREATE_STATEMENTS = (
        "CREATE TABLE IF NOT EXISTS chatbridge_intake ("
        "source TEXT NOT NULL, position BIGINT NOT NULL, outcome TEXT NOT NULL, "
        "message_id TEXT, reason TEXT, PRIMARY KEY (source, position))",
        # the idempotency rule itself: one applied-or-ignored row per message id
        "CREATE UNIQUE INDEX IF NOT EXISTS chatbridge_intake_message_id ON chatbridge_intake (message_id) "
        "WHERE outcome IN ('applied', 'ignored')",
    )

    datastore: Any
    events_table_name: str
    _guard: chain.Guard | None = None

    @property
    def chain_guard(self) -> chain.Guard:
        """The audit's writer: checks the chain's head, links, signs and publishes (audit.chain)."""
        if self._guard is None:
            self._guard = chain.Guard()
        return self._guard

    @chain_guard.setter
    def chain_guard(self, guard: chain.Guard) -> None:
        self._guard = guard

    def create_chain_tables(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            for statement in chain.CREATE_STATEMENTS:
                c.execute(statement)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        # one storing transaction at a time per process, refused once the log was found forged; its checkpoint is
        # published once it committed
        with self.chain_guard.writing():
            return super().insert_events(stored_events, **kwargs)  # type: ignore[misc, no-any-return]

    def _write_intake(self, c: Any, intake: Sequence[IntakeRecord]) -> None:
        if intake:
            insert_rows(
                c,
                "INSERT INTO chatbridge_intake (source, position, outcome, message_id, reason) VALUES (?, ?, ?, ?, ?)",
                [(r.source, r.position, r.outcome, r.message_id, r.reason) for r in intake],
                self.placeholder,
            )

    def _write_named(self, c: Any, named: dict[str, datetime] | None) -> None:
        # when the persons were last named in a chat fact, in the transaction storing those facts (it was a
        # transaction of its own after it: on SQLite a second commit, and a second fsync, per batch)
        if named:
            sealing.write_named(c, self.placeholder, named)

    def look_up(self, message_ids: Iterable[str], originator_ids: Iterable[UUID]) -> _Known:
        """The batch's message ids stored already, and the latest stored version of each of its aggregates that has
        events (where `repository.get` would ask once per aggregate): one transaction (on PostgreSQL each
        transaction costs round trips of its own to begin and end)."""
        with self.datastore.transaction(commit=False) as c:
            return self._known_message_ids(c, list(message_ids)), self._stored_versions(c, list(originator_ids))

    def _known_message_ids(self, c: Any, ids: list[str]) -> set[str]:
        known: set[str] = set()
        for match, params in self._in(ids):
            c.execute(
                self._sql(
                    "SELECT message_id FROM chatbridge_intake WHERE outcome IN ('applied', 'ignored') "
                    f"AND message_id {match}"
                ),
                params,
            )
            known.update(row["message_id"] for row in c.fetchall())
        return known

    def _in(self, values: list[Any]) -> Iterator[tuple[str, list[Any]]]:
        """`IN (?, …)` a chunk at a time on SQLite (it caps the bound parameters); `= ANY(%s)`, one array, on
        PostgreSQL (psycopg would convert a query of hundreds of parameters each time)."""
        if self.placeholder != "?":
            if values:
                yield "= ANY(%s)", [values]
            return
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            yield f"IN ({','.join('?' * len(chunk))})", chunk

    def _stored_versions(self, c: Any, ids: list[UUID]) -> dict[UUID, int]:
        versions: dict[UUID, int] = {}
        for match, params in self._in([self._originator_param(i) for i in ids]):
            c.execute(
                self._sql(
                    f"SELECT originator_id, MAX(originator_version) AS version FROM {self.events_table_name} "
                    f"WHERE originator_id {match} GROUP BY originator_id"
                ),
                params,
            )
            for row in c.fetchall():
                originator = row["originator_id"]
                versions[originator if isinstance(originator, UUID) else UUID(originator)] = row["version"]
        return versions

    @staticmethod
    def _originator_param(originator_id: UUID) -> Any:
        return originator_id.hex  # SQLite stores ids as hex text; PostgreSQL overrides this

    def intake_summary(self) -> IntakeSummary:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT outcome, COUNT(*) AS n FROM chatbridge_intake GROUP BY outcome")
            counts = {row["outcome"]: row["n"] for row in c.fetchall()}
            c.execute(
                "SELECT source, position, outcome, reason FROM chatbridge_intake WHERE outcome = 'rejected' "
                "ORDER BY source, position"
            )
            rejected = [
                IntakeRecord(row["source"], row["position"], row["outcome"], None, row["reason"])
                for row in c.fetchall()
            ]
        return IntakeSummary(ignored=counts.get(IGNORED, 0), duplicates=counts.get(DUPLICATE, 0), rejected=rejected)

    def is_empty(self) -> bool:
        """True when nothing was ever ingested (no events, no ledger rows): `replay --from-kafka` may fill it."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT COUNT(*) AS n FROM chatbridge_intake")
            return bool(c.fetchone()["n"] == 0)


class SQLiteIntakeRecorder(_IntakeTable, SQLiteProcessRecorder):
    """SQLite process recorder (events + tracking) that also writes the intake ledger."""

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.CREATE_STATEMENTS]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        self._write_intake(c, kwargs.get("intake", ()))
        self._write_named(c, kwargs.get("named"))
        if returning:  # the audit's hash chain, in the same transaction as the events (holding the write lock)
            guard = self.chain_guard
            guard.extend(c, self._sql, guard.check(c, self._sql), zip(returning, stored_events, strict=True))
        return returning


class PostgresIntakeRecorder(_IntakeTable, PostgresProcessRecorder):
    """PostgreSQL process recorder (events + tracking) that also writes the intake ledger."""

    placeholder = "%s"
    _head: chain.Head  # found by the storing transaction before the insert, extended after it (under `writing`)

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any):
        super().__init__(datastore, **kwargs)
        self.sql_create_statements.extend(Composed([SQL(statement)]) for statement in self.CREATE_STATEMENTS)
        # the library's insert passes the events as one array of a composite type, in text: psycopg escapes every
        # topic and state with a regular expression (a quarter of a batch's time); here the columns go as binary
        # arrays, the same rows in the same order
        self._insert_columns = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[]) RETURNING notification_id"
        ).format(
            schema=Identifier(datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=Identifier(datastore.originator_id_type),
        )

    @staticmethod
    def _originator_param(originator_id: UUID) -> Any:
        return originator_id

    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        self._write_intake(curs, kwargs.get("intake", ()))
        if stored_events:
            # The head is checked here, under the table lock the events' insert takes anyway: a refusal raised
            # later (after the insert) would be caught by the library and the transaction committed.
            self._lock_table(curs)
            self._head = self.chain_guard.check(curs, self._sql)

    def _insert_stored_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        # the table is locked already (`_insert_events`, for the chain's head); subscribers are told as the library
        # tells them
        self._notify_channel(curs)
        curs.execute(
            self._insert_columns,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        if notification_ids:  # the audit's hash chain, in the same transaction (and table lock) as the events
            self.chain_guard.extend(curs, self._sql, self._head, zip(notification_ids, stored_events, strict=True))
        # the key rows only under the table lock: writers that take row locks before it could deadlock
        self._write_named(curs, kwargs.get("named"))
        return notification_ids


class POPOIntakeRecorder(POPOProcessRecorder):
    """In-memory twin of `SQLiteIntakeRecorder`, for `simulate` and unit tests."""

    def __init__(self) -> None:
        super().__init__()
        self._intake: dict[tuple[str, int], IntakeRecord] = {}
        self._remembered_ids: set[str] = set()

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        intake: Sequence[IntakeRecord] = kwargs.get("intake", ())
        new_ids = [r.message_id for r in intake if _remembered(r)]
        positions = [(r.source, r.position) for r in intake]
        if (
            len(set(new_ids)) < len(new_ids)
            or self._remembered_ids.intersection(new_ids)
            or len(set(positions)) < len(positions)
            or any(p in self._intake for p in positions)
        ):
            raise IntegrityError("intake record already stored")

    def _update_table(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        notification_ids = super()._update_table(stored_events, **kwargs)
        for record in kwargs.get("intake", ()):
            self._intake[(record.source, record.position)] = record
            if _remembered(record):
                assert record.message_id is not None
                self._remembered_ids.add(record.message_id)
        return notification_ids

    def look_up(self, message_ids: Iterable[str], originator_ids: Iterable[UUID]) -> _Known:
        with self._database_lock:
            versions = {}
            for originator_id in originator_ids:
                index = self._stored_events_index.get(str(originator_id))
                if index:
                    versions[originator_id] = max(index)
            return self._remembered_ids.intersection(message_ids), versions

    def intake_summary(self) -> IntakeSummary:
        with self._database_lock:
            records = sorted(self._intake.values(), key=lambda r: (r.source, r.position))
        return IntakeSummary(
            ignored=sum(r.outcome == IGNORED for r in records),
            duplicates=sum(r.outcome == DUPLICATE for r in records),
            rejected=[r for r in records if r.outcome == REJECTED],
        )

    def is_empty(self) -> bool:
        with self._database_lock:
            return not self._intake
