"""`chatbridge reconcile`: the chats at the chat backend brought in line with the desired state."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Annotated, Any

import typer

from chatbridge import bootstrap, logs, worker
from chatbridge.backends.settings import MatrixSettings
from chatbridge.cli.common import (
    fail,
    load,
    load_settings,
    parse_moment,
    print_json,
)
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings

# -- reconcile: the chats at the chat backend brought in line with the desired state ----------------


def reconcile(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and change nothing; exit 0 no changes, 2 changes.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan (or the pass) as JSON.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Apply one pass and exit (1 if a chat failed).")] = False,
    now: Annotated[
        str | None, typer.Option("--now", help="The clock, ISO 8601 (default: now); moves deadlines for dry runs.")
    ] = None,
) -> None:
    """Bring the chats at the chat backend (Matrix) in line with the desired state.

    Without --dry-run or --once it runs until SIGTERM/SIGINT, reconciling chats as they become dirty or due, and
    exits within CHATBRIDGE_SHUTDOWN_TIMEOUT: calls at the chat backend still in flight are cut after half of it,
    and their chats are reconciled again at the next start.
    When the input is Kafka (CHATBRIDGE_TOPICS or CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS set), a chat is deleted only
    once the store holds every input partition up to end offsets read after its deadline; until then its
    deletion waits (shown in the plan) and everything else goes on.
    """
    from chatbridge.backends.port import BackendError
    from chatbridge.consumers.kafka import EndOffsetReader
    from chatbridge.reconciler import service as reconciling
    from chatbridge.reconciler.settings import ReconcilerSettings

    settings = load_settings()
    options: ReconcilerSettings = load(ReconcilerSettings)
    try:
        backend = bootstrap.open_backend(load(MatrixSettings))
    except ValueError as error:
        raise fail(str(error)) from None
    moment = parse_moment(now) if now else None
    store = bootstrap.open_store(settings, create=False)
    # Kafka is the input when it is configured; otherwise (a store fed by `ingest FILE`) the store is all of it
    kafka_input = any(Settings.source_of(name) != "default" for name in ("topics", "kafka_bootstrap_servers"))
    end_offsets = EndOffsetReader(settings) if kafka_input else None
    gate = reconciling.deletion_gate(store, end_offsets)
    try:
        if dry_run:
            at = moment or reconciling.utc_now()
            gate.survey(at)  # before the rows: they must reflect what the gate counts as stored
            plans = reconciling.dry_run(store.app, reconciling.desired_rows(store), backend, at, gate)
            if as_json:
                print_json(reconciling.plan_document(plans, at))
            else:
                print(reconciling.render_plan(plans))
            raise typer.Exit(1 if any(p.error for p in plans) else 2 if any(p.changes for p in plans) else 0)
        if once:
            at = moment or reconciling.utc_now()
            report = reconciling.reconcile_once(store, backend, at, options, gate=gate)
            if as_json:
                print_json(reconciling.pass_document(report, at))
            else:
                summary = report.summary()
                print(", ".join(f"{key} {value}" for key, value in summary.items()))
                for reason, count in report.pending_by_reason().items():
                    print(f"pending {count}: {reason}")
                for outcome in report.failed:
                    print(f"failed {outcome.org}/{outcome.event_id}: {outcome.error}")
                for outcome in report.waiting:
                    assert outcome.waiting is not None
                    print(f"deletion of {outcome.org}/{outcome.event_id} {outcome.waiting.reason}")
            raise typer.Exit(1 if report.failed else 0)
        logs.configure(settings.log_format, settings.log_level)
        stop = threading.Event()
        worker.stop_on_signals(stop)
        started = reconciling.utc_now()

        def clock() -> datetime:  # --now shifts the clock, which then runs on
            return reconciling.utc_now() if moment is None else moment + (reconciling.utc_now() - started)

        def rows() -> list[Any]:
            return reconciling.desired_rows(store)

        looping = reconciling.ReconcilerWorker(store.app, backend, rows, options, clock=clock, gate=gate)
        looping.run(stop, cut_after=settings.shutdown_timeout / 2)
    except BackendError as error:
        raise fail(f"chat backend: {error}") from None
    finally:
        if end_offsets is not None:
            end_offsets.close()
        backend.close()
        store.close()
