"""The controller around `Reconciler.reconcile`: which chat is looked at when — apart from how one chat is looked at.

Shaped like a Kubernetes controller's work queue. Each chat is a key in a due-time queue (a heap): a chat whose
desired row changed (the fold moved it) is due now; after each look it is requeued when `Reconciler.reconcile`
says (`ChatOutcome.requeue_at`, the controller's `RequeueAfter`). A chat being
reconciled is in flight and never started twice; a change that arrives meanwhile looks at it again once it is done.
At most `concurrency` chats are in flight.

A round costs only the chats that are due: while nothing is due and the desired rows have not moved, nothing is read
and nothing is scanned, however many chats there are.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime

from chatbridge.projections.desired_state import ChatKey, DesiredChat
from chatbridge.reconciler.loop import ChatOutcome, ChatState, Reconciler

log = logging.getLogger(__name__)


class Controller:
    """Due-time queue, in-flight set and bounded concurrency over one `Reconciler`."""

    def __init__(
        self,
        reconciler: Reconciler,
        *,
        on_done: Callable[[], None] | None = None,
    ):
        self.reconciler = reconciler
        self.settings = reconciler.settings
        self._on_done = on_done  # told when a chat finished (the caller may have something due at once)
        self._lock = threading.Lock()
        self._rows: dict[ChatKey, DesiredChat] = {}
        self._due: dict[ChatKey, datetime] = {}  # each queued chat's due time (the heap may hold stale entries)
        self._heap: list[tuple[datetime, int, ChatKey]] = []
        self._serial = 0
        self._in_flight: set[ChatKey] = set()
        self._again: set[ChatKey] = set()  # changed while in flight: looked at again once done

    # -- the queue -------------------------------------------------------------------------------------------

    def _push(self, key: ChatKey, due: datetime) -> None:
        """Queue `key` at `due`, or earlier if it is queued earlier already (caller holds the lock)."""
        queued = self._due.get(key)
        if queued is not None and queued <= due:
            return
        self._due[key] = due
        self._serial += 1
        heapq.heappush(self._heap, (due, self._serial, key))

    def offer(self, rows: list[DesiredChat], now: datetime) -> int:
        """The desired rows as they stand: changed or new ones are due now; gone ones are forgotten. Returns how
        many chats became due."""
        dirty = 0
        with self._lock:
            seen = set()
            for row in rows:
                key = (row.org, row.event_id)
                seen.add(key)
                if self._rows.get(key) == row:
                    continue
                self._rows[key] = row
                dirty += 1
                if key in self._in_flight:
                    self._again.add(key)
                else:
                    self._push(key, now)
            for key in self._rows.keys() - seen:  # no longer this replica's (or gone from the projection)
                del self._rows[key]
                self._due.pop(key, None)
        return dirty

    def rows(self) -> list[DesiredChat]:
        """The desired rows held (as last offered)."""
        with self._lock:
            return list(self._rows.values())

    def next_wake(self) -> datetime | None:
        with self._lock:
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # stale: requeued earlier or forgotten
            return self._heap[0][0] if self._heap else None

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def start_due(self, now: datetime) -> list[Future[ChatOutcome]]:
        """Start every chat due at `now`, up to the concurrency bound (the rest stays queued)."""
        started = []
        with self._lock:
            while self._heap and len(self._in_flight) < self.settings.concurrency:
                due, _, key = self._heap[0]
                if self._due.get(key) != due:
                    heapq.heappop(self._heap)
                    continue
                if due > now:
                    break
                heapq.heappop(self._heap)
                del self._due[key]
                row = self._rows.get(key)
                if row is None:
                    continue
                self._in_flight.add(key)
                self.reconciler.states.setdefault(key, ChatState())
                started.append(self.reconciler._pool.submit(self._look, row, now))
        return started

    def _look(self, row: DesiredChat, now: datetime) -> ChatOutcome:
        key = (row.org, row.event_id)
        outcome: ChatOutcome | None = None
        try:
            outcome = self.reconciler.reconcile(row, now)
        finally:
            with self._lock:
                self._in_flight.discard(key)
                if key in self._again or outcome is None:  # changed meanwhile (or a bug escaped): look again
                    self._again.discard(key)
                    self._push(key, now if outcome is not None else now + self.settings.backoff_base)
                elif key in self._rows and outcome.requeue_at is not None:
                    self._push(key, outcome.requeue_at)
            if self._on_done is not None:
                self._on_done()
        return outcome
