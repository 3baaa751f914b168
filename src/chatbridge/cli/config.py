"""`chatbridge config check`: every setting validated, the effective configuration printed, secrets masked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chatbridge.backends.settings import MatrixSettings
from chatbridge.cli.common import (
    err,
    print_json,
)
from chatbridge.config_file import ConfigurationError, FileSettings
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings

config_app = typer.Typer(
    help="The effective configuration (environment and CHATBRIDGE_CONFIG_FILE).", no_args_is_help=True
)


@config_app.command("check")
def config_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the configuration as JSON.")] = False,
) -> None:
    """Validate every setting and print the effective configuration, secrets masked; exit 1 on a bad setting.

    Each value shows where it came from: its CHATBRIDGE_… variable, the config file's key, or the default.
    """
    from chatbridge.config_file import CONFIG_FILE_VARIABLE, config_file

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    loaded: dict[type[FileSettings], Any] = {}
    for settings_class in (Settings, MatrixSettings, ReconcilerSettings):
        try:
            loaded[settings_class] = settings_class.load()
        except ConfigurationError as error:
            problems += error.problems
            continue
        values = loaded[settings_class].model_dump(mode="json")
        for name in settings_class.model_fields:
            rows.append({"variable": settings_class.variable(name), "value": values[name],
                         "source": settings_class.source_of(name)})  # fmt: skip
    if not problems:
        problems += [
            f"{config_file()}: unknown key {key!r}" for key in Settings.unknown_file_keys(("matrix", "reconcile"))
        ]
        for settings_class in (MatrixSettings, ReconcilerSettings):
            section = settings_class.file_section[0]
            problems += [
                f"{config_file()}: unknown key {key!r} in [{section}]" for key in settings_class.unknown_file_keys()
            ]
        try:
            loaded[MatrixSettings].access_token()
        except ValueError as error:
            problems.append(f"{error} (needed unless `run --no-reconcile`)")
        problems += _audit_key_problems(loaded[Settings])
    if as_json:
        print_json({"config_file": str(config_file()) if config_file() else None, "settings": rows,
                     "problems": problems})  # fmt: skip
    else:
        table = Table("variable", "value", "source")
        for row in rows:
            value = row["value"]
            table.add_row(row["variable"], "" if value is None else str(value), row["source"])
        if rows:
            Console(width=max(Console().width, 132)).print(table)
        print(f"{CONFIG_FILE_VARIABLE}: {config_file() or '(none)'}")
    for problem in problems:
        err.print(f"[red]error:[/red] {escape(problem)}", highlight=False)
    if problems:
        raise typer.Exit(1)
    err.print("configuration ok")


def _audit_key_problems(settings: Settings) -> list[str]:
    """What the commands would refuse about the audit keys: their format and length, an unreadable key file, and
    keys missing beside a store that exists (a store not made yet gets its keys on its first `ingest` or `run`)."""
    import tempfile

    from chatbridge.bootstrap import StoreError, audit_keys, store_exists
    from chatbridge.journal.keys import AuditKeyError, AuditSettings, load_keys

    try:
        audit_keys(settings, create=False)
        return []
    except AuditKeyError as error:
        missing = error
    try:
        # a SQLite store is looked at (a local file); a PostgreSQL one is not reached just for this
        if settings.store == "sqlite" and store_exists(settings) and str(missing).startswith("no audit keys"):
            return [f"audit keys: {missing}; the store holds data, so its first run is over: restore them"]
        with tempfile.TemporaryDirectory() as scratch:  # a first run makes the key file: check the rest as it would
            load_keys(AuditSettings(), Path(scratch) / "keys", create=True)
    except (AuditKeyError, StoreError) as error:
        return [f"audit keys: {error}" if isinstance(error, AuditKeyError) else str(error)]
    return []
