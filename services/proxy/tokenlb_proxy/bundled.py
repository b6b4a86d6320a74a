"""Files of the repository's ``deploy/`` that commands read at run time.

``tokenlb cluster up`` runs the same HAProxy config and demo kong.yaml that
docker-compose.yml mounts, so they are not copied into code: the wheel carries them as
``tokenlb_proxy/deploy/...`` (pyproject's force-include) and a checkout reads them from
the top-level ``deploy/``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["COMPOSE_CONFIG", "HAPROXY_CONFIG", "deploy_text"]

HAPROXY_CONFIG = "haproxy/haproxy.cfg"
COMPOSE_CONFIG = "compose/kong.yaml"

_CHECKOUT_DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy"


def deploy_text(relative: str) -> str:
    """The text of ``deploy/<relative>``."""
    packaged = resources.files("tokenlb_proxy").joinpath("deploy", *relative.split("/"))
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = _CHECKOUT_DEPLOY_DIR / relative
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(f"deploy/{relative} is neither packaged nor in {_CHECKOUT_DEPLOY_DIR}")
