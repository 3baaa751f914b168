"""The tamper-evident log: a hash chain over the notification log, closed by signed checkpoints that chain too.

Each stored event gets a link in `audit_chain`, written by the event store's own transaction (see
`journal.intake`), so no event is ever stored without its link:

    record_hash(n) = SHA-256(originator id, originator version, topic, state bytes)   (length-prefixed)
    chain_hash(n)  = SHA-256(chain_hash(previous link) ‖ record_hash(n))                 (genesis: 32 zero bytes)

The chain needs no key, so whoever can write the tables can recompute it. What they cannot make is a signature:
every transaction signs a checkpoint over its last link — the record's notification id, how many records the log
holds up to it, the chain hash, and the digest of the checkpoint before it (SHA-256 of that one's signed bytes and
signature, as CloudTrail's digest files carry their predecessor's signature). So the checkpoints form a chain of
their own, each one vouching for the whole log before it, and each is also published outside the store (see
`journal.checkpoints`): deleting or rewriting checkpoints together with the chain shows against the published copies.

The writer (`Guard`) checks, in the storing transaction, that the chain's head is the last signed checkpoint and
that this checkpoint is, or follows from, the last one it published; otherwise it refuses to store anything more:
chatbridge never signs a log it did not write. `audit.verify` reads it all back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chatbridge.domain.moments import stamp_now
from chatbridge.journal.sql import insert_rows

log = logging.getLogger(__name__)

GENESIS = bytes(32)
CREATE_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS audit_chain ("
    "notification_id BIGINT PRIMARY KEY, record_hash TEXT NOT NULL, chain_hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints ("
    "notification_id BIGINT PRIMARY KEY, chain_hash TEXT NOT NULL, signed_at TEXT NOT NULL, "
    "key_id TEXT NOT NULL, signature TEXT NOT NULL, records BIGINT, previous TEXT)",
)
# columns added since the first release (its checkpoints have neither: they chain to nothing)
TABLES = ("audit_chain", "audit_checkpoints")
_CHECKPOINT_COLUMNS = "notification_id, chain_hash, signed_at, key_id, signature, records, previous"
# the chain's head and the last checkpoint, each NULL when there is none
_HEAD_AND_LAST_CHECKPOINT = (
    "SELECT h.notification_id AS head_id, h.chain_hash AS head_hash, "
    + ", ".join(f"k.{column}" for column in _CHECKPOINT_COLUMNS.split(", "))
    + " FROM (SELECT 1 AS one) AS o "
    "LEFT JOIN (SELECT notification_id, chain_hash FROM audit_chain ORDER BY notification_id DESC LIMIT 1) AS h "
    "ON 1 = 1 "
    f"LEFT JOIN (SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY notification_id DESC LIMIT 1) AS k "
    "ON 1 = 1"
)


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


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the log's first `records` records, the last being `notification_id`, chain to
    `chain_hash`, and the checkpoint before this one has digest `previous`. `records`/`previous` None: a checkpoint
    of the first release, which signed the notification id and chain hash only."""

    notification_id: int
    chain_hash: str
    signed_at: str
    key_id: str
    signature: str
    records: int | None = None
    previous: str | None = None

    def message(self) -> bytes:
        if self.previous is None:
            return (
                b"chatbridge audit checkpoint\x00" + str(self.notification_id).encode() + b"\x00"
                + bytes.fromhex(self.chain_hash) + self.signed_at.encode()
            )  # fmt: skip
        return b"\x00".join(
            (
                b"chatbridge audit checkpoint v2",
                str(self.notification_id).encode(),
                str(self.records).encode(),
                bytes.fromhex(self.chain_hash),
                bytes.fromhex(self.previous),
                self.signed_at.encode(),
            )
        )

    def digest(self) -> str:
        """What the next checkpoint signs as its `previous`: this one's signed bytes and its signature."""
        return hashlib.sha256(self.message() + bytes.fromhex(self.signature)).hexdigest()

    def valid(self, verify_key: Ed25519PublicKey) -> bool:
        try:
            verify_key.verify(bytes.fromhex(self.signature), self.message())
        except (InvalidSignature, ValueError):
            return False
        return True

    def describe(self) -> str:
        counted = "" if self.records is None else f"{self.records} records, "
        return f"checkpoint at record {self.notification_id} ({counted}signed {self.signed_at})"

    def to_json(self) -> str:
        return json.dumps({"v": 2, **asdict(self)}, separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Checkpoint:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return Checkpoint(
            notification_id=int(document["notification_id"]),
            chain_hash=str(document["chain_hash"]),
            signed_at=str(document["signed_at"]),
            key_id=str(document["key_id"]),
            signature=str(document["signature"]),
            records=None if document.get("records") is None else int(document["records"]),
            previous=None if document.get("previous") is None else str(document["previous"]),
        )

    @staticmethod
    def from_row(row: Any) -> Checkpoint:
        return Checkpoint(
            row["notification_id"], row["chain_hash"], row["signed_at"], row["key_id"], row["signature"],
            None if row["records"] is None else int(row["records"]), row["previous"],
        )  # fmt: skip


def sign(signer: Ed25519PrivateKey, notification_id: int, records: int, chain: bytes, previous: str) -> Checkpoint:
    unsigned = Checkpoint(notification_id, chain.hex(), stamp_now(), key_id(signer.public_key()), "", records, previous)
    signature = signer.sign(unsigned.message()).hex()
    return Checkpoint(**{**asdict(unsigned), "signature": signature})


class ChainHalted(Exception):
    """The store's log disagrees with what this writer signed and published: it stores nothing more."""


class Sink(Protocol):
    """Where checkpoints are published outside the store (the auditor's file, the Kafka topic)."""

    takes_others: bool  # also the checkpoints other writers signed (a file keeps the whole sequence; a topic has them)

    def publish(self, checkpoints: Sequence[Checkpoint]) -> None: ...
    def last(self) -> Checkpoint | None: ...  # the newest published here that this writer can read back, if any


@dataclass
class Head:
    """The chain's head as the storing transaction found it, checked against the last signed checkpoint."""

    chain_hash: bytes
    checkpoint: Checkpoint | None
    to_publish: list[Checkpoint]  # signed by others since this writer's last look (another replica, a crash)


class Guard:
    """The writer's side of the proof: checks the head before the chain is extended, signs, publishes.

    One per recorder. `writing()` wraps a storing transaction: it holds the process's write lock (so checkpoints
    are published in the order they were signed), refuses at once once the log was found forged, and publishes
    the transaction's checkpoint after it committed (never one whose records might still be rolled back).
    """

    def __init__(self, signer: Ed25519PrivateKey | None = None, sinks: Sequence[Sink] = ()):
        self.signer = signer
        self.sinks: list[Sink] = list(sinks)
        self.halted: str | None = None
        self._published: Checkpoint | None = None  # the newest this process published or saw published
        self._trusted: Checkpoint | None = None  # the store's last checkpoint as this process last checked it
        self._signed: list[Checkpoint] = []
        self._lock = threading.RLock()

    def add_sink(self, sink: Sink) -> None:
        """Publish to `sink` too (the worker's topic), unless a sink of its kind and place is there already."""
        with self._lock:
            if not any(type(s) is type(sink) and vars(s).get("topic") == vars(sink).get("topic") for s in self.sinks):
                self.sinks.append(sink)

    def close(self) -> None:
        with self._lock:
            for sink in self.sinks:
                close = getattr(sink, "close", None)
                if close is not None:
                    close()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._lock:
            if self.halted is not None:
                raise ChainHalted(self.halted)
            self._signed = []
            try:
                yield
            except ChainHalted as error:
                self._halt(str(error))
                raise
            signed, self._signed = self._signed, []
            if signed:
                self._publish(signed[:-1], signed[-1])

    def _halt(self, reason: str) -> None:
        self.halted = reason
        log.error("audit log: storing stopped — %s", reason)

    def _publish(self, others: list[Checkpoint], own: Checkpoint) -> None:
        for sink in self.sinks:
            try:
                sink.publish([*others, own] if sink.takes_others else [own])
            except Exception as error:  # stored and signed: the sink keeps it for its next publication
                log.warning("audit checkpoint at record %s not published yet: %s", own.notification_id, error)
        newest = own
        if self._published is None or newest.notification_id > self._published.notification_id:
            self._published = newest

    def anchor(self) -> Checkpoint | None:
        """The newest checkpoint known to be published: this process's own, or what its sinks hold."""
        newest = self._published
        for sink in self.sinks:
            try:
                last = sink.last()
            except Exception as error:
                raise ChainHalted(f"the published checkpoints cannot be read: {error}") from None
            if last is not None and (newest is None or last.notification_id > newest.notification_id):
                newest = last
        return newest

    def check(self, c: Any, sql: Callable[[str], str]) -> Head:
        """Inside the storing transaction, holding the write lock: the head must be the last signed checkpoint,
        and that one must be, or chain forward from, the newest published checkpoint. Raises `ChainHalted`."""
        if self.signer is None:
            raise ChainHalted("no signing key: this process cannot extend the signed log")
        verify_key = self.signer.public_key()
        c.execute(_HEAD_AND_LAST_CHECKPOINT)  # one statement: one round trip on PostgreSQL, where it was two
        row = c.fetchone()
        head = None if row["head_id"] is None else {"notification_id": row["head_id"], "chain_hash": row["head_hash"]}
        last = None if row["notification_id"] is None else Checkpoint.from_row(row)
        anchor = self.anchor()
        if head is None:
            if last is not None:
                raise ChainHalted(f"record {last.notification_id}: a checkpoint exists, but the chain is empty")
            if anchor is not None:
                raise ChainHalted(
                    f"the store's log is empty, but the {anchor.describe()} was published: records were removed"
                )
            return Head(GENESIS, None, [])
        head_id = int(head["notification_id"])
        if last is None:
            raise ChainHalted(f"record {head_id}: the chain's head is not covered by any signed checkpoint")
        if last.notification_id != head_id or last.chain_hash != head["chain_hash"]:
            raise ChainHalted(
                f"record {head_id}: the chain's head is not the last signed checkpoint (record {last.notification_id})"
            )
        to_publish: list[Checkpoint] = []
        if last != self._trusted:
            if not last.valid(verify_key):
                raise ChainHalted(f"record {head_id}: the last checkpoint's signature is invalid")
            if anchor is not None and anchor != last:
                to_publish = self._forward(c, sql, anchor, last)
        if last.records is None:  # the first release's checkpoints did not count
            c.execute(sql("SELECT COUNT(*) AS n FROM audit_chain WHERE notification_id <= ?"), (head_id,))
            last = Checkpoint(**{**asdict(last), "records": int(c.fetchone()["n"])})
        self._trusted = last
        return Head(bytes.fromhex(last.chain_hash), last, to_publish)

    def _forward(self, c: Any, sql: Callable[[str], str], anchor: Checkpoint, last: Checkpoint) -> list[Checkpoint]:
        """The store's checkpoints from the published `anchor` to its `last`, each signed and chaining to the one
        before; raises `ChainHalted` naming the first record where they do not."""
        if last.notification_id < anchor.notification_id:
            raise ChainHalted(
                f"record {last.notification_id}: the store's last checkpoint is older than the published "
                f"{anchor.describe()}: records or checkpoints were removed"
            )
        c.execute(
            sql(f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE notification_id >= ? "
                "ORDER BY notification_id"),
            (anchor.notification_id,),
        )  # fmt: skip
        rows = [Checkpoint.from_row(row) for row in c.fetchall()]
        if not rows or rows[0] != anchor:
            raise ChainHalted(
                f"record {anchor.notification_id}: the store does not hold the published {anchor.describe()}"
            )
        # the last one's signature (checked by the caller) covers its predecessor's digest, which covers that one's
        # signed bytes and signature, and so on back to the anchor: the links are enough for the ones between
        for before, after in zip(rows, rows[1:], strict=False):
            if after.previous != before.digest():
                raise ChainHalted(
                    f"record {after.notification_id}: the checkpoint does not follow from the published "
                    f"{anchor.describe()}"
                )
        return rows[1:]

    def extend(self, c: Any, sql: Callable[[str], str], head: Head, links: Iterable[tuple[int, Any]]) -> None:
        """Append the links of newly stored events (notification id, stored event) and sign the new head."""
        rows = sorted(links, key=lambda pair: pair[0])
        if not rows:
            return
        assert self.signer is not None
        previous = head.chain_hash
        values = []
        for notification_id, stored in rows:
            record = record_hash(stored.originator_id, stored.originator_version, stored.topic, stored.state)
            previous = chain_hash(previous, record)
            values.append((notification_id, record.hex(), previous.hex()))

        # one statement for all links on PostgreSQL (executemany would cost a round trip per link)
        statement = "INSERT INTO audit_chain (notification_id, record_hash, chain_hash) VALUES (?, ?, ?)"
        insert_rows(c, statement, values, "?" if sql("?") == "?" else "%s")
        before = head.checkpoint
        checkpoint = sign(
            self.signer,
            rows[-1][0],
            ((before.records or 0) if before else 0) + len(rows),
            previous,
            before.digest() if before else GENESIS.hex(),
        )
        c.execute(
            sql(f"INSERT INTO audit_checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
            (checkpoint.notification_id, checkpoint.chain_hash, checkpoint.signed_at, checkpoint.key_id,
             checkpoint.signature, checkpoint.records, checkpoint.previous),
        )  # fmt: skip
        self._signed = [*head.to_publish, checkpoint]
        self._trusted = checkpoint
