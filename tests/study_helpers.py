"""What the study tests share: a second measure of a study must train and compute nothing."""

from __future__ import annotations

from typing import Any

import trainlab.batched
import trainlab.runs
from trainlab.studies import make_context


def assert_rerun_is_cached(study: Any, outcome: Any, monkeypatch: Any, module: Any, compute: str,
                           cached_runs: int, **context: Any) -> None:
    """Measure ``study`` again in ``outcome``'s folder with ``module.compute`` and training forbidden: every run
    comes from the store (``cached_runs`` of them), and the claims come out as they did."""

    def nothing_new(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("computed again")

    monkeypatch.setattr(module, compute, nothing_new)
    monkeypatch.setattr(trainlab.runs, "train", nothing_new)
    monkeypatch.setattr(trainlab.batched, "train_replicas", nothing_new)
    ctx = make_context(study, mode="smoke", **context)
    results = study.measure(ctx)
    assert (ctx.runs_trained, ctx.runs_cached) == (0, cached_runs)
    assert [c.evaluate(results) for c in study.claims] == outcome.claims
