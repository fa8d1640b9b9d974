"""Step time of nos.Optimizer against torch.optim for Adam, Adafactor and Muon, side by side.

    .venv/bin/python benchmarks/optimizer_step.py [--device cpu|cuda] [--repeats 12]
        [--only adam,adam-fused,adafactor,muon] [--json FILE]

Two parameter sets: a child-sized one (about 5,000 parameters in 8 tensors)
and a large one (10 million parameters in 20 tensors).  For each rule (adam,
adafactor, muon) five ways of stepping are measured: ``nos.Optimizer(ps, name)``
with its defaults (torch's default keywords, ``foreach=None``: the multi-tensor
path on an accelerator and for small tensors, the per-tensor path for large
tensors on the CPU), nos with ``foreach=True`` and with ``foreach=False``, and
torch's own class with ``foreach=False`` and ``foreach=True``.  Muon takes 2-D
parameters only (torch and nos both refuse others), so it steps only the 2-D
tensors of each set; ``torch.optim.Muon`` has no foreach path, so it has one
torch row.  ``adam-fused`` measures ``nos.Optimizer(ps, "adam", fused=True)``
(the torch.compile path) against ``torch.optim.Adam(fused=True)`` where torch
has a fused Adam on the device.

Each optimizer steps its own copy of the same parameters with fixed random
gradients.  After two warm-up steps (the fused path compiles on the first),
up to three timed single steps set how many steps each measurement of a rule
takes: about 0.2 s of its fastest entry's steps, 1 to 200, the same number for
every entry of the rule.  The repeats are interleaved (every optimizer of the set once
per round, in a rotated order) so that drift in the machine's speed falls on
all of them alike; each figure is the median over rounds.  Ratios are medians
of per-round ratios: each unfused row against torch's fastest unfused step for
the same rule (``foreach=False`` or ``foreach=True``, whichever has the smaller
median here: on the CPU the single-tensor loop can win on large tensors), each
fused row against ``torch.optim.Adam(fused=True)``.  The targets are nos's
default at most 0.5x torch's fastest unfused step on the large set and 0.8x on
the child, and nos's fused Adam at most 1.1x torch's on both.

The effective bandwidth counts the bytes each rule must read and write per
step, 4 per float32 element, against the machine's copy bandwidth (read +
write) measured in the same run.  Adam: the parameter and its m and v read and
written, the gradient read (7 tensors).  Adafactor: the parameter read and
written and the gradient read (3 tensors), and its own buffers read and
written: a row and a column vector per matrix (torch's shapes: the last
dimension, and the one before it, reduced to 1), a whole variance per vector.
Muon: the parameter and one momentum buffer read and written, the gradient
read (5 tensors); its Newton-Schulz iterations are matrix products, compute
rather than memory traffic, and are not counted, so its figure is a lower
bound on the traffic and far from the copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import nos

SIZES = {
    "child": ("child (5k params, 8 tensors)",
              [(16, 1, 5), (16,), (16, 16, 5), (16,), (16, 16, 3), (16,), (10, 288), (10,)]),
    "large": ("large (10M params, 20 tensors)", [(1000, 1000)] * 10 + [(1000,)] * 10),
}
RULES = ("adam", "adam-fused", "adafactor", "muon")
TORCH_CLASS = {"adam": "Adam", "adafactor": "Adafactor", "muon": "Muon"}
UNFUSED_TARGET = {"child": 0.8, "large": 0.5}  # nos default / torch's fastest unfused
FUSED_TARGET = 1.1  # nos fused / torch fused, on both sets
TARGET_STEP_SECONDS = 0.2  # steps per measurement: about this long, 1 to MAX_STEPS
MAX_STEPS = 200


@dataclass
class Entry:
    """One way of stepping: a row of the table."""

    rule: str  # one of RULES
    label: str  # "nos default", "torch foreach=True", ...
    factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    torch: bool  # a torch.optim class, the reference of the rule's ratios
    opt: torch.optim.Optimizer | None = None
    steps: int = 1
    times: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.rule}: {self.label}"


def make_params(shapes, device) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


def rule_shapes(rule: str, shapes: list[tuple]) -> list[tuple]:
    """The tensors a rule steps: Muon only the 2-D ones."""
    return [s for s in shapes if len(s) == 2] if rule == "muon" else list(shapes)


def bytes_per_step(rule: str, shapes: list[tuple]) -> int:
    """Bytes of float32 the rule must read and write per step (see the docstring)."""
    total = 0
    for shape in shapes:
        n = torch.Size(shape).numel()
        if rule in ("adam", "adam-fused"):
            total += 7 * n
        elif rule == "muon":
            total += 5 * n
        elif rule == "adafactor":
            buffers = n / shape[-1] + n / shape[-2] if len(shape) >= 2 else n
            total += 3 * n + 2 * int(buffers)
    return 4 * total


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def mean_step(opt: torch.optim.Optimizer, device: str, steps: int) -> float:
    sync(device)
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


def entries(rules: list[str], device: str) -> list[Entry]:
    """Every way of stepping the chosen rules, torch's first within each rule."""
    table = []
    for rule in rules:
        if rule == "adam-fused":
            if fused_available(device):
                table.append(Entry(rule, "torch fused=True",
                                   lambda p: torch.optim.Adam(p, fused=True), True))
            table.append(Entry(rule, "nos fused=True",
                               lambda p: nos.Optimizer(p, "adam", fused=True), False))
            continue
        cls = getattr(torch.optim, TORCH_CLASS[rule])
        if rule == "muon":  # torch.optim.Muon has no foreach keyword: one torch path
            table.append(Entry(rule, "torch (no foreach)", cls, True))
        else:
            for foreach in (False, True):
                table.append(Entry(rule, f"torch foreach={foreach}",
                                   lambda p, c=cls, f=foreach: c(p, foreach=f), True))
        table.append(Entry(rule, "nos default", lambda p, r=rule: nos.Optimizer(p, r), False))
        for foreach in (True, False):
            table.append(Entry(rule, f"nos foreach={foreach}",
                               lambda p, r=rule, f=foreach: nos.Optimizer(p, r, foreach=f),
                               False))
    return table


def measure(table: list[Entry], shapes, device: str, repeats: int) -> None:
    """Per-round step times of every entry, the rounds interleaved."""
    fastest: dict[str, float] = {}
    for entry in table:
        entry.opt = entry.factory(make_params(rule_shapes(entry.rule, shapes), device))
        for _ in range(2):  # warm-up, and the fused path's compilation
            entry.opt.step()
        timed = [mean_step(entry.opt, device, 1)]
        while len(timed) < 3 and sum(timed) < 1.0:
            timed.append(mean_step(entry.opt, device, 1))
        fastest[entry.rule] = min(fastest.get(entry.rule, float("inf")), *timed)
    for entry in table:  # the same number of steps for every entry of a rule
        entry.steps = max(1, min(MAX_STEPS, round(TARGET_STEP_SECONDS / fastest[entry.rule])))
    for r in range(repeats):
        k = r % len(table)
        for entry in table[k:] + table[:k]:
            entry.times.append(mean_step(entry.opt, device, entry.steps))


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def reference(rule_entries: list[Entry]) -> Entry | None:
    """Torch's fastest path for the rule here (by median), the rows' reference."""
    torch_entries = [e for e in rule_entries if e.torch]
    return min(torch_entries, key=lambda e: statistics.median(e.times), default=None)


def report(size: str, shapes, table: list[Entry], bandwidth: float) -> dict:
    """Print the set's table; return its figures."""
    label, _ = SIZES[size]
    numel = sum(torch.Size(s).numel() for s in shapes)
    print(f"{label}: {numel:,} parameters in {len(shapes)} tensors")
    print(f"  {'rule, then optimizer':28s} {'ms/step':>10s} {'vs torch':>9s} {'GB/s':>8s}"
          f" {'of copy':>8s} {'steps':>6s}")
    figures: dict = {"parameters": numel, "tensors": len(shapes), "rules": {}}
    targets = []
    for rule in dict.fromkeys(e.rule for e in table):
        rule_entries = [e for e in table if e.rule == rule]
        mine = rule_shapes(rule, shapes)
        nbytes = bytes_per_step(rule, mine)
        ref = reference(rule_entries)
        what = "torch's fused Adam" if rule == "adam-fused" else "torch's fastest unfused step"
        print(f"  {rule}: {nbytes / 1e6:.2f} MB read and written per step;"
              f" ratios to {ref.label if ref else 'nothing on this device'} ({what})")
        if rule == "muon":
            print(f"    (only the 2-D tensors, {len(mine)} of {len(shapes)}: "
                  f"{sum(torch.Size(s).numel() for s in mine):,} parameters; "
                  f"torch.optim.Muon has no foreach;\n"
                  f"     Newton-Schulz's matrix products are compute, not counted in the bytes)")
        rows = {}
        for e in rule_entries:
            seconds = statistics.median(e.times)
            gbs = nbytes / seconds
            ratio = median_ratio(e.times, ref.times) if ref else None
            compiled = getattr(e.opt, "compile_seconds", None)
            note = f"  (compile {compiled:.1f} s)" if compiled else ""
            shown = f"{ratio:8.2f}x" if ratio is not None else f"{'-':>9s}"
            print(f"    {e.label:26s} {seconds * 1e3:10.4f} {shown} {gbs / 1e9:8.2f}"
                  f" {gbs / bandwidth:7.0%} {e.steps:6d}{note}")
            rows[e.label] = {"seconds": seconds, "rounds": e.times, "steps": e.steps,
                             "ratio": ratio, "bytes_per_second": gbs,
                             "of_copy": gbs / bandwidth, "compile_seconds": compiled}
        mine_label = "nos fused=True" if rule == "adam-fused" else "nos default"
        limit = FUSED_TARGET if rule == "adam-fused" else UNFUSED_TARGET[size]
        ratio = rows[mine_label]["ratio"]
        target = {"row": mine_label, "against": ref.label if ref else None,
                  "ratio": ratio, "at_most": limit,
                  "met": None if ratio is None else ratio <= limit}
        targets.append((rule, target))
        figures["rules"][rule] = {"parameters": sum(torch.Size(s).numel() for s in mine),
                                  "tensors": len(mine), "shapes": mine,
                                  "bytes_per_step": nbytes,
                                  "reference": ref.label if ref else None,
                                  "rows": rows, "target": target}
    print("  targets:")
    for rule, t in targets:
        if t["ratio"] is None:
            print(f"    {rule:10s} {t['row']} has no torch reference on this device")
            continue
        verdict = "met" if t["met"] else "NOT met"
        print(f"    {rule:10s} {t['row']} / {t['against']}: {t['ratio']:.2f}x"
              f" (target <= {t['at_most']}x: {verdict})")
    print()
    return figures


def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(RULES)
    chosen = {name.strip() for value in values for name in value.split(",") if name.strip()}
    unknown = chosen - set(RULES)
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(RULES)}")
    return [rule for rule in RULES if rule in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"rules to run, comma-separated or repeated ({', '.join(RULES)}); "
                             f"default all")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = parser.parse_args()
    rules = parse_only(args.only)
    if args.threads:
        torch.set_num_threads(args.threads)
    bandwidth = copy_bandwidth(args.device)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved rounds")
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)\n")
    results = {"device": args.device, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "repeats": args.repeats,
               "copy_bytes_per_second": bandwidth, "sets": {}}
    for size, (_, shapes) in SIZES.items():
        table = entries(rules, args.device)
        measure(table, shapes, args.device, args.repeats)
        results["sets"][size] = report(size, shapes, table, bandwidth)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
