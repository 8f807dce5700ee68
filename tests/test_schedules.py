"""Schedules against their formulas and torch.optim.lr_scheduler; the controller's plateau logic and resume."""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.optim import lr_scheduler

from trainlab.registry import ConfigError, format_validation_error
from trainlab.schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    OneCycle,
    Plateau,
    Schedule,
    StepDecay,
    preview,
)

BASE_LR = 0.5


def make_optimizer(lr: float = BASE_LR, groups: int = 1) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(groups)], lr=lr)


def lrs_of_controller(schedule: Schedule, total: int, steps_per_epoch: int) -> list[float]:
    """The lr each of ``total`` optimizer steps used, driven as the trainer drives it."""
    opt = make_optimizer()
    ctrl = schedule.build(opt, total, steps_per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(ctrl.lr)
        opt.step()
        ctrl.step()
    return lrs


def lrs_of_torch(make, total: int, steps_per_epoch: int = 1, per_epoch: bool = False) -> list[float]:
    opt = make_optimizer()
    sched = make(opt)
    lrs = []
    for s in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if not per_epoch or (s + 1) % steps_per_epoch == 0:
            sched.step()
    return lrs


# ---------------------------------------------------------------------------------------------- formulas

W, START, TOTAL, SPE = 4, 0.1, 44, 4  # T = 40 steps after warmup = 10 epochs
T = TOTAL - W


def cos_f(final: float, t: float, period: float) -> float:
    return final + (1 - final) * (1 + math.cos(math.pi * t / period)) / 2


# name -> (schedule, {step: expected factor}) for steps after warmup: its start, middle, last step, end, beyond.
FORMULAS = {
    "constant": (Constant(), {W: 1.0, W + T // 2: 1.0, TOTAL - 1: 1.0, TOTAL: 1.0, 10 * TOTAL: 1.0}),
    "step": (StepDecay(gamma=0.5, every_epochs=3),  # decays every 12 steps
             {W: 1.0, W + 11: 1.0, W + 12: 0.5, W + 24: 0.25, TOTAL - 1: 0.125, TOTAL: 0.125, 10 * TOTAL: 0.125}),
    "exponential": (Exponential(gamma_per_epoch=0.8),
                    {W: 1.0, W + 2: 0.8 ** 0.5, W + T // 2: 0.8 ** 5, TOTAL - 1: 0.8 ** (39 / 4), TOTAL: 0.8 ** 10,
                     10 * TOTAL: 0.8 ** 10}),
    "cosine": (Cosine(final_factor=0.1),
               {W: 1.0, W + T // 2: 0.55, TOTAL - 1: cos_f(0.1, T - 1, T), TOTAL: 0.1, 10 * TOTAL: 0.1}),
    "cosine_restarts": (CosineRestarts(first_cycle_epochs=2, cycle_mult=2, final_factor=0.2),  # cycles 8, 16, 32
                        {W: 1.0, W + 4: 0.6, W + 7: cos_f(0.2, 7, 8), W + 8: 1.0, W + 16: 0.6, W + 24: 1.0,
                         TOTAL - 1: cos_f(0.2, 15, 32), TOTAL: cos_f(0.2, 16, 32), 10 * TOTAL: 0.6}),
    "one_cycle": (OneCycle(pct_start=0.25, div_factor=10.0, final_div_factor=100.0),  # peak at t = 9
                  {W: 0.1, W + 9: 1.0, W + 9 + 15: 0.5 + 0.5 * 0.001, TOTAL - 1: 0.001, TOTAL: 0.001,
                   10 * TOTAL: 0.001}),
    "plateau": (Plateau(), {W: 1.0, W + T // 2: 1.0, TOTAL - 1: 1.0, TOTAL: 1.0, 10 * TOTAL: 1.0}),
}


def test_every_registered_schedule_has_formulas():
    assert set(FORMULAS) == set(SCHEDULES.names())


@pytest.mark.parametrize("name", list(FORMULAS))
def test_factor_matches_formula_with_warmup(name):
    base, expected = FORMULAS[name]
    schedule = SCHEDULES.create({**base.model_dump(), "warmup_steps": W, "warmup_start_factor": START})
    assert schedule.factor(0, TOTAL, SPE) == pytest.approx(START + (1 - START) / W)
    assert schedule.factor(0, TOTAL, SPE) > 0
    assert schedule.factor(W // 2, TOTAL, SPE) == pytest.approx(START + (1 - START) * (W // 2 + 1) / W)
    assert schedule.factor(W - 1, TOTAL, SPE) == pytest.approx(1.0)
    for step, want in expected.items():
        assert schedule.factor(step, TOTAL, SPE) == pytest.approx(want, rel=1e-12), f"step {step}"


@pytest.mark.parametrize("name", list(FORMULAS))
def test_factor_is_positive_and_holds_still_past_the_end(name):
    schedule, _ = FORMULAS[name]
    factors = [schedule.factor(s, TOTAL, SPE) for s in range(3 * TOTAL)]
    assert all(0 <= f <= 1 and math.isfinite(f) for f in factors)
    assert set(factors[TOTAL:]) == {schedule.factor(TOTAL, TOTAL, SPE)}


def test_warmup_zero_starts_at_the_schedule_and_zero_start_factor_is_not_zero_at_step_0():
    assert Cosine().factor(0, 10, 1) == 1.0
    assert Constant(warmup_steps=1).factor(0, 10, 1) == 1.0
    assert Constant(warmup_steps=5).factor(0, 10, 1) == pytest.approx(0.2)


def test_restarts_do_not_restart_when_the_run_ends_on_a_cycle_end():
    schedule = CosineRestarts(first_cycle_epochs=1, cycle_mult=1, final_factor=0.25)
    assert schedule.factor(4, 8, 4) == 1.0  # an ordinary restart inside the run
    assert schedule.factor(8, 8, 4) == 0.25
    assert schedule.factor(100, 8, 4) == 0.25


# ------------------------------------------------------------------------------------ torch references

def test_cosine_matches_cosine_annealing_lr():
    ours = lrs_of_controller(Cosine(final_factor=0.05), 30, 1)
    ref = lrs_of_torch(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=30, eta_min=0.05 * BASE_LR), 30)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cycle_mult", [1, 2, 3])
def test_cosine_restarts_matches_cosine_annealing_warm_restarts(cycle_mult):
    ours = lrs_of_controller(CosineRestarts(first_cycle_epochs=2, cycle_mult=cycle_mult, final_factor=0.1), 60, 3)
    ref = lrs_of_torch(lambda o: lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=6, T_mult=cycle_mult, eta_min=0.1 * BASE_LR), 60)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("total", "pct_start"), [(50, 0.3), (37, 0.25), (10, 0.5)])
def test_one_cycle_matches_one_cycle_lr(total, pct_start):
    ours = lrs_of_controller(OneCycle(pct_start=pct_start, div_factor=20.0, final_div_factor=50.0), total, 1)
    ref = lrs_of_torch(lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=BASE_LR, total_steps=total, pct_start=pct_start, div_factor=20.0, final_div_factor=50.0,
        anneal_strategy="cos", cycle_momentum=False), total)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_step_matches_step_lr_stepped_per_epoch():
    ours = lrs_of_controller(StepDecay(gamma=0.3, every_epochs=2), 50, 5)
    ref = lrs_of_torch(lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.3), 50, 5, per_epoch=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_exponential_matches_exponential_lr_at_epoch_boundaries():
    ours = lrs_of_controller(Exponential(gamma_per_epoch=0.7), 40, 4)
    ref = lrs_of_torch(lambda o: lr_scheduler.ExponentialLR(o, gamma=0.7), 40, 4, per_epoch=True)
    np.testing.assert_allclose(ours[::4], ref[::4], rtol=1e-12)
    assert all(a > b for a, b in zip(ours, ours[1:])), "smooth decay within epochs"
    per_step = lrs_of_torch(lambda o: lr_scheduler.ExponentialLR(o, gamma=0.7), 40)
    np.testing.assert_allclose(lrs_of_controller(Exponential(gamma_per_epoch=0.7), 40, 1), per_step, rtol=1e-12)


@pytest.mark.parametrize(("warmup", "start"), [(5, 0.0), (8, 0.3), (2, 0.5)])
def test_warmup_matches_linear_lr_shifted_by_one_step(warmup, start):
    ours = lrs_of_controller(Constant(warmup_steps=warmup, warmup_start_factor=start), 20, 1)
    # Our step s uses LinearLR's value after s + 1 steps: start at start + (1 - start)/W, reach 1 at W - 1.
    ref = lrs_of_torch(lambda o: lr_scheduler.LinearLR(
        o, start_factor=start + (1 - start) / warmup, end_factor=1.0, total_iters=warmup - 1), 20)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_controller_scales_every_param_group_and_matches_factor():
    schedule = Cosine(warmup_steps=3, final_factor=0.1)
    opt = make_optimizer(groups=2)
    ctrl = schedule.build(opt, 12, 2)
    for s in range(12):
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(BASE_LR * schedule.factor(s, 12, 2), rel=1e-12)
        opt.step()
        ctrl.step()


def test_step_lambda_is_picklable():
    opt = make_optimizer()
    ctrl = Cosine().build(opt, 10, 1)
    restored = pickle.loads(pickle.dumps(ctrl._per_step.lr_lambdas[0]))
    assert restored(4) == Cosine().factor(4, 10, 1)


# ------------------------------------------------------------------------------------------- plateau

def run_plateau(schedule: Plateau, losses: list[float], steps_per_epoch: int = 2) -> list[float]:
    """lr after each epoch_end, with the given val_loss per epoch."""
    opt = make_optimizer()
    ctrl = schedule.build(opt, 1000, steps_per_epoch)
    after = []
    for loss in losses:
        for _ in range(steps_per_epoch):
            opt.step()
            ctrl.step()
        ctrl.epoch_end({"val_loss": loss, "train_loss": 0.0})
        after.append(ctrl.lr)
    return after


def test_plateau_reduces_after_patience_bad_epochs_and_stops_at_min_factor():
    schedule = Plateau(gamma=0.5, patience_epochs=2, threshold=0.0, min_factor=0.2)
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    # 3rd bad epoch after the best (0.9) halves; the counter restarts; 0.8 is new best; then 3 more bad epochs.
    want = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2]
    np.testing.assert_allclose(run_plateau(schedule, losses), [BASE_LR * w for w in want], rtol=1e-12)


def test_plateau_threshold_and_max_mode():
    # Relative improvements below the threshold count as bad epochs.
    schedule = Plateau(gamma=0.1, patience_epochs=1, threshold=0.1)
    np.testing.assert_allclose(run_plateau(schedule, [1.0, 0.95, 0.95]), [BASE_LR, BASE_LR, 0.1 * BASE_LR])
    opt = make_optimizer()
    ctrl = Plateau(monitor="val_acc", mode="max", gamma=0.5, patience_epochs=0).build(opt, 100, 1)
    for acc, want in [(0.5, 1.0), (0.6, 1.0), (0.6, 0.5), (0.7, 0.5), (0.65, 0.25)]:
        opt.step()
        ctrl.step()
        ctrl.epoch_end({"val_acc": acc})
        assert ctrl.lr == pytest.approx(BASE_LR * want)


def test_plateau_warmup_then_reductions_persist_across_steps():
    schedule = Plateau(warmup_steps=4, gamma=0.5, patience_epochs=0)
    opt = make_optimizer()
    ctrl = schedule.build(opt, 100, 2)
    seen = []
    for epoch, loss in enumerate([1.0, 1.0, 1.0, 1.0, 1.0]):
        for _ in range(2):
            seen.append(ctrl.lr)
            opt.step()
            ctrl.step()
        ctrl.epoch_end({"val_loss": loss})
    # Epoch 0 ends inside warmup and is not judged; epoch 1 ends it and sets the best; epochs 2 and 3 each halve.
    want = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    np.testing.assert_allclose(seen, [BASE_LR * w for w in want], rtol=1e-12)


def test_plateau_missing_metric_lists_available_names():
    opt = make_optimizer()
    ctrl = Plateau(monitor="val_los").build(opt, 10, 1)
    with pytest.raises(ConfigError, match=r"monitors 'val_los'.*Available: train_loss, val_loss\."):
        ctrl.epoch_end({"val_loss": 1.0, "train_loss": 2.0})
    Cosine().build(opt, 10, 1).epoch_end({})  # per-step schedules ignore metrics


# -------------------------------------------------------------------------------------------- resume

# Shorter periods than the defaults so that the schedule changes within the test's 40 steps.
RESUME_OVERRIDES = {"step": {"every_epochs": 2}, "cosine_restarts": {"first_cycle_epochs": 2},
                    "plateau": {"patience_epochs": 1, "gamma": 0.5}}


@pytest.mark.parametrize("build_before_load", [True, False])
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_state_dict_round_trip_continues_identically(name, build_before_load):
    schedule = SCHEDULES.create({"name": name, "warmup_steps": 3, "warmup_start_factor": 0.1,
                                 **RESUME_OVERRIDES.get(name, {})})
    total, spe = 40, 4
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8, 0.85, 0.9, 0.9]

    def run(opt, ctrl, steps):
        lrs = []
        for s in steps:
            lrs.append(ctrl.lr)
            opt.step()
            ctrl.step()
            if (s + 1) % spe == 0:
                ctrl.epoch_end({"val_loss": losses[s // spe]})
        return lrs

    opt_a = make_optimizer(groups=2)
    ctrl_a = schedule.build(opt_a, total, spe)
    run(opt_a, ctrl_a, range(18))
    buffer = io.BytesIO()
    torch.save({"optimizer": opt_a.state_dict(), "schedule": ctrl_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # checkpoints load weights-only: the state is plain data
    rest_a = run(opt_a, ctrl_a, range(18, total))

    opt_b = make_optimizer(groups=2)
    if build_before_load:
        ctrl_b = schedule.build(opt_b, total, spe)
        opt_b.load_state_dict(saved["optimizer"])
    else:  # building the controller sets the lrs of step 0; loading its state must put the saved ones back
        opt_b.load_state_dict(saved["optimizer"])
        ctrl_b = schedule.build(opt_b, total, spe)
    ctrl_b.load_state_dict(saved["schedule"])
    rest_b = run(opt_b, ctrl_b, range(18, total))
    assert rest_a == rest_b
    assert len(set(rest_a)) > 1 or name == "constant", "the continuation should exercise the schedule"


def test_load_state_dict_rejects_state_of_another_kind():
    opt = make_optimizer()
    state = Plateau().build(opt, 10, 1).state_dict()
    with pytest.raises(ValueError, match="from a plateau schedule"):
        Cosine().build(make_optimizer(), 10, 1).load_state_dict(state)


# --------------------------------------------------------------------------------------------- preview

def test_preview_is_base_lr_times_factor():
    schedule = OneCycle(warmup_steps=2)
    lrs = preview(schedule, 30, 3, base_lr=0.2)
    assert lrs.shape == (30,)
    np.testing.assert_allclose(lrs, [0.2 * schedule.factor(s, 30, 3) for s in range(30)])
    np.testing.assert_allclose(preview(Plateau(warmup_steps=2), 5), [0.5, 1, 1, 1, 1])


def test_plot_schedules_draws_each_preview_and_writes_a_png(tmp_path):
    from trainlab.figures import plot_schedules, save_figure

    schedules = {"cosine": Cosine(warmup_steps=5), "step": StepDecay(every_epochs=2)}
    fig = plot_schedules(schedules, 50, 5, 0.1)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["cosine", "step"]
    np.testing.assert_allclose(lines[0].get_ydata(), preview(schedules["cosine"], 50, 5, 0.1))
    path = save_figure(fig, tmp_path / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one schedule"):
        plot_schedules({}, 50, 5, 0.1)


# ---------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("name", "field", "value", "expected"), [
    ("cosine", "warmup_steps", -1, "The 'warmup_steps' parameter of cosine must be greater than or equal to 0."),
    ("constant", "warmup_start_factor", 1.0, "The 'warmup_start_factor' parameter of constant must be less than 1."),
    ("cosine", "final_factor", 1.5, "The 'final_factor' parameter of cosine must be less than or equal to 1."),
    ("step", "every_epochs", 0, "The 'every_epochs' parameter of step must be greater than or equal to 1."),
    ("step", "gamma", 1.0, "The 'gamma' parameter of step must be less than 1."),
    ("exponential", "gamma_per_epoch", 0.0, "The 'gamma_per_epoch' parameter of exponential must be greater than 0."),
    ("cosine_restarts", "cycle_mult", 0, "The 'cycle_mult' parameter of cosine_restarts must be greater than or "
                                         "equal to 1."),
    ("cosine_restarts", "cycle_mult", 1.5, "The 'cycle_mult' parameter of cosine_restarts must be a valid integer"),
    ("one_cycle", "pct_start", 1.0, "The 'pct_start' parameter of one_cycle must be less than 1."),
    ("one_cycle", "div_factor", 0.5, "The 'div_factor' parameter of one_cycle must be greater than or equal to 1."),
    ("plateau", "mode", "avg", "The 'mode' parameter of plateau must be 'min' or 'max'."),
    ("plateau", "patience_epochs", -1, "The 'patience_epochs' parameter of plateau must be greater than or equal"),
    ("plateau", "factor", 0.5, "plateau has no parameter 'factor'."),
])
def test_invalid_values_are_rejected_with_clear_messages(name, field, value, expected):
    raw = {"name": name, field: value}
    with pytest.raises(ValidationError) as info:
        SCHEDULES.create(raw)
    assert expected in format_validation_error(info.value, raw, name)


def test_invalid_run_lengths_are_rejected():
    with pytest.raises(ValueError, match=r"total_steps to be an int greater than warmup_steps \(10\). Got 10"):
        Cosine(warmup_steps=10).factor(0, 10, 1)
    with pytest.raises(ValueError, match="steps_per_epoch to be an int >= 1. Got 0"):
        Cosine().build(make_optimizer(), 10, 0)
    with pytest.raises(ValueError, match="step of a schedule must be an int >= 0. Got -1"):
        Cosine().factor(-1, 10, 1)
    with pytest.raises(ValueError, match=r"pct_start \* \(total_steps - warmup_steps\) > 1"):
        OneCycle(pct_start=0.3).factor(0, 3, 1)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_registry_round_trip(name):
    schedule = SCHEDULES.create(name)
    assert isinstance(schedule, Schedule) and SCHEDULES.get(name) is type(schedule)
    dumped = schedule.model_dump()
    assert dumped["name"] == name
    assert SCHEDULES.create(dumped) == schedule
    assert SCHEDULES.create(json.loads(schedule.model_dump_json())) == schedule
    assert SCHEDULES.describe()[name]
