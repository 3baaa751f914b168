"""Where a setting comes from: `CHATBRIDGE_…` environment variables first, then an optional TOML file, then defaults.

The file is named by `CHATBRIDGE_CONFIG_FILE`. Its top level holds `chatbridge.settings.Settings` (keys are the
variable names without `CHATBRIDGE_`, lower case), `[matrix]` the chat backend's and `[reconcile]` the
reconciler's settings:

```toml
store = "postgres"
postgres_host = "db.internal"
[matrix]
base_url = "https://matrix.example.org"
[reconcile]
concurrency = 8
```

A bad value gets one line naming the variable (or the file's key) and what it expects (`explain`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

CONFIG_FILE_VARIABLE = "CHATBRIDGE_CONFIG_FILE"


class ConfigurationError(ValueError):
    """A setting that cannot be used, explained in lines that each name the variable (or file key)."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def config_file() -> Path | None:
    value = os.environ.get(CONFIG_FILE_VARIABLE)
    return Path(value) if value else None


def read_config_file() -> dict[str, Any]:
    """The file's whole content ({} without a file); a missing or unreadable file is a ConfigurationError."""
    path = config_file()
    if path is None:
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigurationError([f"{CONFIG_FILE_VARIABLE}: cannot read {path} ({error.strerror})"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError([f"{CONFIG_FILE_VARIABLE}: {path} is not valid TOML ({error})"]) from None


class FileSettings(BaseSettings):
    """Settings read from the environment under `env_prefix`, then from `file_section` of the config file."""

    file_section: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if config_file() is None:
            return init_settings, env_settings, file_secret_settings
        file_source = InitSettingsSource(settings_cls, init_kwargs=cls.file_values())  # its section, if any
        return init_settings, env_settings, file_source, file_secret_settings

    @classmethod
    def prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", ""))

    @classmethod
    def variable(cls, field_name: str) -> str:
        return f"{cls.prefix()}{field_name}".upper()

    @classmethod
    def file_values(cls) -> dict[str, Any]:
        table: Any = read_config_file()
        for header in cls.file_section:
            table = table.get(header, {}) if isinstance(table, dict) else {}
        if not isinstance(table, dict):
            return {}
        return {k: v for k, v in table.items() if not isinstance(v, dict)}

    @classmethod
    def source_of(cls, field_name: str) -> str:
        """Where the effective value of a field comes from: the variable, the file's key, or the default."""
        if cls.variable(field_name) in {k.upper() for k in os.environ}:
            return cls.variable(field_name)
        if field_name in cls.file_values():
            section = "".join(f"[{h}] " for h in cls.file_section)
            return f"{config_file()} {section}{field_name}"
        return "default"

    @classmethod
    def load(cls) -> Any:
        """The settings, or a ConfigurationError whose lines name each bad variable and what it expects."""
        try:
            return cls()
        except ValidationError as error:
            raise ConfigurationError(explain(cls, error)) from None

    @classmethod
    def unknown_file_keys(cls, known_sections: tuple[str, ...] = ()) -> list[str]:
        keys = set(cls.file_values()) - set(cls.model_fields)
        return sorted(keys - set(known_sections))


def explain(settings_cls: type[FileSettings], error: ValidationError) -> list[str]:
    """One line per problem: the variable (or the file key it came from), what it expects, and what it got."""
    lines = []
    for problem in error.errors():
        field_name = str(problem["loc"][0]) if problem["loc"] else ""
        where = settings_cls.source_of(field_name) if field_name else settings_cls.prefix() + "*"
        if where == "default":
            where = settings_cls.variable(field_name)
        secret = any(word in field_name for word in ("password", "token", "secret"))
        got = "" if secret or problem["type"] == "missing" else f" (got {problem.get('input')!r})"
        lines.append(f"{where}: {problem['msg']}{got}")
    return lines
