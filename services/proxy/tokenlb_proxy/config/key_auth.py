"""The ``key-auth`` plugin schema, field for field as Kong 3.x publishes it, and what tokenlb
honours of it.

Kong's defaults are declared here so a config pasted from Kong's docs decodes unchanged and
the Admin API can store configs with every default filled in. Settings tokenlb cannot honour
are rejected with a "not supported yet" error naming the field, never ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tokenlb_proxy.config.errors import FieldError
from tokenlb_proxy.config.support import NOT_SUPPORTED

__all__ = ["IdentityRealm", "KeyAuthConfig", "check_key_auth_config"]

#: Kong's ``typedefs.header_name``: an HTTP token.
HeaderName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]


class IdentityRealm(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``config.identity_realms[]``: where Konnect looks consumers up (``cp``: this gateway)."""

    scope: Literal["cp", "realm"] | None = None
    region: str | None = None
    id: str | None = None


class KeyAuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The plugin's ``config`` object."""

    key_names: Annotated[tuple[HeaderName, ...], Meta(min_length=1)] = ("apikey",)
    hide_credentials: bool = False
    #: Consumer id or username to serve as when authentication fails (None: answer 401).
    anonymous: str | None = None
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    run_on_preflight: bool = True
    #: ``WWW-Authenticate: Key realm="<realm>"`` on a 401 (Kong 3.8+); None sends ``Key``.
    realm: str | None = None
    identity_realms: tuple[IdentityRealm, ...] = (IdentityRealm(scope="cp"),)


_DEFAULT = KeyAuthConfig()


def check_key_auth_config(config: KeyAuthConfig, path: str) -> list[FieldError]:
    """Every setting tokenlb cannot honour."""
    errors: list[FieldError] = []
    if config.key_in_body:
        # The body is read after authentication (and only as much as the plugin allows).
        errors.append(FieldError(f"{path}.key_in_body", NOT_SUPPORTED))
    if config.identity_realms != _DEFAULT.identity_realms:
        errors.append(
            FieldError(
                f"{path}.identity_realms",
                f"{NOT_SUPPORTED} (Konnect identity realms; consumers come from this config)",
            )
        )
    return errors
