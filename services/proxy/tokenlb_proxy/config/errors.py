"""Configuration errors that name the exact field path."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError", "FieldError"]


class FieldError:
    """One problem at one field path, e.g. ``plugins[0].config.balancer.algorithm``."""

    __slots__ = ("message", "path")

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __repr__(self) -> str:
        return f"FieldError({self.path!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldError) and (self.path, self.message) == (
            other.path,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.message))


class ConfigError(Exception):
    """A configuration that cannot be served; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def redacted(self, secrets: Iterable[str]) -> ConfigError:
        """The same errors with every occurrence of ``secrets`` replaced by ``<redacted>``."""
        values = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        if not values:
            return self

        def clean(text: str) -> str:
            for value in values:
                text = text.replace(value, "<redacted>")
            return text

        return ConfigError([FieldError(clean(e.path), clean(e.message)) for e in self.errors])


#: Shorter values ("1", "true") are not secrets, and replacing them would garble messages.
_MIN_SECRET_LENGTH = 4
