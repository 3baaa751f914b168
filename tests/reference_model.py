"""A second, deliberately naive reading of DESIGN.md's lifecycle section: the test oracle for random streams.

It shares no code with chatbridge's domain or projections (only the message parser): one loop over the
messages, plain dicts, the formulas typed in again from the design text. Settling follows the design's words:
before a message touches a chat — an event message its event's chat, an organisation message every chat of
the organisation, a person message every chat that currently names the person. Where the two disagree on a
generated stream, one of them misreads the design.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chatbridge.domain.messages import Rejection, parse_record


def reference_document(lines: list[bytes], now: datetime, full_use: timedelta, view: timedelta) -> dict[str, Any]:
    seen: set[str] = set()
    ignored = duplicates = 0
    rejected = []
    orgs: dict[str, dict[str, Any]] = {}
    persons: dict[tuple[str, str], str] = {}
    events: dict[tuple[str, str], dict[str, Any]] = {}

    def org(name: str) -> dict[str, Any]:
        return orgs.setdefault(name, {"on": False, "off_at": None, "times_on": 0})

    def saw_on(event: dict[str, Any]) -> bool:
        o, g = org(event["org"]), event["gen"]
        return g["on_at_start"] or o["times_on"] > g["times_on_at_start"]

    def read_only_at(event: dict[str, Any]) -> datetime:
        end = event["end"] if event["cancelled_at"] is None else min(event["end"], event["cancelled_at"])
        o = org(event["org"])
        org_term = o["off_at"] if (not o["on"] and saw_on(event)) else None
        terms = [end + full_use, event["gen"]["chat_off_at"], org_term, event["deleted_at"]]
        return min(t for t in terms if t is not None)

    def delete_at(event: dict[str, Any]) -> datetime:
        terms = [read_only_at(event) + view, event["deleted_at"]]
        return min(t for t in terms if t is not None)

    def generation(number: int, when: datetime, org_name: str) -> dict[str, Any]:
        o = org(org_name)
        return {"number": number, "on_at_start": o["on"], "times_on_at_start": o["times_on"], "chat_off_at": None,
                "dead": False}  # fmt: skip

    for number, line in enumerate(lines, start=1):
        message = parse_record(line)
        if isinstance(message, Rejection):
            rejected.append({"line": number, "reason": message.reason})
            continue
        if message.id in seen:
            duplicates += 1
            continue
        seen.add(message.id)
        t = message.occurred_at

        def settle(*touched: dict[str, Any], t: datetime = t) -> None:
            for event in touched:
                if not event["gen"]["dead"] and delete_at(event) <= t:
                    event["gen"]["dead"] = True

        data = message.data
        kind = message.type
        if kind == "organisation.chat_enabled" or kind == "organisation.chat_disabled":
            settle(*(e for e in events.values() if e["org"] == message.org))
            o = org(message.org)
            want = kind == "organisation.chat_enabled"
            if want and not o["on"]:
                o.update(on=True, off_at=None, times_on=o["times_on"] + 1)
            elif not want and o["on"]:
                o.update(on=False, off_at=t)
            continue
        if kind == "person.status_changed":
            settle(
                *(
                    e
                    for e in events.values()
                    if e["org"] == message.org and (data.person_id in e["staff"] or data.person_id == e["responsible"])
                )
            )
            if persons.get((message.org, data.person_id)) != "deleted":  # for good: the person's data is shredded
                persons[(message.org, data.person_id)] = data.status
            continue
        key = (message.org, data.event_id)
        event = events.get(key)
        if event is None or event["deleted_at"] is not None:
            if kind == "event.upserted" and event is None and data.chat_enabled:
                events[key] = {
                    "org": message.org, "event_id": data.event_id, "end": data.end, "cancelled_at": None,
                    "deleted_at": None, "enabled": True, "responsible": data.responsible,
                    "staff": {s.person_id: s.status for s in data.staff or [] if s.status != "removed"},
                    "gen": generation(1, t, message.org),
                }  # fmt: skip
            else:
                ignored += 1
            continue
        settle(event)
        if kind == "event.upserted":
            event["end"] = data.end
            event["responsible"] = data.responsible
            if data.staff is not None:
                event["staff"] = {s.person_id: s.status for s in data.staff if s.status != "removed"}
            if data.chat_enabled and not event["enabled"]:
                if event["gen"]["dead"]:
                    event["gen"] = generation(event["gen"]["number"] + 1, t, message.org)
                else:
                    event["gen"]["chat_off_at"] = None
            elif not data.chat_enabled and event["enabled"]:
                event["gen"]["chat_off_at"] = t
            event["enabled"] = data.chat_enabled
        elif kind == "staffing.changed" and data.status == "removed":
            event["staff"].pop(data.person_id, None)
        elif kind == "staffing.changed":
            event["staff"][data.person_id] = data.status
        elif kind == "event.cancelled":
            if event["cancelled_at"] is None:
                event["cancelled_at"] = t
        elif kind == "event.deleted":
            event["deleted_at"] = t

    chats = []
    for (org_name, event_id), event in sorted(events.items()):
        if event["gen"]["dead"] or now >= delete_at(event):
            phase = "deleted"
        elif not saw_on(event):
            phase = "awaiting_organisation"
        elif now >= read_only_at(event):
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
            "read_only_at": read_only_at(event).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "delete_at": delete_at(event).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })  # fmt: skip
    return {"chats": chats, "rejected": rejected, "ignored": ignored, "duplicates": duplicates}
