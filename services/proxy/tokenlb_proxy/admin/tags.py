"""``GET /tags`` and ``GET /tags/{tag}``: every tag of every entity, as Kong lists them.

Kong keeps one row per (entity, tag) and answers ``{"entity_name", "entity_id", "tag"}``
rows, ordered by entity id and then by the tag's place in the entity's ``tags``;
``/tags/{tag}`` lists each entity carrying that tag once. The rows are keyed for
``paging.page`` in that order, so ``size``, ``offset`` and ``next`` work as on every
other list. ``?tags=`` is ignored here, as Kong ignores it.
"""

from __future__ import annotations

from typing import Any

from tokenlb_proxy.admin import crud
from tokenlb_proxy.config.entities import KINDS

__all__ = ["tag_rows"]


def tag_rows(document: dict[str, Any], now: float, tag: str | None = None) -> list[tuple[str, Any]]:
    """The tag rows of ``document`` (only those of ``tag`` when given) keyed for paging;
    credentials whose ttl ran out are gone, as everywhere in the Admin API."""
    keyed: list[tuple[str, Any]] = []
    for kind in KINDS:
        for entity in document.get(kind) or ():
            if crud.expired(kind, entity, now):
                continue
            entity_id = str(entity["id"])
            for position, name in enumerate(dict.fromkeys(entity.get("tags") or ())):
                if tag is None or name == tag:
                    row = {"entity_name": kind, "entity_id": entity_id, "tag": name}
                    # NUL sorts first: an id that is a prefix of another sorts before it.
                    keyed.append((f"{entity_id}\x00{position:06d}", row))
    keyed.sort(key=lambda pair: pair[0])
    return keyed
