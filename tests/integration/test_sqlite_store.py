"""The persistent store on a real SQLite file: ingest + state, resumable projection, rebuild, crash safety."""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatbridge import application
from chatbridge.bootstrap import Store, open_store
from chatbridge.cli import usecases
from chatbridge.consumers.jsonl import ingest_file, ingest_lines
from chatbridge.domain.lifecycle import Policy
from chatbridge.settings import Settings
from tests.strategies import NOWS, streams
from tests.support import ALICE, BOB, CAROL, Stream, at

PROJECTION_TABLES = ("desired_state", "organisation_feature", "person_status", "person_chats")


def store_at(path: Path, policy: Policy | None = None) -> Store:
    return open_store(Settings(database=path), policy)


def dump_projection(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        return {table: sorted(db.execute(f"SELECT * FROM {table}").fetchall()) for table in PROJECTION_TABLES}


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@settings(max_examples=40, deadline=None)
@given(streams(), NOWS, st.integers(1, 7))
def test_ingest_then_state_equals_simulate_of_the_same_stream(lines, now, batch_size):
    with tempfile.TemporaryDirectory() as tmp:
        store = store_at(Path(tmp) / "store.db")
        try:
            ingest_lines(store.app, "test", list(enumerate(lines, start=1)), batch_size)
            assert usecases.state(store, now) == usecases.simulate_lines(list(enumerate(lines, 1)), now, Policy())
        finally:
            store.close()


def _forgotten_between_pieces() -> list[bytes]:
    """A person deleted (and so forgotten) in a later piece than the staffing that named them, found by CI."""
    stream = Stream()
    stream.event("4711", at(1), start=at(1), end=at(1), staff={ALICE: "registered", BOB: "registered"})
    for _ in range(28):
        stream.raw("{oops")
    stream.person(ALICE, "deleted", at(1))
    return stream.lines


@settings(max_examples=30, deadline=None)
@given(streams(max_size=40), st.integers(1, 6))
@example(_forgotten_between_pieces(), 2)
def test_a_projection_rebuilt_from_scratch_equals_the_one_followed_live(lines, pieces):
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "store.db"
        numbered = list(enumerate(lines, start=1))
        step = max(1, len(numbered) // pieces)
        for start in range(0, max(len(numbered), 1), step):  # the live projection follows in several steps
            store = store_at(database)  # and across restarts
            store.projection.page_size = 1  # pages may end between the events of one message
            try:
                ingest_lines(store.app, "test", numbered[start : start + step], batch_size=3)
                store.projection.catch_up()
            finally:
                store.close()
        live = dump_projection(database)
        store = store_at(database)
        try:
            store.projection.rebuild()
        finally:
            store.close()
        assert dump_projection(database) == live


def staffed_stream() -> Stream:
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE, staff={BOB: "assigned"})
    stream.staffing("4711", CAROL, "assigned", at(21, month=11))
    stream.person(BOB, "blocked", at(22, month=11))
    return stream


def test_reingesting_a_file_changes_nothing_and_appended_lines_are_applied(tmp_path):
    stream = staffed_stream()
    messages = write(tmp_path / "messages.jsonl", stream.lines)
    store = store_at(tmp_path / "store.db")
    try:
        first = ingest_file(store.app, messages)
        assert first.outcomes == {"applied": 4}
        again = ingest_file(store.app, messages)
        assert (again.skipped, again.outcomes) == (4, {})
        stream.person(BOB, "active", at(23, month=11))
        write(messages, stream.lines)
        appended = ingest_file(store.app, messages)
        assert (appended.skipped, appended.outcomes) == (4, {"applied": 1})
        document = usecases.state(store, at(24, month=11))
        assert document["chats"][0]["members"] == [ALICE, BOB, CAROL]
        assert document["duplicates"] == 0
    finally:
        store.close()


def test_a_batch_that_fails_half_way_stores_nothing_and_a_retry_applies_it_whole(tmp_path, monkeypatch):
    stream = staffed_stream()
    database = tmp_path / "store.db"
    store = store_at(database)
    original = application._HANDLERS[application.PersonStatusChanged]

    def crash(message, unit):
        raise RuntimeError("simulated crash after the first messages of the batch")

    monkeypatch.setitem(application._HANDLERS, application.PersonStatusChanged, crash)
    try:
        with pytest.raises(RuntimeError):
            ingest_lines(store.app, "test", stream.numbered(), batch_size=10)
        assert store.app.recorder.max_notification_id() in (None, 0)
        assert store.app.position("test") == 0
        monkeypatch.setitem(application._HANDLERS, application.PersonStatusChanged, original)
        ingest_lines(store.app, "test", stream.numbered(), batch_size=10)
        assert usecases.state(store, at(24, month=11))["chats"][0]["members"] == [ALICE, CAROL]
    finally:
        store.close()


def test_a_source_position_is_never_applied_twice(tmp_path):
    stream = staffed_stream()
    store = store_at(tmp_path / "store.db")
    try:
        ingest_lines(store.app, "kafka:hiorg.chat.v1:0", stream.numbered(), batch_size=2)
        events = store.app.recorder.max_notification_id()
        # as when a replica stored it first: the store refuses the position, and what is left of the batch is none
        again = ingest_lines(store.app, "kafka:hiorg.chat.v1:0", stream.numbered()[-1:], batch_size=2)
        assert again.outcomes == {}
        assert store.app.recorder.max_notification_id() == events
        assert usecases.state(store, at(24, month=11))["duplicates"] == 0
    finally:
        store.close()


def test_the_person_index_lists_every_chat_that_named_the_person(tmp_path):
    stream = staffed_stream()
    stream.event("4712", at(20, month=11), start=at(2, 16), end=at(2, 19), responsible=BOB)
    store = store_at(tmp_path / "store.db")
    try:
        ingest_lines(store.app, "test", stream.numbered())
        store.projection.catch_up()
        pseudonym = store.app.persons.pseudonym  # the index knows persons by pseudonym, never the HiOrg id
        view = store.projection.view
        assert view.chats_of_person("drk-koeln", pseudonym("drk-koeln", BOB)) == ["4711", "4712"]
        assert view.chats_of_person("drk-koeln", pseudonym("drk-koeln", CAROL)) == ["4711"]
        assert view.chats_of_person("asb-bonn", pseudonym("asb-bonn", BOB)) == []
    finally:
        store.close()


def test_a_changed_policy_rebuilds_the_stored_deadlines(tmp_path):
    stream = staffed_stream()
    database = tmp_path / "store.db"
    store = store_at(database)
    try:
        ingest_lines(store.app, "test", stream.numbered())
        assert usecases.state(store, at(1, 12))["chats"][0]["read_only_at"] == "2026-12-03T18:00:00Z"
    finally:
        store.close()
    store = store_at(database, Policy(full_use=timedelta(days=1), view=timedelta(days=30)))
    try:
        assert usecases.state(store, at(1, 12))["chats"][0]["read_only_at"] == "2026-12-02T18:00:00Z"
    finally:
        store.close()


def test_a_projection_stopped_between_pages_resumes_where_it_stopped(tmp_path):
    stream = staffed_stream()  # the last message registers a person and changes its status: two events
    database = tmp_path / "store.db"
    store = store_at(database)
    ingest_lines(store.app, "test", stream.numbered())
    store.projection.page_size = 1
    store.projection.keep_rows = 0  # rows written after every page, as when a page holds more than it keeps
    last = store.app.recorder.max_notification_id()

    def stop_before_the_last_event(done: int, total: int) -> None:
        if done == total - 1:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            store.projection.catch_up(stop_before_the_last_event)
        assert store.projection.position() == last - 1
    finally:
        store.close()
    store = store_at(database)
    try:
        assert usecases.state(store, at(24, month=11)) == stream.simulate(at(24, month=11))
    finally:
        store.close()


def test_a_hiorg_id_shaped_like_a_pseudonym_is_a_member_like_any_other(tmp_path):
    lookalike = "ps-" + "ab" * 16  # a HiOrg id may take any form the contract allows, this one too
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=lookalike,
                 staff={BOB: "assigned"})  # fmt: skip
    expected = stream.simulate(at(22, month=11))
    assert expected["chats"][0]["members"] == sorted([lookalike, BOB])
    store = store_at(tmp_path / "store.db")
    try:
        ingest_lines(store.app, "test", stream.numbered())
        assert usecases.state(store, at(22, month=11)) == expected
    finally:
        store.close()
