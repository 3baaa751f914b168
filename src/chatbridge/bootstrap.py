"""Wiring, in one place: settings → event store, intake ledger, projection."""

from __future__ import annotations

from dataclasses import dataclass

from chatbridge.application import ChatBridge
from chatbridge.domain.lifecycle import Policy
from chatbridge.projections.store import DesiredStateProjection, SQLiteDesiredStateView
from chatbridge.settings import Settings

# Prefixed keys: the library lets the application's own prefix win over plain keys, so an unrelated
# CHATBRIDGE_PERSISTENCE_MODULE in the environment cannot send `simulate` to a database by accident.
_PREFIX = "CHATBRIDGE_"


def in_memory_app() -> ChatBridge:
    """The application on the library's in-memory store (`simulate`, unit tests)."""
    return ChatBridge(env={f"{_PREFIX}PERSISTENCE_MODULE": "eventsourcing.popo"})


@dataclass
class Store:
    """The persistent installation: the application and its desired-state projection, on one database."""

    app: ChatBridge
    projection: DesiredStateProjection

    def close(self) -> None:
        self.app.close()


def open_store(settings: Settings, policy: Policy | None = None) -> Store:
    settings.database.parent.mkdir(parents=True, exist_ok=True)
    app = ChatBridge(
        env={
            f"{_PREFIX}PERSISTENCE_MODULE": "eventsourcing.sqlite",
            f"{_PREFIX}SQLITE_DBNAME": str(settings.database),
        }
    )
    view = app.factory.tracking_recorder(SQLiteDesiredStateView)
    assert isinstance(view, SQLiteDesiredStateView)
    return Store(app=app, projection=DesiredStateProjection(app, view, policy or settings.policy))
