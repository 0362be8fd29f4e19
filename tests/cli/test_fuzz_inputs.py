"""A fuzz suite (hypothesis) over what a user hands tqstar: ``generate``'s flags and its YAML keys, the prompt-file
readers, ``report``'s results files and flags, ``testbed``'s flags and a server's config. Whatever the input:

* the command ends with exit status 0 or 2 (never a crash, never 1);
* every stderr line is a ``tqstar: `` line, at most one is an error, an error is the last line, and no traceback or
  "this is a bug in tqstar" is printed;
* no file changed that tqstar did not write: the folder is the same afterwards, except an output file that a
  successful run was asked to write.

The CLI runs in-process (``tqstar.cli.main``) on the built-in tiny models with small budgets, so an input that is
valid decodes in a fraction of a second. Examples are drawn deterministically (``derandomize``: CI runs the same
inputs every time, so the suite cannot be flaky) within a fixed budget (:data:`EXAMPLES` per test, no deadline, no
example database written into the checkout). :data:`TRIED` counts the inputs; ``pytest -s`` prints the count.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tqstar.cli import main
from tqstar.errors import ConfigError
from tqstar.params import FIELDS

#: examples per test (TQSTAR_FUZZ_EXAMPLES overrides): 6 x 150 inputs in about 30 s on one core
EXAMPLES = int(os.environ.get("TQSTAR_FUZZ_EXAMPLES", 150))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TRIED: dict[str, int] = {}
EXITS = {0: 0, 2: 0}


@pytest.fixture(scope="module", autouse=True)
def _count():
    yield
    print(f"\nfuzz: {sum(TRIED.values())} inputs tried ({', '.join(f'{k} {v}' for k, v in TRIED.items())});"
          f" CLI runs that succeeded: {EXITS[0]}, refused in one line: {EXITS[2]}")


@pytest.fixture(autouse=True)
def _tiny(builtin_tiny):
    """No --sft decodes with the session's tiny models; no debug tracebacks."""


# ---- the values a user might type -----------------------------------------------------------------------------
NUMBERS = ["0", "1", "2", "-1", "0.5", "1e-39", "1e39", "1e308", "nan", "inf", "-inf", "1.5", "", "x", "3e-7",
           "1000000", "0x10", " 2"]
WORDS = ["", " ", "sft", "tq-direct", "tq-soft", "cd", "args", "eft", "none", "bon", "soft-bon", "baseline",
         "tq-indirect", "soft-cd", "sentiment", "harmless", "conftest:vowel_share", "nonsense", "{response}", "{prompt}", "@TMP/p.txt",
         "@TMP/none", "@TMP", "-", "prompt", "--k", "é", "a\nb", "\x00"]
FLAG_VALUES = {
    "--method": ["sft", "tq-direct", "cd", "args", "eft", "none", "bon", "soft-bon", "baseline", "tq-soft", "soft-cd",
                 "x", ""],
    "--k": ["1", "2", "3", "0", "-1", "x", "2.5"],
    "--block-len": ["1", "2", "3", "0", "-1", "x", "2.5", "1e39"],
    "--tail": ["off", "mean", "rollout", "rolling", "none"],
    "--max-new-tokens": ["1", "2", "0", "x", "-3"],
    "--rollout-len": ["1", "2", "0", "x"],
    "--n-rollouts": ["1", "2", "0"],
    "--bon-n": ["1", "2", "0"],
    "--batch-size": ["1", "2", "0", "x"],
    "--concurrency": ["1", "2", "0"],
    "--format": ["text", "jsonl", "xml"],
    "--bon-policy": ["sft", "baseline", "dpo"],
    "--dtype": ["float32", "float8"],
    "--output": ["@TMP/out.jsonl", "@TMP/out.txt", "@TMP/notes.md", "@TMP/p.txt", "@TMP", "@TMP/new/dir/o.txt", "-"],
    "--prompts-file": ["@TMP/p.txt", "@TMP/p.csv", "@TMP/p.jsonl", "@TMP/none.txt", "@TMP"],
    "--reward": ["sentiment", "conftest:vowel_share", "0.5*sentiment+0.5*harmless", "nonsense", "1e400*sentiment"],
    "--baseline-reward": ["harmless", "nonsense"],
    "--sft": ["@SFT", "/no/such/model", "openai:ftp://x#m"],
    "--baseline": ["@BASELINE", "/no/dpo"],
}
REAL_FLAGS = ["--alpha", "--beta", "--soft-beta", "--bon-beta", "--temperature", "--rollout-temperature", "--seed",
              "--rollout-seed"]
SWITCHES = ["--trace", "--no-chat-template", "--truncate-prompt", "--reward-truncate", "--reward-sigmoid",
            "--parse-special-tokens"]
TEXT_FLAGS = ["--prompt", "--stop", "--column", "--reward-format", "--sft-system-prompt", "--device"]

USER_FILES = {"p.txt": "first prompt\nsecond prompt\n", "p.csv": "id,prompt\n1,hello\n2,\n",
              "p.jsonl": '{"prompt": "a"}\n{"text": "b"}\n', "notes.md": "### [my] notes\n"}


def flag_and_value() -> st.SearchStrategy[list[str]]:
    choices = [st.tuples(st.just(f), st.sampled_from(v)).map(list) for f, v in FLAG_VALUES.items()]
    choices.append(st.tuples(st.sampled_from(REAL_FLAGS), st.sampled_from(NUMBERS)).map(list))
    choices.append(st.sampled_from(SWITCHES).map(lambda s: [s]))
    choices.append(st.tuples(st.sampled_from(TEXT_FLAGS), st.sampled_from(WORDS)).map(list))
    choices.append(st.sampled_from(["--frobnicate", "--k", "-o", "stray"]).map(lambda s: [s]))  # malformed argv
    return st.one_of(choices)


def _fill(text: str, tmp: Path, tiny_paths) -> str:
    return (text.replace("@TMP", str(tmp)).replace("@SFT", str(tiny_paths["sft"]))
            .replace("@BASELINE", str(tiny_paths["baseline"])))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def run_cli(argv: list[str], tmp: Path, capsys, writes: set[str] = frozenset()) -> tuple[int, str]:
    """Run ``argv`` in ``tmp`` and check the suite's promises; ``writes``: the files a successful run may write."""
    capsys.readouterr()
    before = _snapshot(tmp)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err)
    EXITS[code] += 1
    lines = err.splitlines()
    assert "Traceback" not in err and "this is a bug in tqstar" not in err, (argv, err)
    assert all(line.startswith("tqstar: ") for line in lines), (argv, err)
    errors = [line for line in lines if line.startswith("tqstar: error: ")]
    assert len(errors) == (code == 2), (argv, err)
    assert code == 0 or lines[-1] == errors[0], (argv, err)
    after = _snapshot(tmp)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    allowed = {str(Path(w).relative_to(tmp)) for w in writes} if code == 0 else set()
    allowed |= {str(p) for w in allowed for p in Path(w).parents if str(p) != "."}  # created parent folders
    assert changed <= allowed, (argv, err, changed)
    return code, err


def _workdir(tiny_paths) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="tqstar-fuzz-"))
    for name, content in USER_FILES.items():
        (tmp / name).write_text(content)
    return tmp


# ---- generate's flags -----------------------------------------------------------------------------------------
@FUZZ
@given(flags=st.lists(flag_and_value(), max_size=6))
def test_generate_flags(flags, tiny_paths, capsys, monkeypatch):
    TRIED["generate flags"] = TRIED.get("generate flags", 0) + 1
    tmp = _workdir(tiny_paths)
    try:
        monkeypatch.chdir(tmp)
        argv = ["generate", "--no-progress", "--prompt", "hi", "--max-new-tokens", "2", "--k", "2", "--rollout-len",
                "2"] + [_fill(token, tmp, tiny_paths) for flag in flags for token in flag]
        outputs = {_fill(v, tmp, tiny_paths) for f, v in zip(argv, argv[1:]) if f in ("--output", "-o") and v != "-"}
        run_cli(argv, tmp, capsys, outputs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- generate's YAML keys -------------------------------------------------------------------------------------
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.sampled_from([0.5, 1e-39, 1e39, math.nan,
                                                                                     math.inf, -1.0, 2.0]),
                    st.sampled_from(WORDS[:18]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["a", "path", "spec", "k"]),
                                                                       inner, max_size=2)), max_leaves=4)
DECODE_KEYS = st.sampled_from(sorted(FIELDS) + ["methd", "block"])
RUN_KEYS = st.sampled_from(["sft", "baseline", "reward", "baseline_reward", "prompts", "prompts_file",
                            "prompts_column", "batch_size", "concurrency", "truncate_prompt", "modle"])
SMALL = {"max_new_tokens": 2, "k": 2, "rollout_len": 2}


@FUZZ
@given(decode=st.dictionaries(DECODE_KEYS, VALUES, max_size=4), run=st.dictionaries(RUN_KEYS, VALUES, max_size=3))
def test_generate_yaml_keys(decode, run, tiny_paths, capsys, monkeypatch):
    TRIED["generate YAML"] = TRIED.get("generate YAML", 0) + 1
    tmp = _workdir(tiny_paths)
    try:
        monkeypatch.chdir(tmp)
        for key in ("max_new_tokens", "k", "rollout_len", "n_rollouts", "bon_n", "block_len"):  # keep valid runs small
            if isinstance(decode.get(key), int) and decode[key] > 3:
                decode[key] = 3
        config = {**run, "decode": {**SMALL, **decode}}
        (tmp / "run.yaml").write_text(_fill(yaml.safe_dump(config, allow_unicode=True), tmp, tiny_paths))
        run_cli(["generate", "--config", str(tmp / "run.yaml"), "--prompt", "hi", "--no-progress"], tmp, capsys)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- prompt files ---------------------------------------------------------------------------------------------
LINES = ["prompt", "id,prompt", "prompt\tid", "hello", "hello, world", "", "   ", '{"prompt": "a"}', '{"text": 1}',
         '["a", "b"]', '"quoted', ',', '{"prompt": ""}', '{"prompt": [{"role": "user", "content": "hi"}]}', "\ufeffbom",
         "1,", ",2", "a\tb", "null", "[]", "{}", "é", "\x00"]


@FUZZ
@given(lines=st.lists(st.sampled_from(LINES), max_size=6), suffix=st.sampled_from([".txt", ".csv", ".tsv", ".jsonl",
                                                                                    ".json", "", ".md"]),
       column=st.sampled_from([None, "prompt", "text", "", "id"]), raw=st.binary(max_size=8))
def test_prompt_file_readers(lines, suffix, column, raw, tmp_path):
    from tqstar.prompts import read_prompt_file

    TRIED["prompt files"] = TRIED.get("prompt files", 0) + 1
    path = tmp_path / f"p{suffix}"
    path.write_bytes("\n".join(lines).encode() + (raw if lines[:1] == ["\x00"] else b""))
    try:
        prompts = read_prompt_file(path, column or None)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert len(prompts) == len(prompts.where) and all(prompts.where)
    text = path.read_bytes().decode("utf-8-sig").splitlines()
    for prompt, where in zip(prompts, prompts.where):  # each prompt stands where it says
        assert prompt if isinstance(prompt, list) else prompt.strip()
        kind, number = where.split()
        if kind == "line" and isinstance(prompt, str) and suffix not in (".csv", ".tsv", ".json", ".jsonl"):
            assert text[int(number) - 1] == prompt


# ---- report's inputs ------------------------------------------------------------------------------------------
def result_row(draw_fields: dict) -> dict:
    row = {"method": "sft", "prompt_index": 0, "prompt": "a", "text": "t", "reward": 0.5, "token_ids": [1],
           "kl": None, "kl_bound": None, "scores": {}, "accounting": {"sft_forward_tokens": 1,
                                                                        "baseline_forward_tokens": 0, "rollouts": 0,
                                                                        "reward_calls": 0, "wall_time_s": 0.1}}
    row.update(draw_fields)
    return row


ROW_FIELDS = st.dictionaries(st.sampled_from(["method", "prompt_index", "reward", "kl", "kl_kind", "text", "token_ids",
                                              "params", "accounting", "scores", "alpha", "family"]), VALUES, max_size=2)
HEADERS = st.one_of(st.just({"prompts": ["a"], "reward": "sentiment"}),
                    st.dictionaries(st.sampled_from(["prompts", "reward", "sft", "judges", "methods", "baseline"]),
                                    VALUES, max_size=3))


@FUZZ
@given(files=st.lists(st.tuples(HEADERS, st.lists(ROW_FIELDS, min_size=0, max_size=3), st.booleans()), min_size=1,
                      max_size=2),
       flags=st.lists(st.sampled_from([["--kls", "1"], ["--kls", "-1"], ["--kls", "nan"], ["--reference", "sft"],
                                       ["--reference", "bon"], ["--out-dir", "@TMP/report"], ["--out-dir", "@TMP/p.txt"],
                                       ["--title", "x"], ["--llm-judge-url", "http://127.0.0.1:9"]]), max_size=2))
def test_report_inputs(files, flags, tiny_paths, capsys, monkeypatch):
    TRIED["report"] = TRIED.get("report", 0) + 1
    tmp = _workdir(tiny_paths)
    try:
        monkeypatch.chdir(tmp)
        names = []
        for i, (config, rows, garbage) in enumerate(files):
            lines = [json.dumps({"format": "tqstar-eval/1", "config": config})]
            lines += [json.dumps(result_row(fields), default=str) for fields in rows]
            if garbage:
                lines.insert(1, "{not json")
            (tmp / f"r{i}.jsonl").write_text("\n".join(lines) + "\n")
            names.append(str(tmp / f"r{i}.jsonl"))
        argv = ["report", *names, "--coherence", "none"] + [_fill(t, tmp, tiny_paths) for f in flags for t in f]
        outputs = {str(tmp / "report" / n) for n in ("table.md", "table.csv", "reward_by_method.png", "reward_vs_kl.png",
                                                     "matched_kl.md", "frontier.png", ".tqstar-manifest.json")}
        run_cli(argv, tmp, capsys, outputs | {str(tmp / "report")})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- testbed's flags and a server's config ----------------------------------------------------------------------
TESTBED_VALUES = {"--instances": ["1", "0", "-1", "x", "1.5"], "--draws": ["2", "0", "nan"],
                  "--vocab-size": ["2", "3", "1", "0", "2000", "x"], "--horizon": ["1", "2", "0", "100"],
                  "--k": ["1", "2", "0", "9", "x"], "--seed": ["0", "-1", "x"], "--tail-k": ["0", "1", "2", "-1", "x"]}


@FUZZ
@given(flags=st.lists(st.one_of(
    [st.tuples(st.just(f), st.sampled_from(v)) for f, v in TESTBED_VALUES.items()]
    + [st.tuples(st.sampled_from(["--beta-baseline", "--temperature", "--kls", "--alphas", "--blocks"]),
                 st.sampled_from(NUMBERS))]),
    max_size=3))
def test_testbed_flags(flags, capsys, monkeypatch, tmp_path):
    TRIED["testbed"] = TRIED.get("testbed", 0) + 1
    monkeypatch.chdir(tmp_path)
    argv = ["testbed", "--instances", "1", "--vocab-size", "2", "--horizon", "2", "--draws", "2", "--alphas", "1",
            "--setting", "direct"] + [f"{f}={v}" for f, v in flags]
    run_cli(argv, tmp_path, capsys)


@FUZZ
@given(presets=st.dictionaries(st.sampled_from(["p", "q", "bad name", ""]),
                               st.one_of(VALUES, st.dictionaries(st.sampled_from(sorted(FIELDS) + ["baseline"]), VALUES,
                                                                 max_size=3)), max_size=2),
       extra=st.dictionaries(st.sampled_from(["limits", "baselines", "port", "decode", "cors_origins", "name"]), VALUES,
                             max_size=2))
def test_serve_config(presets, extra):
    from tqstar.serving.config import ServeConfig

    TRIED["serve config"] = TRIED.get("serve config", 0) + 1
    try:
        ServeConfig.from_dict({"presets": presets, **extra})
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_the_budget_is_fixed():
    """A fixed number of examples, drawn the same way on every run (no flakiness, no example database)."""
    assert FUZZ.max_examples == EXAMPLES and FUZZ.deadline is None and FUZZ.derandomize and FUZZ.database is None
