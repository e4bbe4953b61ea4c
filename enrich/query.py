"""The vector of a query text: one direct ``/v1/embeddings`` call, with the table's model and
options, remembered in a small local cache so that asking again costs nothing.

The cache is a folder of small JSON files, one per (model, options, NFC text), under
``ENRICH_QUERY_CACHE`` (default ``$XDG_CACHE_HOME/enrich/queries``, else
``~/.cache/enrich/queries``). Each entry keeps the vector and the model version that answered
it, so a cached vector is checked against the table's versions like a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.edges.mistral import MistralGateway
from tasks.edges.settings import MistralSettings, mistral_settings


class QuerySettings(BaseSettings):
    """Where query vectors are cached, and whether a Prefect server holds the Mistral key."""

    model_config = SettingsConfigDict(extra="ignore")

    query_cache: Path | None = Field(default=None, validation_alias="ENRICH_QUERY_CACHE")
    xdg_cache_home: Path | None = Field(default=None, validation_alias="XDG_CACHE_HOME")
    prefect_api_url: str | None = Field(default=None, validation_alias="PREFECT_API_URL")

    def cache_folder(self) -> Path:
        if self.query_cache is not None:
            return self.query_cache
        return (self.xdg_cache_home or Path.home() / ".cache") / "enrich" / "queries"

    def mistral(self) -> MistralSettings:
        """The Mistral settings: with a Prefect server named (``PREFECT_API_URL``), the key is
        looked up as runs look it up (MistralCredentials block, Secret block,
        ``MISTRAL_API_KEY``); without one, from the ``MISTRAL_*`` variables alone — a block
        lookup would start a temporary Prefect server (half a minute) for one query."""
        return mistral_settings() if self.prefect_api_url else MistralSettings()


@dataclass(frozen=True)
class QueryVector:
    """A query text's vector, the model version that answered it (as the response named it),
    and whether it came from the local cache."""

    vector: np.ndarray
    answered_by: str
    cached: bool


class QueryCache:
    """One JSON file per (model, options, text) in ``folder``; written whole (a rename), so a
    reader sees an entry or nothing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def key(model: str, options: Mapping[str, Any], text: str) -> str:
        identity = json.dumps([model, dict(options), text], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(identity.encode()).hexdigest()

    def get(self, key: str) -> QueryVector | None:
        try:
            entry = json.loads((self.folder / f"{key}.json").read_text())
            vector = np.asarray(entry["vector"], dtype=np.float32)
            return QueryVector(vector, str(entry["answered_by"]), cached=True)
        except (OSError, ValueError, KeyError, TypeError):  # absent, or not an entry: ask again
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as sink:
                json.dump(entry, sink)
            Path(temporary).replace(self.folder / f"{key}.json")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def embed_query(
    text: str,
    model: str,
    options: Mapping[str, Any],
    settings: QuerySettings | None = None,
    versions: Collection[str] = (),
) -> QueryVector:
    """The vector of ``text`` (NFC-normalised, as the pipeline sends texts) from ``model`` with
    ``options`` (the request's own fields, e.g. ``output_dimension``): from the cache, else from
    one direct call, then cached. Like the pipeline's cache, a cached vector counts only if the
    version that answered it is one of ``versions`` (the table's; none given: any)."""
    settings = settings or QuerySettings()
    text = unicodedata.normalize("NFC", text)
    cache = QueryCache(settings.cache_folder())
    key = cache.key(model, options, text)
    found = cache.get(key)
    if found is not None and (not versions or found.answered_by in versions):
        return found
    values, answered_by = MistralGateway(settings.mistral()).embed(model, text, options)
    vector = np.asarray(values, dtype=np.float32)
    entry = {
        "model": model,
        "options": dict(options),
        "text": text,
        "answered_by": answered_by,
        "vector": vector.tolist(),
    }
    cache.put(key, entry)
    return QueryVector(vector, answered_by, cached=False)
