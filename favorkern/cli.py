"""The ``favorkern`` command line: ``favorkern SUBCOMMAND [options]``.

Each subcommand lives in ``favorkern/_commands/<name>.py`` and defines
``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when used,
so ``favorkern --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> one-line help; the module favorkern._commands.<name> implements it.
SUBCOMMANDS = {
    "attention": "error and time of favor_attention against exact softmax attention",
    "variance": "closed-form and Monte-Carlo MSE of the random-feature estimators",
    "regress": "random-feature ridge regression against RBFSampler, Nystroem, KernelRidge",
    "report": "run the three jobs and write a self-contained HTML report",
}


def _available():
    found = {}
    for name, help_text in SUBCOMMANDS.items():
        if importlib.util.find_spec(f"favorkern._commands.{name}") is not None:
            found[name] = help_text
    return found


def build_parser(commands=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="favorkern",
        description="FAVOR+ random features: attention, variance diagnostics, regression.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"favorkern {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in (commands or _available()).items():
        module = importlib.import_module(f"favorkern._commands.{name}")
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``favorkern`` console script."""
    import importlib.util  # noqa: F401  (find_spec above)

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"favorkern {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
