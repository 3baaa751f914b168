"""`chatbridge` commands: parse, call a use case, print. Documents go to stdout, progress and notes to stderr."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chatbridge import services
from chatbridge.bootstrap import open_store
from chatbridge.consumers.jsonl import ingest_file
from chatbridge.domain.lifecycle import Policy
from chatbridge.domain.messages import message_json_schema
from chatbridge.settings import MAX_PERIOD, Period, Settings

app = typer.Typer(
    help="chatbridge keeps each HiOrg-Server event's group chat in step with its staffing and lifecycle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


def _parse_now(value: str) -> datetime:
    """An ISO 8601 date-time; without an offset it is taken as UTC, a bare date as its midnight UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not an ISO 8601 date-time (e.g. 2026-12-01T12:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_period: TypeAdapter[timedelta] = TypeAdapter(Period)  # the same rule as CHATBRIDGE_FULL_USE / _VIEW


def _parse_duration(value: str) -> timedelta:
    try:
        return _period.validate_python(value)
    except ValidationError as error:
        if error.errors()[0]["type"] in ("greater_than_equal", "less_than_equal"):
            raise typer.BadParameter(f"{value!r} must lie between zero and {MAX_PERIOD.days} days") from None
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 duration (e.g. P2D, PT36H)") from None


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(f"CHATBRIDGE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
        raise _fail(f"bad configuration: {problems}") from None


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


Now = Annotated[str, typer.Option("--now", help="The clock: ISO 8601 date-time, e.g. 2026-12-01T12:00:00Z.")]
FullUse = Annotated[
    str | None, typer.Option("--full-use", help="FULL_USE as ISO 8601 duration (default P2D or CHATBRIDGE_FULL_USE).")
]
View = Annotated[
    str | None, typer.Option("--view", help="VIEW as ISO 8601 duration (default P30D or CHATBRIDGE_VIEW).")
]


def _policy(settings: Settings, full_use: str | None, view: str | None) -> Policy:
    return Policy(
        full_use=_parse_duration(full_use) if full_use else settings.full_use,
        view=_parse_duration(view) if view else settings.view,
    )


@app.command()
def simulate(
    messages: Annotated[Path, typer.Argument(help="JSONL file, one message envelope per line.")],
    now: Now,
    full_use: FullUse = None,
    view: View = None,
) -> None:
    """Fold MESSAGES in memory and print each chat's desired state at --now (nothing is stored)."""
    if not messages.is_file():
        raise _fail(f"{messages}: no such file")
    _print_json(services.simulate(messages, _parse_now(now), _policy(_settings(), full_use, view)))


@app.command()
def ingest(
    messages: Annotated[Path, typer.Argument(help="JSONL file, one message envelope per line.")],
) -> None:
    """Load MESSAGES into the persistent store (CHATBRIDGE_DATABASE) through the consumer's code path.

    Re-running on the same file resumes after the last line stored, so appending to a file and ingesting it
    again applies only the new lines.
    """
    if not messages.is_file():
        raise _fail(f"{messages}: no such file")
    settings = _settings()
    store = open_store(settings)
    try:
        with _progress() as bar:
            task = bar.add_task("ingesting", total=None)
            report = ingest_file(store.app, messages, settings.batch_size, lambda n: bar.advance(task, n))
        folded = store.projection.catch_up()
    finally:
        store.close()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())) or "no new lines"
    if report.skipped:
        err.print(f"resumed after line {report.skipped} (already ingested)")
    err.print(f"{messages}: {counts}; projection folded {folded} new events", highlight=False)
    for record in report.rejected:
        err.print(f"  line {record.position}: {record.reason}", highlight=False, markup=False)


@app.command()
def state(
    now: Now,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document of `simulate`.")] = False,
) -> None:
    """Print each chat's desired state at --now from the persistent store."""
    store = open_store(_settings())
    try:
        document = services.state(store, _parse_now(now))
    finally:
        store.close()
    if as_json:
        _print_json(document)
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


@app.command()
def replay() -> None:
    """Rebuild the projections from the event log (after a bug fix or a policy change), with progress."""
    store = open_store(_settings())
    try:
        with _progress() as bar:
            task = bar.add_task("replaying", total=None)
            folded = store.projection.rebuild(lambda done, total: bar.update(task, completed=done, total=total))
        chats = len(store.projection.view.desired_chats())
    finally:
        store.close()
    err.print(f"replayed {folded} events into {chats} chats")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the input messages, for producers."""
    _print_json(message_json_schema())


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip


def main() -> None:
    app()
