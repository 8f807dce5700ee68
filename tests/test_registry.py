"""Registry-wide tests: every registered component round-trips through its config and rejects invalid values."""

from __future__ import annotations

import types
import typing

import annotated_types as at
import pytest
from pydantic import ValidationError

from trainlab.registry import REGISTRIES, Component, ConfigError, Registry, format_validation_error, registry

# Components whose fields have no defaults: the values to build them with.
REQUIRED = {"npz": {"path": "x.npz"}, "csv": {"path": "x.csv"}, "shift": {"max_shift": 2}, "gaussian_noise": {"std": 0.1}}


def registries() -> list[Registry]:
    return [registry(kind) for kind in REGISTRIES]


def all_components() -> list[tuple[Registry, str]]:
    return [(reg, name) for reg in registries() for name in reg.names()]


def make(reg: Registry, name: str) -> Component:
    return reg.create({"name": name, **REQUIRED.get(name, {})})


# A value of the wrong type for each field type; pydantic's lax mode would accept e.g. "1" for an int, so these
# are values it must refuse.
WRONG_TYPE: dict[object, list[object]] = {bool: ["maybe", 2], int: [1.5, "three"], float: ["fast", [1.0]],
                                          str: [3, ["a"]]}


def wrong_type_values(annotation) -> list[object]:
    """Values no field of this annotation accepts (None excluded when the field is optional)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return wrong_type_values(args[0])
    if origin is typing.Literal:
        return ["not-a-choice"]
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return [v for v in (["not-a-list"] if any(typing.get_origin(m) is list for m in members) else [[object]])
                if all(v in wrong_type_values(m) or m in (str, int) for m in members)] or [{"not": "this"}]
    if origin is tuple:
        return [tuple(1.0 for _ in args[:-1]), "ab"]
    if origin is list:
        return ["not-a-list", [wrong_type_values(args[0])[0]]]
    if isinstance(annotation, type) and issubclass(annotation, Component):
        return ["no_such_component", 7]
    return WRONG_TYPE[annotation]


def bad_values(info) -> list[object]:
    """Values that break a field's declared constraints or its type."""
    bad: list[object] = list(wrong_type_values(info.annotation))
    for m in info.metadata:
        if isinstance(m, at.Gt):
            bad.append(m.gt)
        if isinstance(m, at.Ge):
            bad.append(m.ge - 1)
        if isinstance(m, at.Lt):
            bad.append(m.lt)
        if isinstance(m, at.Le):
            bad.append(m.le + 1)
        if isinstance(m, at.MinLen):
            bad.append("")
        if isinstance(m, at.MaxLen):
            bad.append("x" * (m.max_length + 1))
    return bad


@pytest.mark.parametrize("reg,name", all_components(), ids=lambda v: getattr(v, "kind", v))
def test_round_trip(reg, name):
    obj = make(reg, name)
    dumped = obj.model_dump()
    assert dumped["name"] == name
    again = reg.create(dumped)
    assert again == obj and type(again) is type(obj)
    assert reg.describe()[name], f"{reg.kind} {name!r} has no one-line description"


@pytest.mark.parametrize("reg,name", all_components(), ids=lambda v: getattr(v, "kind", v))
def test_invalid_values_are_rejected_with_the_field_named(reg, name):
    cls = reg.get(name)
    for field, info in cls.model_fields.items():
        values = bad_values(info)
        assert values, f"no invalid value to try on {name}.{field} ({info.annotation})"
        for value in values:
            raw = {"name": name, **REQUIRED.get(name, {}), field: value}
            with pytest.raises(ValidationError) as err:
                reg.create(raw)
            message = format_validation_error(err.value, raw, name)
            # One line per error, led by the field's path, naming the parameter or showing the bad value.
            assert message.startswith(f"{field}"), message
            assert f"'{field}'" in message or repr(value) in message or str(value) in message, message


@pytest.mark.parametrize("reg", registries(), ids=lambda r: r.kind)
def test_unknown_field_and_name(reg):
    name = reg.names()[0]
    with pytest.raises(ValidationError):
        reg.create({"name": name, **REQUIRED.get(name, {}), "no_such_field": 1})
    with pytest.raises(ConfigError, match="Available"):
        reg.get(name + "x")


def test_duplicate_name_and_bad_names_are_errors():
    reg = Registry("thing", Component)

    @reg.register("one")
    class One(Component):
        """One."""

    with pytest.raises(ValueError, match="already registered"):
        reg.register("one")(type("Two", (Component,), {"__doc__": "Two."}))
    with pytest.raises(ValueError, match="snake_case"):
        reg.register("Bad-Name")
    with pytest.raises(ConfigError, match="Did you mean 'one'"):
        reg.get("onee")
