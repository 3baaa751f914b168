"""`chatbridge run` as its monitoring sees it: /healthz, /readyz and /metrics answer during a run, the metrics
count what was sent, and the run's log holds no secret and no personal field."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, matrix, org)
from tests.integration.synapse_support import Synapse as Synapse
from tests.kafka_support import Worker, new_topic, publish, wait_until, worker_env
from tests.support import Stream

pytestmark = pytest.mark.integration


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(port: int, name: str, **labels: str) -> float:
    return samples(port).get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_readiness_and_metrics_match_what_was_sent_and_logs_hold_no_personal_data(
    kafka_bootstrap: str, synapse: Synapse, matrix, org: str, tmp_path: Path
) -> None:
    alice, bob, carol = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    for person in (alice, bob):  # carol has no chat account: she stays pending
        synapse.register_user(matrix.user_id(org, person))
    topic = new_topic(kafka_bootstrap, partitions=2)
    env = worker_env(
        kafka_bootstrap, topic, {"CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")},
        CHATBRIDGE_STATUS_TOPIC=f"status-{topic}", CHATBRIDGE_RECONCILE_INTERVAL="1",
        CHATBRIDGE_POSTGRES_PASSWORD="hunter2-not-logged",
    )  # fmt: skip
    now = datetime.now(UTC)
    s = Stream()
    s.org_on(now - timedelta(minutes=9), org=org)
    s.event("obs-1", now - timedelta(minutes=8), start=now + timedelta(days=1), end=now + timedelta(days=1, hours=6),
            responsible=alice, staff={bob: "assigned", carol: "assigned"}, org=org)  # fmt: skip
    s.event("obs-2", now - timedelta(minutes=7), start=now - timedelta(days=5), end=now - timedelta(days=4),
            responsible=alice, staff={}, org=org)  # read-only already: ended four days ago  # fmt: skip
    s.send("event.upserted", now - timedelta(minutes=6), {"event_id": "no-chat", "title": "x",
           "start": now.isoformat(), "end": (now + timedelta(hours=1)).isoformat(), "responsible": None,
           "chat_enabled": False}, org=org)  # ignored  # fmt: skip
    s.raw(s.lines[1])  # a duplicate
    s.raw(b"{not json")  # rejected
    s.raw(json.dumps({"id": "r2", "type": "event.exploded", "org": org, "occurred_at": now.isoformat(),
                      "data": {}}).encode())  # rejected  # fmt: skip

    worker = Worker(env, tmp_path, args=())
    try:
        port = worker.http_port()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json() == {"status": "ok"}
        publish(kafka_bootstrap, topic, s.lines)
        wait_until(lambda: value(port, "chatbridge_records_total", topic=topic, outcome="applied") == 3, 90,
                   "three applied records in /metrics", worker.output)  # fmt: skip
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200, 60,
                   "/readyz", lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).text)  # fmt: skip
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
        assert ready == {"status": "ok", "checks": {"broker": "ok", "store": "ok", "partitions": "ok",
                                                    "backend": "ok"}}  # fmt: skip
        wait_until(lambda: value(port, "chatbridge_reconcile_steps_total", kind="add_member", outcome="pending") >= 1,
                   90, "carol pending", worker.output)  # fmt: skip
        wait_until(
            lambda: value(port, "chatbridge_chats", phase="read_only") == 1, 30, "the phase gauge", worker.output
        )
        wait_until(lambda: value(port, "chatbridge_oldest_overdue_seconds") == 0, 30,
                   "the read-only deadline brought about", worker.output)  # fmt: skip
        m = samples(port)
    finally:
        assert worker.stop() == 0, worker.output()

    def get(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert {outcome: get("chatbridge_records_total", topic=topic, outcome=outcome)
            for outcome in ("applied", "ignored", "duplicate", "rejected")} == {
        "applied": 3, "ignored": 1, "duplicate": 1, "rejected": 2}  # fmt: skip
    assert sum(get("chatbridge_consumer_lag", topic=topic, partition=str(p)) for p in (0, 1)) == 0
    assert get("chatbridge_partitions_assigned") == 2
    assert get("chatbridge_chats", phase="active") == 1 and get("chatbridge_chats", phase="read_only") == 1
    assert get("chatbridge_reconcile_steps_total", kind="create_chat", outcome="ok") == 2
    assert get("chatbridge_reconcile_steps_total", kind="add_member", outcome="ok") == 3  # alice twice, bob
    assert get("chatbridge_reconcile_steps_total", kind="set_read_only", outcome="ok") == 1
    assert get("chatbridge_reconcile_step_seconds_count", kind="create_chat") == 2
    assert get("chatbridge_parked_chats") == 0
    log = worker.output()
    for secret in (alice, bob, carol, synapse.bot_token, "hunter2", "DRK Köln", "it@drk.example", "Oskar-Jäger"):
        assert secret not in log, f"{secret[:4]}… in the worker's log"
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines and all({"event", "level", "timestamp"} <= set(line) for line in lines)
    assert any("obs-1" in line["event"] for line in lines)  # chats are named by org and event id
