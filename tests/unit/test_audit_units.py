"""The audit's pure parts: the hash chain's verdicts, and sealing persons with their own keys."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import uuid4

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatbridge.audit import chain
from chatbridge.audit.shredding import FOREVER, PSEUDONYM, MemoryKeyTable, PersonKeys


@dataclass
class Stored:
    originator_id: object
    originator_version: int
    topic: str
    state: bytes


class Cursor:
    """Enough of a DB-API cursor for `chain.link`: two tables as lists."""

    def __init__(self) -> None:
        self.links: list[tuple] = []
        self.checkpoints: list[tuple] = []
        self._row: dict | None = None

    def execute(self, statement: str, params: tuple = ()) -> None:
        if statement.startswith("SELECT"):
            self._row = {"chain_hash": self.links[-1][2]} if self.links else None
        else:
            self.checkpoints.append(params)

    def fetchone(self) -> dict | None:
        return self._row

    def executemany(self, statement: str, rows: list[tuple]) -> None:
        self.links.extend(rows)


def build(n: int = 8) -> tuple[list[tuple[int, Stored]], Cursor, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    records = [(i, Stored(uuid4(), 1, "chatbridge.domain.aggregates:ChatGroup.Registered", f"{{{i}}}".encode()))
               for i in range(1, n + 1)]  # fmt: skip
    cursor = Cursor()
    chain.link(cursor, lambda s: s, records[:4], key)  # two transactions, two checkpoints
    chain.link(cursor, lambda s: s, records[4:], key)
    return records, cursor, key


def check(records: list[tuple[int, Stored]], cursor: Cursor, key: Ed25519PrivateKey) -> chain.Verification:
    hashes = ((i, chain.record_hash(s.originator_id, s.originator_version, s.topic, s.state)) for i, s in records)
    links = [chain.Link(*row) for row in cursor.links]
    checkpoints = [chain.Checkpoint(*row) for row in cursor.checkpoints]
    return chain.verify(hashes, links, checkpoints, key.public_key())


def test_an_untouched_log_verifies() -> None:
    records, cursor, key = build()
    result = check(records, cursor, key)
    assert result.ok and result.records == 8 and result.checkpoints == 2 and result.last_checkpoint == 8


def test_each_kind_of_tampering_is_named_at_its_first_record() -> None:
    records, cursor, key = build()
    altered = [(i, Stored(s.originator_id, s.originator_version, s.topic, b"{}") if i == 3 else s) for i, s in records]
    assert (check(altered, cursor, key).first.notification_id, check(altered, cursor, key).first.problem) == (
        3, "altered",
    )  # fmt: skip
    missing = [r for r in records if r[0] != 3]
    assert check(missing, cursor, key).first.problem == "missing"
    inserted = [*records, (9, Stored(uuid4(), 1, "x", b"{}"))]
    assert (check(inserted, cursor, key).first.notification_id, check(inserted, cursor, key).first.problem) == (
        9, "inserted",
    )  # fmt: skip
    swapped = [(3, records[3][1]), (4, records[2][1])]
    swapped = [*records[:2], *swapped, *records[4:]]
    first = check(swapped, cursor, key).first
    assert (first.notification_id, first.problem) == (3, "reordered")


def test_a_recomputed_chain_or_another_key_fails_the_signatures() -> None:
    records, cursor, key = build()
    assert check(records, cursor, Ed25519PrivateKey.generate()).first.problem == "checkpoint invalid"
    # the attacker alters record 2 and recomputes every link, but cannot sign
    records[1] = (2, Stored(uuid4(), 1, "x", b"{}"))
    forged = Cursor()
    chain.link(forged, lambda s: s, records, None)
    forged.checkpoints = cursor.checkpoints
    result = check(records, forged, key)
    assert not result.ok and {f.problem for f in result.findings} == {"chain altered"}


P = "a" * 32


def day(n: int) -> datetime:
    return datetime(2027, 1, n, 12, tzinfo=UTC)


def test_sealed_persons_open_while_the_key_exists_and_only_as_pseudonym_after() -> None:
    persons = PersonKeys(b"k" * 32, MemoryKeyTable())
    token = persons.seal("drk", P, day(1))
    assert P not in token and persons.open(token) == P
    pseudonym = persons.pseudonym("drk", P)
    assert PSEUDONYM.fullmatch(pseudonym) and persons.pseudonym("drk", pseudonym) == pseudonym
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
