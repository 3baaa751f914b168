"""The policy table: each rule of DESIGN.md's lifecycle section, as a story told through `simulate`.

Default policy: FULL_USE = 2 days, VIEW = 30 days. The event in most stories ends on 1 December 19:00 (+01:00),
so it turns read-only on 3 December 19:00 and is deleted on 2 January 19:00.
"""

from __future__ import annotations

from datetime import timedelta

from chatbridge.domain.lifecycle import Policy
from tests.support import ALICE, BOB, CAROL, DAVE, ORG, Stream, at, z

START, END = at(1, 16), at(1, 19)
READ_ONLY, DELETE = END + timedelta(days=2), END + timedelta(days=32)


def staffed_event(**extra) -> Stream:
    stream = Stream()
    stream.org_on(at(1, 0, month=11))
    stream.event("4711", at(20, 10, month=11), start=START, end=END, responsible=ALICE,
                 staff={BOB: "assigned", CAROL: "registered"}, **extra)  # fmt: skip
    return stream


def test_active_until_two_days_after_the_end_then_read_only():
    stream = staffed_event()
    chat = stream.chat("4711", READ_ONLY - timedelta(seconds=1))
    assert chat["phase"] == "active"
    assert chat["read_only_at"] == z(READ_ONLY) == "2026-12-03T18:00:00Z"
    assert stream.chat("4711", READ_ONLY)["phase"] == "read_only"


def test_read_only_keeps_its_members_for_thirty_days_then_deleted_without_members():
    stream = staffed_event()
    read_only = stream.chat("4711", DELETE - timedelta(seconds=1))
    assert read_only["phase"] == "read_only"
    assert read_only["members"] == [ALICE, BOB]
    deleted = stream.chat("4711", DELETE)
    assert deleted["phase"] == "deleted"
    assert deleted["delete_at"] == z(DELETE) == "2027-01-02T18:00:00Z"
    assert deleted["members"] == [] and deleted["moderators"] == []


def test_responsible_is_member_and_moderator_assigned_are_members_registered_and_declined_are_not():
    stream = staffed_event()
    stream.staffing("4711", DAVE, "declined", at(21))
    chat = stream.chat("4711", at(1, 12))
    assert chat["members"] == [ALICE, BOB]
    assert chat["moderators"] == [ALICE]


def test_staffing_changes_one_person_and_removed_leaves_the_chat():
    stream = staffed_event()
    stream.staffing("4711", CAROL, "assigned", at(21, 1, month=11))
    stream.staffing("4711", BOB, "removed", at(21, 2, month=11))
    assert stream.chat("4711", at(1, 12))["members"] == [ALICE, CAROL]


def test_upsert_without_staff_keeps_staffing_and_with_staff_replaces_it():
    stream = staffed_event()
    stream.event("4711", at(22, month=11), start=START, end=END, responsible=ALICE)
    assert stream.chat("4711", at(1, 12))["members"] == [ALICE, BOB]
    stream.event("4711", at(23, month=11), start=START, end=END, responsible=None, staff={DAVE: "assigned"})
    chat = stream.chat("4711", at(1, 12))
    assert chat["members"] == [DAVE]
    assert chat["moderators"] == []


def test_cancellation_before_the_end_counts_from_the_cancellation():
    stream = staffed_event()
    stream.cancel("4711", at(1, 10))
    chat = stream.chat("4711", at(1, 12))
    assert chat["read_only_at"] == z(at(3, 10))
    assert chat["delete_at"] == z(at(3, 10) + timedelta(days=30))


def test_cancellation_after_the_end_changes_nothing_and_a_second_cancellation_neither():
    stream = staffed_event()
    stream.cancel("4711", at(1, 8))
    stream.cancel("4711", at(1, 10))  # a second cancellation changes nothing
    assert stream.chat("4711", at(1, 12))["read_only_at"] == z(at(3, 8))
    late_copy = staffed_event()
    late_copy.cancel("4711", at(1, 10))
    late_copy.cancel("4711", at(1, 8))  # stored second, but first in event time: the first cancellation counts
    assert late_copy.chat("4711", at(1, 12))["read_only_at"] == z(at(3, 8))
    late = staffed_event()
    late.cancel("4711", at(2, 10))
    assert late.chat("4711", at(1, 12))["read_only_at"] == z(READ_ONLY)


def test_event_deleted_deletes_the_chat_now_and_later_messages_are_ignored():
    stream = staffed_event()
    stream.delete("4711", at(25, month=11))
    stream.staffing("4711", DAVE, "assigned", at(26, month=11))
    stream.event("4711", at(27, month=11), start=START, end=END, chat=True)
    document = stream.simulate(at(28, month=11))
    [chat] = document["chats"]
    assert chat["phase"] == "deleted"
    assert chat["delete_at"] == chat["read_only_at"] == z(at(25, month=11))
    assert document["ignored"] == 2


def test_chat_disabled_turns_read_only_now_and_reenabling_reopens_the_same_generation():
    stream = staffed_event()
    stream.event("4711", at(25, month=11), start=START, end=END, responsible=ALICE, chat=False)
    disabled = stream.chat("4711", at(26, month=11))
    assert disabled["phase"] == "read_only"
    assert disabled["read_only_at"] == z(at(25, month=11))
    assert disabled["delete_at"] == z(at(25, month=11) + timedelta(days=30))
    stream.event("4711", at(27, month=11), start=START, end=END, responsible=ALICE, chat=True)
    reopened = stream.chat("4711", at(28, month=11))
    assert (reopened["phase"], reopened["generation"]) == ("active", 1)
    assert reopened["read_only_at"] == z(READ_ONLY)


def test_chat_reenabled_after_deletion_starts_a_new_generation_with_the_current_staffing():
    stream = staffed_event()
    stream.event("4711", at(25, month=11), start=START, end=END, responsible=ALICE, chat=False)
    stream.staffing("4711", CAROL, "assigned", at(26, month=11))  # staffing belongs to the event
    later = at(25, month=11) + timedelta(days=31)  # after delete_at of the disabled chat
    new_end = later + timedelta(days=5)
    stream.event("4711", later, start=new_end - timedelta(hours=3), end=new_end, responsible=ALICE, chat=True)
    chat = stream.chat("4711", later + timedelta(hours=1))
    assert (chat["generation"], chat["phase"]) == (2, "active")
    assert chat["members"] == [ALICE, BOB, CAROL]
    assert chat["read_only_at"] == z(new_end + timedelta(days=2))


def test_a_record_repeating_chat_enabled_true_after_deletion_does_not_start_a_new_generation():
    stream = staffed_event()
    after_deletion = DELETE + timedelta(days=1)
    stream.event("4711", after_deletion, start=START, end=after_deletion + timedelta(days=3), responsible=ALICE)
    chat = stream.chat("4711", after_deletion + timedelta(hours=1))
    assert (chat["generation"], chat["phase"]) == (1, "deleted")


def test_moving_the_end_later_reopens_a_read_only_chat():
    stream = staffed_event()
    stream.event("4711", at(4), start=START, end=at(10, 19), responsible=ALICE)  # read-only since 3 Dec
    chat = stream.chat("4711", at(5))
    assert chat["phase"] == "active"
    assert chat["read_only_at"] == z(at(12, 19))


def test_settling_a_chat_past_its_deletion_is_deleted_for_good_even_if_the_end_moves_later():
    stream = staffed_event()
    after_deletion = DELETE + timedelta(hours=1)
    stream.event("4711", after_deletion, start=START, end=after_deletion + timedelta(days=10), responsible=ALICE)
    chat = stream.chat("4711", after_deletion + timedelta(hours=1))
    assert chat["phase"] == "deleted"
    assert chat["members"] == []


def test_organisation_disabled_turns_its_chats_read_only_now_and_deletes_them_after_view():
    stream = staffed_event()
    stream.org_off(at(25, month=11))
    chat = stream.chat("4711", at(26, month=11))
    assert chat["phase"] == "read_only"
    assert chat["read_only_at"] == z(at(25, month=11))
    assert stream.chat("4711", at(25, month=11) + timedelta(days=30))["phase"] == "deleted"


def test_organisation_reenabled_before_deletion_reopens_and_after_deletion_does_not():
    reopened = staffed_event()
    reopened.org_off(at(25, month=11))
    reopened.org_on(at(27, month=11))
    chat = reopened.chat("4711", at(28, month=11))
    assert chat["phase"] == "active" and chat["read_only_at"] == z(READ_ONLY)

    too_late = staffed_event()
    too_late.org_off(at(25, month=11))
    too_late.org_on(at(25, month=11) + timedelta(days=30, hours=1))  # settles the chat first: deleted for good
    assert too_late.chat("4711", at(26, month=11) + timedelta(days=30))["phase"] == "deleted"


def test_awaiting_organisation_until_the_feature_is_first_switched_on():
    stream = Stream()
    stream.event("4711", at(20, month=11), start=START, end=END, responsible=ALICE, staff={BOB: "assigned"})
    waiting = stream.chat("4711", at(21, month=11))
    assert waiting["phase"] == "awaiting_organisation"
    assert waiting["members"] == [] and waiting["moderators"] == []
    stream.org_on(at(22, month=11))
    assert stream.chat("4711", at(23, month=11))["phase"] == "active"


def test_awaiting_organisation_ignores_a_switch_off_that_happened_before_the_chat_saw_the_feature_on():
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.org_off(at(2, month=11))
    stream.event("4711", at(20, month=11), start=START, end=END, responsible=ALICE)
    chat = stream.chat("4711", at(21, month=11))
    assert chat["phase"] == "awaiting_organisation"
    assert chat["read_only_at"] == z(READ_ONLY)  # the organisation's switch-off is no term for it
    assert stream.chat("4711", DELETE)["phase"] == "deleted"  # awaiting chats are still deleted on time


def test_blocked_and_deleted_persons_are_in_no_chat_of_the_organisation():
    stream = staffed_event()
    stream.event("4712", at(20, 11, month=11), start=START, end=END, responsible=BOB, staff={ALICE: "assigned"})
    stream.person(ALICE, "blocked", at(21, month=11))
    stream.person(BOB, "deleted", at(21, month=11))
    document = stream.simulate(at(1, 12))
    for chat in document["chats"]:
        assert ALICE not in chat["members"] and BOB not in chat["members"]
        assert chat["moderators"] == []
    stream.person(ALICE, "active", at(22, month=11))
    assert stream.chat("4711", at(1, 12))["moderators"] == [ALICE]


def test_a_person_status_in_another_organisation_does_not_count():
    stream = staffed_event()
    stream.person(BOB, "blocked", at(21, month=11), org="asb-bonn")
    assert stream.chat("4711", at(1, 12))["members"] == [ALICE, BOB]


def test_an_event_that_never_had_chat_is_ignored_with_its_messages():
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4712", at(20, month=11), start=START, end=END, chat=False, staff={BOB: "assigned"})
    stream.staffing("4712", CAROL, "assigned", at(21, month=11))
    stream.cancel("4712", at(22, month=11))
    stream.delete("4713", at(22, month=11))
    document = stream.simulate(at(1, 12))
    assert document["chats"] == []
    assert document["ignored"] == 4


def test_a_repeated_message_id_is_skipped_and_counted_even_for_ignored_messages():
    stream = staffed_event()
    stream.staffing("4711", CAROL, "assigned", at(21, month=11))
    stream.staffing(
        "4711",
        CAROL,
        "removed",
        at(22, month=11),
    )
    repeated = stream.lines[-2]  # the "assigned" message again, after "removed": must not re-add Carol
    stream.raw(repeated)
    stream.event("9999", at(23, month=11), start=START, end=END, chat=False)
    stream.raw(stream.lines[-1])
    document = stream.simulate(at(1, 12))
    assert document["chats"][0]["members"] == [ALICE, BOB]
    assert (document["duplicates"], document["ignored"]) == (2, 1)


def test_the_id_of_a_rejected_message_is_not_remembered():
    stream = staffed_event()
    stream.raw(
        '{"id": "fix-me", "type": "staffing.changed", "org": "drk-koeln", "occurred_at": "2026-11-21T10:00:00",'
        ' "data": {"event_id": "4711", "person_id": "' + DAVE + '", "status": "assigned"}}'
    )
    stream.staffing(
        "4711",
        DAVE,
        "assigned",
        at(21, month=11),
    )
    stream.lines[-1] = stream.lines[-1].replace(b'"msg-', b'"fix-me', 1).replace(b'fix-me3"', b'fix-me"')
    document = stream.simulate(at(1, 12))
    assert [r["line"] for r in document["rejected"]] == [3]
    assert document["duplicates"] == 0
    assert document["chats"][0]["members"] == [ALICE, BOB, DAVE]


def test_full_use_and_view_are_configurable():
    stream = staffed_event()
    policy = Policy(full_use=timedelta(hours=12), view=timedelta(days=7))
    chat = stream.chat("4711", at(1, 12), policy=policy)
    assert chat["read_only_at"] == z(END + timedelta(hours=12))
    assert chat["delete_at"] == z(END + timedelta(hours=12, days=7))


def test_chats_are_sorted_by_org_and_event_and_times_are_utc_seconds():
    stream = Stream()
    for org, event_id in [("mhd-bonn", "2"), ("drk-koeln", "10"), ("drk-koeln", "1")]:
        stream.event(event_id, at(20, month=11), start=START, end=END + timedelta(microseconds=500), org=org)
    chats = stream.simulate(at(21, month=11))["chats"]
    assert [(c["org"], c["event_id"]) for c in chats] == [("drk-koeln", "1"), ("drk-koeln", "10"), ("mhd-bonn", "2")]
    assert chats[0]["read_only_at"] == "2026-12-03T18:00:00Z"
    assert chats[0]["org"] == ORG


def test_a_second_cancellation_still_settles_a_chat_past_its_deletion():
    stream = staffed_event()
    stream.cancel("4711", at(1, 10))
    stream.cancel("4711", at(1, 10) + timedelta(days=33))  # after delete_at: the chat is deleted for good
    assert stream.chat("4711", at(2))["phase"] == "deleted"
