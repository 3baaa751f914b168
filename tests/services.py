"""Real services for integration tests: Kafka and PostgreSQL, found or started once per test session.

Kafka: `KAFKA_BOOTSTRAP_SERVERS` wins; else the project's own broker on 127.0.0.1:9092 when it answers; else a
testcontainers broker when a Docker engine answers (laptops); else — also when that container cannot start, e.g. no
image registry answers — the project's own broker (`scripts/services/kafka.sh`, jars from Maven Central).
PostgreSQL: `CHATBRIDGE_TEST_POSTGRES_HOST` (with the chatbridge role) wins; else `scripts/services/postgres.sh`.
A service that cannot be found or started fails the tests in one line naming the variable that points them at a
running one — it never skips them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts" / "services"


def run_script(name: str, action: str = "start", timeout: float = 900) -> None:
    result = subprocess.run([str(SCRIPTS / name), action], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{name} {action} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


LOCAL_KAFKA = "127.0.0.1:9092"  # scripts/services/kafka.sh


def _start_local(name: str) -> str | None:
    """Find or start the project's own service with its script: None once it runs, else the script's last word."""
    try:
        result = subprocess.run(
            [str(SCRIPTS / name), "start"], capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return _one_line(error)
    if result.returncode == 0:
        return None
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit {result.returncode}"


def _one_line(error: BaseException) -> str:
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}"[:300]


def _local_port_answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_kafka_container() -> DockerContainer:
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer().with_kraft()
    try:
        return container.start()
    except BaseException:
        with suppress(Exception):  # created but never ready: do not leave it behind
            container.stop()
        raise


@contextmanager
def kafka_for_tests() -> Iterator[str]:
    """The bootstrap servers of a broker for this session (the choice in this module's docstring)."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    no_container = ""
    # an engine that answers may still be unable to start a container (no registry to pull the image from)
    if not _local_port_answers(LOCAL_KAFKA) and _docker_engine_answers():
        try:
            container = _start_kafka_container()
        except Exception as error:
            no_container = f"a Kafka container did not start ({_one_line(error)}) and "
        else:
            try:
                yield container.get_bootstrap_server()
            finally:
                container.stop()
            return
    if why := _start_local("kafka.sh"):
        pytest.fail(
            f"no Kafka for the tests: {no_container}scripts/services/kafka.sh start failed ({why}); run `make "
            "services`, or point the tests at a running broker with KAFKA_BOOTSTRAP_SERVERS=host:port",
            pytrace=False,
        )
    yield LOCAL_KAFKA


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with kafka_for_tests() as servers:
        yield servers


def restart_local_broker() -> None:
    """Stop and start the project's broker, keeping its data (an outage, not a wipe)."""
    run_script("kafka.sh", "restart")


POSTGRES = {
    "host": os.environ.get("CHATBRIDGE_TEST_POSTGRES_HOST", "127.0.0.1"),
    "port": int(os.environ.get("CHATBRIDGE_TEST_POSTGRES_PORT", "5432")),
    "user": "chatbridge",
    "password": os.environ.get("CHATBRIDGE_TEST_POSTGRES_PASSWORD", "chatbridge"),
}


def postgres_for_tests() -> dict[str, object]:
    """The connection of a PostgreSQL server for this session (the choice in this module's docstring)."""
    if "CHATBRIDGE_TEST_POSTGRES_HOST" not in os.environ and (why := _start_local("postgres.sh")):
        pytest.fail(
            f"no PostgreSQL for the tests: scripts/services/postgres.sh start failed ({why}); run `make services`, "
            "or point the tests at a running server with CHATBRIDGE_TEST_POSTGRES_HOST (and _PORT, _PASSWORD) "
            "whose role chatbridge may create databases",
            pytrace=False,
        )
    return POSTGRES


@pytest.fixture(scope="session")
def postgres_server() -> dict[str, object]:
    return postgres_for_tests()


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
