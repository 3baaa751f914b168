"""Person ids ↔ Matrix user ids, by a configurable template, escaped reversibly.

A Matrix localpart may hold only `a-z 0-9 . _ = - / +`. HiOrg ids may hold anything but `/`, so each id is escaped
with the scheme the Matrix spec suggests for mapping other character sets: an upper-case letter becomes `_` and
the letter in lower case, `_` becomes `__`, every other byte outside `a-z 0-9 -` becomes `=` and two hex digits.
The `.` is escaped too, so that the default template `@{org}.{person_id}:{server_name}` splits back unambiguously.
"""

from __future__ import annotations

import re
import string

from chatbridge.backends.port import AddOutcome

_PLAIN = frozenset(string.ascii_lowercase + string.digits + "-")
_ESCAPED = r"(?:[a-z0-9\-]|_[a-z_]|=[0-9a-f]{2})+"
DEFAULT_TEMPLATE = "@{org}.{person_id}:{server_name}"
MAX_USER_ID_BYTES = 255  # the Matrix spec's bound: contract-valid ids (64 characters each, or non-ASCII) escape beyond


def escape(value: str) -> str:
    out: list[str] = []
    for char in value:
        if char in _PLAIN:
            out.append(char)
        elif char == "_":
            out.append("__")
        elif "A" <= char <= "Z":
            out.append("_" + char.lower())
        else:
            out.extend(f"={byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def unescape(value: str) -> str:
    data = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "_":
            nxt = value[i + 1]
            data.extend(b"_" if nxt == "_" else nxt.upper().encode())
            i += 2
        elif char == "=":
            data.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(char.encode())
            i += 1
    return data.decode("utf-8")


class TemplateUserIds:
    """`user_id(org, person_id)` by the template, and its inverse `person_of(user_id)`."""

    def __init__(self, template: str = DEFAULT_TEMPLATE, server_name: str = "localhost"):
        if "{person_id}" not in template:
            raise ValueError(f"user id template {template!r} must contain {{person_id}}")
        self.template = template
        self.server_name = server_name
        pattern = ""
        for literal, name, _spec, _conv in string.Formatter().parse(template):
            pattern += re.escape(literal)
            if name in ("org", "person_id"):
                pattern += f"(?P<{name}>{_ESCAPED})"
            elif name == "server_name":
                pattern += re.escape(server_name)
            elif name is not None:
                raise ValueError(f"user id template {template!r}: unknown field {{{name}}}")
        if "{org}" in template and not re.search(
            r"\{org\}.*[^a-z0-9_=\-{}].*\{person_id\}|"
            r"\{person_id\}.*[^a-z0-9_=\-{}].*\{org\}",
            template,
        ):
            raise ValueError(f"user id template {template!r}: separate {{org}} and {{person_id}} by '.' (or '+')")
        self._pattern = re.compile(pattern)
        self._has_org = "{org}" in template

    def user_id(self, org: str, person_id: str) -> str:
        return self.template.format(org=escape(org), person_id=escape(person_id), server_name=self.server_name)

    def unusable(self, user_id: str) -> AddOutcome | None:
        """An id longer than Matrix allows names no account that can ever exist: its person is pending for that
        reason (the homeserver would answer "not found" for ever and nothing would say why)."""
        return AddOutcome.UNUSABLE_ID if len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES else None

    def person_of(self, user_id: str) -> tuple[str, str] | None:
        """(org, person_id), or None for an account that this template does not produce (e.g. added by hand).

        A template without `{org}` yields org "" (the caller compares it with the chat's org).
        """
        match = self._pattern.fullmatch(user_id)
        if match is None:
            return None
        try:
            org = unescape(match["org"]) if self._has_org else ""
            person_id = unescape(match["person_id"])
        except (UnicodeDecodeError, ValueError, IndexError):
            return None
        if self.user_id(org, person_id) != user_id:  # not in canonical form: not one of ours
            return None
        return org, person_id
