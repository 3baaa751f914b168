"""Sizes, timing, and the results files."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("CHATBRIDGE_BENCH_CACHE") or ROOT / "bench" / ".cache")  # on disk, not tmpfs
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
POSTGRES = {
    "host": os.environ.get("CHATBRIDGE_BENCH_POSTGRES_HOST", "127.0.0.1"),
    "port": int(os.environ.get("CHATBRIDGE_BENCH_POSTGRES_PORT", "5432")),
    "user": os.environ.get("CHATBRIDGE_BENCH_POSTGRES_USER", "chatbridge"),
    "password": os.environ.get("CHATBRIDGE_BENCH_POSTGRES_PASSWORD", "chatbridge"),
}


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark moves. `full()` is the issue's sizes; `quick()` is for development and smoke runs."""

    repetitions: int = 3
    messages: int = 200_000  # the pre-filled topic for raw_consume and the ingest figures
    partitions: int = 8
    raw_store_events: int = 100_000  # events saved by the raw-store baseline (a rate: fewer suffice)
    naive_messages: int = 10_000  # one transaction per message is slow: a shorter topic, same kind of messages
    history_events: int = 1_000_000  # the store behind ingest_at_1m and replay_sqlite
    history_chats: int = 100_000  # ... and worker_rss_100k
    reconcile_steps: int = 700  # joins and kicks per repetition: 2,100 in all (Synapse does ~5-10 a second here)
    change_rate: float = 5.0  # staffing changes per second ...
    change_seconds: float = 60.0  # ... for this long
    resync_chats: int = 1_000

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def smoke(cls) -> Sizes:
        """Tiny sizes, one repetition: `make test` runs the bench this way so that it cannot rot."""
        return cls(
            repetitions=1, messages=300, partitions=2, raw_store_events=300, naive_messages=100,
            history_events=600, history_chats=60, reconcile_steps=10, change_seconds=2.0, resync_chats=5,
        )  # fmt: skip

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            messages=20_000,
            raw_store_events=10_000,
            naive_messages=2_000,
            history_events=60_000,
            history_chats=6_000,
            reconcile_steps=100,
            change_seconds=10.0,
            resync_chats=40,
        )


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    note: str = ""  # sizes and extra figures, for the markdown table (not in the JSON contract's keys)

    def contract(self) -> dict[str, object]:
        document = asdict(self)
        document.pop("note")
        return document


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    outcome = action()
    return time.perf_counter() - started, outcome


def result(
    name: str,
    values: list[float],
    unit: str,
    baseline: str | None = None,
    baseline_values: list[float] | None = None,
    *,
    higher_is_better: bool = True,
    note: str = "",
) -> Result:
    """The median of the repetitions, and the ratio to the baseline's median (>1 is better than the baseline
    for rates; for latencies the ratio is baseline / value, so that >1 is better there too)."""
    value = median(values)
    if baseline is None or not baseline_values:
        return Result(name, round(value, 3), unit, None, None, None, note)
    base = median(baseline_values)
    ratio = (value / base if higher_is_better else base / value) if value and base else None
    return Result(
        name, round(value, 3), unit, baseline, round(base, 3), None if ratio is None else round(ratio, 3), note
    )


def write_results(results: list[Result], header: str, directory: Path = RESULTS) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "latest.json", directory / "latest.md"
    json_path.write_text(json.dumps([r.contract() for r in results], indent=2) + "\n")
    lines = [
        header,
        "",
        "| name | value | unit | baseline | baseline value | ratio | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r.name}` | {_number(r.value)} | {r.unit} | {r.baseline or '—'} | {_number(r.baseline_value)} "
            f"| {_number(r.ratio)} | {r.note} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
