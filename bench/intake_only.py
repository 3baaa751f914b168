"""The intake alone, without the projection's fold: what limits `ingest_*` once the fold runs in its own process.

```
.venv/bin/python -m bench.intake_only intake --store sqlite --messages 200000        # Kafka → store, msgs/s
.venv/bin/python -m bench.intake_only memory --store postgres --messages 20000       # parsed records → store
.venv/bin/python -m bench.intake_only raw --store sqlite --events 10000              # raw store vs plain
.venv/bin/python -m bench.intake_only intake --profile /tmp/intake.prof              # under cProfile
```

`intake`: `KafkaIngestor` over every partition of the pre-filled topic (`bench.ingest`'s, made when missing) into a
fresh store, nothing folded: the worker's intake as it runs beside a fold in another process. `memory`: the same
messages parsed from the generator and given to `IntakeApplication.ingest` 500 at a time per partition, as the
consumer hands them over, without Kafka. `raw`: `bench.ingest.raw_store` and the plain `Application` on the same
events, back to back. Each prints one line per repetition and the median; nothing is written to bench/results.
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from bench.common import KAFKA, log
from bench.ingest import domain_events, postgres_database, raw_store, settings_for, sqlite_database
from bench.stream import end_offsets, prefilled_topic, records
from chatbridge.application import Received
from chatbridge.bootstrap import open_store
from chatbridge.consumers.kafka import KafkaIngestor, partition_of
from chatbridge.domain.messages import parse_record


def _database(store: str) -> AbstractContextManager[dict[str, str]]:
    return sqlite_database() if store == "sqlite" else postgres_database()


def intake(store: str, messages: int, partitions: int = 8) -> tuple[float, float]:
    """Messages/s from the topic's start to its end into stored events, ledger and positions; no fold. And this
    process's CPU time a message in µs."""
    topic = prefilled_topic(KAFKA, f"chatbridge.bench.i{messages}", messages, partitions)
    total = sum(end_offsets(KAFKA, topic).values())
    with _database(store) as database:
        settings = settings_for(database, topic)
        opened = open_store(settings)
        try:
            started, cpu = time.perf_counter(), time.process_time()
            ingestor = KafkaIngestor.every_partition(opened.app, settings, dead_letters=False)
            counts = ingestor.drain(end_offsets(KAFKA, topic))
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            opened.close()
    if counts.total != total:
        raise RuntimeError(f"ingested {counts.total} of {total} records: {counts.outcomes}")
    return total / seconds, cpu / total * 1e6


def _batches(messages: int, partitions: int) -> Iterator[tuple[str, list[Received]]]:
    """The generated messages as the consumer hands them over: per partition, 500 at a time, partitions taking
    turns."""
    shares: dict[int, list[Received]] = {p: [] for p in range(partitions)}
    for key, value in records(f"m{messages}", messages):
        partition = partition_of(key.decode(), partitions)
        share = shares[partition]
        share.append(Received(len(share) + 1, parse_record(value)))
    for start in range(0, max(len(s) for s in shares.values()), 500):
        for partition, share in shares.items():
            if share[start : start + 500]:
                yield f"kafka:bench:{partition}", share[start : start + 500]


def memory(store: str, messages: int, partitions: int = 8) -> tuple[float, float]:
    """Messages/s of `IntakeApplication.ingest` alone (parsing done beforehand, no Kafka, no fold), and this
    process's CPU time a message in µs (steadier than the rate on a shared machine; SQLite runs in the process,
    PostgreSQL does not)."""
    batches = list(_batches(messages, partitions))
    with _database(store) as database:
        opened = open_store(settings_for(database, "-"))
        try:
            started, cpu = time.perf_counter(), time.process_time()
            for source, batch in batches:
                opened.app.ingest(source, batch)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            opened.close()
    return messages / seconds, cpu / messages * 1e6


def raw(store: str, events: int) -> tuple[float, float]:
    """(chatbridge's store, the plain `Application`) events/s on the same events, back to back."""
    made = domain_events(events, "raw")
    with _database(store) as database:
        own = raw_store(database, made)
    with _database(store) as database:
        plain = raw_store(database, made, plain=True)
    return own, plain


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.intake_only", description=__doc__)
    parser.add_argument("what", choices=("intake", "memory", "raw"))
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", help="run once under cProfile and write the stats here")
    args = parser.parse_args()
    run: Callable[[], object] = {
        "intake": lambda: intake(args.store, args.messages),
        "memory": lambda: memory(args.store, args.messages),
        "raw": lambda: raw(args.store, args.events),
    }[args.what]
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run)
        profiler.dump_stats(args.profile)
        return
    outcomes = []
    for rep in range(args.reps):
        outcome = run()
        outcomes.append(outcome)
        if args.what in ("memory", "intake"):
            rate, cpu = outcome  # type: ignore[misc]
            log(f"{args.what} {args.store} rep {rep}: {rate:,.0f}/s, {cpu:,.1f} µs CPU a message")
        elif isinstance(outcome, tuple):
            own, plain = outcome
            log(f"{args.what} {args.store} rep {rep}: {own:,.0f}/s, plain {plain:,.0f}/s, ratio {own / plain:.3f}")
        else:
            log(f"{args.what} {args.store} rep {rep}: {outcome:,.0f}/s")
    if args.what in ("memory", "intake"):
        print(f"{args.what} {args.store}: median {statistics.median(r for r, _ in outcomes):,.0f}/s, "  # type: ignore[misc]
              f"{statistics.median(c for _, c in outcomes):,.1f} µs CPU a message")  # type: ignore[misc]  # fmt: skip
    elif isinstance(outcomes[0], tuple):
        ratios = [own / plain for own, plain in outcomes]  # type: ignore[misc]
        print(f"{args.what} {args.store}: median ratio {statistics.median(ratios):.3f} "
              f"(own {statistics.median(o for o, _ in outcomes):,.0f}/s, "  # type: ignore[misc]
              f"plain {statistics.median(p for _, p in outcomes):,.0f}/s)")  # type: ignore[misc]  # fmt: skip
    else:
        print(f"{args.what} {args.store}: median {statistics.median(outcomes):,.0f}/s")  # type: ignore[type-var]


if __name__ == "__main__":
    main()
