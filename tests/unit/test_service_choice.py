"""Which services the integration tests use (tests/services.py), with a Docker engine that answers but cannot start
a container: the local services, or one line that says how to point the tests at running ones."""

from __future__ import annotations

import pytest

from tests import services


class FakeDocker:
    """A Docker engine that answers `docker info` but cannot pull an image, and the project's service scripts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, local_answers: bool, script_fails: str | None) -> None:
        self.containers_tried = 0
        self.scripts_run: list[str] = []
        self.script_fails = script_fails
        monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
        monkeypatch.delenv("CHATBRIDGE_TEST_POSTGRES_HOST", raising=False)
        monkeypatch.setattr(services, "_docker_engine_answers", lambda: True)
        monkeypatch.setattr(services, "_local_port_answers", lambda address: local_answers)
        monkeypatch.setattr(services, "_start_kafka_container", self.start_container)
        monkeypatch.setattr(services, "_start_local", self.start_local)

    def start_container(self) -> None:
        self.containers_tried += 1
        raise RuntimeError("500 Server Error: pull access denied for confluentinc/cp-kafka\n(no registry answers)")

    def start_local(self, name: str) -> str | None:
        self.scripts_run.append(name)
        return self.script_fails


def test_a_container_that_cannot_start_falls_back_to_the_local_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    docker = FakeDocker(monkeypatch, local_answers=False, script_fails=None)
    with services.kafka_for_tests() as servers:
        assert servers == "127.0.0.1:9092"
    assert docker.containers_tried == 1
    assert docker.scripts_run == ["kafka.sh"]


def test_a_local_broker_that_answers_is_used_though_a_docker_engine_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    docker = FakeDocker(monkeypatch, local_answers=True, script_fails=None)
    with services.kafka_for_tests() as servers:
        assert servers == "127.0.0.1:9092"
    assert docker.containers_tried == 0


def test_no_container_and_no_local_broker_fail_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeDocker(monkeypatch, local_answers=False, script_fails="[kafka] ERROR: mvn not found")
    with pytest.raises(pytest.fail.Exception) as failed, services.kafka_for_tests():
        pass
    message = str(failed.value)
    assert "\n" not in message
    assert "pull access denied" in message
    assert "mvn not found" in message
    assert "KAFKA_BOOTSTRAP_SERVERS=" in message


def test_no_local_postgres_fails_in_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    docker = FakeDocker(monkeypatch, local_answers=False, script_fails="[postgres] ERROR: PostgreSQL is not installed")
    with pytest.raises(pytest.fail.Exception) as failed:
        services.postgres_for_tests()
    message = str(failed.value)
    assert "\n" not in message
    assert "CHATBRIDGE_TEST_POSTGRES_HOST" in message
    assert docker.scripts_run == ["postgres.sh"]
