"""`chatbridge run` against the real broker: the store ends equal to `simulate` of what was published — across
dead letters, duplicates, kill -9, a second replica, a broker restart — and replays reproduce it."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_support import (
    CHATBRIDGE,
    GeneratedStream,
    Worker,
    end_offsets,
    generate_stream,
    new_topic,
    publish,
    store_of,
    stored_positions,
    wait_drained,
    wait_until,
    worker_env,
)
from tests.services import ROOT, restart_local_broker
from tests.support import ALICE, BOB, Stream, at, z

pytestmark = pytest.mark.integration

NOWS = ("2026-11-15T00:00:00Z", "2026-12-25T00:00:00Z", "2027-01-30T00:00:00Z")


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"CHATBRIDGE_STORE": "sqlite", "CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")}
    return request.getfixturevalue("postgres_env")


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {"CHATBRIDGE_STORE": "sqlite", "CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")}


def chatbridge(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CHATBRIDGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"chatbridge {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def state(env: dict[str, str], now: str) -> dict[str, Any]:
    return json.loads(chatbridge(env, "state", "--now", now, "--json").stdout)


def simulate(tmp_path: Path, lines: list[bytes], now: str) -> dict[str, Any]:
    path = tmp_path / "published.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    result = subprocess.run(
        [CHATBRIDGE, "simulate", str(path), "--now", now], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def assert_state_is_simulate(env: dict[str, str], tmp_path: Path, lines: list[bytes]) -> None:
    for now in NOWS:
        stored, expected = state(env, now), simulate(tmp_path, lines, now)
        assert stored["chats"] == expected["chats"], f"chats differ at {now}"
        assert (stored["ignored"], stored["duplicates"]) == (expected["ignored"], expected["duplicates"])
        # the same rejections, found by Kafka coordinates instead of line numbers
        assert sorted(r["reason"] for r in stored["rejected"]) == sorted(r["reason"] for r in expected["rejected"])
    assert expected["chats"] and expected["rejected"] and expected["duplicates"]  # the stream exercised all three


def no_message_stored_twice(env: dict[str, str]) -> None:
    store = store_of(env)
    assert store is not None, "the worker made no store"
    try:
        seen: set[tuple[Any, ...]] = set()
        for notification in store.app.notifications():
            event = store.app.mapper.to_domain_event(notification)
            if not hasattr(event, "message_id"):
                continue  # a fact chatbridge recorded itself (a person forgotten), not one a message brought
            key = (event.originator_id, type(event).__qualname__, event.message_id)
            assert key not in seen, f"{key} stored twice"
            seen.add(key)
    finally:
        store.close()


def drain_phases(
    env: dict[str, str], bootstrap: str, topic: str, stream: GeneratedStream, workers: list[Worker]
) -> None:
    for phase in stream.phases:
        publish(bootstrap, topic, phase)
        wait_drained(env, bootstrap, topic, workers=workers)


def test_a_drained_stream_equals_simulate_and_every_rejection_is_a_dead_letter(
    kafka_bootstrap: str, store_env: dict[str, str], tmp_path: Path
) -> None:
    topic = new_topic(kafka_bootstrap, partitions=4)
    env = worker_env(kafka_bootstrap, topic, store_env)
    stream = generate_stream(seed=1, events=500)
    assert len(stream.lines) > 2000
    worker = Worker(env, tmp_path)
    try:
        drain_phases(env, kafka_bootstrap, topic, stream, [worker])
    finally:
        assert worker.stop() == 0, worker.output()  # SIGTERM: stores, commits, leaves the group, exits 0
    assert "stopped after" in worker.output()
    assert_state_is_simulate(env, tmp_path, stream.lines)

    letters = json.loads(chatbridge(env, "dlq", "list", "--json").stdout)
    rejected = state(env, NOWS[0])["rejected"]
    assert sorted((d["topic"], d["partition"], d["offset"], d["reason"]) for d in letters) == sorted(
        (r["topic"], r["partition"], r["offset"], r["reason"]) for r in rejected
    )
    assert all(d["dead_lettered_at"] and d["value"] is not None and d["key"] for d in letters)

    # replay rebuilds the projection, replay --from-kafka the store itself: the same state both times
    chatbridge(env, "replay")
    assert_state_is_simulate(env, tmp_path, stream.lines)
    refused = chatbridge(env, "replay", "--from-kafka", check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    chatbridge(env, "replay", "--from-kafka", "--force")
    assert_state_is_simulate(env, tmp_path, stream.lines)
    no_message_stored_twice(env)


def test_kill_9_at_random_moments_loses_nothing_and_stores_nothing_twice(
    kafka_bootstrap: str, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    topic = new_topic(kafka_bootstrap, partitions=4)
    env = worker_env(kafka_bootstrap, topic, sqlite_env, CHATBRIDGE_BATCH_SIZE="10")
    stream = generate_stream(seed=2, events=800)
    rng = random.Random(2)
    workers = [Worker(env, tmp_path)]
    kills = 0

    def crash_while_ingesting(ends: dict[int, int]) -> None:
        nonlocal kills
        for _ in range(5):
            # let the (re)started worker join and store something, then kill it at a random moment
            before = stored_positions(env, topic, list(ends))
            wait_until(lambda: stored_positions(env, topic, list(ends)) != before, 60, "progress", workers[-1].output)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.8))
            assert stored_positions(env, topic, list(ends)) != ends, "drained before the kill: make the stream longer"
            workers[-1].kill()
            kills += 1
            workers.append(Worker(env, tmp_path))

    try:
        publish(kafka_bootstrap, topic, stream.phases[0])
        wait_drained(env, kafka_bootstrap, topic, workers=workers)
        publish(kafka_bootstrap, topic, stream.phases[1])
        crash_while_ingesting(end_offsets(kafka_bootstrap, topic))
        wait_drained(env, kafka_bootstrap, topic, workers=workers[-1:])
        publish(kafka_bootstrap, topic, stream.phases[2])
        wait_drained(env, kafka_bootstrap, topic, workers=workers[-1:])
    finally:
        workers[-1].stop()
    assert kills >= 5
    assert_state_is_simulate(env, tmp_path, stream.lines)
    no_message_stored_twice(env)


def test_a_second_replica_takes_over_the_partitions_of_one_killed_mid_stream(
    kafka_bootstrap: str, postgres_env: dict[str, str], tmp_path: Path
) -> None:
    topic = new_topic(kafka_bootstrap, partitions=6)
    env = worker_env(kafka_bootstrap, topic, postgres_env, CHATBRIDGE_BATCH_SIZE="25")
    stream = generate_stream(seed=3, events=500)
    first, second = Worker(env, tmp_path, "first"), Worker(env, tmp_path, "second")
    try:
        publish(kafka_bootstrap, topic, stream.phases[0])
        wait_drained(env, kafka_bootstrap, topic, workers=[first, second])
        wait_until(lambda: "partitions now" in first.output() and "partitions now" in second.output(), 60,
                   "both replicas to own partitions", lambda: first.output() + second.output())  # fmt: skip
        publish(kafka_bootstrap, topic, stream.phases[1])
        time.sleep(1.0)
        ends = end_offsets(kafka_bootstrap, topic)
        assert stored_positions(env, topic, list(ends)) != ends, "the stream was drained before the kill"
        first.kill()
        wait_drained(env, kafka_bootstrap, topic, workers=[second])
        publish(kafka_bootstrap, topic, stream.phases[2])
        wait_drained(env, kafka_bootstrap, topic, workers=[second])
    finally:
        if first.alive():
            first.kill()
        second.stop()
    assert_state_is_simulate(env, tmp_path, stream.lines)
    no_message_stored_twice(env)


def test_the_worker_rides_out_a_broker_restart(
    kafka_bootstrap: str, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    if "KAFKA_BOOTSTRAP_SERVERS" in os.environ or kafka_bootstrap != "127.0.0.1:9092":
        pytest.skip("restarts only the project's own broker (scripts/services/kafka.sh)")
    topic = new_topic(kafka_bootstrap, partitions=3)
    env = worker_env(kafka_bootstrap, topic, sqlite_env)
    stream = generate_stream(seed=4, events=300)
    main = stream.phases[1]
    worker = Worker(env, tmp_path)
    try:
        publish(kafka_bootstrap, topic, stream.phases[0])
        wait_drained(env, kafka_bootstrap, topic, workers=[worker])
        publish(kafka_bootstrap, topic, main[: len(main) // 2])
        restart_local_broker()
        assert worker.alive(), worker.output()
        publish(kafka_bootstrap, topic, main[len(main) // 2 :])
        wait_drained(env, kafka_bootstrap, topic, timeout=240, workers=[worker])
        publish(kafka_bootstrap, topic, stream.phases[2])
        wait_drained(env, kafka_bootstrap, topic, workers=[worker])
    finally:
        assert worker.stop() == 0, worker.output()
    assert_state_is_simulate(env, tmp_path, stream.lines)


def test_dlq_list_shows_the_original_record_and_redrive_of_a_fixed_one_applies_it(
    kafka_bootstrap: str, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    topic = new_topic(kafka_bootstrap, partitions=2)
    env = worker_env(kafka_bootstrap, topic, sqlite_env)
    s = Stream()
    s.org_on(at(1))
    s.event("4711", at(1), start=at(10, 18), end=at(10, 22), responsible=ALICE)
    s.send("staffing.changed", at(2), {"event_id": "4711", "person_id": BOB, "status": "maybe"}, id_="bad-status")
    s.send("event.exploded", at(2), {"event_id": "4711"}, id_="unknown-type")
    bad_status = s.lines[2]
    worker = Worker(env, tmp_path)
    try:
        publish(kafka_bootstrap, topic, s.lines)
        wait_drained(env, kafka_bootstrap, topic, workers=[worker])
        letters = json.loads(chatbridge(env, "dlq", "list", "--json", "--reason", "data.status").stdout)
        assert len(letters) == 1
        letter = letters[0]
        assert base64.b64decode(letter["value"]) == bad_status
        assert base64.b64decode(letter["key"]) == b"drk-koeln/4711"
        # the event's messages share one partition: upserted at offset 0, the bad staffing change at 1
        assert (letter["topic"], letter["offset"]) == (topic, 1)
        assert "data.status" in letter["reason"]
        assert len(json.loads(chatbridge(env, "dlq", "list", "--json").stdout)) == 2

        refused = chatbridge(env, "dlq", "redrive", check=False)
        assert refused.returncode == 1 and "--all" in refused.stderr

        fixed = tmp_path / "fixed.json"
        fixed.write_bytes(bad_status.replace(b'"maybe"', b'"assigned"'))
        chatbridge(env, "dlq", "redrive", "--dlq-offset", str(letter["dlq_offset"]), "--value-file", str(fixed))
        # re-driving the unknown type unchanged only dead-letters it again, now from its new offset
        chatbridge(env, "dlq", "redrive", "--reason", "event.exploded")
        wait_drained(env, kafka_bootstrap, topic, workers=[worker])
    finally:
        worker.stop()
    document = state(env, z(at(5)))
    assert document["chats"][0]["members"] == sorted([ALICE, BOB])
    again = json.loads(chatbridge(env, "dlq", "list", "--json", "--reason", "event.exploded").stdout)
    assert len(again) == 2 and len({(d["partition"], d["offset"]) for d in again}) == 2
