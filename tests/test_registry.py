"""Registry-wide tests: every registered component round-trips through its config and rejects invalid values."""

from __future__ import annotations

import importlib
import typing

import annotated_types as at
import pytest
from pydantic import ValidationError

from trainlab.cli import KINDS
from trainlab.registry import Component, ConfigError, Registry

# Components whose fields have no defaults: the values to build them with.
REQUIRED = {"npz": {"path": "x.npz"}, "csv": {"path": "x.csv"}, "shift": {"max_shift": 2}, "gaussian_noise": {"std": 0.1}}


def registries() -> list[Registry]:
    return [getattr(importlib.import_module(module), name) for module, name in KINDS.values()]


def all_components() -> list[tuple[Registry, str]]:
    return [(reg, name) for reg in registries() for name in reg.names()]


def make(reg: Registry, name: str) -> Component:
    return reg.create({"name": name, **REQUIRED.get(name, {})})


def bad_values(info) -> list[object]:
    """Values that break a field's declared constraints."""
    bad: list[object] = []
    for m in info.metadata:
        if isinstance(m, at.Gt):
            bad.append(m.gt)
        if isinstance(m, at.Ge):
            bad.append(m.ge - 1)
        if isinstance(m, at.Lt):
            bad.append(m.lt)
        if isinstance(m, at.Le):
            bad.append(m.le + 1)
    if typing.get_origin(info.annotation) is typing.Literal:
        bad.append("not-a-choice")
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
        for value in bad_values(info):
            with pytest.raises(ValidationError) as err:
                reg.create({"name": name, **REQUIRED.get(name, {}), field: value})
            assert field in str(err.value)


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
