"""The desired-state projection: facts from the event log → each chat's generation, deadlines and members.

`DesiredStateFold` folds the aggregates' events, in notification-log order, through the lifecycle policy. It keeps
per organisation the chat feature, per chat its `ChatLife`, per person the status, and the person index (person →
chats that name the person), and remembers which of them changed so that a store can write just those. The same
fold serves `simulate` (in memory), the persistent projection behind `state`, and a rebuild from an empty table —
so all three answer alike by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from chatbridge.domain import lifecycle
from chatbridge.domain.aggregates import Organisation, Person
from chatbridge.domain.lifecycle import ChatLife, OrganisationFeature, Phase, Policy

ChatKey = tuple[str, str]  # (org, event_id)
PersonKey = tuple[str, str]  # (org, person_id)


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
class Changes:
    """The rows a store must write: chats, organisations, person statuses, new person-index entries."""

    chats: set[ChatKey]
    organisations: set[str]
    persons: set[PersonKey]
    index_entries: set[tuple[str, str, str]]
    forgotten: set[PersonKey] = field(default_factory=set)  # persons now known by pseudonym: drop their old rows


@dataclass
class ChatRecord:
    """A chat as the fold keeps it: the policy's view plus bookkeeping."""

    aggregate_id: UUID
    life: ChatLife
    as_of: datetime  # the time of the latest fact that touched the chat: deadlines after it are due next


@dataclass
class DesiredStateFold:
    policy: Policy = field(default_factory=Policy)
    # the persons' keyed pseudonyms (audit.shredding): the Person aggregates' ids derive from them
    pseudonym: Callable[[str, str], str] | None = None
    organisations: dict[str, OrganisationFeature] = field(default_factory=dict)
    chats: dict[ChatKey, ChatRecord] = field(default_factory=dict)
    person_statuses: dict[PersonKey, str] = field(default_factory=dict)
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
    new_index_entries: set[tuple[str, str, str]] = field(default_factory=set)  # (org, person_id, event_id)
    forgotten_persons: set[PersonKey] = field(default_factory=set)

    # -- loading ---------------------------------------------------------------------------------------------

    def load_organisation(self, org: str, feature: OrganisationFeature) -> None:
        self.organisations[org] = feature
        self.organisation_keys[Organisation.create_id(org)] = org

    def load_chat(self, key: ChatKey, record: ChatRecord) -> None:
        self.chats[key] = record
        self.chat_keys[record.aggregate_id] = key
        self.chats_of_organisation.setdefault(key[0], set()).add(key[1])

    def load_index_entry(self, org: str, person_id: str, event_id: str) -> None:
        self.person_chats.setdefault((org, person_id), set()).add(event_id)

    def load_person(self, key: PersonKey, status: str) -> None:
        self.person_statuses[key] = status
        org, person_id = key
        self.person_keys[Person.create_id(org, self.pseudonym(org, person_id) if self.pseudonym else person_id)] = key

    # -- folding ---------------------------------------------------------------------------------------------

    def apply(self, event: Any) -> None:
        """Fold one aggregate event (as decoded from the notification log)."""
        handler = _DISPATCH.get(type(event).__qualname__)
        if handler is not None:
            handler(self, event)

    def _organisation(self, org: str) -> OrganisationFeature:
        if org not in self.organisations:
            self.organisations[org] = OrganisationFeature()
            self.organisation_keys[Organisation.create_id(org)] = org
            self.dirty_organisations.add(org)
        return self.organisations[org]

    def _touch_chat(self, key: ChatKey, at: datetime) -> ChatRecord:
        """Settle the chat before a fact at `at` changes it (DESIGN: settling)."""
        record = self.chats[key]
        lifecycle.settle(record.life, self._organisation(key[0]), self.policy, at)
        record.as_of = max(record.as_of, at)
        self.dirty_chats.add(key)
        return record

    def _index_persons(self, key: ChatKey) -> None:
        # The index keeps every person a chat ever named: a status change still finds chats it once concerned.
        org, event_id = key
        for person_id in self.named(key):
            chats = self.person_chats.setdefault((org, person_id), set())
            if event_id not in chats:
                chats.add(event_id)
                self.new_index_entries.add((org, person_id, event_id))

    def _chat_registered(self, event: Any) -> None:
        key = (event.org, event.event_id)
        organisation = self._organisation(event.org)
        life = ChatLife(
            end=event.end,
            chat_enabled=True,
            generation=lifecycle.new_generation(1, event.occurred_at, organisation),
            responsible=event.responsible,
            staff=dict(event.staff or {}),
        )
        self.load_chat(key, ChatRecord(event.originator_id, life, event.occurred_at))
        self._index_persons(key)
        self.dirty_chats.add(key)

    def named(self, key: ChatKey) -> set[str]:
        """The persons the chat names now: its staff (any status) and its responsible."""
        life = self.chats[key].life
        return set(life.staff) | ({life.responsible} if life.responsible else set())

    def _event_recorded(self, event: Any) -> None:
        key = self.chat_keys[event.originator_id]
        record = self._touch_chat(key, event.occurred_at)
        life = record.life
        lifecycle.switch_chat(life, event.chat_enabled, event.occurred_at, self._organisation(key[0]))
        life.end = event.end
        life.responsible = event.responsible
        if event.staff is not None:
            life.staff = dict(event.staff)
        self._index_persons(key)

    def _staffing_changed(self, event: Any) -> None:
        key = self.chat_keys[event.originator_id]
        life = self._touch_chat(key, event.occurred_at).life
        lifecycle.change_staffing(life.staff, event.person_id, event.status)
        self._index_persons(key)

    def _cancelled(self, event: Any) -> None:
        key = self.chat_keys[event.originator_id]
        lifecycle.cancel(self._touch_chat(key, event.occurred_at).life, event.occurred_at)

    def _deleted(self, event: Any) -> None:
        key = self.chat_keys[event.originator_id]
        self._touch_chat(key, event.occurred_at).life.deleted_at = event.occurred_at

    def _organisation_registered(self, event: Any) -> None:
        self._organisation(event.org)

    def _switch_organisation(self, org: str, on: bool, at: datetime) -> None:
        for event_id in sorted(self.chats_of_organisation.get(org, ())):
            self._touch_chat((org, event_id), at)
        lifecycle.switch_organisation(self._organisation(org), on, at)
        self.dirty_organisations.add(org)

    def _organisation_chat_enabled(self, event: Any) -> None:
        self._switch_organisation(self.organisation_keys[event.originator_id], True, event.occurred_at)

    def _organisation_chat_disabled(self, event: Any) -> None:
        self._switch_organisation(self.organisation_keys[event.originator_id], False, event.occurred_at)

    def _person_registered(self, event: Any) -> None:
        # stored at once (with the aggregate's initial status), so a projection stopped between a person's
        # Registered and StatusChanged events still knows the person when it resumes
        key = (event.org, event.person_id)
        self.person_keys[event.originator_id] = key
        self.person_statuses.setdefault(key, "active")
        self.dirty_persons.add(key)

    def _person_status_changed(self, event: Any) -> None:
        key = self.person_keys[event.originator_id]
        # a person message touches the chats that name the person now (the index also holds former ones)
        for event_id in sorted(self.person_chats.get(key, ())):
            if key[1] in self.named((key[0], event_id)):
                self._touch_chat((key[0], event_id), event.occurred_at)
        if self.person_statuses.get(key) != "deleted":  # for good: the person's key was destroyed (shredding)
            self.person_statuses[key] = event.status
        self.dirty_persons.add(key)

    def _person_forgotten(self, event: Any) -> None:
        # The key is gone: the person is known by the pseudonym from now on, in every row that named them.
        org = self.person_keys[event.originator_id][0]
        new = (org, event.pseudonym)
        olds = {self.person_keys[event.originator_id]} - {new}
        if self.pseudonym is not None:  # rows folded while the key existed may hold the HiOrg id
            known = set(self.person_statuses) | set(self.person_chats)
            olds |= {k for k in known if k[0] == org and k != new and self.pseudonym(*k) == event.pseudonym}
        for old in olds:
            self._rename_person(old, new)
        self.person_keys[event.originator_id] = new
        for event_id in sorted(self.person_chats.get(new, ())):
            if new[1] in self.named((org, event_id)):
                self._touch_chat((org, event_id), event.at)
        self.person_statuses[new] = "deleted"
        self.dirty_persons.add(new)

    def _rename_person(self, old: PersonKey, new: PersonKey) -> None:
        org = old[0]
        if old in self.person_statuses:
            self.person_statuses.setdefault(new, self.person_statuses.pop(old))
        events = self.person_chats.pop(old, set())
        self.person_chats.setdefault(new, set()).update(events)
        self.new_index_entries = {e for e in self.new_index_entries if (e[0], e[1]) != old}
        self.new_index_entries.update((org, new[1], event_id) for event_id in events)
        for event_id in events:
            life = self.chats[(org, event_id)].life
            if old[1] in life.staff:  # renamed in place: a rebuild from the log sees the pseudonym at this position
                life.staff = {(new[1] if person == old[1] else person): status for person, status in life.staff.items()}
            if life.responsible == old[1]:
                life.responsible = new[1]
            self.dirty_chats.add((org, event_id))
        for aggregate_id, key in list(self.person_keys.items()):
            if key == old:
                self.person_keys[aggregate_id] = new
        self.dirty_persons.discard(old)
        self.forgotten_persons.add(old)

    # -- reading ---------------------------------------------------------------------------------------------

    def desired(self, key: ChatKey) -> DesiredChat:
        record = self.chats[key]
        life = record.life
        organisation = self.organisations.get(key[0]) or OrganisationFeature()
        statuses = {
            p: self.person_statuses[(key[0], p)] for p in self.named(key) if (key[0], p) in self.person_statuses
        }
        members, moderators = lifecycle.desired_members(life, statuses)
        read_only_at = lifecycle.read_only_at(life, organisation, self.policy)
        delete_at = lifecycle.delete_at(life, organisation, self.policy)
        return DesiredChat(
            org=key[0],
            event_id=key[1],
            generation=life.generation.number,
            deleted=life.generation.deleted,
            awaiting_organisation=not lifecycle.saw_organisation_on(life.generation, organisation),
            read_only_at=read_only_at,
            delete_at=delete_at,
            next_due=None if life.generation.deleted else lifecycle.next_due([read_only_at, delete_at], record.as_of),
            members=members,
            moderators=moderators,
        )

    def all_desired(self) -> list[DesiredChat]:
        return [self.desired(key) for key in sorted(self.chats)]

    def take_dirty(self) -> Changes:
        """What changed since the last call; person status changes also dirty the chats that name the person."""
        for key in self.dirty_persons:
            self.dirty_chats.update((key[0], e) for e in self.person_chats.get(key, ()))
        changes = Changes(
            self.dirty_chats, self.dirty_organisations, self.dirty_persons, self.new_index_entries,
            self.forgotten_persons,
        )  # fmt: skip
        self.dirty_chats, self.dirty_organisations, self.dirty_persons = set(), set(), set()
        self.new_index_entries, self.forgotten_persons = set(), set()
        return changes

    def everything(self) -> Changes:
        """All of the fold as changes (a rebuild writes it whole)."""
        self.take_dirty()
        index = {(org, person, event) for (org, person), events in self.person_chats.items() for event in events}
        return Changes(set(self.chats), set(self.organisations), set(self.person_statuses), index)


# Keyed by the event classes' qualified names, which the library derives from the aggregates' @event names.
_DISPATCH: dict[str, Any] = {
    "ChatGroup.Registered": DesiredStateFold._chat_registered,
    "ChatGroup.EventRecorded": DesiredStateFold._event_recorded,
    "ChatGroup.StaffingChanged": DesiredStateFold._staffing_changed,
    "ChatGroup.Cancelled": DesiredStateFold._cancelled,
    "ChatGroup.Deleted": DesiredStateFold._deleted,
    "Organisation.Registered": DesiredStateFold._organisation_registered,
    "Organisation.ChatEnabled": DesiredStateFold._organisation_chat_enabled,
    "Organisation.ChatDisabled": DesiredStateFold._organisation_chat_disabled,
    "Person.Registered": DesiredStateFold._person_registered,
    "Person.StatusChanged": DesiredStateFold._person_status_changed,
    "Person.Forgotten": DesiredStateFold._person_forgotten,
}
