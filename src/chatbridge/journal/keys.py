"""The audit's secrets: the Ed25519 key that signs checkpoints and the key of the persons' pseudonyms.

They come from the environment (`CHATBRIDGE_AUDIT_SIGNING_KEY`, `CHATBRIDGE_AUDIT_PSEUDONYM_KEY`, hex) or from a
key file (`CHATBRIDGE_AUDIT_KEY_FILE`, JSON, created with mode 0600 beside a SQLite store when nothing is
configured). They are kept out of the store on purpose: the pseudonym key is what links a pseudonym back to a
HiOrg id, and whoever holds the signing key could re-sign an altered log. They are never printed.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    """Fresh keys, written whole and then linked into place: processes starting together agree on one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = {"signing_key": secrets.token_hex(32), "pseudonym_key": secrets.token_hex(32)}
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(keys, file)
        os.link(draft, path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        draft.unlink(missing_ok=True)


def load_keys(settings: AuditSettings, default_file: Path, *, create: bool) -> AuditKeys:
    """The configured keys; with `create`, a missing key file is made with fresh keys (the first run)."""
    path = settings.key_file or default_file
    stored: dict[str, str] = {}
    direct = settings.signing_key is not None and settings.pseudonym_key is not None
    if not direct:
        if not path.is_file() and create:
            try:
                _create_key_file(path)
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
