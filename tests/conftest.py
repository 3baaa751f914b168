"""Session fixtures for the real services (see tests/services.py)."""

from tests.services import kafka_bootstrap, postgres_env, postgres_server

__all__ = ["kafka_bootstrap", "postgres_env", "postgres_server"]
