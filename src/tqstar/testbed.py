"""The exact testbed: tabular models where the true Q, the optimal policy and every method's expected reward
and KL are computed by enumerating all trajectories — so correctness is checked against mathematics.

Definitions (y a complete response, ending with EOS; r reads its text, EOS dropped):

* Q^π(s, z) = E_{y ~ π(· | s, z)}[r(s, z, y)], with Q^π(s, EOS) = r(s).
* The KL-regularised optimum ρ*_r(y) ∝ ρ_sft(y)·exp(r(y)/β); token-level: π*(z|s) = π_sft(z|s)·W(s z)/W(s) with
  W(s) = E_{y ~ π_sft(· | s)}[exp(r(s y)/β)].
* A token-level decoding policy: π_dec(· | s) from the decoder's own rule, softmax((log π_sft + α·Q̂)/T) over
  the top-k (argmax for T = 0), with Q̂ the exact value of the method:
  TQ* direct → Q^{π_baseline}; CD → Q^{π_sft}; ARGS → r(s z); none → 0.
* E_ρ[r] and KL(ρ ‖ ρ_sft) = E_ρ[log ρ(y) − log ρ_sft(y)] by enumeration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from .decoder import decision_logprobs
from .lm.tabular import EOS, TabularLM, prefixes
from .reward import Reward

RewardFn = Callable[[tuple[int, ...]], float]


class TabularReward(Reward):
    """A reward over a tabular model's texts, read from ``fn(tokens)`` on the response's token ids."""

    def __init__(self, fn: RewardFn, lm: TabularLM, name: str = "tabular-reward",
                 range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        self.fn, self.lm, self.name, self.range = fn, lm, name, range

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [self.fn(self.lm.encode_text(t)) for t in responses]


def random_reward(vocab_size: int, horizon: int, *, seed: int = 0, noise: float = 0.3) -> RewardFn:
    """A random reward in [0, 1] on token tuples (partial ones too, for ARGS).

    r(y) = clip(mean per-token utility u(y_t) + noise·g(y), 0, 1) with u ~ U(0, 1) per token and g ~ U(−½, ½)
    per sequence: partial text carries signal about the full text (as with real rewards), but not all of it.
    """
    g = torch.Generator().manual_seed(seed + 7919)
    utility = torch.rand(vocab_size, generator=g).tolist()
    table = {}
    for prefix in list(prefixes(vocab_size, horizon + 1)):
        table[prefix] = float(torch.rand(1, generator=g)) - 0.5

    def reward(tokens: tuple[int, ...]) -> float:
        tokens = tuple(t for t in tokens if t != EOS)
        base = sum(utility[t] for t in tokens) / horizon if tokens else 0.5 * utility[EOS]
        return min(1.0, max(0.0, base + noise * table.get(tokens, 0.0)))

    return reward


# ---- enumeration --------------------------------------------------------------------------------------------
def completions(lm: TabularLM, prefix: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], float]]:
    """Every completion y (ending with EOS) of ``prefix`` under ``lm`` with its probability π(y | prefix)."""
    if prefix and prefix[-1] == EOS:
        yield (), 1.0
        return
    probs = lm.probs(prefix).tolist()
    for z, p in enumerate(probs):
        if p > 0:
            for tail, q in completions(lm, prefix + (z,)):
                yield (z,) + tail, p * q


def q_value(lm: TabularLM, r: RewardFn, prefix: tuple[int, ...], z: int) -> float:
    """Q^π(s, z): the expected reward of completing ``prefix + z`` with ``lm``."""
    start = prefix + (z,)
    return sum(p * r(start + tail) for tail, p in completions(lm, start))


def expected_reward(lm: TabularLM, r: RewardFn) -> float:
    """E_{y ~ ρ_lm}[r(y)]."""
    return sum(p * r(y) for y, p in completions(lm))


def trajectory_kl(p_lm: TabularLM, q_lm: TabularLM) -> float:
    """KL(ρ_p ‖ ρ_q) over complete trajectories (inf if ρ_p puts mass where ρ_q has none)."""
    total = 0.0
    for y, p in completions(p_lm):
        q = math.prod(q_lm.probs(y[:i])[y[i]].item() for i in range(len(y)))
        total += math.inf if q == 0 else p * (math.log(p) - math.log(q))
    return total


def optimal_policy(sft: TabularLM, r: RewardFn, beta: float, name: str = "optimal") -> TabularLM:
    """The token-level factorisation of ρ*_r ∝ ρ_sft·exp(r/β), as a tabular model."""
    log_w: dict[tuple[int, ...], float] = {}

    def lw(prefix: tuple[int, ...]) -> float:  # log W(prefix) = log E_{π_sft}[exp(r/β) | prefix]
        if prefix in log_w:
            return log_w[prefix]
        if prefix and prefix[-1] == EOS:
            value = r(prefix) / beta
        else:
            probs = sft.probs(prefix).tolist()
            terms = [math.log(p) + lw(prefix + (z,)) for z, p in enumerate(probs) if p > 0]
            value = torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0).item()
        log_w[prefix] = value
        return value

    table = {}
    for prefix in prefixes(sft.vocab_size, sft.horizon):
        probs = sft.probs(prefix)
        logits = torch.tensor([math.log(p) + lw(prefix + (z,)) if p > 0 else -math.inf
                               for z, p in enumerate(probs.tolist())], dtype=torch.float64)
        table[prefix] = torch.softmax(logits, 0)
    return TabularLM(table, sft.vocab, sft.horizon, name=name)


def decoding_policy(sft: TabularLM, q: Callable[[tuple[int, ...], int], float], alpha: float, k: int,
                    temperature: float = 1.0, name: str = "decoded") -> TabularLM:
    """The exact policy the decoder runs with value ``q(s, z)``: its scoring and choice rule, over the top-k."""
    table = {}
    for prefix in prefixes(sft.vocab_size, sft.horizon):
        logp = sft.probs(prefix).log()
        top_lp, cand = logp.topk(k)
        scores = top_lp + alpha * torch.tensor([q(prefix, z) for z in cand.tolist()], dtype=torch.float64)
        dec = decision_logprobs(scores[None], temperature)[0].exp()
        probs = torch.zeros(sft.vocab_size, dtype=torch.float64)
        probs[cand] = dec
        table[prefix] = probs
    return TabularLM(table, sft.vocab, sft.horizon, name=name)


def method_values(sft: TabularLM, baseline: TabularLM, r: RewardFn) -> dict[str, Callable[[tuple[int, ...], int], float]]:
    """The exact Q̂ each token-level method estimates, as functions of (prefix, z)."""
    return {
        "tq-direct": lambda s, z: q_value(baseline, r, s, z),
        "cd": lambda s, z: q_value(sft, r, s, z),
        "args": lambda s, z: r(s + (z,)),
    }


# ---- the report -----------------------------------------------------------------------------------------------
def exact_report(instances: int = 20, alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0),
                   vocab_size: int = 4, horizon: int = 4, beta_baseline: float = 0.2, k: int | None = None,
                   temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """Exact E[r] and KL(ρ_dec ‖ ρ_sft) of TQ* direct (baseline = ρ*_r at β_BL), CD and ARGS, averaged over
    random instances, for each α. Also the reference points SFT and ρ*_r at β = 1/α."""
    k = k or vocab_size
    rows: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for i in range(instances):
        sft = TabularLM.random(vocab_size, horizon, seed=seed + i)
        r = random_reward(vocab_size, horizon, seed=seed + i)
        baseline = optimal_policy(sft, r, beta_baseline)
        values = method_values(sft, baseline, r)
        rows.setdefault(("sft", 0.0), []).append((expected_reward(sft, r), 0.0))
        rows.setdefault(("baseline", 0.0), []).append((expected_reward(baseline, r), trajectory_kl(baseline, sft)))
        for alpha in alphas:
            for method, q in values.items():
                policy = decoding_policy(sft, q, alpha, k, temperature)
                rows.setdefault((method, alpha), []).append((expected_reward(policy, r), trajectory_kl(policy, sft)))
            optimum = optimal_policy(sft, r, 1.0 / alpha)
            rows.setdefault(("optimal(β=1/α)", alpha), []).append((expected_reward(optimum, r), trajectory_kl(optimum, sft)))
    out = []
    for (method, alpha), values in rows.items():
        n = len(values)
        out.append({"method": method, "alpha": alpha, "reward": sum(v[0] for v in values) / n,
                    "kl": sum(v[1] for v in values) / n, "instances": n})
    return out


def reward_at_kl(rows: list[dict], kls: tuple[float, ...] = (0.02, 0.1, 0.3)) -> dict[str, list[float | None]]:
    """Each α-swept method's E[r] at the given KLs, by linear interpolation along its α sweep (α = 0 is SFT).

    Comparing at matched KL is the fair reading of the table: a larger α buys reward with KL, and methods
    spend KL at different rates. ``None`` where the sweep does not reach that KL.
    """
    sft = next(r for r in rows if r["method"] == "sft")
    out: dict[str, list[float | None]] = {}
    for method in sorted({r["method"] for r in rows if r["alpha"] > 0}):
        points = [(0.0, sft["reward"])] + sorted((r["kl"], r["reward"]) for r in rows if r["method"] == method)
        values: list[float | None] = []
        for target in kls:
            value = None
            for (k0, r0), (k1, r1) in zip(points, points[1:]):
                if k0 <= target <= k1 and k1 > k0:
                    value = r0 + (r1 - r0) * (target - k0) / (k1 - k0)
                    break
            values.append(value)
        out[method] = values
    return out


def format_matched(rows: list[dict], kls: tuple[float, ...] = (0.02, 0.1, 0.3)) -> str:
    table = reward_at_kl(rows, kls)
    lines = [f"{'method':<16}" + "".join(f"{'E[r]@KL=' + format(k, 'g'):>14}" for k in kls)]
    for method, values in table.items():
        lines.append(f"{method:<16}" + "".join(f"{'-' if v is None else format(v, '.4f'):>14}" for v in values))
    return "\n".join(lines)


def format_report(rows: list[dict]) -> str:
    """The report as a fixed-width table, one row per (method, α)."""
    lines = [f"{'method':<16}{'alpha':>7}{'E[r]':>9}{'KL':>9}"]
    for row in sorted(rows, key=lambda r: (r["alpha"], r["method"])):
        lines.append(f"{row['method']:<16}{row['alpha']:>7g}{row['reward']:>9.4f}{row['kl']:>9.4f}")
    return "\n".join(lines)
