"""`chatbridge run`: the background worker operators deploy — Kafka intake, the projection, the reconciler.

One process per replica; several replicas in one consumer group share the partitions (see docs/operations.md).
Stops cleanly on SIGTERM/SIGINT: the batch in hand is stored and committed, and the consumer leaves the group.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from chatbridge.backends.port import ChatBackend
from chatbridge.backends.settings import ReconcilerSettings
from chatbridge.bootstrap import Store
from chatbridge.consumers.kafka import IntakeCounts, KafkaIngestor
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.reconciler.loop import StatusListener
from chatbridge.reconciler.service import ReconcilerWorker
from chatbridge.settings import Settings

log = logging.getLogger(__name__)

FOLD_INTERVAL = 1.0  # seconds between projection folds while records stream in


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (the orchestrator) and SIGINT (Ctrl-C) ask the worker to finish its batch and leave."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: finishing the batch in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@dataclass
class ChatSync:
    """The reconciler's part of the worker: the chat backend, its options, and where status documents go."""

    backend: ChatBackend
    options: ReconcilerSettings
    status: StatusListener | None = None


def run_worker(
    store: Store,
    settings: Settings,
    stop: threading.Event,
    *,
    idle_stop: float | None = None,
    on_batch: Callable[[IntakeCounts], None] | None = None,
    chat_sync: ChatSync | None = None,
) -> IntakeCounts:
    """Consume the input topics into the store until `stop` is set, folding the projection as records arrive, and
    — with `chat_sync` — reconcile the chats this replica owns in a thread beside the consumer."""
    ingestor: KafkaIngestor
    reconciler: ReconcilerWorker | None = None
    folded_at, unfolded = time.monotonic(), 0

    def after_poll(handled: int) -> None:
        # Fold at most once a second while records stream in, and at once when the topics fall quiet: folding
        # after every small batch would cost more than the intake itself.
        nonlocal folded_at, unfolded
        unfolded += handled
        if unfolded and (handled == 0 or time.monotonic() - folded_at >= FOLD_INTERVAL):
            store.projection.catch_up()
            folded_at, unfolded = time.monotonic(), 0
            if reconciler is not None:
                reconciler.nudge()
        if on_batch and handled:
            on_batch(ingestor.counts)

    def owned_rows() -> list[DesiredChat]:
        ownership = ingestor.ownership  # one read: the consumer thread replaces it on a rebalance
        return [row for row in store.projection.view.desired_chats() if ownership.owns(row.org, row.event_id)]

    ingestor = KafkaIngestor.in_group(store.app, settings, after_poll=after_poll)
    thread = None
    if chat_sync is not None:
        reconciler = ReconcilerWorker(
            store.app, chat_sync.backend, owned_rows, chat_sync.options, on_change=chat_sync.status
        )
        thread = threading.Thread(target=reconciler.run, args=(stop,), name="reconciler", daemon=True)
        thread.start()
    try:
        counts = ingestor.run(stop, idle_stop=idle_stop)
        store.projection.catch_up()
    finally:
        stop.set()
        if reconciler is not None and thread is not None:
            reconciler.nudge()
            thread.join(timeout=60)
    return counts
