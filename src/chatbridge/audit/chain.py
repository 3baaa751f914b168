"""The tamper-evident log: a hash chain over the notification log, with checkpoints signed by an Ed25519 key.

Each stored event gets a link in `audit_chain`, written by the event store's own transaction (see
`persistence`), so no event is ever stored without its link:

    record_hash(n) = SHA-256(originator id, originator version, topic, state bytes)   (length-prefixed)
    chain_hash(n)  = SHA-256(chain_hash(previous link) ‖ record_hash(n))                 (genesis: 32 zero bytes)

Every transaction also signs its last chain hash into `audit_checkpoints` (the notification id, the hash, the
time, the key's id). The chain alone shows that records were changed, dropped, inserted or reordered after they
were linked; the signatures show that the chain itself was not recomputed by someone without the signing key.
Both tables are kept apart from the events: `verify` recomputes everything from the events and compares.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GENESIS = bytes(32)
CREATE_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS audit_chain ("
    "notification_id BIGINT PRIMARY KEY, record_hash TEXT NOT NULL, chain_hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints ("
    "notification_id BIGINT PRIMARY KEY, chain_hash TEXT NOT NULL, signed_at TEXT NOT NULL, "
    "key_id TEXT NOT NULL, signature TEXT NOT NULL)",
)
TABLES = ("audit_chain", "audit_checkpoints")


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(8, "big") + value


def record_hash(originator_id: UUID | str, version: int, topic: str, state: bytes) -> bytes:
    """The stored event's own hash; its position is covered by the chain (so a moved record is recognised)."""
    originator = originator_id.hex if isinstance(originator_id, UUID) else str(originator_id)
    digest = hashlib.sha256()
    for part in (originator.encode(), str(version).encode(), topic.encode(), state):
        digest.update(_field(part))
    return digest.digest()


def chain_hash(previous: bytes, record: bytes) -> bytes:
    return hashlib.sha256(previous + record).digest()


def key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def _checkpoint_message(notification_id: int, chain: bytes, signed_at: str) -> bytes:
    return b"chatbridge audit checkpoint\x00" + str(notification_id).encode() + b"\x00" + chain + signed_at.encode()


def link(c: Any, sql: Any, links: Iterable[tuple[int, Any]], signer: Ed25519PrivateKey | None) -> None:
    """Append the links of newly stored events (notification id, stored event) inside the storing transaction.

    `sql` converts `?` placeholders for the driver. The previous link is read in the same transaction, which
    holds the store's write lock (SQLite's, PostgreSQL's table lock), so links are appended one writer at a time.
    """
    rows = sorted(links, key=lambda pair: pair[0])
    if not rows:
        return
    c.execute("SELECT chain_hash FROM audit_chain ORDER BY notification_id DESC LIMIT 1")
    last = c.fetchone()
    previous = bytes.fromhex(last["chain_hash"]) if last else GENESIS
    values = []
    for notification_id, stored in rows:
        record = record_hash(stored.originator_id, stored.originator_version, stored.topic, stored.state)
        previous = chain_hash(previous, record)
        values.append((notification_id, record.hex(), previous.hex()))
    from chatbridge.persistence import insert_rows  # here: persistence imports this module

    # one statement for all links on PostgreSQL (executemany would cost a round trip per link)
    statement = "INSERT INTO audit_chain (notification_id, record_hash, chain_hash) VALUES (?, ?, ?)"
    insert_rows(c, statement, values, "?" if sql("?") == "?" else "%s")
    if signer is not None:
        signed_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        last_id = rows[-1][0]
        signature = signer.sign(_checkpoint_message(last_id, previous, signed_at))
        c.execute(
            sql(
                "INSERT INTO audit_checkpoints (notification_id, chain_hash, signed_at, key_id, signature) "
                "VALUES (?, ?, ?, ?, ?)"
            ),
            (last_id, previous.hex(), signed_at, key_id(signer.public_key()), signature.hex()),
        )


@dataclass(frozen=True)
class Finding:
    notification_id: int
    problem: str  # altered | missing | inserted | reordered | chain altered | checkpoint invalid | unsigned
    detail: str

    def __str__(self) -> str:
        return f"record {self.notification_id}: {self.problem} — {self.detail}"


@dataclass
class Verification:
    records: int = 0
    links: int = 0
    checkpoints: int = 0
    last_checkpoint: int | None = None
    findings: list[Finding] = field(default_factory=list)
    unsigned_tail: int = 0  # links after the last valid checkpoint

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        return min(self.findings, key=lambda f: f.notification_id) if self.findings else None


@dataclass(frozen=True)
class Link:
    notification_id: int
    record_hash: str
    chain_hash: str


@dataclass(frozen=True)
class Checkpoint:
    notification_id: int
    chain_hash: str
    signed_at: str
    key_id: str
    signature: str


def verify(
    records: Iterator[tuple[int, bytes]],
    links: Sequence[Link],
    checkpoints: Sequence[Checkpoint],
    verify_key: Ed25519PublicKey,
) -> Verification:
    """Compare the events (as (notification id, record hash), in id order) with the chain and its checkpoints.

    Reports every finding; `first` is the one to look at (the earliest record concerned).
    """
    result = Verification(links=len(links), checkpoints=len(checkpoints))
    stored = {link.notification_id: link for link in links}
    positions_of = {link.record_hash: link.notification_id for link in links}
    seen: set[int] = set()
    for notification_id, record in records:
        result.records += 1
        seen.add(notification_id)
        link_row = stored.get(notification_id)
        if link_row is None:
            elsewhere = positions_of.get(record.hex())
            if elsewhere is not None and elsewhere != notification_id:
                result.findings.append(
                    Finding(notification_id, "reordered", f"this record was linked as record {elsewhere}")
                )
            else:
                result.findings.append(Finding(notification_id, "inserted", "the record is not in the chain"))
        elif link_row.record_hash != record.hex():
            elsewhere = positions_of.get(record.hex())
            if elsewhere is not None:
                result.findings.append(
                    Finding(notification_id, "reordered", f"this record was linked as record {elsewhere}")
                )
            else:
                result.findings.append(Finding(notification_id, "altered", "its content differs from its link"))
    for notification_id in sorted(set(stored) - seen):
        result.findings.append(Finding(notification_id, "missing", "linked, but no longer in the event store"))
    # the chain itself: every link must follow from the one before it
    previous = GENESIS
    recomputed: dict[int, str] = {}
    for link_row in sorted(links, key=lambda row: row.notification_id):
        previous = chain_hash(previous, bytes.fromhex(link_row.record_hash))
        recomputed[link_row.notification_id] = previous.hex()
        if previous.hex() != link_row.chain_hash:
            result.findings.append(
                Finding(link_row.notification_id, "chain altered", "the link does not follow from the one before")
            )
            break
    expected_key = key_id(verify_key)
    for checkpoint in sorted(checkpoints, key=lambda row: row.notification_id):
        message = _checkpoint_message(
            checkpoint.notification_id, bytes.fromhex(checkpoint.chain_hash), checkpoint.signed_at
        )
        try:
            verify_key.verify(bytes.fromhex(checkpoint.signature), message)
        except (InvalidSignature, ValueError):
            reason = "signed by another key" if checkpoint.key_id != expected_key else "its signature is invalid"
            result.findings.append(Finding(checkpoint.notification_id, "checkpoint invalid", reason))
            continue
        if recomputed.get(checkpoint.notification_id) != checkpoint.chain_hash:
            result.findings.append(
                Finding(checkpoint.notification_id, "chain altered", "the chain differs from the signed checkpoint")
            )
            continue
        result.last_checkpoint = checkpoint.notification_id
    last_signed = result.last_checkpoint or 0
    result.unsigned_tail = sum(1 for n in stored if n > last_signed)
    return result
