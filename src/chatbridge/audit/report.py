"""`chatbridge audit report`: the audit's answers for one organisation as a document a data-protection officer files.

The numbers come from the same queries as `audit transfers`, `deletions`, `person`, `chat`, `records-of-processing`
and `verify` (called here, not re-derived), so the page and the JSON agree. The page is one HTML file that needs
nothing from the network — its Content-Security-Policy forbids every load, styles are inline and the timelines
are inline SVG — and the PDF is that same page printed by headless Chromium, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import locale
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from chatbridge.application import IntakeApplication
from chatbridge.audit import queries
from chatbridge.audit.service import records_of_processing, verification_document, verify_log
from chatbridge.domain.moments import utc_z
from chatbridge.journal import chain
from chatbridge.settings import Settings

log = logging.getLogger(__name__)

LANGUAGES = ("de", "en")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ReportError(Exception):
    """The report could not be written (no Chromium for a PDF, an unknown output type); the message says why."""


@dataclass(frozen=True)
class Scope:
    """What one report covers: an organisation, a period, and optionally one person or one event."""

    org: str
    start: datetime | None = None
    end: datetime | None = None  # also the clock for 'overdue' and for open access (default: now)
    person: str | None = None
    event: str | None = None


def default_language() -> str:
    """German where the locale is German (the users are German organisations), English otherwise."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return "de" if value.lower().startswith("de") else "en"
    code = locale.getlocale()[0] or ""
    return "de" if code.lower().startswith("de") else "en"


# -- gathering: the audit's own answers, narrowed to the scope ------------------------------------------------------


def _at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _within(moment: str | None, scope: Scope, end: datetime) -> bool:
    at = _at(moment)
    return at is not None and (scope.start is None or at >= scope.start) and at <= end


def _overlaps(since: str | None, until: str | None, scope: Scope, end: datetime) -> bool:
    """Whether [since, until] (until None: still open) meets the report's period."""
    began, ended = _at(since), _at(until)
    if began is None or began > end:
        return False
    return scope.start is None or ended is None or ended >= scope.start


def gather(
    app: IntakeApplication,
    settings: Settings,
    scope: Scope,
    verify_key: Ed25519PublicKey | None,
    published: Sequence[chain.Checkpoint] = (),
) -> dict[str, Any]:
    """Everything the report shows, as the audit commands answer it (raises `queries.NotFound` like they do);
    `published`: the checkpoints kept outside the store that `audit verify` compares the store with."""
    policy = settings.policy
    end = scope.end or datetime.now(UTC)
    org = scope.org
    transfers = queries.transfers(app, org, policy)  # also: the organisation exists
    deletions = queries.deletions(app, org, policy, end, scope.start)
    person = queries.person_access(app, org, scope.person, policy) if scope.person else None
    if scope.event:
        timeline = queries.chat_timeline(app, org, scope.event, policy)
        chats = [_chat(timeline["event_id"], timeline["generations"], timeline["entries"], end)]
    else:
        chats = _chats_of(app, org, policy, scope, end, person)
    shown = None if not (scope.event or scope.person) else {chat["event_id"] for chat in chats}
    deleted = [
        r for r in deletions["deleted"]
        if _within(r["deleted_at"] or r["delete_at"], scope, end) and (shown is None or r["event_id"] in shown)
    ]  # fmt: skip
    overdue = [r for r in deletions["overdue"] if shown is None or r["event_id"] in shown]
    return {
        "org": org,
        "period": {"from": None if scope.start is None else utc_z(scope.start), "to": utc_z(end)},
        "person": person
        if person is None
        else {
            **person,
            "access": [r for r in person["access"] if _overlaps(r["from"], r["until"], scope, end)],
        },  # fmt: skip
        "event": scope.event,
        "made_at": utc_z(datetime.now(UTC)),
        "software": _software(),
        "records_of_processing": records_of_processing(settings, policy),
        "transfers": [r for r in transfers["transfers"] if _within(r["at"], scope, end)],
        "deletions": {"deleted": deleted, "overdue": overdue, "now": deletions["now"]},
        "chats": chats,
        "verify": verification(app, verify_key, published),
    }


def _chats_of(
    app: IntakeApplication, org: str, policy: Any, scope: Scope, end: datetime, person: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The organisation's chats alive in the period (for a person: those they had access to), from one fold."""
    fold = queries.LogFold(app, policy)
    wanted = None if person is None else {r["event_id"] for r in person["access"]}
    chats = []
    for (chat_org, event_id), history in sorted(fold.histories.items()):
        if chat_org != org or (wanted is not None and event_id not in wanted):
            continue
        generations = [queries._generation_row(g) for g in sorted(history.generations.values(), key=lambda g: g.number)]
        if any(_overlaps(g["enabled_at"], g["deleted_at"] or g["delete_at"], scope, end) for g in generations):
            chats.append(_chat(event_id, generations, history.entries, end))
    return chats


def access_intervals(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every person's access to one chat, from when to when, paired the way `audit person` pairs one person's."""
    rows: list[dict[str, Any]] = []
    open_since: dict[tuple[int, str], str] = {}
    for entry in entries:
        generation, what = entry["generation"], entry["what"]
        person = entry["details"].get("person") if isinstance(entry["details"], dict) else None
        if what == "access granted" and person is not None:
            open_since.setdefault((generation, person), entry["at"])
        elif what == "access revoked" and person is not None and (generation, person) in open_since:
            rows.append(_interval(generation, person, open_since.pop((generation, person)), entry["at"], "revoked"))
        elif what.startswith("chat deleted"):
            for key in [k for k in open_since if k[0] == generation]:
                rows.append(_interval(generation, key[1], open_since.pop(key), entry["at"], "chat deleted"))
    rows += [_interval(g, p, since, None, None) for (g, p), since in open_since.items()]
    return sorted(rows, key=lambda r: (r["generation"], r["from"], r["person"]))


def _interval(generation: int, person: str, since: str, until: str | None, ended: str | None) -> dict[str, Any]:
    return {"generation": generation, "person": person, "from": since, "until": until, "ended_by": ended}


def _chat(event_id: str, generations: list[dict[str, Any]], entries: list[dict[str, Any]], end: datetime):
    access = access_intervals(entries)
    title = next((e["details"].get("title") for e in reversed(entries) if e["details"].get("title")), None)
    return {
        "event_id": event_id,
        "title": title,
        "generations": generations,
        "access": access,
        "entries": entries,
        "timeline": timeline_picture(generations, entries, access, end),
    }


def verification(
    app: IntakeApplication, verify_key: Ed25519PublicKey | None, published: Sequence[chain.Checkpoint] = ()
) -> dict[str, Any]:
    """`audit verify`'s answer (the same fields as its JSON), with the key and the moment it was checked."""
    checked_at = utc_z(datetime.now(UTC))
    if verify_key is None:
        return {"ok": None, "checked_at": checked_at, "key_id": None}
    result = verify_log(app, verify_key, published)
    document = verification_document(result)
    document["problems"] = document["problems"][:20]  # the first twenty are enough on paper; verify lists all
    return {**document, "key_id": chain.key_id(verify_key), "checked_at": checked_at}


def _software() -> dict[str, str | None]:
    """The version and commit of the code that made the report, so that it can be made again the same way."""
    try:
        version: str | None = metadata.version("chatbridge")
    except metadata.PackageNotFoundError:
        version = None
    commit = None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        commit = done.stdout.strip() or None if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass  # an installed wheel has no repository: the version alone names the code
    return {"version": version, "commit": commit}


# -- the timeline picture ---------------------------------------------------------------------------------------

WIDTH, LABELS, RIGHT = 720.0, 150.0, 12.0
BAND, ROW, AXIS = 16.0, 11.0, 26.0
PHASE_OF = {
    "chat created (backend confirmed)": "active",
    "reopened (backend confirmed)": "active",
    "made read-only (backend confirmed)": "read_only",
}


def timeline_picture(
    generations: list[dict[str, Any]], entries: list[dict[str, Any]], access: list[dict[str, Any]], now: datetime
) -> dict[str, Any]:
    """The geometry of one chat's life: per generation its phases as confirmed by the backend, the policy's
    deadlines, the confirmed deletion, and one bar per person's access. Drawn as SVG by the template."""
    moments = [_at(e["at"]) for e in entries] + [now]
    for g in generations:
        moments += [_at(g[k]) for k in ("enabled_at", "read_only_at", "delete_at", "deleted_at")]
    known = [m for m in moments if m is not None]
    first, last = min(known), max(known)
    span = max((last - first).total_seconds(), 3600.0)

    def x(moment: datetime | None) -> float:
        moment = moment or now
        share = (moment - first).total_seconds() / span
        return round(LABELS + max(0.0, min(1.0, share)) * (WIDTH - LABELS - RIGHT), 1)

    rows: list[dict[str, Any]] = []
    y = 4.0
    for g in generations:
        number = g["generation"]
        ours = [e for e in entries if e["generation"] == number]
        stop = _at(g["deleted_at"]) or now
        segments = []
        phase, since = "awaiting", _at(g["enabled_at"])
        for entry in ours:
            moment = _at(entry["at"])
            if entry["what"] in PHASE_OF and moment is not None and PHASE_OF[entry["what"]] != phase:
                segments.append({"phase": phase, "x": x(since), "width": round(x(moment) - x(since), 1)})
                phase, since = PHASE_OF[entry["what"]], moment
        segments.append({"phase": phase, "x": x(since), "width": round(x(stop) - x(since), 1)})
        deadlines = [
            {"kind": kind, "x": x(_at(g[key])), "at": g[key]}
            for kind, key in (("read_only", "read_only_at"), ("delete", "delete_at"))
            if g[key] is not None
        ]
        deleted = None if g["deleted_at"] is None else {"x": x(_at(g["deleted_at"])), "at": g["deleted_at"]}
        rows.append({"kind": "generation", "generation": number, "y": y, "segments": segments,
                     "deadlines": deadlines, "deleted": deleted})  # fmt: skip
        y += BAND + 4
        for interval in (a for a in access if a["generation"] == number):
            since_x = x(_at(interval["from"]))
            rows.append({"kind": "access", "y": y, "person": interval["person"], "short": _short(interval["person"]),
                         "x": since_x, "width": max(round(x(_at(interval["until"])) - since_x, 1), 1.5),
                         "open": interval["until"] is None, "from": interval["from"],
                         "until": interval["until"]})  # fmt: skip
            y += ROW
        y += 6
    ticks = [first + (last - first) * (i / 4) for i in range(5)]
    return {
        "width": WIDTH,
        "height": round(y + AXIS, 1),
        "rows": rows,
        "plot": {"x": LABELS, "width": WIDTH - LABELS - RIGHT, "bottom": round(y, 1)},
        "ticks": [{"x": x(t), "label": t.strftime("%d.%m.%Y")} for t in ticks],
        "now": {"x": x(now), "shown": first <= now <= last},
    }


def _short(person: str) -> str:
    return person if len(person) <= 14 else person[:12] + "…"


# -- rendering ----------------------------------------------------------------------------------------------------

_environment = Environment(
    loader=PackageLoader("chatbridge.audit", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _moment(value: str) -> Markup:
    """An answer's UTC time as the JSON has it, split at the 'T' so that a narrow column wraps between date and time."""
    day, _, clock = str(value).partition("T")
    return Markup('<span class="moment">{}</span> <span class="moment">{}</span>').format(day, clock.rstrip("Z"))


def _css_text(value: str) -> Markup:
    """Text for a CSS string (the printed page's footer): anything but letters, digits and '-' as a CSS escape."""
    return Markup("".join(c if c.isalnum() or c == "-" else f"\\{ord(c):06x}" for c in str(value)))


_environment.filters["moment"] = _moment
_environment.filters["css_text"] = _css_text


@cache
def _labels() -> dict[str, dict[str, Any]]:
    """The page's words in each language, beside the template (one file, so a translator sees both)."""
    text = resources.files("chatbridge.audit").joinpath("templates", "labels.json").read_text(encoding="utf-8")
    labels: dict[str, dict[str, Any]] = json.loads(text)
    return labels


def render_html(document: dict[str, Any], language: str) -> str:
    """The document as one self-contained HTML page in German or English."""
    if language not in LANGUAGES:
        raise ReportError(f"unknown language {language!r}: choose one of {', '.join(LANGUAGES)}")
    labels = _labels()[language]

    def say(value: Any) -> str:
        """An answer's English wording (what happened, a deletion rule) in the report's language."""
        text = "" if value is None else str(value)
        return str(labels.get("says", {}).get(text, text))

    template = _environment.get_template("report.html.j2")
    return template.render(doc=document, t=labels, say=say, lang=language)


def chromium() -> str:
    """The headless browser that prints the page (Debian's `chromium`)."""
    configured = os.environ.get("CHATBRIDGE_CHROMIUM")
    for name in (configured,) if configured else CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ReportError("a PDF needs headless Chromium: install Debian's `chromium` (or set CHATBRIDGE_CHROMIUM)")


def chromium_command(*arguments: str, profile: Path) -> list[str]:
    """Headless Chromium with its own throw-away profile. The sandbox is off because it cannot start as root in a
    container; the page is our own, loads nothing (its CSP forbids it) and runs no script."""
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions",
            "--no-first-run", f"--user-data-dir={profile}", *arguments]  # fmt: skip


def print_pdf(html: Path, pdf: Path, timeout: float = 120.0) -> None:
    """Print the page to an A4 PDF (the page's own @page rule sets the size and margins)."""
    with tempfile.TemporaryDirectory(prefix="chatbridge-chromium-") as profile:
        command = chromium_command(
            "--no-pdf-header-footer", f"--print-to-pdf={pdf}", html.resolve().as_uri(), profile=Path(profile)
        )
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ReportError(f"Chromium did not print the PDF within {timeout:g} s") from None
    if done.returncode != 0 or not pdf.exists() or pdf.stat().st_size == 0:
        raise ReportError(f"Chromium could not print the PDF (exit {done.returncode}): {done.stderr.strip()[-400:]}")


def write_report(document: dict[str, Any], out: Path, language: str) -> Path:
    """Write the page (`.html`) or its print (`.pdf`) to `out`."""
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise ReportError(f"{out.name}: the report is written as .html or .pdf")
    began = time.monotonic()
    page = render_html(document, language)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".pdf":
        with tempfile.TemporaryDirectory(prefix="chatbridge-report-") as folder:
            html = Path(folder) / "report.html"
            html.write_text(page, encoding="utf-8")
            print_pdf(html, out)
    else:
        out.write_text(page, encoding="utf-8")
    # org and counts only: the report itself may name persons, its log line must not
    log.info("audit report of %s written as %s: %d chats in %.2f s", document["org"], suffix.lstrip("."),
             len(document["chats"]), time.monotonic() - began)  # fmt: skip
    return out
