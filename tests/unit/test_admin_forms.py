"""Kong's form-encoded Admin API bodies: the structure they describe and the types their
strings take from the entity's schema."""

from __future__ import annotations

import pytest

from tokenlb_proxy.admin.forms import FormError, coerce_form_body, parse_form


def test_dotted_keys_nest_and_arrays_come_three_ways() -> None:
    body = parse_form(
        b"a.b.c=1&list=x&list=y&appended[]=p&appended[]=q"
        b"&objects[2].name=second&objects[1].name=first&objects[1].size=3"
    )
    assert body == {
        "a": {"b": {"c": "1"}},
        "list": ["x", "y"],
        "appended": ["p", "q"],
        "objects": [{"name": "first", "size": "3"}, {"name": "second"}],
    }


def test_values_are_percent_decoded_and_may_be_empty() -> None:
    assert parse_form(b"url=http%3A%2F%2Fx%3A81%2Fv1&tags%5B%5D=a+b&empty=") == {
        "url": "http://x:81/v1",
        "tags": ["a b"],
        "empty": "",
    }


@pytest.mark.parametrize("key", ["paths[0]", "paths[x]", ".name", "a..b", "[1]"])
def test_keys_that_name_no_place_are_refused(key: str) -> None:
    with pytest.raises(FormError):
        parse_form(f"{key}=v".encode())


def test_the_schema_types_the_strings() -> None:
    service = coerce_form_body(
        "services", {"name": "s", "retries": "5", "read_timeout": "", "tags": "one"}
    )
    assert service == {"name": "s", "retries": 5, "read_timeout": None, "tags": ["one"]}
    route = coerce_form_body("routes", {"paths": "/a", "strip_path": "false", "name": ""})
    assert route == {"paths": ["/a"], "strip_path": False, "name": ""}


def test_a_plugins_config_is_typed_by_that_plugins_schema() -> None:
    plugin = coerce_form_body(
        "plugins",
        {
            "name": "ai-proxy-advanced",
            "enabled": "false",
            "config": {
                "balancer": {"retries": "3", "algorithm": "lowest-usage"},
                "targets": [{"weight": "100", "model": {"options": {"temperature": "0.5"}}}],
            },
        },
    )
    assert plugin["enabled"] is False
    assert plugin["config"]["balancer"] == {"retries": 3, "algorithm": "lowest-usage"}
    (target,) = plugin["config"]["targets"]
    assert (target["weight"], target["model"]["options"]["temperature"]) == (100, 0.5)
    # A PATCH without a name: the schema that has the fields given.
    assert coerce_form_body("plugins", {"config": {"hide_credentials": "true"}}) == {
        "config": {"hide_credentials": True}
    }


def test_what_the_schema_cannot_take_is_left_for_validation_to_report() -> None:
    assert coerce_form_body("services", {"retries": "many", "unknown": "x"}) == {
        "retries": "many",
        "unknown": "x",
    }
