"""``tqstar report``: the table and plots of an evaluation file.

Per method (one row each): prompts, mean target reward ± standard error, the normalised reward
(r − r_min)/(r_ref − r_min) with r_min the reference method's mean (SFT by default: 0) and r_ref the mean of
the ``normalise_to`` method (the aligned baseline by default: 1), i.e. the share of the baseline's gain a
method recovers,
win / tie rates against the reference under each judge, diversity, coherence, KL to the SFT model (sum of the
per-step KLs), what that KL is (``kl_is``: ``exact`` per-step KLs, or a selection ``estimate`` for blockwise
decisions and best-of-N; :data:`tqstar.state.KL_KINDS`) and the summed bound beside it, response length, and compute
per generated token (forward tokens, rollouts, reward calls, wall seconds).

Plots (PNG): reward vs KL across α for each token-level method family, and a bar chart of mean reward per
method with standard-error bars.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._checks import check_reals
from .._files import OutDir, read_bytes
from ..errors import ConfigError, preview
from ..methods import BY_NAME, NEEDS
from ..params import DecodeParams
from ..state import KL_KINDS
from .frontier import (
    against_bon,
    auto_kls,
    family_label,
    format_against_bon,
    format_matched,
    matched_kl,
    plot_frontier,
)
from .metrics import diversity, mean_and_stderr, normalised_reward, win_tie
from .results import RESULTS_FIX, acting, canonical, first_difference, read_rows

log = logging.getLogger("tqstar")

ROW_FIELDS = ("prompt", "text", "token_ids", "accounting")  # what a table needs of every row
ACCOUNTING = ("sft_forward_tokens", "baseline_forward_tokens", "rollouts", "reward_calls", "wall_time_s")


def _number(value: Any, none: bool = True) -> bool:
    return (value is None and none) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                         and math.isfinite(value))


#: what each field a table reads must hold: (check, what the message says it must be)
ROW_TYPES: dict[str, tuple[Any, str]] = {
    "prompt": (lambda v: isinstance(v, str), "a string"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "token_ids": (lambda v: isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v),
                  "a list of token ids"),
    "accounting": (lambda v: isinstance(v, dict) and all(_number(v.get(k), none=False) for k in ACCOUNTING)
                   and _number(v.get("batch_size", 1), none=False) and v.get("batch_size", 1) > 0,
                   "a mapping of " + ", ".join(ACCOUNTING) + " to numbers"),
    "reward": (_number, "a finite number or null"),
    "kl": (_number, "a finite number or null"),
    "kl_bound": (_number, "a finite number or null"),
    "kl_kind": (lambda v: v is None or v in KL_KINDS, "one of " + ", ".join(KL_KINDS) + " or null"),
    "alpha": (_number, "a finite number or null"),
    "scores": (lambda v: v is None or (isinstance(v, dict) and all(_number(x, none=False) for x in v.values())),
               "a mapping of judge names to numbers"),
    "params": (lambda v: v is None or isinstance(v, dict), "a mapping of decoding parameters"),
    "family": (lambda v: v is None or isinstance(v, str), "a method name"),
}
COLUMNS = ["method", "n", "reward", "reward_se", "normalised", "diversity", "coherence", "kl", "kl_se", "kl_is",
           "kl_bound", "length", "fwd_tok_per_tok", "rollouts_per_tok", "reward_calls_per_tok", "s_per_tok"]


def summarise(rows: Sequence[dict[str, Any]], reference: str, coherence=None, llm_judge=None,
              normalise_to: str | None = None) -> list[dict[str, Any]]:
    """One summary row per method (in first-seen order); ``coherence(prompts, responses)`` and an
    :class:`~tqstar.eval.judge.LLMJudge` (pairwise against the reference) are optional."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    if reference not in by_method:
        raise ConfigError(f"reference method {reference!r} is not in the results (methods: {', '.join(by_method)});"
                          " pick one of them with --reference")
    ref_by_prompt = {r["prompt_index"]: r for r in by_method[reference]}
    judges = sorted({name for row in rows for name in (row.get("scores") or {})})
    table = []
    for method, items in by_method.items():
        items = sorted(items, key=lambda r: r["prompt_index"])
        rewards = [r["reward"] for r in items if r.get("reward") is not None]
        mean, se = mean_and_stderr(rewards)
        tokens = sum(len(r["token_ids"]) for r in items) or 1
        acct = [r["accounting"] for r in items]
        kls = [r["kl"] for r in items if r.get("kl") is not None]
        bounds = [r["kl_bound"] for r in items if r.get("kl_bound") is not None]
        entry: dict[str, Any] = {
            "method": method,
            "family": items[0].get("family", method),
            "alpha": items[0].get("alpha"),
            "n": len(items),
            "reward": mean,
            "reward_se": se,
            "diversity": sum(diversity(r["text"]) for r in items) / len(items),
            "kl": sum(kls) / len(kls) if kls else None,
            "kl_se": mean_and_stderr(kls)[1] if kls else None,
            "kl_is": "/".join(sorted({r["kl_kind"] for r in items if r.get("kl_kind")})) or None,
            "family_label": family_label(items[0]),
            "kl_bound": sum(bounds) / len(bounds) if bounds else None,
            "length": tokens / len(items),
            "fwd_tok_per_tok": sum(a["sft_forward_tokens"] + a["baseline_forward_tokens"] for a in acct) / tokens,
            "rollouts_per_tok": sum(a["rollouts"] for a in acct) / tokens,
            "reward_calls_per_tok": sum(a["reward_calls"] for a in acct) / tokens,
            # prompts decoded together share their wall time
            "s_per_tok": sum(a["wall_time_s"] / a.get("batch_size", 1) for a in acct) / tokens,
        }
        if coherence is not None:
            entry["coherence"] = sum(coherence([r["prompt"] for r in items], [r["text"] for r in items])) / len(items)
        if llm_judge is not None and method != reference:
            paired_rows = [(r, ref_by_prompt[r["prompt_index"]]) for r in items if r["prompt_index"] in ref_by_prompt]
            verdicts = llm_judge.compare([r["prompt"] for r, _ in paired_rows], [r["text"] for r, _ in paired_rows],
                                         [ref["text"] for _, ref in paired_rows])
            entry.update({f"llm_{key}": value for key, value in verdicts.items()})
        for judge in judges:
            paired = [(r["scores"][judge], ref_by_prompt[r["prompt_index"]]["scores"][judge]) for r in items
                      if judge in (r.get("scores") or {}) and r["prompt_index"] in ref_by_prompt]
            result = win_tie([a for a, _ in paired], [b for _, b in paired])
            entry[f"win[{judge}]"], entry[f"tie[{judge}]"] = result["win"], result["tie"]
        table.append(entry)
    means = {e["method"]: e["reward"] for e in table}
    top = normalise_to or ("baseline" if "baseline" in means else max(means, key=means.get))
    if top not in means:
        raise ConfigError(f"method {top!r} to normalise to is not in the results (methods: {', '.join(means)})")
    for entry in table:
        entry["normalised"] = normalised_reward(entry["reward"], means[reference], means[top])
    return table


def columns(table: Sequence[dict[str, Any]]) -> list[str]:
    extra = sorted({k for e in table for k in e if k.startswith(("win[", "tie[", "llm_"))})
    return [c for c in COLUMNS if any(c in e for e in table)] + extra


def format_table(table: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    cols = columns(table)
    cells = [[_cell(e.get(c)) for c in cols] for e in table]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(table: Sequence[dict[str, Any]], path: str | Path) -> None:
    cols = columns(table)
    with Path(path).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)


def plot(table: Sequence[dict[str, Any]], out_dir: str | Path, title: str = "") -> list[Path]:
    """reward-vs-KL (token-level families across α) and a reward bar chart; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in table:
        if e.get("kl") is not None and e.get("alpha") is not None:
            families[e["family"]].append(e)
    if families:
        fig, ax = plt.subplots(figsize=(6, 4))
        for family, items in families.items():
            items = sorted(items, key=lambda e: e["alpha"])
            ax.errorbar([e["kl"] for e in items], [e["reward"] for e in items],
                        yerr=[e["reward_se"] for e in items], marker="o", capsize=3, label=family)
            for e in items:
                ax.annotate(f"α={e['alpha']:g}", (e["kl"], e["reward"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel("KL(π_dec ‖ π_sft) per response (nats)")
        ax.set_ylabel("mean target reward")
        ax.set_title(title or "reward vs KL across α")
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "reward_vs_kl.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(table)), 4))
    ax.bar(range(len(table)), [e["reward"] for e in table], yerr=[e["reward_se"] for e in table], capsize=3)
    ax.set_xticks(range(len(table)), [e["method"] for e in table], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("mean target reward (± s.e. over prompts)")
    ax.set_title(title or "reward per method")
    fig.tight_layout()
    paths.append(out_dir / "reward_by_method.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


#: What the report writes into ``--out-dir``; it replaces a file of these names only when its manifest proves
#: tqstar wrote it (:class:`tqstar._files.OutDir`).
OUTPUTS = ("table.md", "table.csv", "reward_vs_kl.png", "reward_by_method.png", "matched_kl.md", "frontier.png",
           "vs_bon.md")


def check_out_dir(out_dir: str | Path) -> None:
    """Raise :class:`ConfigError` if ``out_dir`` holds a file under one of the names the report writes that tqstar
    did not write (or that was changed since), so a user's own ``table.md`` is never replaced."""
    OutDir(out_dir, "report").check(OUTPUTS)


def report(paths: str | Path | Sequence[str | Path], *, reference: str = "sft", out_dir: str | Path | None = None,
           coherence=None, title: str = "", llm_judge=None,
           kls: Sequence[float] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Summarise one or more evaluation files (over the same prompts); with ``out_dir`` also write table.md,
    table.csv and the plots there. When methods were swept over α with a KL on every row, the text and
    ``matched_kl.md`` add the reward at matched KL (:mod:`tqstar.eval.frontier`; ``kls`` the targets, default
    :func:`~tqstar.eval.frontier.auto_kls`); when best-of-N ran at two or more N (SFT sampled at temperature 1 counts as
    N = 1), ``vs_bon.md`` sets every other method beside best-of-N at its KL and at its compute
    (:func:`~tqstar.eval.frontier.against_bon`); ``frontier.png`` is the reward–KL plot of every method with a KL."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return report_rows(merge_files(paths), reference=reference, out_dir=out_dir, coherence=coherence, title=title,
                       llm_judge=llm_judge, kls=kls)


def report_rows(rows: Sequence[dict[str, Any]], *, reference: str = "sft", out_dir: str | Path | None = None,
                coherence=None, title: str = "", llm_judge=None,
                kls: Sequence[float] | None = None) -> tuple[list[dict[str, Any]], str]:
    """:func:`report` of rows already read (see :func:`merge_files`)."""
    if kls is not None:
        check_reals(kls, "kls")
    table = summarise(rows, reference, coherence, llm_judge)
    text = format_table(table)
    kls = list(kls) if kls else auto_kls(rows)
    matched = matched_kl(rows, kls) if kls else []
    if matched:
        text += ("\n\nreward at matched KL (interpolated along each prompt's own α sweep, then averaged over the prompts"
                 " that reach it; ± s.e. over those prompts):\n" + format_matched(matched, markdown=False))
    versus = against_bon(rows, table)
    if versus:
        text += ("\n\nagainst best-of-N of this run at the same mean KL and at the same forward tokens per token (N"
                 " interpolated; Δ: the method's reward minus BoN's, paired per prompt, ± s.e.):\n"
                 + format_against_bon(versus, markdown=False))
    if out_dir is not None:
        write_outputs(out_dir, table, matched, title, versus)
    return table, text


def write_outputs(out_dir: str | Path, table: Sequence[dict[str, Any]], matched, title: str, versus=()) -> None:
    """Write table.md, table.csv, the plots (and the matched-KL table, the best-of-N comparison and the frontier)
    into ``out_dir``: made in a
    temporary folder there, then put in place by :class:`~tqstar._files.OutDir` (checked, hashed, recorded)."""
    out = OutDir(out_dir, "report")
    out.check(OUTPUTS)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tqstar-report.") as tmp:
        made = Path(tmp)
        (made / "table.md").write_text(format_table(table, markdown=True) + "\n")
        write_csv(table, made / "table.csv")
        plot(table, made, title)
        if matched:
            (made / "matched_kl.md").write_text(format_matched(matched) + "\n")
        if versus:
            (made / "vs_bon.md").write_text(format_against_bon(versus) + "\n")
        if matched or versus:
            plot_frontier(table, made / "frontier.png", title)
        out.install({name: made / name for name in OUTPUTS if (made / name).exists()})


#: What the rows of every merged file must share, besides their prompts: ``config`` key -> how a message names it.
#: ``baseline`` and ``baseline_reward`` count only between files whose methods use them (a file of peers that run
#: no baseline merges with one that does).
SHARED = {"sft": "SFT model", "reward": "target reward", "judges": "judges",
          "baseline": "baseline", "baseline_reward": "baseline reward"}
#: The decoding settings every compared response must share across files: the budget and the stop strings it was
#: cut at (a method's other parameters are its own, and a label from two configurations is refused as such).
DECODING = {"max_new_tokens": "response budget", "stop": "stop strings"}


def merge_files(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of evaluation files over one prompt set, each (method, prompt) once.

    Refused, naming both values and both files: files over other prompts, scored by another target reward, decoded
    from another SFT model (or, between files whose methods use one, another baseline or baseline reward), judged by
    other judges, or whose responses had another budget or stop strings; a file given twice; and a method label in
    two files that came from different configurations. There is no ``--report-anyway``: such a table mixes numbers
    that do not compare (every ``normalised`` value changes with the reward) and nothing in it would say so; report
    each file alone, or, knowing what you do, assemble the rows yourself and call :func:`report_rows`. Rows repeated
    within or across files of one configuration (e.g. two runs that appended at once, before runs were locked) are
    counted once, with a note on stderr.
    """
    seen_paths: dict[Path, str | Path] = {}
    rows: list[dict[str, Any]] = []
    kept: dict[tuple[str, int], dict[str, Any]] = {}  # (method, prompt) -> the row counted
    origin: dict[str, tuple[str | Path, dict[str, Any]]] = {}  # label -> (file, its configuration)
    first: dict[str, tuple[str | Path, Any]] = {}  # a shared setting -> (the first file that fixed it, its value)
    defaults = asdict(DecodeParams())
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen_paths:
            raise ConfigError(f"results file {str(path)!r} is given twice; give each file once")
        seen_paths[resolved] = path
        read_bytes(path, "results file", RESULTS_FIX)  # exists, is a readable file
        header, part = read_rows(path)
        if not part or header is None:
            raise ConfigError(f"{str(path)!r} has no result rows; run tqstar eval first")
        config = header["config"]
        _check_shape(path, config, part)
        uses = set().union(*(_needs(row, config) for row in part))
        settings = {"prompts": config.get("prompts"), **{key: config.get(key) for key in SHARED
                                                          if key not in ("baseline", "baseline_reward") or key in uses}}
        for row in part:
            params = {**defaults, **(row.get("params") or config.get("methods", {}).get(row["method"]) or {})}
            settings.update({key: params.get(key) for key in DECODING})
            _same(first, path, settings)
        shared = {k: v for k, v in config.items() if k not in ("methods", "prompts")}
        duplicates = differ = 0
        for row in part:
            label = row["method"]
            mine = {**shared, "params": acting(row.get("params") or config.get("methods", {}).get(label))}
            first_file, first_config = origin.setdefault(label, (path, mine))
            if canonical(first_config) != canonical(mine):
                where = "twice in " + repr(str(path)) if first_file == path else (
                    f"in both {str(first_file)!r} and {str(path)!r}")
                raise ConfigError(f"method {label!r} appears {where} from different configurations"
                                  f" ({first_difference(first_config, mine)}); report them separately, or give one run"
                                  " another `label`")

            key = (label, row["prompt_index"])
            if key in kept:
                duplicates += 1
                differ += kept[key].get("token_ids") != row.get("token_ids")  # (a KL may differ in float noise alone)
                continue
            kept[key] = row
            rows.append(row)
        if duplicates:
            log.warning(f"{path} repeats {duplicates} (method, prompt) rows already read; counting each once"
                        + (f" (the first read; {differ} of them are another sample, with other tokens)"
                           if differ else ""))
    return rows


def _check_shape(path: str | Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Raise :class:`ConfigError` unless the header's ``prompts`` and ``methods`` and every row's fields have the
    shapes a table reads (a file tqstar wrote always does; an edited or damaged one may not)."""
    fix = "the file was edited or damaged: rerun tqstar eval on a fresh --output"
    if not isinstance(config.get("prompts"), list) or not isinstance(config.get("methods", {}), dict):
        raise ConfigError(f"the header of {str(path)!r} has no list of `prompts` or no mapping of `methods`; {fix}")
    for row in rows:
        where = f"the row of method {row['method']!r}, prompt {row['prompt_index']} in {str(path)!r}"
        missing = next((k for k in ROW_FIELDS if k not in row), None)
        if missing is not None:
            raise ConfigError(f"{where} has no `{missing}`; {fix}")
        wrong = next((k for k, (ok, _) in ROW_TYPES.items() if k in row and not ok(row[k])), None)
        if wrong is not None:
            raise ConfigError(f"{where} has `{wrong}` = {preview(canonical(row[wrong]), 40)}, not"
                              f" {ROW_TYPES[wrong][1]}; {fix}")


def _needs(row: dict[str, Any], config: dict[str, Any]) -> set[str]:
    """What the row's method needs besides the SFT model (every need, for a method this version does not know)."""
    params = row.get("params") or config.get("methods", {}).get(row["method"]) or {}
    name = params.get("method", row.get("family"))
    if name not in BY_NAME:
        return set(NEEDS)
    sampled = {"baseline"} if BY_NAME[name].kind == "best-of-n" and params.get("bon_policy") == "baseline" else set()
    return set(BY_NAME[name].needs) | sampled


def _same(first: dict[str, tuple[str | Path, Any]], path: str | Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` of the file ``path``; raise :class:`ConfigError` naming both values and both files when
    an earlier file fixed one of them otherwise."""
    for key, value in settings.items():
        other, before = first.setdefault(key, (path, value))
        if other != path and canonical(before) != canonical(value):
            what = {"prompts": "prompt set", **SHARED, **DECODING}[key]
            mine, theirs = _shown(key, value, before)
            raise ConfigError(f"{str(path)!r} and {str(other)!r} differ in the {what} (`{key}`): {mine} vs {theirs};"
                              f" report files of one {what} together (each file alone otherwise)", param=key)


def _shown(key: str, value: Any, other: Any) -> tuple[str, str]:
    """The two values of ``key`` as a message shows them: a prompt list by its size or first differing prompt, two
    specs by the fields that differ (JSON, cut to one line)."""
    if key == "prompts" and isinstance(value, list) and isinstance(other, list):
        if len(value) != len(other):
            return f"{len(value)} prompts", f"{len(other)}"
        i = next(i for i, (a, b) in enumerate(zip(value, other)) if canonical(a) != canonical(b))
        return f"prompt {i} is {preview(str(value[i]))}", preview(str(other[i]))
    if isinstance(value, dict) and isinstance(other, dict):  # a spec: only the fields that differ
        differ = [k for k in sorted(set(value) | set(other)) if canonical(value.get(k)) != canonical(other.get(k))]
        value, other = {k: value.get(k) for k in differ}, {k: other.get(k) for k in differ}

    def one(v: Any) -> str:
        return preview(v, 80) if isinstance(v, str) else preview(canonical(v), 80) if isinstance(v, (dict, list)) \
            else repr(v)

    return one(value), one(other)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
