"""docs/contract.md is generated from the message models: it must equal what `chatbridge schema --markdown` prints."""

from __future__ import annotations

import subprocess

from chatbridge.domain.contract import contract_markdown
from chatbridge.domain.messages import message_json_schema
from tests.kafka_support import CHATBRIDGE
from tests.services import ROOT


def test_docs_contract_md_matches_the_models() -> None:
    assert (ROOT / "docs" / "contract.md").read_text() == contract_markdown(), (
        "docs/contract.md drifted from domain/messages.py: run `chatbridge schema --markdown > docs/contract.md`"
    )


def test_every_message_type_and_field_is_in_it() -> None:
    document = subprocess.run([CHATBRIDGE, "schema", "--markdown"], capture_output=True, text=True, check=True).stdout
    schema = message_json_schema()
    for type_name in schema["discriminator"]["mapping"]:
        assert f"`{type_name}`" in document
    for model in schema["$defs"].values():
        for field in model.get("properties", {}):
            assert f"| `{field}` |" in document
