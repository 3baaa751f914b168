"""The record of the tenant's provisioning (the Art. 28/30 proof of a transfer) is never lost: a conflict with the
consumer is retried until the record is stored, and when it cannot be stored the step fails and the chat is tried
again — never a tenant at the chat operator without its record."""

from __future__ import annotations

from datetime import timedelta

import pytest
from eventsourcing.persistence import IntegrityError

from chatbridge.domain.aggregates import Organisation
from tests.support import ALICE, ORG, at
from tests.unit.test_reconcile_loop import END, START, World


def conflicting_saves(world: World, monkeypatch: pytest.MonkeyPatch, conflicts: int) -> list[int]:
    """The next `conflicts` saves of the organisation fail as if the consumer had stored first."""
    save, seen = world.app.save, [0]

    def save_or_conflict(*aggregates, **kwargs):
        if any(isinstance(a, Organisation) for a in aggregates) and seen[0] < conflicts:
            seen[0] += 1
            raise IntegrityError("the consumer stored a message of this organisation first")
        return save(*aggregates, **kwargs)

    monkeypatch.setattr(world.app, "save", save_or_conflict)
    return seen


def provisioned(world: World) -> list[str]:
    organisation = world.app.repository.get(Organisation.create_id(ORG))
    return [type(e).__name__ for e in world.app.repository.event_store.get(organisation.id)]


def test_a_conflict_is_retried_until_the_tenant_is_on_record(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    world.stream.org_on(at(1))
    world.stream.event("4711", at(2), start=START, end=END, responsible=ALICE)
    seen = conflicting_saves(world, monkeypatch, 3)
    report = world.run(at(3))
    assert not report.failed and seen[0] == 3
    assert provisioned(world).count("TenantProvisioned") == 1 and world.chat() is not None


def test_a_tenant_that_cannot_be_recorded_fails_the_chat_which_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    world.stream.org_on(at(1))
    world.stream.event("4711", at(2), start=START, end=END, responsible=ALICE)
    seen = conflicting_saves(world, monkeypatch, 5)
    report = world.run(at(3))
    assert [o.event_id for o in report.failed] == ["4711"] and seen[0] == 5
    assert "TenantProvisioned" not in provisioned(world) and world.chat() is None  # no chat in an unrecorded tenant
    report = world.run(at(3) + timedelta(minutes=5))  # after the backoff
    assert not report.failed
    assert provisioned(world).count("TenantProvisioned") == 1 and world.chat() is not None
