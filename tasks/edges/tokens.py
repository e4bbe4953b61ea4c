"""Token counts from mistral-common's offline tokenizers, shared by request packing, cost
estimates and the emulator's ``usage``.

Counting rules (see the Mistral contract notes, §8):

* ``mistral-embed``: SentencePiece v1 tokens of each input plus BOS and EOS (exact on documented
  cases).
* ``codestral-embed``: Tekken tokens of each input, plus 2.
* chat models: Tekken v3 tokens of the rendered chat prompt.
* moderation and classifier models: Tekken tokens of each input plus 2 — an approximation; Mistral's
  own numbers for these endpoints are not reproducible from public material.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np


class TokenCounter:
    """Loads each tokenizer once (Tekken takes about a second) and counts in batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @cached_property
    def _sentencepiece(self) -> Any:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        with self._lock:
            return MistralTokenizer.v1().instruct_tokenizer.tokenizer

    @cached_property
    def _tekken_chat(self) -> Any:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        with self._lock:
            return MistralTokenizer.v3(is_tekken=True)

    def per_input(self, model: str, texts: Sequence[str]) -> np.ndarray:
        """Tokens each input costs, BOS/EOS included."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        if model.startswith("mistral-embed"):
            processor = self._sentencepiece._model  # batch encode: one C++ call for the list
            encoded = processor.encode(list(texts))
        else:
            # tiktoken's plain encoder: the same length as Tekkenizer.encode, without its checks.
            encoding = self._tekken_chat.instruct_tokenizer.tokenizer._model
            encoded = map(encoding.encode_ordinary, texts)
        return np.fromiter((len(ids) + 2 for ids in encoded), dtype=np.int64, count=len(texts))

    def text(self, text: str) -> int:
        """Tekken tokens of a generated answer (completion tokens)."""
        tokenizer = self._tekken_chat.instruct_tokenizer.tokenizer
        return len(tokenizer.encode(text, bos=False, eos=False))

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> int:
        """Tokens of a rendered chat prompt; falls back to a per-message sum for odd transcripts."""
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        try:
            request: Any = ChatCompletionRequest.model_validate({"messages": list(messages)})
            return len(self._tekken_chat.encode_chat_completion(request).tokens)
        except Exception:  # mistral-common rejects transcripts the API still accepts
            contents = [message_text(message) for message in messages]
            return int(self.per_input("chat", contents).sum()) + 1


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of chunks."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(chunk.get("text", "")) for chunk in content if isinstance(chunk, dict))
    return ""


TOKENS = TokenCounter()  # one per process: each tokenizer is loaded once
