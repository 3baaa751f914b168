"""A store written by the previous release, opened with this one: its schema version is found to be the old one, an
older store is refused until migrated, `chatbridge migrate` brings it up, and it then answers `state` as the old
release did and still verifies. A newer store is refused. The same path on PostgreSQL, from a store without the
version table. The previous release's store is tests/fixtures/previous_release (made by make_previous_store.py)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chatbridge import bootstrap
from chatbridge.bootstrap import open_store
from chatbridge.cli import app as chatbridge
from chatbridge.cli.usecases import state
from chatbridge.consumers.jsonl import ingest_lines, read_lines
from chatbridge.journal import schema
from chatbridge.settings import Settings

FIXTURE = Path(__file__).parents[1] / "fixtures" / "previous_release"
NOW = datetime.fromisoformat("2026-11-26T12:00:00+00:00")  # as make_previous_store.py asked the old release


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _answer(settings: Settings) -> dict[str, Any]:
    store = open_store(settings, create=False)
    try:
        return state(store, NOW)
    finally:
        store.close()


def _recorded_answer() -> dict[str, Any]:
    answer: dict[str, Any] = json.loads((FIXTURE / "state.json").read_text())
    return answer


def _verify(env: dict[str, str]) -> None:
    result = CliRunner().invoke(chatbridge, ["audit", "verify", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True, result.stdout


@pytest.fixture
def previous_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A copy of the previous release's SQLite store and its key file, as chatbridge's environment variables."""
    for name in ("store.sqlite", "audit-keys.json"):
        shutil.copyfile(FIXTURE / name, tmp_path / name)
        (tmp_path / name).chmod(0o600)
    env = {
        "CHATBRIDGE_STORE": "sqlite",
        "CHATBRIDGE_DATABASE": str(tmp_path / "store.sqlite"),
        "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "audit-keys.json"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def _sqlite_version(env: dict[str, str]) -> int | None:
    with closing(sqlite3.connect(env["CHATBRIDGE_DATABASE"], isolation_level=None)) as connection:
        return schema.stored_version(connection, "?")


def test_the_previous_release_store_is_refused_until_migrated_then_answers_as_before(
    previous_store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert schema.CURRENT > schema.UNVERSIONED
    assert _sqlite_version(previous_store) == schema.UNVERSIONED
    with (
        closing(sqlite3.connect(previous_store["CHATBRIDGE_DATABASE"], isolation_level=None)) as connection,
        pytest.raises(schema.SchemaVersionError) as refused,
    ):
        schema.check_schema(connection, "?", migrate=False)
    assert str(refused.value) == (
        f"the store is at schema 1, this release needs {schema.CURRENT}: run `chatbridge migrate` "
        "(or start with CHATBRIDGE_MIGRATE_ON_START=true)"
    )
    with pytest.raises(schema.SchemaVersionError):  # every command opening the store refuses it, `state` too
        _answer(_settings(previous_store, monkeypatch))
    refused_command = CliRunner().invoke(chatbridge, ["state", "--now", "2026-11-26T12:00:00Z"], env=previous_store)
    assert refused_command.exit_code != 0

    dry = CliRunner().invoke(chatbridge, ["migrate", "--dry-run"], env=previous_store)
    assert dry.exit_code == 0, dry.output
    assert f"the store is at schema 1; this release needs {schema.CURRENT}" in dry.stderr
    assert all(step.description in dry.stderr for step in schema.pending(1))
    assert "dry run: nothing changed" in dry.stderr
    assert _sqlite_version(previous_store) == schema.UNVERSIONED

    done = CliRunner().invoke(chatbridge, ["migrate"], env=previous_store)
    assert done.exit_code == 0, done.output
    assert _sqlite_version(previous_store) == schema.CURRENT
    again = CliRunner().invoke(chatbridge, ["migrate"], env=previous_store)
    assert again.exit_code == 0 and "nothing to do" in again.stderr, again.output
    with closing(sqlite3.connect(previous_store["CHATBRIDGE_DATABASE"], isolation_level=None)) as connection:
        assert schema.check_schema(connection, "?", migrate=False) == []
        history = connection.execute("SELECT version FROM chatbridge_schema_version ORDER BY version").fetchall()
    assert [version for (version,) in history] == [1, schema.CURRENT]

    assert _answer(_settings(previous_store, monkeypatch)) == _recorded_answer()
    _verify(previous_store)


def test_migration_on_start_brings_the_store_up_in_one_step(
    previous_store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings({**previous_store, "CHATBRIDGE_MIGRATE_ON_START": "true"}, monkeypatch)
    assert _answer(settings) == _recorded_answer()
    assert _sqlite_version(previous_store) == schema.CURRENT


def test_a_store_of_a_newer_release_is_always_refused(previous_store: dict[str, str]) -> None:
    newer = schema.CURRENT + 1
    with closing(sqlite3.connect(previous_store["CHATBRIDGE_DATABASE"], isolation_level=None)) as connection:
        schema.check_schema(connection, "?", migrate=True)
        connection.execute(
            "INSERT INTO chatbridge_schema_version VALUES (?, '2030-01-01T00:00:00Z', 'a later layout')", (newer,)
        )
        for migrating in (False, True):
            with pytest.raises(schema.SchemaVersionError, match=f"schema {newer}, newer than this release's"):
                schema.check_schema(connection, "?", migrate=migrating)
    refused = CliRunner().invoke(chatbridge, ["migrate"], env=previous_store)
    assert isinstance(refused.exception, schema.SchemaVersionError)


def test_a_new_store_is_made_at_this_release_version(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "new.sqlite", isolation_level=None)) as connection:
        assert schema.stored_version(connection, "?") is None
        assert schema.check_schema(connection, "?", migrate=False) == []
        assert schema.stored_version(connection, "?") == schema.CURRENT


def test_the_migrations_add_what_an_older_layout_lacks(previous_store: dict[str, str]) -> None:
    # the layout before checkpoints chained and persons had key versions: those columns and that table missing
    dropped = {"audit_checkpoints": ("records", "previous"), "chatbridge_person_keys": ("erased_until", "named_until")}
    with closing(sqlite3.connect(previous_store["CHATBRIDGE_DATABASE"], isolation_level=None)) as connection:
        for table, columns in dropped.items():
            for column in columns:
                connection.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        connection.execute("DROP TABLE chatbridge_person_key_versions")
        schema.check_schema(connection, "?", migrate=True)
        for table, columns in dropped.items():
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            assert set(columns) <= present
        deleted = connection.execute(
            "SELECT COUNT(*) FROM chatbridge_person_key_versions WHERE person_key IS NULL"
        ).fetchone()
        assert deleted == (1,)  # the one deleted person's tombstone became a destroyed key version 1
    assert _sqlite_version(previous_store) == schema.CURRENT


def test_postgres_store_without_the_version_table_is_migrated(
    postgres_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    env = {**postgres_env, "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "audit-keys.json")}
    settings = _settings(env, monkeypatch)
    store = open_store(settings)  # the layout as this release makes it, without recording a version
    try:
        ingest_lines(store.app, f"file:{FIXTURE / 'messages.jsonl'}", read_lines(FIXTURE / "messages.jsonl"))
    finally:
        store.close()
    with bootstrap.store_connection(settings) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {schema.VERSION_TABLE}")  # as the previous release left it
        assert schema.stored_version(connection, "%s") == schema.UNVERSIONED
        with pytest.raises(schema.SchemaVersionError, match="run `chatbridge migrate`"):
            schema.check_schema(connection, "%s", migrate=False)

    done = CliRunner().invoke(chatbridge, ["migrate"], env=env)
    assert done.exit_code == 0, done.output
    with bootstrap.store_connection(settings) as connection:
        assert schema.stored_version(connection, "%s") == schema.CURRENT
        assert schema.check_schema(connection, "%s", migrate=False) == []
        connection.execute(
            f"INSERT INTO {schema.VERSION_TABLE} VALUES (%s, '2030-01-01T00:00:00Z', 'a later layout')",
            (schema.CURRENT + 1,),
        )
        with pytest.raises(schema.SchemaVersionError, match="newer than this release's"):
            schema.check_schema(connection, "%s", migrate=True)
        connection.execute(f"DELETE FROM {schema.VERSION_TABLE} WHERE version > %s", (schema.CURRENT,))
        assert isinstance(connection, psycopg.Connection)

    answer, recorded = _answer(settings), _recorded_answer()
    assert answer["chats"] == recorded["chats"]
    assert (answer["ignored"], answer["duplicates"]) == (recorded["ignored"], recorded["duplicates"])
    assert [r["line"] for r in answer["rejected"]] == [r["line"] for r in recorded["rejected"]]
    _verify(env)
