"""The intake records its most frequent facts with `trigger_event` and the event's fields, not through the decorated
commands: the events and the aggregates they leave must be exactly what the commands make."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chatbridge.application import _CANCELLED, _EVENT_RECORDED, _STAFFING_CHANGED, _STATUS_CHANGED
from chatbridge.domain.aggregates import ChatGroup, Person

WHEN = datetime(2026, 11, 28, 10, tzinfo=UTC)


def _chat() -> ChatGroup:
    return ChatGroup("org", "4711", "m1", WHEN, "Dienst", WHEN, WHEN, "alice", {"bob": "assigned"})


def _same(by_command: Any, by_trigger: Any) -> None:
    made, triggered = by_command.collect_events()[-1], by_trigger.collect_events()[-1]
    assert type(made) is type(triggered)
    assert list(vars(made)) == list(vars(triggered))  # the same fields in the same order: the same stored bytes
    assert {k: v for k, v in vars(made).items() if k != "timestamp"} == {
        k: v for k, v in vars(triggered).items() if k != "timestamp"
    }
    assert {k: v for k, v in vars(by_command).items() if k not in ("_created_on", "_modified_on")} == {
        k: v for k, v in vars(by_trigger).items() if k not in ("_created_on", "_modified_on")
    }


def test_staffing_event_record_and_cancellation_are_what_the_commands_make():
    a, b = _chat(), _chat()
    a.change_staffing("m2", WHEN, "carol", "assigned")
    b.trigger_event(_STAFFING_CHANGED, message_id="m2", occurred_at=WHEN, person_id="carol", status="assigned")
    _same(a, b)
    a.record_event("m3", WHEN, "Dienst 2", WHEN, WHEN, None, True, None)
    b.trigger_event(_EVENT_RECORDED, message_id="m3", occurred_at=WHEN, title="Dienst 2", start=WHEN, end=WHEN,
                    responsible=None, chat_enabled=True, staff=None)  # fmt: skip
    _same(a, b)
    a.cancel("m4", WHEN)
    b.trigger_event(_CANCELLED, message_id="m4", occurred_at=WHEN)
    _same(a, b)


def test_a_status_change_is_what_the_command_makes():
    a, b = (Person("org", "ps-" + "0" * 32, "alice", "m1", WHEN) for _ in range(2))
    a.change_status("m2", WHEN, "blocked")
    b.trigger_event(_STATUS_CHANGED, message_id="m2", occurred_at=WHEN, status="blocked")
    _same(a, b)
    assert b.status == "blocked"
