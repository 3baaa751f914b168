"""The audit's pure parts: the hash chain's verdicts, and sealing persons with their own keys."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import uuid4

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chatbridge.audit import chain
from chatbridge.audit.shredding import PSEUDONYM, MemoryKeyTable, PersonKeys


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


def test_sealed_persons_open_while_the_key_exists_and_only_as_pseudonym_after() -> None:
    persons = PersonKeys(b"k" * 32, MemoryKeyTable())
    token = persons.seal("drk", "a" * 32)
    assert "a" * 32 not in token and persons.open(token) == "a" * 32
    pseudonym = persons.pseudonym("drk", "a" * 32)
    assert PSEUDONYM.fullmatch(pseudonym) and persons.pseudonym("drk", pseudonym) == pseudonym
    assert persons.pseudonym("asb", "a" * 32) != pseudonym  # per organisation
    assert persons.forget("drk", "a" * 32) and not persons.forget("drk", "a" * 32)
    assert persons.open(token) == pseudonym
    assert persons.open(persons.seal("drk", "a" * 32)) == pseudonym  # stays forgotten
    assert persons.open("plain") == "plain"
