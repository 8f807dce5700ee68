"""Mixed precision: what runs in which dtype, unscaled gradients under fp16's loss scaling, what refuses it."""

from __future__ import annotations

import pytest
import torch

from trainlab.batched import can_batch
from trainlab.callbacks import Callback
from trainlab.config import load_config
from trainlab.registry import ConfigError
from trainlab.runs import config_hash, train
from trainlab.trainer import build_trainer


class Dtypes(Callback):
    """Records the dtypes of the first linear layer's output in training and in evaluation, and of the grads."""

    def __init__(self):
        self.train_out, self.eval_out, self.grads = set(), set(), set()

    def on_fit_start(self, trainer):
        first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(
            lambda m, i, out: (self.train_out if m.training else self.eval_out).add(out.dtype))

    def after_backward(self, trainer):
        self.grads |= {p.grad.dtype for p in trainer.model.parameters()}


def test_bf16_runs_the_training_forward_in_bf16_and_keeps_weights_grads_and_state_in_float32(tiny):
    dtypes = Dtypes()
    trainer = build_trainer(load_config({**tiny, "precision": "bf16", "epochs": 15}), callbacks=[dtypes])
    final = trainer.fit()
    assert dtypes.train_out == {torch.bfloat16} and dtypes.eval_out == {torch.float32}
    assert dtypes.grads == {torch.float32}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    state = trainer.optimizer.state_dict()["state"]
    assert {t.dtype for s in state.values() for k, t in s.items() if k != "step"} == {torch.float32}
    assert final["test_acc"] > 0.85  # it still learns moons
    fp32 = train(load_config({**tiny, "epochs": 15}))
    assert fp32.metric("train_loss") != [row["train_loss"] for row in trainer.history]  # not silently fp32


class Steps(Callback):
    """Per step: the parameters before it, the gradients the callbacks see, whether they are finite, the parameters
    after it and the loss scale; and the batch of the first step whose gradients were all finite."""

    def __init__(self):
        self.steps, self.first_finite = [], None

    def on_step_start(self, trainer):
        self.steps.append({"before": [p.detach().clone() for p in trainer.model.parameters()]})

    def after_backward(self, trainer):
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        finite = all(torch.isfinite(g).all() for g in grads)
        self.steps[-1].update(grads=grads, finite=finite, scale=trainer.precision.scaler.get_scale())
        if finite and self.first_finite is None:
            self.first_finite = (len(self.steps) - 1, trainer.batch)

    def on_step_end(self, trainer):
        self.steps[-1]["after"] = [p.detach().clone() for p in trainer.model.parameters()]


def test_fp16_gradients_are_unscaled_before_callbacks_and_an_overflowing_step_is_skipped(tiny):
    steps = Steps()
    with pytest.warns(UserWarning, match="'bf16' is the CPU's mixed precision"):
        trainer = build_trainer(load_config({**tiny, "precision": "fp16", "epochs": 1}), callbacks=[steps])
    trainer.fit()
    overflowed = [s for s in steps.steps if not s["finite"]]
    assert overflowed  # at the initial scale 2^16 some step's gradients overflow float16 on this run
    for s in overflowed:  # skipped: no parameter moves
        assert all(torch.equal(a, b) for a, b in zip(s["before"], s["after"]))
    assert trainer.precision.scaler.get_scale() == 2.0 ** 16 / 2 ** len(overflowed)  # halved at each overflow
    # The first finite step's gradients are the float32 gradients of that batch at those parameters (to float16
    # rounding), not 2^k times them.
    index, (x, y) = steps.first_finite
    model = trainer.model
    with torch.no_grad():
        for p, value in zip(model.parameters(), steps.steps[index]["before"]):
            p.copy_(value)
    model.zero_grad()
    trainer.loss_fn(model(x), y).backward()
    for p, seen in zip(model.parameters(), steps.steps[index]["grads"]):
        torch.testing.assert_close(seen, p.grad, rtol=2e-2, atol=2e-3)
    assert steps.steps[index]["scale"] >= 2 ** 10  # the loss was scaled by that much, and the scaling undone


def test_a_checkpoint_keeps_the_fp16_loss_scale(tiny, tmp_path):
    with pytest.warns(UserWarning):
        trainer = build_trainer(load_config({**tiny, "precision": "fp16"}))
    trainer.fit()
    trainer.precision.scaler.update(1234.0)
    state = trainer.state_dict()
    with pytest.warns(UserWarning):
        again = build_trainer(load_config({**tiny, "precision": "fp16"}))
    again.load_state_dict(state)
    assert again.precision.scaler.get_scale() == 1234.0


def test_precision_fp32_leaves_the_hash_of_earlier_runs_alone(tiny):
    from trainlab.runs import _resolved_hash

    config = load_config(tiny)
    dumped = config.model_dump(mode="json")
    assert dumped["precision"] == "fp32"
    del dumped["precision"]  # a config.yaml written before the field existed
    assert _resolved_hash(dumped) == config_hash(config)
    assert config_hash(load_config({**tiny, "precision": "bf16"})) != config_hash(config)


def test_what_mixed_precision_cannot_apply_to_says_so(tiny):
    with pytest.raises(ValueError, match=r"precision: .*'fp32', 'bf16' or 'fp16'.*Got 'fp8'"):
        load_config({**tiny, "precision": "fp8"})
    with pytest.raises(ConfigError, match="'precision' parameter cannot apply with the full-batch optimizer lbfgs: "
                                          "its line search and curvature need the objective in float32"):
        build_trainer(load_config({**tiny, "precision": "bf16", "optimizer": {"name": "lbfgs"}}))
    ok, why = can_batch(load_config({**tiny, "precision": "bf16"}))
    assert not ok and "'precision' 'bf16'" in why


def test_an_activity_penalty_under_bf16_is_summed_in_float32(tiny):
    seen = []

    class PenaltyDtype(Callback):
        def after_backward(self, trainer):
            penalty = trainer.penalties[0]
            seen.append(({o.dtype for o in penalty.outputs}, penalty.value().dtype))

    config = load_config({**tiny, "precision": "bf16", "epochs": 1,
                          "regularizers": [{"name": "l2", "strength": 1e-3, "target": "activity"}]})
    build_trainer(config, callbacks=[PenaltyDtype()]).fit()
    assert seen and all(outputs == {torch.bfloat16} and value == torch.float32 for outputs, value in seen)


def test_the_same_bf16_config_twice_gives_the_same_numbers(tiny):
    config = load_config({**tiny, "precision": "bf16", "model": {**tiny["model"], "norm": "batch"}})
    a, b = train(config, keep_model=True), train(config, keep_model=True)
    assert a.metric("train_loss") == b.metric("train_loss") and a.final["test_acc"] == b.final["test_acc"]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
