"""Talking to an OpenAI-compatible chat server (OpenAI itself, or a local one): the client from the
environment, streamed completions, and error descriptions that never show a secret."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ..config import is_offline


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


def _describe(err: Exception) -> str:
    """A one-line, secret-free description of an API failure (the server's message is not shown:
    it can echo the key)."""
    status = getattr(err, "status_code", None)
    return type(err).__name__ + (f", HTTP {status}" if status else "")


def _chat(client, model: str, messages: list[dict], stream: bool) -> str:
    """A streamed chat completion, assembled; each piece is printed as it arrives when ``stream``."""
    pieces = []
    try:
        for event in client.chat.completions.create(model=model, messages=messages, stream=True):
            delta = event.choices[0].delta.content if event.choices else None
            if delta:
                pieces.append(delta)
                if stream:
                    print(delta, end="", flush=True)
    finally:  # also when the stream breaks off: end the printed line
        if stream and pieces:
            print()
    return "".join(pieces)
