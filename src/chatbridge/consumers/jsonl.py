"""A JSONL file as a message source: one envelope per line, positions are line numbers (from 1).

`chatbridge ingest` and `simulate` read files through here and apply them through `IntakeApplication.ingest`, the same
path the Kafka consumer uses. Lines are split on `\\n` only (a trailing `\\r` is dropped), so a stray carriage
return or a non-UTF-8 byte is reported for its own line and never shifts the line numbers of the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from chatbridge.application import IntakeApplication, Received
from chatbridge.consumers.batches import store_batch
from chatbridge.domain.messages import parse_record
from chatbridge.journal.intake import IntakeRecord


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


class FileChanged(Exception):
    """The file's first lines are not the ones an earlier `ingest` stored: resuming would skip lines unseen."""


@dataclass(frozen=True)
class FileMark:
    source: str  # the intake source the file's lines are stored under
    lines: int  # how many of its lines were stored when the mark was written
    sha256: str  # of those lines


class FileMarks:
    """What `ingest` stored of each file, by its resolved path: the source, the lines and their SHA-256 — so that a
    file replaced by another (a shorter one with new lines, an edited one) is refused, not silently skipped.

    A mark is written after each batch, in its own transaction: after a crash between the two it covers fewer
    lines than the source's stored position, and the check covers those.
    """

    TABLE = "chatbridge_file_marks"

    def __init__(self, datastore: Any, placeholder: str):
        self.datastore, self.placeholder = datastore, placeholder
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} (path TEXT PRIMARY KEY, source TEXT NOT NULL, "
                "lines BIGINT NOT NULL, sha256 TEXT NOT NULL)"
            )

    @classmethod
    def of(cls, app: IntakeApplication) -> FileMarks | None:
        """The marks in the app's database; None for an in-memory store (`simulate` resumes nothing)."""
        datastore = getattr(app.recorder, "datastore", None)
        return None if datastore is None else cls(datastore, getattr(app.recorder, "placeholder", "?"))

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def get(self, path: str) -> FileMark | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self._sql(f"SELECT source, lines, sha256 FROM {self.TABLE} WHERE path = ?"), (path,))
            row = c.fetchone()
        return None if row is None else FileMark(row["source"], row["lines"], row["sha256"])

    def put(self, path: str, mark: FileMark) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                self._sql(
                    f"INSERT INTO {self.TABLE} (path, source, lines, sha256) VALUES (?, ?, ?, ?) ON CONFLICT (path) "
                    "DO UPDATE SET source = excluded.source, lines = excluded.lines, sha256 = excluded.sha256"
                ),
                (path, mark.source, mark.lines, mark.sha256),
            )


def ingest_file(
    app: IntakeApplication,
    path: Path,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
    *,
    afresh: bool = False,
) -> IngestReport:
    """Apply a JSONL file in batches; resumes after the last line an earlier run stored, once it has checked that
    the file still begins with the lines stored (`FileChanged` if not). `afresh` takes the file as a new one: all
    its lines are read again under a new source (messages already stored count as duplicates)."""
    marks = FileMarks.of(app)
    key = str(path.resolve())
    mark = marks.get(key) if marks is not None else None
    source = mark.source if mark is not None else source_name(path)
    if afresh and app.position(source):
        source = f"{source_name(path)}#{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
        mark = None
    after = app.position(source)
    lines = read_lines(path)
    digest = _check_prefix(lines, after, mark, path)
    report = IngestReport(source=source)
    done = after
    for batch in batched(lines, batch_size):
        report.add(store_batch(app, source, [Received(number, parse_record(raw)) for number, raw in batch]))
        for _number, raw in batch:
            digest.update(raw + b"\n")
        done = batch[-1][0]
        if marks is not None:
            marks.put(key, FileMark(source, done, digest.hexdigest()))
        if progress:
            progress(len(batch))
    if marks is not None and mark is None and after:  # a store from before marks: mark what was checked by count
        marks.put(key, FileMark(source, done, digest.hexdigest()))
    report.skipped = after
    return report


def _check_prefix(lines: Iterator[tuple[int, bytes]], after: int, mark: FileMark | None, path: Path) -> Any:
    """Read the first `after` lines (those stored before) and check them against the mark; returns their running
    SHA-256, which the batches after them extend."""
    digest = hashlib.sha256()
    count, matched = 0, mark is None
    for _number, raw in islice(lines, after):
        digest.update(raw + b"\n")
        count += 1
        if mark is not None and count == mark.lines:
            matched = digest.hexdigest() == mark.sha256
    hint = "the file was replaced or edited; `chatbridge ingest --afresh` reads it as a new file"
    if count < after:
        raise FileChanged(f"{path}: has {count} lines, fewer than the {after} ingested from it before: {hint}")
    if not matched:
        assert mark is not None
        raise FileChanged(f"{path}: its first {mark.lines} lines are not the ones ingested before: {hint}")
    return digest


def ingest_lines(
    app: IntakeApplication,
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
