"""Order is event time (DESIGN.md): the desired state is a function of the messages alone.

One generated HiOrg stream (tests/event_time_streams.py: three organisations, ~20 events, ~15 persons, published
with each key in time order but keys lagging each other by up to three days) goes to real Kafka topics with the
contract's keys. However it is read — eight partitions or one, SQLite or PostgreSQL, in one go or in two uneven
pieces, by two replicas of one consumer group at once, or again by `replay --from-kafka` — `chatbridge state --now
T --json` must print the document `chatbridge simulate FILE --now T` prints for the same messages in publish order,
at every T. The stream holds no rejections, so the documents are compared whole.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.event_time_streams import NOWS, EventTimeStream, Message, generate, partition_of
from tests.kafka_support import (
    CHATBRIDGE,
    Worker,
    end_offsets,
    new_topic,
    publish_records,
    run_until_idle,
    stored_positions,
    wait_drained,
    wait_until,
    worker_env,
)
from tests.services import ROOT, postgres_environment, throwaway_postgres_database

pytestmark = pytest.mark.integration

PARTITIONS = 8
Document = dict[str, Any]


# -- running chatbridge ------------------------------------------------------------------------------------------


def chatbridge(env: dict[str, str] | None, *args: str) -> str:
    result = subprocess.run(
        [CHATBRIDGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"chatbridge {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result.stdout


def documents(command: Callable[[str], str]) -> dict[str, Document]:
    """The document at every T of NOWS: the first call alone (it may fold what the projection has not seen yet),
    the others side by side (they only read)."""
    first = json.loads(command(NOWS[0]))
    with ThreadPoolExecutor(max_workers=4) as pool:
        rest = dict(zip(NOWS[1:], pool.map(lambda now: json.loads(command(now)), NOWS[1:]), strict=True))
    return {NOWS[0]: first, **rest}


def states(env: dict[str, str]) -> dict[str, Document]:
    return documents(lambda now: chatbridge(env, "state", "--now", now, "--json"))


class Simulations:
    """`chatbridge simulate` of message lists (in publish order), each computed once per module."""

    def __init__(self, directory: Path, stream: EventTimeStream) -> None:
        self.directory, self.stream = directory, stream
        self.cache: dict[tuple[str, ...], dict[str, Document]] = {}

    def of(self, messages: Sequence[Message]) -> dict[str, Document]:
        ids = tuple(m.id for m in messages)
        if ids not in self.cache:
            path = self.stream.write(self.directory / f"published-{len(self.cache)}.jsonl", list(messages))
            self.cache[ids] = documents(lambda now: chatbridge(None, "simulate", str(path), "--now", now))
        return self.cache[ids]


# -- comparing documents -----------------------------------------------------------------------------------------

CHAT_FIELDS = ("generation", "phase", "read_only_at", "delete_at", "members", "moderators")


def _short(value: Any) -> str:
    if isinstance(value, list):  # person ids: their first 6 hex digits are enough to tell them apart
        return "[" + ",".join(str(v)[:6] for v in value) + "]"
    return str(value)


def differences(expected: dict[str, Document], got: dict[str, Document]) -> list[str]:
    """One line per chat and T that differ (`org/event @T: field expected → got; …`), then the counters."""
    lines = []
    for now in NOWS:
        want = {(c["org"], c["event_id"]): c for c in expected[now]["chats"]}
        have = {(c["org"], c["event_id"]): c for c in got[now]["chats"]}
        for key in sorted(want.keys() | have.keys()):
            if key not in have or key not in want:
                lines.append(f"{'/'.join(key)} @{now}: {'missing' if key not in have else 'unexpected'}")
                continue
            if want[key] != have[key]:
                fields = "; ".join(
                    f"{name} {_short(want[key].get(name))} → {_short(have[key].get(name))}"
                    for name in CHAT_FIELDS
                    if want[key].get(name) != have[key].get(name)
                )
                lines.append(f"{'/'.join(key)} @{now}: {fields or 'order of chats or other fields'}")
        if expected[now]["chats"] != got[now]["chats"] and not lines:
            lines.append(f"@{now}: the chats are listed in another order")
        for counter in ("ignored", "duplicates", "rejected"):
            if expected[now][counter] != got[now][counter]:
                lines.append(f"@{now}: {counter} expected {expected[now][counter]} → got {got[now][counter]}")
    return lines


def assert_same(expected: dict[str, Document], got: dict[str, Document], what: str) -> None:
    lines = differences(expected, got)
    chats = sorted({line.split(" @")[0] for line in lines if not line.startswith("@")})
    report = "\n".join(lines[:80]) + (f"\n… and {len(lines) - 80} more" if len(lines) > 80 else "")
    assert not lines, (
        f"{what}: `state` differs from `simulate` of the same messages in {len(chats)} chats ({', '.join(chats)}); "
        f"per chat and T, expected (simulate) → got (state):\n{report}"
    )
    assert expected == got, f"{what}: the documents differ outside what `differences` looks at"


# -- fixtures: one stream, one eight-partition topic, fresh stores -----------------------------------------------


@pytest.fixture(scope="module")
def stream() -> EventTimeStream:
    generated = generate(seed=2026, partitions=PARTITIONS)
    assert 200 <= len(generated.messages) <= 400
    return generated


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("event-time")


@pytest.fixture(scope="module")
def simulations(workdir: Path, stream: EventTimeStream) -> Simulations:
    simulations = Simulations(workdir, stream)
    expected = simulations.of(stream.messages)
    # the stream is valid and exercises what it is meant to (else a comparison could pass vacuously)
    phases = {c["phase"] for document in expected.values() for c in document["chats"]}
    assert phases == {"awaiting_organisation", "active", "read_only", "deleted"}, phases
    assert max(c["generation"] for c in expected[NOWS[-1]]["chats"]) >= 2
    assert all(not d["rejected"] and d["ignored"] and d["duplicates"] for d in expected.values())
    return simulations


def publish_stream(bootstrap: str, topic: str, stream: EventTimeStream, messages: Sequence[Message]) -> None:
    """Publish in this order; each record must land where the generator placed it (a deleted person is named again
    only on their own partition, so that every reader stores the re-naming after the deletion)."""
    partitions = publish_records(bootstrap, topic, [(m.key.encode(), m.line) for m in messages])
    assert partitions == [partition_of(m.key, stream.partitions) for m in messages], "not the default partitioner?"


@pytest.fixture(scope="module")
def topic(kafka_bootstrap: str, stream: EventTimeStream) -> str:
    """The whole stream on eight partitions, published once for the module."""
    name = new_topic(kafka_bootstrap, partitions=PARTITIONS)
    publish_stream(kafka_bootstrap, name, stream, stream.messages)
    assert all(end_offsets(kafka_bootstrap, name).values()), "every partition holds messages"
    return name


@pytest.fixture(scope="module")
def fresh_store(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], dict[str, str]]]:
    """A fresh, empty store each call ("sqlite" or "postgres"), with its own audit keys; databases dropped after."""
    with ExitStack() as stack:

        def make(kind: str) -> dict[str, str]:
            directory = workdir / f"store-{uuid.uuid4().hex[:8]}"
            directory.mkdir()
            if kind == "sqlite":
                return {"CHATBRIDGE_STORE": "sqlite", "CHATBRIDGE_DATABASE": str(directory / "chatbridge.db")}
            server = request.getfixturevalue("postgres_server")
            name = stack.enter_context(throwaway_postgres_database(server, prefix="cbevtime"))
            return {**postgres_environment(server, name), "CHATBRIDGE_AUDIT_KEY_FILE": str(directory / "audit-keys")}

        yield make


def environment(bootstrap: str, topic: str, store: dict[str, str], **extra: str) -> dict[str, str]:
    """The worker's settings: a consumer group of its own (positions come from the store, not the group)."""
    return worker_env(bootstrap, topic, store, CHATBRIDGE_GROUP_ID=f"evtime-{uuid.uuid4().hex[:8]}", **extra)


def drain(env: dict[str, str], bootstrap: str, topic: str, log_dir: Path) -> None:
    output = run_until_idle(env, log_dir, idle=5)
    ends = end_offsets(bootstrap, topic)
    stored = stored_positions(env, topic, list(ends))
    assert stored == ends, f"the worker stopped at {stored}, the topic ends at {ends}\n{output[-3000:]}"


# -- the tests ---------------------------------------------------------------------------------------------------


def test_one_partition_read_in_publish_order_equals_simulate(
    kafka_bootstrap: str, stream: EventTimeStream, simulations: Simulations, fresh_store: Any, workdir: Path
) -> None:
    """The baseline: stored order is publish order (file order), yet not time order across keys."""
    single = new_topic(kafka_bootstrap, partitions=1)
    publish_records(kafka_bootstrap, single, stream.records)
    env = environment(kafka_bootstrap, single, fresh_store("sqlite"))
    drain(env, kafka_bootstrap, single, workdir)
    assert_same(simulations.of(stream.messages), states(env), "1 partition, SQLite")


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_eight_partitions_drained_at_once_equal_simulate(
    kafka_bootstrap: str, topic: str, stream: EventTimeStream, simulations: Simulations, fresh_store: Any,
    workdir: Path, store: str,
) -> None:  # fmt: skip
    env = environment(kafka_bootstrap, topic, fresh_store(store))
    drain(env, kafka_bootstrap, topic, workdir)
    expected = simulations.of(stream.messages)
    assert_same(expected, states(env), f"8 partitions, {store}")
    if store == "sqlite":
        chatbridge(env, "replay")  # the projection rebuilt from the stored events: the same again
        assert_same(expected, states(env), f"8 partitions, {store}, after `replay`")


def test_a_backlog_read_in_two_uneven_pieces_equals_simulate(
    kafka_bootstrap: str, stream: EventTimeStream, simulations: Simulations, fresh_store: Any, workdir: Path
) -> None:
    """The first half is folded before the second arrives; the second holds messages older than the first's."""
    split = len(stream.messages) // 2
    first, rest = stream.messages[:split], stream.messages[split:]
    assert min(m.at for m in rest) < max(m.at for m in first)  # late messages, for the fold to put in their place
    uneven = new_topic(kafka_bootstrap, partitions=PARTITIONS)
    env = environment(kafka_bootstrap, uneven, fresh_store("sqlite"))
    failures = []
    for piece, so_far in ((first, first), (rest, stream.messages)):
        publish_stream(kafka_bootstrap, uneven, stream, piece)
        drain(env, kafka_bootstrap, uneven, workdir)
        try:
            what = f"{len(so_far)} of {len(stream.messages)} messages read in two pieces, 8 partitions, SQLite"
            assert_same(simulations.of(so_far), states(env), what)
        except AssertionError as failure:  # the second half is still worth reading and comparing
            failures.append(str(failure))
    assert not failures, "\n\n".join(failures)


def test_two_replicas_of_one_group_draining_at_once_equal_simulate(
    kafka_bootstrap: str, stream: EventTimeStream, simulations: Simulations, fresh_store: Any, workdir: Path
) -> None:
    shared = new_topic(kafka_bootstrap, partitions=PARTITIONS)
    env = environment(kafka_bootstrap, shared, fresh_store("postgres"), CHATBRIDGE_BATCH_SIZE="10")
    first, second = Worker(env, workdir, "first"), Worker(env, workdir, "second")
    try:
        wait_until(lambda: "partitions now" in first.output() and "partitions now" in second.output(), 90,
                   "both replicas to own partitions", lambda: first.output()[-2000:] + second.output()[-2000:])  # fmt: skip
        publish_stream(kafka_bootstrap, shared, stream, stream.messages)
        wait_drained(env, kafka_bootstrap, shared, timeout=180, workers=[first, second])
    finally:
        codes = [first.stop(), second.stop()]
    assert codes == [0, 0], first.output()[-2000:] + second.output()[-2000:]
    assert_same(simulations.of(stream.messages), states(env), "2 replicas, 8 partitions, PostgreSQL")


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_replay_from_kafka_into_a_fresh_store_equals_simulate(
    kafka_bootstrap: str, topic: str, stream: EventTimeStream, simulations: Simulations, fresh_store: Any, store: str
) -> None:
    env = environment(kafka_bootstrap, topic, fresh_store(store))
    chatbridge(env, "replay", "--from-kafka")
    assert stored_positions(env, topic, list(range(PARTITIONS))) == end_offsets(kafka_bootstrap, topic)
    assert_same(simulations.of(stream.messages), states(env), f"replay --from-kafka, {store}")
