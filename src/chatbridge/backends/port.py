"""The chat backend port: what the reconciler needs from a chat server, in the domain's words.

The reconciler plans against `ActualChat` and calls these operations; the Matrix adapter (`backends.matrix`) and
the in-memory fake (`backends.fake`) implement them. Every operation is idempotent — asking for what already holds
is a success — because a level-triggered loop repeats itself after any crash or retry.

Members are named by backend user ids (for Matrix `@org.person:server`), not person ids: a chat may hold accounts
chatbridge never added (by hand), and the plan must see those to remove them. `UserIds` translates both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class BackendError(Exception):
    """The backend refused an operation for a reason a retry will not fix (bad request, forbidden, …)."""


class BackendUnavailable(BackendError):
    """The backend did not answer usefully after the bounded retries (down, timeouts, 5xx, rate limit): transient,
    the chat is tried again with backoff. A plain `BackendError` is terminal for this attempt: the chat is parked."""


class AddOutcome(StrEnum):
    """What adding a person came to. Every outcome but JOINED and ALREADY leaves the person *pending*: retried on
    later passes, with the reason shown to the operator, while the chat's other steps go on."""

    JOINED = "joined"  # the account is in the chat now
    ALREADY = "already"  # it was in the chat before (nothing changed)
    PENDING = "pending"  # no account yet
    DEACTIVATED = "deactivated"  # the account exists but was deactivated (a deactivated member leaves every chat)
    UNUSABLE_ID = "unusable_id"  # no account can exist under the id the template forms (too long for the backend)
    LOOKUP_FAILED = "lookup_failed"  # the backend answered the account look-up with neither "there" nor "not there"

    @property
    def pending(self) -> bool:
        return self not in (AddOutcome.JOINED, AddOutcome.ALREADY)

    @property
    def reason(self) -> str:
        return PENDING_REASONS.get(self, "")


PENDING_REASONS = {
    AddOutcome.PENDING: "no chat account yet",
    AddOutcome.DEACTIVATED: "chat account deactivated",
    AddOutcome.UNUSABLE_ID: "chat id too long (a Matrix id is at most 255 bytes)",
    AddOutcome.LOOKUP_FAILED: "account look-up failed",
}


@dataclass(frozen=True)
class ChatLabels:
    """What a member sees of a chat before opening it: its name, its topic, and its place among the chats of the
    organisation's tenant (a text the chats sort by). Event data only: never a person's."""

    name: str
    topic: str
    order: str


@dataclass(frozen=True)
class ActualChat:
    """A chat as the backend has it now. The bridge's own account is never among `members`."""

    chat_id: str
    members: frozenset[str] = frozenset()  # backend user ids that are in the chat or invited to it
    moderators: frozenset[str] = frozenset()  # backend user ids with moderator rights (members or not)
    read_only: bool = False
    name: str | None = None  # None: the chat shows none
    topic: str | None = None
    order: str | None = None  # None: not listed in the tenant, or listed without an order
    bridge_joined: bool = True  # False: the bridge's account is not in the chat (left, kicked): read as an admin
    levels_as_set: bool = True  # False: the rights in the chat were changed by hand (restored for its phase)


TENANT_FIELDS = ("name", "email", "address")  # the organisation's data the contract lets reach the chat operator


@dataclass(frozen=True)
class Tenant:
    """The organisation's account at the chat operator, and exactly the data transferred to provision it."""

    tenant_id: str
    transferred: dict[str, Any] = field(default_factory=dict)
    changed: bool = False  # whether this call transferred anything (False: the backend already had this data)


@dataclass(frozen=True)
class Deletion:
    """The backend's confirmation that a chat and all its content are gone (the Art. 17 proof)."""

    chat_id: str
    delete_id: str
    status: str
    media_deleted: int

    def as_record(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "delete_id": self.delete_id,
            "status": self.status,
            "media_deleted": self.media_deleted,
        }


class UserIds(Protocol):
    """A backend's naming of persons: person → account id, and back (None for accounts not of that form)."""

    def user_id(self, org: str, person_id: str) -> str: ...

    def person_of(self, user_id: str) -> tuple[str, str] | None: ...

    def unusable(self, user_id: str) -> AddOutcome | None:
        """Why no account can exist under `user_id` (AddOutcome.UNUSABLE_ID), or None: it may exist."""
        ...


@runtime_checkable
class ChatBackend(Protocol):
    """The operations of DESIGN.md, "Reconciler". A chat is found by (org, event_id, generation)."""

    def user_id(self, org: str, person_id: str) -> str: ...

    def person_of(self, user_id: str) -> tuple[str, str] | None: ...

    def unusable(self, user_id: str) -> AddOutcome | None: ...

    def ensure_tenant(self, org: str, fields: dict[str, Any]) -> Tenant:
        """Provision (or update) the organisation's tenant with exactly `fields`."""
        ...

    def get_chat(self, org: str, event_id: str, generation: int, chat_id: str | None = None) -> ActualChat | None:
        """The chat of this generation of the event, with its members and labels, or None if there is none (never
        created, or deleted). `chat_id`, when known (recorded at its creation), is read at once: one read instead of
        finding the chat first; a chat gone under that id is looked for by (org, event_id, generation)."""
        ...

    def create_chat(
        self, org: str, event_id: str, generation: int, tenant_id: str, labels: ChatLabels | None = None
    ) -> ActualChat:
        """Create the (empty) chat inside the tenant, showing `labels` from its first moment; returns the existing
        one, labelled so, if it was created before."""
        ...

    def account(self, user_id: str) -> AddOutcome | None:
        """A read: why `user_id` cannot be added now (a pending outcome), or None when its account can join."""
        ...

    def add_member(self, chat_id: str, user_id: str) -> AddOutcome: ...

    def join_bridge(self, chat_id: str) -> None:
        """Put the bridge's own account back into a chat it is not in (left, kicked), with its rights there."""
        ...

    def remove_member(self, chat_id: str, user_id: str) -> None: ...

    def set_moderator(self, chat_id: str, user_id: str, moderator: bool) -> None: ...

    def set_read_only(self, chat_id: str, read_only: bool) -> None: ...

    def set_name(self, chat_id: str, name: str) -> None: ...

    def set_topic(self, chat_id: str, topic: str) -> None: ...

    def set_order(self, chat_id: str, tenant_id: str, order: str) -> None:
        """List the chat in its tenant at `order` (the tenant's chats sort by it)."""
        ...

    def delete_chat(self, chat_id: str) -> Deletion:
        """Delete the chat with all its content (messages, uploaded files), confirmed by the backend."""
        ...

    def chat_link(self, chat_id: str) -> str:
        """A link a member can open to reach the chat (shown by HiOrg-Server's chat button)."""
        ...

    def abandon(self, cut_after: float = 0.0) -> None:
        """The process stops: no call starts or is retried any more, and calls in flight are cut after `cut_after`
        seconds, each failing as `BackendUnavailable` (so that no step is recorded as done unconfirmed)."""
        ...

    def close(self) -> None:
        """Release the backend's connections (the worker calls it when it stops)."""
        ...
