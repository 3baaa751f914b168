"""The audit's secrets: the Ed25519 key that signs checkpoints and the key of the persons' pseudonyms.

They come from the environment (`CHATBRIDGE_AUDIT_SIGNING_KEY`, `CHATBRIDGE_AUDIT_PSEUDONYM_KEY`, hex) or from a
key file (`CHATBRIDGE_AUDIT_KEY_FILE`, JSON, made by `chatbridge keys generate`, or with mode 0600 beside a SQLite
store when nothing is configured). They are kept out of the store on purpose: the pseudonym key is what links a
pseudonym back to a HiOrg id, and whoever holds the signing key could re-sign an altered log. They are never
printed; what names them is public (`KeyIdentity`: the verify key, the signing key's id, the pseudonym key's
fingerprint).

The store remembers which keys it was made with (`StoreKeys`, the table `chatbridge_key_check`): the signing key's
id and the pseudonym key's fingerprint. Other keys would sign checkpoints `audit verify` rejects and give known
persons new pseudonyms, so a store refuses them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatbridge.domain.moments import stamp_now
from chatbridge.journal import chain
from chatbridge.journal.sql import Placeholders


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATBRIDGE_AUDIT_", extra="ignore")

    signing_key: SecretStr | None = Field(
        default=None, description="Ed25519 private key (32 bytes, hex) that signs the log's checkpoints."
    )
    verify_key: str | None = Field(
        default=None,
        description="Ed25519 public key (hex) for `audit verify` by an auditor who does not hold the signing key.",
    )
    pseudonym_key: SecretStr | None = Field(
        default=None, description="Key (32 bytes, hex) of the persons' keyed pseudonyms (HMAC-SHA256)."
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="JSON-lines file the writer appends each signed checkpoint to (0600), kept by the auditor; "
        "`audit verify` checks the store against it.",
    )
    checkpoint_topic: str = Field(
        default="chatbridge.audit-checkpoints.v1",
        description="Kafka topic the worker publishes each signed checkpoint to (one topic per installation).",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias="CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS",
        description="Set: every writer (`ingest` too, not only the worker) publishes its checkpoints to the topic.",
    )
    key_file: Path | None = Field(
        default=None,
        description="JSON file holding signing_key and pseudonym_key when they are not set directly; default: "
        "the SQLite file's name + `.audit-keys`, or `chatbridge.audit-keys` for PostgreSQL.",
    )


class AuditKeyError(Exception):
    """The audit keys are missing or unreadable (the message says which, never the key)."""


@dataclass(frozen=True)
class AuditKeys:
    signing_key: Ed25519PrivateKey | None
    verify_key: Ed25519PublicKey | None
    pseudonym_key: bytes
    checkpoint_file: Path | None = None  # where the writer publishes checkpoints for the auditor (audit.checkpoints)
    checkpoint_topic: str = "chatbridge.audit-checkpoints.v1"
    kafka_bootstrap_servers: str | None = None  # set: the writer publishes to the topic too

    @staticmethod
    def ephemeral() -> AuditKeys:
        """Fresh keys for a store that lives in memory only (`simulate`, unit tests)."""
        signing = Ed25519PrivateKey.generate()
        return AuditKeys(signing, signing.public_key(), secrets.token_bytes(32))


def default_key_file(store: str, database: Path) -> Path:
    return database.with_name(database.name + ".audit-keys") if store == "sqlite" else Path("chatbridge.audit-keys")


def _hex_bytes(value: str, name: str, length: int) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raise AuditKeyError(f"{name} is not hex") from None
    if len(raw) != length:
        raise AuditKeyError(f"{name} must be {length} bytes ({2 * length} hex digits)")
    return raw


def _create_key_file(path: Path) -> None:
    """Fresh keys, written whole and then linked into place: processes starting together agree on one file; raises
    `FileExistsError` when the file is there (another process made it first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = {"signing_key": secrets.token_hex(32), "pseudonym_key": secrets.token_hex(32)}
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(keys, file)
        os.link(draft, path)
    finally:
        draft.unlink(missing_ok=True)


def generate_key_file(path: Path) -> AuditKeys:
    """A new key file at `path` (0600) with fresh signing and pseudonym keys; an existing file is never replaced."""
    taken = f"{path} exists: a key file is never overwritten (its keys may belong to a store)"
    if path.exists() or path.is_symlink():
        raise AuditKeyError(taken)
    try:
        _create_key_file(path)
    except FileExistsError:
        raise AuditKeyError(taken) from None
    except OSError as error:
        raise AuditKeyError(f"cannot create the audit key file {path}: {error.strerror}") from None
    return load_keys(AuditSettings(key_file=path, signing_key=None, pseudonym_key=None, verify_key=None), path,
                     create=False)  # fmt: skip


def load_keys(settings: AuditSettings, default_file: Path, *, create: bool) -> AuditKeys:
    """The configured keys; with `create`, a missing key file is made with fresh keys (the first run)."""
    path = settings.key_file or default_file
    stored: dict[str, str] = {}
    direct = settings.signing_key is not None and settings.pseudonym_key is not None
    if not direct:
        if not path.is_file() and create:
            try:
                _create_key_file(path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            except OSError as error:
                raise AuditKeyError(f"cannot create the audit key file {path}: {error.strerror}") from None
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                raise AuditKeyError(f"the audit key file {path} is unreadable") from None
            if not isinstance(stored, dict):
                raise AuditKeyError(f"the audit key file {path} is not a JSON object")
        elif settings.verify_key is None or settings.pseudonym_key is None:
            raise AuditKeyError(f"no audit keys: set CHATBRIDGE_AUDIT_SIGNING_KEY or provide the key file {path}")
    signing_text = settings.signing_key.get_secret_value() if settings.signing_key else stored.get("signing_key")
    pseudonym_text = (
        settings.pseudonym_key.get_secret_value() if settings.pseudonym_key else stored.get("pseudonym_key")
    )
    if not pseudonym_text:
        raise AuditKeyError("no pseudonym key: set CHATBRIDGE_AUDIT_PSEUDONYM_KEY or add it to the key file")
    signing = None
    if signing_text:
        signing = Ed25519PrivateKey.from_private_bytes(_hex_bytes(signing_text, "the signing key", 32))
    verify = signing.public_key() if signing else None
    if settings.verify_key:
        verify = Ed25519PublicKey.from_public_bytes(_hex_bytes(settings.verify_key, "the verify key", 32))
    return AuditKeys(
        signing, verify, _hex_bytes(pseudonym_text, "the pseudonym key", 32), settings.checkpoint_file,
        settings.checkpoint_topic, settings.kafka_bootstrap_servers,
    )  # fmt: skip


_FINGERPRINT_LABEL = b"chatbridge pseudonym key fingerprint v1"


def pseudonym_fingerprint(pseudonym_key: bytes) -> str:
    """Names the pseudonym key and reveals nothing about it: the HMAC of a fixed label under the key, 16 hex digits.
    No HiOrg id goes in, so it is no pseudonym of anyone, and the key cannot be recovered from it."""
    return hmac.new(pseudonym_key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class KeyIdentity:
    """What may be shown of the keys: all public."""

    verify_key: str | None  # the Ed25519 public key, hex (CHATBRIDGE_AUDIT_VERIFY_KEY for auditors)
    key_id: str | None  # the signing key's id as the checkpoints carry it (`journal.chain.key_id`)
    pseudonym_fingerprint: str
    holds_signing_key: bool

    @staticmethod
    def of(keys: AuditKeys) -> KeyIdentity:
        public = keys.signing_key.public_key() if keys.signing_key else keys.verify_key
        return KeyIdentity(
            verify_key=public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex() if public else None,
            key_id=chain.key_id(public) if public else None,
            pseudonym_fingerprint=pseudonym_fingerprint(keys.pseudonym_key),
            holds_signing_key=keys.signing_key is not None,
        )


KEY_CHECK_TABLE = "chatbridge_key_check"
_KEY_CHECK_COLUMNS = "key_id, pseudonym_fingerprint, recorded_at, origin"
_RESTORE = "start it with the keys it was made with (`chatbridge keys show` names the configured ones)"


class StoreKeys(Placeholders):
    """The store's record of the keys it was made with: one row in `chatbridge_key_check` (`?` placeholders).

    Written when the store is made; a store made before the record existed is adopted on its first open — when its
    last checkpoint, if any, is signed by the signing key. It holds nothing secret, and stays when the store is
    rebuilt from Kafka: the person keys stay too, and so must the pseudonym key that finds them.
    """

    def __init__(self, datastore: Any, placeholder: str):
        self.datastore = datastore
        self.placeholder = placeholder

    def check(self, keys: AuditKeys, *, made: bool) -> None:
        """Raise `AuditKeyError` naming the key that does not fit; record the keys if the store has no record yet
        (`made`: the store was made by this open). A reader without the signing key records nothing: its verify
        key is checked against the signing key's id, its pseudonym key against the fingerprint."""
        ours = KeyIdentity.of(keys)
        recorded = self._recorded()
        if recorded is None:
            if not keys.signing_key:
                return
            last = None if made else self._last_checkpoint_key_id()
            if last is not None and last != ours.key_id:
                raise AuditKeyError(
                    f"the signing key does not fit this store: its last checkpoint is signed by key {last}, the "
                    f"configured signing key is {ours.key_id}; {_RESTORE}"
                )
            self._record(ours, "made" if made else "adopted")
            recorded = self._recorded()
            assert recorded is not None
        key_id, fingerprint = recorded
        if ours.key_id is not None and ours.key_id != key_id:
            which = "signing key" if keys.signing_key else "verify key"
            raise AuditKeyError(
                f"the {which} does not fit this store: it was made with signing key {key_id}, the configured "
                f"{which} is {ours.key_id}; {_RESTORE}"
            )
        if ours.pseudonym_fingerprint != fingerprint:
            raise AuditKeyError(
                f"the pseudonym key does not fit this store: it was made with pseudonym key {fingerprint} "
                f"(fingerprint), the configured one is {ours.pseudonym_fingerprint}; {_RESTORE}"
            )

    def _recorded(self) -> tuple[str, str] | None:
        with self.datastore.transaction(commit=False) as c:
            if not self._table_exists(c, KEY_CHECK_TABLE):
                return None
            c.execute(f"SELECT key_id, pseudonym_fingerprint FROM {KEY_CHECK_TABLE} WHERE id = 1")
            row = c.fetchone()
        return None if row is None else (row["key_id"], row["pseudonym_fingerprint"])

    def _last_checkpoint_key_id(self) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            if not self._table_exists(c, "audit_checkpoints"):
                return None
            c.execute("SELECT key_id FROM audit_checkpoints ORDER BY notification_id DESC LIMIT 1")
            row = c.fetchone()
        return None if row is None else str(row["key_id"])

    def _record(self, identity: KeyIdentity, origin: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {KEY_CHECK_TABLE} (id INTEGER PRIMARY KEY, key_id TEXT NOT NULL, "
                "pseudonym_fingerprint TEXT NOT NULL, recorded_at TEXT NOT NULL, origin TEXT NOT NULL)"
            )
            c.execute(
                self._sql(
                    f"INSERT INTO {KEY_CHECK_TABLE} (id, {_KEY_CHECK_COLUMNS}) VALUES (1, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                (identity.key_id, identity.pseudonym_fingerprint, stamp_now(), origin),
            )
