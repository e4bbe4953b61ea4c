"""The inference endpoints, shared by direct calls and batch request lines.

``Engine.call(endpoint, body)`` validates a request body the way the real API does (unknown keys
rejected with a FastAPI-style 422, per-request limits answered with the real 400 shape) and
returns ``(status_code, response_body)``. Batch lines and HTTP routes both go through it, so a
request behaves the same whichever way it arrives.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Annotated, Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emulator import content
from emulator.catalog import EMBED_MODELS, MODERATION_MODELS, Catalog
from emulator.tokens import TokenMeter, content_text
from emulator.vectors_json import json_rows

MAX_EMBEDDING_INPUTS = 512
MAX_EMBEDDING_TOKENS = 16_384
EMBEDDING_CONTEXT = 8_192

ENDPOINTS = (
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/chat/moderations",
    "/v1/classifications",
    "/v1/chat/classifications",
    "/v1/chat/completions",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        return content_text(self.content)


Inputs = str | Annotated[list[str], Field(min_length=1)]


class EmbeddingRequest(_Strict):
    model: str
    input: Inputs
    output_dimension: int | None = Field(default=None, gt=0)
    output_dtype: Literal["float", "int8", "uint8", "binary", "ubinary"] | None = None
    encoding_format: Literal["float", "base64"] | None = None
    metadata: dict[str, Any] | None = None


class ModerationRequest(_Strict):
    model: str
    input: Inputs
    metadata: dict[str, Any] | None = None


class ChatModerationRequest(_Strict):
    model: str
    input: list[Message] | list[list[Message]]


class ClassificationRequest(_Strict):
    model: str
    input: Inputs
    metadata: dict[str, Any] | None = None


class InstructInput(_Strict):
    messages: list[Message] = Field(min_length=1)


class ChatClassificationRequest(_Strict):
    model: str
    input: InstructInput | list[InstructInput]


class JsonSchemaFormat(_Strict):
    name: str
    schema_definition: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=1.5)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=0)
    stream: bool | None = False
    stop: str | list[str] | None = None
    random_seed: int | None = None
    metadata: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = Field(default=None, ge=1)
    prediction: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    prompt_mode: str | None = None
    safe_prompt: bool | None = None


_REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/embeddings": EmbeddingRequest,
    "/v1/moderations": ModerationRequest,
    "/v1/chat/moderations": ChatModerationRequest,
    "/v1/classifications": ClassificationRequest,
    "/v1/chat/classifications": ChatClassificationRequest,
    "/v1/chat/completions": ChatCompletionRequest,
}


class ApiError(Exception):
    """An application error answered as ``{"object": "error", ...}`` with ``status``."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "object": "error",
            "message": message,
            "type": type_,
            "param": None,
            "code": code,
        }


def validation_detail(exc: ValidationError) -> dict[str, Any]:
    """The FastAPI 422 body for a pydantic error."""
    detail = []
    for error in exc.errors(include_url=False):
        item = {
            "type": error["type"],
            "loc": ["body", *error["loc"]],
            "msg": error["msg"],
            "input": error.get("input"),
        }
        if "ctx" in error:
            item["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        detail.append(item)
    return {"detail": detail}


def _usage(prompt: int, completion: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_audio_seconds": None,
        "prompt_token_details": None,
        "request_count": None,
    }


def _invalid_model(model: str) -> ApiError:
    return ApiError(400, f"Invalid model: {model}", "invalid_model", "1500")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class Engine:
    """Answers inference requests; safe to share between the HTTP routes and the job runner."""

    def __init__(self, catalog: Catalog, tokens: TokenMeter | None = None) -> None:
        self.catalog = catalog
        self.tokens = tokens or TokenMeter()

    def call(
        self, endpoint: str, body: Any, default_model: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request body; never raises for a bad request, only returns its error."""
        request_model = _REQUEST_MODELS.get(endpoint)
        if request_model is None:
            return 404, {"detail": "Not Found"}
        if isinstance(body, dict) and default_model and "model" not in body:
            body = {**body, "model": default_model}
        try:
            request = request_model.model_validate(body)
            asked = request.model  # type: ignore[attr-defined]
            # The version behind an alias answers; the body names the alias or the version.
            request = request.model_copy(update={"model": self.catalog.version(asked)})
            handler = getattr(self, "_" + endpoint.removeprefix("/v1/").replace("/", "_"))
            answer = handler(request)
            return 200, {**answer, "model": self.catalog.answered_by(asked)}
        except ValidationError as exc:
            return 422, validation_detail(exc)
        except ApiError as exc:
            return exc.status, exc.body

    def _embeddings(self, request: EmbeddingRequest) -> dict[str, Any]:
        if request.model not in EMBED_MODELS:
            raise _invalid_model(request.model)
        default_dim, max_dim = EMBED_MODELS[request.model]
        dimension = request.output_dimension or default_dim
        if dimension > max_dim or (request.output_dimension and max_dim == default_dim):
            raise ApiError(
                400,
                f"output_dimension {request.output_dimension} is not supported by "
                f"{request.model} (largest: {max_dim})",
                "invalid_request_error",
            )
        texts = _as_list(request.input)
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ApiError(
                400,
                "Too many inputs in request, split into more batches.",
                "invalid_request_prompt",
                "3210",
            )
        counts = self.tokens.inputs(request.model, texts)
        if counts.size and int(counts.max()) > EMBEDDING_CONTEXT:
            raise ApiError(
                400,
                f"Input {int(counts.argmax())} is too long: {int(counts.max())} tokens, "
                f"the model's context is {EMBEDDING_CONTEXT}.",
                "invalid_request_prompt",
                "3210",
            )
        total = int(counts.sum())
        if total > MAX_EMBEDDING_TOKENS:
            raise ApiError(
                400,
                "Too many tokens overall, split into more batches.",
                "invalid_request_prompt",
                "3210",
            )
        vectors = content.embed(request.model, texts, dimension, max_dim)
        encoded = content.quantise(vectors, request.output_dtype or "float")
        if request.encoding_format == "base64":
            data: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in encoded]
        elif encoded.dtype.kind == "f":
            data = json_rows(encoded)
        else:
            data = list(encoded)  # integer rows: orjson writes numpy arrays natively
        return {
            "id": uuid.uuid4().hex,
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(data)
            ],
            "model": request.model,
            "usage": _usage(total),
        }

    def _moderation_categories(self, model: str) -> tuple[str, ...]:
        if model not in MODERATION_MODELS:
            raise _invalid_model(model)
        return MODERATION_MODELS[model]

    def _moderation_response(self, model: str, texts: list[str]) -> dict[str, Any]:
        categories = self._moderation_categories(model)
        return {
            "id": uuid.uuid4().hex,
            "model": model,
            "results": content.moderate(model, texts, categories),
            "usage": _usage(int(self.tokens.inputs(model, texts).sum())),
        }

    def _moderations(self, request: ModerationRequest) -> dict[str, Any]:
        return self._moderation_response(request.model, _as_list(request.input))

    def _chat_moderations(self, request: ChatModerationRequest) -> dict[str, Any]:
        conversations = cast(
            list[list[Message]],
            request.input
            if request.input and isinstance(request.input[0], list)
            else [request.input],
        )
        # The model judges the last turn of each conversation.
        texts = [conv[-1].text() if conv else "" for conv in conversations]
        return self._moderation_response(request.model, texts)

    def _classifier_targets(self, model: str) -> dict[str, dict[str, list[str]]]:
        targets = self.catalog.classifiers.get(model)
        if targets is None:
            raise _invalid_model(model)
        return targets

    def _classification_response(self, model: str, texts: list[str]) -> dict[str, Any]:
        targets = self._classifier_targets(model)
        return {
            "id": uuid.uuid4().hex,
            "model": model,
            "results": content.classify(model, texts, targets),
            "usage": _usage(int(self.tokens.inputs(model, texts).sum())),
        }

    def _classifications(self, request: ClassificationRequest) -> dict[str, Any]:
        return self._classification_response(request.model, _as_list(request.input))

    def _chat_classifications(self, request: ChatClassificationRequest) -> dict[str, Any]:
        inputs = _as_list(request.input)
        texts = [" ".join(m.text() for m in item.messages) for item in inputs]
        return self._classification_response(request.model, texts)

    def _chat_completions(self, request: ChatCompletionRequest) -> dict[str, Any]:
        if not self.catalog.is_chat_model(request.model):
            raise _invalid_model(request.model)
        if request.stream:
            raise ApiError(
                400, "Streaming is not supported by the emulator.", "invalid_request_error"
            )
        answer = _chat_answer(request)
        finish_reason = "stop"
        completion = self.tokens.completion(answer)
        if request.max_tokens is not None and completion > request.max_tokens:
            # Cut the answer as the model would stop: roughly four characters a token.
            answer = answer[: request.max_tokens * 4]
            completion, finish_reason = request.max_tokens, "length"
        transcript = [m.model_dump(exclude_none=True) for m in request.messages]
        return {
            "id": uuid.uuid4().hex,
            "object": "chat.completion",
            "model": request.model,
            "usage": _usage(self.tokens.prompt(transcript), completion),
            "created": int(time.time()),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish_reason,
                    "message": {"role": "assistant", "content": answer, "tool_calls": None},
                }
            ],
        }


def _chat_answer(request: ChatCompletionRequest) -> str:
    """The whole answer, in the requested response format, before any ``max_tokens`` cut."""
    text = " ".join(m.text() for m in request.messages if m.role == "user")
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return content.chat_answer(request.model, text)
    if fmt.type == "json_object":
        return orjson.dumps({"answer": content.chat_answer(request.model, text)}).decode()
    if fmt.json_schema is None:
        raise ApiError(
            400, "response_format json_schema needs a json_schema", "invalid_request_error"
        )
    try:
        value = content.instance_for(fmt.json_schema.schema_definition, text)
    except content.SchemaError as exc:
        raise ApiError(400, str(exc), "invalid_request_error") from exc
    return orjson.dumps(value).decode()
