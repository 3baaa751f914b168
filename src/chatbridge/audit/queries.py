"""The auditors' questions, answered from the event log alone (so `replay` cannot change an answer).

Each query reads the notification log in order through the application's mapper — persons appear by their
HiOrg id while their key exists, by their pseudonym once it is destroyed — and folds it with the same
`DesiredStateFold` the projection uses, to tell each fact's generation and each generation's deadlines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chatbridge.application import IntakeApplication
from chatbridge.domain.aggregates import EVENT_CLASSES, ChatGroup, Organisation
from chatbridge.domain.lifecycle import Policy
from chatbridge.domain.moments import utc_z
from chatbridge.journal.sealing import PSEUDONYM, Pseudonym
from chatbridge.projections.desired_state import ChatKey, DesiredStateFold


class NotFound(Exception):
    """An unknown organisation, event or person (the message says which)."""


def events(app: IntakeApplication) -> Iterator[Any]:
    """Every stored event, decoded, in notification order."""
    return (app.mapper.to_domain_event(notification) for notification in app.notifications())


def _is(event: Any, *names: str) -> bool:
    """Whether `event` is one of the named event classes (`EVENT_CLASSES`: a misspelt name fails, not matches)."""
    return any(type(event) is EVENT_CLASSES[name] for name in names)


# What a timeline says of each chat event; one the table lacks fails the query rather than showing a bare name.
_CHAT_WHAT = {
    "ChatGroup.Registered": "chat enabled", "ChatGroup.EventRecorded": "event record",
    "ChatGroup.StaffingChanged": "staffing changed", "ChatGroup.Cancelled": "event cancelled",
    "ChatGroup.Deleted": "event deleted", "ChatGroup.ChatCreated": "chat created (backend confirmed)",
    "ChatGroup.AccessGranted": "access granted", "ChatGroup.AccessRevoked": "access revoked",
    "ChatGroup.ModeratorChanged": "moderator", "ChatGroup.MadeReadOnly": "made read-only (backend confirmed)",
    "ChatGroup.Reopened": "reopened (backend confirmed)", "ChatGroup.DriftRepaired": "drift repaired at the backend",
    "ChatGroup.ChatDeleted": "chat deleted with all content (backend confirmed)",
}  # fmt: skip
_ORGANISATION_WHAT = {
    "Organisation.Registered": "organisation known",
    "Organisation.ChatEnabled": "organisation chat enabled",
    "Organisation.ChatDisabled": "organisation chat disabled",
    "Organisation.TenantProvisioned": "tenant provisioned at the chat operator",
}
WHAT = {EVENT_CLASSES[name]: what for name, what in {**_CHAT_WHAT, **_ORGANISATION_WHAT}.items()}


def _what(event: Any) -> str:
    try:
        return WHAT[type(event)]
    except KeyError:
        raise LookupError(f"the audit has no words for a {type(event).__qualname__} event") from None


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else utc_z(moment)


@dataclass
class GenerationRecord:
    """What the log says about one generation of one chat."""

    number: int
    enabled_at: datetime
    read_only_at: datetime | None = None
    delete_at: datetime | None = None
    rule: str | None = None
    settled: bool = False
    chat_id: str | None = None
    made_read_only_at: datetime | None = None
    deleted_at: datetime | None = None  # confirmed by the backend
    confirmation: dict[str, Any] | None = None


@dataclass
class ChatHistory:
    org: str
    event_id: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    generations: dict[int, GenerationRecord] = field(default_factory=dict)


class LogFold:
    """The log folded once: every chat's generations and outcomes, and the chosen chats' timelines.

    Facts are folded by the projection's own fold (event time); a fact's generation and each generation's deadlines
    are read off the chat's walk once the whole log is folded, so a fact that arrived late is shown in the
    generation it belongs to, and a deleted generation with the deadlines it had when it was deleted.
    """

    def __init__(self, app: IntakeApplication, policy: Policy, timelines_of: set[ChatKey] | None = None):
        self.app = app
        self.policy = policy
        self.fold = DesiredStateFold(policy=policy, pseudonym=app.persons.pseudonym, open_name=app.persons.open)
        self.histories: dict[ChatKey, ChatHistory] = {}
        self.organisations: dict[str, list[dict[str, Any]]] = {}  # org → its facts, for transfers and timelines
        self.timelines_of = timelines_of
        self.access: dict[ChatKey, list[dict[str, Any]]] = {}  # (org, event_id) → access outcomes in order
        self._outcomes: dict[ChatKey, list[Any]] = {}
        self._facts: list[tuple[ChatKey, int, dict[str, Any]]] = []  # entries whose generation the walk tells
        for notification in app.notifications():
            self._apply(app.mapper.to_domain_event(notification), notification.id)
        self._finish()

    def _apply(self, event: Any, seq: int) -> None:
        self.fold.apply(event, seq)
        if isinstance(event, Organisation.Event):
            org = self.fold.organisation_keys[event.originator_id]
            entry = self._organisation_entry(event)
            self.organisations.setdefault(org, []).append(entry)
            if _is(event, "Organisation.ChatEnabled", "Organisation.ChatDisabled"):
                for event_id in self.fold.chats_of_organisation.get(org, ()):
                    self._entry((org, event_id), entry)
            return
        if not isinstance(event, ChatGroup.Event):
            return
        key = self.fold.chat_keys[event.originator_id]
        self.histories.setdefault(key, ChatHistory(*key))
        generation = getattr(event, "generation", None)
        entry = self._chat_entry(event, generation)
        self._entry(key, entry)
        if generation is None:
            self._facts.append((key, seq, entry))
        else:
            self._outcomes.setdefault(key, []).append(event)
        if _is(event, "ChatGroup.AccessGranted", "ChatGroup.AccessRevoked", "ChatGroup.ChatDeleted"):
            self.access.setdefault(key, []).append(entry)

    def _finish(self) -> None:
        walks = {key: self.fold.walk(key) for key in self.histories}
        for key, walk in walks.items():
            history = self.histories[key]
            for view in walk.generations:
                history.generations[view.number] = GenerationRecord(
                    view.number, view.enabled_at, view.read_only_at, view.delete_at, view.rule, view.deleted
                )
        for key, seq, entry in self._facts:
            walk = walks[key]
            entry["generation"] = walk.fact_generation.get(seq)  # None: the fact changed nothing (ignored)
            if seq in walk.started_generation:
                entry["what"] = "chat enabled, generation started"
        for key, outcomes in self._outcomes.items():
            history = self.histories[key]
            for event in outcomes:
                record = history.generations.get(event.generation)
                if record is None:
                    continue
                if _is(event, "ChatGroup.ChatCreated"):
                    record.chat_id = event.chat_id
                elif _is(event, "ChatGroup.MadeReadOnly") and record.made_read_only_at is None:
                    record.made_read_only_at = event.at
                elif _is(event, "ChatGroup.ChatDeleted"):
                    record.deleted_at, record.confirmation = event.at, event.confirmation

    def _entry(self, key: ChatKey, entry: dict[str, Any]) -> None:
        if self.timelines_of is None or key in self.timelines_of:
            self.histories[key].entries.append(entry)

    @staticmethod
    def _organisation_entry(event: Any) -> dict[str, Any]:
        what = _what(event)
        details: dict[str, Any] = {}
        if _is(event, "Organisation.ChatEnabled"):
            details["tenant"] = event.tenant
        if _is(event, "Organisation.TenantProvisioned"):
            details = {"tenant_id": event.tenant_id, "transferred": event.transferred}
        at = getattr(event, "occurred_at", None) or event.at
        return {"at": _time(at), "what": what, "generation": None, "source": getattr(event, "message_id", None),
                "details": details}  # fmt: skip

    @staticmethod
    def _chat_entry(event: Any, generation: int | None) -> dict[str, Any]:
        what, details = _what(event), {}
        if _is(event, "ChatGroup.Registered", "ChatGroup.EventRecorded"):
            details = {"title": event.title, "start": _time(event.start), "end": _time(event.end),
                       "responsible": event.responsible}  # fmt: skip
            if _is(event, "ChatGroup.EventRecorded"):
                details["chat_enabled"] = event.chat_enabled
            if event.staff is not None:
                details["staff"] = dict(sorted(event.staff.items()))
        elif _is(event, "ChatGroup.StaffingChanged"):
            details = {"person": event.person_id, "status": event.status}
        elif _is(event, "ChatGroup.ChatCreated"):
            details = {"chat_id": event.chat_id}
        elif _is(event, "ChatGroup.AccessGranted"):
            details = {"person": event.person_id}
        elif _is(event, "ChatGroup.AccessRevoked"):
            details = {"person": event.person_id}
            if event.person_id is None:
                details["note"] = "an account chatbridge had not added was removed"
        elif _is(event, "ChatGroup.ModeratorChanged"):
            what, details = "moderator " + ("granted" if event.moderator else "revoked"), {"person": event.person_id}
        elif _is(event, "ChatGroup.DriftRepaired"):
            details = {"drift": event.drift}
        elif _is(event, "ChatGroup.ChatDeleted"):
            details = {"confirmation": event.confirmation}
        at = getattr(event, "occurred_at", None) or event.at
        return {"at": _time(at), "what": what, "generation": generation,
                "source": getattr(event, "message_id", None), "details": details}  # fmt: skip


def _known_organisation(app: IntakeApplication, org: str) -> None:
    if not app.recorder.select_events(Organisation.create_id(org), limit=1) and not _has_chats(app, org):
        raise NotFound(f"organisation {org!r} not found")


def _has_chats(app: IntakeApplication, org: str) -> bool:
    return any(_is(e, "ChatGroup.Registered") and e.org == org for e in events(app))


def chat_timeline(app: IntakeApplication, org: str, event_id: str, policy: Policy) -> dict[str, Any]:
    """`audit chat`: every fact and confirmed outcome of one chat, in order, with its generations."""
    if not app.recorder.select_events(ChatGroup.create_id(org, event_id), limit=1):
        _known_organisation(app, org)
        raise NotFound(f"event {event_id!r} of organisation {org!r} not found (or never had chat enabled)")
    log = LogFold(app, policy, {(org, event_id)})
    history = log.histories[(org, event_id)]
    return {
        "org": org,
        "event_id": event_id,
        "generations": [_generation_row(g) for g in sorted(history.generations.values(), key=lambda g: g.number)],
        "entries": history.entries,
    }


def _generation_row(record: GenerationRecord) -> dict[str, Any]:
    return {
        "generation": record.number,
        "enabled_at": _time(record.enabled_at),
        "chat_id": record.chat_id,
        "read_only_at": _time(record.read_only_at),
        "made_read_only_at": _time(record.made_read_only_at),
        "delete_at": _time(record.delete_at),
        "deletion_rule": record.rule,
        "deleted_at": _time(record.deleted_at),
    }


def _names_the_person(hiorg_id: str | None, pseudonym: str) -> Callable[[Any], bool]:
    """Whether a name read from the log is the person: their HiOrg id (while their key exists) or their pseudonym
    (once it is gone) — each recognised by its own kind, so a HiOrg id that looks like someone's pseudonym is not
    taken for them."""

    def names(name: Any) -> bool:
        if isinstance(name, Pseudonym):
            return name == pseudonym
        return hiorg_id is not None and name == hiorg_id

    return names


def person_access(app: IntakeApplication, org: str, person_id: str, policy: Policy) -> dict[str, Any]:
    """`audit person` (Art. 15): every chat the person had access to, from when to when.

    `person_id` is a HiOrg id; a forgotten person's pseudonym is accepted too, when no HiOrg id is spelt so."""
    persons = app.persons
    hiorg_id: str | None = person_id
    if persons.is_known(org, person_id):
        pseudonym = persons.pseudonym(org, person_id)
        forgotten = persons.is_forgotten(org, person_id)
    elif PSEUDONYM.fullmatch(person_id) and (state := persons.table.load(person_id)) is not None:
        hiorg_id, pseudonym = None, person_id
        forgotten = state.erased_until is not None and state.live() is None
    else:
        raise NotFound(f"person {person_id!r} of organisation {org!r} not found")
    names = _names_the_person(hiorg_id, pseudonym)
    log = LogFold(app, policy, set())
    rows: list[dict[str, Any]] = []
    for (chat_org, event_id), entries in sorted(log.access.items()):
        if chat_org != org:
            continue
        open_since: dict[int, str] = {}
        for entry in entries:
            generation = entry["generation"]
            person = entry["details"].get("person")
            if entry["what"] == "access granted" and names(person):
                open_since.setdefault(generation, entry["at"])
            elif generation in open_since and (
                (entry["what"] == "access revoked" and names(person)) or entry["what"].startswith("chat deleted")
            ):
                ended = "revoked" if entry["what"] == "access revoked" else "chat deleted"
                rows.append(_access_row(chat_org, event_id, generation, open_since.pop(generation), entry["at"],
                                        ended, log))  # fmt: skip
        for generation, since in open_since.items():
            rows.append(_access_row(chat_org, event_id, generation, since, None, None, log))
    return {
        "org": org,
        "person": pseudonym if forgotten else person_id,
        "forgotten": forgotten,
        "access": sorted(rows, key=lambda r: (r["from"], r["event_id"], r["generation"])),
    }


def _access_row(
    org: str, event_id: str, generation: int, since: str, until: str | None, ended: str | None, log: LogFold
) -> dict[str, Any]:
    history = log.histories[(org, event_id)]  # the organisation's own chat: event ids repeat across organisations
    record = history.generations.get(generation)
    return {"event_id": event_id, "generation": generation, "chat_id": record.chat_id if record else None,
            "from": since, "until": until, "ended_by": ended}  # fmt: skip


def deletions(
    app: IntakeApplication, org: str, policy: Policy, now: datetime, since: datetime | None
) -> dict[str, Any]:
    """`audit deletions` (Art. 17): every chat generation deleted, when, by which rule, with the backend's
    confirmation — and the generations overdue for deletion (which should be none)."""
    _known_organisation(app, org)
    log = LogFold(app, policy, set())
    deleted, overdue = [], []
    for (chat_org, event_id), history in sorted(log.histories.items()):
        if chat_org != org:
            continue
        for record in sorted(history.generations.values(), key=lambda g: g.number):
            due = record.delete_at is not None and record.delete_at <= now
            row = {"event_id": event_id, **_generation_row(record), "confirmation": record.confirmation}
            if record.deleted_at is not None:
                if since is None or record.deleted_at >= since:
                    deleted.append(row)
            elif due and record.chat_id is not None:
                overdue.append(row)
            elif due and (since is None or (record.delete_at is not None and record.delete_at >= since)):
                deleted.append({**row, "note": "never created at the chat backend: nothing to delete"})
    return {"org": org, "now": utc_z(now), "deleted": deleted, "overdue": overdue}


def transfers(app: IntakeApplication, org: str, policy: Policy) -> dict[str, Any]:
    """`audit transfers` (Art. 28/30): each transfer of organisation data to the chat operator, field by field."""
    _known_organisation(app, org)
    log = LogFold(app, policy, set())
    rows = []
    for entry in log.organisations.get(org, []):
        details = entry["details"]
        if entry["what"] == "organisation chat enabled":
            what, fields, tenant_id = "requested by the organisation (chat enabled)", details["tenant"], None
        elif entry["what"] == "tenant provisioned at the chat operator":
            what, fields, tenant_id = (
                "transferred (chat operator confirmed)",
                details["transferred"],
                details["tenant_id"],
            )
        else:
            continue
        rows.append(
            {"at": entry["at"], "what": what, "source": entry["source"], "tenant_id": tenant_id, "fields": fields}
        )
    return {"org": org, "transfers": rows}
