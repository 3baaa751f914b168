"""The reconcile loop on the in-memory fake backend: life of a chat, drift, pending persons, failures, outcomes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatbridge.backends.fake import FakeChatBackend
from chatbridge.backends.port import BackendUnavailable
from chatbridge.bootstrap import in_memory_app
from chatbridge.consumers.jsonl import ingest_lines
from chatbridge.domain.aggregates import ChatGroup, Organisation
from chatbridge.domain.lifecycle import Phase, Policy
from chatbridge.projections.desired_state import DesiredStateFold
from chatbridge.projections.store import fold_log
from chatbridge.reconciler.loop import Reconciler
from chatbridge.reconciler.settings import ReconcilerSettings
from tests.support import ALICE, BOB, CAROL, DAVE, ORG, Stream, at

START, END = at(5, 9), at(5, 17)


class World:
    """The store in memory, a message stream fed into it, and the reconciler on a fake backend."""

    def __init__(self, accounts: set[str] | None = None, **settings):
        self.app = in_memory_app()
        self.stream = Stream()
        self.fed = 0
        self.backend = FakeChatBackend(accounts=accounts)
        defaults = {"backoff_base": timedelta(seconds=10), "park_after": 3, "concurrency": 2}
        self.reconciler = Reconciler(self.app, self.backend, ReconcilerSettings(**{**defaults, **settings}),
                                     jitter=lambda: 0.0)  # fmt: skip

    def feed(self):
        lines = self.stream.numbered()[self.fed :]
        ingest_lines(self.app, "test", lines)
        self.fed += len(lines)

    def rows(self):
        fold = DesiredStateFold(policy=Policy(), pseudonym=self.app.persons.pseudonym, open_name=self.app.persons.open)
        fold_log(self.app, fold)
        return fold.all_desired()

    def run(self, now):
        self.feed()
        return self.reconciler.pass_once(self.rows(), now)

    def uid(self, person, org=ORG):
        return self.backend.user_id(org, person)

    def chat(self, event_id="4711", generation=1):
        return self.backend.chat(ORG, event_id, generation)

    def events(self, event_id="4711"):
        chat_id = ChatGroup.create_id(ORG, event_id)
        return [type(e).__name__ for e in self.app.repository.event_store.get(chat_id)]

    def writes(self):
        return [c for c in self.backend.calls if c[0] not in ("get_chat",)]


@pytest.fixture
def world():
    w = World()
    w.stream.org_on(at(1))
    w.stream.event(
        "4711", at(1, 10), start=START, end=END, responsible=ALICE, staff={BOB: "assigned", CAROL: "registered"}
    )
    yield w
    w.reconciler.close()


def test_a_chat_is_created_in_its_tenant_with_its_members_and_the_responsible_as_moderator(world):
    report = world.run(at(2))
    chat = world.chat()
    assert chat.members == {world.uid(ALICE), world.uid(BOB)}
    assert chat.moderators == {world.uid(ALICE)}
    assert not chat.read_only
    assert world.backend.tenants[ORG] == {"name": "DRK Köln", "email": "it@drk.example",
                                          "address": {"street": "Oskar-Jäger-Str. 101", "postcode": "50825", "city": "Köln", "country": "DE"}}  # fmt: skip
    assert report.steps == 4 and not report.failed
    assert world.events()[-4:] == ["ChatCreated", "AccessGranted", "AccessGranted", "ModeratorChanged"]
    organisation = world.app.repository.get(Organisation.create_id(ORG))
    assert organisation.tenant_id == "space:drk-koeln" and organisation.tenant_transferred == organisation.tenant
    group = world.app.repository.get(ChatGroup.create_id(ORG, "4711"))
    assert group.backend_chats == {1: chat.chat_id} and group.access == {ALICE, BOB}


def test_a_second_pass_looks_at_nothing_and_changes_nothing(world):
    world.run(at(2))
    calls = len(world.backend.calls)
    report = world.run(at(2, 1))
    assert report.outcomes == [] and len(world.backend.calls) == calls


def test_members_follow_staffing_and_person_status(world):
    world.run(at(2))
    world.stream.staffing("4711", CAROL, "assigned", at(3))
    world.stream.staffing("4711", BOB, "declined", at(3))
    world.run(at(3, 1))
    assert world.chat().members == {world.uid(ALICE), world.uid(CAROL)}
    world.stream.person(CAROL, "blocked", at(3, 2))
    world.run(at(3, 3))
    assert world.chat().members == {world.uid(ALICE)}
    assert world.events().count("AccessRevoked") == 2


def test_the_clock_turns_the_chat_read_only_then_deletes_it_with_a_confirmation(world):
    world.run(at(2))
    world.run(END + timedelta(days=2, seconds=-1))
    assert not world.chat().read_only
    world.run(END + timedelta(days=2))
    assert world.chat().read_only and world.chat().members == {world.uid(ALICE), world.uid(BOB)}
    assert world.events()[-1] == "MadeReadOnly"
    world.run(END + timedelta(days=32))
    assert world.chat() is None
    assert world.events()[-1] == "ChatDeleted"
    last = list(world.app.repository.event_store.get(ChatGroup.create_id(ORG, "4711")))[-1]
    assert last.confirmation == {
        "chat_id": "!room1:fake",
        "delete_id": "delete-1",
        "status": "complete",
        "media_deleted": 0,
    }
    calls = len(world.backend.calls)
    world.run(END + timedelta(days=400))  # a deleted chat is not asked for again, not even on resync
    assert len(world.backend.calls) == calls


def test_drift_both_ways_is_corrected_on_resync(world):
    world.run(at(2))
    world.chat().members.add("@eve:fake")
    world.chat().members.discard(world.uid(BOB))
    world.chat().moderators.add(world.uid(BOB))
    world.run(at(2, 1))  # not looked at before the resync period
    assert "@eve:fake" in world.chat().members
    world.run(at(2) + timedelta(hours=10))
    assert world.chat().members == {world.uid(ALICE), world.uid(BOB)}
    assert world.chat().moderators == {world.uid(ALICE)}


def test_a_person_without_account_is_pending_then_joined_once_the_account_exists():
    world = World(accounts=set())
    world.stream.org_on(at(1))
    world.stream.event("1", at(1, 10), start=START, end=END, responsible=ALICE, staff={BOB: "assigned"})
    world.backend.accounts = {world.uid(ALICE)}
    report = world.run(at(2))
    assert report.pending == 1 and world.chat("1").members == {world.uid(ALICE)}
    world.backend.accounts.add(world.uid(BOB))
    assert world.run(at(2, 0) + timedelta(seconds=30)).outcomes == []  # pending retried after pending_retry
    report = world.run(at(2, 0) + timedelta(minutes=1))
    assert report.pending == 0 and world.chat("1").members == {world.uid(ALICE), world.uid(BOB)}
    world.reconciler.close()


def test_a_failing_chat_backs_off_then_parks_without_blocking_the_others(world):
    world.stream.event("4712", at(1, 11), start=START, end=END, responsible=DAVE)
    world.backend.fail = lambda op, args: BackendUnavailable("down") if args[:2] == (ORG, "4711") else None
    now = at(2)
    report = world.run(now)
    assert [o.event_id for o in report.failed] == ["4711"] and world.chat("4712") is not None
    assert world.reconciler.states[(ORG, "4711")].retry_at == now + timedelta(seconds=5)  # half of 10 s, no jitter
    assert world.run(now + timedelta(seconds=4)).outcomes == []  # still backing off
    world.run(now + timedelta(seconds=5))
    world.run(now + timedelta(seconds=30))
    assert world.reconciler.parked() == {(ORG, "4711"): "down"}
    assert world.run(now + timedelta(minutes=59)).outcomes == []  # parked for an hour
    world.backend.fail = None
    world.run(now + timedelta(hours=2))
    assert world.reconciler.parked() == {} and world.chat("4711").members == {world.uid(ALICE), world.uid(BOB)}


def test_a_crash_between_steps_loses_nothing(world):
    done = []

    def fail_second_add(op, args):
        if op == "add_member":
            done.append(args)
            if len(done) == 2:
                return BackendUnavailable("timeout")
        return None

    world.backend.fail = fail_second_add
    world.run(at(2))
    assert world.events().count("AccessGranted") == 1
    world.backend.fail = None
    world.run(at(3))
    assert world.chat().members == {world.uid(ALICE), world.uid(BOB)}
    assert world.events().count("AccessGranted") == 2 and world.events().count("ChatCreated") == 1


def test_a_new_generation_is_a_new_chat_and_the_old_one_goes(world):
    world.run(at(2))
    world.stream.event("4711", at(3), start=START, end=END, responsible=ALICE, chat=False)
    world.run(at(3, 1))  # chat disabled: read-only now
    assert world.chat().read_only
    later = at(3) + timedelta(days=31)
    world.stream.event("4711", later, start=START, end=END + timedelta(days=60), responsible=ALICE, chat=True)
    world.run(later)
    assert world.chat(generation=1) is None and world.chat(generation=2).members == {world.uid(ALICE), world.uid(BOB)}


def test_the_desired_state_ignores_the_outcome_events(world):
    world.feed()
    before = world.rows()
    world.run(at(2))
    world.run(END + timedelta(days=2))
    assert "MadeReadOnly" in world.events()
    assert world.rows() == before


def test_awaiting_organisation_creates_nothing():
    world = World()
    world.stream.event("1", at(1, 10), start=START, end=END, responsible=ALICE)
    report = world.run(at(2))
    assert report.outcomes[0].phase == Phase.AWAITING_ORGANISATION and world.backend.chats == {}
    world.stream.org_on(at(2, 5))
    world.run(at(2, 6))
    assert world.chat("1").members == {world.uid(ALICE)}
    world.reconciler.close()


def test_many_chats_converge_with_bounded_concurrency():
    world = World(concurrency=4)
    world.stream.org_on(at(1))
    for i in range(20):
        world.stream.event(f"e{i}", at(1, 10), start=START, end=END, responsible=ALICE, staff={BOB: "assigned"})
    report = world.run(at(2))
    assert len(report.outcomes) == 20 and not report.failed
    assert sum(1 for c in world.backend.calls if c[0] == "ensure_tenant") == 1  # one tenant, provisioned once
    assert all(world.chat(f"e{i}").members == {world.uid(ALICE), world.uid(BOB)} for i in range(20))
    world.reconciler.close()


class Published:
    def __init__(self):
        self.messages = []

    def publish(self, key, document):
        self.messages.append((key, document))


def test_a_status_is_published_on_every_change_and_only_then():
    from chatbridge.reconciler.status import StatusReporter

    world = World(accounts=set())
    world.backend.accounts = {world.uid(ALICE)}
    published = Published()
    world.reconciler.on_change = StatusReporter(world.backend, published)
    world.stream.org_on(at(1))
    world.stream.event("4711", at(1, 10), start=START, end=END, responsible=ALICE, staff={BOB: "assigned"})
    world.run(at(2))
    key, document = published.messages[-1]
    assert key == f"{ORG}/4711"
    assert document == {"org": ORG, "event_id": "4711", "generation": 1, "phase": "active",
                        "chat_link": "https://matrix.to/#/!room1:fake", "members_synced": 1, "members_pending": 1,
                        "at": "2026-12-01T23:00:00Z"}  # fmt: skip
    assert BOB not in str(published.messages) and ALICE not in str(published.messages)
    world.run(at(2) + timedelta(seconds=30))  # nothing looked at, nothing published
    world.run(at(2) + timedelta(minutes=1))  # pending retried, still pending: nothing changed
    assert len(published.messages) == 1
    world.backend.accounts.add(world.uid(BOB))
    world.run(at(2) + timedelta(minutes=2))
    assert published.messages[-1][1]["members_synced"] == 2 and published.messages[-1][1]["members_pending"] == 0
    world.run(END + timedelta(days=2))
    assert published.messages[-1][1]["phase"] == "read_only"
    world.run(END + timedelta(days=32))
    assert published.messages[-1][1]["phase"] == "deleted" and published.messages[-1][1]["chat_link"] is None
    assert len(published.messages) == 4
    world.reconciler.close()


def test_the_kafka_publisher_keys_by_chat():
    from chatbridge.reconciler.status import STATUS_TOPIC, KafkaStatusPublisher

    sent = []

    class Producer:
        def send(self, topic, key, value):
            sent.append((topic, key, value))

    KafkaStatusPublisher(Producer()).publish("drk-koeln/4711", {"phase": "active"})
    assert sent == [(STATUS_TOPIC, b"drk-koeln/4711", b'{"phase": "active"}')]


def test_the_worker_runs_rounds_until_stopped():
    import threading

    from chatbridge.reconciler.service import ReconcilerWorker

    world = World()
    world.stream.org_on(at(1))
    world.stream.event("4711", at(1, 10), start=START, end=END, responsible=ALICE)
    world.feed()
    rows = world.rows()
    stop = threading.Event()
    worker = ReconcilerWorker(world.app, world.backend, lambda: rows, ReconcilerSettings(interval=0.01),
                              clock=lambda: at(2))  # fmt: skip
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    for _ in range(1000):  # up to 10 s on a busy machine
        if world.chat() is not None and world.chat().members:
            break
        threading.Event().wait(0.01)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and world.chat().members == {world.uid(ALICE)}


def test_a_stopped_worker_abandons_the_backends_calls_and_records_nothing_unconfirmed():
    import threading

    from chatbridge.reconciler.service import ReconcilerWorker

    class Hanging(FakeChatBackend):
        """A backend whose tenant call waits until the worker abandons it, then fails as the Matrix adapter does."""

        def __init__(self):
            super().__init__()
            self.called, self.abandoned = threading.Event(), threading.Event()
            self.cut_after: list[float] = []

        def abandon(self, cut_after: float = 0.0) -> None:
            self.cut_after.append(cut_after)
            self.abandoned.set()

        def ensure_tenant(self, org, fields):
            self.called.set()
            self.abandoned.wait(30)
            raise BackendUnavailable("resolve alias: abandoned, chatbridge is stopping")

    world = World()
    world.backend = backend = Hanging()
    world.stream.org_on(at(1))
    world.stream.event("4711", at(1, 10), start=START, end=END, responsible=ALICE)
    world.feed()
    rows = world.rows()
    stop = threading.Event()
    worker = ReconcilerWorker(world.app, backend, lambda: rows, ReconcilerSettings(interval=60), clock=lambda: at(2))
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"cut_after": 2.5})
    thread.start()
    assert backend.called.wait(10)
    stop.set()  # no nudge: the worker notices the stop by itself, though its sleep between rounds is a minute
    thread.join(10)
    assert not thread.is_alive()
    assert backend.cut_after == [2.5]
    chat = world.app.repository.get(ChatGroup.create_id(ORG, "4711"))
    assert chat.backend_chats == {}  # the step was never confirmed: nothing claims it was done
    assert world.app.repository.get(Organisation.create_id(ORG)).tenant_id is None


def test_an_unexpected_error_parks_the_chat_without_naming_anyone(world, caplog):
    world.backend.fail = lambda op, args: KeyError(args[1]) if op == "add_member" else None
    with caplog.at_level("INFO"):
        report = world.run(at(2))
    assert report.failed[0].error == "unexpected KeyError"
    assert ALICE not in caplog.text and world.uid(ALICE) not in caplog.text and BOB not in caplog.text


def test_a_bridge_out_of_its_chat_rejoins_first_and_the_repair_is_recorded(world):
    world.run(at(2))
    world.chat().bridge_joined = False
    world.stream.staffing("4711", CAROL, "assigned", at(3))
    report = world.run(at(3, 1))
    assert [s.kind for s in report.outcomes[0].applied] == ["join_bridge", "add_member"]
    assert world.events().count("DriftRepaired") == 1 and world.chat().bridge_joined


def test_a_join_refused_for_one_person_leaves_that_person_pending_and_the_rest_goes_on(world):
    from chatbridge.backends.port import BackendError

    world.backend.fail = lambda op, args: BackendError("join member: HTTP 403 M_BAD_STATE") if (
        op == "add_member" and args[1] == world.uid(BOB)) else None  # fmt: skip
    report = world.run(at(2))
    assert not report.failed and report.outcomes[0].pending_reasons == {BOB: "join member: HTTP 403 M_BAD_STATE"}
    assert world.chat().members == {world.uid(ALICE)} and world.chat().moderators == {world.uid(ALICE)}
    assert BOB not in str(report.summary())


def test_an_unchanged_chat_is_read_once_at_the_resync_and_not_written(world):
    world.run(at(2))
    world.backend.calls.clear()
    report = world.run(at(2) + timedelta(hours=10))
    assert len(report.outcomes) == 1 and not report.outcomes[0].applied
    assert [c[0] for c in world.backend.calls] == ["get_chat"]
