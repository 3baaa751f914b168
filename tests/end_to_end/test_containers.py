"""docker/Dockerfile and docker/compose.yaml, checked by reading them: the Dockerfile passes hadolint and is
multi-stage and non-root; compose parses and holds the four services wired as the README says. The image built and
run, and compose validated by a compose implementation, are tests/integration/test_container.py's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.services import ROOT

DOCKER = ROOT / "docker"
HADOLINT = Path(sys.executable).with_name("hadolint")


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", str(DOCKER / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_non_root_and_runs_the_worker() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2 and stages[-1][1] == "runtime"
    runtime = text[text.rindex("FROM ") :]
    assert "COPY --from=build /opt/chatbridge /opt/chatbridge" in runtime
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["chatbridge"]' in runtime and 'CMD ["run"]' in runtime
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ignored[ignored.index("*") :][:1] == ["*"]  # the context is only what the build needs


def test_compose_holds_kafka_in_kraft_mode_postgres_synapse_and_chatbridge() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "synapse", "chatbridge"} <= set(services)
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller" and "ZOOKEEPER" not in str(kafka)
    bridge = services["chatbridge"]
    assert bridge["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    env = bridge["environment"]
    assert env["CHATBRIDGE_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092" and env["CHATBRIDGE_STORE"] == "postgres"
    assert env["CHATBRIDGE_MATRIX_BASE_URL"] == "http://synapse:8008"
    for dependency in ("kafka", "postgres"):
        assert bridge["depends_on"][dependency] == {"condition": "service_healthy"}
        assert "healthcheck" in services[dependency]
    # every variable chatbridge is given is one it knows
    from chatbridge.backends.settings import MatrixSettings
    from chatbridge.journal.erasures import ErasureSettings
    from chatbridge.journal.keys import AuditSettings
    from chatbridge.settings import Settings

    known = (
        {Settings.variable(f) for f in Settings.model_fields}
        | {MatrixSettings.variable(f) for f in MatrixSettings.model_fields}
        | {f"CHATBRIDGE_AUDIT_{f.upper()}" for f in AuditSettings.model_fields}
        | {f"CHATBRIDGE_ERASURE_{f.upper()}" for f in ErasureSettings.model_fields}
    )
    assert set(env) <= known
    # the audit keys come from a secret, made once with `keys generate`; the worker keeps only the erasure log, in a
    # volume of its own that outlives a restore of the database
    (secret,) = bridge["secrets"]
    assert env["CHATBRIDGE_AUDIT_KEY_FILE"] == f"/run/secrets/{secret}" and "file" in compose["secrets"][secret]
    assert "keys generate" in (DOCKER / "compose.yaml").read_text()
    assert [v for v in bridge.get("volumes", []) if not v.endswith(":ro")] == ["erasure-log:/var/lib/chatbridge"]
    assert env["CHATBRIDGE_ERASURE_LOG"].startswith("/var/lib/chatbridge/")
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    # every file mounted from the repository exists
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).resolve().exists(), source
    assert compose["volumes"].keys() >= {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
                                         if not v.startswith(".")}  # fmt: skip


def test_docker_compose_config_accepts_the_file_where_the_plugin_is_installed() -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                        timeout=30).returncode != 0:  # fmt: skip
        # No compose plugin here: the structural checks above stand in for it.
        return
    result = subprocess.run(["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
