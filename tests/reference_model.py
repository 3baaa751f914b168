"""A second, deliberately naive reading of DESIGN.md: the test oracle for random streams.

It shares no code with chatbridge, not even the parser: plain dicts, the input contract checked by hand as far as
the generated streams and their garbage lines need it, the lifecycle formulas typed in again from the design text.
Where the two disagree on a generated stream, one of them misreads the design.

Two steps, as the design orders them:
1. Intake, in stored (file) order: a line is rejected or accepted; an accepted message whose `id` was accepted
   before is a duplicate (the id of a rejected line is not remembered). Event messages (`event.*`,
   `staffing.changed`) for an event that never had chat enabled, or was deleted, are ignored — decided here, in
   stored order, as the implementation does at intake.
2. The fold, in event time: the remaining messages sorted by (`occurred_at`, line number).

Deciding `ignored` in stored order agrees with the event-time reading only when one event's messages are stored in
`occurred_at` order. They are on Kafka: all messages of one event share one key, so one partition, and HiOrg-Server
publishes them in the order they happened. The strategies (tests/strategies.py) generate only such streams; across
keys, any disorder goes.

Settling follows the design's words: before a message touches a chat — an event message its event's chat, an
organisation message every chat of the organisation, a person message every chat that then names the person — a
chat whose `delete_at <= t` is deleted for good (phase `deleted` whatever `now`), and its deadlines are frozen as they
were at that moment; `event.deleted` freezes them too (delete_at becomes its time). A person's later deletion erases
what a message said about them, not that the message touched the chat when it came. (Both choices show only for a
`now` before the touching message; see the PERSON_TOUCH and ERASED_TOUCH stories in tests/unit/test_properties.py.)
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

TYPES = ("organisation.chat_enabled", "organisation.chat_disabled", "event.upserted", "event.cancelled",
         "event.deleted", "staffing.changed", "person.status_changed")  # fmt: skip
EVENT_TYPES = ("event.upserted", "event.cancelled", "event.deleted", "staffing.changed")
STAFFING_STATUSES = ("registered", "assigned", "declined", "removed")
PERSON_STATUSES = ("active", "restricted", "external", "blocked", "deleted")
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")  # syntax only, as the contract asks; enough for the strategies


class Rejected(Exception):
    """The line breaks the input contract; the text is ours, not chatbridge's (tests compare line numbers only)."""


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise Rejected(f"{field}: not a string")
    return value


def _id(value: Any, field: str) -> str:
    # Ids: non-empty strings of at most 64 characters without `/`.
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or "/" in value:
        raise Rejected(f"{field}: breaks the id rule")
    return value


def _moment(value: Any, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(_string(value, field))
    except ValueError:
        raise Rejected(f"{field}: not a date-time") from None
    if moment.tzinfo is None:
        raise Rejected(f"{field}: no offset")
    return moment


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Rejected(f"{field}: not an object")
    return value


def _one_of(value: Any, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise Rejected(f"{field}: not one of {allowed}")
    return value


def read_message(line: bytes) -> dict[str, Any]:
    """The accepted message as a dict (times as aware datetimes), or `Rejected`."""
    try:
        document = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise Rejected("not UTF-8") from None
    except (ValueError, RecursionError):
        raise Rejected("not JSON") from None
    envelope = _object(document, "message")
    kind = _one_of(envelope.get("type"), TYPES, "type")
    if not isinstance(envelope.get("id"), str) or not envelope["id"]:
        raise Rejected("id: missing")
    message = {"id": envelope["id"], "type": kind, "org": _id(envelope.get("org"), "org"),
               "occurred_at": _moment(envelope.get("occurred_at"), "occurred_at")}  # fmt: skip
    if kind == "organisation.chat_disabled":
        if "data" in envelope:
            _object(envelope["data"], "data")
        message["data"] = {}
        return message
    data = _object(envelope.get("data"), "data")
    if kind == "organisation.chat_enabled":
        _string(data.get("name"), "name")
        if not EMAIL.fullmatch(_string(data.get("email"), "email")):
            raise Rejected("email: not an address")
        address = _object(data.get("address"), "address")
        for part in ("street", "postcode", "city", "country"):
            _string(address.get(part), f"address.{part}")
        message["data"] = {}
    elif kind == "event.upserted":
        start, end = _moment(data.get("start"), "start"), _moment(data.get("end"), "end")
        if end < start:
            raise Rejected("end before start")
        _string(data.get("title"), "title")
        if "responsible" not in data:
            raise Rejected("responsible: missing")
        if not isinstance(data.get("chat_enabled"), bool):
            raise Rejected("chat_enabled: not a boolean")
        staff = data.get("staff")
        if staff is not None and not isinstance(staff, list):
            raise Rejected("staff: not a list")
        message["data"] = {
            "event_id": _id(data.get("event_id"), "event_id"), "end": end,
            "responsible": None if data["responsible"] is None else _id(data["responsible"], "responsible"),
            "chat_enabled": data["chat_enabled"],
            "staff": None if staff is None else [
                (_id(_object(s, "staff[]").get("person_id"), "staff[].person_id"),
                 _one_of(s.get("status"), STAFFING_STATUSES, "staff[].status"))
                for s in staff
            ],
        }  # fmt: skip
    elif kind in ("event.cancelled", "event.deleted"):
        message["data"] = {"event_id": _id(data.get("event_id"), "event_id")}
    elif kind == "staffing.changed":
        message["data"] = {"event_id": _id(data.get("event_id"), "event_id"),
                           "person_id": _id(data.get("person_id"), "person_id"),
                           "status": _one_of(data.get("status"), STAFFING_STATUSES, "status")}  # fmt: skip
    else:
        message["data"] = {"person_id": _id(data.get("person_id"), "person_id"),
                           "status": _one_of(data.get("status"), PERSON_STATUSES, "status")}  # fmt: skip
    return message


def names(message: dict[str, Any], person_id: str) -> bool:
    """Whether an accepted message names the person (as staff, responsible, or the subject of a status)."""
    data = message["data"]
    return (
        data.get("person_id") == person_id
        or data.get("responsible") == person_id
        or any(p == person_id for p, _ in data.get("staff") or [])
    )


def reference_document(lines: list[bytes], now: datetime, full_use: timedelta, view: timedelta) -> dict[str, Any]:
    # -- 1. intake, in stored order ------------------------------------------------------------------------------
    seen: set[str] = set()
    had_chat: set[tuple[str, str]] = set()
    deleted: set[tuple[str, str]] = set()
    ignored = duplicates = 0
    rejected = []
    accepted = []
    for number, line in enumerate(lines, start=1):
        try:
            message = read_message(line)
        except Rejected as reason:
            rejected.append({"line": number, "reason": str(reason)})
            continue
        if message["id"] in seen:
            duplicates += 1
            continue
        seen.add(message["id"])
        if message["type"] in EVENT_TYPES:
            key = (message["org"], message["data"]["event_id"])
            enables = message["type"] == "event.upserted" and message["data"]["chat_enabled"]
            if key in deleted or (key not in had_chat and not enables):
                ignored += 1
                continue
            had_chat.add(key)
            if message["type"] == "event.deleted":
                deleted.add(key)
        accepted.append((message["occurred_at"], number, message))

    # -- 2. the fold, in event time ------------------------------------------------------------------------------
    orgs: dict[str, dict[str, Any]] = {}
    persons: dict[tuple[str, str], str] = {}
    events: dict[tuple[str, str], dict[str, Any]] = {}

    def org(name: str) -> dict[str, Any]:
        return orgs.setdefault(name, {"on": False, "off_at": None, "times_on": 0})

    def saw_on(event: dict[str, Any]) -> bool:
        # the organisation's feature has been on at some time since this generation was enabled
        o, g = org(event["org"]), event["gen"]
        return g["on_at_start"] or o["times_on"] > g["times_on_at_start"]

    def deadlines(event: dict[str, Any]) -> tuple[datetime, datetime]:
        if event["gen"]["frozen"] is not None:  # a deleted generation keeps its deadlines
            return event["gen"]["frozen"]
        end_eff = event["end"] if event["cancelled_at"] is None else min(event["end"], event["cancelled_at"])
        o = org(event["org"])
        org_disabled_at = o["off_at"] if (not o["on"] and saw_on(event)) else None
        terms = [end_eff + full_use, event["gen"]["chat_off_at"], org_disabled_at, event["deleted_at"]]
        read_only_at = min(t for t in terms if t is not None)
        delete_at = min(t for t in [read_only_at + view, event["deleted_at"]] if t is not None)
        return read_only_at, delete_at

    def freeze(event: dict[str, Any]) -> None:
        if event["gen"]["frozen"] is None:
            event["gen"]["frozen"] = deadlines(event)

    def settle(touched: list[dict[str, Any]], t: datetime) -> None:
        for event in touched:
            if deadlines(event)[1] <= t:
                freeze(event)
                event["gen"]["settled"] = True

    def generation(number: int, org_name: str) -> dict[str, Any]:
        o = org(org_name)
        return {"number": number, "on_at_start": o["on"], "times_on_at_start": o["times_on"], "chat_off_at": None,
                "settled": False, "frozen": None}  # fmt: skip

    for t, _, message in sorted(accepted, key=lambda item: (item[0], item[1])):
        kind, data, org_name = message["type"], message["data"], message["org"]
        of_org = [e for e in events.values() if e["org"] == org_name]
        if kind in ("organisation.chat_enabled", "organisation.chat_disabled"):
            settle(of_org, t)
            o = org(org_name)
            if kind == "organisation.chat_enabled" and not o["on"]:
                o.update(on=True, off_at=None, times_on=o["times_on"] + 1)
            elif kind == "organisation.chat_disabled" and o["on"]:
                o.update(on=False, off_at=t)
            continue
        if kind == "person.status_changed":
            person = data["person_id"]
            settle([e for e in of_org if person in e["staff"] or person == e["responsible"]], t)
            if data["status"] == "deleted":  # erases everything that named the person until now
                for named in of_org:
                    named["staff"].pop(person, None)
                    if named["responsible"] == person:
                        named["responsible"] = None
                persons.pop((org_name, person), None)
            else:
                persons[(org_name, person)] = data["status"]
            continue
        key = (org_name, data["event_id"])
        event = events.get(key)
        if event is None:  # the first upsert with chat enabled (intake ignored everything before it)
            events[key] = {
                "org": org_name, "event_id": data["event_id"], "end": data["end"], "cancelled_at": None,
                "deleted_at": None, "enabled": True, "responsible": data["responsible"],
                "staff": {p: s for p, s in data["staff"] or [] if s != "removed"}, "gen": generation(1, org_name),
            }  # fmt: skip
            continue
        settle([event], t)
        if kind == "event.upserted":
            event["end"] = data["end"]
            event["responsible"] = data["responsible"]
            if data["staff"] is not None:
                event["staff"] = {p: s for p, s in data["staff"] if s != "removed"}
            dead = event["gen"]["settled"]
            if data["chat_enabled"] and not event["enabled"]:
                if dead:
                    event["gen"] = generation(event["gen"]["number"] + 1, org_name)
                else:
                    event["gen"]["chat_off_at"] = None
            elif not data["chat_enabled"] and event["enabled"] and not dead:
                event["gen"]["chat_off_at"] = t
            event["enabled"] = data["chat_enabled"]
        elif kind == "staffing.changed" and data["status"] == "removed":
            event["staff"].pop(data["person_id"], None)
        elif kind == "staffing.changed":
            event["staff"][data["person_id"]] = data["status"]
        elif kind == "event.cancelled":
            if event["cancelled_at"] is None:
                event["cancelled_at"] = t
        elif kind == "event.deleted":  # the chat is deleted now: its deadlines are fixed at once
            event["deleted_at"] = t
            freeze(event)

    # -- the document at `now` -----------------------------------------------------------------------------------
    chats = []
    for (org_name, event_id), event in sorted(events.items()):
        read_only_at, delete_at = deadlines(event)
        if event["gen"]["settled"] or now >= delete_at:
            phase = "deleted"
        elif not saw_on(event):
            phase = "awaiting_organisation"
        elif now >= read_only_at:
            phase = "read_only"
        else:
            phase = "active"

        def excluded(person_id: str, org_name: str = org_name) -> bool:
            return persons.get((org_name, person_id)) in ("blocked", "deleted")

        members, moderators = set(), set()
        if phase in ("active", "read_only"):
            members = {p for p, s in event["staff"].items() if s == "assigned" and not excluded(p)}
            if event["responsible"] and not excluded(event["responsible"]):
                members.add(event["responsible"])
                moderators.add(event["responsible"])
        chats.append({
            "org": org_name, "event_id": event_id, "generation": event["gen"]["number"], "phase": phase,
            "members": sorted(members), "moderators": sorted(moderators),
            "read_only_at": read_only_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "delete_at": delete_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })  # fmt: skip
    return {"chats": chats, "rejected": rejected, "ignored": ignored, "duplicates": duplicates}
