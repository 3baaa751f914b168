"""The worker folds the projection in a process of its own, beside its intake (`worker.FoldBeside`).

What the fold in the consumer's thread guaranteed still holds: a change to a quiet topic is folded at once, `run
--exit-when-idle` returns with everything stored folded, SIGTERM stops the fold process within the shutdown timeout,
and a fold process that dies does not go unnoticed (it is started again, or /healthz fails, with a log line).
Real Kafka and real stores."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatbridge.bootstrap import open_store
from chatbridge.projections.store import Store
from chatbridge.settings import Settings
from chatbridge.worker import FOLD_RESTARTS, FoldBeside
from tests.kafka_support import (
    Worker,
    end_offsets,
    generate_stream,
    new_topic,
    publish,
    run_until_idle,
    store_of,
    wait_drained,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

SHUTDOWN_TIMEOUT = 4.0
MARGIN = 5.0  # the process's own exit (interpreter, store, Kafka clients)


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"CHATBRIDGE_DATABASE": str(tmp_path / "chatbridge.db")}
    return request.getfixturevalue("postgres_env")


def fold_children(pid: int) -> list[int]:
    """The worker's fold processes (spawned children; not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command:
                found.append(int(child))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, not yet reaped


def folded(env: dict[str, str]) -> tuple[int, int]:
    """(the projection's position, the log's head), read without folding."""
    store = store_of(env)
    if store is None:
        return 0, -1
    try:
        return store.projection.position(), store.app.recorder.max_notification_id() or 0
    finally:
        store.close()


def everything_folded(env: dict[str, str]) -> bool:
    position, head = folded(env)
    return head > 0 and position == head


@pytest.fixture
def running(kafka_bootstrap: str, store_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Worker, str]]:
    """A worker on a topic whose first phase it has stored and folded."""
    topic = new_topic(kafka_bootstrap, partitions=2)
    env = worker_env(kafka_bootstrap, topic, store_env, CHATBRIDGE_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT))
    stream = generate_stream(seed=3, events=40)
    publish(kafka_bootstrap, topic, stream.phases[0])
    worker = Worker(env, tmp_path)
    try:
        wait_drained(env, kafka_bootstrap, topic, workers=[worker])
        wait_until(lambda: everything_folded(env), 60, "the first phase folded", worker.output)
        yield worker, topic
    finally:
        if worker.alive():
            worker.kill()


def test_a_change_to_a_quiet_topic_is_folded_at_once(kafka_bootstrap: str, running: tuple[Worker, str]) -> None:
    worker, topic = running
    store = store_of(worker.env)
    assert store is not None
    try:
        for line in generate_stream(seed=4, events=3).lines[:3]:
            head = store.app.recorder.max_notification_id() or 0
            published = time.monotonic()
            publish(kafka_bootstrap, topic, [line])
            while not (store.app.recorder.max_notification_id() or 0) > head:
                assert time.monotonic() - published < 10, worker.output()[-3000:]
                time.sleep(0.02)
            while store.projection.position() < (store.app.recorder.max_notification_id() or 0):
                time.sleep(0.02)
            # Kafka's fetch and the intake's batch; no fold interval: the fold process is woken by the poll
            assert time.monotonic() - published < 2.5, "the change was not folded at once"
    finally:
        store.close()


def test_a_fold_process_that_dies_is_noticed_and_started_again(
    kafka_bootstrap: str, running: tuple[Worker, str]
) -> None:
    worker, topic = running
    (child,) = fold_children(worker.process.pid)
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: "fold process exited" in worker.output(), 30, "the worker to say so", worker.output)
    assert sum("fold process exited" in line for line in worker.output().splitlines()) == 1
    wait_until(lambda: len(fold_children(worker.process.pid)) == 1, 30, "a new fold process", worker.output)
    assert fold_children(worker.process.pid) != [child]

    publish(kafka_bootstrap, topic, generate_stream(seed=5, events=10).lines)
    wait_drained(worker.env, kafka_bootstrap, topic, workers=[worker])
    wait_until(lambda: everything_folded(worker.env), 60, "the new fold process to fold", worker.output)
    assert worker.alive()


def test_sigterm_stops_the_fold_process_within_the_shutdown_timeout(
    kafka_bootstrap: str, running: tuple[Worker, str]
) -> None:
    worker, topic = running
    publish(kafka_bootstrap, topic, generate_stream(seed=6, events=600).lines)  # a backlog being folded
    wait_until(lambda: folded(worker.env)[1] > 2000, 60, "the intake to store more", worker.output)
    (child,) = fold_children(worker.process.pid)
    signalled = time.monotonic()
    assert worker.stop(timeout=SHUTDOWN_TIMEOUT + MARGIN) == 0, worker.output()[-3000:]
    assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT + MARGIN
    assert gone(child)
    assert "stopped after" in worker.output()


def test_a_killed_worker_leaves_no_fold_process_behind(running: tuple[Worker, str]) -> None:
    worker, _topic = running
    (child,) = fold_children(worker.process.pid)
    worker.kill()
    wait_until(lambda: gone(child), 10, "the orphaned fold process to leave")


def test_run_exit_when_idle_returns_with_everything_folded(
    kafka_bootstrap: str, store_env: dict[str, str], tmp_path: Path
) -> None:
    topic = new_topic(kafka_bootstrap, partitions=4)
    env = worker_env(kafka_bootstrap, topic, store_env)
    publish(kafka_bootstrap, topic, generate_stream(seed=7, events=300).lines)
    run_until_idle(env, tmp_path, idle=3)
    store = store_of(env)
    assert store is not None
    try:
        ends = end_offsets(kafka_bootstrap, topic)
        assert sum(ends.values()) > 1000
        head = store.app.recorder.max_notification_id() or 0
        assert head > 0 and store.projection.position() == head  # read, not folded here
        assert store.projection.view.desired_chats()
    finally:
        store.close()


def broken_store() -> Store:
    """A fold process's store that cannot be opened: the process dies as it starts."""
    raise RuntimeError("this fold process cannot open its store")


def test_a_fold_process_that_keeps_dying_fails_healthz_and_the_last_fold_runs_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database=tmp_path / "chatbridge.db")
    store = open_store(settings)
    try:
        from chatbridge.application import Received
        from chatbridge.domain.messages import parse_record

        store.app.ingest("t", [Received(i, parse_record(line)) for i, line in enumerate(generate_stream(8, 5).lines)])
        caplog.set_level(logging.ERROR, logger="chatbridge.worker")
        folding = FoldBeside(store, broken_store, settings)
        try:
            wait_until(lambda: not folding.healthy(), 120, "the worker to give up on its fold process")
            deaths = [r.getMessage() for r in caplog.records if "fold process exited" in r.getMessage()]
            assert len(deaths) == FOLD_RESTARTS + 1 and "/healthz fails" in deaths[-1]
            folding.finish()  # in this process
            assert store.projection.position() == store.app.recorder.max_notification_id()
        finally:
            folding.close(timeout=5)
    finally:
        store.close()


def test_a_fold_process_asked_to_stop_stops_without_being_terminated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The child leaves as soon as it reads the stop; closing waits for that and says nothing (no false "did not
    stop", no signal sent to a process already gone). Several times: the watcher thread and `close` meet in a
    race when both wait for the child."""
    settings = Settings(database=tmp_path / "chatbridge.db")
    store = open_store(settings)
    assert store.reopen is not None
    caplog.set_level(logging.WARNING, logger="chatbridge.worker")
    try:
        for _ in range(4):
            folding = FoldBeside(store, store.reopen, settings)
            folding.finish()
            closing = time.monotonic()
            folding.close(timeout=15)
            assert time.monotonic() - closing < 5
        assert not [r.getMessage() for r in caplog.records if r.name == "chatbridge.worker"]
    finally:
        store.close()
