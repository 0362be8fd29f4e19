"""Value estimators: one small class per method, all ``estimate(states, candidates (B, k), needed) -> (B, k)``."""

from __future__ import annotations

from .base import RolloutEstimator, ValueEstimator
from .cd import CDValue
from .direct import DirectValue
from .eft import EFTValue
from .indirect import IndirectValue, indirect_q
from .partial import ArgsValue, NoValue
from .soft import SoftCDValue, SoftValue, soft_value

ESTIMATORS: dict[str, type[ValueEstimator]] = {
    "tq-direct": DirectValue,
    "tq-indirect": IndirectValue,
    "tq-soft": SoftValue,
    "cd": CDValue,
    "soft-cd": SoftCDValue,
    "args": ArgsValue,
    "eft": EFTValue,
    "none": NoValue,
}

__all__ = ["ESTIMATORS", "ArgsValue", "CDValue", "DirectValue", "EFTValue", "IndirectValue", "NoValue",
           "RolloutEstimator", "SoftCDValue", "SoftValue", "ValueEstimator", "indirect_q", "soft_value"]
