"""``tqstar eval``: run methods over a prompt set, one JSONL row per (prompt, method) the moment it is done.

The output file starts with a header row holding the run's *fingerprint* (models, rewards, judges, prompt set),
and every row carries its method's parameters. Started again, a run reads the file, skips every
(prompt, method) already written and completes the rest — so an interrupted run (Ctrl-C, kill -9) loses at
most the batch in flight. Methods may be added to (or left out of) a later run of the same file: an α sweep
extended later appends. A last line cut off mid-write is reported and dropped (then recomputed); a corrupt
line anywhere else, a file whose fingerprint differs from this run's, or a method label already in the file
with other parameters is refused with the reason.

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

from .engine import Engine, TokenProgress
from .errors import ConfigError
from .params import DecodeParams
from .reward import Reward

FORMAT = "tqstar-eval/1"


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


def read_rows(path: str | Path, *, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The header and rows of an evaluation file.

    A last line cut off mid-write is reported on stderr and, with ``repair``, removed from the file; a corrupt
    line elsewhere raises :class:`ConfigError`.
    """
    path = Path(path)
    if not path.exists():
        return None, []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows, header, offset = [], None, 0
    for number, line in enumerate(lines, 1):
        last = number == len(lines) or (number == len(lines) - 1 and lines[-1] == b"")
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if not last:
                    raise ConfigError(f"line {number} of {str(path)!r} is corrupt (not JSON) and is not the last line;"
                                      " the file was edited or damaged: move it aside and run again") from None
                print(f"tqstar: the last line of {path} was cut off mid-write (an interrupted run); "
                      + ("dropping it, its row will be recomputed" if repair else "ignoring it"), file=sys.stderr)
                if repair:
                    with path.open("r+b") as fh:
                        fh.truncate(offset)
                break
            if number == 1 and row.get("format") == FORMAT:
                header = row
            else:
                rows.append(row)
        offset += len(line) + 1
    if rows and header is None:
        raise ConfigError(f"{str(path)!r} is not a tqstar evaluation file (no header line); give another --output")
    return header, rows


class Evaluation:
    """Run ``methods`` over ``prompts`` with ``engine``, appending rows to ``output`` as each finishes.

    Args:
        fingerprint: what identifies the run (models, rewards, prompt set); stored in the header and compared
            on resume.
        judges: extra rewards scored on every response and stored under ``scores`` (e.g. a judge reward for
            win rates, ideally not the target).
    """

    def __init__(self, engine: Engine, prompts: Sequence[str], methods: Sequence[MethodRun], output: str | Path,
                 *, fingerprint: dict[str, Any], judges: dict[str, Reward] | None = None, batch_size: int = 8,
                 concurrency: int = 1, progress: bool = True) -> None:
        if not prompts:
            raise ConfigError("the prompt set is empty; give at least one prompt")
        self.engine, self.prompts, self.methods = engine, list(prompts), list(methods)
        self.output, self.judges = Path(output), dict(judges or {})
        self.batch_size, self.concurrency, self.progress = batch_size, concurrency, progress
        self.fingerprint = {
            **fingerprint,
            "prompts": self.prompts,
            "methods": {m.label: asdict(m.params) for m in self.methods},
            "judges": sorted(self.judges),
        }
        for method in self.methods:
            engine.check(method.params, concurrency)

    def pending(self) -> list[tuple[MethodRun, list[int]]]:
        """Per method, the prompt indices not yet in the output file (checks the file belongs to this run)."""
        header, rows = read_rows(self.output, repair=True)
        if header is not None:
            shared_old = {k: v for k, v in header["config"].items() if k != "methods"}
            shared_new = {k: v for k, v in self.fingerprint.items() if k != "methods"}
            if _canonical(shared_old) != _canonical(shared_new):
                diff = _first_difference(shared_old, shared_new)
                raise ConfigError(f"{str(self.output)!r} holds results of a different configuration ({diff}); refusing"
                                  " to append to it: give another --output or restore the original settings")
            mine = self.fingerprint["methods"]
            defaults = asdict(DecodeParams())  # a field added since the file was written had its default then
            for row in rows:
                label = row["method"]
                old = row.get("params") or header["config"].get("methods", {}).get(label)
                old = None if old is None else {**defaults, **old}
                if label in mine and _canonical(old) != _canonical(mine[label]):
                    raise ConfigError(f"method {label!r} in {str(self.output)!r} was run with other parameters"
                                      f" ({_first_difference(old or {}, mine[label])}); give it another `label` or"
                                      " another --output")
        done = {(row["method"], row["prompt_index"]) for row in rows}
        return [(m, [i for i in range(len(self.prompts)) if (m.label, i) not in done]) for m in self.methods]

    def run(self, on_row: Callable[[dict[str, Any]], None] | None = None) -> Path:
        todo = self.pending()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if not self.output.exists() or self.output.stat().st_size == 0:
            self._append({"format": FORMAT, "config": self.fingerprint})
        total = sum(len(idx) * method.params.max_new_tokens for method, idx in todo)
        bar = tqdm(total=total, desc="eval", unit="tok", disable=not self.progress)  # moves per generated token
        for method, indices in todo:
            batches = [indices[start:start + self.batch_size] for start in range(0, len(indices), self.batch_size)]
            for b, responses in self.engine.stream([[self.prompts[i] for i in batch] for batch in batches],
                                                   method.params, concurrency=self.concurrency,
                                                   on_step=TokenProgress(bar)):
                batch = batches[b]
                scores = {name: judge.score([r.prompt for r in responses], [r.text for r in responses])
                          for name, judge in self.judges.items()}  # one judge call per batch
                for n, (i, response) in enumerate(zip(batch, responses)):
                    row = self._row(method, i, response, {name: values[n] for name, values in scores.items()})
                    self._append(row)
                    if on_row:
                        on_row(row)
        bar.close()
        return self.output

    def _row(self, method: MethodRun, index: int, response, scores: dict[str, float]) -> dict[str, Any]:
        data = response.to_dict()
        data.pop("trace", None)
        return {**data, "method": method.label, "family": method.params.method, "prompt_index": index,
                "alpha": method.params.alpha if method.params.is_token_level else None, "scores": scores,
                "params": asdict(method.params)}

    def _append(self, row: dict[str, Any]) -> None:
        with self.output.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in sorted(set(old) | set(new)):
        if _canonical(old.get(key)) != _canonical(new.get(key)):
            return f"`{key}` differs"
    return "settings differ"


__all__ = ["Evaluation", "MethodRun", "expand_methods", "read_rows"]
