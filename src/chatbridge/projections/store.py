"""The persistent desired-state projection: tables beside the event store, following the notification log.

`DesiredStateProjection.catch_up` reads the notifications after its tracking position, folds them with
`DesiredStateFold`, and writes the changed rows together with the new tracking position in one transaction — so
a crash loses nothing and a restart resumes where it stopped. `rebuild` folds the whole log into an empty fold
and replaces every row; by construction it gives the rows the live projection has.

Tables (the same on SQLite and PostgreSQL, in the event store's database):
    desired_state   one row per chat: generation, deadlines, next_due, members, moderators, the event's title and
                    start, the chat's facts, and what a person's status fact can change (`Quiet`: the moment before
                    which it settles nothing, and whom the members depend on; read with the person index, so such
                    a fact need not load the chat, and at most writes its members again)
    organisation_feature (feature switches), person_status (by pseudonym: status facts and erasures),
    person_chats (the person index, by pseudonym), desired_state_meta (policy and fold version in force)

The facts are kept in the rows because order is event time: a fact arriving late is inserted among them and the
chat is walked again. A meta row names the fold's version: rows written by another version are rebuilt from the
log rather than read (the projection is derived; the log is the truth).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL, Composed

from chatbridge.application import IntakeApplication
from chatbridge.domain.lifecycle import Policy
from chatbridge.domain.moments import stamp
from chatbridge.journal.sql import Placeholders, insert_rows, update_rows
from chatbridge.projections.desired_state import (
    FOLDED_BY_NAME,
    NOT_FOLDED_NAMES,
    UPSERT,
    Changes,
    ChatFact,
    ChatKey,
    Counted,
    DesiredChat,
    DesiredStateFold,
    FoldedChat,
    PersonKey,
    PersonRecord,
    Quiet,
    RowSource,
    Switch,
    chat_aggregate_id,
    organisation_aggregate_id,
    person_aggregate_id,
    token_parts,
    unknown_event,
)

PROJECTION_NAME = "desired_state"
FOLD_VERSION = "6"  # facts in event time, persons by pseudonym, rows looked up by aggregate id, title and start,
# what a status fact can change (quiet_until, counted, responsible)
Progress = Callable[[int, int], None]  # (notifications folded so far, notifications to fold in all)


def _chat_json(record: FoldedChat) -> str:
    facts = []
    for fact in record.facts:
        row = [fact[0].isoformat(), *fact[1:]]
        if fact[2] == UPSERT:
            row[3] = fact[3].isoformat()
            if len(row) > 8 and row[8] is not None:
                row[8] = row[8].isoformat()
        facts.append(row)
    return json.dumps({"id": str(record.aggregate_id), "facts": facts})


def _chat_from_json(text: str) -> FoldedChat:
    state = json.loads(text)
    facts: list[ChatFact] = []
    for row in state["facts"]:
        row[0] = datetime.fromisoformat(row[0])
        if row[2] == UPSERT:
            row[3] = datetime.fromisoformat(row[3])
            if len(row) > 8 and row[8] is not None:
                row[8] = datetime.fromisoformat(row[8])
        facts.append(tuple(row))
    return FoldedChat(UUID(state["id"]), facts)


def _switches_json(switches: list[Switch]) -> str:
    return json.dumps([[at.isoformat(), seq, on] for at, seq, on in switches])


def _switches_from_json(text: str) -> list[Switch]:
    return [(datetime.fromisoformat(at), seq, on) for at, seq, on in json.loads(text)]


def _person_json(record: PersonRecord) -> str:
    return json.dumps(
        {
            "statuses": [[at.isoformat(), seq, status] for at, seq, status in record.statuses],
            "erasures": [[at.isoformat(), seq] for at, seq in record.erasures],
            "name": record.name,  # a sealed token: opens to the HiOrg id only while the person's key exists
        }
    )


def _person_from_json(text: str) -> PersonRecord:
    state = json.loads(text)
    return PersonRecord(
        [(datetime.fromisoformat(at), seq, status) for at, seq, status in state["statuses"]],
        [(datetime.fromisoformat(at), seq) for at, seq in state["erasures"]],
        state["name"],
    )


def _stamp(moment: datetime | None) -> str | None:
    # one fixed format, so that SQL comparisons of deadlines (next_due <= now) are correct as text
    return None if moment is None else stamp(moment)


def _unstamp(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _policy_text(policy: Policy) -> str:
    return json.dumps({"full_use": policy.full_use.total_seconds(), "view": policy.view.total_seconds()})


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    """`INSERT … ON CONFLICT DO UPDATE`: the one upsert both SQLite and PostgreSQL understand."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_DESIRED_COLUMNS = (
    "org", "event_id", "aggregate_id", "generation", "deleted", "awaiting_organisation", "read_only_at", "delete_at",
    "next_due", "members", "moderators", "title", "starts_at", "fold_state", "quiet_until", "counted", "responsible",
)  # fmt: skip
_WRITE_FEATURE = _upsert("organisation_feature", ("org", "aggregate_id", "fold_state"), ("org",))
_WRITE_PERSON = _upsert(
    "person_status", ("org", "person_id", "aggregate_id", "status", "fold_state"), ("org", "person_id")
)
_WRITE_CHAT = _upsert("desired_state", _DESIRED_COLUMNS, ("org", "event_id"))
_WRITE_META = _upsert("desired_state_meta", ("key", "value"), ("key",))
_WRITE_INDEX = "INSERT INTO person_chats (org, person_id, event_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
_CHUNK = 500  # ids per `IN (…)` look-up


PROJECTION_TABLES = ("desired_state", "organisation_feature", "person_status", "person_chats")


class _DesiredStateTables(Placeholders):
    """The projection's tables and queries, written once for SQLite and PostgreSQL.

    Statements use `?` placeholders (psycopg takes `%s`) and rows are read by column name, which both drivers'
    row types allow. The tracking row is the library's own (`_insert_tracking`), in the same transaction. It is
    also the fold's `RowSource`: the rows a page of the log touches are looked up by aggregate id or key.
    """

    placeholder = "?"
    tracking_table = "tracking"
    datastore: Any

    if TYPE_CHECKING:  # provided by the library's recorder this is mixed into; a stub here would shadow it

        def _insert_tracking(self, c: Any, tracking: Tracking) -> None: ...
        def _max_tracking_id(self, application_name: str, c: Any) -> int | None: ...

    CREATE_STATEMENTS = (
        "CREATE TABLE IF NOT EXISTS desired_state ("
        "org TEXT NOT NULL, event_id TEXT NOT NULL, aggregate_id TEXT NOT NULL, generation INTEGER NOT NULL, "
        "deleted INTEGER NOT NULL, awaiting_organisation INTEGER NOT NULL, read_only_at TEXT NOT NULL, "
        "delete_at TEXT NOT NULL, next_due TEXT, members TEXT NOT NULL, moderators TEXT NOT NULL, title TEXT, "
        "starts_at TEXT, fold_state TEXT NOT NULL, quiet_until TEXT NOT NULL, counted TEXT NOT NULL, "
        "responsible TEXT, PRIMARY KEY (org, event_id))",
        "CREATE INDEX IF NOT EXISTS desired_state_next_due ON desired_state (next_due)",
        "CREATE INDEX IF NOT EXISTS desired_state_aggregate ON desired_state (aggregate_id)",
        "CREATE TABLE IF NOT EXISTS organisation_feature ("
        "org TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL, fold_state TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS organisation_feature_aggregate ON organisation_feature (aggregate_id)",
        "CREATE TABLE IF NOT EXISTS person_status ("
        "org TEXT NOT NULL, person_id TEXT NOT NULL, aggregate_id TEXT NOT NULL, status TEXT NOT NULL, "
        "fold_state TEXT NOT NULL, PRIMARY KEY (org, person_id))",
        "CREATE INDEX IF NOT EXISTS person_status_aggregate ON person_status (aggregate_id)",
        "CREATE INDEX IF NOT EXISTS person_status_pseudonym ON person_status (person_id)",
        "CREATE TABLE IF NOT EXISTS person_chats ("
        "org TEXT NOT NULL, person_id TEXT NOT NULL, event_id TEXT NOT NULL, "
        "PRIMARY KEY (org, person_id, event_id))",
        "CREATE TABLE IF NOT EXISTS desired_state_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )

    def create_table(self) -> None:
        """Create the tables; rows of an earlier version of the fold are dropped first (their shape differs): the
        projection is derived, the next catch-up folds the log into the new tables from the start."""
        with self.datastore.transaction(commit=True) as c:
            if self._table_exists(c, "desired_state") and self._version(c) != FOLD_VERSION:
                for table in PROJECTION_TABLES:
                    c.execute(f"DROP TABLE IF EXISTS {table}")
                if self._table_exists(c, "desired_state_meta"):
                    c.execute("DELETE FROM desired_state_meta WHERE key = 'policy'")
                if self._table_exists(c, self.tracking_table):
                    c.execute(
                        self._sql(f"DELETE FROM {self.tracking_table} WHERE application_name = ?"), (PROJECTION_NAME,)
                    )
        super().create_table()  # type: ignore[misc]
        with self.datastore.transaction(commit=True) as c:
            c.execute(self._sql(_WRITE_META), ("fold_version", FOLD_VERSION))

    def ensure_current(self) -> None:
        """Tables of an earlier version of the fold are replaced (a store opened without creating tables)."""
        with self.datastore.transaction(commit=False) as c:
            current = self._version(c) == FOLD_VERSION
        if not current:
            self.create_table()

    def _version(self, c: Any) -> str | None:
        if not self._table_exists(c, "desired_state_meta"):
            return None
        c.execute("SELECT value FROM desired_state_meta WHERE key = 'fold_version'")
        row = c.fetchone()
        return None if row is None else str(row["value"])

    def stored_policy(self) -> str | None:
        return self._meta("policy")

    def _meta(self, key: str) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self._sql("SELECT value FROM desired_state_meta WHERE key = ?"), (key,))
            row = c.fetchone()
        return None if row is None else str(row["value"])

    # -- the fold's RowSource ---------------------------------------------------------------------------------

    def _select(self, statement: str, column: str, values: Iterable[Any]) -> Iterator[Any]:
        """Rows `WHERE {column} IN (values)`, a chunk at a time."""
        values = list(values)
        with self.datastore.transaction(commit=False) as c:
            for begin in range(0, len(values), _CHUNK):
                chunk = values[begin : begin + _CHUNK]
                c.execute(self._sql(f"{statement} WHERE {column} IN ({', '.join('?' * len(chunk))})"), chunk)
                yield from c.fetchall()

    def _chats(self, column: str, values: Iterable[Any]) -> Iterator[tuple[ChatKey, FoldedChat]]:
        for row in self._select("SELECT org, event_id, fold_state FROM desired_state", column, values):
            yield (row["org"], row["event_id"]), _chat_from_json(row["fold_state"])

    def _persons(self, column: str, values: Iterable[Any]) -> Iterator[tuple[PersonKey, PersonRecord]]:
        for row in self._select("SELECT org, person_id, fold_state FROM person_status", column, values):
            yield (row["org"], row["person_id"]), _person_from_json(row["fold_state"])

    def chats_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[ChatKey, FoldedChat]]:
        return self._chats("aggregate_id", (str(i) for i in ids))

    def chats_by_keys(self, keys: Iterable[ChatKey]) -> Iterator[tuple[ChatKey, FoldedChat]]:
        return self.chats_by_ids(chat_aggregate_id(*key) for key in keys)

    def chats_of_organisation(self, org: str) -> Iterator[tuple[ChatKey, FoldedChat]]:
        return self._chats("org", [org])

    def persons_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[PersonKey, PersonRecord]]:
        return self._persons("aggregate_id", (str(i) for i in ids))

    def persons_by_keys(self, keys: Iterable[PersonKey]) -> Iterator[tuple[PersonKey, PersonRecord]]:
        return self.persons_by_ids(person_aggregate_id(*key) for key in keys)

    def persons_by_pseudonyms(self, pseudonyms: Iterable[str]) -> Iterator[tuple[PersonKey, PersonRecord]]:
        return self._persons("person_id", pseudonyms)

    def organisations_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[str, UUID, list[Switch]]]:
        for row in self._select("SELECT org, aggregate_id, fold_state FROM organisation_feature", "aggregate_id",
                                (str(i) for i in ids)):  # fmt: skip
            yield row["org"], UUID(row["aggregate_id"]), _switches_from_json(row["fold_state"])

    def indexes_of(self, persons: Iterable[PersonKey]) -> dict[PersonKey, dict[str, Quiet | None]]:
        """The person index of many persons, an organisation at a time (the table's key starts with it), with what
        each chat's row says about status facts."""
        by_org: dict[str, list[str]] = {}
        for org, pseudonym in set(persons):
            by_org.setdefault(org, []).append(pseudonym)
        found: dict[PersonKey, dict[str, Quiet | None]] = {}
        with self.datastore.transaction(commit=False) as c:
            for org, pseudonyms in sorted(by_org.items()):
                for begin in range(0, len(pseudonyms), _CHUNK):
                    chunk = pseudonyms[begin : begin + _CHUNK]
                    c.execute(
                        self._sql(
                            "SELECT p.person_id, p.event_id, d.quiet_until, d.counted, d.responsible "
                            "FROM person_chats p LEFT JOIN desired_state d "
                            "ON d.org = p.org AND d.event_id = p.event_id WHERE p.org = ? "
                            f"AND p.person_id IN ({', '.join('?' * len(chunk))})"
                        ),
                        [org, *chunk],
                    )
                    for row in c.fetchall():
                        quiet: Quiet | None = None
                        if row["quiet_until"] is not None:  # a chat row written without its index entry: loaded
                            counted = Counted(frozenset(json.loads(row["counted"])), row["responsible"])
                            quiet = datetime.fromisoformat(row["quiet_until"]), counted
                        found.setdefault((org, row["person_id"]), {})[row["event_id"]] = quiet
        return found

    # -- writing ---------------------------------------------------------------------------------------------

    def write(self, fold: DesiredStateFold, tracking: Tracking | None, *, replace_all: bool = False) -> None:
        """Write what changed in `fold` (or everything) and the tracking position, in one transaction.

        A tracking position that does not move forward raises the library's `IntegrityError` and nothing is
        written: another process folded those notifications first.
        """
        changes = fold.everything() if replace_all else fold.take_dirty()
        rows = self._rows(fold, changes)  # computed before the transaction: it may read rows the fold lacks
        members = self._members(fold, changes)
        with self.datastore.transaction(commit=True) as c:
            if replace_all:
                for table in PROJECTION_TABLES:  # rows of another fold version may have another shape
                    c.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in self.CREATE_STATEMENTS:
                    c.execute(statement)
                c.execute(
                    self._sql(f"DELETE FROM {self.tracking_table} WHERE application_name = ?"), (PROJECTION_NAME,)
                )
            if tracking is not None:
                self._insert_tracking(c, tracking)
            for statement, table_rows in rows:
                insert_rows(c, statement, table_rows, self.placeholder)
            update_rows(c, "desired_state", ("members", "moderators"), ("org", "event_id"), members, self.placeholder)
            c.execute(self._sql(_WRITE_META), ("policy", _policy_text(fold.policy)))

    def _rows(self, fold: DesiredStateFold, changes: Changes) -> list[tuple[str, list[Any]]]:
        features = [
            (org, str(organisation_aggregate_id(org)), _switches_json(fold.organisations[org]))
            for org in changes.organisations
        ]
        persons = [
            (org, pseudonym, str(person_aggregate_id(org, pseudonym)), record.status() or "", _person_json(record))
            for (org, pseudonym), record in ((key, fold.persons[key]) for key in changes.persons)
        ]
        chats = []
        for key in changes.chats:
            desired = fold.desired(key)
            quiet_until, counted = fold.quiet(key)
            chats.append(
                (
                    desired.org, desired.event_id, str(fold.chats[key].aggregate_id), desired.generation,
                    int(desired.deleted), int(desired.awaiting_organisation), _stamp(desired.read_only_at),
                    _stamp(desired.delete_at), _stamp(desired.next_due), json.dumps(desired.members),
                    json.dumps(desired.moderators), desired.title, _stamp(desired.start), _chat_json(fold.chats[key]),
                    _stamp(quiet_until), json.dumps(sorted(counted.persons)), counted.responsible,
                )
            )  # fmt: skip
        return [(_WRITE_FEATURE, features), (_WRITE_PERSON, persons), (_WRITE_CHAT, chats),
                (_WRITE_INDEX, list(changes.index_entries))]  # fmt: skip

    @staticmethod
    def _members(fold: DesiredStateFold, changes: Changes) -> list[tuple[str, str, str, str]]:
        """(members, moderators, org, event_id) of the rows that change in their members only: the rest of each
        row stays as written."""
        rows = []
        for (org, event_id), counted in changes.members.items():
            members, moderators = fold.membership(org, counted)
            rows.append((json.dumps(members), json.dumps(moderators), org, event_id))
        return rows

    def desired_chats(self) -> list[DesiredChat]:
        """Every chat's row. Read a chunk at a time, with one object for each person id and each deadline however
        many chats share it: the reconciler holds all rows, and a large installation has many."""
        shared: dict[Any, Any] = {}

        def one(value: Any) -> Any:
            return shared.setdefault(value, value)

        def persons(text: str) -> list[str]:
            return [one(person) for person in json.loads(text)]

        def moment(text: str | None) -> datetime | None:
            return None if text is None else one(_unstamp(text))

        chats: list[DesiredChat] = []
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT org, event_id, generation, deleted, awaiting_organisation, read_only_at, delete_at, "
                "next_due, members, moderators, title, starts_at FROM desired_state ORDER BY org, event_id"
            )
            cursor = getattr(c, "sqlite_cursor", c)  # the library's SQLite wrapper has no fetchmany; its cursor has
            while rows := cursor.fetchmany(5000):
                chats.extend(
                    DesiredChat(
                        org=one(row["org"]),
                        event_id=row["event_id"],
                        generation=row["generation"],
                        deleted=bool(row["deleted"]),
                        awaiting_organisation=bool(row["awaiting_organisation"]),
                        read_only_at=moment(row["read_only_at"]),  # type: ignore[arg-type]
                        delete_at=moment(row["delete_at"]),  # type: ignore[arg-type]
                        next_due=moment(row["next_due"]),
                        members=persons(row["members"]),
                        moderators=persons(row["moderators"]),
                        title=row["title"],
                        start=moment(row["starts_at"]),
                    )
                    for row in rows
                )
        return chats

    def chats_of_person(self, org: str, pseudonym: str) -> list[str]:
        """The person index: every event whose chat named the person (known by their pseudonym)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                self._sql("SELECT event_id FROM person_chats WHERE org = ? AND person_id = ? ORDER BY event_id"),
                (org, pseudonym),
            )
            return [row["event_id"] for row in c.fetchall()]


class SQLiteDesiredStateView(_DesiredStateTables, SQLiteTrackingRecorder):  # type: ignore[misc]
    """The projection's tables and tracking row, in the event store's SQLite database."""

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.CREATE_STATEMENTS]


class PostgresDesiredStateView(_DesiredStateTables, PostgresTrackingRecorder):  # type: ignore[misc]
    """The projection's tables and tracking row, in the event store's PostgreSQL database."""

    placeholder = "%s"

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any):
        super().__init__(datastore, **kwargs)
        self.tracking_table = self.tracking_table_name
        self.sql_create_statements.extend(Composed([SQL(statement)]) for statement in self.CREATE_STATEMENTS)


DesiredStateView = SQLiteDesiredStateView | PostgresDesiredStateView


class DesiredStateProjection:
    """Follows the application's notification log into its view (`SQLiteDesiredStateView` or the PostgreSQL one).

    Catching up folds a page of the log at a time with a fold that loads just the rows the page touches, and
    writes the changed rows with the new position in one transaction at the end (sooner when the rows held pass
    `keep_rows`), so a chat touched on many pages is written once. The rows loaded stay for the next page and
    the next catch-up (a live stream touches the same chats again), up to `keep_rows`, then are forgotten: memory
    is bounded whatever the size of the store. When another process moved the projection on, what this one holds
    is dropped. A rebuild folds the whole log in memory and writes every row at the end.
    """

    def __init__(
        self,
        app: IntakeApplication,
        view: DesiredStateView,
        policy: Policy,
        page_size: int = 5000,
        keep_rows: int = 20000,
        exclusive: Callable[[], AbstractContextManager[None]] = nullcontext,
    ):
        self.app = app
        self.view = view
        self.policy = policy
        self.page_size = page_size
        self.keep_rows = keep_rows
        self.exclusive = exclusive
        self._kept: DesiredStateFold | None = None
        self._kept_at = 0  # the position the kept rows were written at

    def position(self) -> int:
        return self.view.max_tracking_id(PROJECTION_NAME) or 0

    def _fold(self, rows: RowSource | None) -> DesiredStateFold:
        return DesiredStateFold(
            pseudonym=self.app.persons.pseudonym,
            open_name=self.app.persons.open,
            keys_epoch=self.app.persons.epoch,
            policy=self.policy,
            rows=rows,
        )

    def catch_up(self, progress: Progress | None = None) -> int:
        """Fold every notification not yet folded; returns how many. Rebuilds if the policy changed.

        One process folds at a time (`exclusive`: an advisory lock on PostgreSQL, a file lock on SQLite). Replicas,
        `state` and `replay` fold the same log; one that loaded a row another had just written — with facts it was
        about to fold again, or a person's name token older than the row's — would write a row no single fold makes.
        Held, the lock makes the position read and every row loaded after it belong to one state of the tables.
        """
        with self.exclusive():
            if self.view.stored_policy() not in (None, _policy_text(self.policy)):
                return self._rebuild(progress)  # stored deadlines were computed under another FULL_USE / VIEW
            target = self.app.recorder.max_notification_id() or 0
            for _attempt in range(10):
                try:
                    return self._catch_up(progress)
                except IntegrityError:  # a process without the lock (an older release) folded first
                    self._kept = None
                    if self.position() >= target:
                        return 0  # it folded all this process was asked to
            raise IntegrityError("the desired-state projection kept moving under this process; try again")

    def _catch_up(self, progress: Progress | None) -> int:
        start = position = self.position()
        last = self.app.recorder.max_notification_id() or 0
        if start == 0 and last > 10 * self.page_size:
            # nothing folded yet and a backlog: folded in memory and written once is several times faster (a crash
            # before the end starts it again, losing no fact)
            return self._rebuild(progress)
        fold = self._kept if self._kept is not None and self._kept_at == start else self._fold(self.view)
        self._kept = None
        for position in fold_pages(self.app, fold, start, last, self.page_size):
            # written at the end, or sooner when the rows held pass `keep_rows`: a chat touched on several pages
            # is walked and written once (a stop before the write loses no fact: the pages are folded again)
            if position >= last or len(fold.chats) + len(fold.persons) > self.keep_rows:
                self._preload_keys(fold)
                self.view.write(fold, Tracking(PROJECTION_NAME, position))
                if len(fold.chats) + len(fold.persons) > self.keep_rows:
                    fold.forget_loaded()
            if progress:
                progress(position - start, last - start)
        self._kept, self._kept_at = fold, position
        return position - start

    def _preload_keys(self, fold: DesiredStateFold) -> None:
        """The persons the rows about to be written name, and their keys: a few queries, not one each."""
        fold.load_named()
        self.app.persons.preload(p for (_, p), record in fold.persons.items() if record.name)

    def rebuild(self, progress: Progress | None = None) -> int:
        """Refold the whole log into empty tables (replay after a bug fix or a policy change)."""
        with self.exclusive():
            return self._rebuild(progress)

    def _rebuild(self, progress: Progress | None) -> int:
        self._kept = None
        fold = self._fold(None)
        last = self.app.recorder.max_notification_id() or 0
        position = 0
        for position in fold_pages(self.app, fold, 0, last, self.page_size):
            if progress:
                progress(position, last)
        # all rows at once at the end, so readers never see a half-built projection
        self._preload_keys(fold)
        self.view.write(fold, Tracking(PROJECTION_NAME, position) if position else None, replace_all=True)
        return position


@dataclass
class Store:
    """The persistent installation: the application and its desired-state projection, on one database."""

    app: IntakeApplication
    projection: DesiredStateProjection
    # rewrites the database so that deleted and overwritten rows leave no bytes behind (after an erasure)
    compact: Callable[[], None] = lambda: None
    # opens the same store again in another process (a picklable callable; None when it lives only in this one):
    # the worker folds the projection there, beside its intake
    reopen: Callable[[], Store] | None = None
    # this process's commits leave the database's checkpoints to another process writing it (the fold process,
    # which commits often): on SQLite, where a checkpoint is part of the commit that passes the WAL's bound
    leave_checkpoints: Callable[[], None] = lambda: None

    def close(self) -> None:
        self.app.close()


def fold_pages(app: IntakeApplication, fold: DesiredStateFold, start: int, last: int, page_size: int) -> Iterator[int]:
    """Fold the notifications after `start` up to `last`, a page at a time; yields the position after each page.

    Events are read from their stored form (`StoredFacts`), not through the application's mapper: persons stay
    sealed (the fold needs only their pseudonyms), and events the fold does not need are not decoded at all.
    """
    facts = StoredFacts(app)
    position = start
    while position < last:
        notifications = app.recorder.select_notifications(
            start=position, limit=page_size, stop=last, inclusive_of_start=False
        )
        calls = facts.decode(notifications)
        fold.prefetch(facts.originators, facts.persons)
        # the chats of every person whose status facts the page holds: walked again, loaded in a few queries
        fold.prefetch_indexes(
            {fold.person_keys[i] for i in facts.person_originators if i in fold.person_keys} | facts.registered
        )
        for method, args in calls:
            method(fold, *args)
        position = notifications[-1].id if notifications else last  # none left before `last`: a gap in the ids
        yield position


def fold_log(app: IntakeApplication, fold: DesiredStateFold, page_size: int = 5000) -> None:
    """Fold the application's whole log (the in-memory path of `simulate`)."""
    for _ in fold_pages(app, fold, 0, app.recorder.max_notification_id() or 0, page_size):
        pass


class StoredFacts:
    """Stored events → calls of the fold's methods, straight from the stored JSON.

    The library's mapper would build a domain object per event, open every sealed person with its key and decode
    fields the fold never reads; the fold needs a few fields and the persons' pseudonyms, which the sealed tokens
    carry in the clear. `Person.Forgotten` alone still goes through the mapper: decoding it destroys the key again
    if a crash came between the fact and the key's destruction.
    """

    def __init__(self, app: IntakeApplication):
        self.app = app
        self.originators: set[UUID] = set()
        self.persons: set[str] = set()  # pseudonyms of the persons the page names
        self.person_originators: set[UUID] = set()  # persons with facts of their own in the page
        self.registered: set[PersonKey] = set()  # persons registered in the page

    def decode(self, notifications: Iterable[Any]) -> list[tuple[Callable[..., None], list[Any]]]:
        self.originators, self.persons = set(), set()
        self.person_originators, self.registered = set(), set()
        mapper = self.app.mapper
        calls = []
        for notification in notifications:
            topic = notification.topic
            name = topic[topic.rfind(":") + 1 :]
            folded = FOLDED_BY_NAME.get(name)
            if folded is None:
                if name in NOT_FOLDED_NAMES:
                    continue
                raise unknown_event(name)
            method, names = folded
            originator = notification.originator_id
            originator = originator if isinstance(originator, UUID) else UUID(str(originator))
            self.originators.add(originator)
            if name == "Person.Forgotten":
                fields = mapper.to_domain_event(notification).__dict__
            else:
                state = notification.state
                if mapper.cipher:
                    state = mapper.cipher.decrypt(state)
                if mapper.compressor:
                    state = mapper.compressor.decompress(state)
                fields = json.loads(state)
                for token in _tokens(fields):
                    if token.startswith("enc"):
                        self.persons.add(token_parts(token)[0])
            if name.startswith("Person."):
                self.person_originators.add(originator)
                if name == "Person.Registered":
                    self.registered.add((fields["org"], fields["pseudonym"]))
            calls.append((method, [originator, notification.id, *[_value(fields[field]) for field in names]]))
        return calls


def _tokens(fields: dict[str, Any]) -> Iterator[str]:
    for name in ("responsible", "person_id"):
        value = fields.get(name)
        if isinstance(value, str):
            yield value
    staff = fields.get("staff")
    if staff:
        yield from staff


def _value(value: Any) -> Any:
    """A field as the fold takes it: datetimes come as the library's transcoder stores them,
    `{"_type_": "datetime_iso", "_data_": "…"}` (a decoded event already holds a datetime)."""
    if type(value) is dict and value.get("_type_") == "datetime_iso":
        return datetime.fromisoformat(value["_data_"])
    return value
