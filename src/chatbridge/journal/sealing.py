"""Crypto-shredding: every person an event names is stored encrypted with that person's own key.

A person is known to the store by a keyed pseudonym, `ps-` + HMAC-SHA256(pseudonym key, "{org}/{person_id}")
(32 hex digits), one per (organisation, person id) for ever. Wherever an event names a person (the responsible, the
staff, `person_id`), the stored event holds a token `enc2:{pseudonym}:{version}:{nonce+ciphertext}`, sealed with
version `version` of the person's AES-256-GCM keys (`chatbridge_person_key_versions`); the event mapper seals on the
way in and opens on the way out, so aggregates, projections and `simulate` see the HiOrg id while that key version
exists — and the pseudonym once it is destroyed. `enc1:{pseudonym}:` is a name stored as the pseudonym alone; the
previous release's `enc1:{pseudonym}:{nonce+ciphertext}` tokens open with key version 1. The Person aggregate's id is
derived from the pseudonym, never from the HiOrg id.

Erasure (`chatbridge_person_keys.erased_until`, an event time): HiOrg-Server's deletion of the person at `td`
destroys every key version existing then and moves the pseudonym's horizon to `td`. A name in a fact dated before
the horizon is stored as the pseudonym alone; a name dated from it on is about a new person and is sealed with a
fresh key version. An operator's `gdpr forget` moves the horizon to the end of time: that person never comes back
readable. The pseudonym key lives outside the store (see `audit.settings`): with it, and a HiOrg id, an auditor can
still find the forgotten person's pseudonym and so prove when the person had access — the store alone cannot.

Every erasure is also recorded outside the store (`journal.erasures`) before the keys go, so that a restored backup,
which still holds them, has them destroyed again (`PersonKeys.reapply`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Mapper, PersistenceError, StoredEvent
from eventsourcing.utils import get_topic

from chatbridge.domain.aggregates import EVENT_CLASSES
from chatbridge.domain.moments import stamp, stamp_now
from chatbridge.journal.erasures import Erasure, ErasureLog, installation_of
from chatbridge.journal.sql import Placeholders, insert_rows

PSEUDONYM = re.compile(r"ps-[0-9a-f]{32}")


class Pseudonym(str):
    """A person named by their pseudonym alone — read from a stored token whose key is gone, or written so on
    purpose — never a HiOrg id, whatever it looks like. HiOrg ids arrive as plain strings and are always turned into
    pseudonyms by the HMAC; only this type is sealed as a pseudonym, so no input reaches the pseudonym namespace
    (a HiOrg id of the form `ps-` + 32 hex digits is just another id)."""

    __slots__ = ()


_PSEUDONYM_ONLY = "enc1:"  # enc1:{pseudonym}: — and the previous release's tokens, sealed with key version 1
_TOKEN = "enc2:"  # enc2:{pseudonym}:{version}:{nonce+ciphertext}
FOREVER = datetime.max.replace(tzinfo=UTC)  # the horizon of an operator's erasure
KEY_TABLE = "chatbridge_person_keys"  # one row per pseudonym: its organisation and erasure horizon
VERSION_TABLE = "chatbridge_person_key_versions"  # one row per key version (person_key NULL: destroyed)
KEY_TABLES = (KEY_TABLE, VERSION_TABLE)
# the key table's columns a store of an earlier release lacks
CREATE_STATEMENTS = (
    # person_key: the previous release's single key, moved to version 1 when the store is opened
    f"CREATE TABLE IF NOT EXISTS {KEY_TABLE} ("
    "pseudonym TEXT PRIMARY KEY, org TEXT NOT NULL, person_key TEXT, created_at TEXT NOT NULL, forgotten_at TEXT, "
    "erased_until TEXT, named_until TEXT)",
    f"CREATE INDEX IF NOT EXISTS {KEY_TABLE}_forgotten ON {KEY_TABLE} (forgotten_at)",  # erasures(), each batch
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    "pseudonym TEXT NOT NULL, version INTEGER NOT NULL, person_key TEXT, created_at TEXT NOT NULL, "
    "destroyed_at TEXT, PRIMARY KEY (pseudonym, version))",
)

# Which fields of which events name persons; every other event of the aggregates names none. An event class the
# aggregates do not have is refused: sealing must never store a person's id in the clear because it did not know.
_PERSON_FIELDS_BY_EVENT: dict[str, tuple[str, ...]] = {
    "ChatGroup.Registered": ("responsible", "staff"),
    "ChatGroup.EventRecorded": ("responsible", "staff"),
    "ChatGroup.StaffingChanged": ("person_id",),
    "ChatGroup.AccessGranted": ("person_id",),
    "ChatGroup.AccessRevoked": ("person_id",),
    "ChatGroup.ModeratorChanged": ("person_id",),
    "Person.Registered": ("person_id",),
    "Person.NamedAgain": ("person_id",),
}
PERSON_FIELDS: dict[type, tuple[str, ...]] = {
    event_class: _PERSON_FIELDS_BY_EVENT.get(name, ()) for name, event_class in EVENT_CLASSES.items()
}
if set(_PERSON_FIELDS_BY_EVENT) - set(EVENT_CLASSES):
    raise LookupError(f"sealing names events the aggregates lack: {set(_PERSON_FIELDS_BY_EVENT) - set(EVENT_CLASSES)}")
FORGOTTEN = EVENT_CLASSES["Person.Forgotten"]


def person_fields(domain_event: Any) -> tuple[str, ...]:
    """The fields of `domain_event` that name persons; raises `LookupError` for an event the aggregates lack."""
    try:
        return PERSON_FIELDS[type(domain_event)]
    except KeyError:
        raise LookupError(f"{type(domain_event).__qualname__} is not an event of chatbridge's aggregates") from None


def _format(moment: datetime) -> str:
    # fixed width, UTC: the text sorts as the time does (the SQL compares horizons as text)
    return stamp(_utc(moment))


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)  # the fixed format above, with its Z


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class KeyState:
    """What the store holds about one pseudonym: its key versions (None: destroyed) and its erasure horizon."""

    erased_until: datetime | None = None
    keys: dict[int, bytes | None] = field(default_factory=dict)
    named_until: datetime | None = None  # the latest time of a stored fact that named the person in a chat

    @property
    def latest(self) -> int:
        return max(self.keys, default=0)

    def live(self, above: int = 0) -> int | None:
        """The newest version above `above` whose key still exists."""
        return max((v for v, key in self.keys.items() if key and v > above), default=None)

    def copy(self) -> KeyState:
        return KeyState(self.erased_until, dict(self.keys), self.named_until)


class KeyTable(Protocol):
    def load_many(self, wanted: dict[str, str]) -> dict[str, KeyState]: ...  # pseudonym → org; new ones get key 1
    def load(self, pseudonym: str) -> KeyState | None: ...  # None: no such person
    def add_version(self, pseudonym: str, org: str, version: int) -> bytes | None: ...  # None: destroyed already
    def erase(self, pseudonym: str, org: str, until: datetime, up_to: int | None) -> bool: ...  # True: a key went
    def erasures(self) -> object: ...  # a value that changes whenever any erasure is done
    def note_named(self, named: dict[str, datetime]) -> None: ...  # pseudonym → the latest fact naming them
    def load_states(self, pseudonyms: list[str]) -> dict[str, KeyState]: ...  # read only; unknown ones left out


class MemoryKeyTable:
    def __init__(self) -> None:
        self._states: dict[str, KeyState] = {}
        self._erasures = 0
        self._lock = threading.Lock()

    def load_many(self, wanted: dict[str, str]) -> dict[str, KeyState]:
        with self._lock:
            loaded = {}
            for pseudonym in wanted:
                state = self._states.setdefault(pseudonym, KeyState())
                if not state.keys:
                    state.keys[1] = AESGCM.generate_key(256)
                loaded[pseudonym] = state.copy()
            return loaded

    def load(self, pseudonym: str) -> KeyState | None:
        with self._lock:
            state = self._states.get(pseudonym)
            return None if state is None else state.copy()

    def load_states(self, pseudonyms: list[str]) -> dict[str, KeyState]:
        with self._lock:
            return {p: self._states[p].copy() for p in pseudonyms if p in self._states}

    def add_version(self, pseudonym: str, org: str, version: int) -> bytes | None:
        with self._lock:
            keys = self._states.setdefault(pseudonym, KeyState()).keys
            return keys.setdefault(version, AESGCM.generate_key(256))

    def erase(self, pseudonym: str, org: str, until: datetime, up_to: int | None) -> bool:
        with self._lock:
            state = self._states.setdefault(pseudonym, KeyState())
            doomed = [v for v, key in state.keys.items() if key and (up_to is None or v <= up_to)]
            for version in doomed:
                state.keys[version] = None
            state.keys.setdefault(1, None)  # a person erased before ever keyed: their first key is gone too
            if up_to is not None and up_to > 1:
                state.keys.setdefault(up_to, None)  # (see SQLKeyTable.erase)
            state.erased_until = max(state.erased_until or until, until)
            self._erasures += 1
            return bool(doomed)

    def erasures(self) -> object:
        return self._erasures

    def note_named(self, named: dict[str, datetime]) -> None:
        with self._lock:
            for pseudonym, at in named.items():
                state = self._states.setdefault(pseudonym, KeyState())
                state.named_until = max(state.named_until or at, at)


class SQLKeyTable(Placeholders):
    """The key tables in the store's database; `?` placeholders, converted for psycopg."""

    def __init__(self, datastore: Any, placeholder: str):
        self.datastore = datastore
        self.placeholder = placeholder

    def database(self) -> Path | None:
        """The SQLite file the tables are in (None: PostgreSQL, or SQLite in memory)."""
        name = getattr(getattr(self.datastore, "pool", None), "db_name", None)
        return None if not name or ":memory:" in name or "mode=memory" in name else Path(name)

    def export_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Every row of the two key tables (live keys, destroyed ones, horizons), to be put back into a store made
        afresh (`import_rows`)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT pseudonym, org, created_at, forgotten_at, erased_until FROM {KEY_TABLE}")
            persons = [tuple(row[k] for k in ("pseudonym", "org", "created_at", "forgotten_at", "erased_until"))
                       for row in c.fetchall()]  # fmt: skip
            c.execute(f"SELECT pseudonym, version, person_key, created_at, destroyed_at FROM {VERSION_TABLE}")
            versions = [tuple(row[k] for k in ("pseudonym", "version", "person_key", "created_at", "destroyed_at"))
                        for row in c.fetchall()]  # fmt: skip
        return persons, versions

    def import_rows(self, rows: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]) -> None:
        """Put exported rows back; a row the store has already stays. When the persons were named last is left
        out: no fact of the store made afresh names them yet."""
        persons, versions = rows
        with self.datastore.transaction(commit=True) as c:
            insert_rows(
                c,
                f"INSERT INTO {KEY_TABLE} (pseudonym, org, created_at, forgotten_at, erased_until) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pseudonym) DO NOTHING",
                persons,
                self.placeholder,
            )
            insert_rows(
                c,
                f"INSERT INTO {VERSION_TABLE} (pseudonym, version, person_key, created_at, destroyed_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pseudonym, version) DO NOTHING",
                versions,
                self.placeholder,
            )

    def create_table(self) -> None:
        """Create the tables when they are not there. A store of an earlier release (one key per person, kept in
        the key table's `person_key`) is brought to key versions and horizons by `journal.schema`'s migrations."""
        for attempt in (1, 2, 3):
            try:
                self._create_tables()
                break
            except PersistenceError:  # replicas starting at once race to create the same table
                if attempt == 3:
                    raise
                time.sleep(0.2 * attempt)

    def _create_tables(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            for statement in CREATE_STATEMENTS:
                c.execute(statement)

    def _select(self, c: Any, pseudonyms: list[str]) -> dict[str, KeyState]:
        states: dict[str, KeyState] = {}
        # SQLite caps the bound parameters; PostgreSQL takes them all as one array
        step = 500 if self.placeholder == "?" else max(len(pseudonyms), 1)
        for start in range(0, len(pseudonyms), step):
            chunk = pseudonyms[start : start + step]
            match, params = (
                (f"IN ({','.join('?' * len(chunk))})", chunk) if self.placeholder == "?" else ("= ANY(%s)", [chunk])
            )
            c.execute(
                self._sql(f"SELECT pseudonym, erased_until, named_until FROM {KEY_TABLE} WHERE pseudonym {match}"),
                params,
            )
            for row in c.fetchall():
                states[row["pseudonym"]] = KeyState(_parse(row["erased_until"]), named_until=_parse(row["named_until"]))
            c.execute(
                self._sql(f"SELECT pseudonym, version, person_key FROM {VERSION_TABLE} WHERE pseudonym {match}"),
                params,
            )
            for row in c.fetchall():
                if row["pseudonym"] in states:
                    key = row["person_key"]
                    states[row["pseudonym"]].keys[int(row["version"])] = bytes.fromhex(key) if key else None
        return states

    def load_many(self, wanted: dict[str, str]) -> dict[str, KeyState]:
        """The states of many persons in one transaction (a batch's persons); new ones get their first key."""
        pseudonyms = sorted(wanted)  # in one order: replicas inserting the same persons wait, never deadlock
        now = stamp_now()
        with self.datastore.transaction(commit=True) as c:
            insert_rows(  # one statement on PostgreSQL, not a round trip per person
                c,
                f"INSERT INTO {KEY_TABLE} (pseudonym, org, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (pseudonym) DO NOTHING",
                [(p, wanted[p], now) for p in pseudonyms],
                self.placeholder,
            )
            insert_rows(  # every pseudonym has a version 1 (an erasure writes it destroyed): only new ones get it
                c,
                f"INSERT INTO {VERSION_TABLE} (pseudonym, version, person_key, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (pseudonym, version) DO NOTHING",
                [(p, 1, AESGCM.generate_key(256).hex(), now) for p in pseudonyms],
                self.placeholder,
            )
            return self._select(c, pseudonyms)

    def load(self, pseudonym: str) -> KeyState | None:
        with self.datastore.transaction(commit=False) as c:
            return self._select(c, [pseudonym]).get(pseudonym)

    def load_states(self, pseudonyms: list[str]) -> dict[str, KeyState]:
        with self.datastore.transaction(commit=False) as c:
            return self._select(c, pseudonyms)

    def add_version(self, pseudonym: str, org: str, version: int) -> bytes | None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                self._sql(
                    f"INSERT INTO {VERSION_TABLE} (pseudonym, version, person_key, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pseudonym, version) DO NOTHING"
                ),
                (pseudonym, version, AESGCM.generate_key(256).hex(), stamp_now()),
            )
            c.execute(
                self._sql(f"SELECT person_key FROM {VERSION_TABLE} WHERE pseudonym = ? AND version = ?"),
                (pseudonym, version),
            )
            key = c.fetchone()["person_key"]
        return bytes.fromhex(key) if key else None

    def erase(self, pseudonym: str, org: str, until: datetime, up_to: int | None) -> bool:
        now, horizon = stamp_now(), _format(until)
        bound = "" if up_to is None else " AND version <= ?"
        params: tuple[Any, ...] = (pseudonym,) if up_to is None else (pseudonym, up_to)
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                self._sql(f"SELECT COUNT(*) AS n FROM {VERSION_TABLE} WHERE pseudonym = ? AND person_key IS NOT NULL"
                          + bound),
                params,
            )  # fmt: skip
            destroyed = int(c.fetchone()["n"]) > 0
            c.execute(
                self._sql(
                    f"UPDATE {VERSION_TABLE} SET person_key = NULL, destroyed_at = ? "
                    "WHERE pseudonym = ? AND person_key IS NOT NULL" + bound
                ),
                (now, *params),
            )
            c.execute(
                self._sql(
                    f"INSERT INTO {KEY_TABLE} (pseudonym, org, created_at, forgotten_at, erased_until) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pseudonym) DO NOTHING"
                ),
                (pseudonym, org, now, now, horizon),
            )
            # the newest destroyed version is kept as a row even when this store never had it (an erasure
            # re-applied to a restored backup): a key made later for a new person gets a number above it
            for version in sorted({1, up_to or 1}):
                c.execute(
                    self._sql(
                        f"INSERT INTO {VERSION_TABLE} (pseudonym, version, person_key, created_at, destroyed_at) "
                        "VALUES (?, ?, NULL, ?, ?) ON CONFLICT (pseudonym, version) DO NOTHING"
                    ),
                    (pseudonym, version, now, now),
                )
            c.execute(
                self._sql(
                    f"UPDATE {KEY_TABLE} SET forgotten_at = ?, erased_until = CASE "
                    "WHEN erased_until IS NULL OR erased_until < ? THEN ? ELSE erased_until END WHERE pseudonym = ?"
                ),
                (now, horizon, horizon, pseudonym),
            )
        return destroyed

    def note_named(self, named: dict[str, datetime]) -> None:
        with self.datastore.transaction(commit=True) as c:
            write_named(c, self.placeholder, named)

    def erasures(self) -> object:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT COUNT(*) AS n, MAX(forgotten_at) AS last FROM {KEY_TABLE} WHERE forgotten_at IS NOT NULL"
            )
            row = c.fetchone()
            return (int(row["n"]), row["last"])


def write_named(c: Any, placeholder: str, named: dict[str, datetime]) -> None:
    """Move each pseudonym's `named_until` on to the given time (never back), in the transaction of `c`: the storing
    transaction of the facts that named them (`journal.intake`), or one of its own."""
    rows = sorted((pseudonym, _format(at)) for pseudonym, at in named.items())  # one order: no deadlock
    if not rows:
        return
    if placeholder != "?":  # one statement, not a round trip per person
        c.execute(
            f"UPDATE {KEY_TABLE} AS k SET named_until = CASE WHEN k.named_until IS NULL "
            "OR k.named_until < u.at THEN u.at ELSE k.named_until END "
            "FROM unnest(%b::text[], %b::text[]) AS u(pseudonym, at) WHERE k.pseudonym = u.pseudonym",
            [[p for p, _ in rows], [at for _, at in rows]],
        )
        return
    c.executemany(
        f"UPDATE {KEY_TABLE} SET named_until = CASE WHEN named_until IS NULL OR named_until < ? THEN ? "
        "ELSE named_until END WHERE pseudonym = ?",
        [(at, at, pseudonym) for pseudonym, at in rows],
    )


class _Erasure(NamedTuple):
    org: str
    until: datetime
    up_to: int  # the newest key version that goes


class PersonKeys:
    """Pseudonyms, and sealing / opening person ids with the persons' keys (cached in memory)."""

    def __init__(
        self, pseudonym_key: bytes, table: KeyTable, recheck_seconds: float = 1.0, erasure_log: ErasureLog | None = None
    ):
        self._pseudonym_key = pseudonym_key
        self.table = table
        self.installation = installation_of(pseudonym_key)
        # where every erasure is recorded outside the store (bootstrap gives a store its log; `simulate` and unit
        # tests record none)
        self.erasure_log = erasure_log
        self._states: dict[str, KeyState] = {}
        self._ciphers: dict[tuple[str, int], AESGCM] = {}
        self._sealed: dict[tuple[str, int], str] = {}  # (pseudonym, key version) → the token naming the person
        # pseudonym → its token while the person has no erasure horizon and none is planned: whatever the fact's
        # time, sealing then gives this token (dropped whenever the person's keys are looked at again)
        self._unerased: dict[str, str] = {}
        # erasures decided by the batch being taken in, carried out once it is stored (`erase_planned`)
        self._planned: dict[str, _Erasure] = {}
        self._recheck = recheck_seconds
        self._checked = 0.0
        self._erasures_seen: object = None
        self._lock = threading.Lock()
        self._pseudonyms: dict[tuple[str, str], str] = {}
        self._epoch = 0  # counts the times a key held here may have been destroyed

    def epoch(self) -> int:
        """Changes whenever a key this process held may have been destroyed (here, or by another process as far as
        the once-a-second look sees): a name opened before stays valid while it does not change."""
        self._refresh()
        return self._epoch

    def pseudonym(self, org: str, person_id: str) -> str:
        """The person's keyed pseudonym; a `Pseudonym` (a person already named by it alone) is its own."""
        if isinstance(person_id, Pseudonym):
            return person_id
        known = self._pseudonyms.get((org, person_id))
        if known is not None:
            return known
        mac = hmac.new(self._pseudonym_key, f"{org}/{person_id}".encode(), hashlib.sha256)
        if len(self._pseudonyms) > 200_000:  # bounded: a remembered pseudonym only saves the HMAC
            self._pseudonyms.clear()
        pseudonym = self._pseudonyms[(org, person_id)] = Pseudonym("ps-" + mac.hexdigest()[:32])
        return pseudonym

    def _refresh(self, *, now_please: bool = False) -> None:
        # Another process (`gdpr forget`, another replica) may have destroyed keys this process still holds.
        now = time.monotonic()
        if now - self._checked < self._recheck and not now_please:
            return
        self._checked = now
        erasures = self.table.erasures()
        if erasures != self._erasures_seen:
            self._erasures_seen = erasures
            with self._lock:
                self._states.clear()
                self._ciphers.clear()
                self._sealed.clear()
                self._unerased.clear()
                self._epoch += 1

    def _state(self, pseudonym: str, org: str | None, reload: bool = False) -> KeyState | None:
        """The pseudonym's keys and horizon; `org` given: created (with a first key) when unknown."""
        self._refresh()
        state = None if reload else self._states.get(pseudonym)
        if state is None:
            state = self.table.load_many({pseudonym: org})[pseudonym] if org is not None else self.table.load(pseudonym)
            if state is None:
                return None
            with self._lock:
                self._states[pseudonym] = state
                self._unerased.pop(pseudonym, None)
        return state

    def _cipher(self, pseudonym: str, version: int, key: bytes) -> AESGCM:
        cipher = self._ciphers.get((pseudonym, version))
        if cipher is None:
            cipher = self._ciphers[(pseudonym, version)] = AESGCM(key)
        return cipher

    def prepare(self, persons: set[tuple[str, str]], *, recheck: bool = True) -> None:
        """Fetch or create the keys of these (org, person_id) in one transaction, before a batch is sealed.

        Whether another process erased anyone is asked every batch (one indexed query), not once a second: a name
        sealed with a key another replica destroyed meanwhile could never be read again. A key version another
        process made is found when sealing looks again. `recheck=False`: asked as sealing asks (once a second),
        for a batch whose intake asked already."""
        self._refresh(now_please=recheck)
        wanted = {}
        for org, person_id in persons:
            pseudonym = self.pseudonym(org, person_id)
            if pseudonym is not person_id and pseudonym not in self._states:
                wanted[pseudonym] = org
        if wanted:
            states = self.table.load_many(wanted)  # made when unknown, in one transaction
            with self._lock:
                self._states.update(states)

    def preload(self, pseudonyms: Iterable[str]) -> None:
        """Read the keys of many persons in a few queries, before many of their tokens are opened."""
        self._refresh()
        wanted = [p for p in set(pseudonyms) if p not in self._states]
        if wanted:
            states = self.table.load_states(wanted)
            with self._lock:
                self._states.update(states)

    def seal(self, org: str, person_id: str, at: datetime, renew: bool = True) -> str:
        """The token naming the person in a fact of time `at`: the pseudonym alone when `at` is before the person's
        erasure, else sealed with the newest key. `renew`: a fact that may start a new person after an erasure
        (HiOrg-Server's), for whom a fresh key version is made; the reconciler's outcomes never start one."""
        if isinstance(person_id, Pseudonym):  # named by pseudonym alone: there is nothing to seal
            return f"{_PSEUDONYM_ONLY}{person_id}:"
        pseudonym = self.pseudonym(org, person_id)
        self._refresh()
        token = self._unerased.get(pseudonym)
        if token is not None:
            return token
        at = _utc(at)
        state = KeyState()
        for reload in (False, True):  # the second look, in the table: another process may have made a key
            state = self._state(pseudonym, org, reload) or state  # (with `org`, never None: it is created)
            until, doomed = state.erased_until, 0
            planned = self._planned.get(pseudonym)
            if planned is not None:
                until, doomed = max(until or planned.until, planned.until), planned.up_to
            if until is not None and at < until:
                return f"{_PSEUDONYM_ONLY}{pseudonym}:"
            version = state.live(above=doomed)
            if version is not None:
                token = self._encrypt(pseudonym, version, state.keys[version], person_id)  # type: ignore[arg-type]
                if until is None and planned is None:
                    if len(self._unerased) > 200_000:
                        self._unerased.clear()
                    self._unerased[pseudonym] = token
                return token
        if not renew:
            return f"{_PSEUDONYM_ONLY}{pseudonym}:"
        version = max(state.latest, doomed) + 1
        key = self.table.add_version(pseudonym, org, version)
        if key is None:  # erased meanwhile by another process
            return f"{_PSEUDONYM_ONLY}{pseudonym}:"
        with self._lock:
            state.keys[version] = key
        return self._encrypt(pseudonym, version, key, person_id)

    def _encrypt(self, pseudonym: str, version: int, key: bytes, person_id: str) -> str:
        # One token per key version: a pseudonym stands for one person id, so every fact naming the person under
        # this key seals the same text, and its token may be reused (it reveals nothing the pseudonym beside it
        # does not). Forgotten with the key.
        token = self._sealed.get((pseudonym, version))
        if token is None:
            if len(self._sealed) > 200_000:
                self._sealed.clear()
            token = self._sealed[(pseudonym, version)] = self._seal_new(pseudonym, version, key, person_id)
        return token

    def _seal_new(self, pseudonym: str, version: int, key: bytes, person_id: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._cipher(pseudonym, version, key).encrypt(
            nonce, person_id.encode(), f"{pseudonym}:{version}".encode()
        )
        return f"{_TOKEN}{pseudonym}:{version}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, token: str) -> str:
        """The HiOrg id while its key version exists, else the `Pseudonym`; text that is not a token is returned as
        is."""
        if token.startswith(_TOKEN):
            pseudonym, version_text, sealed = token[len(_TOKEN) :].split(":", 2)
            version, associated = int(version_text), f"{pseudonym}:{version_text}"
        elif token.startswith(_PSEUDONYM_ONLY):
            pseudonym, _, sealed = token[len(_PSEUDONYM_ONLY) :].partition(":")
            version, associated = 1, pseudonym  # the previous release sealed with the only key there was
            if not sealed:
                return Pseudonym(pseudonym)
        else:
            return token
        key = self._key(pseudonym, version)
        if not key:
            return Pseudonym(pseudonym)
        raw = base64.urlsafe_b64decode(sealed)
        try:
            return self._cipher(pseudonym, version, key).decrypt(raw[:12], raw[12:], associated.encode()).decode()
        except InvalidTag:
            return Pseudonym(pseudonym)

    def _key(self, pseudonym: str, version: int) -> bytes | None:
        state = self._state(pseudonym, None)
        if state is not None and version not in state.keys:  # made by another process since we looked
            state = self._state(pseudonym, None, reload=True)
        return None if state is None else state.keys.get(version)

    def is_known(self, org: str, person_id: str) -> bool:
        return self.table.load(self.pseudonym(org, person_id)) is not None

    def is_forgotten(self, org: str, person_id: str) -> bool:
        """Erased, and not named again since by a fact that started a new person (no key exists)."""
        state = self.table.load(self.pseudonym(org, person_id))
        return state is not None and state.erased_until is not None and state.live() is None

    def erased_until(self, org: str, person_id: str) -> datetime | None:
        """The person's erasure horizon: facts dated before it name the pseudonym only (FOREVER: all of them)."""
        state = self.table.load(self.pseudonym(org, person_id))
        return None if state is None else state.erased_until

    def key_version(self, org: str, person_id: str) -> int:
        """The newest key version the person has had (0: none): an erasure now destroys up to it."""
        state = self._state(self.pseudonym(org, person_id), None, reload=True)
        return 0 if state is None else state.latest

    def named_pseudonyms(self, named: dict[tuple[str, str], datetime]) -> dict[str, datetime]:
        """(org, person_id) → time, as the key table keeps it: pseudonym → time (`write_named`)."""
        pseudonyms: dict[str, datetime] = {}
        for (org, person_id), at in named.items():
            pseudonym = self.pseudonym(org, person_id)
            if pseudonym is not person_id:
                pseudonyms[pseudonym] = max(pseudonyms.get(pseudonym, at), _utc(at))
        return pseudonyms

    def named_after(self, org: str, person_id: str, until: datetime) -> datetime | None:
        """The latest time a stored fact named the person, if it is after `until` (their deletion): such a fact,
        stored before the deletion, names a new person (the contract) but was sealed with a key the deletion
        destroys — the person must be named again under a fresh key."""
        state = self._state(self.pseudonym(org, person_id), None, reload=True)
        if state is None or state.named_until is None or state.named_until <= _utc(until):
            return None
        return state.named_until

    def plan_erasure(self, org: str, person_id: str, until: datetime) -> int:
        """Decide, before a batch is sealed, that the person's keys existing now go once it is stored and that its
        names dated before `until` are stored as the pseudonym alone; returns the newest version that goes."""
        pseudonym = self.pseudonym(org, person_id)
        state = self._state(pseudonym, org, reload=True)
        assert state is not None
        until, up_to = _utc(until), state.latest
        planned = self._planned.get(pseudonym)
        if planned is not None:
            until, up_to = max(until, planned.until), max(up_to, planned.up_to)
        self._planned[pseudonym] = _Erasure(org, until, up_to)
        self._unerased.pop(pseudonym, None)
        return up_to

    def erase_planned(self, org: str, person_id: str) -> bool:
        """Carry out the erasure planned for the batch just stored; True if a key was destroyed now."""
        pseudonym = self.pseudonym(org, person_id)
        planned = self._planned.pop(pseudonym, None)
        return planned is not None and self._erase(pseudonym, org, planned.until, planned.up_to)

    def abandon_erasure(self, org: str, person_id: str) -> None:
        """The batch was not stored: its erasure never happened."""
        self._planned.pop(self.pseudonym(org, person_id), None)

    def forget_pseudonym(self, org: str, pseudonym: str, until: datetime, up_to: int) -> None:
        """A recorded erasure, read back: carry it out if it is not yet (a crash came between the fact and the key),
        never touching a key version made after it."""
        state = self._state(pseudonym, None)
        done = (
            state is not None
            and state.erased_until is not None
            and state.erased_until >= _utc(until)
            and not any(key for version, key in state.keys.items() if version <= up_to)
        )
        if not done:
            self._erase(pseudonym, org, _utc(until), up_to)

    def forget(self, org: str, person_id: str, until: datetime = FOREVER, up_to: int | None = None) -> bool:
        """Destroy the person's keys (up to version `up_to`, all by default) and move the horizon to `until` (by
        default the end of time: an operator's erasure); True if there was a key to destroy."""
        return self._erase(self.pseudonym(org, person_id), org, _utc(until), up_to)

    def reapply(self, erasure: Erasure) -> bool:
        """Carry out a recorded erasure again, on a store restored from a backup made before it; True if it was not
        in place (a key existed, or the horizon was earlier). Not recorded again."""
        if self._done(erasure.pseudonym, _utc(erasure.until), erasure.up_to):
            return False
        self._erase(erasure.pseudonym, erasure.org, _utc(erasure.until), erasure.up_to, record=False)
        return True

    def _done(self, pseudonym: str, until: datetime, up_to: int | None) -> bool:
        """The erasure is in place in the table: the horizon reaches `until`, and no key up to `up_to` is left."""
        state = self.table.load(pseudonym)
        return (
            state is not None
            and state.erased_until is not None
            and state.erased_until >= until
            and not any(key for version, key in state.keys.items() if up_to is None or version <= up_to)
        )

    def _erase(self, pseudonym: str, org: str, until: datetime, up_to: int | None, *, record: bool = True) -> bool:
        if record and self.erasure_log is not None and not self._done(pseudonym, until, up_to):
            # written before the keys go: a restore must find every erasure that may have happened
            self.erasure_log.record(Erasure(self.installation, org, pseudonym, up_to, until, datetime.now(UTC)))
        destroyed = self.table.erase(pseudonym, org, until, up_to)
        with self._lock:
            self._epoch += 1
            self._unerased.pop(pseudonym, None)
            state = self._states.get(pseudonym)
            if state is not None:
                for version in state.keys:
                    if up_to is None or version <= up_to:
                        state.keys[version] = None
                        self._ciphers.pop((pseudonym, version), None)
                        self._sealed.pop((pseudonym, version), None)
                state.keys.setdefault(1, None)
                if up_to is not None and up_to > 1:
                    state.keys.setdefault(up_to, None)
                state.erased_until = max(state.erased_until or until, until)
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

    def prepare(self, domain_events: Iterable[Any]) -> None:
        """Load (or make) the keys of every person these events name, in one transaction, before they are sealed
        one by one (the first sight of a person would otherwise cost a transaction of its own)."""
        named: set[tuple[str, str]] = set()
        for domain_event in domain_events:
            qualname = type(domain_event).__qualname__
            fields = person_fields(domain_event)
            if not fields:
                continue
            state = domain_event.__dict__
            org = self._org(qualname, domain_event.originator_id, state)
            for name in fields:
                value = state[name]
                if isinstance(value, dict):
                    named.update((org, person) for person in value if not isinstance(person, Pseudonym))
                elif isinstance(value, str) and not isinstance(value, Pseudonym):
                    named.add((org, value))
        if named:
            self.persons.prepare(named, recheck=False)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        event_class = type(domain_event)
        fields = person_fields(domain_event)
        if not fields:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        org = self._org(event_class.__qualname__, domain_event.originator_id, state)
        # the time of the fact: HiOrg-Server's `occurred_at`, or the reconciler's `at` (which starts no new person)
        at, renew = state.get("occurred_at"), True
        if at is None:
            at, renew = state.get("at") or state["timestamp"], False
        seal = self.persons.seal
        for name in fields:
            value = state[name]
            if isinstance(value, dict):  # staff: person → status
                state[name] = {seal(org, person, at, renew): status for person, status in value.items()}
            elif value is not None:
                state[name] = seal(org, value, at, renew)
        # What the library's `Mapper.to_stored_event` does, on the sealed copy made above (the same bytes): it would
        # copy the state again from an event object made only to carry it.
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(event_class, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        stored_state = self.transcoder.encode(state)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=get_topic(event_class),
            state=stored_state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        domain_event = super().to_domain_event(stored_event)
        qualname = type(domain_event).__qualname__
        fields = person_fields(domain_event)
        if isinstance(domain_event, FORGOTTEN):  # the keys go with the fact, even if a crash came between them
            forgotten = domain_event.__dict__
            self.persons.forget_pseudonym(
                self._org(qualname, domain_event.originator_id, {}),
                forgotten["pseudonym"],
                FOREVER if forgotten["reason"] == "gdpr forget" else forgotten["at"],
                forgotten.get("key_version", 1),  # recorded before key versions: there was one key
            )
        if fields:
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
