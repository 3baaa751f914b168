"""Wiring, in one place: settings → event store, intake ledger, projection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chatbridge.application import ChatBridge
from chatbridge.audit import chain
from chatbridge.audit.settings import AuditKeys, AuditSettings, default_key_file, load_keys
from chatbridge.domain.lifecycle import Policy
from chatbridge.projections.store import DesiredStateProjection, PostgresDesiredStateView, SQLiteDesiredStateView
from chatbridge.settings import Settings

# Prefixed keys: the library lets the application's own prefix win over plain keys, so an unrelated
# CHATBRIDGE_PERSISTENCE_MODULE in the environment cannot send `simulate` to a database by accident.
_PREFIX = "CHATBRIDGE_"


def in_memory_app() -> ChatBridge:
    """The application on the library's in-memory store (`simulate`, unit tests)."""
    return ChatBridge(env={f"{_PREFIX}PERSISTENCE_MODULE": "eventsourcing.popo"})


@dataclass
class Store:
    """The persistent installation: the application and its desired-state projection, on one database."""

    app: ChatBridge
    projection: DesiredStateProjection

    def close(self) -> None:
        self.app.close()


def store_env(settings: Settings) -> dict[str, str]:
    """The eventsourcing library's settings for the configured store."""
    if settings.store == "postgres":
        return {
            # The library's table creation takes an ACCESS EXCLUSIVE lock on the tracking table, which deadlocks
            # against a running worker: create the schema only when it is not there yet.
            f"{_PREFIX}CREATE_TABLE": "n" if _postgres_schema_exists(settings) else "y",
            f"{_PREFIX}PERSISTENCE_MODULE": "eventsourcing.postgres",
            f"{_PREFIX}POSTGRES_HOST": settings.postgres_host,
            f"{_PREFIX}POSTGRES_PORT": str(settings.postgres_port),
            f"{_PREFIX}POSTGRES_DBNAME": settings.postgres_dbname,
            f"{_PREFIX}POSTGRES_USER": settings.postgres_user,
            f"{_PREFIX}POSTGRES_PASSWORD": settings.postgres_password.get_secret_value(),
        }
    settings.database.parent.mkdir(parents=True, exist_ok=True)
    return {
        f"{_PREFIX}PERSISTENCE_MODULE": "eventsourcing.sqlite",
        f"{_PREFIX}SQLITE_DBNAME": str(settings.database),
        f"{_PREFIX}SQLITE_LOCK_TIMEOUT": "30",  # several processes (replicas, `state`) may share the file
    }


def audit_keys(settings: Settings, *, create: bool = True) -> AuditKeys:
    """The audit's keys (`CHATBRIDGE_AUDIT_…`, or the key file, made on first use); raises `AuditKeyError`."""
    return load_keys(AuditSettings(), default_key_file(settings.store, settings.database), create=create)


def open_store(settings: Settings, policy: Policy | None = None, keys: AuditKeys | None = None) -> Store:
    keys = keys or audit_keys(settings)
    with _schema_lock(settings):
        app = ChatBridge(env=store_env(settings), keys=keys)
        view_class = PostgresDesiredStateView if settings.store == "postgres" else SQLiteDesiredStateView
        view = app.factory.tracking_recorder(view_class)  # type: ignore[arg-type]
        assert isinstance(view, view_class)
        view.ensure_current()  # rows of an earlier version of the projection are folded again
    return Store(app=app, projection=DesiredStateProjection(app, view, policy or settings.policy))


@contextmanager
def _schema_lock(settings: Settings) -> Iterator[None]:
    """Replicas opening a fresh PostgreSQL store at once would race to create the same tables (a unique-violation
    in the catalogue): one at a time, by an advisory lock held while the schema is looked at and made. SQLite
    serialises its own schema changes."""
    if settings.store != "postgres":
        yield
        return
    with _postgres_connection(settings) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


_SCHEMA_LOCK = 0x63686174  # "chat": the advisory lock id chatbridge takes while it makes its schema


# Every table chatbridge keeps in a PostgreSQL database (the library names its own after the application).
_ALL_TABLES = (
    "chatbridge_events", "chatbridge_tracking", "chatbridge_intake", "desired_state", "organisation_feature",
    "person_status", "person_chats", "desired_state_meta",
)  # fmt: skip


def _postgres_connection(settings: Settings) -> Any:
    import psycopg  # only the PostgreSQL store needs it

    return psycopg.connect(
        host=settings.postgres_host,
        port=settings.postgres_port,
        dbname=settings.postgres_dbname,
        user=settings.postgres_user,
        password=settings.postgres_password.get_secret_value(),
        autocommit=True,
    )


def _postgres_schema_exists(settings: Settings) -> bool:
    with _postgres_connection(settings) as connection:
        row = connection.execute(
            "SELECT " + ", ".join(f"to_regclass('{table}') IS NOT NULL" for table in _ALL_TABLES)
        ).fetchone()
    return all(row)


def wipe_store(settings: Settings) -> None:
    """Remove the event store and everything beside it, so that it can be rebuilt from Kafka."""
    if settings.store == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            settings.database.with_name(settings.database.name + suffix).unlink(missing_ok=True)
        return
    with _postgres_connection(settings) as connection:
        for table in (*_ALL_TABLES, *chain.TABLES):  # the key table stays: forgotten persons stay forgotten
            connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
