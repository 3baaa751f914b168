"""A real Synapse for integration tests: started by the project's script if it is not running, never skipped.

Import the fixtures into a test module (`from tests.integration.synapse_support import synapse, matrix, ...`).
Users are registered through the shared-secret admin registration, so tests need no open registration and no
logins (which Synapse limits to a few per address). Every test uses its own organisation id, so tests never
see each other's rooms or accounts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatbridge.backends.matrix import MatrixBackend
from chatbridge.backends.settings import MatrixSettings

__all__ = ["synapse", "matrix", "org"]  # the fixtures, for `from … import *` in test modules

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services" / "synapse.sh"
# the port synapse.sh starts it on (CHATBRIDGE_SYNAPSE_PORT: a second Synapse beside the shared one)
BASE_URL = f"http://127.0.0.1:{os.environ.get('CHATBRIDGE_SYNAPSE_PORT', '8008')}"
SERVER = "localhost"


def services_dir() -> Path:
    return Path(os.environ.get("CHATBRIDGE_SERVICES_DIR") or Path.home() / ".cache" / "chatbridge-services")


def synapse_script(action: str) -> None:
    """Run `synapse.sh start|stop`; a failure fails the test (CI must not skip the chat backend)."""
    result = subprocess.run([str(SCRIPT), action], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"synapse.sh {action} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@dataclass
class Account:
    user_id: str
    token: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=BASE_URL, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


@dataclass
class Synapse:
    """The running homeserver: register accounts, make raw admin calls."""

    base_url: str
    server_name: str
    bot_token: str
    shared_secret: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.bot_token}"}, timeout=60)

    def register(self, localpart: str, *, admin: bool = False) -> Account:
        password = uuid.uuid4().hex
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            nonce = client.get("/_synapse/admin/v1/register").json()["nonce"]
            mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
            mac.update(
                b"\x00".join(
                    [nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"]
                )
            )
            body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac.hexdigest()}
            response = client.post("/_synapse/admin/v1/register", json=body)
        assert response.status_code == 200, response.text
        return Account(response.json()["user_id"], response.json()["access_token"])

    def register_user(self, user_id: str) -> Account:
        return self.register(user_id.removeprefix("@").split(":", 1)[0])

    def deactivate(self, user_id: str) -> None:
        with self.admin() as client:
            assert client.post(f"/_synapse/admin/v1/deactivate/{user_id}", json={"erase": False}).status_code == 200

    def delete_room(self, room: str) -> None:
        """Delete and purge a room as an admin would, waiting until Synapse says the deletion is complete."""
        with self.admin() as client:
            delete_id = client.request("DELETE", f"/_synapse/admin/v2/rooms/{room}", json={"purge": True}).json()
            for _ in range(200):
                status = client.get(f"/_synapse/admin/v2/rooms/delete_status/{delete_id['delete_id']}").json()
                if status["status"] == "complete":
                    return
                time.sleep(0.05)
        raise AssertionError("the room's deletion did not complete")

    def backend(self, **kwargs: Any) -> MatrixBackend:
        return MatrixBackend(self.base_url, self.server_name, self.bot_token, **kwargs)


def running() -> bool:
    try:
        return httpx.get(f"{BASE_URL}/_matrix/client/versions", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def ensure_running() -> None:
    if not running():
        synapse_script("start")


@pytest.fixture(scope="session")
def synapse() -> Synapse:
    ensure_running()
    directory = services_dir() / "synapse"
    return Synapse(
        BASE_URL,
        SERVER,
        (directory / "bot_token").read_text().strip(),
        (directory / "registration_shared_secret").read_text().strip(),
    )


@pytest.fixture
def matrix(synapse: Synapse) -> Iterator[MatrixBackend]:
    backend = MatrixBackend.from_settings(MatrixSettings(base_url=BASE_URL, server_name=SERVER))
    yield backend
    backend.close()


@pytest.fixture
def org() -> str:
    """An organisation id of this test alone."""
    return f"t{uuid.uuid4().hex[:12]}"
