"""Old events are upcast on read: an event stored by an earlier release, without a field its class has gained since,
reads back as the current class with that field filled in, and the aggregate folds it as before. The stored rows
are never rewritten (the audit's hash chain covers their bytes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from chatbridge.application import IntakeApplication
from chatbridge.bootstrap import in_memory_app
from chatbridge.consumers.jsonl import ingest_lines, read_lines
from chatbridge.domain.aggregates import Person

MESSAGES = Path(__file__).parents[1] / "fixtures" / "previous_release" / "messages.jsonl"
FORGOTTEN_TOPIC = "chatbridge.domain.aggregates:Person.Forgotten"  # the topic every release has stored it under


def _forgotten_stream() -> tuple[IntakeApplication, list[StoredEvent]]:
    """An application whose log holds a person HiOrg-Server deleted, and that person's stored events."""
    app = in_memory_app()
    ingest_lines(app, "messages", read_lines(MESSAGES))
    forgotten = next(n for n in app.notifications() if n.topic == FORGOTTEN_TOPIC)
    return app, list(app.recorder.select_events(forgotten.originator_id))


def _as_version_1(stored: StoredEvent, **fields: Any) -> StoredEvent:
    """The row as a release before `key_version` wrote it: no class version, no key version (or `fields`)."""
    state = json.loads(stored.state)
    del state["class_version"], state["key_version"]
    state.update(fields)
    return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, json.dumps(state).encode())


def test_a_forgotten_event_is_stored_at_class_version_2_with_its_key_version() -> None:
    _, stream = _forgotten_stream()
    assert stream[-1].topic == FORGOTTEN_TOPIC
    state = json.loads(stream[-1].state)
    assert state["class_version"] == 2 == Person.Forgotten.class_version
    assert state["key_version"] == 1


def test_a_version_1_forgotten_event_reads_back_upcast_and_folds_as_before() -> None:
    app, stream = _forgotten_stream()
    old = [*stream[:-1], _as_version_1(stream[-1])]
    assert b"key_version" not in old[-1].state and b"class_version" not in old[-1].state

    events: list[Any] = [app.mapper.to_domain_event(stored) for stored in old]
    forgotten = events[-1]
    assert type(forgotten) is Person.Forgotten
    assert forgotten.key_version == 1  # the one key a person had before key versions
    assert "class_version" not in forgotten.__dict__

    person: Any = None
    for domain_event in events:
        person = domain_event.mutate(person)
    current: Any = app.repository.get(UUID(str(stream[-1].originator_id)))
    assert (person.status, person.person_id, person.version) == ("deleted", current.person_id, current.version)


def test_a_version_1_event_that_already_carries_the_field_keeps_it() -> None:
    # stored between key versions and class versions: the field is there, the class version is not
    app, stream = _forgotten_stream()
    forgotten: Any = app.mapper.to_domain_event(_as_version_1(stream[-1], key_version=2))
    assert forgotten.key_version == 2
