"""The lifecycle policy (DESIGN.md, "Lifecycle policy"), in one module, as plain data and pure rules.

A chat lives through generations. Each generation is `active`, then `read_only` from `read_only_at`, then
`deleted` from `delete_at`; it waits in `awaiting_organisation` while the organisation's chat feature has not
been on since the generation began:

    end_eff      = min(end, cancelled_at)
    read_only_at = min(end_eff + FULL_USE, chat_disabled_at, org_disabled_at, deleted_at)
    delete_at    = min(read_only_at + VIEW, deleted_at)

The projection walks each chat's facts in event time (`occurred_at`, stored order breaking ties) through the
transition functions here (`switch_chat`, `switch_organisation`, `settle`, `delete_event`, `confirm_deleted`);
the formulas (`read_only_at`, `delete_at`, `deletion_rule`, `phase`) and the membership rule (`desired_members`)
serve the projection, `simulate`, `state`, the audit and the reconciler alike, so a rule is written down once.

A generation keeps the deadlines it had when it was deleted (`Generation.frozen`): later facts change only a
later generation, so an auditor never sees a deleted chat with a `delete_at` after the moment it was deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class Phase(StrEnum):
    AWAITING_ORGANISATION = "awaiting_organisation"
    ACTIVE = "active"
    READ_ONLY = "read_only"
    DELETED = "deleted"


MEMBER_PHASES = frozenset({Phase.ACTIVE, Phase.READ_ONLY})
MEMBER_STAFFING = frozenset({"assigned"})  # registered, declined and removed are not members
EXCLUDED_PERSON_STATUSES = frozenset({"blocked", "deleted"})


@dataclass(frozen=True)
class Policy:
    """FULL_USE and VIEW of the contract; both configurable (`--full-use P2D --view P30D`)."""

    full_use: timedelta = timedelta(days=2)
    view: timedelta = timedelta(days=30)


@dataclass
class OrganisationFeature:
    """The organisation's chat feature, as far as the lifecycle cares."""

    on: bool = False
    switched_off_at: datetime | None = None  # the last on→off switch; counts only while off
    times_switched_on: int = 0  # lets a generation tell whether the feature was on at any time since it began


@dataclass(frozen=True)
class Deadlines:
    read_only_at: datetime
    delete_at: datetime
    rule: str  # which term set delete_at: "retention", "chat disabled", "organisation disabled", "event deleted"


@dataclass
class Generation:
    """One chat at the backend; a new one starts when chat is enabled again after the previous was deleted."""

    number: int
    enabled_at: datetime
    organisation_on_at_start: bool
    organisation_switches_at_start: int
    chat_disabled_at: datetime | None = None
    deleted: bool = False  # settled: deleted for good, nothing revives it
    frozen: Deadlines | None = None  # the deadlines at the moment the generation was deleted


@dataclass
class ChatLife:
    """Everything the policy needs to know about one event's chat."""

    end: datetime
    chat_enabled: bool
    generation: Generation
    responsible: str | None = None
    staff: dict[str, str] = field(default_factory=dict)  # person_id → staffing status
    cancelled_at: datetime | None = None
    deleted_at: datetime | None = None  # event.deleted


def end_eff(chat: ChatLife) -> datetime:
    return chat.end if chat.cancelled_at is None else min(chat.end, chat.cancelled_at)


def saw_organisation_on(generation: Generation, organisation: OrganisationFeature) -> bool:
    """Whether the organisation's feature was on at any time since this generation was enabled."""
    return (
        generation.organisation_on_at_start
        or organisation.times_switched_on > generation.organisation_switches_at_start
    )


def org_disabled_at(generation: Generation, organisation: OrganisationFeature) -> datetime | None:
    """The organisation term: only while the feature is off, and only for chats that saw it on."""
    if organisation.on or not saw_organisation_on(generation, organisation):
        return None
    return organisation.switched_off_at


def read_only_at(chat: ChatLife, organisation: OrganisationFeature, policy: Policy) -> datetime:
    if chat.generation.frozen is not None:
        return chat.generation.frozen.read_only_at
    terms = [
        end_eff(chat) + policy.full_use,
        chat.generation.chat_disabled_at,
        org_disabled_at(chat.generation, organisation),
        chat.deleted_at,
    ]
    return min(t for t in terms if t is not None)


def delete_at(chat: ChatLife, organisation: OrganisationFeature, policy: Policy) -> datetime:
    if chat.generation.frozen is not None:
        return chat.generation.frozen.delete_at
    terms = [read_only_at(chat, organisation, policy) + policy.view, chat.deleted_at]
    return min(t for t in terms if t is not None)


def deletion_rule(chat: ChatLife, organisation: OrganisationFeature, policy: Policy) -> str:
    """Which term of the policy sets `delete_at`: the earliest one (the first named on a tie)."""
    if chat.generation.frozen is not None:
        return chat.generation.frozen.rule
    org_term = org_disabled_at(chat.generation, organisation)
    terms = [
        (end_eff(chat) + policy.full_use + policy.view, "retention"),
        (None if chat.generation.chat_disabled_at is None else chat.generation.chat_disabled_at + policy.view,
         "chat disabled"),
        (None if org_term is None else org_term + policy.view, "organisation disabled"),
        (chat.deleted_at, "event deleted"),
    ]  # fmt: skip
    return min(((t, rule) for t, rule in terms if t is not None), key=lambda term: term[0])[1]


def freeze(chat: ChatLife, organisation: OrganisationFeature, policy: Policy, at: datetime | None = None) -> None:
    """Fix the generation's deadlines as they are now (it is being deleted); `at` caps them (deleted earlier
    than the policy says, e.g. confirmed deleted by the backend before a late fact moved the deadline)."""
    generation = chat.generation
    if generation.frozen is not None:
        return
    read_only, delete, rule = (
        read_only_at(chat, organisation, policy), delete_at(chat, organisation, policy),
        deletion_rule(chat, organisation, policy),
    )  # fmt: skip
    if at is not None and at < delete:
        read_only, delete, rule = min(read_only, at), at, "deleted at the chat backend"
    generation.frozen = Deadlines(read_only, delete, rule)


def phase(chat: ChatLife, organisation: OrganisationFeature, policy: Policy, now: datetime) -> Phase:
    return phase_at(
        now,
        deleted=chat.generation.deleted,
        awaiting_organisation=not saw_organisation_on(chat.generation, organisation),
        read_only_at=read_only_at(chat, organisation, policy),
        delete_at=delete_at(chat, organisation, policy),
    )


def phase_at(
    now: datetime, *, deleted: bool, awaiting_organisation: bool, read_only_at: datetime, delete_at: datetime
) -> Phase:
    """The phase rule on its inputs alone, so that a stored desired-state row gives the same answer."""
    if deleted or now >= delete_at:
        return Phase.DELETED
    if awaiting_organisation:
        return Phase.AWAITING_ORGANISATION
    if now >= read_only_at:
        return Phase.READ_ONLY
    return Phase.ACTIVE


def settle(chat: ChatLife, organisation: OrganisationFeature, policy: Policy, at: datetime) -> None:
    """Before a message at time `at` touches the chat: a generation past its `delete_at` is deleted for good."""
    if not chat.generation.deleted and delete_at(chat, organisation, policy) <= at:
        freeze(chat, organisation, policy)
        chat.generation.deleted = True


def delete_event(chat: ChatLife, organisation: OrganisationFeature, policy: Policy, at: datetime) -> None:
    """`event.deleted` at `at` (call `settle` first): the chat's deadlines become fixed at once."""
    chat.deleted_at = at
    freeze(chat, organisation, policy)


def confirm_deleted(
    chat: ChatLife, organisation: OrganisationFeature, policy: Policy, generation: int, at: datetime
) -> None:
    """The backend confirmed generation `generation` deleted at `at`: whatever arrives later, it stays deleted."""
    if chat.generation.number == generation and not chat.generation.deleted:
        freeze(chat, organisation, policy, at)
        chat.generation.deleted = True


def new_generation(number: int, at: datetime, organisation: OrganisationFeature) -> Generation:
    return Generation(
        number=number,
        enabled_at=at,
        organisation_on_at_start=organisation.on,
        organisation_switches_at_start=organisation.times_switched_on,
    )


def switch_chat(chat: ChatLife, enabled: bool, at: datetime, organisation: OrganisationFeature) -> None:
    """The event's `chat_enabled` flag as a new record states it (call `settle` first).

    false→true starts a new generation if the current one was deleted, and otherwise clears the chat term (the
    chat may become active again); true→false sets the chat term; a repeated value changes nothing.
    """
    if enabled == chat.chat_enabled:
        return
    chat.chat_enabled = enabled
    if not enabled:
        chat.generation.chat_disabled_at = at
    elif chat.generation.deleted:
        chat.generation = new_generation(chat.generation.number + 1, at, organisation)
    else:
        chat.generation.chat_disabled_at = None


def switch_organisation(organisation: OrganisationFeature, on: bool, at: datetime) -> None:
    """The organisation's feature switched (call `settle` on its chats first); a repeat changes nothing."""
    if on == organisation.on:
        return
    organisation.on = on
    if on:
        organisation.times_switched_on += 1
        organisation.switched_off_at = None
    else:
        organisation.switched_off_at = at


def cancel(chat: ChatLife, at: datetime) -> None:
    """The event is over at `at` if that is earlier than its end; a second cancellation changes nothing."""
    if chat.cancelled_at is None:
        chat.cancelled_at = at


def change_staffing(staff: dict[str, str], person_id: str, status: str) -> None:
    """One person's staffing changed: `removed` takes the person off the event's staff."""
    if status == "removed":
        staff.pop(person_id, None)
    else:
        staff[person_id] = status


def desired_members(chat: ChatLife, person_statuses: dict[str, str]) -> tuple[list[str], list[str]]:
    """The membership rule: (members, moderators), sorted, ignoring the phase.

    The responsible person (also moderator) and every person whose staffing status is `assigned`, minus persons
    `blocked` or `deleted` in the organisation.
    """
    return members_among(counted_persons(chat), chat.responsible, person_statuses)


def counted_persons(chat: ChatLife) -> set[str]:
    """The persons the membership rule takes before persons' statuses are looked at: the `assigned` staff and the
    responsible person. Only their statuses can change the chat's members."""
    counted = {p for p, status in chat.staff.items() if status in MEMBER_STAFFING}
    if chat.responsible is not None:
        counted.add(chat.responsible)
    return counted


def members_among(
    counted: Iterable[str], responsible: str | None, person_statuses: dict[str, str]
) -> tuple[list[str], list[str]]:
    """The membership rule's second half: of the counted persons (`counted_persons`), those not `blocked` or
    `deleted` are members; the responsible person among them moderates."""
    members = sorted(p for p in counted if person_statuses.get(p) not in EXCLUDED_PERSON_STATUSES)
    moderators = [responsible] if responsible is not None and responsible in members else []
    return members, moderators


def next_due(deadlines: list[datetime], after: datetime) -> datetime | None:
    """The next deadline after `after`, when the phase changes by the clock alone (the reconciler's wake-up)."""
    upcoming = [d for d in deadlines if d > after]
    return min(upcoming) if upcoming else None
