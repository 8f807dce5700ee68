from __future__ import annotations

import pytest

from trainlab.config import RunConfig, apply_overrides, load_config, parse_overrides
from trainlab.registry import ConfigError


def test_defaults_and_names_resolve_to_components(tiny):
    cfg = load_config(tiny)
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.01
    assert cfg.model.name == "mlp" and cfg.model.activation.name == "relu"
    assert RunConfig.model_validate(cfg.model_dump()) == cfg


def test_overrides_set_nested_values_and_parse_yaml_scalars(tiny):
    cfg = load_config(tiny, ["optimizer.lr=3e-3", "model.norm=batch", "model.activation=tanh", "epochs=7"])
    assert cfg.optimizer.lr == 3e-3 and cfg.model.norm == "batch" and cfg.model.activation.name == "tanh"
    assert cfg.epochs == 7


def test_override_swapping_a_component_keeps_shared_fields(tiny):
    cfg = load_config(tiny, ["optimizer.name=sgd"])
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.01


def test_swapping_a_name_shared_by_two_registries_uses_the_right_one(tiny):
    # 'constant' is both an initializer (field: value) and a schedule (fields: warmup_*).
    tiny["model"]["init"] = {"name": "constant", "value": 0.5}
    cfg = load_config(tiny, ["model.init.name=normal"])
    assert cfg.model.init.name == "normal" and cfg.model.init.std == 0.01
    tiny["schedule"] = {"name": "constant", "warmup_steps": 3}
    cfg = load_config(tiny, ["schedule.name=cosine"])
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_steps == 3


def test_override_reaches_into_lists(tiny):
    tiny["data"]["augment"] = [{"name": "shift", "max_shift": 2}]
    cfg = load_config(tiny, ["data.augment.0.max_shift=5"])
    assert cfg.data.augment[0].max_shift == 5


def test_override_creates_an_optional_section(tiny):
    cfg = load_config(tiny, ["early_stopping.patience=3"])
    assert cfg.early_stopping.patience == 3


@pytest.mark.parametrize("override,message", [
    ("optimizer.lrr=1", "did you mean 'lr'"),
    ("nope=1", "has no key 'nope'"),
    ("epochs", "must look like 'a.b=value'"),
    ("regularizers.3.strength=1", "list of 0 items"),
])
def test_bad_override_paths(tiny, override, message):
    with pytest.raises(ConfigError, match=f"(?i){message}"):
        load_config(tiny, [override])


@pytest.mark.parametrize("patch,message", [
    ({"optimizer": {"name": "adam", "lr": -0.1}}, "optimizer.lr: The 'lr' parameter of adam must be greater than 0"),
    ({"optimizer": "adamx"}, "Did you mean 'adam"),
    ({"model": {"name": "mlp", "dropout": 1.0}}, "model.dropout: The 'dropout' parameter of mlp must be less than 1"),
    ({"early_stopping": {"patience": -1}},
     "early_stopping.patience: The 'patience' parameter of early_stopping must be greater than or equal to 0"),
    ({"epochs": "many"}, "The 'epochs' parameter of RunConfig must be a valid integer"),
    ({"optimiser": {"name": "adam"}}, "RunConfig has no parameter 'optimiser'"),
    ({"regularizers": [{"name": "l2", "strength": 1e-4}, {"name": "l1", "strenght": 1}]},
     "regularizers[1]: l1 has no parameter 'strenght'. Did you mean 'strength'?"),
    ({"data": {"batchsize": 3}}, "data: data has no parameter 'batchsize'. Did you mean 'batch_size'?"),
])
def test_validation_errors_name_path_value_and_rule(tiny, patch, message):
    with pytest.raises(ConfigError) as err:
        load_config({**tiny, **patch})
    assert message in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_parse_overrides_values():
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=[1, 2]", "e=adam"]) == {
        "a": 1, "b": 0.5, "c": True, "d": [1, 2], "e": "adam"}


def test_apply_overrides_does_not_mutate_input():
    raw = {"a": {"b": 1}}
    out = apply_overrides(raw, {"a.b": 2})
    assert raw == {"a": {"b": 1}} and out == {"a": {"b": 2}}
