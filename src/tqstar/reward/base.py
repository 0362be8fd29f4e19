"""The reward interface and the rewards that need no model: :class:`Reward` (values checked and cached in one
place), :class:`CallableReward` (a Python function) and :class:`WeightedReward` (a weighted sum).

A reward may declare its range ``[R_min, R_max]``: pruning trusts it (a candidate that cannot win even at R_max is
skipped) and the decoder reports the per-token KL bound with it. Every value is checked in one place
(:meth:`Reward.score`): a NaN or inf, or a value outside the declared range, raises
:class:`~tqstar.errors.RewardError` naming the text, the value and the range. A reward whose range is only a
guide opts out with ``check_range=False`` (YAML ``check_range: false``): its ``range`` is then ``None``, which
turns pruning and the reward-based KL bound off.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from .._checks import REAL_RANGE, REWARD_LIMIT, check_reward_value, is_real
from ..errors import ConfigError, RewardError, describe, preview

Range = tuple[float, float]
# Rewards are scored one call at a time, whichever thread asks (batches decoding concurrently against remote
# models share them; a local reward model and the value cache are not safe to enter twice at once).


_SCORING = threading.RLock()


class Reward(ABC):
    """Scores (prompt, response) text pairs. Subclasses implement :meth:`_score`.

    ``range``: the declared ``(R_min, R_max)``, or ``None``; every value :meth:`score` returns lies inside it.
    """

    name: str = "reward"
    range: Range | None = None

    @abstractmethod
    def _score(self, prompts: list[str], responses: list[str]) -> Sequence[float]:
        """One float per pair."""

    #: How many (prompt, response) → value pairs to remember; identical texts are scored once (rewards are
    #: assumed deterministic). 0 switches the cache off.
    cache_size: int = 65536

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Score ``responses`` to ``prompts`` (equal-length lists); raises :class:`RewardError` on NaN/inf and on
        a value outside :attr:`range`."""
        prompts, responses = list(prompts), list(responses)
        assert len(prompts) == len(responses), "prompts and responses must pair up"
        if not responses:
            return []
        with _SCORING:
            return self._score_cached(prompts, responses)

    def _score_cached(self, prompts: list[str], responses: list[str]) -> list[float]:
        if not self.cache_size:
            return self._checked(prompts, responses)
        cache = self._value_cache()
        pairs = list(zip(prompts, responses))
        missing = [p for p in dict.fromkeys(pairs) if p not in cache]
        if missing:
            for pair, value in zip(missing, self._checked([p for p, _ in missing], [r for _, r in missing])):
                cache[pair] = value
        values = [cache[p] for p in pairs]
        while len(cache) > self.cache_size:  # first in, first out
            cache.pop(next(iter(cache)))
        return values

    def is_cached(self, prompt: str, response: str) -> bool:
        """Whether scoring this pair would be answered from the cache (no reward evaluation)."""
        return bool(self.cache_size) and (prompt, response) in self._value_cache()

    def reset_cache(self) -> None:
        """Forget every cached value."""
        self.__dict__.pop("_cache", None)

    def _value_cache(self) -> dict[tuple[str, str], float]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = self.__dict__["_cache"] = {}
        return cache

    def _checked(self, prompts: list[str], responses: list[str]) -> list[float]:
        raw = self._score(prompts, responses)
        try:
            raw = list(raw)
        except TypeError:
            raise RewardError(f"reward {self.name} returned {raw!r}, not a list; it must return one float per"
                              " (prompt, response) pair") from None
        if len(raw) != len(responses):
            raise RewardError(
                f"reward {self.name} returned {len(raw)} values for {len(responses)} texts; it must return one"
                " float per (prompt, response) pair"
            )
        values = []
        for value, text in zip(raw, responses):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise RewardError(
                    f"reward {self.name} returned {value!r} for the response {preview(text)}; make the reward"
                    " return finite numbers for every text"
                )
            if not check_reward_value(number):
                raise RewardError(
                    f"reward {self.name} returned {number!r} for the response {preview(text)}, beyond ±{REWARD_LIMIT:g},"
                    " the largest reward decoding keeps finite (tqstar._checks); scale the reward down"
                )
            if self.range is not None and not _inside(number, self.range):
                raise RewardError(
                    f"reward {self.name} returned {number!r} for the response {preview(text)}, outside its declared"
                    f" range [{self.range[0]:g}, {self.range[1]:g}]; fix the reward or its range, or pass"
                    " check_range=False (check_range: false) to drop the range and the pruning and KL bound that"
                    " trust it"
                )
            values.append(number)
        return values


def _inside(value: float, bounds: Range) -> bool:
    """``R_min <= value <= R_max`` up to float rounding (a weighted sum of in-range parts must pass)."""
    slack = 1e-9 * max(1.0, abs(bounds[0]), abs(bounds[1]))
    return bounds[0] - slack <= value <= bounds[1] + slack


def checked_range(value: object, what: str) -> Range | None:
    """``value`` as a reward range ``(R_min, R_max)`` (``None`` stays ``None``): two finite numbers within
    ±:data:`~tqstar._checks.REWARD_LIMIT` with R_min < R_max; else :class:`ConfigError` naming ``what``."""
    if value is None:
        return None
    ok = (isinstance(value, (tuple, list)) and len(value) == 2 and all(is_real(v) for v in value)
          and all(check_reward_value(float(v)) for v in value) and value[0] < value[1])
    if not ok:
        raise ConfigError(f"{what} must be (R_min, R_max): two numbers with R_min < R_max, each within"
                          f" ±{REWARD_LIMIT:g}, got {describe(value)}", param="range", value=value)
    return (float(value[0]), float(value[1]))


class CallableReward(Reward):
    """A Python function ``fn(prompts, responses) -> list[float]`` as a reward.

    ``range`` (default: the function's ``reward_range`` attribute) is checked on every value unless
    ``check_range=False``, which drops it.
    """

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], *, name: str | None = None,
                 range: Range | None = None, check_range: bool = True) -> None:
        if not callable(fn):
            raise ConfigError(f"`fn` must be a function (prompts, responses) -> floats, got {describe(fn)}", param="fn",
                              value=fn)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"`name` must be a non-empty string or None, got {describe(name)}", param="name",
                              value=name)
        if not isinstance(check_range, bool):
            raise ConfigError(f"`check_range` must be True or False, got {describe(check_range)}",
                              param="check_range", value=check_range)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        declared = checked_range(range, "`range`") if range is not None else checked_range(
            getattr(fn, "reward_range", None), f"the `reward_range` of {describe(fn)}")
        self.range = declared if check_range else None

    def _score(self, prompts: list[str], responses: list[str]) -> Sequence[float]:
        return self.fn(prompts, responses)


class WeightedReward(Reward):
    """Σ_i w_i · r_i: a multi-objective target. Its range is derived when every part declares one."""

    def __init__(self, parts: Sequence[tuple[float, Reward]]) -> None:
        if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
            raise ConfigError(f"`parts` must be a non-empty list of (weight, reward) pairs, got {describe(parts)}",
                              param="parts", value=parts)
        for i, part in enumerate(parts):
            if not (isinstance(part, (tuple, list)) and len(part) == 2):
                raise ConfigError(f"`parts[{i}]` must be a (weight, reward) pair, got {describe(part)}",
                                  param="parts", value=part)
            weight, reward = part
            if not is_real(weight) or not math.isfinite(weight) or abs(weight) > REAL_RANGE[1]:
                raise ConfigError(f"the weight of `parts[{i}]` must be a finite number from {-REAL_RANGE[1]:g} to"
                                  f" {REAL_RANGE[1]:g}, got {describe(weight)}", param="parts", value=weight)
            if not isinstance(reward, Reward):
                raise ConfigError(f"the reward of `parts[{i}]` must be a Reward, got {describe(reward)}; wrap a"
                                  " function with CallableReward(fn)", param="parts", value=reward)
        self.parts = [(float(w), r) for w, r in parts]
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in self.parts)
        if all(r.range is not None for _, r in self.parts):
            lo = sum(min(w * r.range[0], w * r.range[1]) for w, r in self.parts)  # type: ignore[index]
            hi = sum(max(w * r.range[0], w * r.range[1]) for w, r in self.parts)  # type: ignore[index]
            self.range = (lo, hi) if lo < hi else None  # all-zero weights: no range to trust

    def reset_cache(self) -> None:
        super().reset_cache()
        for _, reward in self.parts:
            reward.reset_cache()

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for weight, reward in self.parts:
            for i, value in enumerate(reward.score(prompts, responses)):
                total[i] += weight * value
        return total
