"""nos: Neural Optimizer Search.

Update rules are written in a small language, compiled into torch
optimizers, and searched for by controllers whose child trainings run on Ray.
"""

from nos.optim.baselines import Baseline, baselines
from nos.compile.compiler import RuleCompileError, compile_rule
from nos.train.evaluation import EvalResult, evaluate
from nos.optim.optimizer import Optimizer
from nos.lang.parser import RuleSyntaxError, parse
from nos.lang.rule import Rule

__version__ = "0.1.0"

__all__ = [
    "Baseline", "EvalResult", "Optimizer", "Rule", "RuleCompileError", "RuleSyntaxError",
    "baselines", "compile_rule", "evaluate", "parse",
]
