"""The worker's metrics and its health server, without Kafka: counts, gauges, the backend's steps, the endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from chatbridge.backends.fake import FakeChatBackend
from chatbridge.backends.port import BackendUnavailable
from chatbridge.domain.lifecycle import Phase
from chatbridge.observability import HealthServer, InstrumentedBackend, Metrics
from chatbridge.projections.desired_state import DesiredChat

NOW = datetime(2026, 12, 10, 12, tzinfo=UTC)


def row(event_id: str, read_only_at: datetime, deleted: bool = False) -> DesiredChat:
    return DesiredChat("drk", event_id, 1, deleted, False, read_only_at, read_only_at + timedelta(days=30), None,
                       ["p"], ["p"])  # fmt: skip


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_intake_counters_follow_the_running_totals_per_topic() -> None:
    metrics = Metrics()
    metrics.observe_intake({("t", "applied"): 3, ("t", "rejected"): 1})
    metrics.observe_intake({("t", "applied"): 5, ("t", "rejected"): 1, ("u", "duplicate"): 2})
    assert value(metrics, "chatbridge_records_total", topic="t", outcome="applied") == 5
    assert value(metrics, "chatbridge_records_total", topic="t", outcome="rejected") == 1
    assert value(metrics, "chatbridge_records_total", topic="u", outcome="duplicate") == 2
    metrics.observe_lag({("t", 0): 7, ("t", 1): 0})
    assert value(metrics, "chatbridge_consumer_lag", topic="t", partition="0") == 7
    assert value(metrics, "chatbridge_partitions_assigned") == 2


def test_chats_by_phase_and_the_oldest_deadline_not_yet_brought_about() -> None:
    metrics = Metrics()
    rows = [row("active", NOW + timedelta(days=1)), row("late", NOW - timedelta(hours=3)),
            row("done", NOW - timedelta(days=2))]  # fmt: skip
    metrics.observe_chats(rows, NOW, {("drk", "done"): Phase.READ_ONLY, ("drk", "late"): Phase.ACTIVE})
    assert value(metrics, "chatbridge_chats", phase="active") == 1
    assert value(metrics, "chatbridge_chats", phase="read_only") == 2
    assert value(metrics, "chatbridge_chats", phase="deleted") == 0
    assert value(metrics, "chatbridge_oldest_overdue_seconds") == 3 * 3600
    metrics.observe_chats(rows, NOW, {("drk", "done"): Phase.READ_ONLY, ("drk", "late"): Phase.READ_ONLY})
    assert value(metrics, "chatbridge_oldest_overdue_seconds") == 0


def test_every_backend_step_is_counted_and_timed_by_kind_and_outcome() -> None:
    fake = FakeChatBackend(accounts={"@drk.alice:fake"})
    metrics = Metrics()
    backend = InstrumentedBackend(fake, metrics)
    chat = backend.create_chat("drk", "4711", 1, backend.ensure_tenant("drk", {}).tenant_id)
    backend.add_member(chat.chat_id, "@drk.alice:fake")
    backend.add_member(chat.chat_id, "@drk.bob:fake")  # no account: pending
    fake.down = True
    with pytest.raises(BackendUnavailable):
        backend.set_read_only(chat.chat_id, True)
    assert value(metrics, "chatbridge_reconcile_steps_total", kind="create_chat", outcome="ok") == 1
    assert value(metrics, "chatbridge_reconcile_steps_total", kind="add_member", outcome="ok") == 1
    assert value(metrics, "chatbridge_reconcile_steps_total", kind="add_member", outcome="pending") == 1
    assert value(metrics, "chatbridge_reconcile_steps_total", kind="set_read_only", outcome="failed") == 1
    assert value(metrics, "chatbridge_reconcile_step_seconds_count", kind="add_member") == 2
    assert value(metrics, "chatbridge_backend_reads_total", operation="ensure_tenant", outcome="ok") == 1
    assert backend.last_unavailable is not None
    assert backend.user_id("drk", "alice") == "@drk.alice:fake"  # the rest of the port passes through


def test_the_endpoints_answer() -> None:
    metrics = Metrics()
    problems: dict[str, str | None] = {"store": None}
    server = HealthServer(metrics, "127.0.0.1", 0, checks={"store": lambda: problems["store"]}).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/readyz").json() == {"status": "ok", "checks": {"store": "ok"}}
        problems["store"] = "the store does not answer"
        response = httpx.get(f"{base}/readyz")
        assert response.status_code == 503 and response.json()["checks"] == {"store": "the store does not answer"}
        text = httpx.get(f"{base}/metrics").text
        assert "chatbridge_parked_chats 0.0" in text and "process_resident_memory_bytes" in text
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()
