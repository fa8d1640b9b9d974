"""Step time of the language's optimizers against torch.optim, measured side by side.

    .venv/bin/python benchmarks/optimizer_step.py [--device cpu|cuda] [--repeats 5]

Two parameter sets: a child-sized one (about 5,000 parameters in 8 tensors)
and a large one (10 million parameters in 20 tensors).  Each optimizer steps
the same parameters with fixed random gradients; the figure is the median
over repeats of the mean step time, and ratios are to torch.optim.Adam with
foreach=True measured in the same run.  The effective bandwidth counts the
bytes of parameters, gradients and buffers each rule must read and write
per step, against the machine's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import nos

SIZES = {
    "child (5k params, 8 tensors)": [(16, 1, 5), (16,), (16, 16, 5), (16,), (16, 16, 3), (16,),
                                     (10, 288), (10,)],
    "large (10M params, 20 tensors)": [(1000, 1000)] * 10 + [(1000,)] * 10,
}


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


def time_steps(opt: torch.optim.Optimizer, device: str, steps: int, repeats: int) -> float:
    for _ in range(3):
        opt.step()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            opt.step()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


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


# name -> (factory, tensors read+written per parameter element per step)
def optimizers(device: str):
    fused_ok = device == "cuda" or hasattr(torch, "_fused_adam_")
    table = {
        "torch Adam foreach": (lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), 7),
        "nos adam (foreach)": (lambda p: nos.Optimizer(p, "adam", lr=1e-3), 7),
        "nos adam (reference)": (lambda p: nos.Optimizer(p, "adam", lr=1e-3, foreach=False), 7),
        "nos powersign": (lambda p: nos.Optimizer(p, "powersign", lr=1e-3), 5),
        "nos lion": (lambda p: nos.Optimizer(p, "lion", lr=1e-3), 5),
    }
    if fused_ok:
        table["torch Adam fused"] = (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), 7)
    for name in ("fused",):
        try:
            nos.Optimizer(make_params([(2,)], device), "adam", **{name: True})
        except (TypeError, ValueError):
            continue
        table["nos adam (fused)"] = (lambda p: nos.Optimizer(p, "adam", lr=1e-3, fused=True), 7)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bandwidth = copy_bandwidth(args.device)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)\n")
    for size, shapes in SIZES.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        steps = 200 if numel < 1e5 else 10
        print(f"{size}: {numel:,} parameters in {len(shapes)} tensors")
        header = f"{'optimizer':24s} {'ms/step':>10s} {'vs foreach':>11s}"
        print(f"  {header} {'GB/s':>8s} {'of copy':>8s}")
        base = None
        for name, (factory, tensors) in optimizers(args.device).items():
            params = make_params(shapes, args.device)
            opt = factory(params)
            seconds = time_steps(opt, args.device, steps, args.repeats)
            base = base or seconds
            gbs = tensors * numel * 4 / seconds
            compiled = getattr(opt, "compile_seconds", None)
            note = f"  (compile {compiled:.1f} s)" if compiled else ""
            print(f"  {name:24s} {seconds * 1e3:10.4f} {seconds / base:10.2f}x "
                  f"{gbs / 1e9:8.2f} {gbs / bandwidth:7.0%}{note}")
        print()


if __name__ == "__main__":
    main()
