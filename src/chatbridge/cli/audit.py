"""`chatbridge audit …` and `chatbridge gdpr …`: parse, call the audit's use cases, print.

Exit codes: 0 done (verify: the log is intact); 1 not found, or verify found the log altered; 2 the audit keys
or the configuration are missing or broken.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from chatbridge import logs
from chatbridge.audit import queries
from chatbridge.audit.queries import NotFound
from chatbridge.audit.service import (
    forget_person,
    records_of_processing,
    verification_document,
    verify_log,
)
from chatbridge.bootstrap import Store, StoreError, audit_keys, compact_store, open_store
from chatbridge.cli.common import err, fail, load_settings, parse_moment
from chatbridge.journal import chain
from chatbridge.journal.checkpoints import CheckpointFile, CheckpointFileError, read_topic
from chatbridge.journal.keys import AuditKeyError, AuditKeys, AuditSettings
from chatbridge.settings import Settings

audit_app = typer.Typer(help="Proof for auditors, from the event log alone: timelines, access, deletions, transfers.")
gdpr_app = typer.Typer(help="Data-subject rights: erase a person's personal data by destroying their key.")


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOption = Annotated[Format, typer.Option("--format", help="table, json or csv.")]
Org = Annotated[str, typer.Option("--org", help="The organisation's short code.")]


@contextmanager
def _store(settings: Settings, keys: AuditKeys | None = None) -> Iterator[Store]:
    try:  # the audit reads an existing store: a wrong path is an error, not an empty answer
        store = open_store(settings, keys=keys, create=False)
    except AuditKeyError as error:
        raise fail(str(error), 2) from None
    except StoreError as error:
        raise fail(str(error)) from None
    try:
        yield store
    except NotFound as error:
        raise fail(str(error)) from None
    finally:
        store.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _emit(document: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], fmt: Format, title: str) -> None:
    if fmt == Format.json:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    elif fmt == Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(row.get(column)) for column in columns] for row in rows)
    else:
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*(_cell(row.get(column)) for column in columns))
        Console(width=200).print(table)


@audit_app.command("chat")
def chat(
    org: Org,
    event: Annotated[str, typer.Option("--event", help="The HiOrg event id.")],
    fmt: FormatOption = Format.table,
) -> None:
    """The chat's full timeline: enabled, staffing, access granted and revoked, read-only, deletion, generations."""
    settings = load_settings(code=2)
    with _store(settings) as store:
        document = queries.chat_timeline(store.app, org, event, settings.policy)
    if fmt == Format.table:
        _emit(document, document["generations"], list(document["generations"][0]), fmt, f"{org}/{event}: generations")
    _emit(document, document["entries"], ["at", "generation", "what", "details", "source"], fmt, f"{org}/{event}")


@audit_app.command("person")
def person(
    org: Org,
    person_id: Annotated[str, typer.Option("--person", help="The HiOrg user id (or a forgotten person's pseudonym).")],
    fmt: FormatOption = Format.table,
) -> None:
    """Every chat the person had access to, from when to when (an Art. 15 access request)."""
    settings = load_settings(code=2)
    with _store(settings) as store:
        document = queries.person_access(store.app, org, person_id, settings.policy)
    columns = ["event_id", "generation", "chat_id", "from", "until", "ended_by"]
    title = f"{org}: access of {document['person']}" + (" (forgotten)" if document["forgotten"] else "")
    _emit(document, document["access"], columns, fmt, title)


@audit_app.command("deletions")
def deletions(
    org: Org,
    since: Annotated[str | None, typer.Option("--since", help="Only deletions at or after (ISO 8601).")] = None,
    now: Annotated[str | None, typer.Option("--now", help="The clock for `overdue` (default: now).")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Every chat deleted, when, by which rule, with the backend's confirmation — and those overdue (Art. 17)."""
    settings = load_settings(code=2)
    moment = parse_moment(now, "--now") if now else datetime.now(UTC)
    with _store(settings) as store:
        document = queries.deletions(
            store.app, org, settings.policy, moment, parse_moment(since, "--since") if since else None
        )
    rows = [{**row, "state": "deleted"} for row in document["deleted"]]
    rows += [{**row, "state": "OVERDUE"} for row in document["overdue"]]
    columns = ["state", "event_id", "generation", "chat_id", "deletion_rule", "delete_at", "deleted_at",
               "confirmation", "note"]  # fmt: skip
    _emit(document, rows, columns, fmt, f"{org}: deletions ({len(document['overdue'])} overdue)")
    if document["overdue"]:
        err.print(f"{len(document['overdue'])} chat generations are overdue for deletion", highlight=False)


@audit_app.command("transfers")
def transfers(org: Org, fmt: FormatOption = Format.table) -> None:
    """Every transfer of organisation data to the chat operator, with the exact fields (Art. 28/30)."""
    settings = load_settings(code=2)
    with _store(settings) as store:
        document = queries.transfers(store.app, org, settings.policy)
    _emit(document, document["transfers"], ["at", "what", "tenant_id", "fields", "source"], fmt, f"{org}: transfers")


@audit_app.command("records-of-processing")
def records(fmt: FormatOption = Format.table) -> None:
    """The Art. 30 records of processing, generated from the configuration and the lifecycle policy."""
    settings = load_settings(code=2)
    rows = records_of_processing(settings, settings.policy)
    _emit({"records_of_processing": rows}, rows, ["section", "entry"], fmt, "Records of processing (Art. 30)")


@audit_app.command("verify")
def verify(
    fmt: FormatOption = Format.table,
    checkpoints: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoints",
            help="A checkpoint file the auditor kept (JSON lines; default CHATBRIDGE_AUDIT_CHECKPOINT_FILE).",
        ),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic",
            help="Also the checkpoints published to this Kafka topic (e.g. "
            "chatbridge.audit-checkpoints.v1, on CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS).",
        ),
    ] = None,
) -> None:
    """Recompute the hash chain over the event log and check it against the signed checkpoints in the store and
    those published outside it; exit 1 if altered, cut, or not covered by a signed checkpoint."""
    settings = load_settings(code=2)
    try:
        keys = audit_keys(settings, create=False)
    except AuditKeyError as error:
        keys = _verify_only_keys(error)
    if keys.verify_key is None:
        raise fail("no key to verify with: set CHATBRIDGE_AUDIT_VERIFY_KEY or CHATBRIDGE_AUDIT_SIGNING_KEY", 2)
    verify_key = keys.verify_key
    published = _published(checkpoints, topic, settings, chain.key_id(verify_key))
    with _store(settings, keys) as store:
        result = verify_log(store.app, verify_key, published)
    document = verification_document(result)
    problems = document["problems"]
    if fmt != Format.table:
        _emit(document, problems, ["record", "problem", "detail"], fmt, "verify")
    elif result.ok:
        against = (
            f"; agrees with {result.published} published checkpoints (the last at record {result.last_published})"
            if result.published
            else "; no published checkpoints compared (--checkpoints FILE, --topic)"
        )
        print(
            f"OK: {result.records} records, chain intact, {result.checkpoints} signed checkpoints valid, "
            f"the last at record {result.last_checkpoint}{against}"
            if result.records
            else "OK: the log is empty"
        )
    else:
        print(f"ALTERED: {result.first}")
        for finding in sorted(result.findings, key=lambda f: f.notification_id)[1:20]:
            print(f"  also {finding}")
    raise typer.Exit(0 if result.ok else 1)


@audit_app.command("report")
def report(
    org: Org,
    out: Annotated[Path, typer.Option("--out", help="FILE.html (the page) or FILE.pdf (printed by Chromium).")],
    start: Annotated[str | None, typer.Option("--from", help="Start of the period (ISO 8601).")] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="End of the period and the clock for overdue (default: now).")
    ] = None,
    person_id: Annotated[str | None, typer.Option("--person", help="Only this person's access (Art. 15).")] = None,
    event: Annotated[str | None, typer.Option("--event", help="Only this event's chat, with every fact.")] = None,
    lang: Annotated[str | None, typer.Option("--lang", help="de or en (default: from the locale).")] = None,
) -> None:
    """The organisation's proof as one document to file: a self-contained HTML page, or the same as PDF."""
    from chatbridge.audit import report as reporting

    if person_id and event:
        raise fail("choose --person or --event, not both", 2)
    language = lang or reporting.default_language()
    if language not in reporting.LANGUAGES:
        raise fail(f"--lang must be one of {', '.join(reporting.LANGUAGES)}", 2)
    scope = reporting.Scope(
        org,
        parse_moment(start, "--from") if start else None,
        parse_moment(end, "--to") if end else None,
        person_id,
        event,
    )
    settings = load_settings(code=2)
    logs.configure(settings.log_format, settings.log_level)
    with _store(settings) as store:
        key = store.app.keys.verify_key  # the same published checkpoints as `audit verify` without options
        published = _published(None, None, settings, chain.key_id(key)) if key is not None else []
        document = reporting.gather(store.app, settings, scope, key, published)
    try:
        written = reporting.write_report(document, out, language)
    except reporting.ReportError as error:
        raise fail(str(error), 2) from None
    print(written)


def _published(files: list[Path] | None, topic: str | None, settings: Settings, signer: str) -> list[chain.Checkpoint]:
    """The checkpoints published outside the store that `verify` compares the store with."""
    audit = AuditSettings()
    if not files and audit.checkpoint_file is not None and audit.checkpoint_file.is_file():
        files = [audit.checkpoint_file]
    published: list[chain.Checkpoint] = []
    for path in files or []:
        try:
            published += CheckpointFile(path).read()
        except CheckpointFileError as error:
            raise fail(str(error), 2) from None
    if topic:
        try:
            published += read_topic(settings.kafka_bootstrap_servers, topic, signer)
        except Exception as error:  # the broker's many errors: say which topic could not be read
            raise fail(f"the checkpoint topic {topic} cannot be read: {error}", 2) from None
    return published


def _verify_only_keys(error: AuditKeyError) -> AuditKeys:
    """An auditor may hold only the public key: verify needs nothing else."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    audit = AuditSettings()
    if not audit.verify_key:
        raise fail(str(error), 2)
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(audit.verify_key))
    except ValueError:
        raise fail("CHATBRIDGE_AUDIT_VERIFY_KEY is not a 32-byte Ed25519 public key in hex", 2) from None
    return AuditKeys(None, public, AuditKeys.ephemeral().pseudonym_key)


@gdpr_app.command("forget")
def forget(
    org: Org,
    person_id: Annotated[str, typer.Option("--person", help="The HiOrg user id.")],
) -> None:
    """Erase a person: destroy their key, so that the store names them by pseudonym only, for good."""
    settings = load_settings(code=2)
    with _store(settings) as store:
        result = forget_person(store, org, person_id, datetime.now(UTC))
    state = "key destroyed" if result.key_destroyed else "the key was already destroyed"
    print(f"forgot the person of {org}: {state}; from now on known as {result.pseudonym}")


@gdpr_app.command("compact")
def compact_command() -> None:
    """Rewrite the database so that no deleted row leaves bytes behind (after persons were deleted by HiOrg)."""
    settings = load_settings(code=2)
    compact_store(settings)
    print("compacted")
