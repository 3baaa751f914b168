"""Where the log's signed checkpoints are published outside the store, and read back by `audit verify`.

Two places, because whoever can write the database can delete checkpoints there together with the chain they
sign: a JSON-lines file the auditor keeps (`CHATBRIDGE_AUDIT_CHECKPOINT_FILE`, one checkpoint per line, appended,
mode 0600), and the Kafka topic `chatbridge.audit-checkpoints.v1` (`CHATBRIDGE_AUDIT_CHECKPOINT_TOPIC`), keyed by the
signing key's id so that `verify` reads only this installation's checkpoints. A checkpoint is published after the
transaction that signed it committed; one that could not be published is kept and sent with the next.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chatbridge.journal.chain import Checkpoint
from chatbridge.journal.topics import AcknowledgedTopic, read_key

TOPIC = "chatbridge.audit-checkpoints.v1"


class CheckpointFileError(Exception):
    """The checkpoint file cannot be read (the message names the file and line)."""


class CheckpointFile:
    """The auditor's copy: every checkpoint, one JSON object per line, in the order they were published."""

    takes_others = True  # the whole sequence, also what other replicas signed (found when this one next writes)

    def __init__(self, path: Path):
        self.path = path
        self._pending: list[Checkpoint] = []
        self._last: tuple[tuple[int, int, int], Checkpoint] | None = None  # (the file's inode, size, mtime), its last
        self._lock = threading.Lock()

    def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        with self._lock:
            self._pending.extend(checkpoints)
            text = "".join(checkpoint.to_json() + "\n" for checkpoint in self._pending)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, text.encode())
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            self._pending = []

    def last(self) -> Checkpoint | None:
        """The last checkpoint in the file: its tail is read, and only when the file changed since the last look
        (the writer asks before every transaction)."""
        try:
            seen = os.stat(self.path)
        except FileNotFoundError:
            return None
        version = (seen.st_ino, seen.st_size, seen.st_mtime_ns)
        if self._last is not None and self._last[0] == version:
            return self._last[1]
        with self.path.open("rb") as file:
            file.seek(max(0, seen.st_size - 4096))
            lines = [line for line in file.read().splitlines() if line.strip()]
            if len(lines) < 2 and seen.st_size > 4096:  # a line longer than the tail read
                file.seek(max(0, seen.st_size - 65536))
                lines = [line for line in file.read().splitlines() if line.strip()]
        if not lines:
            return None
        try:
            last = Checkpoint.from_json(lines[-1].decode())
        except (ValueError, KeyError, UnicodeDecodeError) as error:
            raise CheckpointFileError(f"{self.path}: the last line is not a checkpoint ({error})") from None
        self._last = (version, last)
        return last

    def read(self) -> list[Checkpoint]:
        try:
            text = self.path.read_text()
        except OSError as error:
            raise CheckpointFileError(f"{self.path}: {error.strerror}") from None
        checkpoints = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                checkpoints.append(Checkpoint.from_json(line))
            except (ValueError, KeyError) as error:
                raise CheckpointFileError(f"{self.path} line {number}: not a checkpoint ({error})") from None
        return checkpoints


class KafkaCheckpoints:
    """The checkpoint topic: each checkpoint this writer signs, keyed by the signing key's id, acknowledged by the
    brokers before the writer goes on. The producer is made on first use (a reader never connects); after a failed
    publication the checkpoints wait (and go with the next one) for a while instead of blocking every batch."""

    takes_others = False  # each replica publishes its own
    RETRY_AFTER = 30.0  # seconds a failed publication is not retried

    def __init__(self, producer: Callable[[], Any], topic: str = TOPIC):
        self._topic = AcknowledgedTopic(producer, topic, self.RETRY_AFTER)
        self.topic = topic
        self._pending: list[Checkpoint] = []
        self._lock = threading.RLock()

    def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        with self._lock:
            self._pending.extend(checkpoints)
            if self._topic.resting:
                raise ConnectionError(f"{len(self._pending)} checkpoints wait for the topic {self.topic}")
            self._topic.send([(c.key_id.encode(), c.to_json().encode()) for c in self._pending])
            self._pending = []

    def last(self) -> Checkpoint | None:
        return None  # the writer does not read the topic back: other installations may share it

    def close(self) -> None:
        with self._lock:
            if self._pending and self._topic.producer is not None:
                with contextlib.suppress(Exception):  # said when it failed; the file and the store hold them
                    self.publish([])
            self._topic.close()


def read_topic(bootstrap_servers: str, topic: str, signer_key_id: str, timeout: float = 30.0) -> list[Checkpoint]:
    """Every checkpoint on the topic signed by the key with id `signer_key_id`, from the beginning to the end
    offsets as they are now."""
    values = read_key(bootstrap_servers, topic, signer_key_id.encode(), "chatbridge-audit-verify", timeout)
    return [Checkpoint.from_json(value.decode()) for value in values]
