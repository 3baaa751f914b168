"""The reconciler against a real Synapse: a chat's whole life with the clock moved, drift, pending persons,
Synapse stopping in the middle of a pass, a 429 honoured, and membership throughput with and without concurrency.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from chatbridge.backends.matrix import MatrixBackend
from chatbridge.backends.port import AddOutcome
from chatbridge.bootstrap import open_store
from chatbridge.consumers.jsonl import ingest_lines
from chatbridge.domain.aggregates import ChatGroup
from chatbridge.reconciler.loop import Reconciler
from chatbridge.reconciler.service import desired_rows
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, org)
from tests.integration.synapse_support import Synapse as Synapse
from tests.integration.synapse_support import synapse_script
from tests.support import Stream, at

pytestmark = pytest.mark.integration
START, END = at(5, 9), at(5, 17)


def person() -> str:
    return uuid.uuid4().hex


class Live:
    """A store on a SQLite file, a message stream fed into it, and the reconciler on the real Synapse."""

    def __init__(self, tmp_path: Path, backend: MatrixBackend, org: str, **settings):
        self.store = open_store(Settings(database=tmp_path / f"{uuid.uuid4().hex}.db"))
        self.stream = Stream()
        self.fed = 0
        self.org = org
        self.backend = backend
        self.reconciler = Reconciler(self.store.app, backend, ReconcilerSettings(**settings))

    def close(self):
        self.reconciler.close()
        self.store.close()

    def run(self, now):
        lines = self.stream.numbered()[self.fed :]
        ingest_lines(self.store.app, "test", lines)
        self.fed += len(lines)
        return self.reconciler.pass_once(desired_rows(self.store), now)

    def uid(self, person_id):
        return self.backend.user_id(self.org, person_id)

    def chat(self, event_id="4711", generation=1):
        return self.backend.get_chat(self.org, event_id, generation)

    def events(self, event_id="4711"):
        return list(self.store.app.repository.event_store.get(ChatGroup.create_id(self.org, event_id)))


@pytest.fixture
def live(tmp_path, synapse: Synapse, org: str):
    world = Live(tmp_path, synapse.backend(), org)
    world.stream.org_on(at(1), org=org)
    yield world
    world.close()


def test_a_chats_whole_life_with_the_clock_moved(live: Live, synapse: Synapse):
    alice, bob, carol = person(), person(), person()
    accounts = {p: synapse.register_user(live.uid(p)) for p in (alice, bob, carol)}
    live.stream.event("4711", at(1, 10), start=START, end=END, responsible=alice,
                      staff={bob: "assigned", carol: "registered"}, org=live.org)  # fmt: skip
    report = live.run(at(2))
    assert not report.failed
    chat = live.chat()
    assert chat.members == {live.uid(alice), live.uid(bob)} and chat.moderators == {live.uid(alice)}
    with synapse.admin() as admin:
        joined = admin.get(f"/_synapse/admin/v1/rooms/{chat.chat_id}/members").json()["members"]
    assert set(joined) == {live.uid(alice), live.uid(bob), "@chatbridge-bot:localhost"}

    live.stream.staffing("4711", carol, "assigned", at(3), org=live.org)
    live.stream.staffing("4711", bob, "declined", at(3), org=live.org)
    live.run(at(3, 1))
    assert live.chat().members == {live.uid(alice), live.uid(carol)}

    send = f"/_matrix/client/v3/rooms/{chat.chat_id}/send/m.room.message/"
    with accounts[carol].client() as client:
        mxc = client.post(
            "/_matrix/media/v3/upload", content=b"Dienstplan", headers={"Content-Type": "text/plain"}
        ).json()["content_uri"]
        assert client.put(send + "file", json={"msgtype": "m.file", "body": "plan.txt", "url": mxc}).status_code == 200
        live.run(END + timedelta(days=2, seconds=-1))
        assert client.put(send + "before", json={"msgtype": "m.text", "body": "ok"}).status_code == 200
        live.run(END + timedelta(days=2))
        assert live.chat().read_only and live.chat().members == {live.uid(alice), live.uid(carol)}
        assert client.put(send + "after", json={"msgtype": "m.text", "body": "no"}).status_code == 403

    live.run(END + timedelta(days=32))
    assert live.chat() is None
    with synapse.admin() as admin:
        assert admin.get(f"/_synapse/admin/v1/rooms/{chat.chat_id}").status_code == 404
        assert admin.get(f"/_matrix/client/v1/media/download/localhost/{mxc.rsplit('/', 1)[1]}").status_code == 404
    names = [type(e).__name__ for e in live.events()]
    assert names.count("AccessGranted") == 3 and names.count("AccessRevoked") == 1
    assert names[-2:] == ["MadeReadOnly", "ChatDeleted"] or names[-1] == "ChatDeleted"
    confirmation = live.events()[-1].confirmation
    assert confirmation["status"] == "complete" and confirmation["media_deleted"] == 1 and confirmation["delete_id"]


def test_drift_both_ways_is_corrected(live: Live, synapse: Synapse):
    alice, bob = person(), person()
    for p in (alice, bob):
        synapse.register_user(live.uid(p))
    live.stream.event("4711", at(1, 10), start=START, end=END, responsible=alice, staff={bob: "assigned"}, org=live.org)
    live.run(at(2))
    chat = live.chat()
    eve = synapse.register(f"eve{uuid.uuid4().hex[:8]}").user_id
    assert live.backend.add_member(chat.chat_id, eve) == AddOutcome.JOINED  # added by hand
    live.backend.remove_member(chat.chat_id, live.uid(bob))  # kicked by hand
    live.run(at(2) + timedelta(hours=10))  # the periodic resync
    assert live.chat().members == {live.uid(alice), live.uid(bob)}
    revoked = [e for e in live.events() if type(e).__name__ == "AccessRevoked"]
    assert [e.person_id for e in revoked] == [None]  # the hand-added account, recorded without a person


def test_a_person_without_account_is_pending_then_joined(live: Live, synapse: Synapse):
    alice, dave = person(), person()
    synapse.register_user(live.uid(alice))
    live.stream.event(
        "4711", at(1, 10), start=START, end=END, responsible=alice, staff={dave: "assigned"}, org=live.org
    )
    assert live.run(at(2)).pending == 1
    assert live.chat().members == {live.uid(alice)}
    synapse.register_user(live.uid(dave))
    assert live.run(at(2) + timedelta(minutes=1)).pending == 0
    assert live.chat().members == {live.uid(alice), live.uid(dave)}


class StopsSynapse(MatrixBackend):
    """Stops Synapse just before the n-th force-join: the middle of a pass."""

    def __init__(self, *args, stop_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.joins = 0
        self.stop_at = stop_at

    def add_member(self, chat_id, user_id):
        self.joins += 1
        if self.joins == self.stop_at:
            synapse_script("stop")
        return super().add_member(chat_id, user_id)


def test_synapse_stopped_mid_pass_backs_off_parks_and_converges_after_restart(tmp_path, synapse: Synapse, org: str):
    backend = StopsSynapse(
        synapse.base_url, "localhost", synapse.bot_token, stop_at=5, max_attempts=2, backoff_base=0.05
    )
    live = Live(tmp_path, backend, org, concurrency=1, park_after=2, backoff_base=timedelta(minutes=1))
    try:
        alice, bob = person(), person()
        for p in (alice, bob):
            synapse.register_user(live.uid(p))
        live.stream.org_on(at(1), org=org)
        events = [f"e{i}" for i in range(5)]
        for event_id in events:
            live.stream.event(
                event_id, at(1, 10), start=START, end=END, responsible=alice, staff={bob: "assigned"}, org=org
            )
        now = at(2)
        first = live.run(now)
        assert first.failed and len(first.outcomes) == 5  # the chats after the stop failed, none was skipped
        second = live.run(now + timedelta(hours=1))
        assert len(second.failed) == len(first.failed)
        assert set(live.reconciler.parked()) == {(org, o.event_id) for o in first.failed}
        assert all("attempts" in error for error in live.reconciler.parked().values())
        synapse_script("start")
        third = live.run(now + timedelta(hours=3))
        assert not third.failed and live.reconciler.parked() == {}
        for event_id in events:
            assert live.chat(event_id).members == {live.uid(alice), live.uid(bob)}
            names = [type(e).__name__ for e in live.events(event_id)]
            assert names.count("ChatCreated") == 1 and names.count("AccessGranted") == 2  # nothing lost, nothing twice
    finally:
        synapse_script("start")
        live.close()


def test_a_429_is_honoured(tmp_path, synapse: Synapse, org: str):
    """An admin whose rate limits are not lifted (a production server may not grant that) gets 429 on kicks."""
    admin = synapse.register(f"adm{uuid.uuid4().hex[:8]}", admin=True)
    backend = MatrixBackend(synapse.base_url, "localhost", admin.token)
    live = Live(tmp_path, backend, org)
    try:
        alice, staff = person(), [person() for _ in range(10)]
        for p in [alice, *staff]:
            synapse.register_user(live.uid(p))
        live.stream.org_on(at(1), org=org)
        live.stream.event("4711", at(1, 10), start=START, end=END, responsible=alice,
                          staff=dict.fromkeys(staff, "assigned"), org=org)  # fmt: skip
        live.run(at(2))
        assert len(live.chat().members) == 11
        live.stream.event("4711", at(3), start=START, end=END, responsible=alice, staff={}, org=org)
        report = live.run(at(3, 1))
        assert not report.failed and live.chat().members == {live.uid(alice)}
        assert backend.retries > 0  # rate-limited, waited as told, and went on
    finally:
        live.close()


@pytest.mark.parametrize("concurrency", [1, 8])
def test_membership_throughput(tmp_path, synapse: Synapse, org: str, concurrency: int, capsys):
    live = Live(tmp_path, synapse.backend(), org, concurrency=concurrency)
    try:
        persons = [person() for _ in range(5)]
        for p in persons:
            synapse.register_user(live.uid(p))
        events = [f"e{i}" for i in range(12)]
        live.stream.org_on(at(1), org=org)
        for event_id in events:
            live.stream.event(event_id, at(1, 10), start=START, end=END, org=org)
        live.run(at(2))  # the empty chats
        for event_id in events:
            live.stream.event(event_id, at(3), start=START, end=END, staff=dict.fromkeys(persons, "assigned"), org=org)
        started = time.perf_counter()
        report = live.run(at(3, 1))
        seconds = time.perf_counter() - started
        assert not report.failed and report.steps == 60
        with capsys.disabled():
            print(f"\n  membership steps/s with concurrency {concurrency}: {report.steps / seconds:.1f} "
                  f"({report.steps} force-joins in {seconds:.1f} s)")  # fmt: skip
    finally:
        live.close()
