"""Kafka as the write path uses it outside the store: a producer for records that must reach the broker (acks=all,
bounded blocking), and reading one key's records of a topic from its beginning to its end as it is now (the audit's
checkpoints, the erasure log)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def kafka_producer(bootstrap_servers: str, client_id: str = "chatbridge") -> Any:
    """An idempotent producer (acks=all) whose blocking is bounded: a broker outage is an error to back off from,
    not a long hang."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap_servers.split(","), client_id=client_id, acks="all", linger_ms=5,
        max_block_ms=10000, reconnect_backoff_max_ms=5000,
    )  # fmt: skip


class AcknowledgedTopic:
    """Records to one topic, each acknowledged by the brokers before `send` returns. The producer is made on first
    use. After a failed send, sends within `retry_after` seconds fail at once (`resting`) instead of blocking their
    caller again: what was not sent stays the caller's, to go with the next. Callers hold their own lock."""

    def __init__(self, make_producer: Callable[[], Any], topic: str, retry_after: float = 30.0):
        self.make_producer = make_producer
        self.topic = topic
        self.retry_after = retry_after
        self.producer: Any = None
        self._failed_at: float | None = None

    @property
    def resting(self) -> bool:
        return self._failed_at is not None and time.monotonic() - self._failed_at < self.retry_after

    def send(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Send (key, value) records and wait for every acknowledgement; raises what the producer raised."""
        try:
            if self.producer is None:
                self.producer = self.make_producer()
            futures = [self.producer.send(self.topic, key=key, value=value) for key, value in records]
            self.producer.flush(timeout=10)
            for future in futures:
                future.get(timeout=10)
        except Exception:
            self._failed_at = time.monotonic()
            raise
        self._failed_at = None

    def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.close(timeout=10)


def read_key(bootstrap_servers: str, topic: str, key: bytes, client_id: str, timeout: float = 30.0) -> list[bytes]:
    """The values of every record with `key` on `topic`, from the beginning to the end offsets as they are now;
    raises TimeoutError when the topic cannot be read to its end in `timeout` seconds."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers.split(","), group_id=None, enable_auto_commit=False,
        client_id=client_id, consumer_timeout_ms=1000,
    )  # fmt: skip
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: list[bytes] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the topic {topic} could not be read to its end in {timeout:.0f}s")
            for records in consumer.poll(timeout_ms=500).values():
                found.extend(record.value for record in records if record.key == key)
        return found
    finally:
        consumer.close()
