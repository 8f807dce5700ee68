"""Registries of named components, and the component base class.

A component is a frozen pydantic model whose fields are its hyperparameters (DESIGN §4). Each registry maps one
lower snake_case name to one class; configs name a component as ``{name: cosine, ...}`` or just ``cosine``.
"""

from __future__ import annotations

import difflib
import importlib
import re
import reprlib
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Generic, TypeVar, get_args

from pydantic import (BaseModel, BeforeValidator, ConfigDict, SerializeAsAny, ValidationError, model_serializer,
                      model_validator)
from pydantic_core import InitErrorDetails


class ConfigError(ValueError):
    """Bad user input: a config value, a name, a file. Its message is meant to be shown as is."""


def suggest(name: str, choices: list[str]) -> str:
    """'Did you mean ...? ' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"Did you mean '{close[0]}'? " if close else ""


# A value quoted in a message stays short, however big the input (a YAML alias can nest a huge structure).
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 60, 60, 6, 6
SHORT_REPR_CHARS = 120


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to at most ``SHORT_REPR_CHARS``: what an error message quotes as "Got ... instead"."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHORT_REPR_CHARS else text[:SHORT_REPR_CHARS - 3] + "..."


def _number_types(annotation: Any) -> set[Any]:
    """The plain number types (``int``, ``float``, ``bool``) an annotation accepts, at any depth."""
    if any(annotation is t for t in (int, float, bool)):
        return {annotation}
    return set().union(*(_number_types(a) for a in get_args(annotation)))


def _bool_errors(cls: type[BaseModel], data: dict[Any, Any]) -> list[InitErrorDetails]:
    """A ``true``/``false`` given for a number: pydantic would read it as 1 or 0, so it is an error here."""
    errors: list[InitErrorDetails] = []
    for key, value in data.items():
        if key not in cls.model_fields:
            continue
        numbers = _number_types(cls.model_fields[key].annotation)
        if not numbers or bool in numbers:
            continue
        kind = "float_type" if float in numbers else "int_type"
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        errors += [InitErrorDetails(type=kind, loc=(key,) if i is None else (key, i), input=v)
                   for i, v in items if isinstance(v, bool)]
    return errors


class Section(BaseModel):
    """A frozen config model that answers an unknown key with the closest known one and the list of all.

    Numbers must be finite (NaN and inf are refused), and ``true``/``false`` is not a number.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @classmethod
    def owner_name(cls) -> str:
        return cls.__name__

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(f"{cls.owner_name()} has no parameter {short_repr(key)}. "
                                     f"{suggest(str(key), fields)}Available: {', '.join(fields) or 'none'}.")
            errors = _bool_errors(cls, data)
            if errors:
                raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


class Component(Section):
    """Base of every registered component: frozen, unknown keys rejected; ``model_dump()`` includes ``name``."""

    name: ClassVar[str] = ""

    @classmethod
    def owner_name(cls) -> str:
        return cls.name or cls.__name__

    @model_serializer(mode="wrap")
    def _with_name(self, handler: Any) -> dict[str, Any]:
        return {"name": self.name, **handler(self)}

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring: what ``trainlab list`` prints."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


C = TypeVar("C", bound=Component)


def _a(word: str) -> str:
    return ("An " if word[0] in "aeiou" else "A ") + word


class Registry(Generic[C]):
    """Maps names to component classes of one kind (``initializer``, ``optimizer``, ...)."""

    def __init__(self, kind: str, base: type[C]):
        self.kind = kind
        self.base = base
        self._classes: dict[str, type[C]] = {}

    def register(self, name: str):
        """Class decorator: ``@OPTIMIZERS.register("adamw")``. A name can be registered once."""
        if not name or name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"A {self.kind} name must be lower snake_case. Got {name!r} instead.")

        def decorate(cls: type[C]) -> type[C]:
            if name in self._classes:
                raise ValueError(f"The {self.kind} name {name!r} is already registered to "
                                 f"{self._classes[name].__qualname__}.")
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"A {self.kind} must subclass {self.base.__name__}. Got {cls!r} instead.")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[C]:
        if not isinstance(name, str):
            raise ConfigError(f"The name of {_a(self.kind).lower()} must be a string, one of: "
                              f"{', '.join(self.names())}. Got {type(name).__name__} {short_repr(name)} instead.")
        if name not in self._classes:
            raise ConfigError(f"Unknown {self.kind} {short_repr(name)}. {suggest(name, self.names())}"
                              f"Available: {', '.join(self.names())}.")
        return self._classes[name]

    def names(self) -> list[str]:
        return list(self._classes)

    def describe(self) -> dict[str, str]:
        """name -> one-line description."""
        return {n: c.describe() for n, c in self._classes.items()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def create(self, value: Any) -> C:
        """A component from an instance, a name, or a ``{name: ..., **fields}`` mapping (pydantic validates the
        fields; ``validate_section`` turns its errors into one ``ConfigError``)."""
        cls, fields = self._parse(value)
        return value if cls is None else cls.model_validate(fields)

    def _parse(self, value: Any) -> tuple[type[C] | None, dict[Any, Any]]:
        """(class, fields) named by a config value; (None, {}) for an instance, which is used as it is."""
        if isinstance(value, self.base):
            return None, {}
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise TypeError(f"{_a(self.kind)} must be a name or a mapping with a 'name' key. "
                            f"Got {type(value).__name__} {short_repr(value)} instead.")
        if "name" not in value:
            raise ConfigError(f"{_a(self.kind)} mapping needs a 'name' key; one of: {', '.join(self.names())}. "
                              f"Got keys {short_repr(sorted(map(str, value)))} instead.")
        return self.get(value["name"]), {k: v for k, v in value.items() if k != "name"}

    def field(self):
        """The type of a config field holding one component of this registry."""
        return Annotated[SerializeAsAny[self.base], BeforeValidator(self._validate_field)]

    def _validate_field(self, value: Any) -> Any:
        # Inside a config the component's field errors stay pydantic's, so they keep their path (``optimizer.lr``).
        try:
            cls, fields = self._parse(value)
        except (ConfigError, TypeError) as e:
            raise ValueError(str(e)) from None
        return value if cls is None else cls.model_validate(fields)


#: Every registry, by kind, with the module and name it is defined under. Imported on first use (so that
#: ``trainlab --help`` stays fast); ``trainlab list``, the config's component swaps and the package's exports read it.
REGISTRIES: dict[str, tuple[str, str]] = {
    "initializer": ("trainlab.initializers", "INITIALIZERS"),
    "activation": ("trainlab.activations", "ACTIVATIONS"),
    "model": ("trainlab.models", "MODELS"),
    "regularizer": ("trainlab.regularizers", "REGULARIZERS"),
    "optimizer": ("trainlab.optimizers", "OPTIMIZERS"),
    "schedule": ("trainlab.schedules", "SCHEDULES"),
    "dataset": ("trainlab.data", "DATASETS"),
    "preprocessor": ("trainlab.data", "PREPROCESSORS"),
    "augmentation": ("trainlab.augment", "AUGMENTATIONS"),
}


def registry(kind: str) -> Registry[Any]:
    """The registry of one kind of component (``"optimizer"``, ...); an unknown kind raises ``ConfigError``."""
    if kind not in REGISTRIES:
        raise ConfigError(f"Unknown kind {kind!r}. {suggest(str(kind), list(REGISTRIES))}"
                          f"Available: {', '.join(REGISTRIES)}.")
    module, name = REGISTRIES[kind]
    return getattr(importlib.import_module(module), name)


def registries() -> dict[str, Registry[Any]]:
    """Every registry, by kind."""
    return {kind: registry(kind) for kind in REGISTRIES}


S = TypeVar("S", bound=Section)


def validate_section(cls: type[S], fields: Any) -> S:
    """``cls.model_validate(fields)``, with pydantic's errors turned into one clear ``ConfigError``."""
    try:
        return cls.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, fields, cls.owner_name())) from None


def format_validation_error(err: ValidationError, raw: Any, owner: str) -> str:
    """One line per error: ``path: The 'x' parameter of Y must be Z. Got V instead.``

    ``raw`` is the input that was validated (to name the component that owns a field); ``owner`` names the root.
    """
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
        names = [p for p in loc if isinstance(p, str)]
        field = names[-1] if names else owner
        owner_depth = max((i for i, p in enumerate(loc) if isinstance(p, str)), default=0)
        parent, node = (raw.get("name", owner) if isinstance(raw, dict) else owner), raw
        for p in loc[:owner_depth]:
            try:
                node = node[p]
            except (KeyError, IndexError, TypeError):
                node = None
                break
            if isinstance(node, dict) and "name" in node:
                parent = str(node["name"])
            elif isinstance(node, str):
                parent = node
            elif isinstance(p, str):  # a plain section (early_stopping, data): name it by its key
                parent = p
        msg = e["msg"]
        etype = e["type"]
        if etype == "extra_forbidden":
            lines.append(f"{path}: {parent} has no parameter {field!r}.")
            continue
        if etype == "missing":
            lines.append(f"{path}: the {field!r} parameter of {parent} is required.")
            continue
        if etype == "value_error":
            lines.append(f"{path}: {msg.removeprefix('Value error, ')}" if path else msg.removeprefix("Value error, "))
            continue
        # "Input should be ...", "List should have at least 1 item after validation, not 0": "must be ...", ...
        msg = re.sub(r"^(Input|List|Tuple|String|Dictionary|Set|Value) should ", "must ", msg)
        msg = msg.replace(" after validation", "")
        if not msg.startswith("must"):
            msg = f"is invalid: {msg}"
        lines.append(f"{path}: The {field!r} parameter of {parent} {msg}. Got {short_repr(e.get('input'))} instead.")
    return "\n".join(lines)
