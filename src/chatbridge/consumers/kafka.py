"""The Kafka consumer: HiOrg-Server's topics → `IntakeApplication.ingest`, exactly once in effect.

Each partition is a source of its own (`kafka:{topic}:{partition}`). A poll batch is split by partition and each
share is applied in ONE transaction holding its new events, its intake-ledger rows and the partition's position
(the next offset to read). So a record Kafka delivers again — after a crash between storing and committing, a
rebalance, or a replica that lost its partition while working on it — changes nothing: its offset lies below the
stored position and is skipped, and should two replicas race on one partition, the ledger's key (source, offset)
lets only one of them store it.

The stored position, not Kafka's committed offset, is the truth: on assignment the consumer seeks each partition
to its stored position. Offsets are still committed to Kafka after storing, so lag monitoring works.

Records that break the contract go to the dead-letter topic before their position is stored (see `dlq`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from chatbridge.application import IntakeApplication, Received
from chatbridge.consumers import dlq
from chatbridge.consumers.batches import store_batch
from chatbridge.domain.messages import Rejection, parse_record
from chatbridge.journal.chain import ChainHalted
from chatbridge.journal.intake import IntakeRecord, partition_source
from chatbridge.journal.topics import kafka_producer
from chatbridge.settings import Settings

log = logging.getLogger(__name__)


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and kafka-python's alike) gives a keyed record."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Ownership:
    """The chats this replica answers for: those whose event key falls on a partition it owns (of the first input
    topic), so that replicas in one group never reconcile the same chat at once."""

    topic: str
    partitions: frozenset[int]
    partition_count: int

    def owns(self, org: str, event_id: str) -> bool:
        return bool(self.partitions) and partition_of(f"{org}/{event_id}", self.partition_count) in self.partitions


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": "chatbridge",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_size,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": max(settings.kafka_session_timeout_ms // 3, 300),
        "reconnect_backoff_max_ms": 5000,
        **overrides,
    }


def producer(settings: Settings) -> KafkaProducer:
    """An idempotent producer (acks=all): a dead letter is on the broker before its record's position is stored."""
    return kafka_producer(settings.kafka_bootstrap_servers)


class EndOffsetReader:
    """The input topics' end offsets, every partition, for the reconciler's deletion gate (reconciler.knowledge).

    A consumer outside any group that reads metadata and offsets only, never records. Raises `KafkaError` (or
    `OSError`) when the broker cannot be read or a topic is missing, so that the gate waits rather than guesses.
    One thread at a time: the gate reads once per pass, under its lock.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._consumer: KafkaConsumer | None = None

    def __call__(self) -> dict[tuple[str, int], int]:
        try:
            if self._consumer is None:
                self._consumer = KafkaConsumer(
                    **consumer_config(self.settings, group_id=None, client_id="chatbridge-gate"),
                    bootstrap_timeout_ms=5000,  # an unreachable broker is an answer within a pass, not a hang
                    request_timeout_ms=10000,
                )
            tps = []
            for topic in self.settings.topic_list:
                partitions = self._consumer.partitions_for_topic(topic)
                if not partitions:
                    raise KafkaError(f"topic {topic!r} not found")
                tps += [TopicPartition(topic, p) for p in sorted(partitions)]
            return {(tp.topic, tp.partition): int(end) for tp, end in self._consumer.end_offsets(tps).items()}
        except Exception:
            self.close()  # a fresh connection next time
            raise

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close(autocommit=False)


@contextmanager
def fewer_collections(young: int = 50_000) -> Iterator[None]:
    """Let Python's cycle collector run less often while the intake consumes: every stored batch allocates tens of
    thousands of short-lived objects (events, their states, rows), and with the default threshold (700) the collector
    ran every few messages, now and then walking every object the process keeps (the aggregate and key caches):
    ~15 % of the intake's CPU time. Cyclic garbage is still collected, in larger and rarer rounds."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], young), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@dataclass
class IntakeCounts:
    """What the worker did since it started, for its log lines and its summary."""

    outcomes: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    redelivered: int = 0  # records skipped because their offset was already stored
    by_topic: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, outcome) → records, for /metrics

    def add(self, records: Iterable[IntakeRecord], topic: str | None = None) -> None:
        for record in records:
            self.outcomes[record.outcome] = self.outcomes.get(record.outcome, 0) + 1
            if topic is not None:
                key = (topic, record.outcome)
                self.by_topic[key] = self.by_topic.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


class _Assignments(ConsumerRebalanceListener):
    """Notes partition changes; the poll loop acts on them (the callbacks run on kafka-python's IO thread,
    where database work would stall heartbeats)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._assigned: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        with self._lock:
            self._assigned.update(assigned)

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        with self._lock:
            self._revoked.update(revoked)
            self._assigned.difference_update(revoked)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self.on_partitions_revoked(lost)

    def take(self) -> tuple[set[TopicPartition], set[TopicPartition]]:
        with self._lock:
            assigned, revoked = self._assigned, self._revoked
            self._assigned, self._revoked = set(), set()
        return assigned, revoked


class KafkaIngestor:
    """Polls the input topics in a consumer group and applies each partition's share of a batch atomically.

    `after_poll(handled)` runs after every poll, also an empty one (the worker folds the projection there).
    """

    def __init__(
        self,
        app: IntakeApplication,
        settings: Settings,
        consumer: KafkaConsumer,
        *,
        after_poll: Callable[[int], None] | None = None,
        dead_letters: bool = True,
    ):
        self.app = app
        self.settings = settings
        self.after_poll = after_poll
        self.counts = IntakeCounts()
        self._consumer = consumer
        self._assignments = _Assignments()
        self._positions: dict[TopicPartition, int] = {}  # next offset to read, as stored
        self._producer = producer(settings) if dead_letters else None
        self._in_group = False
        # replaced whole, never changed in place: the reconciler's thread reads it while this one polls
        self.ownership = Ownership(settings.topic_list[0], frozenset(), 1)
        self._assigned: frozenset[TopicPartition] = frozenset()

    @classmethod
    def in_group(cls, app: IntakeApplication, settings: Settings, **options: Any) -> KafkaIngestor:
        """The worker's consumer: a member of the group, sharing the topics' partitions with other replicas."""
        # an unreachable broker is an error within seconds (the worker backs off and tries again), not a long hang
        consumer = KafkaConsumer(**consumer_config(settings, group_id=settings.group_id), bootstrap_timeout_ms=5000)
        ingestor = cls(app, settings, consumer, **options)
        ingestor._consumer.subscribe(settings.topic_list, listener=ingestor._assignments)
        ingestor._in_group = True
        return ingestor

    @classmethod
    def every_partition(cls, app: IntakeApplication, settings: Settings, **options: Any) -> KafkaIngestor:
        """Outside any group, every partition of the topics, from the stored positions (`replay --from-kafka`)."""
        consumer = KafkaConsumer(**consumer_config(settings, group_id=None))
        tps = []
        for topic in settings.topic_list:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                consumer.close()
                raise KafkaError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap_servers}")
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ingestor = cls(app, settings, consumer, **options)
        ingestor._assignments.on_partitions_assigned(tps)
        return ingestor

    def end_offsets(self) -> dict[TopicPartition, int]:
        return dict(self._consumer.end_offsets(list(self._consumer.assignment())))

    def drain(self, ends: dict[TopicPartition, int], progress: Callable[[int], None] | None = None) -> IntakeCounts:
        """Apply every record before `ends` (the topics' ends when the drain began), then stop."""
        try:
            with fewer_collections():
                while True:
                    self.poll_once(progress=progress)
                    # the consumer's position, not the last stored offset: transaction markers may end a partition
                    if all(self._consumer.position(tp) >= end for tp, end in ends.items()):
                        return self.counts
        finally:
            self.close()

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """The partitions this consumer holds; safe to read from another thread (/readyz)."""
        return self._assigned

    def lag(self) -> dict[tuple[str, int], int]:
        """Records on the broker not yet stored, per assigned partition (for /metrics; call on the poll thread)."""
        lag = {}
        for tp, position in self._positions.items():
            highwater = self._consumer.highwater(tp)  # known after the partition's first fetch
            lag[(tp.topic, tp.partition)] = max(0, (highwater if highwater is not None else position) - position)
        return lag

    def run(self, stop: threading.Event, *, idle_stop: float | None = None) -> IntakeCounts:
        """Consume until `stop` is set (SIGTERM/SIGINT): the batch in hand is finished, stored and committed.

        `idle_stop`: also stop after that many seconds without a record (for draining a topic in tests and
        `replay --from-kafka`).
        """
        idle_since = time.monotonic()
        failures = 0
        try:
            with fewer_collections():
                while not stop.is_set():
                    try:
                        stored = self.poll_once()
                        failures = 0
                    except ChainHalted:  # the audit's writer said why, once; not ready until an operator steps in
                        self._rewind()
                        stop.wait(5.0)
                        continue
                    except (KafkaError, OperationalError, InterfaceError, OSError) as error:
                        failures += 1
                        delay = min(0.5 * 2**failures, 30.0)
                        log.warning("intake paused %.1fs after %s: %s", delay, type(error).__name__, error)
                        self._rewind()
                        stop.wait(delay)
                        continue
                    if stored:
                        idle_since = time.monotonic()
                    elif idle_stop is not None and time.monotonic() - idle_since >= idle_stop:
                        break
        finally:
            self.close()
        return self.counts

    def poll_once(self, timeout_ms: int = 500, progress: Callable[[int], None] | None = None) -> int:
        """One poll: apply each partition's records, then commit. Returns how many records were handled."""
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.settings.batch_size)
        fresh = self._follow_assignments()
        handled = 0
        commits: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, records in polled.items():
            if tp in fresh or tp not in self._positions:
                continue  # fetched before the seek to the stored position: they come again from there
            handled += self._apply(tp, records)
            commits[tp] = OffsetAndMetadata(self._positions[tp], "", -1)
        if commits:
            self.counts.batches += 1
            if self._in_group:
                self._commit(commits)
            if progress:
                progress(handled)
        if self.after_poll:
            self.after_poll(handled)
        return handled

    def _follow_assignments(self) -> set[TopicPartition]:
        assigned, revoked = self._assignments.take()
        for tp in revoked:
            self._positions.pop(tp, None)
        for tp in assigned:
            position = self.app.position(partition_source(tp.topic, tp.partition))
            self._positions[tp] = position
            if position:
                self._consumer.seek(tp, position)
            else:
                self._consumer.seek_to_beginning(tp)
        if assigned or revoked:
            log.info("partitions now %s", sorted(f"{tp.topic}:{tp.partition}" for tp in self._positions))
            self._assigned = frozenset(self._positions)
            topic = self.ownership.topic
            self.ownership = Ownership(
                topic,
                frozenset(tp.partition for tp in self._positions if tp.topic == topic),
                len(self._consumer.partitions_for_topic(topic) or ()) or 1,
            )
        return assigned

    def _rewind(self) -> None:
        """After a failed batch: read every partition again from its stored position."""
        for tp in list(self._positions):
            try:
                self._positions[tp] = self.app.position(partition_source(tp.topic, tp.partition))
                self._consumer.seek(tp, self._positions[tp])
            except Exception as error:  # the partition may be gone in a rebalance; the next assignment seeks
                log.debug("rewind of %s:%s failed: %s", tp.topic, tp.partition, error)

    def _apply(self, tp: TopicPartition, records: Sequence[Any]) -> int:
        source = partition_source(tp.topic, tp.partition)
        pending = [r for r in records if r.offset >= self._positions[tp]]
        self.counts.redelivered += len(records) - len(pending)
        if not pending:
            return 0
        received = [Received(r.offset + 1, parse_record(r.value if r.value is not None else b"")) for r in pending]
        self._dead_letter(tp, pending, received)
        outcomes = store_batch(self.app, source, received)  # what another replica stored first is not counted
        self._positions[tp] = pending[-1].offset + 1
        self.counts.add(outcomes, tp.topic)
        return len(pending)

    def _dead_letter(self, tp: TopicPartition, records: Sequence[Any], received: Sequence[Received]) -> None:
        if self._producer is None:
            return
        futures = [
            self._producer.send(
                self.settings.dlq_topic,
                key=record.key,
                value=dlq.dead_letter(record, item.parsed.reason),
            )
            for record, item in zip(records, received, strict=True)
            if isinstance(item.parsed, Rejection)
        ]
        if futures:
            self._producer.flush()
            for future in futures:
                future.get(timeout=30)  # raises if the broker did not take it: the batch is then not stored

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            self._consumer.commit(offsets)
        except KafkaError as error:  # only lag monitoring depends on it; the stored position is the truth
            log.info("offset commit skipped: %s", error)

    def close(self) -> None:
        """Leave the group cleanly (its partitions move at once, not after the session timeout)."""
        try:
            self._consumer.close(autocommit=False)
        finally:
            if self._producer is not None:
                self._producer.close(timeout=10)
