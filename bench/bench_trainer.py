"""Trainer overhead: trainlab's loop against a hand-written PyTorch loop on the same model, data and optimizer.

Run: .venv/bin/python bench/bench_trainer.py [--epochs 5] [--threads 1] [--device cpu|cuda]
Prints the time per epoch of both and their ratio (the loop's own cost: callbacks, running sums, batching).
"""

from __future__ import annotations

import argparse
import time

import torch

from trainlab.config import load_config
from trainlab.trainer import build_trainer


def hand_written(trainer, epochs: int) -> float:
    model, opt, data, loss_fn = trainer.model, trainer.optimizer, trainer.data, trainer.loss_fn
    gen = torch.Generator().manual_seed(0)
    n, bs = len(data.x_train), trainer.batch_size
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(data.x_train.device)
        for i in range(0, n - 1, bs):
            idx = perm[i:i + bs]
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            loss_fn(model(data.x_val), data.y_val).item()
    if data.x_train.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="examples/mnist1d_mlp.yaml")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"epochs={args.epochs}", f"device={args.device}", "data.augment=[]", "schedule=constant"]
    cfg = load_config(args.config, overrides)
    build_trainer(cfg).fit()  # warm-up: imports, allocator, first-step compilation of fused optimizers
    trainer = build_trainer(cfg)
    start = time.perf_counter()
    trainer.fit()
    ours = (time.perf_counter() - start) / args.epochs
    theirs = hand_written(build_trainer(cfg), args.epochs)
    steps = trainer.data.steps_per_epoch(trainer.batch_size)
    print(f"{args.config} on {args.device}, {args.threads} thread(s), {steps} steps/epoch")
    print(f"trainlab loop   {ours * 1000:8.1f} ms/epoch")
    print(f"hand-written    {theirs * 1000:8.1f} ms/epoch")
    print(f"ratio           {ours / theirs:8.3f}")


if __name__ == "__main__":
    main()
