"""What every command shares: the error line, the clock and duration options, settings loading, JSON and progress
output. Documents go to stdout; progress, notes and errors to stderr."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chatbridge.config_file import ConfigurationError, FileSettings
from chatbridge.settings import MAX_PERIOD, Period, Settings

err = Console(stderr=True, soft_wrap=True)  # one problem, one line, also in a log file


def error_line(message: str) -> None:
    """The `error: …` line every failure ends as (on stderr, whitespace folded to one line)."""
    err.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say what went wrong in one line; raise the returned exit (code 1: the command could not do its work)."""
    error_line(message)
    return typer.Exit(code)


def parse_moment(value: str, option: str = "--now") -> datetime:
    """An ISO 8601 date-time; without an offset it is taken as UTC, a bare date as its midnight UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not an ISO 8601 date-time (e.g. 2026-12-01T12:00:00Z)", param_hint=option
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_period: TypeAdapter[timedelta] = TypeAdapter(Period)  # the same rule as CHATBRIDGE_FULL_USE / _VIEW


def parse_duration(value: str) -> timedelta:
    try:
        return _period.validate_python(value)
    except ValidationError as error:
        if error.errors()[0]["type"] in ("greater_than_equal", "less_than_equal"):
            raise typer.BadParameter(f"{value!r} must lie between zero and {MAX_PERIOD.days} days") from None
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 duration (e.g. P2D, PT36H)") from None


Loaded = TypeVar("Loaded", bound=FileSettings)


def load(settings_class: type[Loaded], code: int = 1) -> Loaded:
    """Settings from the environment and the config file; each bad one gets a line naming it, then exit `code`."""
    try:
        return settings_class.load()  # type: ignore[no-any-return]
    except ConfigurationError as error:
        for problem in error.problems[:-1]:
            error_line(problem)
        raise fail(error.problems[-1], code) from None


def load_settings(code: int = 1) -> Settings:
    """chatbridge's own settings (store, Kafka, lifecycle), or exit `code` naming each bad one."""
    return load(Settings, code)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def progress() -> Progress:
    """A progress bar on stderr, shown only on a terminal (a log file gets the summary line alone)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip


def outcomes(counts: dict[str, int]) -> str:
    """The intake's outcome counts as one phrase: `applied 3, duplicate 1`."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing new"


Now = Annotated[str, typer.Option("--now", help="The clock: ISO 8601 date-time, e.g. 2026-12-01T12:00:00Z.")]
