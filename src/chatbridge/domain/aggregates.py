"""Event-sourced aggregates: the facts HiOrg-Server told us, one stream per organisation, event and person.

They record facts only — what a message said, with the message id and `occurred_at` it came from, because the
audit must show the source of every fact. Derived state (generations, phases, members) is computed by the
projection from these facts with `domain.lifecycle`, because it depends on several aggregates at once (a chat's
deadlines depend on its organisation's feature switch, its members on each person's status), and those
aggregates arrive on different Kafka partitions.

No names or e-mail addresses of persons are stored; a person appears only by its pseudonymous HiOrg id, which the
event mapper stores encrypted with the person's own key (journal.sealing: crypto-shredding).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event


class ChatGroup(Aggregate):
    """One HiOrg event (Dienst or Termin) that has had chat enabled at least once.

    An event whose chat was never enabled is never stored (data minimisation), so the existence of this aggregate
    is what tells later messages about the event apart from ignored ones.
    """

    @staticmethod
    def create_id(org: str, event_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/chatbridge/chat-group/{org}/{event_id}")

    @event("Registered")
    def __init__(
        self,
        org: str,
        event_id: str,
        message_id: str,
        occurred_at: datetime,
        title: str,
        start: datetime,
        end: datetime,
        responsible: str | None,
        staff: dict[str, str] | None,
    ) -> None:
        # Registered is the first `event.upserted` with chat enabled; it carries that record in full. The aggregate
        # keeps none of it as state: the staffing, the deadlines and the members are the projection's fold, in event
        # time (`projections.desired_state`), and one place folds them.
        self.org = org
        self.event_id = event_id
        self.deleted_at: datetime | None = None
        # outcomes the reconciler confirmed (below): generation → backend chat id, and who has access now
        self.backend_chats: dict[int, str] = {}
        self.chats_deleted: set[int] = set()
        self.access: set[str] = set()

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @event("EventRecorded")
    def record_event(
        self,
        message_id: str,
        occurred_at: datetime,
        title: str,
        start: datetime,
        end: datetime,
        responsible: str | None,
        chat_enabled: bool,
        staff: dict[str, str] | None,
    ) -> None:
        """A full record of the event (CDC style); `staff` None keeps the staffing, a dict replaces it."""

    @event("StaffingChanged")
    def change_staffing(self, message_id: str, occurred_at: datetime, person_id: str, status: str) -> None:
        """One person's staffing status changed (`lifecycle.change_staffing` is the rule the projection applies)."""

    @event("Cancelled")
    def cancel(self, message_id: str, occurred_at: datetime) -> None:
        """Recorded every time (it is a fact, and it settles the chat); the projection decides which one counts."""

    @event("Deleted")
    def delete(self, message_id: str, occurred_at: datetime) -> None:
        self.deleted_at = occurred_at

    # -- outcomes: what the chat backend confirmed, recorded by the reconciler (the audit's proof) --------------
    # They name the generation they acted on; the desired-state fold ignores them (it folds HiOrg's facts only).

    @event("ChatCreated")
    def record_chat_created(self, generation: int, chat_id: str, at: datetime) -> None:
        self.backend_chats[generation] = chat_id
        self.access = set()

    @event("AccessGranted")
    def record_access_granted(self, generation: int, person_id: str, at: datetime) -> None:
        self.access.add(person_id)

    @event("AccessRevoked")
    def record_access_revoked(self, generation: int, person_id: str | None, at: datetime) -> None:
        """`person_id` None: an account chatbridge never added (added by hand) was removed."""
        if person_id is not None:
            self.access.discard(person_id)

    @event("ModeratorChanged")
    def record_moderator(self, generation: int, person_id: str | None, moderator: bool, at: datetime) -> None:
        pass

    @event("MadeReadOnly")
    def record_read_only(self, generation: int, at: datetime) -> None:
        pass

    @event("Reopened")
    def record_reopened(self, generation: int, at: datetime) -> None:
        """Read-only lifted: the event was moved later, or its chat or organisation re-enabled."""

    @event("DriftRepaired")
    def record_drift_repaired(self, generation: int, drift: str, at: datetime) -> None:
        """The chat had changed at the backend under chatbridge (`drift` says how, naming no one) and was set right:
        the bridge back in the chat, rights changed by hand restored, a chat deleted by hand created again."""

    @event("ChatDeleted")
    def record_chat_deleted(self, generation: int, at: datetime, confirmation: dict[str, Any]) -> None:
        self.chats_deleted.add(generation)
        self.access = set()


class Organisation(Aggregate):
    """An organisation's chat feature and the tenant data transferred to the chat operator."""

    @staticmethod
    def create_id(org: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/chatbridge/organisation/{org}")

    @event("Registered")
    def __init__(self, org: str, message_id: str, occurred_at: datetime) -> None:
        self.org = org
        self.chat_enabled = False
        self.tenant: dict[str, Any] | None = None
        self.tenant_id: str | None = None
        self.tenant_transferred: dict[str, Any] | None = None

    @event("ChatEnabled")
    def enable_chat(self, message_id: str, occurred_at: datetime, tenant: dict[str, Any]) -> None:
        """The admin enabled the chat feature; `tenant` is exactly the data to transfer (a transfer to audit)."""
        self.chat_enabled = True
        self.tenant = tenant

    @event("ChatDisabled")
    def disable_chat(self, message_id: str, occurred_at: datetime) -> None:
        self.chat_enabled = False

    @event("TenantProvisioned")
    def record_tenant_provisioned(self, at: datetime, tenant_id: str, transferred: dict[str, Any]) -> None:
        """The chat operator confirmed the tenant holds exactly `transferred` (a transfer of data, for the audit)."""
        self.tenant_id = tenant_id
        self.tenant_transferred = transferred


class Person(Aggregate):
    """A person's status within one organisation (HiOrg's Personal-Status)."""

    @staticmethod
    def create_id(org: str, pseudonym: str) -> UUID:
        """From the person's keyed pseudonym (audit.shredding), never the HiOrg id: nothing may link back to it."""
        return uuid5(NAMESPACE_URL, f"/chatbridge/person/{org}/{pseudonym}")

    @event("Registered")
    def __init__(self, org: str, pseudonym: str, person_id: str, message_id: str, occurred_at: datetime) -> None:
        # `pseudonym` gives the aggregate its id; `person_id` is stored sealed with the person's key
        self.org = org
        self.person_id = person_id
        self.status = "active"

    @event("StatusChanged")
    def change_status(self, message_id: str, occurred_at: datetime, status: str) -> None:
        self.status = status

    @event("NamedAgain")
    def name_again(self, person_id: str, occurred_at: datetime) -> None:
        """The person, deleted, was already named by a fact dated `occurred_at`, after the deletion but stored before
        it: a new person (the contract), named here under a fresh key, since that fact's key went with the deletion.
        """
        self.person_id = person_id

    class Forgotten(Aggregate.Event):
        """Version 2 carries `key_version`; version 1 (recorded before persons had key versions) had one key."""

        class_version = 2
        pseudonym: str
        at: datetime
        reason: str
        key_version: int

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("key_version", 1)  # some version-1 events already carry it: written before it counted

    @event(Forgotten)
    def forget(self, pseudonym: str, at: datetime, reason: str, key_version: int = 1) -> None:
        """The person's keys up to version `key_version` were destroyed (crypto-shredding): what named the person
        until `at` names `pseudonym` only.

        `reason`: "person deleted" (HiOrg-Server's status: a later fact naming the person id is about a new person)
        or "gdpr forget" (an operator's erasure, for ever). Events recorded without `key_version` had one key.
        """
        self.person_id = pseudonym
        self.status = "deleted"


AGGREGATES: tuple[type[Aggregate], ...] = (ChatGroup, Organisation, Person)


def event_class(aggregate: type[Aggregate], name: str) -> type[Aggregate.Event]:
    """An aggregate's event class by its name (`ChatGroup`, "Registered"). The library makes these classes from the
    decorated methods, so a static checker does not see them as attributes; a wrong name fails here, at import."""
    found = vars(aggregate).get(name)
    if not (isinstance(found, type) and issubclass(found, Aggregate.Event)) or name in ("Event", "Created"):
        raise LookupError(f"{aggregate.__name__} has no event {name!r}")
    return found


# Every event the aggregates record, by its qualified name (`ChatGroup.Registered`): the readers of the log
# (projection, sealing, audit) dispatch on these classes and refuse one they do not know.
EVENT_CLASSES: dict[str, type[Aggregate.Event]] = {
    f"{aggregate.__name__}.{name}": event_class(aggregate, name)
    for aggregate in AGGREGATES
    for name, value in vars(aggregate).items()
    if isinstance(value, type) and issubclass(value, Aggregate.Event) and name not in ("Event", "Created")
}
