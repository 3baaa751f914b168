"""A chat's name, topic and place in its space: rendered from event data alone, safe to show, in the organisation's
local time, and planned like any other step — so an unchanged chat gets nothing written."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatbridge.backends.port import ActualChat, ChatLabels
from chatbridge.backends.user_ids import TemplateUserIds
from chatbridge.config_file import ConfigurationError
from chatbridge.domain.lifecycle import MEMBER_PHASES, Phase
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.reconciler.naming import (
    NAME_LENGTH,
    RoomNaming,
    chat_name,
    chat_topic,
    configured_naming,
    cut,
    safe_text,
    space_order,
)
from chatbridge.reconciler.plan import Step, StepKind, apply, plan, target
from chatbridge.reconciler.service import DryRunPlan, render_plan
from tests.support import ALICE, BOB, ORG, at
from tests.unit.test_reconcile_loop import World

BERLIN = ZoneInfo("Europe/Berlin")
IDS = TemplateUserIds(server_name="fake")
NOW = datetime(2026, 12, 10, tzinfo=UTC)
NAMING = RoomNaming()


def row(title: str | None = "Sanitätsdienst Stadtfest", start: datetime | None = None, read_only_in=3, **fields):
    read_only_at = NOW + timedelta(days=read_only_in)
    values = dict(org=ORG, event_id="4711", generation=1, deleted=False, awaiting_organisation=False,
                  read_only_at=read_only_at, delete_at=read_only_at + timedelta(days=30), next_due=None,
                  members=[ALICE], moderators=[ALICE], title=title,
                  start=start or datetime(2026, 12, 12, 9, tzinfo=UTC))  # fmt: skip
    values.update(fields)
    return DesiredChat(**values)


# -- the texts ---------------------------------------------------------------------------------------------------


def test_the_name_is_the_title_and_the_german_date_of_the_start():
    assert chat_name("Sanitätsdienst Stadtfest", datetime(2026, 12, 12, 9, tzinfo=UTC), BERLIN) == (
        "Sanitätsdienst Stadtfest · Sa 12.12.2026"
    )


def test_the_date_is_the_local_one():
    late = datetime(2026, 12, 12, 23, 30, tzinfo=UTC)  # 00:30 on Sunday in Berlin
    assert chat_name("Nachtdienst", late, BERLIN).endswith("· So 13.12.2026")
    assert chat_name("Nachtdienst", late, ZoneInfo("America/New_York")).endswith("· Sa 12.12.2026")


def test_the_topic_gives_the_deadlines_in_local_time_and_german():
    read_only_at = datetime(2026, 12, 7, 17, tzinfo=UTC)
    delete_at = datetime(2027, 6, 6, 17, tzinfo=UTC)  # summer time: UTC+2
    assert chat_topic(Phase.ACTIVE, read_only_at, delete_at, BERLIN) == (
        "Nur lesbar ab Mo 07.12.2026 18:00 Uhr, gelöscht am So 06.06.2027 19:00 Uhr."
    )
    assert chat_topic(Phase.READ_ONLY, read_only_at, delete_at, BERLIN) == (
        "Nur noch lesbar. Wird am So 06.06.2027 19:00 Uhr gelöscht."
    )
    assert chat_topic(Phase.DELETED, read_only_at, delete_at, BERLIN) is None
    assert chat_topic(Phase.AWAITING_ORGANISATION, read_only_at, delete_at, BERLIN) is None


def test_a_300_character_title_is_cut_and_the_date_stays_whole():
    name = chat_name("Sanitätsdienst " * 20, datetime(2026, 12, 12, 9, tzinfo=UTC), BERLIN)
    assert len(name) <= NAME_LENGTH
    assert name.endswith("… · Sa 12.12.2026") and name.startswith("Sanitätsdienst Sanitätsdienst")


def test_line_breaks_and_control_characters_are_made_safe():
    title = "Stadtfest\nSchicht 2\r\n\tHalle\x00\x07 B\x1b[2J \u2028Ende\u2029 \u202eorp\u202c \u200bx\ufeff"
    name = chat_name(title, datetime(2026, 12, 12, 9, tzinfo=UTC), BERLIN)
    assert name == "Stadtfest Schicht 2 Halle B [2J Ende orp x · Sa 12.12.2026"


def test_an_empty_title_still_names_the_chat():
    assert chat_name(" \n\t\u200b", datetime(2026, 12, 12, 9, tzinfo=UTC), BERLIN) == "Veranstaltung · Sa 12.12.2026"


@pytest.mark.parametrize(
    "text",
    [
        "e\u0301" * 40,  # decomposed accents: normalised, never split from their letter
        "🇩🇪" * 40,  # flags: pairs of regional indicators
        "👨\u200d👩\u200d👧\u200d👦" * 15,  # a family: one emoji joined from four
        "👍🏽" * 40,  # an emoji and its skin tone
        "a" + "\u0308" * 100,  # a letter with more marks than the room there is
    ],
)
def test_a_cut_never_splits_what_a_reader_sees_as_one_character(text):
    result = cut(safe_text(text), 20)
    assert len(result) <= 20 and result.endswith("…")
    kept = result[:-1]
    assert safe_text(text).startswith(kept)
    if kept:
        assert kept[-1] != "\u200d" and not unicodedata.combining(kept[-1])
        regional = sum(1 for c in kept if "\U0001f1e6" <= c <= "\U0001f1ff")
        assert regional % 2 == 0


@given(st.text(max_size=400))
def test_any_title_gives_a_short_one_line_name_ending_in_the_date(title):
    name = chat_name(title, datetime(2026, 12, 12, 9, tzinfo=UTC), BERLIN)
    assert len(name) <= NAME_LENGTH and name.endswith(" · Sa 12.12.2026")
    assert name == name.strip() and "  " not in name
    for char in name:
        assert unicodedata.category(char) not in ("Cc", "Cs", "Zl", "Zp")
        assert unicodedata.category(char) != "Cf" or char == "\u200d" or char == "\u200c" or ord(char) >= 0xE0020
    name.encode("utf-8")  # no lone surrogates: the homeserver gets valid UTF-8


def test_the_space_orders_chats_by_start_whatever_the_offset():
    earlier = datetime(2026, 12, 12, 9, tzinfo=ZoneInfo("Europe/Berlin"))
    later = datetime(2026, 12, 12, 9, 30, tzinfo=UTC)
    assert space_order(earlier) == "20261212T080000Z" < space_order(later)
    assert all(0x20 <= ord(c) <= 0x7E for c in space_order(later)) and len(space_order(later)) <= 50


def test_the_zone_comes_from_the_settings(monkeypatch):
    assert configured_naming().zone == BERLIN
    monkeypatch.setenv("CHATBRIDGE_TIMEZONE", "America/New_York")
    assert configured_naming().zone == ZoneInfo("America/New_York")
    monkeypatch.setenv("CHATBRIDGE_TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(ConfigurationError, match="CHATBRIDGE_TIMEZONE"):
        configured_naming()


# -- the plan ----------------------------------------------------------------------------------------------------

titles = st.one_of(st.none(), st.sampled_from(["Sanitätsdienst Stadtfest", "Dienstabend", "x" * 300, "a\nb"]))
starts = st.sampled_from([datetime(2026, 12, 12, 9, tzinfo=UTC), datetime(2026, 12, 13, 23, 30, tzinfo=UTC)])


@st.composite
def desired_rows(draw):
    return row(
        title=draw(titles),
        start=draw(starts),
        read_only_in=draw(st.integers(-40, 5)),
        deleted=draw(st.booleans()) and draw(st.booleans()),
        awaiting_organisation=draw(st.booleans()) and draw(st.booleans()),
    )


actual_chats = st.one_of(
    st.none(),
    st.builds(
        ActualChat,
        chat_id=st.just("!room:fake"),
        members=st.frozensets(st.sampled_from([IDS.user_id(ORG, p) for p in (ALICE, BOB)] + ["@eve:fake"])),
        read_only=st.booleans(),
        name=st.one_of(st.none(), st.sampled_from(["", "alt", "Dienstabend · Sa 12.12.2026"])),
        topic=st.one_of(st.none(), st.just("Nur noch lesbar.")),
        order=st.one_of(st.none(), st.just("20261212T090000Z")),
    ),
)


@given(desired_rows(), actual_chats)
def test_applying_the_plan_labels_the_chat_and_a_second_plan_is_empty(desired, actual):
    goal = target(desired, NOW, IDS, NAMING)
    result = apply(actual, plan(desired, actual, NOW, IDS, NAMING))
    if goal.phase in MEMBER_PHASES and goal.labels is not None:
        assert result is not None
        assert (result.name, result.topic, result.order) == (goal.labels.name, goal.labels.topic, goal.labels.order)
    assert plan(desired, result, NOW, IDS, NAMING) == []


@given(desired_rows(), actual_chats)
def test_labels_are_planned_only_for_a_chat_that_is_wanted(desired, actual):
    steps = plan(desired, actual, NOW, IDS, NAMING)
    kinds = {s.kind for s in steps}
    if desired.phase(NOW) not in MEMBER_PHASES or desired.title is None:
        assert not kinds & {StepKind.SET_NAME, StepKind.SET_TOPIC, StepKind.SET_ORDER}
    if desired.title is None:  # a row that does not know its event leaves what the chat shows as it is
        assert all(s.labels is None for s in steps)


def labelled(desired: DesiredChat, now=NOW, **changes) -> ActualChat:
    """The chat as the backend has it once `desired` was brought about at `now`."""
    actual = apply(None, plan(desired, None, now, IDS, NAMING))
    assert actual is not None
    return ActualChat(**{**actual.__dict__, **changes})


def test_a_new_chat_is_created_with_its_name_topic_and_place():
    steps = plan(row(), None, NOW, IDS, NAMING)
    assert steps[0] == Step(StepKind.CREATE_CHAT, labels=ChatLabels(
        "Sanitätsdienst Stadtfest · Sa 12.12.2026",
        "Nur lesbar ab So 13.12.2026 01:00 Uhr, gelöscht am Di 12.01.2027 01:00 Uhr.",
        "20261212T090000Z",
    ))  # fmt: skip
    assert [s.kind for s in steps[1:]] == [StepKind.ADD_MEMBER, StepKind.SET_MODERATOR]


def test_an_unchanged_chat_gets_no_steps():
    assert plan(row(), labelled(row()), NOW, IDS, NAMING) == []


def test_a_new_title_renames_the_chat_and_nothing_else():
    steps = plan(row(title="Sanitätsdienst Weihnachtsmarkt"), labelled(row()), NOW, IDS, NAMING)
    assert steps == [Step(StepKind.SET_NAME, text="Sanitätsdienst Weihnachtsmarkt · Sa 12.12.2026")]


def test_a_moved_event_gets_its_new_date_deadlines_and_place():
    moved = row(start=datetime(2026, 12, 19, 9, tzinfo=UTC), read_only_in=10)
    steps = plan(moved, labelled(row()), NOW, IDS, NAMING)
    assert [(s.kind, s.text) for s in steps] == [
        (StepKind.SET_NAME, "Sanitätsdienst Stadtfest · Sa 19.12.2026"),
        (StepKind.SET_TOPIC, "Nur lesbar ab So 20.12.2026 01:00 Uhr, gelöscht am Di 19.01.2027 01:00 Uhr."),
        (StepKind.SET_ORDER, "20261219T090000Z"),
    ]


def test_turning_read_only_locks_first_then_says_so_in_the_topic():
    desired = row()
    later = desired.read_only_at
    steps = plan(desired, labelled(desired), later, IDS, NAMING)
    assert [(s.kind, s.value, s.text) for s in steps] == [
        (StepKind.SET_READ_ONLY, True, None),
        (StepKind.SET_TOPIC, None, "Nur noch lesbar. Wird am Di 12.01.2027 01:00 Uhr gelöscht."),
    ]


def test_the_dry_run_shows_name_and_topic_changes():
    steps = plan(row(title="Neu", read_only_in=4), labelled(row()), NOW, IDS, NAMING)
    text = render_plan([DryRunPlan(ORG, "4711", 1, Phase.ACTIVE, steps)])
    assert '  ~ name: "Neu · Sa 12.12.2026"' in text
    assert '  ~ topic: "Nur lesbar ab Mo 14.12.2026 01:00 Uhr, gelöscht am Mi 13.01.2027 01:00 Uhr."' in text
    assert steps[0].as_json() == {"kind": "set_name", "text": "Neu · Sa 12.12.2026"}
    created = plan(row(), None, NOW, IDS, NAMING)[0]
    assert created.describe() == '+ create chat "Sanitätsdienst Stadtfest · Sa 12.12.2026"'
    assert created.as_json()["name"] == "Sanitätsdienst Stadtfest · Sa 12.12.2026"


# -- the loop, on the fake backend -------------------------------------------------------------------------------

START, END = at(5, 9), at(5, 17)


def upsert(world: World, when: datetime, title: str, start: datetime = START, end: datetime = END) -> None:
    world.stream.send("event.upserted", when, {"event_id": "4711", "title": title, "start": start.isoformat(),
                      "end": end.isoformat(), "responsible": ALICE, "chat_enabled": True})  # fmt: skip


@pytest.fixture
def world():
    w = World()
    w.stream.org_on(at(1))
    upsert(w, at(1, 10), "Sanitätsdienst Stadtfest")
    yield w
    w.reconciler.close()


def test_the_chat_follows_its_event_and_a_resync_writes_nothing(world):
    world.run(at(2))
    chat = world.chat()
    assert (chat.name, chat.order) == ("Sanitätsdienst Stadtfest · Sa 05.12.2026", "20261205T080000Z")
    assert chat.topic == "Nur lesbar ab Mo 07.12.2026 17:00 Uhr, gelöscht am Mi 06.01.2027 17:00 Uhr."
    upsert(world, at(3), "Sanitätsdienst Nikolausmarkt", start=at(12, 9), end=at(12, 17))
    world.run(at(3, 1))
    assert (chat.name, chat.order) == ("Sanitätsdienst Nikolausmarkt · Sa 12.12.2026", "20261212T080000Z")
    assert chat.topic == "Nur lesbar ab Mo 14.12.2026 17:00 Uhr, gelöscht am Mi 13.01.2027 17:00 Uhr."
    writes = len(world.writes())
    world.run(at(3, 1) + timedelta(hours=10))  # the periodic resync reads the chat again
    assert len(world.writes()) == writes and world.backend.calls[-1][0] == "get_chat"


def test_an_older_record_arriving_late_does_not_rename_the_chat(world):
    upsert(world, at(3), "Neuer Titel")
    upsert(world, at(2), "Alter Titel")  # dated before the record above, stored after it
    world.run(at(3, 1))
    assert world.chat().name == "Neuer Titel · Sa 05.12.2026"


def test_the_topic_changes_when_the_chat_turns_read_only(world):
    world.run(at(2))
    world.run(END + timedelta(days=2))
    assert world.chat().read_only and world.chat().topic == "Nur noch lesbar. Wird am Mi 06.01.2027 17:00 Uhr gelöscht."
