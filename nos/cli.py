"""The ``nos`` command line: parse, eval, baselines, search, inspect, export, learn.

Bad input gets a clear message on stderr and exit status 2, never a
traceback; nothing on disk is changed by a command that fails that way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from nos.lang.parser import RuleSyntaxError, read_rule_source
from nos.lang.rule import Rule
from nos.optim.param_options import ParamError

USAGE_ERROR = 2


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


def resolve_rule(source: str) -> Rule:
    """Rule text, a file path, '-' for stdin, or a baseline's name."""
    from nos.optim.baselines import BASELINES
    from nos.optim.optimizer import resolve

    try:
        text = source if source in BASELINES else read_rule_source(source)
    except OSError as err:
        raise UsageError(f"cannot read {source}: {err.strerror}") from None
    return resolve(text)[0]


def rule_json(rule: Rule) -> dict:
    expanded = rule.expanded()
    return {
        "rule": str(rule),
        "params": expanded.params,
        "state": list(expanded.state),
        "primitives": sorted(rule.primitives),
        "prelude": sorted(rule.prelude_names),
        "functions": sorted(rule.functions),
        "needs_total_steps": rule.needs_total_steps,
    }


def cmd_parse(args: argparse.Namespace) -> int:
    rule = resolve_rule(args.rule)
    if args.param:
        from nos.optim.baselines import BASELINES
        from nos.optim.keywords import variant
        from nos.optim.param_options import parse_param_options

        name = args.rule if args.rule in BASELINES else "the rule"
        rule = variant(rule, parse_param_options(args.param), name)
    if args.json:
        print(json.dumps(rule_json(rule), indent=2))
    elif args.latex:
        print(rule.latex())
    elif args.expand:
        print(rule.expanded())
    else:
        print(rule)
    return 0


def _add_parse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parse",
        help="parse a rule and print its canonical text",
        description="Parse an update rule and print its canonical text. RULE is rule text, "
        "a file holding it, '-' for standard input, or a baseline's name (see `nos baselines`).",
    )
    p.add_argument("rule", metavar="RULE")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="canonical text, params, state, names")
    fmt.add_argument("--latex", action="store_true", help="the rule as LaTeX")
    fmt.add_argument("--expand", action="store_true", help="with prelude definitions written out")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the rule (repeatable): its value becomes the default, "
                   "and the variant its switches pick is printed (adam --param amsgrad=true)")
    p.set_defaults(handler=cmd_parse)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


FLAGS = {"epochs": "--epochs", "lr": "--lr", "lr_grid": "--lr-grid",
         "grid_epochs": "--grid-epochs", "snapshots": "--snapshots",
         "time_limit": "--time-limit", "seed": "--seed", "schedule": "--schedule"}


def evaluation_settings(args: argparse.Namespace) -> dict:
    """The evaluation settings given on the command line, checked (nos.train.settings)."""
    from nos.train.settings import SettingError, check_evaluation

    given = {key: getattr(args, key) for key in FLAGS if hasattr(args, key)}
    try:
        return check_evaluation(given)
    except SettingError as err:
        raise UsageError(err.named(FLAGS[err.key])) from None


def _task_options(args: argparse.Namespace) -> dict:
    options = {}
    if getattr(args, "data_dir", None):
        options["data_dir"] = args.data_dir
    if getattr(args, "text", None):
        options["path"] = args.text
    return options


TASK_HELP = ("child task: mnist1d, digits, cifar10, charlm, a registered or entry-point "
             "name, package.module:Factory or path/to/task.py:Factory")


def _task(args: argparse.Namespace):
    """The task named by --task with the options of --data-dir and --text, checked."""
    from nos.train.tasks import get_task

    return get_task(args.task, **_task_options(args))


PARAM_HELP = ("a value for the rules' params, a keyword argument of nos.Optimizer "
              "(beta1=0.8, betas=0.9,0.95, wd=0.1; true, false, none, or text); repeatable")


def _add_param_option(p: argparse.ArgumentParser, text: str = PARAM_HELP) -> None:
    p.add_argument("--param", action="append", default=None, metavar="KEY=VALUE", help=text)


def _params(args: argparse.Namespace) -> dict:
    """The --param options as nos.Optimizer's keyword arguments (ParamError if malformed)."""
    from nos.optim.param_options import parse_param_options

    return parse_param_options(getattr(args, "param", None))


def _rule_name(source: str, rule: Rule) -> str:
    """A rule as an error message names it: a baseline by its name, else its text."""
    from nos.optim.baselines import BASELINES
    from nos.report.tables import one_line

    if source in BASELINES:
        return source
    text = one_line(str(rule))
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="mnist1d", help=TASK_HELP + " (default: mnist1d)")
    p.add_argument("--epochs", type=float, default=None, help="training budget in epochs")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=float, default=None, help="a fixed learning rate")
    lr.add_argument("--lr-grid", type=_floats, default=None, metavar="A,B,...",
                    help="learning rates tried for a short run each; the best is kept")
    p.add_argument("--grid-epochs", type=float, default=1.0, help="length of each short run")
    p.add_argument("--schedule", default=None, metavar="NAME[:k=v,...]",
                   help="learning-rate schedule, e.g. cosine or sgdr:T_0=50,T_mult=2")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 directory (task cifar10)")
    p.add_argument("--text", default=None, help="text file for the charlm task")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    _add_param_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_eval(args: argparse.Namespace) -> int:
    from nos.learned import check_checkpoint, is_checkpoint_path
    from nos.optim.param_options import check_params, format_params
    from nos.train.evaluation import evaluate
    from nos.train.tasks import reward_rule

    settings = evaluation_settings(args)
    params = _params(args)
    if is_checkpoint_path(args.rule):  # a learned optimizer, written by nos learn
        rule = check_checkpoint(args.rule, params)
    else:
        rule = resolve_rule(args.rule)
        check_params(rule, params, lr=settings.get("lr"), name=_rule_name(args.rule, rule))
    task = _task(args)
    result = evaluate(rule, task, **settings, params=params, device=args.device,
                      progress=args.task in ("cifar10", "charlm") and not args.json)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print("rule       " + result.rule.replace("\n", "\n           "))
    print(f"task       {result.task}  status {result.status}"
          + (f"  ({result.error})" if result.error else ""))
    print(f"reward     {result.reward:.4f}  ({reward_rule(task)})")
    if result.metric != "accuracy" and result.val_metric is not None:
        print(f"validation {result.val_metric:.4f}  ({result.metric})")
    if result.lr is not None:
        picked = " (picked from the grid)" if result.grid else ""
        print(f"lr         {result.lr:g}{picked}")
    if result.params:
        print(f"params     {format_params(result.params)}")
    if result.test_metric is not None:
        named = "" if result.metric == "accuracy" else f"  ({result.metric})"
        print(f"test       {result.test_metric:.4f}{named}")
    if result.val_loss is not None:
        bits = (f"  ({result.val_loss / math.log(2):.3f} bits per character)"
                if result.task == "charlm" else "")
        print(f"val loss   {result.val_loss:.4f}{bits}")
    if result.ensemble_accuracy is not None:
        print(f"ensemble   {result.ensemble_accuracy:.4f} of {len(result.snapshot_accuracies)} "
              f"snapshots (each: {', '.join(f'{a:.4f}' for a in result.snapshot_accuracies)})")
    print(f"time       {result.seconds:.1f} s, {result.steps} steps")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="train a child network with a rule and print its reward",
                       description="Train the task's child network with RULE (rule text, a file, "
                       "'-', a baseline's name or a learned optimizer's .pt) and print the "
                       "reward (the validation metric, or 1/(1+metric) where lower is better), "
                       "the chosen learning rate, the test metric and time.")
    p.add_argument("rule", metavar="RULE")
    _add_training_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshots", type=int, default=0,
                   help="with an SGDR schedule: ensemble of the last M cycles' models")
    p.add_argument("--time-limit", type=float, default=None, help="seconds")
    p.set_defaults(handler=cmd_eval)


def cmd_baselines(args: argparse.Namespace) -> int:
    from nos.learned import check_checkpoint, is_checkpoint_path
    from nos.optim.baselines import BASELINES
    from nos.optim.param_options import check_params, format_params
    from nos.report.compare import comparison_table, plot_trials, train_seeds

    settings = evaluation_settings(args)
    params = _params(args)
    names = args.names.split(",") if args.names else list(BASELINES)
    unknown = [n for n in names if n not in BASELINES and not is_checkpoint_path(n)]
    if unknown:
        raise UsageError(f"unknown baseline {unknown[0]!r}; known: {', '.join(BASELINES)}, "
                         "or a learned optimizer's .pt")
    for name in names:  # every baseline takes the params, before any training
        if is_checkpoint_path(name):
            check_checkpoint(name, params)
        else:
            check_params(name, params, lr=settings.get("lr"), name=name)
    _task(args)  # a bad task is named before any training
    if args.plot:
        _check_writable(args.plot)
    settings.update(device=args.device, task_options=_task_options(args), params=params)

    def progress(name: str, result) -> None:
        if not args.json:
            print(f"  {name:14s} seed {result.seed}: {result.reward:.4f} ({result.status})",
                  file=sys.stderr)

    trials = train_seeds([(n, n) for n in names], args.task, args.seeds, settings, progress)
    if args.json:
        print(json.dumps({"task": args.task, "seeds": args.seeds, "params": params,
                          "baselines": [t.record() for t in trials]}))
    else:
        if params:
            print(f"trained with --param {format_params(params)}")
        print(comparison_table(trials, first="baseline"))
    if args.plot:
        plot_trials(trials, args.plot, f"baselines on {args.task} ({args.seeds} seeds)")
        if not args.json:
            print(f"curves written to {args.plot}")
    return 0


def _check_writable(path: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path}: {folder} is not a writable directory")


def _add_baselines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baselines", help="train every baseline the same way and compare",
                       description="Train each baseline (or the named ones) on a task with the "
                       "same budget and learning-rate search, and print a table sorted by "
                       "reward (mean and spread over seeds).")
    _add_training_options(p)
    p.add_argument("--names", default=None, help="comma-separated baseline names (a learned "
                   "optimizer's .pt too)")
    p.add_argument("--seeds", type=_positive_int, default=1)
    p.add_argument("--plot", default=None, metavar="PNG", help="write validation curves")
    p.set_defaults(handler=cmd_baselines)


def search_config(args: argparse.Namespace) -> dict:
    """The config file (or the defaults) with the command line's overrides, validated."""
    from nos.controllers import controller_names
    from nos.search import config as cfg
    from nos.train.tasks import absolute_spec

    config = cfg.load(args.config) if args.config else cfg.validate({}, "defaults")
    task = absolute_spec(args.task) if args.task else None  # a file from this folder
    for table, key, value in (("search", "controller", args.controller),
                              ("search", "budget", args.budget), ("search", "seed", args.seed),
                              ("workers", "count", args.workers), ("task", "name", task)):
        config = cfg.override(config, table, key, value)
    source = args.config or "the defaults"
    if config["search"]["controller"] not in controller_names():
        raise UsageError(f"{source}: unknown controller {config['search']['controller']!r}; "
                         f"known: {', '.join(controller_names())}")
    return config


def cmd_search(args: argparse.Namespace) -> int:
    import os

    from nos.report.tables import one_line, table
    from nos.search.driver import Search
    from nos.train.tasks import TaskError

    config = search_config(args)
    try:  # the tasks are resolved, and the search's made, before anything starts
        search = Search(config, args.out, address=args.address, dashboard=args.dashboard,
                        progress=not args.quiet and sys.stderr.isatty() or args.progress,
                        base_dir=os.path.dirname(os.path.abspath(args.config))
                        if args.config else None)
    except TaskError as err:
        where = "--task" if args.task else args.config or "the defaults"
        raise UsageError(f"{where}: {_one_line(err)}") from None
    summary = search.run()
    if args.json:
        print(json.dumps({"out": str(summary.out), "finished": summary.finished,
                          "budget": summary.budget, "seconds": summary.seconds,
                          "counts": summary.counts, "top": summary.top}))
        return 0
    print(f"{summary.finished} of {summary.budget} evaluations in {args.out} "
          f"({summary.per_second:.2f}/s this session); by status: "
          + ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())))
    rows = [[i + 1, t["reward"], t["lr"], t["count"], one_line(t["rule"])]
            for i, t in enumerate(summary.top)]
    print(table(["#", "reward", "lr", "sampled", "rule"], rows))
    if "funnel" in config:
        from nos.report.funnel import funnel_report, print_funnel
        from nos.search.store import Store

        with Store.open(args.out) as store:
            report = funnel_report(store)
        print()
        print_funnel(report, top=5, final_only=True)
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search for update rules with a controller and Ray workers",
                       description="Run a search: the controller proposes rules, Ray workers "
                       "train a child with each, every result goes to DIR/nos.db. Running "
                       "again on the same DIR resumes the search.")
    p.add_argument("--config", default=None, help="TOML config (see experiments/quick.toml)")
    p.add_argument("--controller", default=None,
                   help="rnn, random, evolution or program (whole rules, from named ones)")
    p.add_argument("--task", default=None, help=TASK_HELP + " (default: the config's [task] "
                   "name; a file is taken from the current folder)")
    p.add_argument("--budget", type=_positive_int, default=None, help="number of evaluations")
    p.add_argument("--workers", type=_positive_int, default=None, help="parallel evaluations")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster ('auto' or HOST:PORT); default: local Ray")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", required=True, metavar="DIR", help="results directory")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress", action="store_true", help="progress bar even without a tty")
    p.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard with the local Ray (off by default)")
    p.set_defaults(handler=cmd_search)


def cmd_inspect(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from nos.report import summary as inspect
    from nos.report.funnel import funnel_plot_path, funnel_report, plot_funnel, print_funnel
    from nos.search.store import Store

    evaluation_settings(argparse.Namespace(epochs=args.epochs))  # --retrain's budget
    params = _params(args)
    if params and args.retrain is None and args.generalization is None:
        raise UsageError("--param is for --retrain and --generalization (the params of their "
                         "trainings)")
    if args.generalization is not None and len(args.dirs) > 1:
        raise UsageError(f"--generalization measures one run, got {len(args.dirs)} directories")
    for path in (args.plot, args.retrain_plot):
        if path:
            _check_writable(path)
    with ExitStack() as stack:
        stores = [stack.enter_context(Store.open(d, readonly=args.retrain is None))
                  for d in args.dirs]
        if args.rule is not None:
            print(inspect.show_rule(stores[0], args.rule))
            return 0
        if args.retrain is not None:
            print(inspect.retrain(stores[0], args.retrain, args.epochs, args.seeds, args.task,
                                  plot=args.retrain_plot, progress=not args.json,
                                  params=params))
        infos = [inspect.summary(s, args.top) for s in stores]
        if args.generalization is not None:
            from nos.report.generalization import generalization_report

            infos[0]["generalization"] = generalization_report(
                stores[0], args.generalization, epochs=args.epochs, seeds=args.seeds,
                task=args.task, params=params, progress=not args.json)
        for info, store in zip(infos, stores):
            report = funnel_report(store)
            if report is not None:
                info["funnel"] = report
        if args.json:
            print(json.dumps(infos if len(infos) > 1 else infos[0]))
        else:
            for info in infos:
                inspect.print_summary(info, latex=args.latex)
                if "funnel" in info:
                    print_funnel(info["funnel"], args.top)
                if "generalization" in info:
                    from nos.report.generalization import print_generalization

                    print()
                    print_generalization(info["generalization"])
        if args.plot:
            inspect.plot_rewards(stores, args.plot)
            if not args.json:
                print(f"rewards plotted to {args.plot}")
            funnels = [info["funnel"] for info in infos if "funnel" in info]
            for index, report in enumerate(funnels, start=1):
                path = funnel_plot_path(args.plot, index if len(funnels) > 1 else None)
                plot_funnel(report, path)
                if not args.json:
                    print(f"funnel plotted to {path}")
            if "generalization" in infos[0]:
                from nos.report.generalization import (
                    generalization_plot_path,
                    plot_generalization,
                )

                path = plot_generalization(infos[0]["generalization"],
                                           generalization_plot_path(args.plot))
                if not args.json:
                    print(f"generalization plotted to {path}")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show what a search found",
                       description="Show a run's best distinct rules, its counts by status and "
                       "speed; plot rewards (several runs: one line each); re-train the top "
                       "rules against the baselines, on the same or another task.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results directories")
    p.add_argument("--top", type=_positive_int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--latex", action="store_true", help="the top rules as LaTeX")
    p.add_argument("--rule", type=int, default=None, metavar="ID",
                   help="one evaluation in full, prelude expanded")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="rewards in order; a run with a funnel also gets PNG_funnel (each "
                   "stage's scores against the last stage's)")
    p.add_argument("--retrain", type=_positive_int, default=None, metavar="K",
                   help="train the top K rules and the baselines again")
    p.add_argument("--generalization", type=_positive_int, nargs="?", const=3, default=None,
                   metavar="K", help="train the top K rules (default 3) and the baselines "
                   "again, one network per seed, and measure each: test accuracy, "
                   "generalisation gap (train minus test accuracy), epsilon-sharpness, top "
                   "Hessian eigenvalue, ablation area, and each measure's rank correlation "
                   "with the gap; with --plot also PNG_generalization")
    p.add_argument("--epochs", type=float, default=None,
                   help="(--retrain, --generalization) epochs")
    p.add_argument("--seeds", type=_positive_int, default=3,
                   help="(--retrain, --generalization) seeds")
    p.add_argument("--task", default=None,
                   help="(--retrain, --generalization) another task, to test transfer (names "
                   "as in nos eval)")
    p.add_argument("--retrain-plot", default=None, metavar="PNG",
                   help="(--retrain) validation curves of the re-trained rules")
    _add_param_option(p, "(--retrain) " + PARAM_HELP + "; every rule re-trained, the "
                      "baselines too, must take them")
    p.set_defaults(handler=cmd_inspect)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nos.export.optax_module import optax_source
    from nos.export.torch_module import torch_source
    from nos.optim.baselines import BASELINES

    try:  # a named rule goes by name: its lr and its class name come with it
        rule = args.rule if args.rule in BASELINES else resolve_rule(args.rule)
    except RuleSyntaxError as err:
        where = f"line {err.line}, column {err.column}: {err.reason}"
        if args.rule.isidentifier():
            raise UsageError(f"unknown rule {args.rule!r}: neither a named rule "
                             f"({', '.join(BASELINES)}) nor rule text ({where})") from None
        raise UsageError(where) from None
    if args.output:
        _check_writable(args.output)
        if Path(args.output).is_dir():
            raise UsageError(f"cannot write {args.output}: it is a directory")
    write = torch_source if args.torch else optax_source
    source = write(rule, name=args.name, lr=args.lr)
    if not args.output:
        sys.stdout.write(source)
        return 0
    Path(args.output).write_text(source)
    print(f"nos export: {'torch' if args.torch else 'optax'} module written to {args.output}",
          file=sys.stderr)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a rule as a standalone torch or optax module",
                       description="Write RULE (rule text, a file, '-' or a named rule) as a "
                       "standalone Python module that does not import nos: a "
                       "torch.optim.Optimizer subclass (--torch) or an optax "
                       "GradientTransformation (--optax), with the rule's params as keywords "
                       "and its text and LaTeX in the docstring.")
    p.add_argument("rule", metavar="RULE")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--torch", action="store_true", help="a torch.optim.Optimizer subclass")
    target.add_argument("--optax", action="store_true", help="an optax GradientTransformation")
    p.add_argument("--name", default=None,
                   help="the class (torch) or function (optax) name; default from the rule's "
                   "name, else ExportedRule / exported_rule")
    p.add_argument("--lr", type=float, default=None,
                   help="the default learning rate (default: the named rule's, else 1e-3)")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the module here (default: standard output)")
    p.set_defaults(handler=cmd_export)


def cmd_learn(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nos.learned import is_checkpoint_path
    from nos.learned.meta import MetaSettings, learn

    if not is_checkpoint_path(args.out):
        raise UsageError(f"--out {args.out}: a learned optimizer's file must end in .pt")
    _check_writable(args.out)
    if Path(args.out).is_dir():
        raise UsageError(f"cannot write {args.out}: it is a directory")
    if not (math.isfinite(args.meta_lr) and args.meta_lr > 0):
        raise UsageError(f"--meta-lr must be a positive number, got {args.meta_lr}")
    settings = MetaSettings(meta_steps=args.meta_steps, unroll=args.unroll,
                            episode_steps=args.episode_steps, meta_lr=args.meta_lr,
                            seed=args.seed)
    task = _task(args)
    result = learn(task, args.out, settings, device=args.device, progress=not args.quiet)
    record = result.record()
    if args.json:
        print(json.dumps({"out": args.out, "training": record}))
        return 0
    print(f"learned optimizer written to {args.out}")
    children = f"{result.episodes} child{'ren' if result.episodes != 1 else ''}"
    print(f"task       {result.task}: {len(result.losses)} meta-steps of {settings.unroll} "
          f"steps, {children} of {settings.episode_steps} steps"
          + (f", {result.skipped} unrolls skipped (loss not finite)" if result.skipped else ""))
    if result.losses:
        print(f"meta-loss  {record['meta_loss_first']:.4f} (first tenth) -> "
              f"{record['meta_loss_last']:.4f} (last tenth)")
    print(f"time       {result.seconds:.1f} s")
    print(f"use it     nos eval {args.out} --task {args.task}")
    return 0


def _add_learn(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("learn", help="meta-train an LSTM optimizer on a task (Andrychowicz et "
                       "al., 2016)",
                       description="Meta-train a coordinate-wise LSTM optimizer (two layers of "
                       "20, shared by every coordinate) on the task's child by truncated "
                       "backpropagation through unrolled training, with Adam, and write it to "
                       "FILE.pt: it then goes wherever a rule does (nos eval FILE.pt, "
                       "nos baselines --names adam,FILE.pt, nos.Optimizer(params, 'FILE.pt')).")
    p.add_argument("--task", default="mnist1d", help=TASK_HELP + " (default: mnist1d)")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="the checkpoint to write")
    p.add_argument("--meta-steps", type=_positive_int, default=300,
                   help="Adam steps on the LSTM, one per unroll (default: 300)")
    p.add_argument("--unroll", type=_positive_int, default=20,
                   help="child steps per unroll: the truncation (default: 20)")
    p.add_argument("--episode-steps", type=_positive_int, default=100,
                   help="child steps before a fresh child is drawn (default: 100)")
    p.add_argument("--meta-lr", type=float, default=1e-3, help="Adam's rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="CIFAR-10 directory (task cifar10)")
    p.add_argument("--text", default=None, help="text file for the charlm task")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_learn)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_parse, _add_eval, _add_baselines, _add_search, _add_inspect, _add_export, _add_learn,
]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nos",
        description="Neural Optimizer Search: write update rules, compile them into torch "
        "optimizers, evaluate them, and search for new ones.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _one_line(err: Exception) -> str:
    from nos.train.settings import SettingError

    if isinstance(err, SettingError) and err.key in FLAGS:  # found once the data was loaded
        return err.named(FLAGS[err.key])
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except RuleSyntaxError as err:
        print(f"nos {args.command}: error: {err}", file=sys.stderr)
    except ParamError as err:
        print(f"nos {args.command}: error: --param {_one_line(err)}", file=sys.stderr)
    except (UsageError, ValueError, OSError) as err:
        print(f"nos {args.command}: error: {_one_line(err)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"nos {args.command}: interrupted", file=sys.stderr)
        return 130
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
