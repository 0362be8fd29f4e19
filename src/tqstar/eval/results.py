"""The evaluation results file, ``tqstar-eval/1``: what ``tqstar eval`` writes and ``tqstar report`` reads.

JSON Lines: a header row ``{"format": "tqstar-eval/1", "written_by": "tqstar eval <MARK>", "config": FINGERPRINT}``
(tqstar's mark, :mod:`tqstar._files`; models, rewards, judges, prompts and each method's parameters), then one row per (prompt, method) with the response, its reward, KL, accounting, judge
scores and the method's parameters. This module reads and checks such files — a file that does not begin with the
header is never tqstar's; a last line cut off mid-write is an interrupted run; a corrupt line elsewhere is damage —
and decides whether a run may append to one (:func:`check_resumable`).

A header without ``written_by`` was written before the mark existed; such a file is still read and resumed. That is
safe because its header was an identity already, unlike generate's old outputs: a JSON object naming the versioned
format ``tqstar-eval/1`` with the run's configuration mapping, which a user's file carries only by copying one, and
every later line must still be a result row (:func:`scan`); resuming only appends rows. A header that carries
``written_by`` must carry tqstar's mark. It needs neither the engine nor torch: a
report reads results with this module and :mod:`tqstar.params` alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import WRITTEN_BY, first_line, output_kind, read_bytes, written_by
from ..errors import ConfigError
from ..params import BEFORE, DecodeParams, in_effect

if TYPE_CHECKING:
    from ..reward import Reward

log = logging.getLogger("tqstar")

FORMAT = "tqstar-eval/1"
OUTPUT_FIX = "give another --output (tqstar eval only appends to files it wrote)"
RESULTS_FIX = "give the JSONL file that tqstar eval wrote"


@dataclass(frozen=True)
class MethodRun:
    """One column of the evaluation: a label and the decoding parameters."""

    label: str
    params: DecodeParams


@dataclass
class ResultsFile:
    """What an evaluation file holds. ``cut_at``: byte offset of a last line cut off mid-write (``None`` if
    none); ``needs_newline``: the last row is complete but has no line end (appending would glue onto it)."""

    header: dict[str, Any] | None
    rows: list[dict[str, Any]]
    cut_at: int | None = None
    needs_newline: bool = False


def scan(path: str | Path, fix: str) -> ResultsFile:
    """Read (never modify) an evaluation file; a missing or empty file is an empty :class:`ResultsFile`.

    Raises :class:`ConfigError` ending in ``fix`` when the file is not a tqstar evaluation file (its first line
    is not a ``tqstar-eval`` header), and when a line other than the last is corrupt.
    """
    path = Path(path)
    if not path.exists():
        return ResultsFile(None, [])
    raw = read_bytes(path, "results file", fix)
    if not raw:
        return ResultsFile(None, [])
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    result, offset = ResultsFile(None, []), 0
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = _CORRUPT
        if number == 1:
            if is_header(row):
                result.header = row
            elif not (row is _CORRUPT and len(lines) == 1 and line.startswith(_HEADER_START)):
                raise ConfigError(f"{str(path)!r} is not a tqstar evaluation file (its first line is not a"
                                  f" {FORMAT} header); {fix}")
        elif row is _CORRUPT and number == len(lines):
            result.cut_at = offset  # an interrupted write
        elif row is not None and not _is_row(row):
            raise ConfigError(f"line {number} of {str(path)!r} is corrupt (not a JSON result row); the file was"
                              " edited or damaged: move it aside and run again")
        elif row is not None:
            result.rows.append(row)
        if number == 1 and row is _CORRUPT:
            result.cut_at = 0  # the header itself was cut off
        offset += len(line) + 1
    result.needs_newline = result.cut_at is None and not raw.endswith(b"\n")
    return result


_CORRUPT = object()


def header(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The first row of a results file: its format, tqstar's mark and the run's fingerprint."""
    return {"format": FORMAT, WRITTEN_BY: written_by("eval"), "config": fingerprint}


#: How a header tqstar began writing starts (the mark included): a lone cut-off first line is an interrupted run
#: only when it starts so.
_HEADER_START = json.dumps(header({}))[:-len(', "config": {}}')].encode()


def is_header(row: Any) -> bool:
    """Whether ``row`` is a results file's header (one written before the mark existed has no ``written_by``)."""
    return (isinstance(row, dict) and row.get("format") == FORMAT and isinstance(row.get("config"), dict)
            and row.get(WRITTEN_BY, written_by("eval")) == written_by("eval"))


def is_results_file(path: str | Path) -> bool:
    """Whether ``path`` is an existing file that begins with a tqstar evaluation header."""
    if output_kind(path) != "file":
        return False
    try:
        return is_header(json.loads(first_line(path)))
    except ValueError:
        return False


def _is_row(row: Any) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("method"), str) and isinstance(row.get("prompt_index"), int)
            and not isinstance(row.get("prompt_index"), bool))


def read_rows(path: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The header and rows of an evaluation file (read only; a last line cut off mid-write is left out)."""
    result = scan(path, RESULTS_FIX)
    if result.cut_at is not None:
        cut_off_notice(path, "leaving that row out")
    return result.header, result.rows


def cut_off_notice(path: str | Path, action: str) -> None:
    """Say (a warning on the ``tqstar`` logger) that the last line of ``path`` was cut off mid-write and what is
    done about it."""
    log.warning(f"the last line of {path} was cut off mid-write (an interrupted run); {action}")


def fingerprint_of(shared: dict[str, Any], prompts: Sequence[str], methods: Sequence[MethodRun],
                   judges: dict[str, Reward] | None = None) -> dict[str, Any]:
    """The header's ``config``: ``shared`` (models, rewards, judges' specs, prompt source), the prompts and each
    method's parameters. Without a ``judges`` entry in ``shared``, each judge is identified by its name."""
    return {
        "judges": {name: judge.name for name, judge in sorted((judges or {}).items())},
        **shared,
        "prompts": list(prompts),
        "methods": {m.label: asdict(m.params) for m in methods},
    }


def check_resumable(results: ResultsFile, fingerprint: dict[str, Any], output: str | Path) -> None:
    """Raise :class:`ConfigError` unless the rows in ``results`` may be completed by a run with ``fingerprint``:
    the same models, rewards, judges and prompts, and each method label already there with the same parameters."""
    header = results.header
    if header is None:
        return
    shared_old = {k: v for k, v in header["config"].items() if k != "methods"}
    shared_new = {k: v for k, v in fingerprint.items() if k != "methods"}
    if canonical(shared_old) != canonical(shared_new):
        raise ConfigError(f"{str(output)!r} holds results of a different configuration"
                          f" ({first_difference(shared_old, shared_new)}); refusing to append to it: give another"
                          " --output or restore the original settings")
    mine = fingerprint["methods"]
    for row in results.rows:
        label = row["method"]
        old = acting(row.get("params") or header["config"].get("methods", {}).get(label))
        if label in mine and canonical(old) != canonical(acting(mine[label])):
            raise ConfigError(f"method {label!r} in {str(output)!r} was run with other parameters"
                              f" ({first_difference(old or {}, acting(mine[label]))}); give it another"
                              " `label` or another --output")


def acting(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row's recorded parameters as they acted: a field added since the file was written at what it was then
    (:data:`~tqstar.params.BEFORE`), then only the fields that have an effect on its method
    (:func:`~tqstar.params.in_effect`) — so resuming, and merging files, compare what decodes, not what was written."""
    return None if params is None else in_effect({**asdict(DecodeParams()), **BEFORE, **params})


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in sorted(set(old) | set(new)):
        if canonical(old.get(key)) != canonical(new.get(key)):
            return f"`{key}` differs"
    return "settings differ"
