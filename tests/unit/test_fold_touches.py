"""A person's status fact writes again only the chats whose rows it changes: every chat the fold leaves out of its
changes has the row a fresh fold of the same facts gives."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from chatbridge.domain.lifecycle import Policy
from chatbridge.projections.desired_state import (
    Changes,
    ChatKey,
    DesiredChat,
    DesiredStateFold,
    FoldedChat,
    PersonKey,
    PersonRecord,
    Quiet,
    Switch,
    chat_aggregate_id,
    organisation_aggregate_id,
    person_aggregate_id,
)

ORG = "o"
PERSONS = ("a", "b", "c", "d", "e")
POLICY = Policy(full_use=timedelta(hours=6), view=timedelta(days=1))
T0 = datetime(2026, 11, 1, tzinfo=UTC)

Step = Callable[[DesiredStateFold, int], None]


def _fold(rows: Rows | None = None) -> DesiredStateFold:
    return DesiredStateFold(
        policy=POLICY, pseudonym=lambda org, person: f"ps-{person}", open_name=lambda token: token, rows=rows
    )


class Rows:
    """The persistent view's rows, in memory: what a fold that holds only part of the projection loads."""

    def __init__(self) -> None:
        self.chats: dict[ChatKey, tuple[FoldedChat, Quiet]] = {}
        self.desired: dict[ChatKey, DesiredChat] = {}  # the row's columns, as written
        self.persons: dict[PersonKey, PersonRecord] = {}
        self.organisations: dict[str, list[Switch]] = {}
        self.index: set[tuple[str, str, str]] = set()

    def write(self, fold: DesiredStateFold) -> Changes:
        fold.load_named()
        changes = fold.take_dirty()
        for key in changes.chats:
            self.chats[key] = FoldedChat(fold.chats[key].aggregate_id, list(fold.chats[key].facts)), fold.quiet(key)
            self.desired[key] = fold.desired(key)
        for key, counted in changes.members.items():  # the store's UPDATE of two columns
            members, moderators = fold.membership(key[0], counted)
            self.desired[key] = replace(self.desired[key], members=members, moderators=moderators)
        for person in changes.persons:
            record = fold.persons[person]
            self.persons[person] = PersonRecord(list(record.statuses), list(record.erasures), record.name)
        for org in changes.organisations:
            self.organisations[org] = list(fold.organisations[org])
        self.index |= changes.index_entries
        return changes

    def _chat(self, key: ChatKey) -> tuple[ChatKey, FoldedChat]:
        record = self.chats[key][0]
        return key, FoldedChat(record.aggregate_id, list(record.facts))

    def _person(self, key: PersonKey) -> tuple[PersonKey, PersonRecord]:
        record = self.persons[key]
        return key, PersonRecord(list(record.statuses), list(record.erasures), record.name)

    def chats_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[ChatKey, FoldedChat]]:
        wanted = set(ids)
        return iter([self._chat(key) for key, (record, _) in self.chats.items() if record.aggregate_id in wanted])

    def chats_of_organisation(self, org: str) -> Iterator[tuple[ChatKey, FoldedChat]]:
        return iter([self._chat(key) for key in self.chats if key[0] == org])

    def chats_by_keys(self, keys: Iterable[ChatKey]) -> Iterator[tuple[ChatKey, FoldedChat]]:
        return iter([self._chat(key) for key in set(keys) if key in self.chats])

    def persons_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[PersonKey, PersonRecord]]:
        wanted = set(ids)
        return iter([self._person(key) for key in self.persons if person_aggregate_id(*key) in wanted])

    def persons_by_keys(self, keys: Iterable[PersonKey]) -> Iterator[tuple[PersonKey, PersonRecord]]:
        return iter([self._person(key) for key in set(keys) if key in self.persons])

    def persons_by_pseudonyms(self, pseudonyms: Iterable[str]) -> Iterator[tuple[PersonKey, PersonRecord]]:
        wanted = set(pseudonyms)
        return iter([self._person(key) for key in self.persons if key[1] in wanted])

    def organisations_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[str, UUID, list[Switch]]]:
        wanted = set(ids)
        return iter([(org, organisation_aggregate_id(org), list(switches))
                     for org, switches in self.organisations.items() if organisation_aggregate_id(org) in wanted])  # fmt: skip

    def indexes_of(self, persons: Iterable[PersonKey]) -> dict[PersonKey, dict[str, Quiet | None]]:
        wanted = set(persons)
        found: dict[PersonKey, dict[str, Quiet | None]] = {}
        for org, person, event_id in self.index:
            if (org, person) in wanted:
                found.setdefault((org, person), {})[event_id] = self.chats[(org, event_id)][1]
        return found


def _steps(rng: random.Random, count: int) -> list[Step]:
    """Facts of three chats and their persons, at moments around the chats' deadlines and in any order."""

    def moment() -> datetime:
        return T0 + timedelta(hours=rng.randint(0, 96))

    steps: list[Step] = [
        lambda f, seq: f.organisation_registered(organisation_aggregate_id(ORG), seq, ORG),
        lambda f, seq: f.organisation_switched_on(organisation_aggregate_id(ORG), seq, T0),
    ]
    for person in PERSONS:
        steps.append(lambda f, seq, p=person: f.person_registered(person_aggregate_id(ORG, f"ps-{p}"), seq, ORG,
                                                                  f"ps-{p}", p))  # fmt: skip
    events = ("e0", "e1", "e2")
    for event_id in events:
        staff = {p: "assigned" for p in rng.sample(PERSONS, 3)}
        end, responsible = moment(), rng.choice(PERSONS)
        steps.append(lambda f, seq, e=event_id, s=staff, end=end, r=responsible: f.chat_registered(
            chat_aggregate_id(ORG, e), seq, ORG, e, T0, end, r, s))  # fmt: skip
    for _ in range(count):
        at, event_id, person = moment(), rng.choice(events), rng.choice(PERSONS)
        chat = chat_aggregate_id(ORG, event_id)
        kind = rng.random()
        step: Step
        if kind < 0.5:
            status = rng.choice(["active", "restricted", "blocked"])
            step = lambda f, seq, p=person, at=at, s=status: f.person_status_changed(  # noqa: E731
                person_aggregate_id(ORG, f"ps-{p}"), seq, at, s)  # fmt: skip
        elif kind < 0.75:
            status = rng.choice(["assigned", "registered", "removed"])
            step = lambda f, seq, c=chat, p=person, at=at, s=status: f.staffing_changed(c, seq, at, p, s)  # noqa: E731
        elif kind < 0.85:
            end, enabled = moment(), rng.random() < 0.8
            step = lambda f, seq, c=chat, p=person, at=at, end=end, on=enabled: f.event_recorded(  # noqa: E731
                c, seq, at, end, on, p, None)  # fmt: skip
        elif kind < 0.9:
            step = lambda f, seq, c=chat, at=at: f.cancelled(c, seq, at)  # noqa: E731
        elif kind < 0.95:
            step = lambda f, seq, c=chat, at=at: f.deleted(c, seq, at)  # noqa: E731
        else:
            on = rng.random() < 0.5
            step = lambda f, seq, at=at, on=on: f.organisation_switched(  # noqa: E731
                organisation_aggregate_id(ORG), seq, at, on)  # fmt: skip
        steps.append(step)
    return steps


def _rows(steps: list[Step]) -> dict[Any, DesiredChat]:
    fold = _fold()
    for seq, step in enumerate(steps, start=1):
        step(fold, seq)
    return {key: fold.desired(key) for key in fold.chats}


def test_a_chat_left_out_of_the_changes_keeps_the_row_a_fresh_fold_gives() -> None:
    skipped = 0
    for seed in range(150):
        steps = _steps(random.Random(seed), 30)
        fold, written = _fold(), {}
        for seq, step in enumerate(steps, start=1):
            step(fold, seq)
            changes = fold.take_dirty()
            for key, counted in changes.members.items():  # only the members and moderators are written again
                members, moderators = fold.membership(key[0], counted)
                written[key] = replace(written[key], members=members, moderators=moderators)
            changed = changes.chats
            truth = _rows(steps[:seq])
            for key, row in truth.items():
                if key in changed:
                    written[key] = fold.desired(key)
                else:
                    skipped += 1
                    assert written[key] == row, (seed, seq, key)
                assert fold.desired(key) == row, (seed, seq, key)
    assert skipped  # the streams did leave chats out


def test_a_fold_that_loads_its_rows_writes_what_a_fresh_fold_gives() -> None:
    """The persistent path: rows written after each fact, and everything loaded forgotten now and then, so status
    facts meet chats known only by what their rows say."""
    for seed in range(150):
        rng = random.Random(seed)
        steps = _steps(rng, 30)
        rows = Rows()
        fold = _fold(rows)
        for seq, step in enumerate(steps, start=1):
            step(fold, seq)
            rows.write(fold)
            if rng.random() < 0.5:
                fold.forget_loaded()
            assert rows.desired == _rows(steps[:seq]), (seed, seq)


def test_a_status_that_does_not_cross_the_membership_rule_writes_no_chat() -> None:
    fold = _fold()
    steps = _steps(random.Random(0), 0)
    for seq, step in enumerate(steps, start=1):
        step(fold, seq)
    fold.take_dirty()
    person = person_aggregate_id(ORG, "ps-a")
    fold.person_status_changed(person, 100, T0 + timedelta(minutes=1), "active")
    changes = fold.take_dirty()
    assert not changes.chats and not changes.members  # no status before: "active" excludes no one
    fold.person_status_changed(person, 101, T0 + timedelta(minutes=2), "blocked")
    counted = {key for key in fold.chats if "ps-a" in {*fold.walk(key).life.staff, fold.walk(key).life.responsible}}  # type: ignore[union-attr]
    changes = fold.take_dirty()
    assert changes.chats | changes.members.keys() <= counted


def _chats_written_then_forgotten() -> tuple[Rows, DesiredStateFold, list[Step], set[ChatKey]]:
    """Three chats written and everything loaded forgotten, and the chats that count person "a"."""
    rows = Rows()
    fold = _fold(rows)
    steps = _steps(random.Random(3), 0)
    for seq, step in enumerate(steps, start=1):
        step(fold, seq)
    rows.write(fold)
    fold.forget_loaded()
    counting_a = {key for key, (_, (_, counted)) in rows.chats.items() if "ps-a" in counted.persons}
    assert counting_a and counting_a != rows.chats.keys()  # the seed names "a" in some chats, not all
    return rows, fold, steps, counting_a


def _a_blocked_before_the_deadlines(fold: DesiredStateFold, steps: list[Step]) -> None:
    steps.append(lambda f, seq: f.person_status_changed(person_aggregate_id(ORG, "ps-a"), seq,
                                                        T0 + timedelta(minutes=1), "blocked"))  # fmt: skip
    steps[-1](fold, len(steps))


def test_a_member_blocked_before_the_deadlines_rewrites_only_the_members_of_the_chats_counting_them() -> None:
    """Their chats are neither loaded nor walked: whom each row counted is enough, and the row ends as a fresh fold
    of the same facts gives it."""
    rows, fold, steps, counting_a = _chats_written_then_forgotten()
    _a_blocked_before_the_deadlines(fold, steps)
    changes = rows.write(fold)
    assert not changes.chats and changes.members.keys() == counting_a
    assert not fold.chats  # no chat was loaded
    assert rows.desired == _rows(steps)
    assert all("a" not in row.members for key, row in rows.desired.items() if key in counting_a)


def test_a_member_blocked_in_a_chat_loaded_but_not_walked_rewrites_only_its_members() -> None:
    """A page may load a chat without changing it (the reconciler's events about it are not folded): whom its
    walk counts is then known only after a walk, before the write — and the decision is the same."""
    rows, fold, steps, counting_a = _chats_written_then_forgotten()
    fold.prefetch([chat_aggregate_id(*key) for key in counting_a])
    assert counting_a <= fold.chats.keys()
    _a_blocked_before_the_deadlines(fold, steps)
    changes = rows.write(fold)
    assert not changes.chats and changes.members.keys() == counting_a
    assert rows.desired == _rows(steps)
