"""The persistent desired-state projection: tables beside the event store, following the notification log.

`DesiredStateProjection.catch_up` reads the notifications after its tracking position, folds them with
`DesiredStateFold`, and writes the changed rows together with the new tracking position in one transaction — so
a crash loses nothing and a restart resumes where it stopped. `rebuild` folds the whole log into an empty fold
and replaces every row; by construction it gives the rows the live projection has.

Tables (SQLite; PostgreSQL follows with the Kafka issue):
    desired_state   one row per chat: generation, deadlines, next_due, members, moderators, and the fold's state
    organisation_feature, person_status, person_chats (the person index), desired_state_meta (policy in force)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteCursor, SQLiteTrackingRecorder
from pydantic import TypeAdapter

from chatbridge.application import ChatBridge
from chatbridge.domain.lifecycle import OrganisationFeature, Policy
from chatbridge.projections.desired_state import Changes, ChatRecord, DesiredChat, DesiredStateFold

PROJECTION_NAME = "desired_state"
Progress = Callable[[int, int], None]  # (notifications folded so far, notifications to fold in all)

_chat_record = TypeAdapter(ChatRecord)
_feature = TypeAdapter(OrganisationFeature)


def _stamp(moment: datetime | None) -> str | None:
    # one fixed format, so that SQL comparisons of deadlines (next_due <= now) are correct as text
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unstamp(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _policy_text(policy: Policy) -> str:
    return json.dumps({"full_use": policy.full_use.total_seconds(), "view": policy.view.total_seconds()})


class SQLiteDesiredStateView(SQLiteTrackingRecorder):
    """The projection's tables and tracking row, in the event store's SQLite database."""

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS desired_state ("
            "org TEXT NOT NULL, event_id TEXT NOT NULL, generation INTEGER NOT NULL, deleted INTEGER NOT NULL, "
            "awaiting_organisation INTEGER NOT NULL, read_only_at TEXT NOT NULL, delete_at TEXT NOT NULL, "
            "next_due TEXT, members TEXT NOT NULL, moderators TEXT NOT NULL, fold_state TEXT NOT NULL, "
            "PRIMARY KEY (org, event_id))",
            "CREATE INDEX IF NOT EXISTS desired_state_next_due ON desired_state (next_due)",
            "CREATE TABLE IF NOT EXISTS organisation_feature (org TEXT PRIMARY KEY, fold_state TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS person_status ("
            "org TEXT NOT NULL, person_id TEXT NOT NULL, status TEXT NOT NULL, PRIMARY KEY (org, person_id))",
            "CREATE TABLE IF NOT EXISTS person_chats ("
            "org TEXT NOT NULL, person_id TEXT NOT NULL, event_id TEXT NOT NULL, "
            "PRIMARY KEY (org, person_id, event_id))",
            "CREATE TABLE IF NOT EXISTS desired_state_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]

    def stored_policy(self) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT value FROM desired_state_meta WHERE key = 'policy'")
            row = c.fetchone()
        return None if row is None else row[0]

    def load_fold(self, policy: Policy) -> DesiredStateFold:
        fold = DesiredStateFold(policy=policy)
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT org, fold_state FROM organisation_feature")
            for row in c.fetchall():
                fold.load_organisation(row[0], _feature.validate_json(row[1]))
            c.execute("SELECT org, person_id, status FROM person_status")
            for row in c.fetchall():
                fold.load_person((row[0], row[1]), row[2])
            c.execute("SELECT org, person_id, event_id FROM person_chats")
            for row in c.fetchall():
                fold.load_index_entry(row[0], row[1], row[2])
            c.execute("SELECT org, event_id, fold_state FROM desired_state")
            for row in c.fetchall():
                fold.load_chat((row[0], row[1]), _chat_record.validate_json(row[2]))
        return fold

    def write(self, fold: DesiredStateFold, tracking: Tracking | None, *, replace_all: bool = False) -> None:
        """Write what changed in `fold` (or everything) and the tracking position, in one transaction."""
        with self.datastore.transaction(commit=True) as c:
            if replace_all:
                for table in ("desired_state", "organisation_feature", "person_status", "person_chats"):
                    c.execute(f"DELETE FROM {table}")
                c.execute("DELETE FROM tracking WHERE application_name = ?", (PROJECTION_NAME,))
                changes = fold.everything()
            else:
                changes = fold.take_dirty()
            self._write_rows(c, fold, changes)
            c.execute(
                "INSERT OR REPLACE INTO desired_state_meta (key, value) VALUES ('policy', ?)",
                (_policy_text(fold.policy),),
            )
            if tracking is not None:
                self._insert_tracking(c, tracking)

    @staticmethod
    def _write_rows(c: SQLiteCursor, fold: DesiredStateFold, changes: Changes) -> None:
        c.executemany(
            "INSERT OR REPLACE INTO organisation_feature (org, fold_state) VALUES (?, ?)",
            [(org, _feature.dump_json(fold.organisations[org]).decode()) for org in changes.organisations],
        )
        c.executemany(
            "INSERT OR REPLACE INTO person_status (org, person_id, status) VALUES (?, ?, ?)",
            [(key[0], key[1], fold.person_statuses[key]) for key in changes.persons if key in fold.person_statuses],
        )
        rows = []
        for key in changes.chats:
            desired = fold.desired(key)
            rows.append(
                (
                    desired.org, desired.event_id, desired.generation, int(desired.deleted),
                    int(desired.awaiting_organisation), _stamp(desired.read_only_at), _stamp(desired.delete_at),
                    _stamp(desired.next_due), json.dumps(desired.members), json.dumps(desired.moderators),
                    _chat_record.dump_json(fold.chats[key]).decode(),
                )
            )  # fmt: skip
        c.executemany("INSERT OR REPLACE INTO desired_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        c.executemany(
            "INSERT OR IGNORE INTO person_chats (org, person_id, event_id) VALUES (?, ?, ?)", changes.index_entries
        )

    def desired_chats(self) -> list[DesiredChat]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT org, event_id, generation, deleted, awaiting_organisation, read_only_at, delete_at, "
                "next_due, members, moderators FROM desired_state ORDER BY org, event_id"
            )
            return [
                DesiredChat(
                    org=row[0],
                    event_id=row[1],
                    generation=row[2],
                    deleted=bool(row[3]),
                    awaiting_organisation=bool(row[4]),
                    read_only_at=_unstamp(row[5]),  # type: ignore[arg-type]
                    delete_at=_unstamp(row[6]),  # type: ignore[arg-type]
                    next_due=_unstamp(row[7]),
                    members=json.loads(row[8]),
                    moderators=json.loads(row[9]),
                )
                for row in c.fetchall()
            ]

    def chats_of_person(self, org: str, person_id: str) -> list[str]:
        """The person index: every event whose chat named the person."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT event_id FROM person_chats WHERE org = ? AND person_id = ? ORDER BY event_id", (org, person_id)
            )
            return [row[0] for row in c.fetchall()]


class DesiredStateProjection:
    """Follows the application's notification log into `SQLiteDesiredStateView`."""

    def __init__(self, app: ChatBridge, view: SQLiteDesiredStateView, policy: Policy, page_size: int = 1000):
        self.app = app
        self.view = view
        self.policy = policy
        self.page_size = page_size
        self._fold: DesiredStateFold | None = None

    def position(self) -> int:
        return self.view.max_tracking_id(PROJECTION_NAME) or 0

    def catch_up(self, progress: Progress | None = None) -> int:
        """Fold every notification not yet folded; returns how many. Rebuilds if the policy changed."""
        if self.view.stored_policy() not in (None, _policy_text(self.policy)):
            return self.rebuild(progress)  # stored deadlines were computed under another FULL_USE / VIEW
        if self._fold is None:
            self._fold = self.view.load_fold(self.policy)
        return self._fold_from(self._fold, self.position(), progress, replace_all=False)

    def rebuild(self, progress: Progress | None = None) -> int:
        """Refold the whole log into empty tables (replay after a bug fix or a policy change)."""
        self._fold = DesiredStateFold(policy=self.policy)
        return self._fold_from(self._fold, 0, progress, replace_all=True)

    def _fold_from(self, fold: DesiredStateFold, start: int, progress: Progress | None, *, replace_all: bool) -> int:
        last = self.app.recorder.max_notification_id() or 0
        total, position = max(last - start, 0), start
        for position in fold_pages(self.app, fold, start, last, self.page_size):
            if not replace_all:
                self.view.write(fold, Tracking(PROJECTION_NAME, position))
            if progress:
                progress(position - start, total)
        if replace_all:
            # a rebuild writes all rows at once at the end, so readers never see a half-built projection
            self.view.write(fold, Tracking(PROJECTION_NAME, position) if position else None, replace_all=True)
        return position - start


def fold_pages(app: ChatBridge, fold: DesiredStateFold, start: int, last: int, page_size: int) -> Iterator[int]:
    """Fold the notifications after `start` up to `last`, a page at a time; yields the position after each page."""
    position = start
    while position < last:
        notifications = app.recorder.select_notifications(
            start=position, limit=page_size, stop=last, inclusive_of_start=False
        )
        for notification in notifications:
            fold.apply(app.mapper.to_domain_event(notification))
            position = notification.id
        if not notifications:
            position = last  # nothing left before `last` (a gap in the ids)
        yield position


def fold_log(app: ChatBridge, fold: DesiredStateFold, page_size: int = 1000) -> None:
    """Fold the application's whole log (the in-memory path of `simulate`)."""
    for _ in fold_pages(app, fold, 0, app.recorder.max_notification_id() or 0, page_size):
        pass
