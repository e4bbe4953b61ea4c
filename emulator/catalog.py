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
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Catalog:
    classifiers: dict[str, dict[str, dict[str, list[str]]]]

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

    @staticmethod
    def is_chat_model(model: str) -> bool:
        """Any model that is not an embedding, moderation or classifier model answers chat."""
        return not (
            model in EMBED_MODELS
            or model in MODERATION_MODELS
            or model.startswith("ft:classifier:")
        )
