"""The input contract: HiOrg-Server's messages on Kafka, as pydantic models.

This module is the one place that knows the wire format (DESIGN.md, "Input contract"). Everything that reads a
message — the file ingest, the Kafka consumer, `simulate` — calls `parse_record` and gets either a typed message
or a `Rejection` whose reason names the offending field. Validation is strict where the contract is strict
(types are not coerced, datetimes need an offset) and forward compatible where it says so (unknown fields are
ignored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

ID_MAX_LENGTH = 64


def _check_id(value: str) -> str:
    # Pydantic's own messages for these ("String should match pattern ...") would not tell a producer why.
    if not value:
        raise ValueError("must be a non-empty string")
    if len(value) > ID_MAX_LENGTH:
        raise ValueError(f"must be at most {ID_MAX_LENGTH} characters (got {len(value)})")
    if "/" in value:
        raise ValueError("must not contain '/'")
    return value


Id = Annotated[
    str,
    AfterValidator(_check_id),
    # the rule is enforced by _check_id (clear messages); the schema states it for producers
    Field(json_schema_extra={"minLength": 1, "maxLength": ID_MAX_LENGTH, "pattern": "^[^/]+$"}),
]
"""`org`, `event_id` and `person_id`: non-empty, at most 64 characters, no `/` (they are joined with `/` in keys)."""


def _check_email(value: str) -> str:
    try:
        validate_email(value, check_deliverability=False)  # syntax only: never a DNS query from here
    except EmailNotValidError as error:
        raise ValueError(f"not a valid e-mail address ({error})") from None
    return value


EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def _check_moment(value: datetime) -> datetime:
    # Deadlines add FULL_USE and VIEW to these; far-off years would overflow Python's datetime downstream.
    if not EARLIEST <= value < LATEST:
        raise ValueError("must lie between the years 1900 and 9000")
    return value


_ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_8601_text(value: Any) -> Any:
    """Read a date-time string as ISO 8601 only: pydantic alone also takes a string of digits ("0", "1700000000")
    for a Unix time. One with a UTC offset is also checked against the years allowed here (one call where two
    validators cost two: validation is a large part of the intake); one without is left to `AwareDatetime`, which
    names what it lacks."""
    if not isinstance(value, str):
        return value  # strict validation names what it is instead
    if _ISO_8601.match(value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return moment if moment.tzinfo is None else _check_moment(moment)
    raise ValueError(f"not a valid ISO 8601 date-time ({value[:40]!r}; e.g. 2026-11-28T10:00:00+01:00)")


Moment = Annotated[AwareDatetime, BeforeValidator(_iso_8601_text)]
"""An ISO 8601 date-time with a UTC offset, within years the lifecycle arithmetic can handle."""

Email = Annotated[str, AfterValidator(_check_email), Field(json_schema_extra={"format": "email"})]

PersonStatus = Literal["active", "restricted", "external", "blocked", "deleted"]
StaffingStatus = Literal["registered", "assigned", "declined", "removed"]


class _Model(BaseModel):
    # Unknown extra fields are ignored: producers may add fields before we know them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Address(_Model):
    street: str
    postcode: str
    city: str
    country: str


class OrganisationChatEnabledData(_Model):
    """The tenant data transferred to the chat operator: exactly these fields, nothing more."""

    name: str
    email: Email
    address: Address


class NoData(_Model):
    pass


class StaffEntry(_Model):
    person_id: Id
    status: StaffingStatus


class EventUpsertedData(_Model):
    event_id: Id
    title: str
    start: Moment
    end: Moment
    responsible: Id | None
    chat_enabled: bool
    staff: list[StaffEntry] | None = None  # absent: keep the event's staffing; present: replace it

    @model_validator(mode="after")
    def _end_not_before_start(self) -> EventUpsertedData:
        if self.end < self.start:
            raise ValueError("end must not be before start")
        return self


class EventRefData(_Model):
    event_id: Id


class StaffingChangedData(_Model):
    event_id: Id
    person_id: Id
    status: StaffingStatus


class PersonStatusChangedData(_Model):
    person_id: Id
    status: PersonStatus


class _Envelope(_Model):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    org: Id
    occurred_at: Moment


class OrganisationChatEnabled(_Envelope):
    type: Literal["organisation.chat_enabled"]
    data: OrganisationChatEnabledData


class OrganisationChatDisabled(_Envelope):
    type: Literal["organisation.chat_disabled"]
    data: NoData = NoData()


class EventUpserted(_Envelope):
    type: Literal["event.upserted"]
    data: EventUpsertedData


class EventCancelled(_Envelope):
    type: Literal["event.cancelled"]
    data: EventRefData


class EventDeleted(_Envelope):
    type: Literal["event.deleted"]
    data: EventRefData


class StaffingChanged(_Envelope):
    type: Literal["staffing.changed"]
    data: StaffingChangedData


class PersonStatusChanged(_Envelope):
    type: Literal["person.status_changed"]
    data: PersonStatusChangedData


Message = Annotated[
    OrganisationChatEnabled
    | OrganisationChatDisabled
    | EventUpserted
    | EventCancelled
    | EventDeleted
    | StaffingChanged
    | PersonStatusChanged,
    Field(discriminator="type"),
]
MESSAGE_TYPES: tuple[str, ...] = (
    "organisation.chat_enabled",
    "organisation.chat_disabled",
    "event.upserted",
    "event.cancelled",
    "event.deleted",
    "staffing.changed",
    "person.status_changed",
)

_message_adapter: TypeAdapter[Message] = TypeAdapter(Message)
_validator = _message_adapter.validator  # called directly on the intake's path: the adapter's wrapper costs ~5 µs
_SHORT = 4300  # characters: Python's JSON reader refuses integers of more digits, pydantic's does not


@dataclass(frozen=True)
class Rejection:
    """Why a record broke the contract, in words a producer can act on."""

    reason: str


def parse_record(raw: bytes | str) -> Message | Rejection:
    """Validate one record (one Kafka value, one JSONL line). Never raises on bad input."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return Rejection(f"not valid UTF-8 (byte {error.start})")
    else:
        text = raw
    from_bytes = isinstance(raw, bytes)
    if len(text) <= _SHORT and not _may_hold_unreadable(text, from_bytes=from_bytes):
        # The common case, parsed once: pydantic reads the JSON itself. Should it refuse the record, the steps below
        # say why in the contract's words. A short text cannot hold what only Python's reader refuses (an integer
        # of more than 4300 digits); non-finite numbers and lone surrogates were ruled out just now.
        try:
            return _validator.validate_json(raw, strict=True)  # type: ignore[no-any-return]
        except ValidationError:
            pass
    return _parse_in_steps(text, from_bytes=from_bytes)


def _parse_in_steps(text: str, *, from_bytes: bool) -> Message | Rejection:
    """Each check in turn, the first that fails naming why: JSON, an object, no unreadable value, a known type, the
    message type's fields."""
    if not text.strip():
        return Rejection("empty record: expected one JSON object")
    try:
        document = json.loads(text, parse_constant=_NonFinite)
    except json.JSONDecodeError as error:
        return Rejection(f"not valid JSON ({error.msg} at column {error.colno})")
    except RecursionError:
        return Rejection("not valid JSON (nested too deeply)")
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        return Rejection(f"not valid JSON ({error})"[:200])
    if not isinstance(document, dict):
        return Rejection(f"not a JSON object (got {_json_kind(document)})")
    if _may_hold_unreadable(text, from_bytes=from_bytes):
        for field, problem in _unreadable_values(document, ""):
            return Rejection(f"{field}: {problem}")  # the first one: a field that cannot be stored or compared
    kind = document.get("type")
    if not isinstance(kind, str):
        return Rejection("type: is required and must be a string" if kind is None else "type: must be a string")
    if kind not in MESSAGE_TYPES:
        return Rejection(f"type: unknown message type {kind!r} (expected one of {', '.join(MESSAGE_TYPES)})")
    try:
        # strict: no coercion ("4711" stays a string, 1 is not true); JSON strings still parse as datetimes.
        return _message_adapter.validate_json(text, strict=True)
    except ValidationError as error:
        return Rejection(_describe(error))


class _NonFinite(str):
    """`NaN`, `Infinity` or `-Infinity` where a JSON number stands: Python's reader takes them, JSON has none."""


def _may_hold_unreadable(text: str, *, from_bytes: bool) -> bool:
    """Whether `_unreadable_values` can find anything, from the text alone: a non-finite number is spelt `NaN` or
    `Infinity`, and a lone surrogate is a `\\uD800`-`\\uDFFF` escape — or, in text not decoded from UTF-8 bytes
    (which holds none), a character beyond ASCII."""
    return (
        "NaN" in text
        or "Infinity" in text
        or "\\ud" in text
        or "\\uD" in text
        or (not from_bytes and not text.isascii())
    )


def _unreadable_values(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Each field (dotted path, `[i]` for array items) holding what no field may hold: a non-finite number, or a
    string with a lone UTF-16 surrogate (valid JSON escapes, but not text: it cannot be stored as UTF-8)."""
    if isinstance(value, _NonFinite):
        yield path or "message", f"{value} is not a number JSON allows"
    elif isinstance(value, str):
        if not value.isascii() and _has_surrogate(value):
            yield path or "message", "holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if _has_surrogate(key):
                yield path or "message", "a field name holds a lone UTF-16 surrogate, which is not text"
            yield from _unreadable_values(item, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unreadable_values(item, f"{path}[{index}]")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


_FRIENDLY = {
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be an array",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "timezone_aware": "must carry a UTC offset (e.g. 2026-11-28T10:00:00+01:00 or ...Z)",
    "datetime_type": "must be an ISO 8601 date-time string with a UTC offset",
    "string_too_short": "must not be empty",
}


def _describe(error: ValidationError) -> str:
    """One line naming each offending field, e.g. `data.end: end must not be before start`."""
    parts = []
    for item in error.errors(include_url=False):
        # the first loc element is the union tag (the message type); drop it
        loc = [str(p) for p in item["loc"][1:]] if item["loc"] else []
        field = ".".join(loc) or "message"
        kind = item["type"]
        if kind in _FRIENDLY:
            text = _FRIENDLY[kind]
        elif kind == "literal_error":
            text = f"{item['input']!r} is not allowed: {item['msg'].removeprefix('Input should be ')}"
        elif kind == "datetime_parsing" or kind == "datetime_from_date_parsing":
            text = f"not a valid ISO 8601 date-time ({item['msg'].split(', ', 1)[-1]})"
        elif kind == "value_error":
            text = item["msg"].removeprefix("Value error, ")
        else:
            text = item["msg"]
        parts.append(f"{field}: {text}")
    return "; ".join(parts)


def message_json_schema() -> dict[str, Any]:
    """The JSON Schema producers validate against (`chatbridge schema`)."""
    schema = _message_adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "chatbridge input message (topic hiorg.chat.v1)"
    schema["description"] = (
        "One JSON object per Kafka record, UTF-8. Unknown extra fields are ignored. Key: '{org}/{event_id}' for "
        "event messages, '{org}' for organisation messages, '{org}/person/{person_id}' for person messages."
    )
    return schema
