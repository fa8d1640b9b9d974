"""REINFORCE for a token policy: the loss, the baseline and the update step.

The policy (:class:`nos.controllers.rnn.RNNPolicy`) only samples and scores
tokens; learning lives here.  For a batch of token lists ``a_i`` with rewards
``r_i``::

    advantage_i = r_i - b
    loss = -mean_i(advantage_i * sum_t log p(a_it)) - entropy_weight * mean_i(sum_t H_it)

``b`` is an exponential moving average of the rewards, updated once per told
reward (``b <- decay * b + (1 - decay) * r``), so ``decay`` means the same
whatever the batch size; a batch's advantages use the baseline from before the
batch, so a reward never enters its own baseline.  The first batch has no
history: its mean is its baseline and starts the average.  One Adam step per
batch, with optional gradient-norm clipping.
"""

from __future__ import annotations

import torch
from torch import nn


def reinforce_loss(log_probs: torch.Tensor, entropies: torch.Tensor, advantages: torch.Tensor,
                   entropy_weight: float) -> torch.Tensor:
    """The policy-gradient loss; ``log_probs`` and ``entropies`` are ``[batch, positions]``."""
    policy_term = -(advantages.detach() * log_probs.sum(dim=1)).mean()
    return policy_term - entropy_weight * entropies.sum(dim=1).mean()


class Reinforce:
    """Trains a policy that has ``log_prob(tokens) -> (log_probs, entropies)``."""

    def __init__(self, policy: nn.Module, lr: float, entropy_weight: float,
                 baseline_decay: float, grad_clip: float = 0.0):
        self.policy = policy
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
        self.baseline: float | None = None

    def step(self, tokens: torch.Tensor, rewards: torch.Tensor) -> dict:
        """One update from ``tokens [batch, positions]`` and ``rewards [batch]``."""
        rewards = rewards.to(torch.float32)
        baseline = float(rewards.mean()) if self.baseline is None else self.baseline
        advantages = rewards - baseline
        log_probs, entropies = self.policy.log_prob(tokens)
        loss = reinforce_loss(log_probs, entropies, advantages, self.entropy_weight)
        self.optimizer.zero_grad()
        loss.backward()
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        self.optimizer.step()
        self._update_baseline(rewards)
        return {
            "loss": float(loss.detach()),
            "baseline": self.baseline,
            "advantage_mean": float(advantages.mean()),
            "entropy": float(entropies.detach().sum(dim=1).mean()),
            "log_prob": float(log_probs.detach().sum(dim=1).mean()),
            "reward_mean": float(rewards.mean()),
            "grad_norm": float(grad_norm),
        }

    def _update_baseline(self, rewards: torch.Tensor) -> None:
        if self.baseline is None:
            self.baseline = float(rewards.mean())
            return
        baseline = self.baseline
        for reward in rewards.tolist():
            baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * reward
        self.baseline = baseline

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
