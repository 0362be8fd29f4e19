"""Reward–KL frontiers: per-prompt matched-KL interpolation, and an eval whose every method carries a KL."""

from __future__ import annotations

import json
import math

import pytest

from tqstar.cli import main
from tqstar.eval.frontier import auto_kls, format_matched, matched_kl
from tqstar.eval.report import report
from tqstar.eval.results import read_rows


def _row(method, family, prompt, kl, reward, alpha=None):
    return {"method": method, "family": family, "prompt_index": prompt, "kl": kl, "reward": reward, "alpha": alpha}


ROWS = [
    _row("sft", "sft", 0, 0.0, 0.0), _row("sft", "sft", 1, 0.0, 0.5),
    _row("m(α=1)", "cd", 0, 1.0, 0.2, 1.0), _row("m(α=2)", "cd", 0, 3.0, 0.6, 2.0),
    _row("m(α=1)", "cd", 1, 0.5, 0.6, 1.0), _row("m(α=2)", "cd", 1, 1.5, 1.0, 2.0),
    _row("bon-4", "bon", 0, 0.9, 0.9), _row("single(α=1)", "args", 0, 1.0, 0.1, 1.0),
]


def test_matched_kl_interpolates_each_prompt_along_its_own_sweep():
    (at1, at2) = matched_kl(ROWS, [1.0, 2.0])
    # prompt 0 at KL 1: 0.2; prompt 1 between (0.5, 0.6) and (1.5, 1.0): 0.8 → mean 0.5, s.e. 0.3
    assert at1["family"] == "m" and at1["reached"] == 2 and at1["reward"] == pytest.approx(0.5)
    assert at1["reward_se"] == pytest.approx(0.3)
    # at KL 2 only prompt 0 reaches: between (1, 0.2) and (3, 0.6) → 0.4
    assert at2["reached"] == 1 and at2["prompts"] == 2 and at2["reward"] == pytest.approx(0.4)
    assert "0.500 ± 0.300 (2/2)" in format_matched([at1, at2])


def test_the_top_k_sft_row_anchors_the_sweep_when_run():
    rows = ROWS + [_row("topk-sft", "none", 0, 0.8, 0.1, 1.0), _row("topk-sft", "none", 1, 0.8, 0.3, 1.0)]
    (at, ) = matched_kl(rows, [0.9])
    # prompt 0: (0.8, 0.1) → (1.0, 0.2): 0.15; prompt 1: (0.8, 0.3) → (0.5, 0.6) → (1.5, 1.0): first crossing 0.76
    assert at["reward"] == pytest.approx((0.15 + 0.76) / 2)


def test_auto_kls_lie_inside_what_most_prompts_cover():
    # per prompt (with the SFT anchor at 0): spans [0, 3] and [0, 1.5]; lo = 0, hi = lower quartile of {3, 1.5}
    assert auto_kls(ROWS) == [pytest.approx(0.47), pytest.approx(0.94), pytest.approx(1.4)]
    assert auto_kls([_row("sft", "sft", 0, 0.0, 0.0)]) == []


def test_sampled_eval_gives_every_method_a_kl_and_a_frontier(tmp_path, tiny_paths):
    (tmp_path / "prompts.txt").write_text("\n".join(f"prompt {i} about the lake" for i in range(3)))
    config = {
        "sft": {"path": str(tiny_paths["sft"]), "chat_template": False},
        "baseline": {"path": str(tiny_paths["baseline"]), "chat_template": False},
        "reward": "conftest:vowel_share",
        "defaults": {"max_new_tokens": 4, "k": 3, "rollout_len": 3, "temperature": 1.0},
        "methods": [{"method": "sft"}, {"method": "baseline"}, {"method": "none", "label": "topk-sft"},
                    {"method": "eft", "alpha": [0.5, 2.0], "beta": 0.5},
                    {"method": "tq-soft", "alpha": [1.0, 4.0], "n_rollouts": 2, "rollout_temperature": 1.0},
                    {"method": "bon", "bon_n": 4, "label": "bon-4"}],
        "prompts": {"source": str(tmp_path / "prompts.txt")},
        "output": str(tmp_path / "out.jsonl"),
        "batch_size": 3,
    }
    (tmp_path / "eval.yaml").write_text(json.dumps(config))
    out_dir = tmp_path / "report"
    assert main(["eval", "--config", str(tmp_path / "eval.yaml"), "--no-progress", "--coherence", "none",
                 "--out-dir", str(out_dir)]) == 0
    _, rows = read_rows(tmp_path / "out.jsonl")
    for row in rows:
        assert row["kl"] is not None and row["kl"] >= 0, row["method"]
        if row["family"] == "sft":
            assert row["kl"] == pytest.approx(0.0, abs=1e-5)  # sampled at temperature 1: the SFT model itself
        if row["family"] == "bon":
            assert row["kl_bound"] == pytest.approx(math.log(4) - 3 / 4) and row["kl"] <= row["kl_bound"] + 1e-9
    assert (out_dir / "frontier.png").stat().st_size > 0
    table = (out_dir / "matched_kl.md").read_text()
    assert "| eft |" in table and "| tq-soft |" in table
    summary, text = report(tmp_path / "out.jsonl", kls=[0.5])
    assert "reward @ KL 0.5" in text and all(e["kl_se"] is not None for e in summary)


def test_demo_shows_reward_kl_compute_and_coherence_and_says_what_they_show(sft, baseline):
    import io

    from conftest import vowel_share

    from tqstar.cli.demo import run_demo, verdict
    from tqstar.engine import Engine
    from tqstar.reward import CallableReward

    out = io.StringIO()
    engine = Engine(sft, baseline, CallableReward(vowel_share))
    results = run_demo(max_new_tokens=4, k=3, block_len=2, rollout_len=2, bon_n=3,
                       prompts=["the cat sat", "tell me a story"], out=out, engine=engine,
                       coherence=lambda p, r: [0.5] * len(p))
    text = out.getvalue()
    assert list(results) == ["SFT", "baseline (DPO)", "best-of-3", "CD blockwise (k=3, m=2)", "TQ* blockwise (k=3, m=2)"]
    assert all(r.kl is not None for rs in results.values() for r in rs)
    answers = [line for line in text.splitlines() if line.startswith("  [")]
    assert len(answers) == 10 and all("| KL " in a and "| fwd " in a for a in answers) and "coherence 0.50" in text
    assert "| method | mean reward | mean KL | fwd tok/tok |" in text and "forward tokens per token" in text.splitlines()[-1]
    # the blocks' compute is what they ran: more forward tokens per token than plain SFT sampling
    row = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
    assert float(row["CD blockwise (k=3, m=2)"][4]) > float(row["SFT"][4])
    means = {"SFT": (0.1, 0.0, 2.6, 0.5), "baseline (DPO)": (0.4, 2.0, 3.6, 0.5), "best-of-40": (0.88, 2.7, 40, 0.5),
             "CD blockwise (k=24, m=12)": (0.89, 3.1, 36, 0.5), "TQ* blockwise (k=24, m=12)": (0.80, 2.9, 80, 0.5)}
    sentence = verdict(means)
    assert sentence.startswith("CD blockwise (k=24, m=12) streams its answer and reaches +0.890 at KL 3.1 with 36")
    assert "as much reward as best-of-40 or more, within a nat of its KL, for no more compute" in sentence
    means["CD blockwise (k=24, m=12)"] = (0.70, 3.1, 36, 0.5)
    assert "less reward than best-of-40 (+0.880)" in verdict(means)
    means["CD blockwise (k=24, m=12)"] = (0.95, 5.0, 36, 0.5)
    assert "but at more KL or compute" in verdict(means)


def _scored(method, family, prompt, kl, reward, fwd, **params):
    """A result row with what the best-of-N comparison reads: 10 tokens, ``fwd`` forward tokens per token."""
    return {**_row(method, family, prompt, kl, reward), "token_ids": list(range(10)), "params": params,
            "accounting": {"sft_forward_tokens": int(fwd * 10), "baseline_forward_tokens": 0, "rollouts": 0,
                           "reward_calls": 0, "wall_time_s": 0.0}}


def test_every_method_is_set_beside_best_of_n_at_its_kl_and_at_its_compute():
    from tqstar.eval.frontier import against_bon, format_against_bon

    rows = [  # SFT (N = 1), bon-4 and bon-16 over two prompts, and one blockwise method
        _scored("sft", "sft", 0, 0.0, 0.0, 1, temperature=1.0), _scored("sft", "sft", 1, 0.0, 0.2, 1, temperature=1.0),
        _scored("bon-4", "bon", 0, 1.0, 0.4, 4, bon_n=4), _scored("bon-4", "bon", 1, 0.6, 0.6, 4, bon_n=4),
        _scored("bon-16", "bon", 0, 2.0, 0.8, 16, bon_n=16), _scored("bon-16", "bon", 1, 1.6, 0.6, 16, bon_n=16),
        _scored("blk", "tq-direct", 0, 1.2, 0.9, 10), _scored("blk", "tq-direct", 1, 1.4, 0.7, 10),
        _scored("far", "cd", 0, 9.0, 1.0, 40), _scored("far", "cd", 1, 9.0, 1.0, 40),
    ]
    summary = report_rows_summary(rows)
    (blk, far) = against_bon(rows, summary)
    # mean BoN KL: N=1 → 0, N=4 → 0.8, N=16 → 1.8; blk's mean KL 1.3 lies halfway from N=4 to N=16 (N = 10)
    assert blk["kl_n"] == pytest.approx(10.0)
    # per prompt, BoN halfway: prompt 0 (0.4 + 0.8)/2 = 0.6, prompt 1 0.6 → Δ = (0.3, 0.1): 0.2 ± 0.1
    assert blk["kl_bon"] == pytest.approx(0.6) and blk["kl_diff"] == pytest.approx(0.2)
    assert blk["kl_diff_se"] == pytest.approx(0.1)
    # compute: 10 forward tokens per token is half-way from N=4 (4) to N=16 (16) → N = 10, the same rewards
    assert blk["fwd_n"] == pytest.approx(10.0) and blk["fwd_diff"] == pytest.approx(0.2)
    # beyond the largest N run: nothing to compare with, never extrapolated
    assert far["kl_n"] is None and far["fwd_n"] is None
    text = format_against_bon([blk, far])
    assert "+0.200 ± 0.100 (2)" in text and "not in the BoN range run" in text
    assert against_bon([r for r in rows if r["family"] != "bon"], summary) == []  # one N is no curve
    # best-of-N whose KL is not tracked (another policy or temperature) is no curve either, and no error
    untracked = [{**r, "kl": None} if r["family"] == "bon" else r for r in rows]
    assert against_bon(untracked, report_rows_summary(untracked)) == []


def report_rows_summary(rows):
    from tqstar.eval.report import summarise

    return summarise([{**r, "prompt": "p", "text": "t"} for r in rows], "sft")


def test_files_merge_when_a_method_differs_only_in_what_has_no_effect_on_it(tmp_path):
    """An sft row written before `tail` existed (so: tail off) and one written after (tail mean): the tail has no
    effect on plain decoding, so the two files are one configuration of sft; a field that acts (k on cd) is not."""
    from tqstar.eval.report import merge_files

    def write(name, *rows):
        header = {"format": "tqstar-eval/1", "config": {"prompts": ["a", "b"], "sft": "built-in tiny"}}
        base = {"prompt": "a", "text": "t", "reward": 0.5, "token_ids": [1], "kl": 0.0, "kl_bound": None, "scores": {},
                "accounting": {"sft_forward_tokens": 1, "baseline_forward_tokens": 0, "rollouts": 0,
                               "reward_calls": 0, "wall_time_s": 0.1}}
        (tmp_path / name).write_text("\n".join(json.dumps(x) for x in [header, *[{**base, **r} for r in rows]]) + "\n")
        return tmp_path / name

    old = write("old.jsonl", {"method": "sft", "prompt_index": 0, "params": {"method": "sft", "k": 5}})
    new = write("new.jsonl", {"method": "sft", "prompt_index": 1, "params": {"method": "sft", "k": 5, "tail": "mean"}},
                {"method": "cd", "prompt_index": 1, "params": {"method": "cd", "k": 5}})
    assert {(r["method"], r["prompt_index"]) for r in merge_files([old, new])} == {("sft", 0), ("sft", 1), ("cd", 1)}
    other = write("other.jsonl", {"method": "cd", "prompt_index": 0, "params": {"method": "cd", "k": 3}})
    with pytest.raises(Exception, match="from different configurations"):
        merge_files([new, other])



def test_a_repeated_row_that_is_another_sample_is_said_to_be_one(tmp_path, caplog):
    """Two runs of one configuration can differ in a row (the 12-prompt SFT rows of frontier-direct-tail and
    frontier-direct-blocks differ in one prompt): the merge counts the first, and says the other was another sample,
    not a repeat."""
    from tqstar.eval.report import merge_files

    def write(name, token, kl=0.0):
        header = {"format": "tqstar-eval/1", "config": {"prompts": ["a"], "sft": "built-in tiny"}}
        row = {"prompt": "a", "text": "t", "reward": 0.5, "token_ids": [token], "kl": kl, "scores": {}, "method": "sft",
               "prompt_index": 0, "params": {"method": "sft"},
               "accounting": {"sft_forward_tokens": 1, "baseline_forward_tokens": 0, "rollouts": 0,
                              "reward_calls": 0, "wall_time_s": 0.1}}
        (tmp_path / name).write_text(json.dumps(header) + "\n" + json.dumps(row) + "\n")
        return tmp_path / name

    caplog.clear()
    assert [r["token_ids"] for r in merge_files([write("a.jsonl", 1), write("b.jsonl", 1, kl=1e-9)])] == [[1]]
    assert "counting each once" in caplog.text and "another sample" not in caplog.text  # a KL's float noise
    caplog.clear()
    assert [r["token_ids"] for r in merge_files([write("a.jsonl", 1), write("c.jsonl", 2)])] == [[1]]
    assert "(the first read; 1 of them are another sample, with other tokens)" in caplog.text


def test_best_of_n_rows_the_curve_cannot_use_are_left_out_not_a_crash_or_a_method():
    """Odd files a user may report (review of 2026-12-05): a BoN row with no KL, BoN N that ran on no common prompt,
    and a BoN whose rewards are all null — the curve keeps what it can use, BoN itself is never set beside BoN, and
    best-of-N of the baseline's samples (another curve) is compared as a method."""
    from tqstar.eval.frontier import against_bon

    sft = [_scored("sft", "sft", i, 0.0, 0.1 * i, 1, temperature=1.0) for i in (0, 1)]
    bon4 = [_scored("bon-4", "bon", i, 0.8, 0.5, 4, bon_n=4, temperature=1.0) for i in (0, 1)]
    bon16 = [_scored("bon-16", "bon", i, 1.8, 0.7, 16, bon_n=16, temperature=1.0) for i in (0, 1)]
    blk = [_scored("blk", "cd", i, 1.3, 0.9, 10) for i in (0, 1)]
    summary = report_rows_summary(sft + bon4 + bon16 + blk)
    no_kl = [{**r, "kl": None} for r in bon4]
    assert [e["method"] for e in against_bon(sft + no_kl + bon16 + blk, summary)] == ["blk"]
    assert against_bon(sft[:1] + bon16[1:] + blk, summary) == []  # N = 1 and N = 16 share no prompt
    no_reward = [{**r, "reward": None} for r in bon16]
    assert [e["method"] for e in against_bon(sft + bon4 + no_reward + blk, summary)] == ["blk"]
    of_baseline = [{**r, "method": "bon-16-bl", "params": {**r["params"], "bon_policy": "baseline"}} for r in bon16]
    table = against_bon(sft + bon4 + bon16 + of_baseline + blk, report_rows_summary(sft + bon4 + bon16 + of_baseline
                                                                                     + blk))
    assert [e["method"] for e in table] == ["bon-16-bl", "blk"] and table[1]["kl_n"] == pytest.approx(10.0)
