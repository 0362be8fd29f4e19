"""Value estimators: one small class per method, all ``estimate(states, candidates (B, k), needed) -> (B, k)``."""

from __future__ import annotations

from .args import ArgsValue, NoValue
from .base import RolloutEstimator, ValueEstimator
from .cd import CDValue
from .direct import DirectValue
from .indirect import IndirectValue, indirect_q

ESTIMATORS: dict[str, type[ValueEstimator]] = {
    "tq-direct": DirectValue,
    "tq-indirect": IndirectValue,
    "cd": CDValue,
    "args": ArgsValue,
    "none": NoValue,
}

__all__ = ["ESTIMATORS", "ArgsValue", "CDValue", "DirectValue", "IndirectValue", "NoValue", "RolloutEstimator", "ValueEstimator",
           "indirect_q"]
