"""Value estimators: the few generic pieces the methods' rows (:mod:`tqstar.methods`) point to, each
``estimate(states, candidates (B, k), needed) -> (B, k)``; a candidate is a sequence of tokens (a token of the top-k is
a block of one, :data:`~tqstar.value.base.Blocks`).

A row names its estimator by key (``Method.value``) and, for the rollout estimators, the model that rolls out
(``Method.rolls``): ``cd`` is the ``mean`` estimator with the SFT model rolling out, ``tq-direct`` the same with the
baseline; ``soft-cd`` and ``tq-soft`` share ``soft``.
"""

from __future__ import annotations

from .base import Blocks, RolloutEstimator, Rollouts, ValueEstimator, token_blocks
from .direct import DirectValue
from .eft import EFTValue
from .indirect import IndirectValue, indirect_q
from .partial import ArgsValue, NoValue
from .soft import SoftValue, soft_value

#: ``Method.value`` -> the estimator class, built as ``cls(models, params, policy=row.rolls)``.
ESTIMATORS: dict[str, type[ValueEstimator]] = {
    "mean": DirectValue,
    "importance": IndirectValue,
    "soft": SoftValue,
    "partial": ArgsValue,
    "log-ratio": EFTValue,
    "zero": NoValue,
}

__all__ = ["ESTIMATORS", "ArgsValue", "Blocks", "DirectValue", "EFTValue", "IndirectValue", "NoValue",
           "RolloutEstimator", "Rollouts", "SoftValue", "ValueEstimator", "indirect_q", "soft_value", "token_blocks"]
