"""Intake and replay: raw_consume, raw_store_*, ingest_*, ingest_at_1m, replay_sqlite."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from kafka import KafkaConsumer
from tests.services import throwaway_postgres_database

from bench.common import CACHE, KAFKA, POSTGRES, Result, Sizes, log, median, result, timed
from bench.stream import end_offsets, prefilled_topic, records
from chatbridge.application import IntakeApplication, Received
from chatbridge.bootstrap import in_memory_app, open_store, store_env
from chatbridge.consumers.kafka import KafkaIngestor
from chatbridge.domain.messages import parse_record
from chatbridge.journal import schema
from chatbridge.projections.store import FOLD_VERSION
from chatbridge.settings import Settings
from chatbridge.worker import fold_beside_intake

HISTORY_VERSION = 1  # bump when the generated history changes, so a cached store is rebuilt


# -- stores ---------------------------------------------------------------------------------------------------


@contextmanager
def postgres_database() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL database, as chatbridge settings."""
    with throwaway_postgres_database(POSTGRES, prefix="cbbench") as name:
        yield {
            "store": "postgres",
            "postgres_host": str(POSTGRES["host"]),
            "postgres_port": str(POSTGRES["port"]),
            "postgres_dbname": name,
            "postgres_user": str(POSTGRES["user"]),
            "postgres_password": str(POSTGRES["password"]),
        }


@contextmanager
def sqlite_database(copy_of: Path | None = None) -> Iterator[dict[str, str]]:
    directory = CACHE / f"run-{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True)
    database = directory / "chatbridge.db"
    if copy_of is not None:
        shutil.copyfile(copy_of, database)
        if _keys(copy_of).exists():  # the audit's keys beside the file (pseudonyms, checkpoint signatures)
            shutil.copyfile(_keys(copy_of), _keys(database))
    try:
        yield {"store": "sqlite", "database": str(database)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def settings_for(store: dict[str, str], topic: str) -> Settings:
    return Settings(**store, kafka_bootstrap_servers=KAFKA, topics=topic, dlq_topic="chatbridge.bench.dlq")  # type: ignore[arg-type]


# -- the client's ceiling -------------------------------------------------------------------------------------


def raw_consume(topic: str) -> float:
    """Records/s for kafka-python reading and JSON-decoding the whole topic."""
    ends = end_offsets(KAFKA, topic)
    consumer = KafkaConsumer(
        bootstrap_servers=KAFKA,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    started = time.perf_counter()
    consumer.assign(list(ends))
    consumer.seek_to_beginning()
    count = 0
    try:
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    json.loads(record.value)
                    count += 1
    finally:
        consumer.close()
    return count / (time.perf_counter() - started)


# -- the store's ceiling --------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def domain_events(count: int, prefix: str) -> list[Any]:
    """The domain events the intake makes of the generated messages (made in memory, once)."""
    app = in_memory_app()
    batch: list[Received] = []
    for number, (_key, value) in enumerate(records(prefix, count), start=1):
        batch.append(Received(number, parse_record(value)))
        if len(batch) == 500:
            app.ingest("bench", batch)
            batch = []
    app.ingest("bench", batch)
    notifications = app.recorder.select_notifications(start=1, limit=10 * count + 100)
    return [app.mapper.to_domain_event(n) for n in notifications][:count]


def _raw_store_env(store: dict[str, str]) -> dict[str, str]:
    if store["store"] == "sqlite":
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": store["database"]}
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_HOST": store["postgres_host"],
        "POSTGRES_PORT": store["postgres_port"],
        "POSTGRES_DBNAME": store["postgres_dbname"],
        "POSTGRES_USER": store["postgres_user"],
        "POSTGRES_PASSWORD": store["postgres_password"],
    }


def _raw_note(plain: list[float]) -> str:
    return f"saved 500 at a time by chatbridge's store (sealing, hash chain); plain Application {median(plain):,.0f}/s"


def raw_store(store: dict[str, str], events: Sequence[Any], batch: int = 500, *, plain: bool = False) -> float:
    """Events/s for chatbridge's event store saving the same events in batches: its mapper (persons sealed) and
    recorder (hash chain) through `save`, but no Kafka, no validation, no intake ledger, no projection.
    `plain`: the library's own `Application` instead (no sealing, no chain), for the note."""
    app = (
        Application(env=_raw_store_env(store)) if plain else IntakeApplication(env=store_env(settings_for(store, "-")))
    )
    try:
        started = time.perf_counter()
        for start in range(0, len(events), batch):
            app.save(*events[start : start + batch])
        return len(events) / (time.perf_counter() - started)
    finally:
        app.close()


# -- the intake -----------------------------------------------------------------------------------------------


class OneByOne(KafkaIngestor):
    """The reference mode for `ingest_naive_sqlite`: each record its own get + save + commit."""

    def _apply(self, tp: Any, records: Sequence[Any]) -> int:
        return sum(super(OneByOne, self)._apply(tp, [record]) for record in records)


def ingest(settings: Settings, ingestor_class: type[KafkaIngestor] = KafkaIngestor) -> tuple[float, int]:
    """Messages/s from the topic's start to its end into stored events and the folded projection, as the worker
    does it: the worker's own fold (`worker.fold_beside_intake`: a process beside the intake, woken after every
    poll that stored records) and its last fold before returning. Like opening the store, starting the fold process
    is not timed. Returns (rate, count)."""
    store = open_store(settings)
    try:
        ends = end_offsets(KAFKA, settings.topic_list[0])
        total = sum(ends.values())
        folding = fold_beside_intake(store, settings)
        try:
            folding.finish()  # the fold process started and answering, as the store is opened: before the clock
            started = time.perf_counter()
            ingestor = ingestor_class.every_partition(store.app, settings, after_poll=folding.stored)
            counts = ingestor.drain(ends)
            folding.finish()
        finally:
            folding.close(timeout=settings.shutdown_timeout)
        seconds = time.perf_counter() - started
        if counts.total != total:
            raise RuntimeError(f"ingested {counts.total} of {total} records: {counts.outcomes}")
        return total / seconds, store.app.recorder.max_notification_id() or 0
    finally:
        store.close()


# -- history: a store holding a million events ------------------------------------------------------------------


def history_store(sizes: Sizes) -> Path:
    """A SQLite store with `history_events` events over `history_chats` chats, projection folded; built once and
    kept in the cache (it takes minutes), then copied for each run that changes it."""
    per_event = max(1, sizes.history_events // sizes.history_chats)
    path = CACHE / f"history-v{HISTORY_VERSION}-{sizes.history_events}-{per_event}.db"
    if path.exists():
        if _fold_version(path) != FOLD_VERSION or _schema_version(path) != schema.CURRENT:
            # a store cached by an earlier release: migrated and its projection refolded here once, not in a timed run
            log(f"bringing the cached history store to schema {schema.CURRENT} and fold version {FOLD_VERSION}")
            store = open_store(Settings(database=path, migrate_on_start=True))
            try:
                store.projection.catch_up()
            finally:
                store.close()
        return path
    log(f"building the history store ({sizes.history_events:,} messages, {per_event} per chat); kept in {CACHE}")
    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    store = open_store(Settings(database=building))
    try:
        batch: list[Received] = []
        started = time.perf_counter()
        for number, (_key, value) in enumerate(
            records("h", sizes.history_events, orgs=20, persons=2000, per_event=per_event, seed=7), start=1
        ):
            batch.append(Received(number, parse_record(value)))
            if len(batch) == 1000:
                store.app.ingest("file:history", batch)
                batch = []
            if number % 200_000 == 0:
                log(f"  {number:,} messages stored ({number / (time.perf_counter() - started):,.0f}/s)")
        store.app.ingest("file:history", batch)
        store.projection.catch_up()
    finally:
        store.close()
    building.rename(path)
    _keys(building).rename(_keys(path))
    return path


def _schema_version(database: Path) -> int | None:
    with closing(sqlite3.connect(database)) as connection:
        return schema.stored_version(connection, "?")


def _fold_version(database: Path) -> str | None:
    with sqlite3.connect(database) as connection:
        try:
            row = connection.execute("SELECT value FROM desired_state_meta WHERE key = 'fold_version'").fetchone()
        except sqlite3.OperationalError:  # no projection tables yet
            return None
    return None if row is None else str(row[0])


def _keys(database: Path) -> Path:
    return database.with_name(database.name + ".audit-keys")


def stored_events(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0] or 0)


def replay(path: Path) -> tuple[float, int]:
    """Events/s for `chatbridge replay` (the projection rebuilt from the whole log)."""
    with sqlite_database(copy_of=path) as store_settings:
        store = open_store(settings_for(store_settings, "unused"))
        try:
            seconds, folded = timed(store.projection.rebuild)
        finally:
            store.close()
    return int(folded) / seconds, int(folded)  # type: ignore[call-overload]


def raw_read(path: Path) -> float:
    """Events/s for a plain SQL cursor reading every stored event in order and decoding its JSON state."""
    started = time.perf_counter()
    count = 0
    with sqlite3.connect(path) as connection:
        cursor = connection.execute(
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events ORDER BY rowid"
        )
        while rows := cursor.fetchmany(5000):
            for row in rows:
                json.loads(row[4])
                count += 1
    return count / (time.perf_counter() - started)


# -- the figures ----------------------------------------------------------------------------------------------


def run(sizes: Sizes, only: set[str] | None = None) -> list[Result]:
    def wanted(*names: str) -> bool:
        return only is None or bool(only.intersection(names))

    results: list[Result] = []
    reps = range(sizes.repetitions)
    topic = prefilled_topic(KAFKA, f"chatbridge.bench.i{sizes.messages}", sizes.messages, sizes.partitions)
    naive_topic = prefilled_topic(
        KAFKA, f"chatbridge.bench.n{sizes.naive_messages}", sizes.naive_messages, sizes.partitions
    )
    size_note = f"{sizes.messages:,} msgs, {sizes.partitions} partitions"

    if wanted("raw_consume"):
        rates = [raw_consume(topic) for _ in reps]
        log(f"raw_consume {rates}")
        results.append(result("raw_consume", rates, "records/s", note=size_note))

    events: list[Any] = []
    if wanted("raw_store_sqlite", "raw_store_postgres", "ingest_sqlite", "ingest_postgres", "ingest_at_1m"):
        events = domain_events(sizes.raw_store_events, "raw")

    if wanted("raw_store_sqlite", "ingest_sqlite", "ingest_at_1m", "ingest_naive_sqlite"):
        history = history_store(sizes) if wanted("ingest_at_1m") else None
        raw, plain, empty, full, naive = [], [], [], [], []
        for rep in reps:  # each repetition measures the figure and its baseline back to back
            with sqlite_database() as store:
                raw.append(raw_store(store, events))
            with sqlite_database() as store:
                plain.append(raw_store(store, events, plain=True))
            with sqlite_database() as store:
                empty.append(ingest(settings_for(store, topic))[0])
            if history is not None:
                with sqlite_database(copy_of=history) as store:
                    full.append(ingest(settings_for(store, topic))[0])
            if wanted("ingest_naive_sqlite"):
                with sqlite_database() as store:
                    naive.append(ingest(settings_for(store, naive_topic), OneByOne)[0])
            log(
                f"sqlite rep {rep}: raw_store {raw[-1]:,.0f}/s, ingest {empty[-1]:,.0f}/s"
                + (f", at history {full[-1]:,.0f}/s" if full else "")
                + (f", naive {naive[-1]:,.0f}/s" if naive else "")
            )
        results.append(result("raw_store_sqlite", raw, "events/s", note=f"{len(events):,} events, {_raw_note(plain)}"))
        results.append(
            result(
                "ingest_sqlite",
                empty,
                "msgs/s",
                "raw_store_sqlite",
                raw,
                note=f"{size_note}, one worker, projection folded",
            )
        )
        if naive:
            results.append(
                result(
                    "ingest_naive_sqlite",
                    naive,
                    "msgs/s",
                    "ingest_sqlite",
                    empty,
                    note=f"{sizes.naive_messages:,} msgs, one transaction per message",
                )
            )
        if full and history is not None:
            results.append(
                result(
                    "ingest_at_1m",
                    full,
                    "msgs/s",
                    "ingest_sqlite",
                    empty,
                    note=f"store held {stored_events(history):,} events before",
                )
            )

    if wanted("raw_store_postgres", "ingest_postgres"):
        raw, plain, ingested = [], [], []
        for rep in reps:
            with postgres_database() as store:
                raw.append(raw_store(store, events))
            with postgres_database() as store:
                plain.append(raw_store(store, events, plain=True))
            with postgres_database() as store:
                ingested.append(ingest(settings_for(store, topic))[0])
            log(f"postgres rep {rep}: raw_store {raw[-1]:,.0f}/s, ingest {ingested[-1]:,.0f}/s")
        results.append(
            result(
                "raw_store_postgres",
                raw,
                "events/s",
                note=f"{len(events):,} events, saved 500 at a time by "
                f"chatbridge's store (sealing, hash chain); the library's plain Application: {median(plain):,.0f}/s",
            )
        )
        results.append(result("ingest_postgres", ingested, "msgs/s", "raw_store_postgres", raw, note=size_note))

    if wanted("replay_sqlite"):
        history = history_store(sizes)
        replayed, read = [], []
        folded = 0
        for rep in reps:
            rate, folded = replay(history)
            replayed.append(rate)
            read.append(raw_read(history))
            log(f"replay rep {rep}: {replayed[-1]:,.0f} events/s, raw read {read[-1]:,.0f}/s")
        results.append(
            result(
                "replay_sqlite",
                replayed,
                "events/s",
                "raw_read",
                read,
                note=f"{folded:,} events, `chatbridge replay` (projection rebuild)",
            )
        )
    return results
