"""`chatbridge reconcile` as an operator runs it, against the real Synapse: plan, apply, plan again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, org)
from tests.integration.synapse_support import Synapse as Synapse
from tests.integration.synapse_support import services_dir
from tests.support import Stream, at

pytestmark = pytest.mark.end_to_end
CHATBRIDGE = shutil.which("chatbridge", path=str(Path(sys.executable).parent)) or "chatbridge"


def chatbridge(
    *args: str, database: Path, token_file: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")} | extra
    env["CHATBRIDGE_DATABASE"] = str(database)
    env["CHATBRIDGE_MATRIX_TOKEN_FILE"] = str(token_file or services_dir() / "synapse" / "bot_token")
    return subprocess.run([CHATBRIDGE, *args], capture_output=True, text=True, env=env, timeout=300)


def test_plan_apply_and_plan_again(tmp_path: Path, synapse: Synapse, org: str):
    alice, bob = uuid.uuid4().hex, uuid.uuid4().hex
    synapse.register_user(f"@{org}.{alice}:localhost")
    stream = Stream()
    stream.org_on(at(1), org=org)
    stream.event("4711", at(1, 10), start=at(5, 9), end=at(5, 17), responsible=alice, staff={bob: "assigned"}, org=org)
    messages = tmp_path / "messages.jsonl"
    messages.write_bytes(b"\n".join(stream.lines) + b"\n")
    database = tmp_path / "store.db"
    assert chatbridge("ingest", str(messages), database=database).returncode == 0

    planned = chatbridge("reconcile", "--dry-run", "--now", "2026-12-02T00:00:00Z", database=database)
    assert planned.returncode == 2, planned.stderr
    assert f"chat {org}/4711 (generation 1, active)" in planned.stdout and "+ create chat" in planned.stdout
    assert "Plan: 3 changes in 1 chats." in planned.stdout  # bob has no account yet: he would stay pending
    assert "(stays pending: no chat account yet)" in planned.stdout
    as_json = chatbridge("reconcile", "--dry-run", "--json", "--now", "2026-12-02T00:00:00Z", database=database)
    document = json.loads(as_json.stdout)
    assert as_json.returncode == 2 and document["changes"] == 3 and document["pending"] == {"no chat account yet": 1}
    assert [s["kind"] for s in document["chats"][0]["steps"]] == [
        "create_chat",
        "add_member",
        "add_member",
        "set_moderator",
    ]

    applied = chatbridge("reconcile", "--once", "--json", "--now", "2026-12-02T00:00:00Z", database=database)
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert (result["steps"], result["pending"], result["failed"]) == (3, 1, 0)  # bob has no account yet

    again = chatbridge("reconcile", "--dry-run", "--now", "2026-12-02T00:00:00Z", database=database)
    assert again.returncode == 0 and f"+ member @{org}.{bob}:localhost (stays pending" in again.stdout
    synapse.register_user(f"@{org}.{bob}:localhost")
    assert chatbridge("reconcile", "--once", "--now", "2026-12-02T00:00:00Z", database=database).returncode == 0
    done = chatbridge("reconcile", "--dry-run", "--now", "2026-12-02T00:00:00Z", database=database)
    assert done.returncode == 0 and "No changes" in done.stdout
    read_only = chatbridge("reconcile", "--dry-run", "--now", "2026-12-07T17:00:00Z", database=database)
    assert read_only.returncode == 2 and "~ read-only: on" in read_only.stdout


def test_a_missing_token_is_a_clear_error(tmp_path: Path):
    result = chatbridge("reconcile", "--dry-run", database=tmp_path / "x.db", token_file=tmp_path / "nope")
    assert result.returncode == 1
    assert "no Matrix access token" in result.stderr and "CHATBRIDGE_MATRIX_TOKEN" in result.stderr


def test_an_unreachable_backend_is_an_error_not_a_plan(tmp_path: Path, synapse: Synapse, org: str):
    stream = Stream()
    stream.org_on(at(1), org=org)
    stream.event("1", at(1, 10), start=at(5, 9), end=at(5, 17), responsible=uuid.uuid4().hex, org=org)
    messages = tmp_path / "messages.jsonl"
    messages.write_bytes(b"\n".join(stream.lines) + b"\n")
    database = tmp_path / "store.db"
    assert chatbridge("ingest", str(messages), database=database).returncode == 0
    down = {"CHATBRIDGE_MATRIX_BASE_URL": "http://127.0.0.1:9", "CHATBRIDGE_MATRIX_MAX_ATTEMPTS": "2"}
    for mode in ("--dry-run", "--once"):
        result = chatbridge("reconcile", mode, database=database, **down)
        assert result.returncode == 1, (mode, result.stdout, result.stderr)
        assert "connection failed" in result.stderr + result.stdout and "Traceback" not in result.stderr
