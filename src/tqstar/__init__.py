"""tqstar: Transfer Q* decoding-time alignment and its peers (soft-value TQ*, ARGS, CD, soft CD, EFT, best-of-N) under one
engine."""

from __future__ import annotations

from .decoder import Decoder
from .engine import Engine, TokenProgress
from .errors import (
    ConfigError,
    ModelLoadError,
    PromptTooLongError,
    RewardError,
    TQStarError,
    VocabularyMismatchError,
)
from .lm.base import ContinuationScores, FullVocabLM, LanguageModel, RolloutOutput, StepOutput, TopLogprobs
from .lm.hf import TransformersLM
from .lm.tabular import TabularLM
from .params import METHODS, DecodeParams
from .reward import CallableReward, Reward, RewardSpec, TransformersReward, WeightedReward, load_reward
from .state import Accounting, PromptState, Response

__version__ = "0.1.0"

__all__ = [
    "Accounting",
    "CallableReward",
    "ConfigError",
    "ContinuationScores",
    "DecodeParams",
    "Decoder",
    "Engine",
    "FullVocabLM",
    "LanguageModel",
    "METHODS",
    "ModelLoadError",
    "PromptState",
    "PromptTooLongError",
    "Response",
    "Reward",
    "RewardError",
    "RewardSpec",
    "RolloutOutput",
    "StepOutput",
    "TQStarError",
    "TabularLM",
    "TokenProgress",
    "TopLogprobs",
    "TransformersLM",
    "TransformersReward",
    "VocabularyMismatchError",
    "WeightedReward",
    "load_reward",
]
