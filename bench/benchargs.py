"""The benchmarks' arguments, refused the way the ``tqstar`` command line refuses its own: one ``PROG: error: ...``
line on stderr and exit status 2, never a traceback (argparse's errors become :class:`~tqstar.cli.UsageError`;
ranges are checked by tqstar's own validators, :func:`tqstar._checks.check_int` and
:func:`~tqstar._checks.check_real`, naming the flag as ``tqstar testbed`` does)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from tqstar.cli import UsageError
from tqstar.errors import TQStarError


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see {self.prog} --help")


def one_line_errors(prog: str, parse: Callable[[], argparse.Namespace]) -> argparse.Namespace | int:
    """``parse()`` (parse and check the arguments), or 2 after printing its error as one line."""
    try:
        return parse()
    except TQStarError as exc:
        print(f"{prog}: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
