"""Hypothesis strategies: random HiOrg message streams over a few organisations, events and persons.

Small id pools make collisions likely (the same event re-enabled, a person blocked in a staffed chat); time
steps of minutes to weeks cross the 2-day and 30-day deadlines often.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

ORGS = ["drk-koeln", "asb-bonn"]
EVENTS = ["4711", "4712", "4713"]
PERSONS = ["a" * 32, "b" * 32, "c" * 32, "d" * 32]
BASE = datetime(2026, 11, 1, tzinfo=timezone(timedelta(hours=1)))
STEPS = st.sampled_from([timedelta(0), timedelta(minutes=30), timedelta(hours=20), timedelta(days=2),
                         timedelta(days=9), timedelta(days=31)])  # fmt: skip
OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))])


@st.composite
def message_data(draw: st.DrawFn) -> tuple[str, dict[str, Any] | None]:
    kind = draw(st.sampled_from([
        "organisation.chat_enabled", "organisation.chat_disabled", "event.upserted", "event.upserted",
        "event.upserted", "staffing.changed", "staffing.changed", "event.cancelled", "event.deleted",
        "person.status_changed",
    ]))  # fmt: skip
    event_id = draw(st.sampled_from(EVENTS))
    person = st.sampled_from(PERSONS)
    if kind == "organisation.chat_enabled":
        address = {"street": "S 1", "postcode": "50825", "city": "Köln", "country": "DE"}
        return kind, {"name": "DRK", "email": "it@drk.example", "address": address}
    if kind == "organisation.chat_disabled":
        return kind, draw(st.sampled_from([{}, None]))
    if kind == "event.upserted":
        start = BASE + draw(st.integers(0, 80)) * timedelta(days=1)
        data: dict[str, Any] = {
            "event_id": event_id, "title": "Dienst", "start": start.isoformat(),
            "end": (start + draw(st.sampled_from([timedelta(0), timedelta(hours=3), timedelta(days=3)]))).isoformat(),
            "responsible": draw(st.none() | person), "chat_enabled": draw(st.booleans()),
        }  # fmt: skip
        if draw(st.booleans()):
            statuses = st.sampled_from(["registered", "assigned", "assigned", "declined"])
            data["staff"] = [{"person_id": p, "status": s} for p, s in draw(st.dictionaries(person, statuses)).items()]
        return kind, data
    if kind == "staffing.changed":
        status = draw(st.sampled_from(["registered", "assigned", "declined", "removed"]))
        return kind, {"event_id": event_id, "person_id": draw(person), "status": status}
    if kind == "person.status_changed":
        status = draw(st.sampled_from(["active", "restricted", "external", "blocked", "deleted"]))
        return kind, {"person_id": draw(person), "status": status}
    return kind, {"event_id": event_id}


@st.composite
def streams(draw: st.DrawFn, max_size: int = 30, garbage: bool = True, backwards: bool = False) -> list[bytes]:
    """JSONL lines with some repeated ids and, if `garbage`, some broken lines.

    Time never goes backwards unless `backwards`: then a message may be older than the one before it, as when
    producers' clocks disagree.
    """
    lines: list[bytes] = []
    moment = BASE
    for index in range(draw(st.integers(0, max_size))):
        moment += draw(STEPS)
        if backwards and draw(st.integers(0, 4)) == 0:
            moment -= draw(STEPS)
        choice = draw(st.integers(0, 19))
        if garbage and choice == 0:
            lines.append(draw(st.sampled_from([b"{oops", b"[]", b"\xff", b'{"type": "event.upserted"}'])))
            continue
        if choice == 1 and lines:
            lines.append(draw(st.sampled_from(lines)))  # a re-sent message keeps its id
            continue
        kind, data = draw(message_data())
        message: dict[str, Any] = {"id": f"m{index}", "type": kind, "org": draw(st.sampled_from(ORGS)),
                                   "occurred_at": moment.astimezone(draw(OFFSETS)).isoformat()}  # fmt: skip
        if data is not None:
            message["data"] = data
        lines.append(json.dumps(message).encode())
    return lines


NOWS = st.integers(0, 130).map(lambda days: BASE + timedelta(days=days, hours=12))
