"""A rule trains a child network and becomes a reward.

``evaluate(rule, task=...)`` compiles the rule into a :class:`nos.Optimizer`,
picks a learning rate (given, or the paper's way: a short run at each rate of
a log grid, the best one then trained for the full budget), trains the
task's child and returns an :class:`EvalResult`.  Nothing the rule does
raises into the caller: a rule that cannot compile is ``invalid``, one whose
loss or parameters blow up is ``diverged``, one past its time limit is
``timeout``; each gets the floor reward.  The reward is the task's validation metric, or
``1 / (1 + metric)`` for a metric where lower is better (``nos.train.tasks.base.reward``):
the validation accuracy of the built-in tasks.  On request a hopeless training is cut
short with status ``stopped``: a run whose loss has not fallen by step
``stop_loss_steps``, or a full run whose validation reward after an epoch is
below the caller's threshold for it (``stop_below``, say the median of its
stage).  A stopped full run is scored as it stands (its reward is the
validation reward when it stopped); a stopped grid point is never chosen, and
an evaluation whose every grid point was stopped or diverged, one at least
stopped, is ``stopped`` with the floor reward.  A bad setting (a learning rate that
is not a positive number, an unknown schedule, ...) is the caller's mistake:
a ValueError naming the setting (``nos.train.settings``), raised before any training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nos.compile.program import RuleCompileError
from nos.lang.parser import RuleSyntaxError
from nos.lang.rule import Rule
from nos.learned import check_checkpoint, is_checkpoint_path
from nos.optim.optimizer import Optimizer, resolve
from nos.optim.param_options import check_params
from nos.train.batch_growth import Batch, enter_batch, growth_plan
from nos.train.settings import SettingError, check_evaluation, check_schedule
from nos.train.tasks import Task, TaskData, default_device, get_task, reward

DEFAULT_LR_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class EvalResult:
    """What one evaluation of a rule gives.  ``reward`` is the final model's validation
    reward: its validation metric, or ``1 / (1 + metric)`` when lower is better (the floor
    reward unless ``status`` is ``ok``).  ``val_metric`` and ``test_metric`` are the raw
    metric (named ``metric``); ``val_accuracy`` and ``test_accuracy`` repeat them when
    that metric is accuracy, and are None otherwise.  ``val_curve`` is the validation
    reward after each epoch, as are the grid's rewards.  ``params`` are the values given
    for the rule's params (keyword arguments of ``nos.Optimizer``: ``{"beta1": 0.8}``),
    empty if none.

    ``status`` is ``ok``, ``invalid``, ``diverged``, ``timeout``, ``failed`` or
    ``stopped``: cut short as hopeless.  A full run that was stopped keeps its partial
    figures (reward, val_loss, test_accuracy, steps and the curves when it stopped;
    ``loss_curve`` ends with the partial epoch's mean, ``val_curve`` has the finished
    epochs only) and ``error`` says why; stopped by the grid, it has the floor reward.
    """

    rule: str
    task: str
    status: str
    reward: float
    lr: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    test_accuracy: float | None = None
    loss_curve: list[float] = field(default_factory=list)  # mean training loss per epoch
    val_curve: list[float] = field(default_factory=list)  # validation reward per epoch
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None
    grid: list[dict] = field(default_factory=list)  # the short runs: lr, reward, status
    ensemble_accuracy: float | None = None
    snapshot_accuracies: list[float] = field(default_factory=list)
    seed: int = 0
    epochs: float = 0
    metric: str = "accuracy"
    higher_is_better: bool = True
    val_metric: float | None = None
    test_metric: float | None = None
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of nos.Optimizer
    # with grow_batch: each phase's batch size, lr, updates and examples (nos.train.batch_growth)
    phases: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    def __init__(self, status: str, error: str, run: _Run | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.run = run  # the partial run of a stopped training


@dataclass
class _Run:
    model: torch.nn.Module
    steps: int
    loss_curve: list[float]
    val_curve: list[float]
    snapshots: list[dict]
    phases: list[dict] = field(default_factory=list)


def metric_and_loss(task: Task, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch: int = 1024, probs: list | None = None) -> tuple[float, float]:
    """The task's metric (sum over batches / count) and mean loss; with ``probs``, the
    softmax outputs (for ensembles) are appended to it."""
    model.eval()
    total, count, loss_sum = 0.0, 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch])
            n = task.count(y[i:i + batch])
            loss_sum += task.loss(out, y[i:i + batch]).item() * n
            total += task.metric(out, y[i:i + batch]).item()
            count += n
            if probs is not None:
                probs.append(torch.softmax(out.float(), dim=-1))
    model.train()
    return total / max(count, 1), loss_sum / max(count, 1)


def _val_reward(task: Task, model: torch.nn.Module, data: TaskData) -> float:
    return reward(task, metric_and_loss(task, model, data.val_x, data.val_y)[0])


def train_child(rule: Rule, task: Task, data: TaskData, *, lr: float, epochs: float, seed: int,
           batch_size: int, device: torch.device, deadline: float, schedule: Any = None,
           snapshots: int = 0, explode: float = 20.0, progress: bool = False,
           stop_loss_steps: int | None = None, stop_below: Sequence[float | None] | None = None,
           hyper: dict[str, Any] | None = None, grow_batch: int | None = None) -> _Run:
    """One training run.  Raises ``_Stop`` (``diverged``, ``timeout``, or ``stopped`` with the
    partial run) when it ends early; see ``evaluate`` for ``stop_loss_steps``, ``stop_below``
    and ``grow_batch``.  ``hyper``: more keyword arguments of nos.Optimizer (the rule's
    params)."""
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    n = len(data.train_x)
    total = _total_steps(n, batch_size, epochs)
    plan = None
    if grow_batch is not None:  # the batch grows where the step schedule would decay the rate
        plan = growth_plan(n, batch_size, total, schedule, grow_batch)
        total, schedule = plan.updates, None
    opt = Optimizer(model.parameters(), rule, lr=lr, total_steps=total, seed=seed,
                    **(hyper or {}))
    views = callable(getattr(opt, "eval", None))  # nos.Optimizer's eval() and train()
    scheduler = None
    if schedule is not None:
        from nos.optim.schedules import from_config

        scheduler = from_config(schedule, opt, total)
    snapshot_at: set[int] = set()
    if snapshots:
        from nos.optim.schedules import sgdr_cycle_ends

        cfg = schedule if isinstance(schedule, dict) else {}
        ends = sgdr_cycle_ends(int(cfg.get("T_0", total)), int(cfg.get("T_mult", 1)), total)
        snapshot_at = set(ends[-snapshots:])
    order = torch.Generator().manual_seed(seed)
    run = _Run(model, 0, [], [], [])
    first_loss = None
    bar = _progress(total, task.name) if progress else None
    # losses are kept only up to the one step where they are judged: 0 (never) when off
    stop_at = stop_loss_steps if stop_loss_steps is not None and total > stop_loss_steps else 0
    early_losses: list[float] = []
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=order).to(device)
        loss_sum, loss_n = 0.0, 0
        batches = (plan.epochs[len(run.loss_curve)] if plan is not None
                   else (Batch(i, batch_size, 1.0, 0) for i in range(0, n, batch_size)))
        for batch in batches:
            if step >= total:
                break
            idx = perm[batch.start:batch.start + batch.size]
            if plan is not None:
                enter_batch(opt, lr, batch, len(idx), run.phases)
            loss = task.loss(model(data.train_x[idx]), data.train_y[idx])
            value = loss.item()
            if not math.isfinite(value):
                raise _Stop("diverged", f"loss became {value} at step {step + 1}")
            first_loss = first_loss if first_loss is not None else value
            if value > explode * max(first_loss, 1e-3):
                raise _Stop("diverged", f"loss exploded to {value:.3g} at step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            loss_sum += value
            loss_n += 1
            if step <= stop_at:
                early_losses.append(value)
                if step == stop_at:
                    _stop_unless_loss_fell(early_losses, model, run, step, loss_sum / loss_n)
            if step in snapshot_at:
                run.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            if time.monotonic() > deadline:
                raise _Stop("timeout", f"time limit reached at step {step}")
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise _Stop("diverged", f"parameters became non-finite by step {step}")
        run.loss_curve.append(loss_sum / max(loss_n, 1))
        if views:  # the rule's evaluation point (Schedule-Free's average); the model ends there
            opt.eval()
        run.val_curve.append(_val_reward(task, model, data))
        if bar is not None:
            bar.update(loss_n)
            bar.set_postfix(loss=f"{run.loss_curve[-1]:.3f}", val=f"{run.val_curve[-1]:.3f}")
        if stop_below is not None and step < total:  # never on the run's last epoch
            _stop_if_below(stop_below, run, step)
        if views and step < total:
            opt.train()
    if bar is not None:
        bar.close()
    run.steps = step
    return run


def _stop_unless_loss_fell(losses: list[float], model: torch.nn.Module, run: _Run, step: int,
                           epoch_loss: float) -> None:
    """Stop the run if the mean loss of its last steps is not below that of its first."""
    w = max(1, min(50, len(losses) // 4))
    first, last = sum(losses[:w]) / w, sum(losses[-w:]) / w
    if last < first:
        return
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise _Stop("diverged", f"parameters became non-finite by step {step}")
    run.loss_curve.append(epoch_loss)  # the partial epoch
    run.steps = step
    raise _Stop("stopped", f"loss has not fallen after {step} steps ({first:.4g} -> {last:.4g})",
                run)


def _stop_if_below(thresholds: Sequence[float | None], run: _Run, step: int) -> None:
    """Stop the run if the epoch it just finished left it below the caller's threshold."""
    epoch = len(run.val_curve)
    threshold = thresholds[epoch - 1] if epoch <= len(thresholds) else None
    val = run.val_curve[-1]
    if threshold is None or math.isnan(threshold) or not val < threshold:
        return
    run.steps = step
    raise _Stop("stopped", f"validation {val:.4g} below the stage's {threshold:.4g} "
                f"at epoch {epoch}", run)


def _total_steps(examples: int, batch_size: int, epochs: float) -> int:
    return max(1, round(epochs * max(1, math.ceil(examples / batch_size))))


def _progress(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{name} steps", unit="step", leave=False)


def _attempt(rule: Rule, task: Task, data: TaskData, result: EvalResult, **kwargs) -> _Run | None:
    """One training run; failures are written into result instead of raised.  A stopped run
    comes back as it stood, with ``result.status`` ``stopped``."""
    try:
        return train_child(rule, task, data, **kwargs)
    except _Stop as stop:
        result.status, result.error = stop.status, str(stop)
        return stop.run
    except (RuleSyntaxError, RuleCompileError, ValueError) as err:
        result.status, result.error = "invalid", str(err).splitlines()[0]
    except RuntimeError as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        result.status, result.error = "failed", text
    return None


def evaluate(
    rule: Rule | str,
    task: str | Task = "mnist1d",
    *,
    epochs: float | None = None,
    lr: float | None = None,
    lr_grid: Sequence[float] | None = DEFAULT_LR_GRID,
    grid_epochs: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    schedule: Any = None,
    snapshots: int = 0,
    time_limit: float | None = None,
    floor: float = 0.0,
    device: str | torch.device | None = None,
    progress: bool = False,
    task_options: dict | None = None,
    batched_grid: bool | None = None,
    stop_loss_steps: int | None = None,
    stop_below: Sequence[float | None] | None = None,
    params: dict[str, Any] | None = None,
    grow_batch: int | None = None,
) -> EvalResult:
    """Train the task's child with ``rule`` and return its reward and details.

    Args:
        rule: a Rule, rule text or a baseline's name.
        task: a task's name or spec (``nos.train.tasks.get_task``) or a task object
            (anything with the protocol of ``nos.train.tasks.base``).
        epochs: the full training budget (the task's default if None).
        lr: a fixed learning rate; if None, each rate of ``lr_grid`` is trained
            for ``grid_epochs`` and the best one (by validation reward) is kept.
        schedule: a learning-rate schedule (``nos.optim.schedules``): a name, a table
            (``{"name": "sgdr", "T_0": 50}``) or ``"sgdr:T_0=50,T_mult=2"``.
        snapshots: with an SGDR schedule, keep the model at the end of each of
            the last ``snapshots`` cycles and report their ensemble's accuracy
            (a task whose metric is accuracy: the outputs are class scores).
        time_limit: seconds for the whole evaluation; past it, status ``timeout``.
        floor: the reward of a rule that is invalid, diverged or timed out.
        batched_grid: train the grid's short runs as one vmap-ed model (nos.train.grid);
            by default on CUDA, where it pays, and not on the CPU, where the child's
            arithmetic, not the per-step overhead, is the cost.
        stop_loss_steps: stop any run (a grid point's or the full one) longer than this many
            steps whose loss has not fallen by then: the mean loss of its last
            ``w = max(1, min(50, stop_loss_steps // 4))`` steps is not below that of its
            first ``w``.  Status ``stopped``; a stopped grid point is never chosen.
        stop_below: validation thresholds for the full run, element ``e`` for the end of
            epoch ``e + 1`` (None: no threshold).  After an epoch that is not its last, a
            run whose validation reward is below that epoch's threshold is stopped, its
            reward the one it had.
        params: values for the rule's params, keyword arguments of ``nos.Optimizer`` in
            every training (``{"beta1": 0.8}``, ``{"betas": (0.9, 0.95)}``); recorded in the
            result.  Values the optimizer refuses make the evaluation ``invalid``, before
            any training.
        grow_batch: batch size instead of decay (Smith et al., 2017; nos.train.batch_growth):
            with a step schedule, the full run multiplies the batch size by ``1 / gamma``
            where the schedule would multiply the rate by ``gamma``, up to ``grow_batch``
            examples, then decays the rate; the same epochs, fewer updates.  ``phases``
            records each phase's batch size, rate and updates.

    Raises:
        ValueError: a bad setting (``nos.train.settings.SettingError``, naming it), before
            any training.  A bad rule does not raise: its status is ``invalid``.
    """
    start = time.monotonic()
    schedule = check_evaluation(
        {"epochs": epochs, "lr": lr, "lr_grid": lr_grid, "grid_epochs": grid_epochs,
         "batch_size": batch_size, "snapshots": snapshots, "time_limit": time_limit,
         "floor": floor, "seed": seed, "schedule": schedule,
         "stop_loss_steps": stop_loss_steps, "stop_below": stop_below,
         "grow_batch": grow_batch})["schedule"]
    text = rule if isinstance(rule, str) else str(rule)
    task_obj = get_task(task, **(task_options or {})) if isinstance(task, str) else task
    result = EvalResult(rule=text, task=task_obj.name, status="ok", reward=floor, seed=seed,
                        metric=getattr(task_obj, "metric_name", "accuracy"),
                        higher_is_better=getattr(task_obj, "higher_is_better", True),
                        params=dict(params or {}))
    try:
        if is_checkpoint_path(rule):  # a learned optimizer (nos.learned): its file is the rule
            parsed = result.rule = check_checkpoint(rule, result.params)
        else:
            parsed = resolve(rule)[0]
            result.rule = str(parsed)
            check_params(parsed, result.params, lr=lr)
    except (RuleSyntaxError, ValueError) as err:
        result.status, result.error = "invalid", str(err).splitlines()[0]
        result.seconds = time.monotonic() - start
        return result
    device = torch.device(device) if device is not None else default_device()
    data = task_obj.load(device)
    epochs = task_obj.epochs if epochs is None else epochs
    result.epochs = epochs
    batch_size = batch_size or task_obj.batch_size
    grid = DEFAULT_LR_GRID if lr_grid is None else lr_grid
    if schedule is not None:  # now that the run's length and its possible rates are known
        check_schedule(schedule, _total_steps(len(data.train_x), batch_size, epochs),
                       [lr] if lr is not None else grid)
    if grow_batch is not None and grow_batch < batch_size:
        raise SettingError("grow_batch", f"must be at least the batch size {batch_size}, "
                           f"got {grow_batch}")
    deadline = start + time_limit if time_limit else math.inf
    common = dict(seed=seed, batch_size=batch_size, device=device,
                  deadline=deadline, progress=progress, hyper=result.params)
    if lr is None:
        lr = search_lr(parsed, task_obj, data, grid, grid_epochs, result, floor, common,
                       batched=device.type == "cuda" if batched_grid is None else batched_grid,
                       stop_loss_steps=stop_loss_steps)
        if lr is None:
            result.seconds = time.monotonic() - start
            return result
    result.lr = lr
    run = _attempt(parsed, task_obj, data, result, lr=lr, epochs=epochs, schedule=schedule,
                   snapshots=snapshots, stop_loss_steps=stop_loss_steps, stop_below=stop_below,
                   grow_batch=grow_batch, **common)
    if run is not None:
        _score(task_obj, data, run, result)
    else:
        result.reward = floor
    result.seconds = time.monotonic() - start
    return result


def search_lr(rule: Rule, task: Task, data: TaskData, grid: Sequence[float], grid_epochs: float,
               result: EvalResult, floor: float, common: dict, batched: bool = True,
               stop_loss_steps: int | None = None) -> float | None:
    """The paper's way: a short run at each rate; the best validation reward wins."""
    if batched and len(grid) > 1:
        picked = _search_lr_batched(rule, task, data, grid, grid_epochs, result, floor, common,
                                    stop_loss_steps)
        if picked is not False:
            return picked
    best_lr, best = None, -math.inf
    for lr in grid:
        short = EvalResult(rule=result.rule, task=task.name, status="ok", reward=floor)
        run = _attempt(rule, task, data, short, lr=lr, epochs=grid_epochs,
                       stop_loss_steps=stop_loss_steps, **common)
        usable = run is not None and short.status == "ok"
        reward = run.val_curve[-1] if usable and run.val_curve else floor
        result.grid.append({"lr": lr, "reward": reward, "status": short.status})
        if short.status in ("invalid", "timeout"):
            result.status, result.error = short.status, short.error
            return None
        if usable and reward > best:
            best_lr, best = lr, reward
    if best_lr is None:
        _no_usable_rate(result)
    return best_lr


def _no_usable_rate(result: EvalResult) -> None:
    stopped = sum(point["status"] == "stopped" for point in result.grid)
    if stopped:
        result.status = "stopped"
        result.error = (f"no usable learning rate on the grid ({stopped} of "
                        f"{len(result.grid)} stopped: the loss had not fallen)")
    else:
        result.status = "diverged"
        result.error = "diverged at every learning rate of the grid"


def _search_lr_batched(rule: Rule, task: Task, data: TaskData, grid: Sequence[float],
                       grid_epochs: float, result: EvalResult, floor: float, common: dict,
                       stop_loss_steps: int | None = None):
    """The grid as one vmap-ed model (nos.train.grid); False if this child cannot be batched."""
    from nos.train.grid import GridTimeout, batchable, batched_grid

    try:
        if not isinstance(rule, Rule) or not batchable(rule):
            return False
        runs = batched_grid(rule, task, data, grid, epochs=grid_epochs, seed=common["seed"],
                            batch_size=common["batch_size"], device=common["device"],
                            deadline=common["deadline"], floor=floor,
                            stop_loss_steps=stop_loss_steps, hyper=common.get("hyper"))
    except GridTimeout as err:
        result.status, result.error = "timeout", str(err)
        return None
    except (RuleSyntaxError, RuleCompileError, ValueError) as err:
        result.status, result.error = "invalid", str(err).splitlines()[0]
        return None
    except RuntimeError:
        return False  # an operation vmap cannot batch: train the grid one rate at a time
    result.grid.extend(runs)
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        _no_usable_rate(result)
        return None
    return max(ok, key=lambda r: r["reward"])["lr"]


def _score(task: Task, data: TaskData, run: _Run, result: EvalResult) -> None:
    metric, loss = metric_and_loss(task, run.model, data.val_x, data.val_y)
    test = metric_and_loss(task, run.model, data.test_x, data.test_y)[0]
    result.val_metric, result.test_metric, result.val_loss = metric, test, loss
    if result.metric == "accuracy":
        result.val_accuracy, result.test_accuracy = metric, test
    result.reward = reward(task, metric)
    result.loss_curve, result.val_curve, result.steps = run.loss_curve, run.val_curve, run.steps
    result.phases = run.phases
    # a stopped run's snapshots are too few; an ensemble averages class scores
    if run.snapshots and result.status == "ok" and result.metric == "accuracy":
        probs: list[torch.Tensor] = []
        for state in run.snapshots:
            run.model.load_state_dict(state)
            snap_probs: list[torch.Tensor] = []
            snap_acc, _ = metric_and_loss(task, run.model, data.val_x, data.val_y,
                                           probs=snap_probs)
            result.snapshot_accuracies.append(snap_acc)
            probs.append(torch.cat(snap_probs))
        mean = torch.stack(probs).mean(0)
        predicted = mean.argmax(-1)
        result.ensemble_accuracy = (predicted == data.val_y).float().mean().item()
