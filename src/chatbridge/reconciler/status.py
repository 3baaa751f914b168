"""The status topic back to HiOrg-Server: what its app needs for the chat button, on every change.

Published to `chatbridge.chat-status.v1` with key `{org}/{event_id}` (so a chat's statuses keep their order in one
partition, and a compacted topic keeps the latest), whenever a reconciled chat's phase, link, or synced or pending
member counts change. Counts only: the document names no person.

```json
{"org": "drk-koeln", "event_id": "4711", "generation": 1, "phase": "active",
 "chat_link": "https://matrix.to/#/!abc:example.org?via=example.org",
 "members_synced": 12, "members_pending": 1, "at": "2026-12-01T10:00:00Z"}
```
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from chatbridge.backends.port import ChatBackend
from chatbridge.projections.desired_state import DesiredChat
from chatbridge.reconciler.loop import ChatState

STATUS_TOPIC = "chatbridge.chat-status.v1"


class StatusPublisher(Protocol):
    def publish(self, key: str, document: dict[str, Any]) -> None: ...


def status_document(desired: DesiredChat, state: ChatState, link: str | None, now: datetime) -> dict[str, Any]:
    return {
        "org": desired.org,
        "event_id": desired.event_id,
        "generation": desired.generation,
        "phase": str(state.phase),
        "chat_link": link,
        "members_synced": state.members_synced,
        "members_pending": len(state.pending),
        "at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class StatusReporter:
    """The reconciler's `on_change` listener: builds the document and hands it to a publisher."""

    def __init__(self, backend: ChatBackend, publisher: StatusPublisher):
        self.backend = backend
        self.publisher = publisher

    def __call__(self, desired: DesiredChat, state: ChatState, now: datetime) -> None:
        link = self.backend.chat_link(state.chat_id) if state.chat_id else None
        self.publisher.publish(f"{desired.org}/{desired.event_id}", status_document(desired, state, link, now))


class KafkaStatusPublisher:
    """Publishes with a `kafka.KafkaProducer` (thread-safe, so the reconciler's threads share it)."""

    def __init__(self, producer: Any, topic: str = STATUS_TOPIC):
        self.producer = producer
        self.topic = topic

    def publish(self, key: str, document: dict[str, Any]) -> None:
        self.producer.send(self.topic, key=key.encode(), value=json.dumps(document, ensure_ascii=False).encode())
