"""`audit verify`: the log recomputed from its events and held against the stored links, the stored checkpoints and
the checkpoints published outside the store (`journal.chain` writes them all; this reads them back)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chatbridge.journal.chain import GENESIS, Checkpoint, chain_hash, key_id

log = logging.getLogger(__name__)


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
