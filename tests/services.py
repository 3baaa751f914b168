"""Real services for integration tests: Kafka and PostgreSQL, found or started once per test session.

Kafka: `KAFKA_BOOTSTRAP_SERVERS` wins; else testcontainers when a Docker engine answers (laptops); else the
project's own broker (`scripts/services/kafka.sh`, jars from Maven Central). PostgreSQL: `CHATBRIDGE_TEST_POSTGRES_HOST`
(with the chatbridge role) wins; else `scripts/services/postgres.sh`. A service that cannot start fails the tests —
it never skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts" / "services"


def run_script(name: str, action: str = "start", timeout: float = 900) -> None:
    result = subprocess.run([str(SCRIPTS / name), action], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{name} {action} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    run_script("kafka.sh")
    yield "127.0.0.1:9092"


def restart_local_broker() -> None:
    """Stop and start the project's broker, keeping its data (an outage, not a wipe)."""
    run_script("kafka.sh", "restart")


POSTGRES = {
    "host": os.environ.get("CHATBRIDGE_TEST_POSTGRES_HOST", "127.0.0.1"),
    "port": int(os.environ.get("CHATBRIDGE_TEST_POSTGRES_PORT", "5432")),
    "user": "chatbridge",
    "password": os.environ.get("CHATBRIDGE_TEST_POSTGRES_PASSWORD", "chatbridge"),
}


@pytest.fixture(scope="session")
def postgres_server() -> dict[str, object]:
    if "CHATBRIDGE_TEST_POSTGRES_HOST" not in os.environ:
        run_script("postgres.sh")
    return POSTGRES


@contextmanager
def throwaway_postgres_database(server: dict[str, object], prefix: str = "cbtest") -> Iterator[str]:
    """A fresh, empty database (its name) on `server`, dropped afterwards — for tests and benchmarks."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(dbname="chatbridge", autocommit=True, **server)  # type: ignore[arg-type]
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        try:
            for _attempt in range(20):
                try:
                    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                    break
                except psycopg.errors.InsufficientPrivilege:  # an autovacuum worker in it, on a server whose
                    time.sleep(0.5)  # role lacks pg_signal_backend: it is done in a moment
        finally:
            admin.close()


@pytest.fixture
def postgres_env(postgres_server: dict[str, object]) -> Iterator[dict[str, str]]:
    """A fresh, empty database for one test, as chatbridge's environment variables."""
    with throwaway_postgres_database(postgres_server) as name:
        yield postgres_environment(postgres_server, name)


def postgres_environment(server: dict[str, object], database: str) -> dict[str, str]:
    """chatbridge's environment variables for one database of the local PostgreSQL server."""
    return {
        "CHATBRIDGE_STORE": "postgres",
        "CHATBRIDGE_POSTGRES_HOST": str(server["host"]),
        "CHATBRIDGE_POSTGRES_PORT": str(server["port"]),
        "CHATBRIDGE_POSTGRES_DBNAME": database,
        "CHATBRIDGE_POSTGRES_USER": str(server["user"]),
        "CHATBRIDGE_POSTGRES_PASSWORD": str(server["password"]),
    }
