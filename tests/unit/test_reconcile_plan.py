"""Properties of the pure plan: it converges in one go, plans nothing twice, and removes what must go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chatbridge.backends.port import ActualChat
from chatbridge.backends.user_ids import TemplateUserIds
from chatbridge.domain.lifecycle import MEMBER_PHASES, Phase
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.reconciler.plan import StepKind, apply, plan, target

IDS = TemplateUserIds(server_name="fake")
ORG = "drk-koeln"
PERSONS = [f"{i:032x}" for i in range(6)]
STRANGERS = ["@eve:fake", "@chatbridge-bot:fake", IDS.user_id("other-org", PERSONS[0])]
ACCOUNTS = [IDS.user_id(ORG, p) for p in PERSONS] + STRANGERS
NOW = datetime(2026, 12, 10, tzinfo=UTC)


@st.composite
def desired_rows(draw):
    read_only_at = NOW + timedelta(days=draw(st.integers(-40, 5)))
    members = sorted(draw(st.sets(st.sampled_from(PERSONS))))
    moderators = sorted(draw(st.sets(st.sampled_from(members)))) if members else []
    return DesiredChat(
        org=ORG,
        event_id="4711",
        generation=draw(st.integers(1, 3)),
        deleted=draw(st.booleans()) and draw(st.booleans()),
        awaiting_organisation=draw(st.booleans()) and draw(st.booleans()),
        read_only_at=read_only_at,
        delete_at=read_only_at + timedelta(days=30),
        next_due=None,
        members=members,
        moderators=moderators,
    )


actual_chats = st.one_of(
    st.none(),
    st.builds(
        ActualChat,
        chat_id=st.just("!room:fake"),
        members=st.frozensets(st.sampled_from(ACCOUNTS)),
        moderators=st.frozensets(st.sampled_from(ACCOUNTS)),
        read_only=st.booleans(),
        bridge_joined=st.booleans(),
        levels_as_set=st.booleans(),
    ),
)


@given(desired_rows(), actual_chats)
def test_applying_the_plan_yields_the_desired_chat(desired, actual):
    goal = target(desired, NOW, IDS)
    result = apply(actual, plan(desired, actual, NOW, IDS))
    if goal.phase in MEMBER_PHASES:
        assert result is not None
        assert result.members == set(goal.members)
        assert result.moderators == goal.moderators
        assert result.read_only == (goal.phase == Phase.READ_ONLY)
    elif goal.phase == Phase.DELETED:
        assert result is None
    else:  # awaiting the organisation: no chat is created, and one that exists keeps nobody
        assert result is None if actual is None else not result.members


@given(desired_rows(), actual_chats)
def test_a_second_plan_is_empty(desired, actual):
    after = apply(actual, plan(desired, actual, NOW, IDS))
    assert plan(desired, after, NOW, IDS) == []


@given(desired_rows(), actual_chats)
def test_every_account_not_desired_is_removed(desired, actual):
    goal = target(desired, NOW, IDS)
    steps = plan(desired, actual, NOW, IDS)
    removed = {s.user_id for s in steps if s.kind == StepKind.REMOVE_MEMBER}
    if actual is not None and goal.phase != Phase.DELETED:
        assert removed == actual.members - set(goal.members)
        for step in steps:
            if step.kind == StepKind.REMOVE_MEMBER and step.user_id in STRANGERS:
                assert step.person_id is None  # recorded without a person: nobody chatbridge added


@given(desired_rows(), actual_chats)
def test_deleted_and_awaiting_chats_get_no_members(desired, actual):
    if desired.phase(NOW) in (Phase.DELETED, Phase.AWAITING_ORGANISATION):
        steps = plan(desired, actual, NOW, IDS)
        assert not [s for s in steps if s.kind in (StepKind.ADD_MEMBER, StepKind.CREATE_CHAT)]


@given(desired_rows(), actual_chats)
def test_a_read_only_chat_keeps_its_members_and_is_locked_first(desired, actual):
    if desired.phase(NOW) == Phase.READ_ONLY:
        steps = plan(desired, actual, NOW, IDS)
        wanted = {IDS.user_id(ORG, p) for p in desired.members}
        assert not [s for s in steps if s.kind == StepKind.REMOVE_MEMBER and s.user_id in wanted]
        if actual is None or not actual.read_only:
            kinds = [s.kind for s in steps if s.kind not in (StepKind.CREATE_CHAT, StepKind.JOIN_BRIDGE)]
            assert kinds[0] == StepKind.SET_READ_ONLY


@given(desired_rows(), actual_chats)
def test_a_bridge_not_in_its_chat_rejoins_before_any_other_step(desired, actual):
    steps = plan(desired, actual, NOW, IDS)
    if actual is not None and not actual.bridge_joined and desired.phase(NOW) != Phase.DELETED and steps:
        assert steps[0].kind == StepKind.JOIN_BRIDGE
    assert [s.kind for s in steps].count(StepKind.JOIN_BRIDGE) <= 1


@given(desired_rows(), actual_chats)
def test_rights_changed_by_hand_are_restored_for_the_phase_once(desired, actual):
    steps = plan(desired, actual, NOW, IDS)
    after = apply(actual, steps)
    if desired.phase(NOW) in MEMBER_PHASES:
        assert after is not None and after.levels_as_set
        rights = [s for s in steps if s.kind in (StepKind.RESTORE_RIGHTS, StepKind.SET_READ_ONLY)]
        assert len(rights) <= 1 and all(s.value == (desired.phase(NOW) == Phase.READ_ONLY) for s in rights)


def test_a_hand_added_member_of_an_active_chat_is_removed_and_a_missing_one_added():
    desired = DesiredChat(ORG, "1", 1, False, False, NOW + timedelta(days=1), NOW + timedelta(days=31), None,
                          [PERSONS[0]], [PERSONS[0]])  # fmt: skip
    actual = ActualChat("!r:fake", frozenset({"@eve:fake"}), frozenset(), False)
    steps = plan(desired, actual, NOW, IDS)
    assert [(s.kind, s.user_id) for s in steps] == [
        (StepKind.REMOVE_MEMBER, "@eve:fake"),
        (StepKind.ADD_MEMBER, IDS.user_id(ORG, PERSONS[0])),
        (StepKind.SET_MODERATOR, IDS.user_id(ORG, PERSONS[0])),
    ]
