from __future__ import annotations

import numpy as np
import pytest
import torch

import trainlab.studies.optimizers as study
from trainlab.studies import STUDIES, run_studies
from trainlab.studies.optimizers import PATH_SPECS, TRAIN_SPECS, effective_lr, path_2d, steps_to_fraction

from study_helpers import assert_rerun_is_cached


def test_2d_paths_follow_torch_optim_and_reach_the_minimum():
    path = path_2d(PATH_SPECS["sgd"], 3)
    xy = torch.tensor([-7.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([xy], lr=0.95)
    for k in range(1, 4):
        opt.zero_grad()
        (xy[0] ** 2 / 20 + xy[1] ** 2).backward()
        opt.step()
        np.testing.assert_allclose(path["xy"][k], xy.detach().numpy())
    assert path_2d(PATH_SPECS["adam"], 200)["f"][-1] < 0.01


def test_effective_lr_of_adagrad_is_lr_over_root_of_the_gradient_sum():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.Adagrad([w], lr=0.5)
    grads = []
    for _ in range(3):
        opt.zero_grad()
        (w ** 2).sum().backward()
        grads.append(w.grad.clone())
        opt.step()
    expected = 0.5 / (torch.stack(grads).pow(2).sum(0).sqrt() + 1e-10)
    torch.testing.assert_close(effective_lr(opt), expected)
    assert effective_lr(torch.optim.SGD([w], lr=0.1)) is None


def test_steps_to_fraction_smooths_the_loss_and_targets_a_fraction_of_the_first():
    assert steps_to_fraction([2.0] * 5, 0.5, 40) == 41  # never at 1.0: a miss
    assert steps_to_fraction([2.0, float("nan")], 0.5, 40) == 41
    losses = [2.0] + [0.1] * 20
    avg, expected = 0.0, None
    for k, loss in enumerate(losses, 1):
        avg = 0.9 * avg + 0.1 * loss
        if expected is None and avg / (1 - 0.9 ** k) <= 1.0:
            expected = k
    assert 1 < expected < len(losses)
    assert steps_to_fraction(losses, 0.5, 40) == expected


@pytest.mark.slow
def test_on_three_seeds_adagrads_rate_shrinks_and_rmsprops_does_not(tmp_path, monkeypatch):
    (outcome,) = run_studies(["optimizers"], mode="smoke", seeds=3, out=tmp_path, progress=False)
    claims = {c.key: c for c in outcome.claims}
    # AdaGrad divides by a sum that only grows, every epoch; RMSProp's moving average forgets.
    assert claims["adagrad_shrinks"].verdict == "supported"
    assert claims["rmsprop_fixes"].verdict == "supported"
    assert outcome.runs_trained == 3 * len(TRAIN_SPECS)  # the smoke grid has one lr per optimizer
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)

    optimizers = STUDIES["optimizers"]
    assert_rerun_is_cached(optimizers, outcome, monkeypatch, study,
                           "path_2d", outcome.runs_trained, seeds=3, out=tmp_path)
