"""A JSONL file as a message source: one envelope per line, positions are line numbers (from 1).

`chatbridge ingest` and `simulate` read files through here and apply them through `ChatBridge.ingest`, the same
path the Kafka consumer uses. Lines are split on `\\n` only (a trailing `\\r` is dropped), so a stray carriage
return or a non-UTF-8 byte is reported for its own line and never shifts the line numbers of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from eventsourcing.persistence import IntegrityError, OperationalError

from chatbridge.application import ChatBridge, Received
from chatbridge.domain.messages import parse_record
from chatbridge.persistence import IntakeRecord


def read_lines(path: Path, after: int = 0) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) for each line after line `after`; a final newline ends the last line."""
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            if number <= after:
                continue
            if line.endswith(b"\n"):
                line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            yield number, line


def batched(items: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    # itertools.batched arrives with Python 3.12; we support 3.11
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def source_name(path: Path) -> str:
    return f"file:{path.resolve()}"


@dataclass
class IngestReport:
    source: str
    skipped: int = 0  # lines already ingested by an earlier run (resumed after them)
    outcomes: dict[str, int] = field(default_factory=dict)
    rejected: list[IntakeRecord] = field(default_factory=list)

    def add(self, records: list[IntakeRecord]) -> None:
        for record in records:
            self.outcomes[record.outcome] = self.outcomes.get(record.outcome, 0) + 1
            if record.outcome == "rejected":
                self.rejected.append(record)


def ingest_file(
    app: ChatBridge,
    path: Path,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Apply a JSONL file in batches; resumes after the last line an earlier run stored."""
    source = source_name(path)
    after = app.position(source)
    report = ingest_lines(app, source, read_lines(path, after), batch_size, progress)
    report.skipped = after
    return report


def ingest_lines(
    app: ChatBridge,
    source: str,
    lines: Iterable[tuple[int, bytes]],
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Apply numbered raw lines in batches of `batch_size`, each batch one transaction."""
    report = IngestReport(source=source)
    for batch in batched(lines, batch_size):
        report.add(store_batch(app, source, [Received(number, parse_record(raw)) for number, raw in batch]))
        if progress:
            progress(len(batch))
    return report


def store_batch(app: ChatBridge, source: str, received: list[Received], attempts: int = 5) -> list[IntakeRecord]:
    """Store one batch; when another process stored first, store what is left of it.

    Another process may hold the same source (the same file ingested twice at once, two replicas in a
    rebalance) or write the same aggregates: the store refuses the batch whole, and the retry reads the source's
    stored position and the aggregates' versions again — records at or before that position are not sent again.
    """
    pending = received
    for _attempt in range(attempts):
        try:
            return app.ingest(source, pending)
        except IntegrityError:
            stored = app.position(source)
            pending = [record for record in pending if record.position > stored]
            if not pending:
                return []
    raise OperationalError(f"{source}: could not store a batch after {attempts} attempts; other writers kept winning")
