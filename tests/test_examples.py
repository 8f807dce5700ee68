"""Every shipped example config validates, and its model fits its data (the shapes a run would meet)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainlab.config import load_config
from trainlab.data import load_data

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def test_there_is_an_example_per_model_kind():
    kinds = {load_config(path).model.name for path in EXAMPLES}
    assert {"mlp", "cnn1d", "cnn2d"} <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_builds_and_runs_a_forward_pass(path):
    config = load_config(path)
    data = load_data(config.data)
    model = config.model.build(data.input_shape, data.num_outputs, torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        out = model(data.x_train[:8])
    assert out.shape == (8, data.num_outputs)
