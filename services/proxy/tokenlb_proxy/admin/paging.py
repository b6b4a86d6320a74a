"""Kong's paging and ``?tags=`` filtering of Admin API lists.

Every list Kong's Admin API returns pages the same way: ``size`` (1-1000, default 100),
an opaque ``offset`` naming the last item of the previous page, and the body
``{"data": [...], "next": "/path?offset=...", "offset": "..."}`` (``next`` is null and
``offset`` absent on the last page). Items are paged in the order of a string key, so a
page stays right while entities are added and deleted between two requests: entities by
id (the order Kong pages in), ``/tags`` rows by entity id and the tag's position.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from tokenlb_proxy.admin import kong_errors

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "by_id", "page", "tagged"]

#: Kong's page sizes.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def by_id(entities: Iterable[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Entities keyed for ``page`` by their id (the flat document keeps them in id order)."""
    return [(str(entity["id"]), entity) for entity in entities]


def page(keyed: list[tuple[str, Any]], segments: list[str], query: Mapping[str, str]) -> Any:
    """One page of ``keyed`` (``(key, item)`` pairs in key order) and the link to the next,
    as Kong pages; ``segments``: the path the link points to."""
    size_arg = query.get("size")
    size = DEFAULT_PAGE_SIZE
    if size_arg is not None:
        try:
            size = int(size_arg)
        except ValueError:
            raise kong_errors.invalid_size("size must be a number") from None
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise kong_errors.invalid_size(f"size must be an integer between 1 and {MAX_PAGE_SIZE}")
    offset = query.get("offset")
    if offset:
        after = _decode_offset(offset)
        keyed = [(key, item) for key, item in keyed if key > after]
    shown, rest = keyed[:size], keyed[size:]
    body: dict[str, Any] = {"data": [item for _, item in shown], "next": None}
    if rest:
        token = base64.urlsafe_b64encode(shown[-1][0].encode()).decode().rstrip("=")
        link = f"/{'/'.join(quote(s, safe='') for s in segments)}?offset={quote(token)}"
        body["next"] = link + (f"&size={size}" if size_arg is not None else "")
        if query.get("tags"):
            body["next"] += f"&tags={quote(query['tags'], safe=',/')}"
        body["offset"] = token
    return body


def tagged(items: list[dict[str, Any]], tags: str | None) -> list[dict[str, Any]]:
    """Kong's ``?tags=`` filter: ``a,b`` lists entities tagged with both, ``a/b`` with
    either; the two cannot be mixed."""
    if not tags:
        return items
    if "," in tags and "/" in tags:
        raise kong_errors.invalid_tags("cannot mix 'or' and 'and'")
    wanted = set(tags.replace("/", ",").split(","))
    if "" in wanted:
        raise kong_errors.invalid_tags("empty tag")
    if "/" in tags:
        return [e for e in items if wanted & set(e.get("tags") or ())]
    return [e for e in items if wanted <= set(e.get("tags") or ())]


def _decode_offset(offset: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(offset + "=" * (-len(offset) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise kong_errors.invalid_offset(offset) from None
    if not decoded:
        raise kong_errors.invalid_offset(offset)
    return decoded
