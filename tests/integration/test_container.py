"""The worker's image, built and run for real: it builds where a Docker engine answers, the container drains a topic
into its store against the local services (host network), answers /healthz, runs as its unprivileged user, keeps
its audit keys in its volume across a new container, and exits 0 on SIGTERM; the image holds no compiler, no test
and no secret. docker/compose.yaml is validated by a compose implementation.

The engine: `CHATBRIDGE_TEST_DOCKER_HOST` (CI's own dockerd, started by .ci/run on a socket of its own so that the
rest of the suite keeps the local services), else the Docker client's default. CI must have one: there a missing
engine fails these tests; only a developer machine without Docker skips them. The base: `CHATBRIDGE_TEST_BASE_IMAGE`,
else python:3.11-slim-bookworm where the engine holds it, else one made from Debian's packages (nothing is pulled).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chatbridge.settings import Settings
from tests.kafka_support import CHATBRIDGE, generate_stream, new_topic, publish, wait_until
from tests.services import ROOT, postgres_environment, throwaway_postgres_database

pytestmark = pytest.mark.integration

IN_CI = bool(os.environ.get("CI")) or "CHATBRIDGE_TEST_DOCKER_HOST" in os.environ
DEFAULT_BASE = "python:3.11-slim-bookworm"
UNPRIVILEGED = "10001"


def _docker_env() -> dict[str, str]:
    env = dict(os.environ)
    if host := os.environ.get("CHATBRIDGE_TEST_DOCKER_HOST"):
        env["DOCKER_HOST"] = host
    return env


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=_docker_env(),
                            check=False)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} … exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must have {what} (.ci/run installs docker.io and starts dockerd)", pytrace=False)
    pytest.skip(f"{what} is missing on this developer machine; CI runs these tests (.ci/run starts one)")


@pytest.fixture(scope="module")
def engine() -> None:
    if shutil.which("docker") is None:
        _missing("a Docker client")
    try:
        answers = docker("info", timeout=30, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        answers = False
    if not answers:
        _missing("a Docker engine that answers")


@pytest.fixture(scope="module")
def image(engine: None) -> str:
    """The image, built once for this module by docker/build-image.sh: on the public base where the engine has it,
    else on a base made from Debian's packages (no registry answers on these machines)."""
    tag = "chatbridge:test"
    base = os.environ.get("CHATBRIDGE_TEST_BASE_IMAGE")
    args = ["--tag", tag]
    if base:
        args += ["--base", base]
    elif docker("image", "inspect", DEFAULT_BASE, check=False).returncode != 0:
        args += ["--local-base"]
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "docker" / "build-image.sh"), *args], capture_output=True, text=True,
                            timeout=600, env=_docker_env(), check=False)  # fmt: skip
    assert result.returncode == 0, f"the image did not build:\n{(result.stdout + result.stderr)[-4000:]}"
    print(f"image {tag} built in {time.monotonic() - started:.0f}s")
    return tag


# --- what the image holds ---------------------------------------------------------------------------------------

INSPECT = r"""
import json, os, shutil
found = {"compilers": [t for t in ("gcc", "cc", "c++", "g++", "clang", "tcc", "ld", "as", "make") if shutil.which(t)],
         "tests": [], "secrets": []}
for top in ("/opt", "/var/lib/chatbridge", "/src", "/run/secrets", "/root", "/home", "/etc/chatbridge"):
    for folder, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            if name == "conftest.py" or "/tests/" in path or "/SelfTest/" in path or path.startswith("/src"):
                found["tests"].append(path)
            if name.endswith((".audit-keys", ".env", ".key")) or folder.startswith("/run/secrets"):
                found["secrets"].append(path)
            elif not name.endswith(".py") and os.path.getsize(path) < 1 << 20:  # code may name a PEM marker
                with open(path, "rb") as f:
                    if b"PRIVATE KEY-----" in f.read():
                        found["secrets"].append(path)
import chatbridge
found["package"] = os.path.dirname(chatbridge.__file__)
found["chatbridge_tests"] = [n for n in os.listdir(found["package"]) if n.startswith("test")]
print(json.dumps(found))
"""


def test_the_image_runs_unprivileged_and_holds_no_compiler_no_test_and_no_secret(image: str) -> None:
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"].split(":")[0] == UNPRIVILEGED
    assert config["Entrypoint"] == ["chatbridge"] and config["Cmd"] == ["run"]
    assert not [e for e in config["Env"] if any(w in e.split("=")[0] for w in ("PASSWORD", "TOKEN", "SECRET", "KEY"))]
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "PASSWORD=" not in history and "pip_cert" not in history.replace("id=pip_cert", "")
    found = json.loads(
        docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", INSPECT).stdout
    )
    assert found["compilers"] == [], found
    assert found["tests"] == [] and found["chatbridge_tests"] == [], found
    assert found["secrets"] == [], found
    assert found["package"].startswith("/opt/chatbridge/")
    whoami = docker("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u").stdout.strip()
    assert whoami == UNPRIVILEGED


# --- the container against the local services -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Container:
    """`chatbridge run` in a container on the host network, with the store's volume and the worker's settings."""

    def __init__(self, image: str, env: dict[str, str], volume: str) -> None:
        self.name = f"chatbridge-test-{uuid.uuid4().hex[:8]}"
        self.port = int(env["CHATBRIDGE_HTTP_PORT"])
        flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
        docker("run", "--detach", "--name", self.name, "--network", "host", "--health-interval", "2s",
               "--volume", f"{volume}:/var/lib/chatbridge", *flags, image, "run", "--no-reconcile")  # fmt: skip

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def healthz(self) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code
        except httpx.HTTPError:
            return 0

    def drained(self, sent: int) -> bool:
        """The worker's /metrics count `sent` records handled (whatever their outcome) and no lag."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return False
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        handled = sum(s.value for s in samples if s.name == "chatbridge_records_total")
        lag = sum(s.value for s in samples if s.name == "chatbridge_consumer_lag")
        return handled == sent and lag == 0

    def health(self) -> str:
        """The image's own HEALTHCHECK, as the engine reports it."""
        return docker("inspect", "--format", "{{.State.Health.Status}}", self.name).stdout.strip()

    def main_process_uid(self) -> str:
        status = docker("exec", self.name, "cat", "/proc/1/status").stdout
        return next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM (not `docker stop`, which would follow with SIGKILL) and the exit code."""
        docker("kill", "--signal", "TERM", self.name)
        return int(docker("wait", self.name, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)


@pytest.fixture
def volume(engine: None) -> Iterator[str]:
    name = f"chatbridge-test-{uuid.uuid4().hex[:8]}"
    docker("volume", "create", name)
    yield name
    docker("volume", "rm", "--force", name, check=False)


def test_the_container_drains_a_topic_into_its_store_and_stops_on_sigterm_keeping_its_keys(
    image: str, kafka_bootstrap: str, postgres_server: dict[str, object], volume: str, tmp_path: Path
) -> None:
    topic = new_topic(kafka_bootstrap, partitions=3)
    stream = generate_stream(seed=18, events=30, persons=10)
    with throwaway_postgres_database(postgres_server) as database:
        env = {**postgres_environment(postgres_server, database), "CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
               "CHATBRIDGE_TOPICS": topic, "CHATBRIDGE_GROUP_ID": f"group-{topic}",
               "CHATBRIDGE_DLQ_TOPIC": f"dlq-{topic}", "CHATBRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000",
               "CHATBRIDGE_HTTP_PORT": str(_free_port())}  # fmt: skip
        first = Container(image, env, volume)
        try:
            wait_until(lambda: first.healthz() == 200, 60, "/healthz to answer 200", first.logs)
            sent = 0
            for phase in stream.phases:  # each phase drained before the next: the stored state is simulate's
                publish(kafka_bootstrap, topic, phase)
                sent += len(phase)
                wait_until(lambda n=sent: first.drained(n), 120, f"the worker to handle {sent} records", first.logs)
            assert first.main_process_uid() == UNPRIVILEGED
            wait_until(lambda: first.health() == "healthy", 30, "the image's HEALTHCHECK to pass", first.logs)
            assert first.terminate() == 0, first.logs()
        finally:
            first.remove()

        # The store holds what was sent: read by the image's own `state`, with the keys from the volume.
        stored = json.loads(one_shot(image, env, volume, "state", "--now", NOW, "--json"))
        expected = simulate(tmp_path, stream.lines, NOW)
        assert stored["chats"] == expected["chats"] and expected["chats"]
        assert (stored["ignored"], stored["duplicates"]) == (expected["ignored"], expected["duplicates"])
        assert sorted(r["reason"] for r in stored["rejected"]) == sorted(r["reason"] for r in expected["rejected"])

        # The audit keys were made in the volume (0600, the worker's own): a new container on the same store and
        # volume starts with them — without them it would refuse a store that holds data.
        listing = one_shot(image, {}, volume, "-ln", "/var/lib/chatbridge/chatbridge.audit-keys", entrypoint="ls")
        assert listing.startswith("-rw------- 1 10001 10001"), listing
        second = Container(image, {**env, "CHATBRIDGE_HTTP_PORT": str(_free_port())}, volume)
        try:
            wait_until(lambda: second.healthz() == 200, 60, "/healthz of a new container", second.logs)
            assert second.terminate() == 0, second.logs()
        finally:
            second.remove()


NOW = "2026-12-25T00:00:00Z"


def one_shot(image: str, env: dict[str, str], volume: str, *args: str, entrypoint: str = "chatbridge") -> str:
    flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
    return docker("run", "--rm", "--network", "host", "--volume", f"{volume}:/var/lib/chatbridge", "--entrypoint",
                  entrypoint, *flags, image, *args).stdout  # fmt: skip


def simulate(tmp_path: Path, lines: list[bytes], now: str) -> dict[str, Any]:
    path = tmp_path / "published.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    result = subprocess.run([CHATBRIDGE, "simulate", str(path), "--now", now], capture_output=True, text=True,
                            check=True, cwd=tmp_path)  # fmt: skip
    return dict(json.loads(result.stdout))


# --- compose -----------------------------------------------------------------------------------------------------

COMPOSE = ROOT / "docker" / "compose.yaml"


def _compose_command() -> list[str] | None:
    """The compose implementation here: Debian's `docker-compose`, or the Docker client's compose plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and docker("compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    return None


def test_compose_is_valid_takes_the_audit_keys_from_a_secret_and_waits_for_the_worker_to_stop() -> None:
    command = _compose_command()
    if command is None:
        if IN_CI:
            pytest.fail("CI must have a compose implementation (.ci/run installs docker-compose)", pytrace=False)
        pytest.skip("no compose implementation on this developer machine; CI validates the file")
    result = subprocess.run([*command, "--file", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                            env={**_docker_env(), "POSTGRES_PASSWORD": "from-the-operator"}, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    bridge = resolved["services"]["chatbridge"]
    # the audit key file is a secret from the operator's file, made once: a recreated container starts with the same
    # keys; the store is PostgreSQL's, in a named volume — nothing that matters lives in the worker's container
    (secret,) = [s if isinstance(s, str) else s["source"] for s in bridge["secrets"]]
    assert bridge["environment"]["CHATBRIDGE_AUDIT_KEY_FILE"] == f"/run/secrets/{secret}"
    assert resolved["secrets"][secret]["file"].endswith("chatbridge.audit-keys")
    assert bridge["environment"]["CHATBRIDGE_STORE"] == "postgres"
    postgres = resolved["services"]["postgres"]["volumes"]
    sources = {m.split(":")[0] if isinstance(m, str) else m["source"] for m in postgres}
    assert "postgres-data" in sources and "postgres-data" in resolved["volumes"], postgres
    assert bridge["environment"]["CHATBRIDGE_POSTGRES_PASSWORD"] == "from-the-operator"
    # the worker exits within its shutdown timeout after SIGTERM: the grace period must outlast that
    assert _seconds(bridge["stop_grace_period"]) > Settings.model_fields["shutdown_timeout"].default


def _seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for char in str(duration):
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * units[char]
            number = ""
    return total + (float(number) if number else 0.0)
