"""Rewards: ``score(prompts, responses) -> floats`` on *text*.

A reward model may use its own tokenizer and its own input format, so rewards see text, never token ids.
Backends: a ``transformers`` sequence-classification model from a path (:class:`TransformersReward`), a Python
callable given as ``module:function`` (:class:`CallableReward`), a weighted sum (:class:`WeightedReward`),
and two offline built-ins (``sentiment``: VADER compound in [-1, 1]; ``harmless``: 1 - P(profane) in [0, 1];
``pip install 'tqstar[rewards]'``).

A reward may declare its range ``[R_min, R_max]``: pruning trusts it (a candidate that cannot win even at R_max is
skipped) and the decoder reports the per-token KL bound with it. Every value is checked in one place
(:meth:`Reward.score`): a NaN or inf, or a value outside the declared range, raises
:class:`~tqstar.errors.RewardError` naming the text, the value and the range. A reward whose range is only a
guide opts out with ``check_range=False`` (YAML ``check_range: false``): its ``range`` is then ``None``, which
turns pruning and the reward-based KL bound off.
"""

from __future__ import annotations

import importlib
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, RewardError, preview

if TYPE_CHECKING:
    from ..params import DecodeParams

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


class CallableReward(Reward):
    """A Python function ``fn(prompts, responses) -> list[float]`` as a reward.

    ``range`` (default: the function's ``reward_range`` attribute) is checked on every value unless
    ``check_range=False``, which drops it.
    """

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], *, name: str | None = None,
                 range: Range | None = None, check_range: bool = True) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        declared = range if range is not None else getattr(fn, "reward_range", None)
        self.range = tuple(declared) if declared is not None and check_range else None

    def _score(self, prompts: list[str], responses: list[str]) -> Sequence[float]:
        return self.fn(prompts, responses)


class WeightedReward(Reward):
    """Σ_i w_i · r_i: a multi-objective target. Its range is derived when every part declares one."""

    def __init__(self, parts: Sequence[tuple[float, Reward]]) -> None:
        if not parts:
            raise ConfigError("a weighted reward needs at least one (weight, reward) part")
        self.parts = list(parts)
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in self.parts)
        if all(r.range is not None for _, r in self.parts):
            lo = sum(min(w * r.range[0], w * r.range[1]) for w, r in self.parts)  # type: ignore[index]
            hi = sum(max(w * r.range[0], w * r.range[1]) for w, r in self.parts)  # type: ignore[index]
            self.range = (lo, hi)

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for weight, reward in self.parts:
            for i, value in enumerate(reward.score(prompts, responses)):
                total[i] += weight * value
        return total


class TransformersReward(Reward):
    """A ``transformers`` sequence-classification reward model, with its own tokenizer and input format.

    Args:
        path: model directory (or a hub id in the local hub cache; nothing is downloaded).
        format: how a (prompt, response) pair becomes the model's input. ``None`` uses the tokenizer's chat
            template (user + assistant turns) when it has one, else ``"{prompt}\\n{response}"``; a string with
            ``{prompt}`` and ``{response}`` fields, e.g. ``"Human: {prompt}\\n\\nAssistant: {response}"``.
        truncate: cut inputs longer than the model's limit (from the left, keeping the response's end).
            Without it, an over-long input is an error.
        sigmoid: report ``sigmoid(logit)`` in (0, 1) instead of the logit (its range is then known).
        label: which output logit is the reward when the head has more than one.
        range: declared ``(R_min, R_max)`` of the raw output, if known (checked on every value).
        check_range: ``False`` drops the range (``sigmoid``'s too), so nothing is checked, pruned or bounded by it.
        prefix_cache: for a decoder reward model, reuse the encoding of the longest token prefix already seen
            (:mod:`tqstar.reward.prefix_cache`; same scores). ``False`` runs every text in full, for measuring; the
            attribute may be switched later.

    ``forward_tokens`` counts the tokens the model has run (cached prefix tokens are not re-counted).
    """

    def __init__(self, path: str, *, format: str | None = None, truncate: bool = False, sigmoid: bool = False,
                 label: int | None = None, range: Range | None = None, batch_size: int = 16,
                 device: str = "cpu", dtype: str = "float32", name: str | None = None,
                 check_range: bool = True, prefix_cache: bool = True) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from ..lm.hf import DTYPES, _check_model_path, check_device, load_pretrained
        from .prefix_cache import prefix_scorer

        check_device(device)
        _check_model_path(str(path))
        if format is not None and ("{response}" not in format):
            raise ConfigError(f"reward `format` must contain {{response}}, got {format!r}")
        self.tokenizer, self.model = load_pretrained(
            AutoModelForSequenceClassification, str(path), what="a reward model", dtype=DTYPES[dtype],
            fix="give the directory of a trained AutoModelForSequenceClassification reward model with its tokenizer")
        self.model.to(device).eval()
        labels = self.model.config.num_labels
        if label is None and labels != 1:
            raise ConfigError(f"reward model {path} has {labels} output labels; pass `label` to pick the reward")
        self.label = 0 if label is None else label
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.format, self.truncate, self.sigmoid = format, truncate, sigmoid
        self.batch_size, self.device, self._torch = batch_size, device, torch
        self.max_length = min(
            getattr(self.model.config, "max_position_embeddings", None) or 10**9,
            self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10**9 else 10**9,
        )
        self.name = name or str(path)
        self.range = None if not check_range else (0.0, 1.0) if sigmoid else range
        self.forward_tokens = 0
        self.prefix_cache = prefix_cache
        self._prefix = prefix_scorer(self.model, self.name, quiet=not prefix_cache)

    def _text(self, prompt: str, response: str) -> str:
        if self.format is not None:
            return self.format.format(prompt=prompt, response=response)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
            )
        return f"{prompt}\n{response}"

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """The model's input tokens for each (prompt, response) pair (formatted, tokenised, truncated)."""
        return self._input_ids([self._text(p, r) for p, r in zip(prompts, responses)])

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        ids = self.encode(prompts, responses)
        if self.prefix_cache and self._prefix is not None and self._prefix.fits(ids):
            logits, tokens = self._prefix.score(ids, self.batch_size)  # (M, labels)
        else:
            logits, tokens = self._full_forward(ids)
        self.forward_tokens += tokens
        values = logits[:, self.label]  # (M,)
        return (self._torch.sigmoid(values) if self.sigmoid else values).cpu().tolist()

    def _input_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text in the model's tokens (cut from the left to the model's limit with ``truncate``)."""
        special = self.format is not None or not getattr(self.tokenizer, "chat_template", None)
        ids = [self.tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]
        for i, seq in enumerate(ids):
            if not seq:
                raise RewardError(f"reward model input {preview(texts[i])} encodes to no tokens for {self.name};"
                                  " give a reward `format` that adds text around the response")
            if len(seq) > self.max_length:
                if not self.truncate:
                    raise RewardError(
                        f"reward model input {preview(texts[i])} is {len(seq)} tokens, over the"
                        f" {self.max_length}-token limit of {self.name}; pass truncate=True (--reward-truncate)"
                        " to keep its last tokens, or shorten the generation"
                    )
                ids[i] = seq[-self.max_length:]
        return ids

    def _full_forward(self, ids: list[list[int]]):
        """The model's own forward on padded batches: outputs ``(M, labels)`` and the tokens run."""
        torch, out = self._torch, []
        for start in range(0, len(ids), self.batch_size):
            batch = self.tokenizer.pad({"input_ids": ids[start:start + self.batch_size]}, return_tensors="pt")
            with torch.inference_mode():
                out.append(self.model(**batch.to(self.device)).logits.float())  # (b, labels)
        return torch.cat(out), sum(len(s) for s in ids)

    def reset_cache(self) -> None:
        """Forget cached values and stored prefix encodings (frees memory; scores are unaffected)."""
        super().reset_cache()
        if self._prefix is not None:
            self._prefix.reset()


def pruning_off_reason(reward: Reward | None, params: DecodeParams) -> str | None:
    """Why decoding with ``params`` will not prune candidates, as one line for ``--trace`` output and logs;
    ``None`` when it prunes (or the method has no candidates to prune).

    Pruning skips candidate z when ``log π_sft(z) + α·R_max`` cannot beat the best score already computed, so
    it needs greedy choice and the reward's upper bound R_max.
    """
    from ..params import TOKEN_METHODS

    if reward is None or params.method not in TOKEN_METHODS or params.method == "none" or params.alpha == 0:
        return None
    if not params.prune:
        return "pruning off: switched off (prune=False)"
    if params.temperature != 0:
        return f"pruning off: it needs greedy choice (temperature 0), got temperature {params.temperature:g}"
    if reward.range is None:
        return (f"pruning off: reward {reward.name} declares no range; give --reward-sigmoid or a declared range"
                " (range: [R_MIN, R_MAX] in the reward's config entry)")
    return None


# ---- built-ins --------------------------------------------------------------------------------------------
def _sentiment() -> Reward:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:
        raise ConfigError("the `sentiment` reward needs vaderSentiment; pip install 'tqstar[rewards]'") from exc
    analyzer = SentimentIntensityAnalyzer()

    def sentiment(prompts: list[str], responses: list[str]) -> list[float]:
        return [analyzer.polarity_scores(r)["compound"] for r in responses]

    return CallableReward(sentiment, name="sentiment", range=(-1.0, 1.0))


def _harmless() -> Reward:
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        raise ConfigError("the `harmless` reward needs alt-profanity-check; pip install 'tqstar[rewards]'") from exc

    def harmless(prompts: list[str], responses: list[str]) -> list[float]:
        return (1.0 - predict_prob(list(responses))).tolist()

    return CallableReward(harmless, name="harmless", range=(0.0, 1.0))


BUILTIN_REWARDS: dict[str, Callable[[], Reward]] = {"sentiment": _sentiment, "harmless": _harmless}


@dataclass(frozen=True)
class RewardSpec:
    """How to build a reward: ``spec`` plus options for a reward-model directory.

    ``spec`` is one of: a built-in name (``sentiment``, ``harmless``); ``module:function``; a reward-model
    directory (optionally prefixed ``hf:``); or a weighted sum such as ``0.7*sentiment + 0.3*harmless`` (each
    term ``WEIGHT*SPEC``). The options apply to reward-model directories, except ``range`` (also for
    ``module:function``) and ``check_range`` (every term: ``False`` drops every range, see :class:`Reward`).
    """

    spec: str
    format: str | None = None
    truncate: bool = False
    sigmoid: bool = False
    label: int | None = None
    range: Range | None = None
    device: str = "cpu"
    dtype: str = "float32"
    check_range: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise ConfigError(f"reward spec must be a non-empty string, got {self.spec!r}")
        if self.range is not None and not (len(self.range) == 2 and self.range[0] < self.range[1]):
            raise ConfigError(f"reward `range` must be (R_min, R_max) with R_min < R_max, got {self.range!r}")
        for term in self.terms():
            _check_term(term[1])

    def terms(self) -> list[tuple[float, str]]:
        """``[(weight, spec), ...]``; a single spec is ``[(1.0, spec)]``."""
        spec = self.spec.strip()
        if "*" not in spec:
            return [(1.0, spec.removeprefix("hf:"))]
        terms = []
        # terms are joined by "+" (not an exponent's) or by " -" before a number: "0.7*a - 0.2*b", "1e+3*a"
        pieces = re.split(r"((?<!\d[eE])\+|(?<=[^\s+*])\s+-(?=\s*[\d.]))", spec)
        signs = [1.0] + [-1.0 if sep.strip() == "-" else 1.0 for sep in pieces[1::2]]
        for sign, part in zip(signs, pieces[0::2]):
            match = re.fullmatch(r"\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*\*\s*(\S.*?)\s*", part)
            if not match:
                raise ConfigError(f"reward term {part.strip()!r} in {spec!r} must read WEIGHT*SPEC, e.g. 0.7*sentiment")
            try:
                weight = sign * float(match.group(1))
            except ValueError as exc:
                raise ConfigError(f"reward weight {match.group(1)!r} in {spec!r} must be a number") from exc
            if not math.isfinite(weight):
                raise ConfigError(f"reward weight {match.group(1)!r} in {spec!r} must be a finite number, got"
                                  f" {weight}; write it within ±1.8e308")
            terms.append((weight, match.group(2).removeprefix("hf:")))
        return terms

    def load(self) -> Reward:
        parts = [(w, self._load_one(s)) for w, s in self.terms()]
        if len(parts) == 1 and parts[0][0] == 1.0:
            return parts[0][1]
        return WeightedReward(parts)

    def _load_one(self, spec: str) -> Reward:
        if spec in BUILTIN_REWARDS:
            reward = BUILTIN_REWARDS[spec]()
            if not self.check_range:
                reward.range = None
            return reward
        if Path(spec).expanduser().is_dir():
            return TransformersReward(str(Path(spec).expanduser()), format=self.format, truncate=self.truncate,
                                      sigmoid=self.sigmoid, label=self.label, range=self.range,
                                      device=self.device, dtype=self.dtype, check_range=self.check_range)
        return CallableReward(_import_callable(spec), range=self.range, check_range=self.check_range)


def load_reward(spec: str | RewardSpec | Reward | None, **options: object) -> Reward | None:
    """Build a :class:`Reward` from a spec string, a :class:`RewardSpec` or an existing reward."""
    if spec is None or isinstance(spec, Reward):
        return spec
    if isinstance(spec, str):
        spec = RewardSpec(spec, **options)  # type: ignore[arg-type]
    return spec.load()


def _check_term(spec: str) -> None:
    """Fail early (before any model loads) on a spec that cannot resolve."""
    if spec in BUILTIN_REWARDS or Path(spec).expanduser().is_dir():
        return
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        _import_callable(spec)
        return
    raise ConfigError(
        f"reward spec {spec!r} does not resolve; give a built-in ({', '.join(BUILTIN_REWARDS)}), module:function,"
        " an existing reward-model directory, or a weighted sum like 0.7*sentiment+0.3*harmless"
    )


def _import_callable(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"reward spec {spec!r} does not resolve: cannot import module {module_name!r} ({exc});"
                          " check the module is on PYTHONPATH") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward spec {spec!r} does not resolve: module {module_name!r} has no function {attr!r};"
                          " give module:function of a function (prompts, responses) -> floats")
    return fn

