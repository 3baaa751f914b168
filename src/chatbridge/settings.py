"""Configuration from the environment (`CHATBRIDGE_…`), validated once, with sane defaults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatbridge.domain.lifecycle import Policy

MAX_PERIOD = timedelta(days=36500)  # a century: beyond it the deadlines leave the years datetimes can hold
Period = Annotated[timedelta, Field(ge=timedelta(0), le=MAX_PERIOD)]
"""FULL_USE and VIEW: an ISO 8601 duration between zero and MAX_PERIOD."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATBRIDGE_", extra="ignore")

    database: Path = Field(
        default=Path("chatbridge.db"),
        description="The SQLite file holding the event store, the intake ledger and the projections.",
    )
    full_use: Period = Field(default=timedelta(days=2), description="FULL_USE: active after the event ends.")
    view: Period = Field(default=timedelta(days=30), description="VIEW: read-only before deletion.")
    batch_size: int = Field(default=500, ge=1, description="Records applied per transaction by `ingest`.")

    @property
    def policy(self) -> Policy:
        return Policy(full_use=self.full_use, view=self.view)
