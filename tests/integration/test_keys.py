"""The audit keys over the years: `keys generate` makes a key file once, `keys show` names the configured keys without
showing a secret, and a store refuses keys it was not made with — on SQLite and on PostgreSQL, through the installed
command as an operator runs it. An auditor with the verify key alone still verifies, and a store made before the
store kept its record of the keys is adopted on its first open with the keys that signed it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chatbridge.bootstrap import store_exists, wipe_store
from chatbridge.journal import chain
from chatbridge.journal.keys import KEY_CHECK_TABLE, pseudonym_fingerprint
from chatbridge.settings import Settings
from tests.event_time_streams import generate
from tests.kafka_support import CHATBRIDGE, settings_of
from tests.services import ROOT, postgres_environment, throwaway_postgres_database

pytestmark = pytest.mark.integration

NOW = "2026-12-05T12:00:00Z"
STREAM = generate(seed=21, partitions=3)


def chatbridge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    return subprocess.run([CHATBRIDGE, *args], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def secrets_of(key_file: Path) -> list[str]:
    stored = json.loads(key_file.read_text())
    return [stored["signing_key"], stored["pseudonym_key"]]


def public_names(key_file: Path) -> dict[str, str]:
    signing_hex, pseudonym_hex = secrets_of(key_file)
    public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(signing_hex)).public_key()
    return {
        "verify_key": public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
        "key_id": chain.key_id(public),
        "pseudonym_key_fingerprint": pseudonym_fingerprint(bytes.fromhex(pseudonym_hex)),
    }


@pytest.fixture(scope="module")
def messages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("messages") / "messages.jsonl"
    path.write_bytes(b"".join(m.line + b"\n" for m in STREAM.messages))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of an empty store (no keys named: each test names its key file)."""
    if request.param == "sqlite":
        yield {"CHATBRIDGE_STORE": "sqlite", "CHATBRIDGE_DATABASE": str(tmp_path / "store.db")}
        return
    server = request.getfixturevalue("postgres_server")
    with throwaway_postgres_database(server) as name:
        yield postgres_environment(server, name)


def key_check_rows(env: dict[str, str]) -> list[dict[str, Any]]:
    """The store's record of its keys, read past chatbridge ([] when the table is not there)."""
    settings = settings_of(env)
    query = f"SELECT key_id, pseudonym_fingerprint AS pseudonym_key_fingerprint, origin FROM {KEY_CHECK_TABLE}"
    if settings.store == "sqlite":
        with sqlite3.connect(settings.database) as db:
            db.row_factory = sqlite3.Row
            try:
                return [dict(row) for row in db.execute(query)]
            except sqlite3.OperationalError:
                return []
    with _postgres(settings) as db:
        if db.execute("SELECT to_regclass(%s)", (KEY_CHECK_TABLE,)).fetchone()[0] is None:
            return []
        cursor = db.execute(query)
        columns = [c.name for c in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def drop_key_check(env: dict[str, str]) -> None:
    """Make the store one of a release before the record of its keys."""
    settings = settings_of(env)
    if settings.store == "sqlite":
        with sqlite3.connect(settings.database) as db:
            db.execute(f"DROP TABLE {KEY_CHECK_TABLE}")
        return
    with _postgres(settings) as db:
        db.execute(f"DROP TABLE {KEY_CHECK_TABLE}")


def _postgres(settings: Settings) -> Any:
    return psycopg.connect(host=settings.postgres_host, port=settings.postgres_port, dbname=settings.postgres_dbname,
                           user=settings.postgres_user, password=settings.postgres_password.get_secret_value(),
                           autocommit=True)  # fmt: skip


def test_generate_writes_a_private_key_file_once_and_show_names_it_without_a_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "chatbridge.audit-keys"
    made = chatbridge({}, "keys", "generate", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    names = public_names(key_file)
    for secret in secrets_of(key_file):
        assert secret not in made.stdout + made.stderr
    assert str(key_file) in made.stdout
    assert all(value in made.stdout for value in names.values()), made.stdout

    shown = chatbridge({"CHATBRIDGE_AUDIT_KEY_FILE": str(key_file)}, "keys", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {**names, "signing_key_configured": True}
    table = chatbridge({"CHATBRIDGE_AUDIT_KEY_FILE": str(key_file)}, "keys", "show")
    assert all(value in table.stdout for value in names.values()), table.stdout
    for secret in secrets_of(key_file):
        assert secret not in shown.stdout + shown.stderr + table.stdout + table.stderr

    # the keys given directly are named the same way; an auditor's verify key alone is named too
    signing, pseudonym = secrets_of(key_file)
    direct = chatbridge({"CHATBRIDGE_AUDIT_SIGNING_KEY": signing, "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": pseudonym,
                         "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "none")}, "keys", "show", "--json")  # fmt: skip
    assert json.loads(direct.stdout) == json.loads(shown.stdout)
    assert signing not in direct.stdout + direct.stderr and pseudonym not in direct.stdout + direct.stderr
    auditor = chatbridge({"CHATBRIDGE_AUDIT_VERIFY_KEY": names["verify_key"], "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": pseudonym,
                          "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "none")}, "keys", "show", "--json")  # fmt: skip
    assert json.loads(auditor.stdout) == {**names, "signing_key_configured": False}

    # an existing file is never overwritten
    kept = key_file.read_bytes()
    again = chatbridge({}, "keys", "generate", "--out", str(key_file))
    assert again.returncode == 2
    assert "exists: a key file is never overwritten" in one_line(again)
    assert key_file.read_bytes() == kept
    # nothing configured: `show` makes no key file
    nothing = chatbridge({"CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "none")}, "keys", "show")
    assert nothing.returncode == 2 and "no audit keys" in one_line(nothing)
    assert not (tmp_path / "none").exists()


def test_a_store_refuses_keys_it_was_not_made_with(store: dict[str, str], messages: Path, tmp_path: Path) -> None:
    own, other = tmp_path / "own.keys", tmp_path / "other.keys"
    for key_file in (own, other):
        assert chatbridge({}, "keys", "generate", "--out", str(key_file)).returncode == 0
    env = {**store, "CHATBRIDGE_AUDIT_KEY_FILE": str(own)}
    assert chatbridge(env, "ingest", str(messages)).returncode == 0
    names = public_names(own)
    assert key_check_rows(env) == [{"key_id": names["key_id"], "origin": "made",
                                    "pseudonym_key_fingerprint": names["pseudonym_key_fingerprint"]}]  # fmt: skip
    state = chatbridge(env, "state", "--now", NOW, "--json").stdout

    # a new key file (a recreated container's): every command that opens the store refuses it, naming the key
    recreated = {**store, "CHATBRIDGE_AUDIT_KEY_FILE": str(other)}
    for args in (("ingest", str(messages)), ("state", "--now", NOW), ("gdpr", "forget", "--org", "x", "--person", "y"),
                 ("audit", "deletions", "--org", STREAM.orgs[0])):  # fmt: skip
        result = chatbridge(recreated, *args)
        assert result.returncode == 2, (args, result.stderr)
        line = one_line(result)
        assert "the signing key does not fit this store" in line, line
        assert names["key_id"] in line and public_names(other)["key_id"] in line
    # the right signing key with another pseudonym key: known persons would get new pseudonyms
    signing, _ = secrets_of(own)
    _, other_pseudonym = secrets_of(other)
    mixed = {**store, "CHATBRIDGE_AUDIT_SIGNING_KEY": signing, "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": other_pseudonym}
    for args in (("ingest", str(messages)), ("audit", "person", "--org", STREAM.orgs[0], "--person", "p1")):
        result = chatbridge(mixed, *args)
        assert result.returncode == 2, (args, result.stderr)
        line = one_line(result)
        assert "the pseudonym key does not fit this store" in line, line
        assert names["pseudonym_key_fingerprint"] in line
        assert signing not in result.stderr and other_pseudonym not in result.stderr

    # nothing was stored or recorded on the way: the store's own keys still open it, and its log verifies
    assert chatbridge(env, "state", "--now", NOW, "--json").stdout == state
    assert key_check_rows(env)[0]["key_id"] == names["key_id"]
    verified = chatbridge(env, "audit", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr


def test_an_auditor_with_the_verify_key_alone_verifies(store: dict[str, str], messages: Path, tmp_path: Path) -> None:
    own = tmp_path / "own.keys"
    assert chatbridge({}, "keys", "generate", "--out", str(own)).returncode == 0
    assert chatbridge({**store, "CHATBRIDGE_AUDIT_KEY_FILE": str(own)}, "ingest", str(messages)).returncode == 0
    verify_key = json.loads(chatbridge({"CHATBRIDGE_AUDIT_KEY_FILE": str(own)}, "keys", "show", "--json").stdout)[
        "verify_key"
    ]
    auditor = {
        **store,
        "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "not-given"),
        "CHATBRIDGE_AUDIT_VERIFY_KEY": verify_key,
    }
    result = chatbridge(auditor, "audit", "verify")
    assert result.returncode == 0 and result.stdout.startswith("OK"), result.stdout + result.stderr
    # with the pseudonym key too, the auditor's queries open the store; another verify key is named as not fitting
    _, pseudonym = secrets_of(own)
    querying = {**auditor, "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": pseudonym}
    deletions = chatbridge(querying, "audit", "deletions", "--org", STREAM.orgs[0], "--now", NOW, "--format", "json")
    assert deletions.returncode == 0, deletions.stderr
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    refused = chatbridge({**querying, "CHATBRIDGE_AUDIT_VERIFY_KEY": stranger}, "audit", "deletions", "--org",
                         STREAM.orgs[0], "--now", NOW)  # fmt: skip
    assert refused.returncode == 2 and "the verify key does not fit this store" in one_line(refused)
    assert not (tmp_path / "not-given").exists()


def test_a_store_made_before_the_check_is_adopted_on_first_open(
    store: dict[str, str], messages: Path, tmp_path: Path
) -> None:
    own, other = tmp_path / "own.keys", tmp_path / "other.keys"
    for key_file in (own, other):
        assert chatbridge({}, "keys", "generate", "--out", str(key_file)).returncode == 0
    env = {**store, "CHATBRIDGE_AUDIT_KEY_FILE": str(own)}
    assert chatbridge(env, "ingest", str(messages)).returncode == 0
    drop_key_check(env)
    assert key_check_rows(env) == []

    # other keys are not adopted: its checkpoints are signed by the store's own signing key
    result = chatbridge({**store, "CHATBRIDGE_AUDIT_KEY_FILE": str(other)}, "state", "--now", NOW)
    assert result.returncode == 2
    assert "its last checkpoint is signed by key " + public_names(own)["key_id"] in one_line(result)
    assert key_check_rows(env) == []

    # the keys that signed it are adopted on the first open, and from then on the pseudonym key is held to them too
    assert chatbridge(env, "state", "--now", NOW).returncode == 0
    names = public_names(own)
    assert key_check_rows(env) == [{"key_id": names["key_id"], "origin": "adopted",
                                    "pseudonym_key_fingerprint": names["pseudonym_key_fingerprint"]}]  # fmt: skip
    signing, _ = secrets_of(own)
    _, other_pseudonym = secrets_of(other)
    mixed = {**store, "CHATBRIDGE_AUDIT_SIGNING_KEY": signing, "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": other_pseudonym}
    assert "the pseudonym key does not fit" in one_line(chatbridge(mixed, "ingest", str(messages)))


def test_the_record_of_the_keys_outlives_a_wipe_for_a_rebuild_from_kafka(
    postgres_server: dict[str, object], messages: Path, tmp_path: Path
) -> None:
    own, other = tmp_path / "own.keys", tmp_path / "other.keys"
    for key_file in (own, other):
        assert chatbridge({}, "keys", "generate", "--out", str(key_file)).returncode == 0
    with throwaway_postgres_database(postgres_server) as name:
        env = {**postgres_environment(postgres_server, name), "CHATBRIDGE_AUDIT_KEY_FILE": str(own)}
        assert chatbridge(env, "ingest", str(messages)).returncode == 0
        recorded = key_check_rows(env)
        settings = settings_of(env)
        wipe_store(settings)  # what `replay --from-kafka --force` does first
        assert not store_exists(settings)
        assert key_check_rows(env) == recorded  # the person keys stay, and the keys that find them with them
        refused = chatbridge({**env, "CHATBRIDGE_AUDIT_KEY_FILE": str(other)}, "ingest", str(messages))
        assert refused.returncode == 2 and "does not fit this store" in one_line(refused)
        assert chatbridge(env, "ingest", str(messages)).returncode == 0
