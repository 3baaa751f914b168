"""A person deleted by HiOrg-Server and later named again is a new person: what named them before the deletion
stays erased (pseudonym only, in the decoded events and in the stored rows), what names them after is readable —
whether the later message comes in a later batch or in the deletion's own batch, on SQLite, PostgreSQL and in
memory. And a store of the previous release (one key per person, tombstones) opens and keeps its answers."""

from __future__ import annotations

import base64
import re
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatbridge.application import IntakeApplication
from chatbridge.audit.service import forget_person
from chatbridge.bootstrap import open_store
from chatbridge.cli import usecases
from chatbridge.consumers.jsonl import ingest_lines
from chatbridge.domain.aggregates import Person
from chatbridge.domain.lifecycle import Policy
from chatbridge.journal.keys import AuditKeys
from chatbridge.journal.sealing import FOREVER, PERSON_FIELDS, VERSION_TABLE, MemoryKeyTable, PersonKeys
from chatbridge.projections.desired_state import DesiredStateFold
from chatbridge.projections.store import fold_log
from chatbridge.settings import Settings
from tests.support import ALICE, ORG, Stream

pytestmark = pytest.mark.integration

P = "e" * 32
TD = datetime(2027, 1, 3, 12, tzinfo=UTC)  # HiOrg-Server deletes P


def jan(day: int, hour: int = 12) -> datetime:
    return datetime(2027, 1, day, hour, tzinfo=UTC)


def story() -> tuple[Stream, int]:
    """The messages, and how many of them come up to and including the deletion."""
    s = Stream()
    s.org_on(jan(1, 8))
    s.event("E", jan(1), start=jan(20), end=jan(21), responsible=ALICE, staff={P: "registered"})
    s.staffing("E", P, "assigned", jan(2))
    s.person(P, "active", jan(2, 13))
    s.person(P, "deleted", TD)
    deletion = len(s.lines)
    s.staffing("E", P, "assigned", jan(4))  # the new person
    s.staffing("E", P, "declined", jan(2, 18))  # dated before the deletion, arriving after it: erased
    s.event("E", jan(5), start=jan(20), end=jan(21), responsible=P, staff={P: "assigned"})
    s.person(P, "blocked", jan(6))
    return s, deletion


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def open_app(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A function opening the same store again (a fresh process: no caches), closing them all at the end."""
    opened: list[Any] = []
    if request.param == "memory":
        app = IntakeApplication()
        yield lambda: app
        return
    if request.param == "postgres":
        env = request.getfixturevalue("postgres_env")
        for name, value in {**env, "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "keys")}.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
    else:
        settings = Settings(database=tmp_path / "store.db")

    def reopen() -> IntakeApplication:
        store = open_store(settings)
        opened.append(store)
        return store.app

    try:
        yield reopen
    finally:
        for store in opened:
            store.close()


def named(app: IntakeApplication) -> list[tuple[str, datetime, set[str], bytes]]:
    """Every stored event that names persons: its class, time, the persons as decoded, and its stored bytes."""
    rows = []
    for notification in app.notifications():
        event = app.mapper.to_domain_event(notification)
        qualname = type(event).__qualname__
        if not PERSON_FIELDS[type(event)]:
            continue
        names: set[str] = set()
        for field in PERSON_FIELDS[type(event)]:
            value = event.__dict__[field]
            names.update(value if isinstance(value, dict) else [value] if value else [])
        rows.append((qualname, event.occurred_at, names, bytes(notification.state)))
    return rows


def destroyed_versions(app: IntakeApplication, pseudonym: str) -> set[int] | None:
    datastore = getattr(app.recorder, "datastore", None)
    if datastore is None:
        return None
    placeholder = getattr(app.recorder, "placeholder", "?")
    with datastore.transaction(commit=False) as c:
        c.execute(
            f"SELECT version FROM {VERSION_TABLE} WHERE pseudonym = {placeholder} AND person_key IS NULL", (pseudonym,)
        )
        return {int(r["version"]) for r in c.fetchall()}


def check(app: IntakeApplication) -> None:
    persons = app.persons
    pseudonym = persons.pseudonym(ORG, P)
    rows = named(app)
    before = [r for r in rows if r[1] < TD]
    after = [r for r in rows if r[1] >= TD]
    assert {r[0] for r in before} >= {"ChatGroup.Registered", "ChatGroup.StaffingChanged", "Person.Registered"}
    assert len(after) == 2  # staffing on 4 Jan, the record on 5 Jan naming P responsible and staffed
    for qualname, when, names, _ in before:
        assert P not in names and pseudonym in names, (qualname, when, names)
    for qualname, when, names, _ in after:
        assert P in names and pseudonym not in names, (qualname, when, names)
    # in the stored rows, every name of P dated before the deletion is the pseudonym alone or sealed with a
    # key version that is gone; after it, with a key that exists
    destroyed = destroyed_versions(app, pseudonym)
    token = re.compile(rb"enc([12]):" + pseudonym.encode() + rb":([0-9]*)(:?)")
    for _, _, _, state in before:
        assert P.encode() not in state
        for kind, version, sealed in token.findall(state):
            if kind == b"2" and destroyed is not None:
                assert int(version) in destroyed
            elif kind == b"1":
                assert not version and not sealed  # the pseudonym alone
    for _, _, _, state in after:
        versions = {int(v) for k, v, _ in token.findall(state) if k == b"2"}
        assert versions and (destroyed is None or not versions & destroyed)
    assert persons.is_known(ORG, P) and not persons.is_forgotten(ORG, P)
    assert persons.erased_until(ORG, P) == TD
    # the Person aggregate, read back (its Forgotten fact decoded again), keeps the new person's key
    assert app.repository.get(Person.create_id(ORG, pseudonym)).status == "blocked"
    assert [names for _, when, names, _ in named(app) if when >= TD] == [names for _, _, names, _ in after]


@pytest.mark.parametrize("same_batch", [False, True], ids=["later batch", "same batch"])
def test_a_person_named_after_their_deletion_is_readable_only_from_then_on(open_app: Any, same_batch: bool) -> None:
    s, deletion = story()
    lines = s.numbered()
    app = open_app()
    pieces = [lines] if same_batch else [lines[:deletion], lines[deletion:]]
    for piece in pieces:
        report = ingest_lines(app, "hiorg", piece)
        assert not report.rejected and report.outcomes == {"applied": len(piece)}
    check(app)
    check(open_app())  # another process, from the store alone


def test_a_new_person_named_in_a_batch_stored_before_the_deletion_is_a_member(open_app: Any) -> None:
    """Another partition ran ahead: the fact naming the new person (dated after the deletion) is stored first,
    sealed with the key the deletion then destroys. The deletion names the person again under a fresh key, so the
    chat has its member — and everything dated before the deletion stays erased."""
    s = Stream()
    s.org_on(jan(1, 8))
    s.event("E", jan(1), start=jan(20), end=jan(21), responsible=ALICE, staff={P: "assigned"})
    s.event("F", jan(4), start=jan(22), end=jan(23), responsible=ALICE, staff={P: "assigned"})  # after TD
    s.person(P, "deleted", TD)
    app = open_app()
    for line in s.numbered():  # one batch each: the deletion comes after F is stored
        ingest_lines(app, "hiorg", [line])
    members = {c["event_id"]: c["members"] for c in usecases.simulate_lines(s.numbered(), jan(10), Policy())["chats"]}
    assert members == {"E": [ALICE], "F": sorted([ALICE, P])}  # simulate: one batch, the in-batch rule
    fold = DesiredStateFold(pseudonym=app.persons.pseudonym, open_name=app.persons.open)
    fold_log(app, fold)
    assert {c.event_id: c.members for c in fold.all_desired()} == members
    again = open_app()  # another process, from the store alone
    fold = DesiredStateFold(pseudonym=again.persons.pseudonym, open_name=again.persons.open)
    fold_log(again, fold)
    assert {c.event_id: c.members for c in fold.all_desired()} == members
    before = [names for _, when, names, _ in named(again) if when < TD]
    assert before and all(P not in names for names in before)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_store_of_the_previous_release_opens_its_keys_and_tombstones(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    keys = AuditKeys.ephemeral()
    pseudonyms = PersonKeys(keys.pseudonym_key, MemoryKeyTable())
    kept, tomb = pseudonyms.pseudonym(ORG, P), pseudonyms.pseudonym(ORG, ALICE)
    key = AESGCM.generate_key(256)
    nonce = secrets.token_bytes(12)
    legacy = (
        f"enc1:{kept}:"
        + base64.urlsafe_b64encode(nonce + AESGCM(key).encrypt(nonce, P.encode(), kept.encode())).decode()
    )
    if backend == "postgres":
        import psycopg

        env = request.getfixturevalue("postgres_env")
        settings = Settings(**{name.removeprefix("CHATBRIDGE_").lower(): value for name, value in env.items()},
                            migrate_on_start=True)  # fmt: skip
        connect: Any = lambda: psycopg.connect(  # noqa: E731
            host=settings.postgres_host, port=settings.postgres_port, dbname=settings.postgres_dbname,
            user=settings.postgres_user, password=settings.postgres_password.get_secret_value(), autocommit=True,
        )  # fmt: skip
        mark = "%s"
    else:
        settings = Settings(database=tmp_path / "old.db", migrate_on_start=True)  # the previous release's layout
        connect, mark = (lambda: sqlite3.connect(settings.database, isolation_level=None)), "?"
    db = connect()
    try:  # the previous release's key table: a live key, and a tombstone
        db.execute(
            "CREATE TABLE chatbridge_person_keys (pseudonym TEXT PRIMARY KEY, org TEXT NOT NULL, person_key TEXT, "
            "created_at TEXT NOT NULL, forgotten_at TEXT)"
        )
        db.execute(f"INSERT INTO chatbridge_person_keys VALUES ({mark}, {mark}, {mark}, {mark}, NULL)",
                   (kept, ORG, key.hex(), "2026-12-01T00:00:00.000000Z"))  # fmt: skip
        db.execute(f"INSERT INTO chatbridge_person_keys VALUES ({mark}, {mark}, NULL, {mark}, {mark})",
                   (tomb, ORG, "2026-12-01T00:00:00.000000Z", "2026-12-02T00:00:00.000000Z"))  # fmt: skip
    finally:
        db.close()
    for _ in range(2):  # opening twice changes nothing the second time
        store = open_store(settings, keys=keys)
        try:
            persons = store.app.persons
            assert persons.open(legacy) == P and not persons.is_forgotten(ORG, P)
            assert persons.is_forgotten(ORG, ALICE) and persons.erased_until(ORG, ALICE) == FOREVER
            assert persons.seal(ORG, ALICE, jan(9)) == f"enc1:{tomb}:"  # erased by the previous release: for ever
            assert persons.seal(ORG, P, jan(9)).startswith(f"enc2:{kept}:1:")
        finally:
            store.close()
    db = connect()
    try:  # each key is kept once, in its version row
        rows = db.execute("SELECT COUNT(*) FROM chatbridge_person_keys WHERE person_key IS NOT NULL").fetchone()
        assert tuple(rows) == (0,)
        rows = db.execute(
            f"SELECT version, person_key FROM chatbridge_person_key_versions WHERE pseudonym = {mark}", (kept,)
        ).fetchall()
        assert [tuple(r) for r in rows] == [(1, key.hex())]
    finally:
        db.close()


def test_an_operators_erasure_of_a_person_named_again_erases_both_for_ever(tmp_path: Path) -> None:
    settings = Settings(database=tmp_path / "store.db")
    store = open_store(settings)
    try:
        s, _ = story()
        ingest_lines(store.app, "hiorg", s.numbered())
        persons = store.app.persons
        assert not persons.is_forgotten(ORG, P)
        result = forget_person(store, ORG, P, jan(7))
        assert result.key_destroyed and persons.is_forgotten(ORG, P) and persons.erased_until(ORG, P) == FOREVER
        assert all(P not in names for _, _, names, _ in named(store.app))
        s.staffing("E", P, "assigned", jan(8))
        ingest_lines(store.app, "hiorg", s.numbered()[-1:])
        assert P not in named(store.app)[-1][2]
    finally:
        store.close()
