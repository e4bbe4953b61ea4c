"""The ``MistralCredentials`` Prefect block: the Mistral API key, stored encrypted by the Prefect
server and shown as ``********`` in the UI and the API, with the optional URL of another server
(the emulator, a private deployment).

Registered through the ``prefect.collections`` entry point (``pyproject.toml``): a Prefect server
started from this project's environment, and ``prefect block register -m
tasks.edges.credentials``, make the block type appear in the UI's block catalog. Settings read
it first (``tasks.edges.settings.mistral_settings``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr

if TYPE_CHECKING:
    from tasks.edges.mistral import MistralGateway


class MistralCredentials(CredentialsBlock):
    """The key to the Mistral API, and the URL of the server when it is not Mistral's own.

    Example:
        Create the block once, then let every run read it:
        ```python
        from tasks.edges.credentials import MistralCredentials

        MistralCredentials(api_key=input("Mistral API key: ")).save("mistral")
        mistral_credentials = MistralCredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Mistral Credentials"
    _documentation_url = HttpUrl("https://docs.mistral.ai/capabilities/batch/")

    api_key: SecretStr = Field(
        description="The Mistral API key; stored encrypted and never shown in plain text.",
        title="API key",
    )
    server_url: str | None = Field(
        default=None,
        description="The API's base URL, e.g. an emulator's http://127.0.0.1:8088; empty for "
        "Mistral's own https://api.mistral.ai.",
        title="Server URL",
    )

    def get_client(self) -> MistralGateway:
        """The project's Mistral gateway (files and batch jobs, errors marked transient or
        terminal) with this block's key and URL; the other settings come from the
        environment."""
        from tasks.edges.mistral import MistralGateway
        from tasks.edges.settings import MistralSettings

        return MistralGateway(MistralSettings(api_key=self.api_key, server_url=self.server_url))
