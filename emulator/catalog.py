"""The models the emulator serves, and the configurable fine-tuned classifiers.

Classifier targets can be replaced with ``--classifiers FILE`` (YAML or JSON)::

    ft:classifier:ministral-3b-latest:acme0001:20250101:tickets01:
      targets:
        priority: {urgent: [asap, outage, down], normal: [], low: [whenever]}
        topic: {billing: [invoice], shipping: [parcel], other: []}

Each label lists extra words that speak for it (the label's own words always do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import yaml

EMBED_MODELS: dict[str, tuple[int, int]] = {
    # model: (default dimension, largest dimension)
    "mistral-embed": (1024, 1024),
    "mistral-embed-2312": (1024, 1024),
    "codestral-embed": (1536, 3072),
    "codestral-embed-2505": (1536, 3072),
}

_MODERATION_2411 = (
    "sexual",
    "hate_and_discrimination",
    "violence_and_threats",
    "dangerous_and_criminal_content",
    "selfharm",
    "health",
    "financial",
    "law",
    "pii",
)
_MODERATION_2603 = (
    "sexual",
    "hate_and_discrimination",
    "violence_and_threats",
    "dangerous",
    "criminal",
    "selfharm",
    "health",
    "financial",
    "law",
    "pii",
    "jailbreaking",
)
MODERATION_MODELS: dict[str, tuple[str, ...]] = {
    "mistral-moderation-2411": _MODERATION_2411,
    "mistral-moderation-2603": _MODERATION_2603,
    "mistral-moderation-latest": _MODERATION_2603,
}

DEFAULT_CLASSIFIER = "ft:classifier:ministral-3b-latest:emulator:20250101:sentiment"
DEFAULT_CLASSIFIERS: dict[str, dict[str, dict[str, list[str]]]] = {
    DEFAULT_CLASSIFIER: {
        "sentiment": {"positive": [], "negative": [], "neutral": []},
        "toxicity": {"toxic": [], "clean": []},
    },
}


ModelNaming = Literal["alias", "version"]


@dataclass(frozen=True)
class Catalog:
    """The classifiers served, and how model aliases behave.

    ``aliases`` maps an alias to the version that answers it (``mistral-moderation-latest`` →
    ``mistral-moderation-2411``): the version decides the answer (its categories, its vectors).
    Whether the service *says* which version answered is uncertain, so both readings are
    served: ``answer_model`` is what a response body's ``model`` names, ``job_model`` what a
    job's ``model`` names once created (``alias``: the name asked for, as seen on the real
    service for ``mistral-embed``; ``version``: the version behind it).
    """

    classifiers: dict[str, dict[str, dict[str, list[str]]]]
    aliases: dict[str, str] = field(default_factory=dict)
    answer_model: ModelNaming = "alias"
    job_model: ModelNaming = "alias"

    @classmethod
    def load(cls, path: Path | None) -> Catalog:
        if path is None:
            return cls(DEFAULT_CLASSIFIERS)
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        classifiers = {}
        for model, spec in (raw or {}).items():
            targets = spec.get("targets") if isinstance(spec, dict) else None
            if not model.startswith("ft:classifier:") or not isinstance(targets, dict):
                raise ValueError(
                    f"classifiers file {path}: entry {model!r} needs an 'ft:classifier:' id "
                    "and a 'targets' mapping of target -> label -> keywords"
                )
            classifiers[model] = {
                target: {str(label): list(words or []) for label, words in labels.items()}
                for target, labels in targets.items()
            }
        return cls(classifiers)

    def with_models(
        self,
        aliases: dict[str, str],
        answer_model: ModelNaming = "alias",
        job_model: ModelNaming = "alias",
    ) -> Catalog:
        return replace(self, aliases=aliases, answer_model=answer_model, job_model=job_model)

    def version(self, model: str) -> str:
        """The version that answers ``model`` (itself unless it is a configured alias)."""
        return self.aliases.get(model, model)

    def answered_by(self, model: str) -> str:
        """What a response body's ``model`` says for a request that asked for ``model``."""
        return self.version(model) if self.answer_model == "version" else model

    def job_named(self, model: str | None) -> str | None:
        """What a job created for ``model`` reports as its ``model``."""
        if model is None or self.job_model == "alias":
            return model
        return self.version(model)

    @staticmethod
    def is_chat_model(model: str) -> bool:
        """Any model that is not an embedding, moderation or classifier model answers chat."""
        return not (
            model in EMBED_MODELS
            or model in MODERATION_MODELS
            or model.startswith("ft:classifier:")
        )
