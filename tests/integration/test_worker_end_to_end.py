"""`chatbridge run` as operators deploy it: Kafka in, chats in Synapse out, status back on Kafka — one process."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from chatbridge.backends.port import BackendError
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, matrix, org)
from tests.integration.synapse_support import Synapse as Synapse
from tests.kafka_support import Worker, new_topic, publish, wait_until, worker_env
from tests.support import Stream

pytestmark = pytest.mark.integration


def statuses(bootstrap: str, topic: str) -> list[tuple[str, dict[str, Any]]]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)  # fmt: skip
    try:
        return [(record.key.decode(), json.loads(record.value)) for record in consumer]
    finally:
        consumer.close()


def test_run_consumes_reconciles_the_chats_and_reports_their_status(
    kafka_bootstrap: str, synapse: Synapse, matrix, org: str, tmp_path: Path
) -> None:
    alice, bob = uuid.uuid4().hex, uuid.uuid4().hex
    for person in (alice, bob):
        synapse.register_user(matrix.user_id(org, person))
    topic = new_topic(kafka_bootstrap, partitions=2)
    status_topic = f"status-{topic}"
    env = worker_env(
        kafka_bootstrap, topic, {"CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")},
        CHATBRIDGE_STATUS_TOPIC=status_topic, CHATBRIDGE_RECONCILE_INTERVAL="1",
    )  # fmt: skip
    now = datetime.now(UTC)
    start, end = now + timedelta(days=1), now + timedelta(days=1, hours=8)
    s = Stream()
    s.org_on(now - timedelta(minutes=5), org=org)
    s.event("4711", now - timedelta(minutes=4), start=start, end=end, responsible=alice, staff={bob: "assigned"},
            org=org)  # fmt: skip

    def members() -> set[str]:
        try:
            chat = matrix.get_chat(org, "4711", 1)
        except BackendError:  # read while the worker is still making the room (its power levels not yet set)
            return set()
        return set() if chat is None else set(chat.members)

    worker = Worker(env, tmp_path, args=())
    try:
        publish(kafka_bootstrap, topic, s.lines)
        both = {matrix.user_id(org, alice), matrix.user_id(org, bob)}
        wait_until(lambda: members() == both, 90, "alice and bob in the chat", worker.output)
        s.send("staffing.changed", now - timedelta(minutes=1), {"event_id": "4711", "person_id": bob,
                                                                 "status": "declined"}, org=org)  # fmt: skip
        publish(kafka_bootstrap, topic, s.lines[-1:])
        wait_until(lambda: members() == {matrix.user_id(org, alice)}, 90, "bob removed", worker.output)
        wait_until(
            lambda: any(d["members_synced"] == 1 for _, d in statuses(kafka_bootstrap, status_topic)),
            60, "the status after bob left", worker.output,
        )  # fmt: skip
    finally:
        assert worker.stop() == 0, worker.output()
    documents = [d for key, d in statuses(kafka_bootstrap, status_topic) if key == f"{org}/4711"]
    assert [d["members_synced"] for d in documents][-1] == 1
    assert 2 in [d["members_synced"] for d in documents]
    assert all(d["phase"] == "active" and d["generation"] == 1 for d in documents)
    assert documents[-1]["chat_link"].startswith("https://matrix.to/#/")
    assert alice not in worker.output() and bob not in worker.output()  # no person ids in the worker's log
