"""Typed settings, read from the environment at the edge (never at import, never inside steps)."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class MistralSettings(BaseSettings):
    """``MISTRAL_API_KEY`` and ``MISTRAL_SERVER_URL`` (the emulator, in tests and the demo);
    ``MISTRAL_API_KEY_BLOCK`` names the Prefect Secret block tried first."""

    model_config = SettingsConfigDict(env_prefix="MISTRAL_", extra="ignore")

    api_key: SecretStr | None = None
    api_key_block: str = "mistral-api-key"
    server_url: str | None = None
    timeout_ms: int = 300_000
    # After a create whose outcome is unknown, how long a job may take to show in listings.
    listing_lag_seconds: float = 60.0
    # Mistral keeps a finished job's results downloadable this long (known limitations: 24 h).
    results_retention_hours: float = 24.0


def mistral_settings() -> MistralSettings:
    """The settings, with the API key from the Prefect Secret block when it exists (else
    ``MISTRAL_API_KEY``). The key stays a ``SecretStr``: it never prints."""
    settings = MistralSettings()
    key = secret_block(settings.api_key_block)
    return settings.model_copy(update={"api_key": key}) if key is not None else settings


def secret_block(name: str) -> SecretStr | None:
    """The value of the Secret block ``name``; None when there is no such block."""
    if not name:
        return None
    from prefect.blocks.system import Secret
    from prefect.exceptions import ObjectNotFound

    try:
        block: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except (ValueError, ObjectNotFound):  # Prefect: "Unable to find block document named ..."
        return None
    return SecretStr(str(block.get()))


class StorageSettings(BaseSettings):
    """The standard AWS variables, for ``s3://`` inputs, outputs and staging."""

    model_config = SettingsConfigDict(env_prefix="AWS_", extra="ignore")

    endpoint_url: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    region: str | None = None
    default_region: str | None = None
