"""The intake and state commands: `simulate`, `ingest`, `state`, `replay`, `run` (the worker) and `schema`."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from chatbridge import bootstrap, logs, worker
from chatbridge.backends.settings import MatrixSettings
from chatbridge.cli import usecases
from chatbridge.cli.common import (
    Now,
    err,
    fail,
    load,
    load_settings,
    outcomes,
    parse_duration,
    parse_moment,
    print_json,
    progress,
)
from chatbridge.consumers.jsonl import FileChanged, ingest_file
from chatbridge.consumers.kafka import IntakeCounts
from chatbridge.domain.lifecycle import Policy
from chatbridge.domain.messages import message_json_schema
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings

FullUse = Annotated[
    str | None, typer.Option("--full-use", help="FULL_USE as ISO 8601 duration (default P2D or CHATBRIDGE_FULL_USE).")
]
View = Annotated[
    str | None, typer.Option("--view", help="VIEW as ISO 8601 duration (default P30D or CHATBRIDGE_VIEW).")
]


def _policy(settings: Settings, full_use: str | None, view: str | None) -> Policy:
    return Policy(
        full_use=parse_duration(full_use) if full_use else settings.full_use,
        view=parse_duration(view) if view else settings.view,
    )


def simulate(
    messages: Annotated[Path, typer.Argument(help="JSONL file, one message envelope per line.")],
    now: Now,
    full_use: FullUse = None,
    view: View = None,
) -> None:
    """Fold MESSAGES in memory and print each chat's desired state at --now (nothing is stored)."""
    if not messages.is_file():
        raise fail(f"{messages}: no such file")
    print_json(usecases.simulate(messages, parse_moment(now), _policy(load_settings(), full_use, view)))


def ingest(
    messages: Annotated[Path, typer.Argument(help="JSONL file, one message envelope per line.")],
    afresh: Annotated[
        bool, typer.Option("--afresh", help="Read the file from its first line as a new file (it was replaced).")
    ] = False,
) -> None:
    """Load MESSAGES into the persistent store (CHATBRIDGE_DATABASE) through the consumer's code path.

    Re-running on the same file resumes after the last line stored, so appending to a file and ingesting it
    again applies only the new lines. A file that no longer begins with the lines stored is refused (exit 1);
    --afresh reads it whole as a new file, messages already stored counting as duplicates.
    """
    if not messages.is_file():
        raise fail(f"{messages}: no such file")
    settings = load_settings()
    store = bootstrap.open_store(settings)
    try:
        with progress() as bar:
            task = bar.add_task("ingesting", total=None)
            try:
                report = ingest_file(
                    store.app, messages, settings.batch_size, lambda n: bar.advance(task, n), afresh=afresh
                )
            except FileChanged as error:
                raise fail(str(error)) from None
        folded = store.projection.catch_up()
    finally:
        store.close()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())) or "no new lines"
    if report.skipped:
        err.print(f"resumed after line {report.skipped} (already ingested)")
    err.print(f"{messages}: {counts}; projection folded {folded} new events", highlight=False)
    for record in report.rejected:
        err.print(f"  line {record.position}: {record.reason}", highlight=False, markup=False)


def state(
    now: Now,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document of `simulate`.")] = False,
) -> None:
    """Print each chat's desired state at --now from the persistent store."""
    moment = parse_moment(now)
    store = bootstrap.open_store(load_settings(), create=False)
    try:
        document = usecases.state(store, moment)
    finally:
        store.close()
    if as_json:
        print_json(document)
        return
    table = Table("org", "event", "gen", "phase", "members", "read-only at", "delete at")
    for chat in document["chats"]:
        table.add_row(
            chat["org"], chat["event_id"], str(chat["generation"]), chat["phase"], str(len(chat["members"])),
            chat["read_only_at"], chat["delete_at"],
        )  # fmt: skip
    Console().print(table)
    print(
        f"{len(document['chats'])} chats; rejected {len(document['rejected'])}, "
        f"ignored {document['ignored']}, duplicates {document['duplicates']}"
    )


def replay(
    from_kafka: Annotated[
        bool,
        typer.Option("--from-kafka", help="Rebuild the event store itself from the input topics' earliest offsets."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --from-kafka: replace a store that is not empty.")
    ] = False,
) -> None:
    """Rebuild the projections from the event log (after a bug fix or a policy change), with progress.

    With --from-kafka (disaster recovery), first rebuild the event store from Kafka into a fresh store.
    """
    settings = load_settings()
    if from_kafka:
        try:
            with progress() as bar:
                task = bar.add_task("reading Kafka", total=None)
                counts, folded = usecases.rebuild_from_kafka(
                    settings, force=force, progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
        except usecases.StoreNotEmpty as error:
            raise fail(str(error)) from None
        except KafkaError as error:
            raise fail(f"Kafka at {settings.kafka_bootstrap_servers}: {error}") from None
        err.print(
            f"rebuilt the store from {', '.join(settings.topic_list)}: {outcomes(counts.outcomes)}; "
            f"folded {folded} events"
        )
        return
    if force:
        raise fail("--force only applies to --from-kafka")
    store = bootstrap.open_store(settings, create=False)
    try:
        with progress() as bar:
            task = bar.add_task("replaying", total=None)
            folded = store.projection.rebuild(lambda done, total: bar.update(task, completed=done, total=total))
        chats = len(store.projection.view.desired_chats())
    finally:
        store.close()
    err.print(f"replayed {folded} events into {chats} chats")


def run(
    exit_when_idle: Annotated[
        float | None,
        typer.Option("--exit-when-idle", help="Stop after this many seconds without a new record (drain and exit)."),
    ] = None,
    no_reconcile: Annotated[
        bool, typer.Option("--no-reconcile", help="Only consume into the store; leave the chats to another process.")
    ] = False,
) -> None:
    """The worker: consume the input topics (CHATBRIDGE_TOPICS) in the consumer group into the store, and
    reconcile the chats of the partitions it owns at the chat backend, publishing their status.

    Runs until SIGTERM or SIGINT; then it stores and commits the batch in hand and leaves the group, and exits
    within CHATBRIDGE_SHUTDOWN_TIMEOUT: calls at the chat backend still in flight are cut, and their chats are
    reconciled again at the next start.
    """
    settings = load_settings()
    logs.configure(settings.log_format, settings.log_level)
    chat_sync = None
    if not no_reconcile:
        try:
            chat_sync = bootstrap.chat_sync(settings, load(MatrixSettings), load(ReconcilerSettings))
        except ValueError as error:
            raise fail(f"{error} (or run with --no-reconcile)") from None
    stop = threading.Event()
    worker.stop_on_signals(stop)
    store = bootstrap.open_store(settings, publish_to_input_broker=True)
    last_report = [time.monotonic()]

    def report(counts: IntakeCounts) -> None:
        if time.monotonic() - last_report[0] >= 10:
            last_report[0] = time.monotonic()
            err.print(f"consumed {counts.total}: {outcomes(counts.outcomes)}", highlight=False)

    try:
        counts = worker.run_worker(
            store, settings, stop, idle_stop=exit_when_idle, on_batch=report, chat_sync=chat_sync,
            http=(settings.http_host, settings.http_port),
        )  # fmt: skip
    except OSError as error:  # the port of /metrics is taken: say which, not a traceback
        raise fail(f"CHATBRIDGE_HTTP_PORT {settings.http_port}: {error.strerror}") from None
    finally:
        store.close()
        if chat_sync is not None:
            chat_sync.close(timeout=settings.shutdown_timeout / 4)  # the status documents still queued
    err.print(f"stopped after {counts.total} records: {outcomes(counts.outcomes)}", highlight=False)


def schema(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the contract as Markdown (docs/contract.md) instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of the input messages, for producers."""
    if markdown:
        from chatbridge.domain.contract import contract_markdown

        sys.stdout.write(contract_markdown())
        return
    print_json(message_json_schema())
