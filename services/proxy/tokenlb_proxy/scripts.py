"""Locating the Lua scripts in ``lua/``, from a checkout or an installed wheel.

The wheel carries them as ``tokenlb_proxy/lua/*.lua`` (see pyproject's force-include); a
checkout or an editable install finds them in the repository's top-level ``lua/``.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

__all__ = ["lua_source"]

_CHECKOUT_LUA_DIR = Path(__file__).resolve().parents[3] / "lua"


@functools.cache
def lua_source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    filename = f"{name}.lua"
    packaged = resources.files("tokenlb_proxy").joinpath("lua", filename)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = _CHECKOUT_LUA_DIR / filename
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(f"Lua script {filename} is neither packaged nor in {_CHECKOUT_LUA_DIR}")
