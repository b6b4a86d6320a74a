"""The Lua scripts load from wherever tokenlb is imported: a checkout or an installed wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

import tokenlb_proxy
from tokenlb_proxy.scripts import lua_source

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.stem for p in (REPO / "lua").glob("*.lua"))


def test_every_script_in_lua_dir_is_found() -> None:
    assert set(SCRIPTS) >= {"select_target", "record_usage"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_loaded_script_is_the_repository_file(name: str) -> None:
    assert lua_source(name) == (REPO / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def test_installed_package_carries_its_scripts() -> None:
    package_dir = Path(tokenlb_proxy.__file__).parent
    if package_dir.parent == REPO / "services" / "proxy":
        pytest.skip("running from the checkout; scripts/test.sh tests the installed wheel")
    packaged = resources.files("tokenlb_proxy").joinpath("lua")
    assert sorted(p.name for p in packaged.iterdir() if p.name.endswith(".lua")) == [
        f"{name}.lua" for name in SCRIPTS
    ]


def test_unknown_script_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match=r"no_such_script\.lua"):
        lua_source("no_such_script")


def test_installed_package_carries_the_deploy_files() -> None:
    package_dir = Path(tokenlb_proxy.__file__).parent
    if package_dir.parent == REPO / "services" / "proxy":
        pytest.skip("running from the checkout; scripts/test.sh tests the installed wheel")
    for relative in ("haproxy/haproxy.cfg", "compose/kong.yaml"):
        packaged = resources.files("tokenlb_proxy").joinpath("deploy", *relative.split("/"))
        assert packaged.read_text() == (REPO / "deploy" / relative).read_text()
