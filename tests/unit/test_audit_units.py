"""The audit's pure parts: the hash chain's verdicts, and sealing persons with their own keys."""

from __future__ import annotations

import base64
import os
import secrets
import sqlite3
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatbridge.audit import verify as verifying
from chatbridge.journal import chain
from chatbridge.journal.checkpoints import CheckpointFile
from chatbridge.journal.sealing import FOREVER, PSEUDONYM, MemoryKeyTable, PersonKeys


@dataclass
class Stored:
    originator_id: object
    originator_version: int
    topic: str
    state: bytes


def _database() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    for statement in chain.CREATE_STATEMENTS:
        db.execute(statement)
    return db


def store(db: sqlite3.Connection, guard: chain.Guard, records: list[tuple[int, Stored]]) -> None:
    """One storing transaction, as the recorders run it."""
    with guard.writing():
        c = db.cursor()
        c.execute("BEGIN")
        try:
            guard.extend(c, lambda s: s, guard.check(c, lambda s: s), records)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")


def build(n: int = 8) -> tuple[list[tuple[int, Stored]], sqlite3.Connection, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    records = [(i, Stored(uuid4(), 1, "chatbridge.domain.aggregates:ChatGroup.Registered", f"{{{i}}}".encode()))
               for i in range(1, n + 1)]  # fmt: skip
    db = _database()
    guard = chain.Guard(key)
    store(db, guard, records[:4])  # two transactions, two checkpoints
    store(db, guard, records[4:])
    return records, db, key


def check(
    records: list[tuple[int, Stored]],
    db: sqlite3.Connection,
    key: Ed25519PrivateKey,
    published: list[chain.Checkpoint] | None = None,
) -> verifying.Verification:
    hashes = ((i, chain.record_hash(s.originator_id, s.originator_version, s.topic, s.state)) for i, s in records)
    links = [verifying.Link(*row) for row in db.execute("SELECT * FROM audit_chain ORDER BY notification_id")]
    checkpoints = [chain.Checkpoint.from_row(row) for row in db.execute("SELECT * FROM audit_checkpoints")]
    return verifying.verify(hashes, links, checkpoints, key.public_key(), published or [])


def test_an_untouched_log_verifies() -> None:
    records, db, key = build()
    result = check(records, db, key)
    assert result.ok and result.records == 8 and result.checkpoints == 2 and result.last_checkpoint == 8


def test_each_kind_of_tampering_is_named_at_its_first_record() -> None:
    records, db, key = build()
    altered = [(i, Stored(s.originator_id, s.originator_version, s.topic, b"{}") if i == 3 else s) for i, s in records]
    assert (check(altered, db, key).first.notification_id, check(altered, db, key).first.problem) == (
        3, "altered",
    )  # fmt: skip
    missing = [r for r in records if r[0] != 3]
    assert check(missing, db, key).first.problem == "missing"
    inserted = [*records, (9, Stored(uuid4(), 1, "x", b"{}"))]
    assert (check(inserted, db, key).first.notification_id, check(inserted, db, key).first.problem) == (
        9, "inserted",
    )  # fmt: skip
    swapped = [(3, records[3][1]), (4, records[2][1])]
    swapped = [*records[:2], *swapped, *records[4:]]
    first = check(swapped, db, key).first
    assert (first.notification_id, first.problem) == (3, "reordered")


def _recompute(db: sqlite3.Connection, records: list[tuple[int, Stored]]) -> None:
    """What anyone who can write the tables can do: a fresh chain over the records, with SHA-256 alone."""
    db.execute("DELETE FROM audit_chain")
    previous = chain.GENESIS
    for i, s in records:
        record = chain.record_hash(s.originator_id, s.originator_version, s.topic, s.state)
        previous = chain.chain_hash(previous, record)
        db.execute("INSERT INTO audit_chain VALUES (?, ?, ?)", (i, record.hex(), previous.hex()))


def test_a_recomputed_chain_or_another_key_fails_the_signatures() -> None:
    records, db, key = build()
    assert check(records, db, Ed25519PrivateKey.generate()).first.problem == "checkpoint invalid"
    # the attacker alters record 2 and recomputes every link, but cannot sign
    records[1] = (2, Stored(uuid4(), 1, "x", b"{}"))
    _recompute(db, records)
    result = check(records, db, key)
    assert not result.ok and {f.problem for f in result.findings} == {"chain altered", "unsigned"}


def test_checkpoints_chain_and_the_published_copies_catch_what_the_store_alone_cannot() -> None:
    records, db, key = build(12)
    published = [chain.Checkpoint.from_row(row) for row in db.execute("SELECT * FROM audit_checkpoints")]
    assert [(c.notification_id, c.records) for c in published] == [(4, 4), (12, 12)]
    assert published[1].previous == published[0].digest()
    assert check(records, db, key, published).ok
    # cut the tail with its links and checkpoint: the store alone looks whole, the published copy does not
    db.execute("DELETE FROM audit_chain WHERE notification_id > 4")
    db.execute("DELETE FROM audit_checkpoints WHERE notification_id > 4")
    assert check(records[:4], db, key).ok
    first = check(records[:4], db, key, published).first
    assert first is not None and (first.notification_id, first.problem) == (5, "contradicts published checkpoint")
    assert "checkpoint at record 12 (12 records" in first.detail


def test_the_writer_refuses_a_head_it_did_not_sign_and_then_stores_nothing() -> None:
    records, db, key = build(4)
    guard = chain.Guard(key)
    more = [(5, Stored(uuid4(), 1, "x", b"{5}"))]
    _recompute(db, [(i, Stored(uuid4(), 1, "x", b"{}")) for i, _ in records])  # a forged chain, old checkpoint
    try:
        store(db, guard, more)
    except chain.ChainHalted as error:
        assert "record 4" in str(error)
    else:
        raise AssertionError("the forged head was extended")
    assert guard.halted is not None
    db.execute("DELETE FROM audit_checkpoints")  # even a head that looks fresh is refused now
    with pytest.raises(chain.ChainHalted):
        store(db, guard, more)
    assert db.execute("SELECT COUNT(*) FROM audit_chain").fetchone()[0] == 4


def test_the_writer_refuses_a_store_behind_what_it_published(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    records = [(i, Stored(uuid4(), 1, "x", f"{{{i}}}".encode())) for i in range(1, 7)]
    db = _database()
    sink = CheckpointFile(tmp_path / "checkpoints.jsonl")
    store(db, chain.Guard(key, [sink]), records[:3])
    store(db, chain.Guard(key, [sink]), records[3:5])  # another process: it reads the anchor from the file
    assert [c.notification_id for c in sink.read()] == [3, 5]
    assert stat.S_IMODE(os.stat(sink.path).st_mode) == 0o600
    db.execute("DELETE FROM audit_chain WHERE notification_id > 3")  # cut the tail, checkpoint and all
    db.execute("DELETE FROM audit_checkpoints WHERE notification_id > 3")
    with pytest.raises(chain.ChainHalted, match="record 3: the store's last checkpoint is older"):
        store(db, chain.Guard(key, [sink]), records[5:])


P = "a" * 32


def day(n: int) -> datetime:
    return datetime(2027, 1, n, 12, tzinfo=UTC)


def test_sealed_persons_open_while_the_key_exists_and_only_as_pseudonym_after() -> None:
    persons = PersonKeys(b"k" * 32, MemoryKeyTable())
    token = persons.seal("drk", P, day(1))
    assert P not in token and persons.open(token) == P
    pseudonym = persons.pseudonym("drk", P)
    assert PSEUDONYM.fullmatch(pseudonym) and persons.pseudonym("drk", pseudonym) == pseudonym
    # a HiOrg id spelt like that pseudonym is another person: its own pseudonym, its own key
    assert persons.pseudonym("drk", str(pseudonym)) != pseudonym
    assert persons.seal("drk", str(pseudonym), day(1)) != f"enc1:{pseudonym}:"
    assert persons.pseudonym("asb", P) != pseudonym  # per organisation
    assert persons.forget("drk", P) and not persons.forget("drk", P)  # an operator's erasure: for ever
    assert persons.open(token) == pseudonym and persons.is_forgotten("drk", P)
    assert persons.erased_until("drk", P) == FOREVER
    assert persons.seal("drk", P, day(28)) == f"enc1:{pseudonym}:"  # stays forgotten, whatever the time
    assert persons.open(persons.seal("drk", P, day(28))) == pseudonym
    assert persons.open("plain") == "plain"


def test_a_deletion_erases_the_names_before_it_and_a_later_fact_starts_a_new_key() -> None:
    persons = PersonKeys(b"k" * 32, MemoryKeyTable())
    pseudonym = persons.pseudonym("drk", P)
    first = persons.seal("drk", P, day(1))
    assert first.startswith(f"enc2:{pseudonym}:1:")
    assert persons.forget("drk", P, until=day(5))  # HiOrg-Server deleted the person on day 5
    assert persons.open(first) == pseudonym and persons.is_forgotten("drk", P)
    assert persons.seal("drk", P, day(4)) == f"enc1:{pseudonym}:"  # dated before the deletion: erased
    # the reconciler's outcomes start no new person: the old one's removal stays pseudonymous
    assert persons.seal("drk", P, day(6), renew=False) == f"enc1:{pseudonym}:"
    again = persons.seal("drk", P, day(5))  # from the deletion's time on: a new person, a new key
    assert again.startswith(f"enc2:{pseudonym}:2:") and persons.open(again) == P
    assert not persons.is_forgotten("drk", P) and persons.is_known("drk", P)
    outcome = persons.seal("drk", P, day(6), renew=False)
    assert outcome.startswith(f"enc2:{pseudonym}:2:") and persons.open(outcome) == P
    assert persons.open(first) == pseudonym  # the old incarnation stays erased
    # a second deletion moves the horizon on; one dated earlier never moves it back
    assert persons.forget("drk", P, until=day(9)) and not persons.forget("drk", P, until=day(7))
    assert persons.erased_until("drk", P) == day(9)
    assert persons.open(again) == pseudonym and persons.seal("drk", P, day(8)) == f"enc1:{pseudonym}:"
    assert persons.seal("drk", P, day(10)).startswith(f"enc2:{pseudonym}:3:")


def test_a_token_of_the_previous_release_opens_with_the_first_key() -> None:
    table = MemoryKeyTable()
    persons = PersonKeys(b"k" * 32, table)
    pseudonym = persons.pseudonym("drk", P)
    key = table.load_many({pseudonym: "drk"})[pseudonym].keys[1]
    assert key is not None
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(nonce, P.encode(), pseudonym.encode())
    legacy = f"enc1:{pseudonym}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"
    assert persons.open(legacy) == P
    persons.forget("drk", P, until=day(5))
    assert persons.open(legacy) == pseudonym


def test_a_recorded_erasure_read_again_destroys_only_the_keys_it_named() -> None:
    table = MemoryKeyTable()
    persons = PersonKeys(b"k" * 32, table)
    pseudonym = persons.pseudonym("drk", P)
    persons.seal("drk", P, day(1))
    persons.forget("drk", P, until=day(5), up_to=1)
    newer = persons.seal("drk", P, day(6))
    # the Forgotten fact of day 5 is decoded again (a replay, an audit): the new person's key 2 stays
    persons.forget_pseudonym("drk", pseudonym, day(5), 1)
    fresh = PersonKeys(b"k" * 32, table)  # and another process reading it, from the table alone
    fresh.forget_pseudonym("drk", pseudonym, day(5), 1)
    assert persons.open(newer) == P and fresh.open(newer) == P
    # a fact stored before its keys were destroyed (a crash between them) is carried out when read
    crashed = PersonKeys(b"k" * 32, MemoryKeyTable())
    token = crashed.seal("drk", P, day(1))
    crashed.forget_pseudonym("drk", pseudonym, day(5), 1)
    assert crashed.open(token) == pseudonym and crashed.erased_until("drk", P) == day(5)


def test_a_planned_erasure_seals_the_rest_of_its_batch_and_goes_once_the_batch_is_stored() -> None:
    persons = PersonKeys(b"k" * 32, MemoryKeyTable())
    pseudonym = persons.pseudonym("drk", P)
    before = persons.seal("drk", P, day(1))  # an earlier batch
    assert persons.plan_erasure("drk", P, day(5)) == 1  # the deletion, in the policy
    assert persons.plan_erasure("drk", P, day(3)) == 1  # a second one in the same batch, dated earlier
    # the batch's events are sealed after the policy, in any order
    later = persons.seal("drk", P, day(6))
    earlier = persons.seal("drk", P, day(4))
    assert later.startswith(f"enc2:{pseudonym}:2:") and earlier == f"enc1:{pseudonym}:"
    assert persons.open(before) == P  # not destroyed until the batch is stored
    assert persons.erase_planned("drk", P) and not persons.erase_planned("drk", P)
    assert persons.open(before) == pseudonym and persons.open(later) == P
    assert persons.erased_until("drk", P) == day(5)


def test_an_erasure_planned_for_a_batch_not_stored_is_abandoned() -> None:
    persons = PersonKeys(b"k" * 32, MemoryKeyTable())
    before = persons.seal("drk", P, day(1))
    persons.plan_erasure("drk", P, day(5))
    assert persons.seal("drk", P, day(4)) == f"enc1:{persons.pseudonym('drk', P)}:"
    persons.abandon_erasure("drk", P)
    assert not persons.erase_planned("drk", P)
    assert persons.open(before) == P and persons.erased_until("drk", P) is None
    assert persons.open(persons.seal("drk", P, day(4))) == P


def test_writers_sharing_a_store_and_a_file_follow_each_others_checkpoints(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    records = [(i, Stored(uuid4(), 1, "x", f"{{{i}}}".encode())) for i in range(1, 9)]
    db = _database()
    file = tmp_path / "checkpoints.jsonl"
    one, other = chain.Guard(key, [CheckpointFile(file)]), chain.Guard(key, [CheckpointFile(file)])
    for n, (guard, batch) in enumerate(((one, records[:2]), (other, records[2:4]), (other, records[4:5]),
                                        (one, records[5:7]), (one, records[7:]))):  # fmt: skip
        store(db, guard, batch)
        assert guard.halted is None, n
    published = CheckpointFile(file).read()
    assert [c.notification_id for c in published] == [2, 4, 5, 7, 8]
    assert check(records, db, key, published).ok
    # a replica without the file follows the others from its own last checkpoint, read back from the store
    apart = chain.Guard(key)
    store(db, apart, [(9, Stored(uuid4(), 1, "x", b"{9}"))])
    store(db, one, [(10, Stored(uuid4(), 1, "x", b"{10}"))])
    store(db, apart, [(11, Stored(uuid4(), 1, "x", b"{11}"))])
    assert apart.halted is None and one.halted is None
