"""The evaluation loop's overhead: nos.evaluate of the adam baseline against a plain
hand-written torch loop with torch.optim.Adam, same model, data, batches and epochs.

    .venv/bin/python benchmarks/evaluation_overhead.py [--task mnist1d] [--epochs 10] [--repeats 5]

Both train the same child from the same seed on the same minibatch order and
score it on the validation split after every epoch, as nos.evaluate does.  The
hand-written loop uses torch's fastest unfused Adam for the child's tensors
(``--torch-foreach``: on for the child's small tensors, where the multi-tensor
path is the faster one; see benchmarks/optimizer_step.py).  The repeats are
interleaved (hand-written, nos, hand-written, nos, ...) in one run, and the
figure is the median of the per-pair ratios.
A cProfile of one evaluation follows, with the share of time in the optimizer
step (``--profile``).
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import time

import torch

from nos.train.evaluation import evaluate
from nos.train.tasks import get_task


def plain_loop(task, data, epochs: float, lr: float, seed: int, batch_size: int,
               foreach: bool) -> float:
    torch.manual_seed(seed)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=foreach)
    n = len(data.train_x)
    total = max(1, round(epochs * math.ceil(n / batch_size)))
    order = torch.Generator().manual_seed(seed)
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, batch_size):
            if step >= total:
                break
            idx = perm[i:i + batch_size]
            loss = task.loss(model(data.train_x[idx]), data.train_y[idx])
            loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            out = model(data.val_x)
            accuracy = (task.correct(out, data.val_y) / task.count(data.val_y)).item()
        model.train()
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch-foreach", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.optim.Adam's path in the hand-written loop")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--plain-compiler", action="store_true",
                        help="compile rules without the optimisation passes (the 'before')")
    args = parser.parse_args()
    if args.plain_compiler:
        import nos.optim.optimizer
        from nos.compile.compiler import compile_rule

        nos.optim.optimizer.compile_rule = (
            lambda rule, zeros=frozenset(): compile_rule(rule, zeros, optimize=False))
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    data = task.load("cpu")
    lr = 1e-3
    plain, nos_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        accuracy = plain_loop(task, data, args.epochs, lr, 0, task.batch_size,
                              args.torch_foreach)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = evaluate("adam", task, epochs=args.epochs, lr=lr, seed=0, device="cpu")
        nos_times.append(time.perf_counter() - start)
    p, n = statistics.median(plain), statistics.median(nos_times)
    ratio = statistics.median(b / a for a, b in zip(plain, nos_times, strict=True))
    print(f"task {args.task}, {args.epochs:g} epochs, {result.steps} steps, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    path = "foreach" if args.torch_foreach else "single-tensor"
    print(f"plain torch loop + torch.optim.Adam ({path}): {p:.3f} s (val acc {accuracy:.4f})")
    print(f"nos.evaluate('adam'):{'':{19 + len(path)}s}{n:.3f} s (val acc {result.reward:.4f})")
    print(f"median of the per-pair ratios: {ratio:.3f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        evaluate("adam", task, epochs=args.epochs, lr=lr, seed=0, device="cpu")
        profiler.disable()
        stats = pstats.Stats(profiler)
        total = stats.total_tt
        step = sum(v[3] for k, v in stats.stats.items() if k[2] == "step"
                   and "optimizer" in k[0])
        print(f"\nshare of the evaluation in nos.Optimizer.step: {step / total:.1%}")
        stats.sort_stats("cumulative").print_stats(18)


if __name__ == "__main__":
    main()
