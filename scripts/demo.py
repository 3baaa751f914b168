"""`make demo`: the whole product in one run, from a fresh clone.

Starts the local services that are not running yet (and stops only those afterwards), publishes a realistic sample
stream of HiOrg-Server messages to a fresh Kafka topic (a few organisations, dozens of events, staffing changes
over weeks, a cancellation, a deleted event, a helper without a chat account), ingests it with `chatbridge run`,
then moves the reconciler's clock through the chats' lives with `chatbridge reconcile --once --now …` and reports
at each stop: chats by phase, members in Synapse against desired; at the end the deletions with Synapse's
confirmation and the access timeline of one person. Everything it keeps is in the output directory (default
`.demo/`, with `report.json`); `--short` is the CI size.

Usage: python scripts/demo.py [--short] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services"
CHATBRIDGE = str(Path(sys.executable).with_name("chatbridge"))
BASE = datetime(2026, 12, 1, 8, tzinfo=UTC)  # the stream's story begins here; the clock is moved, not waited for


def say(text: str = "") -> None:
    print(text, flush=True)


# -- services: start what is not running, stop only that ------------------------------------------------------


def service_running(name: str) -> bool:
    return subprocess.run([str(SERVICES / f"{name}.sh"), "status"], capture_output=True, timeout=60).returncode == 0


def start_services() -> list[str]:
    started = []
    for name in ("postgres", "kafka", "synapse"):
        if service_running(name):
            say(f"  {name}: already running (left running afterwards)")
            continue
        say(f"  {name}: starting (first start downloads it; later starts take seconds)")
        subprocess.run([str(SERVICES / f"{name}.sh"), "start"], check=True, timeout=1800)
        started.append(name)
    return started


def stop_services(started: list[str]) -> None:
    for name in reversed(started):
        subprocess.run([str(SERVICES / f"{name}.sh"), "stop"], check=False, timeout=300)
        say(f"  {name}: stopped (the demo started it)")


# -- the sample stream ----------------------------------------------------------------------------------------


class Stream:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, type_: str, org: str, when: datetime, data: dict[str, Any]) -> None:
        self.messages.append({"id": str(uuid.uuid4()), "type": type_, "org": org, "occurred_at": when.isoformat(),
                              "data": data})  # fmt: skip


def sample_stream(run: str, short: bool) -> tuple[Stream, dict[str, list[str]], dict[str, Any]]:
    """The story: organisations enable chat, plan events weeks ahead, staff them over weeks; one event is
    cancelled, one deleted; one helper never got a chat account."""
    rng = random.Random(6)
    orgs = [
        f"{name}-{run}" for name in (("drk-koeln", "juh-bonn") if short else ("drk-koeln", "juh-bonn", "asb-aachen"))
    ]
    per_org, pool = (3, 5) if short else (10, 8)
    people = {org: [f"{rng.getrandbits(128):032x}" for _ in range(pool)] for org in orgs}
    s = Stream()
    address = {"street": "Musterstr. 1", "postcode": "50667", "city": "Köln", "country": "DE"}
    for org in orgs:
        s.send("organisation.chat_enabled", org, BASE - timedelta(days=30),
               {"name": org.split("-")[0].upper(), "email": f"it@{org}.example", "address": address})  # fmt: skip
    events: list[tuple[str, str, datetime, datetime]] = []
    for org in orgs:
        for n in range(per_org):
            start = BASE + timedelta(days=2 + n * (3 if short else 4), hours=rng.randint(0, 10))
            end = start + timedelta(hours=rng.randint(4, 10))
            event_id = f"{org.split('-')[0]}-{n + 1:02d}"
            staff = rng.sample(people[org][1:], 3)
            s.send("event.upserted", org, start - timedelta(days=21), {
                "event_id": event_id, "title": f"Sanitätsdienst {n + 1}", "start": start.isoformat(),
                "end": end.isoformat(), "responsible": people[org][0], "chat_enabled": n != per_org - 1 or short,
                "staff": [{"person_id": p, "status": "registered"} for p in staff]})  # fmt: skip
            for week, person in enumerate(staff):  # staffing firms up over the weeks before the event
                status = "declined" if week == 2 and n % 3 == 0 else "assigned"
                s.send("staffing.changed", org, start - timedelta(days=14 - 5 * week),
                       {"event_id": event_id, "person_id": person, "status": status})  # fmt: skip
            events.append((org, event_id, start, end))
    helper_org = orgs[0]
    helper = people[helper_org][-1]  # a helper without a chat account: stays pending
    for org, event_id, start, _ in events[:2]:
        s.send("staffing.changed", org, start - timedelta(days=2), {"event_id": event_id, "person_id": helper,
                                                                       "status": "assigned"})  # fmt: skip
    cancelled = events[1]
    s.send("event.cancelled", cancelled[0], cancelled[2] - timedelta(days=1), {"event_id": cancelled[1]})
    deleted = events[per_org + 1]
    s.send("event.deleted", deleted[0], deleted[2] - timedelta(days=3), {"event_id": deleted[1]})
    s.messages.sort(key=lambda m: m["occurred_at"])  # HiOrg-Server sends them as they happen
    story = {"orgs": orgs, "helper_without_account": [helper_org, helper], "cancelled": list(cancelled[:2]),
             "deleted": list(deleted[:2]), "first_start": min(e[2] for e in events),
             "last_end": max(e[3] for e in events), "first_end": min(e[3] for e in events),
             "person": [orgs[0], people[orgs[0]][0]]}  # fmt: skip
    return s, people, story


def key_of(message: dict[str, Any]) -> bytes:
    org, data = message["org"], message["data"]
    if message["type"].startswith("organisation."):
        return org.encode()
    if message["type"].startswith("person."):
        return f"{org}/person/{data['person_id']}".encode()
    return f"{org}/{data['event_id']}".encode()


def publish(bootstrap: str, topic: str, stream: Stream) -> None:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        for message in stream.messages:
            producer.send(topic, key=key_of(message), value=json.dumps(message).encode())
        producer.flush(timeout=60)
    finally:
        producer.close()


# -- Synapse accounts -----------------------------------------------------------------------------------------


def services_dir() -> Path:
    return Path(os.environ.get("CHATBRIDGE_SERVICES_DIR") or Path.home() / ".cache" / "chatbridge-services")


def register_accounts(user_ids: list[str], base_url: str) -> None:
    secret = (services_dir() / "synapse" / "registration_shared_secret").read_text().strip()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for user_id in user_ids:
            localpart = user_id.removeprefix("@").split(":", 1)[0]
            nonce = client.get("/_synapse/admin/v1/register").json()["nonce"]
            password = uuid.uuid4().hex
            mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
            mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"notadmin"]))
            response = client.post("/_synapse/admin/v1/register", json={"nonce": nonce, "username": localpart,
                                   "password": password, "admin": False, "mac": mac.hexdigest()})  # fmt: skip
            if response.status_code != 200 and response.json().get("errcode") != "M_USER_IN_USE":
                raise SystemExit(f"registering a demo account failed: {response.status_code}")


# -- the run --------------------------------------------------------------------------------------------------


def chatbridge(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CHATBRIDGE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode not in (0, 1):
        raise SystemExit(f"chatbridge {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot(env: dict[str, str], now: datetime) -> dict[str, Any]:
    """The desired state at `now` beside what Synapse holds, chat by chat."""
    from chatbridge.backends.settings import MatrixSettings
    from chatbridge.bootstrap import open_backend

    state = json.loads(chatbridge(env, "state", "--now", z(now), "--json").stdout)
    backend = open_backend(MatrixSettings())
    chats = []
    try:
        for chat in state["chats"]:
            actual = backend.get_chat(chat["org"], chat["event_id"], chat["generation"])
            desired = sorted(backend.user_id(chat["org"], p) for p in chat["members"])
            chats.append({"org": chat["org"], "event_id": chat["event_id"], "generation": chat["generation"],
                          "phase": chat["phase"], "desired": desired,
                          "in_synapse": sorted(actual.members) if actual else None,
                          "read_only": actual.read_only if actual else None,
                          "name": actual.name if actual else None,
                          "topic": actual.topic if actual else None})  # fmt: skip
    finally:
        backend.close()
    return {"now": z(now), "phases": dict(Counter(c["phase"] for c in chats)), "chats": chats}


def print_stop(title: str, stop: dict[str, Any], passed: dict[str, Any]) -> None:
    say(f"\n== {title}: clock at {stop['now']} ==")
    say(f"  reconcile pass: {passed.get('reconciled', 0)} chats, {passed.get('steps', 0)} steps, "
        f"{passed.get('pending', 0)} persons pending, {passed.get('failed', 0)} failed")  # fmt: skip
    say("  chats by phase: " + ", ".join(f"{k} {v}" for k, v in sorted(stop["phases"].items())))
    say(f"  {'chat':<28} {'phase':<22} {'desired':>7} {'in Synapse':>10}")
    for chat in stop["chats"]:
        have = "-" if chat["in_synapse"] is None else str(len(chat["in_synapse"]))
        note = ""
        if chat["in_synapse"] is not None and set(chat["desired"]) - set(chat["in_synapse"]):
            note = "  (pending: no chat account yet)"
        elif chat["in_synapse"] is None and chat["phase"] == "deleted":
            note = "  (gone from Synapse)"
        ro = " read-only" if chat["read_only"] else ""
        say(f"  {chat['org'] + '/' + chat['event_id']:<28} {chat['phase']:<22} {len(chat['desired']):>7} "
            f"{have:>10}{ro}{note}")  # fmt: skip
        if chat["name"] is not None:  # what a member sees in the chat list, as Synapse holds it
            name, topic = chat["name"], chat["topic"]
            say(f'      "{name}" — {topic}')


def proof_and_timeline(env: dict[str, str], story: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deletions with Synapse's confirmation, and one person's access timeline, from the event log."""
    from chatbridge.bootstrap import open_store
    from chatbridge.domain.aggregates import ChatGroup
    from chatbridge.settings import Settings

    store = open_store(Settings(database=Path(env["CHATBRIDGE_DATABASE"])))
    deletions, timeline = [], []
    org, person = story["person"]
    try:
        for row in store.projection.view.desired_chats():
            for event in store.app.events.get(ChatGroup.create_id(row.org, row.event_id)):
                kind = type(event).__name__
                if kind == "ChatDeleted":
                    deletions.append({"org": row.org, "event_id": row.event_id, "generation": event.generation,
                                      "at": z(event.at), **event.confirmation})  # fmt: skip
                elif kind in ("AccessGranted", "AccessRevoked") and row.org == org and event.person_id == person:
                    timeline.append({"event_id": row.event_id, "what": kind, "at": z(event.at)})
    finally:
        store.close()
    return deletions, sorted(timeline, key=lambda t: (t["at"], t["event_id"]))


def audit_report(env: dict[str, str], org: str, until: datetime, out: Path) -> list[Path]:
    """One organisation's audit report beside report.json: the page, and its PDF where Chromium is installed."""
    written = []
    for suffix in ("html", "pdf"):
        path = out / f"audit-report-{org}.{suffix}"
        made = subprocess.run([CHATBRIDGE, "audit", "report", "--org", org, "--to", z(until), "--lang", "de",
                               "--out", str(path)], capture_output=True, text=True, env=env)  # fmt: skip
        if made.returncode == 0:
            written.append(path)
        else:
            reason = (made.stderr.strip().splitlines() or [f"exit {made.returncode}"])[-1]
            say(f"  (no {suffix} report: {reason})")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="a small stream (CI)")
    parser.add_argument("--out", type=Path, default=ROOT / ".demo", help="where the store and report.json go")
    args = parser.parse_args()
    began = time.monotonic()
    run = uuid.uuid4().hex[:6]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ".gitignore").write_text("*\n")  # the demo's output never shows up as a change to commit
    database = args.out / f"chatbridge-{run}.db"
    topic = f"hiorg.demo.{run}"
    say(f"chatbridge demo {run}{' (short)' if args.short else ''}")
    say("1. services")
    started = start_services()
    try:
        env = {**os.environ, "CHATBRIDGE_DATABASE": str(database), "CHATBRIDGE_TOPICS": topic,
               "CHATBRIDGE_GROUP_ID": f"demo-{run}", "CHATBRIDGE_DLQ_TOPIC": f"{topic}.dlq",
               "CHATBRIDGE_STATUS_TOPIC": f"{topic}.status", "CHATBRIDGE_HTTP_PORT": "0",
               "CHATBRIDGE_LOG_FORMAT": "json", "CHATBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000"}  # fmt: skip
        stream, people, story = sample_stream(run, args.short)
        from chatbridge.backends.user_ids import DEFAULT_TEMPLATE, TemplateUserIds

        ids = TemplateUserIds(DEFAULT_TEMPLATE, "localhost")
        helper_org, helper = story["helper_without_account"]
        accounts = [ids.user_id(org, p) for org, persons in people.items() for p in persons if p != helper]
        say(f"2. Synapse: {len(accounts)} helpers get a chat account; one helper of {helper_org} has none")
        register_accounts(accounts, "http://127.0.0.1:8008")
        counts = Counter(m["type"] for m in stream.messages)
        say(f"3. publishing {len(stream.messages)} HiOrg messages to Kafka topic {topic}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))  # fmt: skip
        publish(env.get("CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), topic, stream)
        say("4. chatbridge run --no-reconcile --exit-when-idle 3: the worker ingests the topic into the store")
        ran = chatbridge(env, "run", "--no-reconcile", "--exit-when-idle", "3")
        say("   " + ran.stderr.strip().splitlines()[-1])
        stops = [
            ("before the first event", story["first_start"] - timedelta(hours=2)),
            ("two days after the first events ended (read-only)", story["first_end"] + timedelta(days=2, hours=1)),
            ("a month later (the first chats deleted)", story["first_end"] + timedelta(days=32, hours=1)),
            ("after every chat's life", story["last_end"] + timedelta(days=32, hours=1)),
        ]
        report: dict[str, Any] = {"run": run, "topic": topic, "database": str(database), "stops": [],
                                  "cancelled": story["cancelled"], "deleted": story["deleted"]}  # fmt: skip
        say("5. chatbridge reconcile --once --now T, at four moments of the chats' lives")
        for title, moment in stops:
            passed = json.loads(chatbridge(env, "reconcile", "--once", "--json", "--now", z(moment)).stdout)
            stop = snapshot(env, moment)
            stop["title"], stop["pass"] = title, {k: passed[k] for k in ("reconciled", "steps", "pending", "failed")}
            report["stops"].append(stop)
            print_stop(title, stop, passed)
        deletions, timeline = proof_and_timeline(env, story)
        report["deletions"], report["person_timeline"] = deletions, timeline
        say(f"\n== deletions, confirmed by Synapse ({len(deletions)}) ==")
        for d in deletions:
            say(f"  {d['org']}/{d['event_id']} gen {d['generation']} at {d['at']}: room {d['chat_id']}, purge "
                f"{d['delete_id']} {d['status']}, media deleted {d['media_deleted']}")  # fmt: skip
        org, person = story["person"]
        audit = subprocess.run([CHATBRIDGE, "audit", "person", "--help"], capture_output=True, env=env)
        if audit.returncode == 0:
            say(f"\n== chatbridge audit person ({org}, the responsible of its events) ==")
            result = subprocess.run([CHATBRIDGE, "audit", "person", "--org", org, "--person", person],
                                    capture_output=True, text=True, env={**env, "COLUMNS": "140"})  # fmt: skip
            say(result.stdout.rstrip() or result.stderr.rstrip())
        else:
            say(f"\n== access timeline of one person ({org}, the responsible of its events), from the event log ==")
            for entry in timeline:
                say(f"  {entry['at']}  {entry['what']:<14} {org}/{entry['event_id']}")
        written = audit_report(env, org, stops[-1][1], args.out)
        report["audit_report"] = [str(path) for path in written]
        report["seconds"] = round(time.monotonic() - began, 1)
        (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        say(f"\nDone in {report['seconds']}s. Where to look next:")
        say(f"  {args.out / 'report.json'}                      this report as JSON")
        for path in written:
            say(f"  {path}   {org}'s audit report for its data-protection officer")
        say(f"  CHATBRIDGE_DATABASE={database} .venv/bin/chatbridge state --now {z(stops[0][1])}")
        say("  docs/operations.md (metrics, alerts, scaling), docs/commands.md, docs/contract.md (for producers)")
        say("  Synapse's admin API at http://127.0.0.1:8008 (while the services run: make services)")
        return 0
    finally:
        stop_services(started)


if __name__ == "__main__":
    sys.exit(main())
