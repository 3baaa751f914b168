"""What a member sees of an event's chat on a real Synapse: its name and German topic from the first moment, both
following the event when it moves and the chat when it turns read-only, long and unsafe titles made fit to show,
the organisation's space listing its chats by start — and a resync of an unchanged chat writing nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatbridge.backends.matrix import MatrixBackend
from chatbridge.backends.port import ChatLabels
from chatbridge.bootstrap import open_store
from chatbridge.consumers.jsonl import ingest_lines
from chatbridge.reconciler.loop import Reconciler
from chatbridge.reconciler.naming import RoomNaming
from chatbridge.reconciler.service import desired_rows, dry_run, render_plan
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, org)
from tests.integration.synapse_support import Synapse as Synapse
from tests.support import Stream, at

pytestmark = pytest.mark.integration
START, END = at(5, 9), at(5, 17)  # Saturday 5 December 2026, Cologne time
RESPONSIBLE = "a" * 32


class Writes(httpx.BaseTransport):
    """The HTTP transport of the backend under test, counting every request that is not a read."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.writes: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "GET":
            self.writes.append(f"{request.method} {request.url.path}")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class Live:
    """A store on a SQLite file, a message stream fed into it, the reconciler on the real Synapse."""

    def __init__(self, tmp_path: Path, synapse: Synapse, org: str):
        self.store = open_store(Settings(database=tmp_path / f"{uuid.uuid4().hex}.db"))
        self.stream = Stream()
        self.fed = 0
        self.org = org
        self.synapse = synapse
        self.transport = Writes()
        self.backend: MatrixBackend = synapse.backend(transport=self.transport)
        self.reconciler = Reconciler(self.store.app, self.backend, ReconcilerSettings(), naming=RoomNaming())
        self.stream.org_on(at(1), org=org)
        synapse.register_user(self.backend.user_id(org, RESPONSIBLE))  # the organisation is the test's alone

    def close(self) -> None:
        self.reconciler.close()
        self.backend.close()
        self.store.close()

    def upsert(self, event_id: str, when: datetime, title: str, start: datetime = START, end: datetime = END) -> None:
        self.stream.send("event.upserted", when, {"event_id": event_id, "title": title, "start": start.isoformat(),
                         "end": end.isoformat(), "responsible": RESPONSIBLE, "chat_enabled": True}, self.org)  # fmt: skip

    def feed(self) -> None:
        lines = self.stream.numbered()[self.fed :]
        ingest_lines(self.store.app, "test", lines)
        self.fed += len(lines)

    def run(self, now: datetime) -> None:
        self.feed()
        report = self.reconciler.pass_once(desired_rows(self.store), now)
        assert not report.failed, report.failed

    def room(self, event_id: str = "4711") -> str:
        chat = self.backend.get_chat(self.org, event_id, 1)
        assert chat is not None
        return chat.chat_id

    def state(self, room: str) -> dict[tuple[str, str], dict[str, Any]]:
        """The room's state as Synapse holds it (the admin API, not the adapter under test)."""
        with self.synapse.admin() as admin:
            events = admin.get(f"/_synapse/admin/v1/rooms/{room}/state").json()["state"]
        return {(e["type"], e["state_key"]): e for e in events}

    def shown(self, event_id: str = "4711") -> tuple[str, str]:
        state = self.state(self.room(event_id))
        return state[("m.room.name", "")]["content"]["name"], state[("m.room.topic", "")]["content"]["topic"]

    def space(self) -> str:
        with self.synapse.admin() as admin:
            response = admin.get(f"/_matrix/client/v3/directory/room/%23chatbridge.{self.org}:localhost")
        return str(response.json()["room_id"])

    def order(self, event_id: str = "4711") -> str:
        return str(self.state(self.space())[("m.space.child", self.room(event_id))]["content"]["order"])


@pytest.fixture
def live(tmp_path: Path, synapse: Synapse, org: str) -> Iterator[Live]:
    world = Live(tmp_path, synapse, org)
    yield world
    world.close()


def test_a_new_chat_has_its_name_and_topic_from_its_first_moment(live: Live):
    live.upsert("4711", at(1, 10), "Sanitätsdienst Stadtfest")
    live.run(at(2))
    assert live.shown() == (
        "Sanitätsdienst Stadtfest · Sa 05.12.2026",
        "Nur lesbar ab Mo 07.12.2026 17:00 Uhr, gelöscht am Mi 06.01.2027 17:00 Uhr.",
    )
    creation = [w for w in live.transport.writes if "/state/m.room.name" in w or "/state/m.room.topic" in w]
    assert creation == [], "born named: name and topic are in the room's initial state, not written after"
    assert live.order() == "20261205T080000Z"


def test_name_topic_and_place_follow_the_event_when_it_moves(live: Live):
    live.upsert("4711", at(1, 10), "Sanitätsdienst Stadtfest")
    live.run(at(2))
    live.upsert("4711", at(3), "Sanitätsdienst Nikolausmarkt", start=at(12, 9), end=at(12, 17))
    live.run(at(3, 1))
    assert live.shown() == (
        "Sanitätsdienst Nikolausmarkt · Sa 12.12.2026",
        "Nur lesbar ab Mo 14.12.2026 17:00 Uhr, gelöscht am Mi 13.01.2027 17:00 Uhr.",
    )
    assert live.order() == "20261212T080000Z"


def test_the_topic_says_read_only_once_the_chat_is(live: Live, synapse: Synapse):
    live.upsert("4711", at(1, 10), "Sanitätsdienst Stadtfest")
    live.run(at(2))
    live.run(END + timedelta(days=2))
    chat = live.backend.get_chat(live.org, "4711", 1)
    assert chat is not None and chat.read_only
    assert live.shown() == (
        "Sanitätsdienst Stadtfest · Sa 05.12.2026",
        "Nur noch lesbar. Wird am Mi 06.01.2027 17:00 Uhr gelöscht.",
    )


def test_a_title_of_300_characters_is_cut_to_a_name_clients_show_whole(live: Live):
    title = ("Sanitätsdienst beim Rosenmontagszug " * 9)[:300]
    assert len(title) == 300
    live.upsert("4711", at(1, 10), title)
    live.run(at(2))
    name, _ = live.shown()
    assert len(name) == 64 and name.endswith("… · Sa 05.12.2026")
    assert name == "Sanitätsdienst beim Rosenmontagszug Sanitätsdie… · Sa 05.12.2026"


def test_line_breaks_and_control_characters_in_a_title_are_made_safe(live: Live):
    live.upsert("4711", at(1, 10), "Stadtfest\nSchicht 2\r\n\tHalle\x00\x07 B \u202eTROPS\u202c\u2028Ende\x1b[2J")
    live.run(at(2))
    name, _ = live.shown()
    assert name == "Stadtfest Schicht 2 Halle B TROPS Ende [2J · Sa 05.12.2026"


def test_the_space_lists_its_chats_by_the_events_start(live: Live, synapse: Synapse):
    live.upsert("late", at(1, 10), "Spätdienst", start=at(5, 18), end=at(5, 23))
    live.upsert("early", at(1, 10), "Frühdienst", start=at(5, 6), end=at(5, 12))
    live.upsert("next-week", at(1, 10), "Dienstabend", start=at(9, 19), end=at(9, 21))
    live.run(at(2))
    with synapse.admin() as admin:
        rooms = admin.get(f"/_matrix/client/v1/rooms/{live.space()}/hierarchy").json()["rooms"]
    by_room = {live.room(e): e for e in ("late", "early", "next-week")}
    assert [by_room[r["room_id"]] for r in rooms if r["room_id"] in by_room] == ["early", "late", "next-week"]
    live.upsert("early", at(3), "Frühdienst", start=at(12, 6), end=at(12, 12))  # moved behind the others
    live.run(at(3, 1))
    with synapse.admin() as admin:
        rooms = admin.get(f"/_matrix/client/v1/rooms/{live.space()}/hierarchy").json()["rooms"]
    assert [by_room[r["room_id"]] for r in rooms if r["room_id"] in by_room] == ["late", "next-week", "early"]


def test_a_resync_of_an_unchanged_chat_writes_nothing(live: Live):
    live.upsert("4711", at(1, 10), "Sanitätsdienst Stadtfest\nmit Zeilenumbruch " + "x" * 300)
    live.run(at(2))
    before = live.state(live.room())
    live.transport.writes.clear()
    live.reconciler.states.clear()  # a restarted worker: every chat is read again
    live.run(at(2, 1))
    live.run(at(2, 1) + timedelta(hours=10))  # and the periodic resync
    assert live.transport.writes == []
    after = live.state(live.room())
    assert {k: e["event_id"] for k, e in after.items()} == {k: e["event_id"] for k, e in before.items()}
    plans = dry_run(live.store.app, desired_rows(live.store), live.backend, at(2, 2), naming=RoomNaming())
    assert render_plan(plans).endswith("No changes. The chats match the desired state.")


def test_the_dry_run_shows_a_rename_as_a_step(live: Live):
    live.upsert("4711", at(1, 10), "Sanitätsdienst Stadtfest")
    live.run(at(2))
    live.upsert("4711", at(3), "Sanitätsdienst Weihnachtsmarkt")
    live.feed()
    text = render_plan(dry_run(live.store.app, desired_rows(live.store), live.backend, at(3, 1), naming=RoomNaming()))
    assert '  ~ name: "Sanitätsdienst Weihnachtsmarkt · Sa 05.12.2026"' in text
    assert "Plan: 1 changes in 1 chats." in text


def test_a_chat_made_by_an_earlier_attempt_is_labelled_when_created_again(synapse: Synapse, org: str):
    backend = synapse.backend()
    try:
        tenant = backend.ensure_tenant(org, {"name": "DRK"})
        first = backend.create_chat(org, "4711", 1, tenant.tenant_id, ChatLabels("Alt · Sa 05.12.2026", "t1", "1"))
        again = backend.create_chat(org, "4711", 1, tenant.tenant_id, ChatLabels("Neu · Sa 05.12.2026", "t2", "2"))
        assert again.chat_id == first.chat_id
        read = backend.get_chat(org, "4711", 1)
        assert read is not None and (read.name, read.topic, read.order) == ("Neu · Sa 05.12.2026", "t2", "2")
    finally:
        backend.close()


def test_a_name_changed_and_a_chat_unlisted_by_hand_are_set_back_at_the_resync(
    live: Live, synapse: Synapse, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("chatbridge.backends.matrix.PLACES_FRESH", 0.0)  # the space read afresh, as 30 s later
    live.upsert("4711", at(1, 10), "Sanitätsdienst Stadtfest")
    live.run(at(2))
    room, space = live.room(), live.space()
    with synapse.admin() as admin:  # the bridge user's token: as an admin of the room and the space would
        assert admin.put(f"/_matrix/client/v3/rooms/{room}/state/m.room.name/", json={"name": "Party"}).is_success
        assert admin.put(f"/_matrix/client/v3/rooms/{space}/state/m.space.child/{room}", json={}).is_success
    live.run(at(2) + timedelta(hours=10))
    assert live.shown()[0] == "Sanitätsdienst Stadtfest · Sa 05.12.2026"
    assert live.order() == "20261205T080000Z"
