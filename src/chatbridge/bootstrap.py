"""The composition root: every part the commands and the worker run on is built here, from the settings.

The store (event store, intake ledger, audit chain, person keys, desired-state projection) with its audit keys, its
schema check, the places its signed checkpoints and its erasures are published; the chat backend and the worker's
reconciler parts (backend, reconciler options, status publisher, health probe); the Kafka producers; the locks that
let several processes share one store. Only the entry points (`cli`) import this module: every layer below takes
what it needs as arguments (`worker.run_worker` too).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore, SQLiteTransaction

from chatbridge.application import IntakeApplication
from chatbridge.backends.matrix import MatrixBackend
from chatbridge.backends.settings import MatrixSettings
from chatbridge.consumers.jsonl import FileMarks
from chatbridge.domain.lifecycle import Policy
from chatbridge.journal import chain, schema
from chatbridge.journal.chain import Sink
from chatbridge.journal.checkpoints import CheckpointFile, KafkaCheckpoints
from chatbridge.journal.erasures import ErasureLog, ErasureSettings
from chatbridge.journal.keys import (
    AuditKeyError,
    AuditKeys,
    AuditSettings,
    StoreKeys,
    default_key_file,
    load_keys,
)
from chatbridge.journal.sealing import KEY_TABLES
from chatbridge.journal.topics import kafka_producer
from chatbridge.observability import Check
from chatbridge.projections.store import (
    DesiredStateProjection,
    PostgresDesiredStateView,
    SQLiteDesiredStateView,
    Store,
)
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.reconciler.status import KafkaStatusPublisher, StatusReporter
from chatbridge.settings import Settings
from chatbridge.worker import ReconcilerParts

# Prefixed keys: the library lets the application's own prefix win over plain keys, so an unrelated
# CHATBRIDGE_PERSISTENCE_MODULE in the environment cannot send `simulate` to a database by accident.
_PREFIX = "CHATBRIDGE_"


def in_memory_app() -> IntakeApplication:
    """The application on the library's in-memory store (`simulate`, unit tests)."""
    return IntakeApplication(env={f"{_PREFIX}PERSISTENCE_MODULE": "eventsourcing.popo"})


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
    return {
        f"{_PREFIX}PERSISTENCE_MODULE": "eventsourcing.sqlite",
        f"{_PREFIX}SQLITE_DBNAME": str(settings.database),
        f"{_PREFIX}SQLITE_LOCK_TIMEOUT": "30",  # several processes (replicas, `state`) may share the file
    }


class StoreError(Exception):
    """The configured store cannot be used as asked: missing, not a store, read-only or unreachable. The message
    is one line naming the setting and what to do; it never holds a password."""


def audit_keys(settings: Settings, *, create: bool = True) -> AuditKeys:
    """The audit's keys (`CHATBRIDGE_AUDIT_…`, or the key file, made on first use); raises `AuditKeyError`."""
    return load_keys(AuditSettings(), default_key_file(settings.store, settings.database), create=create)


def open_store(
    settings: Settings,
    policy: Policy | None = None,
    keys: AuditKeys | None = None,
    *,
    create: bool = True,
    publish_to_input_broker: bool = False,
) -> Store:
    """The store the settings name, with its audit keys.

    With `create` (`ingest`, `run`, `replay --from-kafka`), a store that is not there yet is made, and its audit
    keys with it. Every other command needs an existing store: a typo in a path must not answer from an empty
    store made on the spot. Keys are never made for a store that exists: new keys would leave its pseudonyms
    unfindable and its signatures unverifiable, so a missing key file is an error naming it.

    The configured keys must be the ones the store was made with (`journal.keys.StoreKeys`): other keys are refused
    with an `AuditKeyError` naming the key that does not fit. Keys handed in (`keys`) are the caller's to answer
    for: `audit verify` checks its key against the signatures themselves, which an unsigned record in the store must
    not overrule, and it may hold the verify key alone.

    The worker (`publish_to_input_broker`) publishes its signed checkpoints to the input's Kafka as well.
    """
    exists = store_exists(settings)
    if not exists and not create:
        raise StoreError(f"{where(settings)}: no chatbridge store there (`chatbridge ingest` or `run` makes one)")
    configured = keys is None
    if keys is None:
        try:
            keys = audit_keys(settings, create=not exists)
        except AuditKeyError as error:
            if exists:
                raise AuditKeyError(f"{error}; the store holds data, so no new keys are made: restore them") from None
            raise
    with _schema_lock(settings):
        with store_connection(settings) as connection:  # before anything else reads or writes the store
            schema.check_schema(connection, schema.placeholder_of(settings), migrate=settings.migrate_on_start)
        servers = settings.kafka_bootstrap_servers if publish_to_input_broker else None
        app = IntakeApplication(
            env=store_env(settings),
            keys=keys,
            checkpoint_sinks=checkpoint_sinks(keys, servers),
            erasure_log=erasure_log(settings, servers),
        )
        leave_checkpoints = _no_checkpoints_of_its_own
        if isinstance(app.factory.datastore, SQLiteDatastore):  # type: ignore[attr-defined]
            leave_checkpoints = _writers_wait_their_turn(app.factory.datastore)  # type: ignore[attr-defined]
        view_class = PostgresDesiredStateView if settings.store == "postgres" else SQLiteDesiredStateView
        if configured:
            _keys_fit(app, keys, made=not exists)
        view = app.factory.tracking_recorder(view_class)  # type: ignore[arg-type]
        assert isinstance(view, view_class)
        view.ensure_current()  # rows of an earlier version of the projection are folded again
    projection = DesiredStateProjection(
        app, view, policy or settings.policy, exclusive=lambda: _exclusive(settings, _PROJECTION_LOCK)
    )
    reopen = None
    if configured and not _in_memory(settings):  # keys handed in are not read again in another process
        reopen = functools.partial(
            open_store, settings, policy, create=False, publish_to_input_broker=publish_to_input_broker
        )
    return Store(
        app=app, projection=projection, compact=lambda: compact_store(settings), reopen=reopen,
        leave_checkpoints=leave_checkpoints,
    )  # fmt: skip


def _in_memory(settings: Settings) -> bool:
    """An SQLite database that lives in this process only: another process opening the name gets another one."""
    name = str(settings.database)
    return settings.store == "sqlite" and (name == ":memory:" or "mode=memory" in name)


def erasure_log(settings: Settings, input_broker: str | None = None) -> ErasureLog:
    """Where every erasure is recorded outside the store, so that a restored backup cannot revive a destroyed key
    (`journal.erasures`): the file, and the topic — for every writer when Kafka is configured in the environment,
    else for the worker on its input's broker."""
    chosen = ErasureSettings()
    if chosen.kafka_bootstrap_servers is None and input_broker:
        chosen = chosen.model_copy(update={"kafka_bootstrap_servers": input_broker})
    return ErasureLog.configured(settings.database if settings.store == "sqlite" else None, chosen)


@contextmanager
def store_connection(settings: Settings) -> Iterator[Any]:
    """A connection of its own to the configured store (autocommit; `journal.schema` begins its transactions)."""
    if settings.store == "postgres":
        with _postgres_connection(settings) as connection:
            yield connection
        return
    with contextlib.suppress(FileExistsError):  # a store made here is its owner's only, before SQLite opens it
        os.close(os.open(settings.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    connection = sqlite3.connect(settings.database, timeout=30, isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


def _keys_fit(app: IntakeApplication, keys: AuditKeys, *, made: bool) -> None:
    """The store's record of its keys agrees with `keys` (and is written when there is none); else the application
    is closed and `AuditKeyError` names the key that does not fit."""
    recorder: Any = app.recorder
    try:
        StoreKeys(recorder.datastore, getattr(recorder, "placeholder", "?")).check(keys, made=made)
    except BaseException:
        app.close()
        raise


def checkpoint_sinks(keys: AuditKeys, input_broker: str | None = None) -> list[Sink]:
    """Where a writer publishes its signed checkpoints outside the store (`journal.checkpoints`): the auditor's file
    when one is configured, and the Kafka topic — for every writer when the audit's Kafka setting is given, else
    for the worker on its input's broker."""
    sinks: list[Sink] = []
    if keys.checkpoint_file is not None:
        sinks.append(CheckpointFile(keys.checkpoint_file))
    servers = keys.kafka_bootstrap_servers or input_broker
    if servers:
        sinks.append(KafkaCheckpoints(lambda: kafka_producer(servers), keys.checkpoint_topic))
    return sinks


class _ImmediateTransaction(SQLiteTransaction):
    """A write transaction that takes SQLite's write lock as it begins, waiting its turn (the busy timeout)."""

    def __enter__(self) -> SQLiteCursor:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor


# WAL pages a commit lets build up before it copies them into the database file (SQLite's default), and the bound
# for a process that leaves that to another writer of the same file (`Store.leave_checkpoints`; ~80 MB): kept in
# case the other one stops writing
CHECKPOINT_PAGES = 1000
CHECKPOINT_PAGES_LEFT = 20_000


def _no_checkpoints_of_its_own() -> None:
    """A store with no checkpoints of its own to leave (PostgreSQL, memory)."""


def _writers_wait_their_turn(datastore: SQLiteDatastore) -> Callable[[], None]:
    """Several processes may write one SQLite file (`ingest`s, `state`, a worker). The library begins every
    transaction deferred: one that reads before it writes (the person keys', the projection's) then fails at once
    with "database is locked" when another process wrote since its read — no busy timeout can help it. Write
    transactions here begin immediate, so a writer waits for the lock before it reads; reads stay deferred.

    Returns what makes this process's commits leave the WAL's checkpoints to another writer (up to
    `CHECKPOINT_PAGES_LEFT`): the worker's intake, whose fold process writes the same file on the other core. A
    checkpoint copies pages into the database file, more of them the larger the store; the intake's commits took
    twice as long in a store of a million events, and the intake is what a backlog waits for."""
    reads = datastore.transaction
    checkpoint_pages = [CHECKPOINT_PAGES]

    @contextmanager
    def transaction(*, commit: bool) -> Iterator[SQLiteCursor]:
        if not commit:
            with reads(commit=False) as cursor:
                yield cursor
            return
        with datastore.get_connection(commit=True) as connection:
            connection.cursor().execute(f"PRAGMA wal_autocheckpoint = {checkpoint_pages[0]}")  # per connection
            with _ImmediateTransaction(connection, commit=True) as cursor, cursor:
                yield cursor

    def leave_checkpoints() -> None:
        checkpoint_pages[0] = CHECKPOINT_PAGES_LEFT

    datastore.transaction = transaction  # type: ignore[method-assign]
    return leave_checkpoints


def where(settings: Settings) -> str:
    """The store the settings name, as an error line says it (the setting and its value; never a password)."""
    if settings.store == "postgres":
        where = f"{settings.postgres_host}:{settings.postgres_port}"
        return f"CHATBRIDGE_POSTGRES_DBNAME {settings.postgres_dbname} at {where}"
    return f"CHATBRIDGE_DATABASE {settings.database}"


_SQLITE_HEADER = b"SQLite format 3\x00"


def store_exists(settings: Settings) -> bool:
    """Whether the store is there; raises `StoreError` for a path or database that cannot be a store."""
    if settings.store == "postgres":
        return _postgres_schema_exists(settings)
    path = settings.database
    if path.is_dir():
        raise StoreError(f"{where(settings)}: is a directory; name the store's file in it")
    if not path.exists():
        if path.parent.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
            raise StoreError(f"{where(settings)}: cannot write in {path.parent}")
        return False
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError as error:
        raise StoreError(f"{where(settings)}: {error.strerror}") from None
    if header and header != _SQLITE_HEADER:
        raise StoreError(f"{where(settings)}: not an SQLite database, so not a chatbridge store")
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        # even `state` folds new events into the projection's tables, and SQLite writes its WAL beside the file
        raise StoreError(f"{where(settings)}: the store (or its directory) is read-only")
    return bool(header)


@contextmanager
def _schema_lock(settings: Settings) -> Iterator[None]:
    """Processes opening a fresh store at once would race to create the same tables (a unique-violation in the
    catalogue on PostgreSQL, a second `__migration__` tracking row on SQLite): one at a time."""
    with _exclusive(settings, _SCHEMA_LOCK):
        yield


@contextmanager
def _exclusive(settings: Settings, lock: int) -> Iterator[None]:
    """One process at a time, across every process using the store. PostgreSQL: an advisory lock, on a connection
    of its own held meanwhile. SQLite: an exclusive `flock` on the store's directory — never on the database file
    itself, whose every descriptor closed would drop the locks SQLite holds on it."""
    if settings.store != "postgres":
        settings.database.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(settings.database.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock
        return
    with _postgres_connection(settings) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (lock,))
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (lock,))


_SCHEMA_LOCK = 0x63686174  # "chat": the advisory lock id chatbridge takes while it makes its schema
_PROJECTION_LOCK = 0x63686175  # the one a process holds while it folds the log into the desired-state projection


# Every table chatbridge keeps in a PostgreSQL database (the library names its own after the application); the
# person keys' (journal.sealing) and the store's record of its audit keys (journal.keys) are not among them: a store
# made before them lacks them, and `wipe_store` keeps them.
_ALL_TABLES = (
    "chatbridge_events", "chatbridge_tracking", "chatbridge_intake", "desired_state", "organisation_feature",
    "person_status", "person_chats", "desired_state_meta",
)  # fmt: skip


def _postgres_connection(settings: Settings) -> Any:
    import psycopg  # only the PostgreSQL store needs it

    try:
        return psycopg.connect(
            host=settings.postgres_host,
            port=settings.postgres_port,
            dbname=settings.postgres_dbname,
            user=settings.postgres_user,
            password=settings.postgres_password.get_secret_value(),
            autocommit=True,
            connect_timeout=10,
        )
    except psycopg.OperationalError as error:  # its first line says why (refused, no such database, password)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise StoreError(f"{where(settings)}: {reason}") from None


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
        # the person keys stay (forgotten persons stay forgotten), and with them the record of the keys that find them
        for table in (*_ALL_TABLES, *chain.TABLES, FileMarks.TABLE):  # the files' marks go with their positions
            connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


def compact_store(settings: Settings) -> None:
    """Rewrite the database so that deleted and overwritten rows leave no bytes behind."""
    if settings.store == "sqlite":
        with sqlite3.connect(settings.database, timeout=30, isolation_level=None) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    with _postgres_connection(settings) as connection:
        for table in ("desired_state", "person_status", "person_chats", *KEY_TABLES):
            connection.execute(f"VACUUM FULL {table}")


def open_backend(settings: MatrixSettings) -> MatrixBackend:
    """The Matrix backend from `CHATBRIDGE_MATRIX_…` (raises ValueError when no token is configured)."""
    return MatrixBackend.from_settings(settings)


def chat_sync(settings: Settings, matrix: MatrixSettings, options: ReconcilerSettings) -> ReconcilerParts:
    """The worker's reconciler part: the Matrix backend, the reconciler's options, the status documents published to
    `CHATBRIDGE_STATUS_TOPIC`, and /readyz's probe of the homeserver. Raises ValueError without a Matrix token."""
    backend = open_backend(matrix)
    status_producer = kafka_producer(settings.kafka_bootstrap_servers)
    status = StatusReporter(backend, KafkaStatusPublisher(status_producer, settings.status_topic))
    return ReconcilerParts(backend, options, status, probe=matrix_probe(matrix), closing=(status_producer,))


def matrix_probe(matrix: MatrixSettings) -> Check:
    """/readyz's backend check: the homeserver answers its versions endpoint (no token, no side effect)."""

    def probe() -> str | None:
        try:
            response = httpx.get(f"{matrix.base_url.rstrip('/')}/_matrix/client/versions", timeout=3)
        except httpx.HTTPError as error:
            return f"chat backend unreachable ({type(error).__name__})"
        return None if response.status_code == 200 else f"chat backend answered {response.status_code}"

    return probe
