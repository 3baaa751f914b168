"""Reconcile figures against the local Synapse: reconcile_steps, change_to_visible_p99, resync_noop,
new_chat_200_joined, and the worker's memory with 100,000 chats (worker_rss_100k). The reconciler and the plain
client it is compared with run at the same concurrency (RAW_CONCURRENCY)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from bench.common import CACHE, KAFKA, ROOT, Result, Sizes, log, median, result
from bench.ingest import history_store, settings_for, sqlite_database
from chatbridge.application import Received
from chatbridge.backends.matrix import MatrixBackend
from chatbridge.backends.port import BackendError
from chatbridge.backends.settings import MatrixSettings
from chatbridge.bootstrap import Store, open_store
from chatbridge.domain.messages import parse_record
from chatbridge.reconciler.loop import Reconciler
from chatbridge.reconciler.service import desired_rows
from chatbridge.reconciler.settings import ReconcilerSettings
from chatbridge.settings import Settings
from chatbridge.worker import ReconcilerParts, run_worker

BASE_URL = os.environ.get("CHATBRIDGE_MATRIX_BASE_URL", "http://127.0.0.1:8008")
SERVER = os.environ.get("CHATBRIDGE_MATRIX_SERVER_NAME", "localhost")
RAW_CONCURRENCY = 8  # the plain client's best of 4, 8 and 16 on these machines (Synapse is the limit)
NOW = datetime(2026, 11, 2, tzinfo=UTC)  # events of the generated streams start in March 2027: chats are active


def services_dir() -> Path:
    return Path(os.environ.get("CHATBRIDGE_SERVICES_DIR") or Path.home() / ".cache" / "chatbridge-services")


def token() -> str:
    return MatrixSettings(base_url=BASE_URL, server_name=SERVER).access_token()


def register(localpart: str) -> None:
    """An account through the shared-secret admin registration (no logins, which Synapse rate-limits)."""
    secret = (services_dir() / "synapse" / "registration_shared_secret").read_text().strip()
    password = uuid.uuid4().hex
    with httpx.Client(base_url=BASE_URL, timeout=60) as client:
        nonce = client.get("/_synapse/admin/v1/register").json()["nonce"]
        mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"notadmin"]))
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac.hexdigest()}
        response = client.post("/_synapse/admin/v1/register", json=body)
        if response.status_code != 200 and "in use" not in response.text:
            raise RuntimeError(f"registering a bench account failed: {response.status_code} {response.text[:200]}")


def register_persons(backend: MatrixBackend, org: str, persons: Sequence[str]) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: register(backend.user_id(org, p).removeprefix("@").split(":", 1)[0]), persons))


def person(n: int, tag: str) -> str:
    return hashlib.md5(f"{tag}/{n}".encode()).hexdigest()  # 32 hex chars, as HiOrg-Server's ids


class Messages:
    """HiOrg messages for one organisation, applied straight to a store (the reconciler's figures need no Kafka)."""

    def __init__(self, org: str):
        self.org = org
        self.serial = 0
        self.clock = datetime(2026, 11, 1, 8, tzinfo=UTC)

    def envelope(self, kind: str, data: dict[str, Any]) -> bytes:
        self.serial += 1
        self.clock += timedelta(seconds=1)
        return json.dumps(
            {
                "id": f"{self.org}-{self.serial}",
                "type": kind,
                "org": self.org,
                "occurred_at": self.clock.isoformat(),
                "data": data,
            }
        ).encode()

    def org_on(self) -> bytes:
        address = {"street": "Hauptstr. 1", "postcode": "50667", "city": "Köln", "country": "DE"}
        return self.envelope(
            "organisation.chat_enabled", {"name": self.org, "email": f"it@{self.org}.example", "address": address}
        )

    def event(self, event_id: str, staff: Sequence[str]) -> bytes:
        start = datetime(2027, 3, 1, 9, tzinfo=UTC)
        return self.envelope(
            "event.upserted",
            {
                "event_id": event_id,
                "title": f"Dienst {event_id}",
                "start": start.isoformat(),
                "end": (start + timedelta(hours=8)).isoformat(),
                "responsible": None,
                "chat_enabled": True,
                "staff": [{"person_id": p, "status": "assigned"} for p in staff],
            },
        )

    def staffing(self, event_id: str, person_id: str, status: str = "assigned") -> bytes:
        return self.envelope("staffing.changed", {"event_id": event_id, "person_id": person_id, "status": status})


def apply(store: Store, lines: Sequence[bytes], source: str = "file:bench") -> None:
    start = store.app.position(source)
    for offset in range(0, len(lines), 500):
        chunk = lines[offset : offset + 500]
        store.app.ingest(source, [Received(start + offset + i + 1, parse_record(line)) for i, line in enumerate(chunk)])
    store.projection.catch_up()


class Counting(httpx.HTTPTransport):
    """Counts the backend's calls by method (GET reads; everything else writes) and times them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.calls[request.method] += 1
        return super().handle_request(request)

    @property
    def reads(self) -> int:
        return self.calls["GET"]

    @property
    def writes(self) -> int:
        return sum(n for method, n in self.calls.items() if method != "GET")


def backend(transport: httpx.BaseTransport | None = None) -> MatrixBackend:
    return MatrixBackend(BASE_URL, SERVER, token(), transport=transport, timeout=60)


# -- reconcile_steps ------------------------------------------------------------------------------------------


def raw_moves(
    chats: dict[str, str], joins: dict[str, list[str]], kicks: dict[str, list[str]], latencies: list[float]
) -> float:
    """Steps/s for a plain httpx client making the reconciler's membership calls (account look-up + force-join;
    kick) with RAW_CONCURRENCY threads."""
    client = httpx.Client(
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {token()}"},
        timeout=60,
        limits=httpx.Limits(max_connections=RAW_CONCURRENCY * 2),
    )

    def join(room: str, user: str) -> None:
        started = time.perf_counter()
        client.get(f"/_synapse/admin/v2/users/{quote(user, safe='')}").raise_for_status()
        client.post(f"/_synapse/admin/v1/join/{quote(room, safe='')}", json={"user_id": user}).raise_for_status()
        latencies.append(time.perf_counter() - started)

    def kick(room: str, user: str) -> None:
        client.post(
            f"/_matrix/client/v3/rooms/{quote(room, safe='')}/kick", json={"user_id": user, "reason": "bench"}
        ).raise_for_status()

    calls = [(kick, room, user) for event, room in chats.items() for user in kicks[event]]
    calls += [(join, room, user) for event, room in chats.items() for user in joins[event]]
    started = time.perf_counter()
    with ThreadPoolExecutor(RAW_CONCURRENCY) as pool:
        list(pool.map(lambda call: call[0](call[1], call[2]), calls))
    client.close()
    return len(calls) / (time.perf_counter() - started)


def reconcile_steps(sizes: Sizes) -> tuple[Result, list[float]]:
    """Chats move between staff A (5 persons) and staff B (20): 25 membership steps per chat and move, A→B in even
    repetitions and back in odd ones. The reconciler moves its chats, then the plain client moves rooms of its own
    the same way: the same calls (20 look-ups and joins, 5 kicks a chat, or the reverse) into rooms of the same
    size, so that the two are compared on the same work."""
    org = f"bs{uuid.uuid4().hex[:8]}"
    chats_count = max(1, sizes.reconcile_steps // 25)
    staff_a = [person(n, org + "a") for n in range(5)]
    staff_b = [person(n, org + "b") for n in range(20)]
    matrix = backend()
    log(f"reconcile_steps: {chats_count} chats, registering {len(staff_a) + len(staff_b)} accounts")
    register_persons(matrix, org, staff_a + staff_b)
    settings = ReconcilerSettings(concurrency=RAW_CONCURRENCY)  # the plain client's concurrency: a fair comparison
    steps, raw, raw_latencies = [], [], []
    with sqlite_database() as store_settings:
        store = open_store(settings_for(store_settings, "unused"))
        try:
            messages = Messages(org)
            events = [f"e{n}" for n in range(chats_count)]
            apply(store, [messages.org_on(), *(messages.event(e, staff_a) for e in events)])
            setup = Reconciler(store.app, matrix, settings)
            try:
                report = setup.pass_once(desired_rows(store), NOW)  # chats created, staff A joined
            finally:
                setup.close()
            if report.failed:
                raise RuntimeError(f"setting up the chats failed: {report.failed[0].error}")
            staffs = {"a": staff_a, "b": staff_b}
            users = {side: [matrix.user_id(org, p) for p in staff] for side, staff in staffs.items()}
            tenant = matrix.ensure_tenant(org, {"name": org}).tenant_id
            rooms = {f"raw{n}": matrix.create_chat(org, f"raw{n}", 1, tenant).chat_id for n in range(chats_count)}
            raw_moves(rooms, dict.fromkeys(rooms, users["a"]), dict.fromkeys(rooms, []), [])  # as the chats: staff A
            for rep in range(sizes.repetitions):
                here, there = ("a", "b") if rep % 2 == 0 else ("b", "a")
                apply(store, [messages.event(e, staffs[there]) for e in events])  # desired from now on
                reconciler = Reconciler(store.app, matrix, settings)  # fresh: it reads every chat, as after a start
                try:
                    started = time.perf_counter()
                    report = reconciler.pass_once(desired_rows(store), NOW)
                    seconds = time.perf_counter() - started
                finally:
                    reconciler.close()
                if report.failed or report.steps != 25 * chats_count:
                    raise RuntimeError(f"reconcile pass: {report.summary()}")
                steps.append(report.steps / seconds)
                joins, kicks = dict.fromkeys(rooms, users[there]), dict.fromkeys(rooms, users[here])
                raw.append(raw_moves(rooms, joins, kicks, raw_latencies))
                log(f"reconcile rep {rep}: {steps[-1]:.1f} steps/s, raw backend {raw[-1]:.1f} steps/s")
        finally:
            store.close()
            matrix.close()
    note = (
        f"{25 * chats_count:,} joins and kicks per repetition over {chats_count} chats (the plain client: the same "
        f"moves in {chats_count} rooms of its own); reconciler concurrency {settings.concurrency} (chats and a "
        f"chat's steps), raw client at {RAW_CONCURRENCY} threads"
    )
    return result("reconcile_steps", steps, "steps/s", "raw_backend", raw, note=note), raw_latencies


# -- change_to_visible ----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def change_to_visible(sizes: Sizes, raw_latencies: list[float]) -> Result:
    """The worker (`run_worker`: Kafka intake, projection, reconciler) running; staffing changes published at
    `change_rate`/s; each timed until Synapse lists the person as joined."""
    org = f"bv{uuid.uuid4().hex[:8]}"
    changes = int(sizes.change_rate * sizes.change_seconds)
    chats_count = 10 if changes >= 100 else 5
    persons = [person(n, org) for n in range(-(-changes // chats_count))]
    matrix = backend()
    log(f"change_to_visible: {chats_count} chats, registering {len(persons)} accounts")
    register_persons(matrix, org, persons)
    topic = f"chatbridge.bench.visible.{org}"
    admin = KafkaAdminClient(bootstrap_servers=KAFKA)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=KAFKA, acks=1, linger_ms=0)
    messages = Messages(org)
    events = [f"e{n}" for n in range(chats_count)]
    p50s, p99s = [], []
    with sqlite_database() as store_settings:
        settings = Settings(
            **store_settings,
            kafka_bootstrap_servers=KAFKA,
            topics=topic,  # type: ignore[arg-type]
            group_id=f"bench-{org}",
            dlq_topic="chatbridge.bench.dlq",
        )
        store = open_store(settings)
        stop = threading.Event()
        sync = ReconcilerParts(matrix, ReconcilerSettings())
        worker = threading.Thread(
            target=run_worker, args=(store, settings, stop), kwargs={"chat_sync": sync}, daemon=True
        )
        worker.start()
        try:
            for line in [messages.org_on(), *(messages.event(e, []) for e in events)]:
                producer.send(topic, key=org.encode(), value=line)
            producer.flush()
            rooms = wait_for_rooms(matrix, org, events)
            pairs = [(events[i % chats_count], persons[i // chats_count]) for i in range(changes)]
            per_rep = max(1, changes // sizes.repetitions)
            for rep in range(sizes.repetitions):
                latencies = publish_and_watch(
                    producer,
                    topic,
                    org,
                    messages,
                    matrix,
                    rooms,
                    pairs[rep * per_rep : (rep + 1) * per_rep],
                    sizes.change_rate,
                )
                p50s.append(percentile(latencies, 0.5) * 1000)
                p99s.append(percentile(latencies, 0.99) * 1000)
                log(f"visible rep {rep}: p50 {p50s[-1]:.0f} ms, p99 {p99s[-1]:.0f} ms over {len(latencies)} changes")
        finally:
            stop.set()
            worker.join(timeout=60)
            store.close()
            producer.close()
            matrix.close()
    raw_p99 = [percentile(raw_latencies, 0.99) * 1000] if raw_latencies else []
    note = (
        f"{sizes.change_rate:g} changes/s for {sizes.change_seconds:g} s in all, {sizes.repetitions} "
        f"repetitions of {per_rep} changes; p50 {median(p50s):.0f} ms"
    )
    return result("change_to_visible_p99", p99s, "ms", "raw_backend_p99", raw_p99, higher_is_better=False, note=note)


def wait_for_rooms(matrix: MatrixBackend, org: str, events: Sequence[str], timeout: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    rooms: dict[str, str] = {}
    while len(rooms) < len(events):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker created {len(rooms)} of {len(events)} chats in {timeout:.0f} s")
        for event in events:
            try:
                chat = None if event in rooms else matrix.get_chat(org, event, 1)
            except BackendError:  # the room exists, the bridge is not in it yet
                continue
            if chat is not None:
                rooms[event] = chat.chat_id
        time.sleep(0.5)
    return rooms


def publish_and_watch(
    producer: KafkaProducer,
    topic: str,
    org: str,
    messages: Messages,
    matrix: MatrixBackend,
    rooms: dict[str, str],
    pairs: Sequence[tuple[str, str]],
    rate: float,
) -> list[float]:
    """Publish one staffing change every 1/rate s; a watcher polls the rooms' joined members (as the bridge)."""
    pending: dict[tuple[str, str], float] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    client = httpx.Client(base_url=BASE_URL, headers={"Authorization": f"Bearer {token()}"}, timeout=30)

    def watch() -> None:
        while not done.is_set() or pending:
            with lock:
                waiting = sorted({event for event, _ in pending})
            for event in waiting:
                response = client.get(f"/_matrix/client/v3/rooms/{quote(rooms[event], safe='')}/joined_members")
                joined = response.json().get("joined", {}) if response.status_code == 200 else {}
                seen = time.perf_counter()
                with lock:
                    for key in [k for k in pending if k[0] == event and matrix.user_id(org, k[1]) in joined]:
                        latencies.append(seen - pending.pop(key))
            time.sleep(0.02)
            if done.is_set() and time.perf_counter() - finished > 120:
                raise RuntimeError(f"{len(pending)} changes never became visible")

    finished = float("inf")
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    for n, (event, person_id) in enumerate(pairs):
        time.sleep(max(0.0, started + n / rate - time.perf_counter()))
        line = messages.staffing(event, person_id)
        with lock:
            pending[(event, person_id)] = time.perf_counter()
        producer.send(topic, key=f"{org}/{event}".encode(), value=line)
        producer.flush()
    finished = time.perf_counter()
    done.set()
    watcher.join(timeout=180)
    client.close()
    return latencies


# -- resync_noop ----------------------------------------------------------------------------------------------


def resync_store(sizes: Sizes, matrix: MatrixBackend) -> Path:
    """A store of `resync_chats` chats whose rooms exist in Synapse; built once and kept (room creation is slow)."""
    path = CACHE / f"resync-{sizes.resync_chats}.db"
    org = f"bench-resync-{sizes.resync_chats}"
    if path.exists() and matrix.get_chat(org, f"e{sizes.resync_chats - 1}", 1) is not None:
        return path
    log(f"resync_noop: creating {sizes.resync_chats} chats in Synapse (once; kept in {CACHE})")
    path.unlink(missing_ok=True)
    store = open_store(Settings(database=path))
    try:
        messages = Messages(org)
        apply(store, [messages.org_on(), *(messages.event(f"e{n}", []) for n in range(sizes.resync_chats))])
        reconciler = Reconciler(store.app, matrix, ReconcilerSettings(concurrency=8))
        try:
            report = reconciler.pass_once(desired_rows(store), NOW)
        finally:
            reconciler.close()
        if report.failed:
            raise RuntimeError(f"creating the resync chats failed: {report.failed[0].error}")
    finally:
        store.close()
    return path


def resync_noop(sizes: Sizes) -> Result:
    with contextmanager_backend() as matrix:
        path = resync_store(sizes, matrix)
    reads, writes, seconds = [], [], []
    for rep in range(sizes.repetitions):
        counting = Counting()
        matrix = backend(counting)
        store = open_store(Settings(database=path, migrate_on_start=True))  # cached: maybe by an earlier release
        reconciler = Reconciler(store.app, matrix, ReconcilerSettings())  # fresh: every chat is read once
        try:
            rows = desired_rows(store)
            started = time.perf_counter()
            report = reconciler.pass_once(rows, NOW)
            seconds.append(time.perf_counter() - started)
        finally:
            reconciler.close()
            store.close()
            matrix.close()
        if report.failed or report.steps:
            raise RuntimeError(f"resync was not a no-op: {report.summary()}")
        reads.append(counting.reads / len(rows))
        writes.append(float(counting.writes))
        log(f"resync rep {rep}: {reads[-1]:.2f} reads/chat, {writes[-1]:.0f} writes, {seconds[-1]:.1f} s")
    note = (
        f"{sizes.resync_chats:,} unchanged chats (fresh reconciler, concurrency {ReconcilerSettings().concurrency}): "
        f"{median(writes):.0f} write calls, {median(seconds):.1f} s"
    )
    return result("resync_noop", reads, "reads/chat", note=note)


@contextmanager
def contextmanager_backend() -> Iterator[MatrixBackend]:
    matrix = backend()
    try:
        yield matrix
    finally:
        matrix.close()


# -- new_chat_200_joined --------------------------------------------------------------------------------------


def new_chat_joined(sizes: Sizes) -> Result:
    """A new chat of 200 members (5 in smoke runs): one pass, from nothing to every member joined, timed; beside it
    the plain client making the same 200 look-ups and force-joins into a room of its own at the same concurrency."""
    members = 200 if sizes.reconcile_steps >= 100 else 5
    org = f"bj{uuid.uuid4().hex[:8]}"
    staff = [person(n, org) for n in range(members)]
    matrix = backend()
    log(f"new_chat_200_joined: registering {members} accounts")
    register_persons(matrix, org, staff)
    users = [matrix.user_id(org, p) for p in staff]
    settings = ReconcilerSettings(concurrency=RAW_CONCURRENCY)
    seconds, raw = [], []
    with sqlite_database() as store_settings:
        store = open_store(settings_for(store_settings, "unused"))
        try:
            messages = Messages(org)
            apply(store, [messages.org_on()])
            tenant = matrix.ensure_tenant(org, {"name": org}).tenant_id
            for rep in range(sizes.repetitions):
                event = f"big{rep}"
                apply(store, [messages.event(event, staff)])
                reconciler = Reconciler(store.app, matrix, settings)
                try:
                    started = time.perf_counter()
                    report = reconciler.pass_once(desired_rows(store), NOW)
                    seconds.append(time.perf_counter() - started)
                finally:
                    reconciler.close()
                chat = matrix.get_chat(org, event, 1)
                if report.failed or chat is None or len(chat.members) != members:
                    raise RuntimeError(f"the new chat is not joined: {report.summary()}")
                room = matrix.create_chat(org, f"raw{rep}", 1, tenant).chat_id
                raw.append(raw_joins(room, users))
                log(f"new chat rep {rep}: {seconds[-1]:.1f} s; plain client {raw[-1]:.1f} s for {members} joins")
        finally:
            store.close()
            matrix.close()
    note = (
        f"{members} members, one pass (the chat created with its name, topic and place, {members} joins); "
        f"reconciler concurrency {settings.concurrency}, plain client {RAW_CONCURRENCY} threads (look-up + join each)"
    )
    return result("new_chat_200_joined", seconds, "s", "raw_backend", raw, higher_is_better=False, note=note)


def raw_joins(room: str, users: Sequence[str]) -> float:
    """Seconds for a plain httpx client to look up and force-join `users` into `room` with RAW_CONCURRENCY threads."""
    client = httpx.Client(
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {token()}"},
        timeout=60,
        limits=httpx.Limits(max_connections=RAW_CONCURRENCY * 2),
    )

    def join(user: str) -> None:
        client.get(f"/_synapse/admin/v2/users/{quote(user, safe='')}").raise_for_status()
        client.post(f"/_synapse/admin/v1/join/{quote(room, safe='')}", json={"user_id": user}).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(RAW_CONCURRENCY) as pool:
        list(pool.map(join, users))
    client.close()
    return time.perf_counter() - started


# -- worker_rss_100k ------------------------------------------------------------------------------------------

RSS_SCRIPT = """
import sys
from datetime import datetime
from bench.reconcile import MirrorBackend
from chatbridge.bootstrap import open_store
from chatbridge.reconciler.loop import Reconciler
from chatbridge.reconciler.service import desired_rows
from chatbridge.settings import Settings
store = open_store(Settings(database=sys.argv[1]))
now = datetime.fromisoformat(sys.argv[2])
rows = desired_rows(store)
backend = MirrorBackend(rows, now)
reconciler = Reconciler(store.app, backend, None)
report = reconciler.pass_once(rows, now)
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(len(rows), report.steps, len(report.failed), rss)
"""


class MirrorBackend:
    """A backend whose every chat already is what the desired row says (a resync with nothing to do), so that the
    process's memory is the worker's own: the projection, the loop's per-chat memory, the aggregate cache."""

    def __init__(self, rows: Sequence[Any], now: datetime) -> None:
        from chatbridge.backends.user_ids import TemplateUserIds
        from chatbridge.reconciler.naming import configured_naming

        self.ids = TemplateUserIds(server_name="bench")
        self.naming = configured_naming()
        self.rows = {(row.org, row.event_id): row for row in rows}
        self.now = now

    def user_id(self, org: str, person_id: str) -> str:
        return self.ids.user_id(org, person_id)

    def person_of(self, user_id: str) -> tuple[str, str] | None:
        return self.ids.person_of(user_id)

    def ensure_tenant(self, org: str, fields: dict[str, Any]) -> Any:
        from chatbridge.backends.port import Tenant

        return Tenant(f"!space-{org}", fields, changed=False)

    def get_chat(self, org: str, event_id: str, generation: int, chat_id: str | None = None) -> Any:
        from chatbridge.backends.port import ActualChat
        from chatbridge.domain.lifecycle import MEMBER_PHASES, Phase

        row = self.rows[(org, event_id)]
        phase = row.phase(self.now)
        if phase not in MEMBER_PHASES:
            return None
        labels = self.naming.labels(row, phase)
        return ActualChat(
            f"!{org}-{event_id}-{generation}",
            frozenset(self.user_id(org, p) for p in row.members),
            frozenset(self.user_id(org, p) for p in row.moderators),
            read_only=phase == Phase.READ_ONLY,
            name=labels.name if labels else None,
            topic=labels.topic if labels else None,
            order=labels.order if labels else None,
        )

    def __getattr__(self, name: str) -> Any:  # writes: nothing to do
        return lambda *args, **kwargs: None


def worker_rss(sizes: Sizes) -> Result:
    """Resident memory of a fresh process holding the projection of `history_chats` chats after one resync pass."""
    history = history_store(sizes)
    values = []
    for rep in range(sizes.repetitions):
        with sqlite_database(copy_of=history) as store_settings:
            output = subprocess.run(
                [sys.executable, "-c", RSS_SCRIPT, store_settings["database"], NOW.isoformat()],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            ).stdout.split()
        chats, steps, failed, rss_kib = (int(v) for v in output[-4:])
        if failed or steps:
            raise RuntimeError(f"the RSS run's resync was not a no-op: {steps} steps, {failed} failed")
        values.append(rss_kib / 1024)
        log(f"rss rep {rep}: {values[-1]:.0f} MB with {chats:,} chats")
    return result("worker_rss_100k", values, "MB", note=f"{chats:,} chats in the store, one resync pass done")


# -- the figures ----------------------------------------------------------------------------------------------


FIGURES = ("reconcile_steps", "change_to_visible_p99", "resync_noop", "new_chat_200_joined", "worker_rss_100k")


def run(sizes: Sizes, only: set[str] | None = None) -> list[Result]:
    def wanted(*names: str) -> bool:
        return only is None or bool(only.intersection(names))

    results: list[Result] = []
    raw_latencies: list[float] = []
    if wanted("reconcile_steps", "change_to_visible_p99"):
        steps, raw_latencies = reconcile_steps(sizes)
        if wanted("reconcile_steps"):
            results.append(steps)
    if wanted("change_to_visible_p99"):
        results.append(change_to_visible(sizes, raw_latencies))
    if wanted("resync_noop"):
        results.append(resync_noop(sizes))
    if wanted("new_chat_200_joined"):
        results.append(new_chat_joined(sizes))
    if wanted("worker_rss_100k"):
        results.append(worker_rss(sizes))
    return results
