"""`chatbridge backup` and `chatbridge restore`: a consistent copy of the store, and putting one back without
undoing an erasure (docs/backup.md).

Exit codes: 0 done; 1 the store, the backup file, the erasure log or a PostgreSQL client program failed, or the
store holds data and --force was not given; 2 a bad argument, or the audit keys do not fit the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatbridge.cli import usecases
from chatbridge.cli.common import fail, load_settings
from chatbridge.journal.erasures import ErasureLogError


def backup(
    out: Annotated[Path, typer.Option("--out", help="The file to write the copy to (replaced if it exists).")],
) -> None:
    """Copy the store, consistently, while it runs (SQLite: online backup; PostgreSQL: pg_dump).

    The copy holds the persons' keys as they are now: keep it as safe as the store, and only as long as your
    retention says. The audit key file and the erasure log are not in it: back them up apart.
    """
    settings = load_settings()
    try:
        size = usecases.backup_store(settings, out)
    except usecases.BackupError as error:
        raise fail(str(error)) from None
    print(f"backed up the store to {out} ({size} bytes)")


def restore(
    backup: Annotated[
        Path | None, typer.Argument(help="A file `chatbridge backup` wrote; omit with --erasures-only.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a store that holds ingested records.")] = False,
    erasures_only: Annotated[
        bool,
        typer.Option(
            "--erasures-only",
            help="Restore nothing: re-apply the erasure log to the store as it is (restored by other means).",
        ),
    ] = False,
) -> None:
    """Put a backup in place of the store, then destroy again every person key erased since the backup was made
    (`gdpr forget`, HiOrg deletions: the erasure log), rebuild the projection and compact the database.

    Stop every chatbridge process using the store first. The worker then goes on from the backup's positions.
    """
    if erasures_only == (backup is not None):
        raise typer.BadParameter("name the backup file, or pass --erasures-only (not both)")
    settings = load_settings()
    try:
        restored = usecases.restore_store(settings, backup, force=force)
    except (usecases.BackupError, usecases.StoreNotEmpty, ErasureLogError) as error:
        raise fail(str(error)) from None
    erasures = restored.erasures
    what = f"restored {backup}" if backup is not None else "kept the store as it is"
    print(
        f"{what}; re-applied {erasures.reapplied} of {erasures.recorded} recorded erasures "
        f"({erasures.recorded - erasures.reapplied} were in place); folded {restored.folded} events"
    )
