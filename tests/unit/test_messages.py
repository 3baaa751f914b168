"""The input contract: what is accepted, and for each way of breaking it, a reason that names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from chatbridge.domain.messages import EventUpserted, Rejection, _parse_in_steps, message_json_schema, parse_record
from tests.support import ALICE, BOB, ORG, Stream, at


def envelope(type_: str = "staffing.changed", **overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "0b6c1a2e-1111-4c4c-8888-000000000001",
        "type": type_,
        "org": ORG,
        "occurred_at": "2026-11-28T10:00:00+01:00",
        "data": {"event_id": "4711", "person_id": ALICE, "status": "assigned"},
    }
    message.update(overrides)
    return message


def upsert(**data: Any) -> dict[str, Any]:
    fields = {"event_id": "4711", "title": "Sanitätsdienst", "start": "2026-12-01T16:00:00+01:00",
              "end": "2026-12-01T19:00:00+01:00", "responsible": ALICE, "chat_enabled": True}  # fmt: skip
    fields.update(data)
    return envelope("event.upserted", data=fields)


def reason(document: Any) -> str:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    result = parse_record(raw)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    return result.reason


def test_a_valid_message_of_each_type_is_accepted():
    stream = Stream()
    stream.org_on(at(1))
    stream.org_off(at(1))
    stream.event("4711", at(1), start=at(1), end=at(2), responsible=None, staff={BOB: "registered"})
    stream.staffing("4711", ALICE, "removed", at(1))
    stream.cancel("4711", at(1))
    stream.delete("4711", at(1))
    stream.person(ALICE, "deleted", at(1))
    parsed = [parse_record(line) for line in stream.lines]
    assert not [p for p in parsed if isinstance(p, Rejection)]
    assert [p.type for p in parsed] == [
        "organisation.chat_enabled", "organisation.chat_disabled", "event.upserted", "staffing.changed",
        "event.cancelled", "event.deleted", "person.status_changed",
    ]  # fmt: skip


def test_unknown_extra_fields_are_ignored_forward_compatible():
    message = upsert(location="Neumarkt", staff=[{"person_id": BOB, "status": "assigned", "role": "SAN"}])
    message["schema_version"] = 2
    parsed = parse_record(json.dumps(message).encode())
    assert isinstance(parsed, EventUpserted)
    assert parsed.data.staff is not None and parsed.data.staff[0].person_id == BOB


def test_the_organisation_data_transferred_keeps_only_the_contract_fields():
    message = envelope("organisation.chat_enabled", data={
        "name": "DRK Köln", "email": "it@drk.example", "phone": "0221 123",
        "address": {"street": "S 1", "postcode": "50825", "city": "Köln", "country": "DE", "floor": "3"},
    })  # fmt: skip
    parsed = parse_record(json.dumps(message).encode())
    assert not isinstance(parsed, Rejection)
    assert parsed.data.model_dump(mode="json") == {
        "name": "DRK Köln", "email": "it@drk.example",
        "address": {"street": "S 1", "postcode": "50825", "city": "Köln", "country": "DE"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"", "empty record"),
        (b"[1, 2]", "not a JSON object (got an array)"),
        (b'"text"', "not a JSON object (got a string)"),
        (b"42", "not a JSON object (got a number)"),
    ],
)
def test_records_that_are_not_json_objects(raw: bytes, expected: str):
    assert expected in reason(raw)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (envelope(type="chat.exploded"), "type: unknown message type 'chat.exploded'"),
        ({k: v for k, v in envelope().items() if k != "type"}, "type: is required"),
        (envelope(type=7), "type: must be a string"),
        ({k: v for k, v in envelope().items() if k != "id"}, "id: is required"),
        (envelope(id=""), "id: must not be empty"),
        ({k: v for k, v in envelope().items() if k != "org"}, "org: is required"),
        (envelope(org=""), "org: must be a non-empty string"),
        (envelope(org="drk/koeln"), "org: must not contain '/'"),
        (envelope(org="x" * 65), "org: must be at most 64 characters"),
        (envelope(occurred_at="2026-11-28T10:00:00"), "occurred_at: must carry a UTC offset"),
        (envelope(occurred_at="yesterday"), "occurred_at: not a valid ISO 8601 date-time"),
        (envelope(occurred_at=1764320400), "occurred_at: must be an ISO 8601 date-time string"),
        (envelope(occurred_at="0"), "occurred_at: not a valid ISO 8601 date-time ('0'"),
        (upsert(start="1700000000"), "data.start: not a valid ISO 8601 date-time ('1700000000'"),
        (envelope(occurred_at="2026-11-28"), "occurred_at: not a valid ISO 8601 date-time"),
        ({k: v for k, v in envelope().items() if k != "data"}, "data: is required"),
        (envelope(data=[]), "data: must be an object"),
        (envelope(data={"event_id": "4711", "person_id": ALICE, "status": "maybe"}), "data.status: 'maybe' is not allowed"),
        (envelope(data={"event_id": 4711, "person_id": ALICE, "status": "assigned"}), "data.event_id: must be a string"),
        (envelope(data={"event_id": "4711", "person_id": "a/b", "status": "assigned"}), "data.person_id: must not contain '/'"),
        (envelope(data={"event_id": "4711", "status": "assigned"}), "data.person_id: is required"),
        (envelope("person.status_changed", data={"person_id": ALICE, "status": "assigned"}), "data.status: 'assigned' is not allowed"),
        (upsert(end="2026-12-01T15:00:00+01:00"), "data: end must not be before start"),
        (upsert(start="2026-12-01T16:00:00"), "data.start: must carry a UTC offset"),
        (upsert(chat_enabled="yes"), "data.chat_enabled: must be true or false"),
        (upsert(chat_enabled=1), "data.chat_enabled: must be true or false"),
        (upsert(responsible=""), "data.responsible: must be a non-empty string"),
        (upsert(staff=[{"person_id": BOB, "status": "cook"}]), "data.staff.0.status: 'cook' is not allowed"),
        (upsert(staff={"person_id": BOB}), "data.staff: must be an array"),
        (envelope("organisation.chat_enabled", data={"name": "DRK", "email": "not-an-address",
                  "address": {"street": "S", "postcode": "1", "city": "K", "country": "DE"}}),
         "data.email: not a valid e-mail address"),
        (envelope("organisation.chat_enabled", data={"name": "DRK", "email": "it@drk.example",
                  "address": {"street": "S", "postcode": "1", "city": "K"}}),
         "data.address.country: is required"),
    ],
)  # fmt: skip
def test_each_contract_violation_is_rejected_with_a_reason_naming_the_field(message: dict[str, Any], expected: str):
    assert expected in reason(message)


def test_a_file_mixing_garbage_with_valid_lines_applies_the_valid_ones_and_reports_the_rest():
    stream = Stream()
    stream.org_on(at(1, month=11))
    stream.raw(b"\x80\x81 binary garbage")
    stream.event("4711", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE)
    stream.raw("")
    stream.raw('{"id": "x", "type": "staffing.changed"}')
    stream.raw("null")
    stream.staffing("4711", BOB, "assigned", at(21, month=11))
    document = stream.simulate(at(22, month=11))
    assert [r["line"] for r in document["rejected"]] == [2, 4, 5, 6]
    assert "not valid UTF-8" in document["rejected"][0]["reason"]
    assert "org: is required" in document["rejected"][2]["reason"]
    assert document["chats"][0]["members"] == [ALICE, BOB]


def test_the_json_schema_describes_every_message_type():
    schema = message_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["discriminator"]["mapping"]) == {
        "organisation.chat_enabled", "organisation.chat_disabled", "event.upserted", "event.cancelled",
        "event.deleted", "staffing.changed", "person.status_changed",
    }  # fmt: skip
    id_rule = schema["$defs"]["StaffingChangedData"]["properties"]["person_id"]
    assert (id_rule["maxLength"], id_rule["pattern"]) == (64, "^[^/]+$")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
).map(lambda document: json.dumps(document).encode()))  # fmt: skip
def test_no_record_makes_the_parser_raise(raw: bytes):
    assert isinstance(parse_record(raw), (Rejection, BaseModel))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (json.dumps(envelope(extra=1.0)).replace("1.0", "NaN").encode(), "extra: NaN is not a number JSON allows"),
        (
            json.dumps(upsert(staff=[{"person_id": BOB, "status": "assigned", "weight": 1.0}]))
            .replace("1.0", "-Infinity")
            .encode(),
            "data.staff[0].weight: -Infinity is not a number JSON allows",
        ),
        (
            json.dumps(envelope(org="drk")).replace('"drk"', '"\\ud800drk"').encode(),
            "org: holds a lone UTF-16 surrogate",
        ),
        (b"1" * 5000, "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (json.dumps(upsert(end="9999-12-31T23:59:59+14:00")).encode(), "data.end: must lie between the years"),
        (json.dumps(envelope(occurred_at="0001-01-01T00:00:00+14:00")).encode(), "occurred_at: must lie between"),
    ],
)
def test_records_that_would_break_the_arithmetic_downstream_are_rejected(raw: bytes, expected: str):
    assert expected in reason(raw)


def _corrupted(document: dict[str, Any], path: list[str], value: Any) -> bytes:
    """The document with the field at `path` replaced (or added) by `value`."""
    corrupted = json.loads(json.dumps(document))
    target = corrupted
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target
    if isinstance(target, dict):
        target[path[-1]] = value
    return json.dumps(corrupted).encode()


_VALID = [envelope(), upsert(), envelope("person.status_changed", data={"person_id": ALICE, "status": "blocked"})]
_FIELDS = [["id"], ["type"], ["org"], ["occurred_at"], ["data"], ["data", "event_id"], ["data", "person_id"],
           ["data", "status"], ["data", "start"], ["data", "end"], ["data", "staff"], ["data", "chat_enabled"],
           ["extra"]]  # fmt: skip
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_BAD_LINES = (
    st.binary(max_size=120).filter(lambda raw: b"\n" not in raw)
    | _ANY_JSON.map(lambda document: json.dumps(document).encode())
    | st.builds(_corrupted, st.sampled_from(_VALID), st.sampled_from(_FIELDS), _ANY_JSON)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_BAD_LINES, min_size=1, max_size=8))
def test_no_line_stops_the_lines_after_it(bad: list[bytes]):
    """Whatever a producer writes — random bytes, random JSON, a valid message with one field corrupted — each
    line is rejected with a reason or applied, and the valid lines after it are applied all the same."""
    stream = Stream()
    for raw in bad:
        stream.raw(raw.replace(b"\n", b" "))
    stream.org_on(at(1, month=11), org="sentinel-org")
    stream.event("9999", at(20, month=11), start=at(1, 16), end=at(1, 19), responsible=ALICE, org="sentinel-org")
    document = stream.simulate(at(22, month=11))
    assert all(r["reason"] for r in document["rejected"])
    assert {(c["org"], c["event_id"], c["phase"]) for c in document["chats"]} >= {("sentinel-org", "9999", "active")}


@settings(max_examples=400, deadline=None)
@given(
    _BAD_LINES
    | st.sampled_from(_VALID).map(lambda document: json.dumps(document).encode())
    | st.builds(lambda raw, cut: raw[:cut], st.sampled_from(_VALID).map(lambda d: json.dumps(d).encode()),
                st.integers(0, 400))
    | st.builds(lambda raw: raw.decode(), st.sampled_from(_VALID).map(lambda d: json.dumps(d).encode()))
)  # fmt: skip
def test_the_one_pass_parse_gives_what_the_checks_in_turn_give(raw: bytes | str):
    """A record is first handed to pydantic's own JSON reader whole; what it accepts must be exactly what the checks
    in turn accept, and what it refuses is described by them."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if isinstance(raw, bytes) and text.encode() != raw:
        return  # not UTF-8: refused before either
    assert parse_record(raw) == _parse_in_steps(text, from_bytes=isinstance(raw, bytes))
