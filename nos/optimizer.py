"""A rule becomes a drop-in ``torch.optim.Optimizer``.

The class is thin, as torch.optim's are: it validates hyperparameters, makes
the rule's buffers lazily on the first step, gathers parallel lists of
parameters, gradients and buffers, and calls an executor of the compiled
program (:mod:`nos.compiler`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from nos.compiler import Group, Program, compile_rule, run_foreach, run_reference
from nos.parser import parse
from nos.printer import bounds_text, format_number
from nos.rule import Rule, Statement

DEFAULT_LR = 1e-3


def resolve(rule: Rule | str) -> tuple[Rule, float | None]:
    """A Rule from a Rule, a baseline's name, or rule text; with the baseline's lr."""
    if isinstance(rule, Rule):
        return rule, None
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a nos.Rule, rule text or a baseline name, got {rule!r}")
    from nos.baselines import BASELINES

    if rule in BASELINES:
        return parse(BASELINES[rule].text), BASELINES[rule].lr
    return parse(rule), None


def _param_statements(rule: Rule) -> dict[str, Statement]:
    return {s.name: s for s in rule.expanded().statements if s.kind == "param"}


class Optimizer(torch.optim.Optimizer):
    """Any nos rule as a torch optimizer: ``w <- w - lr * update``.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        rule: a :class:`nos.Rule`, rule text, or a baseline's name (``"adam"``).
        lr: learning rate; defaults to the baseline's own, else 1e-3.
        total_steps: the T of the rule (needed by rules that read T, ld, cd, rd).
        foreach: use the multi-tensor path (default) or the per-tensor reference.
        fused: compile the whole step with ``torch.compile`` into one kernel per
            tensor (fastest for large models; compiles on the first step).
        seed: seeds the generator of ``noise``, ``annealed_noise`` and ``drop``;
            without it they draw from torch's global generator.
        **hyper: values for the rule's params (``beta1=0.8``), per group too.
    """

    def __init__(
        self,
        params: Iterable,
        rule: Rule | str = "adam",
        lr: float | None = None,
        total_steps: int | None = None,
        *,
        foreach: bool = True,
        fused: bool = False,
        seed: int | None = None,
        **hyper: float,
    ) -> None:
        self.rule, baseline_lr = resolve(rule)
        self.program: Program = compile_rule(self.rule)
        self._programs: dict[frozenset[str], Program] = {}
        self._declared = _param_statements(self.rule)
        if lr is None:
            lr = baseline_lr if baseline_lr is not None else DEFAULT_LR
        if self.program.needs_total_steps and total_steps is None:
            raise ValueError(
                f"the rule reads T (directly or through ld, cd or rd): pass total_steps "
                f"(rule: {self.rule})"
            )
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"Invalid total_steps: {total_steps}, must be >= 1")
        self.total_steps = total_steps
        self.foreach = foreach
        self.fused = fused
        if fused and self.program.random:
            raise ValueError("fused=True does not support random rules (noise, drop)")
        self._fused: dict[frozenset[str], Any] = {}
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        defaults: dict[str, Any] = {"lr": lr}
        defaults.update({name: s.default for name, s in self._declared.items()})
        self._check_keys(hyper)
        defaults.update(hyper)
        super().__init__(params, defaults)

    def _check_keys(self, group: dict) -> None:
        allowed = {"params", "lr", "initial_lr", *self._declared}
        unknown = sorted(set(group) - allowed)
        if unknown:
            names = ", ".join(sorted(self._declared)) or "none"
            raise ValueError(
                f"unknown hyperparameter {unknown[0]!r} for this rule; its params are: {names}"
            )

    def _check_values(self, group: dict) -> None:
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor) and not lr >= 0:
            raise ValueError(f"Invalid lr: {lr}, must be >= 0")
        for name, s in self._declared.items():
            value = group[name]
            if not isinstance(value, (int, float)):
                raise ValueError(f"Invalid {name}: {value!r}, must be a number")
            if s.bounds is not None and value not in s.bounds:
                raise ValueError(
                    f"Invalid {name}: {format_number(float(value))}, "
                    f"must be in {bounds_text(s.bounds)}"
                )

    def add_param_group(self, param_group: dict) -> None:
        self._check_keys(param_group)
        super().add_param_group(param_group)
        self._check_values(self.param_groups[-1])

    def _specialised(self, hyper: dict[str, float]) -> Program:
        """The program compiled for this group's zero-valued params (``wd = 0``)."""
        zeros = frozenset(name for name, value in hyper.items() if value == 0)
        program = self._programs.get(zeros)
        if program is None:
            program = self._programs[zeros] = compile_rule(self.rule, zeros)
        return program

    def _fused_step(self, hyper: dict[str, float]):
        from nos.fused import FusedStep

        zeros = frozenset(name for name, value in hyper.items() if value == 0)
        if zeros not in self._fused:
            self._fused[zeros] = FusedStep(self.rule, zeros)
        return self._fused[zeros]

    @property
    def compile_seconds(self) -> float | None:
        """Seconds the fused path spent on its first (compiling) steps."""
        times = [f.compile_seconds for f in self._fused.values() if f.compile_seconds]
        return sum(times) if times else None

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]

    def _buckets(self, group: dict) -> dict[tuple, tuple[list, list, list]]:
        """Tensors with gradients, by device, dtype and step; state made lazily."""
        buckets: dict[tuple, tuple[list, list, list]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("nos.Optimizer does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("nos.Optimizer does not support complex parameters")
            state = self.state[p]
            if not state:
                state["step"] = 0
                for name in self.program.buffers:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            key = (p.device, p.dtype, state["step"])
            ps, gs, states = buckets.setdefault(key, ([], [], []))
            ps.append(p)
            gs.append(p.grad)
            states.append(state)
        return buckets

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        run = run_foreach if self.foreach else run_reference
        for group in self.param_groups:
            hyper = {name: group[name] for name in self.program.params}
            program = self._specialised(hyper)
            for (_, _, t), (ps, gs, states) in self._buckets(group).items():
                buffers = {name: [s[name] for s in states] for name in self.program.buffers}
                bucket = Group(ps, gs, buffers, hyper, float(group["lr"]), t, self.total_steps)
                if self.fused:
                    self._fused_step(hyper)(bucket)
                else:
                    run(program, bucket, self._generator)
                for name, tensors in buffers.items():
                    for state, tensor in zip(states, tensors, strict=False):
                        state[name] = tensor
        return loss

    def __repr__(self) -> str:
        return f"nos.Optimizer({str(self.rule)!r}, lr={self.defaults['lr']})"
