"""Reward–KL frontiers of an evaluation: matched-KL rewards interpolated per prompt, and the frontier plot.

Every method records KL(π_dec ‖ π_sft) summed over the steps of its own response (:class:`~tqstar.state.Response`);
under *sampled* decoding at temperature 1 that sum is an unbiased single-sample estimate of the sequence KL
KL(ρ_dec ‖ ρ_sft) (the expectation of Σ_t KL(π_dec(·|s_t) ‖ π_sft(·|s_t)) along ρ_dec's own paths is exactly it).
Best-of-N reports a tie-aware estimate beside its bound log N − (N−1)/N.

The matched-KL table reads each α-swept method's reward at a few target KLs: for every prompt, along that
prompt's own α sweep, starting from its α = 0 point — the prompt's ``none`` row (top-k SFT sampling, whose KL is
the cost of the top-k restriction, −Σ_t log π_sft(top-k | s_t)) when the run has one, else its ``sft`` row (KL 0
at temperature 1) — linearly interpolated at the first crossing of the target; then averaged over the prompts whose sweep reaches the target,
with its standard error over those prompts. Averaging the α curves over prompts *before* interpolating mixes
prompts that spend KL at very different rates, which is why this module does not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from .metrics import mean_and_stderr


def interpolate_at(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The y at x = ``target`` on the polyline through ``points`` (in sweep order), at its first crossing; ``None``
    where the sweep never reaches ``target``."""
    for (k0, r0), (k1, r1) in zip(points, points[1:]):
        if min(k0, k1) <= target <= max(k0, k1) and k1 != k0:
            return r0 + (r1 - r0) * (target - k0) / (k1 - k0)
    return None


def swept_families(rows: Sequence[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """{family label: {prompt index: rows sorted by α}} for the token-level families run at more than one α with a
    KL on every row. A family is the method with its non-α parameters (two ``tq-soft`` sweeps with different N are
    two families), labelled by the method label without its ``(α=...)`` suffix."""
    families: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("alpha") is None or row.get("kl") is None:
            continue
        families[family_label(row)][row["prompt_index"]].append(row)
    out = {}
    for label, by_prompt in families.items():
        if len({r["alpha"] for rows_ in by_prompt.values() for r in rows_}) > 1:
            out[label] = {i: sorted(rs, key=lambda r: r["alpha"]) for i, rs in by_prompt.items()}
    return out


def family_label(row: dict[str, Any]) -> str:
    """A result row's method label without its ``(α=...)`` suffix."""
    label = str(row["method"])
    return label.split("(α=")[0] if "(α=" in label else label


def auto_kls(rows: Sequence[dict[str, Any]]) -> list[float]:
    """Three target KLs inside the range most prompts' sweeps cover: between lo, the largest over swept families of
    the median per-prompt lowest KL (the α = 0 anchor's, when run), and hi, the smallest over families of the lower
    quartile of the per-prompt highest KL — at ¼, ½ and ¾ of the way (two significant digits). When hi ≤ lo (noisy
    single samples), ¼, ½ and 1 × the smallest mean KL at a family's largest α."""
    anchors = _anchors(rows)
    lows, highs, tops = [], [], []
    for by_prompt in swept_families(rows).values():
        spans = [[r["kl"] for r in rs] + ([anchors[i]["kl"]] if i in anchors else []) for i, rs in by_prompt.items()]
        lows.append(_quantile([min(s) for s in spans], 0.5))
        highs.append(_quantile([max(s) for s in spans], 0.25))
        tops.append(sum(rs[-1]["kl"] for rs in by_prompt.values()) / len(by_prompt))
    if not tops:
        return []
    lo, hi = max(lows), min(highs)
    if hi > lo:
        return [float(f"{lo + (hi - lo) * f:.2g}") for f in (0.25, 0.5, 0.75)]
    return [float(f"{min(tops) * f:.2g}") for f in (0.25, 0.5, 1.0)]


def _quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear between order statistics)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _anchors(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The α = 0 point of each prompt: top-k SFT sampling (``none``) when run, else plain SFT."""
    anchors = {}
    for family in ("sft", "none"):
        anchors.update({r["prompt_index"]: r for r in rows if r.get("family") == family and r.get("kl") is not None
                        and r.get("reward") is not None})
    return anchors


def matched_kl(rows: Sequence[dict[str, Any]], kls: Sequence[float]) -> list[dict[str, Any]]:
    """Per swept family and target KL: the reward interpolated per prompt (see the module docstring), averaged
    over the prompts that reach it: {"family", "kl", "reward", "reward_se", "reached", "prompts"}."""
    anchors = _anchors(rows)
    table = []
    for family, by_prompt in swept_families(rows).items():
        for target in kls:
            values = []
            for i, sweep in by_prompt.items():
                points = [(anchors[i]["kl"], anchors[i]["reward"])] if i in anchors else []
                points += [(r["kl"], r["reward"]) for r in sweep]
                value = interpolate_at(points, target)
                if value is not None:
                    values.append(value)
            mean, se = mean_and_stderr(values)
            table.append({"family": family, "kl": target, "reward": mean if values else None,
                          "reward_se": se if values else None, "reached": len(values), "prompts": len(by_prompt)})
    return table


def format_matched(table: Sequence[dict[str, Any]], markdown: bool = True) -> str:
    """One row per family, one column per target KL: reward ± s.e. (prompts reaching that KL / prompts)."""
    kls = sorted({e["kl"] for e in table})
    families = list(dict.fromkeys(e["family"] for e in table))
    cell = {(e["family"], e["kl"]): e for e in table}

    def show(e: dict[str, Any]) -> str:
        if e["reward"] is None:
            return f"– (0/{e['prompts']})"
        return f"{e['reward']:.3f} ± {e['reward_se']:.3f} ({e['reached']}/{e['prompts']})"

    head = ["method"] + [f"reward @ KL {k:g}" for k in kls]
    body = [[f] + [show(cell[(f, k)]) for k in kls] for f in families]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[c]) for r in [head] + body) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in [head] + body)


def plot_frontier(summary: Sequence[dict[str, Any]], path, title: str = "") -> None:
    """Mean reward against mean KL per method, ± standard errors on both axes: a line per α-swept family (from
    SFT's point), a marker for every other method with a KL (baseline, best-of-N with its bound as an x-range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # twenty methods before a colour repeats
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in summary:
        if e.get("kl") is not None:
            families[e["family_label"] if e.get("alpha") is not None else e["method"]].append(e)
    singles = [e for items in families.values() if len({x.get("alpha") for x in items}) == 1 for e in items]
    families = {f: items for f, items in families.items() if len({x.get("alpha") for x in items}) > 1}
    sft = next((e for e in singles if e.get("family") == "none"), None) or next(
        (e for e in singles if e.get("family") == "sft"), None)  # the α = 0 point of the swept lines
    for family, items in families.items():
        items = ([sft] if sft else []) + sorted(items, key=lambda e: e["alpha"])
        ax.errorbar([e["kl"] for e in items], [e["reward"] for e in items], xerr=[e.get("kl_se") or 0 for e in items],
                    yerr=[e["reward_se"] for e in items], marker="o", ms=4, capsize=2, label=family)
        for e in items[1 if sft else 0:]:
            ax.annotate(f"{e['alpha']:g}", (e["kl"], e["reward"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    bons = sorted((e for e in singles if e.get("family") == "bon"), key=lambda e: e["kl"])
    if len(bons) > 1:  # best-of-N over N: one line from SFT (N = 1)
        line = [e for e in singles if e.get("family") == "sft"][:1] + bons
        ax.errorbar([e["kl"] for e in line], [e["reward"] for e in line], xerr=[e.get("kl_se") or 0 for e in line],
                    yerr=[e["reward_se"] for e in line], marker="D", ms=4, capsize=2, color="black", linestyle="--",
                    label="best-of-N (KL estimate)")
        for e in bons:
            ax.annotate(e["method"], (e["kl"], e["reward"]), fontsize=6, xytext=(2, -8), textcoords="offset points")
    for e in singles:
        if e.get("family") == "bon" and len(bons) > 1:
            if e.get("kl_bound") is not None:
                ax.plot([e["kl_bound"]], [e["reward"]], marker="|", ms=12, color="gray")
            continue
        if e is sft or e.get("family") in ("sft", "none"):
            ax.errorbar([e["kl"]], [e["reward"]], xerr=[e.get("kl_se") or 0], yerr=[e["reward_se"]], marker="s",
                        color="black" if e.get("family") == "sft" else "gray", capsize=2, label=f"{e['method']} (α = 0)")
            continue
        ax.errorbar([e["kl"]], [e["reward"]], xerr=[e.get("kl_se") or 0], yerr=[e["reward_se"]], marker="D",
                    capsize=2, linestyle="none",
                    label=f"{e['method']} (KL estimate)" if e.get("family") == "bon" else e["method"])
        if e.get("kl_bound") is not None and e.get("family") == "bon":
            ax.plot([e["kl_bound"]], [e["reward"]], marker="|", ms=12, color="gray", label=f"{e['method']} KL bound")
    ax.set_xlabel("KL(ρ_dec ‖ ρ_sft) per response, nats (sum of per-step KLs along the sampled path)")
    ax.set_ylabel("mean target reward")
    ax.set_title(title or "reward–KL frontier (sampled decoding; labels: α)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---- every method against best-of-N of the same KL and of the same compute ----------------------------------------
def curve_n(row: dict[str, Any]) -> int | None:
    """The N of a row that belongs on the best-of-N curve: best-of-N of SFT samples at temperature 1 (``bon`` family,
    ``bon_policy: sft``), or an SFT sample at temperature 1 (one SFT sample *is* best-of-1: KL 0); else ``None``
    (best-of-N of the baseline's samples is another curve, compared as a method)."""
    params = row.get("params") or {}
    if row.get("family") == "bon" and params.get("bon_n") and params.get("bon_policy", "sft") == "sft":
        return int(params["bon_n"]) if params.get("temperature", 1.0) == 1.0 else None  # bon never runs greedy
    return 1 if row.get("family") == "sft" and params.get("temperature") == 1.0 else None


def bon_curve(rows: Sequence[dict[str, Any]]) -> dict[int, dict[int, dict[str, Any]]]:
    """{N: {prompt index: row}} of the run's best-of-N rows with a reward and a KL (:func:`curve_n`, SFT's
    sampled rows as N = 1); empty unless at least two N."""
    curve: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        n = curve_n(row)
        if n is not None and row.get("reward") is not None and row.get("kl") is not None:
            curve[n][row["prompt_index"]] = row
    return dict(sorted(curve.items())) if len(curve) > 1 else {}


def fwd_per_token(row: dict[str, Any]) -> float:
    """Forward tokens (both models) per generated token of one result row."""
    acct = row["accounting"]
    return (acct["sft_forward_tokens"] + acct["baseline_forward_tokens"]) / max(len(row["token_ids"]), 1)


def against_bon(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every method with a KL against best-of-N of the same run at the same mean KL and at the same mean forward
    tokens per token.

    The best-of-N curve is the run's BoN rows over N (with SFT as N = 1, :func:`bon_curve`). For a method whose mean
    KL is κ, N_κ is where the curve of BoN's *mean* KL over N reaches κ (linear between the N that were run); each
    prompt's BoN reward at N_κ is interpolated between its own rows at those two N, and the method's advantage is
    the mean over prompts of (method's reward − BoN's reward at N_κ), with its standard error over the prompts —
    a paired difference, so prompt-to-prompt spread cancels. The same at matched forward tokens per token. A
    method beyond the largest N run is compared with nothing there (``None``), never extrapolated.
    Returns [{"method", "reward", "reward_se", "kl", "fwd", "prompts", "kl_n", "kl_bon", "kl_diff", "kl_diff_se",
    "fwd_n", "fwd_bon", "fwd_diff", "fwd_diff_se"}] (the ``kl_*``/``fwd_*`` entries ``None`` where not reached)."""
    curve = bon_curve(rows)
    prompts = set.intersection(*(set(by_prompt) for by_prompt in curve.values())) if curve else set()
    if not prompts:  # no curve, or no prompt that every N (with a reward and a KL) ran on
        return []
    ns = list(curve)
    means = {"kl": [sum(curve[n][i]["kl"] for i in prompts) / len(prompts) for n in ns],
             "fwd": [sum(fwd_per_token(curve[n][i]) for i in prompts) / len(prompts) for n in ns]}
    by_method: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_method[row["method"]][row["prompt_index"]] = row
    on_curve = {row["method"] for row in rows if curve_n(row) is not None}  # BoN itself, with or without rewards
    table = []
    for entry in summary:
        if entry.get("kl") is None or entry["method"] in on_curve:
            continue
        mine = {i: r for i, r in by_method[entry["method"]].items() if i in prompts and r.get("reward") is not None}
        out = {"method": entry["method"], "reward": entry["reward"], "reward_se": entry["reward_se"],
               "kl": entry["kl"], "fwd": entry["fwd_tok_per_tok"], "prompts": len(mine)}
        for axis, target in (("kl", entry["kl"]), ("fwd", entry["fwd_tok_per_tok"])):
            out.update({f"{axis}_n": None, f"{axis}_bon": None, f"{axis}_diff": None, f"{axis}_diff_se": None})
            at = _bracket(means[axis], target)
            if at is None or not mine:
                continue
            j, w = at  # target = (1 − w)·means[j] + w·means[j + 1]
            bon = {i: (1 - w) * curve[ns[j]][i]["reward"] + w * curve[ns[min(j + 1, len(ns) - 1)]][i]["reward"]
                   for i in mine}
            diff, diff_se = mean_and_stderr([mine[i]["reward"] - bon[i] for i in mine])
            out.update({f"{axis}_n": ns[j] + w * (ns[min(j + 1, len(ns) - 1)] - ns[j]),
                        f"{axis}_bon": sum(bon.values()) / len(bon), f"{axis}_diff": diff, f"{axis}_diff_se": diff_se})
        table.append(out)
    return table


def _bracket(values: Sequence[float], target: float) -> tuple[int, float] | None:
    """(j, w) with target = (1 − w)·values[j] + w·values[j + 1] at the first segment that holds it (values rising in
    N); ``None`` beyond the last value or below the first."""
    for j, (lo, hi) in enumerate(zip(values, values[1:])):
        if lo <= target <= hi:
            return j, (target - lo) / (hi - lo) if hi > lo else 0.0
    if values and target == values[-1]:
        return len(values) - 1, 0.0
    return None


def format_against_bon(table: Sequence[dict[str, Any]], markdown: bool = True) -> str:
    """One row per method: its reward, KL and compute, then best-of-N at its KL and at its compute (the N, BoN's
    reward, and the method's paired advantage ± s.e.; "beyond N = …" where the method lies past the largest N)."""
    head = ["method", "reward ± s.e.", "KL", "fwd tok/tok", "BoN @ same KL (N)", "Δ reward @ same KL",
            "BoN @ same fwd (N)", "Δ reward @ same fwd"]

    def side(e: dict[str, Any], axis: str) -> list[str]:
        if e[f"{axis}_n"] is None:
            return ["not in the BoN range run", "–"]
        return [f"{e[f'{axis}_bon']:.3f} ({e[f'{axis}_n']:.1f})",
                f"{e[f'{axis}_diff']:+.3f} ± {e[f'{axis}_diff_se']:.3f} ({e['prompts']})"]

    body = [[e["method"], f"{e['reward']:.3f} ± {e['reward_se']:.3f}", f"{e['kl']:.2f}", f"{e['fwd']:.1f}"]
            + side(e, "kl") + side(e, "fwd") for e in table]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[c]) for r in [head] + body) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in [head] + body)
