"""The store's schema version: which layout of chatbridge's tables a store has, and the migrations between layouts.

A store records its version in a table of its own (`chatbridge_schema_version`, one row per version it reached,
with when). A store without that table was made by a release before versions were recorded: it is version 1, or
nothing at all when none of chatbridge's tables is there yet (a new store, stamped with this release's version).

Each migration brings a store from the version before it to its `version`, written as one function
`(cursor, placeholder) -> None` for both stores; they run in order in one transaction, so a store is at one
version or the next, never between. Every migration is idempotent: a store the previous release already brought
part of the way (its ad hoc column additions on open) takes it as a no-op.

`check_schema` is the gate a process passes before it uses a store: the same version goes on; an older store is
migrated when allowed (`chatbridge migrate`, or `CHATBRIDGE_MIGRATE_ON_START`), else refused; a newer store is
always refused, since an older release must not write a layout it does not know.

What is not here: the event log's own rows are never rewritten (old events are upcast on read, see
`domain.aggregates`), and the desired-state projection keeps its own fold version and refolds itself
(`projections.store`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from chatbridge.domain.moments import stamp, stamp_now
from chatbridge.journal.sql import add_missing_columns, table_exists
from chatbridge.settings import Settings

VERSION_TABLE = "chatbridge_schema_version"
_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, description TEXT NOT NULL)"
)
# Any of these there without the version table: a store of a release before versions were recorded.
_KEYS, _KEY_VERSIONS = "chatbridge_person_keys", "chatbridge_person_key_versions"
_UNVERSIONED_TABLES = ("chatbridge_events", "chatbridge_intake", "audit_checkpoints", _KEYS)
UNVERSIONED = 1  # what a store without the version table is
_LOCK = 0x63686177  # the PostgreSQL advisory lock a migration holds for its transaction (not bootstrap's schema lock)


class SchemaVersionError(Exception):
    """The store's schema version is not this release's and will not be changed here: one line saying what to do."""

    def __init__(self, stored: int, needed: int, line: str):
        super().__init__(line)
        self.stored = stored
        self.needed = needed


Step = Callable[[Any, str], None]


@dataclass(frozen=True)
class Migration:
    version: int  # the version a store is at once this migration (and those before it) ran
    description: str  # one line, for `chatbridge migrate`
    apply: Step


# A migration's SQL is written out here, not taken from the tables' current definitions: what it does to a store
# must not change when a later release changes them.


def _checkpoints_chain(c: Any, placeholder: str) -> None:
    if table_exists(c, placeholder, "audit_checkpoints"):
        columns = (("audit_checkpoints", "records", "BIGINT"), ("audit_checkpoints", "previous", "TEXT"))
        add_missing_columns(c, placeholder, columns)


def _erasure_horizons(c: Any, placeholder: str) -> None:
    if table_exists(c, placeholder, _KEYS):
        add_missing_columns(c, placeholder, ((_KEYS, "erased_until", "TEXT"), (_KEYS, "named_until", "TEXT")))


def _key_versions(c: Any, placeholder: str) -> None:
    """One key per person, kept in the key table (a destroyed one a tombstone), becomes key version 1."""
    if not table_exists(c, placeholder, _KEYS):
        return
    keys, versions = _KEYS, _KEY_VERSIONS
    c.execute(
        f"CREATE TABLE IF NOT EXISTS {versions} ("
        "pseudonym TEXT NOT NULL, version INTEGER NOT NULL, person_key TEXT, created_at TEXT NOT NULL, "
        "destroyed_at TEXT, PRIMARY KEY (pseudonym, version))"
    )
    c.execute(
        f"INSERT INTO {versions} (pseudonym, version, person_key, created_at) "
        f"SELECT pseudonym, 1, person_key, created_at FROM {keys} WHERE person_key IS NOT NULL "
        "ON CONFLICT (pseudonym, version) DO NOTHING"
    )
    c.execute(f"UPDATE {keys} SET person_key = NULL WHERE person_key IS NOT NULL")
    # a tombstone of then does not say whether HiOrg-Server or an operator erased: for ever
    c.execute(
        f"INSERT INTO {versions} (pseudonym, version, person_key, created_at, destroyed_at) "
        f"SELECT pseudonym, 1, NULL, created_at, forgotten_at FROM {keys} "
        "WHERE erased_until IS NULL AND forgotten_at IS NOT NULL ON CONFLICT (pseudonym, version) DO NOTHING"
    )
    c.execute(
        f"UPDATE {keys} SET erased_until = {placeholder} WHERE erased_until IS NULL AND forgotten_at IS NOT NULL",
        (stamp(datetime.max.replace(tzinfo=UTC)),),  # sealing.FOREVER
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2, "audit_checkpoints gains records and previous (each checkpoint chains to the one before)", _checkpoints_chain
    ),
    Migration(2, f"{_KEYS} gains erased_until and named_until (erasure horizons)", _erasure_horizons),
    Migration(2, f"each person's single key becomes key version 1 in {_KEY_VERSIONS}", _key_versions),
)
CURRENT = max(migration.version for migration in MIGRATIONS)


def pending(stored: int) -> list[Migration]:
    """The migrations a store at version `stored` still needs, in order."""
    return [migration for migration in MIGRATIONS if migration.version > stored]


def placeholder_of(settings: Settings) -> str:
    return "%s" if settings.store == "postgres" else "?"


@contextmanager
def _transaction(source: Any, *, write: bool) -> Iterator[Any]:
    """A transaction on an eventsourcing datastore, an `sqlite3` or a `psycopg` connection; rows by column name."""
    if isinstance(source, SQLiteDatastore | PostgresDatastore):
        with source.transaction(commit=write) as c:
            yield c
    elif isinstance(source, sqlite3.Connection):
        cursor = source.cursor()
        cursor.row_factory = sqlite3.Row
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")  # a writer waits for the lock before it reads
        try:
            yield cursor
        except BaseException:
            source.rollback()
            raise
        else:
            source.commit() if write else source.rollback()
        finally:
            cursor.close()
    else:  # psycopg
        from psycopg.rows import dict_row

        with source.transaction(force_rollback=not write), source.cursor(row_factory=dict_row) as c:
            yield c


def _read_version(c: Any, placeholder: str) -> int | None:
    """The store's version; None: no chatbridge store there yet."""
    if table_exists(c, placeholder, VERSION_TABLE):
        c.execute(f"SELECT MAX(version) AS version FROM {VERSION_TABLE}")
        row = c.fetchone()
        if row is not None and row["version"] is not None:
            return int(row["version"])
    if any(table_exists(c, placeholder, table) for table in _UNVERSIONED_TABLES):
        return UNVERSIONED
    return None


def stored_version(source: Any, placeholder: str) -> int | None:
    """The schema version of the store behind `source` (1: made before versions were recorded; None: no store)."""
    with _transaction(source, write=False) as c:
        return _read_version(c, placeholder)


def _record(c: Any, placeholder: str, version: int, description: str) -> None:
    c.execute(
        f"INSERT INTO {VERSION_TABLE} (version, applied_at, description) "
        f"VALUES ({placeholder}, {placeholder}, {placeholder}) ON CONFLICT (version) DO NOTHING",
        (version, stamp_now(), description),
    )


def migrate(source: Any, placeholder: str) -> tuple[int | None, list[Migration]]:
    """Bring the store to this release's version in one transaction: (the version it was at, what ran). A store
    not there yet is stamped with this release's version; a newer one raises `SchemaVersionError`."""
    with _transaction(source, write=True) as c:
        if placeholder != "?":
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))  # one migrator at a time; SQLite: BEGIN IMMEDIATE
        stored = _read_version(c, placeholder)  # again, under the lock: another process may have migrated meanwhile
        if stored is not None and stored > CURRENT:
            raise newer_store(stored)
        c.execute(_CREATE)
        if stored is None:
            _record(c, placeholder, CURRENT, "created at this version")
            return None, []
        if stored == CURRENT:
            return stored, []
        if stored == UNVERSIONED:
            _record(c, placeholder, UNVERSIONED, "made before schema versions were recorded")
        ran = pending(stored)
        for migration in ran:
            migration.apply(c, placeholder)
        for version in sorted({migration.version for migration in ran}):
            descriptions = [migration.description for migration in ran if migration.version == version]
            _record(c, placeholder, version, "; ".join(descriptions))
        return stored, ran


def newer_store(stored: int) -> SchemaVersionError:
    """The refusal of a store a newer release wrote."""
    return SchemaVersionError(
        stored,
        CURRENT,
        f"the store is at schema {stored}, newer than this release's {CURRENT}: a newer release wrote it, and an "
        "older one must not write it (run that release or a later one)",
    )


def check_schema(source: Any, placeholder: str, *, migrate: bool) -> Sequence[Migration]:
    """The gate before a store is used: raises `SchemaVersionError` unless the store is at this release's version
    or (with `migrate`) was brought to it. A store not there yet is stamped with this release's version. Returns
    the migrations that ran."""
    stored = stored_version(source, placeholder)
    if stored == CURRENT:
        return []
    if stored is not None and stored > CURRENT:
        raise newer_store(stored)
    if stored is not None and not migrate:
        raise SchemaVersionError(
            stored,
            CURRENT,
            f"the store is at schema {stored}, this release needs {CURRENT}: run `chatbridge migrate` "
            "(or start with CHATBRIDGE_MIGRATE_ON_START=true)",
        )
    return _migrate(source, placeholder)[1]


_migrate = migrate  # `check_schema`'s keyword shadows the function's name
