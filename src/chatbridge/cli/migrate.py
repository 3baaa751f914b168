"""`chatbridge migrate`: bring the configured store to this release's schema version (`journal.schema`)."""

from __future__ import annotations

from typing import Annotated

import typer

from chatbridge import bootstrap
from chatbridge.cli.common import err, fail, load_settings
from chatbridge.journal import schema


def migrate(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say which migrations would run; change nothing.")
    ] = False,
) -> None:
    """Bring the store to this release's schema version: say its version and each migration, then run them in one
    transaction (stop every replica first; start the new release once this is done)."""
    settings = load_settings()
    if not bootstrap.store_exists(settings):
        raise fail(f"{bootstrap.where(settings)}: no chatbridge store there, so nothing to migrate")
    placeholder = schema.placeholder_of(settings)
    with bootstrap.store_connection(settings) as connection:
        stored = schema.stored_version(connection, placeholder)
        if stored is None:
            raise fail(f"{bootstrap.where(settings)}: no chatbridge store there, so nothing to migrate")
        if stored > schema.CURRENT:
            raise schema.newer_store(stored)
        steps = schema.pending(stored)
        err.print(f"the store is at schema {stored}; this release needs {schema.CURRENT}", highlight=False)
        for step in steps:
            err.print(f"  to {step.version}: {step.description}", highlight=False, markup=False)
        if not steps:
            err.print("nothing to do", highlight=False)
            return
        if dry_run:
            err.print("dry run: nothing changed", highlight=False)
            return
        schema.migrate(connection, placeholder)
    err.print(f"the store is at schema {schema.CURRENT}", highlight=False)
