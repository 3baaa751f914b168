"""The use cases behind the commands; the CLI only parses arguments and prints what these return."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from chatbridge.bootstrap import Store, in_memory_app, open_store, wipe_store
from chatbridge.consumers.jsonl import ingest_lines, read_lines
from chatbridge.consumers.kafka import IntakeCounts, KafkaIngestor
from chatbridge.domain.lifecycle import Policy
from chatbridge.projections.desired_state import DesiredStateFold
from chatbridge.projections.document import render_document
from chatbridge.projections.store import fold_log
from chatbridge.settings import Settings


def simulate(path: Path, now: datetime, policy: Policy) -> dict[str, Any]:
    """Fold a JSONL file through the domain and projection code in memory; nothing is stored."""
    return simulate_lines(read_lines(path), now, policy)


def simulate_lines(lines: Iterable[tuple[int, bytes]], now: datetime, policy: Policy) -> dict[str, Any]:
    """`simulate` on numbered raw lines (line numbers from 1)."""
    app = in_memory_app()
    ingest_lines(app, "simulate", lines)
    fold = DesiredStateFold(policy=policy, pseudonym=app.persons.pseudonym, open_name=app.persons.open)
    fold_log(app, fold)
    return render_document(fold.all_desired(), app.ledger.intake_summary(), now)


def state(store: Store, now: datetime) -> dict[str, Any]:
    """The same document from the persistent store, after folding whatever the projection has not seen yet."""
    store.projection.catch_up()
    return render_document(store.projection.view.desired_chats(), store.app.ledger.intake_summary(), now)


class StoreNotEmpty(Exception):
    """`replay --from-kafka` would overwrite events that may exist nowhere else."""


def rebuild_from_kafka(
    settings: Settings, *, force: bool, progress: Callable[[int, int], None] | None = None
) -> tuple[IntakeCounts, int]:
    """Disaster recovery: a fresh event store from the input topics, read from their earliest offsets.

    Refuses a store that holds anything unless `force`. Returns what became of the records and the number of
    events the projection folded. Records that break the contract were dead-lettered when first consumed and are
    not published again.
    """
    store = open_store(settings)
    try:
        if not store.app.ledger.is_empty():
            if not force:
                raise StoreNotEmpty("the store already holds ingested records; pass --force to replace it")
            store.close()
            wipe_store(settings)
            store = open_store(settings)
        ingestor = KafkaIngestor.every_partition(store.app, settings, dead_letters=False)
        ends = ingestor.end_offsets()
        total, done = sum(ends.values()), 0

        def advance(handled: int) -> None:
            nonlocal done
            done += handled
            if progress:
                progress(done, total)

        counts = ingestor.drain(ends, advance)
        folded = store.projection.rebuild()
    finally:
        store.close()
    return counts, folded
