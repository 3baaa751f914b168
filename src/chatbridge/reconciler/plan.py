"""The pure diff: a chat's desired row at `now` against what the backend has → the steps that make them equal.

No I/O and no clock of its own, so it can be property-tested and printed as a dry run (`terraform plan`). The
order of the steps is part of the plan: a bridge that is not in its chat rejoins first (nothing else can be done
there without it), a chat turning read-only is locked before anything else changes (rights changed by hand are
restored there too), its name
and topic follow at once, people lose access before others gain it, a chat reopening is unlocked once its members
are right, and its place in the organisation's space comes last (a space the bridge cannot write must not keep
members out). A new chat is created with its name, topic and place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from chatbridge.backends.port import ActualChat, ChatLabels, UserIds
from chatbridge.domain.lifecycle import MEMBER_PHASES, Phase
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.reconciler.naming import RoomNaming

DEFAULT_NAMING = RoomNaming()


class StepKind(StrEnum):
    CREATE_CHAT = "create_chat"
    ADD_MEMBER = "add_member"
    REMOVE_MEMBER = "remove_member"
    SET_MODERATOR = "set_moderator"
    SET_READ_ONLY = "set_read_only"
    DELETE_CHAT = "delete_chat"
    SET_NAME = "set_name"
    SET_TOPIC = "set_topic"
    SET_ORDER = "set_order"
    JOIN_BRIDGE = "join_bridge"
    RESTORE_RIGHTS = "restore_rights"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    user_id: str | None = None  # add/remove member, set moderator: the backend account
    person_id: str | None = None  # the person behind `user_id`; None for an account chatbridge did not add
    value: bool | None = None  # set_moderator / set_read_only: on or off
    text: str | None = None  # set_name / set_topic / set_order: what the chat shows
    labels: ChatLabels | None = None  # create_chat: the name, topic and place it is created with

    def describe(self) -> str:
        """One line of the dry run, in the style of `terraform plan` (+ add, - remove, ~ change)."""
        match self.kind:
            case StepKind.CREATE_CHAT:
                return "+ create chat" + (f' "{self.labels.name}"' if self.labels else "")
            case StepKind.SET_NAME:
                return f'~ name: "{self.text}"'
            case StepKind.SET_TOPIC:
                return f'~ topic: "{self.text}"'
            case StepKind.SET_ORDER:
                return f"~ place in the organisation's space: {self.text}"
            case StepKind.DELETE_CHAT:
                return "- delete chat with all content"
            case StepKind.ADD_MEMBER:
                return f"+ member {self.user_id}"
            case StepKind.REMOVE_MEMBER:
                return f"- member {self.user_id}" + ("" if self.person_id else " (not a participant)")
            case StepKind.SET_MODERATOR:
                return f"~ moderator {self.user_id}: {'grant' if self.value else 'revoke'}"
            case StepKind.SET_READ_ONLY:
                return f"~ read-only: {'on' if self.value else 'off'}"
            case StepKind.JOIN_BRIDGE:
                return "~ the bridge rejoins the chat (it was not in it)"
            case StepKind.RESTORE_RIGHTS:
                return f"~ rights restored for a{' read-only' if self.value else 'n active'} chat (changed by hand)"
        raise AssertionError(self.kind)  # pragma: no cover

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"kind": str(self.kind)}
        if self.user_id is not None:
            document["user_id"] = self.user_id
        if self.value is not None:
            document["value"] = self.value
        if self.text is not None:
            document["text"] = self.text
        if self.labels is not None:
            document.update(name=self.labels.name, topic=self.labels.topic, order=self.labels.order)
        return document


@dataclass(frozen=True)
class Target:
    """What the chat should be at the backend at one moment."""

    phase: Phase
    exists: bool
    members: dict[str, str]  # backend user id → person id
    moderators: frozenset[str]
    read_only: bool
    labels: ChatLabels | None = None  # None: the chat's name, topic and place are left as they are


def target(desired: DesiredChat, now: datetime, ids: UserIds, naming: RoomNaming = DEFAULT_NAMING) -> Target:
    phase = desired.phase(now)
    with_members = phase in MEMBER_PHASES
    members = {ids.user_id(desired.org, p): p for p in desired.members} if with_members else {}
    moderators = frozenset(ids.user_id(desired.org, p) for p in desired.moderators) if with_members else frozenset()
    return Target(phase, phase in MEMBER_PHASES, members, moderators, phase == Phase.READ_ONLY,
                  naming.labels(desired, phase))  # fmt: skip


def person_of(ids: UserIds, org: str, user_id: str) -> str | None:
    """The person of this chat's organisation behind an account, or None (an account added by hand)."""
    found = ids.person_of(user_id)
    if found is None or found[0] not in (org, ""):
        return None
    return found[1]


def plan(
    desired: DesiredChat, actual: ActualChat | None, now: datetime, ids: UserIds, naming: RoomNaming = DEFAULT_NAMING
) -> list[Step]:
    """The steps that take `actual` (None: no chat) to `desired` as it stands at `now`, labelled by `naming`."""
    goal = target(desired, now, ids, naming)
    if goal.phase == Phase.DELETED:
        return [Step(StepKind.DELETE_CHAT)] if actual is not None else []
    if not goal.exists:  # awaiting the organisation: no chat is wanted; one that exists anyway gets no members
        if actual is None or not actual.members:
            return []
        rejoin = [] if actual.bridge_joined else [Step(StepKind.JOIN_BRIDGE)]
        removals = [Step(StepKind.REMOVE_MEMBER, u, person_of(ids, desired.org, u)) for u in sorted(actual.members)]
        return rejoin + removals
    steps: list[Step] = []
    labels = goal.labels
    if actual is None:
        steps.append(Step(StepKind.CREATE_CHAT, labels=labels))
        actual = _created(labels)
    if not actual.bridge_joined:
        steps.append(Step(StepKind.JOIN_BRIDGE))
    if goal.read_only and not actual.read_only:
        steps.append(Step(StepKind.SET_READ_ONLY, value=True))
    elif not actual.levels_as_set and goal.read_only == actual.read_only:
        steps.append(Step(StepKind.RESTORE_RIGHTS, value=goal.read_only))
    if labels is not None and actual.name != labels.name:
        steps.append(Step(StepKind.SET_NAME, text=labels.name))
    if labels is not None and actual.topic != labels.topic:
        steps.append(Step(StepKind.SET_TOPIC, text=labels.topic))
    for user_id in sorted(actual.members - goal.members.keys()):
        steps.append(Step(StepKind.REMOVE_MEMBER, user_id, person_of(ids, desired.org, user_id)))
    for user_id in sorted(goal.members.keys() - actual.members):
        steps.append(Step(StepKind.ADD_MEMBER, user_id, goal.members[user_id]))
    for user_id in sorted(actual.moderators - goal.moderators):
        steps.append(Step(StepKind.SET_MODERATOR, user_id, person_of(ids, desired.org, user_id), False))
    for user_id in sorted(goal.moderators - actual.moderators):
        steps.append(Step(StepKind.SET_MODERATOR, user_id, goal.members.get(user_id), True))
    if not goal.read_only and actual.read_only:
        steps.append(Step(StepKind.SET_READ_ONLY, value=False))
    if labels is not None and actual.order != labels.order:
        steps.append(Step(StepKind.SET_ORDER, text=labels.order))
    return steps


def _created(labels: ChatLabels | None) -> ActualChat:
    """A chat as `create_chat` makes it: empty, showing `labels`."""
    if labels is None:
        return ActualChat(chat_id="new")
    return ActualChat(chat_id="new", name=labels.name, topic=labels.topic, order=labels.order)


def apply(actual: ActualChat | None, steps: list[Step]) -> ActualChat | None:
    """The effect of `steps` on `actual` if every step succeeds: the model the property tests check `plan` with."""
    for step in steps:
        if step.kind == StepKind.CREATE_CHAT:
            actual = _created(step.labels)
            continue
        if step.kind == StepKind.DELETE_CHAT:
            actual = None
            continue
        assert actual is not None, f"{step.kind} on a chat that does not exist"
        if step.kind == StepKind.SET_NAME:
            actual = replace(actual, name=step.text)
            continue
        if step.kind == StepKind.SET_TOPIC:
            actual = replace(actual, topic=step.text)
            continue
        if step.kind == StepKind.SET_ORDER:
            actual = replace(actual, order=step.text)
            continue
        if step.kind == StepKind.JOIN_BRIDGE:
            actual = replace(actual, bridge_joined=True)
            continue
        if step.kind == StepKind.RESTORE_RIGHTS:
            actual = replace(actual, levels_as_set=True)
            continue
        members, moderators, read_only = set(actual.members), set(actual.moderators), actual.read_only
        if step.kind == StepKind.ADD_MEMBER:
            members.add(step.user_id)  # type: ignore[arg-type]
        elif step.kind == StepKind.REMOVE_MEMBER:
            members.discard(step.user_id)  # type: ignore[arg-type]
        elif step.kind == StepKind.SET_MODERATOR:
            (moderators.add if step.value else moderators.discard)(step.user_id)  # type: ignore[arg-type]
        elif step.kind == StepKind.SET_READ_ONLY:
            read_only = bool(step.value)
            actual = replace(actual, levels_as_set=True)  # the whole set of rights for the phase is written
        actual = replace(actual, members=frozenset(members), moderators=frozenset(moderators), read_only=read_only)
    return actual


def hold_deletion(actual: ActualChat | None, steps: list[Step]) -> list[Step]:
    """The steps while the deletion in `steps` waits for complete input (reconciler.knowledge): the deletion goes,
    and a chat that still takes posts is locked instead — the lock can be lifted, a deletion cannot be undone."""
    held = [step for step in steps if step.kind != StepKind.DELETE_CHAT]
    if len(held) < len(steps) and actual is not None and not actual.read_only:
        held.append(Step(StepKind.SET_READ_ONLY, value=True))
    return held
