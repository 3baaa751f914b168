"""`chatbridge`: the installed command. Each command parses its arguments, calls one use case and prints; the
commands live in this package's modules by subject, and are put together here. Documents go to stdout, progress
and notes to stderr, and every failure a user can cause to one `error:` line (`failures`)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from chatbridge.cli import audit, backup, config, dlq, failures, intake, keys, migrate, reconcile
from chatbridge.cli.common import error_line

app = typer.Typer(
    help="chatbridge keeps each HiOrg-Server event's group chat in step with its staffing and lifecycle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_debug = {"on": False}  # `chatbridge --debug …`: a failure shows its traceback

for command in (intake.simulate, intake.ingest, intake.state, intake.replay, intake.run, reconcile.reconcile,
                intake.schema, backup.backup, backup.restore, migrate.migrate):  # fmt: skip
    app.command()(command)
app.add_typer(dlq.dlq_app, name="dlq")
app.add_typer(config.config_app, name="config")
app.add_typer(audit.audit_app, name="audit")  # the audit queries, `audit verify` and `audit report`
app.add_typer(audit.gdpr_app, name="gdpr")  # `gdpr forget`, `gdpr compact`
app.add_typer(keys.keys_app, name="keys")


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of a failure (as does LOG_LEVEL=DEBUG).")
    ] = False,
) -> None:
    """chatbridge keeps each HiOrg-Server event's group chat in step with its staffing and lifecycle."""
    _debug["on"] = debug


def main() -> None:
    """The installed command. Every failure a user can cause ends as one line on stderr and a documented exit code
    (`failures`); the traceback only with `--debug` or CHATBRIDGE_LOG_LEVEL=DEBUG."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        error_line("aborted")
        sys.exit(130)
    except Exception as error:
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):  # a bad argument or option (click's)
            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            error_line(f"{error.format_message()}{hint}")
            sys.exit(error.exit_code)
        if _debug["on"] or os.environ.get("CHATBRIDGE_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        explained = failures.explain(error)
        error_line(explained.line + (" (run `chatbridge --debug …` for the traceback)" if explained.ours else ""))
        sys.exit(explained.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
