"""`chatbridge run`: the background worker operators deploy — Kafka intake, the projection kept current.

One process per replica; several replicas in one consumer group share the partitions (see docs/operations.md).
Stops cleanly on SIGTERM/SIGINT: the batch in hand is stored and committed, and the consumer leaves the group.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from chatbridge.bootstrap import Store
from chatbridge.consumers.kafka import IntakeCounts, KafkaIngestor
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


def run_worker(
    store: Store,
    settings: Settings,
    stop: threading.Event,
    *,
    idle_stop: float | None = None,
    on_batch: Callable[[IntakeCounts], None] | None = None,
) -> IntakeCounts:
    """Consume the input topics into the store until `stop` is set, folding the projection after each batch."""
    ingestor: KafkaIngestor
    folded_at, unfolded = time.monotonic(), 0

    def after_poll(handled: int) -> None:
        # Fold at most once a second while records stream in, and at once when the topics fall quiet: folding
        # after every small batch would cost more than the intake itself.
        nonlocal folded_at, unfolded
        unfolded += handled
        if unfolded and (handled == 0 or time.monotonic() - folded_at >= FOLD_INTERVAL):
            store.projection.catch_up()
            folded_at, unfolded = time.monotonic(), 0
        if on_batch and handled:
            on_batch(ingestor.counts)

    ingestor = KafkaIngestor.in_group(store.app, settings, after_poll=after_poll)
    counts = ingestor.run(stop, idle_stop=idle_stop)
    store.projection.catch_up()
    return counts
