"""The command line: generate (flags, YAML, JSONL out, trace), testbed, and one-sentence errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tqstar.cli import main


@pytest.fixture(autouse=True)
def tiny_cache(tmp_path_factory, monkeypatch, tiny_paths):
    # the built-in default builds its tiny models under $TQSTAR_CACHE/tiny; reuse the session's copies
    root = tiny_paths["sft"].parent.parent
    (root / "tiny").mkdir(exist_ok=True)
    for role, path in tiny_paths.items():
        link = root / "tiny" / role
        if not link.exists():
            link.symlink_to(path)
    monkeypatch.setenv("TQSTAR_CACHE", str(root))


def test_generate_on_the_built_in_default_writes_jsonl(tmp_path, capsys):
    pytest.importorskip("vaderSentiment")
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--prompt", "How do I make tea?", "--prompt", "The food was", "--max-new-tokens", "4",
                 "--k", "3", "--rollout-len", "3", "--output", str(out), "--no-progress"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["How do I make tea?", "The food was"]
    assert all(r["method"] == "tq-direct" and len(r["token_ids"]) == 4 and -1 <= r["reward"] <= 1 for r in rows)
    assert rows[0]["accounting"]["rollouts"] > 0
    assert "built-in tiny random models" in capsys.readouterr().err


def test_generate_text_with_trace(tiny_paths, capsys):
    code = main(["generate", "--sft", str(tiny_paths["sft"]), "--method", "none", "--prompt", "Hi",
                 "--max-new-tokens", "2", "--k", "3", "--trace", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "### [none] Hi" in out and "logp_sft" in out
    assert out.count("*") == 2  # one chosen candidate per step


def test_trace_says_when_pruning_is_off_and_why(tiny_paths, capsys):
    base = ["generate", "--sft", str(tiny_paths["sft"]), "--baseline", str(tiny_paths["baseline"]), "--prompt", "Hi",
            "--max-new-tokens", "2", "--k", "3", "--rollout-len", "2", "--trace", "--no-progress"]
    assert main([*base, "--reward", "conftest:vowel_share"]) == 0  # declares [0, 1]: pruning on, nothing said
    assert "pruning off" not in capsys.readouterr().err
    assert main([*base, "--reward", "test_cli:unranged"]) == 0
    err = capsys.readouterr().err
    assert "tqstar: pruning off: reward unranged declares no range; give --reward-sigmoid or a declared range" in err
    assert main([*base, "--reward", "conftest:vowel_share", "--temperature", "1"]) == 0
    assert "pruning off: it needs greedy choice (temperature 0), got temperature 1" in capsys.readouterr().err


def unranged(prompts, responses):
    return [len(r) / 10 for r in responses]


def test_yaml_config_with_flag_overrides(tiny_paths, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"sft: {{path: {tiny_paths['sft']}, chat_template: false}}\n"
        f"baseline: {tiny_paths['baseline']}\n"
        "reward: conftest:vowel_share\n"
        "decode: {method: cd, k: 3, rollout_len: 2, max_new_tokens: 3}\n"
        "prompts: [first prompt, second prompt]\n"
    )
    prompts = tmp_path / "p.txt"
    prompts.write_text("from the file\n")
    out = tmp_path / "o.jsonl"
    assert main(["generate", "--config", str(config), "--method", "args", "--prompts-file", str(prompts),
                 "-o", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["from the file"] and rows[0]["method"] == "args"
    assert len(rows[0]["token_ids"]) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "magic"], "`method` must be one of tq-direct, tq-indirect, tq-soft, cd, soft-cd, args, eft,"
                                " none, sft, baseline, bon, soft-bon, got 'magic'"),
        (["--k", "0"], "`k` must be an integer >= 1, got 0"),
        (["--alpha", "-1"], "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got -1.0"),
        (["--beta", "0"], "`beta` must be a finite number > 0 (1e-06 to 1e+06), got 0.0"),
        (["--n-rollouts", "0"], "`n_rollouts` must be an integer >= 1, got 0"),
        (["--rollout-len", "0"], "`rollout_len` must be an integer >= 1, got 0"),
        (["--reward", "nonsense"], "reward spec 'nonsense' does not resolve"),
        (["--reward", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
        (["--sft", "/no/such/model"], "model path '/no/such/model' does not exist"),
        (["--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
        (["--prompts-file", "/no/such.txt"], "prompts file '/no/such.txt' does not exist"),
    ],
)
def test_bad_input_is_one_sentence_on_stderr(argv, message, capsys):
    argv = ["generate", "--prompt", "x", "--no-progress", *argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("tqstar: error: ") and err.count("\n") == 1


def test_no_prompts(capsys):
    assert main(["generate", "--no-progress"]) == 2
    assert "no prompts given" in capsys.readouterr().err


def test_unknown_yaml_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("decode: {methd: cd}\n")
    assert main(["generate", "--config", str(config), "--prompt", "x"]) == 2
    assert "unknown decoding parameter `methd`" in capsys.readouterr().err


def test_testbed_prints_the_exact_table(capsys):
    assert main(["testbed", "--instances", "2", "--alphas", "1", "5", "--vocab-size", "3", "--horizon", "2",
                 "--draws", "20"]) == 0
    out = capsys.readouterr().out
    assert "exact testbed, direct transfer" in out and "exact testbed, indirect transfer" in out
    for method in ("tq-direct", "cd", "args", "sft", "baseline", "tq-indirect", "tq-soft(N=16)", "soft-cd(N=1)", "eft",
                   "optimum (exact)", "gap to the exact optimum"):
        assert method in out
    assert "no truncation, direct transfer: top-k = 1 of 3" in out and "no truncation, indirect transfer" in out
    for row in ("tq-direct tail=off", "tq-direct tail=mean", "cd tail=rolling", "tq-soft(N=∞) tail=exact",
                "share of truncation's gap to the optimum closed by the tail"):
        assert row in out
    assert main(["testbed", "--instances", "1", "--alphas", "1", "--vocab-size", "3", "--horizon", "2", "--draws", "5",
                 "--tail-k", "0", "--setting", "direct"]) == 0
    assert "no truncation" not in capsys.readouterr().out


def test_adapter_flag_is_checked_before_loading(tiny_paths, tmp_path, capsys):
    argv = ["generate", "--prompt", "x", "--sft", str(tiny_paths["sft"]), "--baseline", str(tiny_paths["baseline"]),
            "--baseline-adapter", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    assert f"adapter directory '{tmp_path}' has no adapter_config.json" in capsys.readouterr().err


def test_trace_with_pruned_and_reused_candidates_prints_every_response(tiny_paths, capsys):
    """Default pruning and reuse leave candidates without Q̂: the table says so instead of crashing mid-batch."""
    code = main(["generate", "--sft", str(tiny_paths["sft"]), "--baseline", str(tiny_paths["sft"]),
                 "--reward", "conftest:vowel_share", "--prompt", "How do I make tea?", "--prompt", "The food was",
                 "--max-new-tokens", "5", "--k", "6", "--alpha", "0.3", "--rollout-len", "3", "--trace",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "### [tq-direct] How do I make tea?" in out and "### [tq-direct] The food was" in out
    assert "pruned" in out and "reused" in out


@pytest.mark.parametrize("method", ["sft", "baseline"])
def test_trace_of_a_plain_method_is_refused(tiny_paths, capsys, method):
    """A plain method has no candidates to show: --trace would have no effect, so it is refused, naming why."""
    assert main(["generate", "--sft", str(tiny_paths["sft"]), "--baseline", str(tiny_paths["baseline"]),
                 "--no-chat-template", "--reward", "sentiment", "--method", method, "--max-new-tokens", "2",
                 "--prompt", "hi", "--trace", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert f"`trace` has no effect on method {method!r}" in err and "it applies to methods that choose among" in err
    assert out == ""


@pytest.mark.parametrize("extra", [["--method", "bon", "--bon-n", "3"], ["--method", "soft-bon", "--bon-n", "3"],
                                   ["--method", "tq-direct", "--block-len", "2", "--k", "3", "--baseline", "{baseline}"]])
def test_trace_of_a_blockwise_decision_lists_its_sampled_blocks(tiny_paths, capsys, extra):
    extra = [x.format(baseline=tiny_paths["baseline"]) for x in extra]  # only tq-direct uses the baseline
    assert main(["generate", "--sft", str(tiny_paths["sft"]),
                 "--no-chat-template", "--reward", "sentiment", "--max-new-tokens", "4", "--prompt", "hi",
                 "--temperature", "1", "--trace", "--no-progress", *extra]) == 0
    out, err = capsys.readouterr()
    table = [line for line in out.splitlines() if re.match(r"^ +\d+[* ] +\d+  ", line)]
    assert out.count("pos   #  block") == 1 and len(table) % 3 == 0 and table
    assert sum("*" in line[:6] for line in table) == len(table) // 3  # one chosen block per decision
    assert "pruning off: blockwise decisions" in err or extra[1].endswith("bon")


def test_a_closed_stdout_pipe_stops_quietly(tiny_paths, tmp_path):
    """`tqstar generate ... | head -1`: the reader leaves early; no error line, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__import__("tqstar").__file__).parents[1])}
    argv = [sys.executable, "-m", "tqstar.cli", "generate", "--sft", str(tiny_paths["sft"]), "--method", "sft",
            "--max-new-tokens", "2", "--batch-size", "1", "--no-progress", *[a for p in "abcd" for a in ("--prompt", p)]]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before the first response is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "error" not in err and "Traceback" not in err and "Exception ignored" not in err, err
