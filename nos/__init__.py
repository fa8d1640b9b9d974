"""nos: Neural Optimizer Search.

Update rules are written in a small language, compiled into torch
optimizers, and searched for by controllers whose child trainings run on Ray.
"""

from nos.baselines import Baseline, baselines
from nos.compiler import RuleCompileError, compile_rule
from nos.evaluation import EvalResult, evaluate
from nos.optimizer import Optimizer
from nos.parser import RuleSyntaxError, parse
from nos.rule import Rule

__version__ = "0.1.0"

__all__ = [
    "Baseline", "EvalResult", "Optimizer", "Rule", "RuleCompileError", "RuleSyntaxError",
    "baselines", "compile_rule", "evaluate", "parse",
]
