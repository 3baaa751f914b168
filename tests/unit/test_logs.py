"""Log lines: JSON in production, readable on a terminal, and nothing secret or personal in either."""

from __future__ import annotations

import io
import json
import logging

import structlog

from chatbridge import logs

PERSON = "0123456789abcdef0123456789abcdef"


def lines_of(log_format: logs.LogFormat, emit) -> str:
    stream = io.StringIO()
    logs.configure(log_format, "DEBUG", stream=stream)
    try:
        emit()
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    return stream.getvalue()


def test_standard_library_lines_become_json_with_level_logger_and_time() -> None:
    out = lines_of(
        "json", lambda: logging.getLogger("chatbridge.reconciler.loop").info("chat %s/%s: %d steps", "drk", "4711", 3)
    )
    line = json.loads(out)
    assert line["event"] == "chat drk/4711: 3 steps"
    assert (
        line["level"] == "info" and line["logger"] == "chatbridge.reconciler.loop" and line["timestamp"].endswith("Z")
    )


def test_structlog_lines_name_the_chat_by_org_and_event() -> None:
    out = lines_of("json", lambda: structlog.get_logger("x").info("chat created", org="drk", event_id="4711"))
    assert json.loads(out) == {**json.loads(out), "event": "chat created", "org": "drk", "event_id": "4711"}


def test_secrets_and_personal_data_are_redacted_wherever_they_appear() -> None:
    def emit() -> None:
        log = logging.getLogger("chatbridge.test")
        log.info("adding @drk.%s:localhost to the chat", PERSON)
        log.info("person %s wrote from anna.muster@example.org", PERSON)
        log.warning("request failed: Authorization: Bearer syt_Y2hhdGJyaWRnZS1ib3Q_abc")
        log.error("cannot connect to postgresql://chatbridge:hunter2@db:5432/chatbridge password=hunter2")
        structlog.get_logger("x").info("step", person_id="p-1", token="t0k3n", email="a@b.de", name="Anna", members=["x"],
                                  postgres_password="hunter2", org="drk", event_id="4711", count=2)  # fmt: skip

    out = lines_of("json", emit)
    for secret in (PERSON, "anna.muster", "syt_", "hunter2", "t0k3n", "a@b.de", "Anna", "p-1"):
        assert secret not in out, secret
    last = json.loads(out.splitlines()[-1])
    assert last["org"] == "drk" and last["event_id"] == "4711" and last["count"] == 2
    assert last["person_id"] == last["token"] == last["members"] == logs.REDACTED


def test_exceptions_are_redacted_too() -> None:
    def emit() -> None:
        try:
            raise KeyError(f"@drk.{PERSON}:localhost")
        except KeyError:
            logging.getLogger("chatbridge.test").exception("chat drk/4711 failed")

    out = lines_of("json", emit)
    assert PERSON not in out and "KeyError" in out


def test_console_lines_for_people() -> None:
    out = lines_of("console", lambda: logging.getLogger("chatbridge.test").info("partitions now %s", ["t:0"]))
    assert "partitions now ['t:0']" in out and not out.startswith("{")
