"""SQL written once for both stores: many rows in one statement, and the columns an earlier release lacks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_ROW = re.compile(r"VALUES \((\?(?:, \?)*)\)")


def add_missing_columns(c: Any, placeholder: str, columns: Iterable[tuple[str, str, str]]) -> None:
    """Bring a table of an earlier release up to date: each (table, column, type) not there yet is added. Looked up
    first on both stores: ALTER TABLE locks the table against a running worker even as a no-op."""
    for table, column, kind in columns:
        if placeholder == "?":
            c.execute(f"PRAGMA table_info({table})")
            missing = column not in {row["name"] for row in c.fetchall()}
        else:
            c.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                f"AND table_name = '{table}' AND column_name = '{column}'"
            )
            missing = c.fetchone() is None
        if missing:
            c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def insert_rows(c: Any, statement: str, rows: Iterable[Sequence[Any]], placeholder: str) -> None:
    """Run a one-row `INSERT … VALUES (?, …)` statement (upserts too) for many rows.

    SQLite: `executemany`, a C loop over one prepared statement. PostgreSQL: one statement for all rows, the
    columns passed as binary arrays (`SELECT * FROM unnest(%b::text[], …)`) — psycopg's `executemany` costs a round trip
    per row. The rows must not share a conflict key (they never do here: each is a set member or a ledger
    position).
    """
    rows = list(rows)
    if not rows:
        return
    if placeholder == "?":
        c.executemany(statement, rows)
        return
    match = _ROW.search(statement)
    assert match is not None, statement
    columns = [list(column) for column in zip(*rows, strict=True)]
    # binary parameters: psycopg writes a text array's elements as they are, where the text format escapes each
    # with a regular expression (most of the projection's write time on PostgreSQL)
    arrays = ", ".join(f"%b::{_pg_type(column)}[]" for column in columns)
    c.execute(f"{statement[: match.start()]}SELECT * FROM unnest({arrays}){statement[match.end() :]}", columns)


def update_rows(
    c: Any, table: str, columns: Sequence[str], key: Sequence[str], rows: Iterable[Sequence[Any]], placeholder: str
) -> None:
    """`UPDATE {table} SET {columns} WHERE {key}` for many rows, each row the new values then the key's. As
    `insert_rows`: SQLite runs one prepared statement over all rows, PostgreSQL one statement joining the rows
    passed as binary arrays."""
    rows = list(rows)
    if not rows:
        return
    if placeholder == "?":
        sets = ", ".join(f"{column} = ?" for column in columns)
        c.executemany(f"UPDATE {table} SET {sets} WHERE {' AND '.join(f'{k} = ?' for k in key)}", rows)
        return
    values = [list(column) for column in zip(*rows, strict=True)]
    names = [*(f"new_{column}" for column in columns), *(f"key_{k}" for k in key)]
    arrays = ", ".join(f"%b::{_pg_type(column)}[]" for column in values)
    sets = ", ".join(f"{column} = u.new_{column}" for column in columns)
    matches = " AND ".join(f"t.{k} = u.key_{k}" for k in key)
    c.execute(f"UPDATE {table} AS t SET {sets} FROM unnest({arrays}) AS u({', '.join(names)}) WHERE {matches}", values)


def _pg_type(column: Sequence[Any]) -> str:
    value = next((v for v in column if v is not None), None)
    return "bigint" if isinstance(value, int) and not isinstance(value, bool) else "text"


def table_exists(c: Any, placeholder: str, table: str) -> bool:
    """Whether the table is there, looked up rather than created each time: DDL on PostgreSQL locks the table
    against a running worker even when it changes nothing."""
    if placeholder == "?":
        c.execute("SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    else:
        c.execute("SELECT 1 AS found WHERE to_regclass(%s) IS NOT NULL", (table,))
    return c.fetchone() is not None


class Placeholders:
    """SQL written once for both stores, with `?` placeholders: `_sql` turns them into the driver's (psycopg: `%s`)."""

    placeholder = "?"

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _table_exists(self, c: Any, table: str) -> bool:
        return table_exists(c, self.placeholder, table)
