"""The audit report of a scripted history, opened in headless Chromium as a person would: the page loads nothing
from anywhere and logs nothing to its console, its timelines are drawn, its PDF is A4 with the report's text, and
every number in it is the number the audit commands answer in JSON."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chatbridge.audit import report
from chatbridge.bootstrap import open_store
from chatbridge.cli import app
from chatbridge.settings import Settings
from tests.integration.test_audit import Story, jan, tell
from tests.support import ALICE, BOB, DAVE, ORG

pytestmark = pytest.mark.integration

END = "2027-01-07T12:00:00Z"
NEEDED = ("chromium", "pdftotext", "pdfinfo")
missing = [tool for tool in NEEDED if shutil.which(tool) is None]
if missing and os.environ.get("CI"):
    raise RuntimeError(f"CI must install {', '.join(missing)} (.ci/run does, from Debian)")
if missing:
    pytest.skip(f"needs {', '.join(missing)} (Debian: chromium poppler-utils)", allow_module_level=True)


@dataclass
class Installation:
    folder: Path
    env: dict[str, str]

    def audit(self, *args: str) -> str:
        result = CliRunner().invoke(app, ["audit", *args], env=self.env)
        assert result.exit_code == 0, f"audit {' '.join(args)}: {result.output}"
        return result.stdout

    def json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.audit(*args, "--format", "json"))

    def report(self, name: str, *args: str) -> Path:
        out = self.folder / name
        printed = self.audit("report", "--org", ORG, "--to", END, "--out", str(out), *args)
        assert printed.strip() == str(out)
        return out


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    """The audit's story (two generations, each deletion rule, a removal and re-adding) and a person HiOrg deleted."""
    folder = tmp_path_factory.mktemp("report")
    env = {"CHATBRIDGE_DATABASE": str(folder / "audit.db"), "CHATBRIDGE_LOG_FORMAT": "json",
           "CHATBRIDGE_AUDIT_CHECKPOINT_FILE": str(folder / "checkpoints.jsonl")}  # the auditor's copy  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        store = open_store(Settings())
        try:
            story = Story(store)
            tell(story)
            story.stream.staffing("4711", DAVE, "assigned", jan(6, 13))
            story.reconcile(jan(6, 14))
            story.stream.person(DAVE, "deleted", jan(6, 15))
            story.reconcile(jan(6, 16))
        finally:
            store.close()
        yield Installation(folder, env)


@pytest.fixture(scope="module")
def page(installation: Installation) -> Path:
    return installation.report("organisation.html", "--lang", "en")


@pytest.fixture(scope="module")
def pdf(installation: Installation) -> Path:
    return installation.report("organisation.pdf", "--lang", "de")


def chromium(*arguments: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """The same headless Chromium the report prints with, logging the page's console to standard error."""
    command = report.chromium_command("--enable-logging=stderr", "--v=0", *arguments, profile=folder / "profile")
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def console(run: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


# -- the page -----------------------------------------------------------------------------------------------------


def test_the_page_loads_with_no_console_message_and_no_network_request(page: Path, tmp_path: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert "default-src 'none'" in html  # any load at all is refused, and the refusal is a console message
    assert not re.search(r"<script|<link|<iframe|<object|<embed|\b(src|href|srcset|action)\s*=|url\(|@import", html)
    loaded = chromium("--dump-dom", page.as_uri(), folder=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert console(loaded) == []
    assert loaded.stdout.count('<svg class="timeline"') == 3 and "4711" in loaded.stdout
    # the check sees a request: the same page with one image from the network reports the refusal
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", '<img alt="" src="http://127.0.0.1:9/probe.png"></body>'), "utf-8")
    refused = console(chromium("--dump-dom", probe.as_uri(), folder=tmp_path))
    assert refused and "Content Security Policy" in refused[0]


def png_pixels(path: Path) -> Counter[tuple[int, int, int]]:
    """The colours of an 8-bit RGB or RGBA PNG and how many pixels have each (no imaging library needed)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, b"", b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        header = body if kind == b"IHDR" else header
        chunks += body if kind == b"IDAT" else b""
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    step = 3 if colour == 2 else 4
    stride, raw = width * step, zlib.decompress(chunks)
    previous, pixels = bytearray(stride), Counter[tuple[int, int, int]]()
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up, corner = previous[i], previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))
                line[i] = (line[i] + near[2]) & 255
        pixels.update(zip(line[0::step], line[1::step], line[2::step], strict=True))
        previous = line
    return pixels


PHASES = {"active": (0x2E, 0x7D, 0x32), "read_only": (0xE6, 0x9A, 0x00), "access": (0x1E, 0x63, 0xB5)}


def test_a_screenshot_shows_the_timeline(installation: Installation, tmp_path: Path) -> None:
    page = installation.report("event.html", "--event", "4711", "--lang", "de")
    html = page.read_text(encoding="utf-8")
    without = tmp_path / "without.html"  # the same page with its pictures taken out: what the timeline adds
    without.write_text(re.sub(r"<svg .*?</svg>", "", html, flags=re.S), encoding="utf-8")
    shots = {}
    for name, source in (("with", page), ("without", without)):
        shot = tmp_path / f"{name}.png"
        taken = chromium(f"--screenshot={shot}", "--window-size=1000,1100", "--hide-scrollbars", source.as_uri(),
                         folder=tmp_path)  # fmt: skip
        assert taken.returncode == 0 and console(taken) == [], taken.stderr[-2000:]
        shots[name] = png_pixels(shot)
    drawn = shots["with"]
    assert len(drawn) > 200  # text, tables and pictures, not a blank page
    for phase, colour in PHASES.items():  # each phase and the access bars fill hundreds of pixels of their own
        assert drawn[colour] - shots["without"][colour] > 500, phase
    # the event's report narrows the deletions to its chat
    deletions = installation.json("deletions", "--org", ORG, "--now", END)["deleted"]
    assert [r[:2] for r in rows(Tables(html), "deleted")] == [
        [r["event_id"], str(r["generation"])] for r in deletions if r["event_id"] == "4711"
    ]


# -- the PDF ------------------------------------------------------------------------------------------------------


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def test_the_pdf_is_a4_with_the_reports_text_in_german(installation: Installation, pdf: Path) -> None:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))  # type: ignore[union-attr]
    assert 3 <= pages <= 8 and "(A4)" in info
    text = pdf_text(pdf)
    for heading in ("Prüfbericht: drk-koeln", "Übermittlungen an den Chat-Betreiber (Art. 28/30 DSGVO)",
                    "Löschungen (Art. 17 DSGVO)", "Unversehrtheit des Ereignisprotokolls",
                    "Verzeichnis von Verarbeitungstätigkeiten (Art. 30 DSGVO)"):  # fmt: skip
        assert heading in text
    assert f"Seite 1 / {pages}" in text and f"Seite {pages} / {pages}" in text  # every page numbered for filing
    assert "Veranstaltung 4711" in text and "Veranstaltung 4713" in text and "9001" not in text  # not asb-bonn's
    summary = {line.split("  ")[0].strip(): line.split()[-1] for line in text.splitlines() if "  " in line.strip()}
    deletions = installation.json("deletions", "--org", ORG, "--now", END)
    assert summary["Löschungen"] == str(len(deletions["deleted"]))
    assert summary["Überfällige Löschungen"] == str(len(deletions["overdue"]))
    verified = installation.json("verify")
    assert f"Unversehrt — {verified['records']} Einträge" in text


# -- the numbers --------------------------------------------------------------------------------------------------


class Tables(HTMLParser):
    """Each table's rows as cell texts (a row's heading cell first), by the table's class; and the summary's counts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.counts: dict[str, str] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._count: str | None = None
        self._data_row = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = []
            self.tables.setdefault(attributes.get("class") or "", []).append(self._table)
        elif tag == "tr" and self._table is not None:
            self._row: list[str] = []
            self._data_row = False
        elif tag in ("td", "th"):
            self._cell, self._count = [], attributes.get("data-count")
            self._data_row |= tag == "td"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            self._row.append(text)
            if self._count:
                self.counts[self._count] = text
            self._cell = None
        elif tag == "tr" and self._table is not None and self._data_row:  # heading rows are left out
            self._table.append(self._row)
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def shown(moment: str | None) -> str:
    """A JSON time as the page shows it (date and time, UTC)."""
    return "—" if moment is None else moment.replace("T", " ").rstrip("Z")


def rows(tables: Tables, name: str) -> list[list[str]]:
    return [row for table in tables.tables.get(name, []) for row in table]


def test_the_numbers_equal_the_audit_json(installation: Installation, page: Path) -> None:
    tables = Tables(page.read_text(encoding="utf-8"))
    deletions = installation.json("deletions", "--org", ORG, "--now", END)
    assert [r[:5] for r in rows(tables, "deleted")] == [
        [r["event_id"], str(r["generation"]), r["deletion_rule"], shown(r["delete_at"]), shown(r["deleted_at"])]
        for r in deletions["deleted"]
    ]
    assert tables.counts["overdue"] == str(len(deletions["overdue"])) == "0"
    transfers = installation.json("transfers", "--org", ORG)["transfers"]
    assert [r[:3] for r in rows(tables, "transfers")] == [
        [shown(r["at"]), r["what"], r["tenant_id"] or "—"] for r in transfers
    ]
    assert tables.counts["transfers"] == str(len(transfers))
    events = ["4711", "4712", "4713"]
    chats = {event: installation.json("chat", "--org", ORG, "--event", event) for event in events}
    assert tables.counts["chats"] == str(len(events))
    assert [row[:8] for row in rows(tables, "generations")] == [
        [str(g["generation"]), shown(g["enabled_at"]), g["chat_id"] or "—", shown(g["read_only_at"]),
         shown(g["made_read_only_at"]), shown(g["delete_at"]), g["deletion_rule"] or "—", shown(g["deleted_at"])]
        for event in events for g in chats[event]["generations"]
    ]  # fmt: skip
    # each person's rows in the chats' access tables are `audit person`'s rows for that person
    access = [(event, *row) for event, table in zip(events, tables.tables["chat-access"], strict=True)
              for row in table]  # fmt: skip
    for person in (ALICE, BOB, DAVE):
        answer = installation.json("person", "--org", ORG, "--person", person)
        assert sorted((e, *r[1:5]) for e, *r in access if r[0] == answer["person"]) == sorted(
            (r["event_id"], str(r["generation"]), shown(r["from"]), shown(r["until"]) if r["until"] else "still open",
             r["ended_by"] or "—")
            for r in answer["access"]
        )  # fmt: skip
    verified = installation.json("verify")
    facts = {row[0]: row[1] for row in rows(tables, "facts verify")}
    assert facts["Records"] == str(verified["records"]) and facts["Signed checkpoints"] == str(verified["checkpoints"])
    assert facts["Verified against the checkpoint at record"] == str(verified["last_checkpoint"])
    assert facts["Integrity of the log"] == "Intact" and verified["ok"]
    assert verified["published_checkpoints"] > 0  # the report compared the store with the auditor's file, as verify
    assert facts["Published checkpoints it agrees with"] == (
        f"{verified['published_checkpoints']} — the last at record {verified['last_published']}"
    )


def test_a_forgotten_person_appears_by_pseudonym_only(installation: Installation, page: Path) -> None:
    dave = installation.json("person", "--org", ORG, "--person", DAVE)
    assert dave["forgotten"] and dave["person"].startswith("ps-")
    html = page.read_text(encoding="utf-8")
    assert DAVE not in html and dave["person"] in html and BOB in html
    own = installation.report("dave.html", "--person", DAVE, "--lang", "en").read_text(encoding="utf-8")
    assert DAVE not in own and "was forgotten" in own
    assert [r[3:5] for r in rows(Tables(own), "access-table")] == [
        [shown(r["from"]), shown(r["until"])] for r in dave["access"]
    ]


def test_a_persons_report_covers_the_period(installation: Installation) -> None:
    page = installation.report("bob.html", "--person", BOB, "--from", "2026-11-23T00:00:00Z", "--lang", "en")
    tables = Tables(page.read_text(encoding="utf-8"))
    bob = installation.json("person", "--org", ORG, "--person", BOB)["access"]
    assert [r[0:4] for r in rows(tables, "access-table")] == [
        [r["event_id"], str(r["generation"]), r["chat_id"], shown(r["from"])]
        for r in bob
        if r["until"] is None or r["until"] >= "2026-11-23"
    ]  # the removal of 22 November ended before the period
    assert tables.counts["access"] == "2" and tables.counts["chats"] == "1"


def test_the_command_prints_a_pdf_and_logs_no_personal_data(installation: Installation) -> None:
    out = installation.folder / "bob.pdf"
    command = [sys.executable, "-c", "from chatbridge.cli import main; main()", "audit", "report", "--org", ORG,
               "--person", BOB, "--out", str(out), "--to", END]  # fmt: skip
    locale = {"LC_ALL": "", "LC_MESSAGES": "", "LANG": "de_DE.UTF-8"}
    done = subprocess.run(command, env={**os.environ, **installation.env, **locale},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(out)
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(line["event"].startswith(f"audit report of {ORG} written as pdf") for line in logged)
    for secret in (ALICE, BOB, DAVE):
        assert secret not in done.stderr
    assert "Zugriffe einer Person (Art. 15 DSGVO)" in pdf_text(out)  # German from the locale


def test_bad_requests_are_refused_with_exit_2(installation: Installation) -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["audit", "report", "--org", ORG, "--person", BOB, "--event", "4711", "--out",
                               str(installation.folder / "x.html")], env=installation.env)  # fmt: skip
    assert both.exit_code == 2
    kind = runner.invoke(app, ["audit", "report", "--org", ORG, "--out", str(installation.folder / "x.txt")],
                         env=installation.env)  # fmt: skip
    assert kind.exit_code == 2 and ".html or .pdf" in kind.stderr
    unknown = runner.invoke(app, ["audit", "report", "--org", "nobody", "--out", str(installation.folder / "x.html")],
                            env=installation.env)  # fmt: skip
    assert unknown.exit_code == 1 and not (installation.folder / "x.html").exists()
