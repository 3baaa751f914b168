"""The use cases behind the commands; the CLI only parses arguments and prints what these return."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from chatbridge.bootstrap import Store, in_memory_app
from chatbridge.consumers.jsonl import ingest_lines, read_lines
from chatbridge.domain.lifecycle import Policy
from chatbridge.projections.desired_state import DesiredStateFold
from chatbridge.projections.document import render_document
from chatbridge.projections.store import fold_log


def simulate(path: Path, now: datetime, policy: Policy) -> dict[str, Any]:
    """Fold a JSONL file through the domain and projection code in memory; nothing is stored."""
    return simulate_lines(read_lines(path), now, policy)


def simulate_lines(lines: Iterable[tuple[int, bytes]], now: datetime, policy: Policy) -> dict[str, Any]:
    """`simulate` on numbered raw lines (line numbers from 1)."""
    app = in_memory_app()
    ingest_lines(app, "simulate", lines)
    fold = DesiredStateFold(policy=policy)
    fold_log(app, fold)
    return render_document(fold.all_desired(), app.ledger.intake_summary(), now)


def state(store: Store, now: datetime) -> dict[str, Any]:
    """The same document from the persistent store, after folding whatever the projection has not seen yet."""
    store.projection.catch_up()
    return render_document(store.projection.view.desired_chats(), store.app.ledger.intake_summary(), now)
