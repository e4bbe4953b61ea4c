"""Typed settings, read from the environment at the edge (never at import, never inside steps)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.errors import TerminalError

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    B = TypeVar("B", bound=Block)


class MistralSettings(BaseSettings):
    """``MISTRAL_API_KEY`` and ``MISTRAL_SERVER_URL`` (the emulator, in tests and the demo).
    Prefect blocks are tried first: the ``MistralCredentials`` block ``MISTRAL_CREDENTIALS_BLOCK``
    names, then the Secret block ``MISTRAL_API_KEY_BLOCK`` names."""

    model_config = SettingsConfigDict(env_prefix="MISTRAL_", extra="ignore")

    api_key: SecretStr | None = None
    credentials_block: str = "mistral"
    api_key_block: str = "mistral-api-key"
    server_url: str | None = None
    timeout_ms: int = 300_000
    # After a create whose outcome is unknown, how long a job may take to show in listings.
    listing_lag_seconds: float = 60.0
    # Mistral keeps a finished job's results downloadable this long (known limitations: 24 h).
    results_retention_hours: float = 24.0


def mistral_settings() -> MistralSettings:
    """The settings, with the key (and the server URL, when it sets one and
    ``MISTRAL_SERVER_URL`` does not) from the ``MistralCredentials`` block when it exists, else
    the key from the Secret block when it exists, else ``MISTRAL_API_KEY``. The key stays a
    ``SecretStr``: it never prints."""
    from tasks.edges.credentials import MistralCredentials

    settings = MistralSettings()
    credentials = load_block(MistralCredentials, settings.credentials_block)
    if credentials is not None:
        update: dict[str, Any] = {"api_key": credentials.api_key}
        if credentials.server_url and not settings.server_url:  # MISTRAL_SERVER_URL wins
            update["server_url"] = credentials.server_url
        return settings.model_copy(update=update)
    key = secret_block(settings.api_key_block)
    return settings.model_copy(update={"api_key": key}) if key is not None else settings


def load_block(kind: type[B], name: str) -> B | None:
    """The block of type ``kind`` named ``name``; None when there is no such block (a block that
    exists but does not load, e.g. of another schema, raises)."""
    if not name:
        return None
    from prefect.exceptions import ObjectNotFound

    try:
        loaded = kind.load(name, _sync=True)  # type: ignore[call-arg]
    except ObjectNotFound:
        return None
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        if isinstance(exc.__cause__ or exc.__context__, ObjectNotFound):
            return None
        raise
    return cast("B", loaded)


def secret_block(name: str) -> SecretStr | None:
    """The value of the Secret block ``name``; None when there is no such block."""
    from prefect.blocks.system import Secret

    block = load_block(Secret, name)
    return None if block is None else SecretStr(str(block.get()))


class StorageSettings(BaseSettings):
    """The standard AWS variables, for ``s3://`` inputs, outputs and staging. Frozen, so that
    equal settings share one filesystem."""

    model_config = SettingsConfigDict(env_prefix="AWS_", extra="ignore", frozen=True)

    endpoint_url: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    region: str | None = None
    default_region: str | None = None


class StorageCredentialsError(TerminalError):
    """The AwsCredentials block named for object storage is missing or not usable here."""

    expected = True


def storage_settings(block: str) -> StorageSettings:
    """The object storage settings: from the prefect-aws ``AwsCredentials`` block ``block`` when
    named (its access key, secret, session token, region and ``aws_client_parameters``'
    ``endpoint_url``; a field it leaves empty falls back to its ``AWS_*`` variable), else from
    the ``AWS_*`` variables alone."""
    if not block:
        return StorageSettings()
    from prefect_aws.credentials import AwsCredentials

    aws = load_block(AwsCredentials, block)
    if aws is None:
        raise StorageCredentialsError(
            f"There is no AwsCredentials block named {block!r} (the storage_credentials "
            "parameter): create it (README: Operations guide, Secrets and settings) on the "
            "Prefect server this run uses, or leave storage_credentials empty to use the AWS_* "
            "variables."
        )
    if aws.profile_name or aws.assume_role_arn:
        raise StorageCredentialsError(
            f"The AwsCredentials block {block!r} names a profile or a role to assume, which "
            "s3:// storage here does not use: give the block an access key and secret instead, "
            "or leave storage_credentials empty and configure the machine's AWS_* variables."
        )
    given: dict[str, Any] = {
        "access_key_id": aws.aws_access_key_id,
        "secret_access_key": aws.aws_secret_access_key,
        "session_token": aws.aws_session_token,
        "region": aws.region_name,
        "endpoint_url": aws.aws_client_parameters.endpoint_url,
    }
    return StorageSettings(**{name: value for name, value in given.items() if value})
