"""Rewards: ``score(prompts, responses) -> floats`` on *text*.

A reward model may use its own tokenizer and its own input format, so rewards see text, never token ids.
Backends: a ``transformers`` sequence-classification model from a path (:class:`TransformersReward`), a Python
callable given as ``module:function`` (:class:`CallableReward`), a weighted sum (:class:`WeightedReward`),
and two offline built-ins (``sentiment``: VADER compound in [-1, 1]; ``harmless``: 1 - P(profane) in [0, 1];
``pip install 'tqstar[rewards]'``).

One module per job: :mod:`~tqstar.reward.base` (the interface, the value checks and cache, callables and weighted
sums), :mod:`~tqstar.reward.hf` (reward models), :mod:`~tqstar.reward.prefix_cache` (their prefix-cached scoring),
:mod:`~tqstar.reward.builtin` (the built-ins) and :mod:`~tqstar.reward.spec` (what may stand for a reward, and
loading it).

Every value is checked in one place, against the reward's declared range where it has one (:mod:`~tqstar.reward.base`).
"""

from __future__ import annotations

from .base import CallableReward, Range, Reward, WeightedReward
from .builtin import BUILTIN_REWARDS
from .hf import TransformersReward
from .spec import RewardSpec, check_format, load_reward

__all__ = ["BUILTIN_REWARDS", "CallableReward", "Range", "Reward", "RewardSpec", "TransformersReward", "WeightedReward",
           "check_format", "load_reward"]
