"""Secret references: ``{vault://env/NAME}`` in place of a literal key, resolved when the
config is compiled.

This is Kong's env vault: ``{vault://env/openai-key}`` reads the variable ``OPENAI_KEY`` (the
name upper-cased, ``-`` turned into ``_``), and ``{vault://env/creds/key}`` reads a JSON
object from ``CREDS`` and takes its ``key`` field. The config document keeps the reference
itself, so the fleet's shared copy (Redis), Admin API answers and dumps never hold the value;
only the compiled config in a replica's memory does. A reference may sit anywhere in a
string (``"Bearer {vault://env/openai-key}"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tokenlb_proxy.config.errors import FieldError

__all__ = ["SecretResolver"]

_REFERENCE = re.compile(r"\{vault://([^/{}]*)/([^{}]*)\}")
_MARKER = "{vault://"


class SecretResolver:
    """Resolves references from one environment; remembers every value it handed out so
    error messages can be scrubbed of them (an enum error, say, quotes the bad value)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        #: Every resolved value, for ``ConfigError.redacted``.
        self.values: set[str] = set()

    def resolve(self, value: Any, path: str, errors: list[FieldError]) -> Any:
        """``value`` with every reference in every string replaced; problems go to ``errors``
        and never show the value of a variable."""
        if isinstance(value, str):
            return self._string(value, path, errors) if _MARKER in value else value
        if isinstance(value, dict):
            return {k: self.resolve(v, _join(path, str(k)), errors) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return value

    def _string(self, text: str, path: str, errors: list[FieldError]) -> str:
        def replace(match: re.Match[str]) -> str:
            resolved = self._lookup(match.group(1), match.group(2), path, errors)
            if resolved is None:
                return ""
            self.values.add(resolved)
            return resolved

        return _REFERENCE.sub(replace, text)

    def _lookup(
        self, vault: str, reference: str, path: str, errors: list[FieldError]
    ) -> str | None:
        shown = f"{{vault://{vault}/{reference}}}"
        if vault != "env":
            errors.append(FieldError(path, f"{shown}: vault {vault!r} is not supported yet (env)"))
            return None
        if "?" in reference:
            errors.append(FieldError(path, f"{shown}: reference options are not supported yet"))
            return None
        name, _, field = reference.partition("/")
        variable = name.upper().replace("-", "_")
        raw = self._environ.get(variable)
        if raw is None:
            errors.append(FieldError(path, f"{shown}: environment variable {variable} is not set"))
            return None
        if not field:
            return raw
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        value = document.get(field) if isinstance(document, dict) else None
        if not isinstance(value, str):
            errors.append(
                FieldError(
                    path,
                    f"{shown}: environment variable {variable} does not hold a JSON object "
                    f"with a string field {field!r}",
                )
            )
            return None
        return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
