"""`chatbridge keys …`: make the audit's key file once, and name the configured keys without showing them.

Only what is public is printed: the verify key, the signing key's id as the checkpoints carry it, and a fingerprint
of the pseudonym key. The secrets stay in the file (or the environment) they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chatbridge.bootstrap import audit_keys
from chatbridge.cli.common import err, load_settings, print_json
from chatbridge.journal.keys import AuditSettings, KeyIdentity, default_key_file, generate_key_file

keys_app = typer.Typer(
    help="The audit keys: make a key file once (`generate`), name the configured keys (`show`).",
    no_args_is_help=True,
)


def _lines(identity: KeyIdentity) -> list[str]:
    return [
        f"verify key:       {identity.verify_key or '-'}   (public: CHATBRIDGE_AUDIT_VERIFY_KEY for auditors)",
        f"signing key id:   {identity.key_id or '-'}   (as the checkpoints carry it)"
        + ("" if identity.holds_signing_key else "; the signing key itself is not configured here"),
        f"pseudonym key:    fingerprint {identity.pseudonym_fingerprint}",
    ]


def _document(identity: KeyIdentity) -> dict[str, object]:
    return {
        "verify_key": identity.verify_key,
        "key_id": identity.key_id,
        "pseudonym_key_fingerprint": identity.pseudonym_fingerprint,
        "signing_key_configured": identity.holds_signing_key,
    }


@keys_app.command("generate")
def generate(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The new key file; default: CHATBRIDGE_AUDIT_KEY_FILE, else the store's default key file. "
            "An existing file is never overwritten.",
        ),
    ] = None,
) -> None:
    """Write a new key file (mode 0600) with fresh signing and pseudonym keys, once per installation; print where,
    the public verify key and the fingerprints — never a secret."""
    if out is None:
        settings = load_settings(code=2)
        out = AuditSettings().key_file or default_key_file(settings.store, settings.database)
    identity = KeyIdentity.of(generate_key_file(out))
    print(f"wrote new audit keys to {out} (mode 0600)")
    for line in _lines(identity):
        print(line)
    err.print(
        "Keep the file secret and back it up apart from the store: a store refuses other keys, and without these "
        "its pseudonyms cannot be found nor its checkpoints verified. Give it as CHATBRIDGE_AUDIT_KEY_FILE.",
        highlight=False,
    )


@keys_app.command("show")
def show(
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON document.")] = False,
) -> None:
    """Name the configured keys: the public verify key (for auditors), the signing key's id as the checkpoints
    carry it, and a fingerprint of the pseudonym key. No secret is printed; no key is made."""
    identity = KeyIdentity.of(audit_keys(load_settings(code=2), create=False))
    if json_output:
        print_json(_document(identity))
        return
    for line in _lines(identity):
        print(line)
