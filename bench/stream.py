"""Generated HiOrg streams: many events, each with its staffing changes, keyed as HiOrg-Server keys them."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

Record = tuple[bytes, bytes]  # (key, value)

ADDRESS = {"street": "Hauptstr. 1", "postcode": "50667", "city": "Köln", "country": "DE"}
STATUSES = ("assigned", "assigned", "registered", "declined", "removed")


def records(
    prefix: str, count: int, *, orgs: int = 10, persons: int = 400, per_event: int = 10, seed: int = 1
) -> Iterator[Record]:
    """`count` messages: the organisations' chat enabled, then events of `per_event` messages each (an
    `event.upserted` with chat, staffing changes, now and then a person's status or a cancellation). Every message
    is applied (no rejects, duplicates or ignored ones), so messages and stored events are about one to one.
    `prefix` keeps message ids, organisations and events apart from other streams in the same store."""
    rng = random.Random(seed)
    base = datetime(2026, 11, 1, 8, tzinfo=UTC)
    org_names = [f"{prefix}o{i}" for i in range(orgs)]
    people = {org: [f"{rng.getrandbits(128):032x}" for _ in range(persons)] for org in org_names}
    serial = 0

    def message(kind: str, org: str, data: dict[str, object]) -> bytes:
        nonlocal serial
        serial += 1
        moment = (base + timedelta(seconds=serial)).isoformat()
        return json.dumps(
            {"id": f"{prefix}-{serial}", "type": kind, "org": org, "occurred_at": moment, "data": data}
        ).encode()

    emitted = 0
    for org in org_names:
        if emitted >= count:
            return
        yield (
            org.encode(),
            message(
                "organisation.chat_enabled",
                org,
                {"name": org.upper(), "email": f"it@{org}.example", "address": ADDRESS},
            ),
        )
        emitted += 1
    event = 0
    while emitted < count:
        org = org_names[event % orgs]
        event_id = f"e{event}"
        event += 1
        key = f"{org}/{event_id}".encode()
        start = datetime(2027, 3, 1, tzinfo=UTC) + timedelta(hours=rng.randint(0, 24 * 60))
        staff = rng.sample(people[org], 4)
        upsert = {
            "event_id": event_id,
            "title": f"Sanitätsdienst {event}",
            "start": start.isoformat(),
            "end": (start + timedelta(hours=8)).isoformat(),
            "responsible": staff[0],
            "chat_enabled": True,
            "staff": [{"person_id": p, "status": "assigned"} for p in staff],
        }
        yield key, message("event.upserted", org, upsert)
        emitted += 1
        for _ in range(per_event - 1):
            if emitted >= count:
                return
            kind = rng.random()
            if kind < 0.03:
                person = rng.choice(people[org])
                status = rng.choice(["active", "restricted", "blocked"])
                yield (
                    f"{org}/person/{person}".encode(),
                    message("person.status_changed", org, {"person_id": person, "status": status}),
                )
            elif kind < 0.04:
                yield key, message("event.cancelled", org, {"event_id": event_id})
            else:
                change = {"event_id": event_id, "person_id": rng.choice(people[org]), "status": rng.choice(STATUSES)}
                yield key, message("staffing.changed", org, change)
            emitted += 1


def topic_ready(bootstrap: str, topic: str, count: int) -> bool:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return False
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values()) == count
    finally:
        consumer.close()


def prefilled_topic(bootstrap: str, name: str, count: int, partitions: int, **options: int) -> str:
    """A topic holding `count` generated messages, published once and kept for later runs (same name, same
    content): re-publishing 200,000 messages on every run would only measure the producer."""
    if topic_ready(bootstrap, name, count):
        return name
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if name in admin.list_topics():
            admin.delete_topics([name])  # a half-published topic from an interrupted run
            import time

            time.sleep(2)
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50, batch_size=512 * 1024)
    try:
        prefix = name.rsplit(".", 1)[-1]
        for key, value in records(prefix, count, **options):
            producer.send(name, key=key, value=value)
        producer.flush(timeout=300)
    finally:
        producer.close()
    if not topic_ready(bootstrap, name, count):
        raise RuntimeError(f"topic {name} does not hold {count} records after publishing")
    return name


def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return dict(consumer.end_offsets(tps))
    finally:
        consumer.close()
