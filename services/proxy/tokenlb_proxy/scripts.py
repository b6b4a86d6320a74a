"""The Lua scripts in ``lua/``: finding them, from a checkout or an installed wheel, and
calling them.

The wheel carries them as ``tokenlb_proxy/lua/*.lua`` (see pyproject's force-include); a
checkout or an editable install finds them in the repository's top-level ``lua/``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from tokenlb_proxy.store.connect import RedisClient

__all__ = ["LuaScript", "lua_source"]

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


class LuaScript:
    """``lua/<name>.lua`` called by its SHA1, and loaded again when the server does not
    know it (restarted, flushed, or another node): what redis-py's ``AsyncScript`` does,
    without its per-call import and ``isinstance`` check against a Protocol (~1 % of a
    replica's CPU on the request path, py-spy)."""

    def __init__(self, client: RedisClient, name: str) -> None:
        self.client = client
        self.source = lua_source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()  # noqa: S324 - Redis's naming

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int | float | bytes]) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = await self.client.script_load(self.source)
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
