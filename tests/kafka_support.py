"""Helpers for tests against the real broker: topics, keyed publishing, generated streams, worker processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from chatbridge.bootstrap import Store, open_store, store_exists
from chatbridge.journal.intake import partition_source
from chatbridge.journal.keys import AuditSettings, default_key_file, load_keys
from chatbridge.settings import Settings
from tests.services import ROOT

CHATBRIDGE = str(Path(sys.executable).with_name("chatbridge"))


def new_topic(bootstrap: str, partitions: int = 4) -> str:
    name = f"hiorg.test.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


def key_of(line: bytes) -> bytes:
    """The key HiOrg-Server gives a message (DESIGN.md): one event's messages share a partition."""
    try:
        message = json.loads(line)
        org, data = message["org"], message.get("data") or {}
        if message["type"].startswith("organisation."):
            return org.encode()
        if message["type"].startswith("person."):
            return f"{org}/person/{data['person_id']}".encode()
        return f"{org}/{data['event_id']}".encode()
    except Exception:
        return b"garbage/" + str(hash(line) % 7).encode()


def publish(bootstrap: str, topic: str, lines: Sequence[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        for line in lines:
            producer.send(topic, key=key_of(line), value=line)
        producer.flush(timeout=60)
    finally:
        producer.close()


def publish_records(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> list[int]:
    """Publish (key, value) pairs in this order with the default partitioner; returns each record's partition."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_in_flight_requests_per_connection=1
    )
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush(timeout=60)
        return [future.get(timeout=60).partition for future in futures]
    finally:
        producer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


# --- a generated HiOrg stream ---------------------------------------------------------------------------------


def _at(base: datetime, minutes: int) -> str:
    return (base + timedelta(minutes=minutes)).isoformat()


@dataclass
class GeneratedStream:
    """Phases of messages. Kafka keeps order only per key, so a phase holds only messages whose end result does
    not depend on how partitions interleave; the test drains one phase before publishing the next."""

    phases: list[list[bytes]] = field(default_factory=list)

    @property
    def lines(self) -> list[bytes]:
        return [line for phase in self.phases for line in phase]


def generate_stream(seed: int, events: int = 120, persons: int = 40, orgs: int = 3) -> GeneratedStream:
    rng = random.Random(seed)
    base = datetime(2026, 11, 1, 8, tzinfo=UTC)
    clock = [0]
    counter = [0]

    def message(type_: str, org: str, data: dict[str, Any] | None) -> dict[str, Any]:
        counter[0] += 1
        # about two weeks over a few thousand messages; never two at one instant: equal times keep the stored
        # order (the contract), which differs between partitions, and this stream is compared with simulate
        clock[0] += rng.randint(1, 3)
        return {"id": f"m-{seed}-{counter[0]}", "type": type_, "org": org, "occurred_at": _at(base, clock[0]),
                "data": data}  # fmt: skip

    def encode(msg: dict[str, Any]) -> bytes:
        return json.dumps(msg).encode()

    org_names = [f"org-{i}" for i in range(orgs)]
    people = {org: [f"{rng.getrandbits(128):032x}" for _ in range(persons)] for org in org_names}
    address = {"street": "Hauptstr. 1", "postcode": "50667", "city": "Köln", "country": "DE"}
    # the last organisation never enables chat: its chats wait for it
    first = [encode(message("organisation.chat_enabled", org, {"name": org.upper(), "email": f"it@{org}.example",
                                                             "address": address})) for org in org_names[:-1]]  # fmt: skip

    main: list[bytes] = []
    sent: list[bytes] = []
    for n in range(events):
        org = rng.choice(org_names)
        event_id = f"e{n}"
        start = datetime(2026, 11, 20, tzinfo=UTC) + timedelta(hours=rng.randint(0, 30 * 24))
        staff = rng.sample(people[org], rng.randint(0, 6))
        record = {
            "event_id": event_id, "title": f"Sanitätsdienst {n}", "start": start.isoformat(),
            "end": (start + timedelta(hours=rng.randint(2, 30))).isoformat(),
            "responsible": rng.choice([None, *people[org][:5]]), "chat_enabled": rng.random() < 0.85,
            "staff": [{"person_id": p, "status": rng.choice(["assigned", "registered", "declined"])} for p in staff],
        }  # fmt: skip
        main.append(encode(message("event.upserted", org, record)))
        for _ in range(rng.randint(0, 8)):
            kind = rng.random()
            if kind < 0.6:
                change = {"event_id": event_id, "person_id": rng.choice(people[org]),
                          "status": rng.choice(["registered", "assigned", "declined", "removed"])}  # fmt: skip
                main.append(encode(message("staffing.changed", org, change)))
            elif kind < 0.7:
                main.append(encode(message("event.upserted", org, {**record, "chat_enabled": rng.random() < 0.7})))
            elif kind < 0.75:
                main.append(encode(message("event.cancelled", org, {"event_id": event_id})))
            elif kind < 0.78:
                main.append(encode(message("event.deleted", org, {"event_id": event_id})))
            elif kind < 0.88:
                status = rng.choice(["active", "restricted", "external", "blocked", "deleted"])
                main.append(encode(message("person.status_changed", org, {"person_id": rng.choice(people[org]),
                                                                            "status": status})))  # fmt: skip
            else:
                main.append(rng.choice(GARBAGE))
        if sent and rng.random() < 0.15:
            main.append(rng.choice(sent))  # a re-sent message keeps its id: a duplicate
        sent = [line for line in main[-3:] if line not in GARBAGE]
    last = [encode(message("organisation.chat_disabled", org_names[0], {}))]
    return GeneratedStream([first, main, last])


GARBAGE = [
    b"\xff\xfe not utf-8",
    b"{not json",
    b"[1, 2, 3]",
    b'{"id": "x", "type": "event.exploded", "org": "org-0", "occurred_at": "2026-11-01T00:00:00Z", "data": {}}',
    b'{"id": "y", "type": "staffing.changed", "org": "org-0", "occurred_at": "2026-11-01T00:00:00", '
    b'"data": {"event_id": "e1", "person_id": "p", "status": "assigned"}}',
    b'{"id": "z", "type": "staffing.changed", "org": "org/0", "occurred_at": "2026-11-01T00:00:00Z", '
    b'"data": {"event_id": "e1", "person_id": "p", "status": "maybe"}}',
    b"",
]


# --- the worker as a real process -----------------------------------------------------------------------------


def worker_env(bootstrap: str, topic: str, store_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **store_env,
        "CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CHATBRIDGE_TOPICS": topic,
        "CHATBRIDGE_GROUP_ID": f"group-{topic}",
        "CHATBRIDGE_DLQ_TOPIC": f"dlq-{topic}",
        "CHATBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CHATBRIDGE_HTTP_PORT": "0",  # /healthz, /readyz, /metrics on a free port: replicas run side by side
        "CHATBRIDGE_LOG_FORMAT": "json",
        **extra,
    }


def settings_of(env: dict[str, str]) -> Settings:
    fields = {k.removeprefix("CHATBRIDGE_").lower(): v for k, v in env.items() if k.startswith("CHATBRIDGE_")}
    return Settings(**fields)


def store_of(env: dict[str, str]) -> Store | None:
    """The store a `chatbridge` process with `env` uses, opened in this process with the same audit keys (not the
    ones this process's own environment would name); None while that process has not made it yet."""
    settings = settings_of(env)
    if not store_exists(settings):
        return None
    prefix = "CHATBRIDGE_AUDIT_"
    audit = AuditSettings(**{k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)})
    keys = load_keys(audit, default_key_file(settings.store, settings.database), create=False)
    return open_store(settings, keys=keys, create=False)


class Worker:
    """`chatbridge run` in its own process, its output kept in a file for the test's failure message."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, name: str = "worker", args: Sequence[str] = ("--no-reconcile",)
    ):
        self.env = env
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [CHATBRIDGE, "run", *args], env=env, cwd=ROOT, stdout=self._log, stderr=self._log
        )

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no chance to finish anything
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def http_port(self, timeout: float = 60) -> int:
        """The port the worker serves /healthz, /readyz and /metrics on (from its log line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith("{") and "serving /healthz" in line:
                    return int(json.loads(line)["event"].rsplit(" ", 1)[1])
            time.sleep(0.2)
        raise AssertionError(f"the worker announced no port\n{self.output()[-3000:]}")


def run_until_idle(env: dict[str, str], log_dir: Path, idle: float = 6, timeout: float = 240) -> str:
    """`chatbridge run --no-reconcile --exit-when-idle IDLE` to its end; returns its output (exit 0 asserted)."""
    log_path = log_dir / f"run-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:
        result = subprocess.run(
            [CHATBRIDGE, "run", "--no-reconcile", "--exit-when-idle", str(idle)],
            env=env, cwd=ROOT, stdout=log, stderr=log, timeout=timeout, check=False,
        )  # fmt: skip
    output = log_path.read_text(errors="replace")
    assert result.returncode == 0, f"chatbridge run exited {result.returncode}:\n{output[-3000:]}"
    return output


def stored_positions(env: dict[str, str], topic: str, partitions: Sequence[int]) -> dict[int, int]:
    store = store_of(env)
    if store is None:
        return dict.fromkeys(partitions, 0)  # the worker has not made its store yet: nothing is stored
    try:
        return {p: store.app.position(partition_source(topic, p)) for p in partitions}
    finally:
        store.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_fail()}")
        time.sleep(0.5)


def wait_drained(env: dict[str, str], bootstrap: str, topic: str, timeout: float = 120, workers=()) -> None:
    """Until the store's position of every partition reached the topic's end."""
    ends = end_offsets(bootstrap, topic)
    wait_until(
        lambda: stored_positions(env, topic, list(ends)) == ends,
        timeout,
        f"the store to reach {ends}",
        lambda: "\n".join(w.output()[-3000:] for w in workers),
    )
