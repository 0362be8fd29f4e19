"""The benchmarks' arguments, refused the way the ``tqstar`` command line refuses its own: one ``PROG: error: ...``
line on stderr and exit status 2, never a traceback (argparse's errors become :class:`~tqstar.cli.UsageError`,
range checks :class:`~tqstar.errors.ConfigError` naming the flag, as ``tqstar testbed`` does)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn

from tqstar.cli import UsageError
from tqstar.errors import ConfigError, TQStarError


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see {self.prog} --help")


def integer(flag: str, value: int, low: int, high: float = math.inf, of: str = "") -> tuple[str, int, bool, str]:
    """A range check for :func:`check`: ``value`` of ``flag`` is an integer from ``low`` (to ``high``, which ``of``
    names when it is another flag's value)."""
    rule = f"an integer >= {low}" if high == math.inf else f"an integer from {low} to {high:g}{of}"
    return flag, value, low <= value <= high, rule


def positive(flag: str, value: float) -> tuple[str, float, bool, str]:
    return flag, value, math.isfinite(value) and value > 0, "a finite number > 0"


def check(checks: Iterable[tuple[str, float, bool, str]]) -> None:
    """Raise :class:`ConfigError` for the first failed check, naming its flag: ``FLAG must be RULE, got VALUE``."""
    for flag, value, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{flag} must be {rule}, got {value:g}", param=flag[2:].replace("-", "_"), value=value)


def one_line_errors(prog: str, parse: Callable[[], argparse.Namespace]) -> argparse.Namespace | int:
    """``parse()`` (parse and check the arguments), or 2 after printing its error as one line."""
    try:
        return parse()
    except TQStarError as exc:
        print(f"{prog}: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
