"""Configuration of the Matrix backend (`CHATBRIDGE_MATRIX_…`).

Kept apart from `chatbridge.settings` so that a worker without a chat backend (ingest, state, replay) never needs
a token. The token is a `SecretStr`: it prints as `**********`, so a configuration dump cannot leak it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from chatbridge.backends.user_ids import DEFAULT_TEMPLATE
from chatbridge.config_file import FileSettings


def _services_dir() -> Path:
    return Path(os.environ.get("CHATBRIDGE_SERVICES_DIR") or Path.home() / ".cache" / "chatbridge-services")


class MatrixSettings(FileSettings):
    model_config = SettingsConfigDict(env_prefix="CHATBRIDGE_MATRIX_", extra="ignore")
    file_section = ("matrix",)

    base_url: str = Field(default="http://127.0.0.1:8008", description="The homeserver's client (and admin) API.")
    server_name: str = Field(default="localhost", description="The homeserver's name, the part after ':' in ids.")
    token: SecretStr | None = Field(default=None, description="The bridge user's access token (a server admin).")
    token_file: Path | None = Field(
        default=None,
        description="A file holding the token (default: the local Synapse's <services>/synapse/bot_token).",
    )
    user_id_template: str = Field(default=DEFAULT_TEMPLATE, description="A person's Matrix id.")
    timeout: float = Field(default=10.0, gt=0, description="Seconds per HTTP request.")
    max_attempts: int = Field(default=5, ge=1, description="Tries per request on timeouts, 5xx and 429.")
    max_retry_after: float = Field(default=30.0, ge=0, description="The longest 429 wait honoured in place.")

    def access_token(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        path = self.token_file or _services_dir() / "synapse" / "bot_token"
        try:
            return path.read_text().strip()
        except OSError as error:
            raise ValueError(
                f"no Matrix access token: set CHATBRIDGE_MATRIX_TOKEN or CHATBRIDGE_MATRIX_TOKEN_FILE "
                f"({path}: {error.strerror})"
            ) from None
