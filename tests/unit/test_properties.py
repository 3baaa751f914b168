"""Properties over random message streams (hypothesis), in memory: `simulate` against an independent reading of
DESIGN.md, and the same document for every order in which Kafka could deliver the same messages."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatbridge.cli.usecases import simulate_lines
from chatbridge.domain.lifecycle import Policy
from tests.reference_model import reference_document
from tests.strategies import NOWS, streams, streams_and_interleavings
from tests.support import ALICE, BOB, CAROL, CET, Stream, at, z


def in_2027(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2027, month, day, hour, tzinfo=CET)


POLICIES = st.sampled_from([Policy(), Policy(full_use=timedelta(hours=6), view=timedelta(days=3))])


def simulate(lines: list[bytes], now: datetime, policy: Policy | None = None) -> dict[str, Any]:
    return simulate_lines(list(enumerate(lines, start=1)), now, policy or Policy())


def reference(lines: list[bytes], now: datetime, policy: Policy | None = None) -> dict[str, Any]:
    policy = policy or Policy()
    return reference_document(lines, now, policy.full_use, policy.view)


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """The document without the rejections' reasons: the model words them its own way."""
    return {**document, "rejected": [r["line"] for r in document["rejected"]]}


def order_free(document: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the delivery order (rejected lines move with their lines)."""
    return {"chats": document["chats"], "ignored": document["ignored"], "duplicates": document["duplicates"]}


# -- stories the properties must hold on, whatever hypothesis draws -----------------------------------------------


def named_again_after_deletion() -> Stream:
    """ALICE (assigned) and BOB (responsible) are deleted, then named again: new persons, members again."""
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=BOB, staff={ALICE: "assigned"})
    stream.person(ALICE, "blocked", at(21, month=11))
    stream.person(ALICE, "deleted", at(22, month=11))
    stream.person(BOB, "deleted", at(22, month=11))
    stream.staffing("4711", ALICE, "assigned", at(23, month=11))
    stream.event("4711", at(24, month=11), start=at(1, 16), end=at(1, 19), responsible=BOB)
    return stream


def org_off_before_enabling_arriving_late() -> Stream:
    """The organisation's feature went off before the chat was enabled; that message arrives after the chat's
    later ones. The chat never saw the feature on: awaiting_organisation, no members."""
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE, staff={BOB: "assigned"})
    stream.staffing("4711", CAROL, "assigned", at(21, month=11))
    stream.org_off(at(10, month=11))
    return stream


def moved_after_deletion() -> Stream:
    """A generation deleted by settling (2 Jan 19:00) whose event is then moved into February: it stays deleted
    with the delete_at it had, and the flag switched off afterwards changes nothing of it either."""
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE)
    stream.staffing("4711", BOB, "assigned", in_2027(1, 5))  # touches the chat past its delete_at: settled
    stream.event("4711", in_2027(1, 6), start=in_2027(2, 10, 16), end=in_2027(2, 10, 19), responsible=ALICE)
    stream.event("4711", in_2027(1, 7), start=in_2027(2, 10, 16), end=in_2027(2, 10, 19), responsible=ALICE,
                 chat=False)  # fmt: skip
    return stream


def person_message_past_the_deadline() -> Stream:
    """ALICE, responsible, is blocked after the chat's delete_at (2 Jan 19:00): the person message touches the chats
    that name her, so the chat is settled — deleted for good, also for a `now` before its delete_at."""
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE)
    stream.person(ALICE, "blocked", in_2027(1, 5))
    return stream


def erased_message_past_the_deadline() -> Stream:
    """BOB's staffing arrives after the chat's delete_at and settles it; BOB's deletion afterwards erases his
    staffing, not the fact that a message touched the chat then."""
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE)
    stream.staffing("4711", BOB, "assigned", in_2027(1, 5))
    stream.person(BOB, "deleted", in_2027(1, 6))
    return stream


def moved(lines: list[bytes], *order: int) -> list[bytes]:
    """The lines in another order (1-based line numbers)."""
    return [lines[n - 1] for n in order]


NAMED_AGAIN = named_again_after_deletion().lines
ORG_OFF_LATE = org_off_before_enabling_arriving_late().lines
MOVED_AFTER_DELETION = moved_after_deletion().lines
PERSON_TOUCH = person_message_past_the_deadline().lines
ERASED_TOUCH = erased_message_past_the_deadline().lines


def test_the_reference_model_reads_the_stories_as_the_design_says():
    """The oracle itself, on the stories used as examples below."""
    chat = reference(NAMED_AGAIN, at(1, 12))["chats"][0]
    assert (chat["phase"], chat["members"], chat["moderators"]) == ("active", [ALICE, BOB], [BOB])
    chat = reference(ORG_OFF_LATE, at(1, 12))["chats"][0]
    assert (chat["phase"], chat["members"]) == ("awaiting_organisation", [])
    for now in (in_2027(1, 6), in_2027(3, 1)):
        chat = reference(MOVED_AFTER_DELETION, now)["chats"][0]
        assert (chat["phase"], chat["generation"]) == ("deleted", 1)
        assert (chat["read_only_at"], chat["delete_at"]) == (z(at(3, 19)), z(in_2027(1, 2, 19)))
    for story in (PERSON_TOUCH, ERASED_TOUCH):
        assert reference(story, at(10, 12))["chats"][0]["phase"] == "deleted"  # settled: whatever `now`
        assert reference(story[:2], at(10, 12))["chats"][0]["phase"] == "read_only"


# -- (a) simulate is the design -----------------------------------------------------------------------------------


@st.composite
def documents_at(draw: st.DrawFn) -> tuple[list[bytes], datetime, Policy]:
    """A stream, a policy, and a `now` that is often one of the stream's own deadlines (or a second before)."""
    lines, policy = draw(streams()), draw(POLICIES)
    now = draw(NOWS)
    deadlines = sorted({c[k] for c in reference(lines, now, policy)["chats"] for k in ("read_only_at", "delete_at")})
    if deadlines and draw(st.booleans()):
        deadline = datetime.fromisoformat(draw(st.sampled_from(deadlines)))
        now = deadline - draw(st.sampled_from([timedelta(0), timedelta(seconds=1)]))
    return lines, now, policy


@settings(max_examples=300, deadline=None)
@given(documents_at())
@example((NAMED_AGAIN, at(1, 12), Policy()))
@example((ORG_OFF_LATE, at(1, 12), Policy()))
@example((MOVED_AFTER_DELETION, in_2027(1, 6), Policy()))
@example((MOVED_AFTER_DELETION, in_2027(3, 1), Policy()))
@example((PERSON_TOUCH, at(10, 12), Policy()))
@example((ERASED_TOUCH, at(10, 12), Policy()))
def test_simulate_agrees_with_the_naive_reading_of_the_design(case):
    lines, now, policy = case
    assert comparable(simulate(lines, now, policy)) == comparable(reference(lines, now, policy))


# -- (b) the same document for every delivery order ---------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(streams_and_interleavings(), NOWS)
@example((NAMED_AGAIN, moved(NAMED_AGAIN, 3, 4, 5, 1, 2, 6, 7)), at(1, 12))  # the staffing arrives after the deletion
@example((ORG_OFF_LATE, moved(ORG_OFF_LATE, 1, 4, 2, 3)), at(1, 12))  # against the same in time order
@example((MOVED_AFTER_DELETION, moved(MOVED_AFTER_DELETION, 2, 3, 4, 5, 1)), in_2027(3, 1))
def test_any_interleaving_of_keys_gives_the_same_document(stream_and_order, now):
    lines, interleaved = stream_and_order
    assert order_free(simulate(interleaved, now)) == order_free(simulate(lines, now))


# -- invariants --------------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(streams(), NOWS)
def test_members_only_in_active_or_read_only_and_deadlines_in_order(lines, now):
    for chat in simulate(lines, now)["chats"]:
        assert chat["read_only_at"] <= chat["delete_at"]
        assert set(chat["moderators"]) <= set(chat["members"])
        assert chat["generation"] >= 1
        if chat["phase"] not in ("active", "read_only"):
            assert chat["members"] == [] and chat["moderators"] == []


@settings(max_examples=60, deadline=None)
@given(streams(garbage=False), NOWS)
def test_every_message_sent_twice_gives_the_same_document_as_once(lines, now):
    once = simulate(lines, now)
    twice = simulate([line for line in lines for _ in (0, 1)], now)
    assert twice["chats"] == once["chats"]
    assert twice["ignored"] == once["ignored"]
    assert twice["duplicates"] == once["duplicates"] + len(lines)
