"""docs/production.md, run: every block marked `<!-- runnable -->`, in order, against the local services.

Each block runs on its own in bash (`set -euo pipefail`) after the doc's block of variables, with throwaway names for
the database, the role, the topics, the consumer group and the bridge's Matrix account, and temporary directories
for /etc/chatbridge and /var/lib/chatbridge. Each block must exit 0, and after each the test checks what an operator
would look at. Everything made is removed afterwards: the replicas, the database and role, the topics and group, the
Matrix account.

Creating a role needs an admin: `CHATBRIDGE_TEST_POSTGRES_ADMIN` (a libpq conninfo), else the local server's
bootstrap superuser over its unix socket (scripts/services/postgres.sh), which the test role chatbridge is not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from tests.integration.synapse_support import Synapse, services_dir
from tests.integration.synapse_support import synapse as synapse  # the fixture
from tests.services import ROOT

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "production.md"
BLOCK = re.compile(r"<!-- runnable -->\n```sh\n(.*?)\n```", re.DOTALL)
PARTITIONS = 4

# `kafka-topics.sh` for the options the doc uses, where no Kafka distribution is installed; any other option fails.
KAFKA_TOPICS = r"""
import argparse, sys
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

parser = argparse.ArgumentParser(prog="kafka-topics.sh", allow_abbrev=False)
parser.add_argument("--bootstrap-server", required=True)
action = parser.add_mutually_exclusive_group(required=True)
action.add_argument("--create", action="store_true")
action.add_argument("--describe", action="store_true")
parser.add_argument("--topic", required=True)
parser.add_argument("--if-not-exists", action="store_true")
parser.add_argument("--partitions", type=int)
parser.add_argument("--replication-factor", type=int)
parser.add_argument("--config", action="append", default=[])
args = parser.parse_args()
admin = KafkaAdminClient(bootstrap_servers=args.bootstrap_server)
try:
    if args.create:
        configs = dict(item.split("=", 1) for item in args.config)
        try:
            admin.create_topics([NewTopic(args.topic, args.partitions, args.replication_factor, topic_configs=configs)])
            print(f"Created topic {args.topic}.")
        except TopicAlreadyExistsError:
            if not args.if_not_exists:
                raise
    else:
        consumer = KafkaConsumer(bootstrap_servers=args.bootstrap_server)
        partitions = consumer.partitions_for_topic(args.topic)
        consumer.close()
        if not partitions:
            sys.exit(f"Topic '{args.topic}' does not exist")
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, args.topic)])["topic"][args.topic]
        configs = ",".join(f"{k}={v['value']}" for k, v in found.items() if v["config_source"] == "DYNAMIC_TOPIC_CONFIG")
        print(f"Topic: {args.topic}\tPartitionCount: {len(partitions)}\tConfigs: {configs}")
finally:
    admin.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_conninfo() -> str:
    if conninfo := os.environ.get("CHATBRIDGE_TEST_POSTGRES_ADMIN"):
        return conninfo
    socket_dir = services_dir() / "postgres" / "run"
    if not socket_dir.is_dir():
        pytest.fail(
            "docs/production.md creates a role, which needs a PostgreSQL admin: set CHATBRIDGE_TEST_POSTGRES_ADMIN "
            "to a libpq conninfo of a role with CREATEROLE and CREATEDB, or run scripts/services/postgres.sh",
            pytrace=False,
        )
    return f"host={socket_dir} port=5432 user=postgres dbname=postgres"


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def partitions_owned(port: int) -> int:
    status, body = http(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    line = next(line for line in body.splitlines() if line.startswith("chatbridge_partitions_assigned "))
    return int(float(line.split()[1]))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.5)


class Walkthrough:
    def __init__(self, tmp: Path, kafka: str, synapse: Synapse, admin: str):
        run = uuid.uuid4().hex[:10]
        self.kafka, self.synapse, self.admin = kafka, synapse, admin
        self.db, self.role, self.bot = f"cbdoc_{run}", f"cbdoc_{run}_role", f"cbdoc-{run}"
        self.topics = {
            "INPUT_TOPIC": f"hiorg.doc.{run}", "DLQ_TOPIC": f"chatbridge.dlq.doc.{run}",
            "STATUS_TOPIC": f"chatbridge.chat-status.doc.{run}",
            "CHECKPOINT_TOPIC": f"chatbridge.audit-checkpoints.doc.{run}",
            "ERASURE_TOPIC": f"chatbridge.erasures.doc.{run}",
        }  # fmt: skip
        self.etc, self.state, self.backups = tmp / "etc", tmp / "state", tmp / "backups"
        self.ports = (free_port(), free_port())
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "kafka-topics.sh"
        shim.write_text(f"#!{sys.executable}\n{KAFKA_TOPICS}")
        shim.chmod(0o755)
        host, port = kafka.split(",")[0].rsplit(":", 1)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
        self.env.update(
            PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            DB=self.db, ROLE=self.role, PG_HOST="127.0.0.1", PG_PORT="5432", PG_ADMIN=admin, KAFKA=kafka,
            GROUP=f"chatbridge-doc-{run}", PARTITIONS=str(PARTITIONS), REPLICATION="1", MIN_INSYNC="1",
            MATRIX_URL=synapse.base_url, MATRIX_SERVER_NAME=synapse.server_name, BOT=self.bot,
            SYNAPSE_SECRET_FILE=str(services_dir() / "synapse" / "registration_shared_secret"),
            ETC=str(self.etc), STATE=str(self.state), BACKUPS=str(self.backups), SRC=str(ROOT),
            HTTP_PORT_1=str(self.ports[0]), HTTP_PORT_2=str(self.ports[1]), **self.topics,
        )  # fmt: skip
        self.outputs: list[str] = []

    def run(self, variables: str, block: str) -> str:
        script = f"set -euo pipefail\n{variables}\n{block}\n"
        result = subprocess.run(
            ["bash", "-c", script], env=self.env, cwd=self.etc.parent, capture_output=True, text=True,
            timeout=150, check=False,
        )  # fmt: skip
        self.outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, (
            f"this block of docs/production.md exited {result.returncode}:\n{block}\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}\n--- replica logs\n{self.replica_logs()}"
        )
        return result.stdout

    def replica_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.state.glob("replica-*.log")))

    def as_role(self) -> psycopg.Connection:
        password = (self.etc / "postgres_password").read_text().strip()
        return psycopg.connect(host="127.0.0.1", port=5432, dbname=self.db, user=self.role, password=password)

    def replica_pids(self) -> list[int]:
        return [int(p.read_text()) for p in sorted(self.state.glob("replica-*.pid"))]

    def clean_up(self) -> None:
        for pid in self.replica_pids():  # the replicas this walk-through started, if a block failed before step 9
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        admin = KafkaAdminClient(bootstrap_servers=self.kafka)
        try:
            if any(group["group_id"] == self.env["GROUP"] for group in admin.list_groups()):
                admin.delete_groups([self.env["GROUP"]])
            existing = set(admin.list_topics()) & set(self.topics.values())
            if existing:
                admin.delete_topics(sorted(existing))
        finally:
            admin.close()
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            connection.execute(f'DROP ROLE IF EXISTS "{self.role}"')
        with self.synapse.admin() as client:  # erase the bridge account if it was made
            client.post(f"/_synapse/admin/v1/deactivate/@{self.bot}:{self.synapse.server_name}", json={"erase": True})


@pytest.fixture
def walkthrough(tmp_path: Path, kafka_bootstrap: str, synapse: Synapse) -> Iterator[Walkthrough]:
    walk = Walkthrough(tmp_path, kafka_bootstrap, synapse, admin_conninfo())
    try:
        yield walk
    finally:
        walk.clean_up()


def topic_configs(kafka: str, topic: str) -> dict[str, str]:
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
        return {name: entry["value"] for name, entry in found.items()}
    finally:
        admin.close()


def test_the_production_walkthrough_runs_as_written(walkthrough: Walkthrough) -> None:
    w = walkthrough
    variables, *blocks = BLOCK.findall(DOC.read_text())
    assert "${DB:=" in variables, "the first runnable block sets the names"

    def database_and_role(out: str) -> None:
        with psycopg.connect(w.admin) as connection:
            role = connection.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = %s",
                (w.role,),
            ).fetchone()
        assert role == (False, False, False, True)
        assert stat.S_IMODE((w.etc / "postgres_password").stat().st_mode) == 0o600
        with w.as_role() as connection:  # it may connect, and creates in public, but not a database
            assert connection.execute("SELECT has_schema_privilege('public', 'CREATE')").fetchone() == (True,)

    def topics(out: str) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=w.kafka)
        try:
            counts = {name: len(consumer.partitions_for_topic(t) or ()) for name, t in w.topics.items()}
        finally:
            consumer.close()
        assert counts == {"INPUT_TOPIC": PARTITIONS, "DLQ_TOPIC": PARTITIONS, "STATUS_TOPIC": PARTITIONS,
                          "CHECKPOINT_TOPIC": 1, "ERASURE_TOPIC": 1}  # fmt: skip
        for name in ("CHECKPOINT_TOPIC", "ERASURE_TOPIC"):
            configs = topic_configs(w.kafka, w.topics[name])
            assert (configs["retention.ms"], configs["retention.bytes"], configs["cleanup.policy"]) == ("-1", "-1",
                                                                                                       "delete")  # fmt: skip
        assert topic_configs(w.kafka, w.topics["STATUS_TOPIC"])["cleanup.policy"] == "compact"
        assert f"PartitionCount: {PARTITIONS}" in out

    def bridge_account(out: str) -> None:
        token = w.etc / "matrix_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text().strip()
        assert token.read_text().strip() not in "\n".join(w.outputs)  # never printed

    def rate_limit(out: str) -> None:
        assert json.loads(out.splitlines()[0]) == {"messages_per_second": 0, "burst_count": 0}
        assert json.loads(out.splitlines()[1])["user_id"] == f"@{w.bot}:{w.synapse.server_name}"

    def keys(out: str) -> None:
        verify_key = out.strip().splitlines()[-1]
        assert re.fullmatch(r"[0-9a-f]{64}", verify_key), out
        assert f"verify key:       {verify_key}" in out

    def config(out: str) -> None:
        said = w.outputs[-1]  # the verdict goes to standard error, after the table
        assert said.strip().endswith("configuration ok"), said
        assert (w.etc / "postgres_password").read_text().strip() not in said  # masked

    def first_replica(out: str) -> None:
        assert json.loads(out.splitlines()[0])["status"] == "ok", out  # /readyz answered 200
        with w.as_role() as connection:
            tables = dict(connection.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"))
        assert {"chatbridge_schema_version", "audit_checkpoints", "desired_state"} <= tables.keys(), tables
        assert set(tables.values()) == {w.role}

    def second_replica(out: str) -> None:
        def split() -> bool:
            owned = [partitions_owned(port) for port in w.ports]
            return sum(owned) == PARTITIONS and min(owned) > 0

        wait_until(split, 60, "the two replicas to split the partitions")

    def partitions(out: str) -> None:
        counts = [int(float(line.split()[1])) for line in out.splitlines()]
        assert len(counts) == 2 and sum(counts) == PARTITIONS and min(counts) > 0, out

    def health(out: str) -> None:
        assert all(http(f"http://127.0.0.1:{port}/readyz")[0] == 200 for port in w.ports)
        assert "chatbridge_last_poll_timestamp_seconds" in out

    def alerts(out: str) -> None:
        assert "SUCCESS" in out

    def backup(out: str) -> None:
        dumps = list(w.backups.glob("chatbridge-*.dump"))
        assert len(dumps) == 1 and dumps[0].stat().st_size > 0

    def upgrade(out: str) -> None:
        assert all(not Path(f"/proc/{pid}").exists() for pid in w.replica_pids()), "a replica still runs"
        for log in w.state.glob("replica-*.log"):  # each finished its batch and left, rather than being killed
            assert log.read_text().rstrip().splitlines()[-1].startswith("stopped after"), w.replica_logs()
        assert (w.backups / "before-upgrade.dump").stat().st_size > 0
        assert "nothing to do" in w.outputs[-1]  # migrate speaks on standard error

    checks: list[tuple[str, Callable[[str], None]]] = [
        ("CREATE ROLE", database_and_role), ("kafka-topics.sh", topics), ("admin/v1/register", bridge_account),
        ("override_ratelimit", rate_limit), ("keys generate", keys), ("config check", config),
        ("replica-1.pid", first_replica), ("replica-2.pid", second_replica), ("partitions_assigned", partitions),
        ("/healthz", health), ("promtool", alerts), ("backup --out", backup), ("kill -TERM", upgrade),
    ]  # fmt: skip
    assert len(blocks) == len(checks), f"{len(blocks)} runnable blocks, {len(checks)} checks: a step came or went"
    for block, (marker, check) in zip(blocks, checks, strict=True):
        assert marker in block, f"expected the step with {marker!r}, found:\n{block}"
        check(w.run(variables, block))
