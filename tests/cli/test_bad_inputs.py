"""Bad input, table-driven: every case ends in ONE line ``tqstar: error: ...`` naming the value and the fix,
exit status 2, no traceback, and no file in the working directory changed.

Most cases run ``tqstar.cli.main`` in-process and fail before any model loads; the few that need a model use
the tiny models. Tokens in a case: ``@TMP`` (the case's directory), ``@SFT`` / ``@BASELINE`` (tiny models).
Library cases call the Python API and expect a :class:`~tqstar.errors.TQStarError` with the same kind of message.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import TESTS_DIR

from tqstar.cli import main
from tqstar.errors import TQStarError


def exploding_reward(prompts, responses):
    raise ValueError("the reward server is down")


@pytest.fixture(autouse=True)
def _tiny(builtin_tiny):
    """No --sft decodes with the session's tiny models; no debug tracebacks."""


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: tuple[str, ...]  # every fragment must be in the error line (the value and the fix)
    files: dict[str, str | bytes] = field(default_factory=dict)  # name -> content; a name ending in / is a folder
    loads_models: bool = False  # else loading a model fails the case: the error must come first

    def param(self):
        return pytest.param(self, id=self.id)


GEN = ["generate", "--prompt", "x", "--no-progress"]
LOCAL = ["--sft", "@SFT", "--no-chat-template"]


def gen(id: str, flags: list[str], *expect: str, files: dict | None = None, loads_models: bool = False) -> Case:
    return Case(f"generate-{id}", GEN + flags, expect, files or {}, loads_models)


def gen_yaml(id: str, yaml: str, *expect: str) -> Case:
    argv = ["generate", "--config", "@TMP/run.yaml", "--no-progress"]
    if "prompts" not in yaml:
        argv += ["--prompt", "x"]
    return Case(f"generate-yaml-{id}", argv, expect, {"run.yaml": yaml})


def prompts_file(id: str, name: str, content: str | bytes, *expect: str, flags: tuple = ()) -> Case:
    return Case(f"prompts-file-{id}", ["generate", "--prompts-file", f"@TMP/{name}", "--no-progress", *flags],
                expect, {name: content})


EVAL_CONFIG = {
    "sft": {"path": "@SFT", "chat_template": False},
    "baseline": {"path": "@BASELINE", "chat_template": False},
    "reward": "conftest:vowel_share",
    "judges": {"vowels": "conftest:vowel_share"},
    "defaults": {"max_new_tokens": 3, "k": 3, "rollout_len": 2},
    "methods": [{"method": "sft"}],
    "prompts": {"source": "@TMP/prompts.txt"},
    "output": "@TMP/out.jsonl",
}
EVAL = ["eval", "--config", "@TMP/eval.yaml", "--no-progress", "--coherence", "none"]


def evaluation(id: str, changes: dict, *expect: str, flags: tuple = (), files: dict | None = None) -> Case:
    config = {key: value for key, value in {**EVAL_CONFIG, **changes}.items() if value is not ...}
    return Case(f"eval-{id}", EVAL + list(flags), expect,
                {"eval.yaml": json.dumps(config), "prompts.txt": "first prompt\nsecond prompt\n", **(files or {})})


HEADER = json.dumps({"format": "tqstar-eval/1", "config": {"prompts": ["a"], "sft": "built-in tiny"}})


def row(method: str = "sft", index: int = 0, **extra) -> str:
    return json.dumps({"method": method, "prompt_index": index, "prompt": "a", "text": "t", "reward": 0.5,
                       "token_ids": [1], "kl": None, "kl_bound": None, "scores": {},
                       "accounting": {"sft_forward_tokens": 1, "baseline_forward_tokens": 0, "rollouts": 0,
                                      "reward_calls": 0, "wall_time_s": 0.1}, **extra})


def header(**config) -> str:
    """A results header over prompt 'a' with ``config`` (reward, judges, models)."""
    return json.dumps({"format": "tqstar-eval/1", "config": {"prompts": ["a"], "sft": "built-in tiny", **config}})


def results(*lines: str, header: str = HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


def report(id: str, files: dict, args: list[str], *expect: str) -> Case:
    return Case(f"report-{id}", ["report", *args] + ([] if "--coherence" in args else ["--coherence", "none"]),
                expect, files)


TESTBED = ["testbed", "--instances", "1"]

CASES = [
    # ---- generate: decoding flags -------------------------------------------------------------------------
    gen("method", ["--method", "magic"], "`method` must be one of tq-direct", "got 'magic'"),
    gen("k-zero", ["--k", "0"], "`k` must be an integer >= 1, got 0"),
    gen("k-not-int", ["--k", "x"], "argument --k: invalid int value: 'x'", "tqstar generate --help"),
    gen("alpha-negative", ["--alpha", "-1"], "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got -1.0"),
    gen("alpha-nan", ["--alpha", "nan"], "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got nan"),
    gen("beta-zero", ["--beta", "0"], "`beta` must be a finite number > 0 (1e-06 to 1e+06), got 0.0"),
    gen("n-rollouts-zero", ["--n-rollouts", "0"], "`n_rollouts` must be an integer >= 1, got 0"),
    gen("rollout-len-zero", ["--rollout-len", "0"], "`rollout_len` must be an integer >= 1, got 0"),
    gen("max-new-tokens-zero", ["--max-new-tokens", "0"], "`max_new_tokens` must be an integer >= 1, got 0"),
    gen("temperature-negative", ["--temperature", "-1"], "`temperature` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got -1.0"),
    gen("rollout-temperature-inf", ["--rollout-temperature", "inf"], "`rollout_temperature` must be a finite",
        "got inf"),
    gen("bon-n-zero", ["--bon-n", "0"], "`bon_n` must be an integer >= 1, got 0"),
    gen("bon-greedy", ["--method", "bon"], "`temperature` must be > 0 for bon", "try temperature=1.0"),
    gen("greedy-rollouts", ["--n-rollouts", "3"], "`n_rollouts` = 3 with greedy rollouts",
        "set `rollout_temperature` > 0"),
    gen("empty-stop", ["--stop", ""], "`stop` must be a tuple of non-empty strings, got ('',)"),
    gen("bon-policy", ["--bon-policy", "dpo"], "argument --bon-policy: invalid choice: 'dpo'"),
    gen("dtype", ["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    gen("format", ["--format", "xml"], "argument --format: invalid choice: 'xml'"),
    gen("seed-float", ["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
    gen("rollout-seed", ["--rollout-seed", "x"], "argument --rollout-seed: invalid int value: 'x'"),
    gen("unknown-flag", ["--frobnicate"], "unrecognized arguments: --frobnicate", "--help"),
    gen("batch-size-zero", ["--batch-size", "0"], "`batch_size` must be an integer >= 1, got 0"),
    gen("concurrency-zero", ["--concurrency", "0"], "`concurrency` must be an integer >= 1, got 0"),
    gen("concurrency-local", ["--concurrency", "2"], "`concurrency` 2", "use concurrency 1"),
    gen("empty-prompt", ["--prompt", ""], "`prompts[1]` must be a non-empty string, got ''"),
    Case("generate-no-prompts", ["generate", "--no-progress"], ("no prompts given", "--prompt TEXT")),
    # ---- flags without an effect (each DecodeParams field's `applies`, tqstar.methods.SCOPES) -------------------
    gen("k-for-sft", ["--method", "sft", "--k", "5"], "`k` has no effect on method 'sft' (plain decoding of the SFT",
        "it applies to token-level methods (tq-direct", "drop it"),
    gen("beta-for-cd", ["--method", "cd", "--beta", "2"], "`beta` has no effect on method 'cd'",
        "the methods weighted by the baseline's β (tq-indirect, eft)"),
    gen("soft-beta-for-direct", ["--soft-beta", "0.5"], "`soft_beta` has no effect on method 'tq-direct'",
        "the soft-value methods (tq-soft, soft-cd)"),
    gen("rollout-len-for-args", ["--method", "args", "--rollout-len", "4"], "`rollout_len` has no effect on method"
        " 'args'", "methods that roll candidates out"),
    gen("alpha-for-none", ["--method", "none", "--alpha", "3"], "`alpha` has no effect on method 'none'",
        "token-level methods that estimate Q̂"),
    gen("bon-n-for-sft", ["--method", "sft", "--bon-n", "8"], "`bon_n` has no effect on method 'sft'", "best-of-N"),
    gen("temperature-rollouts-for-bon", ["--method", "bon", "--temperature", "1", "--rollout-temperature", "1"],
        "`rollout_temperature` has no effect on method 'bon'"),
    # ---- blockwise decisions and soft best-of-N (block_len, bon_beta) ---------------------------------------------
    gen("block-len-for-eft", ["--method", "eft", "--block-len", "4"], "`block_len` does not apply to eft: its value is"
        " the per-token likelihood ratio", "drop block_len or use one of tq-direct, tq-indirect, tq-soft, cd, soft-cd,"
        " args, none"),
    gen("block-len-for-bon", ["--method", "bon", "--temperature", "1", "--block-len", "4"], "`block_len` does not"
        " apply to bon: it already chooses among whole responses", "drop block_len"),
    gen("block-len-for-sft", ["--method", "sft", "--block-len", "2"], "`block_len` does not apply to sft"),
    gen("block-len-zero", ["--block-len", "0"], "`block_len` must be an integer >= 1 or None (= one token, the SFT"
        " top-k), got 0"),
    gen("block-len-float", ["--block-len", "2.5"], "argument --block-len: invalid int value: '2.5'"),
    gen_yaml("block-len-string", "decode: {block_len: '4'}\n", "`block_len` must be an integer >= 1 or None (= one"
             " token, the SFT top-k), got '4'"),
    gen_yaml("prune-for-blocks", "decode: {method: tq-direct, block_len: 2, prune: false}\n", "`prune` has no"
             " effect on blockwise decisions (block_len 2 with tq-direct)", "drop it, or drop block_len"),
    gen_yaml("prune-probe-for-blocks", "decode: {method: args, block_len: 3, prune_probe: 2}\n", "`prune_probe` has"
             " no effect on blockwise decisions (block_len 3 with args)"),
    gen("bon-beta-for-bon", ["--method", "bon", "--temperature", "1", "--bon-beta", "0.5"], "`bon_beta` has no effect"
        " on method 'bon'", "it applies to soft best-of-N (soft-bon)", "drop it"),
    gen("bon-beta-for-direct", ["--bon-beta", "0.5"], "`bon_beta` has no effect on method 'tq-direct'"),
    gen("bon-beta-zero", ["--method", "soft-bon", "--temperature", "1", "--bon-beta", "0"], "`bon_beta` must be a"
        " finite number > 0 (1e-06 to 1e+06), got 0.0"),
    gen("bon-beta-tiny", ["--method", "soft-bon", "--temperature", "1", "--bon-beta", "1e-39"], "`bon_beta` must be a"
        " finite number > 0 (1e-06 to 1e+06), got 1e-39"),  # r/β would overflow
    gen("bon-beta-nan", ["--method", "soft-bon", "--temperature", "1", "--bon-beta", "nan"], "`bon_beta` must be a"
        " finite number > 0 (1e-06 to 1e+06), got nan"),
    gen("soft-bon-greedy", ["--method", "soft-bon"], "`temperature` must be > 0 for soft-bon (greedy samples are all"
        " identical), got 0"),
    gen("k-for-soft-bon", ["--method", "soft-bon", "--temperature", "1", "--k", "3"], "`k` has no effect on method"
        " 'soft-bon'", "drop it"),
    gen("tail-for-sft", ["--method", "sft", "--tail", "off"], "`tail` applies to the token-level methods (tq-direct,",
        "not to sft", "leave `tail` out for sft"),
    gen("tail-default-for-sft", ["--method", "sft", "--tail", "mean"], "`tail` has no effect on method 'sft'"),
    gen("tail-with-blocks", ["--block-len", "2", "--tail", "rollout"], "`tail` applies to token-level decisions over"
        " the SFT top k, not to blockwise ones (block_len 2)", "drop block_len"),
    gen("tail-default-with-blocks", ["--block-len", "2", "--tail", "mean"], "`tail` has no effect on blockwise"
        " decisions (block_len 2 with tq-direct)", "drop it, or drop block_len"),
    gen("tail-unknown", ["--tail", "none"], "argument --tail: invalid choice: 'none'"),
    gen_yaml("tail-unknown-yaml", "decode: {tail: none}\n", "`tail` must be one of off, mean, rollout, rolling, got"
             " 'none'"),
    gen_yaml("tail-off-unquoted-yaml", "decode: {tail: off}\n", "`tail` must be one of off, mean, rollout, rolling, got"
             " the boolean False (YAML reads a bare off, on, no or yes as one); quote it, e.g. tail: \"off\""),
    evaluation("block-len-entry-for-eft", {"methods": [{"method": "eft", "block_len": 2}]},
               "`block_len` does not apply to eft"),
    evaluation("defaults-bad-block-len", {"defaults": {"block_len": 0}}, "`block_len` must be an integer >= 1"),
    gen("trace-for-sft", ["--method", "sft", "--trace"], "`trace` has no effect on method 'sft'"),
    gen_yaml("prune-for-sft", "decode: {method: sft, prune: false}\n", "`prune` has no effect on method 'sft'",
             "methods whose Q̂ lies in the reward's range"),
    gen_yaml("prune-for-eft", "decode: {method: eft, prune_probe: 2}\n", "`prune_probe` has no effect on method"
             " 'eft'"),
    gen("baseline-for-sft", ["--method", "sft", "--baseline", "@BASELINE"], "a baseline is given (--baseline,"
        " `baseline:`), but no method of this run uses it (sft)", "drop it"),
    gen("baseline-reward-for-direct", ["--baseline-reward", "harmless"], "a baseline reward is given"
        " (--baseline-reward, `baseline_reward:`), but no method of this run uses it (tq-direct)"),
    gen("reward-format-builtin", ["--reward", "sentiment", "--reward-format", "Q: {prompt} A: {response}"],
        "`format` (--reward-format) applies to a reward-model directory, but reward 'sentiment' is a built-in"
        " reward", "drop it"),
    gen("reward-sigmoid-builtin", ["--reward", "sentiment", "--reward-sigmoid"], "`sigmoid` (--reward-sigmoid)"
        " applies to a reward-model directory, but reward 'sentiment' is a built-in reward"),
    gen("reward-truncate-callable", ["--reward", "conftest:vowel_share", "--reward-truncate"], "`truncate`"
        " (--reward-truncate) applies to a reward-model directory, but reward 'conftest:vowel_share' is a"
        " module:function"),
    gen_yaml("reward-range-builtin", "reward: {spec: harmless, range: [0, 2]}\n", "`range` has no effect on reward"
             " 'harmless': a built-in reward declares its own range"),
    evaluation("k-for-sft-entry", {"methods": [{"method": "sft", "k": 4}]}, "`k` has no effect on method 'sft'"),
    evaluation("alpha-for-sft-entry", {"methods": [{"method": "sft", "alpha": 2}]},
               "`alpha` has no effect on method 'sft'"),
    Case("serve-preset-baseline-list", ["serve", "--config", "@TMP/serve.yaml"],
         ("preset 'p': `baseline` must name one of `baselines` (prompted), got ['a', 'list']",),
         {"serve.yaml": "baselines: {prompted: {path: '@SFT'}}\npresets: {p: {method: tq-direct, baseline: [a, list]}}\n"}),
    Case("serve-preset-baseline-unused", ["serve", "--config", "@TMP/serve.yaml"],
         ("preset 'p' names baseline 'prompted', but method 'sft' runs no baseline", "drop `baseline`"),
         {"serve.yaml": "baselines: {prompted: {path: '@SFT'}}\npresets: {p: {method: sft, baseline: prompted}}\n"}),
    Case("serve-preset-unused-key", ["serve", "--config", "@TMP/serve.yaml"],
         ("preset 'p': `n_rollouts` has no effect on method 'args'",),
         {"serve.yaml": "decode: {n_rollouts: 2, rollout_temperature: 1}\npresets: {p: {method: args, n_rollouts: 3}}\n"}),

    # ---- generate: models and rewards ---------------------------------------------------------------------
    gen("reward-unknown", ["--reward", "nonsense"], "reward spec 'nonsense' does not resolve", "module:function"),
    gen("reward-module", ["--reward", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'",
        "PYTHONPATH"),
    gen("reward-function", ["--reward", "conftest:no_such_fn"], "has no function 'no_such_fn'", "module:function"),
    gen("reward-term", ["--reward", "0.5*sentiment + harmless"], "reward term 'harmless'", "WEIGHT*SPEC"),
    gen("reward-negative-weight", ["--reward", "-1*sentiment"], "argument --reward: expected one argument",
        "write one that starts with '-' as --reward=VALUE"),
    gen("alpha-missing", ["--alpha"], "argument --alpha: expected one argument", "--alpha=VALUE"),
    gen("reward-weight-overflow", ["--reward", "1e400*sentiment"], "reward weight '1e400' in '1e400*sentiment'",
        "must be a finite number, got inf"),
    gen("reward-format-alone", ["--reward-format", "{prompt} {response}"], "--reward-format applies to a reward",
        "--reward DIR"),
    gen("reward-truncate-alone", ["--reward-truncate"], "--reward-truncate applies to a reward"),
    gen("reward-format-no-response", ["--reward", "sentiment", "--reward-format", "Q: {prompt}"],
        "`reward.format` must contain {response}", "'Q: {prompt}'"),
    gen("reward-format-unknown-field", ["--reward", "sentiment", "--reward-format", "{prompt} {reward}"],
        "uses the field {reward}", "the fields are {prompt} and {response}"),
    gen("reward-format-brace", ["--reward", "sentiment", "--reward-format", "{response"],
        "is not a valid format string", "{{ or }}"),
    gen("reward-format-positional", ["--reward", "sentiment", "--reward-format", "{} {response}"],
        "uses the field {}", "the fields are {prompt} and {response}"),
    gen("reward-format-conversion", ["--reward", "sentiment", "--reward-format", "{response!z}"],
        "`reward.format` '{response!z}'", "plain {prompt} and {response}"),
    gen("sft-missing", ["--sft", "/no/such/model"], "model path '/no/such/model' does not exist"),
    gen("baseline-missing", ["--sft", "@SFT", "--baseline", "/no/dpo"], "model path '/no/dpo' does not exist"),
    gen("adapter-empty-dir", ["--sft", "@SFT", "--sft-adapter", "@TMP/adapter"],
        "adapter directory '@TMP/adapter' has no adapter_config.json", files={"adapter/": ""}),
    gen("remote-bad-url", ["--sft", "openai:ftp://host#m"], "remote model 'openai:ftp://host#m' must look like",
        "openai:http://127.0.0.1:8000#"),
    gen("adapter-without-model", ["--baseline-adapter", "@TMP/adapter"],
        "--baseline-adapter applies to the baseline model, which is not given", "give it with --baseline PATH"),
    gen("system-prompt-without-model", ["--sft", "@SFT", "--baseline-system-prompt", "be kind"],
        "--baseline-system-prompt applies to the baseline model, which is not given", "--baseline PATH"),
    gen("tokenizer-without-model", ["--sft-tokenizer", "@SFT"], "--sft-tokenizer applies to the sft model"),
    gen("device-without-model", ["--device", "cuda:7"], "--device applies to the models given with --sft",
        "give --sft PATH or drop --device"),
    gen("parse-special-without-model", ["--parse-special-tokens"], "--parse-special-tokens applies to the models"),
    gen("tokenizer-local", ["--sft", "@SFT", "--sft-tokenizer", "@SFT"], "`tokenizer` is for remote models"),
    gen("config-missing", ["--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist",
        "give the path of a YAML file"),
    gen("config-dir", ["--config", "@TMP/conf"], "config file '@TMP/conf' is a directory", "YAML file",
        files={"conf/": ""}),
    gen("prompts-file-missing", ["--prompts-file", "/no/such.txt"], "prompts file '/no/such.txt' does not exist"),
    # ---- generate: output file ----------------------------------------------------------------------------
    gen("output-is-dir", ["-o", "@TMP/outdir"], "output file '@TMP/outdir' is a directory", "give a file path",
        files={"outdir/": ""}),
    gen("output-under-file", ["-o", "@TMP/notes.txt/out.jsonl"], "'@TMP/notes.txt' is a file, not a directory",
        "give a path inside a directory", files={"notes.txt": "my notes\n"}),
    gen("alpha-overflows", ["--alpha", "1e308", "--reward", "0.5*sentiment+0.5*sentiment", "--method", "args"],
        "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got 1e+308"),  # the numeric envelope
    gen("soft-beta-overflows", ["--method", "tq-soft", "--rollout-temperature", "1", "--soft-beta", "1e39"],
        "`soft_beta` must be a finite number > 0 (1e-06 to 1e+06) or None (= 1/alpha), got 1e+39"),
    gen("alpha-tiny-soft", ["--method", "tq-soft", "--rollout-temperature", "1", "--alpha", "1e-39"],
        "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got 1e-39"),
    gen("temperature-tiny", ["--temperature", "1e-300"], "`temperature` must be a finite number >= 0 (0, or 1e-06 to"
        " 1e+06), got 1e-300"),
    gen("beta-huge", ["--method", "tq-indirect", "--baseline-reward", "harmless", "--beta", "1e300"],
        "`beta` must be a finite number > 0 (1e-06 to 1e+06), got 1e+300"),
    gen("output-is-notes", ["-o", "@TMP/notes.txt"], "output file '@TMP/notes.txt' exists and was not written by"
        " tqstar generate", "give another -o, or move that file away first", files={"notes.txt": "my notes\n"}),
    gen("output-is-json-not-ours", ["-o", "@TMP/data.jsonl"], "'@TMP/data.jsonl' exists and was not written by",
        "give another -o", files={"data.jsonl": '{"id": 1}\n'}),
    gen("output-is-eval-results", ["-o", "@TMP/out.jsonl"], "output file '@TMP/out.jsonl' holds tqstar eval results",
        "give another -o", files={"out.jsonl": HEADER + "\n"}),
    evaluation("out-dir-user-table", {}, "--out-dir '@TMP/mine' already holds table.md, which tqstar did not write",
               flags=("--out-dir", "@TMP/mine"), files={"mine/table.md": "notes"}),
    gen("output-is-prompts-file", ["--prompts-file", "@TMP/p.txt", "-o", "@TMP/p.txt"],
        "output file '@TMP/p.txt' is the prompts file of this run", "give another -o", files={"p.txt": "a\nb\n"}),
    gen("output-is-config", ["--config", "@TMP/run.yaml", "-o", "@TMP/./run.yaml"],
        "output file '@TMP/./run.yaml' is the --config of this run", "give another -o",
        files={"run.yaml": "decode: {k: 2}\n"}),
    gen("output-is-yaml-prompts-file", ["--config", "@TMP/run.yaml", "-o", "@TMP/p.txt"],
        "output file '@TMP/p.txt' is the prompts file of this run",
        files={"run.yaml": "prompts_file: p.txt\n", "p.txt": "a\n"}),
    # ---- generate: YAML config ----------------------------------------------------------------------------
    gen_yaml("syntax", "decode: [1,\n", "config file '@TMP/run.yaml' is not valid YAML", "fix its syntax"),
    gen_yaml("list", "- sft\n- reward\n", "must hold a mapping", "got ['sft', 'reward']"),
    gen_yaml("scalar", "hello\n", "must hold a mapping", "got 'hello'"),
    gen_yaml("non-string-key", "1: 2\n", "has the key 1, which is not a name"),
    gen_yaml("unknown-key", "modle: x\n", "unknown key `modle` in config", "valid keys are"),
    gen_yaml("decode-scalar", "decode: 5\n", "`decode` must be a mapping", "got 5"),
    gen_yaml("decode-unknown", "decode: {methd: cd}\n", "unknown decoding parameter `methd`", "valid ones are"),
    gen_yaml("stop-int", "decode: {stop: 5}\n", "`stop` must be a tuple of non-empty strings, got 5"),
    gen_yaml("stop-list-int", "decode: {stop: [1]}\n", "`stop` must be a tuple of non-empty strings, got (1,)"),
    gen_yaml("stop-mapping", "decode: {stop: {a: 1}}\n", "`stop` must be a tuple of non-empty strings"),
    gen_yaml("k-string", "decode: {k: '10'}\n", "`k` must be an integer >= 1, got '10'"),
    gen_yaml("k-float", "decode: {k: 2.5}\n", "`k` must be an integer >= 1, got 2.5"),
    gen_yaml("alpha-string", "decode: {alpha: high}\n", "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got 'high'"),
    gen_yaml("trace-string", "decode: {trace: 'yes'}\n", "`trace` must be True or False, got 'yes'"),
    gen_yaml("prune-int", "decode: {prune: 1}\n", "`prune` must be True or False, got 1"),
    gen_yaml("seed-float", "decode: {seed: 1.5}\n", "`seed` must be an integer, got 1.5"),
    gen_yaml("method-list", "decode: {method: [cd]}\n", "`method` must be one of", "got ['cd']"),
    gen_yaml("sft-int", "sft: 5\n", "`sft` must be a path or a mapping with a `path` key, got 5"),
    gen_yaml("sft-no-path", "sft: {adapter: x}\n", "`sft` has no `path`", "{path: DIR}"),
    gen_yaml("sft-missing-path", "sft: {path: /no/model}\n", "model path '/no/model' does not exist"),
    gen_yaml("sft-timeout", "sft: {path: '@SFT', timeout: fast}\n", "`sft.timeout` must be a number, got 'fast'"),
    gen_yaml("sft-chat-template", "sft: {path: '@SFT', chat_template: 5}\n",
             "`sft.chat_template` must be true or false or a string, got 5"),
    gen_yaml("sft-dtype", "sft: {path: '@SFT', dtype: float8}\n", "`dtype` must be one of", "got 'float8'"),
    gen_yaml("sft-unknown", "sft: {path: '@SFT', temprature: 1}\n", "unknown key `temprature` in sft"),
    gen_yaml("sft-retries", "sft: {path: '@SFT', retries: many}\n", "`sft.retries` must be an integer, got 'many'"),
    gen_yaml("baseline-list", "baseline: [a]\n", "`baseline` must be a path or a mapping", "got ['a']"),
    gen_yaml("reward-int", "reward: 5\n", "`reward` must be a spec string or a mapping with a `spec` key, got 5"),
    gen_yaml("reward-no-spec", "reward: {format: '{response}'}\n", "`reward` has no `spec`", "{spec: SPEC"),
    gen_yaml("reward-empty", "reward: {spec: ''}\n", "reward spec must be a non-empty string, got ''"),
    gen_yaml("reward-truncate", "reward: {spec: sentiment, truncate: 'no'}\n",
             "`reward.truncate` must be true or false, got 'no'"),
    gen_yaml("reward-range-short", "reward: {spec: sentiment, range: [1]}\n",
             "`reward.range` must be a list of 2 numbers, got [1]"),
    gen_yaml("reward-range-order", "reward: {spec: sentiment, range: [1, 0]}\n",
             "reward `range` must be (R_min, R_max): two numbers with R_min < R_max, each within ±1e+12, got (1, 0)"),
    gen_yaml("reward-range-huge", "reward: {spec: conftest:vowel_share, range: [0, 1.0e+300]}\n",
             "reward `range` must be (R_min, R_max)", "each within ±1e+12, got (0, 1e+300)"),
    gen_yaml("reward-label", "reward: {spec: sentiment, label: first}\n",
             "`reward.label` must be an integer, got 'first'"),
    gen_yaml("reward-format", "reward: {spec: sentiment, format: 'Q: {prompt}'}\n",
             "`reward.format` must contain {response}"),
    gen_yaml("baseline-reward-list", "baseline_reward: [harmless]\n", "`baseline_reward` must be a spec string",
             "got ['harmless']"),
    gen_yaml("prompts-string", "prompts: How do I make tea?\n", "`prompts` must be a list of strings",
             "got 'How do I make tea?'", "prompts: [\""),
    gen_yaml("prompts-null", "prompts: [a, null]\n", "`prompts[1]` must be a non-empty string, got None"),
    gen_yaml("prompts-number", "prompts: [a, 5]\n", "`prompts[1]` must be a non-empty string, got 5"),
    gen_yaml("prompts-mapping", "prompts: {a: b}\n", "`prompts` must be a list of strings, got {'a': 'b'}"),
    gen_yaml("prompts-file-int", "prompts_file: 5\n", "`prompts_file` must be a file path, got 5"),
    gen_yaml("batch-size-string", "batch_size: '8'\n", "`batch_size` must be an integer >= 1, got '8'"),
    gen_yaml("truncate-prompt-string", "truncate_prompt: 'no'\n", "`truncate_prompt` must be true or false, got 'no'"),
    gen_yaml("concurrency-bool", "concurrency: true\n", "`concurrency` must be an integer >= 1, got True"),
    Case("generate-yaml-not-utf8", GEN + ["--config", "@TMP/run.yaml"], ("'@TMP/run.yaml' is not UTF-8 text",
         "byte 0xe9 at offset 13", "save it as UTF-8"), {"run.yaml": "prompts: [caf\xe9]\n".encode("latin-1")}),
    Case("generate-yaml-binary", GEN + ["--config", "@TMP/run.yaml"], ("'@TMP/run.yaml' is a binary file",),
         {"run.yaml": b"\x00\x01\x02"}),
    # ---- prompt files -------------------------------------------------------------------------------------
    prompts_file("not-utf8", "p.txt", "caf\xe9\n".encode("latin-1"), "prompts file '@TMP/p.txt' is not UTF-8",
                 "save it as UTF-8"),
    prompts_file("binary", "p.txt", b"\x00\x01", "prompts file '@TMP/p.txt' is a binary file"),
    prompts_file("empty", "p.txt", "\n\n", "no prompts given"),
    prompts_file("jsonl-corrupt", "p.jsonl", '{"prompt": "a"}\nnot json\n', "line 2 of '@TMP/p.jsonl' is not valid JSON",
                 "fix the file"),
    prompts_file("jsonl-no-field", "p.jsonl", '{"text": "a"}\n', "line 1 of '@TMP/p.jsonl' has no 'prompt' field",
                 "(fields: text)", "--column NAME"),
    prompts_file("jsonl-null", "p.jsonl", '{"prompt": null}\n', "the prompt of line 1 of '@TMP/p.jsonl' must be a non-empty string,"
                 " got None", "a list of chat messages"),
    prompts_file("jsonl-number", "p.jsonl", '{"prompt": 5}\n', "must be a non-empty string, got 5", "list of chat messages"),
    prompts_file("jsonl-empty", "p.jsonl", '{"prompt": "  "}\n', "must be a non-empty string, got '  '"),
    prompts_file("jsonl-list-row", "p.jsonl", '["a"]\n', "the prompt of line 1 of '@TMP/p.jsonl' must be a non-empty"
                 " string, got ['a']", 'like [{"role": "user", "content": "..."}]'),
    prompts_file("jsonl-messages-all-empty", "p.jsonl", '{"prompt": [{"role": "system", "content": " "}]}\n',
                 "must be a non-empty string, got [{'role': 'system', 'content': ' '}]", "not all empty"),
    prompts_file("jsonl-messages-bad-role", "p.jsonl", '{"prompt": [{"role": "bot", "content": "hi"}]}\n',
                 "must be a non-empty string, got [{'role': 'bot', 'content': 'hi'}]", '"role": "user"'),
    prompts_file("jsonl-column", "p.jsonl", '{"prompt": "a"}\n', "has no 'question' field", "--column NAME",
                 flags=("--column", "question")),
    prompts_file("json-object", "p.json", '{"prompt": "a"}', "holds a JSON dict", "give a list of prompts"),
    prompts_file("json-null-item", "p.json", '["a", null]', "item 1 of '@TMP/p.json' is None, not a prompt"),
    prompts_file("json-missing-field", "p.json", '[{"q": "a"}]', "item 0 of '@TMP/p.json' has no 'prompt' field"),
    prompts_file("csv-column", "p.csv", "a,b\n1,2\n", "'@TMP/p.csv' has no 'prompt' column (columns: a, b)",
                 "--column NAME"),
    prompts_file("csv-as-txt", "p.txt", "prompt,id\nhello,1\n", "prompts file '@TMP/p.txt' is read as plain text (one"
                 " prompt per line) but its first line is a CSV header (prompt, id)", "name it .csv"),
    prompts_file("tsv-as-txt", "p.txt", "id\tquestion\n1\thello\n", "its first line is a TSV header (id, question)",
                 "name it .tsv", flags=("--column", "question")),
    prompts_file("jsonl-as-txt", "p.txt", '{"prompt": "a"}\n', "'@TMP/p.txt' is read as plain text (one prompt per"
                 " line) but its first line is a JSON object", "name it .jsonl"),
    prompts_file("column-for-text", "p.txt", "a\nb\n", "`column` 'q' names a field of a JSONL, JSON, CSV or TSV file,"
                 " but '@TMP/p.txt' is read as plain text, one prompt per line", "drop the column",
                 flags=("--column", "q")),
    prompts_file("csv-empty-cell", "p.csv", "prompt,id\nhello,1\n\n,3\n", "line 4 of '@TMP/p.csv' has an empty 'prompt'"
                 " cell", "fill it in or remove the line"),
    prompts_file("csv-blank-cell", "p.csv", 'id,prompt\n1,"two\nlines"\n2,"  "\n', "line 4 of '@TMP/p.csv' has an"
                 " empty 'prompt' cell"),
    prompts_file("csv-missing-cell", "p.csv", "id,prompt\n1,hello\n2\n", "line 3 of '@TMP/p.csv' has no 'prompt' cell"),
    prompts_file("tsv-empty-cell", "p.tsv", "prompt\tid\n\t1\n", "line 2 of '@TMP/p.tsv' has an empty 'prompt' cell"),
    prompts_file("json-blank-item", "p.json", '["a", " "]', "the prompt of item 1 of '@TMP/p.json' must be a non-empty"
                 " string, got ' '"),
    gen("column-without-file", ["--column", "q"], "`prompts_column` (--column) 'q' names the prompt field of a prompts"
        " file, and none is given", "give --prompts-file FILE"),
    Case("prompts-file-dir", ["generate", "--prompts-file", "@TMP/d", "--no-progress"],
         ("prompts file '@TMP/d' is a directory", "give a text, JSONL or CSV file"), {"d/": ""}),
    # ---- eval config --------------------------------------------------------------------------------------
    evaluation("methods-mapping", {"methods": {"method": "sft"}}, "`methods` must be a list of mappings",
               "methods: [{method: tq-direct}]"),
    evaluation("methods-empty", {"methods": []}, "no methods given", "{method: tq-direct}"),
    evaluation("methods-int", {"methods": [5]}, "each method must be a mapping with a `method` key, got 5"),
    evaluation("method-unknown", {"methods": [{"method": "magic"}]}, "`method` must be one of", "got 'magic'"),
    evaluation("method-twice", {"methods": [{"method": "sft"}, {"method": "sft"}]}, "method label 'sft' appears twice",
               "distinct `label`"),
    evaluation("alpha-sweep-string", {"methods": [{"method": "args", "alpha": [0.5, "x"]}]},
               "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got 'x'"),
    evaluation("defaults-scalar", {"defaults": 5}, "`defaults` must be a mapping of decoding parameters, got 5"),
    evaluation("defaults-bad-k", {"defaults": {"k": 0}}, "`k` must be an integer >= 1, got 0"),
    evaluation("judges-list", {"judges": ["harmless"]}, "`judges` must be a mapping of names to reward specs"),
    evaluation("judge-unknown", {"judges": {"j": "nonsense"}}, "reward spec 'nonsense' does not resolve"),
    evaluation("judge-null", {"judges": {"j": None}}, "`judges.j` has no reward spec", "j: harmless"),
    evaluation("prompts-empty", {"prompts": {}}, "`prompts` must name a source", "prompts: {source: rtp"),
    evaluation("prompts-limit-string", {"prompts": {"source": "@TMP/prompts.txt", "limit": "5"}},
               "`prompts.limit` must be an integer >= 1, got '5'"),
    evaluation("prompts-limit-zero", {"prompts": {"source": "@TMP/prompts.txt", "limit": 0}},
               "`prompts.limit` must be an integer >= 1, got 0"),
    evaluation("prompts-unknown-key", {"prompts": {"source": "@TMP/prompts.txt", "lmit": 3}},
               "unknown key `lmit` in prompts", "valid keys are column, limit, source"),
    evaluation("prompts-source-int", {"prompts": {"source": 5}}, "`prompts.source` must be a built-in set", "got 5"),
    evaluation("prompts-split", {"prompts": "rtp:dev"}, "split 'dev' of prompt set 'rtp' must be one of train, test"),
    evaluation("prompts-missing", {"prompts": "/no/such.txt"}, "prompts file '/no/such.txt' does not exist"),
    evaluation("output-int", {"output": 5}, "`output` must be a file path, got 5"),
    evaluation("output-dir", {"output": "@TMP/res"}, "output file '@TMP/res' is a directory", files={"res/": ""}),
    evaluation("decode-key", {"decode": {"k": 3}}, "`decode` is not an eval config key", "under `defaults`"),
    evaluation("prompts-file-key", {"prompts_file": "x"}, "`prompts_file` is not an eval config key",
               "prompts: {source: FILE}"),
    evaluation("unknown-key", {"methdos": []}, "unknown key `methdos` in config", "methods"),
    evaluation("reward-format", {"reward": {"spec": "sentiment", "format": "{prompt}"}},
               "`reward.format` must contain {response}"),
    evaluation("sft-missing", {"sft": "/no/sft"}, "model path '/no/sft' does not exist"),
    evaluation("notes-output", {}, "'@TMP/out.jsonl' is not a tqstar evaluation file",
               "give another --output (tqstar eval only appends to files it wrote)", files={"out.jsonl": "my notes"}),
    evaluation("json-output", {}, "is not a tqstar evaluation file", files={"out.jsonl": '{"a": 1}\n'}),
    evaluation("binary-output", {}, "is not a tqstar evaluation file", files={"out.jsonl": b"\x89PNG\r\n\x1a\n\0\0"}),
    evaluation("corrupt-output", {}, "line 2 of '@TMP/out.jsonl' is corrupt", "move it aside",
               files={"out.jsonl": results("garbage", row())}),
    evaluation("other-config", {}, "holds results of a different configuration", "give another --output",
               files={"out.jsonl": results(row())}),
    evaluation("limit-flag-zero", {}, "`prompts.limit` must be an integer >= 1, got 0", flags=("--limit", "0")),
    evaluation("limit-flag-negative", {}, "`prompts.limit` must be an integer >= 1, got -2", flags=("--limit", "-2")),
    evaluation("limit-flag-string", {}, "argument --limit: invalid int value: 'all'", flags=("--limit", "all")),
    evaluation("prompts-flag-empty", {}, "`prompts` must name a source", flags=("--prompts", "")),
    evaluation("column-flag", {}, "has no 'question' field", "--column NAME", flags=("--prompts", "@TMP/p.jsonl",
               "--column", "question"), files={"p.jsonl": '{"prompt": "a"}\n'}),
    evaluation("column-for-builtin-set", {"prompts": {"source": "rtp", "column": "text"}}, "`column` 'text' names a"
               " field of a prompt file or dataset; the built-in set 'rtp' has its own", "drop it"),
    evaluation("column-for-text-file", {}, "`column` 'q' names a field of a JSONL, JSON, CSV or TSV file",
               flags=("--column", "q")),
    evaluation("csv-empty-cell", {"prompts": {"source": "@TMP/p.csv"}}, "line 3 of '@TMP/p.csv' has an empty 'prompt'",
               files={"p.csv": "prompt\na\n\"\"\n"}),
    evaluation("out-dir-file", {}, "--out-dir '@TMP/notes.txt' is a file, not a directory",
               flags=("--out-dir", "@TMP/notes.txt"), files={"notes.txt": "notes"}),
    evaluation("reference-not-a-method", {}, "reference method 'sft(α=1)' is not among the methods (sft)",
               "add {method: sft(α=1)} to `methods`", flags=("--reference", "sft(α=1)")),
    evaluation("judge-url-alone", {}, "needs both --llm-judge-url and --llm-judge-model",
               flags=("--llm-judge-url", "http://127.0.0.1:9")),
    evaluation("output-flag-dir", {}, "output file '@TMP/res' is a directory", flags=("--output", "@TMP/res"),
               files={"res/": ""}),
    Case("eval-config-dir", ["eval", "--config", "@TMP/c"], ("config file '@TMP/c' is a directory",), {"c/": ""}),
    Case("eval-no-config", ["eval"], ("the following arguments are required: --config",)),
    # ---- report -------------------------------------------------------------------------------------------
    report("missing", {}, ["@TMP/none.jsonl"], "results file '@TMP/none.jsonl' does not exist",
           "give the JSONL file that tqstar eval wrote"),
    report("dir", {"d/": ""}, ["@TMP/d"], "results file '@TMP/d' is a directory", "the JSONL file that tqstar eval"),
    report("binary", {"r.jsonl": b"\x00\xff\x00"}, ["@TMP/r.jsonl"], "is not a tqstar evaluation file",
           "give the JSONL file that tqstar eval wrote"),
    report("notes", {"r.txt": "my notes\n"}, ["@TMP/r.txt"], "'@TMP/r.txt' is not a tqstar evaluation file",
           "give the JSONL file that tqstar eval wrote"),
    report("empty", {"r.jsonl": ""}, ["@TMP/r.jsonl"], "'@TMP/r.jsonl' has no result rows", "run tqstar eval first"),
    report("header-only", {"r.jsonl": results()}, ["@TMP/r.jsonl"], "has no result rows"),
    report("corrupt", {"r.jsonl": results(row(), "{oops", row(index=1))}, ["@TMP/r.jsonl"],
           "line 3 of '@TMP/r.jsonl' is corrupt"),
    report("twice", {"r.jsonl": results(row())}, ["@TMP/r.jsonl", "@TMP/./r.jsonl"],
           "results file '@TMP/./r.jsonl' is given twice", "give each file once"),
    report("same-label-two-configs", {"a.jsonl": results(row(params={"method": "sft", "temperature": 0.5})),
                                      "b.jsonl": results(row(params={"method": "sft", "temperature": 1.0}))},
           ["@TMP/a.jsonl", "@TMP/b.jsonl"],
           "method 'sft' appears in both '@TMP/a.jsonl' and '@TMP/b.jsonl' from different configurations",
           "`params` differs", "another `label`"),
    report("other-prompts", {"a.jsonl": results(row()), "b.jsonl": results(
        row("args"), header=json.dumps({"format": "tqstar-eval/1", "config": {"prompts": ["b"]}}))},
        ["@TMP/a.jsonl", "@TMP/b.jsonl"], "'@TMP/b.jsonl' and '@TMP/a.jsonl' differ in the prompt set (`prompts`): prompt"
        " 0 is 'b' vs 'a'", "report files of one prompt set together"),
    report("other-reward", {"a.jsonl": results(row(), header=header(reward="sentiment")),
                            "b.jsonl": results(row("args"), header=header(reward="harmless"))},
           ["@TMP/a.jsonl", "@TMP/b.jsonl"], "'@TMP/b.jsonl' and '@TMP/a.jsonl' differ in the target reward (`reward`):"
           " 'harmless' vs 'sentiment'", "report files of one target reward together"),
    report("other-judges", {"a.jsonl": results(row(), header=header(judges={"j": "harmless"})),
                            "b.jsonl": results(row("args"), header=header(judges={"j": "sentiment"}))},
           ["@TMP/a.jsonl", "@TMP/b.jsonl"], "differ in the judges (`judges`)"),
    report("other-budget", {"a.jsonl": results(row(params={"max_new_tokens": 32})),
                            "b.jsonl": results(row("args", params={"max_new_tokens": 64}))},
           ["@TMP/a.jsonl", "@TMP/b.jsonl"], "differ in the response budget (`max_new_tokens`): 64 vs 32"),
    report("other-baseline-used", {"a.jsonl": results(row("tq-direct", params={"method": "tq-direct"}),
                                                      header=header(baseline="dpo-a")),
                                   "b.jsonl": results(row("baseline", params={"method": "baseline"}),
                                                      header=header(baseline="dpo-b"))},
           ["@TMP/a.jsonl", "@TMP/b.jsonl"], "differ in the baseline (`baseline`): 'dpo-b' vs 'dpo-a'"),
    report("reference", {"r.jsonl": results(row())}, ["@TMP/r.jsonl", "--reference", "bon"],
           "reference method 'bon' is not in the results (methods: sft)", "--reference"),
    report("coherence-dir", {"r.jsonl": results(row())}, ["@TMP/r.jsonl", "--coherence", "/no/minilm"],
           "--coherence '/no/minilm' is not a",
           "'minilm' or 'none'"),
    report("out-dir-file", {"r.jsonl": results(row()), "x": "keep"}, ["@TMP/r.jsonl", "--out-dir", "@TMP/x"],
           "--out-dir '@TMP/x' is a file, not a directory"),
    report("out-dir-user-table", {"r.jsonl": results(row()), "mine/table.md": "# my own table\n"},
           ["@TMP/r.jsonl", "--out-dir", "@TMP/mine"], "--out-dir '@TMP/mine' already holds table.md, which tqstar did"
           " not write", "give another --out-dir"),
    report("out-dir-user-plot", {"r.jsonl": results(row()), "mine/reward_vs_kl.png": b"\x89PNG my plot"},
           ["@TMP/r.jsonl", "--out-dir", "@TMP/mine"], "already holds reward_vs_kl.png, which tqstar did not write"),
    report("no-file", {}, [], "the following arguments are required: file"),
    report("row-without-text", {"r.jsonl": results(row(), json.dumps({"method": "sft", "prompt_index": 1}))},
           ["@TMP/r.jsonl"], "the row of method 'sft', prompt 1 in '@TMP/r.jsonl' has no `prompt`",
           "rerun tqstar eval on a fresh --output"),
    # ---- testbed ------------------------------------------------------------------------------------------
    Case("testbed-instances", ["testbed", "--instances", "0"], ("--instances must be an integer >= 1, got 0",)),
    Case("testbed-vocab", TESTBED + ["--vocab-size", "1"], ("--vocab-size must be an integer >= 2, got 1",)),
    Case("testbed-horizon", TESTBED + ["--horizon", "0"], ("--horizon must be an integer >= 1, got 0",)),
    Case("testbed-beta", TESTBED + ["--beta-baseline", "0"], ("--beta-baseline must be a finite number > 0 (1e-06 to 1e+06), got 0",)),
    Case("testbed-temperature", TESTBED + ["--temperature", "-1"], ("--temperature must be a finite number > 0 (1e-06 to 1e+06), got -1.0",)),
    Case("testbed-k-zero", TESTBED + ["--k", "0"], ("--k must be an integer from 1 to --vocab-size (4), got 0",)),
    Case("testbed-k-large", TESTBED + ["--k", "9"], ("--k must be an integer from 1 to --vocab-size (4), got 9",)),
    Case("testbed-tail-k", TESTBED + ["--tail-k", "4"],
         ("--tail-k must be an integer from 0 to --vocab-size - 1 (3), got 4",)),
    Case("testbed-alpha-zero", TESTBED + ["--alphas", "1", "0"], ("--alphas must be finite numbers > 0 (1e-06 to 1e+06), got 0",)),
    Case("testbed-alpha-nan", TESTBED + ["--alphas", "nan"], ("--alphas must be finite numbers > 0 (1e-06 to 1e+06), got nan",)),
    Case("testbed-too-big", TESTBED + ["--vocab-size", "100", "--horizon", "10"],
         ("--vocab-size 100 with --horizon 10 enumerates 1e+20 sequences", "<= 1,000,000")),
    Case("testbed-kls-negative", TESTBED + ["--kls", "-1"], ("--kls must be finite numbers > 0 (1e-06 to 1e+06), got -1",)),
    report("kls-negative", {"r.jsonl": results(row())}, ["@TMP/r.jsonl", "--kls", "-1"],
           "--kls must be finite numbers > 0 (1e-06 to 1e+06), got -1"),  # the one validator testbed --kls uses
    report("kls-nan", {"r.jsonl": results(row())}, ["@TMP/r.jsonl", "--kls", "nan"],
           "--kls must be finite numbers > 0 (1e-06 to 1e+06), got nan"),
    evaluation("kls-inf", {}, "--kls must be finite numbers > 0 (1e-06 to 1e+06), got inf", flags=("--kls", "inf")),
    Case("testbed-int", ["testbed", "--instances", "many"], ("argument --instances: invalid int value: 'many'",)),
    # ---- demo (flags are checked before SmolLM2 loads) ----------------------------------------------------
    Case("demo-k", ["demo", "--k", "0"], ("`k` must be an integer >= 1, got 0",)),
    Case("demo-block-len-whole-answer", ["demo", "--block-len", "1000"], (
        "--block-len 1000 covers the whole 24-token answer", "give --block-len below --max-new-tokens (e.g. 12)")),
    Case("demo-alpha", ["demo", "--alpha", "-2"], ("`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got -2.0",)),
    Case("demo-max-new-tokens", ["demo", "--max-new-tokens", "0"], ("`max_new_tokens` must be an integer >= 1",)),
    Case("demo-rollout-len", ["demo", "--rollout-len", "0"], ("`rollout_len` must be an integer >= 1, got 0",)),
    # ---- user code that raises (tiny models) --------------------------------------------------------------
    gen("reward-raises", [*LOCAL, "--method", "args", "--k", "2", "--max-new-tokens", "2", "--reward",
                          "test_bad_inputs:exploding_reward"],
        "ValueError: the reward server is down", "raised in your code: exploding_reward", "test_bad_inputs.py",
        "fix it there", "--debug", loads_models=True),
    gen("reward-module-raises", ["--reward", "broken_reward_mod:score"], "RuntimeError: cannot start",
        "raised in your code: <module>", "broken_reward_mod.py", "fix it there",
        files={"lib/broken_reward_mod.py": "raise RuntimeError('cannot start')\n"}),
    gen("reward-module-syntax", ["--reward", "syntax_reward_mod:score"], "SyntaxError",
        "syntax_reward_mod.py, line 1", "fix that file", files={"lib/syntax_reward_mod.py": "def score(:\n"}),
]


def _no_model_loads(*args, **kwargs):
    raise AssertionError("a model was loaded before the bad input was refused")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def _fill(text: str, tmp_path: Path, tiny_paths) -> str:
    return (text.replace("@TMP", str(tmp_path)).replace("@SFT", str(tiny_paths["sft"]))
            .replace("@BASELINE", str(tiny_paths["baseline"])))


def _make_files(case: Case, tmp_path: Path, tiny_paths) -> None:
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, tmp_path, tiny_paths))


def test_suite_is_large_enough():
    assert len(CASES) + len(LIBRARY) >= 120 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_cli_bad_input(case: Case, tmp_path, tiny_paths, capsys, monkeypatch):
    _make_files(case, tmp_path, tiny_paths)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.chdir(tmp_path)
    if not case.loads_models:
        from tqstar.lm.hf import TransformersLM

        monkeypatch.setattr(TransformersLM, "from_pretrained", _no_model_loads)
    before = _snapshot(tmp_path)
    code = main([_fill(a, tmp_path, tiny_paths) for a in case.argv])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("tqstar: ") for line in lines), err  # nothing else on stderr
    assert lines[-1].startswith("tqstar: error: ") and sum("error:" in line for line in lines) == 1
    for fragment in case.expect:
        assert _fill(fragment, tmp_path, tiny_paths) in lines[-1]
    assert _snapshot(tmp_path) == before, "a file changed, appeared or disappeared"


# ---- library calls --------------------------------------------------------------------------------------------
def _tabular():
    from tqstar import TabularLM

    return TabularLM.random(4, 3, seed=0)


def _library_cases():
    from tqstar import DecodeParams, Engine, load_reward
    from tqstar.config import RunConfig
    from tqstar.eval.run import Evaluation, expand_methods
    from tqstar.prompts import load_prompts

    def fn(prompts, responses):
        return [0.0] * len(responses)

    def evaluation(**changes):
        kwargs = {"engine": Engine(_tabular()), "prompts": ["a"], "methods": expand_methods([{"method": "sft"}]),
                  "output": "/tmp/never-written.jsonl", "fingerprint": {}, **changes}
        return Evaluation(**kwargs)

    return [
        ("engine-path", lambda: Engine("models/sft"),
         ("`sft` must be a LanguageModel, got 'models/sft'", "TransformersLM.from_pretrained('models/sft')")),
        ("engine-none", lambda: Engine(None), ("`sft` must be a LanguageModel, got None",)),
        ("engine-baseline-path", lambda: Engine(_tabular(), "models/dpo"),
         ("`baseline` must be a LanguageModel, got 'models/dpo'", "TransformersLM.from_pretrained('models/dpo')")),
        ("engine-reward-function", lambda: Engine(_tabular(), reward=fn),
         ("`reward` must be a Reward or None, got function", "CallableReward(fn)")),
        ("engine-reward-string", lambda: Engine(_tabular(), reward="sentiment"),
         ("`reward` must be a Reward or None, got 'sentiment'", "load_reward('sentiment')")),
        ("engine-baseline-reward-function", lambda: Engine(_tabular(), baseline_reward=fn),
         ("`baseline_reward` must be a Reward or None", "CallableReward(fn)")),
        ("evaluation-dict-method", lambda: evaluation(methods=[{"method": "sft"}]),
         ("`methods[...]` must be a MethodRun, got {'method': 'sft'}", "expand_methods")),
        ("evaluation-params-dict", lambda: evaluation(methods=[expand_methods([{"method": "sft"}])[0].params]),
         ("`methods[...]` must be a MethodRun, got DecodeParams", "expand_methods")),
        ("evaluation-judge-function", lambda: evaluation(judges={"j": fn}),
         ("`judges['j']` must be a Reward, got function", "load_reward(SPEC)")),
        ("evaluation-engine", lambda: evaluation(engine="engine"), ("`engine` must be an Engine, got 'engine'",)),
        ("generate-params-dict", lambda: Engine(_tabular()).generate(["a"], {"method": "sft"}),
         ("`params` must be a DecodeParams, got {'method': 'sft'}", "DecodeParams.from_dict(values)")),
        ("new-state-params-dict", lambda: Engine(_tabular()).new_state("a", {"method": "sft"}),
         ("`params` must be a DecodeParams, got {'method': 'sft'}", "DecodeParams.from_dict(values)")),
        ("decode-params-stop", lambda: DecodeParams.from_dict({"stop": 5}),
         ("`stop` must be a tuple of non-empty strings, got 5",)),
        ("decode-params-unknown", lambda: DecodeParams.from_dict({"temprature": 1}),
         ("unknown decoding parameter `temprature`",)),
        ("run-config-decode", lambda: RunConfig.from_dict({"decode": [1]}), ("`decode` must be a mapping",)),
        ("load-prompts-limit", lambda: load_prompts("rtp", limit="3"), ("`limit` must be an integer >= 1, got '3'",)),
        ("load-prompts-source", lambda: load_prompts(5), ("the prompt source must be a built-in set", "got 5")),
        ("load-reward-empty", lambda: load_reward(""), ("reward spec must be a non-empty string, got ''",)),
    ]


LIBRARY = [pytest.param(i, id=name) for i, (name, _, _) in enumerate(_library_cases())]


@pytest.mark.parametrize("index", LIBRARY)
def test_library_misuse(index):
    _, call, expect = _library_cases()[index]
    with pytest.raises(TQStarError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in expect:
        assert fragment in message


# ---- real processes -----------------------------------------------------------------------------------------
def _tqstar(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m tqstar.cli ARGS`` in ``tmp_path``, importing this checkout's tqstar and the tests' modules."""
    import tqstar

    path = [str(tmp_path / "lib"), str(TESTS_DIR),
            str(Path(tqstar.__file__).resolve().parents[1])]
    return subprocess.run([sys.executable, "-m", "tqstar.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(path), **env})


@pytest.mark.parametrize(("args", "files", "expect"), [
    (["generate", "--config", "run.yaml", "--prompt", "x"], {"run.yaml": "decode: {stop: 5}\n"},
     "`stop` must be a tuple of non-empty strings, got 5"),
    (["report", "notes.txt", "--coherence", "none"], {"notes.txt": "my notes\n"}, "is not a tqstar evaluation file"),
    (["testbed", "--k", "0"], {}, "--k must be an integer from 1"),
    (["generate", "--k", "zero"], {}, "argument --k: invalid int value: 'zero'"),
])
def test_real_process_prints_one_line(args, files, expect, tmp_path):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    before = _snapshot(tmp_path)
    done = _tqstar(args, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("tqstar: error: ") and done.stderr.count("\n") == 1 and expect in done.stderr
    assert _snapshot(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "broken_mod.py").write_text("raise RuntimeError('cannot start')\n")
    args = ["generate", "--prompt", "x", "--reward", "broken_mod:score"]
    quiet = _tqstar(args, tmp_path)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and "broken_mod.py" in quiet.stderr
    loud = _tqstar(args, tmp_path, TQSTAR_DEBUG="1")
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "RuntimeError: cannot start" in loud.stderr
