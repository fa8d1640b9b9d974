"""nos: Neural Optimizer Search.

Update rules are written in a small language, compiled into torch
optimizers, and searched for by controllers whose child trainings run on Ray.
"""

__version__ = "0.1.0"
