"""`chatbridge config check`: the effective configuration with its sources and secrets masked, and one clear line
per bad setting."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.kafka_support import CHATBRIDGE


def check(tmp_path: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    token = tmp_path / "token"
    token.write_text("syt_not_a_real_token\n")
    env.update({"CHATBRIDGE_MATRIX_TOKEN_FILE": str(token), **variables})
    return subprocess.run([CHATBRIDGE, "config", "check", *args], capture_output=True, text=True, env=env, timeout=60)


def test_good_settings_print_with_their_sources_and_masked_secrets(tmp_path: Path) -> None:
    config = tmp_path / "chatbridge.toml"
    config.write_text('store = "postgres"\npostgres_host = "db.internal"\n[reconcile]\nconcurrency = 8\n')
    result = check(
        tmp_path, "--json", CHATBRIDGE_CONFIG_FILE=str(config), CHATBRIDGE_POSTGRES_PASSWORD="hunter2-secret",
        CHATBRIDGE_POSTGRES_HOST="db.from-env", CHATBRIDGE_MATRIX_TOKEN="syt_secret_token_value",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert "syt_secret_token_value" not in result.stdout + result.stderr
    rows = {row["variable"]: row for row in json.loads(result.stdout)["settings"]}
    assert rows["CHATBRIDGE_STORE"] == {"variable": "CHATBRIDGE_STORE", "value": "postgres",
                                        "source": f"{config} store"}  # fmt: skip
    assert rows["CHATBRIDGE_POSTGRES_HOST"]["value"] == "db.from-env"  # the environment wins over the file
    assert rows["CHATBRIDGE_POSTGRES_HOST"]["source"] == "CHATBRIDGE_POSTGRES_HOST"
    assert rows["CHATBRIDGE_RECONCILE_CONCURRENCY"]["value"] == 8
    assert rows["CHATBRIDGE_RECONCILE_CONCURRENCY"]["source"] == f"{config} [reconcile] concurrency"
    assert rows["CHATBRIDGE_POSTGRES_PASSWORD"]["value"] == "**********"
    assert rows["CHATBRIDGE_MATRIX_TOKEN"]["value"] == "**********"
    assert rows["CHATBRIDGE_FULL_USE"] == {"variable": "CHATBRIDGE_FULL_USE", "value": "P2D", "source": "default"}
    table = check(tmp_path, CHATBRIDGE_POSTGRES_PASSWORD="hunter2-secret")
    assert table.returncode == 0 and "CHATBRIDGE_HTTP_PORT" in table.stdout and "hunter2" not in table.stdout


def test_each_bad_setting_gets_one_line_naming_the_variable_and_what_it_expects(tmp_path: Path) -> None:
    result = check(
        tmp_path, CHATBRIDGE_STORE="mysql", CHATBRIDGE_RECONCILE_CONCURRENCY="0", CHATBRIDGE_HTTP_PORT="http",
        CHATBRIDGE_POSTGRES_PASSWORD="x",
    )  # fmt: skip
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: CHATBRIDGE_STORE: Input should be 'sqlite' or 'postgres' (got 'mysql')",
        "error: CHATBRIDGE_HTTP_PORT: Input should be a valid integer, unable to parse string as an integer (got 'http')",
        "error: CHATBRIDGE_RECONCILE_CONCURRENCY: Input should be greater than or equal to 1 (got '0')",
    ]


def test_a_bad_file_names_the_file_its_key_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "chatbridge.toml"
    config.write_text("batch_size = -1\n[matrix]\ntimeout = 0\n")
    result = check(tmp_path, CHATBRIDGE_CONFIG_FILE=str(config))
    assert result.returncode == 1
    assert f"error: {config} batch_size: Input should be greater than or equal to 1 (got -1)" in result.stderr
    assert f"error: {config} [matrix] timeout: Input should be greater than 0 (got 0)" in result.stderr
    config.write_text("batch_sise = 10\n[reconcile]\nconcurency = 2\n")
    result = check(tmp_path, CHATBRIDGE_CONFIG_FILE=str(config))
    assert result.returncode == 1
    assert f"error: {config}: unknown key 'batch_sise'" in result.stderr
    assert f"error: {config}: unknown key 'concurency' in [reconcile]" in result.stderr
    config.write_text("store = \n")
    result = check(tmp_path, CHATBRIDGE_CONFIG_FILE=str(config))
    assert result.returncode == 1 and f"CHATBRIDGE_CONFIG_FILE: {config} is not valid TOML" in result.stderr
    result = check(tmp_path, CHATBRIDGE_CONFIG_FILE=str(tmp_path / "missing.toml"))
    assert result.returncode == 1 and "CHATBRIDGE_CONFIG_FILE: cannot read" in result.stderr


def test_a_missing_token_is_named(tmp_path: Path) -> None:
    result = check(tmp_path, CHATBRIDGE_MATRIX_TOKEN_FILE=str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "no Matrix access token: set CHATBRIDGE_MATRIX_TOKEN or CHATBRIDGE_MATRIX_TOKEN_FILE" in result.stderr


def test_other_commands_stop_on_a_bad_setting_with_the_same_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBRIDGE_")}
    env["CHATBRIDGE_FULL_USE"] = "two days"
    result = subprocess.run([CHATBRIDGE, "state", "--now", "2026-12-01"], capture_output=True, text=True, env=env,
                            timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: CHATBRIDGE_FULL_USE: ") and "(got 'two days')" in result.stderr
