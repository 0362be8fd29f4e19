"""The exact testbed: tabular models where the true Q, the optimal policy and every method's expected reward
and KL are computed by enumerating all trajectories — so correctness is checked against mathematics.

Definitions (y a complete response, ending with EOS; r reads its text, EOS dropped):

* Q^π(s, z) = E_{y ~ π(· | s, z)}[r(s, z, y)], with Q^π(s, EOS) = r(s).
* The KL-regularised optimum ρ*_r(y) ∝ ρ_sft(y)·exp(r(y)/β); token-level: π*(z|s) = π_sft(z|s)·W(s z)/W(s) with
  W(s) = E_{y ~ π_sft(· | s)}[exp(r(s y)/β)].
* A token-level decoding policy: π_dec(· | s) from the decoder's own rule, softmax((log π_sft + α·Q̂)/T) over
  the top-k (argmax for T = 0), with Q̂ the exact value of the method:
  TQ* direct → Q^{π_baseline}; CD → Q^{π_sft}; ARGS → r(s z); none → 0; tq-indirect (N → ∞) → E_{ρ*}[r | s z]
  with ρ* ∝ ρ_BL·exp((r − r_BL)/β_BL); eft → β_BL·log(π_BL(z|s)/π_sft(z|s)).
* Estimators whose Q̂ is random for finite N (``tq-soft``, ``soft-cd``): the policy the decoder runs on average,
  π_eff(z | s) = E_{V̂}[softmax(score/T)(z)], estimated with ``draws`` independent draws of the N rollouts of every
  candidate (:func:`effective_soft_policy`); as N → ∞ both become the optimum ρ*_r at β = 1/α.
* E_ρ[r] and KL(ρ ‖ ρ_sft) = E_ρ[log ρ(y) − log ρ_sft(y)] by enumeration.
* Matched KL (:func:`matched_kl`): each method's reward at a given KL, interpolated linearly along its α sweep
  *per instance* (α = 0 is the SFT model at KL 0), then averaged over instances; the exact optimum at that KL is
  found per instance by bisection on β, and the gap is method − optimum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .._checks import check_int, check_real, check_reals
from ..decoder import decision_logprobs, score
from ..errors import ConfigError
from ..lm.base import tail_sums
from ..lm.tabular import EOS, TabularLM, prefixes
from ..reward import Reward
from ..tail import TailArm, arm_scores, shared_value, tempered_shape_kl
from .frontier import interpolate_at

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


def q_value(lm: TabularLM, r: RewardFn, prefix: tuple[int, ...], z: int | tuple[int, ...]) -> float:
    """Q^π(s, z): the expected reward of completing ``prefix + z`` with ``lm`` (``z`` a token, or a block)."""
    start = prefix + (z if isinstance(z, tuple) else (z,))
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


def log_partition(sft: TabularLM, r: RewardFn, beta: float) -> Callable[[tuple[int, ...]], float]:
    """log W(s) = log E_{y ~ π_sft(· | s)}[exp(r(s y)/β)] as a memoised function of the prefix s; the soft value of
    a candidate is V(s, z) = β·log W(s z)."""
    memo: dict[tuple[int, ...], float] = {}

    def lw(prefix: tuple[int, ...]) -> float:
        if prefix in memo:
            return memo[prefix]
        if prefix and prefix[-1] == EOS:
            value = r(prefix) / beta
        else:
            probs = sft.probs(prefix).tolist()
            terms = [math.log(p) + lw(prefix + (z,)) for z, p in enumerate(probs) if p > 0]
            value = torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0).item()
        memo[prefix] = value
        return value

    return lw


def optimal_policy(sft: TabularLM, r: RewardFn, beta: float, name: str = "optimal") -> TabularLM:
    """The token-level factorisation of ρ*_r ∝ ρ_sft·exp(r/β), as a tabular model."""
    lw = log_partition(sft, r, beta)
    table = {}
    for prefix in prefixes(sft.vocab_size, sft.horizon):
        probs = sft.probs(prefix)
        logits = torch.tensor([math.log(p) + lw(prefix + (z,)) if p > 0 else -math.inf
                               for z, p in enumerate(probs.tolist())], dtype=torch.float64)
        table[prefix] = torch.softmax(logits, 0)
    return TabularLM(table, sft.vocab, sft.horizon, name=name)


def decoding_policy(sft: TabularLM, q: Callable[[tuple[int, ...], int], float], alpha: float, k: int,
                    temperature: float = 1.0, name: str = "decoded", *, tail: str = "off",
                    rolling: TabularLM | None = None,
                    tail_value: Callable[[tuple[int, ...]], float] | None = None) -> TabularLM:
    """The exact policy the decoder runs with value ``q(s, z)``: its scoring and choice rule over the top-k, and with
    ``tail`` on (:mod:`tqstar.tail`, the decoder's own arm functions) over the whole vocabulary.

    ``mean``: one tail arm valued by the π_sft-weighted mean of the candidates' values (``tail_value(s)``, when
    given, replaces that value: e.g. the exact soft value of the tail); ``rollout``: the arm valued by q(s, z′) for
    z′ ~ p^{1/T}|𝒯, a fresh draw committed — the policy is the exact average over z′; ``rolling``: z′ ~
    ``rolling``(·|s) restricted to 𝒯, weighted p(z′)^{1/T}/q̃(z′), z′ committed — again averaged over z′ exactly.
    Temperature 0 takes the argmax over the top k whatever the tail, and α = 0 makes every tail ``mean`` (no value
    is needed: each arm keeps its π_sft weight), as the decoder does."""
    tail = tail if alpha > 0 else "mean" if tail != "off" else "off"
    table = {}
    for prefix in prefixes(sft.vocab_size, sft.horizon):
        logp = sft.probs(prefix).log()
        top_lp, cand = logp.topk(k)
        q_top = torch.tensor([q(prefix, z) for z in cand.tolist()], dtype=torch.float64)
        scores = score(top_lp[None], q_top[None], alpha)  # (1, k)
        probs = torch.zeros(sft.vocab_size, dtype=torch.float64)
        if tail == "off" or temperature == 0:
            probs[cand] = decision_logprobs(scores, temperature)[0].exp()
        else:
            probs = _tail_policy(sft, q, alpha, temperature, prefix, logp, top_lp, cand, q_top, scores, tail, rolling,
                                 tail_value)
        table[prefix] = probs
    return TabularLM(table, sft.vocab, sft.horizon, name=name)


def _tail_policy(sft, q, alpha, temperature, prefix, logp, top_lp, cand, q_top, scores, tail, rolling,
                 tail_value) -> torch.Tensor:
    """One state's π_dec over the vocabulary with the tail arm (:func:`decoding_policy`)."""
    t = temperature
    mass = tail_sums(logp[None], cand[None], t)
    rest = torch.ones(sft.vocab_size, dtype=torch.bool)
    rest[cand] = False
    shape = torch.where(rest, (logp / t).exp(), torch.zeros_like(logp))  # (V,) p^{1/T} on the tail
    shape = shape / shape.sum() if shape.sum() > 0 else shape

    def arm(base: float, value: float) -> torch.Tensor:  # (k + 1,) the arms' probabilities
        a = TailArm(tail, t, mass.log_mass, torch.tensor([base], dtype=torch.float64),
                    tempered_shape_kl(mass.log_mass, mass.mean_logprob, t),
                    value=torch.tensor([value], dtype=torch.float64))
        return decision_logprobs(arm_scores(scores, a, alpha), t)[0].exp()

    probs = torch.zeros(sft.vocab_size, dtype=torch.float64)
    base = t * float(mass.log_mass[0])
    if tail == "mean" or tail_value is not None:
        value = tail_value(prefix) if tail_value is not None else float(shared_value("mean", top_lp[None],
                                                                                     q_top[None])[0])
        pi = arm(base, value)
        probs[cand] = pi[:-1]
        return probs + pi[-1] * shape
    draws = shape if tail == "rollout" else _restricted(rolling, prefix, rest)  # z′ ~ p^{1/T}|𝒯 or q̃
    for z, w in enumerate(draws.tolist()):
        if w <= 0:
            continue
        if tail == "rollout":
            pi = arm(base, q(prefix, z))
            probs[cand] += w * pi[:-1]
            probs += w * pi[-1] * shape  # a fresh draw from the tail is committed
        else:
            pi = arm(float(logp[z]) - t * math.log(w), q(prefix, z))
            probs[cand] += w * pi[:-1]
            probs[z] += w * pi[-1]  # z′ itself is committed
    return probs


def _restricted(lm: TabularLM | None, prefix: tuple[int, ...], rest: torch.Tensor) -> torch.Tensor:
    """``lm``(·|prefix) restricted to ``rest`` and renormalised (zeros when it puts no mass there)."""
    assert lm is not None, "tail 'rolling' needs the rolling model"
    probs = torch.where(rest, lm.probs(prefix), torch.zeros(rest.shape, dtype=torch.float64))
    return probs / probs.sum() if probs.sum() > 0 else probs


def method_values(sft: TabularLM, baseline: TabularLM, r: RewardFn) -> dict[str, Callable[[tuple[int, ...], int], float]]:
    """The exact Q̂ each token-level method estimates, as functions of (prefix, z)."""
    return {
        "tq-direct": lambda s, z: q_value(baseline, r, s, z),
        "cd": lambda s, z: q_value(sft, r, s, z),
        "args": lambda s, z: r(s + (z,)),
    }


def indirect_value(baseline: TabularLM, r: RewardFn, r_bl: RewardFn, beta: float
                   ) -> Callable[[tuple[int, ...], int], float]:
    """tq-indirect's N → ∞ value: the self-normalised weights exp((r − r_BL)/β) over *all* baseline completions."""
    from ..value.indirect import indirect_q

    def q(prefix: tuple[int, ...], z: int) -> float:
        start = prefix + (z,)
        ys = list(completions(baseline, start))
        rr = torch.tensor([r(start + y) for y, _ in ys], dtype=torch.float64)
        rb = torch.tensor([r_bl(start + y) for y, _ in ys], dtype=torch.float64)
        mass = torch.tensor([math.log(p) for _, p in ys], dtype=torch.float64)
        return indirect_q(rr, rb, beta, mass).item()

    return q


def eft_value(sft: TabularLM, baseline: TabularLM, beta: float) -> Callable[[tuple[int, ...], int], float]:
    """eft's Q̂ = β·log(π_BL(z|s)/π_sft(z|s)): decoding at α mixes π_sft^(1−αβ)·π_BL^(αβ)."""
    return lambda s, z: beta * (math.log(baseline.probs(s)[z].item()) - math.log(sft.probs(s)[z].item()))


def effective_soft_policy(sft: TabularLM, rolling: TabularLM, r: RewardFn, alpha: float, n: int, *, k: int,
                          beta: float | None = None, temperature: float = 1.0, draws: int = 400,
                          seed: int | Sequence[int] = 0,
                          name: str = "soft") -> TabularLM:
    """The average policy of the soft-value decoder with N rollouts from ``rolling`` (``tq-soft``: the baseline;
    ``soft-cd``: the SFT model): π_eff(z|s) = E[softmax((log π_sft + α·V̂)/T)], over ``draws`` draws of the N
    rollouts of every candidate, V̂ = β·log mean_i exp(r_i/β + log ρ_sft(y_i)/ρ(y_i)), β = 1/α by default."""
    beta = beta if beta is not None else 1.0 / alpha
    rng = np.random.default_rng(seed)
    table = {}
    for prefix in prefixes(sft.vocab_size, sft.horizon):
        top_lp, cand = sft.probs(prefix).log().topk(k)
        values = np.zeros((draws, k))  # (M, k)
        for c, z in enumerate(cand.tolist()):
            start = prefix + (z,)
            ys = list(completions(rolling, start))
            probs = np.array([p for _, p in ys])
            terms = np.array([r(start + y) / beta + _log_prob(sft, start, y) - _log_prob(rolling, start, y)
                              for y, _ in ys])  # (Y,)
            pick = rng.choice(len(ys), size=(draws, n), p=probs / probs.sum())  # (M, N)
            values[:, c] = beta * (np.logaddexp.reduce(terms[pick], axis=1) - math.log(n))
        scores = torch.from_numpy(top_lp.numpy()[None, :] + alpha * values)  # (M, k)
        dec = decision_logprobs(scores, temperature).exp().mean(dim=0)  # (k,)
        probs = torch.zeros(sft.vocab_size, dtype=torch.float64)
        probs[cand] = dec
        table[prefix] = probs
    return TabularLM(table, sft.vocab, sft.horizon, name=name)


def _log_prob(lm: TabularLM, start: tuple[int, ...], tail: tuple[int, ...]) -> float:
    """log π(tail | start)."""
    return sum(math.log(lm.probs(start + tail[:i])[tail[i]].item()) for i in range(len(tail)))


def optimum_at_kl(sft: TabularLM, r: RewardFn, target: float, *, iterations: int = 48) -> tuple[float, float]:
    """(E[r], β) of the optimum ρ*_r at β whose KL to ρ_sft is ``target``: bisection on log β (KL falls as β grows)."""
    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if trajectory_kl(optimal_policy(sft, r, math.exp(mid)), sft) > target:
            lo = mid
        else:
            hi = mid
    beta = math.exp(0.5 * (lo + hi))
    return expected_reward(optimal_policy(sft, r, beta), r), beta


# ---- the report -----------------------------------------------------------------------------------------------
#: The rollout counts N at which the report evaluates the random estimators (tq-soft, soft-cd).
SOFT_NS = (1, 4, 16)


def _instance(instance: int, vocab_size: int, horizon: int, beta_baseline: float, seed: int, setting: str):
    """One random instance: (SFT model, target reward, baseline, {method: exact Q̂(s, z)}). ``setting`` ``"direct"``:
    the baseline is ρ*_r at β_BL (aligned to the target); ``"indirect"``: ρ*_{r_BL} at β_BL for an independent random
    reward r_BL."""
    assert setting in ("direct", "indirect"), setting
    sft = TabularLM.random(vocab_size, horizon, seed=seed + instance)
    r = random_reward(vocab_size, horizon, seed=seed + instance)
    r_bl = r if setting == "direct" else random_reward(vocab_size, horizon, seed=seed + instance + 100)
    baseline = optimal_policy(sft, r_bl, beta_baseline)
    values = {**method_values(sft, baseline, r), "tq-indirect": indirect_value(baseline, r, r_bl, beta_baseline),
              "eft": eft_value(sft, baseline, beta_baseline)}
    return sft, r, baseline, values


def instance_rows(instance: int, alphas: Sequence[float], *, vocab_size: int = 4, horizon: int = 4,
                  beta_baseline: float = 0.2, k: int | None = None, temperature: float = 1.0, seed: int = 0,
                  setting: str = "direct", soft_ns: Sequence[int] = SOFT_NS, draws: int = 400) -> list[dict]:
    """Exact E[r] and KL(ρ_dec ‖ ρ_sft) of every method at every α on one random instance.

    ``setting`` ``"direct"``: the baseline is ρ*_r at β_BL (aligned to the target); ``"indirect"``: it is ρ*_{r_BL}
    at β_BL for an independent random reward r_BL. Rows: {"instance", "method", "alpha", "reward", "kl"}."""
    k = k or vocab_size
    sft, r, baseline, values = _instance(instance, vocab_size, horizon, beta_baseline, seed, setting)
    rows = [{"method": "sft", "alpha": 0.0, "reward": expected_reward(sft, r), "kl": 0.0},
            {"method": "baseline", "alpha": 0.0, "reward": expected_reward(baseline, r),
             "kl": trajectory_kl(baseline, sft)}]
    for alpha in alphas:
        policies = {m: decoding_policy(sft, q, alpha, k, temperature) for m, q in values.items()}
        for n in soft_ns:
            for family, rolling in (("tq-soft", baseline), ("soft-cd", sft)):
                policies[f"{family}(N={n})"] = effective_soft_policy(
                    sft, rolling, r, alpha, n, k=k, temperature=temperature, draws=draws,
                    seed=[seed, instance, n, round(alpha * 1e6), ("tq-soft", "soft-cd").index(family)])
        policies["optimal(β=1/α)"] = optimal_policy(sft, r, 1.0 / alpha)
        for method, policy in policies.items():
            rows.append({"method": method, "alpha": alpha, "reward": expected_reward(policy, r),
                         "kl": trajectory_kl(policy, sft)})
    return [{"instance": instance, **row} for row in rows]


def average(rows: list[dict]) -> list[dict]:
    """Per (method, α): the mean E[r] and KL over instances, with the instance count."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["alpha"]), []).append(row)
    return [{"method": m, "alpha": a, "reward": sum(x["reward"] for x in g) / len(g),
             "kl": sum(x["kl"] for x in g) / len(g), "instances": len(g)} for (m, a), g in groups.items()]


def exact_report(instances: int = 20, alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0),
                 vocab_size: int = 4, horizon: int = 4, beta_baseline: float = 0.2, k: int | None = None,
                 temperature: float = 1.0, seed: int = 0, setting: str = "direct",
                 soft_ns: Sequence[int] = SOFT_NS, draws: int = 400, per_instance: bool = False) -> list[dict]:
    """Exact E[r] and KL(ρ_dec ‖ ρ_sft) of every method (:func:`instance_rows`) over random instances, for each α:
    averaged per (method, α), or the rows of every instance with ``per_instance``. Reference points: SFT, the
    baseline and ρ*_r at β = 1/α."""
    rows = [row for i in range(instances) for row in instance_rows(
        i, alphas, vocab_size=vocab_size, horizon=horizon, beta_baseline=beta_baseline, k=k, temperature=temperature,
        seed=seed, setting=setting, soft_ns=soft_ns, draws=draws)]
    return rows if per_instance else average(rows)


def matched_kl(rows: list[dict], kls: Sequence[float] = (0.02, 0.1, 0.3), *, vocab_size: int = 4, horizon: int = 4,
               seed: int = 0) -> dict[str, list[dict]]:
    """Per method and target KL: E[r] interpolated along each instance's α sweep, then averaged over the instances
    that reach it, and the mean gap to the exact optimum at that KL (:func:`optimum_at_kl`, same instances).

    ``rows`` are per-instance rows (``exact_report(per_instance=True)``); returns {method: [{"kl", "reward", "gap",
    "reached"}, ...]} plus the optimum itself under ``"optimum (exact)"``.
    """
    instances = sorted({row["instance"] for row in rows})
    optimum = {}
    for i in instances:
        sft = TabularLM.random(vocab_size, horizon, seed=seed + i)
        r = random_reward(vocab_size, horizon, seed=seed + i)
        optimum[i] = [optimum_at_kl(sft, r, target)[0] for target in kls]
    out: dict[str, list[dict]] = {"optimum (exact)": [
        {"kl": t, "reward": sum(optimum[i][c] for i in instances) / len(instances), "gap": 0.0,
         "reached": len(instances)} for c, t in enumerate(kls)]}
    for method in sorted({row["method"] for row in rows if row["alpha"] > 0}):
        cells = []
        for c, target in enumerate(kls):
            values = []
            for i in instances:
                sft_row = next(x for x in rows if x["instance"] == i and x["method"] == "sft")
                sweep = sorted((x for x in rows if x["instance"] == i and x["method"] == method), key=lambda x: x["alpha"])
                value = interpolate_at([(0.0, sft_row["reward"])] + [(x["kl"], x["reward"]) for x in sweep], target)
                if value is not None:
                    values.append((value, value - optimum[i][c]))
            n = len(values)
            cells.append({"kl": target, "reached": n,
                          "reward": sum(v for v, _ in values) / n if n else None,
                          "gap": sum(g for _, g in values) / n if n else None})
        out[method] = cells
    return out


def format_matched_kl(table: dict[str, list[dict]], instances: int) -> str:
    """The matched-KL table: E[r] (gap to the exact optimum) per method and KL; ``*`` where fewer than all
    ``instances`` reach that KL (the mean is over those that do), ``-`` where none does."""
    kls = [cell["kl"] for cell in next(iter(table.values()))]
    width = max(18, 2 + max(len(method) for method in table))
    lines = [f"{'method':<{width}}" + "".join(f"{'E[r] (gap) @KL=' + format(k, 'g'):>26}" for k in kls)]
    for method, cells in table.items():
        parts = []
        for cell in cells:
            if cell["reward"] is None:
                parts.append(f"{'-':>26}")
            else:
                star = "*" if cell["reached"] < instances else " "
                parts.append(f"{cell['reward']:>12.4f} ({cell['gap']:+.5f}){star}".rjust(26))
        lines.append(f"{method:<{width}}" + "".join(parts))
    return "\n".join(lines)

# ---- no truncation: the same methods at a top k < V, with and without the tail ----------------------------------
#: The tails compared per method (``rolling`` where the method has a rolling model; ``exact`` is tq-soft's shared
#: value at the tail's exact soft value, π* coarse-grained to the top k and the tail).
TAIL_MODES = {"tq-direct": ("off", "mean", "rollout", "rolling"), "cd": ("off", "mean", "rollout", "rolling"),
              "args": ("off", "mean", "rollout"), "tq-indirect": ("off", "mean", "rollout", "rolling"),
              "eft": ("off", "mean", "rollout"), "tq-soft(N=∞)": ("off", "mean", "rollout", "rolling", "exact")}


def tail_rows(instance: int, alphas: Sequence[float], *, k: int, vocab_size: int = 4, horizon: int = 4,
              beta_baseline: float = 0.2, temperature: float = 1.0, seed: int = 0, setting: str = "direct") -> list[dict]:
    """Exact E[r] and KL(ρ_dec ‖ ρ_sft) of every token-level method at top-k ``k`` with each tail of
    :data:`TAIL_MODES`, on one random instance (as :func:`instance_rows`: each method's exact Q̂; ``tq-soft(N=∞)`` the
    exact soft value at β = 1/α — its many-rollout limit, and with an optimal baseline at α = 1/β_BL its one-rollout
    value). Rows {"instance", "method" ("<method> tail=<tail>"), "alpha", "reward", "kl"}, plus the SFT anchor."""
    sft, r, baseline, fixed = _instance(instance, vocab_size, horizon, beta_baseline, seed, setting)
    fixed = {m: functools.lru_cache(maxsize=None)(q) for m, q in fixed.items() if m in TAIL_MODES}
    rolling = {"tq-direct": baseline, "cd": sft, "tq-indirect": baseline, "tq-soft(N=∞)": baseline}
    rows = [{"method": "sft", "alpha": 0.0, "reward": expected_reward(sft, r), "kl": 0.0}]
    for alpha in alphas:
        beta = 1.0 / alpha
        lw = log_partition(sft, r, beta)
        values = {**fixed, "tq-soft(N=∞)": functools.lru_cache(maxsize=None)(lambda s, z, lw=lw, b=beta: b * lw(s + (z,)))}
        for method, modes in TAIL_MODES.items():
            for mode in modes:
                extra = ({"tail_value": _exact_tail_value(sft, lw, beta, k, temperature), "tail": "mean"}
                         if mode == "exact" else {"tail": mode, "rolling": rolling.get(method)})
                policy = decoding_policy(sft, values[method], alpha, k, temperature, **extra)
                rows.append({"method": f"{method} tail={mode}", "alpha": alpha, "reward": expected_reward(policy, r),
                             "kl": trajectory_kl(policy, sft)})
    return [{"instance": instance, **row} for row in rows]


def _exact_tail_value(sft: TabularLM, lw: Callable[[tuple[int, ...]], float], beta: float, k: int,
                      temperature: float) -> Callable[[tuple[int, ...]], float]:
    """V_𝒯(s) = β·log E_{z ~ p^{1/T}|𝒯}[W(s z)]: the one shared value that gives the tail arm π*'s tail mass at T = 1."""
    def value(prefix: tuple[int, ...]) -> float:
        logp = sft.probs(prefix).log()
        rest = torch.ones(sft.vocab_size, dtype=torch.bool)
        rest[logp.topk(k).indices] = False
        terms = [logp[z].item() / temperature + lw(prefix + (z,)) for z in range(sft.vocab_size)
                 if rest[z] and logp[z] > -math.inf]
        if not terms:
            return 0.0  # an empty tail: its arm has no mass whatever its value
        shape = torch.logsumexp(logp[rest] / temperature, 0).item()
        return beta * (torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0).item() - shape)

    return value


def tail_report(instances: int, alphas: Sequence[float], kls: Sequence[float], *, k: int, vocab_size: int = 4,
                horizon: int = 4, beta_baseline: float = 0.2, temperature: float = 1.0, seed: int = 0,
                setting: str = "direct") -> tuple[list[dict], dict[str, list[dict]]]:
    """The rows of :func:`tail_rows` over ``instances`` and their matched-KL table (:func:`matched_kl`)."""
    rows = [row for i in range(instances) for row in tail_rows(
        i, alphas, k=k, vocab_size=vocab_size, horizon=horizon, beta_baseline=beta_baseline, temperature=temperature,
        seed=seed, setting=setting)]
    return rows, matched_kl(rows, kls, vocab_size=vocab_size, horizon=horizon, seed=seed)


def format_gap_closed(table: dict[str, list[dict]], instances: int) -> str:
    """Per method and tail, the share of truncation's mean gap to the optimum that the tail closes at each matched
    KL, 1 − gap(tail)/gap(off); ``-`` unless every instance reaches that KL both with and without the tail (the two
    means are then over the same instances)."""
    kls = [cell["kl"] for cell in next(iter(table.values()))]
    width = 2 + max(len(label) for label in table)
    lines = [f"{'method':<{width}}" + "".join(f"{'closed @KL=' + format(k, 'g'):>18}" for k in kls)]
    for label, cells in table.items():
        method, _, mode = label.partition(" tail=")
        if not mode or mode == "off":
            continue
        off = table.get(f"{method} tail=off") or [None] * len(cells)
        parts = []
        for cell, base in zip(cells, off):
            ok = (base is not None and cell["reached"] == base["reached"] == instances and base["gap"] < 0)
            parts.append(f"{1 - cell['gap'] / base['gap']:>18.0%}" if ok else f"{'-':>18}")
        lines.append(f"{label:<{width}}" + "".join(parts))
    return "\n".join(lines)


def format_report(rows: list[dict]) -> str:
    """The report as a fixed-width table, one row per (method, α)."""
    lines = [f"{'method':<16}{'alpha':>7}{'E[r]':>9}{'KL':>9}"]
    for row in sorted(rows, key=lambda r: (r["alpha"], r["method"])):
        lines.append(f"{row['method']:<16}{row['alpha']:>7g}{row['reward']:>9.4f}{row['kl']:>9.4f}")
    return "\n".join(lines)


MAX_TESTBED_SEQUENCES = 10**6


def check_settings(*, instances: int, vocab_size: int, horizon: int, beta_baseline: float, temperature: float,
                   k: int | None, alphas: Sequence[float], kls: Sequence[float], draws: int,
                   tail_k: int | None = None) -> None:
    """Every setting of a testbed run against its range, before any enumeration starts; a :class:`ConfigError` names
    the setting as its ``tqstar testbed`` flag."""
    for flag, value, low in (("--instances", instances, 1), ("--vocab-size", vocab_size, 2), ("--horizon", horizon, 1),
                             ("--draws", draws, 1)):
        check_int(value, flag, low=low)
    check_real(beta_baseline, "--beta-baseline")  # the one validator of every real flag and parameter
    check_real(temperature, "--temperature")
    if k is not None:
        check_int(k, "--k", high=vocab_size, high_is="--vocab-size")
    if tail_k is not None:  # 0: no no-truncation section
        check_int(tail_k, "--tail-k", low=0, high=vocab_size - 1, high_is="--vocab-size - 1")
    check_reals(alphas, "--alphas")
    check_reals(kls, "--kls")
    sequences = vocab_size ** horizon
    if sequences > MAX_TESTBED_SEQUENCES:
        raise ConfigError(f"--vocab-size {vocab_size} with --horizon {horizon} enumerates {sequences:.3g}"
                          f" sequences; keep vocab-size ** horizon <= {MAX_TESTBED_SEQUENCES:,}", param="vocab_size",
                          value=vocab_size)


# ---- blockwise selection, exactly ---------------------------------------------------------------------------------
#: Per state s and block b: a block's value Q(s, b).
BlockValue = Callable[[tuple[int, ...], tuple[int, ...]], float]


def blocks_from(lm: TabularLM, prefix: tuple[int, ...], block_len: int | None) -> list[tuple[tuple[int, ...], float]]:
    """Every block that can follow ``prefix`` — ``block_len`` tokens, fewer when it ends with EOS; ``None``: the whole
    rest of the response — with its probability π(b | prefix)."""
    out = []

    def walk(block: tuple[int, ...], prob: float) -> None:
        if (block and block[-1] == EOS) or len(block) == block_len:
            out.append((block, prob))
            return
        for z, p in enumerate(lm.probs(prefix + block).tolist()):
            if p > 0:
                walk(block + (z,), prob * p)

    walk((), 1.0)
    return out


def block_law(sft: TabularLM, value: BlockValue, prefix: tuple[int, ...], *, alpha: float, k: int | None,
              block_len: int | None, temperature: float = 1.0) -> list[tuple[tuple[int, ...], float]]:
    """The exact law of the block a blockwise decision at ``prefix`` commits: k i.i.d. blocks of π_sft, the best
    ``value`` chosen (temperature 0, first maximal sample) or one drawn ∝ exp(α·value/T) (:mod:`tqstar.blocks`).

    Within a value level the chosen block is π_sft-distributed (exchangeability), so q(b) = p(b)/p(v)·q(v) with q(v)
    the selected value's law (:func:`~tqstar.blocks.selection_law`, exact for any k). ``k=None``: the k → ∞ limit,
    p(b)·exp(α·value/T)/Z (soft: what sampling-importance-resampling converges to), or the best level (argmax)."""
    from ..blocks import selection_law

    blocks = blocks_from(sft, prefix, block_len)
    p = np.array([prob for _, prob in blocks])
    v = np.array([value(prefix, b) for b, _ in blocks])
    strength = math.inf if temperature == 0 else alpha / temperature
    levels, level = np.unique(v, return_inverse=True)
    p_level = np.bincount(level, weights=p)
    if k is None:
        log_q = strength * levels + np.log(p_level) if math.isfinite(strength) else np.where(
            levels == levels.max(), 0.0, -math.inf)
        q_level = np.exp(log_q - np.logaddexp.reduce(log_q))
    else:
        q_level = selection_law(levels, p_level, k, strength)
    return [(b, float(prob / p_level[level[i]] * q_level[level[i]])) for i, (b, prob) in enumerate(blocks)]


def block_decoding(sft: TabularLM, value: BlockValue, *, alpha: float, k: int | None, block_len: int | None,
                   temperature: float = 1.0) -> dict[tuple[int, ...], float]:
    """ρ_dec over complete responses of blockwise decoding (:func:`block_law` at every decision)."""
    dist: dict[tuple[int, ...], float] = {}

    def walk(prefix: tuple[int, ...], prob: float) -> None:
        if prefix and prefix[-1] == EOS:
            dist[prefix] = dist.get(prefix, 0.0) + prob
            return
        for block, q in block_law(sft, value, prefix, alpha=alpha, k=k, block_len=block_len, temperature=temperature):
            if q > 0:
                walk(prefix + block, prob * q)

    walk((), 1.0)
    return dist


def sequences(lm: TabularLM) -> dict[tuple[int, ...], float]:
    """ρ_lm over complete responses."""
    return dict(completions(lm))


def distribution_kl(p: dict[tuple[int, ...], float], q: dict[tuple[int, ...], float]) -> float:
    """KL(p ‖ q) of two distributions over responses (inf where p has mass q lacks)."""
    return sum(mass * (math.log(mass) - math.log(q[y])) if q.get(y, 0.0) > 0 else math.inf
               for y, mass in p.items() if mass > 0)


def block_values(sft: TabularLM, baseline: TabularLM, r: RewardFn, beta: float) -> dict[str, BlockValue]:
    """The exact block values of the blockwise methods (memoised): the soft value β·log W(s b) (``tq-soft`` with the
    optimal baseline, ``soft-cd`` as N → ∞; its weight exp(V/β) at α = 1/β is W(s b)), ``tq-direct``'s
    Q^{π_BL}(s, b), CD's Q^{π_sft}(s, b), and the reward of the response itself (a block that ends it; ``bon`` and
    ``soft-bon``). Each depends on s and b only through the sequence s b."""
    lw = log_partition(sft, r, beta)
    by_sequence = {"soft": lambda y: beta * lw(y), "tq-direct": lambda y: q_value(baseline, r, y, ()),
                   "cd": lambda y: q_value(sft, r, y, ()), "reward": r}
    return {name: _memoised(fn) for name, fn in by_sequence.items()}


def _memoised(fn: Callable[[tuple[int, ...]], float]) -> BlockValue:
    seen: dict[tuple[int, ...], float] = {}

    def value(s: tuple[int, ...], b: tuple[int, ...]) -> float:
        y = s + b
        if y not in seen:
            seen[y] = fn(y)
        return seen[y]

    return value


#: The sample counts k the block report evaluates (None: the k → ∞ limit).
BLOCK_KS = (1, 2, 4, 16, 64, None)


def block_rows(instance: int, *, alpha: float = 5.0, block_lens: Sequence[int | None] = (1, 2, None),
               ks: Sequence[int | None] = BLOCK_KS, vocab_size: int = 4, horizon: int = 4, beta_baseline: float = 0.2,
               seed: int = 0) -> list[dict]:
    """Exact E[r] and KL(ρ_dec ‖ ρ_sft) of blockwise decoding on one random instance (the direct setting: the baseline
    is ρ*_r at β_BL), for each value (soft, tq-direct, cd), choice (soft at T = 1, argmax), block length m and k,
    with the distance to its k → ∞ limit — ρ*_r at β = 1/α for soft values with soft choice (the frontier), the
    block-tilted policy ∝ p(b)·e^(αQ(s,b)) for hard values, the best block for argmax: ``tv_to_limit`` (total
    variation) and ``kl_to_limit`` (KL(ρ_dec ‖ limit), inf where the limit is a point mass). ``m = None`` decides
    once over whole responses, where every value is the reward itself: soft best-of-k (β = 1/α) and best-of-k."""
    sft = TabularLM.random(vocab_size, horizon, seed=seed + instance)
    r = random_reward(vocab_size, horizon, seed=seed + instance)
    baseline = optimal_policy(sft, r, beta_baseline)
    values = block_values(sft, baseline, r, 1.0 / alpha)
    ref = sequences(sft)
    rows = []
    for name in ("soft", "tq-direct", "cd"):
        for choice, temperature in (("soft", 1.0), ("argmax", 0.0)):
            for m in block_lens:
                limit = block_decoding(sft, values[name], alpha=alpha, k=None, block_len=m, temperature=temperature)
                for k in ks:
                    dist = limit if k is None else block_decoding(sft, values[name], alpha=alpha, k=k, block_len=m,
                                                                  temperature=temperature)
                    rows.append({"instance": instance, "value": name, "choice": choice, "m": m, "k": k,
                                 "reward": sum(mass * r(y) for y, mass in dist.items()),
                                 "kl": max(0.0, distribution_kl(dist, ref)),
                                 "kl_to_limit": max(0.0, distribution_kl(dist, limit)),
                                 "tv_to_limit": total_variation(dist, limit)})
    optimum = sequences(optimal_policy(sft, r, 1.0 / alpha))
    rows.append({"instance": instance, "value": "optimum (β = 1/α)", "choice": "-", "m": None, "k": None,
                 "reward": sum(mass * r(y) for y, mass in optimum.items()), "kl": distribution_kl(optimum, ref),
                 "kl_to_limit": 0.0, "tv_to_limit": 0.0})
    return rows


def total_variation(p: dict[tuple[int, ...], float], q: dict[tuple[int, ...], float]) -> float:
    """½·Σ_y |p(y) − q(y)|."""
    return 0.5 * sum(abs(p.get(y, 0.0) - q.get(y, 0.0)) for y in set(p) | set(q))


def format_block_report(rows: list[dict]) -> str:
    """Means over instances per (value, choice, m, k) as a fixed-width table; m ``all`` is the whole response, k ``∞``
    the limit."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["value"], row["choice"], row["m"], row["k"]), []).append(row)
    lines = [f"{'value':<18}{'choice':<8}{'m':>4}{'k':>5}{'E[r]':>9}{'KL':>9}{'KL to limit':>13}{'TV to limit':>13}"]
    for (value, choice, m, k), group in groups.items():
        mean = {key: sum(g[key] for g in group) / len(group) for key in ("reward", "kl", "kl_to_limit", "tv_to_limit")}
        lines.append(f"{value:<18}{choice:<8}{'all' if m is None else m:>4}{'∞' if k is None else k:>5}"
                     f"{mean['reward']:>9.4f}{mean['kl']:>9.4f}{mean['kl_to_limit']:>13.5f}{mean['tv_to_limit']:>13.5f}")
    return "\n".join(lines)
