"""The ``nos`` command line: parse, eval, baselines, search, inspect.

Bad input gets a clear message on stderr and exit status 2, never a
traceback; nothing on disk is changed by a command that fails that way.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from nos.parser import RuleSyntaxError, parse, read_rule_source
from nos.rule import Rule

USAGE_ERROR = 2


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


def resolve_rule(source: str) -> Rule:
    """Rule text, a file path, '-' for stdin, or a baseline's name."""
    from nos.baselines import BASELINES

    if source in BASELINES:
        return parse(BASELINES[source].text)
    try:
        text = read_rule_source(source)
    except OSError as err:
        raise UsageError(f"cannot read {source}: {err.strerror}") from None
    return parse(text)


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
    p.set_defaults(handler=cmd_parse)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_parse]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nos",
        description="Neural Optimizer Search: write update rules, compile them into torch "
        "optimizers, evaluate them, and search for new ones.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except RuleSyntaxError as err:
        print(f"nos {args.command}: error: {err}", file=sys.stderr)
    except (UsageError, ValueError, OSError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"nos {args.command}: error: {text}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"nos {args.command}: interrupted", file=sys.stderr)
        return 130
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
