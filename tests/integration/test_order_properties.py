"""Order is event time, on a persistent store: whatever order Kafka delivers the keys in, and however the
intake is cut into batches and folds, `state` equals `simulate` of the messages — on a SQLite file and on
PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from chatbridge.bootstrap import Store, open_store
from chatbridge.cli import usecases
from chatbridge.consumers.jsonl import ingest_lines
from chatbridge.domain.lifecycle import Policy
from chatbridge.journal.keys import AuditSettings, load_keys
from chatbridge.settings import Settings
from tests.services import throwaway_postgres_database
from tests.strategies import NOWS, streams_and_interleavings
from tests.support import ALICE, BOB, CAROL, Stream, at

pytestmark = pytest.mark.integration

StoreFactory = Callable[[], Any]  # a context manager yielding a function that opens the same fresh, empty store
Opener = Callable[[], Store]
EXAMPLES = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextmanager
def handles(settings_: Settings, keys: Any = None) -> Iterator[Opener]:
    """Opens the store as often as asked (one handle a process would hold); closes them all at the end."""
    opened: list[Store] = []

    def open_() -> Store:
        opened.append(open_store(settings_, keys=keys))
        return opened[-1]

    try:
        yield open_
    finally:
        for store in opened:
            store.close()


@contextmanager
def sqlite_store() -> Iterator[Opener]:
    with tempfile.TemporaryDirectory() as tmp, handles(Settings(database=Path(tmp) / "store.db")) as open_:
        yield open_


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_store(request: pytest.FixtureRequest) -> StoreFactory:
    """A factory of empty stores, one per hypothesis example (a fixture lives for the whole test)."""
    if request.param == "sqlite":
        return sqlite_store
    server = request.getfixturevalue("postgres_server")

    @contextmanager
    def postgres_store() -> Iterator[Opener]:
        with throwaway_postgres_database(server) as name, tempfile.TemporaryDirectory() as tmp:
            settings_ = Settings(
                store="postgres", postgres_host=str(server["host"]), postgres_port=int(server["port"]),
                postgres_dbname=name, postgres_user=str(server["user"]), postgres_password=SecretStr(str(server["password"])),
            )  # fmt: skip
            with handles(settings_, load_keys(AuditSettings(), Path(tmp) / "audit-keys", create=True)) as open_:
                yield open_

    return postgres_store


def simulate(lines: list[bytes], now: datetime) -> dict[str, Any]:
    return usecases.simulate_lines(list(enumerate(lines, start=1)), now, Policy())


def order_free(document: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the delivery order; rejected lines keep their count, not their numbers."""
    return {"chats": document["chats"], "ignored": document["ignored"], "duplicates": document["duplicates"],
            "rejected": len(document["rejected"])}  # fmt: skip


@EXAMPLES
@given(streams_and_interleavings(), NOWS, st.integers(1, 7))
def test_state_after_ingesting_any_interleaving_equals_simulate_of_the_stream(
    fresh_store: StoreFactory, stream_and_order: tuple[list[bytes], list[bytes]], now: datetime, batch_size: int
):
    lines, interleaved = stream_and_order
    with fresh_store() as open_:
        store = open_()
        ingest_lines(store.app, "kafka", list(enumerate(interleaved, start=1)), batch_size)
        assert order_free(usecases.state(store, now)) == order_free(simulate(lines, now))


@EXAMPLES
@given(streams_and_interleavings(), NOWS, st.integers(1, 7), st.floats(0.2, 0.8))
def test_facts_arriving_after_later_ones_were_folded_take_their_place(
    fresh_store: StoreFactory, stream_and_order: tuple[list[bytes], list[bytes]], now: datetime, batch_size: int,
    cut: float,
):  # fmt: skip
    lines, interleaved = stream_and_order
    numbered = list(enumerate(interleaved, start=1))
    first = round(len(numbered) * cut)
    with fresh_store() as open_:
        store = open_()
        ingest_lines(store.app, "kafka", numbered[:first], batch_size)
        usecases.state(store, now)  # the projection folds the first part...
        ingest_lines(store.app, "kafka", numbered[first:], batch_size)  # ...then older facts arrive
        assert order_free(usecases.state(store, now)) == order_free(simulate(lines, now))


def _enabled_again_after_its_deletion() -> tuple[list[bytes], list[bytes]]:
    """A chat switched off and on again after its deadline: the second upsert, folded twice, settled the generation
    it had started (found by two replicas on PostgreSQL)."""
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(1), start=at(1), end=at(1, 8), staff={ALICE: "assigned"})
    stream.event("4711", at(3), start=at(1), end=at(1, 8), chat=False)
    stream.event("4711", at(12, month=1) + timedelta(days=365), start=at(1), end=at(1, 8), staff={ALICE: "assigned"})
    stream.event("4712", at(4), start=at(5), end=at(5, 8))  # the second process folds further than the first
    return stream.lines, stream.lines


@EXAMPLES
@given(streams_and_interleavings(), NOWS, st.integers(1, 7), st.floats(0.1, 0.45), st.floats(0.55, 0.9))
@example(_enabled_again_after_its_deletion(), at(2), 1, 0.45, 0.9)
def test_two_processes_folding_at_once_fold_each_fact_once(
    fresh_store: StoreFactory, stream_and_order: tuple[list[bytes], list[bytes]], now: datetime, batch_size: int,
    first_cut: float, second_cut: float,
):  # fmt: skip
    """Replicas fold the same log side by side. One reads its position; before it loads the rows it needs, another
    has folded further and written them: what it loads already holds facts it is about to fold."""
    lines, interleaved = stream_and_order
    numbered = list(enumerate(interleaved, start=1))
    first, second = round(len(numbered) * first_cut), round(len(numbered) * second_cut)
    with fresh_store() as open_:
        late, early = open_(), open_()
        ingest_lines(late.app, "kafka", numbered[:first], batch_size)
        late.projection.catch_up()
        ingest_lines(late.app, "kafka", numbered[first:second], batch_size)
        read_before_the_other_wrote = iter([late.projection.position()])
        real_position = late.projection.position
        late.projection.position = lambda: next(read_before_the_other_wrote, None) or real_position()  # type: ignore[method-assign]
        late.projection._kept = None  # a fresh process: every row it folds is loaded from the tables
        early.projection.catch_up()
        ingest_lines(early.app, "kafka", numbered[second:], batch_size)
        late.projection.catch_up()
        assert order_free(usecases.state(late, now)) == order_free(simulate(lines, now))
        assert order_free(usecases.state(early, now)) == order_free(simulate(lines, now))


def test_a_member_blocked_after_their_chats_were_written_leaves_each_of_them_and_comes_back(
    fresh_store: StoreFactory,
):
    """A status fact before every deadline of chats folded earlier writes only their members and moderators again
    (two columns of each row): each chat naming the person loses them, and gets them back when unblocked."""
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(1), start=at(10), end=at(10, 8), responsible=ALICE, staff={BOB: "assigned"})
    stream.event("4712", at(1, 1), start=at(11), end=at(11, 8), staff={ALICE: "assigned", CAROL: "assigned"})
    stream.event("4713", at(1, 2), start=at(12), end=at(12, 8), staff={BOB: "assigned", CAROL: "assigned"})
    written = len(stream.lines)
    stream.person(ALICE, "blocked", at(2))
    blocked = len(stream.lines)
    stream.person(ALICE, "active", at(3))
    now = at(4)
    numbered = stream.numbered()

    def members(document: dict[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
        return {chat["event_id"]: (chat["members"], chat["moderators"]) for chat in document["chats"]}

    with fresh_store() as open_:
        store = open_()
        for part in (numbered[:written], numbered[written:blocked], numbered[blocked:]):
            ingest_lines(store.app, "kafka", part, 1)
            seen = usecases.state(store, now)
            assert order_free(seen) == order_free(simulate([line for _, line in numbered[: part[-1][0]]], now))
            if part[-1][0] == blocked:
                assert members(seen) == {"4711": ([BOB], []), "4712": ([CAROL], []),
                                         "4713": ([BOB, CAROL], [])}  # fmt: skip
        assert members(seen) == {"4711": (sorted([ALICE, BOB]), [ALICE]), "4712": (sorted([ALICE, CAROL]), []),
                                 "4713": ([BOB, CAROL], [])}  # fmt: skip
