"""The readers of the log know every event the aggregates record, and refuse one they do not know: a fold that
skipped an unknown event would compute chats from part of the facts, sealing that skipped one could store a person's
id in the clear, and the audit would show a bare class name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from chatbridge.audit.queries import WHAT
from chatbridge.domain.aggregates import EVENT_CLASSES, ChatGroup
from chatbridge.domain.lifecycle import Policy
from chatbridge.journal.sealing import person_fields
from chatbridge.projections.desired_state import FOLDED, NOT_FOLDED, DesiredStateFold, UnknownEvent


def test_every_event_class_is_folded_or_declared_not_folded_and_has_words_in_the_audit() -> None:
    classes = set(EVENT_CLASSES.values())
    assert set(FOLDED) | NOT_FOLDED == classes
    assert not set(FOLDED) & NOT_FOLDED
    assert set(WHAT) == {cls for name, cls in EVENT_CLASSES.items() if not name.startswith("Person.")}  # timelines
    assert all(isinstance(person_fields(object.__new__(cls)), tuple) for cls in classes)


@dataclass
class _Stranger(ChatGroup.Event):  # an event of a newer release, say
    pass


def test_an_event_the_fold_does_not_know_is_refused_by_name() -> None:
    fold = DesiredStateFold(policy=Policy(), pseudonym=lambda org, person: person, open_name=lambda token: token)
    stranger = object.__new__(_Stranger)
    object.__setattr__(stranger, "__dict__", {"originator_id": uuid4(), "timestamp": datetime.now(UTC)})
    with pytest.raises(UnknownEvent, match="_Stranger"):
        fold.apply(stranger, 1)
    with pytest.raises(LookupError, match="_Stranger"):
        person_fields(stranger)
