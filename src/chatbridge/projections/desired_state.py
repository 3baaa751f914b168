"""The desired-state projection: facts from the event log → each chat's generations, deadlines and members.

Order is event time (DESIGN.md, lifecycle policy). Kafka keeps order only within a partition, and one
organisation's messages spread over many (one key per event, organisation and person), so the notification log's
order says little. The fold therefore keeps the facts themselves, each stamped with (`occurred_at`, notification
id) — the id breaks ties in stored order:

- per chat, its own facts (the event's records, staffing, cancellation, deletion, and the generations the backend
  confirmed deleted), sorted;
- per organisation, its feature switches, sorted;
- per person, status facts and erasures (`deleted`, `gdpr forget`), sorted.

A chat's row is a pure function of those facts: `walk` merges the chat's facts with its organisation's switches
and steps through them with the lifecycle policy. A fact that arrives after later ones is inserted in its place and
the chats it touches are walked again at the next write; a chat's history is short, so the late case costs what
the in-order case costs.

Persons are known to the fold by their keyed pseudonym only (audit.shredding): facts hold pseudonyms, never HiOrg
ids. The HiOrg id is needed once, for a chat's members; each person keeps the latest sealed token naming them, and
it is opened when the row is written — so once a key is destroyed nothing in the projection can name the person.
Person deletion erases: in the walk, the deletion takes the person off the chat, so whatever named them before it
(arriving early or late) is gone, and a later message naming the same id is a new person.

The same fold serves `simulate` (in memory), the persistent projection behind `state` (which loads only the rows a
page of the log touches: memory stays bounded by the page, not the store), its rebuild, and the audit's
timelines — so all of them answer alike by construction.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple, Protocol
from uuid import UUID

from chatbridge.domain import lifecycle
from chatbridge.domain.aggregates import EVENT_CLASSES, ChatGroup, Organisation, Person
from chatbridge.domain.lifecycle import ChatLife, Generation, OrganisationFeature, Phase, Policy
from chatbridge.journal.sealing import Pseudonym

ChatKey = tuple[str, str]  # (org, event_id)
PersonKey = tuple[str, str]  # (org, pseudonym)
Stamp = tuple[datetime, int]  # (occurred_at, notification id): the fold's order

# A chat fact: (at, seq, kind, *payload). Tuples, because there are many and they sort by (at, seq) as they are.
UPSERT = "u"  # (end, chat_enabled, responsible, staff | None, title, start): persons by pseudonym
STAFFING = "s"  # (person, status)
CANCEL = "c"  # ()
DELETE = "d"  # ()
BACKEND_DELETED = "x"  # (generation,): the backend confirmed it; nothing arriving later revives it
PERSON = "p"  # in a walk only: (person,) a status message about a person the chat may name
ERASURE = "e"  # in a walk only: (person,) the person was deleted: what named them until now is erased
ChatFact = tuple[Any, ...]
Switch = tuple[datetime, int, bool]  # an organisation's feature switched on (True) or off


class Counted(NamedTuple):
    """Whom a chat's members depend on at the end of its walk: the persons the membership rule takes before their
    statuses are looked at (`lifecycle.counted_persons`), and the responsible one among them (the moderator).
    Together with the persons' records, this is all a status fact can change in the chat's row."""

    persons: frozenset[str]
    responsible: str | None


# What a written row says about what a status fact can change in it (`DesiredStateFold.quiet`): a moment no
# deadline of the chat precedes (before it, nothing but the members), and whom its members depend on.
Quiet = tuple[datetime, Counted]


def is_unreadable(name: str) -> bool:
    """A pseudonym where a HiOrg id was: the person's key is gone, so the name stands for nobody who may be a member.
    Known by its type, never by its shape: a HiOrg id may look like a pseudonym and is still a person's id."""
    return isinstance(name, Pseudonym)


def _same_key(kept: str, name: str) -> bool:
    """Two names that open alike: the same HiOrg id, or tokens of one key version (`enc2:{pseudonym}:{version}:…`)."""
    return kept == name or (name.startswith("enc2:") and kept.rsplit(":", 1)[0] == name.rsplit(":", 1)[0])


def _key_version(name: str) -> int | None:
    """The key version a sealed token was sealed with (`enc2:{pseudonym}:{version}:…`; the previous release's
    `enc1:{pseudonym}:{…}` used version 1); None for anything else."""
    if name.startswith("enc2:"):
        return int(name.split(":", 3)[2])
    if name.startswith("enc1:") and token_parts(name)[1]:
        return 1
    return None


def token_parts(token: str) -> tuple[str, bool]:
    """(pseudonym, sealed) of a stored person token (`enc1:{pseudonym}:{…}`, `enc2:{pseudonym}:{version}:{…}`,
    written by audit.shredding): the pseudonym is in the clear, so the fold needs no key to know the person."""
    parts = token.split(":")
    return parts[1], len(parts) > 2 and bool(parts[-1])


@dataclass(frozen=True, slots=True)
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
    title: str | None = None  # the event's, as the latest record in event time gives it (the chat's name)
    start: datetime | None = None

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
    floor: datetime  # `deadline_floor` of the facts and switches walked: no deadline precedes it


def deadline_floor(facts: Iterable[ChatFact], switches: Iterable[Switch], policy: Policy) -> datetime:
    """A moment no deadline of the chat precedes, whatever order its facts are walked in: each deadline is an end
    (+ FULL_USE, + VIEW), a cancellation + FULL_USE, or a moment of its own facts or of its organisation's switches
    off. Before it, a touch settles nothing."""
    moments: list[datetime] = []
    for fact in facts:
        kind = fact[2]
        if kind == UPSERT:
            moments.append(fact[3] + policy.full_use)
            if not fact[4]:
                moments.append(fact[0])
        elif kind == CANCEL:
            moments.append(fact[0] + policy.full_use)
        elif kind in (DELETE, BACKEND_DELETED):
            moments.append(fact[0])
    moments.extend(at for at, _seq, on in switches if not on)
    return min(moments, default=datetime.max.replace(tzinfo=UTC))


def walk(
    facts: Sequence[ChatFact], switches: Sequence[Switch], persons: dict[str, PersonRecord], policy: Policy
) -> Walk:
    """Step through one chat's facts merged with its organisation's switches and the status facts and erasures of
    the persons it ever named, in (occurred_at, stored) order.

    A person message touches the chat (settles it) when the chat names the person at that moment; an erasure then
    takes the person off the staff and the responsible place — so a fact dated before the deletion, however late it
    arrives, is erased, and one dated after it names a new person.
    """
    touches: list[tuple[Any, ...]] = []
    for person, record in persons.items():
        touches.extend((at, seq, PERSON, person) for at, seq, status in record.statuses if status != "deleted")
        touches.extend((at, seq, ERASURE, person) for at, seq in record.erasures)
    touches.sort()
    floor = deadline_floor(facts, switches, policy)  # `settle` before it would find nothing due
    organisation = OrganisationFeature()
    life: ChatLife | None = None
    generations: list[Generation] = []
    fact_generation: dict[int, int] = {}
    started: set[int] = set()
    as_of: datetime | None = None
    for item in heapq.merge(facts, switches, touches):
        at = item[0]
        kind = item[2]
        if kind is True or kind is False:  # an organisation switch
            as_of = at
            if life is not None and at >= floor:
                lifecycle.settle(life, organisation, policy, at)
            lifecycle.switch_organisation(organisation, kind, at)
            continue
        if kind in (PERSON, ERASURE):
            person = item[3]
            if life is None or (person not in life.staff and person != life.responsible):
                continue
            as_of = at
            if at >= floor:
                lifecycle.settle(life, organisation, policy, at)
            if kind == ERASURE:
                life.staff.pop(person, None)
                if life.responsible == person:
                    life.responsible = None
            continue
        as_of = at
        seq = item[1]
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
        if at >= floor:
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
    views = [_generation_view(g, life, organisation, policy) for g in generations]
    return Walk(life, organisation, views, fact_generation, started, as_of, floor)


def _generation_view(
    generation: Generation, life: ChatLife | None, organisation: OrganisationFeature, policy: Policy
) -> GenerationView:
    frozen = generation.frozen
    if frozen is not None:
        return GenerationView(generation.number, generation.enabled_at, frozen.read_only_at, frozen.delete_at,
                              frozen.rule, generation.deleted)  # fmt: skip
    assert life is not None and generation is life.generation, "an earlier generation ends deleted, its deadlines fixed"
    return GenerationView(
        generation.number, generation.enabled_at, lifecycle.read_only_at(life, organisation, policy),
        lifecycle.delete_at(life, organisation, policy), lifecycle.deletion_rule(life, organisation, policy),
        generation.deleted,
    )  # fmt: skip


@dataclass
class FoldedChat:
    """A chat as the fold keeps it: its own facts, sorted."""

    aggregate_id: UUID
    facts: list[ChatFact] = field(default_factory=list)


@dataclass
class PersonRecord:
    """A person's status facts and erasures, sorted, and the latest token (or HiOrg id) that named them."""

    statuses: list[tuple[datetime, int, str]] = field(default_factory=list)
    erasures: list[Stamp] = field(default_factory=list)
    name: str | None = None  # a sealed token (the store's path) or the HiOrg id (decoded events)

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
    # chats whose rows change in their members and moderators only (`DesiredStateFold.membership`): a status fact
    # before every deadline of the chat leaves the rest of the row as it is
    members: dict[ChatKey, Counted]
    organisations: set[str]
    persons: set[PersonKey]
    index_entries: set[tuple[str, str, str]]  # (org, pseudonym, event_id)


class RowSource(Protocol):
    """Where a fold that holds only part of the projection finds the rest (the persistent view)."""

    def chats_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[ChatKey, FoldedChat]]: ...
    def chats_of_organisation(self, org: str) -> Iterator[tuple[ChatKey, FoldedChat]]: ...
    def chats_by_keys(self, keys: Iterable[ChatKey]) -> Iterator[tuple[ChatKey, FoldedChat]]: ...
    def persons_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[PersonKey, PersonRecord]]: ...
    def persons_by_keys(self, keys: Iterable[PersonKey]) -> Iterator[tuple[PersonKey, PersonRecord]]: ...
    def persons_by_pseudonyms(self, pseudonyms: Iterable[str]) -> Iterator[tuple[PersonKey, PersonRecord]]: ...
    def organisations_by_ids(self, ids: Iterable[UUID]) -> Iterator[tuple[str, UUID, list[Switch]]]: ...
    def indexes_of(self, persons: Iterable[PersonKey]) -> dict[PersonKey, dict[str, Quiet | None]]: ...


def _insert_once(facts: list[Any], fact: tuple[Any, ...]) -> bool:
    """Insert a fact in its (occurred_at, notification id) place unless that notification's fact is already there;
    False when it was. Replicas fold the same log side by side: a row loaded after another process wrote it may
    already hold facts this fold is about to add, and a fact folded twice is not harmless (an upsert seen twice
    settles the generation it started)."""
    stamp = fact[:2]
    index = bisect_left(facts, stamp, key=lambda kept: kept[:2])
    if index < len(facts) and facts[index][:2] == stamp:
        return False
    facts.insert(index, fact)
    return True


def _event_of(facts: list[ChatFact]) -> tuple[str | None, datetime | None]:
    """The event's title and start as its latest record in event time gives them (a record arriving late does not
    rename the chat)."""
    for fact in reversed(facts):
        if fact[2] == UPSERT and len(fact) > 8:
            return fact[7], fact[8]
    return None, None


def _excluded(status: str | None) -> bool:
    return status in lifecycle.EXCLUDED_PERSON_STATUSES


def _counted(life: ChatLife | None) -> Counted:
    if life is None:
        return Counted(frozenset(), None)
    return Counted(frozenset(lifecycle.counted_persons(life)), life.responsible)


def _named(fact: ChatFact) -> Iterator[str]:
    kind = fact[2]
    if kind == UPSERT:
        if fact[5] is not None:
            yield fact[5]
        yield from fact[6] or ()
    elif kind == STAFFING:
        yield fact[3]


@dataclass(kw_only=True)
class DesiredStateFold:
    """The fold. Without `rows` it holds everything it was given (simulate, audit, rebuild); with `rows` it
    holds what the facts folded since the last `forget_loaded` touched, and loads the rest on demand."""

    # the persons' keyed pseudonyms (audit.shredding), and opening a stored token to the HiOrg id
    pseudonym: Callable[[str, str], str]
    open_name: Callable[[str], str] = str
    # changes whenever a key this process may have opened a token with could have been destroyed (None: assume so
    # at every write)
    keys_epoch: Callable[[], object] | None = None
    policy: Policy = field(default_factory=Policy)
    rows: RowSource | None = None
    organisations: dict[str, list[Switch]] = field(default_factory=dict)
    chats: dict[ChatKey, FoldedChat] = field(default_factory=dict)
    persons: dict[PersonKey, PersonRecord] = field(default_factory=dict)
    person_chats: dict[PersonKey, set[str]] = field(default_factory=dict)
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
    # chats whose members change only if one of these persons counts in them (their status crossed the membership
    # rule before the chat's deadline floor)
    _counted_if: dict[ChatKey, set[str]] = field(default_factory=dict)
    # chats not dirty whose members a status fact changed (`Changes.members`)
    _members_changed: dict[ChatKey, Counted] = field(default_factory=dict)
    _quiet: dict[ChatKey, Quiet | None] = field(default_factory=dict)  # of chats in the index, not loaded
    # of loaded chats: who counted at the end of their last walk (a status fact that leaves the chat clean cannot
    # change it, so it outlives the walk such a fact drops)
    _counted_at_walk: dict[ChatKey, Counted] = field(default_factory=dict)
    _absent: set[PersonKey] = field(default_factory=set)  # looked up, no row: new to the projection
    _absent_pseudonyms: set[str] = field(default_factory=set)
    _opened: dict[str, str] = field(default_factory=dict)  # token → name, while `keys_epoch` stays the same
    _opened_epoch: object = None
    _whole_organisations: set[str] = field(default_factory=set)  # all their chats are loaded
    _whole_index: set[PersonKey] = field(default_factory=set)  # person_chats holds all their chats

    # -- loading ---------------------------------------------------------------------------------------------

    def load_organisation(self, org: str, aggregate_id: UUID, switches: list[Switch]) -> None:
        self.organisations.setdefault(org, switches)
        self.organisation_keys[aggregate_id] = org

    def load_chat(self, key: ChatKey, record: FoldedChat) -> None:
        if key in self.chats:
            return  # what is in memory is newer than the row
        self.chats[key] = record
        self.chat_keys[record.aggregate_id] = key
        self.chats_of_organisation.setdefault(key[0], set()).add(key[1])

    def load_person(self, key: PersonKey, record: PersonRecord) -> None:
        if key in self.persons:
            return
        self.persons[key] = record
        self.person_keys[person_aggregate_id(*key)] = key

    def prefetch(self, originator_ids: Iterable[UUID], pseudonyms: Iterable[str] = ()) -> None:
        """Load the rows a page of the log is about — its aggregates and the persons it names — in a few queries
        rather than one each."""
        if self.rows is None:
            return
        wanted = [i for i in set(originator_ids) if i not in self.chat_keys and i not in self.person_keys]
        for key, record in self.rows.chats_by_ids(wanted):
            self.load_chat(key, record)
        wanted = [i for i in wanted if i not in self.chat_keys]
        for person, person_record in self.rows.persons_by_ids(wanted):
            self.load_person(person, person_record)
        for org, aggregate_id, switches in self.rows.organisations_by_ids(
            i for i in wanted if i not in self.person_keys
        ):
            self.load_organisation(org, aggregate_id, switches)
        named = set(pseudonyms) - {pseudonym for _, pseudonym in self.persons}
        for person, person_record in self.rows.persons_by_pseudonyms(named):
            self.load_person(person, person_record)
        self._absent_pseudonyms |= named - {pseudonym for _, pseudonym in self.persons}

    def prefetch_indexes(self, persons: Iterable[PersonKey]) -> None:
        """What `_index` loads for each of these persons (their chats by the person index), in a few queries.

        The chats themselves are not loaded: what their rows say about status facts (`Quiet`) is enough to know
        that most status facts leave them as they are; the chats that do change are loaded before the write."""
        if self.rows is None:
            return
        wanted = [person for person in set(persons) if person not in self._whole_index]
        if not wanted:
            return
        found = self.rows.indexes_of(wanted)
        for person in wanted:
            self.person_chats.setdefault(person, set()).update(found.get(person, ()))
        for (org, _), events in found.items():
            for event_id, quiet in events.items():
                if (org, event_id) not in self.chats:
                    self._quiet[(org, event_id)] = quiet
        self._whole_index.update(wanted)

    def _load_changed(self) -> None:
        """Load the chats a status fact changed while only their `Quiet` was known."""
        missing = [key for key in (*self.dirty_chats, *self._counted_if) if key not in self.chats]
        if self.rows is not None and missing:
            for key, record in self.rows.chats_by_keys(missing):
                self.load_chat(key, record)

    def load_named(self) -> None:
        """Load, in a few queries, the persons the changed chats name (their rows are about to be walked)."""
        if self.rows is None:
            return
        self._load_changed()
        wanted = {
            (org, person)
            for org, event_id in self.dirty_chats | self._counted_if.keys()
            for fact in self.chats[(org, event_id)].facts
            for person in _named(fact)
            if (org, person) not in self.persons
        }
        wanted.update(
            (org, person)
            for (org, _), counted in self._members_changed.items()
            for person in counted.persons
            if (org, person) not in self.persons
        )
        for person, record in self.rows.persons_by_keys(wanted):
            self.load_person(person, record)
        self._absent |= wanted - self.persons.keys()

    def forget_loaded(self) -> None:
        """Drop everything loaded (after a write): the next page loads what it touches."""
        assert not (self.dirty_chats or self.dirty_organisations or self.dirty_persons or self._counted_if
                    or self._members_changed), "write before forgetting"  # fmt: skip
        for mapping in (self.organisations, self.chats, self.persons, self.person_chats, self.chat_keys,
                        self.person_keys, self.organisation_keys, self.chats_of_organisation, self._walks,
                        self._counted_at_walk):  # fmt: skip
            mapping.clear()
        self._whole_organisations.clear()
        self._whole_index.clear()
        self._quiet.clear()
        self._absent.clear()
        self._absent_pseudonyms.clear()

    def _chat_of(self, aggregate_id: UUID) -> ChatKey:
        key = self.chat_keys.get(aggregate_id)
        if key is None and self.rows is not None:
            for loaded, record in self.rows.chats_by_ids([aggregate_id]):
                self.load_chat(loaded, record)
            key = self.chat_keys.get(aggregate_id)
        if key is None:
            raise LookupError(f"no chat for aggregate {aggregate_id}: the log holds a fact before its chat's record")
        return key

    def _person_of(self, aggregate_id: UUID) -> PersonKey:
        key = self.person_keys.get(aggregate_id)
        if key is None and self.rows is not None:
            for loaded, record in self.rows.persons_by_ids([aggregate_id]):
                self.load_person(loaded, record)
            key = self.person_keys.get(aggregate_id)
        if key is None:
            raise LookupError(f"no person for aggregate {aggregate_id}")
        return key

    def _organisation_of(self, aggregate_id: UUID) -> str:
        org = self.organisation_keys.get(aggregate_id)
        if org is None and self.rows is not None:
            for loaded, loaded_id, switches in self.rows.organisations_by_ids([aggregate_id]):
                self.load_organisation(loaded, loaded_id, switches)
            org = self.organisation_keys.get(aggregate_id)
        if org is None:
            raise LookupError(f"no organisation for aggregate {aggregate_id}")
        return org

    def _whole_organisation(self, org: str) -> set[str]:
        if self.rows is not None and org not in self._whole_organisations:
            for key, record in self.rows.chats_of_organisation(org):
                self.load_chat(key, record)
            self._whole_organisations.add(org)
        return self.chats_of_organisation.get(org, set())

    def _index(self, person: PersonKey) -> set[str]:
        """The events whose chats ever named the person (the chats themselves may not be loaded)."""
        self.prefetch_indexes([person])
        return self.person_chats.get(person, set())

    def _loaded_organisation(self, org: str) -> list[Switch] | None:
        switches = self.organisations.get(org)
        if switches is None and self.rows is not None:
            for loaded, aggregate_id, stored in self.rows.organisations_by_ids([organisation_aggregate_id(org)]):
                self.load_organisation(loaded, aggregate_id, stored)
            switches = self.organisations.get(org)
        return switches

    def _organisation(self, org: str, aggregate_id: UUID | None = None) -> list[Switch]:
        switches = self._loaded_organisation(org)
        if switches is None:
            switches = self.organisations[org] = []
            self.dirty_organisations.add(org)
        if aggregate_id is not None:
            self.organisation_keys[aggregate_id] = org
        return switches

    def _person(self, key: PersonKey) -> PersonRecord:
        record = self.persons.get(key)
        if record is None:
            record = self._loaded_person(key)
            if record is None:
                record = self.persons[key] = PersonRecord()  # new to the projection
        self.dirty_persons.add(key)
        return record

    # -- persons' names --------------------------------------------------------------------------------------

    def identity(self, org: str, name: str) -> str:
        """The pseudonym of the person a name in an event stands for, remembering a name that can be opened."""
        if name.startswith("enc"):  # a stored token: the pseudonym is in the clear
            pseudonym, sealed = token_parts(name)
            if sealed:
                self._name((org, pseudonym), name)
            return pseudonym
        if is_unreadable(name):
            return name
        pseudonym = self.pseudonym(org, name)
        self._name((org, pseudonym), name)
        return pseudonym

    def _name(self, key: PersonKey, name: str) -> None:
        """Keep the name the person is known by now: the token of their newest key version, else the latest name.

        A token sealed with the same key as the one kept is as good (each fact's token differs only by its nonce),
        so the person's row is not written again for it. A token of an older key version loses whatever the fold
        order: a replica that had not yet seen a deletion may store a late fact sealed with the key the deletion
        destroyed, after the person was named again under a new one — the name must not fall back to it.
        """
        record = self.persons.get(key) or self._loaded_person(key)
        if record is not None and record.name is not None:
            if _same_key(record.name, name):
                return
            kept, offered = _key_version(record.name), _key_version(name)
            if kept is not None and offered is not None and offered < kept:
                return
        self._person(key).name = name

    def _identities(self, org: str, names: dict[str, str] | None) -> dict[str, str] | None:
        return None if names is None else {self.identity(org, p): s for p, s in names.items()}

    # -- folding: one method per fact, from decoded events or stored rows alike --------------------------------

    def apply(self, event: Any, seq: int) -> None:
        """Fold one aggregate event (as decoded from the notification log) stored as notification `seq`."""
        folded = FOLDED.get(type(event))
        if folded is None:
            if type(event) in NOT_FOLDED:
                return
            raise unknown_event(type(event).__qualname__)
        method, fields = folded
        state = event.__dict__
        method(self, event.originator_id, seq, *[state[name] for name in fields])

    def _dirty(self, key: ChatKey) -> None:
        self.dirty_chats.add(key)
        self._walks.pop(key, None)
        self._quiet.pop(key, None)
        self._counted_at_walk.pop(key, None)

    def _add_fact(self, key: ChatKey, fact: ChatFact) -> None:
        """Insert a fact in its place and index the persons it names."""
        if not _insert_once(self.chats[key].facts, fact):
            return
        org, event_id = key
        for person in _named(fact):
            person_key = (org, person)
            chats = self.person_chats.setdefault(person_key, set())
            if event_id not in chats:
                chats.add(event_id)
                if self.rows is not None:  # a fold holding everything writes the whole index (`everything`)
                    self.new_index_entries.add((org, person, event_id))
        self._dirty(key)

    def chat_registered(self, aggregate_id: UUID, seq: int, org: str, event_id: str, at: datetime, end: datetime,
                        responsible: str | None, staff: dict[str, str] | None, title: str | None = None,
                        start: datetime | None = None) -> None:  # fmt: skip
        key = (org, event_id)
        self._organisation(org)
        self.load_chat(key, FoldedChat(aggregate_id))
        responsible = None if responsible is None else self.identity(org, responsible)
        self._add_fact(key, (at, seq, UPSERT, end, True, responsible, self._identities(org, staff) or {}, title,
                             start))  # fmt: skip

    def event_recorded(self, aggregate_id: UUID, seq: int, at: datetime, end: datetime, chat_enabled: bool,
                       responsible: str | None, staff: dict[str, str] | None, title: str | None = None,
                       start: datetime | None = None) -> None:  # fmt: skip
        key = self._chat_of(aggregate_id)
        org = key[0]
        responsible = None if responsible is None else self.identity(org, responsible)
        self._add_fact(key, (at, seq, UPSERT, end, chat_enabled, responsible, self._identities(org, staff), title,
                             start))  # fmt: skip

    def staffing_changed(self, aggregate_id: UUID, seq: int, at: datetime, person: str, status: str) -> None:
        key = self._chat_of(aggregate_id)
        self._add_fact(key, (at, seq, STAFFING, self.identity(key[0], person), status))

    def cancelled(self, aggregate_id: UUID, seq: int, at: datetime) -> None:
        self._add_fact(self._chat_of(aggregate_id), (at, seq, CANCEL))

    def deleted(self, aggregate_id: UUID, seq: int, at: datetime) -> None:
        self._add_fact(self._chat_of(aggregate_id), (at, seq, DELETE))

    def deleted_at_backend(self, aggregate_id: UUID, seq: int, at: datetime, generation: int) -> None:
        self._add_fact(self._chat_of(aggregate_id), (at, seq, BACKEND_DELETED, generation))

    def organisation_registered(self, aggregate_id: UUID, seq: int, org: str) -> None:
        self._organisation(org, aggregate_id)

    def organisation_switched_on(self, aggregate_id: UUID, seq: int, at: datetime) -> None:
        self.organisation_switched(aggregate_id, seq, at, True)

    def organisation_switched_off(self, aggregate_id: UUID, seq: int, at: datetime) -> None:
        self.organisation_switched(aggregate_id, seq, at, False)

    def organisation_switched(self, aggregate_id: UUID, seq: int, at: datetime, on: bool) -> None:
        org = self._organisation_of(aggregate_id)
        if not _insert_once(self._organisation(org), (at, seq, on)):
            return
        self.dirty_organisations.add(org)
        for event_id in self._whole_organisation(org):
            self._dirty((org, event_id))

    def person_registered(self, aggregate_id: UUID, seq: int, org: str, pseudonym: str, person: str) -> None:
        # the aggregate's id comes from the pseudonym, which the event carries in the clear
        self.person_keys[aggregate_id] = (org, pseudonym)
        self._person((org, pseudonym))
        self.identity(org, person)

    def person_status_changed(self, aggregate_id: UUID, seq: int, at: datetime, status: str) -> None:
        key = self._person_of(aggregate_id)
        record = self._person(key)
        before = record.status()
        if not _insert_once(record.statuses, (at, seq, status)):
            return
        if status == "deleted":
            self._erase((key), (at, seq))
            return
        may_exclude = _excluded(before) != _excluded(record.status())
        for event_id in self._index(key):
            self._touch((key[0], event_id), key[1], at, may_exclude)

    def _touch(self, key: ChatKey, person: str, at: datetime, may_exclude: bool) -> None:
        """A status fact of `person` at `at`, about a chat that named them: the chat is walked and written again
        unless its row cannot change, or can change only in its members.

        A fact before every deadline the chat could have had (`_quiet_until`) settles nothing and moves no next
        deadline: the walk ends as it did. Then the row cannot change when the person's status stays on the same
        side of the membership rule or the person does not count in this chat (not a member or responsible at the
        end of its walk); when it does count, only the members and moderators change, and they are computed from
        whom the walk counted (`membership`) without loading or walking the chat.
        """
        self._walks.pop(key, None)  # a walk is kept only while it holds every fact
        if key in self.dirty_chats:
            return
        counted: Counted | None = None  # not known without a walk
        if key in self.chats:
            quiet_until = self._quiet_until(key)
            counted = self._counted_at_walk.get(key)
        else:
            quiet = self._quiet.get(key)
            if quiet is None:
                self._dirty(key)  # loaded and walked before the write
                return
            quiet_until, counted = quiet
        if at >= quiet_until:
            self._dirty(key)
        elif not may_exclude:
            return
        elif counted is None:  # decided after a walk, before the next write
            self._counted_if.setdefault(key, set()).add(person)
        elif person in counted.persons:
            self._members_changed[key] = counted

    def quiet(self, key: ChatKey) -> Quiet:
        """What the chat's row says about what a status fact can change in it (kept with the row)."""
        result = self.walk(key)  # kept only while it holds every fact and switch: its floor is the chat's
        return result.floor, self._counted_at_walk[key]

    def _quiet_until(self, key: ChatKey) -> datetime:
        return deadline_floor(self.chats[key].facts, self._loaded_organisation(key[0]) or (), self.policy)

    def person_named_again(self, aggregate_id: UUID, seq: int, person: str) -> None:
        # a name under a fresh key for a new person whose earlier facts went unreadable with the deletion
        key = self._person_of(aggregate_id)
        self.identity(key[0], person)
        for event_id in self._index(key):
            self._dirty((key[0], event_id))

    def person_forgotten(self, aggregate_id: UUID, seq: int, at: datetime) -> None:
        # the person's key is gone (a HiOrg deletion, or an operator's erasure): erase what named them until then
        self._erase(self._person_of(aggregate_id), (at, seq))

    def _erase(self, key: PersonKey, until: Stamp) -> None:
        """Person deletion erases what named the person until then: each chat that named them is walked again."""
        if not _insert_once(self._person(key).erasures, until):
            return
        for event_id in self._index(key):
            self._dirty((key[0], event_id))

    # -- reading ---------------------------------------------------------------------------------------------

    def walk(self, key: ChatKey) -> Walk:
        result = self._walks.get(key)
        if result is None:
            org = key[0]
            facts = self.chats[key].facts
            named = {person for fact in facts for person in _named(fact)}
            persons = {}
            for person in named:
                record = self._loaded_person((org, person))
                if record is not None and (record.statuses or record.erasures):
                    persons[person] = record
            switches = self._loaded_organisation(org) or []
            result = self._walks[key] = walk(facts, switches, persons, self.policy)
            self._counted_at_walk[key] = _counted(result.life)
        return result

    def desired(self, key: ChatKey) -> DesiredChat:
        result = self.walk(key)
        life = result.life
        assert life is not None, f"chat {key} has no record enabling it"
        org = key[0]
        members, moderators = self.membership(org, self._counted_at_walk[key])
        current = result.generations[-1]
        title, start = _event_of(self.chats[key].facts)
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
            title=title,
            start=start,
        )

    def membership(self, org: str, counted: Counted) -> tuple[list[str], list[str]]:
        """A chat's (members, moderators) by name, from whom its walk counted and the persons' records as they are
        now: the membership rule (`lifecycle.members_among`), a person whose key is gone never a member."""
        statuses: dict[str, str] = {}
        names: dict[str, str] = {}
        for pseudonym in counted.persons:
            record = self._loaded_person((org, pseudonym))
            name = self._open(record.name) if record is not None and record.name else Pseudonym(pseudonym)
            if is_unreadable(name):
                statuses[pseudonym] = "deleted"  # the key is gone: no one can be a member under that name
                continue
            names[pseudonym] = name
            status = record.status() if record is not None else None
            if status is not None:
                statuses[pseudonym] = status
        members, moderators = lifecycle.members_among(counted.persons, counted.responsible, statuses)
        return sorted(names[p] for p in members), sorted(names[p] for p in moderators)

    def _open(self, token: str) -> str:
        """A person's name, opened once per token (a person in many chats has one latest token)."""
        name = self._opened.get(token)
        if name is None:
            name = self._opened[token] = self.open_name(token)
        return name

    def _loaded_person(self, key: PersonKey) -> PersonRecord | None:
        record = self.persons.get(key)
        if record is None and self.rows is not None and key not in self._absent:
            if key[1] in self._absent_pseudonyms:
                return None
            for loaded, loaded_record in self.rows.persons_by_keys([key]):
                self.load_person(loaded, loaded_record)
            record = self.persons.get(key)
            if record is None:
                self._absent.add(key)
        return record

    def all_desired(self) -> list[DesiredChat]:
        return [self.desired(key) for key in sorted(self.chats)]

    def take_dirty(self) -> Changes:
        """What changed since the last call."""
        epoch = None if self.keys_epoch is None else self.keys_epoch()
        if epoch is None or epoch != self._opened_epoch or len(self._opened) > 100_000:
            self._opened, self._opened_epoch = {}, epoch  # a key may have been destroyed since the last write
        self._load_changed()
        for key, persons in self._counted_if.items():  # as `_touch` decides once whom the walk counted is known
            if key not in self.dirty_chats:
                self.walk(key)
                counted = self._counted_at_walk[key]
                if persons & counted.persons:
                    self._members_changed[key] = counted
        self._counted_if = {}
        members = {key: counted for key, counted in self._members_changed.items() if key not in self.dirty_chats}
        self._members_changed = {}
        changes = Changes(self.dirty_chats, members, self.dirty_organisations, self.dirty_persons,
                          self.new_index_entries)  # fmt: skip
        self.dirty_chats, self.dirty_organisations, self.dirty_persons = set(), set(), set()
        self.new_index_entries = set()
        return changes

    def everything(self) -> Changes:
        """All of the fold as changes (a rebuild writes it whole)."""
        self.take_dirty()
        index = {(org, person, event) for (org, person), events in self.person_chats.items() for event in events}
        return Changes(set(self.chats), {}, set(self.organisations), set(self.persons), index)


person_aggregate_id = lru_cache(maxsize=65536)(Person.create_id)
organisation_aggregate_id = lru_cache(maxsize=4096)(Organisation.create_id)
chat_aggregate_id = lru_cache(maxsize=65536)(ChatGroup.create_id)


# The facts the fold reads, by event class: the fold's method and the event's fields it takes, after (originator id,
# notification id). The reconciler's other outcomes (access, moderators, read-only) are the audit's; the fold needs
# only deletions. Every event class is either folded or named in NOT_FOLDED: one neither is refused (`UnknownEvent`).
_FOLDED_BY_EVENT: dict[str, tuple[Callable[..., None], tuple[str, ...]]] = {
    "ChatGroup.Registered": (DesiredStateFold.chat_registered,
                             ("org", "event_id", "occurred_at", "end", "responsible", "staff", "title", "start")),
    "ChatGroup.EventRecorded": (DesiredStateFold.event_recorded,
                                ("occurred_at", "end", "chat_enabled", "responsible", "staff", "title", "start")),
    "ChatGroup.StaffingChanged": (DesiredStateFold.staffing_changed, ("occurred_at", "person_id", "status")),
    "ChatGroup.Cancelled": (DesiredStateFold.cancelled, ("occurred_at",)),
    "ChatGroup.Deleted": (DesiredStateFold.deleted, ("occurred_at",)),
    "ChatGroup.ChatDeleted": (DesiredStateFold.deleted_at_backend, ("at", "generation")),
    "Organisation.Registered": (DesiredStateFold.organisation_registered, ("org",)),
    "Organisation.ChatEnabled": (DesiredStateFold.organisation_switched_on, ("occurred_at",)),
    "Organisation.ChatDisabled": (DesiredStateFold.organisation_switched_off, ("occurred_at",)),
    "Person.Registered": (DesiredStateFold.person_registered, ("org", "pseudonym", "person_id")),
    "Person.StatusChanged": (DesiredStateFold.person_status_changed, ("occurred_at", "status")),
    "Person.Forgotten": (DesiredStateFold.person_forgotten, ("at",)),
    "Person.NamedAgain": (DesiredStateFold.person_named_again, ("person_id",)),
}  # fmt: skip
FOLDED = {EVENT_CLASSES[name]: folded for name, folded in _FOLDED_BY_EVENT.items()}  # a wrong name fails at import
NOT_FOLDED: frozenset[type] = frozenset(
    EVENT_CLASSES[name]
    for name in (
        "ChatGroup.ChatCreated", "ChatGroup.AccessGranted", "ChatGroup.AccessRevoked", "ChatGroup.ModeratorChanged",
        "ChatGroup.MadeReadOnly", "ChatGroup.Reopened", "ChatGroup.DriftRepaired", "Organisation.TenantProvisioned",
    )
)  # fmt: skip
# The same by the qualified name a stored event's topic ends with, for folding from stored events without decoding.
FOLDED_BY_NAME = {event_class.__qualname__: folded for event_class, folded in FOLDED.items()}
NOT_FOLDED_NAMES = frozenset(event_class.__qualname__ for event_class in NOT_FOLDED)


class UnknownEvent(Exception):
    """The log holds an event this release's fold does not know: written by a newer release, or a class added
    without teaching the fold about it. Folding on would compute chats from part of the facts."""


def unknown_event(name: str) -> UnknownEvent:
    return UnknownEvent(f"the log holds a {name} event, which this release's projection does not know")
