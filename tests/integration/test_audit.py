"""The audit on a scripted history with known answers: timelines, access, deletions by each rule, transfers,
the hash chain against altered rows, and crypto-shredding down to the bytes of the database files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chatbridge.audit import queries
from chatbridge.audit.service import forget_person, verify_log
from chatbridge.backends.fake import FakeChatBackend
from chatbridge.bootstrap import Store, compact_store, open_store
from chatbridge.cli import usecases
from chatbridge.consumers.jsonl import ingest_lines
from chatbridge.domain.lifecycle import Policy
from chatbridge.reconciler.service import reconcile_once
from chatbridge.settings import Settings
from tests.support import ALICE, BOB, CAROL, DAVE, ORG, Stream, at

pytestmark = pytest.mark.integration

ORG2 = "asb-bonn"
POLICY = Policy()


def jan(day: int, hour: int = 12) -> datetime:
    return datetime(2027, 1, day, hour, tzinfo=UTC)


@dataclass
class Story:
    """A HiOrg stream fed to a store step by step, with reconciler passes on a fake chat backend between."""

    store: Store
    stream: Stream = field(default_factory=Stream)
    backend: FakeChatBackend = field(default_factory=FakeChatBackend)
    ingested: int = 0

    def feed(self) -> None:
        lines = self.stream.numbered()[self.ingested :]
        ingest_lines(self.store.app, "story", lines)
        self.ingested += len(lines)

    def reconcile(self, now: datetime) -> None:
        self.feed()
        report = reconcile_once(self.store, self.backend, now)
        assert not report.failed, report.failed


def tell(story: Story) -> None:
    s = story.stream
    s.org_on(at(1, month=11))
    s.org_on(at(1, month=11), org=ORG2)
    # 4711: two generations; BOB removed and re-added; deleted by retention
    s.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE, staff={BOB: "assigned"})
    # 4712: chat disabled; 4713: event deleted; asb-bonn/9001: organisation disabled
    s.event("4712", at(20, month=11), start=at(10, 16), end=at(10, 19), responsible=ALICE)
    s.event("4713", at(20, month=11), start=at(12, 16), end=at(12, 19), responsible=CAROL)
    s.event("9001", at(20, month=11), start=at(12, 16), end=at(12, 19), responsible=CAROL, org=ORG2)
    story.reconcile(at(21, 12, month=11))
    s.staffing("4711", BOB, "removed", at(22, month=11))
    story.reconcile(at(22, 12, month=11))
    s.staffing("4711", BOB, "assigned", at(23, month=11))
    story.reconcile(at(23, 12, month=11))
    s.event("4712", at(25, month=11), start=at(10, 16), end=at(10, 19), responsible=ALICE, chat=False)
    s.delete("4713", at(26, month=11))
    s.org_off(at(27, month=11), org=ORG2)
    story.reconcile(at(27, 12, month=11))
    story.reconcile(at(4, 12))  # 4711 read-only since 3 Dec 19:00
    story.reconcile(at(28, 12))  # 4712 (deleted 25 Dec) and asb-bonn/9001 (27 Dec)
    story.reconcile(jan(3))  # 4711 deleted 2 Jan 19:00
    s.event("4711", jan(4), start=jan(15), end=jan(20), responsible=ALICE, staff={BOB: "assigned"}, chat=False)
    s.event("4711", jan(5), start=jan(15), end=jan(20), responsible=ALICE, staff={BOB: "assigned"})
    story.reconcile(jan(6))


@pytest.fixture
def story(tmp_path: Path) -> Iterator[Story]:
    store = open_store(Settings(database=tmp_path / "audit.db"))
    try:
        told = Story(store)
        tell(told)
        yield told
    finally:
        store.close()


def test_a_persons_access_with_removal_re_adding_deletion_and_a_second_generation(story: Story) -> None:
    access = queries.person_access(story.store.app, ORG, BOB, POLICY)
    assert access["forgotten"] is False
    assert [(r["event_id"], r["generation"], r["from"], r["until"], r["ended_by"]) for r in access["access"]] == [
        ("4711", 1, "2026-11-21T11:00:00Z", "2026-11-22T11:00:00Z", "revoked"),
        ("4711", 1, "2026-11-23T11:00:00Z", "2027-01-03T12:00:00Z", "chat deleted"),
        ("4711", 2, "2027-01-06T12:00:00Z", None, None),
    ]


def test_deletions_name_each_rule_with_the_backends_confirmation(story: Story) -> None:
    deleted = queries.deletions(story.store.app, ORG, POLICY, jan(7), None)
    rules = {(r["event_id"], r["generation"]): (r["deletion_rule"], r["deleted_at"]) for r in deleted["deleted"]}
    assert rules == {
        ("4711", 1): ("retention", "2027-01-03T12:00:00Z"),
        ("4712", 1): ("chat disabled", "2026-12-28T11:00:00Z"),
        ("4713", 1): ("event deleted", "2026-11-27T11:00:00Z"),
    }
    assert all(r["confirmation"]["status"] for r in deleted["deleted"])
    assert deleted["overdue"] == []
    other = queries.deletions(story.store.app, ORG2, POLICY, jan(7), None)
    assert [(r["event_id"], r["deletion_rule"]) for r in other["deleted"]] == [("9001", "organisation disabled")]
    # since: only the later deletions; and a generation past its deadline without confirmation is overdue
    assert {r["event_id"] for r in queries.deletions(story.store.app, ORG, POLICY, jan(7), jan(1))["deleted"]} == {
        "4711"
    }
    late = queries.deletions(story.store.app, ORG, POLICY, datetime(2027, 3, 1, tzinfo=UTC), None)
    assert [(r["event_id"], r["generation"], r["delete_at"]) for r in late["overdue"]] == [
        ("4711", 2, "2027-02-21T12:00:00Z")
    ]


def test_chat_timeline_shows_generations_access_read_only_and_deletion(story: Story) -> None:
    timeline = queries.chat_timeline(story.store.app, ORG, "4711", POLICY)
    generations = timeline["generations"]
    assert [(g["generation"], g["deletion_rule"], g["deleted_at"]) for g in generations] == [
        (1, "retention", "2027-01-03T12:00:00Z"),
        (2, "retention", None),
    ]
    assert generations[0]["made_read_only_at"] == "2026-12-04T11:00:00Z"
    whats = [(e["generation"], e["what"]) for e in timeline["entries"]]
    assert whats[0] == (1, "chat enabled")
    assert (1, "chat created (backend confirmed)") in whats
    assert whats.count((1, "access granted")) == 3  # ALICE, BOB, BOB again
    assert (1, "access revoked") in whats
    assert (1, "made read-only (backend confirmed)") in whats
    assert (1, "chat deleted with all content (backend confirmed)") in whats
    assert (2, "chat enabled, generation started") in whats
    staffing = [e["details"] for e in timeline["entries"] if e["what"] == "staffing changed"]
    assert staffing == [{"person": BOB, "status": "removed"}, {"person": BOB, "status": "assigned"}]


def test_transfers_list_the_exact_fields(story: Story) -> None:
    rows = queries.transfers(story.store.app, ORG, POLICY)["transfers"]
    assert [r["what"] for r in rows] == [
        "requested by the organisation (chat enabled)",
        "transferred (chat operator confirmed)",
    ]
    assert rows[0]["fields"] == {
        "name": "DRK Köln",
        "email": "it@drk.example",
        "address": {"street": "Oskar-Jäger-Str. 101", "postcode": "50825", "city": "Köln", "country": "DE"},
    }
    assert rows[1]["fields"] == story.backend.tenants[ORG]  # exactly what the operator holds
    assert rows[1]["tenant_id"] == f"space:{ORG}"


def test_unknown_org_event_and_person_are_not_found(story: Story) -> None:
    app = story.store.app
    with pytest.raises(queries.NotFound, match="organisation"):
        queries.transfers(app, "nobody", POLICY)
    with pytest.raises(queries.NotFound, match="event"):
        queries.chat_timeline(app, ORG, "0000", POLICY)
    with pytest.raises(queries.NotFound, match="person"):
        queries.person_access(app, ORG, "f" * 32, POLICY)


def test_the_answers_are_the_same_after_replay(story: Story) -> None:
    app = story.store.app
    before = (queries.person_access(app, ORG, BOB, POLICY), queries.chat_timeline(app, ORG, "4711", POLICY))
    story.store.projection.rebuild()
    assert (queries.person_access(app, ORG, BOB, POLICY), queries.chat_timeline(app, ORG, "4711", POLICY)) == before


# -- crypto-shredding ------------------------------------------------------------------------------------------


def database_bytes(path: Path) -> bytes:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_forgetting_leaves_no_plaintext_in_the_database_files_and_keeps_the_proof(story: Story, tmp_path: Path):
    app = story.store.app
    database = tmp_path / "audit.db"
    others_before = usecases.state(story.store, jan(7))
    result = forget_person(story.store, ORG, BOB, jan(7))
    assert result.key_destroyed
    raw = database_bytes(database)
    assert BOB.encode() not in raw
    assert ALICE.encode() in raw  # the others are untouched
    access = queries.person_access(app, ORG, BOB, POLICY)
    assert access["forgotten"] is True and access["person"] == result.pseudonym
    assert [(r["event_id"], r["generation"], r["from"], r["until"]) for r in access["access"]] == [
        ("4711", 1, "2026-11-21T11:00:00Z", "2026-11-22T11:00:00Z"),
        ("4711", 1, "2026-11-23T11:00:00Z", "2027-01-03T12:00:00Z"),
        ("4711", 2, "2027-01-06T12:00:00Z", None),  # until the reconciler removes the account (below)
    ]
    timeline = queries.chat_timeline(app, ORG, "4711", POLICY)
    assert BOB not in str(timeline) and result.pseudonym in str(timeline)
    # the forgotten person is in no chat; everyone else's state is unchanged
    after = usecases.state(story.store, jan(7))
    chat = next(c for c in after["chats"] if c["event_id"] == "4711")
    assert chat["members"] == [ALICE]
    assert [c for c in after["chats"] if c["event_id"] != "4711"] == [
        c for c in others_before["chats"] if c["event_id"] != "4711"
    ]
    # the reconciler removes the account from the chat and records it under the pseudonym
    story.reconcile(jan(8))
    assert story.backend.user_id(ORG, BOB) not in story.backend.chat(ORG, "4711", 2).members
    rows = queries.person_access(app, ORG, BOB, POLICY)["access"]
    assert rows[-1]["generation"] == 2 and rows[-1]["until"] == "2027-01-08T12:00:00Z"
    assert BOB.encode() not in database_bytes(database)
    # a rebuild from the log alone gives the same rows
    live = usecases.state(story.store, jan(8))
    story.store.projection.rebuild()
    assert usecases.state(story.store, jan(8)) == live
    assert BOB.encode() not in database_bytes(database)
    assert verify_log(app, app.keys.signing_key.public_key()).ok  # type: ignore[union-attr]


def test_a_person_deleted_by_hiorg_is_shredded_at_intake(story: Story, tmp_path: Path) -> None:
    s = story.stream
    s.staffing("4711", DAVE, "assigned", jan(6, 13))
    story.reconcile(jan(6, 14))
    assert story.backend.user_id(ORG, DAVE) in story.backend.chat(ORG, "4711", 2).members
    s.person(DAVE, "deleted", jan(6, 15))
    story.reconcile(jan(6, 16))
    assert story.backend.user_id(ORG, DAVE) not in story.backend.chat(ORG, "4711", 2).members
    compact_store(Settings(database=tmp_path / "audit.db"))
    assert DAVE.encode() not in database_bytes(tmp_path / "audit.db")
    access = queries.person_access(story.store.app, ORG, DAVE, POLICY)
    assert access["forgotten"] is True
    assert [(r["from"], r["until"]) for r in access["access"]] == [("2027-01-06T14:00:00Z", "2027-01-06T16:00:00Z")]


# -- the hash chain ----------------------------------------------------------------------------------------------


def _sqlite_tamper(path: Path, statements: list[str]) -> None:
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)


TAMPERING = {
    "modified": ["UPDATE stored_events SET state = CAST('{}' AS BLOB) WHERE rowid = 5"],
    "deleted": ["DELETE FROM stored_events WHERE rowid = 5"],
    "inserted": [
        "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
        "SELECT originator_id, originator_version + 1000, topic, state FROM stored_events WHERE rowid = 5"
    ],
    "swapped": [
        "CREATE TEMP TABLE swap AS SELECT rowid AS id, state FROM stored_events WHERE rowid IN (5, 6)",
        "UPDATE stored_events SET originator_version = -originator_version WHERE rowid IN (5, 6)",
        "UPDATE stored_events SET state = (SELECT state FROM swap WHERE id = 11 - stored_events.rowid), "
        "originator_id = (SELECT originator_id FROM stored_events AS o WHERE o.rowid = 11 - stored_events.rowid), "
        "originator_version = -(SELECT originator_version FROM stored_events AS o "
        "WHERE o.rowid = 11 - stored_events.rowid) WHERE rowid IN (5, 6)",
    ],
}
EXPECTED = {"modified": (5, "altered"), "deleted": (5, "missing"), "swapped": (5, "reordered")}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_verify_finds_the_first_tampered_record_on_sqlite(tmp_path: Path, tampering: str) -> None:
    database = tmp_path / "chain.db"
    store = open_store(Settings(database=database))
    try:
        story = Story(store)
        tell(story)
        key = store.app.keys.signing_key.public_key()  # type: ignore[union-attr]
        assert verify_log(store.app, key).ok
        _sqlite_tamper(database, TAMPERING[tampering])
        result = verify_log(store.app, key)
    finally:
        store.close()
    assert not result.ok
    first = result.first
    assert first is not None
    if tampering == "inserted":
        assert first.problem == "inserted" and first.notification_id > 5
    else:
        assert (first.notification_id, first.problem) == EXPECTED[tampering]


def test_verify_rejects_a_chain_recomputed_without_the_key(tmp_path: Path) -> None:
    database = tmp_path / "chain.db"
    store = open_store(Settings(database=database))
    try:
        tell(Story(store))
        key = store.app.keys.signing_key.public_key()  # type: ignore[union-attr]
        _sqlite_tamper(database, ["UPDATE audit_checkpoints SET chain_hash = '00' || substr(chain_hash, 3)"])
        result = verify_log(store.app, key)
    finally:
        store.close()
    assert not result.ok and "checkpoint invalid" in {f.problem for f in result.findings}
    assert result.first is not None and result.first.problem in ("unsigned", "checkpoint invalid")


# -- the same on PostgreSQL --------------------------------------------------------------------------------------


def _postgres(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tmp_path: Path) -> Settings:
    for name, value in {**env, "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "keys")}.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _postgres_tamper(settings: Settings, tampering: str) -> None:
    import psycopg

    table = "chatbridge_events"
    with psycopg.connect(
        host=settings.postgres_host, port=settings.postgres_port, dbname=settings.postgres_dbname,
        user=settings.postgres_user, password=settings.postgres_password.get_secret_value(), autocommit=True,
    ) as db:  # fmt: skip
        if tampering == "modified":
            db.execute(f"UPDATE {table} SET state = '{{}}'::bytea WHERE notification_id = 5")
        elif tampering == "deleted":
            db.execute(f"DELETE FROM {table} WHERE notification_id = 5")
        elif tampering == "inserted":
            db.execute(
                f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
                f"SELECT originator_id, originator_version + 1000, topic, state FROM {table} WHERE notification_id = 5"
            )
        else:  # swapped: rows 5 and 6 trade places
            rows = db.execute(
                f"SELECT notification_id, originator_id, originator_version, topic, state FROM {table} "
                "WHERE notification_id IN (5, 6) ORDER BY notification_id"
            ).fetchall()
            db.execute(f"UPDATE {table} SET originator_version = -notification_id WHERE notification_id IN (5, 6)")
            for (target, *_), (_, originator, version, topic, state) in zip(rows, reversed(rows), strict=True):
                db.execute(
                    f"UPDATE {table} SET originator_id = %s, originator_version = %s, topic = %s, state = %s "
                    "WHERE notification_id = %s",
                    (originator, version, topic, state, target),
                )


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_verify_finds_the_first_tampered_record_on_postgres(
    postgres_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tampering: str
) -> None:
    settings = _postgres(monkeypatch, postgres_env, tmp_path)
    store = open_store(settings)
    try:
        tell(Story(store))
        key = store.app.keys.signing_key.public_key()  # type: ignore[union-attr]
        assert verify_log(store.app, key).ok
        _postgres_tamper(settings, tampering)
        result = verify_log(store.app, key)
    finally:
        store.close()
    first = result.first
    assert first is not None
    if tampering == "inserted":
        assert first.problem == "inserted" and first.notification_id > 5
    else:
        assert (first.notification_id, first.problem) == EXPECTED[tampering]


def test_forgetting_on_postgres_leaves_no_plaintext_in_the_tables(
    postgres_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import psycopg

    settings = _postgres(monkeypatch, postgres_env, tmp_path)
    store = open_store(settings)
    try:
        story = Story(store)
        tell(story)
        forget_person(store, ORG, BOB, jan(7))
        story.reconcile(jan(8))
        access = queries.person_access(store.app, ORG, BOB, POLICY)
    finally:
        store.close()
    assert access["forgotten"] and len(access["access"]) == 3
    with psycopg.connect(
        host=settings.postgres_host, port=settings.postgres_port, dbname=settings.postgres_dbname,
        user=settings.postgres_user, password=settings.postgres_password.get_secret_value(), autocommit=True,
    ) as db:  # fmt: skip
        tables = [r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        for table in tables:
            dump = str(db.execute(f"SELECT * FROM {table}").fetchall())
            assert BOB not in dump, table
            found = db.execute(
                f"SELECT count(*) FROM {table} WHERE position(%s::bytea in convert_to({table}::text, 'UTF8')) > 0",
                (BOB.encode(),),
            ).fetchone()
            assert found == (0,), table
        assert ALICE in str(db.execute("SELECT members FROM desired_state").fetchall())  # the check can see one


def test_a_hiorg_id_spelt_like_anothers_pseudonym_is_another_person(story: Story, tmp_path: Path) -> None:
    app = story.store.app
    alice = str(app.persons.pseudonym(ORG, ALICE))  # as a producer would send it: a plain id
    before = queries.person_access(app, ORG, ALICE, POLICY)
    s = story.stream
    s.staffing("4711", alice, "assigned", jan(6, 13))  # a HiOrg id that is ALICE's pseudonym, letter for letter
    s.person(alice, "deleted", jan(6, 15))
    story.reconcile(jan(6, 16))
    # ALICE is untouched: her key, her chat, her plain id in the audit
    assert not app.persons.is_forgotten(ORG, ALICE) and app.persons.erased_until(ORG, ALICE) is None
    chat = next(c for c in usecases.state(story.store, jan(6, 16))["chats"] if c["event_id"] == "4711")
    assert ALICE in chat["members"] and ALICE in chat["moderators"]
    assert ALICE in str(queries.chat_timeline(app, ORG, "4711", POLICY)["entries"])
    assert queries.person_access(app, ORG, ALICE, POLICY) == before
    # the other one was a person of their own, deleted under a pseudonym of their own
    assert app.persons.is_forgotten(ORG, alice) and app.persons.pseudonym(ORG, alice) != alice
    assert verify_log(app, app.keys.signing_key.public_key()).ok  # type: ignore[union-attr]


def test_audit_person_keeps_organisations_apart_that_share_an_event_id(tmp_path: Path) -> None:
    store = open_store(Settings(database=tmp_path / "two.db"))
    try:
        story = Story(store)
        s = story.stream
        s.org_on(at(1, month=11))
        s.org_on(at(1, month=11), org=ORG2)
        s.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE)
        s.event("4711", at(20, month=11), start=at(2, 16), end=at(2, 19), responsible=ALICE, org=ORG2)
        story.reconcile(at(21, 12, month=11))
        s.event("4711", at(22, month=11), start=at(2, 16), end=at(2, 19), responsible=BOB, org=ORG2)
        story.reconcile(at(23, 12, month=11))
        chat_a = story.backend.chat(ORG, "4711", 1).chat_id
        chat_b = story.backend.chat(ORG2, "4711", 1).chat_id
        assert chat_a != chat_b
        a = queries.person_access(store.app, ORG, ALICE, POLICY)["access"]
        b = queries.person_access(store.app, ORG2, ALICE, POLICY)["access"]
        assert [(r["event_id"], r["chat_id"], r["until"]) for r in a] == [("4711", chat_a, None)]
        assert [(r["event_id"], r["chat_id"], r["until"]) for r in b] == [("4711", chat_b, "2026-11-23T11:00:00Z")]
        timeline_b = queries.chat_timeline(store.app, ORG2, "4711", POLICY)
        assert {g["chat_id"] for g in timeline_b["generations"]} == {chat_b}
        deletions_b = queries.deletions(store.app, ORG2, POLICY, jan(20), None)
        assert {r["chat_id"] for r in deletions_b["deleted"] + deletions_b["overdue"]} <= {chat_b}
    finally:
        store.close()
