"""`make demo` in its short mode: it runs to its end, and its report says what Synapse really holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chatbridge.backends.matrix import MatrixBackend
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, matrix, org)
from tests.services import ROOT

pytestmark = pytest.mark.integration


def test_the_short_demo_reports_what_synapse_holds(kafka_bootstrap: str, matrix: MatrixBackend, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--short", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Where to look next" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    stops = report["stops"]
    assert [stop["pass"]["failed"] for stop in stops] == [0, 0, 0, 0]
    first = stops[0]
    assert first["phases"] == {"active": len(first["chats"])}
    deleted = [d for d in report["deletions"] if [d["org"], d["event_id"]] == report["deleted"]]
    assert [d["at"] for d in deleted] == [stops[1]["now"]]  # event.deleted: gone at the next look, not 30 days on
    missing: list[str] = []
    for chat in first["chats"]:  # the report's members at the first stop are those Synapse had then
        assert set(chat["in_synapse"]) <= set(chat["desired"])
        missing += set(chat["desired"]) - set(chat["in_synapse"])
    assert len(missing) >= 2 and len(set(missing)) == 1  # only the helper without a chat account is pending
    last = stops[-1]
    assert set(last["phases"]) == {"deleted"}
    for chat in last["chats"]:  # what the report says is gone is gone from Synapse
        assert chat["in_synapse"] is None
        assert matrix.get_chat(chat["org"], chat["event_id"], chat["generation"]) is None
    created = {(c["org"], c["event_id"]) for c in first["chats"] if c["in_synapse"] is not None}
    assert {(d["org"], d["event_id"]) for d in report["deletions"]} == created
    assert all(d["status"] == "complete" for d in report["deletions"])
    assert report["person_timeline"] and all(t["what"] == "AccessGranted" for t in report["person_timeline"])
