"""The installed `chatbridge` command, run as an operator would: documents on stdout, errors on stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ALICE, BOB, Stream, at

CHATBRIDGE = shutil.which("chatbridge", path=str(Path(sys.executable).parent)) or "chatbridge"


def run(*args: str, database: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    if database is not None:
        env["CHATBRIDGE_DATABASE"] = str(database)
    result = subprocess.run([CHATBRIDGE, *args], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def messages(tmp_path: Path) -> Path:
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE, staff={BOB: "assigned"})
    stream.raw("this is not json")
    stream.staffing("4711", BOB, "assigned", at(21, month=11))
    stream.raw(stream.lines[-1])
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"\n".join(stream.lines) + b"\n")
    return path


def test_simulate_prints_the_contract_document(messages: Path):
    document = json.loads(run("simulate", str(messages), "--now", "2026-12-04T00:00:00Z").stdout)
    assert document == {
        "chats": [{"org": "drk-koeln", "event_id": "4711", "generation": 1, "phase": "read_only",
                   "members": [ALICE, BOB], "moderators": [ALICE],
                   "read_only_at": "2026-12-03T18:00:00Z", "delete_at": "2027-01-02T18:00:00Z"}],
        "rejected": [{"line": 3, "reason": "not valid JSON (Expecting value at column 1)"}],
        "ignored": 0,
        "duplicates": 1,
    }  # fmt: skip


def test_simulate_takes_full_use_and_view(messages: Path):
    document = json.loads(run("simulate", str(messages), "--now", "2026-12-01T12:00:00+01:00",
                              "--full-use", "PT12H", "--view", "P7D").stdout)  # fmt: skip
    assert document["chats"][0]["read_only_at"] == "2026-12-02T06:00:00Z"
    assert document["chats"][0]["delete_at"] == "2026-12-09T06:00:00Z"


def test_ingest_then_state_prints_what_simulate_prints(messages: Path, tmp_path: Path):
    database = tmp_path / "store" / "chatbridge.db"
    ingested = run("ingest", str(messages), database=database)
    assert "line 3: not valid JSON" in ingested.stderr
    state = run("state", "--now", "2026-12-04T00:00:00Z", "--json", database=database).stdout
    assert json.loads(state) == json.loads(run("simulate", str(messages), "--now", "2026-12-04T00:00:00Z").stdout)
    table = run("state", "--now", "2026-12-04T00:00:00Z", database=database).stdout
    assert "read_only" in table and "1 chats; rejected 1, ignored 0, duplicates 1" in table


def test_replay_rebuilds_the_projection_with_the_same_answer(messages: Path, tmp_path: Path):
    database = tmp_path / "chatbridge.db"
    run("ingest", str(messages), database=database)
    before = run("state", "--now", "2026-12-04T00:00:00Z", "--json", database=database).stdout
    replayed = run("replay", database=database)
    assert "replayed 4 events into 1 chats" in replayed.stderr
    assert run("state", "--now", "2026-12-04T00:00:00Z", "--json", database=database).stdout == before


def test_schema_is_json_schema_for_every_message_type():
    schema = json.loads(run("schema").stdout)
    assert len(schema["oneOf"]) == 7


def test_bad_arguments_get_one_clear_line_and_a_nonzero_exit(messages: Path, tmp_path: Path):
    missing = run("simulate", str(tmp_path / "nope.jsonl"), "--now", "2026-12-04T00:00:00Z", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    bad_now = run("simulate", str(messages), "--now", "next tuesday", check=False)
    assert bad_now.returncode == 2 and "not an ISO 8601 date-time" in bad_now.stderr
    bad_view = run("simulate", str(messages), "--now", "2026-12-04", "--view", "a month", check=False)
    assert bad_view.returncode == 2 and "not an ISO 8601 duration" in bad_view.stderr
