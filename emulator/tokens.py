"""The token counts the emulator bills in ``usage``, from mistral-common's offline tokenizers.

The service does not publish how it counts; these rules follow what can be checked:

* ``mistral-embed``: each input costs its SentencePiece (v1) pieces plus a BOS and an EOS, which
  agrees with Mistral's documented examples.
* every other model's plain inputs (``codestral-embed``, moderation, classifiers): each input costs
  its Tekken pieces plus 2. For moderation and classifiers this is a guess: no public example
  pins their numbers down.
* chat completions: ``prompt_tokens`` is the length of the prompt rendered by the Tekken v3 chat
  template, ``completion_tokens`` the Tekken pieces of the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# The BOS and EOS tokens that frame every input.
_FRAME = 2


class TokenMeter:
    """Counts what requests cost; safe to share between threads.

    A tokenizer is loaded on first use (Tekken takes about a second), so a process that only
    ever answers one kind of request loads only one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sentencepiece: Any = None
        self._tekken: Any = None

    def inputs(self, model: str, texts: Sequence[str]) -> np.ndarray:
        """What each of ``texts`` costs as an input of ``model``, framing tokens included."""
        lengths: Iterable[int]
        if model.startswith("mistral-embed"):
            lengths = map(len, self._sentencepiece_model().encode(list(texts)))
        else:
            encoding = self._tekken_encoding()
            lengths = (len(encoding.encode_ordinary(text)) for text in texts)
        return np.fromiter((n + _FRAME for n in lengths), dtype=np.int64, count=len(texts))

    def prompt(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """``prompt_tokens`` of a chat transcript (messages as their JSON objects).

        mistral-common cannot render some transcripts the API accepts (an assistant turn last, a
        tool answer without its call, an image chunk): those cost their messages' texts as
        inputs, plus one.
        """
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        tokenizer = self._tekken_tokenizer()
        try:
            request: Any = ChatCompletionRequest.model_validate({"messages": list(messages)})
            return len(tokenizer.encode_chat_completion(request).tokens)
        # Its refusals take many forms (pydantic errors, its own exceptions, bare assertions);
        # any of them only means the template does not apply.
        except Exception:
            texts = [content_text(message.get("content")) for message in messages]
            return int(self.inputs("chat", texts).sum()) + 1

    def completion(self, answer: str) -> int:
        """``completion_tokens`` of a generated answer."""
        return len(self._tekken_encoding().encode_ordinary(answer))

    def _tekken_encoding(self) -> Any:
        # tiktoken's encoding under the Tekkenizer: the same pieces, without its per-call checks.
        return self._tekken_tokenizer().instruct_tokenizer.tokenizer._model

    def _tekken_tokenizer(self) -> Any:
        with self._lock:
            if self._tekken is None:
                from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

                self._tekken = MistralTokenizer.v3(is_tekken=True)
            return self._tekken

    def _sentencepiece_model(self) -> Any:
        with self._lock:
            if self._sentencepiece is None:
                from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

                # The SentencePiece processor itself: it encodes a list in one call.
                tokenizer: Any = MistralTokenizer.v1().instruct_tokenizer.tokenizer
                self._sentencepiece = tokenizer._model
            return self._sentencepiece


def content_text(content: object) -> str:
    """The text of a message's ``content``: the string itself, or its text chunks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(chunk.get("text", "")) for chunk in content if isinstance(chunk, dict))
    return ""
