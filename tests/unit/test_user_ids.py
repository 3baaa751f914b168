"""Person ids ↔ Matrix user ids: reversible for any id the contract allows, and only for ours."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatbridge.backends.user_ids import TemplateUserIds

ids_rule = st.text(min_size=1, max_size=64).filter(lambda s: "/" not in s)
LOCALPART = re.compile(r"@[a-z0-9._=\-/+]+:localhost")


@given(ids_rule, ids_rule)
def test_user_id_round_trips_and_is_a_valid_matrix_id(org, person_id):
    ids = TemplateUserIds(server_name="localhost")
    user_id = ids.user_id(org, person_id)
    assert LOCALPART.fullmatch(user_id)
    assert ids.person_of(user_id) == (org, person_id)


@given(ids_rule, ids_rule, ids_rule)
def test_other_templates_round_trip_too(org, person_id, other):
    ids = TemplateUserIds("@hiorg_{person_id}.{org}:{server_name}", "example.org")
    assert ids.person_of(ids.user_id(org, person_id)) == (org, person_id)


def test_the_default_form_and_foreign_accounts():
    ids = TemplateUserIds(server_name="localhost")
    assert ids.user_id("drk-koeln", "a" * 32) == f"@drk-koeln.{'a' * 32}:localhost"
    assert ids.user_id("DRK Köln", "x.y") == "@_d_r_k=20_k=c3=b6ln.x=2ey:localhost"
    for foreign in ["@eve:localhost", "@a.b:example.org", "@a.b.c:localhost", "@A.b:localhost", "@a.=zz:localhost"]:
        assert ids.person_of(foreign) is None


def test_a_template_without_the_person_or_with_an_ambiguous_separator_is_refused():
    with pytest.raises(ValueError, match="person_id"):
        TemplateUserIds("@{org}:{server_name}")
    with pytest.raises(ValueError, match="separate"):
        TemplateUserIds("@{org}-{person_id}:{server_name}")
