"""Talking to an OpenAI-compatible chat server (OpenAI itself, or a local one): the client from the
environment, streamed completions, and error descriptions that never show a secret."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ..config import in_colab, is_offline


def _is_local(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    return host in {"localhost", "127.0.0.1", "::1"}


def openai_client_from_env(timeout: float = 30.0, max_retries: int = 1):
    """An ``openai.OpenAI`` client when ``OPENAI_API_KEY`` is set, else None. ``OPENAI_BASE_URL``
    points it at any compatible server; with ``TFS_OFFLINE`` set only a local server is used."""
    if not os.environ.get("OPENAI_API_KEY"):
        return None
    if is_offline() and not _is_local(os.environ.get("OPENAI_BASE_URL")):
        return None
    try:
        import openai
    except ImportError:
        return None
    return openai.OpenAI(timeout=timeout, max_retries=max_retries)  # reads the key and URL from the environment


def use_colab_secret(name: str = "OPENAI_API_KEY") -> bool:
    """In Colab, copy the key from Colab's secrets (the key icon in the sidebar; the notebook must be granted
    access) into the environment, unless the environment has it already. The key is never printed. True when
    the environment then holds it."""
    if not os.environ.get(name) and in_colab():
        from google.colab import userdata

        try:
            value = userdata.get(name)
        except Exception as err:  # SecretNotFoundError, NotebookAccessError, ...: no key, said without a secret
            print(f"[rag] no {name} in Colab's secrets ({type(err).__name__}); the local model will answer.")
            value = None
        if value:
            os.environ[name] = value
    return bool(os.environ.get(name))


def _describe(err: Exception) -> str:
    """A one-line, secret-free description of an API failure (the server's message is not shown:
    it can echo the key)."""
    status = getattr(err, "status_code", None)
    return type(err).__name__ + (f", HTTP {status}" if status else "")


class OpenAIChat:
    """A chat model behind an OpenAI-compatible API, as a generator: ``stream(messages)`` yields the pieces of
    a streamed completion as they arrive (the errors of the ``openai`` package pass through)."""

    def __init__(self, client, model: str = "gpt-4o-mini"):
        self.client, self.model = client, model

    def stream(self, messages: list[dict]):
        for event in self.client.chat.completions.create(model=self.model, messages=messages, stream=True):
            delta = event.choices[0].delta.content if event.choices else None
            if delta:
                yield delta
