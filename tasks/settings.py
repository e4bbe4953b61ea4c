"""Typed settings, read from the environment at the edge (never at import, never inside steps)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class MistralSettings(BaseSettings):
    """``MISTRAL_API_KEY`` and ``MISTRAL_SERVER_URL`` (the emulator, in tests and the demo)."""

    model_config = SettingsConfigDict(env_prefix="MISTRAL_", extra="ignore")

    api_key: SecretStr | None = None
    server_url: str | None = None
    timeout_ms: int = 300_000


class StorageSettings(BaseSettings):
    """The standard AWS variables, for ``s3://`` inputs, outputs and staging."""

    model_config = SettingsConfigDict(env_prefix="AWS_", extra="ignore")

    endpoint_url: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    region: str | None = None
    default_region: str | None = None
