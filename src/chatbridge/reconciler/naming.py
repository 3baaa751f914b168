"""What a member sees of an event's chat before reading a word in it: its name, its topic, its place in the space.

A helper staffed in five events tells the chats apart by their names (the event's title and date), and the topic
answers what every chat user asks when a chat goes quiet or vanishes: when it turns read-only and when it is
deleted — in German, in the organisation's local time, because that is the clock the helpers live by. The
organisation's space lists its chats in the order of the events' start.

Name and topic are room state, readable by the homeserver and every member without room keys: they carry event
data only (title, start, deadlines), never a person's name, id or status. The title comes from HiOrg-Server as
typed by whoever planned the event, so it is made safe first: line breaks and control characters (which clients
show as boxes or use to break layouts) become spaces, and invisible format characters (bidirectional overrides that
make a name read differently from what it is) are dropped.

Pure functions: the plan renders what the chat should show and compares it with what the backend has, so a chat
whose event did not change gets the same text again and nothing is written.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from chatbridge.backends.port import ChatLabels
from chatbridge.domain.lifecycle import Phase
from chatbridge.projections.desired_state import DesiredChat

DEFAULT_ZONE = "Europe/Berlin"
# The longest name: what room headers show whole (a narrow chat list may shorten it further). The date at its end is
# never cut (it tells two runs of the same event apart); a title that does not fit ends in "…".
NAME_LENGTH = 64
UNTITLED = "Veranstaltung"
SEPARATOR = " · "
WEEKDAYS = ("Mo", "Di", "Mi", "Do", "Fr", "Sa", "So")
ELLIPSIS = "…"

_ZWJ = "\u200d"
# Format characters that shape what is shown: the joiner of emoji sequences (a family), the non-joiner some scripts
# spell with, the tags of subdivision flags. Every other one is invisible and can only hide or reorder what the name
# says (bidirectional overrides, zero-width spaces, soft hyphens).
_KEPT_FORMAT = frozenset({_ZWJ, "\u200c"}) | frozenset(chr(c) for c in range(0xE0020, 0xE0080))


def safe_text(text: str) -> str:
    """`text` as one line a client shows as it is: control characters, line and paragraph breaks and runs of white
    space become one space; invisible format characters and lone surrogates (not text) are dropped."""
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs" or (category == "Cf" and char not in _KEPT_FORMAT):
            continue
        kept.append(" " if category in ("Cc", "Zl", "Zp") else char)
    return " ".join(unicodedata.normalize("NFC", "".join(kept)).split())


def _extends(char: str) -> bool:
    """Whether `char` belongs to the character before it (a combining mark, a joiner, a variation selector, an
    emoji modifier or tag): a cut before it would change what the character before it shows."""
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or char in _KEPT_FORMAT
        or "\ufe00" <= char <= "\ufe0f"
        or "\U0001f3fb" <= char <= "\U0001f3ff"
    )


def cut(text: str, length: int) -> str:
    """`text` in at most `length` characters; a cut one ends in "…" and never inside a character a reader sees as
    one (an accented letter, an emoji sequence, a flag)."""
    if len(text) <= length:
        return text
    end = max(0, length - len(ELLIPSIS))
    while 0 < end < len(text) and (_extends(text[end]) or text[end - 1] == _ZWJ):
        end -= 1
    regional = 0
    while regional < end and "\U0001f1e6" <= text[end - 1 - regional] <= "\U0001f1ff":
        regional += 1
    end -= regional % 2  # flags are pairs of regional indicators: never keep half of one
    return text[:end].rstrip(" ·-–—,;:/") + ELLIPSIS


def _local(moment: datetime, zone: ZoneInfo) -> datetime:
    try:
        return moment.astimezone(zone)
    except OverflowError:  # within hours of the first or last year a datetime holds: UTC is as good
        return moment.astimezone(UTC)


def german_date(moment: datetime, zone: ZoneInfo) -> str:
    """The weekday and date in `zone` as German readers write them: "Sa 12.12.2026"."""
    local = _local(moment, zone)
    return f"{WEEKDAYS[local.weekday()]} {local.day:02d}.{local.month:02d}.{local.year:04d}"


def german_time(moment: datetime, zone: ZoneInfo) -> str:
    """The minute a deadline falls in, in `zone`: "Mo 14.12.2026 18:00 Uhr"."""
    local = _local(moment, zone)
    return f"{german_date(moment, zone)} {local.hour:02d}:{local.minute:02d} Uhr"


def chat_name(title: str, start: datetime, zone: ZoneInfo) -> str:
    """The event's title and the date it starts, at most NAME_LENGTH characters, safe to show."""
    date = SEPARATOR + german_date(start, zone)
    return cut(safe_text(title) or UNTITLED, NAME_LENGTH - len(date)) + date


def chat_topic(phase: Phase, read_only_at: datetime, delete_at: datetime, zone: ZoneInfo) -> str | None:
    """When the chat turns read-only and when it is deleted, in German; None in phases without a chat."""
    if phase == Phase.ACTIVE:
        return f"Nur lesbar ab {german_time(read_only_at, zone)}, gelöscht am {german_time(delete_at, zone)}."
    if phase == Phase.READ_ONLY:
        return f"Nur noch lesbar. Wird am {german_time(delete_at, zone)} gelöscht."
    return None


def space_order(start: datetime) -> str:
    """The chat's `order` among its space's children: the event's start in UTC, so that the text sorts as time does
    (Matrix sorts children by this string; it must be printable ASCII, at most 50 characters)."""
    utc = start.astimezone(UTC)
    return f"{utc.year:04d}{utc.month:02d}{utc.day:02d}T{utc.hour:02d}{utc.minute:02d}{utc.second:02d}Z"


@dataclass(frozen=True)
class RoomNaming:
    """Renders a chat's labels in one time zone (the organisation's local time)."""

    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_ZONE))

    def labels(self, desired: DesiredChat, phase: Phase) -> ChatLabels | None:
        """What the chat should show in `phase`; None when there is no chat to show it on, or the row does not know
        its event (no title or start): then whatever the chat shows is left as it is."""
        if desired.title is None or desired.start is None:
            return None
        topic = chat_topic(phase, desired.read_only_at, desired.delete_at, self.zone)
        if topic is None:
            return None
        return ChatLabels(chat_name(desired.title, desired.start, self.zone), topic, space_order(desired.start))


def configured_naming() -> RoomNaming:
    """The naming in the configured zone (`CHATBRIDGE_TIMEZONE`, or the config file's `timezone`)."""
    from chatbridge.settings import Settings  # read when a reconciler is made without one, as its own settings are

    return RoomNaming(Settings.load().timezone)
