"""Which test samples a set of runs of one config misclassify, and how many of the runs miss each one.

    .venv/bin/python scripts/shared_errors.py RUN_DIR [RUN_DIR ...] [--plot docs/figures/FILE.png]

Each RUN_DIR is a stored run (``trainlab train ... --out RUN_DIR``) of a classification config; all must share the
data section. Prints each run's test accuracy and errors, then every missed sample with its label, the runs'
predictions and how many runs missed it, and the accuracy of the runs' averaged probabilities. ``--plot`` draws the
samples missed by at least half of the runs (1-D signals, or images), with their labels and predictions.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from trainlab.config import load_config
from trainlab.data import load_data
from trainlab.runs import load_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--plot", type=Path, help="where to write the figure of the samples most runs miss")
    args = parser.parse_args()
    results = [load_result(run) for run in args.runs]
    configs = [load_config(r.config) for r in results]
    sections = {c.data.model_dump_json() for c in configs}
    if len(sections) > 1:
        raise SystemExit(f"The runs must share one data section; {len(sections)} different ones were given.")
    data = load_data(configs[0].data)
    if data.task != "classification":
        raise SystemExit(f"The runs are a {data.task} task; shared errors need classification.")
    predictions, mean_probs = [], torch.zeros(len(data.y_test), data.num_outputs)
    for run, result in zip(args.runs, results):
        with torch.no_grad():
            probs = result.load_model().eval()(data.x_test).float().softmax(1)
        mean_probs += probs / len(results)
        predictions.append(probs.argmax(1))
        wrong = (predictions[-1] != data.y_test).nonzero().flatten().tolist()
        print(f"{run}: test accuracy {1 - len(wrong) / len(data.y_test):.2%}, missed {wrong}")
    stacked = torch.stack(predictions)  # (runs, samples)
    misses = (stacked != data.y_test).sum(0)
    missed = sorted(misses.nonzero().flatten().tolist(), key=lambda i: -int(misses[i]))
    print(f"\n{len(missed)} samples missed by at least one of {len(results)} runs:")
    for i in missed:
        said = collections.Counter(stacked[:, i].tolist()).most_common()
        print(f"  sample {i}: label {int(data.y_test[i])}, missed by {int(misses[i])}, predicted {said}")
    print(f"distribution (missed by k runs: samples): {sorted(collections.Counter(misses[missed].tolist()).items())}")
    print(f"averaged probabilities of the {len(results)} runs: test accuracy "
          f"{(mean_probs.argmax(1) == data.y_test).float().mean().item():.2%}")
    if args.plot:
        plot([i for i in missed if misses[i] * 2 >= len(results)], data, stacked, misses, args.plot)


def plot(samples: list[int], data, stacked: torch.Tensor, misses: torch.Tensor, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not samples:
        print("no sample is missed by half of the runs: nothing to plot")
        return
    cols = min(len(samples), 3)
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(samples):]:
        ax.axis("off")
    for ax, i in zip(axes.flat, samples):
        x = data.x_test[i].squeeze()
        if x.dim() == 1:
            ax.plot(x.numpy(), color="tab:blue")
        else:
            ax.imshow(x.numpy(), cmap="gray")
        label = int(data.y_test[i])
        wrong = collections.Counter(p for p in stacked[:, i].tolist() if p != label).most_common(1)[0][0]
        ax.set_title(f"test sample {i}: label {label}\nmissed by {int(misses[i])}/{stacked.shape[0]} runs, "
                     f"mostly as {wrong}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
