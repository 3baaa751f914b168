"""`chatbridge audit` and `chatbridge gdpr` as an auditor runs them: documents on stdout, plain errors, exit codes."""

from __future__ import annotations

import csv
import io
import json
import secrets
from pathlib import Path

import pytest

from tests.end_to_end.test_cli import CHATBRIDGE, run
from tests.support import ALICE, BOB, ORG, Stream, at

pytestmark = pytest.mark.end_to_end


@pytest.fixture
def database(tmp_path: Path) -> Path:
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE, staff={BOB: "assigned"})
    messages = tmp_path / "messages.jsonl"
    messages.write_bytes(b"\n".join(stream.lines) + b"\n")
    path = tmp_path / "store.db"
    run("ingest", str(messages), database=path)
    return path


def test_queries_print_table_json_and_csv(database: Path) -> None:
    transfers = json.loads(run("audit", "transfers", "--org", ORG, "--format", "json", database=database).stdout)
    assert transfers["transfers"][0]["fields"]["email"] == "it@drk.example"
    timeline = run("audit", "chat", "--org", ORG, "--event", "4711", "--format", "csv", database=database).stdout
    rows = list(csv.DictReader(io.StringIO(timeline)))
    assert rows[0]["what"] == "chat enabled" and json.loads(rows[0]["details"])["responsible"] == ALICE
    assert "chat enabled" in run("audit", "chat", "--org", ORG, "--event", "4711", database=database).stdout
    report = run("audit", "records-of-processing", "--format", "csv", database=database).stdout
    assert "retention" in report and "2 days" in report and "30 days" in report


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "chat", "--org", ORG, "--event", "0000"),
        ("audit", "chat", "--org", "nobody", "--event", "4711"),
        ("audit", "person", "--org", ORG, "--person", "f" * 32),
        ("audit", "deletions", "--org", "nobody"),
        ("audit", "transfers", "--org", "nobody"),
        ("gdpr", "forget", "--org", ORG, "--person", "f" * 32),
    ],
)
def test_unknown_org_event_or_person_is_not_found(database: Path, args: tuple[str, ...]) -> None:
    result = run(*args, database=database, check=False)
    assert result.returncode == 1
    assert "not found" in result.stderr and "Traceback" not in result.stderr


def test_verify_ok_then_missing_or_wrong_key(database: Path, tmp_path: Path) -> None:
    assert run("audit", "verify", database=database).stdout.startswith("OK")
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    env["CHATBRIDGE_DATABASE"] = str(database)
    missing = subprocess.run(
        [CHATBRIDGE, "audit", "verify"], capture_output=True, text=True, timeout=120,
        env={**env, "CHATBRIDGE_AUDIT_KEY_FILE": str(tmp_path / "nowhere")},
    )  # fmt: skip
    assert missing.returncode == 2 and "no audit keys" in missing.stderr and "Traceback" not in missing.stderr
    broken = subprocess.run(
        [CHATBRIDGE, "audit", "verify"], capture_output=True, text=True, timeout=120,
        env={**env, "CHATBRIDGE_AUDIT_SIGNING_KEY": "zz", "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": "00" * 32},
    )  # fmt: skip
    assert broken.returncode == 2 and "signing key is not hex" in broken.stderr and "zz" not in broken.stderr
    other = subprocess.run(
        [CHATBRIDGE, "audit", "verify"], capture_output=True, text=True, timeout=120,
        env={**env, "CHATBRIDGE_AUDIT_SIGNING_KEY": secrets.token_hex(32), "CHATBRIDGE_AUDIT_PSEUDONYM_KEY": "00" * 32},
    )  # fmt: skip
    assert other.returncode == 1 and "signed by another key" in other.stdout


def test_forget_then_the_person_appears_as_pseudonym(database: Path) -> None:
    forgot = run("gdpr", "forget", "--org", ORG, "--person", BOB, database=database).stdout
    pseudonym = forgot.strip().rsplit(" ", 1)[-1]
    assert pseudonym.startswith("ps-") and BOB not in forgot
    person = json.loads(
        run("audit", "person", "--org", ORG, "--person", BOB, "--format", "json", database=database).stdout
    )
    assert person == {"org": ORG, "person": pseudonym, "forgotten": True, "access": []}
    timeline = run("audit", "chat", "--org", ORG, "--event", "4711", "--format", "json", database=database).stdout
    assert BOB not in timeline and pseudonym in timeline
    assert BOB.encode() not in b"".join(p.read_bytes() for p in database.parent.glob("store.db*"))
    assert run("audit", "verify", database=database).stdout.startswith("OK")
