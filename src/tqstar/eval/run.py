"""``tqstar eval``: run methods over a prompt set, one JSONL row per (prompt, method) the moment it is done.

The output file starts with a header row holding the run's *fingerprint* (models, rewards, judges, prompt set),
and every row carries its method's parameters. Started again, a run reads the file, skips every
(prompt, method) already written and completes the rest — so an interrupted run (Ctrl-C, kill -9) loses at
most the batch in flight. Methods may be added to (or left out of) a later run of the same file: an α sweep
extended later appends. A last line cut off mid-write is reported and dropped (then recomputed); a
corrupt line anywhere else, a file that does not start with a tqstar header (never touched), a file whose
fingerprint differs from this run's, or a method label already in the file with other parameters is refused with
the reason. A run holds an exclusive ``flock`` on the file while it appends: a second run on the same file at the
same time is refused. Each method starts from empty model and reward caches, so its compute counts are its own, not
less for following a method that drew the same keyed blocks.

Methods are given as a list of mappings; a list-valued ``alpha`` is a sweep (one method per value); ``defaults`` apply
to every method they mean something for (each field's declared scope, :meth:`tqstar.params.DecodeParams.applies`)::

    methods:
      - {method: sft}
      - {method: tq-direct, alpha: [0.5, 1, 2], k: 10, rollout_len: 20}
      - {method: bon, bon_n: 4, temperature: 1.0, label: bon-4}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._checks import check_int
from .._files import lock_exclusive
from ..engine import Engine, TokenProgress, check_concurrency
from ..errors import ConfigError, require_type
from ..params import DecodeParams, unused_message
from ..reward import Reward
from .results import (
    OUTPUT_FIX,
    MethodRun,
    ResultsFile,
    check_resumable,
    cut_off_notice,
    fingerprint_of,
    header,
    scan,
)

log = logging.getLogger("tqstar")


def expand_methods(entries: Sequence[dict[str, Any]], defaults: dict[str, Any] | None = None) -> list[MethodRun]:
    """Method mappings → :class:`MethodRun` list; a list-valued ``alpha`` expands into one run per value.

    ``defaults`` are the parameters every method starts from: one a method does not use is simply not used. A key
    a method's own entry gives that has no effect on it is refused (:meth:`DecodeParams.check_given`), except an α
    sweep over a method α does not apply to (``sft``, ``none``, ...): that is one run, with a warning, not identical
    runs labelled by α.
    """
    if not entries:
        raise ConfigError("no methods given; list at least one, e.g. {method: tq-direct}")
    runs: list[MethodRun] = []
    base = dict(defaults or {})
    base_alpha = base.pop("alpha", None)
    for entry in entries:
        if not isinstance(entry, dict) or "method" not in entry:
            raise ConfigError(f"each method must be a mapping with a `method` key, got {entry!r}")
        own = dict(entry)
        label = own.pop("label", None)
        alphas = own.pop("alpha", None)
        alphas = base_alpha if alphas is None else alphas
        sweep = alphas if isinstance(alphas, list) else [alphas]
        if not sweep:
            raise ConfigError(f"`alpha` of method {entry['method']!r} is an empty list; give at least one value")
        first = DecodeParams.from_dict(own, base=base)
        if alphas is not None and first.unused(["alpha"]):
            if not isinstance(alphas, list) and "alpha" in entry:
                first.check_given(["alpha"])  # refused: the entry itself gives α to a method that has no use for it
            if isinstance(alphas, list):
                log.warning(f"{unused_message('alpha', first).split(';')[0]}; the sweep over {alphas} runs it"
                            " once")
            sweep = [None]
        for alpha in sweep:
            params = first if alpha is None else DecodeParams.from_dict({**own, "alpha": alpha}, base=base)
            name = label or params.method + (f"[m={params.block_len}]" if params.block_len is not None else "")
            if len(sweep) > 1 or (alpha is not None and params.is_token_level and not label):
                name = f"{name}(α={params.alpha:g})"
            runs.append(MethodRun(name, params))
    labels = [r.label for r in runs]
    duplicate = next((x for x in labels if labels.count(x) > 1), None)
    if duplicate:
        raise ConfigError(f"method label {duplicate!r} appears twice; give each a distinct `label`")
    return runs


class Evaluation:
    """Run ``methods`` over ``prompts`` with ``engine``, appending rows to ``output`` as each finishes.

    Args:
        fingerprint: what identifies the run (models, rewards, judges' specs, prompt set); stored in the header
            and compared on resume. Without a ``judges`` entry, each judge is identified by its ``name``.
        judges: extra rewards scored on every response and stored under ``scores`` (e.g. a judge reward for
            win rates, ideally not the target).
        truncate_prompt: keep the last tokens of a prompt too long for a model's context (else it is refused).

    Each row holds ``prompt_index`` (the prompt's place in ``prompts``) and, when ``prompts`` came from a file or a
    dataset (:class:`~tqstar.prompts.PromptList`), ``prompt_at``: where it stands there (``"line 7"``), which is
    what a reader of the file counts (blank lines and a header are not prompts).
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
        check_int(batch_size, "batch_size")
        check_concurrency(concurrency, [])  # the models' thread-safety is checked with each method below
        self.engine, self.prompts, self.methods = engine, list(prompts), list(methods)
        self.where = list(getattr(prompts, "where", None) or [None] * len(self.prompts))
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
                cut_off_notice(self.output, "dropping it, its row will be recomputed")
                fh.truncate(results.cut_at)
            elif results.needs_newline:
                fh.write(b"\n")
            if results.header is None:
                self._append(fh, header(self.fingerprint))
            self._decode(todo, fh, on_row)
        return self.output

    def _decode(self, todo: list[tuple[MethodRun, list[int]]], fh, on_row) -> None:
        total = sum(len(idx) * method.params.max_new_tokens for method, idx in todo)
        bar = tqdm(total=total, desc="eval", unit="tok", disable=not self.progress)  # moves per generated token
        for method, indices in todo:
            self.engine.reset_caches()  # each method charged its own work, whatever ran before it
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
                **({"prompt_at": self.where[index]} if self.where[index] else {}),
                "alpha": method.params.alpha if method.params.is_token_level else None, "scores": scores,
                "params": asdict(method.params)}

    @staticmethod
    def _append(fh, row: dict[str, Any]) -> None:
        fh.write((json.dumps(row) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


__all__ = ["Evaluation", "MethodRun", "expand_methods"]
