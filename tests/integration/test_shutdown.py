"""Shutdown within a bound: after SIGTERM, `chatbridge run` and `chatbridge reconcile` exit within
CHATBRIDGE_SHUTDOWN_TIMEOUT whatever the chat backend does — here a homeserver that accepts connections and never
answers. The intake still stores and commits its batch; a step the backend never confirmed is not recorded, and
the chat is planned again by the next start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from chatbridge.domain.aggregates import ChatGroup, Organisation
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, org)
from tests.integration.synapse_support import Synapse as Synapse
from tests.kafka_support import (
    CHATBRIDGE,
    Worker,
    end_offsets,
    new_topic,
    publish,
    store_of,
    stored_positions,
    wait_until,
    worker_env,
)
from tests.services import ROOT
from tests.support import Stream

pytestmark = pytest.mark.integration

SHUTDOWN_TIMEOUT = 5.0
MARGIN = 5.0  # the process's own exit (interpreter, store, Kafka clients): generous, the bound is what is checked


class SilentHomeserver:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._connections: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="silent-homeserver").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._connections.append(connection)  # held open, never read from nor answered

    @property
    def accepted(self) -> int:
        return len(self._connections)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def silent() -> Iterator[SilentHomeserver]:
    server = SilentHomeserver()
    yield server
    server.close()


def a_chat_to_make(org: str) -> Stream:
    now = datetime.now(UTC)
    s = Stream()
    s.org_on(now - timedelta(minutes=5), org=org)
    s.event("4711", now - timedelta(minutes=4), start=now + timedelta(days=1), end=now + timedelta(days=1, hours=8),
            responsible=uuid.uuid4().hex, org=org)  # fmt: skip
    return s


def stop_and_time(process: subprocess.Popen[bytes], output: Callable[[], str]) -> float:
    """SIGTERM, then the seconds until the process exited (asserted 0 and within the bound)."""
    sent = time.monotonic()
    process.terminate()
    try:
        code = process.wait(timeout=SHUTDOWN_TIMEOUT + MARGIN)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        raise AssertionError(
            f"still running {SHUTDOWN_TIMEOUT + MARGIN:.0f} s after SIGTERM\n{output()[-4000:]}"
        ) from None
    took = time.monotonic() - sent
    assert code == 0, f"exited {code}\n{output()[-4000:]}"
    return took


def nothing_recorded_at_the_backend(env: dict[str, str], org: str) -> None:
    store = store_of(env)
    assert store is not None
    try:
        chat: ChatGroup = store.app.repository.get(ChatGroup.create_id(org, "4711"))
        organisation: Organisation = store.app.repository.get(Organisation.create_id(org))
    finally:
        store.close()
    assert chat.backend_chats == {}  # no ChatCreated: the backend never confirmed one
    assert organisation.tenant_id is None  # no TenantProvisioned either


def planned_again(env: dict[str, str], synapse: Synapse) -> None:
    """The next start plans the chat: `reconcile --dry-run` against a homeserver that answers (the local one)."""
    answering = {**env, "CHATBRIDGE_MATRIX_BASE_URL": synapse.base_url, "CHATBRIDGE_MATRIX_TOKEN": synapse.bot_token}
    result = subprocess.run([CHATBRIDGE, "reconcile", "--dry-run", "--json"], env=answering, cwd=ROOT,
                            capture_output=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 2, result.stdout.decode() + result.stderr.decode()
    kinds = [step["kind"] for chat in json.loads(result.stdout)["chats"] for step in chat["steps"]]
    assert "create_chat" in kinds


def committed(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close(autocommit=False)


def test_run_exits_within_the_bound_while_the_homeserver_never_answers(
    kafka_bootstrap: str, silent: SilentHomeserver, synapse: Synapse, org: str, tmp_path: Path
) -> None:
    topic = new_topic(kafka_bootstrap, partitions=2)
    env = worker_env(
        kafka_bootstrap, topic, {"CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")},
        CHATBRIDGE_STATUS_TOPIC=f"status-{topic}", CHATBRIDGE_RECONCILE_INTERVAL="1",
        CHATBRIDGE_MATRIX_BASE_URL=silent.url, CHATBRIDGE_MATRIX_TOKEN="never-checked",
        CHATBRIDGE_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )  # fmt: skip
    worker = Worker(env, tmp_path, args=())
    try:
        publish(kafka_bootstrap, topic, a_chat_to_make(org).lines)
        ends = end_offsets(kafka_bootstrap, topic)
        wait_until(lambda: stored_positions(env, topic, list(ends)) == ends, 90, "the records stored", worker.output)
        wait_until(lambda: silent.accepted > 0, 60, "a call at the homeserver", worker.output)
        time.sleep(1)  # the call is in flight, waiting for an answer that never comes
        took = stop_and_time(worker.process, worker.output)
    finally:
        if worker.alive():
            worker.kill()
    assert took <= SHUTDOWN_TIMEOUT + MARGIN
    assert stored_positions(env, topic, list(ends)) == ends  # the batch is stored …
    fed = {partition: end for partition, end in ends.items() if end}
    assert committed(kafka_bootstrap, env["CHATBRIDGE_GROUP_ID"], topic, list(fed)) == fed  # … and committed
    nothing_recorded_at_the_backend(env, org)
    planned_again(env, synapse)


def test_reconcile_exits_within_the_bound_while_the_homeserver_never_answers(
    silent: SilentHomeserver, synapse: Synapse, org: str, tmp_path: Path
) -> None:
    messages = tmp_path / "messages.jsonl"
    messages.write_bytes(b"\n".join(a_chat_to_make(org).lines) + b"\n")
    env = {
        **os.environ,
        "CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db"),
        "CHATBRIDGE_LOG_FORMAT": "json",
        "CHATBRIDGE_MATRIX_BASE_URL": silent.url,
        "CHATBRIDGE_MATRIX_TOKEN": "never-checked",
        "CHATBRIDGE_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    }
    subprocess.run([CHATBRIDGE, "ingest", str(messages)], env=env, cwd=ROOT, capture_output=True, timeout=120,
                   check=True)  # fmt: skip
    log_path = tmp_path / "reconcile.log"

    def output() -> str:
        return log_path.read_text(errors="replace")

    with log_path.open("wb") as log:
        process = subprocess.Popen([CHATBRIDGE, "reconcile"], env=env, cwd=ROOT, stdout=log, stderr=log)
        try:
            wait_until(lambda: silent.accepted > 0, 60, "a call at the homeserver", output)
            time.sleep(1)
            took = stop_and_time(process, output)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert took <= SHUTDOWN_TIMEOUT + MARGIN
    nothing_recorded_at_the_backend(env, org)
    planned_again(env, synapse)
