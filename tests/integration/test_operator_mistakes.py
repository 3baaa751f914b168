"""Every mistake an operator can make gets one clear line and a documented exit code, and loses nothing.

Each test runs the installed `chatbridge` command as an operator would and asserts what they see: the exit code,
one line on standard error naming what is wrong, and that nothing was made or lost on the way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.event_time_streams import generate, partition_of
from tests.kafka_support import CHATBRIDGE
from tests.services import ROOT, postgres_environment, throwaway_postgres_database

pytestmark = pytest.mark.integration

NOW = "2026-12-05T12:00:00Z"
KEY = "11" * 32  # a well-formed key (32 bytes, hex)


def chatbridge(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # the operator's environment, without whatever store or keys the test runner's own environment names
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    return subprocess.run(
        [CHATBRIDGE, *args], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line a failure prints (no traceback, no box)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


STREAM = generate(seed=15, partitions=6)


@pytest.fixture(scope="module")
def messages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("messages") / "messages.jsonl"
    path.write_bytes(b"".join(m.line + b"\n" for m in STREAM.messages))
    return path


def sqlite(path: Path) -> dict[str, str]:
    return {"CHATBRIDGE_STORE": "sqlite", "CHATBRIDGE_DATABASE": str(path)}


def test_read_commands_on_a_mistyped_store_path_say_so_and_make_nothing(tmp_path: Path):
    missing = tmp_path / "typo" / "store.db"
    env = sqlite(missing)
    with_verify_key = {**env, "CHATBRIDGE_AUDIT_VERIFY_KEY": "22" * 32, "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": KEY}
    for environment, args in [
        (env, ("state", "--now", NOW, "--json")),
        (env, ("replay",)),
        (env, ("audit", "person", "--org", "drk-koeln", "--person", "p1")),
        (env, ("gdpr", "forget", "--org", "drk-koeln", "--person", "p1")),
        (with_verify_key, ("audit", "verify")),
    ]:
        result = chatbridge(environment, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert f"CHATBRIDGE_DATABASE {missing}: no chatbridge store there" in one_line(result), args
        assert result.stdout == "", args  # no empty document
    assert not missing.parent.exists(), "a read command made the directory (and a store, and keys)"


def test_a_path_that_is_not_a_store_is_named(tmp_path: Path, messages: Path):
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("shopping list\n")
    cases = [
        (tmp_path, "is a directory"),
        (not_a_database, "not an SQLite database"),
    ]
    for path, expected in cases:
        for args in (("state", "--now", NOW), ("ingest", str(messages))):
            result = chatbridge(sqlite(path), *args)
            assert result.returncode == 1, result.stderr
            assert expected in one_line(result)
    assert not_a_database.read_text() == "shopping list\n"


def test_audit_keys_that_do_not_fit_are_one_line_and_config_check_finds_them_first(tmp_path: Path, messages: Path):
    env = sqlite(tmp_path / "store.db")
    assert chatbridge(env, "ingest", str(messages)).returncode == 0
    short = {**env, "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": "abcd", "CHATBRIDGE_AUDIT_SIGNING_KEY": KEY}
    for args in (("state", "--now", NOW), ("ingest", str(messages)), ("replay",)):
        result = chatbridge(short, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "the pseudonym key must be 32 bytes" in one_line(result), args
    check = chatbridge(short, "config", "check")
    assert check.returncode == 1
    assert "audit keys: the pseudonym key must be 32 bytes" in check.stderr

    key_file = tmp_path / "store.db.audit-keys"
    kept = key_file.read_bytes()
    key_file.write_text("{not json")
    result = chatbridge(env, "state", "--now", NOW)
    assert result.returncode == 2
    assert "is unreadable" in one_line(result)
    key_file.write_bytes(kept)


def test_keys_are_never_made_anew_beside_a_store_that_holds_data(tmp_path: Path, messages: Path):
    env = sqlite(tmp_path / "store.db")
    assert chatbridge(env, "ingest", str(messages)).returncode == 0
    key_file = tmp_path / "store.db.audit-keys"
    key_file.rename(tmp_path / "elsewhere")
    for args in (("ingest", str(messages)), ("state", "--now", NOW)):
        result = chatbridge(env, *args)
        assert result.returncode == 2, result.stderr
        assert "the store holds data, so no new keys are made" in one_line(result)
    assert not key_file.exists()
    check = chatbridge(env, "config", "check")
    assert check.returncode == 1 and "audit keys: no audit keys" in check.stderr
    (tmp_path / "elsewhere").rename(key_file)
    assert chatbridge(env, "state", "--now", NOW).returncode == 0


def test_a_bad_option_value_is_one_line_with_exit_2(tmp_path: Path):
    result = chatbridge(sqlite(tmp_path / "store.db"), "state", "--now", "next tuesday")
    assert result.returncode == 2
    assert "Invalid value for --now: 'next tuesday' is not an ISO 8601 date-time" in one_line(result)
    result = chatbridge(sqlite(tmp_path / "store.db"), "state")
    assert result.returncode == 2 and "Missing option '--now'" in one_line(result)


def test_an_unreachable_postgres_is_one_line(tmp_path: Path):
    env = {"CHATBRIDGE_STORE": "postgres", "CHATBRIDGE_POSTGRES_HOST": "127.0.0.1", "CHATBRIDGE_POSTGRES_PORT": "1",
           "CHATBRIDGE_POSTGRES_PASSWORD": "secret-never-printed", "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "k")}  # fmt: skip
    result = chatbridge(env, "state", "--now", NOW)
    assert result.returncode == 1
    line = one_line(result)
    assert "CHATBRIDGE_POSTGRES_DBNAME chatbridge at 127.0.0.1:1" in line and "refused" in line.lower()
    assert "secret-never-printed" not in result.stderr
    assert not (tmp_path / "k").exists()


def test_a_postgres_database_without_a_store_is_not_answered_from(postgres_server: dict[str, object], tmp_path: Path):
    with throwaway_postgres_database(postgres_server) as name:
        env = {**postgres_environment(postgres_server, name), "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "keys")}
        result = chatbridge(env, "state", "--now", NOW, "--json")
        assert result.returncode == 1
        assert f"CHATBRIDGE_POSTGRES_DBNAME {name}" in one_line(result) and "no chatbridge store there" in result.stderr
        assert not (tmp_path / "keys").exists()


def test_a_replaced_file_is_refused_and_read_afresh_when_asked(tmp_path: Path, messages: Path):
    env = sqlite(tmp_path / "store.db")
    lines = messages.read_bytes().splitlines(keepends=True)
    current = tmp_path / "today.jsonl"
    current.write_bytes(b"".join(lines[:60]))
    assert chatbridge(env, "ingest", str(current)).returncode == 0
    current.write_bytes(b"".join(lines[100:130]))  # replaced by a shorter file of new lines
    result = chatbridge(env, "ingest", str(current))
    assert result.returncode == 1
    assert "has 30 lines, fewer than the 60 ingested from it before" in one_line(result)
    current.write_bytes(b"".join(lines[100:170]))  # replaced by a longer one
    result = chatbridge(env, "ingest", str(current))
    assert result.returncode == 1 and "its first 60 lines are not the ones ingested before" in one_line(result)
    afresh = chatbridge(env, "ingest", "--afresh", str(current))
    assert afresh.returncode == 0, afresh.stderr
    assert "applied" in afresh.stderr
    current.write_bytes(b"".join(lines[100:180]))  # appended to: only the new lines
    appended = chatbridge(env, "ingest", str(current))
    assert appended.returncode == 0 and "resumed after line 70" in appended.stderr


def test_many_commands_at_once_on_one_sqlite_store_all_succeed_and_lose_nothing(tmp_path: Path, messages: Path):
    """Six `ingest`s and six `state`s at once, on a store none of them found. The six files are the stream's six
    partitions (each key's messages in one file, in order), as six consumers would store them."""
    env = sqlite(tmp_path / "store.db")
    parts = []
    for index in range(6):
        part = tmp_path / f"part-{index}.jsonl"
        part.write_bytes(b"".join(m.line + b"\n" for m in STREAM.messages if partition_of(m.key, 6) == index))
        parts.append(part)
    with ThreadPoolExecutor(max_workers=12) as pool:
        ingests = [pool.submit(chatbridge, {**env, "CHATBRIDGE_BATCH_SIZE": "5"}, "ingest", str(p)) for p in parts]
        time.sleep(1)  # the store exists by now: `state` needs one
        states = [pool.submit(chatbridge, env, "state", "--now", NOW, "--json") for _ in range(6)]
        results = [future.result() for future in ingests + states]
    for result in results:
        assert result.returncode in (0, 1), result.stderr
        if result.returncode == 1:  # a `state` that came before the first ingest made the store
            assert "no chatbridge store there" in one_line(result)
    assert all(r.returncode == 0 for r in results[:6]), [r.stderr for r in results[:6]]
    assert any(r.returncode == 0 for r in results[6:])
    got = json.loads(chatbridge(env, "state", "--now", NOW, "--json").stdout)
    expected = json.loads(chatbridge({}, "simulate", str(messages), "--now", NOW).stdout)
    assert got["chats"] == expected["chats"]
    assert (got["ignored"], got["duplicates"]) == (expected["ignored"], expected["duplicates"])


def test_run_without_a_broker_backs_off_and_honours_its_idle_limit_and_sigterm(tmp_path: Path):
    env = {**sqlite(tmp_path / "store.db"), "CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "CHATBRIDGE_LOG_FORMAT": "json", "CHATBRIDGE_HTTP_PORT": "0"}  # fmt: skip
    started = time.monotonic()
    idle = chatbridge(env, "run", "--no-reconcile", "--exit-when-idle", "2", timeout=60)
    assert idle.returncode == 0, idle.stderr
    assert time.monotonic() - started < 30
    logged = [json.loads(line) for line in idle.stderr.splitlines() if line.startswith("{")]
    assert any("does not answer" in entry["event"] or "never answered" in entry["event"] for entry in logged)
    assert "Traceback" not in idle.stderr

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    worker = subprocess.Popen([CHATBRIDGE, "run", "--no-reconcile"], env={**clean, **env}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(4)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr
