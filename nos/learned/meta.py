"""Meta-training the LSTM optimizer on a child task, as Andrychowicz et al. (2016) do.

An *episode* is one child network, freshly initialised, trained by the LSTM
for ``episode_steps`` steps on minibatches of the task's training split.  The
child's parameters are plain tensors run through ``torch.func.functional_call``,
so each step ``w_{t+1} = w_t + LSTM(g_t)`` stays in the autograd graph.  Every
``unroll`` steps the meta-loss, the mean training loss of the child over the
unroll (each step's loss on its own minibatch, after the update it scores),

    L(phi) = 1/T * sum_{t=1..T} f(w_t(phi)),

is backpropagated into the LSTM's weights ``phi`` and Adam takes one step on
them (a *meta-step*); the child and the recurrent states then go on from where
they are, detached (truncated backpropagation through time).  As in the paper
the gradients the LSTM reads are treated as constants (no second derivatives:
``torch.autograd.grad`` without ``create_graph``), and a new episode starts
when one ends.  An unroll whose loss is not finite is skipped and its episode
abandoned.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from nos.learned.checkpoint import save_checkpoint
from nos.learned.lstm import Architecture, CoordinateLSTM
from nos.learned.optimizer import LearnedOptimizer
from nos.train.tasks import Task, TaskData, default_device

EPISODE_SEED_STRIDE = 100_003  # episode e of seed s starts its child from seed s * stride + e


@dataclass(frozen=True)
class MetaSettings:
    """How the LSTM is meta-trained.  The unroll and the episode are the paper's (20 and
    100 steps); it chose Adam's rate by random search and does not give its count of
    meta-steps: 1e-3 is a rate at which meta-training on mnist1d does not collapse (at
    3e-3 and 1e-2 it did: the LSTM learned a drift that kills the child's ReLUs, after
    which the meta-gradient is zero), and CPU time bounds the count here.  The clipping
    of the meta-gradient is not the paper's either.

    Attributes:
        meta_steps: Adam steps on the LSTM's weights, one per unroll.
        unroll: child steps per unroll (the truncation of backpropagation).
        episode_steps: child steps before a fresh child is drawn.
        meta_lr: Adam's learning rate on the LSTM's weights.
        clip: the meta-gradient's norm is clipped to this (None: not clipped).
        batch_size: the child's minibatch (None: the task's own).
        seed: the LSTM's initial weights, the children's and the minibatches' order.
    """

    meta_steps: int = 300
    unroll: int = 20
    episode_steps: int = 100
    meta_lr: float = 1e-3
    clip: float | None = 1.0
    batch_size: int | None = None
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for name in ("meta_steps", "unroll", "episode_steps", "batch_size"):
            value = getattr(self, name)
            if value is None and name == "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name in ("meta_lr", "clip"):
            value = getattr(self, name)
            if value is None and name == "clip":
                continue
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")


@dataclass
class MetaResult:
    """A meta-training's network and record.  ``losses``: the meta-loss of each meta-step."""

    network: CoordinateLSTM
    task: str
    settings: MetaSettings
    losses: list[float] = field(default_factory=list)
    skipped: int = 0  # unrolls whose loss was not finite: no meta-step was taken on them
    episodes: int = 0
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``training`` entry: plain values only."""
        window = max(1, len(self.losses) // 10)
        first, last = self.losses[:window], self.losses[-window:]
        return {"task": self.task, **asdict(self.settings), "skipped": self.skipped,
                "episodes": self.episodes, "seconds": round(self.seconds, 3),
                "meta_loss_first": sum(first) / len(first) if first else None,
                "meta_loss_last": sum(last) / len(last) if last else None,
                "meta_losses": [round(loss, 5) for loss in self.losses],
                "torch": str(torch.__version__)}


class Episode:
    """One child trained by the LSTM, unroll after unroll, in the autograd graph.

    The child's module is kept on the ``meta`` device, as a skeleton for
    ``functional_call``; its weights are the plain tensors in ``params``.  The
    recurrent state covers all of the child's coordinates at once (the network treats
    them independently, so this is the optimizer's per-tensor step done in one call).
    """

    def __init__(self, task: Task, data: TaskData, network: CoordinateLSTM, seed: int,
                 batch_size: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        model = task.build_model().to(device)
        self.task, self.data, self.batch_size = task, data, batch_size
        self.skeleton = copy.deepcopy(model).to("meta")
        self.params = {name: p.detach() for name, p in model.named_parameters()}
        self.buffers = {name: b.detach() for name, b in model.named_buffers()}
        self.sizes = [p.numel() for p in self.params.values()]
        self.state = network.initial_state(sum(self.sizes), device)
        self.order = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.batch = self.next_batch()

    def next_batch(self) -> tuple[Tensor, Tensor]:
        n = len(self.data.train_x)
        index = torch.randint(n, (min(self.batch_size, n),), generator=self.order)
        index = index.to(self.data.train_x.device)
        return self.data.train_x[index], self.data.train_y[index]

    def loss(self, params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        output = functional_call(self.skeleton, (params, self.buffers), (batch[0],))
        return self.task.loss(output, batch[1])

    def unroll(self, network: CoordinateLSTM, steps: int) -> Tensor:
        """Train the child ``steps`` steps with ``network``; the mean loss after each step,
        differentiable in the network's weights.  The child and the state go on from
        where the unroll leaves them, detached."""
        params = {name: p.detach().requires_grad_(True) for name, p in self.params.items()}
        state = self.state.detach()
        loss = self.loss(params, self.batch)
        losses = []
        for t in range(steps):
            # the gradient is an input, not a function of the LSTM: no second derivatives
            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=t > 0)
            flat = torch.cat([g.reshape(-1) for g in grads])
            update, state = network(flat, state)
            params = {name: p + u.view_as(p) for (name, p), u
                      in zip(params.items(), update.split(self.sizes))}
            self.batch = self.next_batch()
            loss = self.loss(params, self.batch)
            losses.append(loss)
        self.params = {name: p.detach() for name, p in params.items()}
        self.state = state.detach()
        self.steps += steps
        return torch.stack(losses).mean()


def meta_train(task: Task, settings: MetaSettings | None = None, *,
               device: str | torch.device | None = None, progress: bool = False,
               architecture: Architecture | None = None) -> MetaResult:
    """Meta-train a coordinate-wise LSTM on ``task``'s child (see the module's docstring).

    Args:
        task: a task object (``nos.train.tasks.get_task``); its child is the optimizee.
        settings: the meta-training's settings (``MetaSettings()``: the defaults).
        device: where the child and the LSTM run (the default device if None).
        progress: a progress bar on standard error, with the recent meta-loss.
        architecture: the LSTM's sizes (the paper's: 2 layers of 20).

    Raises:
        ValueError: a setting out of range or a device that is not here, before any
            training.
    """
    settings = settings or MetaSettings()
    settings.check()
    start = time.monotonic()
    device = check_device(device)
    torch.manual_seed(settings.seed)
    network = CoordinateLSTM(architecture).to(device)
    meta_opt = torch.optim.Adam(network.parameters(), lr=settings.meta_lr)
    data = task.load(device)
    batch_size = settings.batch_size or task.batch_size
    result = MetaResult(network, task.name, settings)
    episode = None
    bar = _progress_bar(settings.meta_steps, task.name) if progress else None
    for _ in range(settings.meta_steps):
        if episode is None or episode.steps >= settings.episode_steps:
            episode = Episode(task, data, network,
                              settings.seed * EPISODE_SEED_STRIDE + result.episodes,
                              batch_size, device)
            result.episodes += 1
        steps = min(settings.unroll, settings.episode_steps - episode.steps)
        meta_loss = episode.unroll(network, steps)
        if not torch.isfinite(meta_loss):
            result.skipped += 1
            episode = None  # this child diverged: start another
            meta_opt.zero_grad(set_to_none=True)
            continue
        meta_opt.zero_grad(set_to_none=True)
        meta_loss.backward()
        if settings.clip is not None:
            torch.nn.utils.clip_grad_norm_(network.parameters(), settings.clip)
        meta_opt.step()
        result.losses.append(meta_loss.item())
        if bar is not None:
            bar.update(1)
            recent = result.losses[-20:]
            bar.set_postfix(meta_loss=f"{sum(recent) / len(recent):.4f}")
    if bar is not None:
        bar.close()
    network.eval().requires_grad_(False)
    result.seconds = time.monotonic() - start
    return result


def check_device(device: str | torch.device | None) -> torch.device:
    """The device named (the default device if None); ValueError if there is none such."""
    if device is None:
        return default_device()
    try:
        found = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: {str(err).splitlines()[0]}") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch has no CUDA device")
    return found


def _progress_bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"meta-training on {name}", unit="meta-step",
                file=sys.stderr, leave=False)


def learn(task: Task, out: str, settings: MetaSettings | None = None, *,
          device: str | torch.device | None = None, progress: bool = False) -> MetaResult:
    """Meta-train on ``task`` and write the checkpoint to ``out`` (``nos learn``)."""
    result = meta_train(task, settings, device=device, progress=progress)
    save_checkpoint(out, result.network, result.record())
    return result


def training_loss(optimizer_network: CoordinateLSTM | str, task: Task, *, steps: int,
                  seed: int = 0, lr: float = 1.0, batch_size: int | None = None,
                  device: str | torch.device | None = None) -> float:
    """The mean training loss of a fresh child trained ``steps`` steps by the learned
    optimizer (the real :class:`LearnedOptimizer`, not the meta-training's unroll): the
    meta-loss of one episode, measured on the fixed child and minibatches of ``seed``."""
    device = torch.device(device) if device is not None else default_device()
    data = task.load(device)
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    optimizer = LearnedOptimizer(model.parameters(), optimizer_network, lr=lr)
    order = torch.Generator().manual_seed(seed)
    n, size = len(data.train_x), batch_size or task.batch_size
    total = 0.0
    for _ in range(steps):
        index = torch.randint(n, (min(size, n),), generator=order).to(device)
        loss = task.loss(model(data.train_x[index]), data.train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / steps
