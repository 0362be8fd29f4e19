"""The ``tqstar`` command line: a thin layer over the library (every command is one library call).

    tqstar generate [--config run.yaml] [flags]   decode prompts with a method; text or JSONL out
    tqstar serve [--config serve.yaml] [flags]    OpenAI-compatible server over presets (streaming, batching)
    tqstar demo                                   SmolLM2: SFT, DPO baseline, TQ* direct/soft, EFT side by side
    tqstar eval --config eval.yaml                run methods over a prompt set (resumable JSONL), then report
    tqstar report results.jsonl                   table (terminal, Markdown, CSV) and plots of a results file
    tqstar testbed  [flags]                       exact TQ*, soft values, EFT, CD, ARGS on tabular instances

One module per command (its flags and what it runs); this one is the entry point (``tqstar.cli:main``), the one
error boundary and the parser's assembly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterator
from typing import NoReturn

from ..errors import ClientError, TQStarError
from . import demo, eval, generate, serve, testbed


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a bad flag is one ``tqstar: error:`` line like every error."""

    def error(self, message: str) -> NoReturn:
        flag = re.fullmatch(r"argument (--[\w-]+)(?:/-\w)?: expected one argument", message)
        if flag:  # argparse takes a value that starts with '-' (a negative weight, '-1*sentiment') for a flag
            raise UsageError(f"{message}; give it a value, and write one that starts with '-' as"
                             f" {flag.group(1)}=VALUE")
        raise UsageError(f"{message}; see {self.prog} --help")


class UsageError(ClientError):
    """A command-line flag that argparse refused."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error ends as one ``tqstar: error: ...`` line on stderr and exit status 2.

    Errors tqstar raises on purpose (:class:`TQStarError`) are printed as they are. Anything else -- an
    exception from the user's reward function, a bug -- is turned into one line by :func:`foreign_error`, which
    names the exception and the code that raised it. ``--debug`` (or ``TQSTAR_DEBUG=1``) shows the traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("TQSTAR_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    with one_line_log():
        return _run(argv, debug)


def _run(argv: list[str], debug: bool) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        _quiet_transformers()
        return args.run(args)
    except KeyboardInterrupt:
        print("tqstar: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`tqstar generate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail again
        return 141  # 128 + SIGPIPE, as a shell reports a process that a closed pipe stopped
    except Exception as exc:  # the one boundary where foreign exceptions become one line
        if debug:
            raise
        message = str(exc) if isinstance(exc, TQStarError) else foreign_error(exc)
        print(f"tqstar: error: {' '.join(message.splitlines())}", file=sys.stderr)
        return 2


def foreign_error(exc: BaseException) -> str:
    """One sentence for an exception tqstar did not raise on purpose: what it is and where it came from.

    Raised in user code (a ``module:function`` reward, a module it imports): names the function, file and line
    and says to fix it there. An ``OSError`` on a path: names the path. Otherwise it is a bug in tqstar.
    """
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{what} (in {exc.filename}, line {exc.lineno}); fix that file"
    if isinstance(exc, OSError) and exc.filename:
        return (f"cannot use {str(exc.filename)!r} ({exc.strerror or what}); check that the path exists and is"
                " accessible")
    frame = _user_frame(exc)
    if frame is not None:
        return (f"{what}, raised in your code: {frame.name} ({frame.filename}, line {frame.lineno}); fix it there, or"
                " rerun with --debug (or TQSTAR_DEBUG=1) for the traceback")
    return (f"unexpected {what}; this is a bug in tqstar: please report it with the traceback that --debug (or"
            " TQSTAR_DEBUG=1) shows")


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback that is neither tqstar's nor an installed library's."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tqstar/, not tqstar/cli/
    library = tuple(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not path.startswith(package) and not path.startswith(library) and not frame.filename.startswith("<"):
            return frame
    return None


def _quiet_transformers() -> None:
    """No weight-loading progress bars or info logs from transformers in our output."""
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


class OneLineHandler(logging.Handler):
    """The ``tqstar`` logger's records as the command line shows every message: ``tqstar: <message>`` on the
    standard error of the moment (a traceback, where a record has one, follows on its own lines)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"tqstar: {self.format(record)}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


@contextlib.contextmanager
def one_line_log() -> Iterator[None]:
    """While a command runs: the library's log (``logging.getLogger("tqstar")``, INFO and up) on stderr, one line
    each, and not passed on to the root logger's handlers (a server's timestamped log would repeat it)."""
    logger = logging.getLogger("tqstar")
    handler, saved = OneLineHandler(), (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def build_parser() -> argparse.ArgumentParser:
    """The ``tqstar`` parser: one subcommand per module of this package."""
    parser = _Parser(prog="tqstar", description="Transfer Q* decoding-time alignment. Errors are one line; add"
                                                " --debug (or set TQSTAR_DEBUG=1) to see a traceback.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also TQSTAR_DEBUG=1)")
    sub = parser.add_subparsers(dest="command")
    for command in (generate, serve, demo, eval, testbed):
        command.add_command(sub)
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
