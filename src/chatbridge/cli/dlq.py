"""`chatbridge dlq …`: list the dead letters, re-drive them once their cause is fixed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from chatbridge import bootstrap
from chatbridge.cli.common import (
    err,
    fail,
    load_settings,
    parse_moment,
    print_json,
)
from chatbridge.consumers import dlq
from chatbridge.domain.moments import utc_z
from chatbridge.settings import Settings

dlq_app = typer.Typer(help="Dead letters: list rejected records, re-drive them once the cause is fixed.")
Reason = Annotated[str | None, typer.Option("--reason", help="Only letters whose reason contains this text.")]
Since = Annotated[str | None, typer.Option("--since", help="Only letters dead-lettered at or after (ISO 8601).")]
Until = Annotated[str | None, typer.Option("--until", help="Only letters dead-lettered before (ISO 8601).")]
SourceTopic = Annotated[str | None, typer.Option("--topic", help="Only records from this input topic.")]
SourcePartition = Annotated[int | None, typer.Option("--partition", help="Only records from this input partition.")]
DlqOffsets = Annotated[
    list[int] | None, typer.Option("--dlq-offset", help="Only these letters (their offset on the DLQ; repeatable).")
]


def _selection(
    reason: str | None, since: str | None, until: str | None, topic: str | None, partition: int | None,
    dlq_offsets: list[int] | None,
) -> dlq.Selection:  # fmt: skip
    return dlq.Selection(
        reason=reason,
        since=parse_moment(since, "--since") if since else None,
        until=parse_moment(until, "--until") if until else None,
        source_topic=topic,
        source_partition=partition,
        dlq_offsets=frozenset(dlq_offsets or ()),
    )


def _dead_letters(settings: Settings, selection: dlq.Selection) -> list[dlq.Stored]:
    try:
        return dlq.read_dead_letters(settings.kafka_bootstrap_servers.split(","), settings.dlq_topic, selection)
    except (KafkaError, TimeoutError) as error:
        raise fail(f"Kafka at {settings.kafka_bootstrap_servers}: {error}") from None


@dlq_app.command("list")
def dlq_list(
    reason: Reason = None, since: Since = None, until: Until = None, topic: SourceTopic = None,
    partition: SourcePartition = None, dlq_offset: DlqOffsets = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, original bytes in base64.")] = False,
) -> None:  # fmt: skip
    """List the dead letters on CHATBRIDGE_DLQ_TOPIC, oldest first."""
    settings = load_settings()
    letters = _dead_letters(settings, _selection(reason, since, until, topic, partition, dlq_offset))
    if as_json:
        print_json([dlq.summary_row(stored) for stored in letters])
        return
    table = Table("dlq offset", "dead-lettered at", "source", "reason")
    for stored in letters:
        letter = stored.letter
        table.add_row(
            f"{stored.dlq_partition}:{stored.dlq_offset}", utc_z(letter.dead_lettered_at),
            f"{letter.topic}:{letter.partition}@{letter.offset}", letter.reason,
        )  # fmt: skip
    Console().print(table)
    print(f"{len(letters)} dead letters")


@dlq_app.command("redrive")
def dlq_redrive(
    reason: Reason = None, since: Since = None, until: Until = None, topic: SourceTopic = None,
    partition: SourcePartition = None, dlq_offset: DlqOffsets = None,
    to_topic: Annotated[str | None, typer.Option("--to", help="Publish here instead of the source topic.")] = None,
    value_file: Annotated[
        Path | None, typer.Option("--value-file", help="The corrected record (one letter only): replaces its value.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Allow re-driving without any filter.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be published.")] = False,
) -> None:  # fmt: skip
    """Publish selected dead letters again to their input topic, with their original key and headers."""
    settings = load_settings()
    selection = _selection(reason, since, until, topic, partition, dlq_offset)
    if selection == dlq.Selection() and not everything:
        raise fail("no filter given: select letters (e.g. --dlq-offset N, --reason TEXT) or pass --all")
    if value_file is not None and not value_file.is_file():
        raise fail(f"{value_file}: no such file")
    letters = _dead_letters(settings, selection)
    if not letters:
        raise fail("no dead letter matches")
    if value_file is not None and len(letters) != 1:
        raise fail(f"--value-file replaces one letter's value, but {len(letters)} match; narrow with --dlq-offset")
    for stored in letters:
        letter = stored.letter
        verb = "would publish" if dry_run else "publishing"
        origin = f"{letter.topic}:{letter.partition}@{letter.offset}"
        err.print(f"{verb} {stored.dlq_partition}:{stored.dlq_offset} → {to_topic or letter.topic} (was {origin})")
    if dry_run:
        return
    producer = bootstrap.kafka_producer(settings.kafka_bootstrap_servers)
    try:
        sent = dlq.redrive(producer, letters, to_topic=to_topic,
                           value=value_file.read_bytes().strip() if value_file else None)  # fmt: skip
    finally:
        producer.close(timeout=10)
    err.print(f"re-drove {sent} dead letters")
