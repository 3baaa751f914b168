"""The desired-state projection: facts from the event log → each chat's generations, deadlines and members.

Order is event time (DESIGN.md, lifecycle policy). Kafka keeps order only within a partition, and one
organisation's messages spread over many (one key per event, organisation and person), so the notification log's
order says little. The fold therefore keeps the facts themselves, each stamped with (`occurred_at`, notification
id) — the id breaks ties in stored order:

- per chat, its own facts (the event's records, staffing, cancellation, deletion, and the generations the backend
  confirmed deleted), sorted;
- per organisation, its feature switches, sorted;
- per person — by keyed pseudonym, never the HiOrg id — status facts and erasures (`deleted`, `gdpr forget`).

A chat's row is a pure function of those facts: `walk` merges the chat's facts with its organisation's switches
and steps through them with the lifecycle policy. A fact that arrives after later ones is simply inserted in its
place and the chats it touches are walked again at the next write; a chat's history is short, so the late case
costs what the in-order case costs. Person deletion erases: facts that named the person before the deletion lose
the name (in memory and in the stored rows), so a later message naming the same id is a new person.

The same fold serves `simulate` (in memory), the persistent projection behind `state`, its rebuild, and the
audit's timelines — so all of them answer alike by construction.
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from chatbridge.domain import lifecycle
from chatbridge.domain.aggregates import Organisation, Person
from chatbridge.domain.lifecycle import ChatLife, Generation, OrganisationFeature, Phase, Policy

ChatKey = tuple[str, str]  # (org, event_id)
PersonKey = tuple[str, str]  # (org, pseudonym)
Stamp = tuple[datetime, int]  # (occurred_at, notification id): the fold's order

# A chat fact: (at, seq, kind, *payload). Tuples, because there are many and they sort by (at, seq) as they are.
UPSERT = "u"  # (end, chat_enabled, responsible, staff | None)
STAFFING = "s"  # (person, status)
CANCEL = "c"  # ()
DELETE = "d"  # ()
BACKEND_DELETED = "x"  # (generation,): the backend confirmed it; nothing arriving later revives it
ChatFact = tuple[Any, ...]
Switch = tuple[datetime, int, bool]  # an organisation's feature switched on (True) or off

_PSEUDONYM_PREFIX = "ps-"


def is_unreadable(name: str) -> bool:
    """A name the store can no longer open (the person's key is gone): it names nobody who may be a member."""
    return len(name) == 35 and name.startswith(_PSEUDONYM_PREFIX)


@dataclass(frozen=True)
class DesiredChat:
    """One row of the desired state: what the chat should be, independent of the clock but for `phase(now)`."""

    org: str
    event_id: str
    generation: int
    deleted: bool  # settled: deleted for good
    awaiting_organisation: bool
    read_only_at: datetime
    delete_at: datetime
    next_due: datetime | None
    members: list[str]  # by the membership rule, before the phase is applied
    moderators: list[str]

    def phase(self, now: datetime) -> Phase:
        return lifecycle.phase_at(
            now,
            deleted=self.deleted,
            awaiting_organisation=self.awaiting_organisation,
            read_only_at=self.read_only_at,
            delete_at=self.delete_at,
        )


@dataclass(frozen=True)
class GenerationView:
    """One generation as the walk ends it: deleted ones with the deadlines they had when they were deleted."""

    number: int
    enabled_at: datetime
    read_only_at: datetime
    delete_at: datetime
    rule: str
    deleted: bool


@dataclass
class Walk:
    """A chat's facts stepped through in event time."""

    life: ChatLife | None  # None: no fact enabled the chat (cannot happen for stored chats)
    organisation: OrganisationFeature
    generations: list[GenerationView]
    fact_generation: dict[int, int]  # notification id → the generation the fact belongs to
    started_generation: set[int]  # notification ids of facts that started a new generation
    as_of: datetime | None  # the latest fact or switch: deadlines after it are due next


def walk(facts: Iterable[ChatFact], switches: Iterable[Switch], policy: Policy) -> Walk:
    """Step through one chat's facts merged with its organisation's switches, in (occurred_at, stored) order."""
    organisation = OrganisationFeature()
    life: ChatLife | None = None
    generations: list[Generation] = []
    fact_generation: dict[int, int] = {}
    started: set[int] = set()
    as_of: datetime | None = None
    for item in heapq.merge(facts, switches):
        at = item[0]
        as_of = at
        if len(item) == 3 and isinstance(item[2], bool):  # an organisation switch
            if life is not None:
                lifecycle.settle(life, organisation, policy, at)
            lifecycle.switch_organisation(organisation, item[2], at)
            continue
        seq, kind = item[1], item[2]
        if life is None:
            if kind == UPSERT and item[4]:  # the first record with chat enabled: generation 1
                life = ChatLife(
                    end=item[3], chat_enabled=True, generation=lifecycle.new_generation(1, at, organisation),
                    responsible=item[5], staff=dict(item[6] or {}),
                )  # fmt: skip
                generations.append(life.generation)
                fact_generation[seq] = 1
            continue
        if life.deleted_at is not None:
            continue  # after event.deleted nothing changes the chat
        lifecycle.settle(life, organisation, policy, at)
        if kind == UPSERT:
            before = life.generation
            lifecycle.switch_chat(life, item[4], at, organisation)
            if life.generation is not before:
                generations.append(life.generation)
                started.add(seq)
            life.end, life.responsible = item[3], item[5]
            if item[6] is not None:
                life.staff = dict(item[6])
        elif kind == STAFFING:
            lifecycle.change_staffing(life.staff, item[3], item[4])
        elif kind == CANCEL:
            lifecycle.cancel(life, at)
        elif kind == DELETE:
            lifecycle.delete_event(life, organisation, policy, at)
        elif kind == BACKEND_DELETED:
            lifecycle.confirm_deleted(life, organisation, policy, item[3], at)
        fact_generation[seq] = life.generation.number
    views = []
    for generation in generations:
        view_of = life if life is not None and generation is life.generation else None
        views.append(_generation_view(generation, view_of, organisation, policy))
    return Walk(life, organisation, views, fact_generation, started, as_of)


def _generation_view(
    generation: Generation, life: ChatLife | None, organisation: OrganisationFeature, policy: Policy
) -> GenerationView:
    if generation.frozen is not None or life is None:
        frozen = generation.frozen
        assert frozen is not None  # an earlier generation ended deleted, so its deadlines were fixed
        return GenerationView(generation.number, generation.enabled_at, frozen.read_only_at, frozen.delete_at,
                              frozen.rule, generation.deleted)  # fmt: skip
    return GenerationView(
        generation.number, generation.enabled_at, lifecycle.read_only_at(life, organisation, policy),
        lifecycle.delete_at(life, organisation, policy), lifecycle.deletion_rule(life, organisation, policy),
        generation.deleted,
    )  # fmt: skip


@dataclass
class ChatRecord:
    """A chat as the fold keeps it: its own facts, sorted."""

    aggregate_id: UUID
    facts: list[ChatFact] = field(default_factory=list)


@dataclass
class PersonRecord:
    """A person's status facts and erasures (by pseudonym), sorted."""

    statuses: list[tuple[datetime, int, str]] = field(default_factory=list)
    erasures: list[Stamp] = field(default_factory=list)

    def status(self) -> str | None:
        """The status in force: the latest one after the latest erasure (an erased person has none)."""
        if not self.statuses:
            return None
        latest = self.statuses[-1]
        if self.erasures and (latest[0], latest[1]) < self.erasures[-1]:
            return None
        return latest[2]


@dataclass(frozen=True)
class Changes:
    """The rows a store must write: chats, organisations, persons, new person-index entries."""

    chats: set[ChatKey]
    organisations: set[str]
    persons: set[PersonKey]
    index_entries: set[tuple[str, str, str]]  # (org, pseudonym, event_id)


def _facts_naming(fact: ChatFact) -> Iterator[str]:
    kind = fact[2]
    if kind == UPSERT:
        if fact[5] is not None:
            yield fact[5]
        yield from fact[6] or ()
    elif kind == STAFFING:
        yield fact[3]


@dataclass(kw_only=True)
class DesiredStateFold:
    # the persons' keyed pseudonyms (audit.shredding): a person is known by it, so that a fact read with the HiOrg
    # id and one read as the pseudonym (its key destroyed) name the same person
    pseudonym: Callable[[str, str], str]
    policy: Policy = field(default_factory=Policy)
    organisations: dict[str, list[Switch]] = field(default_factory=dict)
    chats: dict[ChatKey, ChatRecord] = field(default_factory=dict)
    persons: dict[PersonKey, PersonRecord] = field(default_factory=dict)
    person_chats: dict[PersonKey, set[str]] = field(default_factory=dict)
    # derived look-ups, rebuilt on load
    chat_keys: dict[UUID, ChatKey] = field(default_factory=dict)
    person_keys: dict[UUID, PersonKey] = field(default_factory=dict)
    organisation_keys: dict[UUID, str] = field(default_factory=dict)
    chats_of_organisation: dict[str, set[str]] = field(default_factory=dict)
    # what changed since the store last wrote
    dirty_chats: set[ChatKey] = field(default_factory=set)
    dirty_organisations: set[str] = field(default_factory=set)
    dirty_persons: set[PersonKey] = field(default_factory=set)
    new_index_entries: set[tuple[str, str, str]] = field(default_factory=set)
    _walks: dict[ChatKey, Walk] = field(default_factory=dict)  # until the chat changes again

    # -- identities ------------------------------------------------------------------------------------------

    def identity(self, org: str, name: str) -> str:
        """The person a name in a fact stands for: their pseudonym (a pseudonym is its own)."""
        if is_unreadable(name):
            return name
        return self.pseudonym(org, name)

    # -- loading ---------------------------------------------------------------------------------------------

    def load_organisation(self, org: str, switches: list[Switch]) -> None:
        self.organisations[org] = switches
        self.organisation_keys[Organisation.create_id(org)] = org

    def load_chat(self, key: ChatKey, record: ChatRecord) -> None:
        self.chats[key] = record
        self.chat_keys[record.aggregate_id] = key
        self.chats_of_organisation.setdefault(key[0], set()).add(key[1])
        self._walks.pop(key, None)

    def load_index_entry(self, org: str, person: str, event_id: str) -> None:
        self.person_chats.setdefault((org, person), set()).add(event_id)

    def load_person(self, key: PersonKey, record: PersonRecord) -> None:
        self.persons[key] = record
        self.person_keys[Person.create_id(*key)] = key

    # -- folding ---------------------------------------------------------------------------------------------

    def apply(self, event: Any, seq: int) -> None:
        """Fold one aggregate event (as decoded from the notification log) stored as notification `seq`."""
        handler = _DISPATCH.get(type(event).__qualname__)
        if handler is not None:
            handler(self, event, seq)

    def _organisation(self, org: str) -> list[Switch]:
        switches = self.organisations.get(org)
        if switches is None:
            switches = self.organisations[org] = []
            self.organisation_keys[Organisation.create_id(org)] = org
            self.dirty_organisations.add(org)
        return switches

    def _dirty(self, key: ChatKey) -> None:
        self.dirty_chats.add(key)
        self._walks.pop(key, None)

    def _add_fact(self, key: ChatKey, fact: ChatFact) -> None:
        """Insert a fact in its place, erased of persons deleted after it, and index the persons it names."""
        org, event_id = key
        for name in list(_facts_naming(fact)):
            person = (org, self.identity(org, name))
            record = self.persons.get(person)
            if record is not None and record.erasures and (fact[0], fact[1]) < record.erasures[-1]:
                erased = _erase(fact, {name})  # named before a deletion that is already known
                if erased is None:
                    return
                fact = erased
                continue
            chats = self.person_chats.setdefault(person, set())
            if event_id not in chats:
                chats.add(event_id)
                self.new_index_entries.add((org, person[1], event_id))
        insort(self.chats[key].facts, fact)
        self._dirty(key)

    def _chat_registered(self, event: Any, seq: int) -> None:
        key = (event.org, event.event_id)
        self._organisation(event.org)
        self.load_chat(key, ChatRecord(event.originator_id))
        self._add_fact(key, (event.occurred_at, seq, UPSERT, event.end, True, event.responsible, event.staff or {}))

    def _event_recorded(self, event: Any, seq: int) -> None:
        fact = (event.occurred_at, seq, UPSERT, event.end, event.chat_enabled, event.responsible, event.staff)
        self._add_fact(self.chat_keys[event.originator_id], fact)

    def _staffing_changed(self, event: Any, seq: int) -> None:
        fact = (event.occurred_at, seq, STAFFING, event.person_id, event.status)
        self._add_fact(self.chat_keys[event.originator_id], fact)

    def _cancelled(self, event: Any, seq: int) -> None:
        self._add_fact(self.chat_keys[event.originator_id], (event.occurred_at, seq, CANCEL))

    def _deleted(self, event: Any, seq: int) -> None:
        self._add_fact(self.chat_keys[event.originator_id], (event.occurred_at, seq, DELETE))

    def _chat_deleted_at_backend(self, event: Any, seq: int) -> None:
        self._add_fact(self.chat_keys[event.originator_id], (event.at, seq, BACKEND_DELETED, event.generation))

    def _organisation_registered(self, event: Any, seq: int) -> None:
        self._organisation(event.org)

    def _switch_organisation(self, event: Any, seq: int, on: bool) -> None:
        org = self.organisation_keys[event.originator_id]
        insort(self._organisation(org), (event.occurred_at, seq, on))
        self.dirty_organisations.add(org)
        for event_id in self.chats_of_organisation.get(org, ()):
            self._dirty((org, event_id))

    def _organisation_chat_enabled(self, event: Any, seq: int) -> None:
        self._switch_organisation(event, seq, True)

    def _organisation_chat_disabled(self, event: Any, seq: int) -> None:
        self._switch_organisation(event, seq, False)

    def _person(self, key: PersonKey) -> PersonRecord:
        record = self.persons.get(key)
        if record is None:
            record = self.persons[key] = PersonRecord()
        self.dirty_persons.add(key)
        return record

    def _person_registered(self, event: Any, seq: int) -> None:
        # the aggregate's id comes from the pseudonym, which the event carries in the clear
        key = (event.org, event.pseudonym)
        self.person_keys[event.originator_id] = key
        self._person(key)

    def _person_status_changed(self, event: Any, seq: int) -> None:
        key = self.person_keys[event.originator_id]
        insort(self._person(key).statuses, (event.occurred_at, seq, event.status))
        if event.status == "deleted":
            self._erase(key, (event.occurred_at, seq))
        else:
            self._dirty_chats_of(key)

    def _person_forgotten(self, event: Any, seq: int) -> None:
        # the person's key is gone (a HiOrg deletion, or an operator's erasure): erase what named them until then
        self._erase(self.person_keys[event.originator_id], (event.at, seq))

    def _erase(self, key: PersonKey, until: Stamp) -> None:
        """Person deletion erases: every fact that named the person before `until` forgets the name."""
        record = self._person(key)
        insort(record.erasures, until)
        org, pseudonym = key
        for event_id in self.person_chats.get(key, ()):
            chat = self.chats.get((org, event_id))
            if chat is None:
                continue
            erased = []
            for fact in chat.facts:
                if (fact[0], fact[1]) < until:
                    names = {n for n in _facts_naming(fact) if self.identity(org, n) == pseudonym}
                    if names:
                        fact = _erase(fact, names)
                if fact is not None:
                    erased.append(fact)
            chat.facts = erased
            self._dirty((org, event_id))

    def _dirty_chats_of(self, key: PersonKey) -> None:
        for event_id in self.person_chats.get(key, ()):
            if (key[0], event_id) in self.chats:
                self._dirty((key[0], event_id))

    # -- reading ---------------------------------------------------------------------------------------------

    def walk(self, key: ChatKey) -> Walk:
        result = self._walks.get(key)
        if result is None:
            result = self._walks[key] = walk(self.chats[key].facts, self.organisations.get(key[0], ()), self.policy)
        return result

    def desired(self, key: ChatKey) -> DesiredChat:
        result = self.walk(key)
        life = result.life
        assert life is not None, f"chat {key} has no record enabling it"
        org = key[0]
        statuses: dict[str, str] = {}
        for name in {*life.staff, *([life.responsible] if life.responsible else [])}:
            if is_unreadable(name):
                statuses[name] = "deleted"  # a forgotten person is never a member again under that name
                continue
            record = self.persons.get((org, self.identity(org, name)))
            status = record.status() if record is not None else None
            if status is not None:
                statuses[name] = status
        members, moderators = lifecycle.desired_members(life, statuses)
        current = result.generations[-1]
        return DesiredChat(
            org=org,
            event_id=key[1],
            generation=current.number,
            deleted=current.deleted,
            awaiting_organisation=not lifecycle.saw_organisation_on(life.generation, result.organisation),
            read_only_at=current.read_only_at,
            delete_at=current.delete_at,
            next_due=None
            if current.deleted or result.as_of is None
            else lifecycle.next_due([current.read_only_at, current.delete_at], result.as_of),
            members=members,
            moderators=moderators,
        )

    def all_desired(self) -> list[DesiredChat]:
        return [self.desired(key) for key in sorted(self.chats)]

    def take_dirty(self) -> Changes:
        """What changed since the last call."""
        changes = Changes(self.dirty_chats, self.dirty_organisations, self.dirty_persons, self.new_index_entries)
        self.dirty_chats, self.dirty_organisations, self.dirty_persons = set(), set(), set()
        self.new_index_entries = set()
        return changes

    def everything(self) -> Changes:
        """All of the fold as changes (a rebuild writes it whole)."""
        self.take_dirty()
        index = {(org, person, event) for (org, person), events in self.person_chats.items() for event in events}
        return Changes(set(self.chats), set(self.organisations), set(self.persons), index)


def _erase(fact: ChatFact, names: set[str]) -> ChatFact | None:
    """The fact without these names (a staffing fact about one of them goes altogether)."""
    kind = fact[2]
    if kind == STAFFING:
        return None
    if kind == UPSERT:
        responsible = None if fact[5] in names else fact[5]
        staff = fact[6] if fact[6] is None else {p: s for p, s in fact[6].items() if p not in names}
        return (*fact[:5], responsible, staff)
    return fact


# Keyed by the event classes' qualified names, which the library derives from the aggregates' @event names.
# The reconciler's other outcomes (access, moderators, read-only) are the audit's; the fold needs only deletions.
_DISPATCH: dict[str, Any] = {
    "ChatGroup.Registered": DesiredStateFold._chat_registered,
    "ChatGroup.EventRecorded": DesiredStateFold._event_recorded,
    "ChatGroup.StaffingChanged": DesiredStateFold._staffing_changed,
    "ChatGroup.Cancelled": DesiredStateFold._cancelled,
    "ChatGroup.Deleted": DesiredStateFold._deleted,
    "ChatGroup.ChatDeleted": DesiredStateFold._chat_deleted_at_backend,
    "Organisation.Registered": DesiredStateFold._organisation_registered,
    "Organisation.ChatEnabled": DesiredStateFold._organisation_chat_enabled,
    "Organisation.ChatDisabled": DesiredStateFold._organisation_chat_disabled,
    "Person.Registered": DesiredStateFold._person_registered,
    "Person.StatusChanged": DesiredStateFold._person_status_changed,
    "Person.Forgotten": DesiredStateFold._person_forgotten,
}
