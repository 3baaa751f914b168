"""What a failure the user can cause says: one line and an exit code, never a traceback.

The commands raise what their layers raise (a store that is missing, keys that do not fit, a broker that does not
answer); `explain` turns each kind into the line an operator can act on. The traceback stays available behind
`chatbridge --debug` or `CHATBRIDGE_LOG_LEVEL=DEBUG`, for the bug that is ours.

Exit codes: 1 the command could not do its work (store, service, file, setting); 2 a bad argument or option, or
audit keys that are missing or broken. A few commands document more (`reconcile --dry-run`, `audit verify`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from eventsourcing.persistence import PersistenceError
from kafka.errors import KafkaError

from chatbridge.bootstrap import StoreError
from chatbridge.journal.chain import ChainHalted
from chatbridge.journal.keys import AuditKeyError
from chatbridge.journal.schema import SchemaVersionError

FAILED = 1
USAGE = 2


@dataclass(frozen=True)
class Explained:
    line: str
    exit_code: int
    ours: bool = False  # not a mistake of the user's: the traceback (behind --debug) is worth reporting


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]


def explain(error: BaseException) -> Explained:
    """The one line (without the `error:` prefix) and the exit code for a failure."""
    if isinstance(error, StoreError):
        return Explained(str(error), FAILED)
    if isinstance(error, AuditKeyError):
        return Explained(f"audit keys: {error}", USAGE)
    if isinstance(error, ChainHalted):
        return Explained(f"audit log: storing stopped — {error} (see docs/audit.md)", FAILED)
    if isinstance(error, SchemaVersionError):
        return Explained(str(error), FAILED)
    if isinstance(error, PersistenceError | sqlite3.Error):
        return Explained(f"the store: {_first_line(error)}", FAILED)
    if isinstance(error, KafkaError):
        return Explained(f"Kafka: {_first_line(error) or type(error).__name__}", FAILED)
    if _is_psycopg_error(error):
        return Explained(f"PostgreSQL: {_first_line(error)}", FAILED)
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return Explained(f"{where}{error.strerror or _first_line(error)}", FAILED)
    return Explained(f"unexpected {type(error).__name__}: {_first_line(error)}", FAILED, ours=True)


def _is_psycopg_error(error: BaseException) -> bool:
    module = type(error).__module__ or ""
    return module.startswith("psycopg")  # without importing psycopg where only SQLite is used
