"""The ``favorkern`` command line: ``favorkern SUBCOMMAND [options]``.

Each subcommand lives in ``favorkern/_commands/<name>.py`` and defines
``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when used,
so ``favorkern --help`` stays fast.

Exit status: 0 on success, 2 for usage errors (bad options, input files or output
directory; argparse's own errors too), 1 when the computation or the writing of
the results fails, 130 on Ctrl-C.  Errors are one line on stderr, without a
traceback unless ``--debug`` is given.
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

# Longest error message shown (a value echoed from a 50 MB one-line file must not
# become a 50 MB message).
MAX_MESSAGE_CHARS = 600

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_DEBUG_HELP = "show the Python traceback of an error"


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
        epilog="Exit status: 0 success, 1 failure while computing or writing, 2 usage "
        "error, 130 interrupted.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"favorkern {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
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
        # also accepted after the command; SUPPRESS keeps a --debug given before it
        sub_parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
        sub_parser.set_defaults(_module=module)
    return parser


def shorten(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, saying how much was left out.

    Examples
    --------
    >>> shorten("x" * 1000, 20)
    'xxxxxxxxxx ... [990 more characters]'
    """
    message = str(message)
    if len(message) <= limit:
        return message
    keep = max(1, limit // 2)
    return f"{message[:keep]} ... [{len(message) - keep} more characters]"


def _report(command, exc, debug, text=None) -> None:
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    prefix = f"favorkern {command}" if command else "favorkern"
    if text is None:
        text = str(exc) or type(exc).__name__
    print(f"{prefix}: error: {shorten(text)}", file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of the ``favorkern`` console script; returns the exit status.

    Argument errors found by argparse exit with status 2 (``SystemExit``) as usual.
    """
    from ._commands import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"favorkern {args.command}: interrupted", file=sys.stderr)
        if debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        # favorkern's functions answer bad arguments with ValueError/TypeError
        # naming the parameter (FileNotFoundError: a missing input); the commands
        # check paths and options up front.
        _report(args.command, exc, debug)
        return EXIT_USAGE
    except MemoryError as exc:
        _report(
            args.command, exc, debug, f"out of memory ({exc or 'no details'}); try smaller sizes"
        )
        return EXIT_FAILURE
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _report(args.command, exc, debug, f"{exc.strerror or exc}{where}")
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001  (a bug or a failing library: no traceback)
        hint = "" if debug else " (run with --debug for the traceback)"
        _report(args.command, exc, debug, f"{type(exc).__name__}: {exc}{hint}")
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
