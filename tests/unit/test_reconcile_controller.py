"""The controller on the in-memory fake: a due-time queue keyed by chat, rows read only when they moved, requeue at
the next deadline, backoff per chat, and nothing done while nothing is due."""

from __future__ import annotations

import threading
from datetime import timedelta

from chatbridge.backends.port import BackendError, BackendUnavailable
from chatbridge.reconciler.service import ReconcilerWorker
from chatbridge.reconciler.settings import ReconcilerSettings
from tests.support import ALICE, BOB, ORG, at
from tests.unit.test_reconcile_loop import END, START, World


class Clocked:
    """A ReconcilerWorker on a World with a clock the test moves, rounds run by hand, reads of the rows counted."""

    def __init__(self, world: World, **settings):
        self.world = world
        self.now = at(2)
        self.reads = 0
        self.version = 0
        world.feed()
        self.rows = world.rows()

        def rows():
            self.reads += 1
            return self.rows

        self.worker = ReconcilerWorker(world.app, world.backend, rows, ReconcilerSettings(**settings),
                                       clock=lambda: self.now, version=lambda: self.version)  # fmt: skip

    def round(self):
        self.worker.round()
        for _ in range(500):  # the chats started run in the pool: wait for them
            if self.worker.controller.in_flight() == 0:
                break
            threading.Event().wait(0.01)

    def refold(self):
        self.world.feed()
        self.rows = self.world.rows()
        self.version += 1


def a_world() -> World:
    world = World()
    world.stream.org_on(at(1))
    for event_id in ("1", "2"):
        world.stream.event(event_id, at(1, 10), start=START, end=END, responsible=ALICE, staff={BOB: "assigned"})
    return world


def test_a_round_with_nothing_due_reads_nothing_and_touches_no_chat():
    clocked = Clocked(a_world())
    clocked.round()
    assert clocked.reads == 1 and clocked.world.chat("1").members and clocked.world.chat("2").members
    calls = len(clocked.world.backend.calls)
    for minutes in range(1, 30):
        clocked.now = at(2) + timedelta(minutes=minutes)
        clocked.round()
    assert clocked.reads == 1 and len(clocked.world.backend.calls) == calls


def test_a_changed_row_makes_only_its_chat_due():
    clocked = Clocked(a_world())
    clocked.round()
    clocked.world.backend.calls.clear()
    clocked.world.stream.staffing("2", BOB, "declined", at(2, 1))
    clocked.refold()
    clocked.now = at(2, 2)
    clocked.round()
    assert clocked.reads == 2
    assert {c[1][:2] for c in clocked.world.backend.calls if c[0] == "get_chat"} == {(ORG, "2")}
    assert clocked.world.chat("2").members == {clocked.world.uid(ALICE)}


def test_a_chat_is_requeued_at_its_deadline_without_reading_the_rows():
    clocked = Clocked(a_world())
    clocked.round()
    clocked.now = END + timedelta(days=2, seconds=-1)
    clocked.round()
    assert not clocked.world.chat("1").read_only
    clocked.now = END + timedelta(days=2)
    clocked.round()
    assert clocked.world.chat("1").read_only and clocked.world.chat("2").read_only and clocked.reads == 1


def test_a_transient_failure_retries_with_backoff_and_a_refusal_parks_at_once():
    clocked = Clocked(a_world(), backoff_base=timedelta(seconds=10), park_for=timedelta(hours=1))
    backend = clocked.world.backend
    backend.fail = lambda op, args: (BackendUnavailable("down") if args[:2] == (ORG, "1")
                                     else BackendError("refused") if args[:2] == (ORG, "2") else None)  # fmt: skip
    clocked.round()
    states = clocked.worker.reconciler.states
    assert states[(ORG, "1")].failures == 1 and not states[(ORG, "1")].parked
    assert states[(ORG, "2")].parked and states[(ORG, "2")].retry_at == at(2) + timedelta(hours=1)
    backend.fail = None
    clocked.now = at(2) + timedelta(seconds=11)  # past the first backoff (at most 10 s)
    clocked.round()
    assert clocked.world.chat("1").members and clocked.world.chat("2") is None
    clocked.now = at(2) + timedelta(hours=1)
    clocked.round()
    assert clocked.world.chat("2").members and clocked.reads == 1


def test_an_unchanged_chat_is_resynced_with_one_read():
    clocked = Clocked(a_world(), resync=timedelta(hours=10))
    clocked.round()
    clocked.world.backend.calls.clear()
    clocked.now = at(2) + timedelta(hours=10)
    clocked.round()
    assert [c[0] for c in clocked.world.backend.calls] == ["get_chat", "get_chat"]  # one read a chat, no write


def test_a_hundred_thousand_chats_with_nothing_due_cost_one_look_at_the_queue():
    world = World()
    clocked = Clocked(world)
    clocked.rows = list(a_world_rows(100_000))
    controller = clocked.worker.controller
    assert controller.offer(clocked.rows, at(2)) == 100_000
    controller._heap.clear()
    controller._due.clear()  # as if all were looked at and requeued far ahead
    for key in list(controller._rows)[:3]:
        controller._push(key, at(20))
    clocked.worker._nudged, clocked.worker._rows_read_at, clocked.worker._seen_version = False, 1e18, 0
    clocked.round()
    assert clocked.reads == 0 and world.backend.calls == [] and controller.next_wake() == at(20)


def a_world_rows(n: int):
    from chatbridge.projections.desired_state import DesiredChat

    for i in range(n):
        yield DesiredChat(ORG, f"e{i}", 1, False, False, at(5), at(5) + timedelta(days=30), at(5), [], [])
