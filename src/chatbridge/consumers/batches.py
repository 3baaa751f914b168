"""Storing one batch of records from one source, whoever else writes the store at the same time."""

from __future__ import annotations

from eventsourcing.persistence import IntegrityError, OperationalError

from chatbridge.application import IntakeApplication, Received
from chatbridge.journal.intake import IntakeRecord


def store_batch(app: IntakeApplication, source: str, received: list[Received], attempts: int = 5) -> list[IntakeRecord]:
    """Store one batch; when another process stored first, store what is left of it.

    Another process may hold the same source (the same file ingested twice at once, two replicas in a
    rebalance), write the same aggregates, or store a message id this batch holds too (sent twice, on two
    partitions): the store refuses the batch whole, and the retry reads the source's
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
