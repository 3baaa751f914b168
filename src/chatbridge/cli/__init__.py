"""`chatbridge` commands: parse, call a use case, print. Documents go to stdout, progress and notes to stderr."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from kafka.errors import KafkaError
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chatbridge import bootstrap, logs, worker
from chatbridge.backends.settings import MatrixSettings
from chatbridge.cli import failures, usecases
from chatbridge.cli.audit import audit_app, gdpr_app
from chatbridge.config_file import ConfigurationError, FileSettings
from chatbridge.consumers import dlq
from chatbridge.consumers.jsonl import FileChanged, ingest_file
from chatbridge.consumers.kafka import IntakeCounts
from chatbridge.domain.lifecycle import Policy
from chatbridge.domain.messages import message_json_schema
from chatbridge.projections.document import utc_z
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import MAX_PERIOD, Period, Settings

app = typer.Typer(
    help="chatbridge keeps each HiOrg-Server event's group chat in step with its staffing and lifecycle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)  # one problem, one line, also in a log file
_debug = {"on": False}  # `chatbridge --debug …`: a failure shows its traceback


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of a failure (as does LOG_LEVEL=DEBUG).")
    ] = False,
) -> None:
    """chatbridge keeps each HiOrg-Server event's group chat in step with its staffing and lifecycle."""
    _debug["on"] = debug


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(1)


def _parse_now(value: str, option: str = "--now") -> datetime:
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


def _parse_duration(value: str) -> timedelta:
    try:
        return _period.validate_python(value)
    except ValidationError as error:
        if error.errors()[0]["type"] in ("greater_than_equal", "less_than_equal"):
            raise typer.BadParameter(f"{value!r} must lie between zero and {MAX_PERIOD.days} days") from None
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 duration (e.g. P2D, PT36H)") from None


def _settings() -> Settings:
    return _load(Settings)  # type: ignore[no-any-return]


def _load(settings_class: type[FileSettings]) -> Any:
    """Settings from the environment and the config file; each bad one gets a line naming it, then exit 1."""
    try:
        return settings_class.load()
    except ConfigurationError as error:
        for problem in error.problems[:-1]:
            err.print(f"[red]error:[/red] {escape(problem)}", highlight=False)
        raise _fail(error.problems[-1]) from None


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
    _print_json(usecases.simulate(messages, _parse_now(now), _policy(_settings(), full_use, view)))


@app.command()
def ingest(
    messages: Annotated[Path, typer.Argument(help="JSONL file, one message envelope per line.")],
    afresh: Annotated[
        bool, typer.Option("--afresh", help="Read the file from its first line as a new file (it was replaced).")
    ] = False,
) -> None:
    """Load MESSAGES into the persistent store (CHATBRIDGE_DATABASE) through the consumer's code path.

    Re-running on the same file resumes after the last line stored, so appending to a file and ingesting it
    again applies only the new lines. A file that no longer begins with the lines stored is refused (exit 1);
    --afresh reads it whole as a new file, messages already stored counting as duplicates.
    """
    if not messages.is_file():
        raise _fail(f"{messages}: no such file")
    settings = _settings()
    store = bootstrap.open_store(settings)
    try:
        with _progress() as bar:
            task = bar.add_task("ingesting", total=None)
            try:
                report = ingest_file(
                    store.app, messages, settings.batch_size, lambda n: bar.advance(task, n), afresh=afresh
                )
            except FileChanged as error:
                raise _fail(str(error)) from None
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
    moment = _parse_now(now)
    store = bootstrap.open_store(_settings(), create=False)
    try:
        document = usecases.state(store, moment)
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
def replay(
    from_kafka: Annotated[
        bool,
        typer.Option("--from-kafka", help="Rebuild the event store itself from the input topics' earliest offsets."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --from-kafka: replace a store that is not empty.")
    ] = False,
) -> None:
    """Rebuild the projections from the event log (after a bug fix or a policy change), with progress.

    With --from-kafka (disaster recovery), first rebuild the event store from Kafka into a fresh store.
    """
    settings = _settings()
    if from_kafka:
        try:
            with _progress() as bar:
                task = bar.add_task("reading Kafka", total=None)
                counts, folded = usecases.rebuild_from_kafka(
                    settings, force=force, progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
        except usecases.StoreNotEmpty as error:
            raise _fail(str(error)) from None
        except KafkaError as error:
            raise _fail(f"Kafka at {settings.kafka_bootstrap_servers}: {error}") from None
        err.print(
            f"rebuilt the store from {', '.join(settings.topic_list)}: {_outcomes(counts.outcomes)}; "
            f"folded {folded} events"
        )
        return
    if force:
        raise _fail("--force only applies to --from-kafka")
    store = bootstrap.open_store(settings, create=False)
    try:
        with _progress() as bar:
            task = bar.add_task("replaying", total=None)
            folded = store.projection.rebuild(lambda done, total: bar.update(task, completed=done, total=total))
        chats = len(store.projection.view.desired_chats())
    finally:
        store.close()
    err.print(f"replayed {folded} events into {chats} chats")


@app.command()
def run(
    exit_when_idle: Annotated[
        float | None,
        typer.Option("--exit-when-idle", help="Stop after this many seconds without a new record (drain and exit)."),
    ] = None,
    no_reconcile: Annotated[
        bool, typer.Option("--no-reconcile", help="Only consume into the store; leave the chats to another process.")
    ] = False,
) -> None:
    """The worker: consume the input topics (CHATBRIDGE_TOPICS) in the consumer group into the store, and
    reconcile the chats of the partitions it owns at the chat backend, publishing their status.

    Runs until SIGTERM or SIGINT; then it stores and commits the batch in hand and leaves the group.
    """
    settings = _settings()
    logs.configure(settings.log_format, settings.log_level)
    chat_sync = None
    if not no_reconcile:
        try:
            chat_sync = bootstrap.chat_sync(settings, _load(MatrixSettings), _load(ReconcilerSettings))
        except ValueError as error:
            raise _fail(f"{error} (or run with --no-reconcile)") from None
    stop = threading.Event()
    worker.stop_on_signals(stop)
    store = bootstrap.open_store(settings, publish_to_input_broker=True)
    last_report = [time.monotonic()]

    def report(counts: IntakeCounts) -> None:
        if time.monotonic() - last_report[0] >= 10:
            last_report[0] = time.monotonic()
            err.print(f"consumed {counts.total}: {_outcomes(counts.outcomes)}", highlight=False)

    try:
        counts = worker.run_worker(
            store, settings, stop, idle_stop=exit_when_idle, on_batch=report, chat_sync=chat_sync,
            http=(settings.http_host, settings.http_port),
        )  # fmt: skip
    except OSError as error:  # the port of /metrics is taken: say which, not a traceback
        raise _fail(f"CHATBRIDGE_HTTP_PORT {settings.http_port}: {error.strerror}") from None
    finally:
        store.close()
        if chat_sync is not None:
            chat_sync.close()
    err.print(f"stopped after {counts.total} records: {_outcomes(counts.outcomes)}", highlight=False)


def _outcomes(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "nothing new"


dlq_app = typer.Typer(help="Dead letters: list rejected records, re-drive them once the cause is fixed.")
app.add_typer(dlq_app, name="dlq")
app.add_typer(audit_app, name="audit")  # the audit queries and `audit verify`
app.add_typer(gdpr_app, name="gdpr")  # `gdpr forget`

Reason = Annotated[str | None, typer.Option("--reason", help="Only letters whose reason contains this text.")]
Since = Annotated[str | None, typer.Option("--since", help="Only letters dead-lettered at or after (ISO 8601).")]
Until = Annotated[str | None, typer.Option("--until", help="Only letters dead-lettered before (ISO 8601).")]
SourceTopic = Annotated[str | None, typer.Option("--topic", help="Only records from this input topic.")]
SourcePartition = Annotated[int | None, typer.Option("--partition", help="Only records from this input partition.")]
DlqOffsets = Annotated[
    list[int] | None, typer.Option("--dlq-offset", help="Only these letters (their offset on the DLQ; repeatable).")
]


def _selection(
    reason: str | None, since: str | None, until: str | None, topic: str | None, partition: int | None,
    dlq_offsets: list[int] | None,
) -> dlq.Selection:  # fmt: skip
    return dlq.Selection(
        reason=reason,
        since=_parse_now(since, "--since") if since else None,
        until=_parse_now(until, "--until") if until else None,
        source_topic=topic,
        source_partition=partition,
        dlq_offsets=frozenset(dlq_offsets or ()),
    )


def _dead_letters(settings: Settings, selection: dlq.Selection) -> list[dlq.Stored]:
    try:
        return dlq.read_dead_letters(settings.kafka_bootstrap_servers.split(","), settings.dlq_topic, selection)
    except (KafkaError, TimeoutError) as error:
        raise _fail(f"Kafka at {settings.kafka_bootstrap_servers}: {error}") from None


@dlq_app.command("list")
def dlq_list(
    reason: Reason = None, since: Since = None, until: Until = None, topic: SourceTopic = None,
    partition: SourcePartition = None, dlq_offset: DlqOffsets = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, original bytes in base64.")] = False,
) -> None:  # fmt: skip
    """List the dead letters on CHATBRIDGE_DLQ_TOPIC, oldest first."""
    settings = _settings()
    letters = _dead_letters(settings, _selection(reason, since, until, topic, partition, dlq_offset))
    if as_json:
        _print_json([dlq.summary_row(stored) for stored in letters])
        return
    table = Table("dlq offset", "dead-lettered at", "source", "reason")
    for stored in letters:
        letter = stored.letter
        table.add_row(
            f"{stored.dlq_partition}:{stored.dlq_offset}", utc_z(letter.dead_lettered_at),
            f"{letter.topic}:{letter.partition}@{letter.offset}", letter.reason,
        )  # fmt: skip
    Console().print(table)
    print(f"{len(letters)} dead letters")


@dlq_app.command("redrive")
def dlq_redrive(
    reason: Reason = None, since: Since = None, until: Until = None, topic: SourceTopic = None,
    partition: SourcePartition = None, dlq_offset: DlqOffsets = None,
    to_topic: Annotated[str | None, typer.Option("--to", help="Publish here instead of the source topic.")] = None,
    value_file: Annotated[
        Path | None, typer.Option("--value-file", help="The corrected record (one letter only): replaces its value.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Allow re-driving without any filter.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be published.")] = False,
) -> None:  # fmt: skip
    """Publish selected dead letters again to their input topic, with their original key and headers."""
    settings = _settings()
    selection = _selection(reason, since, until, topic, partition, dlq_offset)
    if selection == dlq.Selection() and not everything:
        raise _fail("no filter given: select letters (e.g. --dlq-offset N, --reason TEXT) or pass --all")
    if value_file is not None and not value_file.is_file():
        raise _fail(f"{value_file}: no such file")
    letters = _dead_letters(settings, selection)
    if not letters:
        raise _fail("no dead letter matches")
    if value_file is not None and len(letters) != 1:
        raise _fail(f"--value-file replaces one letter's value, but {len(letters)} match; narrow with --dlq-offset")
    for stored in letters:
        letter = stored.letter
        verb = "would publish" if dry_run else "publishing"
        origin = f"{letter.topic}:{letter.partition}@{letter.offset}"
        err.print(f"{verb} {stored.dlq_partition}:{stored.dlq_offset} → {to_topic or letter.topic} (was {origin})")
    if dry_run:
        return
    producer = bootstrap.kafka_producer(settings.kafka_bootstrap_servers)
    try:
        sent = dlq.redrive(producer, letters, to_topic=to_topic,
                           value=value_file.read_bytes().strip() if value_file else None)  # fmt: skip
    finally:
        producer.close(timeout=10)
    err.print(f"re-drove {sent} dead letters")


config_app = typer.Typer(
    help="The effective configuration (environment and CHATBRIDGE_CONFIG_FILE).", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the configuration as JSON.")] = False,
) -> None:
    """Validate every setting and print the effective configuration, secrets masked; exit 1 on a bad setting.

    Each value shows where it came from: its CHATBRIDGE_… variable, the config file's key, or the default.
    """
    from chatbridge.backends.settings import MatrixSettings
    from chatbridge.config_file import CONFIG_FILE_VARIABLE, config_file
    from chatbridge.reconciler.settings import ReconcilerSettings

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
        _print_json({"config_file": str(config_file()) if config_file() else None, "settings": rows,
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


@app.command()
def schema(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the contract as Markdown (docs/contract.md) instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of the input messages, for producers."""
    if markdown:
        from chatbridge.domain.contract import contract_markdown

        sys.stdout.write(contract_markdown())
        return
    _print_json(message_json_schema())


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip


def main() -> None:
    """The installed command. Every failure a user can cause ends as one line on stderr and a documented exit code
    (`failures`); the traceback only with `--debug` or CHATBRIDGE_LOG_LEVEL=DEBUG."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        _error_line("aborted")
        sys.exit(130)
    except Exception as error:
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):  # a bad argument or option (click's)
            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            _error_line(f"{error.format_message()}{hint}")
            sys.exit(error.exit_code)
        if _debug["on"] or os.environ.get("CHATBRIDGE_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        explained = failures.explain(error)
        _error_line(explained.line + (" (run `chatbridge --debug …` for the traceback)" if explained.ours else ""))
        sys.exit(explained.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _error_line(message: str) -> None:
    err.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", highlight=False)


# -- reconcile: the chats at the chat backend brought in line with the desired state ----------------


@app.command()
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

    Without --dry-run or --once it runs until SIGTERM/SIGINT, reconciling chats as they become dirty or due.
    When the input is Kafka (CHATBRIDGE_TOPICS or CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS set), a chat is deleted only
    once the store holds every input partition up to end offsets read after its deadline; until then its
    deletion waits (shown in the plan) and everything else goes on.
    """
    from chatbridge.backends.port import BackendError
    from chatbridge.backends.settings import MatrixSettings
    from chatbridge.consumers.kafka import EndOffsetReader
    from chatbridge.reconciler import service as reconciling
    from chatbridge.reconciler.settings import ReconcilerSettings

    settings = _settings()
    options: ReconcilerSettings = _load(ReconcilerSettings)
    try:
        backend = bootstrap.open_backend(_load(MatrixSettings))
    except ValueError as error:
        raise _fail(str(error)) from None
    moment = _parse_now(now) if now else None
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
                _print_json(reconciling.plan_document(plans, at))
            else:
                print(reconciling.render_plan(plans))
            raise typer.Exit(1 if any(p.error for p in plans) else 2 if any(p.changes for p in plans) else 0)
        if once:
            at = moment or reconciling.utc_now()
            report = reconciling.reconcile_once(store, backend, at, options, gate=gate)
            if as_json:
                _print_json(reconciling.pass_document(report, at))
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

        reconciling.ReconcilerWorker(store.app, backend, rows, options, clock=clock, gate=gate).run(stop)
    except BackendError as error:
        raise _fail(f"chat backend: {error}") from None
    finally:
        if end_offsets is not None:
            end_offsets.close()
        backend.close()
        store.close()
