"""The Matrix adapter against a real Synapse: every port operation, its idempotence, and the recipe's pitfalls."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from chatbridge.backends.matrix import TENANT_EVENT, MatrixBackend
from chatbridge.backends.port import AddOutcome, BackendError
from tests.integration.synapse_support import *  # noqa: F403  (fixtures: synapse, matrix, org)
from tests.integration.synapse_support import Synapse as Synapse

pytestmark = pytest.mark.integration
TENANT = {
    "name": "DRK Köln",
    "email": "it@drk.example",
    "address": {"street": "Oskar-Jäger-Str. 101", "postcode": "50825", "city": "Köln", "country": "DE"},
}


def person() -> str:
    return uuid.uuid4().hex


def test_tenant_is_a_space_with_exactly_the_contract_fields(matrix: MatrixBackend, synapse: Synapse, org: str):
    tenant = matrix.ensure_tenant(org, {**TENANT, "phone": "not transferred"})
    assert tenant.changed and tenant.transferred == TENANT
    again = matrix.ensure_tenant(org, TENANT)
    assert (again.tenant_id, again.changed) == (tenant.tenant_id, False)
    with synapse.admin() as client:
        state = client.get(f"/_synapse/admin/v1/rooms/{tenant.tenant_id}/state").json()["state"]
    by_type = {event["type"]: event["content"] for event in state}
    assert by_type[TENANT_EVENT] == TENANT
    assert by_type["m.room.create"]["type"] == "m.space"
    assert by_type["m.room.guest_access"]["guest_access"] == "forbidden"
    moved = {**TENANT, "email": "chat@drk.example"}
    assert matrix.ensure_tenant(org, moved).changed


def test_a_chat_is_encrypted_invite_only_without_guests_inside_its_space(matrix: MatrixBackend, synapse: Synapse, org):
    tenant = matrix.ensure_tenant(org, TENANT)
    chat = matrix.create_chat(org, "4711", 1, tenant.tenant_id)
    assert matrix.create_chat(org, "4711", 1, tenant.tenant_id).chat_id == chat.chat_id  # idempotent
    assert matrix.get_chat(org, "4711", 1) == chat
    assert matrix.get_chat(org, "4711", 2) is None
    with synapse.admin() as client:
        state = client.get(f"/_synapse/admin/v1/rooms/{chat.chat_id}/state").json()["state"]
        space_state = client.get(f"/_synapse/admin/v1/rooms/{tenant.tenant_id}/state").json()["state"]
    by_type = {event["type"]: event for event in state}
    assert by_type["m.room.encryption"]["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert by_type["m.room.join_rules"]["content"]["join_rule"] == "invite"
    assert by_type["m.room.guest_access"]["content"]["guest_access"] == "forbidden"
    assert by_type["m.space.parent"]["state_key"] == tenant.tenant_id
    assert any(e["type"] == "m.space.child" and e["state_key"] == chat.chat_id for e in space_state)
    assert matrix.chat_link(chat.chat_id).startswith("https://matrix.to/#/!")


def test_a_chat_the_bridge_user_is_not_in_is_read_through_the_admin_api(matrix, synapse: Synapse, org):
    """The alias resolves but the room's state is forbidden to a non-member (the bridge user never joined it, was
    kicked, or the room is just being made): the chat is read as it is, not reported as an error."""
    alice = synapse.register_user(matrix.user_id(org, person()))
    alias = matrix._chat_alias(org, "4713", 1)
    with alice.client() as client:
        created = client.post(
            "/_matrix/client/v3/createRoom", json={"preset": "private_chat", "room_alias_name": alias}
        )
    assert created.status_code == 200, created.text
    with synapse.admin() as client:
        forbidden = client.get(f"/_matrix/client/v3/rooms/{created.json()['room_id']}/state")
    assert forbidden.status_code == 403  # what the bridge user's own read answers
    chat = matrix.get_chat(org, "4713", 1)
    assert chat is not None and chat.chat_id == created.json()["room_id"]
    assert chat.members == {alice.user_id} and not chat.read_only  # (a v12 room's creator has no power level)


def test_members_join_idempotently_and_unknown_or_deactivated_accounts_are_pending(matrix, synapse: Synapse, org):
    chat = matrix.create_chat(org, "1", 1, matrix.ensure_tenant(org, TENANT).tenant_id)
    alice, ghost, gone = (matrix.user_id(org, person()) for _ in range(3))
    synapse.register_user(alice)
    synapse.register_user(gone)
    synapse.deactivate(gone)
    assert matrix.add_member(chat.chat_id, alice) == AddOutcome.JOINED
    assert matrix.add_member(chat.chat_id, alice) == AddOutcome.ALREADY
    assert matrix.add_member(chat.chat_id, ghost) == AddOutcome.PENDING
    assert matrix.add_member(chat.chat_id, gone) == AddOutcome.DEACTIVATED
    assert matrix.get_chat(org, "1", 1).members == {alice}
    matrix.set_moderator(chat.chat_id, alice, True)
    assert matrix.get_chat(org, "1", 1).moderators == {alice}
    matrix.set_moderator(chat.chat_id, alice, False)
    assert matrix.get_chat(org, "1", 1).moderators == frozenset()
    matrix.remove_member(chat.chat_id, alice)
    matrix.remove_member(chat.chat_id, alice)  # not in the room: done
    assert matrix.get_chat(org, "1", 1).members == frozenset()


def test_read_only_forbids_members_to_post_and_reopening_allows_it(matrix: MatrixBackend, synapse: Synapse, org):
    chat = matrix.create_chat(org, "1", 1, matrix.ensure_tenant(org, TENANT).tenant_id)
    account = synapse.register_user(matrix.user_id(org, person()))
    matrix.add_member(chat.chat_id, account.user_id)
    path = f"/_matrix/client/v3/rooms/{chat.chat_id}/send/m.room.message/"
    with account.client() as client:
        assert client.put(path + "t1", json={"msgtype": "m.text", "body": "hi"}).status_code == 200
        matrix.set_read_only(chat.chat_id, True)
        assert matrix.get_chat(org, "1", 1).read_only
        assert client.put(path + "t2", json={"msgtype": "m.text", "body": "hi"}).status_code == 403
        reaction = f"/_matrix/client/v3/rooms/{chat.chat_id}/send/m.reaction/t3"
        assert client.put(reaction, json={}).status_code == 403
        matrix.set_read_only(chat.chat_id, False)
        assert client.put(path + "t4", json={"msgtype": "m.text", "body": "hi"}).status_code == 200


def test_deletion_removes_the_room_and_its_uploaded_files(matrix: MatrixBackend, synapse: Synapse, org):
    tenant = matrix.ensure_tenant(org, TENANT)
    chat = matrix.create_chat(org, "1", 1, tenant.tenant_id)
    account = synapse.register_user(matrix.user_id(org, person()))
    matrix.add_member(chat.chat_id, account.user_id)
    with account.client() as client:
        upload = client.post("/_matrix/media/v3/upload", content=b"a file", headers={"Content-Type": "text/plain"})
        mxc = upload.json()["content_uri"]
        body = {"msgtype": "m.file", "body": "f.txt", "url": mxc}
        assert (
            client.put(f"/_matrix/client/v3/rooms/{chat.chat_id}/send/m.room.message/f", json=body).status_code == 200
        )
    media_id = mxc.rsplit("/", 1)[1]
    deletion = matrix.delete_chat(chat.chat_id)
    assert deletion.status == "complete" and deletion.delete_id and deletion.media_deleted == 1
    assert matrix.get_chat(org, "1", 1) is None
    with synapse.admin() as client:
        assert client.get(f"/_synapse/admin/v1/rooms/{chat.chat_id}").status_code == 404
        assert client.get(f"/_matrix/client/v1/media/download/localhost/{media_id}").status_code == 404
        children = [e for e in client.get(f"/_synapse/admin/v1/rooms/{tenant.tenant_id}/state").json()["state"]
                    if e["type"] == "m.space.child" and e["content"]]  # fmt: skip
    assert children == []


def test_an_id_too_long_for_matrix_or_a_failed_look_up_leaves_the_person_pending(matrix, synapse: Synapse, org):
    """Contract-valid ids (64 characters of org and of person id, or non-ASCII) escape beyond Matrix's 255 bytes: no
    account can exist under such an id. A look-up Synapse answers with neither 200 nor 404 (here 400: a remote user)
    keeps that person pending too — neither raises."""
    chat = matrix.create_chat(org, "1", 1, matrix.ensure_tenant(org, TENANT).tenant_id)
    long_org, long_person = "O" * 64, "Ä" * 64
    too_long = matrix.user_id(long_org, long_person)
    assert len(too_long.encode()) > 255 and matrix.unusable(too_long) == AddOutcome.UNUSABLE_ID
    with synapse.admin() as client:
        assert client.get(f"/_synapse/admin/v2/users/{too_long}").status_code in (400, 404)  # what a look-up gets
    assert matrix.add_member(chat.chat_id, too_long) == AddOutcome.UNUSABLE_ID
    remote = f"@{org}.{person()}:elsewhere.example"
    assert matrix.account(remote) == AddOutcome.LOOKUP_FAILED
    assert matrix.add_member(chat.chat_id, remote) == AddOutcome.LOOKUP_FAILED
    assert matrix.get_chat(org, "1", 1).members == frozenset()


def test_the_bridge_joins_a_chat_it_is_not_in_and_reads_it_meanwhile(matrix, synapse: Synapse, org):
    """A room under the chat's alias that the bridge is not in (here made by someone else, as a room the bridge was
    kicked from would be): read through the admin API, then joined with its rights through make_room_admin."""
    alice = synapse.register_user(matrix.user_id(org, person()))
    with alice.client() as client:
        created = client.post(
            "/_matrix/client/v3/createRoom",
            json={"preset": "private_chat", "room_alias_name": matrix._chat_alias(org, "1", 1)},
        )
    room = created.json()["room_id"]  # fmt: skip
    away = matrix.get_chat(org, "1", 1)
    assert away is not None and away.chat_id == room and not away.bridge_joined and away.members == {alice.user_id}
    matrix.join_bridge(room)
    back = matrix.get_chat(org, "1", 1, room)
    assert back is not None and back.bridge_joined and back.members == {alice.user_id}
    bob = matrix.user_id(org, person())
    synapse.register_user(bob)
    assert matrix.add_member(room, bob) == AddOutcome.JOINED  # the bridge acts there again
    matrix.set_moderator(room, bob, True)
    assert matrix.get_chat(org, "1", 1).moderators >= {bob}


def test_a_chat_the_bridge_made_and_left_is_read_and_its_rejoin_refused_with_the_reason(matrix, synapse, org):
    chat = matrix.create_chat(org, "1", 1, matrix.ensure_tenant(org, TENANT).tenant_id)
    alice = matrix.user_id(org, person())
    synapse.register_user(alice)
    assert matrix.add_member(chat.chat_id, alice) == AddOutcome.JOINED
    with synapse.admin() as client:
        assert client.post(f"/_matrix/client/v3/rooms/{chat.chat_id}/leave", json={}).status_code == 200
    away = matrix.get_chat(org, "1", 1, chat.chat_id)
    assert away is not None and not away.bridge_joined and away.members == {alice}
    with pytest.raises(BackendError, match="invite it back"):
        matrix.join_bridge(chat.chat_id)
    assert matrix.delete_chat(chat.chat_id).status == "complete"  # deletion needs no membership
    assert matrix.get_chat(org, "1", 1, chat.chat_id) is None


def test_rights_changed_by_hand_show_and_are_restored(matrix, synapse: Synapse, org):
    chat = matrix.create_chat(org, "1", 1, matrix.ensure_tenant(org, TENANT).tenant_id)
    assert matrix.get_chat(org, "1", 1).levels_as_set
    path = f"/_matrix/client/v3/rooms/{chat.chat_id}/state/m.room.power_levels/"
    with synapse.admin() as client:
        levels = client.get(path).json()
        assert client.put(path, json={**levels, "users_default": 50}).status_code == 200  # everyone a moderator
    assert not matrix.get_chat(org, "1", 1).levels_as_set
    matrix.set_read_only(chat.chat_id, False)
    assert matrix.get_chat(org, "1", 1).levels_as_set
    matrix.set_read_only(chat.chat_id, True)
    locked = matrix.get_chat(org, "1", 1)
    assert locked.read_only and locked.levels_as_set


def test_a_known_chat_is_read_by_its_id_and_one_deleted_by_hand_is_gone(matrix, synapse: Synapse, org):
    chat = matrix.create_chat(org, "1", 1, matrix.ensure_tenant(org, TENANT).tenant_id)
    alias = f"#{matrix._chat_alias(org, '1', 1)}:localhost"
    with synapse.admin() as client:
        assert client.delete(f"/_matrix/client/v3/directory/room/{quote(alias)}").status_code == 200
    assert matrix.get_chat(org, "1", 1) is None  # the alias alone no longer finds it
    assert matrix.get_chat(org, "1", 1, chat.chat_id).chat_id == chat.chat_id  # its id does
    synapse.delete_room(chat.chat_id)
    assert matrix.get_chat(org, "1", 1, chat.chat_id) is None
