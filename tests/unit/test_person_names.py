"""Which name the fold keeps for a person: the token of their newest key, whatever order the tokens come in."""

from __future__ import annotations

from chatbridge.projections.desired_state import DesiredStateFold

OLDER, NEWER = "enc2:ps-x:1:c2VhbGVkLWJ5LXYx", "enc2:ps-x:2:c2VhbGVkLWJ5LXYy"


def fold() -> DesiredStateFold:
    return DesiredStateFold(pseudonym=lambda org, person: "ps-x", open_name=lambda token: token)


def test_a_late_token_of_an_older_key_does_not_replace_the_newer_one():
    """A replica that had not seen a deletion yet sealed a late fact with the destroyed key; the person was named
    again under a new key meanwhile: the name stays the new key's, as a single fold in any order would keep it."""
    for order in ((NEWER, OLDER), (OLDER, NEWER)):
        names = fold()
        for token in order:
            assert names.identity("drk", token) == "ps-x"
        assert names.persons[("drk", "ps-x")].name == NEWER, order


def test_a_token_of_the_same_key_keeps_the_one_held():
    names = fold()
    names.identity("drk", NEWER)
    names.identity("drk", "enc2:ps-x:2:b3RoZXItbm9uY2U")
    assert names.persons[("drk", "ps-x")].name == NEWER
