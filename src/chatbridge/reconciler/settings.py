"""Configuration of the reconciler (`CHATBRIDGE_RECONCILE_…`): its concurrency, resync and retry timing."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chatbridge.config_file import FileSettings


class ReconcilerSettings(FileSettings):
    model_config = SettingsConfigDict(env_prefix="CHATBRIDGE_RECONCILE_", extra="ignore")
    file_section = ("reconcile",)

    concurrency: int = Field(default=4, ge=1, le=64, description="Chats reconciled at the same time.")
    interval: float = Field(default=5.0, gt=0, description="Seconds between passes when nothing is due sooner.")
    resync: timedelta = Field(default=timedelta(hours=10), description="Every chat is re-read this often (drift).")
    pending_retry: timedelta = Field(default=timedelta(minutes=1), description="Retry of persons without account.")
    backoff_base: timedelta = Field(default=timedelta(seconds=5), description="First wait after a failed chat.")
    backoff_max: timedelta = Field(default=timedelta(minutes=15), description="Longest wait between retries.")
    park_after: int = Field(default=5, ge=1, description="Failures in a row before a chat is parked.")
    park_for: timedelta = Field(default=timedelta(hours=1), description="How long a parked chat waits.")
