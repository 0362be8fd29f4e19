"""tqstar eval: rows written as they finish, resume after Ctrl-C or kill -9, refusal of a foreign file, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TESTS_DIR
from conftest import write_eval_config as _config

from tqstar.cli import main
from tqstar.errors import ConfigError
from tqstar.eval.metrics import normalised_reward
from tqstar.eval.report import report
from tqstar.eval.results import read_rows
from tqstar.eval.run import expand_methods


def _keys(path):
    _, rows = read_rows(path)
    return [(r["method"], r["prompt_index"]) for r in rows]


def test_expand_methods_sweeps_alpha():
    runs = expand_methods([{"method": "sft"}, {"method": "tq-direct", "alpha": [0.5, 1]}, {"method": "cd", "alpha": 2}],
                          {"k": 4})
    assert [r.label for r in runs] == ["sft", "tq-direct(α=0.5)", "tq-direct(α=1)", "cd(α=2)"]
    assert runs[1].params.k == 4 and runs[2].params.alpha == 1
    blocks = expand_methods([{"method": "tq-direct", "alpha": [1, 3], "block_len": 8}, {"method": "tq-direct",
                                                                                       "alpha": 3}])
    assert [r.label for r in blocks] == ["tq-direct[m=8](α=1)", "tq-direct[m=8](α=3)", "tq-direct(α=3)"]
    with pytest.raises(ConfigError, match="`method` must be one of"):
        expand_methods([{"method": "nope"}])
    with pytest.raises(ConfigError, match="method label 'sft' appears twice"):
        expand_methods([{"method": "sft"}, {"method": "sft"}])
    with pytest.raises(ConfigError, match="no methods given"):
        expand_methods([])


def test_a_sweep_over_a_method_alpha_does_not_touch_runs_it_once_with_a_warning(caplog):
    """α over sft: one run, not identical runs labelled α = 1 and α = 2; a sweep in the defaults reaches every
    method, a scalar in the defaults is simply not used by sft, a scalar in sft's own entry is refused."""
    runs = expand_methods([{"method": "sft", "alpha": [1, 2]}, {"method": "args", "alpha": [1, 2]}])
    assert [r.label for r in runs] == ["sft", "args(α=1)", "args(α=2)"]
    assert "`alpha` has no effect on method 'sft'" in caplog.text and "the sweep over [1, 2] runs it once" in caplog.text
    runs = expand_methods([{"method": "sft"}, {"method": "cd"}], {"alpha": [0.5, 4], "rollout_len": 3})
    assert [r.label for r in runs] == ["sft", "cd(α=0.5)", "cd(α=4)"] and runs[1].params.rollout_len == 3
    assert [r.label for r in expand_methods([{"method": "sft"}], {"alpha": 3, "k": 2})] == ["sft"]
    with pytest.raises(ConfigError, match="`alpha` has no effect on method 'sft'"):
        expand_methods([{"method": "sft", "alpha": 3}])


def test_eval_writes_every_row_and_reports(tmp_path, tiny_paths, capsys):
    config = _config(tmp_path, tiny_paths)
    out_dir = tmp_path / "report"
    assert main(["eval", "--config", config, "--no-progress", "--coherence", "none", "--out-dir", str(out_dir)]) == 0
    keys = _keys(tmp_path / "out.jsonl")
    methods = ["sft", "args(α=0.5)", "args(α=2)", "tq-direct(α=1)"]
    assert sorted(keys) == sorted((m, i) for m in methods for i in range(6))
    table = capsys.readouterr().out
    for m in methods:
        assert m in table
    assert (out_dir / "table.md").exists() and (out_dir / "table.csv").exists()
    assert (out_dir / "reward_vs_kl.png").stat().st_size > 0 and (out_dir / "reward_by_method.png").exists()
    summary, _ = report(tmp_path / "out.jsonl", reference="sft")
    by = {e["method"]: e for e in summary}
    best = max(summary, key=lambda e: e["reward"])  # no baseline in this run: normalise to the best method
    assert by["sft"]["normalised"] == 0.0 and best["normalised"] == 1.0
    for e in summary:
        assert e["normalised"] == pytest.approx(normalised_reward(e["reward"], by["sft"]["reward"], best["reward"]))
    assert by["sft"]["win[length]"] == 0.0
    assert by["sft"]["tie[length]"] == 1.0
    assert by["tq-direct(α=1)"]["rollouts_per_tok"] > 0
    assert by["sft"]["kl"] > 0  # greedy SFT decoding: a point mass per step, KL = Σ_t −log π_sft(y_t)


def test_a_methods_counts_do_not_depend_on_the_methods_run_before_it(tmp_path, tiny_paths):
    """Methods with one seed draw the same keyed blocks, so a method run after another used to find its stems and
    reward values cached and be charged a fraction of its work (SmolLM2, k = 16: soft choice 210 baseline forward
    tokens per response after argmax, against argmax's 1086 before it): each method now starts from empty caches."""
    block = {"method": "tq-direct", "k": 4, "block_len": 2, "rollout_len": 3, "alpha": 2.0}
    methods = [{**block, "temperature": 0, "label": "argmax"}, {**block, "temperature": 1.0, "label": "soft"}]
    rows = {}
    for name, order in (("forward", methods), ("reversed", methods[::-1])):
        (tmp_path / name).mkdir()
        main(["eval", "--config", _config(tmp_path / name, tiny_paths, n_prompts=3, methods=order, judges={}),
              "--no-progress", "--coherence", "none"])
        rows[name] = {(r["method"], r["prompt_index"]): (r["token_ids"], {k: v for k, v in r["accounting"].items()
                                                                           if k != "wall_time_s"})
                      for r in read_rows(tmp_path / name / "out.jsonl")[1]}
    assert rows["forward"] == rows["reversed"]
    assert all(counts["baseline_forward_tokens"] > 0 and counts["reward_calls"] > 0
               for _, counts in rows["forward"].values())


def test_second_run_adds_nothing(tmp_path, tiny_paths):
    config = _config(tmp_path, tiny_paths)
    main(["eval", "--config", config, "--no-progress", "--coherence", "none"])
    before = (tmp_path / "out.jsonl").read_text()
    main(["eval", "--config", config, "--no-progress", "--coherence", "none"])
    assert (tmp_path / "out.jsonl").read_text() == before


def test_resume_after_a_cut_off_last_line(tmp_path, tiny_paths, capsys):
    config = _config(tmp_path, tiny_paths)
    main(["eval", "--config", config, "--no-progress", "--coherence", "none"])
    path = tmp_path / "out.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    complete = [json.loads(line) for line in lines[1:]]
    path.write_text("".join(lines[:-3]) + lines[-3][: len(lines[-3]) // 2])  # two rows lost, one cut mid-write
    capsys.readouterr()
    assert main(["eval", "--config", config, "--no-progress", "--coherence", "none"]) == 0
    assert "cut off mid-write" in capsys.readouterr().err
    _, rows = read_rows(path)
    assert sorted((r["method"], r["prompt_index"]) for r in rows) == sorted(
        (r["method"], r["prompt_index"]) for r in complete)
    assert [r["text"] for r in rows] == [r["text"] for r in complete]  # deterministic: the same rows again


def test_refuses_a_file_from_another_configuration(tmp_path, tiny_paths, capsys):
    main(["eval", "--config", _config(tmp_path, tiny_paths), "--no-progress", "--coherence", "none"])
    other = _config(tmp_path, tiny_paths, reward="conftest:vowel_share", judges={})
    capsys.readouterr()
    assert main(["eval", "--config", other, "--no-progress", "--coherence", "none"]) == 2
    err = capsys.readouterr().err
    assert "holds results of a different configuration (`judges` differs); refusing to append" in err
    changed = _config(tmp_path, tiny_paths, defaults={"max_new_tokens": 6, "k": 3, "rollout_len": 3})
    assert main(["eval", "--config", changed, "--no-progress", "--coherence", "none"]) == 2
    assert "method 'sft' in" in capsys.readouterr().err


def test_methods_can_be_added_and_left_out_later(tmp_path, tiny_paths):
    config = _config(tmp_path, tiny_paths, methods=[{"method": "sft"}])
    main(["eval", "--config", config, "--no-progress", "--coherence", "none"])
    more = _config(tmp_path, tiny_paths, methods=[{"method": "args", "alpha": [0.5, 2.0]}])
    assert main(["eval", "--config", more, "--no-progress", "--coherence", "none"]) == 0
    assert sorted({m for m, _ in _keys(tmp_path / "out.jsonl")}) == ["args(α=0.5)", "args(α=2)", "sft"]


def test_rows_written_before_a_parameter_existed_still_resume(tmp_path, tiny_paths):
    """A row whose params lack a field added later (it ran with that field's default) is not a conflict."""
    config = _config(tmp_path, tiny_paths, n_prompts=2)
    assert main(["eval", "--config", config, "--no-progress", "--coherence", "none"]) == 0
    path = tmp_path / "out.jsonl"
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows[1:]:
        del row["params"]["soft_beta"]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert main(["eval", "--config", config, "--no-progress", "--coherence", "none"]) == 0
    assert len(path.read_text().splitlines()) == len(lines)


def test_defaults_apply_to_the_methods_they_mean_something_for():
    """``tail`` under ``defaults`` reaches the token-level decisions over a top k only (not ``block_len``'s sampled
    blocks, nor best-of-N's whole responses); set where there is no top k, it is refused with the reason."""
    runs = expand_methods([{"method": "sft"}, {"method": "bon", "temperature": 1.0},
                           {"method": "soft-bon", "temperature": 1.0}, {"method": "cd"},
                           {"method": "tq-direct", "block_len": 2}], {"tail": "off", "k": 3})
    assert [r.params.tail for r in runs] == ["mean", "mean", "mean", "off", "mean"] and runs[3].params.k == 3
    blockwise = expand_methods([{"method": "cd"}], {"tail": "off", "block_len": 2})  # block_len beside it in defaults
    assert blockwise[0].params.tail == "mean" and blockwise[0].params.block_len == 2
    with pytest.raises(ConfigError, match="^`tail` applies to the token-level methods .* not to sft"):
        expand_methods([{"method": "sft", "tail": "off"}])
    with pytest.raises(ConfigError, match="^`tail` applies to token-level decisions over the SFT top k, not to blockwise"):
        expand_methods([{"method": "cd", "tail": "rollout", "block_len": 2}])


def test_rows_written_before_the_tail_existed_resume_as_truncated_runs(tmp_path, tiny_paths, capsys):
    """Sampled token-level rows written before ``tail`` existed were truncated: they resume under ``tail: off`` and
    are refused under the new default (the rows would mix two policies under one label)."""
    sampled = [{"method": "args", "alpha": 1.0, "temperature": 1.0}]
    old = _config(tmp_path, tiny_paths, n_prompts=2, methods=sampled, defaults={"max_new_tokens": 4, "tail": "off"})
    assert main(["eval", "--config", old, "--no-progress", "--coherence", "none"]) == 0
    path = tmp_path / "out.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows[1:]:
        del row["params"]["tail"]
    for params in rows[0]["config"]["methods"].values():
        del params["tail"]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert main(["eval", "--config", old, "--no-progress", "--coherence", "none"]) == 0
    new = _config(tmp_path, tiny_paths, n_prompts=2, methods=sampled, defaults={"max_new_tokens": 4})
    capsys.readouterr()
    assert main(["eval", "--config", new, "--no-progress", "--coherence", "none"]) == 2
    assert "was run with other parameters (`tail` differs)" in capsys.readouterr().err


def test_corrupt_line_in_the_middle_is_refused(tmp_path, tiny_paths, capsys):
    config = _config(tmp_path, tiny_paths)
    main(["eval", "--config", config, "--no-progress", "--coherence", "none"])
    path = tmp_path / "out.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + "garbage\n" + "".join(lines[3:]))
    capsys.readouterr()
    assert main(["eval", "--config", config, "--no-progress", "--coherence", "none"]) == 2
    assert "line 4 of" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": [{"method": "magic"}]}, "`method` must be one of"),
        ({"prompts": {"source": "/no/such.txt"}}, "prompts file '/no/such.txt' does not exist"),
        ({"prompts": {}}, "`prompts` must name a source"),
        ({"judges": {"j": "nonsense"}}, "reward spec 'nonsense' does not resolve"),
        ({"methods": [{"method": "tq-indirect", "n_rollouts": 2, "rollout_temperature": 1.0}]},
         "method 'tq-indirect' needs a baseline reward"),
    ],
)
def test_bad_eval_configs(tmp_path, tiny_paths, capsys, change, message):
    config = _config(tmp_path, tiny_paths, **change)
    assert main(["eval", "--config", config, "--no-progress", "--coherence", "none"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "advice", "fix"),
    [
        ({"methods": [{"method": "sft"}, {"method": "tq-indirect"}]}, "`baseline_reward:` in a YAML config",
         {"baseline_reward": "conftest:vowel_share"}),
        ({"methods": [{"method": "sft"}], "prompts": {"source": "@long"}}, "`truncate_prompt: true` in a YAML config",
         {"truncate_prompt": True}),
    ],
    ids=["baseline-reward", "truncate-prompt"],
)
def test_the_fix_an_eval_error_names_works_in_eval(tmp_path, tiny_paths, capsys, change, advice, fix):
    """eval has no --baseline-reward or --truncate-prompt flag: its errors name the YAML key, and that key works."""
    (tmp_path / "long.txt").write_text("the cat sat on the mat " * 100 + "\n")
    if change.get("prompts") == {"source": "@long"}:
        change = {**change, "prompts": {"source": str(tmp_path / "long.txt")}}
    argv = ["eval", "--no-progress", "--coherence", "none", "--config"]
    assert main([*argv, _config(tmp_path, tiny_paths, **change)]) == 2
    assert advice in capsys.readouterr().err
    assert main([*argv, _config(tmp_path, tiny_paths, **change, **fix)]) == 0
    assert len(_keys(tmp_path / "out.jsonl")) >= 1


def test_report_rewrites_its_own_out_dir(tmp_path, tiny_paths, capsys):
    main(["eval", "--config", _config(tmp_path, tiny_paths), "--no-progress", "--coherence", "none"])
    argv = ["report", str(tmp_path / "out.jsonl"), "--coherence", "none", "--out-dir", str(tmp_path / "rep")]
    assert main(argv) == 0 and main(argv) == 0, capsys.readouterr().err  # the second run replaces its own files
    assert (tmp_path / "rep" / "table.md").read_text().startswith("| method |")


def test_report_errors(tmp_path, tiny_paths, capsys):
    main(["eval", "--config", _config(tmp_path, tiny_paths), "--no-progress", "--coherence", "none"])
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out.jsonl"), "--reference", "bon", "--coherence", "none"]) == 2
    assert "reference method 'bon' is not in the results" in capsys.readouterr().err


def test_kill_9_mid_run_then_resume(tmp_path, tiny_paths):
    config = _config(tmp_path, tiny_paths, n_prompts=40, batch_size=1)
    path = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "tqstar.cli", "eval", "--config", config, "--no-progress", "--coherence", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = _keys(path)
    assert 5 <= len(written) < 160, "the run must be killed part-way"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    keys = _keys(path)
    assert len(keys) == len(set(keys)) == 4 * 40
    assert keys[: len(written)] == written  # nothing written before the kill was lost or rewritten


def test_report_merges_files_of_one_prompt_set(tmp_path, tiny_paths):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    main(["eval", "--config", _config(a, tiny_paths, methods=[{"method": "sft"}]), "--no-progress", "--coherence", "none"])
    (b / "prompts.txt").write_text((a / "prompts.txt").read_text())
    assert main(["eval", "--config", _config(b, tiny_paths, methods=[{"method": "args", "alpha": 1.0}],
                                             prompts={"source": str(a / "prompts.txt")}), "--no-progress",
                 "--coherence", "none"]) == 0  # no sft in this run: its table refers to its first method
    table, _ = report([a / "out.jsonl", b / "out.jsonl"], reference="sft")
    assert [e["method"] for e in table] == ["sft", "args(α=1)"]
    c = tmp_path / "c"
    c.mkdir()
    main(["eval", "--config", _config(c, tiny_paths, n_prompts=3, methods=[{"method": "sft"}]), "--no-progress",
          "--coherence", "none"])
    with pytest.raises(ConfigError, match=r"differ in the prompt set \(`prompts`\): 3 prompts vs 6"):
        report([a / "out.jsonl", c / "out.jsonl"])
