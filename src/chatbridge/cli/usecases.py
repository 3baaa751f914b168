"""The use cases behind the commands; the CLI only parses arguments and prints what these return."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from chatbridge import bootstrap
from chatbridge.bootstrap import Store, compact_store, in_memory_app, open_store, store_exists, wipe_store
from chatbridge.consumers.jsonl import ingest_lines, read_lines
from chatbridge.consumers.kafka import IntakeCounts, KafkaIngestor
from chatbridge.domain.lifecycle import Policy
from chatbridge.journal.sealing import SQLKeyTable
from chatbridge.projections.desired_state import DesiredStateFold
from chatbridge.projections.document import render_document
from chatbridge.projections.store import fold_log
from chatbridge.settings import Settings


def simulate(path: Path, now: datetime, policy: Policy) -> dict[str, Any]:
    """Fold a JSONL file through the domain and projection code in memory; nothing is stored."""
    return simulate_lines(read_lines(path), now, policy)


def simulate_lines(lines: Iterable[tuple[int, bytes]], now: datetime, policy: Policy) -> dict[str, Any]:
    """`simulate` on numbered raw lines (line numbers from 1)."""
    app = in_memory_app()
    ingest_lines(app, "simulate", lines)
    fold = DesiredStateFold(policy=policy, pseudonym=app.persons.pseudonym, open_name=app.persons.open)
    fold_log(app, fold)
    return render_document(fold.all_desired(), app.ledger.intake_summary(), now)


def state(store: Store, now: datetime) -> dict[str, Any]:
    """The same document from the persistent store, after folding whatever the projection has not seen yet."""
    store.projection.catch_up()
    return render_document(store.projection.view.desired_chats(), store.app.ledger.intake_summary(), now)


class StoreNotEmpty(Exception):
    """`replay --from-kafka` would overwrite events that may exist nowhere else."""


def rebuild_from_kafka(
    settings: Settings, *, force: bool, progress: Callable[[int, int], None] | None = None
) -> tuple[IntakeCounts, int]:
    """Disaster recovery: a fresh event store from the input topics, read from their earliest offsets.

    Refuses a store that holds anything unless `force`. Returns what became of the records and the number of
    events the projection folded. Records that break the contract were dead-lettered when first consumed and are
    not published again.
    """
    store = open_store(settings)
    try:
        if not store.app.ledger.is_empty():
            if not force:
                raise StoreNotEmpty("the store already holds ingested records; pass --force to replace it")
            # A forgotten person stays forgotten: the person keys (destroyed ones, horizons) outlive the wipe.
            # PostgreSQL's wipe keeps their tables; a SQLite file goes whole, so they are carried across.
            table = store.app.persons.table
            kept = table.export_rows() if settings.store == "sqlite" and isinstance(table, SQLKeyTable) else None
            store.close()
            wipe_store(settings)
            store = open_store(settings)
            if kept is not None:
                table = store.app.persons.table
                assert isinstance(table, SQLKeyTable)
                table.import_rows(kept)
        reapply_erasures(store)  # and the erasure log, for what the tables lost (a crash between wipe and copy)
        ingestor = KafkaIngestor.every_partition(store.app, settings, dead_letters=False)
        ends = ingestor.end_offsets()
        total, done = sum(ends.values()), 0

        def advance(handled: int) -> None:
            nonlocal done
            done += handled
            if progress:
                progress(done, total)

        counts = ingestor.drain(ends, advance)
        folded = store.projection.rebuild()
    finally:
        store.close()
    return counts, folded


# -- backup and restore -------------------------------------------------------------------------------------------


class BackupError(Exception):
    """A backup cannot be made or restored as asked (the message is one line, never a password)."""


@dataclass(frozen=True)
class Reapplied:
    recorded: int  # the installation's erasures in the erasure log
    reapplied: int  # those that were not in place in the store: their keys destroyed again


@dataclass(frozen=True)
class Restored:
    erasures: Reapplied
    folded: int  # events the projection folded, rebuilt from the restored log


def reapply_erasures(store: Store) -> Reapplied:
    """Carry out again every erasure the erasure log holds that the store does not show (`journal.erasures`)."""
    persons = store.app.persons
    if persons.erasure_log is None:
        return Reapplied(0, 0)
    erasures = persons.erasure_log.read(persons.installation)
    return Reapplied(len(erasures), sum(1 for erasure in erasures if persons.reapply(erasure)))


def backup_store(settings: Settings, out: Path) -> int:
    """A consistent copy of the store in `out` (mode 0600: it holds the persons' keys), taken while it runs; returns
    its size in bytes. SQLite: the online backup API, a database file. PostgreSQL: `pg_dump`'s custom format."""
    if not store_exists(settings):
        raise BackupError(f"{bootstrap.where(settings)}: no chatbridge store there, so nothing to back up")
    out = out.absolute()
    if settings.store != "postgres" and out.resolve() == settings.database.resolve():
        raise BackupError(f"{out} is the store itself; name another file")
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(f".{out.name}.partial")
    draft.unlink(missing_ok=True)
    os.close(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        if settings.store == "postgres":
            _postgres_tool(settings, "pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={draft}")
        else:
            with _sqlite(settings.database) as source, _sqlite(draft) as copy:
                source.backup(copy)
        with draft.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(draft, out)
    finally:
        draft.unlink(missing_ok=True)
    return out.stat().st_size


def restore_store(settings: Settings, backup: Path | None, *, force: bool) -> Restored:
    """Put the backup in place of the store, then destroy again every key erased since it was made.

    A store that holds ingested records is refused unless `force`. Without `backup`, the store as it is (restored
    by other means: a snapshot, `pg_restore`) has the erasures re-applied. The projection is rebuilt from the
    restored log (its rows named persons whose keys are gone now) and the database compacted.
    """
    if backup is not None:
        _check_backup(settings, backup)
        if not force and store_exists(settings):
            store = open_store(settings, create=False)
            try:
                if not store.app.ledger.is_empty():
                    raise StoreNotEmpty("the store holds ingested records; pass --force to replace it with the backup")
            finally:
                store.close()
        if settings.store == "postgres":
            _postgres_tool(settings, "pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges",
                           "--single-transaction", str(backup.absolute()))  # fmt: skip
        else:
            settings.database.parent.mkdir(parents=True, exist_ok=True)
            with _sqlite(backup, read_only=True) as source, _sqlite(settings.database) as store_file:
                source.backup(store_file)
                store_file.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store = open_store(settings, create=False)
    try:
        erasures = reapply_erasures(store)
        folded = store.projection.rebuild()
    finally:
        store.close()
    compact_store(settings)  # no destroyed key, no row naming a forgotten person, left in free pages
    return Restored(erasures, folded)


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_backup(settings: Settings, backup: Path) -> None:
    """The file is a backup `chatbridge backup` of this kind of store made: refused before anything is replaced."""
    try:
        with backup.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError as error:
        raise BackupError(f"{backup}: {error.strerror}") from None
    if settings.store == "postgres":
        if header == _SQLITE_HEADER:
            raise BackupError(f"{backup} is a SQLite store's backup, and the store is PostgreSQL")
        try:
            _postgres_tool(settings, "pg_restore", "--list", str(backup.absolute()), database=False)
        except BackupError as error:
            raise BackupError(f"{backup} is not a PostgreSQL store's backup ({error})") from None
        return
    if header != _SQLITE_HEADER:
        raise BackupError(f"{backup} is not a SQLite store's backup (`chatbridge backup` of a SQLite store makes one)")
    with _sqlite(backup, read_only=True) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"stored_events", "chatbridge_person_keys"} <= tables:
            raise BackupError(f"{backup} is a SQLite database but not a chatbridge store")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise BackupError(f"{backup} is damaged (SQLite's quick_check fails)")


class _sqlite:
    """A connection that is closed after the block (sqlite3's own context manager only commits)."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path, self.read_only = path, read_only

    def __enter__(self) -> sqlite3.Connection:
        target = f"file:{self.path.absolute()}?mode=ro" if self.read_only else str(self.path)
        self.connection = sqlite3.connect(target, uri=self.read_only, timeout=30)
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def _postgres_tool(settings: Settings, tool: str, *args: str, database: bool = True) -> None:
    """Run PostgreSQL's `tool` against the store's database; the password goes by the environment, never a line."""
    path = shutil.which(tool)
    if path is None:
        raise BackupError(
            f"{tool} not found: install PostgreSQL's client programs (the server's major version or newer), or back "
            "up and restore the database with your own tools and run `chatbridge restore --erasures-only` after a "
            "restore (docs/backup.md)"
        )
    where = [f"--host={settings.postgres_host}", f"--port={settings.postgres_port}",
             f"--username={settings.postgres_user}", f"--dbname={settings.postgres_dbname}"]  # fmt: skip
    env = {**os.environ, "PGPASSWORD": settings.postgres_password.get_secret_value(), "PGCONNECT_TIMEOUT": "10"}
    done = subprocess.run(
        [path, *(where if database else []), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = next((line for line in done.stderr.splitlines() if line.strip()), f"exit code {done.returncode}")
        raise BackupError(f"{tool}: {reason.strip().removeprefix(f'{tool}: ').removeprefix('error: ')}")
