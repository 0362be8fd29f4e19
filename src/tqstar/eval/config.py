"""``tqstar eval`` configuration: the models and rewards of a run config, judges, methods and a prompt set.

Checked before any model loads, like every config: the methods (:func:`~tqstar.eval.run.expand_methods`), the judges'
reward specs, the prompt source, and the output file (a file that is not tqstar's, or holds another configuration's
results, is refused in :meth:`EvalConfig.build` before the models load).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._checks import check_int
from .._files import check_output
from .._schema import typed
from ..config import RunConfig
from ..errors import ConfigError, describe
from ..prompts import load_prompts
from ..reward.spec import RewardSpec
from .results import OUTPUT_FIX, check_resumable, fingerprint_of, scan
from .run import expand_methods

EVAL_KEYS = ("defaults", "judges", "methods", "output", "prompts")


def prompt_source(value: Any) -> tuple[str, str | None, int | None]:
    """``(source, column, limit)`` of an eval config's ``prompts`` (a source string or a mapping)."""
    fix = "a built-in set (rtp, dna, mtbench), a file or hf:NAME"
    if isinstance(value, str):
        value = {"source": value}
    if not isinstance(value, dict) or not value.get("source"):
        raise ConfigError(f"`prompts` must name a source: {fix}, e.g. prompts: {{source: rtp, limit: 32}}",
                          param="prompts")
    unknown = sorted(set(map(str, value)) - {"source", "limit", "column"})
    if unknown:
        raise ConfigError(f"unknown key `{unknown[0]}` in prompts; valid keys are column, limit, source")
    source = typed(value["source"], str, "prompts.source", fix)
    column = typed(value.get("column"), str, "prompts.column", "a column name")
    limit = value.get("limit")
    if limit is not None:
        check_int(limit, "prompts.limit")
    return source, column, limit


def judge_spec(value: Any, what: str) -> RewardSpec:
    if value is None:
        raise ConfigError(f"`{what}` has no reward spec; give one, e.g. {what.split('.')[-1]}: harmless", param=what)
    spec = RewardSpec.parse(value, what)
    assert spec is not None
    return spec


@dataclass(frozen=True)
class EvalConfig:
    """A ``tqstar eval`` run: the models and rewards of :class:`RunConfig`, judges, methods and a prompt set.

    YAML layout (besides ``sft``, ``baseline``, ``reward``, ``baseline_reward``, ``batch_size``)::

        judges: {harmless: harmless}          # name → reward spec, scored on every response (win rates)
        methods: [{method: sft}, {method: tq-direct, alpha: [0.5, 1, 2]}]
        defaults: {max_new_tokens: 48, k: 10}  # decoding parameters every method starts from
        prompts: {source: rtp:test, limit: 32, column: prompt}
        output: results/run.jsonl
    """

    run: RunConfig
    methods: tuple = ()
    judges: tuple[tuple[str, RewardSpec], ...] = ()
    prompt_source: str = ""
    prompt_column: str | None = None
    prompt_limit: int | None = None
    output: str = "eval.jsonl"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        data = dict(data)
        for key, where in (("decode", "under `defaults` (every method) or in each method"),
                           ("prompts_file", "as `prompts: {source: FILE}`"),
                           ("prompts_column", "as `prompts: {source: FILE, column: NAME}`")):
            if key in data:
                raise ConfigError(f"`{key}` is not an eval config key; give it {where}", param=key)
        methods = data.pop("methods", None)
        if methods is not None and not isinstance(methods, list):
            raise ConfigError(f"`methods` must be a list of mappings, got {describe(methods)}; write"
                              " methods: [{method: tq-direct}]", param="methods")
        defaults = typed(data.pop("defaults", None), dict, "defaults", "a mapping of decoding parameters") or {}
        judges = typed(data.pop("judges", None), dict, "judges", "a mapping of names to reward specs") or {}
        output = typed(data.pop("output", None), str, "output", "a file path") or "eval.jsonl"
        check_output(output, "output file", stream=False)
        source, column, limit = prompt_source(data.pop("prompts", None))
        run = RunConfig.from_dict(data, extra_keys=EVAL_KEYS)
        runs = tuple(expand_methods(methods or [], defaults))
        run.check_used([m.params for m in runs], warn=True)
        return cls(
            run=run,
            methods=runs,
            judges=tuple((str(name), judge_spec(spec, f"judges.{name}")) for name, spec in judges.items()),
            prompt_source=source,
            prompt_column=column,
            prompt_limit=limit,
            output=output,
        )

    def identity(self) -> dict[str, Any]:
        """What identifies the run besides its prompts and methods (models, rewards, judges' specs, prompt source):
        the shared part of the results file's fingerprint (:func:`~tqstar.eval.results.fingerprint_of`)."""
        run = self.run
        return {
            "sft": dataclasses.asdict(run.sft) if run.sft else "built-in tiny",
            "baseline": dataclasses.asdict(run.baseline) if run.baseline else None,
            "reward": dataclasses.asdict(run.reward) if run.reward else None,
            "baseline_reward": dataclasses.asdict(run.baseline_reward) if run.baseline_reward else None,
            "judges": {name: dataclasses.asdict(spec) for name, spec in self.judges},
            "prompt_source": self.prompt_source,
        }

    def build(self, progress: bool = True):
        """Load everything and return a ready :class:`~tqstar.eval.run.Evaluation`."""
        from .run import Evaluation

        prompts = load_prompts(self.prompt_source, column=self.prompt_column, limit=self.prompt_limit)
        # a file that is not ours, or holds another configuration's results, is refused before any model loads
        check_resumable(scan(self.output, OUTPUT_FIX), fingerprint_of(self.identity(), prompts, self.methods),
                        self.output)
        engine = self.run.build(check=False)
        judges = {name: spec.load() for name, spec in self.judges}
        return Evaluation(engine, prompts, self.methods, self.output, fingerprint=self.identity(), judges=judges,
                          batch_size=self.run.batch_size, concurrency=self.run.concurrency,
                          truncate_prompt=self.run.truncate_prompt, progress=progress)
