"""The deletion gate: a chat is deleted only when the store holds every input partition up to end offsets read
after its deadline — the rule alone, then the reconcile loop and the dry run holding a deletion back while the
other steps go on, and a generation the backend confirmed deleted never coming back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
from kafka.errors import KafkaTimeoutError

from chatbridge.observability import HealthServer, Metrics
from chatbridge.reconciler.knowledge import CompleteInput, KnowledgeGate, Partition
from chatbridge.reconciler.plan import StepKind
from chatbridge.reconciler.service import dry_run, plan_document, render_plan
from chatbridge.worker import _deletions_note
from tests.support import ALICE, BOB, CAROL, ORG, at
from tests.unit.test_reconcile_loop import World

START, END = at(5, 9), at(5, 17)
DELETE_AT = END + timedelta(days=32)  # FULL_USE 2 days + VIEW 30 days
T, U = "hiorg.chat.v1", "hiorg.extra.v1"


class Broker:
    """End offsets as the broker would answer them; `down` makes every read fail."""

    def __init__(self, ends: Mapping[Partition, int]):
        self.ends = dict(ends)
        self.down = False
        self.reads = 0

    def __call__(self) -> dict[Partition, int]:
        self.reads += 1
        if self.down:
            raise KafkaTimeoutError("Unable to bootstrap")
        return dict(self.ends)


class Store:
    """Stored positions (all replicas'), the log's head, and how far the rows are folded."""

    def __init__(self, positions: Mapping[Partition, int] | None = None):
        self.positions = dict(positions or {})
        self.head = 10
        self.folded = 10
        self.folds_asked = 0
        self.folds_at_once = True  # a one-shot pass folds when asked; the worker's consumer thread folds later

    def position(self, partition: Partition) -> int:
        return self.positions.get(partition, 0)

    def log_head(self) -> int:
        return self.head

    def folded_to(self, at_least: int) -> int:
        if self.folded < at_least:
            self.folds_asked += 1
            if self.folds_at_once:
                self.folded = self.head
        return self.folded


def gate(ends: Mapping[Partition, int], positions: Mapping[Partition, int] | None = None):
    broker, store = Broker(ends), Store(positions)
    return KnowledgeGate(broker, store), broker, store


# -- the rule ------------------------------------------------------------------------------------------------


def test_a_reading_before_the_deadline_does_not_count():
    g, _, _ = gate({(T, 0): 5}, {(T, 0): 5})
    g.survey(DELETE_AT - timedelta(seconds=1))
    assert g.check(DELETE_AT - timedelta(seconds=1)) is None  # that deadline is covered
    wait = g.check(DELETE_AT)
    assert wait is not None and "no reading" in wait.reason
    g.survey(DELETE_AT)
    assert g.check(DELETE_AT) is None  # a reading at the deadline counts


def test_positions_behind_the_end_offsets_wait_and_at_them_proceed():
    g, broker, store = gate({(T, 0): 5, (T, 1): 7}, {(T, 0): 5, (T, 1): 4})
    g.survey(DELETE_AT)
    wait = g.check(DELETE_AT)
    assert wait is not None and wait.lag == {(T, 1): 3} and wait.reading_at == DELETE_AT
    assert wait.reason == (
        "waits for complete input: hiorg.chat.v1:1 3 behind (end offsets read at 2027-01-06T16:00:00Z)"
    )
    assert wait.as_json() == {"reason": wait.reason, "reading_at": "2027-01-06T16:00:00Z", "lag": {f"{T}:1": 3}}
    store.positions[(T, 1)] = 7
    broker.ends[(T, 1)] = 9  # more arrived meanwhile: the reading after the deadline is what counts
    g.survey(DELETE_AT + timedelta(minutes=1))
    assert g.check(DELETE_AT) is None
    assert g.known_at == DELETE_AT


def test_every_partition_of_every_topic_must_be_reached():
    ends = {(T, 0): 3, (T, 1): 0, (U, 0): 8, (U, 1): 2}
    g, _, store = gate(ends, {(T, 0): 3, (U, 0): 8, (U, 1): 1})
    g.survey(DELETE_AT)
    wait = g.check(DELETE_AT)
    assert wait is not None and wait.lag == {(U, 1): 1}  # an empty partition lags nothing
    store.positions[(U, 1)] = 2
    g.survey(DELETE_AT + timedelta(seconds=5))
    assert g.check(DELETE_AT) is None


def test_a_partition_never_stored_lags_by_its_whole_end():
    g, _, _ = gate({(T, 0): 4, (T, 1): 6}, {(T, 0): 4})
    g.survey(DELETE_AT)
    assert g.check(DELETE_AT).lag == {(T, 1): 6}


def test_no_kafka_input_means_the_store_is_the_whole_input():
    complete = CompleteInput()
    complete.survey(DELETE_AT)
    assert complete.check(DELETE_AT + timedelta(days=3650)) is None


def test_an_unreachable_broker_makes_deletion_wait_and_an_older_complete_reading_still_counts():
    g, broker, store = gate({(T, 0): 5}, {(T, 0): 5})
    broker.down = True
    g.survey(DELETE_AT)
    wait = g.check(DELETE_AT)
    assert wait is not None and "could not be read (KafkaTimeoutError)" in wait.reason
    broker.down = False
    g.survey(DELETE_AT + timedelta(hours=1))
    broker.down = True
    g.survey(DELETE_AT + timedelta(hours=2))
    assert g.check(DELETE_AT) is None  # read after the deadline, reached: complete knowledge, not a guess
    later = g.check(DELETE_AT + timedelta(hours=2))
    assert later is not None and "could not be read" in later.reason


def test_the_answer_never_regresses_and_an_earlier_reading_is_not_starved_by_later_ones():
    g, broker, store = gate({(T, 0): 10}, {(T, 0): 4})
    g.survey(DELETE_AT)  # reading 1: end 10
    broker.ends[(T, 0)] = 20
    g.survey(DELETE_AT + timedelta(minutes=1))  # reading 2: end 20
    store.positions[(T, 0)] = 12  # past reading 1, not reading 2 (records keep arriving)
    broker.ends[(T, 0)] = 30
    g.survey(DELETE_AT + timedelta(minutes=2))
    assert g.check(DELETE_AT) is None
    assert g.check(DELETE_AT + timedelta(seconds=30)).lag == {(T, 0): 8}  # the next reading after it: end 20
    store.positions[(T, 0)] = 0  # a store that seems to move back (it cannot): what was known stays known
    g.survey(DELETE_AT + timedelta(minutes=3))
    assert g.check(DELETE_AT) is None and g.known_at == DELETE_AT


def test_one_reading_per_pass():
    g, broker, _ = gate({(T, 0): 1}, {(T, 0): 1})
    g.survey(DELETE_AT)
    g.survey(DELETE_AT)
    assert broker.reads == 1


def test_readings_kept_while_the_store_lags_are_bounded():
    broker, store = Broker({(T, 0): 0}), Store({(T, 0): 0})
    g = KnowledgeGate(broker, store, keep=8)
    for minute in range(100):
        broker.ends[(T, 0)] = minute + 1
        g.survey(DELETE_AT + timedelta(minutes=minute))
    assert len(g._pending) <= 8
    store.positions[(T, 0)] = 1
    g.survey(DELETE_AT + timedelta(minutes=100))
    assert g.check(DELETE_AT) is None  # the oldest reading is kept: it is the first to be reached


def test_the_rows_must_be_folded_past_the_stored_input_before_it_counts():
    g, _, store = gate({(T, 0): 5}, {(T, 0): 5})
    store.head, store.folds_at_once = 12, False  # the worker: its consumer thread folds after its next poll
    g.survey(DELETE_AT)
    wait = g.check(DELETE_AT)
    assert wait is not None and "folded" in wait.reason and store.folds_asked == 1
    store.folded = 12
    g.survey(DELETE_AT + timedelta(seconds=1))
    assert g.check(DELETE_AT) is None


# -- the loop and the dry run --------------------------------------------------------------------------------


class GatedWorld(World):
    """The fake-backend world of test_reconcile_loop with the gate on one partition of Kafka input."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.broker, self.store = Broker({(T, 0): 10}), Store({(T, 0): 10})
        self.reconciler.gate = self.gate = KnowledgeGate(self.broker, self.store)

    def run(self, now):
        self.feed()
        self.gate.survey(now)
        return self.reconciler.pass_once(self.rows(), now)

    def plans(self, now):
        self.feed()
        self.gate.survey(now)
        return dry_run(self.app, self.rows(), self.backend, now, self.gate)


@pytest.fixture
def gated():
    w = GatedWorld()
    w.stream.org_on(at(1))
    w.stream.event("4711", at(1, 10), start=START, end=END, responsible=ALICE, staff={BOB: "assigned"})
    w.stream.event("4712", at(1, 10), start=START, end=END + timedelta(days=60), responsible=ALICE)
    yield w
    w.reconciler.close()


def test_a_deletion_waits_for_a_lagging_partition_while_the_other_steps_go_on(gated):
    gated.run(at(2))
    assert gated.chat().members == {gated.uid(ALICE), gated.uid(BOB)} and not gated.chat().read_only
    gated.store.positions[(T, 0)] = 7  # three records on the broker not yet stored
    gated.stream.staffing("4712", CAROL, "assigned", at(4))
    report = gated.run(DELETE_AT)
    assert gated.chat() is not None and gated.chat().read_only  # locked, not deleted
    assert gated.chat("4712").members == {gated.uid(ALICE), gated.uid(CAROL)}  # the other chat goes on
    (waiting,) = report.waiting
    assert waiting.event_id == "4711" and waiting.waiting.lag == {(T, 0): 3}
    assert [s.kind for s in waiting.applied] == [StepKind.SET_READ_ONLY]
    assert report.summary()["deletions_waiting"] == 1
    assert gated.reconciler.waiting()[(ORG, "4711")].lag == {(T, 0): 3}
    assert gated.reconciler.states[(ORG, "4711")].phase.value == "read_only"  # what is brought about

    text = render_plan(gated.plans(DELETE_AT + timedelta(seconds=1)))
    assert f"chat {ORG}/4711 (generation 1, deleted)" in text
    assert "  … delete chat with all content: waits for complete input: hiorg.chat.v1:0 3 behind" in text
    assert "1 deletions wait for complete input" in text

    assert gated.run(DELETE_AT + timedelta(seconds=2)).outcomes == []  # nothing new known: not looked at again
    gated.store.positions[(T, 0)] = 10  # the worker caught up
    gated.run(DELETE_AT + timedelta(seconds=3))
    assert gated.chat() is None and gated.events()[-1] == "ChatDeleted"
    assert gated.reconciler.waiting() == {}


def test_the_dry_run_document_names_the_waiting_deletion(gated):
    gated.run(at(2))
    gated.store.positions[(T, 0)] = 9
    plans = gated.plans(DELETE_AT)
    document = plan_document(plans, DELETE_AT)
    (chat,) = [c for c in document["chats"] if c["event_id"] == "4711"]
    assert chat["steps"] == [{"kind": "set_read_only", "value": True}]
    assert chat["waiting"] == {
        "kind": "delete_chat",
        "reason": "waits for complete input: hiorg.chat.v1:0 1 behind (end offsets read at 2027-01-06T16:00:00Z)",
        "reading_at": "2027-01-06T16:00:00Z",
        "lag": {f"{T}:0": 1},
    }
    assert document["waiting"] == 1
    gated.store.positions[(T, 0)] = 10
    gated.gate.survey(DELETE_AT + timedelta(seconds=1))
    chat = plan_document(gated.plans(DELETE_AT + timedelta(seconds=2)), DELETE_AT)["chats"][0]
    assert chat["steps"] == [{"kind": "delete_chat"}] and "waiting" not in chat


def test_an_unreachable_broker_holds_deletion_and_nothing_else(gated):
    gated.run(at(2))
    gated.broker.down = True
    report = gated.run(DELETE_AT)
    assert gated.chat() is not None and "could not be read" in report.waiting[0].waiting.reason
    assert not report.failed and gated.reconciler.parked() == {}


def test_an_earlier_generation_is_deleted_only_from_complete_knowledge(gated):
    gated.run(at(2))
    gated.stream.event("4711", at(3), start=START, end=END, responsible=ALICE, chat=False)
    later = at(3) + timedelta(days=31)
    gated.stream.event("4711", later, start=START, end=END + timedelta(days=60), responsible=ALICE, chat=True)
    gated.store.positions[(T, 0)] = 8
    report = gated.run(later)
    assert gated.chat(generation=1) is not None  # held back
    assert gated.chat(generation=2).members == {gated.uid(ALICE), gated.uid(BOB)}  # the new chat goes on
    assert any(o.event_id == "4711" and o.waiting for o in report.outcomes)
    plans = [p for p in gated.plans(later + timedelta(seconds=1)) if p.event_id == "4711"]
    assert [(p.generation, p.waiting is not None) for p in plans] == [(1, True), (2, False)]
    gated.store.positions[(T, 0)] = 10
    gated.run(later + timedelta(seconds=2))
    assert gated.chat(generation=1) is None and "ChatDeleted" in gated.events()


def test_a_generation_confirmed_deleted_stays_deleted_whatever_arrives_later():
    world = World()
    world.stream.org_on(at(1))
    world.stream.event("4711", at(1, 10), start=START, end=END, responsible=ALICE, staff={BOB: "assigned"})
    world.run(at(2))
    world.run(DELETE_AT)
    assert world.chat() is None and world.events()[-1] == "ChatDeleted"
    # A late message from before the deadline moves the event later: folded in its place (event time), the
    # desired row of generation 1 is active again — the row that fold gives, whatever this fold does today.
    (row,) = world.rows()
    moved = END + timedelta(days=90)
    reopened = replace(row, deleted=False, read_only_at=moved + timedelta(days=2), delete_at=moved + timedelta(days=32),
                       next_due=moved + timedelta(days=2))  # fmt: skip
    now = DELETE_AT + timedelta(hours=1)
    assert reopened.generation == 1 and reopened.phase(now).value == "active"
    calls = len(world.writes())
    world.reconciler.pass_once([reopened], now)
    world.reconciler.pass_once([reopened], now + timedelta(hours=11))  # and on resync
    assert world.chat() is None and len(world.writes()) == calls  # never created again
    assert world.events().count("ChatCreated") == 1
    (plan,) = dry_run(world.app, [reopened], world.backend, now)
    assert plan.steps == [] and "stays deleted" in plan.note
    # a new generation (the chat switched off and on after the deletion) is a new chat
    world.reconciler.pass_once([replace(reopened, generation=2)], now + timedelta(hours=12))
    assert world.chat(generation=2).members == {world.uid(ALICE), world.uid(BOB)}
    world.reconciler.close()


# -- what operators see: /readyz notes and metrics ------------------------------------------------------------


def test_readyz_notes_the_waiting_deletion_without_failing_and_metrics_count_it(gated):
    gated.run(at(2))
    gated.store.positions[(T, 0)] = 8
    gated.run(DELETE_AT)
    metrics = Metrics()
    metrics.observe_gate(len(gated.reconciler.waiting()), gated.gate.lag(), gated.gate.known_at)
    note = _deletions_note(SimpleNamespace(reconciler=gated.reconciler))  # type: ignore[arg-type]
    server = HealthServer(metrics, "127.0.0.1", 0, checks={"store": lambda: None}, notes={"deletions": note}).start()
    try:
        ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"store": "ok"}  # a note, not a failure
        assert ready.json()["notes"] == {
            "deletions": f"1 chat deletions wait; {ORG}/4711 waits for complete input: hiorg.chat.v1:0 2 behind "
            "(end offsets read at 2027-01-06T16:00:00Z)"
        }
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        assert "\nchatbridge_deletions_waiting 1.0\n" in text
        assert '\nchatbridge_deletion_gate_lag{partition="0",topic="hiorg.chat.v1"} 2.0\n' in text
        known = float(text.split("\nchatbridge_input_complete_until_timestamp_seconds ")[1].split()[0])
        assert known == at(2).timestamp()  # the reading of the pass at at(2) was complete
    finally:
        server.stop()
    gated.store.positions[(T, 0)] = 10
    gated.run(DELETE_AT + timedelta(seconds=1))
    assert note() is None
