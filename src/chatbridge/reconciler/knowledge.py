"""The deletion gate: a chat is deleted only from complete knowledge of the input.

Messages are folded in event time, so a message that arrives late (a lagging partition, a worker catching up
after downtime, a replica taking over partitions) can move a chat's deadline later. Deletion is the one step
that cannot be undone, so it is taken only when the store holds every partition of the input topics up to end
offsets read after the deadline passed, and the desired rows the reconciler works from were folded from that:

    a deletion whose deadline is D may proceed when there is a reading R of the end offsets with R.at >= D
    whose offsets the stored positions have all reached (all replicas write their positions to one store)

`at` is the reconciler's clock (the pass's `now`), so that `reconcile --now` behaves like the clock it shows.
Readings are taken once per pass (`survey`, before the pass reads its rows); the latest satisfied one is kept,
so the answer never regresses. When no Kafka input is configured the store is the whole input (`CompleteInput`);
when the broker cannot be read, deletion waits and everything else goes on.

Why the rows must be folded too: positions and events are stored in one transaction, so once the positions reach
a reading, the notification log's head read *after* them covers every record up to the reading. The rows must
come from a projection folded at least to that head — `survey` asks the store to fold that far (the worker's
consumer thread folds; a one-shot pass catches up itself) and only then counts the reading as known.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

log = logging.getLogger(__name__)

Partition = tuple[str, int]  # (topic, partition)
EndOffsets = Callable[[], Mapping[Partition, int]]
"""Reads the end offset of every partition of the input topics; raises when the broker cannot be read."""

KEEP_READINGS = 64  # unsatisfied readings kept while the store lags; thinned beyond this (oldest and newest stay)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lag_behind(ends: Mapping[Partition, int], positions: Mapping[Partition, int]) -> dict[Partition, int]:
    """Records each partition holds on the broker that the store has not (only partitions that lag)."""
    return {p: end - positions.get(p, 0) for p, end in sorted(ends.items()) if positions.get(p, 0) < end}


@dataclass(frozen=True)
class Reading:
    """The input's end offsets as read at `at` (the reconciler's clock)."""

    at: datetime
    ends: Mapping[Partition, int]
    log_head: int = 0  # once satisfied: the notification log's head read after the positions reached `ends`


@dataclass(frozen=True)
class Wait:
    """Why a deletion waits: the reason in one line (no personal data), and the lag that keeps it waiting."""

    reason: str
    lag: Mapping[Partition, int] = field(default_factory=dict)
    reading_at: datetime | None = None

    def as_json(self) -> dict[str, object]:
        document: dict[str, object] = {"reason": self.reason}
        if self.reading_at is not None:
            document["reading_at"] = stamp(self.reading_at)
        if self.lag:
            document["lag"] = {f"{topic}:{partition}": n for (topic, partition), n in self.lag.items()}
        return document


class StoreFacts(Protocol):
    """What the gate reads from the store (all replicas write their positions to the same one)."""

    def position(self, partition: Partition) -> int:
        """The next offset of the partition the store will read (0: nothing stored)."""

    def log_head(self) -> int:
        """The notification log's last id."""

    def folded_to(self, at_least: int) -> int:
        """The notification the desired rows read from now on reflect at least; asked to reach `at_least` (a
        one-shot pass folds at once; the worker asks its consumer thread and answers what is folded now)."""


class DeletionGate(Protocol):
    def survey(self, now: datetime) -> None:
        """Once per pass, before the pass reads its desired rows."""

    def check(self, deadline: datetime) -> Wait | None:
        """None: a deletion whose deadline is `deadline` may proceed; else why it waits."""

    @property
    def known_at(self) -> datetime | None:
        """Up to when the input is known complete (the latest satisfied reading); moves forward only."""


class CompleteInput:
    """No Kafka input configured (a store fed by `chatbridge ingest FILE`): the store is the whole input."""

    @property
    def known_at(self) -> datetime | None:
        return datetime.max.replace(tzinfo=UTC)

    def survey(self, now: datetime) -> None:
        pass

    def check(self, deadline: datetime) -> Wait | None:
        return None


class KnowledgeGate:
    """The gate for Kafka input: readings of the end offsets, the store's positions, and the rule above."""

    def __init__(self, read_ends: EndOffsets, store: StoreFacts, *, keep: int = KEEP_READINGS):
        self.read_ends = read_ends
        self.store = store
        self.keep = keep
        self._lock = threading.Lock()
        self._surveyed: datetime | None = None
        self._pending: list[Reading] = []  # not yet satisfied, oldest first
        self._satisfied: list[Reading] = []  # satisfied, but the rows were not yet folded that far
        self._known: Reading | None = None  # the latest satisfied reading the rows reflect
        self._positions: dict[Partition, int] = {}
        self._broker_error: str | None = None

    @property
    def known_at(self) -> datetime | None:
        known = self._known
        return known.at if known is not None else None

    def survey(self, now: datetime) -> None:
        with self._lock:
            if self._surveyed == now:
                return  # once per pass
            self._surveyed = now
            try:
                ends = dict(self.read_ends())
            except Exception as error:  # the broker cannot be read: no new reading, deletion waits on the old ones
                self._broker_error = f"the input's end offsets could not be read ({type(error).__name__})"
                log.warning("deletion gate: %s: %s", self._broker_error, error)
            else:
                self._broker_error = None
                if not self._pending or self._pending[-1].at < now:
                    self._pending.append(Reading(now, ends))
            partitions = {p for reading in self._pending for p in reading.ends}
            self._positions = {p: self.store.position(p) for p in sorted(partitions)}
            head = self.store.log_head()  # after the positions: covers every record they count
            reached = [r for r in self._pending if not lag_behind(r.ends, self._positions)]
            if reached:
                latest = reached[-1]  # readings are in time order, and positions only grow
                self._satisfied.append(Reading(latest.at, latest.ends, head))
                self._pending = [r for r in self._pending if r.at > latest.at]
            if len(self._pending) > self.keep:  # thin the middle: the oldest is the first to be reached
                middle = self._pending[1:-1]
                self._pending = [self._pending[0], *middle[1::2], self._pending[-1]]
            if self._satisfied:
                folded = self.store.folded_to(max(r.log_head for r in self._satisfied))
                usable = [r for r in self._satisfied if r.log_head <= folded]
                if usable and (self._known is None or usable[-1].at > self._known.at):
                    self._known = usable[-1]
                known_at = self._known.at if self._known is not None else None
                self._satisfied = [r for r in self._satisfied if known_at is None or r.at > known_at]

    def check(self, deadline: datetime) -> Wait | None:
        with self._lock:
            if self._known is not None and self._known.at >= deadline:
                return None
            later = [r for r in self._satisfied if r.at >= deadline]
            if later:
                return Wait("waits until the desired state is folded up to the stored input", {}, later[0].at)
            candidates = [r for r in self._pending if r.at >= deadline]
            if not candidates:
                why = self._broker_error or "no reading of the input's end offsets since the deadline yet"
                return Wait(f"waits for complete input: {why}")
            reading = candidates[0]  # the earliest reading after the deadline is the first that can be reached
            lag = lag_behind(reading.ends, self._positions)
            behind = ", ".join(f"{t}:{p} {n} behind" for (t, p), n in lag.items())
            return Wait(f"waits for complete input: {behind} (end offsets read at {stamp(reading.at)})", lag,
                        reading.at)  # fmt: skip

    def lag(self) -> dict[Partition, int]:
        """The store's lag behind the newest reading (for /metrics)."""
        with self._lock:
            newest = self._pending[-1] if self._pending else None
            return lag_behind(newest.ends, self._positions) if newest is not None else {}
