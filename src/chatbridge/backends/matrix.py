"""The Matrix adapter of the chat backend port, for Synapse (client API + Synapse admin API), over httpx.

What was measured on Synapse, and why the code does it this way:
- a tenant is a space per organisation; a chat is an end-to-end-encrypted, invite-only room without guest access,
  a child of its organisation's space. Both are found again by room aliases derived from (org, event_id,
  generation), so a crash between creating a room and recording it cannot make a second room;
- Synapse answers 200 when inviting an unknown user and when force-joining a deactivated one, so existence and
  deactivation are checked with the admin API before a force-join; such a person is *pending*;
- "already in the room" and "not in the room" (403) are successes: every operation is idempotent;
- rooms are version 12: the creator (the bridge) must not appear in the power levels' `users`;
- a purge leaves uploaded files behind, so a chat's media are deleted before the room is deleted with purge;
- a chat's name and topic are `m.room.name` and `m.room.topic`, set in the room's initial state so that no member
  ever sees it nameless; its place in the space is the `order` of the space's `m.space.child` event for it (Matrix
  lists a space's children by that text). The bridge, the rooms' creator, may change them in read-only rooms too.

Transient failures (timeouts, connection errors, 5xx, 429) are retried with exponential backoff and jitter,
honouring `retry_after_ms` / `Retry-After`; after `max_attempts` a `BackendUnavailable` tells the reconciler to
back off that chat. When the process stops, `abandon` ends that at once: no call starts or is retried any more, a
back-off wait ends, and the calls in flight are cut (their sockets shut, found through httpcore's `trace`
extension) once the grace given to them is over — a homeserver that accepts connections and never answers cannot
hold the process. A connection attempt still under way ends by its own timeout. The access token lives in the
client's headers only; error messages name the operation, never a user id or the token, and httpx's own request
log (which shows URLs with user ids) is kept at WARNING.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from chatbridge.backends.port import (
    TENANT_FIELDS,
    ActualChat,
    AddOutcome,
    BackendError,
    BackendUnavailable,
    ChatLabels,
    Deletion,
    Tenant,
)
from chatbridge.backends.settings import MatrixSettings
from chatbridge.backends.user_ids import TemplateUserIds, escape

TENANT_EVENT = "de.hiorg.chatbridge.tenant"  # the space's state event holding exactly the transferred fields
MODERATOR = 50
LOCKED = 100
PLACES_FRESH = 30.0  # seconds a space's children, read once, serve the reads of its chats (a pass reads many)
# Power levels of an active chat; read-only raises every one of them to LOCKED (members and moderators alike).
ACTIVE_LEVELS: dict[str, Any] = {"events_default": 0, "invite": MODERATOR, "state_default": MODERATOR}
ACTIVE_EVENT_LEVELS: dict[str, int] = {
    "m.reaction": 0,
    "m.room.name": MODERATOR,
    "m.room.topic": MODERATOR,
    "m.room.avatar": MODERATOR,
    "m.room.pinned_events": MODERATOR,
}

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry URLs, and URLs carry user ids


def _shut(connection: socket.socket) -> None:
    """End a call waiting on this connection at once (closing the socket would not wake a blocked read)."""
    with contextlib.suppress(OSError):  # closed already, or never connected
        connection.shutdown(socket.SHUT_RDWR)


def _path(value: str) -> str:
    return quote(value, safe="")


def _level(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _levels_as_set(levels: dict[str, Any], read_only: bool) -> bool:
    """Whether the room's power levels are those chatbridge sets for its phase: what a moderator (who may send
    power levels) changed by hand — members silenced, everyone made a moderator, names opened to all — is drift."""
    if _level(levels.get("users_default", 0)) != 0:
        return False
    events = levels.get("events", {}) if isinstance(levels.get("events"), dict) else {}
    if read_only:
        return all(_level(levels.get(key, 0)) >= LOCKED for key in ACTIVE_LEVELS) and all(
            _level(events.get(key, 0)) >= LOCKED for key in ACTIVE_EVENT_LEVELS
        )
    return all(_level(levels.get(key, 0)) == value for key, value in ACTIVE_LEVELS.items()) and all(
        _level(events.get(key, -1)) == value for key, value in ACTIVE_EVENT_LEVELS.items()
    )


class MatrixBackend:
    """The port on a Synapse homeserver, as an admin bridge user. Thread-safe (one httpx client, shared)."""

    def __init__(
        self,
        base_url: str,
        server_name: str,
        token: str,
        *,
        ids: TemplateUserIds | None = None,
        timeout: float = 10.0,
        max_attempts: int = 5,
        max_retry_after: float = 30.0,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        delete_timeout: float = 300.0,
        sleep: Callable[[float], object] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.server_name = server_name
        self.ids = ids or TemplateUserIds(server_name=server_name)
        self.max_attempts = max_attempts
        self.max_retry_after = max_retry_after
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.delete_timeout = delete_timeout
        self._abandoned = threading.Event()  # `abandon`: no call starts or is retried any more
        self._cut = threading.Event()  # the calls in flight are cut: every connection's socket shut
        self._cut_timer: threading.Timer | None = None
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # every connection made (see `_trace`)
        self._sockets_lock = threading.Lock()
        self._sleep = sleep or self._abandoned.wait  # a back-off wait ends at once when the calls are abandoned
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )
        self._bot: str | None = None
        self._lock = threading.Lock()
        self.retries = 0  # transient failures retried in place (for tests and metrics)
        # space → (read at, room → its `order` there): one read of a space serves the reads of all its chats
        self._places: dict[str, tuple[float, dict[str, str | None]]] = {}
        self._places_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: MatrixSettings) -> MatrixBackend:
        return cls(
            settings.base_url,
            settings.server_name,
            settings.access_token(),
            ids=TemplateUserIds(settings.user_id_template, settings.server_name),
            timeout=settings.timeout,
            max_attempts=settings.max_attempts,
            max_retry_after=settings.max_retry_after,
        )

    def abandon(self, cut_after: float = 0.0) -> None:
        """Stop calling the homeserver (the process is stopping): from now on no call starts and none is retried —
        each raises `BackendUnavailable`, and a back-off wait ends at once — and the calls in flight are cut after
        `cut_after` seconds unless they end first. A cut call reports nothing as done, so nothing is recorded for
        it; its chat is looked at again by the next start."""
        self._abandoned.set()
        if cut_after <= 0:
            self._cut_calls()
        elif self._cut_timer is None:
            self._cut_timer = threading.Timer(cut_after, self._cut_calls)
            self._cut_timer.daemon = True
            self._cut_timer.start()

    def _cut_calls(self) -> None:
        self._cut.set()
        with self._sockets_lock:
            sockets = list(self._sockets)
        for connection in sockets:
            _shut(connection)

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace of each request: the socket of every connection made, kept so that it can be cut."""
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        connection = info["return_value"].get_extra_info("socket")
        if connection is None:
            return
        with self._sockets_lock:
            self._sockets.add(connection)
        if self._cut.is_set():  # made while the others were being cut
            _shut(connection)

    def close(self) -> None:
        """Abandon every call at once and release the connections."""
        self.abandon()
        if self._cut_timer is not None:
            self._cut_timer.cancel()
        self._client.close()

    def __repr__(self) -> str:  # never the token
        return f"MatrixBackend({str(self._client.base_url)!r}, {self.server_name!r})"

    # -- HTTP with retries -----------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter": spread out, but never zero

    def _retry_after(self, response: httpx.Response) -> float | None:
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("retry_after_ms"), int | float):
                return float(body["retry_after_ms"]) / 1000
        except ValueError:
            pass
        header = response.headers.get("Retry-After")
        if header and header.strip().isdigit():
            return float(header)
        return None

    def _request(self, what: str, method: str, path: str, *, json: Any = None, params: Any = None) -> httpx.Response:
        """One API call; transient failures retried. `what` names the operation in errors (no ids in it)."""
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            if self._abandoned.is_set():
                raise BackendUnavailable(f"{what}: abandoned, chatbridge is stopping")
            try:
                response = self._client.request(
                    method, path, json=json, params=params, extensions={"trace": self._trace}
                )
            except httpx.TimeoutException:
                problem, delay = "timed out", self._backoff(attempt)
            except httpx.TransportError as error:
                problem, delay = f"connection failed ({type(error).__name__})", self._backoff(attempt)
            else:
                if response.status_code == 429:
                    wait = self._retry_after(response)
                    problem = "rate limited (429)"
                    if wait is not None and wait > self.max_retry_after:
                        raise BackendUnavailable(f"{what}: rate limited for {wait:.0f} s")
                    delay = wait if wait is not None else self._backoff(attempt)
                elif response.status_code >= 500:
                    problem, delay = f"HTTP {response.status_code}", self._backoff(attempt)
                else:
                    return response
            if self._abandoned.is_set():  # cut, or failed while stopping: not retried
                raise BackendUnavailable(f"{what}: abandoned, chatbridge is stopping ({problem})")
            if attempt < self.max_attempts:
                self.retries += 1
                self._sleep(delay)
        raise BackendUnavailable(f"{what}: {problem} after {self.max_attempts} attempts")

    @staticmethod
    def _error(what: str, response: httpx.Response) -> BackendError:
        try:
            body = response.json()
            code = body.get("errcode", "") if isinstance(body, dict) else ""
        except ValueError:
            code = ""
        return BackendError(f"{what}: HTTP {response.status_code} {code}".rstrip())

    @staticmethod
    def _message(response: httpx.Response) -> str:
        try:
            body = response.json()
            return str(body.get("error", "")).lower() if isinstance(body, dict) else ""
        except ValueError:
            return ""

    def _ok(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(what, method, path, **kwargs)
        if response.status_code != 200:
            raise self._error(what, response)
        return response.json()

    # -- helpers ---------------------------------------------------------------------------------------------

    def bot_user_id(self) -> str:
        with self._lock:
            if self._bot is None:
                self._bot = self._ok("whoami", "GET", "/_matrix/client/v3/account/whoami")["user_id"]
            return self._bot

    def _resolve(self, alias: str) -> str | None:
        response = self._request("resolve alias", "GET", f"/_matrix/client/v3/directory/room/{_path(alias)}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._error("resolve alias", response)
        return str(response.json()["room_id"])

    def _create_room(self, what: str, alias_local: str, body: dict[str, Any]) -> tuple[str, bool]:
        """The room's id, and whether this call made it (False: an earlier attempt did, with what it was given)."""
        body = {**body, "room_alias_name": alias_local}
        response = self._request(what, "POST", "/_matrix/client/v3/createRoom", json=body)
        if response.status_code == 200:
            return str(response.json()["room_id"]), True
        if response.status_code == 400 and "M_ROOM_IN_USE" in response.text:  # made by an earlier attempt
            room = self._resolve(f"#{alias_local}:{self.server_name}")
            if room is not None:
                return room, False
        raise self._error(what, response)

    def _state(self, what: str, room: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        path = f"/_matrix/client/v3/rooms/{_path(room)}/state/{_path(event_type)}/{_path(state_key)}"
        response = self._request(what, "GET", path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._error(what, response)
        return dict(response.json())

    def _put_state(self, what: str, room: str, event_type: str, content: dict[str, Any], state_key: str = "") -> None:
        path = f"/_matrix/client/v3/rooms/{_path(room)}/state/{_path(event_type)}/{_path(state_key)}"
        self._ok(what, "PUT", path, json=content)

    def _power_levels(self, room: str) -> dict[str, Any]:
        levels = self._state("read power levels", room, "m.room.power_levels")
        if levels is None:
            raise BackendError("read power levels: the room has none")
        return levels

    def _chat_alias(self, org: str, event_id: str, generation: int) -> str:
        return f"chatbridge.{escape(org)}.{escape(event_id)}.{generation}"

    # -- the port --------------------------------------------------------------------------------------------

    def user_id(self, org: str, person_id: str) -> str:
        return self.ids.user_id(org, person_id)

    def person_of(self, user_id: str) -> tuple[str, str] | None:
        return self.ids.person_of(user_id)

    def ensure_tenant(self, org: str, fields: dict[str, Any]) -> Tenant:
        """The organisation's space, holding exactly the contract's fields in one state event (and its name)."""
        fields = {key: fields[key] for key in TENANT_FIELDS if key in fields}
        alias_local = f"chatbridge.{escape(org)}"
        space = self._resolve(f"#{alias_local}:{self.server_name}")
        if space is None:
            space, _ = self._create_room(
                "create tenant space",
                alias_local,
                {
                    "preset": "private_chat",
                    "name": str(fields.get("name", org)),
                    "creation_content": {"type": "m.space"},
                    "initial_state": [
                        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
                        {"type": TENANT_EVENT, "state_key": "", "content": fields},
                    ],
                    "power_level_content_override": {"events_default": LOCKED, "invite": LOCKED},
                },
            )
            return Tenant(space, fields, changed=True)
        if self._state("read tenant data", space, TENANT_EVENT) == fields:
            return Tenant(space, fields, changed=False)
        self._put_state("write tenant data", space, TENANT_EVENT, fields)
        if "name" in fields:
            self._put_state("write tenant name", space, "m.room.name", {"name": str(fields["name"])})
        return Tenant(space, fields, changed=True)

    def get_chat(self, org: str, event_id: str, generation: int, chat_id: str | None = None) -> ActualChat | None:
        if chat_id is not None:  # known from its creation: one read, no alias look-up
            chat = self._read_chat(chat_id)
            if chat is not None:
                return chat
        room = self._resolve(f"#{self._chat_alias(org, event_id, generation)}:{self.server_name}")
        if room is None or room == chat_id:
            return None
        return self._read_chat(room)

    def _read_chat(self, room: str) -> ActualChat | None:
        """The room's whole state in one read (members, power levels, name, topic, parent space), or None when the
        room is gone. A room the bridge is not in (not yet, left, kicked, or being deleted) answers the client API
        with 403 though its alias resolves: the admin API reads it without membership — a state, not an error."""
        bot = self.bot_user_id()
        response = self._request("read room state", "GET", f"/_matrix/client/v3/rooms/{_path(room)}/state")
        if response.status_code == 404:
            return None
        if response.status_code == 403:
            response = self._request("read room state", "GET", f"/_synapse/admin/v1/rooms/{_path(room)}/state")
            if response.status_code in (400, 404):  # unknown to the server: deleted (or never made)
                return None
            if response.status_code != 200:
                raise self._error("read room state", response)
            state = response.json()["state"]
        elif response.status_code != 200:
            raise self._error("read room state", response)
        else:
            state = response.json()
        members: set[str] = set()
        levels: dict[str, Any] | None = None
        shown: dict[str, Any] = {}  # name, topic: what the room's state events say
        spaces: list[str] = []
        bridge: str | None = None  # the bridge's membership: join, leave, invite, … or None (never in the room)
        creator: str | None = None
        for event in state:
            kind, content = event.get("type"), event.get("content") or {}
            if kind == "m.room.create":
                creator = event.get("sender")
            elif kind == "m.room.member":
                if event["state_key"] == bot:
                    bridge = content.get("membership")
                elif content.get("membership") in ("join", "invite"):
                    members.add(event["state_key"])
            elif kind == "m.room.power_levels" and event.get("state_key") == "":
                levels = content
            elif kind in ("m.room.name", "m.room.topic") and event.get("state_key") == "":
                field = kind.rpartition(".")[2]
                shown[field] = content.get(field) if isinstance(content.get(field), str) else None
            elif kind == "m.space.parent" and event.get("state_key") and content.get("via"):
                spaces.append(event["state_key"])
        if not state:  # a room whose state is purged away (its deletion under way): gone
            return None
        if levels is None or (creator == bot and bridge is None):
            # the bridge's own room half made (its alias resolves before its state is complete), or half purged:
            # a moment later it reads whole or gone — a transition, retried, not a refusal
            raise BackendUnavailable("read room state: the chat is being made or deleted")
        moderators = frozenset(
            user for user, level in levels.get("users", {}).items() if _level(level) >= MODERATOR and user != bot
        )
        read_only = _level(levels.get("events_default", 0)) >= LOCKED
        return ActualChat(
            room, frozenset(members), moderators, read_only=read_only,
            name=shown.get("name"), topic=shown.get("topic"),
            order=self._order(spaces, room),
            bridge_joined=bridge == "join", levels_as_set=_levels_as_set(levels, read_only),
        )  # fmt: skip

    def _order(self, spaces: list[str], room: str) -> str | None:
        """The room's `order` in the space it names as its parent (chatbridge gives a chat one); None when no parent
        lists it with an order — `set_order` then lists it in its tenant again."""
        for space in sorted(spaces):
            order = self._places_in(space).get(room)
            if order is not None:
                return order
        return None

    def _places_in(self, space: str) -> dict[str, str | None]:
        """The space's children and their `order`, read at most every PLACES_FRESH seconds: a resync reads every
        chat of an organisation in a row, and reading each chat's place apart would make each chat's read cost 70 %
        more (9 ms instead of 5.5 against a local Synapse on 2 cores). Changes made by hand show at the next read
        after that; this backend's own writes show at once (`_placed`)."""
        with self._places_lock:
            cached = self._places.get(space)
        if cached is not None and time.monotonic() - cached[0] < PLACES_FRESH:
            return cached[1]
        read_at = time.monotonic()
        response = self._request("read tenant space", "GET", f"/_matrix/client/v3/rooms/{_path(space)}/state")
        if response.status_code in (403, 404):  # the bridge is not in that space: nothing listed, as far as it sees
            return {}
        if response.status_code != 200:
            raise self._error("read tenant space", response)
        places: dict[str, str | None] = {}
        for event in response.json():
            content = event.get("content") or {}
            if event.get("type") == "m.space.child" and event.get("state_key") and content.get("via"):
                order = content.get("order")
                places[event["state_key"]] = order if isinstance(order, str) else None
        with self._places_lock:
            self._places[space] = (read_at, places)
        return places

    def _placed(self, space: str, room: str, order: str | None, listed: bool = True) -> None:
        """Remember a change this backend made to a space's children (when it holds that space's)."""
        with self._places_lock:
            cached = self._places.get(space)
            if cached is not None:
                if listed:
                    cached[1][room] = order
                else:
                    cached[1].pop(room, None)

    def create_chat(
        self, org: str, event_id: str, generation: int, tenant_id: str, labels: ChatLabels | None = None
    ) -> ActualChat:
        via = {"via": [self.server_name]}
        shown = []
        if labels is not None:
            shown = [
                {"type": "m.room.name", "state_key": "", "content": {"name": labels.name}},
                {"type": "m.room.topic", "state_key": "", "content": {"topic": labels.topic}},
            ]
        room, made = self._create_room(
            "create chat",
            self._chat_alias(org, event_id, generation),
            {
                "preset": "private_chat",  # join rule invite; the guest access it would allow is forbidden below
                "initial_state": [
                    {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                    {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
                    {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
                    {"type": "m.space.parent", "state_key": tenant_id, "content": {**via, "canonical": True}},
                    *shown,
                ],
                # room version 12: the creator (the bridge) must not be listed in `users`
                "power_level_content_override": {**ACTIVE_LEVELS, "events": dict(ACTIVE_EVENT_LEVELS)},
            },
        )
        if labels is not None and not made:  # an earlier attempt made it, maybe for an event since renamed
            self.set_name(room, labels.name)
            self.set_topic(room, labels.topic)
        child = {**via, "order": labels.order} if labels is not None else via
        self._put_state("add chat to tenant space", tenant_id, "m.space.child", child, state_key=room)
        self._placed(tenant_id, room, labels.order if labels is not None else None)
        if labels is None:
            return ActualChat(room)
        return ActualChat(room, name=labels.name, topic=labels.topic, order=labels.order)

    def unusable(self, user_id: str) -> AddOutcome | None:
        return self.ids.unusable(user_id)

    def account(self, user_id: str) -> AddOutcome | None:
        """Existence and deactivation, checked with the admin API: Synapse answers 200 when inviting an unknown user
        and when force-joining a deactivated one. Any answer but 200 or 404 keeps this person pending (with that
        reason), never the chat's other steps."""
        unusable = self.unusable(user_id)
        if unusable is not None:
            return unusable
        account = self._request("look up account", "GET", f"/_synapse/admin/v2/users/{_path(user_id)}")
        if account.status_code == 404:
            return AddOutcome.PENDING
        if account.status_code != 200:
            log.warning("look up account: HTTP %d; the person stays pending", account.status_code)
            return AddOutcome.LOOKUP_FAILED
        if account.json().get("deactivated"):
            return AddOutcome.DEACTIVATED
        return None

    def add_member(self, chat_id: str, user_id: str) -> AddOutcome:
        problem = self.account(user_id)
        if problem is not None:
            return problem
        response = self._request(
            "join member", "POST", f"/_synapse/admin/v1/join/{_path(chat_id)}", json={"user_id": user_id}
        )
        if response.status_code == 200:
            return AddOutcome.JOINED
        if response.status_code == 403 and "already" in self._message(response):
            return AddOutcome.ALREADY
        if response.status_code == 404:
            return AddOutcome.PENDING  # the account went away between the two calls
        raise self._error("join member", response)

    def join_bridge(self, chat_id: str) -> None:
        """Back into a room the bridge is not in. Invited back by a member, it just joins. Otherwise (never joined,
        or kicked from a room it did not create) the admin API makes it the room's admin, which for a private room
        invites it (a force-join of itself is refused there), and it accepts the invitation. A room the bridge made
        and then left cannot be rejoined so on Synapse (room version 12 refuses its creator in the power levels'
        `users`): refused with that reason, the chat waits parked — its reads and its deletion still work."""
        joined = self._request("rejoin chat", "POST", f"/_matrix/client/v3/join/{_path(chat_id)}", json={})
        if joined.status_code == 200:  # invited back by a member (or the room is open)
            return
        bot = self.bot_user_id()
        response = self._request(
            "rejoin chat", "POST", f"/_synapse/admin/v1/rooms/{_path(chat_id)}/make_room_admin", json={"user_id": bot}
        )
        if response.status_code == 400:  # "creator must not appear in users", or no one in the room may invite
            raise BackendError(
                "rejoin chat: refused (HTTP 400); the bridge cannot get back in by itself (it made the chat and "
                "left it, or no one there may invite): a member must invite it back"
            )
        if response.status_code != 200:
            raise self._error("rejoin chat", response)
        self._ok("rejoin chat", "POST", f"/_matrix/client/v3/join/{_path(chat_id)}", json={})

    def remove_member(self, chat_id: str, user_id: str) -> None:
        response = self._request(
            "remove member",
            "POST",
            f"/_matrix/client/v3/rooms/{_path(chat_id)}/kick",
            json={"user_id": user_id, "reason": "not a participant of this event"},
        )
        if response.status_code == 200:
            return
        if response.status_code == 403 and "not in the room" in self._message(response):
            return
        raise self._error("remove member", response)

    def set_moderator(self, chat_id: str, user_id: str, moderator: bool) -> None:
        levels = self._power_levels(chat_id)
        users = dict(levels.get("users", {}))  # the bridge's own entry kept as it is: none in a room it created
        if moderator:
            users[user_id] = MODERATOR
        else:
            users.pop(user_id, None)
        self._put_state("set moderator", chat_id, "m.room.power_levels", {**levels, "users": users})

    def set_read_only(self, chat_id: str, read_only: bool) -> None:
        levels = self._power_levels(chat_id)
        events = dict(levels.get("events", {}))
        if read_only:
            changes: dict[str, Any] = {key: max(LOCKED, _level(levels.get(key, 0))) for key in ACTIVE_LEVELS}
            for key in ACTIVE_EVENT_LEVELS:
                events[key] = max(LOCKED, _level(events.get(key, 0)))
        else:
            changes = dict(ACTIVE_LEVELS)
            events.update(ACTIVE_EVENT_LEVELS)
        users = dict(levels.get("users", {}))  # the bridge's own entry kept: none in a room it created (version 12)
        # the whole set of rights for the phase: this also restores power levels changed by hand
        content = {**levels, **changes, "users_default": 0, "events": events, "users": users}
        self._put_state("set read-only", chat_id, "m.room.power_levels", content)

    def set_name(self, chat_id: str, name: str) -> None:
        self._put_state("set chat name", chat_id, "m.room.name", {"name": name})

    def set_topic(self, chat_id: str, topic: str) -> None:
        self._put_state("set chat topic", chat_id, "m.room.topic", {"topic": topic})

    def set_order(self, chat_id: str, tenant_id: str, order: str) -> None:
        via = {"via": [self.server_name]}
        self._put_state("set place in tenant space", tenant_id, "m.space.child", {**via, "order": order}, chat_id)
        self._placed(tenant_id, chat_id, order)
        # the room names its space too (where `get_chat` looks); Synapse keeps an unchanged state event as it is
        self._put_state("name tenant space", chat_id, "m.space.parent", {**via, "canonical": True}, tenant_id)

    def delete_chat(self, chat_id: str) -> Deletion:
        room = _path(chat_id)
        # out of the tenant's space first, so that the space lists no dangling child
        state = self._request("read room state", "GET", f"/_matrix/client/v3/rooms/{room}/state")
        if state.status_code == 200:
            for event in state.json():
                if event.get("type") == "m.space.parent" and event.get("state_key"):
                    self._put_state("remove chat from space", event["state_key"], "m.space.child", {}, chat_id)
                    self._placed(event["state_key"], chat_id, None, listed=False)
        media = self._ok("list media", "GET", f"/_synapse/admin/v1/room/{room}/media")
        deleted = 0
        for uri in media.get("local", []):
            server, _, media_id = uri.removeprefix("mxc://").partition("/")
            response = self._request("delete media", "DELETE", f"/_synapse/admin/v1/media/{server}/{_path(media_id)}")
            if response.status_code == 200:
                deleted += 1
            elif response.status_code != 404:
                raise self._error("delete media", response)
        delete_id = self._ok(
            "delete room", "DELETE", f"/_synapse/admin/v2/rooms/{room}", json={"purge": True, "block": False}
        )["delete_id"]
        deadline = time.monotonic() + self.delete_timeout
        wait = 0.1
        while True:
            status = self._ok("delete status", "GET", f"/_synapse/admin/v2/rooms/delete_status/{_path(delete_id)}")
            if status.get("status") == "complete":
                return Deletion(chat_id, delete_id, "complete", deleted)
            if status.get("status") == "failed":
                raise BackendError(f"delete room: purge failed ({status.get('error', 'no reason given')})")
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"delete room: purge not complete after {self.delete_timeout:.0f} s")
            self._sleep(wait)
            wait = min(wait * 2, 2.0)

    def chat_link(self, chat_id: str) -> str:
        return f"https://matrix.to/#/{quote(chat_id, safe='!:')}?via={quote(self.server_name)}"
