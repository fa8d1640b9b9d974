"""The RNN controller (ENAS style): an LSTM policy over the space's decisions.

:class:`RNNPolicy` holds only the policy.  An ``LSTMCell`` runs one step per
decision; step 0 reads a learned start embedding, each later step the
embedding of the token chosen at the step before (one shared table, offset per
position).  Each decision has its own linear head, and its logits are squashed
as in ENAS, temperature first::

    logits = tanh_c * tanh(head(h) / temperature)

so no choice is ever more than ``exp(2 * tanh_c)`` times likelier than another
at one decision: the policy cannot collapse outright and keeps exploring.
``sample`` returns tokens, log-probabilities and entropies together; ``log_prob``
recomputes the last two for given tokens by teacher forcing, so learning needs
only the tokens that were told back.

Learning (REINFORCE with a moving-average baseline and an entropy bonus) is in
:mod:`nos.controllers.reinforce`; :class:`RNNController` joins the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Categorical

from .base import Controller, check_number, register
from .reinforce import Reinforce


@dataclass(frozen=True)
class RNNConfig:
    """Settings of the RNN controller; ``[controller]`` in a search config.

    The defaults are for small searches (hundreds of rules, batches of 8 to 16).
    ``temperature = 1`` rather than ENAS's 5: dividing the logits by 5 before
    the squash makes each Adam step move the probabilities five times less,
    which ENAS could afford over tens of thousands of samples and we cannot;
    ``tanh_c = 2.5`` already bounds how peaked a decision can become.
    ``hidden = 64`` with ``lr = 5e-3`` finds a planted target within a few
    hundred samples (the test's task, 40 batches of 16: mean reward 0.1 -> 0.92;
    hidden 32: 0.82, lr 3e-3: 0.83, temperature 5: 0.76; with reward noise of
    sd 0.2 still 0.7 to 0.8).  Adam moves each weight by about ``lr`` per step,
    so the wider layer moves the logits further per step.
    ``entropy_weight = 1e-3`` is small against advantages of order 0.1 yet
    keeps near-ties from collapsing early.
    ``grad_clip = 5`` only guards against rare huge advantages; 0 turns it off.
    """

    hidden: int = 64
    tanh_c: float = 2.5
    temperature: float = 1.0
    init_range: float = 0.1
    lr: float = 5e-3
    entropy_weight: float = 1e-3
    baseline_decay: float = 0.95
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        owner = "controller 'rnn'"
        check_number(owner, "hidden", self.hidden, 1, integer=True)
        check_number(owner, "tanh_c", self.tanh_c, 0, low_open=True)
        check_number(owner, "temperature", self.temperature, 0, low_open=True)
        check_number(owner, "init_range", self.init_range, 0)
        check_number(owner, "lr", self.lr, 0, low_open=True)
        check_number(owner, "entropy_weight", self.entropy_weight, 0)
        check_number(owner, "baseline_decay", self.baseline_decay, 0, 1)
        check_number(owner, "grad_clip", self.grad_clip, 0)


class RNNPolicy(nn.Module):
    """A distribution over token lists with ``decisions[p]`` choices at position ``p``."""

    def __init__(self, decisions: Sequence[int], config: RNNConfig = RNNConfig(),
                 generator: torch.Generator | None = None):
        super().__init__()
        self.decisions = tuple(int(n) for n in decisions)
        self.tanh_c = config.tanh_c
        self.temperature = config.temperature
        # row 0 is the start embedding; position p's tokens follow at offsets[p]
        self.offsets = [1 + sum(self.decisions[:p]) for p in range(len(self.decisions))]
        self.embedding = nn.Embedding(1 + sum(self.decisions), config.hidden)
        self.cell = nn.LSTMCell(config.hidden, config.hidden)
        self.heads = nn.ModuleList(nn.Linear(config.hidden, n) for n in self.decisions)
        self.reset_parameters(config.init_range, generator)

    def reset_parameters(self, init_range: float, generator: torch.Generator | None) -> None:
        """ENAS's init: uniform in ``[-init_range, init_range]``, head biases zero."""
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-init_range, init_range, generator=generator)
            for head in self.heads:
                head.bias.zero_()

    def logits(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        return self.tanh_c * torch.tanh(self.heads[position](hidden) / self.temperature)

    def _unroll(self, n: int, choose: Callable[[int, Categorical], torch.Tensor]):
        first = self.embedding.weight[0]
        inputs = first.expand(n, -1)
        state = None
        tokens, log_probs, entropies = [], [], []
        for position in range(len(self.decisions)):
            state = self.cell(inputs, state)
            dist = Categorical(logits=self.logits(state[0], position))
            token = choose(position, dist)
            tokens.append(token)
            log_probs.append(dist.log_prob(token))
            entropies.append(dist.entropy())
            inputs = self.embedding(token + self.offsets[position])
        return torch.stack(tokens, 1), torch.stack(log_probs, 1), torch.stack(entropies, 1)

    def sample(self, n: int, generator: torch.Generator | None = None):
        """``n`` token lists: ``(tokens, log_probs, entropies)``, each ``[n, positions]``."""

        def draw(position: int, dist: Categorical) -> torch.Tensor:
            # Categorical.sample takes no generator; multinomial does
            return torch.multinomial(dist.probs, 1, generator=generator).squeeze(1)

        return self._unroll(n, draw)

    def log_prob(self, tokens: torch.Tensor):
        """``(log_probs, entropies)``, each ``[n, positions]``, of given ``tokens``."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        _, log_probs, entropies = self._unroll(len(tokens), lambda p, dist: tokens[:, p])
        return log_probs, entropies


@register
class RNNController(Controller):
    """Samples from an :class:`RNNPolicy`; learns by :class:`Reinforce`."""

    name = "rnn"
    config_class = RNNConfig

    def __init__(self, space, seed: int = 0, **settings):
        super().__init__(space, seed, **settings)
        self.generator = torch.Generator().manual_seed(seed)
        self.policy = RNNPolicy(space.decisions, self.config, self.generator)
        self.trainer = Reinforce(self.policy, lr=self.config.lr,
                                 entropy_weight=self.config.entropy_weight,
                                 baseline_decay=self.config.baseline_decay,
                                 grad_clip=self.config.grad_clip)

    def _propose(self, n: int) -> list[tuple[int, ...]]:
        if n == 0:
            return []
        with torch.no_grad():
            tokens, _, _ = self.policy.sample(n, self.generator)
        return [tuple(row) for row in tokens.tolist()]

    def _learn(self, tokens: list[tuple[int, ...]], rewards: list[float]) -> dict:
        return self.trainer.step(torch.tensor(tokens, dtype=torch.long), torch.tensor(rewards))

    def _state(self) -> dict:
        return {"policy": dict(self.policy.state_dict()), "trainer": self.trainer.state_dict(),
                "generator": self.generator.get_state()}

    def _load_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.trainer.load_state_dict(state["trainer"])
        self.generator.set_state(state["generator"])
