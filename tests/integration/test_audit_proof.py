"""The log's proof against whoever can write every table of the store but holds no key: the attacks of someone
who recomputes the chain with SHA-256 and removes the checkpoints that would betray it — all of them, only the
later ones, or the tail of the log with its checkpoints. Each is caught against the checkpoints published outside
the store (the auditor's file, the Kafka topic), on SQLite and PostgreSQL, and the next ingest refuses to store."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatbridge.audit import verify as verifying
from chatbridge.audit.service import verify_log
from chatbridge.bootstrap import open_store
from chatbridge.journal import chain
from chatbridge.journal.checkpoints import CheckpointFile, read_topic
from chatbridge.settings import Settings
from tests.integration.test_audit import Story, jan, tell
from tests.support import ALICE

pytestmark = pytest.mark.integration


class Tables:
    """Raw SQL on the store's database, as the attacker has it: no key, every table."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.events = "stored_events" if settings.store == "sqlite" else "chatbridge_events"
        self.id = "rowid" if settings.store == "sqlite" else "notification_id"

    def run(self, work: Callable[[Any, str], Any]) -> Any:
        if self.settings.store == "sqlite":
            with sqlite3.connect(self.settings.database) as db:
                return work(db, "?")
        import psycopg

        s = self.settings
        with psycopg.connect(
            host=s.postgres_host, port=s.postgres_port, dbname=s.postgres_dbname, user=s.postgres_user,
            password=s.postgres_password.get_secret_value(), autocommit=True,
        ) as db:  # fmt: skip
            return work(db, "%s")

    def count(self) -> int:
        return int(self.run(lambda db, _: db.execute(f"SELECT COUNT(*) FROM {self.events}").fetchone()[0]))

    def last_id(self) -> int:
        return int(self.run(lambda db, _: db.execute(f"SELECT MAX({self.id}) FROM {self.events}").fetchone()[0]))

    def alter(self, notification_id: int) -> None:
        """Change one stored event's bytes so that it still reads (an event title, a time)."""

        def work(db: Any, mark: str) -> None:
            state = bytes(db.execute(f"SELECT state FROM {self.events} WHERE {self.id} = {mark}",
                                     (notification_id,)).fetchone()[0])  # fmt: skip
            forged = state.replace(b"2026", b"2025", 1)
            assert forged != state
            db.execute(f"UPDATE {self.events} SET state = {mark} WHERE {self.id} = {mark}", (forged, notification_id))

        self.run(work)

    def delete_events(self, condition: str) -> None:
        self.run(lambda db, _: db.execute(f"DELETE FROM {self.events} WHERE {self.id} {condition}"))

    def recompute_chain(self) -> None:
        """A fresh chain over the events as they are now, with SHA-256 alone."""

        def work(db: Any, mark: str) -> None:
            rows = db.execute(
                f"SELECT {self.id}, originator_id, originator_version, topic, state FROM {self.events} "
                f"ORDER BY {self.id}"
            ).fetchall()
            db.execute("DELETE FROM audit_chain")
            previous = chain.GENESIS
            for notification_id, originator, version, topic, state in rows:
                originator = originator if isinstance(originator, uuid.UUID) else uuid.UUID(originator)
                record = chain.record_hash(originator, version, topic, bytes(state))
                previous = chain.chain_hash(previous, record)
                db.execute(
                    f"INSERT INTO audit_chain (notification_id, record_hash, chain_hash) VALUES ({mark}, {mark}, {mark})",
                    (notification_id, record.hex(), previous.hex()),
                )

        self.run(work)

    def delete(self, table: str, condition: str = "") -> None:
        self.run(lambda db, _: db.execute(f"DELETE FROM {table} {condition}"))


def recompute_and_drop_all(tables: Tables, altered: int) -> None:
    tables.alter(altered)
    tables.delete_events(f"= {altered + 2}")
    tables.recompute_chain()
    tables.delete("audit_checkpoints")


def recompute_and_drop_later(tables: Tables, altered: int) -> None:
    tables.alter(altered)
    tables.recompute_chain()
    tables.delete("audit_checkpoints", f"WHERE notification_id >= {altered}")


def cut_the_tail(tables: Tables, altered: int) -> None:
    tables.delete_events(f">= {altered}")
    for table in chain.TABLES:
        tables.delete(table, f"WHERE notification_id >= {altered}")


ATTACKS = {"recompute, drop all": recompute_and_drop_all, "recompute, drop later": recompute_and_drop_later,
           "cut the tail": cut_the_tail}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setenv("CHATBRIDGE_AUDIT_KEY_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("CHATBRIDGE_AUDIT_CHECKPOINT_FILE", str(tmp_path / "auditor" / "checkpoints.jsonl"))
    if request.param == "postgres":
        for name, value in request.getfixturevalue("postgres_env").items():
            monkeypatch.setenv(name, value)
        return Settings()
    return Settings(database=tmp_path / "proof.db")


def told(settings: Settings) -> Iterator[Story]:
    store = open_store(settings)
    try:
        story = Story(store)
        tell(story)
        yield story
    finally:
        store.close()


def verification(settings: Settings, published: list[chain.Checkpoint]) -> verifying.Verification:
    store = open_store(settings)
    try:
        key = store.app.keys.signing_key
        assert key is not None
        return verify_log(store.app, key.public_key(), published)
    finally:
        store.close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_attack_is_caught_against_the_published_checkpoints_and_the_next_ingest_refuses(
    settings: Settings, tmp_path: Path, attack: str
) -> None:
    story = next(told(settings), None)
    assert story is not None
    file = CheckpointFile(tmp_path / "auditor" / "checkpoints.jsonl")
    published = file.read()
    tables = Tables(settings)
    last = tables.last_id()
    assert published and published[-1].notification_id == last and published[-1].records == tables.count()
    assert verification(settings, published).ok
    altered = last - 6
    ATTACKS[attack](tables, altered)

    against_file = verification(settings, published)
    first = against_file.first
    assert first is not None and first.problem == "contradicts published checkpoint", against_file.findings
    assert first.notification_id == altered, first
    assert "published checkpoint at record" in first.detail
    alone = verification(settings, [])
    if attack == "cut the tail":
        assert alone.ok  # the store alone cannot tell a cut log: the published copy can
    else:
        assert not alone.ok and {f.problem for f in alone.findings} & {"unsigned", "checkpoint removed"}

    # the next ingest, by a fresh process that knows the published checkpoints only from the auditor's file
    stored = tables.count()
    store = open_store(settings)
    try:
        story.store = store
        story.stream.event("4799", jan(9), start=jan(20), end=jan(21), responsible=ALICE)  # a new chat
        with pytest.raises(chain.ChainHalted) as refused:
            story.feed()
        assert str(refused.value).startswith("record ")  # names the record where the log disagrees
        guard = store.app.audit_guard
        assert guard is not None and guard.halted
        with pytest.raises(chain.ChainHalted):  # and it stays stopped
            story.feed()
    finally:
        store.close()
    assert tables.count() == stored
    assert file.read() == published  # nothing signed, nothing published


def test_a_record_rewritten_as_text_is_found_altered_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # SQLite keeps any value in any column; PostgreSQL's bytea column refuses text, so this is SQLite's attack
    monkeypatch.setenv("CHATBRIDGE_AUDIT_KEY_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("CHATBRIDGE_AUDIT_CHECKPOINT_FILE", str(tmp_path / "auditor" / "checkpoints.jsonl"))
    settings = Settings(database=tmp_path / "proof.db")
    assert next(told(settings), None) is not None
    published = CheckpointFile(tmp_path / "auditor" / "checkpoints.jsonl").read()
    target = Tables(settings).last_id() - 3
    with sqlite3.connect(settings.database) as db:
        state = bytes(db.execute("SELECT state FROM stored_events WHERE rowid = ?", (target,)).fetchone()[0])
        forged = state.replace(b"2026", b"2025", 1).decode()
        db.execute("UPDATE stored_events SET state = CAST(? AS TEXT) WHERE rowid = ?", (forged, target))
        assert db.execute("SELECT typeof(state) FROM stored_events WHERE rowid = ?", (target,)).fetchone()[0] == "text"
    result = verification(settings, published)
    assert result.first is not None and result.first.notification_id == target, result.findings
    assert result.first.problem == "altered"


def test_the_checkpoint_file_chains_and_is_kept_private(settings: Settings, tmp_path: Path) -> None:
    next(told(settings), None)
    path = tmp_path / "auditor" / "checkpoints.jsonl"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    checkpoints = [chain.Checkpoint.from_json(json.dumps(line)) for line in lines]
    assert checkpoints[0].previous == chain.GENESIS.hex()
    for before, after in zip(checkpoints, checkpoints[1:], strict=False):
        assert after.previous == before.digest() and after.records > before.records  # type: ignore[operator]


def test_verify_reads_the_checkpoint_topic(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    topic = f"chatbridge.audit-checkpoints.test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CHATBRIDGE_AUDIT_KEY_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("CHATBRIDGE_AUDIT_CHECKPOINT_TOPIC", topic)
    settings = Settings(database=tmp_path / "topic.db")
    next(told(settings), None)
    store = open_store(settings)
    try:
        key = store.app.keys.signing_key
        assert key is not None
        signer = chain.key_id(key.public_key())
    finally:
        store.close()
    published = read_topic(kafka_bootstrap, topic, signer)
    tables = Tables(settings)
    assert published and published[-1].notification_id == tables.last_id()
    assert read_topic(kafka_bootstrap, topic, "another-key") == []
    cut_the_tail(tables, tables.last_id() - 3)
    first = verification(settings, published).first
    assert first is not None and first.problem == "contradicts published checkpoint"


def test_the_files_chatbridge_makes_are_its_owners_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CHATBRIDGE_AUDIT_KEY_FILE", raising=False)
    monkeypatch.setenv("CHATBRIDGE_AUDIT_CHECKPOINT_FILE", str(tmp_path / "checkpoints.jsonl"))
    previous = os.umask(0o022)  # what most systems have: files readable by everyone unless made otherwise
    try:
        database = tmp_path / "private.db"
        store = open_store(Settings(database=database))
        try:
            Story(store).feed()
            story = Story(store)
            story.stream.org_on(jan(1))
            story.feed()
            made = [p for p in tmp_path.iterdir() if p.is_file()]
            names = {p.name for p in made}
            assert {"private.db", "private.db-wal", "private.db-shm", "private.db.audit-keys",
                    "checkpoints.jsonl"} <= names, names  # fmt: skip
            assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {n: "0o600" for n in names}
        finally:
            store.close()
        # a store an earlier release left readable by everyone is closed down when it is opened
        os.chmod(database, 0o644)
        open_store(Settings(database=database), create=False).close()
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_audit_verify_names_the_record_and_the_checkpoint_against_the_auditors_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from chatbridge.cli.audit import audit_app

    monkeypatch.setenv("CHATBRIDGE_AUDIT_KEY_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("CHATBRIDGE_AUDIT_CHECKPOINT_FILE", str(tmp_path / "checkpoints.jsonl"))
    monkeypatch.setenv("CHATBRIDGE_DATABASE", str(tmp_path / "cli.db"))
    settings = Settings()
    next(told(settings), None)
    kept = tmp_path / "kept-by-the-auditor.jsonl"
    kept.write_bytes((tmp_path / "checkpoints.jsonl").read_bytes())
    runner = CliRunner()
    ok = runner.invoke(audit_app, ["verify", "--checkpoints", str(kept)])
    assert ok.exit_code == 0 and ok.stdout.startswith("OK: ") and "agrees with" in ok.stdout, ok.output
    tables = Tables(settings)
    # the log cut from the record of the auditor's second-to-last checkpoint on (a checkpoint signs a whole batch)
    *_, agreeing, altered, _last = [c.notification_id for c in CheckpointFile(kept).read()]
    cut_the_tail(tables, altered)
    alone = runner.invoke(audit_app, ["verify", "--checkpoints", str(tmp_path / "empty.jsonl")])
    assert alone.exit_code == 2  # a file that is not there is an error, not an empty copy
    cut = runner.invoke(audit_app, ["verify", "--checkpoints", str(kept), "--format", "json"])
    assert cut.exit_code == 1
    document = json.loads(cut.stdout)
    assert document["ok"] is False and document["last_published"] == agreeing
    assert document["first_problem"]["record"] == altered
    assert document["first_problem"]["problem"] == "contradicts published checkpoint"
    assert f"checkpoint at record {altered} ({altered} records" in document["first_problem"]["detail"]
    table = runner.invoke(audit_app, ["verify"])  # the configured file is the default copy
    assert table.exit_code == 1 and table.stdout.startswith(f"ALTERED: record {altered}: contradicts published")


def test_a_store_of_the_first_release_is_carried_on_by_chained_checkpoints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHATBRIDGE_AUDIT_KEY_FILE", str(tmp_path / "keys"))
    settings = Settings(database=tmp_path / "old.db")
    story = next(told(settings), None)
    assert story is not None
    key = story.store.app.keys.signing_key
    assert key is not None
    with sqlite3.connect(settings.database) as db:  # what the first release wrote: no count, no chaining
        rows = db.execute("SELECT notification_id, chain_hash, signed_at, key_id FROM audit_checkpoints").fetchall()
        db.execute("DROP TABLE chatbridge_schema_version")  # nor a schema version
        db.execute("DROP TABLE audit_checkpoints")
        db.execute(
            "CREATE TABLE audit_checkpoints (notification_id BIGINT PRIMARY KEY, chain_hash TEXT NOT NULL, "
            "signed_at TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL)"
        )
        for notification_id, chain_hash, signed_at, key_id in rows:
            old = chain.Checkpoint(notification_id, chain_hash, signed_at, key_id, "")
            db.execute(
                "INSERT INTO audit_checkpoints VALUES (?, ?, ?, ?, ?)",
                (notification_id, chain_hash, signed_at, key_id, key.sign(old.message()).hex()),
            )
    settings = Settings(database=tmp_path / "old.db", migrate_on_start=True)  # the migration adds the columns
    assert verification(settings, []).ok
    store = open_store(settings)
    try:
        story.store = store
        story.stream.event("4799", jan(9), start=jan(20), end=jan(21), responsible=ALICE)
        story.feed()
    finally:
        store.close()
    result = verification(settings, [])
    assert result.ok and result.last_checkpoint == Tables(settings).last_id()
    with sqlite3.connect(settings.database) as db:
        db.row_factory = sqlite3.Row
        last, before = [chain.Checkpoint.from_row(r) for r in db.execute(
            "SELECT * FROM audit_checkpoints ORDER BY notification_id DESC LIMIT 2")]  # fmt: skip
    assert before.previous is None and last.previous == before.digest() and last.records == result.records


def test_the_worker_publishes_to_the_topic_and_stops_storing_on_a_cut_log(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import httpx

    from tests.kafka_support import Worker, new_topic, publish, run_until_idle, wait_until, worker_env
    from tests.support import Stream, at

    topic = new_topic(kafka_bootstrap, partitions=2)
    checkpoint_topic = f"chatbridge.audit-checkpoints.test-{uuid.uuid4().hex[:8]}"
    env = worker_env(kafka_bootstrap, topic, {
        "CHATBRIDGE_DATABASE": str(tmp_path / "worker.db"),
        "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "keys"),
        "CHATBRIDGE_AUDIT_CHECKPOINT_FILE": str(tmp_path / "checkpoints.jsonl"),
        "CHATBRIDGE_AUDIT_CHECKPOINT_TOPIC": checkpoint_topic,
    })  # fmt: skip
    stream = Stream()
    stream.org_on(at(1, month=11))
    for n in range(6):
        stream.event(f"47{n:02d}", at(2, month=11), start=at(10, 16), end=at(10, 19), responsible=ALICE)
    publish(kafka_bootstrap, topic, stream.lines)
    run_until_idle(env, tmp_path, idle=3)
    monkeypatch.setenv("CHATBRIDGE_AUDIT_KEY_FILE", str(tmp_path / "keys"))
    settings = Settings(database=tmp_path / "worker.db")
    tables = Tables(settings)
    signer = CheckpointFile(tmp_path / "checkpoints.jsonl").read()[-1].key_id
    on_topic = read_topic(kafka_bootstrap, checkpoint_topic, signer)
    assert on_topic and on_topic[-1].notification_id == tables.last_id() and on_topic[-1].records == tables.count()

    cut_the_tail(tables, tables.last_id() - 1)  # the newest records go, with their links and checkpoints
    stored = tables.count()
    stream.event("4799", at(3, month=11), start=at(10, 16), end=at(10, 19), responsible=ALICE)
    publish(kafka_bootstrap, topic, stream.lines[-1:])
    worker = Worker(env, tmp_path)
    try:
        port = worker.http_port()

        def halted() -> bool:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            return ready.status_code == 503 and "storing stopped" in ready.json()["checks"]["store"]

        wait_until(halted, 90, "/readyz says storing stopped", worker.output)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "chatbridge_audit_chain_halted 1.0" in metrics
        assert worker.alive() and tables.count() == stored
    finally:
        worker.stop()
    assert worker.output().count("storing stopped") == 1, worker.output()[-3000:]
    first = verification(settings, on_topic).first
    assert first is not None and first.problem == "contradicts published checkpoint"
