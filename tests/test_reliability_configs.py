"""Malformed configs, generated: each fails validation (nothing trains) with one clear message that names its path.

Hypothesis builds configs that are certainly invalid at every level (top level, data, data.dataset, data.preprocess,
data.augment[i], model, model.activation, model.init, optimizer, schedule, regularizers[i], early_stopping): wrong
types, numbers outside their range, NaN and inf, true/false for a number, unknown keys, misspelled component names,
a list where a mapping belongs and a mapping where a scalar belongs; and files that are empty, only a comment,
invalid YAML or not a mapping. The bad values come from the fields' own annotations and constraints, so a new
component or field is fuzzed for free. Every one must end ``trainlab train FILE`` with exit status 2 and a message
naming the path, the value and what is allowed, and ``load_config`` with a ``ConfigError``.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from unittest import mock

import annotated_types
import pytest
import yaml
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from trainlab.callbacks import EarlyStoppingConfig
from trainlab.cli import app
from trainlab.config import RunConfig, load_config
from trainlab.data import DataConfig
from trainlab.registry import ConfigError, Registry, registry, short_repr

# Fixed seeds (derandomize) so CI sees the same examples; no example database, so nothing is written to the repo.
FUZZ = dict(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
runner = CliRunner()


@dataclass(frozen=True)
class Slot:
    """Where a mapping sits in a config (``("regularizers", 1)``) and what validates it (a registry or section)."""

    keys: tuple[str | int, ...]
    owner: Registry | type[BaseModel]

    @property
    def path(self) -> str:
        return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(self.keys))


SECTIONS = [Slot((), RunConfig), Slot(("data",), DataConfig), Slot(("early_stopping",), EarlyStoppingConfig)]
COMPONENTS = [Slot(keys, registry(kind)) for keys, kind in [
    (("model",), "model"), (("optimizer",), "optimizer"), (("schedule",), "schedule"),
    (("regularizers", 0), "regularizer"), (("regularizers", 1), "regularizer"), (("data", "dataset"), "dataset"),
    (("data", "preprocess"), "preprocessor"), (("data", "augment", 0), "augmentation"),
    (("model", "activation"), "activation"), (("model", "init"), "initializer")]]
# Valid entries that fill a list before the fuzzed one, and the fields a component cannot do without.
FILLERS = {"regularizers": {"name": "l2"}, "augment": {"name": "scale"}}
REQUIRED = {"shift": {"max_shift": 2}, "gaussian_noise": {"std": 0.1}}


def creatable(reg: Registry) -> list[str]:
    """The names of ``reg`` that validate from their name (and REQUIRED) alone: npz and csv need a real file."""
    names = []
    for name in reg:
        try:
            reg.create({"name": name, **REQUIRED.get(name, {})})
            names.append(name)
        except ValueError:
            pass
    return names


NAMES = {id(slot.owner): creatable(slot.owner) for slot in COMPONENTS}


def place(slot: Slot, value: Any) -> dict[str, Any]:
    """A copy of the tiny valid config with ``value`` at ``slot`` (earlier list entries valid fillers)."""
    config = copy.deepcopy(TINY)
    node: Any = config
    for key, nxt in zip(slot.keys, slot.keys[1:]):
        node = node.setdefault(key, [] if isinstance(nxt, int) else {})
        if isinstance(nxt, int):
            node[:] = [FILLERS[key]] * nxt + [None]
    node[slot.keys[-1]] = value
    return config


# ------------------------------------------------------------------------------------------------- bad values

NOT_NUMBERS = ["abc", "", "1 2", "0x", [1], {"a": 1}, True, False, None, float("nan"), float("inf"), float("-inf")]
NOT_BOOLS = ["maybe", "2", 2, -1, 0.5, [True], {"a": True}, float("nan"), None]
NOT_STRINGS = [3, 1.5, True, ["x"], {"a": "x"}, None]


def unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``| None`` and ``Annotated``, whether None is allowed)."""
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation, optional


def out_of_range(metadata: list[Any], kind: type) -> st.SearchStrategy[Any]:
    """Numbers that break one of the field's bounds (``ge``, ``gt``, ``le``, ``lt``), of the field's own type."""
    step = st.integers(1, 10**6) if kind is int else st.floats(1e-3, 1e6)
    options = []
    for m in metadata:
        if isinstance(m, (annotated_types.Ge, annotated_types.Gt)):
            bound = m.ge if isinstance(m, annotated_types.Ge) else m.gt
            options.append(step.map(lambda d, b=bound: kind(b) - d))
            if isinstance(m, annotated_types.Gt):
                options.append(st.just(kind(bound)))
        if isinstance(m, (annotated_types.Le, annotated_types.Lt)):
            bound = m.le if isinstance(m, annotated_types.Le) else m.lt
            options.append(step.map(lambda d, b=bound: kind(b) + d))
            if isinstance(m, annotated_types.Lt):
                options.append(st.just(kind(bound)))
    return st.one_of(options) if options else st.nothing()


def bad_sequence(inner: Any, metadata: list[Any], tuple_len: int | None) -> st.SearchStrategy[Any]:
    """Values a list (or a fixed-length tuple) field refuses: other shapes, and items of the wrong kind."""
    shapes: list[Any] = [{"a": 1}, "abc", 3]
    if any(isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in metadata):
        shapes.append([])
    if tuple_len is not None:
        shapes += [[0.5] * (tuple_len - 1), [0.5] * (tuple_len + 1)]
    items: list[Any] = []
    if inner in (int, float):
        items = ["x", True, float("nan"), {"a": 1}] + ([1.5] if inner is int else [])
    elif inner is str:
        items = [3, ["x"]]
    # One bad item in a list of the right length, so that the message has one line.
    shapes += [[bad] + [0.5] * ((tuple_len or 1) - 1) for bad in items]
    return st.sampled_from(shapes)


def bad_values(field: Any) -> st.SearchStrategy[Any] | None:
    """A strategy of values that ``field`` (a pydantic FieldInfo) certainly refuses; None for nested sections and
    components, which are fuzzed at their own slot."""
    kind, optional = unwrap(field.annotation)
    keep = (lambda v: v is not None) if optional else (lambda v: True)
    if kind in (int, float):
        fractional = st.integers(-10**6, 10**6).map(lambda i: i + 0.5) if kind is int else st.nothing()
        return st.one_of(out_of_range(field.metadata, kind), st.sampled_from(NOT_NUMBERS), fractional).filter(keep)
    if kind is bool:
        return st.sampled_from(NOT_BOOLS)
    if kind is str:
        return st.sampled_from(NOT_STRINGS).filter(keep)
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        text = st.from_regex(r"[A-Za-z_ ]{0,10}", fullmatch=True).filter(lambda t: t not in choices)
        return st.one_of(text, st.sampled_from([3, ["x"], {"a": 1}, None]))
    if get_origin(kind) in (list, tuple):
        inner, _ = unwrap(get_args(kind)[0])
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return st.sampled_from([{"name": "x"}, "abc", 3])
        return bad_sequence(inner, field.metadata, len(get_args(kind)) if get_origin(kind) is tuple else None)
    return None


def fuzzable_fields(cls: type[BaseModel]) -> list[tuple[str, st.SearchStrategy[Any]]]:
    return [(name, s) for name, f in cls.model_fields.items() if (s := bad_values(f)) is not None]


def misspell(name: str) -> st.SearchStrategy[str]:
    """``name`` with one character dropped, added, swapped or upper-cased."""
    i = st.integers(0, len(name) - 1)
    return st.one_of(i.map(lambda k: name[:k] + name[k + 1:]),
                     st.tuples(i, st.sampled_from("aeioux_")).map(lambda t: name[:t[0]] + t[1] + name[t[0]:]),
                     i.map(lambda k: name[:k] + name[k:k + 2][::-1] + name[k + 2:]),
                     i.map(lambda k: name[:k] + name[k].upper() + name[k + 1:]), st.just(name + "s"))


@dataclass
class Case:
    """A config that must fail, the path its message must name and the text that quotes the bad value."""

    config: Any
    path: str
    quote: str = "Got "


def with_field(slot: Slot, name: str | None, field: str, value: Any) -> Case:
    if name is None:  # a section: the tiny config's own values, one of them bad
        config = copy.deepcopy(TINY)
        node = config
        for key in slot.keys:
            node = node.setdefault(key, {})
        node[field] = value
        return Case(config, f"{slot.path}.{field}" if slot.keys else field)
    return Case(place(slot, {"name": name, **REQUIRED.get(name, {}), field: value}), f"{slot.path}.{field}")


@st.composite
def bad_field(draw: Any) -> Case:
    """One field of one section or component given a value it refuses."""
    slot = draw(st.sampled_from(SECTIONS + COMPONENTS))
    name = None if slot in SECTIONS else draw(st.sampled_from(NAMES[id(slot.owner)]))
    cls = slot.owner if name is None else slot.owner.get(name)
    fields = fuzzable_fields(cls)
    if not fields:  # a component without parameters (relu, he_normal): give it one it does not have
        return with_unknown_key(slot, name, draw(unknown_keys(cls)))
    field, values = draw(st.sampled_from(fields))
    return with_field(slot, name, field, draw(values))


def unknown_keys(cls: type[BaseModel]) -> st.SearchStrategy[Any]:
    words = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(lambda k: k not in cls.model_fields)
    return st.one_of(words.filter(lambda k: k != "name"), st.integers(0, 99))


def with_unknown_key(slot: Slot, name: str | None, key: Any) -> Case:
    case = with_field(slot, name, key, 1)
    return Case(case.config, slot.path or short_repr(key), short_repr(key))


@st.composite
def unknown_key(draw: Any) -> Case:
    slot = draw(st.sampled_from(SECTIONS + COMPONENTS))
    name = None if slot in SECTIONS else draw(st.sampled_from(NAMES[id(slot.owner)]))
    return with_unknown_key(slot, name, draw(unknown_keys(slot.owner if name is None else slot.owner.get(name))))


@st.composite
def misspelled_name(draw: Any) -> Case:
    slot = draw(st.sampled_from(COMPONENTS))
    reg = slot.owner
    bad = draw(st.sampled_from(reg.names()).flatmap(misspell).filter(lambda n: n not in reg))
    value = draw(st.sampled_from([bad, {"name": bad}]))
    return Case(place(slot, value), slot.path, short_repr(bad))


@st.composite
def wrong_container(draw: Any) -> Case:
    """A list where a mapping (section or component) belongs, or a scalar, or a mapping where a list belongs."""
    slot = draw(st.sampled_from(SECTIONS[1:] + COMPONENTS + [Slot(("regularizers",), RunConfig),
                                                               Slot(("data", "augment"), DataConfig)]))
    if slot.owner in (RunConfig, DataConfig) and slot.keys[-1] in ("regularizers", "augment"):
        value = draw(st.sampled_from([{"name": "l2"}, {"a": 1}, "l2", 3]))
    else:
        value = draw(st.sampled_from([[1, 2], [], [{"name": "x"}], 3, 2.5, True, None]
                                     + (["abc"] if slot in SECTIONS else [])))
    if slot.keys == ("early_stopping",) and value is None:
        value = []
    return Case(place(slot, value), slot.path)


MALFORMED = st.one_of(bad_field(), bad_field(), unknown_key(), misspelled_name(), wrong_container())


# ------------------------------------------------------------------------------------------------------ files

def comment_lines() -> st.SearchStrategy[str]:
    line = st.from_regex(r" *(#[ -~\t]{0,30})?", fullmatch=True)  # a tab cannot indent YAML
    return st.lists(line, max_size=5).map(lambda lines: "\n".join(lines) + "\n")


INVALID_YAML = ["epochs: [1, 2\n", "model: {name: mlp\n", "a:\n\tb: 1\n", "epochs: 3\nepochs: 4\n", "a: b: c\n",
                "- a\nb: 1\n", 'seed: "unterminated\n', "seed: @x\n", "optimizer:\n  lr: 1\n lr: 2\n",
                "!!python/object/apply:os.system ['echo hi']\n", "? [1, 2]\n: 3\n", "a: 1\n---\nb: 2\n",
                "seed: " + "[" * 2000 + "]" * 2000 + "\n", "% bad directive\n"]
NOT_A_MAPPING = ["- a\n- b\n", "42\n", "adamw\n", "3.5\n", "- {epochs: 3}\n", "[epochs, 3]\n", "true\n"]


@st.composite
def bad_file(draw: Any) -> tuple[str, str]:
    """(file text, a word the message must contain): empty, comment-only, invalid YAML or not a mapping."""
    kind = draw(st.sampled_from(["empty", "yaml", "mapping"]))
    if kind == "empty":
        text = draw(st.one_of(st.sampled_from(["", "\n", "   \n", "---\n", "---\n# nothing\n"]), comment_lines()))
        return text, "is empty"
    prefix = draw(comment_lines())
    if kind == "yaml":
        return prefix + draw(st.sampled_from(INVALID_YAML)), "not valid YAML"
    return prefix + draw(st.sampled_from(NOT_A_MAPPING)), "must be a mapping"


# ------------------------------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One folder for the generated files, and no training: a config that validated by mistake fails loudly."""
    with mock.patch("trainlab.runs.train", side_effect=AssertionError("a malformed config was trained")):
        yield tmp_path_factory.mktemp("malformed")


def train_cli(folder, text: str) -> Any:
    path = folder / "run.yaml"
    path.write_text(text)
    return path, runner.invoke(app, ["train", str(path), "--quiet", "--out", str(folder / "out")])


RULE_WORDS = ("must", "Available", "required", "needs", "takes no")


def assert_one_clear_message(result: Any, *fragments: str, rule_words: tuple[str, ...] = RULE_WORDS) -> str:
    """Exit status 2 by ``SystemExit``, no traceback, one error line that contains every fragment and says what
    is allowed (one of ``rule_words``)."""
    text = result.output
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, (text, result.exception)
    assert "Traceback" not in text and text.startswith("error: "), text
    assert len(text.strip().splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert any(word in text for word in rule_words), text
    return text


@settings(max_examples=200, **FUZZ)
@given(MALFORMED)
def test_malformed_configs_exit_2_naming_the_path_through_the_cli(folder, case):
    path, result = train_cli(folder, yaml.safe_dump(case.config))
    assert_one_clear_message(result, case.path, case.quote)


@settings(max_examples=150, **FUZZ)
@given(MALFORMED)
def test_malformed_configs_raise_config_error_through_the_api(case):
    with pytest.raises(ConfigError) as err:
        load_config(case.config)
    assert type(err.value) is ConfigError
    assert case.path in str(err.value) and case.quote in str(err.value), str(err.value)


@settings(max_examples=60, **FUZZ)
@given(bad_file())
def test_empty_comment_only_invalid_and_non_mapping_files_exit_2(folder, bad):
    text, words = bad
    path, result = train_cli(folder, text)
    message = assert_one_clear_message(result, words, rule_words=("A config is", "YAML", "must be a mapping"))
    assert str(path) in " ".join(message.split())
    with pytest.raises(ConfigError, match=words):
        load_config(path)


@st.composite
def bad_override(draw: Any) -> tuple[str, str]:
    """``--set path=value`` with a value the field refuses, on the tiny config's own sections and components."""
    slot = draw(st.sampled_from(SECTIONS + [s for s in COMPONENTS if s.keys in (("model",), ("optimizer",),
                                                                               ("data", "dataset"))]))
    cls = slot.owner if slot in SECTIONS else slot.owner.get(load_config(TINY).model_dump()[slot.keys[0]]
                                                                 ["name"] if len(slot.keys) == 1 else "moons")
    field, values = draw(st.sampled_from(fuzzable_fields(cls)))
    value = draw(values)
    dotted = ".".join(map(str, slot.keys + (field,)))
    text = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
    return f"{dotted}={text}", dotted


@settings(max_examples=60, **FUZZ)
@given(bad_override())
def test_bad_set_overrides_exit_2_naming_the_path(folder, override):
    arg, dotted = override
    path = folder / "good.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = runner.invoke(app, ["train", str(path), "--quiet", "--out", str(folder / "out"), "--set", arg])
    assert_one_clear_message(result, dotted)


def test_an_empty_dict_from_python_still_means_the_defaults(tmp_path):
    assert load_config({}) == RunConfig()
    explicit = tmp_path / "defaults.yaml"
    explicit.write_text("{}  # every default\n")
    assert load_config(explicit) == RunConfig()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n   \n"])
def test_empty_file_is_an_error_not_the_defaults(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"is empty \(or holds only comments\).*write '\{\}' to train the defaults"):
        load_config(path)


@pytest.mark.parametrize("raw,message", [
    ({"epochs": True}, "epochs: The 'epochs' parameter of RunConfig must be a valid integer. Got True instead."),
    ({"optimizer": {"name": "adam", "lr": math.inf}}, "optimizer.lr: The 'lr' parameter of adam must be a finite "
                                                      "number. Got inf instead."),
    ({"model": {"name": "cnn1d", "channels": [True]}}, "model.channels[0]: The 'channels' parameter of cnn1d must be "
                                                       "a valid integer. Got True instead."),
    ({"optimizer": {"name": ["adam"]}}, "optimizer: The name of an optimizer must be a string"),
    ({"seed": [[[[list(range(1000))]]]]}, "Got [[[...]]] instead."),
    ({"optimizer": {"lr": 1, 3: 2}}, "optimizer: An optimizer mapping needs a 'name' key"),
    ({"regularizers": [{"name": "l1", "layers": []}]}, "regularizers[0].layers: The 'layers' parameter of l1 must "
                                                       "have at least 1 item, not 0. Got [] instead."),
])
def test_what_the_fuzzing_found_stays_fixed(raw, message):
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    assert message in str(err.value)


def test_a_yaml_alias_bomb_gives_a_short_message(tmp_path):
    """Nine references to nine references ... nest 9**8 values in one line: the message quotes a few of them."""
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    path = tmp_path / "bomb.yaml"
    path.write_text(f"seed: [{', '.join(levels)}]\n")
    with pytest.raises(ConfigError, match=r"^seed: The 'seed' parameter of RunConfig must be a valid integer") as err:
        load_config(path)
    assert len(str(err.value)) < 300, str(err.value)


@pytest.mark.parametrize("source,overrides,message", [
    (None, (), "The 'source' argument of load_config must be a YAML file path, a mapping or a RunConfig"),
    ({}, "epochs=3", "Got one string 'epochs=3' instead; put it in a list"),
    ({}, [3], "An override must be a string like 'a.b=value'. Got int 3 instead."),
    ({}, {1: 2}, "An override path must be a dotted string"),
    ({}, ["optimizer.name=[adam]"], "The name of an optimizer must be a string"),
])
def test_bad_api_arguments_raise_config_error(source, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(source, overrides)


def test_a_directory_or_binary_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"epochs: \xff\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(binary)


def test_a_component_given_on_the_command_line_fails_in_one_line():
    result = runner.invoke(app, ["schedule", "{name: cosine, warmup_steps: -1}", "--steps", "10"])
    text = assert_one_clear_message(result, "warmup_steps", "Got -1 instead")
    assert "errors.pydantic.dev" not in text
    assert_one_clear_message(runner.invoke(app, ["schedule", "{name: cosine", "--steps", "10"]), "line 1, column 14")


def test_a_folder_given_as_the_config_exits_2(tmp_path):
    assert_one_clear_message(runner.invoke(app, ["train", str(tmp_path)]), "is not a file",
                             rule_words=("Give the path",))


@pytest.mark.parametrize("text, key", [("epochs: 3\nepochs: 4\n", "epochs"),
                                       ("optimizer: {name: adam, lr: 0.1, lr: 0.2}\n", "lr"),
                                       ("regularizers:\n  - {name: l2, strength: 1, strength: 2}\n", "strength")])
def test_a_key_given_twice_is_an_error_but_a_merge_may_override(tmp_path, text, key):
    from trainlab.config import read_yaml
    from trainlab.registry import ConfigError

    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"the key '{key}' appears twice in one mapping; keep one"):
        read_yaml(tmp_path / "c.yaml")
    (tmp_path / "m.yaml").write_text("base: &b {lr: 0.1, name: adam}\noptimizer:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(tmp_path / "m.yaml")["optimizer"] == {"lr": 0.2, "name": "adam"}
