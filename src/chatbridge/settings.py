"""Configuration from the environment (`CHATBRIDGE_…`) and an optional file (`CHATBRIDGE_CONFIG_FILE`, see
`config_file`), validated once, with sane defaults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from chatbridge.config_file import FileSettings
from chatbridge.domain.lifecycle import Policy

MAX_PERIOD = timedelta(days=36500)  # a century: beyond it the deadlines leave the years datetimes can hold
Period = Annotated[timedelta, Field(ge=timedelta(0), le=MAX_PERIOD)]
"""FULL_USE and VIEW: an ISO 8601 duration between zero and MAX_PERIOD."""


class Settings(FileSettings):
    model_config = SettingsConfigDict(env_prefix="CHATBRIDGE_", extra="ignore")

    store: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="Where events, intake ledger, positions and projections live: an embedded SQLite file, or "
        "PostgreSQL for production and several replicas.",
    )
    database: Path = Field(
        default=Path("chatbridge.db"),
        description="The SQLite file (when CHATBRIDGE_STORE=sqlite).",
    )
    # The eventsourcing library's own PostgreSQL settings, under chatbridge's prefix (when CHATBRIDGE_STORE=postgres).
    postgres_host: str = Field(default="127.0.0.1", description="PostgreSQL host.")
    postgres_port: int = Field(default=5432, ge=1, le=65535, description="PostgreSQL port.")
    postgres_dbname: str = Field(default="chatbridge", description="PostgreSQL database.")
    postgres_user: str = Field(default="chatbridge", description="PostgreSQL role.")
    postgres_password: SecretStr = Field(default=SecretStr(""), description="PostgreSQL password (never printed).")

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka brokers, comma-separated host:port."
    )
    topics: str = Field(default="hiorg.chat.v1", description="Input topics, comma-separated.")
    group_id: str = Field(default="chatbridge", description="Kafka consumer group of the `run` replicas.")
    dlq_topic: str = Field(default="chatbridge.dlq.v1", description="Dead-letter topic for rejected records.")
    status_topic: str = Field(
        default="chatbridge.chat-status.v1", description="Where each chat's status goes back to HiOrg-Server."
    )
    kafka_session_timeout_ms: int = Field(
        default=30000,
        ge=1000,
        description="How long the group waits for a silent replica before moving its partitions.",
    )
    full_use: Period = Field(default=timedelta(days=2), description="FULL_USE: active after the event ends.")
    view: Period = Field(default=timedelta(days=30), description="VIEW: read-only before deletion.")
    batch_size: int = Field(
        default=500, ge=1, description="Records applied per transaction (`ingest`; `run` polls up to this many)."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="Log lines as JSON (production) or for people; auto: console on a terminal."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Least level logged.")
    http_host: str = Field(default="0.0.0.0", description="Address of `run`'s /healthz, /readyz and /metrics.")
    http_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of /healthz, /readyz and /metrics (0: any free port)."
    )
    shutdown_timeout: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        description="Seconds from SIGTERM/SIGINT to exit for `run` and `reconcile`, whatever the chat backend "
        "does: calls at it get half, then are cut. Give the orchestrator's grace period a few seconds more.",
    )
    migrate_on_start: bool = Field(
        default=False,
        description="Migrate a store of an earlier release when a process opens it (let one replica do it); "
        "else `chatbridge migrate` does it, and the others refuse the store until then.",
    )
    timezone: ZoneInfo = Field(
        default=ZoneInfo("Europe/Berlin"),
        description="The organisations' local time (IANA name): the chats' names and topics give dates in it.",
    )

    @property
    def topic_list(self) -> list[str]:
        return [t.strip() for t in self.topics.split(",") if t.strip()]

    @property
    def policy(self) -> Policy:
        return Policy(full_use=self.full_use, view=self.view)
