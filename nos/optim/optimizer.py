"""A rule becomes a drop-in ``torch.optim.Optimizer``.

The class is thin, as torch.optim's are: it validates hyperparameters, makes
the rule's buffers lazily on the first step, gathers parallel lists of
parameters, gradients and buffers, and calls an executor of the compiled
program (:mod:`nos.compile.compiler`).

Drop-in details: a group of a rule with ``beta1`` also carries torch's
``betas`` tuple (the two are one value, so ``CyclicLR``/``OneCycleLR`` can
cycle it), and likewise ``etas``, ``step_sizes``, ``ns_coefficients``
(:mod:`nos.optim.keywords`); a tensor ``lr`` is never read on the host (unless
the rule reads ``lr``); the generator of a seeded random rule is part of
``state_dict()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from nos.compile.compiler import compile_rule, specialise
from nos.compile.evaluate import evaluate
from nos.compile.executors import (
    Bucket,
    foreach_steps,
    matrix_view,
    reference_steps,
    run_foreach,
    run_reference,
    tensor_facts,
)
from nos.compile.program import FULL, Program, shape_of
from nos.lang.ops import OPS, combine
from nos.lang.rule import Rule, parse
from nos.lang.tree import TENSOR_FACTS, Statement
from nos.optim.keywords import (
    TORCH_IGNORED,
    TORCH_STATE,
    check_group,
    check_value,
    number,
    split_tuples,
    translate,
    tuple_keywords,
)

DEFAULT_LR = 1e-3
FOREACH_LIMIT = 1 << 16  # mean elements per tensor from which the CPU steps one at a time
GENERATORS = "generators"  # the state_dict key of a seeded random rule's generators
TRAIN_MODE = "train_mode"  # a group key of rules with views: False after eval()
KEPT_W = "w_train"  # the parameter's training value, kept while eval() shows another


def resolve(rule: Rule | str) -> tuple[Rule, float | None, str]:
    """A Rule from a Rule, a baseline's name, or rule text; with the baseline's lr and the
    name messages give the rule."""
    if isinstance(rule, Rule):
        return rule, None, _short(str(rule))
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a nos.Rule, rule text or a baseline name, got {rule!r}")
    from nos.optim.baselines import BASELINES

    if rule in BASELINES:
        return parse(BASELINES[rule].text), BASELINES[rule].lr, rule
    return parse(rule), None, _short(rule)


def _short(text: str) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= 40 else one_line[:37] + "...")


def _param_statements(rule: Rule) -> dict[str, Statement]:
    return {s.name: s for s in rule.expanded().statements if s.kind == "param"}


class _ParamGroup(dict):
    """A param group whose tuple keywords (``betas``, ``etas``, ...) and the rule's params
    they stand for (``beta1``, ``beta2``) are one value.

    torch's schedulers write ``group["betas"] = (beta1, *rest)`` (``CyclicLR`` and
    ``OneCycleLR`` with ``cycle_momentum``); nos rules read ``beta1`` and ``beta2``.
    Writing either writes the other.
    """

    tuples: dict[str, tuple[str, ...]] = {}  # set on each group (kept by pickle)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if key in self.tuples and isinstance(value, (tuple, list)):
            for name, part in zip(self.tuples[key], value, strict=False):
                if name in self:
                    super().__setitem__(name, part)
            return
        for tuple_key, names in self.tuples.items():
            if key in names and tuple_key in self:
                parts = list(self[tuple_key])
                index = names.index(key)
                if index < len(parts):
                    parts[index] = value
                    super().__setitem__(tuple_key, tuple(parts))

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
        rule: a :class:`nos.Rule`, rule text, or a named rule (``"adam"``, and every
            torch.optim optimizer by its lower-case class name, with torch's keywords).
        lr: learning rate; defaults to the named rule's own, else 1e-3.
        total_steps: the T of the rule (needed by rules that read T, ld, cd, rd).
        foreach: the multi-tensor path (True), the per-tensor one (False), or (None,
            the default) the faster for the tensors at hand: multi-tensor on an
            accelerator and for small tensors, per tensor for large tensors on the CPU.
        fused: compile the whole step with ``torch.compile`` into one kernel per
            tensor (fastest for large models; compiles on the first step).
        maximize: step up the gradient (as torch's ``maximize``), per group too.
        capturable, differentiable: accepted as False only (a nos step reads the step
            number on the host and runs without autograd).
        seed: seeds the generator of ``noise``, ``annealed_noise`` and ``drop`` (one
            per device); its state is saved by ``state_dict()`` and restored by
            ``load_state_dict()``, so a resumed run draws what an uninterrupted one
            would.  Without a seed they draw from torch's global generator, which is
            the caller's to save and restore (``torch.get_rng_state()``), as for dropout.
        **hyper: values for the rule's params (``beta1=0.8``, ``weight_decay=0.1``,
            ``amsgrad=True``), per group too, and torch's tuples standing for several
            (``betas=(beta1, beta2)``, ``etas``, ``step_sizes``, ``ns_coefficients``).

    ``lr`` may be a one-element tensor: it stays on its device (a scheduler fills
    it in place) and is never read on the host during a step, except by rules that
    read ``lr`` themselves (Rprop, ASGD, Adafactor).
    """

    def __new__(cls, params: Iterable = (), rule: Rule | str = "adam", *args: Any,
                **kwargs: Any) -> Any:
        """A learned optimizer's checkpoint (a path ending in ``.pt``, written by ``nos
        learn``) gives a :class:`nos.learned.LearnedOptimizer`; anything else a rule's."""
        from nos.learned.checkpoint import is_checkpoint_path

        if cls is Optimizer and is_checkpoint_path(rule):
            from nos.learned.optimizer import LearnedOptimizer

            return LearnedOptimizer(params, rule, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        params: Iterable,
        rule: Rule | str = "adam",
        lr: float | torch.Tensor | None = None,
        total_steps: int | None = None,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        seed: int | None = None,
        **hyper: Any,
    ) -> None:
        self.rule, baseline_lr, self.name = resolve(rule)
        self._compile()
        if lr is None:
            lr = baseline_lr if baseline_lr is not None else DEFAULT_LR
        for flag, value in (("capturable", capturable), ("differentiable", differentiable)):
            if value:
                raise ValueError(f"Invalid {flag}: True is not supported for rule {self.name} "
                                 f"(a nos step reads the step number on the host and runs "
                                 f"without autograd)")
        if self.program.needs_total_steps and total_steps is None:
            raise ValueError(
                f"the rule reads T (directly or through ld, cd or rd): pass total_steps "
                f"(rule: {self.rule})"
            )
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"Invalid total_steps: {total_steps}, must be >= 1")
        self.total_steps = total_steps
        self.foreach = foreach
        self.fused = bool(fused)
        if self.fused and foreach:
            raise ValueError(f"foreach and fused cannot both be True (rule {self.name})")
        if self.fused and self.program.random:
            raise ValueError("fused=True does not support random rules (noise, drop)")
        if self.fused and self.program.crosses:
            raise ValueError(f"fused=True does not support reductions over all parameters "
                             f"(gsum, gnorm, ...; rule {self.name}); use the default path")
        self.seed = seed
        self._saved_generators: dict[str, torch.Tensor] = {}  # loaded, not yet used
        defaults: dict[str, Any] = {"lr": lr, "maximize": bool(maximize)}
        if self._views:
            defaults[TRAIN_MODE] = True
        defaults.update({name: s.default for name, s in self._declared.items()})
        self._check_keys(hyper)
        split_tuples(hyper, self._tuples, self.name)
        translate(hyper, self.name)
        defaults.update(hyper)
        for key, names in self._tuples.items():
            defaults[key] = tuple(defaults[name] for name in names)
        super().__init__(params, defaults)

    def _compile(self) -> None:
        """What the rule makes: its program, declared params, and the caches of a run."""
        self.program: Program = compile_rule(self.rule)
        self._programs: dict[tuple, Program] = {}
        self._fused: dict[tuple, Any] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._declared = _param_statements(self.rule)
        self._tuples = tuple_keywords(self._declared, self.__dict__.get("name", ""))
        self._switch_params = tuple(sorted(self.program.switches & set(self._declared)))
        self._switch_facts = tuple(sorted(self.program.switches & TENSOR_FACTS))
        self._facts = tuple(sorted(set(self.program.facts) | set(self._switch_facts)))
        self._matrix_calls = [node for s in self.rule.expanded().statements if s.expr is not None
                              for node in s.expr.walk()
                              if node.op in OPS and OPS[node.op].matrix]
        self._views = {s.name: s.expr for s in self.rule.expanded().statements
                       if s.kind == "view"}
        if "name" not in self.__dict__:
            self.name = _short(str(self.rule))

    def _check_keys(self, group: dict) -> None:
        allowed = {"params", "lr", "initial_lr", "maximize", TRAIN_MODE, *self._declared,
                   *self._tuples}
        unknown = sorted(set(group) - allowed)
        if unknown:
            names = ", ".join(sorted(set(self._declared) | set(self._tuples))) or "none"
            raise ValueError(
                f"unknown keyword {unknown[0]!r} for rule {self.name}; it takes lr, maximize "
                f"and its params: {names}"
            )

    def _group(self, group: dict) -> dict:
        """The group as torch.optim keeps it, each tuple keyword one value with its parts."""
        if not self._tuples:
            return group
        if any(key in group and not all(name in group for name in names)
               for key, names in self._tuples.items()):
            group = dict(group)
            split_tuples(group, {k: v for k, v in self._tuples.items()
                                 if not all(name in group for name in v)}, self.name)
        wrapped = _ParamGroup(group)
        wrapped.tuples = self._tuples
        for key, names in self._tuples.items():
            wrapped[key] = tuple(group[name] for name in names)
        return wrapped

    def _check_values(self, group: dict) -> None:
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            if lr.numel() != 1:
                raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
            if not lr >= 0:
                raise ValueError(f"Invalid lr: {float(lr)}, must be >= 0 for rule {self.name}")
        elif not isinstance(lr, (int, float)) or not lr >= 0:
            raise ValueError(f"Invalid lr: {lr!r}, must be >= 0 for rule {self.name}")
        for name, s in self._declared.items():
            group[name] = number(group[name])
            check_value(name, group[name], s.bounds, self.name)
        check_group(group, self.name)
        if self._matrix_calls:
            self._check_matrices(group)

    def _check_matrices(self, group: dict) -> None:
        """A rule with a matrix function steps only 2-D parameters (as torch's Muon)."""
        node = self._matrix_calls[0]
        index = len(self.param_groups) - 1
        for i, p in enumerate(group["params"]):
            if p.dim() != 2:
                raise ValueError(
                    f"line {node.line}, column {node.column}: {node.op} needs 2-D parameters; "
                    f"parameter {i} of group {index} has shape {tuple(p.shape)} "
                    f"(rule {self.name})")

    def add_param_group(self, param_group: dict) -> None:
        self._check_keys(param_group)
        split_tuples(param_group, self._tuples, self.name)
        translate(param_group, self.name)
        super().add_param_group(param_group)
        self.param_groups[-1] = self._group(self.param_groups[-1])
        self._check_values(self.param_groups[-1])

    def __getstate__(self) -> dict[str, Any]:
        """torch's picklable state, with the rule and settings (compiled again on load)."""
        state = super().__getstate__()
        state.update({name: getattr(self, name)
                      for name in ("rule", "name", "total_steps", "foreach", "fused", "seed")})
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
        """torch's ``load_state_dict``; a saved seed and generator states are restored too.

        A torch optimizer's state dict loads into the rule named after its class where the
        buffers correspond (Adam's ``exp_avg`` is the rule's ``m``): its names, its tensor
        step and its 0-d numbers become the rule's."""
        super().load_state_dict(state_dict)
        self._from_torch()
        saved = state_dict.get(GENERATORS)
        if saved is not None:
            self.seed = int(saved["seed"])
            self._generators = {}
            self._saved_generators = {name: state.cpu()
                                      for name, state in saved["states"].items()}

    def _from_torch(self) -> None:
        names = TORCH_STATE.get(self.name, {})
        buffers = set(self.program.buffers) | set(self.program.scalar_state)
        for p, state in self.state.items():
            for key in list(state):
                value = state[key]
                if key == "step":
                    state[key] = int(value)
                elif key in names and names[key] != key and key not in buffers:
                    state[names[key]] = state.pop(key)
                elif key in TORCH_IGNORED and key not in buffers:
                    del state[key]
            for name in list(state):
                value = state[name]
                if name in self.program.scalar_state and isinstance(value, torch.Tensor):
                    state[name] = float(value)
                elif name in self.program.buffers and isinstance(value, torch.Tensor):
                    like = matrix_view(p) if self.program.viewed else p
                    shape = shape_of(self.program.buffer_shape(name), like)
                    if self.program.buffer_shape(name) == FULL:
                        shape = tuple(p.shape)
                    if tuple(value.shape) != shape and value.numel() == math.prod(shape):
                        state[name] = value.reshape(shape)
            if state and "step" not in state:  # torch's SGD counts no steps
                state["step"] = 1

    def _key(self, hyper: dict[str, float], facts: dict[str, float] | None) -> tuple:
        """What a group's program is compiled for: its zero params and its switches."""
        zeros = frozenset(name for name, value in hyper.items() if value == 0)
        fixed = tuple((name, float(hyper[name])) for name in self._switch_params
                      if name not in zeros)
        fixed += tuple((name, float(facts[name])) for name in self._switch_facts)  # type: ignore[index]
        return zeros, fixed

    def _specialised(self, key: tuple) -> Program:
        """The program compiled for a group's zero params and switches (``wd = 0``,
        ``amsgrad = True``, a tensor's ``ndim``)."""
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = compile_rule(self.rule, key[0], fixed=key[1])
        return program

    def _fused_step(self, key: tuple):
        from nos.compile.fused import FusedStep

        if key not in self._fused:
            self._fused[key] = FusedStep(self.rule, key[0], key[1])
        return self._fused[key]

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

    def _buckets(self, params: list[torch.Tensor], hyper: dict[str, float]
                 ) -> dict[tuple, tuple[list, list, list]]:
        """Tensors by device, dtype, step, and the facts and numbers the rule reads."""
        buckets: dict[tuple, tuple[list, list, list]] = {}
        inits = self.program.inits or {}
        for p in params:
            state = self.state[p]
            if "step" not in state:
                for name in self.program.scalar_state:
                    if name in inits:
                        state[name] = float(evaluate(inits[name], {**hyper, **tensor_facts(p)}))
            state["step"] = state.get("step", 0) + 1
            key = (p.device, p.dtype, state["step"], (), ())
            if self._facts or self.program.scalar_state:
                facts = tensor_facts(p) if self._facts else {}
                key = key[:3] + (tuple(facts[f] for f in self._facts),
                                 tuple(state.get(name, 0.0)
                                       for name in self.program.scalar_state))
            ps, gs, states = buckets.setdefault(key, ([], [], []))
            ps.append(p)
            gs.append(p.grad)
            states.append(state)
        return buckets

    def _executor(self, params: list[torch.Tensor]) -> Callable:
        if self.foreach is not None:
            return run_foreach if self.foreach else run_reference
        if params[0].device.type != "cpu":
            return run_foreach
        # On the CPU one tensor at a time keeps a large tensor's temporaries in cache,
        # where the multi-tensor path streams every operation over all of them.
        large = sum(p.numel() for p in params) >= FOREACH_LIMIT * len(params)
        return run_reference if large else run_foreach

    @staticmethod
    def _buffers(program: Program, ps: list, states: list, hyper: dict[str, float]
                 ) -> dict[str, list[torch.Tensor]]:
        """The program's buffers for a bucket, made where missing: zeros of their shape, or
        the state's ``from`` value."""
        buffers = {}
        inits = program.inits or {}
        for name in program.buffers:
            if not program.viewed:
                try:  # the common case: every buffer made already
                    buffers[name] = [state[name] for state in states]
                    continue
                except KeyError:
                    pass
            shape = program.buffer_shape(name)
            tensors = []
            for p, state in zip(ps, states, strict=True):
                if name not in state:  # a reduced shape is of the 2-D view of a viewed rule
                    like = matrix_view(p) if program.viewed and shape != FULL else p
                    state[name] = torch.zeros(shape_of(shape, like), dtype=p.dtype,
                                              device=p.device)
                    if name in inits:  # read on the 2-D view, as the rule sees w
                        view = matrix_view(p)
                        value = evaluate(inits[name], {**hyper, **tensor_facts(p), "w": view},
                                         view)
                        target = matrix_view(state[name]) if shape == FULL else state[name]
                        target.copy_(value) if isinstance(value, torch.Tensor) \
                            else target.fill_(value)
                buffer = state[name]
                tensors.append(matrix_view(buffer) if program.viewed and shape == FULL
                               else buffer)
            buffers[name] = tensors
        return buffers

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # all that can refuse the step is done before any state or parameter changes
        if self._views and not all(group[TRAIN_MODE] for group in self.param_groups):
            raise RuntimeError(f"the parameters hold the evaluation view of rule {self.name}: "
                               f"call optimizer.train() before step()")
        work = []
        for group in self.param_groups:
            hyper = {name: group[name] for name in self.program.params}
            params = self._with_grads(group)
            key = None if self._facts else self._key(hyper, None)  # else one per bucket
            if key is not None:
                self._specialised(key)
            work.append((group, hyper, params, key))
        found = []
        for group, hyper, params, group_key in work:
            for (_, _, t, facts, numbers), (ps, gs, states) in \
                    self._buckets(params, hyper).items():
                facts = dict(zip(self._facts, facts, strict=True))
                found.append((group, hyper, t, facts, numbers, ps, gs, states,
                              group_key or self._key(hyper, facts)))
        if self.program.crosses and len({f[-1] for f in found}) > 1:
            # A global reduction reads every parameter, so every bucket runs one program:
            # the groups' own if they agree, else the rule's (both branches of a switch).
            found = [f[:-1] + ((frozenset(), ()),) for f in found]
        jobs = []
        for group, hyper, t, facts, numbers, ps, gs, states, key in found:
            lr = group["lr"]
            lr = lr if isinstance(lr, torch.Tensor) else float(lr)
            program = self._specialised(key)
            buffers = self._buffers(program, ps, states, hyper)
            if group["maximize"]:
                gs = torch._foreach_neg(gs)
            if program.viewed:
                ps, gs = [matrix_view(p) for p in ps], [matrix_view(g) for g in gs]
            numbers = dict(zip(self.program.scalar_state, numbers, strict=True))
            bucket = Bucket(ps, gs, buffers, hyper, lr, t, self.total_steps, facts,
                            numbers)
            jobs.append((program, bucket, key, states))
        crosses = bool(jobs) and jobs[0][0].crosses  # then every job runs that program
        if crosses:
            self._joined(jobs)
        for program, bucket, key, states in jobs:
            if self.fused:
                self._fused_step(key)(bucket)
            elif not crosses:  # else stepped by _joined
                self._executor(bucket.params)(program, bucket, self._generator)
            for name, tensors in bucket.buffers.items():
                for state, tensor in zip(states, tensors, strict=False):
                    old = state[name]
                    if tensor is not old:
                        state[name] = tensor.view(old.shape) \
                            if tensor.shape != old.shape else tensor
            for name, value in (bucket.numbers or {}).items():
                for state in states:
                    state[name] = value
        return loss

    def _joined(self, jobs: list) -> None:
        """Step every bucket together, stage by stage: at the end of a stage the global
        reductions' partial values of all tensors are joined (nos.lang.ops.combine)."""
        if not jobs:
            return
        steps = [(foreach_steps if self._executor(bucket.params) is run_foreach
                  else reference_steps)(program, bucket, self._generator)
                 for program, bucket, _, _ in jobs]
        ops = {ins.out: ins.op for _, reductions in jobs[0][0].stages for ins in reductions}
        count = sum(p.numel() for _, bucket, _, _ in jobs for p in bucket.params)
        partials = [next(s, None) for s in steps]
        while partials[0] is not None:
            values = {slot: combine(ops[slot], [x for part in partials for x in part[slot]],
                                    count) for slot in partials[0]}
            partials = [_send(s, values) for s in steps]

    # --- views: Schedule-Free's optimizer.eval() and optimizer.train() ---------------

    @torch.no_grad()
    def eval(self) -> None:
        """Set every parameter to the rule's ``eval_w`` view (Schedule-Free's averaged
        point), to evaluate or save the model; :meth:`train` goes back.  Without
        ``train_w`` the training value is kept meanwhile (one copy of the parameters).
        Nothing to do for rules without views."""
        self._set_view("eval_w", to_train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Set every parameter back to its training value (the rule's ``train_w``, or the
        value kept by :meth:`eval`); a step needs the training value."""
        self._set_view("train_w", to_train=True)

    def _set_view(self, view: str, to_train: bool) -> None:
        if not self._views:
            return
        for group in self.param_groups:
            if group[TRAIN_MODE] == to_train:
                continue
            hyper = {name: group[name] for name in self._declared}
            for p in group["params"]:
                state = self.state.get(p)
                if not state:  # never stepped: the parameter is its own view
                    continue
                w = matrix_view(p)  # the rule sees a vector as a column (n, 1)
                if to_train and view not in self._views:
                    p.copy_(state.pop(KEPT_W))
                    continue
                kept = {k: matrix_view(v) if isinstance(v, torch.Tensor) and v.shape == p.shape
                        else v for k, v in state.items() if k != "step"}
                names = {**hyper, **kept, **tensor_facts(p), "w": w, "t": float(state["step"]),
                         "lr": float(group["lr"])}
                # the where on params and facts decided, as the group's program did (a
                # buffer only the branch not taken reads was not kept)
                view_of = (Statement("view", view, self._views[view]),)
                expr = specialise(view_of, {**hyper, **tensor_facts(p)})[0].expr
                value = evaluate(expr, names, w)  # type: ignore[arg-type]
                if not to_train and "train_w" not in self._views:
                    state[KEPT_W] = p.detach().clone()
                w.copy_(value) if isinstance(value, torch.Tensor) else w.fill_(value)
            group[TRAIN_MODE] = to_train

    def __repr__(self) -> str:
        return f"nos.Optimizer({str(self.rule)!r}, lr={self.defaults['lr']})"


def _send(steps, values: dict) -> dict | None:
    try:
        return steps.send(values)
    except StopIteration:
        return None
