"""A seeded, realistic HiOrg stream whose order on Kafka is not its order in time (DESIGN.md "Order is event time").

Three organisations, about twenty events, fifteen persons, a few hundred messages, built as plain JSON dicts (no
code from src/: the stream is the input, not the thing under test). Every message carries the contract's Kafka key
("{org}/{event_id}", "{org}", "{org}/person/{person_id}"). Each key's messages are published in `occurred_at` order;
across keys the publish order lags behind time by up to a few days, so a consumer meets an organisation switched off
after later messages of its chats, a person blocked after the staffing that names them, and so on.

What the stream holds, on purpose:
- an organisation switching its feature off and on while its chats live, then off for good; one that enables the
  feature only after chats were enabled (awaiting), and switches it off before its last chat is enabled; one with a
  short off/on just after its first chats were enabled;
- events moved later (some reopening a read-only chat) and earlier, cancelled (twice), deleted (and named again
  afterwards: ignored), chat switched off and on, re-enabled after the deletion deadline (a new generation), never
  enabled (ignored), staffing changes of every status;
- persons restricted, external, blocked (and unblocked), deleted; two deleted persons named again later;
- messages an hour either side of a chat's delete deadline: before, they change the live chat; after, the
  generation is deleted for good and keeps its deadlines.
- a few re-sent messages (same id, same bytes, same key): duplicates.

Known accepted limitation (not a bug to find here): a message naming a person after their deletion, but stored
before the deletion message, cannot be read once the person's key is destroyed (crypto-shredding). Kafka orders
only within a partition, so the stream names a deleted person again only on an event whose key hashes (Kafka's
default partitioner, murmur2) to the same partition as the person's key, and publishes it after the deletion:
every reader stores it after the deletion. No other message names a deleted person after the deletion's
`occurred_at`.

Every message has its own instant (no two messages share an `occurred_at`), so the fold's order does not depend on
how partitions interleave (ties keep stored order, which differs across partitions).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kafka.partitioner.default import murmur2

BASE = datetime(2026, 11, 1, tzinfo=UTC)
CET = timezone(timedelta(hours=1))
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
FULL_USE, VIEW = 2 * DAY, 30 * DAY  # the contract's defaults, for the deadlines the stream straddles

# `--now` values (UTC) the tests look at: while organisation A is off, busy December, while organisation B is off,
# after A switched off for good, and half an hour after A's last deadline.
NOWS = (
    "2026-11-19T12:00:00Z",
    "2026-12-05T12:00:00Z",
    "2026-12-21T12:00:00Z",
    "2027-01-15T12:00:00Z",
    "2027-02-09T12:30:00Z",
)

ORG_A, ORG_B, ORG_C = "drk-koeln", "asb-bonn", "juh-rhein"
STAFFING = ("registered", "assigned", "declined", "removed")


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and kafka-python alike) gives a keyed record."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Message:
    key: str
    body: dict[str, Any]
    at: datetime  # occurred_at, as an instant

    @property
    def line(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False).encode()

    @property
    def id(self) -> str:
        return str(self.body["id"])


@dataclass
class EventTimeStream:
    messages: list[Message]  # in publish order
    partitions: int
    renamed: list[tuple[str, str, str]]  # (org, person_id, event_id): deleted, then named again on that event
    orgs: tuple[str, ...]
    persons: dict[str, list[str]]

    @property
    def lines(self) -> list[bytes]:
        return [m.line for m in self.messages]

    @property
    def records(self) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs in publish order."""
        return [(m.key.encode(), m.line) for m in self.messages]

    def write(self, path: Path, messages: list[Message] | None = None) -> Path:
        path.write_bytes(b"".join(m.line + b"\n" for m in (self.messages if messages is None else messages)))
        return path


def _moment(t: datetime) -> str:
    return t.astimezone(CET).isoformat()


@dataclass
class _Event:
    org: str
    event_id: str
    title: str
    start: datetime
    end: datetime
    responsible: str | None
    chat: bool

    def record(self, staff: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "event_id": self.event_id, "title": self.title, "start": _moment(self.start), "end": _moment(self.end),
            "responsible": self.responsible, "chat_enabled": self.chat,
        }  # fmt: skip
        if staff is not None:
            data["staff"] = [{"person_id": p, "status": s} for p, s in staff]
        return data


@dataclass
class _Builder:
    rng: random.Random
    seed: int
    partitions: int
    messages: list[Message] = field(default_factory=list)
    instants: set[datetime] = field(default_factory=set)
    deleted: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (org, person) → deletion time
    persons: dict[str, list[str]] = field(default_factory=dict)
    renamed: list[tuple[str, str, str]] = field(default_factory=list)
    rename_after: dict[str, str] = field(default_factory=dict)  # message id → the deletion it must follow
    deletion_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    event_numbers: Iterator[int] = field(default_factory=lambda: iter(range(10_000)))

    # -- messages ------------------------------------------------------------------------------------------------

    def instant(self, t: datetime) -> datetime:
        """`t` to the second, moved on until no other message has that instant."""
        t = t.replace(microsecond=0)
        while t in self.instants:
            t += timedelta(seconds=1)
        self.instants.add(t)
        return t

    def send(self, type_: str, org: str, t: datetime, data: dict[str, Any], key: str) -> Message:
        t = self.instant(t)
        number = len(self.messages) + 1
        # a few producers write UTC, most local time: the same instant either way
        stamp = t.isoformat().replace("+00:00", "Z") if number % 7 == 0 else _moment(t)
        body = {"id": f"et{self.seed}-{number:04d}", "type": type_, "org": org, "occurred_at": stamp, "data": data}
        message = Message(key, body, t)
        self.messages.append(message)
        return message

    def org_on(self, org: str, t: datetime) -> None:
        address = {"street": "Auf dem Hügel 5", "postcode": "53121", "city": "Bonn", "country": "DE"}
        data = {"name": org.upper(), "email": f"it@{org}.example", "address": address}
        self.send("organisation.chat_enabled", org, t, data, org)

    def org_off(self, org: str, t: datetime) -> None:
        self.send("organisation.chat_disabled", org, t, {}, org)

    def person(self, org: str, person_id: str, status: str, t: datetime) -> Message:
        message = self.send("person.status_changed", org, t, {"person_id": person_id, "status": status},
                            f"{org}/person/{person_id}")  # fmt: skip
        if status == "deleted":
            self.deleted[(org, person_id)] = message.at
            self.deletion_ids[(org, person_id)] = message.id
        return message

    def upsert(self, event: _Event, t: datetime, staff: list[tuple[str, str]] | None = None) -> Message:
        if event.responsible is not None and not self.may_name(event.org, event.responsible, t):
            event.responsible = None  # HiOrg-Server would name someone else, or no one
        if staff is not None:
            staff = [(p, s) for p, s in staff if self.may_name(event.org, p, t)]
        return self.send("event.upserted", event.org, t, event.record(staff), f"{event.org}/{event.event_id}")

    def staffing(self, event: _Event, t: datetime, person_id: str | None = None, status: str | None = None) -> None:
        person_id = person_id or self.pick(event.org, t)
        status = status or self.rng.choice(STAFFING)
        data = {"event_id": event.event_id, "person_id": person_id, "status": status}
        self.send("staffing.changed", event.org, t, data, f"{event.org}/{event.event_id}")

    def cancel(self, event: _Event, t: datetime) -> None:
        self.send("event.cancelled", event.org, t, {"event_id": event.event_id}, f"{event.org}/{event.event_id}")

    def delete(self, event: _Event, t: datetime) -> None:
        self.send("event.deleted", event.org, t, {"event_id": event.event_id}, f"{event.org}/{event.event_id}")

    # -- persons -------------------------------------------------------------------------------------------------

    def may_name(self, org: str, person_id: str, t: datetime) -> bool:
        deleted = self.deleted.get((org, person_id))
        return deleted is None or t < deleted - HOUR

    def pick(self, org: str, t: datetime) -> str:
        return self.rng.choice([p for p in self.persons[org] if self.may_name(org, p, t)])

    def staff(self, org: str, t: datetime, size: int) -> list[tuple[str, str]]:
        alive = [p for p in self.persons[org] if self.may_name(org, p, t)]
        chosen = self.rng.sample(alive, min(size, len(alive)))
        return [(p, self.rng.choice(("assigned", "assigned", "registered", "declined"))) for p in chosen]

    # -- events --------------------------------------------------------------------------------------------------

    def new_event(self, org: str, start: datetime, hours: int, chat: bool = True, event_id: str | None = None,
                  created: datetime | None = None) -> _Event:  # fmt: skip
        number = next(self.event_numbers)
        event_id = event_id or f"{40000 + 137 * number + self.rng.randint(0, 99)}"
        start = start.replace(minute=0, second=0, microsecond=0)
        kind = self.rng.choice(("Sanitätsdienst", "Dienstabend", "Übung", "Blutspende", "Einsatz"))
        responsible = self.pick(org, created or start)
        return _Event(org, event_id, f"{kind} {number}", start, start + hours * HOUR, responsible, chat)

    def some_staffing(self, event: _Event, earliest: datetime, latest: datetime, count: int) -> None:
        for _ in range(count):
            self.staffing(event, earliest + (latest - earliest) * self.rng.random())

    def scenario(self, kind: str, org: str, start: datetime) -> _Event:
        rng = self.rng
        event = self.new_event(org, start, rng.randint(3, 14))
        created = event.start - rng.randint(4, 14) * DAY - rng.randint(0, 600) * timedelta(minutes=1)
        staffed_until = event.end + rng.randint(0, 36) * HOUR
        if kind == "never":  # chat never enabled: every message about it is ignored
            event.chat = False
            self.upsert(event, created, self.staff(org, created, 4))
            self.some_staffing(event, created, staffed_until, rng.randint(2, 4))
            self.upsert(event, created + 2 * DAY)
            return event
        self.upsert(event, created, self.staff(org, created, rng.randint(2, 6)))
        self.some_staffing(event, created, staffed_until, rng.randint(3, 7))
        if kind == "plain":
            event.title += " (Ergänzung)"
            self.upsert(event, created + rng.randint(1, 3) * DAY)  # no staff: staffing kept
        elif kind == "later":  # moved later: sometimes after the chat became read-only, which reopens it
            moved_at = event.end + FULL_USE + rng.randint(1, 20) * HOUR if rng.random() < 0.6 else created + DAY
            shift = rng.randint(2, 12) * DAY
            event.start, event.end = event.start + shift, event.end + shift
            self.upsert(event, moved_at, self.staff(org, moved_at, rng.randint(2, 5)))
            self.some_staffing(event, moved_at, event.end, rng.randint(1, 3))
        elif kind == "earlier":
            shift = rng.randint(1, 4) * DAY
            moved_at = created + rng.randint(2, 20) * HOUR
            event.start, event.end = event.start - shift, event.end - shift
            self.upsert(event, moved_at)
            self.some_staffing(event, moved_at, event.end, rng.randint(1, 2))
        elif kind == "cancelled":  # before the start (the chat ends then) or while it runs
            cancelled_at = event.start - rng.randint(-3, 48) * HOUR
            self.cancel(event, cancelled_at)
            self.staffing(event, cancelled_at + HOUR)  # staffing still changes after a cancellation
            self.cancel(event, cancelled_at + DAY)  # a second cancellation changes nothing
        elif kind == "deleted":
            deleted_at = event.start + rng.randint(-48, 240) * HOUR
            self.delete(event, deleted_at)
            self.staffing(event, deleted_at + 2 * HOUR)  # ignored: the event is gone
            self.upsert(event, deleted_at + DAY)  # ignored, even with chat enabled
        elif kind == "toggled":  # chat off (read-only now, deleted in 30 days), then on again before that
            off_at = event.start - rng.randint(1, 3) * DAY
            event.chat = False
            self.upsert(event, off_at)
            self.staffing(event, off_at + 3 * HOUR)
            event.chat = True
            self.upsert(event, off_at + rng.randint(5, 40) * HOUR)
        elif kind == "regenerated":  # chat off after the event; deleted by its deadline; on again: generation 2
            event.chat = False
            self.upsert(event, event.end + 3 * DAY)
            delete_at = event.end + FULL_USE + VIEW
            event.chat = True
            self.upsert(event, delete_at + rng.randint(1, 20) * DAY, self.staff(org, delete_at, 3))
        return event

    def straddle(self, org: str, start: datetime, reopen: bool) -> _Event:
        """An event of an organisation whose feature stays on: its delete deadline is end + FULL_USE + VIEW."""
        event = self.new_event(org, start, 6)
        created = event.start - 6 * DAY
        self.upsert(event, created, self.staff(org, created, 4))
        self.some_staffing(event, created, event.end, 3)
        delete_at = event.end + FULL_USE + VIEW
        self.staffing(event, delete_at - HOUR)
        if reopen:  # just before the deadline: the chat is moved 40 days on and is active again
            event.start, event.end = event.start + 40 * DAY, event.end + 40 * DAY
            self.upsert(event, delete_at - 30 * 60 * timedelta(seconds=1))
            return event
        # just after: deleted for good, deadlines kept; then chat off and on: a new generation
        event.start, event.end = event.start + 3 * DAY, event.end + 3 * DAY
        self.upsert(event, delete_at + HOUR)
        self.staffing(event, delete_at + 90 * timedelta(minutes=1))
        event.chat = False
        self.upsert(event, delete_at + 2 * HOUR)
        event.chat = True
        self.upsert(event, delete_at + 3 * HOUR, self.staff(org, delete_at, 2))
        return event

    def rename_event(self, org: str, person_id: str) -> None:
        """An event named on the deleted person's partition: staffed by them before, by the 'new' person after."""
        deleted_at = self.deleted[(org, person_id)]
        wanted = partition_of(f"{org}/person/{person_id}", self.partitions)
        event_id = next(
            e for e in (f"{70000 + self.rng.randint(0, 29999)}" for _ in range(10_000))
            if partition_of(f"{org}/{e}", self.partitions) == wanted
        )  # fmt: skip
        event = self.new_event(org, deleted_at + 9 * DAY, 8, event_id=event_id, created=deleted_at - 6 * DAY)
        self.upsert(event, deleted_at - 5 * DAY, [(person_id, "assigned"), *self.staff(org, deleted_at - 5 * DAY, 2)])
        self.staffing(event, deleted_at - 3 * DAY, person_id, "registered")
        later = [
            self.send("staffing.changed", org, deleted_at + 2 * DAY,
                      {"event_id": event_id, "person_id": person_id, "status": "assigned"}, f"{org}/{event_id}"),
            self.person(org, person_id, "restricted", deleted_at + 3 * DAY),
        ]  # fmt: skip
        event.responsible = person_id
        later.append(self.send("event.upserted", org, deleted_at + 4 * DAY, event.record(), f"{org}/{event_id}"))
        for message in later:
            self.rename_after[message.id] = self.deletion_ids[(org, person_id)]
        self.renamed.append((org, person_id, event_id))

    # -- publish order -------------------------------------------------------------------------------------------

    def publish_order(self, duplicates: int) -> list[Message]:
        """Each key in time order; across keys up to ~3 days late; a re-naming after its deletion."""
        published: dict[str, datetime] = {}
        last_of_key: dict[str, datetime] = {}
        for message in sorted(self.messages, key=lambda m: m.at):
            lag = timedelta(0) if self.rng.random() < 0.3 else self.rng.uniform(0, 72) * HOUR
            moment = max(message.at + lag, last_of_key.get(message.key, message.at))
            if message.id in self.rename_after:
                moment = max(moment, published[self.rename_after[message.id]])
            moment += timedelta(milliseconds=1)
            published[message.id] = last_of_key[message.key] = moment
        order = sorted(self.messages, key=lambda m: (published[m.id], m.at))
        # re-sent messages: the same bytes on the same key, some time after the original
        for original in self.rng.sample([m for m in order if m.key != m.body["org"]], duplicates):
            index = order.index(original)
            order.insert(self.rng.randint(index + 1, min(len(order), index + 40)), original)
        return order


def generate(seed: int = 2026, partitions: int = 8, duplicates: int = 4) -> EventTimeStream:
    rng = random.Random(seed)
    b = _Builder(rng, seed, partitions)
    orgs = (ORG_A, ORG_B, ORG_C)
    for org in orgs:
        b.persons[org] = [f"{rng.getrandbits(128):032x}" for _ in range(5)]
    pa, pb, pc = (b.persons[o] for o in orgs)

    # organisations: A on, off and on while its chats live, off for good in January; B on only after its first chats
    # were enabled, a short off in December (some chats deleted meanwhile), off for good in January before one more
    # chat is enabled; C a short off just after its first chat was enabled
    b.org_on(ORG_A, BASE + 8 * HOUR)
    b.org_off(ORG_A, BASE + 17 * DAY + 10 * HOUR)
    b.org_on(ORG_A, BASE + 20 * DAY + 9 * HOUR)
    b.org_off(ORG_A, datetime(2027, 1, 10, 12, tzinfo=UTC))
    b.org_on(ORG_B, BASE + 11 * DAY + 14 * HOUR)
    b.org_off(ORG_B, datetime(2026, 12, 20, 9, tzinfo=UTC))
    b.org_on(ORG_B, datetime(2026, 12, 22, 16, tzinfo=UTC))
    b.org_off(ORG_B, datetime(2027, 1, 20, 8, tzinfo=UTC))
    b.org_on(ORG_C, BASE - 2 * DAY)
    b.org_off(ORG_C, BASE + 2 * DAY + 10 * HOUR)
    b.org_on(ORG_C, BASE + 3 * DAY + 10 * HOUR)

    # persons: statuses change; some blocked (one unblocked), some deleted — two of those named again later
    b.person(ORG_A, pa[1], "blocked", BASE + 14 * DAY + 9 * HOUR)
    b.person(ORG_A, pa[1], "active", BASE + 27 * DAY + 9 * HOUR)
    b.person(ORG_B, pb[3], "blocked", BASE + 19 * DAY + 11 * HOUR)
    b.person(ORG_C, pc[2], "blocked", BASE + 30 * DAY + 8 * HOUR)
    b.person(ORG_C, pc[2], "active", BASE + 44 * DAY + 8 * HOUR)
    b.person(ORG_A, pa[2], "deleted", BASE + 23 * DAY + 15 * HOUR)
    b.person(ORG_B, pb[4], "deleted", BASE + 37 * DAY + 10 * HOUR)
    b.person(ORG_C, pc[0], "deleted", BASE + 26 * DAY + 18 * HOUR)
    for org in orgs:
        for person_id in b.persons[org]:
            for _ in range(rng.randint(0, 2)):
                when = BASE + rng.randint(0, 50) * DAY + rng.randint(0, 1439) * timedelta(minutes=1)
                if b.may_name(org, person_id, when):
                    b.person(org, person_id, rng.choice(("active", "restricted", "external")), when)

    # events: every kind in every organisation, starting through November and December
    kinds = ["plain", "later", "cancelled", "toggled", "deleted", "earlier", "regenerated", "never"]
    for index in range(18):
        org = orgs[index % 3]
        start = BASE + rng.randint(6, 50) * DAY + rng.randint(7, 18) * HOUR
        if org == ORG_B and index < 6:
            start = BASE + rng.randint(4, 9) * DAY + 9 * HOUR  # enabled before B switched the feature on
        b.scenario(kinds[index % len(kinds)], org, start)
    # A's chat enabled while A's feature is off (awaiting until A switches it on again)
    late = b.new_event(ORG_A, BASE + 25 * DAY + 10 * HOUR, 5, chat=False)
    b.upsert(late, BASE + 10 * DAY, b.staff(ORG_A, BASE + 10 * DAY, 3))
    late.chat = True
    b.upsert(late, BASE + 18 * DAY + 12 * HOUR)
    b.some_staffing(late, BASE + 18 * DAY, late.end, 3)
    # an A event ending just before A switches off for good: its deadline is A's, messages an hour either side
    last = b.new_event(ORG_A, datetime(2027, 1, 8, 10, tzinfo=UTC), 10)
    b.upsert(last, datetime(2026, 12, 28, 9, tzinfo=UTC), b.staff(ORG_A, datetime(2026, 12, 28, tzinfo=UTC), 4))
    a_delete_at = datetime(2027, 1, 10, 12, tzinfo=UTC) + VIEW
    b.staffing(last, a_delete_at - HOUR)
    b.upsert(last, a_delete_at + HOUR)
    # B's chat enabled after B switched the feature off for good: it waits for the organisation
    waiting = b.new_event(ORG_B, datetime(2027, 2, 3, 8, tzinfo=UTC), 9, created=datetime(2027, 1, 25, tzinfo=UTC))
    b.upsert(waiting, datetime(2027, 1, 25, 10, tzinfo=UTC), b.staff(ORG_B, datetime(2027, 1, 25, tzinfo=UTC), 3))
    b.some_staffing(waiting, datetime(2027, 1, 25, 11, tzinfo=UTC), waiting.end, 2)
    # C's deadlines are end + FULL_USE + VIEW: one straddled to reopen, one to be deleted for good, then regenerated
    b.straddle(ORG_C, BASE + 8 * DAY + 9 * HOUR, reopen=True)
    b.straddle(ORG_C, BASE + 15 * DAY + 9 * HOUR, reopen=False)
    # deleted persons named again, on their own partition, after the deletion
    b.rename_event(ORG_A, pa[2])
    b.rename_event(ORG_C, pc[0])

    order = b.publish_order(duplicates)
    return EventTimeStream(order, partitions, b.renamed, orgs, b.persons)
