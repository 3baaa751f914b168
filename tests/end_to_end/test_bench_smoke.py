"""The benchmarks at tiny sizes, so that `make bench` cannot rot unnoticed (no speed is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import ROOT

pytestmark = pytest.mark.end_to_end

FIGURES = ("raw_store_sqlite", "ingest_sqlite", "ingest_naive_sqlite", "raw_consume")


def test_the_bench_runs_at_tiny_sizes_and_writes_the_contract_document(
    kafka_bootstrap: str, postgres_server: dict[str, object], tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "bench",
        "--smoke",
        "--no-services",
        "--only",
        ",".join(FIGURES),
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((tmp_path / "latest.json").read_text())
    assert {r["name"] for r in document} == set(FIGURES)
    for row in document:
        assert set(row) == {"name", "value", "unit", "baseline", "baseline_value", "ratio"}
        assert row["value"] > 0
    ingest = next(r for r in document if r["name"] == "ingest_sqlite")
    assert ingest["baseline"] == "raw_store_sqlite" and ingest["ratio"] == pytest.approx(
        ingest["value"] / ingest["baseline_value"], rel=0.01
    )
    assert "| `ingest_sqlite` |" in (tmp_path / "latest.md").read_text()
