"""A rule becomes a drop-in ``torch.optim.Optimizer``.

The class is thin, as torch.optim's are: it validates hyperparameters, makes
the rule's buffers lazily on the first step, gathers parallel lists of
parameters, gradients and buffers, and calls an executor of the compiled
program (:mod:`nos.compile.compiler`).

Drop-in details: a group of a rule with ``beta1`` also carries torch's
``betas`` tuple (the two are one value, so ``CyclicLR``/``OneCycleLR`` can
cycle it); a tensor ``lr`` is never read on the host; the generator of a
seeded random rule is part of ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from nos.compile.compiler import compile_rule
from nos.compile.executors import Bucket, run_foreach, run_reference
from nos.compile.program import Program
from nos.lang.printer import bounds_text, format_number
from nos.lang.rule import Rule, parse
from nos.lang.tree import Statement

DEFAULT_LR = 1e-3
BETAS = ("beta1", "beta2")  # the rule params torch's ``betas`` tuple stands for
GENERATORS = "generators"  # the state_dict key of a seeded random rule's generators


def resolve(rule: Rule | str) -> tuple[Rule, float | None]:
    """A Rule from a Rule, a baseline's name, or rule text; with the baseline's lr."""
    if isinstance(rule, Rule):
        return rule, None
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a nos.Rule, rule text or a baseline name, got {rule!r}")
    from nos.optim.baselines import BASELINES

    if rule in BASELINES:
        return parse(BASELINES[rule].text), BASELINES[rule].lr
    return parse(rule), None


def _param_statements(rule: Rule) -> dict[str, Statement]:
    return {s.name: s for s in rule.expanded().statements if s.kind == "param"}


class _ParamGroup(dict):
    """A param group whose ``betas`` tuple and the rule's ``beta1``, ``beta2`` are one value.

    torch's schedulers write ``group["betas"] = (beta1, *rest)`` (``CyclicLR`` and
    ``OneCycleLR`` with ``cycle_momentum``); nos rules read ``beta1`` and ``beta2``.
    Writing either writes the other.
    """

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if key == "betas":
            for name, beta in zip(BETAS, value, strict=False):
                if name in self:
                    super().__setitem__(name, beta)
        elif key in BETAS and "betas" in self:
            betas = list(self["betas"])
            index = BETAS.index(key)
            if index < len(betas):
                betas[index] = value
                super().__setitem__("betas", tuple(betas))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


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
        seed: seeds the generator of ``noise``, ``annealed_noise`` and ``drop`` (one
            per device); its state is saved by ``state_dict()`` and restored by
            ``load_state_dict()``, so a resumed run draws what an uninterrupted one
            would.  Without a seed they draw from torch's global generator, which is
            the caller's to save and restore (``torch.get_rng_state()``), as for dropout.
        **hyper: values for the rule's params (``beta1=0.8``), per group too.  A rule
            with ``beta1`` also takes torch's ``betas=(beta1, beta2)``.

    ``lr`` may be a one-element tensor: it stays on its device (a scheduler fills
    it in place) and is never read on the host during a step.
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
        **hyper: float | tuple[float, ...],
    ) -> None:
        self.rule, baseline_lr = resolve(rule)
        self._compile()
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
        self.seed = seed
        self._saved_generators: dict[str, torch.Tensor] = {}  # loaded, not yet used
        defaults: dict[str, Any] = {"lr": lr}
        defaults.update({name: s.default for name, s in self._declared.items()})
        self._check_keys(hyper)
        self._split_betas(hyper)
        defaults.update(hyper)
        if self._betas:
            defaults["betas"] = tuple(defaults[name] for name in self._betas)
        super().__init__(params, defaults)

    def _compile(self) -> None:
        """What the rule makes: its program, declared params, and the caches of a run."""
        self.program: Program = compile_rule(self.rule)
        self._programs: dict[frozenset[str], Program] = {}
        self._fused: dict[frozenset[str], Any] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._declared = _param_statements(self.rule)
        # torch's betas tuple: beta1, then beta2 if the rule has it
        self._betas = BETAS[:1 + ("beta2" in self._declared)] if "beta1" in self._declared else ()

    def _check_keys(self, group: dict) -> None:
        allowed = {"params", "lr", "initial_lr", *self._declared}
        if self._betas:
            allowed.add("betas")
        unknown = sorted(set(group) - allowed)
        if unknown:
            names = ", ".join(sorted(self._declared)) or "none"
            raise ValueError(
                f"unknown hyperparameter {unknown[0]!r} for this rule; its params are: {names}"
            )

    def _split_betas(self, group: dict) -> None:
        """torch's ``betas`` given: check it and set the rule's ``beta1`` (and ``beta2``)."""
        if "betas" not in group:
            return
        betas = group.pop("betas")
        names = ", ".join(self._betas)
        if not isinstance(betas, (tuple, list)) or len(betas) != len(self._betas):
            raise ValueError(f"Invalid betas: {betas!r}, must be a tuple of {len(self._betas)} "
                             f"({names})")
        given = [name for name in self._betas if name in group]
        if given:
            raise ValueError(f"give betas or {names}, not both (got betas and {given[0]})")
        group.update(zip(self._betas, betas, strict=True))

    def _group(self, group: dict) -> dict:
        """The group as torch.optim keeps it, with ``betas`` one value with beta1, beta2."""
        if not self._betas:
            return group
        if "betas" in group and not all(name in group for name in self._betas):
            group = dict(group)
            self._split_betas(group)
        wrapped = _ParamGroup(group)
        wrapped["betas"] = tuple(group[name] for name in self._betas)
        return wrapped

    def _check_values(self, group: dict) -> None:
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            if lr.numel() != 1:
                raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
            if not lr >= 0:
                raise ValueError(f"Invalid lr: {float(lr)}, must be >= 0")
        elif not lr >= 0:
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
        self._split_betas(param_group)
        super().add_param_group(param_group)
        self.param_groups[-1] = self._group(self.param_groups[-1])
        self._check_values(self.param_groups[-1])

    def __getstate__(self) -> dict[str, Any]:
        """torch's picklable state, with the rule and settings (compiled again on load)."""
        state = super().__getstate__()
        state.update({name: getattr(self, name)
                      for name in ("rule", "total_steps", "foreach", "fused", "seed")})
        state["_saved_generators"] = self._generator_states()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "program" not in self.__dict__:  # unpickled, not load_state_dict
            self._compile()
        self.param_groups = [self._group(group) for group in self.param_groups]

    def _generator_states(self) -> dict[str, torch.Tensor]:
        states = dict(self._saved_generators)
        states.update({str(d): g.get_state() for d, g in self._generators.items()})
        return states

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict; with a seed, also the generators' states (``"generators"``).

        The extra key holds only a number and uint8 tensors, so the dict loads with
        ``torch.load(weights_only=True)``; torch's own ``load_state_dict`` ignores it.
        """
        state = super().state_dict()
        if self.seed is not None:
            state[GENERATORS] = {"seed": self.seed, "states": self._generator_states()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``; a saved seed and generator states are restored too."""
        super().load_state_dict(state_dict)
        saved = state_dict.get(GENERATORS)
        if saved is not None:
            self.seed = int(saved["seed"])
            self._generators = {}
            self._saved_generators = {name: state.cpu()
                                      for name, state in saved["states"].items()}

    def _specialised(self, hyper: dict[str, float]) -> Program:
        """The program compiled for this group's zero-valued params (``wd = 0``)."""
        zeros = frozenset(name for name, value in hyper.items() if value == 0)
        program = self._programs.get(zeros)
        if program is None:
            program = self._programs[zeros] = compile_rule(self.rule, zeros)
        return program

    def _fused_step(self, hyper: dict[str, float]):
        from nos.compile.fused import FusedStep

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
            generator = torch.Generator(device)
            saved = self._saved_generators.pop(str(device), None)
            if saved is None:
                generator.manual_seed(self.seed)
            else:
                generator.set_state(saved)
            self._generators[device] = generator
        return self._generators[device]

    @staticmethod
    def _with_grads(group: dict) -> list[torch.Tensor]:
        """The group's parameters that have gradients; refuses what the step cannot take."""
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("nos.Optimizer does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("nos.Optimizer does not support complex parameters")
            params.append(p)
        return params

    def _buckets(self, params: list[torch.Tensor]) -> dict[tuple, tuple[list, list, list]]:
        """Tensors by device, dtype and step; state made lazily."""
        buckets: dict[tuple, tuple[list, list, list]] = {}
        for p in params:
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
        # all that can refuse the step is done before any state or parameter changes
        work = []
        for group in self.param_groups:
            hyper = {name: group[name] for name in self.program.params}
            work.append((group, hyper, self._specialised(hyper), self._with_grads(group)))
        for group, hyper, program, params in work:
            lr = group["lr"]
            lr = lr if isinstance(lr, torch.Tensor) else float(lr)
            for (_, _, t), (ps, gs, states) in self._buckets(params).items():
                buffers = {name: [s[name] for s in states] for name in self.program.buffers}
                bucket = Bucket(ps, gs, buffers, hyper, lr, t, self.total_steps)
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
