"""An in-memory chat backend for unit tests of the reconciler: the port's behaviour, and failures on demand.

It behaves like the Matrix adapter where the reconciler can tell: accounts that do not exist (or are deactivated)
make `add_member` pending; asking for what already holds is a success; a deleted chat is gone. Tests drift it by
hand (`chats[...]`), make it fail (`down`, `fail`), and read what it was asked (`calls`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatbridge.backends.port import (
    ActualChat,
    AddOutcome,
    BackendError,
    BackendUnavailable,
    ChatLabels,
    Deletion,
    Tenant,
)
from chatbridge.backends.user_ids import TemplateUserIds


@dataclass
class FakeChat:
    chat_id: str
    tenant_id: str
    members: set[str] = field(default_factory=set)
    moderators: set[str] = field(default_factory=set)
    read_only: bool = False
    media: int = 0
    name: str | None = None
    topic: str | None = None
    order: str | None = None  # its place in the tenant
    bridge_joined: bool = True  # False: the bridge's account left (or was kicked): tests drift it so
    levels_as_set: bool = True  # False: the rights were changed by hand

    def actual(self) -> ActualChat:
        return ActualChat(self.chat_id, frozenset(self.members), frozenset(self.moderators), self.read_only,
                          self.name, self.topic, self.order, self.bridge_joined, self.levels_as_set)  # fmt: skip


class FakeChatBackend:
    """The port in memory. `accounts` None means every account exists; a set limits them to its members."""

    def __init__(self, server_name: str = "fake", accounts: set[str] | None = None):
        self.ids = TemplateUserIds(server_name=server_name)
        self.accounts = accounts
        self.deactivated: set[str] = set()
        self.tenants: dict[str, dict[str, Any]] = {}
        self.chats: dict[tuple[str, str, int], FakeChat] = {}
        self.deletions: list[Deletion] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.down = False  # every operation raises BackendUnavailable
        self.fail: Callable[[str, tuple[Any, ...]], Exception | None] | None = None  # per-call failure injection
        self._lock = threading.Lock()
        self._serial = 0

    # -- helpers for tests -----------------------------------------------------------------------------------

    def chat(self, org: str, event_id: str, generation: int = 1) -> FakeChat | None:
        return self.chats.get((org, event_id, generation))

    def _call(self, operation: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((operation, args))
        if self.down:
            raise BackendUnavailable(f"fake backend is down ({operation})")
        if self.fail is not None:
            error = self.fail(operation, args)
            if error is not None:
                raise error

    def _by_id(self, chat_id: str) -> FakeChat:
        for chat in self.chats.values():
            if chat.chat_id == chat_id:
                return chat
        raise KeyError(chat_id)

    # -- the port --------------------------------------------------------------------------------------------

    def user_id(self, org: str, person_id: str) -> str:
        return self.ids.user_id(org, person_id)

    def person_of(self, user_id: str) -> tuple[str, str] | None:
        return self.ids.person_of(user_id)

    def ensure_tenant(self, org: str, fields: dict[str, Any]) -> Tenant:
        self._call("ensure_tenant", org)
        changed = self.tenants.get(org) != fields
        self.tenants[org] = dict(fields)
        return Tenant(f"space:{org}", dict(fields), changed)

    def unusable(self, user_id: str) -> AddOutcome | None:
        return self.ids.unusable(user_id)

    def get_chat(self, org: str, event_id: str, generation: int, chat_id: str | None = None) -> ActualChat | None:
        self._call("get_chat", org, event_id, generation)
        chat = self.chats.get((org, event_id, generation))
        return None if chat is None else chat.actual()

    def account(self, user_id: str) -> AddOutcome | None:
        self._call("account", user_id)
        if self.unusable(user_id) is not None:
            return AddOutcome.UNUSABLE_ID
        if self.accounts is not None and user_id not in self.accounts:
            return AddOutcome.PENDING
        return AddOutcome.DEACTIVATED if user_id in self.deactivated else None

    def join_bridge(self, chat_id: str) -> None:
        self._call("join_bridge", chat_id)
        self._by_id(chat_id).bridge_joined = True

    def _joined(self, chat_id: str) -> FakeChat:
        """The chat, for an operation only a member may make (as Synapse refuses it to a bridge not in the room)."""
        chat = self._by_id(chat_id)
        if not chat.bridge_joined:
            raise BackendError("fake: the bridge is not in the chat (HTTP 403)")
        return chat

    def create_chat(
        self, org: str, event_id: str, generation: int, tenant_id: str, labels: ChatLabels | None = None
    ) -> ActualChat:
        self._call("create_chat", org, event_id, generation)
        key = (org, event_id, generation)
        with self._lock:
            if key not in self.chats:
                self._serial += 1
                self.chats[key] = FakeChat(f"!room{self._serial}:{self.ids.server_name}", tenant_id)
            chat = self.chats[key]
            if labels is not None:
                chat.name, chat.topic, chat.order = labels.name, labels.topic, labels.order
        return chat.actual()

    def add_member(self, chat_id: str, user_id: str) -> AddOutcome:
        self._call("add_member", chat_id, user_id)
        chat = self._joined(chat_id)
        if self.unusable(user_id) is not None:
            return AddOutcome.UNUSABLE_ID
        if self.accounts is not None and user_id not in self.accounts:
            return AddOutcome.PENDING
        if user_id in self.deactivated:
            return AddOutcome.DEACTIVATED
        if user_id in chat.members:
            return AddOutcome.ALREADY
        chat.members.add(user_id)
        return AddOutcome.JOINED

    def remove_member(self, chat_id: str, user_id: str) -> None:
        self._call("remove_member", chat_id, user_id)
        self._joined(chat_id).members.discard(user_id)

    def set_moderator(self, chat_id: str, user_id: str, moderator: bool) -> None:
        self._call("set_moderator", chat_id, user_id, moderator)
        chat = self._joined(chat_id)
        (chat.moderators.add if moderator else chat.moderators.discard)(user_id)

    def set_read_only(self, chat_id: str, read_only: bool) -> None:
        self._call("set_read_only", chat_id, read_only)
        chat = self._joined(chat_id)
        chat.read_only, chat.levels_as_set = read_only, True

    def set_name(self, chat_id: str, name: str) -> None:
        self._call("set_name", chat_id, name)
        self._by_id(chat_id).name = name

    def set_topic(self, chat_id: str, topic: str) -> None:
        self._call("set_topic", chat_id, topic)
        self._by_id(chat_id).topic = topic

    def set_order(self, chat_id: str, tenant_id: str, order: str) -> None:
        self._call("set_order", chat_id, tenant_id, order)
        chat = self._by_id(chat_id)
        chat.tenant_id, chat.order = tenant_id, order

    def delete_chat(self, chat_id: str) -> Deletion:
        self._call("delete_chat", chat_id)
        for key, chat in list(self.chats.items()):
            if chat.chat_id == chat_id:
                del self.chats[key]
                deletion = Deletion(chat_id, f"delete-{len(self.deletions) + 1}", "complete", chat.media)
                self.deletions.append(deletion)
                return deletion
        return Deletion(chat_id, "", "complete", 0)  # already gone: idempotent

    def chat_link(self, chat_id: str) -> str:
        return f"https://matrix.to/#/{chat_id}"

    def abandon(self, cut_after: float = 0.0) -> None:
        pass  # its calls return at once: nothing is ever in flight to cut

    def close(self) -> None:
        pass
