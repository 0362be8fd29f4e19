"""``tqstar eval``: run methods over a prompt set, one JSONL row per (prompt, method) the moment it is done.

The output file starts with a header row holding the run's *fingerprint* (models, rewards, judges, prompt set),
and every row carries its method's parameters. Started again, a run reads the file, skips every
(prompt, method) already written and completes the rest — so an interrupted run (Ctrl-C, kill -9) loses at
most the batch in flight. Methods may be added to (or left out of) a later run of the same file: an α sweep
extended later appends. A last line cut off mid-write is reported and dropped (then recomputed); a
corrupt line anywhere else, a file that does not start with a tqstar header (never touched), a file whose
fingerprint differs from this run's, or a method label already in the file with other parameters is refused with
the reason. A run holds an exclusive ``flock`` on the file while it appends: a second run on the same file at the
same time is refused.

Methods are given as a list of mappings; a list-valued ``alpha`` is a sweep (one method per value)::

    methods:
      - {method: sft}
      - {method: tq-direct, alpha: [0.5, 1, 2], k: 10, rollout_len: 20}
      - {method: bon, bon_n: 4, temperature: 1.0, label: bon-4}
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._files import lock_exclusive, read_bytes
from ..engine import Engine, TokenProgress
from ..errors import ConfigError, require_type
from ..params import DecodeParams
from ..reward import Reward

FORMAT = "tqstar-eval/1"
OUTPUT_FIX = "give another --output (tqstar eval only appends to files it wrote)"
RESULTS_FIX = "give the JSONL file that tqstar eval wrote"


@dataclass(frozen=True)
class MethodRun:
    """One column of the evaluation: a label and the decoding parameters."""

    label: str
    params: DecodeParams


def expand_methods(entries: Sequence[dict[str, Any]], defaults: dict[str, Any] | None = None) -> list[MethodRun]:
    """Method mappings → :class:`MethodRun` list; a list-valued ``alpha`` expands into one run per value."""
    if not entries:
        raise ConfigError("no methods given; list at least one, e.g. {method: tq-direct}")
    runs: list[MethodRun] = []
    for entry in entries:
        if not isinstance(entry, dict) or "method" not in entry:
            raise ConfigError(f"each method must be a mapping with a `method` key, got {entry!r}")
        entry = {**(defaults or {}), **entry}
        label = entry.pop("label", None)
        alphas = entry.pop("alpha", None)
        sweep = alphas if isinstance(alphas, list) else [alphas]
        for alpha in sweep:
            values = dict(entry) if alpha is None else {**entry, "alpha": alpha}
            params = DecodeParams.from_dict(values)
            name = label or params.method
            if len(sweep) > 1 or (alpha is not None and params.is_token_level and not label):
                name = f"{name}(α={params.alpha:g})"
            runs.append(MethodRun(name, params))
    labels = [r.label for r in runs]
    duplicate = next((x for x in labels if labels.count(x) > 1), None)
    if duplicate:
        raise ConfigError(f"method label {duplicate!r} appears twice; give each a distinct `label`")
    return runs


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
            if isinstance(row, dict) and row.get("format") == FORMAT and isinstance(row.get("config"), dict):
                result.header = row
            elif not (row is _CORRUPT and len(lines) == 1 and line.startswith(b'{"format": "%s"' % FORMAT.encode())):
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


def is_results_file(path: str | Path) -> bool:
    """Whether ``path`` is an existing file that begins with a tqstar evaluation header."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(64).startswith(b'{"format": "%s"' % FORMAT.encode())


def _is_row(row: Any) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("method"), str) and isinstance(row.get("prompt_index"), int)
            and not isinstance(row.get("prompt_index"), bool))


def read_rows(path: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The header and rows of an evaluation file (read only; a last line cut off mid-write is left out)."""
    result = scan(path, RESULTS_FIX)
    if result.cut_at is not None:
        _cut_off_notice(path, "leaving that row out")
    return result.header, result.rows


def _cut_off_notice(path: str | Path, action: str) -> None:
    print(f"tqstar: the last line of {path} was cut off mid-write (an interrupted run); {action}", file=sys.stderr)


class Evaluation:
    """Run ``methods`` over ``prompts`` with ``engine``, appending rows to ``output`` as each finishes.

    Args:
        fingerprint: what identifies the run (models, rewards, judges' specs, prompt set); stored in the header
            and compared on resume. Without a ``judges`` entry, each judge is identified by its ``name``.
        judges: extra rewards scored on every response and stored under ``scores`` (e.g. a judge reward for
            win rates, ideally not the target).
        truncate_prompt: keep the last tokens of a prompt too long for a model's context (else it is refused).
    """

    def __init__(self, engine: Engine, prompts: Sequence[str], methods: Sequence[MethodRun], output: str | Path,
                 *, fingerprint: dict[str, Any], judges: dict[str, Reward] | None = None, batch_size: int = 8,
                 concurrency: int = 1, truncate_prompt: bool = False, progress: bool = True) -> None:
        if not prompts:
            raise ConfigError("the prompt set is empty; give at least one prompt")
        require_type(engine, Engine, "engine", "an Engine", "build one with Engine(sft, baseline, reward)")
        for method in methods:
            require_type(method, MethodRun, "methods[...]", "a MethodRun", "build them with expand_methods([{...}])")
        for name, judge in (judges or {}).items():
            require_type(judge, Reward, f"judges[{name!r}]", "a Reward", "load one with load_reward(SPEC)")
        self.engine, self.prompts, self.methods = engine, list(prompts), list(methods)
        self.output, self.judges = Path(output), dict(judges or {})
        self.batch_size, self.concurrency, self.progress = batch_size, concurrency, progress
        self.truncate_prompt = truncate_prompt
        self.fingerprint = fingerprint_of(fingerprint, self.prompts, self.methods, self.judges)
        for method in self.methods:
            engine.check(method.params, concurrency)

    def pending(self, results: ResultsFile | None = None) -> list[tuple[MethodRun, list[int]]]:
        """Per method, the prompt indices not yet in the output file (checks the file belongs to this run)."""
        results = results or scan(self.output, OUTPUT_FIX)
        check_resumable(results, self.fingerprint, self.output)
        rows = results.rows
        done = {(row["method"], row["prompt_index"]) for row in rows}
        return [(m, [i for i in range(len(self.prompts)) if (m.label, i) not in done]) for m in self.methods]

    def run(self, on_row: Callable[[dict[str, Any]], None] | None = None) -> Path:
        """Decode every pending (prompt, method) and append its row; returns the output path.

        The file is checked (``pending``) before it is touched, then locked (``flock``) for the whole run: a
        second run on the same file is refused while this one holds it. Under the lock a last line cut off
        mid-write is removed and a missing final newline is added, so appended rows start on a line of their own.
        """
        self.pending()  # refuse a foreign file before creating or locking anything
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with self.output.open("ab") as fh:
            lock_exclusive(fh, self.output, "give another --output")
            results = scan(self.output, OUTPUT_FIX)  # again: the file may have changed before the lock
            todo = self.pending(results)
            if results.cut_at is not None:
                _cut_off_notice(self.output, "dropping it, its row will be recomputed")
                fh.truncate(results.cut_at)
            elif results.needs_newline:
                fh.write(b"\n")
            if results.header is None:
                self._append(fh, {"format": FORMAT, "config": self.fingerprint})
            self._decode(todo, fh, on_row)
        return self.output

    def _decode(self, todo: list[tuple[MethodRun, list[int]]], fh, on_row) -> None:
        total = sum(len(idx) * method.params.max_new_tokens for method, idx in todo)
        bar = tqdm(total=total, desc="eval", unit="tok", disable=not self.progress)  # moves per generated token
        for method, indices in todo:
            batches = [indices[start:start + self.batch_size] for start in range(0, len(indices), self.batch_size)]
            for b, responses in self.engine.stream([[self.prompts[i] for i in batch] for batch in batches],
                                                   method.params, concurrency=self.concurrency,
                                                   truncate_prompt=self.truncate_prompt, on_step=TokenProgress(bar)):
                batch = batches[b]
                scores = {name: judge.score([r.prompt for r in responses], [r.text for r in responses])
                          for name, judge in self.judges.items()}  # one judge call per batch
                for n, (i, response) in enumerate(zip(batch, responses)):
                    row = self._row(method, i, response, {name: values[n] for name, values in scores.items()})
                    self._append(fh, row)
                    if on_row:
                        on_row(row)
        bar.close()

    def _row(self, method: MethodRun, index: int, response, scores: dict[str, float]) -> dict[str, Any]:
        data = response.to_dict()
        data.pop("trace", None)
        return {**data, "method": method.label, "family": method.params.method, "prompt_index": index,
                "alpha": method.params.alpha if method.params.is_token_level else None, "scores": scores,
                "params": asdict(method.params)}

    @staticmethod
    def _append(fh, row: dict[str, Any]) -> None:
        fh.write((json.dumps(row) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


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
    if _canonical(shared_old) != _canonical(shared_new):
        raise ConfigError(f"{str(output)!r} holds results of a different configuration"
                          f" ({_first_difference(shared_old, shared_new)}); refusing to append to it: give another"
                          " --output or restore the original settings")
    mine = fingerprint["methods"]
    defaults = asdict(DecodeParams())  # a field added since the file was written had its default then
    for row in results.rows:
        label = row["method"]
        old = row.get("params") or header["config"].get("methods", {}).get(label)
        old = None if old is None else {**defaults, **old}
        if label in mine and _canonical(old) != _canonical(mine[label]):
            raise ConfigError(f"method {label!r} in {str(output)!r} was run with other parameters"
                              f" ({_first_difference(old or {}, mine[label])}); give it another `label` or another"
                              " --output")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in sorted(set(old) | set(new)):
        if _canonical(old.get(key)) != _canonical(new.get(key)):
            return f"`{key}` differs"
    return "settings differ"


__all__ = ["Evaluation", "MethodRun", "ResultsFile", "expand_methods", "read_rows", "scan"]
