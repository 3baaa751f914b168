"""The persistent desired-state projection: tables beside the event store, following the notification log.

`DesiredStateProjection.catch_up` reads the notifications after its tracking position, folds them with
`DesiredStateFold`, and writes the changed rows together with the new tracking position in one transaction — so
a crash loses nothing and a restart resumes where it stopped. `rebuild` folds the whole log into an empty fold
and replaces every row; by construction it gives the rows the live projection has.

Tables (the same on SQLite and PostgreSQL, in the event store's database):
    desired_state   one row per chat: generation, deadlines, next_due, members, moderators, and the chat's facts
    organisation_feature (feature switches), person_status (by pseudonym: status facts and erasures),
    person_chats (the person index, by pseudonym), desired_state_meta (policy and fold version in force)

The facts are kept in the rows because order is event time: a fact arriving late is inserted among them and the
chat is walked again. A meta row names the fold's version: rows written by another version are rebuilt from the
log rather than read (the projection is derived; the log is the truth).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL, Composed

from chatbridge.application import ChatBridge
from chatbridge.domain.lifecycle import Policy
from chatbridge.persistence import insert_rows
from chatbridge.projections.desired_state import (
    UPSERT,
    Changes,
    ChatFact,
    ChatRecord,
    DesiredChat,
    DesiredStateFold,
    PersonRecord,
    Switch,
)

PROJECTION_NAME = "desired_state"
FOLD_VERSION = "2"  # facts in event time; persons by pseudonym
Progress = Callable[[int, int], None]  # (notifications folded so far, notifications to fold in all)


def _chat_json(record: ChatRecord) -> str:
    facts = []
    for fact in record.facts:
        row = [fact[0].isoformat(), *fact[1:]]
        if fact[2] == UPSERT:
            row[3] = fact[3].isoformat()
        facts.append(row)
    return json.dumps({"id": str(record.aggregate_id), "facts": facts})


def _chat_from_json(text: str) -> ChatRecord:
    state = json.loads(text)
    facts: list[ChatFact] = []
    for row in state["facts"]:
        row[0] = datetime.fromisoformat(row[0])
        if row[2] == UPSERT:
            row[3] = datetime.fromisoformat(row[3])
        facts.append(tuple(row))
    return ChatRecord(UUID(state["id"]), facts)


def _switches_json(switches: list[Switch]) -> str:
    return json.dumps([[at.isoformat(), seq, on] for at, seq, on in switches])


def _switches_from_json(text: str) -> list[Switch]:
    return [(datetime.fromisoformat(at), seq, on) for at, seq, on in json.loads(text)]


def _person_json(record: PersonRecord) -> str:
    return json.dumps(
        {
            "statuses": [[at.isoformat(), seq, status] for at, seq, status in record.statuses],
            "erasures": [[at.isoformat(), seq] for at, seq in record.erasures],
        }
    )


def _person_from_json(text: str) -> PersonRecord:
    state = json.loads(text)
    return PersonRecord(
        [(datetime.fromisoformat(at), seq, status) for at, seq, status in state["statuses"]],
        [(datetime.fromisoformat(at), seq) for at, seq in state["erasures"]],
    )


def _stamp(moment: datetime | None) -> str | None:
    # one fixed format, so that SQL comparisons of deadlines (next_due <= now) are correct as text
    if moment is None:
        return None
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # isoformat pads the year to four digits, strftime may not: keep the one format
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # strftime's result, 5× faster


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
    "org", "event_id", "generation", "deleted", "awaiting_organisation", "read_only_at", "delete_at", "next_due",
    "members", "moderators", "fold_state",
)  # fmt: skip
_WRITE_FEATURE = _upsert("organisation_feature", ("org", "fold_state"), ("org",))
_WRITE_PERSON = _upsert("person_status", ("org", "person_id", "status", "fold_state"), ("org", "person_id"))
_WRITE_CHAT = _upsert("desired_state", _DESIRED_COLUMNS, ("org", "event_id"))
_WRITE_META = _upsert("desired_state_meta", ("key", "value"), ("key",))
_WRITE_INDEX = "INSERT INTO person_chats (org, person_id, event_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"


PROJECTION_TABLES = ("desired_state", "organisation_feature", "person_status", "person_chats")


class _DesiredStateTables:
    """The projection's tables and queries, written once for SQLite and PostgreSQL.

    Statements use `?` placeholders (psycopg takes `%s`) and rows are read by column name, which both drivers'
    row types allow. The tracking row is the library's own (`_insert_tracking`), in the same transaction.
    """

    placeholder = "?"
    tracking_table = "tracking"
    datastore: Any

    if TYPE_CHECKING:  # provided by the library's recorder this is mixed into; a stub here would shadow it

        def _insert_tracking(self, c: Any, tracking: Tracking) -> None: ...
        def _max_tracking_id(self, application_name: str, c: Any) -> int | None: ...

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    CREATE_STATEMENTS = (
        "CREATE TABLE IF NOT EXISTS desired_state ("
        "org TEXT NOT NULL, event_id TEXT NOT NULL, generation INTEGER NOT NULL, deleted INTEGER NOT NULL, "
        "awaiting_organisation INTEGER NOT NULL, read_only_at TEXT NOT NULL, delete_at TEXT NOT NULL, "
        "next_due TEXT, members TEXT NOT NULL, moderators TEXT NOT NULL, fold_state TEXT NOT NULL, "
        "PRIMARY KEY (org, event_id))",
        "CREATE INDEX IF NOT EXISTS desired_state_next_due ON desired_state (next_due)",
        "CREATE TABLE IF NOT EXISTS organisation_feature (org TEXT PRIMARY KEY, fold_state TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS person_status ("
        "org TEXT NOT NULL, person_id TEXT NOT NULL, status TEXT NOT NULL, fold_state TEXT NOT NULL, "
        "PRIMARY KEY (org, person_id))",
        "CREATE TABLE IF NOT EXISTS person_chats ("
        "org TEXT NOT NULL, person_id TEXT NOT NULL, event_id TEXT NOT NULL, "
        "PRIMARY KEY (org, person_id, event_id))",
        "CREATE TABLE IF NOT EXISTS desired_state_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )

    def stored_policy(self) -> str | None:
        return self._meta("policy")

    def stored_fold_version(self) -> str | None:
        return self._meta("fold_version")

    def _meta(self, key: str) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self._sql("SELECT value FROM desired_state_meta WHERE key = ?"), (key,))
            row = c.fetchone()
        return None if row is None else str(row["value"])

    def is_empty(self) -> bool:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT 1 FROM desired_state LIMIT 1")
            return c.fetchone() is None and self._max_tracking_id(PROJECTION_NAME, c) is None

    def load_fold(
        self, policy: Policy, pseudonym: Callable[[str, str], str] | None = None
    ) -> tuple[DesiredStateFold, int]:
        """The stored state as a fold, with the position it was folded to (read in the same transaction)."""
        fold = DesiredStateFold(policy=policy, pseudonym=pseudonym)
        with self.datastore.transaction(commit=False) as c:
            position = self._max_tracking_id(PROJECTION_NAME, c) or 0
            c.execute("SELECT org, fold_state FROM organisation_feature")
            for row in c.fetchall():
                fold.load_organisation(row["org"], _switches_from_json(row["fold_state"]))
            c.execute("SELECT org, person_id, fold_state FROM person_status")
            for row in c.fetchall():
                fold.load_person((row["org"], row["person_id"]), _person_from_json(row["fold_state"]))
            c.execute("SELECT org, person_id, event_id FROM person_chats")
            for row in c.fetchall():
                fold.load_index_entry(row["org"], row["person_id"], row["event_id"])
            c.execute("SELECT org, event_id, fold_state FROM desired_state")
            for row in c.fetchall():
                fold.load_chat((row["org"], row["event_id"]), _chat_from_json(row["fold_state"]))
        return fold, position

    def write(self, fold: DesiredStateFold, tracking: Tracking | None, *, replace_all: bool = False) -> None:
        """Write what changed in `fold` (or everything) and the tracking position, in one transaction.

        A tracking position that does not move forward raises the library's `IntegrityError` and nothing is
        written: another process folded those notifications first.
        """
        with self.datastore.transaction(commit=True) as c:
            if replace_all:
                for table in PROJECTION_TABLES:  # rows of another fold version may have another shape
                    c.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in self.CREATE_STATEMENTS:
                    c.execute(statement)
                c.execute(
                    self._sql(f"DELETE FROM {self.tracking_table} WHERE application_name = ?"), (PROJECTION_NAME,)
                )
                changes = fold.everything()
            else:
                changes = fold.take_dirty()
            if tracking is not None:
                self._insert_tracking(c, tracking)
            self._write_rows(c, fold, changes)
            c.execute(self._sql(_WRITE_META), ("policy", _policy_text(fold.policy)))
            c.execute(self._sql(_WRITE_META), ("fold_version", FOLD_VERSION))

    def _write_rows(self, c: Any, fold: DesiredStateFold, changes: Changes) -> None:
        features = [(org, _switches_json(fold.organisations[org])) for org in changes.organisations]
        persons = []
        for key in changes.persons:
            record = fold.persons[key]
            persons.append((key[0], key[1], record.status() or "", _person_json(record)))
        chats = []
        for key in changes.chats:
            desired = fold.desired(key)
            chats.append(
                (
                    desired.org, desired.event_id, desired.generation, int(desired.deleted),
                    int(desired.awaiting_organisation), _stamp(desired.read_only_at), _stamp(desired.delete_at),
                    _stamp(desired.next_due), json.dumps(desired.members), json.dumps(desired.moderators),
                    _chat_json(fold.chats[key]),
                )
            )  # fmt: skip
        for statement, rows in (
            (_WRITE_FEATURE, features),
            (_WRITE_PERSON, persons),
            (_WRITE_CHAT, chats),
            (_WRITE_INDEX, changes.index_entries),
        ):
            insert_rows(c, statement, rows, self.placeholder)

    def desired_chats(self) -> list[DesiredChat]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT org, event_id, generation, deleted, awaiting_organisation, read_only_at, delete_at, "
                "next_due, members, moderators FROM desired_state ORDER BY org, event_id"
            )
            return [
                DesiredChat(
                    org=row["org"],
                    event_id=row["event_id"],
                    generation=row["generation"],
                    deleted=bool(row["deleted"]),
                    awaiting_organisation=bool(row["awaiting_organisation"]),
                    read_only_at=_unstamp(row["read_only_at"]),  # type: ignore[arg-type]
                    delete_at=_unstamp(row["delete_at"]),  # type: ignore[arg-type]
                    next_due=_unstamp(row["next_due"]),
                    members=json.loads(row["members"]),
                    moderators=json.loads(row["moderators"]),
                )
                for row in c.fetchall()
            ]

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
    """Follows the application's notification log into its view (`SQLiteDesiredStateView` or the PostgreSQL one)."""

    # Each page is folded, then its changed rows are written with the position: a chat touched on many pages is
    # written many times, so pages are large (a worker's fold a second is about one page).
    def __init__(self, app: ChatBridge, view: DesiredStateView, policy: Policy, page_size: int = 5000):
        self.app = app
        self.view = view
        self.policy = policy
        self.page_size = page_size
        self._fold: DesiredStateFold | None = None
        self._folded_to = 0  # the notification the in-memory fold has reached

    def position(self) -> int:
        return self.view.max_tracking_id(PROJECTION_NAME) or 0

    def catch_up(self, progress: Progress | None = None) -> int:
        """Fold every notification not yet folded; returns how many. Rebuilds if the policy changed."""
        if self.view.stored_policy() not in (None, _policy_text(self.policy)):
            return self.rebuild(progress)  # stored deadlines were computed under another FULL_USE / VIEW
        written_before = self.view.stored_policy() is not None or not self.view.is_empty()
        if self.view.stored_fold_version() != FOLD_VERSION and written_before:
            return self.rebuild(progress)  # rows of an earlier version of the fold: derive them again
        for _attempt in range(3):
            if self._fold is None or self.position() != self._folded_to:
                # first use, or another process (a replica, `replay`) moved the stored projection on
                self._fold, self._folded_to = self.view.load_fold(self.policy, self.app.persons.pseudonym)
            try:
                return self._fold_from(self._fold, self._folded_to, progress, replace_all=False)
            except IntegrityError:
                self._fold = None  # another process stored the same notifications first: start from its rows
        raise IntegrityError("the desired-state projection kept moving under this process; try again")

    def rebuild(self, progress: Progress | None = None) -> int:
        """Refold the whole log into empty tables (replay after a bug fix or a policy change)."""
        self._fold, self._folded_to = DesiredStateFold(policy=self.policy, pseudonym=self.app.persons.pseudonym), 0
        return self._fold_from(self._fold, 0, progress, replace_all=True)

    def _fold_from(self, fold: DesiredStateFold, start: int, progress: Progress | None, *, replace_all: bool) -> int:
        last = self.app.recorder.max_notification_id() or 0
        total, position = max(last - start, 0), start
        for position in fold_pages(self.app, fold, start, last, self.page_size):
            if not replace_all:
                self.view.write(fold, Tracking(PROJECTION_NAME, position))
                self._folded_to = position
            if progress:
                progress(position - start, total)
        if replace_all:
            # a rebuild writes all rows at once at the end, so readers never see a half-built projection
            self.view.write(fold, Tracking(PROJECTION_NAME, position) if position else None, replace_all=True)
            self._folded_to = position
        return position - start


def fold_pages(app: ChatBridge, fold: DesiredStateFold, start: int, last: int, page_size: int) -> Iterator[int]:
    """Fold the notifications after `start` up to `last`, a page at a time; yields the position after each page."""
    position = start
    while position < last:
        notifications = app.recorder.select_notifications(
            start=position, limit=page_size, stop=last, inclusive_of_start=False
        )
        for notification in notifications:
            fold.apply(app.mapper.to_domain_event(notification), notification.id)
            position = notification.id
        if not notifications:
            position = last  # nothing left before `last` (a gap in the ids)
        yield position


def fold_log(app: ChatBridge, fold: DesiredStateFold, page_size: int = 1000) -> None:
    """Fold the application's whole log (the in-memory path of `simulate`)."""
    for _ in fold_pages(app, fold, 0, app.recorder.max_notification_id() or 0, page_size):
        pass
