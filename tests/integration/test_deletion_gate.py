"""Deletion from complete knowledge only, against the real broker and the real Synapse.

A chat past its deadline is not deleted while a partition of the input topic holds records the store has not
ingested — the dry run shows it waiting with the lag, the pass applies everything else — and it is deleted once
the worker caught up. And the case the gate exists for: a worker stopped while a day of messages arrives, some
moving chats' ends later; restarted with the reconciler on, it never deletes a chat the complete stream keeps.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbridge.backends.port import BackendError
from chatbridge.consumers.kafka import partition_of
from chatbridge.domain.aggregates import ChatGroup
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, matrix, org)
from tests.integration.synapse_support import Synapse as Synapse
from tests.kafka_support import (
    CHATBRIDGE,
    Worker,
    end_offsets,
    new_topic,
    publish,
    store_of,
    stored_positions,
    wait_drained,
    wait_until,
    worker_env,
)
from tests.services import ROOT
from tests.support import Stream, at, z

pytestmark = pytest.mark.integration

START, END = at(5, 9), at(5, 17)
DELETE_AT = END + timedelta(days=32)


def chatbridge(env: dict[str, str], *args: str, codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CHATBRIDGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode in codes, f"chatbridge {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result


def drain(env: dict[str, str], bootstrap: str, topic: str, tmp_path: Path) -> None:
    """The worker (consuming only) runs until it is idle, then exits; the store then holds the topic to its end.
    (The store is not opened beside the starting worker: two processes creating tables at once can meet a
    'database is locked' on SQLite.)"""
    for _attempt in range(3):
        worker = Worker(env, tmp_path, name="drain", args=("--no-reconcile", "--exit-when-idle", "4"))
        assert worker.process.wait(timeout=120) == 0, worker.output()
        ends = end_offsets(bootstrap, topic)
        if stored_positions(env, topic, list(ends)) == ends:
            return
    raise AssertionError(f"the worker did not drain {topic}\n{worker.output()[-3000:]}")


def gone(matrix, org: str, event_id: str) -> bool:
    """The chat no longer exists; a room being purged can answer 403 for a moment (the bot already left it)."""
    try:
        return matrix.get_chat(org, event_id, 1) is None
    except BackendError:
        return False


def chat_events(env: dict[str, str], org: str, event_id: str) -> list[str]:
    store = store_of(env)
    assert store is not None, "the worker made no store"
    try:
        return [type(e).__name__ for e in store.app.repository.event_store.get(ChatGroup.create_id(org, event_id))]
    finally:
        store.close()


@pytest.fixture
def people(synapse: Synapse, matrix, org: str) -> dict[str, str]:
    names = {name: uuid.uuid4().hex for name in ("alice", "bob", "carol")}
    for person in names.values():
        synapse.register_user(matrix.user_id(org, person))
    return names


def test_a_lagging_partition_holds_the_deletion_and_nothing_else(
    kafka_bootstrap: str, matrix, org: str, people: dict[str, str], tmp_path: Path
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    topic = new_topic(kafka_bootstrap, partitions=2)
    env = worker_env(kafka_bootstrap, topic, {"CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")})
    s = Stream()
    s.org_on(at(1), org=org)
    s.event("4711", at(1, 10), start=START, end=END, responsible=alice, staff={bob: "assigned"}, org=org)
    s.event("4712", at(1, 10), start=START, end=END + timedelta(days=90), responsible=alice, org=org)
    publish(kafka_bootstrap, topic, s.lines)
    drain(env, kafka_bootstrap, topic, tmp_path)
    chatbridge(env, "reconcile", "--once", "--now", z(at(2)))
    room = matrix.get_chat(org, "4711", 1)
    assert room is not None and room.members == {matrix.user_id(org, alice), matrix.user_id(org, bob)}

    s.staffing("4712", carol, "assigned", at(3), org=org)
    publish(kafka_bootstrap, topic, s.lines[-1:])
    drain(env, kafka_bootstrap, topic, tmp_path)
    s.event("4799", at(4), start=START, end=END + timedelta(days=90), responsible=alice, org=org)
    publish(kafka_bootstrap, topic, s.lines[-1:])  # on the broker, not in the store: the worker is stopped
    lagging = f"{topic}:{partition_of(f'{org}/4799', 2)}"

    now = DELETE_AT + timedelta(hours=1)
    planned = chatbridge(env, "reconcile", "--dry-run", "--json", "--now", z(now), codes=(2,))
    chats = {c["event_id"]: c for c in json.loads(planned.stdout)["chats"]}
    assert chats["4711"]["phase"] == "deleted"
    assert chats["4711"]["steps"] == [{"kind": "set_read_only", "value": True}]  # locked while it waits
    assert chats["4711"]["waiting"]["kind"] == "delete_chat" and chats["4711"]["waiting"]["lag"] == {lagging: 1}
    assert chats["4712"]["steps"] == [{"kind": "add_member", "user_id": matrix.user_id(org, carol)}]
    text = chatbridge(env, "reconcile", "--dry-run", "--now", z(now), codes=(2,)).stdout
    assert f"  … delete chat with all content: waits for complete input: {lagging} 1 behind" in text

    applied = json.loads(chatbridge(env, "reconcile", "--once", "--json", "--now", z(now)).stdout)
    assert applied["deletions_waiting"] == 1 and applied["failed"] == 0
    room = matrix.get_chat(org, "4711", 1)
    assert room is not None and room.read_only  # not deleted
    assert matrix.get_chat(org, "4712", 1).members == {matrix.user_id(org, u) for u in (alice, carol)}  # went on
    assert "ChatDeleted" not in chat_events(env, org, "4711")

    drain(env, kafka_bootstrap, topic, tmp_path)  # the worker caught up
    later = now + timedelta(hours=1)
    assert "waiting" not in chatbridge(env, "reconcile", "--dry-run", "--now", z(later), codes=(2,)).stdout
    applied = json.loads(chatbridge(env, "reconcile", "--once", "--json", "--now", z(later)).stdout)
    assert applied["deletions_waiting"] == 0 and applied["failed"] == 0
    assert matrix.get_chat(org, "4711", 1) is None and chat_events(env, org, "4711")[-1] == "ChatDeleted"
    assert matrix.get_chat(org, "4799", 1) is not None


def test_a_worker_catching_up_a_day_never_deletes_a_chat_the_complete_stream_keeps(
    kafka_bootstrap: str, matrix, org: str, people: dict[str, str], tmp_path: Path
) -> None:
    alice, bob = people["alice"], people["bob"]
    topic = new_topic(kafka_bootstrap, partitions=3)
    env = worker_env(
        kafka_bootstrap, topic, {"CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")},
        CHATBRIDGE_BATCH_SIZE="1", CHATBRIDGE_RECONCILE_INTERVAL="0.5",
    )  # fmt: skip
    now = datetime.now(UTC).replace(microsecond=0)
    end = now - timedelta(days=33) + timedelta(hours=6)  # deleted 18 hours ago, unless moved before that
    kept, ending = ["x1", "x2"], ["y1", "y2"]
    s = Stream()
    s.org_on(now - timedelta(days=40), org=org)
    for event_id in kept + ending:
        s.event(event_id, now - timedelta(days=39), start=end - timedelta(hours=8), end=end, responsible=alice,
                staff={bob: "assigned"}, org=org)  # fmt: skip
    publish(kafka_bootstrap, topic, s.lines)
    drain(env, kafka_bootstrap, topic, tmp_path)
    chatbridge(env, "reconcile", "--once", "--now", z(now - timedelta(days=35)))  # the chats while they were alive
    assert all(matrix.get_chat(org, e, 1) is not None for e in kept + ending)

    # The worker is stopped while a day of messages arrives: staffing traffic on every chat, then (last in their
    # partitions) the moves that keep x1 and x2 — sent 20 hours ago, before their deadline.
    day = Stream(counter=s.counter)
    for n in range(120):
        for event_id in kept + ending:
            day.staffing(event_id, uuid.uuid4().hex, "registered", now - timedelta(hours=24, minutes=-2 * n), org=org)
    for event_id in kept:
        moved = now + timedelta(days=3)
        day.event(event_id, now - timedelta(hours=20), start=moved - timedelta(hours=8), end=moved,
                  responsible=alice, staff={bob: "assigned"}, org=org)  # fmt: skip
    publish(kafka_bootstrap, topic, day.lines)

    def open_again() -> bool:
        rooms = {e: matrix.get_chat(org, e, 1) for e in kept}
        deleted = [e for e, room in rooms.items() if room is None]
        assert not deleted, f"{deleted} deleted though the complete stream keeps them"
        return not any(room.read_only for room in rooms.values() if room is not None)

    worker = Worker(env, tmp_path, name="catching-up", args=())  # `chatbridge run`, reconciling with the real clock
    try:
        # y1 and y2 go only once the store holds everything published before the worker started
        wait_until(lambda: all(gone(matrix, org, e) for e in ending), 180, "y1 and y2 deleted",
                   worker.output)  # fmt: skip
        # and on record, as the backend confirmed them, before the worker is stopped (a stop cuts calls in flight:
        # a deletion it cut is recorded by the next start, which finds the chat gone)
        wait_until(lambda: all(chat_events(env, org, e)[-1] == "ChatDeleted" for e in ending), 60,
                   "y1 and y2 deletions recorded", worker.output)  # fmt: skip
        # while their deletion waited x1 and x2 were locked (their deadline had passed as far as the store knew);
        # the complete stream keeps them: open again
        wait_until(open_again, 60, "x1 and x2 open", worker.output)
    finally:
        assert worker.stop() == 0, worker.output()
    wait_drained(env, kafka_bootstrap, topic)
    for event_id in kept:
        room = matrix.get_chat(org, event_id, 1)
        assert room is not None and room.members == {matrix.user_id(org, alice), matrix.user_id(org, bob)}
        assert "ChatDeleted" not in chat_events(env, org, event_id)
    for event_id in ending:
        assert chat_events(env, org, event_id)[-1] == "ChatDeleted"
    logged = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    waits = [entry["event"] for entry in logged if "deletion waits for complete input" in entry["event"]]
    assert waits, "the gate never held a deletion back: the test did not exercise it"
    assert alice not in worker.output() and bob not in worker.output()
    state: dict[str, Any] = json.loads(chatbridge(env, "state", "--now", z(now), "--json").stdout)
    phases = {c["event_id"]: c["phase"] for c in state["chats"]}
    assert phases == {"x1": "active", "x2": "active", "y1": "deleted", "y2": "deleted"}
