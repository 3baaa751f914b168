"""Crypto-shredding: every person an event names is stored encrypted with that person's own key.

A person is known to the store by a keyed pseudonym, `ps-` + HMAC-SHA256(pseudonym key, "{org}/{person_id}")
(32 hex digits), and a random AES-256-GCM key in `chatbridge_person_keys`. Wherever an event names a person (the
responsible, the staff, `person_id`), the stored event holds a token `enc1:{pseudonym}:{nonce+ciphertext}`; the
event mapper seals on the way in and opens on the way out, so aggregates, projections and `simulate` see the HiOrg
id while the key exists — and the pseudonym once it is destroyed. The Person aggregate's id is derived from the
pseudonym, never from the HiOrg id.

Destroying a key (`forget`) leaves a tombstone row (pseudonym, org, time): later events naming that person are
stored as the pseudonym alone, so a forgotten person stays forgotten even when HiOrg-Server sends the id again.
The pseudonym key lives outside the store (see `audit.settings`): with it, and a HiOrg id, an auditor can still
find the forgotten person's pseudonym and so prove when the person had access — the store alone cannot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Mapper, StoredEvent

PSEUDONYM = re.compile(r"ps-[0-9a-f]{32}")
_TOKEN = "enc1:"
KEY_TABLE = "chatbridge_person_keys"
CREATE_STATEMENTS = (
    f"CREATE TABLE IF NOT EXISTS {KEY_TABLE} ("
    "pseudonym TEXT PRIMARY KEY, org TEXT NOT NULL, person_key TEXT, created_at TEXT NOT NULL, forgotten_at TEXT)",
)

# Which fields of which stored events name persons (by the event classes' qualified names).
PERSON_FIELDS: dict[str, tuple[str, ...]] = {
    "ChatGroup.Registered": ("responsible", "staff"),
    "ChatGroup.EventRecorded": ("responsible", "staff"),
    "ChatGroup.StaffingChanged": ("person_id",),
    "ChatGroup.AccessGranted": ("person_id",),
    "ChatGroup.AccessRevoked": ("person_id",),
    "ChatGroup.ModeratorChanged": ("person_id",),
    "Person.Registered": ("person_id",),
}
_FORGOTTEN = b""  # a key row whose key is gone


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KeyTable(Protocol):
    def get_or_create(self, pseudonym: str, org: str) -> bytes: ...  # b"" when forgotten
    def get_or_create_many(self, wanted: dict[str, str]) -> dict[str, bytes]: ...  # pseudonym → org
    def get(self, pseudonym: str) -> bytes | None: ...  # None: no such person; b"": forgotten
    def destroy(self, pseudonym: str, org: str) -> bool: ...  # True if a key was destroyed now
    def forgotten_count(self) -> int: ...


class MemoryKeyTable:
    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get_or_create(self, pseudonym: str, org: str) -> bytes:
        with self._lock:
            return self._keys.setdefault(pseudonym, AESGCM.generate_key(256))

    def get_or_create_many(self, wanted: dict[str, str]) -> dict[str, bytes]:
        return {pseudonym: self.get_or_create(pseudonym, org) for pseudonym, org in wanted.items()}

    def get(self, pseudonym: str) -> bytes | None:
        return self._keys.get(pseudonym)

    def destroy(self, pseudonym: str, org: str) -> bool:
        with self._lock:
            had = bool(self._keys.get(pseudonym))
            self._keys[pseudonym] = _FORGOTTEN
            return had

    def forgotten_count(self) -> int:
        return sum(1 for key in self._keys.values() if not key)


class SQLKeyTable:
    """The key table in the store's database; `?` placeholders, converted for psycopg."""

    def __init__(self, datastore: Any, placeholder: str):
        self.datastore = datastore
        self.placeholder = placeholder

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def create_table(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            for statement in CREATE_STATEMENTS:
                c.execute(statement)

    def get_or_create(self, pseudonym: str, org: str) -> bytes:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                self._sql(
                    f"INSERT INTO {KEY_TABLE} (pseudonym, org, person_key, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pseudonym) DO NOTHING"
                ),
                (pseudonym, org, AESGCM.generate_key(256).hex(), _now()),
            )
            c.execute(self._sql(f"SELECT person_key FROM {KEY_TABLE} WHERE pseudonym = ?"), (pseudonym,))
            row = c.fetchone()
        return bytes.fromhex(row["person_key"]) if row["person_key"] else _FORGOTTEN

    def get_or_create_many(self, wanted: dict[str, str]) -> dict[str, bytes]:
        """Keys for many persons in one transaction (a batch's new persons)."""
        keys: dict[str, bytes] = {}
        pseudonyms = list(wanted)
        with self.datastore.transaction(commit=True) as c:
            c.executemany(
                self._sql(
                    f"INSERT INTO {KEY_TABLE} (pseudonym, org, person_key, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pseudonym) DO NOTHING"
                ),
                [(p, wanted[p], AESGCM.generate_key(256).hex(), _now()) for p in pseudonyms],
            )
            for start in range(0, len(pseudonyms), 500):
                chunk = pseudonyms[start : start + 500]
                c.execute(
                    self._sql(
                        f"SELECT pseudonym, person_key FROM {KEY_TABLE} "
                        f"WHERE pseudonym IN ({','.join('?' * len(chunk))})"
                    ),
                    chunk,
                )
                for row in c.fetchall():
                    keys[row["pseudonym"]] = bytes.fromhex(row["person_key"]) if row["person_key"] else _FORGOTTEN
        return keys

    def get(self, pseudonym: str) -> bytes | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self._sql(f"SELECT person_key FROM {KEY_TABLE} WHERE pseudonym = ?"), (pseudonym,))
            row = c.fetchone()
        if row is None:
            return None
        return bytes.fromhex(row["person_key"]) if row["person_key"] else _FORGOTTEN

    def destroy(self, pseudonym: str, org: str) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute(self._sql(f"SELECT person_key FROM {KEY_TABLE} WHERE pseudonym = ?"), (pseudonym,))
            row = c.fetchone()
            destroyed = row is not None and row["person_key"] is not None
            c.execute(
                self._sql(
                    f"UPDATE {KEY_TABLE} SET person_key = NULL, forgotten_at = ? "
                    "WHERE pseudonym = ? AND person_key IS NOT NULL"
                ),
                (_now(), pseudonym),
            )
            c.execute(
                self._sql(
                    f"INSERT INTO {KEY_TABLE} (pseudonym, org, person_key, created_at, forgotten_at) "
                    "VALUES (?, ?, NULL, ?, ?) ON CONFLICT (pseudonym) DO NOTHING"
                ),
                (pseudonym, org, _now(), _now()),
            )
        return destroyed

    def forgotten_count(self) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT COUNT(*) AS n FROM {KEY_TABLE} WHERE person_key IS NULL")
            return int(c.fetchone()["n"])


class PersonKeys:
    """Pseudonyms, and sealing / opening person ids with the persons' keys (cached in memory)."""

    def __init__(self, pseudonym_key: bytes, table: KeyTable, recheck_seconds: float = 1.0):
        self._pseudonym_key = pseudonym_key
        self.table = table
        self._cache: dict[str, bytes] = {}
        self._ciphers: dict[str, AESGCM] = {}
        self._recheck = recheck_seconds
        self._checked = 0.0
        self._forgotten_seen = -1
        self._lock = threading.Lock()
        self._pseudonyms: dict[tuple[str, str], str] = {}

    def pseudonym(self, org: str, person_id: str) -> str:
        """The person's keyed pseudonym; a pseudonym is its own pseudonym (a forgotten person stays one)."""
        known = self._pseudonyms.get((org, person_id))
        if known is not None:
            return known
        if PSEUDONYM.fullmatch(person_id):
            return person_id
        mac = hmac.new(self._pseudonym_key, f"{org}/{person_id}".encode(), hashlib.sha256)
        if len(self._pseudonyms) > 200_000:  # bounded: a remembered pseudonym only saves the HMAC
            self._pseudonyms.clear()
        pseudonym = self._pseudonyms[(org, person_id)] = "ps-" + mac.hexdigest()[:32]
        return pseudonym

    def _refresh(self) -> None:
        # Another process (`gdpr forget`) may have destroyed keys this process still holds: look now and then.
        now = time.monotonic()
        if now - self._checked < self._recheck:
            return
        self._checked = now
        count = self.table.forgotten_count()
        if count != self._forgotten_seen:
            self._forgotten_seen = count
            with self._lock:
                self._cache.clear()
                self._ciphers.clear()

    def _key(self, pseudonym: str, org: str | None) -> bytes | None:
        self._refresh()
        key = self._cache.get(pseudonym)
        if key is None:
            key = self.table.get_or_create(pseudonym, org) if org is not None else self.table.get(pseudonym)
            if key is None:
                return None
            with self._lock:
                self._cache[pseudonym] = key
        return key

    def _cipher(self, pseudonym: str, key: bytes) -> AESGCM:
        cipher = self._ciphers.get(pseudonym)
        if cipher is None:
            cipher = self._ciphers[pseudonym] = AESGCM(key)
        return cipher

    def prepare(self, persons: set[tuple[str, str]]) -> None:
        """Fetch or create the keys of these (org, person_id) in one transaction, before a batch is sealed."""
        self._refresh()
        wanted = {}
        for org, person_id in persons:
            pseudonym = self.pseudonym(org, person_id)
            if pseudonym != person_id and pseudonym not in self._cache:
                wanted[pseudonym] = org
        if wanted:
            keys = self.table.get_or_create_many(wanted)
            with self._lock:
                self._cache.update(keys)

    def seal(self, org: str, person_id: str) -> str:
        pseudonym = self.pseudonym(org, person_id)
        if pseudonym == person_id:
            return f"{_TOKEN}{pseudonym}:"
        key = self._key(pseudonym, org)
        if not key:
            return f"{_TOKEN}{pseudonym}:"  # forgotten: the pseudonym alone
        nonce = secrets.token_bytes(12)
        sealed = self._cipher(pseudonym, key).encrypt(nonce, person_id.encode(), pseudonym.encode())
        return f"{_TOKEN}{pseudonym}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, token: str) -> str:
        """The HiOrg id while the key exists, else the pseudonym; text that is not a token is returned as is."""
        if not token.startswith(_TOKEN):
            return token
        pseudonym, _, sealed = token[len(_TOKEN) :].partition(":")
        if not sealed:
            return pseudonym
        key = self._key(pseudonym, None)
        if not key:
            return pseudonym
        raw = base64.urlsafe_b64decode(sealed)
        try:
            return self._cipher(pseudonym, key).decrypt(raw[:12], raw[12:], pseudonym.encode()).decode()
        except InvalidTag:
            return pseudonym  # sealed with a key destroyed meanwhile (a stale cache elsewhere)

    def is_known(self, org: str, person_id: str) -> bool:
        return self.table.get(self.pseudonym(org, person_id)) is not None

    def is_forgotten(self, org: str, person_id: str) -> bool:
        return self.table.get(self.pseudonym(org, person_id)) == _FORGOTTEN

    def forget_pseudonym(self, org: str, pseudonym: str) -> None:
        if self._cache.get(pseudonym) != _FORGOTTEN:
            self.forget(org, pseudonym)

    def forget(self, org: str, person_id: str) -> bool:
        """Destroy the person's key; True if there was one to destroy."""
        pseudonym = self.pseudonym(org, person_id)
        destroyed = self.table.destroy(pseudonym, org)
        with self._lock:
            self._cache[pseudonym] = _FORGOTTEN
            self._ciphers.pop(pseudonym, None)
        return destroyed


class PersonSealingMapper(Mapper[UUID]):
    """The library's mapper, sealing the person fields of events before they are stored and opening them after.

    ChatGroup events after the first do not carry the organisation; the mapper remembers each chat's
    organisation from its Registered event (and reads that event when it has not seen it).
    """

    persons: PersonKeys
    first_event: Callable[[UUID], StoredEvent | None]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._orgs: dict[UUID, str] = {}

    def _org(self, qualname: str, originator_id: UUID, state: dict[str, Any]) -> str:
        if "org" in state:
            self._orgs[originator_id] = state["org"]
            return str(state["org"])
        org = self._orgs.get(originator_id)
        if org is None:
            first = self.first_event(originator_id)
            if first is None:
                raise LookupError(f"no Registered event for {qualname} of {originator_id}")
            org = self._orgs[originator_id] = str(super().to_domain_event(first).__dict__["org"])
        return org

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        qualname = type(domain_event).__qualname__
        fields = PERSON_FIELDS.get(qualname)
        if fields is None:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        org = self._org(qualname, domain_event.originator_id, state)
        for name in fields:
            state[name] = self._convert(state[name], lambda person: self.persons.seal(org, person))
        sealed = object.__new__(type(domain_event))
        object.__setattr__(sealed, "__dict__", state)
        return super().to_stored_event(sealed)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        domain_event = super().to_domain_event(stored_event)
        qualname = type(domain_event).__qualname__
        fields = PERSON_FIELDS.get(qualname)
        if qualname == "Person.Forgotten":  # the key goes with the fact, even if a crash came between them
            self.persons.forget_pseudonym(
                self._org(qualname, domain_event.originator_id, {}), domain_event.__dict__["pseudonym"]
            )
        if fields is not None:
            state = domain_event.__dict__
            if "org" in state:
                self._orgs[domain_event.originator_id] = state["org"]
            for name in fields:
                state[name] = self._convert(state[name], self.persons.open)
        return domain_event

    @staticmethod
    def _convert(value: Any, person: Callable[[str], str]) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):  # staff: person → status
            return {person(key): status for key, status in value.items()}
        return person(value)
