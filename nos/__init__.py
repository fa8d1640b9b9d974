"""nos: Neural Optimizer Search.

Update rules are written in a small language, compiled into torch
optimizers, and searched for by controllers whose child trainings run on Ray.
"""

from nos.compile.compiler import compile_rule
from nos.compile.program import RuleCompileError
from nos.lang.parser import RuleSyntaxError
from nos.lang.rule import Rule, parse
from nos.optim.baselines import Baseline, baselines
from nos.optim.optimizer import Optimizer
from nos.search.driver import SearchSummary, search
from nos.train.evaluation import EvalResult, evaluate
from nos.train.tasks import Task, TaskData, register_task

__version__ = "0.1.0"

__all__ = [
    "Baseline", "EvalResult", "Optimizer", "Rule", "RuleCompileError", "RuleSyntaxError",
    "SearchSummary", "Task", "TaskData", "baselines", "compile_rule", "evaluate", "parse",
    "register_task", "search",
]
