"""Moments as text, in the two formats chatbridge writes: the contract's (UTC, seconds, `Z`) and the store's (UTC,
microseconds, `Z`, fixed width, so that the text sorts as the time does and SQL can compare deadlines as text)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_z(moment: datetime) -> str:
    """UTC, second precision, with `Z`: the contract's time format (the documents, the audit)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp(moment: datetime) -> str:
    """UTC, microseconds, `Z`: how the store keeps a moment (`2026-12-01T12:00:00.000000Z`)."""
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # isoformat pads the year to four digits, strftime may not: keep the one format
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # strftime's result, 5× faster


def stamp_now() -> str:
    return stamp(datetime.now(UTC))
