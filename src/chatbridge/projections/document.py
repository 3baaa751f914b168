"""The document `simulate` and `state` print (DESIGN.md, "Command-line contract"), rendered in one place."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from chatbridge.domain.lifecycle import MEMBER_PHASES
from chatbridge.domain.moments import utc_z
from chatbridge.journal.intake import IntakeRecord, IntakeSummary, parse_partition_source
from chatbridge.projections.desired_state import DesiredChat


def render_document(chats: Iterable[DesiredChat], intake: IntakeSummary, now: datetime) -> dict[str, Any]:
    entries = []
    for chat in sorted(chats, key=lambda c: (c.org, c.event_id)):
        phase = chat.phase(now)
        with_members = phase in MEMBER_PHASES
        entries.append(
            {
                "org": chat.org,
                "event_id": chat.event_id,
                "generation": chat.generation,
                "phase": phase.value,
                "members": sorted(chat.members) if with_members else [],
                "moderators": sorted(chat.moderators) if with_members else [],
                "read_only_at": utc_z(chat.read_only_at),
                "delete_at": utc_z(chat.delete_at),
            }
        )
    return {
        "chats": entries,
        "rejected": [_rejected(r) for r in intake.rejected],
        "ignored": intake.ignored,
        "duplicates": intake.duplicates,
    }


def _rejected(record: IntakeRecord) -> dict[str, Any]:
    """A rejected record by its line, or by its Kafka coordinates when it came from a topic."""
    partition = parse_partition_source(record.source)
    if partition is None:
        return {"line": record.position, "reason": record.reason}
    return {"topic": partition[0], "partition": partition[1], "offset": record.position - 1, "reason": record.reason}
