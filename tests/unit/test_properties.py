"""Properties over random message streams (hypothesis), in memory."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from chatbridge.domain.lifecycle import Policy
from chatbridge.services import simulate_lines
from tests.reference_model import reference_document
from tests.strategies import NOWS, streams

POLICIES = st.sampled_from([Policy(), Policy(full_use=timedelta(hours=6), view=timedelta(days=3))])


def simulate(lines: list[bytes], now: datetime, policy: Policy | None = None):
    return simulate_lines(list(enumerate(lines, start=1)), now, policy or Policy())


@settings(max_examples=300, deadline=None)
@given(streams(), NOWS, POLICIES)
def test_simulate_agrees_with_the_naive_reading_of_the_design(lines, now, policy):
    assert simulate(lines, now, policy) == reference_document(lines, now, policy.full_use, policy.view)


@settings(max_examples=150, deadline=None)
@given(streams(backwards=True), NOWS)
def test_simulate_agrees_with_the_naive_reading_even_when_message_times_go_backwards(lines, now):
    assert simulate(lines, now) == reference_document(lines, now, Policy().full_use, Policy().view)


@settings(max_examples=150, deadline=None)
@given(streams(backwards=True), NOWS)
def test_members_only_in_active_or_read_only_and_deadlines_in_order(lines, now):
    for chat in simulate(lines, now)["chats"]:
        assert chat["read_only_at"] <= chat["delete_at"]
        assert set(chat["moderators"]) <= set(chat["members"])
        assert chat["generation"] >= 1
        if chat["phase"] not in ("active", "read_only"):
            assert chat["members"] == [] and chat["moderators"] == []


@settings(max_examples=150, deadline=None)
@given(streams(garbage=False), NOWS)
def test_every_message_sent_twice_gives_the_same_document_as_once(lines, now):
    once = simulate(lines, now)
    twice = simulate([line for line in lines for _ in (0, 1)], now)
    assert twice["chats"] == once["chats"]
    assert twice["ignored"] == once["ignored"]
    assert twice["duplicates"] == once["duplicates"] + len(lines)
