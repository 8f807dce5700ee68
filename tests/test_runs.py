"""The run store's batched path: seeds of one config train as one batch and land as ordinary run directories."""

from __future__ import annotations

import pytest
import torch

import trainlab.runs
from trainlab.callbacks import Callback
from trainlab.config import load_config
from trainlab.runs import Store, load_model, load_result, train


def seeds_of(cfg: dict, seeds) -> list:
    return [load_config(cfg, {"seed": s}) for s in seeds]


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_new_seeds_train_as_one_batch_equal_to_one_by_one(tiny, tmp_path):
    configs = seeds_of(tiny, [0, 1, 2])
    done = []
    batched, why = Store(tmp_path / "b").run_many(configs, on_done=lambda r, cached: done.append(cached))
    assert why == "" and done == [False, False, False]
    for config, result in zip(configs, batched):
        alone = train(config, tmp_path / "alone" / str(config.seed), keep_model=True)
        assert without_time(result.history) == without_time(alone.history)
        assert {k: v for k, v in result.final.items() if k != "time_s"} == {
            k: v for k, v in alone.final.items() if k != "time_s"}
        # The directory is an ordinary finished run: its result and its model load from it alone.
        assert load_result(result.run_dir).final == result.final
        for key, value in alone.model.state_dict().items():
            assert torch.equal(load_model(result.run_dir).state_dict()[key], value), key
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(Store(tmp_path / "b").run_dir(c).name
                                                                       for c in configs)


def test_stored_seeds_are_loaded_and_only_new_ones_train(tiny, tmp_path):
    store = Store(tmp_path)
    configs = seeds_of(tiny, [0, 1, 2])
    first = store.run(configs[1])
    done = []
    results, _ = store.run_many(configs, on_done=lambda r, cached: done.append((r.config["seed"], cached)))
    assert sorted(done) == [(0, False), (1, True), (2, False)]
    assert results[1].final == first.final and [r.config["seed"] for r in results] == [0, 1, 2]


class NeedsTheOptimizer(Callback):
    def on_step_end(self, trainer):
        trainer.optimizer.param_groups[0]["lr"] *= 1.0


def test_what_cannot_be_batched_trains_one_by_one_and_says_why(tiny, tmp_path):
    plateau = seeds_of({**tiny, "schedule": {"name": "plateau", "monitor": "train_loss"}}, [0, 1])
    results, why = Store(tmp_path / "p").run_many(plateau)
    assert "'plateau'" in why and len(results) == 2
    _, why = Store(tmp_path / "c").run_many(seeds_of(tiny, [0, 1]), lambda c: [NeedsTheOptimizer()])
    assert why.startswith("the callback NeedsTheOptimizer does not declare per_replica")
    _, why = Store(tmp_path / "m").run_many([load_config(tiny), load_config({**tiny, "epochs": 2, "seed": 1})])
    assert why == "the configs differ in more than their seed"


def test_a_batched_run_cannot_be_resumed_and_says_why(tiny, tmp_path):
    results, why = Store(tmp_path).run_many(seeds_of(tiny, [0, 1]))
    assert why == ""
    with pytest.raises(ValueError, match="trained in a batch of replicas and is finished"):
        train(load_config(tiny), results[0].run_dir, resume=True)


def test_a_failure_while_storing_a_batch_leaves_no_run(tiny, tmp_path, monkeypatch):
    def broken(path, state):
        raise OSError("disk full")

    monkeypatch.setattr(trainlab.runs, "save_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        Store(tmp_path).run_many(seeds_of(tiny, [0, 1]))
    assert list(tmp_path.iterdir()) == []  # neither a run directory nor a temporary folder
