"""K seeds of one config: batched (``trainlab.batched.train_replicas``) against K sequential runs.

Run: .venv/bin/python bench/bench_batched.py [--ks 1 2 4 8 16] [--rounds 3] [--threads 1]
Each round times, side by side, one sequential seed, K sequential seeds and K batched seeds, for every K (the
machine is noisy, so ratios come from neighbouring measurements; the table shows each ratio's median over rounds).
Each time is a whole run: building (data, model, optimizer) and fitting. Then it times one training step (forward,
backward) of the stacked layers against ``torch.func`` (``functional_call`` + ``vmap``) on the same MLP for K = 8.
Last, the arithmetic floor: the stacked matmuls' forward + backward alone for each K, as a multiple of one
replica's; no exact batching of the model can cost less. Targets: 8 seeds batched <= 3x one seed (stretch 2.5x),
16 seeds <= 5x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from trainlab.batched import stack_replicas, train_replicas, train_sequentially
from trainlab.config import load_config
from trainlab.trainer import seeds_for

CONFIG = {"data": {"dataset": "mnist1d", "batch_size": 128},
          "model": {"name": "mlp", "depth": 2, "width": 256, "norm": "batch", "dropout": 0.1},
          "optimizer": {"name": "adam", "lr": 1e-3}, "epochs": 3}
# The same with 32 units: a step costs little compute, so the loop's own cost (what batching shares) dominates.
SMALL = {**CONFIG, "model": {**CONFIG["model"], "width": 32}}


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def runs_table(config, ks: list[int], rounds: int) -> None:
    seeds = list(range(max(ks)))
    rows: dict[int, dict[str, list[float]]] = {k: {"one": [], "seq": [], "bat": []} for k in ks}
    for _ in range(rounds):
        for k in ks:
            rows[k]["one"].append(timed(train_sequentially, config, seeds[:1]))
            rows[k]["seq"].append(timed(train_sequentially, config, seeds[:k]))
            rows[k]["bat"].append(timed(train_replicas, config, seeds[:k]))
    print(f"{'K':>3} {'1 seed s':>9} {'K seq s':>8} {'K batched s':>11} {'batched / 1 seed':>17} "
          f"{'speed-up vs K seq':>18}")
    for k in ks:
        r = rows[k]
        per_seed = statistics.median(b / o for b, o in zip(r["bat"], r["one"]))
        speedup = statistics.median(s / b for s, b in zip(r["seq"], r["bat"]))
        print(f"{k:>3} {statistics.median(r['one']):9.3f} {statistics.median(r['seq']):8.3f} "
              f"{statistics.median(r['bat']):11.3f} {per_seed:16.2f}x {speedup:17.2f}x")


def step_stacked(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    out = net(x)
    loss = torch.stack([nn.functional.cross_entropy(o, t) for o, t in zip(out, y)]).sum()
    loss.backward()


def vmap_step(model: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    from torch.func import functional_call, vmap

    def one(p, b, xk, yk):
        return nn.functional.cross_entropy(functional_call(model, (p, b), (xk,)), yk)

    vmap(one, randomness="different")(params, buffers, x, y).sum().backward()


def compare_vmap(config, k: int, steps: int) -> None:
    """Forward + backward of one step, K replicas: stacked layers vs functional_call + vmap over stacked params."""
    from trainlab.data import load_data

    data = load_data(config.data)
    models = [config.model.build(data.input_shape, data.num_outputs,
                                 torch.Generator().manual_seed(seeds_for(s)["init"])) for s in range(k)]
    gens = [torch.Generator().manual_seed(s) for s in range(k)]
    x = data.x_train[:k * 128].view(k, 128, -1).contiguous()
    y = data.y_train[:k * 128].view(k, 128)
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
              for n, _ in models[0].named_parameters()}
    # Batch norm's running statistics cannot be updated in place inside vmap; vmap runs with stacked buffers
    # it does not write back, which is what batch norm would need to be correct.
    buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]) for n, _ in models[0].named_buffers()}
    template = config.model.build(data.input_shape, data.num_outputs)
    for mod in template.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.track_running_stats, mod.running_mean, mod.running_var, mod.num_batches_tracked = False, None, None, None
    net = stack_replicas(models, gens)
    timings = {"stacked layers": lambda: step_stacked(net, x, y),
               "functional_call + vmap": lambda: vmap_step(template, params, buffers, x, y)}
    print(f"\none step (forward + backward) of {config.model.name} (norm={config.model.norm}), K={k}, batch 128:")
    for name, fn in timings.items():
        fn()
        best = min(timed(fn) for _ in range(steps))
        print(f"  {name:24s} {best * 1000:7.2f} ms")


def matmul_floor(widths: tuple[int, ...], ks: list[int], steps: int) -> None:
    """The arithmetic a batch cannot avoid: forward + backward of the MLP's stacked matmuls alone (``bmm``, ReLU,
    cross-entropy; no batch norm, dropout or optimizer), K replicas, as a multiple of one replica's time."""
    def step(k: int) -> float:
        ws = [torch.randn(k, a, b, requires_grad=True) for a, b in zip(widths, widths[1:])]
        x, y = torch.randn(k, 128, widths[0]), torch.randint(0, widths[-1], (k * 128,))

        def once() -> None:
            h = x
            for i, w in enumerate(ws):
                h = torch.bmm(h, w)
                h = torch.relu(h) if i < len(ws) - 1 else h
            torch.autograd.grad(nn.functional.cross_entropy(h.reshape(-1, widths[-1]), y), ws)

        once()
        return min(timed(once) for _ in range(steps))

    base = step(1)
    print(f"\nmatmul floor of the {'-'.join(map(str, widths))} MLP (bmm forward + backward only), batch 128:")
    for k in ks:
        t = step(k)
        print(f"  K={k:<3} {t * 1000:7.3f} ms  {t / base:6.2f}x one replica")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(CONFIG)
    train_sequentially(config, [0])  # warm-up: generates MNIST-1D once per process, imports, first fused steps
    for name, cfg in (("2x256", config), ("2x32", load_config(SMALL))):
        print(f"\nMLP {name}, batch norm, dropout 0.1, adam, mnist1d (3600 train), batch 128, 3 epochs, "
              f"{torch.get_num_threads()} thread(s)")
        runs_table(cfg, args.ks, args.rounds)
    compare_vmap(config, 8, 20)
    matmul_floor((40, 256, 256, 10), args.ks, 50)


if __name__ == "__main__":
    main()
