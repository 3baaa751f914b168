"""Log lines with structlog: JSON in production, the console renderer on a terminal, secrets and personal data
redacted on the way out.

chatbridge's modules log through the standard library (`logging.getLogger(__name__)`); `configure` routes those
records, and the libraries' (kafka-python, httpx), through the same structlog processors, so every line passes
`redact`. Lines about a chat name it by org and event id only (`chat drk-koeln/4711 …`); persons are counted,
never named. `redact` is the safety net for what slips through: keys that hold secrets or personal data lose their
values, and values that look like a person id, a Matrix user id, an e-mail address, a token or a password in a
URL are masked wherever they appear.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor

REDACTED = "[redacted]"

# Keys whose values are never logged, whatever they hold.
SECRET_KEYS = frozenset(
    {"password", "passwd", "token", "access_token", "secret", "authorization", "api_key", "shared_secret"}
)
PERSONAL_KEYS = frozenset(
    {"person_id", "person", "user_id", "user", "name", "email", "e_mail", "address", "street", "members",
     "moderators", "title", "staff", "responsible"}
)  # fmt: skip

_PATTERNS = [
    re.compile(r"(?i)\bbearer\s+[^\s\"',]+"),  # an Authorization header
    re.compile(r"\bsy[a-z]_[A-Za-z0-9_\-]+"),  # Synapse access tokens (syt_…)
    re.compile(r"(?<=://)[^/\s:@]+:[^@\s/]+(?=@)"),  # user:password@ in a URL
    re.compile(r"(?i)(?<=password=)[^\s&;]+"),  # password=… in a DSN or query
    re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"),  # an e-mail address
    re.compile(r"@[A-Za-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(?::\d+)?"),  # a Matrix user id
    re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])"),  # a HiOrg person id (32 hex characters)
]


def redact_text(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    lowered = key.lower()
    if lowered in SECRET_KEYS or lowered in PERSONAL_KEYS or any(w in lowered for w in ("password", "token", "secret")):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(repr(value))


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: every key and value of the line, the message itself and an exception's text."""
    for key in list(event_dict):
        if key in ("level", "timestamp", "logger", "_record", "_from_structlog"):
            continue
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


LogFormat = Literal["auto", "json", "console"]


def _renderer(log_format: LogFormat, stream: Any) -> Processor:
    terminal = hasattr(stream, "isatty") and stream.isatty()
    if log_format == "console" or (log_format == "auto" and terminal):
        return structlog.dev.ConsoleRenderer(colors=terminal)
    return structlog.processors.JSONRenderer()


def configure(log_format: LogFormat = "auto", level: str = "INFO", stream: Any = None) -> None:
    """Send every log record — structlog's and the standard library's — through the redacting pipeline to
    `stream` (stderr): one JSON object per line in production, readable lines on a terminal."""
    stream = stream or sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            _renderer(log_format, stream),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("kafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
