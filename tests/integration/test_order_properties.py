"""Order is event time, on a persistent store: whatever order Kafka delivers the keys in, and however the
intake is cut into batches and folds, `state` equals `simulate` of the messages — on a SQLite file and on
PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from chatbridge import services
from chatbridge.audit.settings import AuditSettings, load_keys
from chatbridge.bootstrap import Store, open_store
from chatbridge.consumers.jsonl import ingest_lines
from chatbridge.domain.lifecycle import Policy
from chatbridge.settings import Settings
from tests.services import throwaway_postgres_database
from tests.strategies import NOWS, streams_and_interleavings

pytestmark = pytest.mark.integration

StoreFactory = Callable[[], Any]  # a context manager yielding a fresh, empty Store
EXAMPLES = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextmanager
def sqlite_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Settings(database=Path(tmp) / "store.db"))
        try:
            yield store
        finally:
            store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_store(request: pytest.FixtureRequest) -> StoreFactory:
    """A factory of empty stores, one per hypothesis example (a fixture lives for the whole test)."""
    if request.param == "sqlite":
        return sqlite_store
    server = request.getfixturevalue("postgres_server")

    @contextmanager
    def postgres_store() -> Iterator[Store]:
        with throwaway_postgres_database(server) as name, tempfile.TemporaryDirectory() as tmp:
            settings_ = Settings(
                store="postgres", postgres_host=str(server["host"]), postgres_port=int(server["port"]),
                postgres_dbname=name, postgres_user=str(server["user"]), postgres_password=SecretStr(str(server["password"])),
            )  # fmt: skip
            store = open_store(settings_, keys=load_keys(AuditSettings(), Path(tmp) / "audit-keys", create=True))
            try:
                yield store
            finally:
                store.close()

    return postgres_store


def simulate(lines: list[bytes], now: datetime) -> dict[str, Any]:
    return services.simulate_lines(list(enumerate(lines, start=1)), now, Policy())


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
    with fresh_store() as store:
        ingest_lines(store.app, "kafka", list(enumerate(interleaved, start=1)), batch_size)
        assert order_free(services.state(store, now)) == order_free(simulate(lines, now))


@EXAMPLES
@given(streams_and_interleavings(), NOWS, st.integers(1, 7), st.floats(0.2, 0.8))
def test_facts_arriving_after_later_ones_were_folded_take_their_place(
    fresh_store: StoreFactory, stream_and_order: tuple[list[bytes], list[bytes]], now: datetime, batch_size: int,
    cut: float,
):  # fmt: skip
    lines, interleaved = stream_and_order
    numbered = list(enumerate(interleaved, start=1))
    first = round(len(numbered) * cut)
    with fresh_store() as store:
        ingest_lines(store.app, "kafka", numbered[:first], batch_size)
        services.state(store, now)  # the projection folds the first part...
        ingest_lines(store.app, "kafka", numbered[first:], batch_size)  # ...then older facts arrive
        assert order_free(services.state(store, now)) == order_free(simulate(lines, now))
