"""The tamper-evident log: a hash chain over the notification log, closed by signed checkpoints that chain too.

Each stored event gets a link in `audit_chain`, written by the event store's own transaction (see
`persistence`), so no event is ever stored without its link:

    record_hash(n) = SHA-256(originator id, originator version, topic, state bytes)   (length-prefixed)
    chain_hash(n)  = SHA-256(chain_hash(previous link) ‖ record_hash(n))                 (genesis: 32 zero bytes)

The chain needs no key, so whoever can write the tables can recompute it. What they cannot make is a signature:
every transaction signs a checkpoint over its last link — the record's notification id, how many records the log
holds up to it, the chain hash, and the digest of the checkpoint before it (SHA-256 of that one's signed bytes and
signature, as CloudTrail's digest files carry their predecessor's signature). So the checkpoints form a chain of
their own, each one vouching for the whole log before it, and each is also published outside the store (see
`audit.checkpoints`): deleting or rewriting checkpoints together with the chain shows against the published copies.

The writer (`Guard`) checks, in the storing transaction, that the chain's head is the last signed checkpoint and
that this checkpoint is, or follows from, the last one it published; otherwise it refuses to store anything more:
chatbridge never signs a log it did not write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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
ADDED_COLUMNS = (("audit_checkpoints", "records", "BIGINT"), ("audit_checkpoints", "previous", "TEXT"))
TABLES = ("audit_chain", "audit_checkpoints")
_CHECKPOINT_COLUMNS = "notification_id, chain_hash, signed_at, key_id, signature, records, previous"


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    unsigned = Checkpoint(notification_id, chain.hex(), _now(), key_id(signer.public_key()), "", records, previous)
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
        c.execute("SELECT notification_id, chain_hash FROM audit_chain ORDER BY notification_id DESC LIMIT 1")
        head = c.fetchone()
        c.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY notification_id DESC LIMIT 1")
        row = c.fetchone()
        last = Checkpoint.from_row(row) if row else None
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
        from chatbridge.persistence import insert_rows  # here: persistence imports this module

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


@dataclass(frozen=True)
class Finding:
    notification_id: int
    # altered | missing | inserted | reordered | chain altered | checkpoint invalid | checkpoint removed |
    # contradicts published checkpoint | published checkpoint invalid | unsigned
    problem: str
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
    unsigned_tail: int = 0  # records after the last valid checkpoint
    published: int = 0  # published checkpoints compared (file, topic)
    last_published: int | None = None  # the newest published checkpoint that agrees with the store

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        """The finding to look at: the earliest record whose content was changed, else the earliest checkpoint
        problem, else the unsigned tail (a checkpoint removed leaves records unsigned: the removal says more)."""
        return min(self.findings, key=lambda f: (_RANK.get(f.problem, 0), f.notification_id), default=None)


_RANK = {"checkpoint invalid": 1, "checkpoint removed": 1, "published checkpoint invalid": 1, "unsigned": 2}


@dataclass(frozen=True)
class Link:
    notification_id: int
    record_hash: str
    chain_hash: str


@dataclass
class _LogView:
    """What the published checkpoints need of the log recomputed from its events: the chain at the positions they
    name (not at every record: a log of millions would be held twice)."""

    positions: set[int]  # record counts whose (notification id, chain hash) is wanted
    ids: set[int]  # notification ids whose (position, chain hash) is wanted (the first release's checkpoints)
    at: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # position → (notification id, chain hash)
    of: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # notification id → (position, chain hash)
    length: int = 0
    last: int = 0  # the last record's notification id

    def add(self, notification_id: int, chain: bytes) -> None:
        self.length += 1
        self.last = notification_id
        if self.length in self.positions:
            self.at[self.length] = (notification_id, chain)
        if notification_id in self.ids:
            self.of[notification_id] = (self.length, chain)


def verify(
    records: Iterator[tuple[int, bytes]],
    links: Sequence[Link],
    checkpoints: Sequence[Checkpoint],
    verify_key: Ed25519PublicKey,
    published: Sequence[Checkpoint] = (),
) -> Verification:
    """Compare the events (as (notification id, record hash), in id order) with the chain, its checkpoints and the
    checkpoints published outside the store.

    Reports every finding; `first` is the one to look at (see `Verification.first`).
    """
    result = Verification(links=len(links), checkpoints=len(checkpoints))
    # the chain itself: every link must follow from the one before it
    previous = GENESIS
    recomputed: dict[int, tuple[int, str]] = {}  # notification id → (records up to it, chain hash)
    for position, linked in enumerate(sorted(links, key=lambda row: row.notification_id), start=1):
        previous = chain_hash(previous, bytes.fromhex(linked.record_hash))
        recomputed[linked.notification_id] = (position, previous.hex())
        if previous.hex() != linked.chain_hash:
            result.findings.append(
                Finding(linked.notification_id, "chain altered", "the link does not follow from the one before")
            )
            break
    _check_stored_checkpoints(result, recomputed, checkpoints, verify_key)
    last_signed = result.last_checkpoint or 0
    # the events against their links, and the chain they make, for the published checkpoints
    stored = {link.notification_id: link for link in links}
    positions_of = {link.record_hash: link.notification_id for link in links}
    counts = {c.records for c in published if c.records is not None}
    view = _LogView({1} | counts | {n + 1 for n in counts}, {c.notification_id for c in published if c.records is None})
    seen: set[int] = set()
    unsigned: list[int] = []
    running = GENESIS
    for notification_id, record in records:
        result.records += 1
        seen.add(notification_id)
        running = chain_hash(running, record)
        view.add(notification_id, running)
        if notification_id > last_signed:
            unsigned.append(notification_id)
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
    result.unsigned_tail = len(unsigned)
    if unsigned:
        what = (
            f"{len(unsigned)} records after the last signed checkpoint (record {last_signed}) are signed by none"
            if result.last_checkpoint is not None
            else f"no signed checkpoint covers the log's {result.records} records"
        )
        result.findings.append(Finding(unsigned[0], "unsigned", what))
    in_store = {checkpoint.notification_id: checkpoint for checkpoint in checkpoints}
    _compare_published(result, view, in_store, published, verify_key)
    return result


def _check_stored_checkpoints(
    result: Verification,
    recomputed: dict[int, tuple[int, str]],
    checkpoints: Sequence[Checkpoint],
    verify_key: Ed25519PublicKey,
) -> None:
    """Each checkpoint in the store: signed by the key, agreeing with the chain, chaining to the one before."""
    expected_key = key_id(verify_key)
    before: Checkpoint | None = None
    for checkpoint in sorted(checkpoints, key=lambda row: row.notification_id):
        if not checkpoint.valid(verify_key):
            reason = "signed by another key" if checkpoint.key_id != expected_key else "its signature is invalid"
            result.findings.append(Finding(checkpoint.notification_id, "checkpoint invalid", reason))
            continue
        found = recomputed.get(checkpoint.notification_id)
        if found is None or found[1] != checkpoint.chain_hash or checkpoint.records not in (None, found[0]):
            result.findings.append(
                Finding(checkpoint.notification_id, "chain altered", "the chain differs from the signed checkpoint")
            )
            continue
        if checkpoint.previous is not None and checkpoint.previous != (before.digest() if before else GENESIS.hex()):
            result.findings.append(
                Finding(checkpoint.notification_id, "checkpoint removed",
                        "the signed checkpoint before this one is no longer in the store")
            )  # fmt: skip
        before = checkpoint
        result.last_checkpoint = checkpoint.notification_id


def _compare_published(
    result: Verification,
    view: _LogView,
    in_store: dict[int, Checkpoint],
    published: Sequence[Checkpoint],
    verify_key: Ed25519PublicKey,
) -> None:
    """Each published checkpoint says: the log's first `records` records hash to `chain_hash`. The events must
    still say so; the first one that does not is named with the records it no longer covers."""
    agreed: Checkpoint | None = None  # the newest published checkpoint the log still agrees with
    for checkpoint in sorted(set(published), key=lambda row: (row.notification_id, row.signed_at)):
        result.published += 1
        if not checkpoint.valid(verify_key):
            result.findings.append(
                Finding(checkpoint.notification_id, "published checkpoint invalid",
                        f"the published {checkpoint.describe()} does not verify with this key")
            )  # fmt: skip
            continue
        count = checkpoint.records
        if count is None:  # the first release's checkpoints: found by notification id
            count = view.of.get(checkpoint.notification_id, (None, b""))[0]
        since = f"after record {agreed.notification_id}" if agreed else "from the first record"
        if count is None or count > view.length:
            result.findings.append(
                Finding(view.last + 1, "contradicts published checkpoint",
                        f"the published {checkpoint.describe()} covers more than the store holds "
                        f"({view.length} records): records {since} were removed or the log was cut")
            )  # fmt: skip
            break
        notification_id, chain = view.at.get(count) or (None, b"")
        if checkpoint.records is None:
            notification_id, chain = checkpoint.notification_id, view.of[checkpoint.notification_id][1]
        if notification_id != checkpoint.notification_id or chain.hex() != checkpoint.chain_hash:
            after = (agreed.records or 0) + 1 if agreed is not None else 1
            suspect = view.at.get(after, (view.last, b""))[0]
            result.findings.append(
                Finding(suspect, "contradicts published checkpoint",
                        f"the log differs from the published {checkpoint.describe()}: records {since} up to it "
                        "were altered, removed, inserted or reordered after they were signed")
            )  # fmt: skip
            break
        if in_store.get(checkpoint.notification_id) != checkpoint:
            result.findings.append(
                Finding(checkpoint.notification_id, "checkpoint removed",
                        f"the published {checkpoint.describe()} is not in the store")
            )  # fmt: skip
        agreed = checkpoint
        result.last_published = checkpoint.notification_id
