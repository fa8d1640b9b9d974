"""Controllers: they propose token lists of a search space and learn from rewards.

``make_controller(name, space, seed, **settings)`` builds one by name:
``rnn`` (an LSTM policy trained by REINFORCE), ``random`` (uniform) and
``evolution`` (regularized evolution).  All share :class:`Controller`'s
``ask``/``tell``/``state_dict`` interface.
"""

from .base import Controller, Proposal, controller_names, make_controller
from .evolution import Evolution, EvolutionConfig
from .random_search import RandomSearch
from .reinforce import Reinforce, reinforce_loss
from .rnn import RNNConfig, RNNController, RNNPolicy

__all__ = [
    "Controller", "Evolution", "EvolutionConfig", "Proposal", "RNNConfig", "RNNController",
    "RNNPolicy", "RandomSearch", "Reinforce", "controller_names", "make_controller",
    "reinforce_loss",
]
