"""The audit's use cases beside the queries: verify the log, forget a person, the records of processing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.application import AggregateNotFoundError

from chatbridge.application import IntakeApplication
from chatbridge.audit import verify as verifying
from chatbridge.audit.queries import NotFound
from chatbridge.domain.aggregates import Person
from chatbridge.domain.lifecycle import Policy
from chatbridge.journal import chain
from chatbridge.journal.sealing import FOREVER
from chatbridge.projections.store import Store
from chatbridge.settings import Settings


def _records(app: IntakeApplication) -> Iterator[tuple[int, bytes]]:
    for n in app.notifications():
        yield n.id, chain.record_hash(n.originator_id, n.originator_version, str(n.topic), _as_stored(n.state))


def _as_stored(state: object) -> bytes:
    """The row's state as bytes, whatever the database returned: whoever can write the database can store a record
    as text (SQLite keeps any value in any column). It is hashed as it is, and so found altered, not a crash."""
    if isinstance(state, bytes | bytearray | memoryview):
        return bytes(state)
    return str(state).encode("utf-8", "surrogatepass")


def verify_log(
    app: IntakeApplication, verify_key: Ed25519PublicKey, published: Sequence[chain.Checkpoint] = ()
) -> verifying.Verification:
    """Recompute the hash chain from the stored events and check it against its links, its signed checkpoints and
    the checkpoints `published` outside the store (the auditor's file, the topic)."""
    datastore = getattr(app.recorder, "datastore", None)
    if datastore is None:
        raise ValueError("the in-memory store keeps no hash chain")
    with datastore.transaction(commit=False) as c:
        c.execute("SELECT notification_id, record_hash, chain_hash FROM audit_chain ORDER BY notification_id")
        links = [verifying.Link(r["notification_id"], r["record_hash"], r["chain_hash"]) for r in c.fetchall()]
        c.execute(
            "SELECT notification_id, chain_hash, signed_at, key_id, signature, records, previous "
            "FROM audit_checkpoints ORDER BY notification_id"
        )
        checkpoints = [chain.Checkpoint.from_row(r) for r in c.fetchall()]
    return verifying.verify(_records(app), links, checkpoints, verify_key, published)


@dataclass(frozen=True)
class Forgotten:
    org: str
    pseudonym: str
    key_destroyed: bool  # False: it was destroyed before (the person was deleted or forgotten already)


def verification_document(result: verifying.Verification) -> dict[str, Any]:
    """`audit verify`'s answer as a document (its JSON, and the report's integrity section): every finding in
    record order, and the one to look at first."""

    def row(finding: verifying.Finding) -> dict[str, Any]:
        return {"record": finding.notification_id, "problem": finding.problem, "detail": finding.detail}

    return {
        "ok": result.ok,
        "records": result.records,
        "links": result.links,
        "checkpoints": result.checkpoints,
        "last_checkpoint": result.last_checkpoint,
        "unsigned_tail": result.unsigned_tail,
        "published_checkpoints": result.published,
        "last_published": result.last_published,
        "first_problem": None if result.first is None else row(result.first),
        "problems": [row(f) for f in sorted(result.findings, key=lambda f: f.notification_id)],
    }


def forget_person(store: Store, org: str, person_id: str, at: datetime) -> Forgotten:
    """`gdpr forget`: record the erasure, rename the person in the projection, destroy the key, wipe free space.

    The projection is brought up to date while the key still exists, so every row that names the person is
    rewritten under the pseudonym before the key goes; the database is then compacted so that no old row
    version survives in free pages or the write-ahead log.
    """
    app = store.app
    persons = app.persons
    if not persons.is_known(org, person_id):
        raise NotFound(f"person {person_id!r} of organisation {org!r} not found")
    pseudonym = persons.pseudonym(org, person_id)
    already = persons.is_forgotten(org, person_id)
    try:
        person: Person = app.repository.get(Person.create_id(org, pseudonym))
    except AggregateNotFoundError:
        person = Person(org, pseudonym, person_id, "gdpr forget", at)
    if persons.erased_until(org, person_id) != FOREVER:  # not erased for ever yet (HiOrg's deletion is until then)
        person.forget(pseudonym, at, "gdpr forget", persons.key_version(org, person_id))
        app.save(person)
    store.projection.catch_up()  # folding the Forgotten event renames the rows, and its decoding destroys the key
    persons.forget(org, person_id)  # every key, for ever (in case the projection had folded it before)
    store.compact()
    return Forgotten(org, pseudonym, not already)


def records_of_processing(settings: Settings, policy: Policy) -> list[dict[str, Any]]:
    """Art. 30 records of processing, from the configuration and the lifecycle policy."""
    from chatbridge.backends.settings import MatrixSettings

    try:
        matrix = MatrixSettings()
        operator = f"Matrix homeserver {matrix.server_name} ({matrix.base_url})"
    except Exception:  # an unreadable backend configuration must not hide the report
        operator = "the configured Matrix homeserver"
    full_use, view = policy.full_use, policy.view
    rows = [
        ("controller", "each organisation using HiOrg-Server's chat feature; HiOrg-Server and chatbridge's "
         "operator act as processors"),
        ("purpose", "a group chat per HiOrg-Server event (Dienst, Termin) for the persons responsible for and "
         "firmly assigned to it, kept in step with the staffing, and deleted after the event"),
        ("purpose", "proof for data-protection officers: who had access to which chat and when, deletions, "
         "transfers (this audit)"),
        ("legal basis", "the organisation's decision to enable the chat feature (Art. 6 (1) b/f GDPR), set in "
         "HiOrg-Server"),
        ("categories of persons", "members of the organisation responsible for or staffed on an event with chat"),
        ("categories of data", "persons: HiOrg user id (pseudonymous), staffing status per event, person status "
         "(active/restricted/external/blocked/deleted); no names or e-mail addresses"),
        ("categories of data", "organisation: short code, name, e-mail, postal address (the tenant at the chat "
         "operator)"),
        ("categories of data", "events: id, title, start, end, chat flag, cancellation, deletion"),
        ("categories of data", "chat content: end-to-end encrypted at the chat server; chatbridge never holds "
         "room keys and cannot read it"),
        ("recipients", f"chat operator: {operator} — tenant data, the members' chat account ids "
         "(derived from the HiOrg user id), chat membership and roles"),
        ("recipients", f"HiOrg-Server: chat status (link, phase, member counts) on {settings.status_topic}"),
        ("transfers to third countries", "none by chatbridge; depends on where the chat operator runs"),
        ("retention", f"chat active until {_days(full_use)} after the event ends (FULL_USE), then read-only for "
         f"{_days(view)} (VIEW), then deleted with all content; earlier when the chat, the organisation's "
         "feature or the event is disabled or deleted"),
        ("retention", "event log: kept as proof; a deleted or forgotten person's key is destroyed "
         "(crypto-shredding), after which the log names the person by pseudonym only"),
        ("technical measures", "per-person AES-256-GCM keys and keyed pseudonyms (HMAC-SHA256); hash chain over "
         "the event log with Ed25519-signed checkpoints; end-to-end encrypted, invite-only chats"),
        ("store", f"{settings.store} (" + (str(settings.database) if settings.store == "sqlite"
                                             else f"{settings.postgres_host}:{settings.postgres_port}/"
                                             f"{settings.postgres_dbname}") + ")"),
    ]  # fmt: skip
    return [{"section": section, "entry": entry} for section, entry in rows]


def _days(period: Any) -> str:
    seconds = int(period.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds / 3600:g} hours"
