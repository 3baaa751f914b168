"""The German documentation (docs/de) stays true where a machine can tell.

Every `chatbridge …` command it shows exists with the options it uses (and its `--help` answers), every relative
link leads to a file, every `CHATBRIDGE_…` variable it names is one chatbridge knows, and the default periods it
states are the configured defaults. The checks are functions of the text, so that the last tests can show each of
them rejecting a wrong page.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from chatbridge.cli import app
from chatbridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS_DE = ROOT / "docs" / "de"
PAGES = sorted(DOCS_DE.glob("*.md"))

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`(chatbridge(?: [^`\n]*)?)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_VARIABLE = re.compile(r"\bCHATBRIDGE_[A-Z0-9_]*[A-Z0-9]\b")
_SHELL_END = {"#", ">", ">>", "|", "&&", ";", "2>&1"}


def commands_in(text: str) -> list[str]:
    """The `chatbridge …` command lines of a page: in code blocks (a line starting with it) and in inline code."""
    found = []
    for block in _FENCE.findall(text):
        found += [line.strip() for line in block.splitlines() if line.strip().startswith("chatbridge ")]
    outside = _FENCE.sub("", text)
    found += _INLINE.findall(outside)
    return found


def command_problems(line: str, root: Any) -> tuple[list[str], list[str]]:
    """(the command path, what is wrong with the line): an unknown command, or an option the command lacks.

    `root` is the click command typer builds (typer brings its own click: groups are told by their `commands`)."""
    words = line.split()[1:]
    for index, word in enumerate(words):
        if word in _SHELL_END or word.startswith("#"):
            words = words[:index]
            break
    path: list[str] = []
    command = root
    rest = words
    while rest and getattr(command, "commands", None) is not None and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            return path, [f"{line!r}: no command {' '.join(['chatbridge', *path, rest[0]])!r}"]
        path.append(rest[0])
        command, rest = sub, rest[1:]
    known = {option for param in command.params for option in param.opts}
    wrong = [w.split("=", 1)[0] for w in rest if w.startswith("--") and w.split("=", 1)[0] not in known]
    return path, [f"{line!r}: {' '.join(['chatbridge', *path])} has no option {w}" for w in wrong]


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address, mail, or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            problems.append(f"{page.name}: the link {target!r} leads nowhere")
    return problems


def known_variables() -> str:
    """Where chatbridge's variables are named: its source and the English documentation."""
    sources = [*(ROOT / "src" / "chatbridge").rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    return "\n".join(path.read_text(encoding="utf-8") for path in sources)


def test_the_german_docs_exist_and_the_readme_links_them() -> None:
    assert DOCS_DE / "README.md" in PAGES
    assert len(PAGES) > 1
    assert "docs/de/README.md" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_exists_with_its_options(page: Path) -> None:
    root = typer.main.get_command(app)
    runner = CliRunner()
    problems = []
    commands = commands_in(page.read_text(encoding="utf-8"))
    for line in commands:
        path, wrong = command_problems(line, root)
        problems += wrong
        if not wrong:
            result = runner.invoke(app, [*path, "--help"])
            if result.exit_code != 0:
                problems.append(f"{line!r}: `--help` exited {result.exit_code}: {result.output[-300:]}")
    assert not problems, "\n".join(problems)


def test_the_pages_show_commands() -> None:
    shown = {line for page in PAGES for line in commands_in(page.read_text(encoding="utf-8"))}
    for needed in ("chatbridge audit verify", "chatbridge audit report", "chatbridge gdpr forget"):
        assert any(line.startswith(needed) for line in shown), needed


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    problems = link_problems(page, page.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_every_variable_named_is_one_chatbridge_knows() -> None:
    known = set(_VARIABLE.findall(known_variables()))
    named = {name for page in PAGES for name in _VARIABLE.findall(page.read_text(encoding="utf-8"))}
    assert named, "the pages name no variable at all: is the pattern still right?"
    assert not named - known, sorted(named - known)


def test_the_default_periods_stated_are_the_configured_defaults() -> None:
    fields = Settings.model_fields
    full_use, view = fields["full_use"].default, fields["view"].default
    assert isinstance(full_use, timedelta) and isinstance(view, timedelta)
    chat = (DOCS_DE / "chat.md").read_text(encoding="utf-8")
    assert f"| **FULL_USE** | {full_use.days} Tage |" in chat
    assert f"| **VIEW** | {view.days} Tage |" in chat
    assert f"P{full_use.days}D" in chat and f"P{view.days}D" in chat


# -- the checks can fail: each one rejects a page that is wrong ---------------------------------------------------


def test_the_command_check_rejects_unknown_commands_and_options() -> None:
    root = typer.main.get_command(app)
    text = "```sh\nchatbridge audit persn --org x\n```\nand `chatbridge audit report --org x --persn y`\n"
    lines = commands_in(text)
    assert lines == ["chatbridge audit persn --org x", "chatbridge audit report --org x --persn y"]
    assert command_problems(lines[0], root)[1] == [
        "'chatbridge audit persn --org x': no command 'chatbridge audit persn'"
    ]
    assert command_problems(lines[1], root)[1] == [
        "'chatbridge audit report --org x --persn y': chatbridge audit report has no option --persn"
    ]
    assert command_problems("chatbridge audit report --org x --out a.html  # comment --x", root) == (
        ["audit", "report"],
        [],
    )


def test_the_link_check_rejects_a_link_to_nowhere() -> None:
    text = "[ok](chat.md) [anchor](#x) [web](https://example.org) [gone](nirgends.md#abschnitt)"
    assert link_problems(DOCS_DE / "README.md", text) == ["README.md: the link 'nirgends.md#abschnitt' leads nowhere"]
