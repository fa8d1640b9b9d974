"""Step time of the language's optimizers against torch.optim, measured side by side.

    .venv/bin/python benchmarks/optimizer_step.py [--device cpu|cuda] [--repeats 12]

Two parameter sets: a child-sized one (about 5,000 parameters in 8 tensors)
and a large one (10 million parameters in 20 tensors).  Each optimizer steps
its own copy of the same parameters with fixed random gradients.  The repeats
are interleaved (every optimizer once per round, in a rotated order) so that
drift in the machine's speed falls on all of them alike; each figure is the
median over rounds.  Ratios are medians of per-round ratios, against torch's
fastest unfused path for the same work (``torch.optim.Adam`` with
``foreach=False`` or ``foreach=True``, whichever is faster here: on the CPU the
single-tensor loop wins on large tensors) and, for the fused paths, against
``torch.optim.Adam(fused=True)``.  The effective bandwidth counts the bytes of
parameters, gradients and buffers each rule must read and write per step,
against the machine's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import nos

SIZES = {
    "child (5k params, 8 tensors)": [(16, 1, 5), (16,), (16, 16, 5), (16,), (16, 16, 3), (16,),
                                     (10, 288), (10,)],
    "large (10M params, 20 tensors)": [(1000, 1000)] * 10 + [(1000,)] * 10,
}
TORCH_UNFUSED = ("torch Adam single-tensor", "torch Adam foreach")
TORCH_FUSED = "torch Adam fused"


def make_params(shapes, device) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def mean_step(opt: torch.optim.Optimizer, device: str, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def copy_bandwidth(device: str, numel: int = 25_000_000) -> float:
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    n = 20
    for _ in range(n):
        dst.copy_(src)
    sync(device)
    return 2 * src.element_size() * numel * n / (time.perf_counter() - start)


def fused_available(device: str) -> bool:
    try:
        torch.optim.Adam(make_params([(2,)], device), fused=True).step()
    except (RuntimeError, ValueError):
        return False
    return True


# name -> (factory, tensors read+written per parameter element per step)
def optimizers(device: str) -> dict[str, tuple[Callable, int]]:
    table: dict[str, tuple[Callable, int]] = {
        "torch Adam single-tensor": (lambda p: torch.optim.Adam(p, lr=1e-3, foreach=False), 7),
        "torch Adam foreach": (lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), 7),
        "nos adam (default)": (lambda p: nos.Optimizer(p, "adam", lr=1e-3), 7),
        "nos adam (foreach=False)": (
            lambda p: nos.Optimizer(p, "adam", lr=1e-3, foreach=False), 7),
        "nos powersign": (lambda p: nos.Optimizer(p, "powersign", lr=1e-3), 5),
        "nos lion": (lambda p: nos.Optimizer(p, "lion", lr=1e-3), 5),
    }
    if fused_available(device):
        table[TORCH_FUSED] = (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), 7)
    table["nos adam (fused)"] = (lambda p: nos.Optimizer(p, "adam", lr=1e-3, fused=True), 7)
    return table


def measure(shapes, device: str, steps: int, repeats: int) -> tuple[dict, dict]:
    """Per-round step times of every optimizer, the rounds interleaved."""
    table = optimizers(device)
    opts = {name: factory(make_params(shapes, device)) for name, (factory, _) in table.items()}
    for opt in opts.values():
        for _ in range(3):  # warm-up, and the fused paths' compilation
            opt.step()
    sync(device)
    names = list(opts)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(mean_step(opts[name], device, steps))
    return times, {name: getattr(opt, "compile_seconds", None) for name, opt in opts.items()}


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def report(size: str, shapes, times: dict, compiled: dict, table: dict, bandwidth: float) -> None:
    numel = sum(torch.Size(s).numel() for s in shapes)
    unfused = min(TORCH_UNFUSED, key=lambda n: statistics.median(times[n]))
    print(f"{size}: {numel:,} parameters in {len(shapes)} tensors")
    print(f"  torch's fastest unfused Adam here: {unfused}")
    print(f"  {'optimizer':26s} {'ms/step':>10s} {'vs unfused':>11s} {'vs fused':>9s}"
          f" {'GB/s':>8s} {'of copy':>8s}")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        gbs = table[name][1] * numel * 4 / seconds
        vs_fused = (f"{median_ratio(samples, times[TORCH_FUSED]):8.2f}x"
                    if TORCH_FUSED in times else f"{'-':>9s}")
        note = f"  (compile {compiled[name]:.1f} s)" if compiled.get(name) else ""
        print(f"  {name:26s} {seconds * 1e3:10.4f} {median_ratio(samples, times[unfused]):10.2f}x"
              f" {vs_fused} {gbs / 1e9:8.2f} {gbs / bandwidth:7.0%}{note}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bandwidth = copy_bandwidth(args.device)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved rounds")
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)\n")
    table = optimizers(args.device)
    for size, shapes in SIZES.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        steps = 200 if numel < 1e5 else 10
        times, compiled = measure(shapes, args.device, steps, args.repeats)
        report(size, shapes, times, compiled, table, bandwidth)


if __name__ == "__main__":
    main()
