"""Controllers: they propose rules, as token lists of a search space or as whole
programs, and learn from rewards.

``make_controller(name, space, seed, **settings)`` builds one by name:
``rnn`` (an LSTM policy trained by REINFORCE), ``random`` (uniform),
``evolution`` (regularized evolution over token lists) and ``program``
(regularized evolution over whole rules in the rule language, from named
rules such as ``adamw``; its proposals carry no tokens, only the rule's text).
All share :class:`Controller`'s ``ask``/``tell``/``state_dict`` interface.

The program search is three modules: :mod:`.trees` (the vocabulary, editing
expressions by path, names in scope, random expressions), :mod:`.mutations`
(the mutations, ``mutate``, ``simplify``) and :mod:`.program` (the controller).
"""

from .base import Controller, Proposal, controller_names, make_controller
from .evolution import Evolution, EvolutionConfig
from .program import ProgramConfig, ProgramEvolution
from .random_search import RandomSearch
from .reinforce import Reinforce, reinforce_loss
from .rnn import RNNConfig, RNNController, RNNPolicy

__all__ = [
    "Controller", "Evolution", "EvolutionConfig", "ProgramConfig", "ProgramEvolution",
    "Proposal", "RNNConfig", "RNNController", "RNNPolicy", "RandomSearch", "Reinforce",
    "controller_names", "make_controller", "reinforce_loss",
]
