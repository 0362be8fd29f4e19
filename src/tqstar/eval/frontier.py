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
    for e in singles:
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
