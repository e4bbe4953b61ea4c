"""Deterministic outputs: the same input and model give the same answer, in any process.

Nothing here draws from a global random state; every value is derived from a hash of the model
and the input text, so outputs survive emulator restarts and differ between models.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from emulator import lexicon

_POOL_ROWS = 1024  # random directions per model (small enough to stay in the CPU cache)
_NOISE_WEIGHTS = (1.0, 0.7, 0.5)  # three hashed directions per text: 1024³ noise vectors
_WORD_WEIGHT = 0.8  # each word adds its own direction, so texts sharing words point alike
_MAX_WORDS = 48  # distinct words that count, alphabetically first


def seed_of(*parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def unit_draw(*parts: str) -> float:
    """A number in [0, 1) fixed by the parts."""
    return (seed_of(*parts) >> 11) / float(1 << 53)


@lru_cache(maxsize=8)
def _directions(model: str, base_dimension: int) -> np.ndarray:
    """A fixed table of random directions per model, the same in every process."""
    rng = np.random.default_rng(seed_of(model, "directions", str(base_dimension)))
    return rng.standard_normal((_POOL_ROWS, base_dimension), dtype=np.float32)


def embed(model: str, texts: Sequence[str], dimension: int, base_dimension: int) -> np.ndarray:
    """Unit-norm float32 vectors, shape ``(len(texts), dimension)``.

    A vector is the sum of three directions picked by the text's hash and one per distinct word,
    drawn from a per-model table: deterministic, distinct for distinct texts, and visibly closer
    for texts that share words. The table is laid out over ``base_dimension`` and truncated, as
    Matryoshka embeddings keep their first dimensions.
    """
    picks: list[list[int]] = []
    for text in texts:
        seed = seed_of(model, text)
        words = sorted(lexicon.words(text))[:_MAX_WORDS]
        picks.append(
            [seed % _POOL_ROWS, (seed >> 20) % _POOL_ROWS, (seed >> 40) % _POOL_ROWS]
            + [zlib.crc32(word.encode()) % _POOL_ROWS for word in words]
        )
    # A padded (texts, slots) layout: padding slots weigh 0 and come last, so a text's sum is
    # the same whatever else shares its request.
    lengths = np.fromiter(map(len, picks), dtype=np.int64, count=len(picks))
    slots = int(lengths.max(initial=0))
    used = np.arange(slots) < lengths[:, None]
    rows = np.zeros((len(texts), slots), dtype=np.int64)
    rows[used] = np.fromiter(itertools.chain.from_iterable(picks), dtype=np.int64)
    weights = np.where(used, np.float32(_WORD_WEIGHT), np.float32(0))
    weights[:, : len(_NOISE_WEIGHTS)] = _NOISE_WEIGHTS
    table = _directions(model, base_dimension)
    picked = table.take(rows.ravel(), axis=0).reshape(len(texts), slots, base_dimension)
    vectors = np.einsum("ns,nsd->nd", weights, picked[:, :, :dimension])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def quantise(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """The ``output_dtype`` encodings: int8/uint8 scale to 127; binary packs sign bits."""
    if dtype == "int8":
        return np.clip(np.rint(vectors * 127), -128, 127).astype(np.int8)
    if dtype == "uint8":
        return np.clip(np.rint(vectors * 127) + 128, 0, 255).astype(np.uint8)
    if dtype in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=1)
        return packed.view(np.int8) if dtype == "binary" else packed
    return vectors


def moderate(model: str, texts: Sequence[str], categories: Sequence[str]) -> list[dict[str, Any]]:
    """One ``{"categories", "category_scores"}`` result per text; a category flags at 0.5."""
    results = []
    for text in texts:
        present = lexicon.words(text)
        scores: dict[str, float] = {}
        flags: dict[str, bool] = {}
        for category in categories:
            hits = len(present & lexicon.MODERATION[category])
            jitter = unit_draw(model, category, text)
            score = min(0.99, 0.55 + 0.15 * hits + 0.05 * jitter) if hits else 0.05 * jitter
            scores[category] = round(score, 6)
            flags[category] = score >= 0.5
        results.append({"categories": flags, "category_scores": scores})
    return results


def _softmax(logits: Sequence[float]) -> list[float]:
    peak = max(logits)
    exps = [math.exp(v - peak) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def classify(
    model: str, texts: Sequence[str], targets: Mapping[str, Mapping[str, Sequence[str]]]
) -> list[dict[str, Any]]:
    """One ``{target: {"scores": {label: p}}}`` result per text; scores per target sum to 1."""
    results = []
    for text in texts:
        present = lexicon.words(text)
        result = {}
        for target, labels in targets.items():
            logits = [
                3.0 * len(present & (frozenset(keywords) | lexicon.hints_for(label)))
                + unit_draw(model, target, label, text)
                for label, keywords in labels.items()
            ]
            probabilities = _softmax(logits)
            result[target] = {
                "scores": {
                    label: round(p, 6) for label, p in zip(labels, probabilities, strict=True)
                }
            }
        results.append(result)
    return results


def choose_label(options: Sequence[Any], text: str, salt: str) -> Any:
    """The enum value the text speaks for; a neutral-looking value, else a hashed pick, if none."""
    present = lexicon.words(text)
    hits = [len(present & lexicon.hints_for(str(option))) for option in options]
    best = max(hits, default=0)
    if best > 0:
        return options[hits.index(best)]
    for option in options:
        if lexicon.is_fallback(str(option)):
            return option
    return options[int(unit_draw(salt, text) * len(options))]


_COMBINATORS = ("anyOf", "oneOf", "allOf")


class SchemaError(ValueError):
    """The response_format schema uses something the emulator cannot satisfy."""


def instance_for(
    schema: Mapping[str, Any], text: str, root: Mapping[str, Any] | None = None
) -> Any:
    """A JSON value valid for ``schema`` (the subset structured outputs use), shaped by ``text``."""
    root = schema if root is None else root
    schema = _followed(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return choose_label(list(schema["enum"]), text, salt=repr(schema["enum"]))
    kind = _declared_type(schema)
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: instance_for(sub, text, root) for name, sub in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [instance_for(schema.get("items", {}), text, root) for _ in range(count)]
    return _scalar_for(kind, schema, text)


def _followed(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """The schema a generated value follows: ``$ref`` resolved and, unless the value is fixed
    (``const``, ``enum``), the first non-null option of ``anyOf``/``oneOf``/``allOf`` taken."""
    while True:
        if "$ref" in schema:
            schema = _resolve(root, schema["$ref"])
            continue
        if "const" in schema or "enum" in schema:
            return schema
        combinator = next((c for c in _COMBINATORS if c in schema), None)
        if combinator is None:
            return schema
        options = [s for s in schema[combinator] if s.get("type") != "null"]
        schema = (options or schema[combinator])[0]


def _declared_type(schema: Mapping[str, Any]) -> str:
    """The type a schema asks for: the first non-null one of a list; an object when it lists
    properties, else a string, when it names none."""
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return str(kind)


def _scalar_for(kind: str, schema: Mapping[str, Any], text: str) -> Any:
    if kind == "string":
        value = " ".join(text.split()[:6]) or "emulated"
        value = value[: schema.get("maxLength", len(value))]
        return value.ljust(schema.get("minLength", 0), ".")
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10))
        value = low + (high - low) * unit_draw("number", text)
        return int(value) if kind == "integer" else round(value, 4)
    if kind == "boolean":
        return unit_draw("boolean", text) >= 0.5
    if kind == "null":
        return None
    raise SchemaError(f"unsupported JSON schema type {kind!r}")


def admitted_types(
    schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> frozenset[str] | None:
    """The JSON types a value valid for ``schema`` may have; None when any type may do.

    Types are JSON's (``"integer"`` for whole numbers, ``"number"`` for the others), so a schema
    asking for ``number`` admits ``{"number", "integer"}``. ``allOf`` is read as ``anyOf``: wider,
    so a type outside the answer is outside the schema.
    """
    root = schema if root is None else root
    if "$ref" in schema:
        return admitted_types(_resolve(root, schema["$ref"]), root)
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        return frozenset(json_type(value) for value in values)
    combinator = next((c for c in _COMBINATORS if c in schema), None)
    if combinator is not None:
        options = [admitted_types(option, root) for option in schema[combinator]]
        if any(types is None for types in options):
            return None
        return frozenset().union(*(types for types in options if types is not None))
    kind = schema.get("type", "object" if "properties" in schema else None)
    if kind is None:
        return None
    kinds = frozenset(kind if isinstance(kind, list) else [kind])
    return kinds | {"integer"} if "number" in kinds else kinds


def json_type(value: Any) -> str:
    """The JSON type of a parsed JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        raise SchemaError(f"only local $ref are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise SchemaError(f"$ref {ref!r} does not resolve")
        node = node[part]
    return node


def chat_answer(model: str, text: str) -> str:
    """A plain-text completion for requests without a JSON response format."""
    openers = ("Here is a short answer", "In brief", "To summarise", "Put simply")
    opener = openers[int(unit_draw(model, "opener", text) * len(openers))]
    topic = " ".join(text.split()[:8])
    return f"{opener} (emulated by {model}): {topic}"
