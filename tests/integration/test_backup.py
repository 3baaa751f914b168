"""Backups that keep erasure: a restored backup, or a store rebuilt from Kafka, does not bring back a person key
that `gdpr forget` or HiOrg-Server's deletion destroyed after it — on SQLite and on PostgreSQL, through the
installed `chatbridge`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chatbridge.settings import Settings
from tests.kafka_support import CHATBRIDGE, new_topic, publish, settings_of, store_of
from tests.services import ROOT
from tests.support import ALICE, BOB, ORG, Stream, at

pytestmark = pytest.mark.integration


@dataclass
class Installation:
    env: dict[str, str]
    tmp: Path

    @property
    def settings(self) -> Settings:
        return settings_of(self.env)

    def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([CHATBRIDGE, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == code, f"chatbridge {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
        return done

    def ingest(self, stream: Stream, name: str) -> None:
        path = self.tmp / f"{name}.jsonl"
        path.write_bytes(b"\n".join(stream.lines) + b"\n")
        self.run("ingest", str(path))

    def person(self, person_id: str) -> dict[str, object]:
        document: dict[str, object] = json.loads(self.run("audit", "person", "--org", ORG, "--person", person_id,
                                                          "--format", "json").stdout)  # fmt: skip
        return document

    def forgotten(self, person_id: str) -> bool:
        """The store holds no key of the person any more (read in this process, with the store's keys)."""
        store = store_of(self.env)
        assert store is not None
        try:
            return store.app.persons.is_forgotten(ORG, person_id)
        finally:
            store.close()

    def holds(self, person_id: str) -> bool:
        """The HiOrg id is somewhere in the database's bytes (SQLite: its files; PostgreSQL: any table's rows)."""
        settings = self.settings
        if settings.store == "sqlite":
            with sqlite3.connect(settings.database) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            files = [p for p in settings.database.parent.iterdir() if p.name.startswith(settings.database.name + "-")]
            return any(person_id.encode() in p.read_bytes() for p in [settings.database, *files])
        import psycopg

        with psycopg.connect(
            host=settings.postgres_host, port=settings.postgres_port, dbname=settings.postgres_dbname,
            user=settings.postgres_user, password=settings.postgres_password.get_secret_value(), autocommit=True,
        ) as db:  # fmt: skip
            tables = [r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            return any(
                db.execute(
                    f"SELECT count(*) FROM {table} WHERE position(%s::bytea in convert_to({table}::text, 'UTF8')) > 0",
                    (person_id.encode(),),
                ).fetchone()
                != (0,)
                for table in tables
            )


@pytest.fixture(params=["sqlite", "postgres"])
def installation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installation]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    env["CHATBRIDGE_AUDIT_KEY_FILE"] = str(tmp_path / "audit-keys.json")  # the erasure log: audit-keys.erasures
    if request.param == "postgres":
        env.update(request.getfixturevalue("postgres_env"))
    else:
        env["CHATBRIDGE_DATABASE"] = str(tmp_path / "chatbridge.db")
    yield Installation(env, tmp_path)


def staffed() -> Stream:
    """ALICE responsible for event 4711, BOB assigned to it."""
    s = Stream()
    s.org_on(at(1, month=11))
    s.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE, staff={BOB: "assigned"})
    return s


def test_a_person_forgotten_after_the_backup_stays_forgotten_when_it_is_restored(installation: Installation):
    installation.ingest(staffed(), "before")
    backup = installation.tmp / "backups" / "store.backup"
    installation.run("backup", "--out", str(backup))
    assert backup.stat().st_mode & 0o777 == 0o600  # it holds the persons' keys
    installation.run("gdpr", "forget", "--org", ORG, "--person", BOB)
    erasure_log = installation.tmp / "audit-keys.erasures"
    records = erasure_log.read_text().splitlines()
    assert len(records) == 1 and BOB not in records[0] and "ps-" in records[0]  # by pseudonym only

    refused = installation.run("restore", str(backup), code=1)
    assert "--force" in refused.stderr
    restored = installation.run("restore", str(backup), "--force")
    assert "re-applied 1 of 1 recorded erasures" in restored.stdout

    assert installation.forgotten(BOB) and not installation.forgotten(ALICE)
    person = installation.person(BOB)
    assert person["forgotten"] is True and str(person["person"]).startswith("ps-")
    assert not installation.holds(BOB) and installation.holds(ALICE)  # (the check can see one)
    assert BOB not in installation.run("state", "--now", "2026-12-01T17:00:00Z").stdout
    # a second restore finds the erasure in place already
    assert "re-applied 1 of 1" in installation.run("restore", str(backup), "--force").stdout
    assert "re-applied 0 of 1" in installation.run("restore", "--erasures-only").stdout


def test_a_person_deleted_by_hiorg_after_the_backup_stays_deleted_when_it_is_restored(installation: Installation):
    stream = staffed()
    installation.ingest(stream, "before")
    backup = installation.tmp / "store.backup"
    installation.run("backup", "--out", str(backup))
    deletion = Stream(counter=100)
    deletion.person(BOB, "deleted", at(2))
    installation.ingest(deletion, "deletion")
    assert installation.forgotten(BOB)

    restored = installation.run("restore", str(backup), "--force")
    assert "re-applied 1 of 1 recorded erasures" in restored.stdout
    assert installation.forgotten(BOB) and not installation.forgotten(ALICE)
    assert installation.person(BOB)["forgotten"] is True
    assert not installation.holds(BOB) and installation.holds(ALICE)
    # HiOrg-Server's deletion erased what named the person until then: a fact after it is a new person
    again = Stream(counter=200)
    again.staffing("4711", BOB, "assigned", at(3))
    installation.ingest(again, "again")
    assert not installation.forgotten(BOB)


def test_restore_refuses_a_file_that_is_not_a_backup(installation: Installation) -> None:
    installation.ingest(staffed(), "before")
    junk = installation.tmp / "junk"
    junk.write_text("not a backup\n")
    failed = installation.run("restore", str(junk), "--force", code=1)
    assert failed.stderr.startswith("error:") and "junk" in failed.stderr
    assert not installation.forgotten(ALICE) and installation.holds(ALICE)  # the store is untouched


def test_the_erasure_topic_is_enough_when_the_file_is_lost(tmp_path: Path, kafka_bootstrap: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    installation = Installation(
        {**env, "CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db"), "CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS":
         kafka_bootstrap, "CHATBRIDGE_ERASURE_TOPIC": new_topic(kafka_bootstrap, partitions=1)},
        tmp_path,
    )  # fmt: skip
    installation.ingest(staffed(), "before")
    backup = tmp_path / "store.backup"
    installation.run("backup", "--out", str(backup))
    installation.run("gdpr", "forget", "--org", ORG, "--person", BOB)
    (tmp_path / "chatbridge.db.erasures").unlink()  # lost with the volume; the topic holds it
    assert "re-applied 1 of 1" in installation.run("restore", str(backup), "--force").stdout
    assert installation.forgotten(BOB) and not installation.holds(BOB)


def test_a_rebuild_from_kafka_keeps_a_forgotten_person_forgotten(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap)
    publish(kafka_bootstrap, topic, staffed().lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    installation = Installation(
        {**env, "CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db"), "CHATBRIDGE_TOPICS": topic,
         "CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
         "CHATBRIDGE_ERASURE_LOG": str(tmp_path / "lost" / "erasures")},
        tmp_path,
    )  # fmt: skip
    installation.run("replay", "--from-kafka")
    assert not installation.forgotten(BOB) and installation.holds(BOB)
    installation.run("gdpr", "forget", "--org", ORG, "--person", BOB)
    (tmp_path / "lost" / "erasures").unlink()  # the key tables alone carry it across the wipe:
    installation.env["CHATBRIDGE_ERASURE_TOPIC"] = new_topic(kafka_bootstrap, partitions=1)  # (an empty topic)
    installation.run("replay", "--from-kafka", "--force")
    assert installation.forgotten(BOB) and not installation.forgotten(ALICE)
    assert installation.person(BOB)["forgotten"] is True
    assert not installation.holds(BOB) and installation.holds(ALICE)
