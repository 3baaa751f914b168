"""Builders for HiOrg message streams, so that each test reads like the story it checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from chatbridge.cli.usecases import simulate_lines
from chatbridge.domain.lifecycle import Policy

CET = timezone(timedelta(hours=1))
ORG = "drk-koeln"
ALICE, BOB, CAROL, DAVE = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)


def at(day: int, hour: int = 0, month: int = 12) -> datetime:
    """A moment in December 2026 (Cologne time), e.g. at(1, 19) = 1 Dec 19:00 +01:00."""
    return datetime(2026, month, day, hour, tzinfo=CET)


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Stream:
    """A list of raw JSONL lines being written, one message per call."""

    lines: list[bytes] = field(default_factory=list)
    counter: int = 0

    def send(self, type_: str, when: datetime, data: dict[str, Any] | None, org: str = ORG, id_: str | None = None):
        self.counter += 1
        message: dict[str, Any] = {
            "id": id_ or f"msg-{self.counter}",
            "type": type_,
            "org": org,
            "occurred_at": when.isoformat(),
        }
        if data is not None:
            message["data"] = data
        self.lines.append(json.dumps(message).encode())
        return message["id"]

    def raw(self, line: bytes | str) -> None:
        self.lines.append(line.encode() if isinstance(line, str) else line)

    def org_on(self, when: datetime, org: str = ORG) -> str:
        address = {"street": "Oskar-Jäger-Str. 101", "postcode": "50825", "city": "Köln", "country": "DE"}
        return self.send(
            "organisation.chat_enabled", when, {"name": "DRK Köln", "email": "it@drk.example", "address": address}, org
        )

    def org_off(self, when: datetime, org: str = ORG) -> str:
        return self.send("organisation.chat_disabled", when, {}, org)

    def event(
        self,
        event_id: str,
        when: datetime,
        *,
        start: datetime,
        end: datetime,
        responsible: str | None = None,
        chat: bool = True,
        staff: dict[str, str] | None = None,
        org: str = ORG,
    ) -> str:
        data: dict[str, Any] = {
            "event_id": event_id,
            "title": "Sanitätsdienst",
            "start": start.isoformat(),
            "end": end.isoformat(),
            "responsible": responsible,
            "chat_enabled": chat,
        }
        if staff is not None:
            data["staff"] = [{"person_id": p, "status": s} for p, s in staff.items()]
        return self.send("event.upserted", when, data, org)

    def staffing(self, event_id: str, person_id: str, status: str, when: datetime, org: str = ORG) -> str:
        return self.send(
            "staffing.changed", when, {"event_id": event_id, "person_id": person_id, "status": status}, org
        )

    def cancel(self, event_id: str, when: datetime, org: str = ORG) -> str:
        return self.send("event.cancelled", when, {"event_id": event_id}, org)

    def delete(self, event_id: str, when: datetime, org: str = ORG) -> str:
        return self.send("event.deleted", when, {"event_id": event_id}, org)

    def person(self, person_id: str, status: str, when: datetime, org: str = ORG) -> str:
        return self.send("person.status_changed", when, {"person_id": person_id, "status": status}, org)

    def numbered(self) -> list[tuple[int, bytes]]:
        return list(enumerate(self.lines, start=1))

    def simulate(self, now: datetime, policy: Policy | None = None) -> dict[str, Any]:
        return simulate_lines(self.numbered(), now, policy or Policy())

    def chat(self, event_id: str, now: datetime, org: str = ORG, policy: Policy | None = None) -> dict[str, Any]:
        chats = [c for c in self.simulate(now, policy)["chats"] if (c["org"], c["event_id"]) == (org, event_id)]
        assert len(chats) == 1, f"expected one chat for {org}/{event_id}, got {chats}"
        return chats[0]
