"""Dead letters: records that broke the contract, kept whole on `chatbridge.dlq.v1`, listed and re-driven.

A dead letter is a JSON document holding the record's original key, value and headers (base64, byte for byte),
where it came from (topic, partition, offset), why it was rejected, and when. Nothing is lost: the operator can
see every rejected record (`chatbridge dlq list`) and, once the cause is fixed, publish it again to the input topic
(`chatbridge dlq redrive`) — as it was (the cause lay in chatbridge, e.g. a message type it learned since), or
with a corrected value the producer supplies.

A crash between publishing a dead letter and storing the position publishes it twice; `list` shows each source
record once.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import BaseModel

REDRIVEN_FROM = "chatbridge-redriven-from"  # header on a re-driven record: which dead letter it came from


class Header(BaseModel):
    key: str
    value: str | None  # base64


class DeadLetter(BaseModel):
    """One rejected record, as stored on the dead-letter topic."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: str | None  # base64 of the original key
    value: str  # base64 of the original value
    headers: list[Header]
    record_time: datetime | None  # the record's Kafka timestamp
    dead_lettered_at: datetime

    def original_value(self) -> bytes:
        return base64.b64decode(self.value)

    def original_key(self) -> bytes | None:
        return None if self.key is None else base64.b64decode(self.key)

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(h.key, base64.b64decode(h.value) if h.value is not None else b"") for h in self.headers]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def dead_letter(record: Any, reason: str, now: datetime | None = None) -> bytes:
    """The dead-letter document for a kafka-python `ConsumerRecord`."""
    letter = DeadLetter(
        reason=reason,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=_b64(record.key),
        value=_b64(record.value if record.value is not None else b"") or "",
        headers=[Header(key=k, value=_b64(v)) for k, v in (record.headers or [])],
        record_time=datetime.fromtimestamp(record.timestamp / 1000, UTC) if record.timestamp else None,
        dead_lettered_at=now or datetime.now(UTC),
    )
    return letter.model_dump_json().encode()


@dataclass(frozen=True)
class Stored:
    """A dead letter and its own place on the dead-letter topic (what `redrive --dlq-offset` selects)."""

    dlq_partition: int
    dlq_offset: int
    letter: DeadLetter


@dataclass(frozen=True)
class Selection:
    """Filters of `dlq list` and `dlq redrive`; all given ones must match."""

    reason: str | None = None  # a substring, case-insensitive
    since: datetime | None = None
    until: datetime | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    dlq_offsets: frozenset[int] = frozenset()

    def matches(self, stored: Stored) -> bool:
        letter = stored.letter
        return (
            (self.reason is None or self.reason.lower() in letter.reason.lower())
            and (self.since is None or letter.dead_lettered_at >= self.since)
            and (self.until is None or letter.dead_lettered_at < self.until)
            and (self.source_topic is None or letter.topic == self.source_topic)
            and (self.source_partition is None or letter.partition == self.source_partition)
            and (not self.dlq_offsets or stored.dlq_offset in self.dlq_offsets)
        )


def read_dead_letters(
    bootstrap_servers: list[str], dlq_topic: str, selection: Selection = Selection(), timeout: float = 30.0
) -> list[Stored]:
    """Every dead letter on the topic up to now that matches, each source record once, oldest first."""
    seen: set[tuple[str, int, int]] = set()
    found: list[Stored] = []
    for stored in _read_topic(bootstrap_servers, dlq_topic, timeout):
        letter = stored.letter
        coordinates = (letter.topic, letter.partition, letter.offset)
        if coordinates in seen:
            continue
        seen.add(coordinates)
        if selection.matches(stored):
            found.append(stored)
    return found


def _read_topic(bootstrap_servers: list[str], topic: str, timeout: float) -> Iterator[Stored]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, client_id="chatbridge-dlq", group_id=None, enable_auto_commit=False
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout:.0f}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield Stored(tp.partition, record.offset, DeadLetter.model_validate_json(record.value))
    finally:
        consumer.close(autocommit=False)


def redrive(
    producer: KafkaProducer, letters: list[Stored], *, to_topic: str | None = None, value: bytes | None = None
) -> int:
    """Publish the selected dead letters again to their source topic (or `to_topic`), with their key and headers.

    `value` replaces the payload (the producer's corrected record); it is allowed for one letter only.
    """
    if value is not None and len(letters) != 1:
        raise ValueError(f"a corrected value replaces exactly one dead letter, but {len(letters)} are selected")
    futures = []
    for stored in letters:
        letter = stored.letter
        headers = [h for h in letter.original_headers() if h[0] != REDRIVEN_FROM]
        headers.append((REDRIVEN_FROM, f"{stored.dlq_partition}:{stored.dlq_offset}".encode()))
        futures.append(
            producer.send(
                to_topic or letter.topic,
                key=letter.original_key(),
                value=value if value is not None else letter.original_value(),
                headers=headers,
            )
        )
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    return len(futures)


def summary_row(stored: Stored) -> dict[str, Any]:
    """What `dlq list --json` prints for one letter (the value stays base64: it may not be text)."""
    document = json.loads(stored.letter.model_dump_json())
    return {"dlq_partition": stored.dlq_partition, "dlq_offset": stored.dlq_offset, **document}
