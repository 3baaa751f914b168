"""Drift the backend causes under the reconciler, on a real Synapse: each repaired (or left waiting with its
reason) and recorded on the chat, never a failure of the pass; and persons whose account cannot be used stay pending
with the reason while the chat's other steps go on."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest

from chatbridge.backends.user_ids import TemplateUserIds
from chatbridge.reconciler.loop import Reconciler
from chatbridge.reconciler.service import desired_rows, dry_run, pass_document, plan_document
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, org)
from tests.integration.synapse_support import Account, Synapse
from tests.integration.test_reconcile_synapse import END, START, Live, person
from tests.support import at

pytestmark = pytest.mark.integration
BOT = "@chatbridge-bot:localhost"


@pytest.fixture
def live(tmp_path, synapse: Synapse, org: str):
    world = Live(tmp_path, synapse.backend(), org)
    world.stream.org_on(at(1), org=org)
    yield world
    world.close()


def names(live: Live) -> list[str]:
    return [type(e).__name__ for e in live.events()]


def drifts(live: Live) -> list[str]:
    return [e.drift for e in live.events() if type(e).__name__ == "DriftRepaired"]


ACCOUNTS: dict[str, Account] = {}


def a_chat_with(live: Live, synapse: Synapse, *staff: str) -> tuple[str, list[str]]:
    """A chat of alice (responsible) and `staff`, reconciled once; its room id and the persons."""
    alice = person()
    for p in (alice, *staff):
        ACCOUNTS[p] = synapse.register_user(live.uid(p))
    live.stream.event("4711", at(1, 10), start=START, end=END, responsible=alice,
                      staff=dict.fromkeys(staff, "assigned"), org=live.org)  # fmt: skip
    assert not live.run(at(2)).failed
    return live.chat().chat_id, [alice, *staff]


def resync(live: Live, hours: int = 10):
    return live.run(at(2) + timedelta(hours=hours))


def test_a_room_deleted_by_an_admin_is_created_again_with_its_members_and_recorded(live: Live, synapse: Synapse):
    room, (alice, bob) = a_chat_with(live, synapse, person())
    synapse.delete_room(room)
    report = resync(live)
    assert not report.failed
    again = live.chat()
    assert again.chat_id != room and again.members == {live.uid(alice), live.uid(bob)}
    assert again.moderators == {live.uid(alice)} and again.name and again.order
    assert names(live).count("ChatCreated") == 2 and drifts(live) == ["chat gone at the backend: created again"]
    revoked = [e.person_id for e in live.events() if type(e).__name__ == "AccessRevoked"]
    assert sorted(revoked) == sorted([alice, bob])  # their access ended with the room, on the record
    assert names(live).count("AccessGranted") == 4
    assert not resync(live, 20).outcomes[0].applied  # and then it is quiet


def test_an_alias_deleted_by_an_admin_makes_no_second_room(live: Live, synapse: Synapse, tmp_path):
    room, (alice,) = a_chat_with(live, synapse)
    alias = f"#chatbridge.{live.org}.4711.1:localhost"
    with synapse.admin() as client:
        assert client.delete(f"/_matrix/client/v3/directory/room/{quote(alias)}").status_code == 200
    for reconciler in (live.reconciler, Reconciler(live.store.app, live.backend)):  # remembered, or after a restart
        live.reconciler = reconciler
        report = resync(live)
        assert not report.failed and not report.outcomes[0].applied
    live.reconciler.close()
    assert live.backend.get_chat(live.org, "4711", 1, room).members == {live.uid(alice)}
    assert names(live).count("ChatCreated") == 1


def test_a_member_whose_account_is_deactivated_is_pending_with_the_reason_and_the_chat_goes_on(live, synapse):
    room, (alice, bob) = a_chat_with(live, synapse, person())
    synapse.deactivate(live.uid(bob))  # Synapse takes a deactivated account out of every room, in the background
    for _ in range(200):
        if live.uid(bob) not in live.chat().members:
            break
        time.sleep(0.05)
    report = resync(live)
    assert not report.failed and report.pending == 1
    assert pass_document(report, at(3))["pending_by_reason"] == {"chat account deactivated": 1}
    assert live.reconciler.states[(live.org, "4711")].pending == {bob: "chat account deactivated"}
    revoked = [e.person_id for e in live.events() if type(e).__name__ == "AccessRevoked"]
    assert revoked == [bob]  # the access the backend ended, recorded once
    assert live.run(END + timedelta(days=2)).outcomes[0].error is None  # read-only, still pending
    assert live.chat().read_only and live.chat().members == {live.uid(alice)}
    assert [e.person_id for e in live.events() if type(e).__name__ == "AccessRevoked"] == [bob]


def test_rights_changed_by_hand_are_restored_and_recorded(live: Live, synapse: Synapse):
    room, (alice, bob) = a_chat_with(live, synapse, person())
    path = f"/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"
    with synapse.admin() as client:
        levels = client.get(path).json()
        silenced = {**levels, "events_default": 50, "users_default": 50}  # everyone a moderator, and silent
        assert client.put(path, json=silenced).status_code == 200
    assert not live.chat().levels_as_set
    report = resync(live)
    assert [s.kind for s in report.outcomes[0].applied] == ["restore_rights"]
    with synapse.admin() as client:
        restored = client.get(path).json()
    assert restored["events_default"] == 0 and restored["users_default"] == 0
    assert restored["users"] == {live.uid(alice): 50}
    assert drifts(live) == ["rights in the chat changed by hand: restored"]
    assert not resync(live, 20).outcomes[0].applied


def test_a_chat_the_bridge_left_is_read_parked_with_the_reason_and_rejoined_once_invited(live, synapse: Synapse):
    room, (alice, bob) = a_chat_with(live, synapse, person())
    live.stream.event("4712", at(1, 10), start=START, end=END, responsible=alice, org=live.org)
    with synapse.admin() as client:
        assert client.post(f"/_matrix/client/v3/rooms/{room}/leave", json={}).status_code == 200
    plans = dry_run(live.store.app, desired_rows(live.store), live.backend, at(2) + timedelta(hours=1))
    assert [s.kind for s in plans[0].steps] == ["join_bridge"]  # read through the admin API, not an error
    report = resync(live)
    failed = {o.event_id: o.error for o in report.outcomes if o.error}
    assert list(failed) == ["4711"] and "invite it back" in failed["4711"]  # the other chat went on
    assert (live.org, "4711") in live.reconciler.parked()
    carol = person()
    synapse.register_user(live.uid(carol))
    live.stream.staffing("4711", carol, "assigned", at(13), org=live.org)
    with ACCOUNTS[alice].client() as as_alice:  # a moderator invites the bridge back
        assert as_alice.post(f"/_matrix/client/v3/rooms/{room}/invite", json={"user_id": BOT}).status_code == 200
    report = live.run(at(2) + timedelta(hours=12))  # after the park
    assert not report.failed
    assert live.chat().bridge_joined and live.chat().members == {live.uid(p) for p in (alice, bob, carol)}
    assert drifts(live) == ["bridge not in the chat: rejoined"]


class OneRemote(TemplateUserIds):
    """One person's id on another server: Synapse answers that look-up with 400, neither 200 nor 404."""

    def __init__(self, remote: str):
        super().__init__(server_name="localhost")
        self.remote = remote

    def user_id(self, org: str, person_id: str) -> str:
        if person_id == self.remote:
            return super().user_id(org, person_id).replace(":localhost", ":elsewhere.example")
        return super().user_id(org, person_id)


def test_persons_whose_id_is_too_long_or_whose_look_up_fails_stay_pending_and_the_chat_goes_on(tmp_path, synapse):
    long_org, far = f"t{uuid.uuid4().hex}".ljust(64, "x"), person()  # 64 characters: valid in the contract
    live = Live(tmp_path, synapse.backend(ids=OneRemote(far)), long_org)
    try:
        live.stream.org_on(at(1), org=long_org)
        alice, bob, longest = person(), person(), "Ä" * 64
        for p in (alice, bob):
            user_id = live.uid(p)
            assert len(user_id.encode()) <= 255
            synapse.register_user(user_id)
        assert len(live.uid(longest).encode()) > 255
        live.stream.event("4711", at(1, 10), start=START, end=END, responsible=alice,
                          staff={bob: "assigned", longest: "assigned", far: "assigned"}, org=long_org)  # fmt: skip
        report = live.run(at(2))
        assert not report.failed and report.pending == 2
        reasons = {"account look-up failed": 1, "chat id too long (a Matrix id is at most 255 bytes)": 1}
        assert pass_document(report, at(2))["pending_by_reason"] == reasons
        assert live.chat().members == {live.uid(alice), live.uid(bob)}
        assert live.chat().moderators == {live.uid(alice)}
        document = plan_document(dry_run(live.store.app, desired_rows(live.store), live.backend, at(3)), at(3))
        assert document["changes"] == 0 and document["pending"] == reasons
        pending = [s["pending"] for s in document["chats"][0]["steps"]]
        assert sorted(pending) == sorted(reasons)
        assert live.run(END + timedelta(days=2)).outcomes[0].error is None  # the other steps go on
        assert live.chat().read_only
        assert live.run(END + timedelta(days=32)).outcomes[0].error is None
        assert live.chat() is None
    finally:
        live.close()
