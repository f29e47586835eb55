"""The ``feedrank`` command (console script ``feedrank = "feedrank.cli:main"``).

Each subcommand is one function registered with :func:`subcommand`: it receives its own
``argparse`` parser, adds its arguments and returns the function that runs it. Only the chosen
subcommand is configured, and modules are imported inside that function, so one subcommand's
dependencies never load for another and ``feedrank --help`` stays fast::

    @subcommand("evaluate", "offline evaluation of the recommenders")
    def _evaluate(parser: argparse.ArgumentParser) -> Runner:
        from feedrank import evaluate
        evaluate.add_arguments(parser)
        return evaluate.run            # run(args) -> exit status (int) or None for 0

A runner reports bad input by raising :class:`CommandError` (or ``ValueError``): the message is
printed as ``feedrank <command>: error: ...`` and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["CommandError", "Runner", "build_parser", "main", "subcommand"]

Runner = Callable[[argparse.Namespace], "int | None"]
Configure = Callable[[argparse.ArgumentParser], Runner]


class CommandError(Exception):
    """A problem the user can fix (bad argument, non-empty database, missing file): printed
    without a traceback."""


# name -> (one-line help, configure function); filled by @subcommand, in registration order.
_SUBCOMMANDS: dict[str, tuple[str, Configure]] = {}


def subcommand(name: str, help: str) -> Callable[[Configure], Configure]:
    """Registers ``configure(parser) -> runner`` as ``feedrank <name>``."""

    def register(configure: Configure) -> Configure:
        if name in _SUBCOMMANDS:
            raise ValueError(f"feedrank subcommand {name!r} is registered twice")
        _SUBCOMMANDS[name] = (help, configure)
        return configure

    return register


# --- subcommands --------------------------------------------------------------------------------


@subcommand("demo-data", "fill the database with a synthetic (default) or MovieLens data set")
def _demo_data(parser: argparse.ArgumentParser) -> Runner:
    from feedrank import demo_data

    demo_data.add_arguments(parser)
    return demo_data.run


@subcommand("evaluate", "offline evaluation of the recommenders (shared/EVAL.md protocol)")
def _evaluate(parser: argparse.ArgumentParser) -> Runner:
    from feedrank import evaluate

    evaluate.add_arguments(parser)
    return evaluate.run


@subcommand("tune", "choose the hybrid's configuration on a validation split; writes a config file")
def _tune(parser: argparse.ArgumentParser) -> Runner:
    from feedrank import tune

    tune.add_arguments(parser)
    return tune.run


@subcommand("experiments", "create, list, start and stop A/B experiments (docs/experiments.md)")
def _experiments(parser: argparse.ArgumentParser) -> Runner:
    from feedrank import experiments

    experiments.add_arguments(parser)
    return experiments.run


# --- entry point --------------------------------------------------------------------------------


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, just that subcommand gets its arguments (the others are
    listed with their help line but not configured)."""
    parser = argparse.ArgumentParser(
        prog="feedrank", description="feedrank: personalized feed ranking tools."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, configure) in _SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            sub.set_defaults(_run=configure(sub), _parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), "")
    prog = f"feedrank {chosen}".strip()
    args = None
    try:
        # configuring a subcommand imports its modules: a missing extra shows here already
        args = build_parser(only=chosen).parse_args(argv)
        prog = args._parser.prog
        status = args._run(args)
    except (CommandError, ValueError) as e:
        if args is not None:
            args._parser.print_usage(sys.stderr)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # scipy, psycopg, polars, redis, dagster: the optional `pipeline` extra.
        print(
            f"{prog}: error: needs the Python package {e.name!r}; "
            "install it with: pip install 'feedrank[pipeline]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
