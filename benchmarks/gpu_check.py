"""The CUDA path, checked and measured in one run on a GPU machine.

    .venv/bin/python benchmarks/gpu_check.py [--task mnist1d] [--epochs 5] [--repeats 3]

1. One child trained on the GPU and on the CPU (nos.evaluate, the same rule, lr and
   seed): both finish ``ok``, their rewards agree within the float noise of two devices,
   and the times (medians of interleaved repeats) are printed.
2. ``nos.Optimizer`` on CUDA: adam's foreach and fused paths, and a tensor lr on the
   GPU, step as ``torch.optim.Adam`` does (largest relative difference printed).
3. Four children sharing one GPU through Ray (``[workers] count = 4, num_gpus = 0.25``):
   a short random search; every worker reports a CUDA device, every evaluation finishes,
   and the wall time is printed against the same search with one worker on the GPU.
4. The batched learning-rate grid (one vmap-ed model, nos.train.grid) against the
   sequential grid on the GPU: the rate each picks, and the time of each.

Exits 1 if a check fails, 2 without CUDA.  No GPU was at hand where this was written:
see benchmarks/README.md for whether it has run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def child_on_both_devices(task: str, epochs: float, repeats: int) -> None:
    from nos.train.evaluation import evaluate

    print("1. one child, GPU against CPU")
    times: dict[str, list[float]] = {"cuda": [], "cpu": []}
    rewards: dict[str, float] = {}
    for _ in range(repeats):
        for device in ("cuda", "cpu"):
            result, seconds = timed(lambda d=device: evaluate(
                "adam", task, epochs=epochs, lr=1e-2, seed=0, device=d))
            check(result.status == "ok", f"{device}: status {result.status} {result.error or ''}")
            times[device].append(seconds)
            rewards[device] = result.reward
    gpu, cpu = statistics.median(times["cuda"]), statistics.median(times["cpu"])
    print(f"  reward cuda {rewards['cuda']:.4f}, cpu {rewards['cpu']:.4f}; "
          f"time cuda {gpu:.2f} s, cpu {cpu:.2f} s (cpu/cuda {cpu / gpu:.2f}x)")
    check(abs(rewards["cuda"] - rewards["cpu"]) < 0.05, "rewards agree within 0.05")


def optimizer_on_cuda() -> None:
    from nos.optim.optimizer import Optimizer

    print("2. nos.Optimizer on CUDA against torch.optim.Adam")
    torch.manual_seed(0)
    shapes = [(256, 128), (128,), (64, 3, 3, 3)]
    for label, kwargs, torch_kwargs, lr in (
            ("foreach", {}, {"foreach": True}, 1e-3),
            ("fused", {"fused": True}, {"fused": True}, 1e-3),
            ("tensor lr", {}, {"foreach": True}, torch.tensor(1e-3, device="cuda"))):
        ours = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
        theirs = [p.detach().clone().requires_grad_(True) for p in ours]
        opt = Optimizer(ours, "adam", lr=lr, **kwargs)
        ref = torch.optim.Adam(theirs, lr=float(lr), **torch_kwargs)
        for _ in range(50):
            grads = [torch.randn(s, device="cuda") for s in shapes]
            for p, q, g in zip(ours, theirs, grads):
                p.grad, q.grad = g.clone(), g.clone()
            opt.step()
            ref.step()
        worst = max(((p - q).abs().max() / q.abs().max().clamp_min(1e-12)).item()
                    for p, q in zip(ours, theirs))
        check(worst < 1e-5, f"{label}: largest relative difference {worst:.2e}")


def shared_gpu_search(task: str) -> None:
    from nos.search import config as cfg
    from nos.search.driver import Search
    from nos.search.store import Store

    print("3. four children sharing one GPU through Ray")
    walls = {}
    for count, share in ((1, 1.0), (4, 0.25)):
        config = {"search": {"controller": "random", "budget": 24, "batch": 8, "seed": 0},
                  "task": {"name": task},
                  "evaluation": {"epochs": 2, "lr_grid": [1e-3, 1e-2, 1e-1], "grid_epochs": 0.5},
                  "workers": {"count": count, "num_gpus": share, "num_cpus": 1}}
        checked = cfg.validate(config, "gpu_check")
        with tempfile.TemporaryDirectory() as out:
            (_, seconds) = timed(lambda c=checked, o=out: Search(c, Path(o) / "run").run())
            with Store.open(Path(out) / "run") as store:
                rows = store.evaluations()
            devices = {r.details.get("device") for r in rows if r.status == "ok"}
        walls[count] = seconds
        check(all(r.status != "pending" for r in rows) and len(rows) == 24,
              f"{count} worker(s) x {share:g} GPU: every evaluation finished")
        check(devices and all(str(d).startswith("cuda") for d in devices),
              f"{count} worker(s): trained on {sorted(map(str, devices))}")
    print(f"  wall: 1 worker {walls[1]:.1f} s, 4 workers sharing the GPU {walls[4]:.1f} s "
          f"({walls[1] / walls[4]:.2f}x)")


def batched_grid(task: str, epochs: float) -> None:
    from nos.train.evaluation import evaluate

    print("4. the batched learning-rate grid against the sequential one, on the GPU")
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    picks, times = {}, {}
    for batched in (True, False, True, False):
        result, seconds = timed(lambda b=batched: evaluate(
            "adam", task, epochs=epochs, lr_grid=grid, grid_epochs=1, seed=0, device="cuda",
            batched_grid=b))
        picks[batched] = result.lr
        times.setdefault(batched, []).append(seconds)
    print(f"  picked lr: batched {picks[True]}, sequential {picks[False]}; time batched "
          f"{statistics.median(times[True]):.2f} s, sequential "
          f"{statistics.median(times[False]):.2f} s")
    check(picks[True] == picks[False], "both grids pick the same rate")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"{torch.cuda.device_count()} GPU(s)")
    child_on_both_devices(args.task, args.epochs, args.repeats)
    optimizer_on_cuda()
    shared_gpu_search(args.task)
    batched_grid(args.task, args.epochs)
    print(f"{len(FAILURES)} check(s) failed" if FAILURES else "every check passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
