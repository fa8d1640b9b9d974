"""Learned optimizers: a coordinate-wise LSTM meta-trained on a child task
(Andrychowicz et al., 2016).

``nos.learned.lstm`` is the network, ``nos.learned.optimizer`` the torch
optimizer that steps with it, ``nos.learned.checkpoint`` its file, and
``nos.learned.meta`` the meta-training (``nos learn``).  A checkpoint goes
wherever a rule does: ``nos.Optimizer(params, "lstm.pt")`` is a
:class:`LearnedOptimizer`, and ``nos.evaluate("lstm.pt", task=...)`` trains
a child with it.
"""

from nos.learned.checkpoint import is_checkpoint_path, load_checkpoint, save_checkpoint
from nos.learned.lstm import Architecture, CoordinateLSTM
from nos.learned.optimizer import LearnedOptimizer, check_checkpoint

__all__ = ["Architecture", "CoordinateLSTM", "LearnedOptimizer", "check_checkpoint",
           "is_checkpoint_path", "load_checkpoint", "save_checkpoint"]
