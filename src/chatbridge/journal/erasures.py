"""The erasure log: every destroyed person key, recorded outside the store, so that restoring a backup cannot bring
a key back to life (the restore destroys it again, `chatbridge restore`).

A record names the erasure by pseudonym only — never a HiOrg id, never key material: the installation (a
fingerprint of the pseudonym key, so that installations sharing a topic or a file stay apart), the organisation,
the pseudonym, up to which key version the keys went (null: every version), until which event time the person's
names are erased (the end of time for an operator's `gdpr forget`), and when it was done.

Two places, like the audit's checkpoints (`journal.checkpoints`): a JSON-lines file, appended and synced, mode
0600 (`CHATBRIDGE_ERASURE_LOG`; by default beside the audit key file, which a backup of the store does not hold
either), and — when `CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS` is set — the Kafka topic `chatbridge.erasures.v1`
(`CHATBRIDGE_ERASURE_TOPIC`), keyed by the installation. The record is written before the key is destroyed; a
place that cannot take it is said in the log and tried again with the next erasure, and never stops the erasure.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatbridge.domain.moments import stamp
from chatbridge.journal.keys import AuditSettings
from chatbridge.journal.topics import AcknowledgedTopic, kafka_producer, read_key

TOPIC = "chatbridge.erasures.v1"
log = logging.getLogger(__name__)


class ErasureSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATBRIDGE_ERASURE_", extra="ignore")

    log: Path | None = Field(
        default=None,
        description="JSON-lines file every erasure is appended to (0600); default: beside the audit key file, "
        "named after it with the suffix `.erasures` (a SQLite store's `chatbridge.db.erasures`).",
    )
    topic: str = Field(default=TOPIC, description="Kafka topic every erasure is published to.")
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias="CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS",
        description="Set: erasures are published to the topic as well as appended to the file.",
    )


class ErasureLogError(Exception):
    """The erasure log cannot be read (the message names the file and line, or the topic)."""


def installation_of(pseudonym_key: bytes) -> str:
    """Which installation an erasure belongs to: a fingerprint of its pseudonym key (it reveals nothing of the key,
    and only an installation holding that key makes those pseudonyms)."""
    return hmac.new(pseudonym_key, b"chatbridge erasure log", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class Erasure:
    installation: str
    org: str
    pseudonym: str
    up_to: int | None  # the newest key version destroyed; None: every version
    until: datetime  # the person's names in facts dated before this are erased
    at: datetime  # when the keys were destroyed

    def to_json(self) -> str:
        return json.dumps(
            {
                "installation": self.installation, "org": self.org, "pseudonym": self.pseudonym,
                "up_to": self.up_to, "until": stamp(self.until), "at": stamp(self.at),
            },
            separators=(",", ":"),
        )  # fmt: skip

    @staticmethod
    def from_json(text: str) -> Erasure:
        raw = json.loads(text)
        up_to = raw["up_to"]
        return Erasure(
            str(raw["installation"]), str(raw["org"]), str(raw["pseudonym"]), None if up_to is None else int(up_to),
            datetime.fromisoformat(raw["until"]), datetime.fromisoformat(raw["at"]),
        )  # fmt: skip


class Place(Protocol):
    def publish(self, erasures: Sequence[Erasure]) -> None: ...
    def read(self, installation: str) -> list[Erasure]: ...


class ErasureFile:
    """Every erasure, one JSON object per line, appended and synced before the key goes."""

    def __init__(self, path: Path):
        self.path = path

    def __str__(self) -> str:
        return f"the erasure log {self.path}"

    def publish(self, erasures: Sequence[Erasure]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, "".join(e.to_json() + "\n" for e in erasures).encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def read(self, installation: str) -> list[Erasure]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise ErasureLogError(f"{self.path}: {error.strerror}") from None
        found = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                erasure = Erasure.from_json(line)
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines):  # a line cut short by a crash while it was written: that erasure's
                    continue  # key was not destroyed before the record was whole
                raise ErasureLogError(f"{self.path} line {number}: not an erasure ({error})") from None
            if erasure.installation == installation:
                found.append(erasure)
        return found


class KafkaErasures:
    """The erasure topic, keyed by the installation. The producer is made on first use and closed at exit; after a
    failed publication the records wait (and go with the next erasure) for a while instead of blocking each one."""

    RETRY_AFTER = 30.0

    def __init__(self, servers: str, topic: str = TOPIC, producer: Callable[[], Any] | None = None):
        self.servers = servers
        self.topic = topic
        make = producer or (lambda: kafka_producer(servers, "chatbridge-erasures"))
        self._topic = AcknowledgedTopic(make, topic, self.RETRY_AFTER)
        self._closed_at_exit = False  # the producer a send makes is closed when the process exits
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return f"the erasure topic {self.topic}"

    def publish(self, erasures: Sequence[Erasure]) -> None:
        with self._lock:
            if self._topic.resting:
                raise ConnectionError("the broker did not answer a moment ago")
            if not self._closed_at_exit:
                atexit.register(self.close)
                self._closed_at_exit = True
            self._topic.send([(e.installation.encode(), e.to_json().encode()) for e in erasures])

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._topic.close()

    def read(self, installation: str, timeout: float = 30.0) -> list[Erasure]:
        """This installation's erasures on the topic, from the beginning to the end offsets as they are now."""
        try:
            values = read_key(self.servers, self.topic, installation.encode(), "chatbridge-restore", timeout)
        except TimeoutError as error:
            raise ErasureLogError(str(error)) from None
        return [Erasure.from_json(value.decode()) for value in values]


class ErasureLog:
    """Where erasures are recorded, and read back for a restore."""

    def __init__(self, places: Iterable[Place]):
        self.places = list(places)
        self._pending: dict[int, list[Erasure]] = {}  # per place: records it has not taken yet
        self._lock = threading.Lock()

    def record(self, erasure: Erasure) -> None:
        """Write the erasure to every place. One that fails keeps it for the next erasure: the key goes anyway."""
        with self._lock:
            for index, place in enumerate(self.places):
                waiting = [*self._pending.get(index, []), erasure]
                try:
                    place.publish(waiting)
                except Exception as error:
                    self._pending[index] = waiting
                    log.warning("%d erasures not yet recorded in %s: %s", len(waiting), place, error)
                else:
                    self._pending.pop(index, None)

    def read(self, installation: str) -> list[Erasure]:
        """Every erasure of the installation any place holds, once each, oldest first."""
        found = {erasure for place in self.places for erasure in place.read(installation)}
        return sorted(found, key=lambda e: (e.at, e.org, e.pseudonym, e.until, e.up_to or 0))

    @staticmethod
    def configured(database: Path | None, settings: ErasureSettings | None = None) -> ErasureLog:
        """The places the environment names: the file (by default beside the audit key file, or beside the SQLite
        `database`), and the topic when a Kafka broker is configured."""
        settings = settings or ErasureSettings()
        path = settings.log or default_path(database)
        places: list[Place] = [ErasureFile(path)]
        if settings.kafka_bootstrap_servers:
            places.append(KafkaErasures(settings.kafka_bootstrap_servers, settings.topic))
        return ErasureLog(places)


def default_path(database: Path | None) -> Path:
    """Beside the audit key file, named after it (`keys.json` → `keys.erasures`); without a configured key file,
    beside the SQLite `database` (`chatbridge.db.erasures`, as its default key file `chatbridge.db.audit-keys`),
    else `chatbridge.erasures` (as PostgreSQL's default key file `chatbridge.audit-keys`)."""
    key_file = AuditSettings().key_file
    if key_file is not None:
        return key_file.with_suffix(".erasures")
    if database is not None:
        return database.with_name(database.name + ".erasures")
    return Path("chatbridge.erasures")
